-- History rows are addressed and ordered by (entity, sort_key), whose
-- unique constraint is their key; the surrogate id was never read, yet
-- cost every history row (four or five per step) a sequence value and a
-- second index entry.
ALTER TABLE tasker_step_transitions DROP COLUMN id;
ALTER TABLE tasker_task_transitions DROP COLUMN id;
