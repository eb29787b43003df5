-- Several nodes on one database (issue 13). Timestamps are the codec's UTC text.

-- One row per node that ever started on this database. A node renews its lease
-- (`heartbeat`) every few seconds; a node whose heartbeat is older than its
-- `lease_seconds` is dead: another node takes over its RUNNING transfers and records
-- it here (`taken_over_by`, `taken_over_at`), once. A clean stop sets `stopped`.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT '',
    started TEXT NOT NULL,
    heartbeat TEXT NOT NULL,
    lease_seconds REAL NOT NULL,
    -- The random token this node wrote in the shared data folder's marker file: a node
    -- that cannot read the live nodes' markers does not see the same folder.
    marker TEXT NOT NULL DEFAULT '',
    -- The API address others may show (informational).
    api TEXT NOT NULL DEFAULT '',
    stopped TEXT,
    taken_over_by TEXT,
    taken_over_at TEXT
) STRICT;

-- Which node marked a RUNNING transfer INTERRUPTED because its owner died, and when.
ALTER TABLE transfers ADD COLUMN taken_over_by TEXT;
ALTER TABLE transfers ADD COLUMN taken_over_at TEXT;

-- Requests of one node to another: pause or cancel a transfer the other one runs. The
-- target answers each (`answered`, `result`: the status reached, or `error`).
CREATE TABLE node_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    transfer_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    sender TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    answered TEXT,
    result TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX node_commands_pending ON node_commands (node, answered);

-- Failed logins counted across nodes (the login throttle): one row per key (an address
-- or an account) and window.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    first TEXT NOT NULL,
    last TEXT NOT NULL
) STRICT;

-- What every node must reload (the rules changed through one node's API): a counter
-- each node compares with the one it loaded.
CREATE TABLE cluster_notices (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL DEFAULT 0,
    changed TEXT NOT NULL,
    by_node TEXT NOT NULL DEFAULT ''
) STRICT;
