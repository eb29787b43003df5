-- Local folder watchers (issue 16): one row per file a watcher took, written in the
-- same commit as the transfers it made. The unique key is the arbiter of "exactly
-- once": a rescan after a crash, or a second node, that finds the same file (same
-- path, inode, size and modification time) inserts nothing. `transfers` is the JSON
-- list of the transfer ids made (one per partner). `gone` is set once the watcher saw
-- the path missing or holding another file: a later file at that path is a new one.
CREATE TABLE watched_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    watcher TEXT NOT NULL,
    path TEXT NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    transfers TEXT NOT NULL DEFAULT '[]',
    taken TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT '',
    gone TEXT,
    UNIQUE (watcher, path, inode, size, mtime_ns)
) STRICT;

CREATE INDEX watched_files_live ON watched_files (watcher, gone);
