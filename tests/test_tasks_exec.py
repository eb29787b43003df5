"""EXEC, EXECMOVE and EXECOUTPUT with real programs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from gatewayd.errors import TaskError, TaskWarning
from gatewayd.tasks import task_class
from gatewayd.tasks.base import TaskContext
from gatewayd.tasks.exec import Exec
from tests.tasks_support import ListLogger, file_ctx, run_task, write_script

PY = sys.executable


def log_of(ctx: TaskContext) -> ListLogger:
    assert isinstance(ctx.log, ListLogger)
    return ctx.log


def started_pid(ctx: TaskContext) -> int:
    for message in log_of(ctx).messages:
        found = re.search(r"\[(\d+)\]: started ", message)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no 'started' line in {log_of(ctx).messages}")


def stdout_lines(ctx: TaskContext) -> list[str]:
    return [m.split(" stdout: ", 1)[1] for m in log_of(ctx).messages if " stdout: " in m]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def assert_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout} s"
        await asyncio.sleep(0.01)


async def test_exit_0_succeeds_and_logs_output(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(tmp_path / "ok.sh", 'echo "hello $1"\necho oops >&2\nexit 0\n')
    await run_task("EXEC", {"path": str(script), "args": ["#TRUEFILENAME#"]}, ctx)
    messages = log_of(ctx).messages
    assert stdout_lines(ctx) == ["hello report.csv"]
    assert any(m.endswith("stderr: oops") for m in messages)
    assert any(m.endswith("exited with code 0") for m in messages)


async def test_exit_1_is_a_warning(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(tmp_path / "warn.sh", "echo 'almost fine' >&2\nexit 1\n")
    with pytest.raises(TaskWarning, match="exited with code 1: almost fine"):
        await run_task("EXEC", {"path": str(script)}, ctx)


async def test_other_exit_code_fails_with_last_stderr_line(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(
        tmp_path / "fail.sh", "echo first >&2\necho 'disk full' >&2\necho ignored\nexit 2\n"
    )
    with pytest.raises(TaskError) as caught:
        await run_task("EXEC", {"path": str(script)}, ctx)
    assert "exited with code 2" in caught.value.message
    assert caught.value.message.endswith("disk full")
    assert str(script) in caught.value.message


async def test_markers_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = file_ctx(tmp_path)
    ctx.transfer.transfer_info["client"] = "ACME"
    script = write_script(
        tmp_path / "env.sh",
        'echo "$GATEWAYD_TRUEFULLPATH|$GATEWAYD_TI_CLIENT|$GATEWAYD_DATE|$GATEWAYD_RULE"\n'
        'echo "inherited=$HOME_FOR_TEST"\n',
    )
    monkeypatch.setenv("HOME_FOR_TEST", "yes")
    await run_task("EXEC", {"path": str(script)}, ctx)
    assert stdout_lines(ctx) == [
        f"{ctx.transfer.local_filepath}|ACME|20240305|inbox",
        "inherited=yes",
    ]


async def test_args_as_a_string_are_split_before_substitution(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, name="name with spaces.txt")
    args = "-c 'import sys; print(sys.argv[1:])' #TRUEFILENAME# \"two words\" #RULE#"
    await run_task("EXEC", {"path": PY, "args": args}, ctx)
    assert stdout_lines(ctx) == ["['name with spaces.txt', 'two words', 'inbox']"]


async def test_no_shell_is_involved(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    args = ["-c", "import sys; print(sys.argv[1:])", "$HOME", "a;b", "*"]
    await run_task("EXEC", {"path": PY, "args": args}, ctx)
    assert stdout_lines(ctx) == ["['$HOME', 'a;b', '*']"]


async def test_program_looked_up_in_path(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    await run_task("EXEC", {"path": "echo", "args": ["via", "PATH"]}, ctx)
    assert stdout_lines(ctx) == ["via PATH"]


async def test_missing_program(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    with pytest.raises(TaskError, match=r"cannot run .*no-such-program"):
        await run_task("EXEC", {"path": str(tmp_path / "no-such-program")}, ctx)


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(tmp_path / "slow.sh", 'sleep 30 &\necho "child $!"\nwait\n')
    begin = time.monotonic()
    with pytest.raises(TaskError, match=r"did not finish within 0\.5 s and was killed"):
        await run_task("EXEC", {"path": str(script), "delay": 500}, ctx)
    assert time.monotonic() - begin < 5
    leader = started_pid(ctx)
    children = [int(line.split()[1]) for line in stdout_lines(ctx) if line.startswith("child ")]
    assert children, f"the script did not start its child in time: {log_of(ctx).messages}"
    await assert_gone(leader)
    await assert_gone(children[0])


async def test_background_job_holding_the_output_is_killed_at_the_limit(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(tmp_path / "bg.sh", 'sleep 30 &\necho "child $!"\nexit 0\n')
    with pytest.raises(TaskError, match=r"still held its output after 0\.5 s"):
        await run_task("EXEC", {"path": str(script), "delay": 500}, ctx)
    [child] = [int(line.split()[1]) for line in stdout_lines(ctx) if line.startswith("child ")]
    await assert_gone(child)


async def test_redirected_background_job_is_left_running(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    pid_file = tmp_path / "bg.pid"
    script = write_script(
        tmp_path / "bg.sh", f"sleep 30 >/dev/null 2>&1 &\necho $! > {pid_file}\nexit 0\n"
    )
    begin = time.monotonic()
    await run_task("EXEC", {"path": str(script), "delay": 20000}, ctx)
    assert time.monotonic() - begin < 10
    child = int(pid_file.read_text())
    try:
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


async def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ignoring TERM', flush=True); time.sleep(30)"
    )
    task = Exec({"path": PY, "args": ["-c", code], "delay": "300"})
    task.kill_grace = 0.2
    with pytest.raises(TaskError, match="was killed"):
        await task.run(ctx)
    assert stdout_lines(ctx) == ["ignoring TERM"]
    await assert_gone(started_pid(ctx))


async def test_default_time_limit_is_the_daemon_setting(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    ctx.exec_timeout = 0.3
    with pytest.raises(TaskError, match=r"within 0\.3 s"):
        await run_task("EXEC", {"path": "sleep", "args": "30"}, ctx)
    await assert_gone(started_pid(ctx))


async def test_cancelling_the_task_kills_the_program(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    ready = asyncio.Event()
    log_of(ctx).on_line = lambda line: ready.set() if line.endswith("stdout: ready") else None
    code = "import time; print('ready', flush=True); time.sleep(30)"
    running = asyncio.create_task(run_task("EXEC", {"path": PY, "args": ["-c", code]}, ctx))
    async with asyncio.timeout(10):
        await ready.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await assert_gone(started_pid(ctx))


async def test_cancelling_kills_what_the_program_left_behind(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    seen = asyncio.Event()
    log_of(ctx).on_line = lambda line: seen.set() if " stdout: child " in line else None
    script = write_script(tmp_path / "bg.sh", 'sleep 30 &\necho "child $!"\nexit 0\n')
    running = asyncio.create_task(run_task("EXEC", {"path": str(script), "delay": 20000}, ctx))
    async with asyncio.timeout(10):
        await seen.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    [child] = [int(line.split()[1]) for line in stdout_lines(ctx) if line.startswith("child ")]
    await assert_gone(child)


async def test_output_is_streamed_while_the_program_runs(tmp_path: Path) -> None:
    """The program waits for a file that the logger creates on seeing its first line:
    it can only finish if that line reached the log before the program ended."""
    ctx = file_ctx(tmp_path)
    go = tmp_path / "go"
    log_of(ctx).on_line = lambda line: go.touch() if line.endswith("stdout: first") else None
    code = (
        "import os, sys, time\n"
        "print('first', flush=True)\n"
        "deadline = time.monotonic() + 10\n"
        "while not os.path.exists(sys.argv[1]):\n"
        "    if time.monotonic() > deadline: sys.exit(3)\n"
        "    time.sleep(0.005)\n"
        "print('second', flush=True)\n"
    )
    await run_task("EXEC", {"path": PY, "args": ["-c", code, str(go)], "delay": 20000}, ctx)
    assert stdout_lines(ctx) == ["first", "second"]


async def test_a_huge_line_is_logged_in_pieces(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    code = "import sys; sys.stdout.write('x' * 200000)"
    await run_task("EXEC", {"path": PY, "args": ["-c", code]}, ctx)
    pieces = stdout_lines(ctx)
    assert len(pieces) > 1
    assert "".join(pieces) == "x" * 200000


async def test_execmove_follows_the_file(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=b"12345")
    dest = tmp_path / "moved" / "final.csv"
    script = write_script(
        tmp_path / "mv.sh",
        f'mkdir -p {dest.parent}\nmv "$GATEWAYD_TRUEFULLPATH" {dest}\necho moving\necho {dest}\n',
    )
    await run_task("EXECMOVE", {"path": str(script)}, ctx)
    assert ctx.transfer.local_filepath == str(dest)
    assert ctx.transfer.filesize == 5
    assert dest.read_bytes() == b"12345"


async def test_execmove_with_a_path_that_does_not_exist(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    before = ctx.transfer.local_filepath
    script = write_script(tmp_path / "liar.sh", f"echo {tmp_path}/nowhere.csv\n")
    with pytest.raises(TaskError, match=r"nowhere\.csv"):
        await run_task("EXECMOVE", {"path": str(script)}, ctx)
    assert ctx.transfer.local_filepath == before
    silent = write_script(tmp_path / "silent.sh", "exit 0\n")
    with pytest.raises(TaskError, match="printed no new path"):
        await run_task("EXECMOVE", {"path": str(silent)}, ctx)


async def test_execmove_failure_does_not_retarget(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    before = ctx.transfer.local_filepath
    script = write_script(tmp_path / "bad.sh", f"echo {before}\nexit 4\n")
    with pytest.raises(TaskError, match="exited with code 4"):
        await run_task("EXECMOVE", {"path": str(script)}, ctx)
    assert ctx.transfer.local_filepath == before


async def test_execoutput_failure_message_is_stdout(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(
        tmp_path / "check.sh", "echo 'line 12: bad amount'\necho 'line 40: bad date'\nexit 2\n"
    )
    with pytest.raises(TaskError) as caught:
        await run_task("EXECOUTPUT", {"path": str(script)}, ctx)
    assert caught.value.message == "EXECOUTPUT: line 12: bad amount\nline 40: bad date"


async def test_execoutput_newfilename_retargets(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    other = tmp_path / "converted.xml"
    other.write_bytes(b"<x/>")
    script = write_script(tmp_path / "conv.sh", f"echo converting\necho NEWFILENAME:{other}\n")
    await run_task("EXECOUTPUT", {"path": str(script)}, ctx)
    assert ctx.transfer.local_filepath == str(other)
    assert ctx.transfer.filesize == 4


async def test_execoutput_failure_with_newfilename(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    other = tmp_path / "rejected.csv"
    other.write_bytes(b"r")
    script = write_script(
        tmp_path / "reject.sh", f"echo 'rejected: bad header'\necho NEWFILENAME:{other}\nexit 3\n"
    )
    with pytest.raises(TaskError) as caught:
        await run_task("EXECOUTPUT", {"path": str(script)}, ctx)
    assert caught.value.message == "EXECOUTPUT: rejected: bad header"
    assert ctx.transfer.local_filepath == str(other)


async def test_execoutput_warning(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    script = write_script(tmp_path / "w.sh", "echo '3 lines skipped'\nexit 1\n")
    with pytest.raises(TaskWarning, match="3 lines skipped"):
        await run_task("EXECOUTPUT", {"path": str(script)}, ctx)


@pytest.mark.parametrize(
    ("args", "problems"),
    [
        ({"path": "/bin/true"}, []),
        ({"path": "/bin/true", "args": ["a"], "delay": 1000}, []),
        ({"path": "/bin/true", "args": "a 'b c'", "delay": "#TI_delay#"}, []),
        ({"path": "/bin/true", "delay": "soon"}, ["argument 'delay' must be a number"]),
        ({"path": "/bin/true", "delay": True}, ["argument 'delay' must be a number"]),
        (
            {"path": "/bin/true", "args": [1]},
            ["argument 'args' must be a string or a list of strings"],
        ),
        (
            {"path": "/bin/true", "args": "'open"},
            ["argument 'args' cannot be split: No closing quotation"],
        ),
        ({}, ["missing argument 'path'"]),
    ],
)
def test_check_args(args: dict[str, object], problems: list[str]) -> None:
    for name in ("EXEC", "EXECMOVE", "EXECOUTPUT"):
        cls = task_class(name)
        assert cls is not None
        assert cls.check_args(args) == problems
