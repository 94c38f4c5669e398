-- Durable domain events (the outbox), written in the transaction that
-- records the step outcome they describe. seq is the delivery order; event
-- writers serialise on an advisory lock so that seq also follows commit
-- order and a reader never skips an event that commits late.
CREATE TABLE tasker_events (
    seq        bigserial   PRIMARY KEY,
    event_id   text        NOT NULL UNIQUE,
    name       text        NOT NULL,
    task_uuid  text        NOT NULL,
    step_uuid  text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX tasker_events_created ON tasker_events (created_at);

-- Where each durable subscription stopped: the last acknowledged seq.
CREATE TABLE tasker_event_cursors (
    subscription text        PRIMARY KEY,
    position     bigint      NOT NULL,
    updated_at   timestamptz NOT NULL
);
