-- parents is how many parents a step has, written with the step (an edge
-- is only ever inserted with the step it leads into: see
-- StepsInsertParams.CheckEdges). A step with one parent, found
-- through the edge from a step this transaction finished, is ready when
-- that one step is done: the readiness query checks it by key instead of
-- counting the step's edges and then walking them (three index probes
-- more per step: the query took a quarter of the transaction in which a
-- 10,000-way fan-out's root releases its children). Steps inserted before
-- this migration have NULL and are checked as before.
ALTER TABLE tasker_steps ADD COLUMN parents integer;
