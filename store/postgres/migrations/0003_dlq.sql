-- Dead-letter queue: tasks the staleness sweeper moved to error (kind
-- 'task') and orchestration messages that failed processing too often
-- (kind 'message'), each with a snapshot and an operator's resolution.
CREATE TABLE tasker_dlq (
    id              bigserial   PRIMARY KEY,
    kind            text        NOT NULL,
    task_uuid       text        NOT NULL,
    step_uuid       text        NOT NULL DEFAULT '',
    namespace       text        NOT NULL DEFAULT '',
    task_name       text        NOT NULL DEFAULT '',
    reason          text        NOT NULL,
    original_state  text        NOT NULL DEFAULT '',
    snapshot        jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    resolved_by     text        NOT NULL DEFAULT '',
    resolution_note text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    resolved_at     timestamptz
);
CREATE INDEX tasker_dlq_status ON tasker_dlq (status, id);
CREATE INDEX tasker_dlq_task ON tasker_dlq (task_uuid);
CREATE INDEX tasker_tasks_active ON tasker_tasks (updated_at)
    WHERE state NOT IN ('complete', 'error', 'cancelled', 'resolved_manually', 'blocked_by_failures');
