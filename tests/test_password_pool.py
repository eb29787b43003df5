"""Where password hashes run: worker processes of their own, not the event loop and not
the threads that write files; a bounded queue; the argon2 parameters of new hashes as a
setting. (The figures of a real login rush are scripts/soak_logins.py's.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
import yaml

from gatewayd import passwords
from gatewayd.config import ConfigError, load_config
from gatewayd.passwords import HashingBusy, PasswordHashing, hash_password, verify_password
from tests.api_support import ApiEnv
from tests.conftest import CHECKOUT
from tests.gateway_env import GatewayEnv
from tests.sftp_peers import need, sftp

# A hash with the shipped parameters (m=64 MiB, t=3, p=4): a check costs what it costs.
REAL_PASSWORD = "a-real-cost-password"
REAL_HASH = hash_password(REAL_PASSWORD)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GatewayEnv]:
    environment = GatewayEnv(tmp_path)
    environment.accounts["rush"] = {"password": REAL_HASH}
    environment.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    environment.extra["passwords"] = {"workers": 2, "max_queue": 100}
    environment.rule("inbox", "receive")
    await environment.start()
    yield environment
    await environment.stop()


def logins(env: GatewayEnv, count: int) -> list[asyncio.Future[str | None]]:
    """`count` partners logging in at once, through the core's login path (the one
    every protocol server calls)."""
    return [
        asyncio.ensure_future(
            env.gw.logins.authenticate(
                "rush", server="sftp", protocol="sftp", password=REAL_PASSWORD, remote=f"10.0.0.{i}"
            )
        )
        for i in range(count)
    ]


async def test_a_login_rush_does_not_delay_file_writes(env: GatewayEnv, tmp_path: Path) -> None:
    """The file I/O of transfers goes through the loop's default executor: a write must
    not wait behind the password checks queued before it."""
    rush = logins(env, 20)
    await asyncio.sleep(0)  # every login has asked for its check
    target = tmp_path / "written.bin"
    await asyncio.to_thread(target.write_bytes, b"x" * 65536)
    still_waiting = sum(not login.done() for login in rush)
    assert still_waiting >= 14, f"the write waited for {20 - still_waiting} password checks"
    assert await asyncio.gather(*rush) == ["rush"] * 20


async def test_password_checks_run_in_other_processes(env: GatewayEnv) -> None:
    """The CPU of the checks is spent outside the daemon's process."""
    assert env.gw.hashing.mode == "processes"
    started = time.process_time()
    assert verify_password(REAL_HASH, REAL_PASSWORD)
    one_check = time.process_time() - started
    started = time.process_time()
    assert await asyncio.gather(*logins(env, 8)) == ["rush"] * 8
    spent_here = time.process_time() - started
    assert spent_here < 2 * one_check, (
        f"8 checks cost this process {spent_here:.2f} CPU-s (one costs {one_check:.2f})"
    )


def occupy(hashing: PasswordHashing, count: int, seconds: float) -> list[asyncio.Future[None]]:
    """`count` pieces of work of `seconds` each in the hashing queue (its internal entry
    point: a sleep holds a worker for a known time, where a hash's time depends on the
    machine's load)."""
    return [asyncio.ensure_future(hashing._run(time.sleep, seconds)) for _ in range(count)]


async def test_a_full_queue_refuses_logins_without_hashing(env: GatewayEnv) -> None:
    need("sftp", "sshpass")
    hashing = env.gw.hashing
    port = env.gw.servers["sftp"].bound_port
    hashing.max_queue = 1
    held = occupy(hashing, 3, 4.0)  # both workers busy, one waiting: full
    await asyncio.sleep(0)
    assert hashing.pending == 3
    before = passwords.verification_count()
    failures = env.gw.auth_throttle.failures_total
    with structlog.testing.capture_logs() as logs:
        refused = await sftp(port, "rush", ["pwd"], password=REAL_PASSWORD)
        still_full = hashing.pending == 3
    assert still_full, "the queue drained before the login came: nothing was tested"
    assert refused.returncode != 0, refused.output
    assert any(e["event"] == "login refused: too many password checks waiting" for e in logs)
    assert passwords.verification_count() == before, "the refused login was never hashed"
    assert env.gw.auth_throttle.failures_total == failures, "busy is not a failed login"
    await asyncio.gather(*held)
    accepted = await sftp(port, "rush", ["pwd"], password=REAL_PASSWORD)
    assert accepted.returncode == 0, accepted.output


