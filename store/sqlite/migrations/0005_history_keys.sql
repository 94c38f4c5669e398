-- History rows are addressed and ordered by (entity, sort_key), which is
-- unique; the rowid and AUTOINCREMENT id beside it were never read, yet
-- every history row (four or five per step) paid for them: a second
-- b-tree insert (the unique index) and an update of sqlite_sequence. The
-- tables become WITHOUT ROWID, keyed by (entity, sort_key).
CREATE TABLE tasker_step_transitions_keyed (
    step_uuid  TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    metadata   TEXT,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (step_uuid, sort_key)
) WITHOUT ROWID;
INSERT INTO tasker_step_transitions_keyed (step_uuid, from_state, to_state, event, metadata, sort_key, created_at)
    SELECT step_uuid, from_state, to_state, event, metadata, sort_key, created_at FROM tasker_step_transitions;
DROP TABLE tasker_step_transitions;
ALTER TABLE tasker_step_transitions_keyed RENAME TO tasker_step_transitions;

CREATE TABLE tasker_task_transitions_keyed (
    task_uuid  TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    metadata   TEXT,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_uuid, sort_key)
) WITHOUT ROWID;
INSERT INTO tasker_task_transitions_keyed (task_uuid, from_state, to_state, event, metadata, sort_key, created_at)
    SELECT task_uuid, from_state, to_state, event, metadata, sort_key, created_at FROM tasker_task_transitions;
DROP TABLE tasker_task_transitions;
ALTER TABLE tasker_task_transitions_keyed RENAME TO tasker_task_transitions;
