-- Durable domain events (the outbox), written in the transaction that
-- records the step outcome they describe. seq is the delivery order.
CREATE TABLE tasker_events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    task_uuid  TEXT    NOT NULL,
    step_uuid  TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX tasker_events_created ON tasker_events (created_at);

-- Where each durable subscription stopped: the last acknowledged seq.
CREATE TABLE tasker_event_cursors (
    subscription TEXT    PRIMARY KEY,
    position     INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
