-- Schedules (issue 16): planned client transfers made at the times of a cron
-- expression. Timestamps are the codec's UTC text (text order is time order).

-- One row per firing of a schedule, inserted in the same commit as the transfer it
-- made: the key makes a firing happen once, whichever node (or restart) tries it.
CREATE TABLE schedule_runs (
    schedule TEXT NOT NULL,
    fire_time TEXT NOT NULL,
    transfer_id INTEGER,
    node TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    PRIMARY KEY (schedule, fire_time)
) STRICT;

-- What a schedule keeps between runs of the daemon, shared by the nodes: since when
-- it is known (missed firings count from then, or from its last firing), whether it
-- is paused, and its last error (a firing that could not make its transfer).
CREATE TABLE schedule_state (
    name TEXT PRIMARY KEY,
    since TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated TEXT NOT NULL
) STRICT;

-- Remote pollers: one row per remote file (name, size, modification time) a poller
-- made a receive transfer of, inserted in the same commit as that transfer: a file is
-- fetched once, whichever node polled it; the same name with another size or time
-- is another file. `mtime` is the codec's UTC text, '' when the partner gives none.
CREATE TABLE poller_files (
    poller TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime TEXT NOT NULL,
    transfer_id INTEGER,
    node TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    PRIMARY KEY (poller, name, size, mtime)
) STRICT;
