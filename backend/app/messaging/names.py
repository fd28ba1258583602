"""The tasks other modules enqueue, by name: everything is published by name (``send_task``), so a
module that enqueues a task never imports the module that defines it, and each layer imports only
downwards. Each task's decorator uses the same constant. The names keep the task modules' paths:
Celery routes a task to its queue by the module part (``app.core.celery_app``)."""

RUN_WORKFLOW = "app.tasks.roadmap_workflow_tasks.run_roadmap_workflow"
RESUME_WORKFLOW = "app.tasks.roadmap_workflow_tasks.resume_roadmap"
# Releases checkpoint threads nothing can need (app.messaging.retention): on the workflow queue, whose
# processes are the only ones with a checkpointer.
RELEASE_CHECKPOINTS = "app.tasks.roadmap_workflow_tasks.release_checkpoints"
GENERATE_CONTENT = "app.tasks.content_generation_tasks.generate_roadmap_content"
FLUSH_TASK_EVENTS = "app.tasks.logs_tasks.flush_task_events"
# One smoke-test task that every worker registers; the caller picks the queue (``queue=``).
PROBE = "app.tasks.probe.probe"