async def test_the_api_answers_503_when_the_queue_is_full(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.extra["passwords"] = {"workers": 1, "max_queue": 1}
    await env.start()
    try:
        held = occupy(env.gw.hashing, 2, 2.0)
        await asyncio.sleep(0)
        answer = await env.api.call("GET", "/api/transfers")
        assert env.gw.hashing.pending == 2, "the queue drained before the call: nothing tested"
        assert answer.status == 503, answer.text
        assert answer.codes() == ["busy"]
        assert int(answer.headers["Retry-After"]) >= 1
        await asyncio.gather(*held)
        assert (await env.api.call("GET", "/api/transfers")).status == 200
    finally:
        await env.stop()


async def test_a_login_that_gives_up_leaves_the_queue() -> None:
    hashing = PasswordHashing(workers=1, max_queue=10)
    await hashing.start()
    try:
        before = passwords.verification_count()
        first = asyncio.ensure_future(hashing.verify(REAL_HASH, REAL_PASSWORD))
        given_up = [asyncio.ensure_future(hashing.verify(REAL_HASH, "x")) for _ in range(5)]
        await asyncio.sleep(0)
        assert hashing.pending == 6
        for login in given_up:
            login.cancel()
        await asyncio.gather(*given_up, return_exceptions=True)
        assert hashing.pending == 1
        assert await first
        assert passwords.verification_count() == before + 1, "the cancelled ones never ran"
        # Its slot came back: another check runs at once.
        assert await hashing.verify(REAL_HASH, REAL_PASSWORD)
    finally:
        await hashing.close()
    with pytest.raises(HashingBusy):
        await hashing.verify(REAL_HASH, REAL_PASSWORD)


def test_threads_of_its_own_when_no_process_can_be_made(tmp_path: Path) -> None:
    """A main module that multiprocessing cannot run again (a script read from stdin)
    makes worker processes fail to start: checks then run in threads of their own."""
    code = (
        "import asyncio, threading\n"
        "from gatewayd import passwords\n"
        "h = passwords.hash_password('pw', passwords.Argon2Parameters(1, 8, 1))\n"
        "async def main():\n"
        "    hashing = passwords.PasswordHashing(workers=1)\n"
        "    await hashing.start()\n"
        "    print('mode', hashing.mode, await hashing.verify(h, 'pw'))\n"
        "    await hashing.close()\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-"],
        input=code,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "mode threads True" in result.stdout, result.stdout + result.stderr
    assert "password checks run in threads" in result.stdout + result.stderr


# ------------------------------------------------------------------ the parameters


def test_argon2_parameters_are_a_setting(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.extra["passwords"] = {"argon2": {"time_cost": 2, "memory_cost": 16, "parallelism": 4}}
    with pytest.raises(ConfigError) as raised:
        load_config(_written(env))
    (problem,) = raised.value.problems
    assert problem.file == env.config_file and problem.line > 1
    assert "8 KiB per lane" in problem.message and "32" in problem.message
    env.extra["passwords"] = {"argon2": {"time_cost": 2, "memory_cost": 2048, "parallelism": 1}}
    loaded = load_config(_written(env))
    assert loaded.config.passwords.argon2.memory_cost == 2048


async def test_decoys_get_the_configured_parameters(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.extra["passwords"] = {"argon2": {"time_cost": 2, "memory_cost": 2048, "parallelism": 1}}
    await env.start()
    try:
        decoy = await env.gw.logins.decoy.get()
    finally:
        await env.stop()
    assert decoy.startswith("$argon2id$v=19$m=2048,t=2,p=1$")


def test_hash_password_uses_the_configured_parameters(tmp_path: Path) -> None:
    config = tmp_path / "gatewayd.yaml"
    # The rest of the file is not valid yet (an account waits for this very hash):
    # hash-password reads its section only.
    config.write_text(
        yaml.safe_dump(
            {
                "passwords": {"argon2": {"time_cost": 1, "memory_cost": 1024, "parallelism": 2}},
                "accounts": {"acme": {"password": "not-a-hash-yet"}},
            }
        )
    )
    made = _hash_password_cli("-c", str(config))
    assert made.returncode == 0, made.stderr
    hashed = made.stdout.strip()
    assert hashed.startswith("$argon2id$v=19$m=1024,t=1,p=2$")
    assert verify_password(hashed, "pw-of-acme")

    config.write_text(yaml.safe_dump({"passwords": {"argon2": {"parallelism": 0}}}))
    refused = _hash_password_cli("-c", str(config))
    assert refused.returncode == 1 and refused.stdout == ""
    assert str(config) in refused.stderr and "parallelism" in refused.stderr


def _hash_password_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "hash-password", "--stdin", *args],
        input="pw-of-acme\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"},
        cwd=CHECKOUT,
        check=False,
    )


def _written(env: GatewayEnv) -> Path:
    env.write()
    return env.config_file


def _session(sid: int) -> set[int]:
    """The processes of session `sid` (the daemon was started as its leader)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


async def test_workers_end_with_a_killed_daemon(tmp_path: Path) -> None:
    """kill -9 of the daemon runs none of its cleanup; its hashing workers must still
    end (left over, they would hold its output and the journal's stream open)."""
    from tests.crash_support import start_daemon

    environment = GatewayEnv(tmp_path)
    environment.extra["passwords"] = {"workers": 2}
    environment.write()
    daemon = await start_daemon(environment.config_file)
    await daemon.wait_for("gatewayd ready")
    helpers = _session(daemon.proc.pid) - {daemon.proc.pid}
    assert len(helpers) >= 2, f"no hashing workers seen: {helpers}"
    daemon.proc.kill()  # the daemon alone, not its process group
    await daemon.finish(timeout=15)
    deadline = time.monotonic() + 15
    while (left := _session(daemon.proc.pid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not left, f"processes left by the killed daemon: {left}"
