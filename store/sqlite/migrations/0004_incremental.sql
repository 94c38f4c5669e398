-- Large tasks are orchestrated from a few steps at a time: the children of
-- the steps whose results arrived, and which states the rest are in.
CREATE INDEX tasker_step_edges_from ON tasker_step_edges (from_step_uuid);
CREATE INDEX tasker_steps_task_state ON tasker_steps (task_uuid, state);
