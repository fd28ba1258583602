"""The tasks other modules enqueue, by name: the outbox publishes by name (``send_task``), so a module
that enqueues a task never imports the module that defines it (no import cycles between the workflow
and its tasks). Each task's decorator uses the same constant."""

RUN_WORKFLOW = "app.tasks.roadmap_workflow_tasks.run_roadmap_workflow"
RESUME_WORKFLOW = "app.tasks.roadmap_workflow_tasks.resume_roadmap"
GENERATE_CONTENT = "app.tasks.content_generation_tasks.generate_roadmap_content"
