-- Automation state shared by the nodes (issue 16, its gaps).

-- Pause and resume of watchers, pollers and schedules: a row per paused (or once
-- paused) object, read by whichever node runs it, so that a pause holds on every node
-- and across restarts. `enabled: false` in the object's file stays the switch of the
-- configuration; this is the operators'. Schedules kept theirs in schedule_state: it
-- moves here (schedule_state.paused is no longer read).
CREATE TABLE automation_state (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    paused_by TEXT NOT NULL DEFAULT '',
    paused_at TEXT,
    PRIMARY KEY (kind, name)
) STRICT;

INSERT INTO automation_state (kind, name, paused, paused_by, paused_at)
    SELECT 'schedule', name, 1, '', updated FROM schedule_state WHERE paused = 1;

-- A poller's first looks: the remote files seen once (name, size, modification time)
-- and not taken yet. A file is taken when the next look sees the same size and time:
-- kept here, a restart or another node taking over goes on from the last look instead
-- of needing two looks again.
CREATE TABLE poller_seen (
    poller TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime TEXT NOT NULL,
    seen TEXT NOT NULL,
    PRIMARY KEY (poller, name)
) STRICT;

-- When a poller's look last missed a file it took (its name with that size and time
-- no longer listed): the retention purges only such records (see README, retention),
-- so that a file still on the partner is never fetched again. NULL: listed last time.
ALTER TABLE poller_files ADD COLUMN gone TEXT;
