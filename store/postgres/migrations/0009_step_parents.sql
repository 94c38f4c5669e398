-- parents is how many parents a step has, written with the step (edges
-- are only ever inserted with their steps). A step with one parent, found
-- through the edge from a step this transaction finished, is ready when
-- that one step is done: the readiness query checks it by key instead of
-- counting the step's edges and then walking them (three index probes),
-- which was most of the time a 10,000-way fan-out's root took to release
-- its children. Steps inserted before this migration have NULL and are
-- checked as before.
ALTER TABLE tasker_steps ADD COLUMN parents integer;
