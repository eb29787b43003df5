"""Child process of the kill -9 test in test_store.py: writes batches until killed.

Usage: python store_crash_child.py DB_PATH SEED ACCOUNTS

Keeps ACCOUNTS rows (rule "acct") whose `progress` always sums to 1000 * ACCOUNTS.
Batch n moves some progress between two of them, stamps every one of them with
`transfer_info["batch"] = n`, and inserts two "log" rows for batch n: all gathered so
that they share one commit. After each batch has committed it prints `committed n`.
A database that already holds the rows is continued from where it stands.

Invariants after a kill: the stamps are equal, the sum is unchanged, the log rows are
exactly two per batch up to the stamp, and the stamp is at least the last printed batch.
"""

from __future__ import annotations

import asyncio
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

from gatewayd.model import Transfer
from gatewayd.store.base import TransferFilter
from gatewayd.store.sqlite import SqliteStore

PER_ACCOUNT = 1000


def new_row(rule: str, **info: int) -> Transfer:
    return Transfer(
        rule=rule,
        is_server=False,
        is_send=True,
        requester="crash",
        requested="child",
        protocol="sftp",
        partner="p",
        src_filename=f"{rule}.bin",
        start=datetime.now(UTC),
        transfer_info=dict(info),
    )


async def main(path: Path, seed: int, n_accounts: int) -> None:
    rng = random.Random(seed)
    async with SqliteStore(path) as store:
        accounts, _ = await store.list_transfers(TransferFilter(rule="acct", limit=-1))
        if not accounts:
            accounts = [new_row("acct", batch=0) for _ in range(n_accounts)]
            for row in accounts:
                row.progress = PER_ACCOUNT
            await asyncio.gather(*(store.insert_transfer(row) for row in accounts))
        batch = accounts[0].transfer_info["batch"]
        print(f"ready {batch}", flush=True)
        while True:
            batch += 1
            src, dst = rng.sample(accounts, 2)
            amount = rng.randint(0, src.progress)
            src.progress -= amount
            dst.progress += amount
            for row in accounts:
                row.transfer_info["batch"] = batch
            await asyncio.gather(
                *(store.save_transfer(row) for row in accounts),
                store.insert_transfer(new_row("log", batch=batch, half=0)),
                store.insert_transfer(new_row("log", batch=batch, half=1)),
            )
            print(f"committed {batch}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
