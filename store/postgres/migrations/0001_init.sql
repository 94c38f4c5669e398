-- The PostgreSQL schema mirrors the SQLite one table for table, so that both
-- drivers share semantics; types are PostgreSQL's own (timestamptz, jsonb,
-- text[]). Every table lives in the driver's schema (search_path).

-- Task templates: one row per immutable version.
CREATE TABLE tasker_templates (
    namespace    text        NOT NULL,
    name         text        NOT NULL,
    version      text        NOT NULL,
    content_hash text        NOT NULL,
    source       bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE tasker_tasks (
    task_uuid     text        PRIMARY KEY,
    namespace     text        NOT NULL,
    name          text        NOT NULL,
    version       text        NOT NULL,
    state         text        NOT NULL,
    context       jsonb       NOT NULL,
    -- NULL for tasks without an identity: NULLs never collide.
    identity_hash text        UNIQUE,
    initiator     text        NOT NULL DEFAULT '',
    source_system text        NOT NULL DEFAULT '',
    reason        text        NOT NULL DEFAULT '',
    tags          text[]      NOT NULL DEFAULT '{}',
    priority      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    completed_at  timestamptz
);
CREATE INDEX tasker_tasks_state ON tasker_tasks (state);
CREATE INDEX tasker_tasks_named ON tasker_tasks (namespace, name, created_at);
CREATE INDEX tasker_tasks_newest ON tasker_tasks (created_at DESC, task_uuid);

CREATE TABLE tasker_steps (
    step_uuid         text        PRIMARY KEY,
    task_uuid         text        NOT NULL REFERENCES tasker_tasks (task_uuid),
    name              text        NOT NULL,
    namespace         text        NOT NULL,
    position          integer     NOT NULL,
    callable          text        NOT NULL,
    state             text        NOT NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL,
    retryable         boolean     NOT NULL,
    result            jsonb,
    error             jsonb,
    next_retry_at     timestamptz,
    last_attempted_at timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    completed_at      timestamptz,
    UNIQUE (task_uuid, name)
);
CREATE INDEX tasker_steps_retry ON tasker_steps (next_retry_at) WHERE state = 'waiting_for_retry';

CREATE TABLE tasker_step_edges (
    task_uuid      text NOT NULL,
    from_step_uuid text NOT NULL REFERENCES tasker_steps (step_uuid),
    to_step_uuid   text NOT NULL REFERENCES tasker_steps (step_uuid),
    PRIMARY KEY (to_step_uuid, from_step_uuid)
);
CREATE INDEX tasker_step_edges_task ON tasker_step_edges (task_uuid);

-- History. sort_key counts per entity from 1; the writer holds the entity's
-- row lock while it computes the next key, and the unique constraint turns
-- any lapse into an error instead of a silently reordered history.
CREATE TABLE tasker_task_transitions (
    id         bigserial   PRIMARY KEY,
    task_uuid  text        NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    event      text        NOT NULL,
    metadata   jsonb,
    sort_key   integer     NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (task_uuid, sort_key)
);

CREATE TABLE tasker_step_transitions (
    id         bigserial   PRIMARY KEY,
    step_uuid  text        NOT NULL,
    from_state text        NOT NULL,
    to_state   text        NOT NULL,
    event      text        NOT NULL,
    metadata   jsonb,
    sort_key   integer     NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (step_uuid, sort_key)
);

-- Work queues live beside task state so that enqueue, claim and complete are
-- single transactions. A message with a lease token is owned by a consumer
-- until lease_expires_at; consumers pick messages with FOR UPDATE SKIP
-- LOCKED, so they never wait for each other.
CREATE TABLE tasker_queue (
    id               bigserial   PRIMARY KEY,
    queue            text        NOT NULL,
    task_uuid        text        NOT NULL,
    step_uuid        text        NOT NULL DEFAULT '',
    payload          jsonb,
    priority         integer     NOT NULL DEFAULT 0,
    visible_at       timestamptz NOT NULL,
    lease_token      text,
    lease_owner      text,
    lease_expires_at timestamptz,
    read_count       integer     NOT NULL DEFAULT 0,
    enqueued_at      timestamptz NOT NULL
);
CREATE INDEX tasker_queue_ready ON tasker_queue (queue, priority DESC, id) WHERE lease_token IS NULL;
CREATE INDEX tasker_queue_leased ON tasker_queue (lease_expires_at) WHERE lease_token IS NOT NULL;
CREATE INDEX tasker_queue_step ON tasker_queue (step_uuid);
