"""The pipeline: one state machine for every transfer, client or server side.

- `engine`: the steps, the checkpoints, the error chain, stopping a run.
- `datafile`: the temp file of a receive and the file of a send (fsync, SHA-256).
- `files`: name checks and the atomic placing of a finished file.
- `server`: the core side of protocol servers (accounts, virtual tree, handles).
- `clients`: protocol clients per partner.
- `service`: creating client transfers; pause, resume, cancel, retry.
"""
