"""Which names may have an unfinished partner upload, known without a query.

Every partner upload opens with the question "is there an unfinished upload of this
name to continue?" (`Store.find_unfinished_upload`). On SQLite this process is the only
writer of the database (the lock file), so the store can keep the answer's superset in
memory: the (account, rule, file name) of every server upload not known to be DONE or
CANCELLED, from the rows found at start and every row inserted or saved since. A name
outside it has no such upload and costs no query: the open of a new small file saves a
trip to the database's thread. A name inside it is asked of the database as before, so
a stale entry costs a query, never a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from gatewayd import lifecycle
from gatewayd.model import Transfer

Key = tuple[str, str, str]  # account, rule, file name


class UploadIndex:
    """The superset described above."""

    def __init__(self) -> None:
        self._ids: dict[Key, set[int]] = {}
        self._keys: dict[int, set[Key]] = {}

    def load(self, rows: Iterable[tuple[int, str, str, str]]) -> None:
        """(id, account, rule, file name) of the unfinished server uploads at start."""
        for transfer_id, account, rule, name in rows:
            self._add(transfer_id, (account, rule, name))

    def may_have(self, account: str, rule: str, name: str) -> bool:
        """False when no unfinished upload of that name exists."""
        return (account, rule, name) in self._ids

    def written(self, transfer: Transfer) -> None:
        """Before `transfer` is inserted or saved: its current name is noted (even if
        the write then fails: a superset only costs a query)."""
        t = transfer
        if t.id is None or not t.is_server or t.is_send or t.account is None:
            return
        if t.status not in lifecycle.FINAL:
            self._add(t.id, (t.account, t.rule, t.dest_filename))

    def committed(self, transfer: Transfer) -> None:
        """After a save of `transfer` committed: a finished upload is forgotten."""
        if transfer.id is not None and transfer.status in lifecycle.FINAL:
            for key in self._keys.pop(transfer.id, ()):
                ids = self._ids.get(key)
                if ids is not None:
                    ids.discard(transfer.id)
                    if not ids:
                        del self._ids[key]

    def _add(self, transfer_id: int, key: Key) -> None:
        self._ids.setdefault(key, set()).add(transfer_id)
        self._keys.setdefault(transfer_id, set()).add(key)
