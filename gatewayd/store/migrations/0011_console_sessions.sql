-- The web console's logged-in browsers, shared by the nodes: a session opened on one
-- node works on every node, outlives a restart, and a logout on any node ends it
-- everywhere at once. `id` is the SHA-256 of the cookie's random value, never the value
-- itself: whoever reads the database cannot log in with what it holds.
CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    "user" TEXT NOT NULL,
    opened TEXT NOT NULL,
    seen TEXT NOT NULL
) STRICT;

CREATE INDEX console_sessions_seen ON console_sessions (seen);
CREATE INDEX console_sessions_opened ON console_sessions (opened);
