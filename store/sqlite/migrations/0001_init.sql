-- Task templates: one row per immutable version.
CREATE TABLE tasker_templates (
    namespace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    source       BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE tasker_tasks (
    task_uuid     TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    context       TEXT    NOT NULL,
    identity_hash TEXT    UNIQUE,
    initiator     TEXT    NOT NULL DEFAULT '',
    source_system TEXT    NOT NULL DEFAULT '',
    reason        TEXT    NOT NULL DEFAULT '',
    tags          TEXT    NOT NULL DEFAULT '[]',
    priority      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    completed_at  INTEGER
);
CREATE INDEX tasker_tasks_state ON tasker_tasks (state);
CREATE INDEX tasker_tasks_named ON tasker_tasks (namespace, name, created_at);

CREATE TABLE tasker_steps (
    step_uuid         TEXT    PRIMARY KEY,
    task_uuid         TEXT    NOT NULL REFERENCES tasker_tasks (task_uuid),
    name              TEXT    NOT NULL,
    namespace         TEXT    NOT NULL,
    position          INTEGER NOT NULL,
    callable          TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    retryable         INTEGER NOT NULL,
    result            TEXT,
    error             TEXT,
    next_retry_at     INTEGER,
    last_attempted_at INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    completed_at      INTEGER,
    UNIQUE (task_uuid, name)
);
CREATE INDEX tasker_steps_retry ON tasker_steps (next_retry_at) WHERE state = 'waiting_for_retry';

CREATE TABLE tasker_step_edges (
    task_uuid      TEXT NOT NULL,
    from_step_uuid TEXT NOT NULL REFERENCES tasker_steps (step_uuid),
    to_step_uuid   TEXT NOT NULL REFERENCES tasker_steps (step_uuid),
    PRIMARY KEY (to_step_uuid, from_step_uuid)
);
CREATE INDEX tasker_step_edges_task ON tasker_step_edges (task_uuid);

CREATE TABLE tasker_task_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_uuid  TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    metadata   TEXT,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (task_uuid, sort_key)
);

CREATE TABLE tasker_step_transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    step_uuid  TEXT    NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    metadata   TEXT,
    sort_key   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (step_uuid, sort_key)
);

-- Work queues live beside task state so that enqueue, claim and complete are
-- single transactions. A message with a lease token is owned by a consumer
-- until lease_expires_at.
CREATE TABLE tasker_queue (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    task_uuid        TEXT    NOT NULL,
    step_uuid        TEXT    NOT NULL DEFAULT '',
    payload          TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    visible_at       INTEGER NOT NULL,
    lease_token      TEXT,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    read_count       INTEGER NOT NULL DEFAULT 0,
    enqueued_at      INTEGER NOT NULL
);
CREATE INDEX tasker_queue_ready ON tasker_queue (queue, priority DESC, id) WHERE lease_token IS NULL;
CREATE INDEX tasker_queue_leased ON tasker_queue (lease_expires_at) WHERE lease_token IS NOT NULL;
CREATE INDEX tasker_queue_step ON tasker_queue (step_uuid);
