"""The admin API against its own OpenAPI document: `schemathesis run --checks all`
drives a real `gatewayd serve` (basic authentication as a user, then a bearer token),
with a fixed seed and a bounded number of examples per operation.

The daemon lives in a temp folder of its own: the run creates, changes and deletes
rules, watchers, transfers and tokens there. Its API login throttle is relaxed
(`api.login_throttle`): schemathesis tries bad credentials on every operation
(`ignored_auth`), and the default policy would ban 127.0.0.1 after ten of them.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.api_support import PASSWORD, ApiEnv, basic
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import environ_without_proxy
from tests.test_api_daemon import api_port

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 17
# Examples per operation and phase: about 60 operations, two runs, under two minutes on
# a loaded two-core machine.
MAX_EXAMPLES = 4
# Operations schemathesis cannot judge: the live stream of Server-Sent Events never ends.
NOT_RUN = ("transfer_events",)
RUN_TIMEOUT = 150.0

pytestmark = [
    pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed"),
    pytest.mark.timeout(400),
]


class Contract:
    def __init__(self, root: Path, daemon: DaemonProcess, port: int) -> None:
        self.root = root
        self.daemon = daemon
        self.base = f"http://127.0.0.1:{port}"

    async def token(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.base + "/api/tokens",
                json={"comment": "schemathesis"},
                headers={"Authorization": basic("admin")},
            ) as answer,
        ):
            body = await answer.json()
            assert answer.status == 201, body
            return str(body["token"])

    async def run(self, name: str, *auth: str) -> str:
        """One schemathesis run; its output (the assertion says why it failed)."""
        reports = self.root / f"report-{name}"
        proc = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS), "--config-file", str(CONFIG), "run",
            f"{self.base}/api/openapi.json",
            "--checks", "all",
            "--seed", str(SEED),
            "--max-examples", str(MAX_EXAMPLES),
            "--no-shrink",
            # One worker: hypothesis builds ASTs (lambda descriptions) that are not
            # thread-safe ("AST constructor recursion depth mismatch" with two).
            "--workers", "1",
            "--request-timeout", "20",
            # The live stream never ends (test_console_api.py reads it).
            *(arg for op in NOT_RUN for arg in ("--exclude-operation-id", op)),
            "--report", "junit", "--report-dir", str(reports),
            *auth,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**environ_without_proxy(), "NO_COLOR": "1"},
            cwd=self.root,  # its cache (.schemathesis/) stays in the temp folder
        )  # fmt: skip
        talk = asyncio.ensure_future(proc.communicate())
        try:
            async with asyncio.timeout(RUN_TIMEOUT):
                out, _ = await asyncio.shield(talk)
        except TimeoutError:
            proc.kill()
            out, _ = await talk
            raise AssertionError(
                f"schemathesis ({name}) still running after {RUN_TIMEOUT}s:\n"
                + out.decode(errors="replace")[-8000:]
            ) from None
        text = out.decode(errors="replace")
        assert proc.returncode == 0, f"schemathesis ({name}) found problems:\n{text}"
        return text


@pytest.fixture
async def contract(tmp_path: Path) -> AsyncIterator[Contract]:
    env = ApiEnv(tmp_path)
    env.rule("out", "send")
    env.rule("in", "receive")
    env.extra["api"] = {
        "login_throttle": {"free_failures": 1_000_000, "max_address_failures": 1_000_000}
    }
    # Accounts and users created through the API get their passwords hashed: cheaply.
    env.extra["passwords"] = {"workers": 1, "argon2": {"time_cost": 1, "memory_cost": 1024}}
    env.write()
    daemon = await DaemonProcess.start(env.config_file)
    try:
        port = await api_port(daemon)
        await daemon.wait_for("gatewayd ready")
        yield Contract(tmp_path, daemon, port)
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output
    # No answer was a server error (aiohttp logs the garbage it refuses, with a
    # traceback: that is not one).
    assert not re.search(r'HTTP/1\.[01]" 5\d\d ', daemon.output), daemon.output
    assert PASSWORD not in daemon.output


def _tested(output: str) -> tuple[int, int]:
    """(operations tested, operations in the document but those not run) of the run's
    summary."""
    tested = re.search(r"^\s*Tested: (\d+)$", output, re.MULTILINE)
    total = re.search(r"^\s*Selected: \d+/(\d+)$", output, re.MULTILINE)
    assert tested and total, f"no summary in:\n{output}"
    return int(tested.group(1)), int(total.group(1)) - len(NOT_RUN)


async def test_the_api_keeps_its_documented_contract(contract: Contract) -> None:
    token = await contract.token()
    # The two runs at once (the machine has cores to spare while each waits on answers).
    # The coverage phase (deterministic, the longest) runs once, as the user; the
    # token's run generates its own requests.
    user, bearer = await asyncio.gather(
        contract.run("user", "--auth", f"admin:{PASSWORD}"),
        contract.run(
            "token", "--header", f"Authorization: Bearer {token}", "--phases", "fuzzing,stateful"
        ),
    )
    tested, total = _tested(user)
    # Every operation was reached (the document has about 65).
    assert tested == total and total > 50, user
    assert _tested(bearer) == (total, total), bearer
    assert token not in contract.daemon.output
