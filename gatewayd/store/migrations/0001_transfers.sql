-- The transfer table: one row per file that crosses the gateway, whatever its status.
-- Column names are the fields of gatewayd.model.Transfer. Timestamps are UTC text in one
-- fixed format (YYYY-MM-DDTHH:MM:SS.ffffffZ) so that text order is time order; enums are
-- their string values; transfer_info and the task chains are JSON text.
CREATE TABLE transfers (
    -- AUTOINCREMENT: an id is never reused, even after old rows are purged (ids appear
    -- in URLs, logs and partners' records).
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    is_server INTEGER NOT NULL CHECK (is_server IN (0, 1)),
    is_send INTEGER NOT NULL CHECK (is_send IN (0, 1)),
    requester TEXT NOT NULL,
    requested TEXT NOT NULL,
    protocol TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    follow_id TEXT NOT NULL,
    -- Deferred: a parent and its child may be written in the same batch, in any order.
    parent_id INTEGER REFERENCES transfers (id) ON DELETE SET NULL
        DEFERRABLE INITIALLY DEFERRED,
    account TEXT,
    partner TEXT,
    src_filename TEXT NOT NULL DEFAULT '',
    dest_filename TEXT NOT NULL DEFAULT '',
    local_filepath TEXT NOT NULL DEFAULT '',
    remote_filepath TEXT NOT NULL DEFAULT '',
    tmp_filepath TEXT NOT NULL DEFAULT '',
    filesize INTEGER NOT NULL DEFAULT -1,
    start TEXT,
    stop TEXT,
    status TEXT NOT NULL,
    step TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0 CHECK (progress >= 0),
    task_number INTEGER NOT NULL DEFAULT 0,
    error_code TEXT NOT NULL,
    error_msg TEXT NOT NULL DEFAULT '',
    error_step TEXT NOT NULL,
    transfer_info TEXT NOT NULL DEFAULT '{}',
    remaining_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT,
    next_retry_delay INTEGER NOT NULL DEFAULT 0,
    retry_increment_factor REAL NOT NULL DEFAULT 1.0,
    pre_tasks TEXT NOT NULL DEFAULT '[]',
    post_tasks TEXT NOT NULL DEFAULT '[]',
    error_tasks TEXT NOT NULL DEFAULT '[]',
    sha256 TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL
) STRICT;

-- Listing filters (status IN, rule, partner, start >=) and sorting on start; the status
-- index also serves the scheduler's queue (PLANNED) and the start-up scan (RUNNING).
CREATE INDEX transfers_status ON transfers (status, start);
CREATE INDEX transfers_rule ON transfers (rule);
CREATE INDEX transfers_partner ON transfers (partner);
CREATE INDEX transfers_start ON transfers (start);
CREATE INDEX transfers_follow_id ON transfers (follow_id);
-- Also what ON DELETE SET NULL needs to find the children of a purged row.
CREATE INDEX transfers_parent_id ON transfers (parent_id);
-- A partner's resumed upload is matched by (account, rule, file name); also serves the
-- account filter of listings.
CREATE INDEX transfers_upload ON transfers (account, rule, dest_filename);
