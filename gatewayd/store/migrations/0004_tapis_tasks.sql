-- Transfer tasks of the Tapis-compatible API (/v3/files/transfers). A task's child
-- transfers are ordinary rows of `transfers` whose follow_id is the task's uuid; their
-- statuses make the task's. Elements are stored as a JSON array: each with its
-- sourceURI, destinationURI, optional flag, and what listing it found (file count,
-- estimated bytes) or why it failed before any child could be made.
CREATE TABLE tapis_tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    tag TEXT NOT NULL DEFAULT '',
    username TEXT NOT NULL,
    created TEXT NOT NULL,
    elements TEXT NOT NULL DEFAULT '[]',
    cancelled TEXT
) STRICT;
