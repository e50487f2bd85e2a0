-- Armoricore's tables (SQLite). Times are milliseconds since the Unix epoch.

-- One row per topic a node loaded (joined with a history rule, or written to): its
-- history epoch, and the highest offset retention or a deletion has seen (so
-- offsets never restart while the epoch stays).
CREATE TABLE topics (
    topic      TEXT PRIMARY KEY,
    epoch      TEXT NOT NULL,
    head       BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Chat messages and comments, as broadcast.
CREATE TABLE messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    event      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX messages_msg_id ON messages (msg_id);
CREATE INDEX messages_topic_seq ON messages (topic, seq);

-- Work the node took on (media.uploaded, notification.requested, ...), one row
-- per work event, updated at each state change.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject_id  TEXT,
    user_id     TEXT,
    status      TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    node        TEXT NOT NULL,
    bus         TEXT NOT NULL,
    request     TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_status ON jobs (status, updated_at);
CREATE INDEX jobs_subject ON jobs (kind, subject_id);
