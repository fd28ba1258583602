"""What a Celery worker does besides running tasks, one job per module: ``lifecycle`` (which service
the worker is, its child count, the budget guard, each child's resources), ``retry`` (the task base
class that retries a task whose database went away) and ``events`` (task start and end as task
events). ``app.core.celery_app`` names them as strings; a worker imports them when it starts."""
