-- tasker_expect_one fails the statement that calls it unless n is 1. A
-- guarded transition that is sent without waiting for its answer (see
-- pipeTx in the driver) wraps its UPDATE in it, so that a transition whose
-- compare-and-set matched no row still fails the transaction, with SQLSTATE
-- TK409 that the driver reports as a state conflict.
CREATE FUNCTION tasker_expect_one(n bigint, what text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF n IS DISTINCT FROM 1 THEN
        RAISE EXCEPTION '%: state changed concurrently (% rows matched)', what, n USING ERRCODE = 'TK409';
    END IF;
END
$$;
