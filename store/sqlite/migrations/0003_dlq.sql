-- Dead-letter queue: tasks the staleness sweeper moved to error (kind
-- 'task') and orchestration messages that failed processing too often
-- (kind 'message'), each with a snapshot and an operator's resolution.
CREATE TABLE tasker_dlq (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,
    task_uuid       TEXT    NOT NULL,
    step_uuid       TEXT    NOT NULL DEFAULT '',
    namespace       TEXT    NOT NULL DEFAULT '',
    task_name       TEXT    NOT NULL DEFAULT '',
    reason          TEXT    NOT NULL,
    original_state  TEXT    NOT NULL DEFAULT '',
    snapshot        TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    resolved_by     TEXT    NOT NULL DEFAULT '',
    resolution_note TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    resolved_at     INTEGER
);
CREATE INDEX tasker_dlq_status ON tasker_dlq (status, id);
CREATE INDEX tasker_dlq_task ON tasker_dlq (task_uuid);
CREATE INDEX tasker_tasks_active ON tasker_tasks (updated_at)
    WHERE state NOT IN ('complete', 'error', 'cancelled', 'resolved_manually', 'blocked_by_failures');
