-- step_count is the number of steps a task was created with, so that an
-- orchestrator can tell a large task (orchestrated incrementally) from the
-- task row it locks instead of counting the task's steps each time. Tasks
-- created before this migration have NULL and are counted as before.
ALTER TABLE tasker_tasks ADD COLUMN step_count integer;
