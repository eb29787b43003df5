"""The `database` section and `daemon.node`: each bad combination reported at its file
and line, by `load_config` and by `gatewayd check-config`; no secret echoed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load_config
from gatewayd.config.schema import DaemonConfig


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(problem) for problem in caught.value.problems]


def test_postgresql_by_dsn_or_by_parts(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    from tests.http_support import make_cert

    ca.write_bytes(make_cert(tmp_path / "tls", "ca", ca=True).cert.read_bytes())
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          node: gw-1
        database:
          backend: postgresql
          host: db.example.org
          port: 5433
          user: gatewayd
          password: "s3cret-db-pw"
          dbname: gatewayd
          pool_size: 4
          sslmode: verify-full
          ssl_root_cert: ca.pem
        """,
    )
    loaded = load_config(f)
    database = loaded.config.database
    assert (database.backend, database.port, database.pool_size) == ("postgresql", 5433, 4)
    assert "s3cret-db-pw" not in repr(loaded.config)
    assert loaded.config.daemon.node_name() == "gw-1"
    write(
        f,
        """
        daemon:
          node: gw-1
        database:
          backend: postgresql
          dsn: postgresql://gatewayd:pw-in-dsn@db.example.org/gatewayd?sslmode=require
        """,
    )
    loaded = load_config(f)
    assert "pw-in-dsn" not in repr(loaded.config)


def test_bad_combinations_at_their_lines(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          home: .
        database:
          backend: postgresql
          dsn: "mysql://root:hunter2@db/x"
          host: db.example.org
          synchronous: FULL
          pool_size: 1
          ssl_root_cert: ca.pem
        """,
    )
    problems = problems_of(f)
    assert (
        problems
        == [
            f"{f}:3: 'database': backend postgresql needs daemon.node: the name of this node, "
            "unique among the nodes that share the database",
            f"{f}:5: 'dsn': must be a postgresql:// URL (postgresql://user@host:5432/dbname)",
            f"{f}:6: 'host': give either dsn or host/port/user/password/dbname, not both",
            f"{f}:7: 'synchronous': is a setting of backend: sqlite (this one is postgresql)",
            f"{f}:8: 'pool_size': must be at least 2",
            f"{f}:9: 'ssl_root_cert': is used with sslmode: verify-ca or verify-full only",
        ]
        or problems
    ), problems
    assert not any("hunter2" in p for p in problems), "a DSN's password is never echoed"


def test_postgresql_settings_refused_with_sqlite_and_a_missing_database(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        database:
          path: var/g.db
          user: gatewayd
        """,
    )
    assert problems_of(f) == [
        f"{f}:3: 'user': is a setting of backend: postgresql (this one is sqlite)"
    ]
    write(
        f,
        """
        daemon:
          node: "gw/1"
        database:
          backend: postgresql
          host: db.example.org
        """,
    )
    problems = problems_of(f)
    assert f"{f}:2: 'node': cannot be used as a file name: contains a path separator" in problems
    assert f"{f}:3: 'database': backend postgresql needs a dsn, or a dbname (with host, ...)" in (
        problems
    )


def test_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          node: gw-1
        database:
          backend: postgresql
          dbname: gatewayd
          sslmode: verify-ca
          ssl_root_cert: ca.pem
        """,
    )
    assert problems_of(f) == [f"{f}:7: {tmp_path / 'ca.pem'} holds no PEM certificate"]


def test_check_config_reports_a_bad_combination(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        database:
          backend: sqlite
          dsn: postgresql://db/gatewayd
        """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(f)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{f}:3: 'dsn': is a setting of backend: postgresql (this one is sqlite)" in (
        result.stderr
    )


def test_node_defaults_to_the_host_name() -> None:
    import socket

    assert DaemonConfig().node_name() == socket.gethostname()
    assert DaemonConfig(node="gw-2").node_name() == "gw-2"


def test_the_lease_is_a_few_seconds(tmp_path: Path) -> None:
    assert DaemonConfig().lease == 10.0
    assert DaemonConfig(lease=2).lease == 2.0
    f = write(tmp_path / "gatewayd.yaml", "daemon:\n  lease: 0.2\n")
    [problem] = problems_of(f)
    assert f"{f}:2:" in problem and "lease" in problem and "1" in problem, problem
