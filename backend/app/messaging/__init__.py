"""What crosses the broker, below the task modules: task names (everything is enqueued by name), the
outbox that publishes them after the data's commit, the watchdog that re-sends stalled work, and the
task-event buffer. The API, the workflows and the tasks all use it; it imports none of them."""
