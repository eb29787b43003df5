-- The node that runs (or last ran) a transfer: set when a row becomes RUNNING, by a
-- claim of the scheduler or by a partner opening a server transfer. Several nodes share
-- one PostgreSQL database; each takes back at start-up only the RUNNING rows it owned.
-- NULL for rows that never ran since this migration.
ALTER TABLE transfers ADD COLUMN owner TEXT;
