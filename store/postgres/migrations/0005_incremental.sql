-- Large tasks are orchestrated from a few steps at a time: the children of
-- the steps whose results arrived, and which states the rest are in.
CREATE INDEX tasker_step_edges_from ON tasker_step_edges (from_step_uuid);
CREATE INDEX tasker_steps_task_state ON tasker_steps (task_uuid, state);

-- tasker_expect_count fails the statement that calls it unless n is want:
-- the guard of a transition of many steps at once (see tasker_expect_one).
CREATE FUNCTION tasker_expect_count(n bigint, want bigint, what text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF n IS DISTINCT FROM want THEN
        RAISE EXCEPTION '%: state changed concurrently (% of % rows matched)', what, n, want USING ERRCODE = 'TK409';
    END IF;
END
$$;
