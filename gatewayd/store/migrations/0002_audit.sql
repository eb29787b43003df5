-- Who changed what through the admin API. `details` is a JSON object.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}'
) STRICT;

-- Purging old entries by age.
CREATE INDEX audit_at ON audit (at);

-- History pages sort finished transfers by their end time ("sort=stop-").
CREATE INDEX transfers_stop ON transfers (stop);
