"""Where the gateway keeps things: absolute paths resolved from the settings, and the
check that every folder it needs exists or can be created."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gatewayd.config.schema import DaemonConfig, DatabaseConfig, RuleConfig

FOLDER_MODE = 0o750


def absolute(path: Path, base: Path) -> Path:
    """`path` (with `~` expanded) made absolute against `base`, without following links."""
    return Path(os.path.abspath(base / Path(path).expanduser()))


# Asked several times for every file a partner sends: computed once per rule (pathlib's
# parsing is not free), the same answer for the same settings.
@functools.lru_cache(maxsize=1024)
def _rule_folder(home: Path, data_dir: Path, folder: Path | None, name: str) -> Path:
    return absolute(folder, home) if folder is not None else data_dir / name


@functools.lru_cache(maxsize=1024)
def _rule_tmp_folder(home: Path, data_dir: Path, folder: Path | None, name: str) -> Path:
    return _rule_folder(home, data_dir, folder, name) / ".tmp"


@dataclass(frozen=True)
class Paths:
    """Absolute paths of the daemon's files and folders."""

    config_file: Path
    home: Path
    state_dir: Path
    data_dir: Path
    rules_dir: Path
    database: Path
    # Before `node`: built by keyword everywhere, but a default keeps old callers valid.
    watchers_dir: Path = Path("watchers")
    schedules_dir: Path | None = None
    pollers_dir: Path | None = None
    # Set when nodes share the database (PostgreSQL): the state folder may be shared too,
    # and the lock is then this node's own.
    node: str | None = None

    @classmethod
    def resolve(cls, config_file: Path, daemon: DaemonConfig, database: DatabaseConfig) -> Paths:
        """`home` resolves against the config file's folder, everything else against home."""
        config_file = absolute(config_file, Path.cwd())
        home = absolute(daemon.home, config_file.parent)
        return cls(
            config_file=config_file,
            home=home,
            state_dir=absolute(daemon.state_dir, home),
            data_dir=absolute(daemon.data_dir, home),
            rules_dir=absolute(daemon.rules_dir, home),
            watchers_dir=absolute(daemon.watchers_dir, home),
            database=absolute(database.path, home),
            node=daemon.node_name() if database.backend == "postgresql" else None,
            schedules_dir=absolute(daemon.schedules_dir, home),
            pollers_dir=absolute(daemon.pollers_dir, home),
        )

    @property
    def lock_file(self) -> Path:
        """Held by the running daemon: one daemon per database and data folder (per node
        name with a database that several nodes share)."""
        if self.node is not None:
            return self.state_dir / f"gatewayd-{self.node}.lock"
        return self.state_dir / "gatewayd.lock"

    def rule_folder(self, rule: RuleConfig) -> Path:
        """The rule's local folder: its `folder` (relative to home) or data_dir/<name>."""
        return _rule_folder(self.home, self.data_dir, rule.folder, rule.name)

    def rule_tmp_folder(self, rule: RuleConfig) -> Path:
        """Where incoming files are written before their final rename. Inside the rule
        folder, so that the rename stays on one filesystem and is atomic."""
        return _rule_tmp_folder(self.home, self.data_dir, rule.folder, rule.name)

    def daemon_folders(self) -> list[Path]:
        """Folders the daemon writes to, besides the rule folders."""
        return [
            self.state_dir,
            self.data_dir,
            self.rules_dir,
            self.watchers_dir,
            self.database.parent,
        ]


def folder_problem(folder: Path, *, writable: bool = True) -> tuple[Path, str] | None:
    """Why `folder` cannot be used, without creating anything: None when it is (or can be
    made) a folder we may write to. Returns the path at fault and a message."""
    if os.path.lexists(folder):
        if not folder.is_dir():
            return folder, f"{folder} is not a folder"
        if writable and not os.access(folder, os.W_OK | os.X_OK):
            return folder, f"folder {folder} is not writable"
        return None
    ancestor = folder.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "a broken link" if ancestor.is_symlink() and not ancestor.exists() else "a file"
        return ancestor, f"cannot create folder {folder}: {ancestor} is {what}"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return ancestor, f"cannot create folder {folder}: {ancestor} is not writable"
    return None


def create_folders(folders: Iterable[Path]) -> None:
    """Create each folder and its missing parents with mode 0o750."""
    for folder in folders:
        missing: list[Path] = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=FOLDER_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise
