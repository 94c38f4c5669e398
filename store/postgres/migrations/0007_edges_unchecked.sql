-- Edges are written only by the driver, in the statement batch that
-- inserts their steps, and steps are never deleted; the foreign keys on
-- them protected nothing that could happen, yet checking them locked every
-- referenced step row (a KEY SHARE lock per edge end), which rewrote the
-- tuple header of each step and doubled the WAL of creating a 10,000-step
-- fan-out. The primary key and the indexes stay.
ALTER TABLE tasker_step_edges DROP CONSTRAINT IF EXISTS tasker_step_edges_from_step_uuid_fkey;
ALTER TABLE tasker_step_edges DROP CONSTRAINT IF EXISTS tasker_step_edges_to_step_uuid_fkey;
