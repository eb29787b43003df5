"""Typed configuration objects.

`etc/gatewayd.yaml` is validated into `Config`; each file of the rules folder into one
`RuleConfig`. Every model forbids unknown keys and is strict about types, so that a typo
is reported (with file and line, by the loader) instead of silently ignored.

Protocol-specific options of servers, partners and accounts are validated by the model a
protocol registers (see `gatewayd.ports`), which subclasses the matching base here.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictMode

from gatewayd.config.outbound import IcapServerConfig, NotifyEndpointConfig, SmtpServerConfig
from gatewayd.model import Direction, TaskSpec
from gatewayd.names import check_name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _absolute(value: Path) -> Path:
    value = value.expanduser()
    if not value.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(value)!r}")
    return value


def _fingerprint(value: str) -> str:
    hexa = value.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexa):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits (colons allowed)")
    return hexa


# Options of protocols: a file named by its absolute path (a certificate, a key), and a
# certificate pinned by its SHA-256 (hex, colons allowed; kept as bare lowercase hex).
FilePath = Annotated[Path, StrictMode(False), AfterValidator(_absolute)]
Sha256Pin = Annotated[str, AfterValidator(_fingerprint)]


def name_problem(reason: str) -> str:
    """The message for a name that `check_name` refuses for `reason`."""
    return f"cannot be used as a file name: {reason}"


def _file_name(value: str) -> str:
    reason = check_name(value)
    if reason is not None:
        raise ValueError(name_problem(reason))
    return value


# A name that becomes a file or folder name: accounts (their subfolder of each rule
# folder), rules, partners, servers (their state folder), nodes. No separators, `.` or
# `..`, control, line-break or bidi characters, at most 255 bytes, and none of the
# gateway's own names (`.tmp`, the rules' temporary folder).
FileName = Annotated[str, AfterValidator(_file_name)]

Port = Annotated[int, Field(ge=0, le=65535)]
Secret = Annotated[str, Field(min_length=1)]
# YAML gives strings and lists: these convert from them, every other field is strict.
LaxPath = Annotated[Path, StrictMode(False)]
Names = Annotated[tuple[str, ...], StrictMode(False)]
LaxDirection = Annotated[Direction, StrictMode(False)]


_POSTGRESQL_ONLY = (
    "dsn",
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "pool_size",
    "sslmode",
    "ssl_root_cert",
    "connect_timeout",
)
_DSN_PARTS = ("host", "port", "user", "password", "dbname")


class DatabaseConfig(Strict):
    """`database`: SQLite (the embedded default: one file, one daemon) or PostgreSQL (a
    server that several nodes may share). Fields are checked in this order: each check
    sees the fields above it."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # SQLite: the file, relative to home.
    path: LaxPath = Path("var/gatewayd.db")
    # NORMAL survives a process crash under WAL; FULL also survives a power loss.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 5000
    # PostgreSQL: a DSN (postgresql://user@host:5432/dbname?sslmode=verify-full), or its
    # parts. A DSN may hold a password: it is kept out of reprs and messages like one.
    dsn: str | None = Field(default=None, repr=False)
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    user: str | None = None
    password: Secret | None = Field(default=None, repr=False)
    dbname: str | None = None
    # Connections of this node to the server (the writer holds one while it commits).
    pool_size: Annotated[int, Field(ge=2, le=1000)] = 10
    # TLS to the server, as libpq's sslmode; verify-ca and verify-full check the server's
    # certificate against `ssl_root_cert` (a PEM CA file, relative to home).
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    ssl_root_cert: LaxPath | None = None
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("path", "synchronous", "busy_timeout_ms")
    @classmethod
    def _sqlite_only(cls, value: object, info: ValidationInfo) -> object:
        if info.data.get("backend") == "postgresql":
            raise ValueError("is a setting of backend: sqlite (this one is postgresql)")
        return value

    @field_validator(*_POSTGRESQL_ONLY)
    @classmethod
    def _postgresql_only(cls, value: object, info: ValidationInfo) -> object:
        if info.data.get("backend") == "sqlite":
            raise ValueError("is a setting of backend: postgresql (this one is sqlite)")
        if info.field_name in _DSN_PARTS and info.data.get("dsn") is not None:
            raise ValueError(f"give either dsn or {'/'.join(_DSN_PARTS)}, not both")
        return value

    @field_validator("dsn")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            # The value is not echoed: it may hold a password.
            raise ValueError("must be a postgresql:// URL (postgresql://user@host:5432/dbname)")
        return value

    @field_validator("ssl_root_cert")
    @classmethod
    def _verified_mode(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("sslmode") not in ("verify-ca", "verify-full"):
            raise ValueError("is used with sslmode: verify-ca or verify-full only")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> DatabaseConfig:
        if self.backend == "postgresql" and self.dsn is None and self.dbname is None:
            raise ValueError("backend postgresql needs a dsn, or a dbname (with host, ...)")
        return self


class LoggingConfig(Strict):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class SchedulerConfig(Strict):
    max_transfers: Annotated[int, Field(ge=1)] = 20
    max_per_partner: Annotated[int, Field(ge=1)] = 4
    # Defaults for new client transfers that do not say otherwise.
    attempts: Annotated[int, Field(ge=0)] = 3
    first_retry_delay: Annotated[float, Field(ge=0)] = 30.0
    retry_increment_factor: Annotated[float, Field(ge=1)] = 2.0


class TaskConfig(Strict):
    type: str
    args: dict[str, object] = Field(default_factory=dict)

    def spec(self) -> TaskSpec:
        return TaskSpec(type=self.type, args=dict(self.args))


class DaemonConfig(Strict):
    """Settings of the daemon itself. Relative paths resolve against `home`."""

    home: LaxPath = Path(".")
    state_dir: LaxPath = Path("var")
    data_dir: LaxPath = Path("var/data")
    rules_dir: LaxPath = Path("rules")
    # One YAML file per local folder watcher (gatewayd.config.watchers).
    watchers_dir: LaxPath = Path("watchers")
    # One YAML file per schedule (gatewayd.config.schedules); a missing folder: none.
    schedules_dir: LaxPath = Path("schedules")
    # One YAML file per remote poller (gatewayd.config.pollers); a missing folder: none.
    pollers_dir: LaxPath = Path("pollers")
    # Seconds the records of the automation (files watched or polled, firings) are kept
    # once they guard nothing any more (gatewayd.automation.retention): 7 days.
    automation_retention: Annotated[float, Field(gt=0)] = 7 * 86400.0
    # One YAML file per account, partner, API user, besides those of the main file
    # (gatewayd.config.objects; the admin API writes there); a missing folder: none.
    accounts_dir: LaxPath = Path("accounts")
    partners_dir: LaxPath = Path("partners")
    api_users_dir: LaxPath = Path("users")
    # An IANA zone name (Europe/Paris); default: the system's zone.
    timezone: str | None = None
    shutdown_timeout: Annotated[float, Field(gt=0)] = 10.0
    # Server uploads under these names complete on rename, not on close.
    temp_patterns: Names = ("*.part", "*.partial", "*.filepart", "*.tmp")
    temp_rename_timeout: Annotated[float, Field(gt=0)] = 3600.0
    progress_interval: Annotated[float, Field(gt=0)] = 1.0
    exec_timeout: Annotated[float, Field(gt=0)] = 300.0
    # The asyncio event loop: `uvloop` serves HTTPS downloads much faster (its TLS
    # writes are not limited to 16 KiB blocks) but takes HTTPS uploads somewhat slower;
    # `auto` = uvloop when installed.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    # This node's name: the owner recorded on the transfers it runs. Default: the host
    # name; required with a PostgreSQL database, which several nodes may share.
    node: FileName | None = None
    # Seconds a node's heartbeat holds (renewed every quarter of it). With several nodes
    # on one PostgreSQL database, a node silent for longer is dead: another takes over
    # its running transfers; a node that could not renew its own for that long stops at
    # once (systemd restarts it). Shorter: faster takeovers; longer: fewer false ones
    # when the database or the network hiccups.
    lease: Annotated[float, Field(ge=1, le=600)] = 10.0
    # Several nodes on one PostgreSQL database (the cluster bus): seconds a pause or
    # cancel sent to this node waits for the node that runs the transfer; seconds
    # between looks at the other nodes' commands and notices besides LISTEN/NOTIFY;
    # `cluster_notify: false` = polling only.
    command_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    cluster_poll: Annotated[float, Field(gt=0, le=60)] = 1.0
    cluster_notify: bool = True
    # Tasks run for every failed transfer after its rule's own error chain (the
    # gateway-wide error chain: one EMAIL or NOTIFY alerts on all failures).
    error_tasks: Annotated[tuple[TaskConfig, ...], StrictMode(False)] = ()

    def node_name(self) -> str:
        """`node`, else the host name."""
        return self.node or socket.gethostname()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as Europe/Paris or UTC)"
            ) from None
        return value


class Argon2Config(Strict):
    """The argon2id parameters of new hashes (`gatewayd hash-password`, and the decoys
    that unknown logins are checked against). A hash is always verified with its own
    parameters, written in it: changing these never breaks an existing password.
    The defaults are those of `gatewayd.passwords.Argon2Parameters` (OWASP's)."""

    time_cost: Annotated[int, Field(ge=1, le=100)] = 2  # passes over the memory
    memory_cost: Annotated[int, Field(ge=8, le=4 * 1024 * 1024)] = 19456  # KiB
    parallelism: Annotated[int, Field(ge=1, le=64)] = 1  # lanes

    @model_validator(mode="after")
    def _enough_memory(self) -> Argon2Config:
        if self.memory_cost < 8 * self.parallelism:
            raise ValueError(
                f"memory_cost must be at least 8 KiB per lane ({8 * self.parallelism} for "
                f"parallelism {self.parallelism})"
            )
        return self


class PasswordsConfig(Strict):
    """Where password hashes are computed: processes of their own, never the event loop
    nor the threads that write files."""

    # Processes that check passwords; 0 = every core but one (at least one).
    workers: Annotated[int, Field(ge=0, le=256)] = 0
    # Checks waiting for a free worker; a login beyond them is refused at once as busy
    # (SFTP: authentication fails; HTTP API: 503 with Retry-After) without any hashing.
    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Priority of those processes (Unix nice, 0-19): 10 lets transfers go first when
    # every core is busy; 0 gives logins an equal share (faster logins on a machine
    # shared with other work, slower transfers during a login rush).
    nice: Annotated[int, Field(ge=0, le=19)] = 10
    argon2: Argon2Config = Argon2Config()


class ListenConfig(Strict):
    address: str = "127.0.0.1"
    port: Port = 0


Limit = Annotated[int, Field(ge=0)]


class ServerConfig(Strict):
    """A listener of ours. Protocols subclass it with their own options."""

    protocol: str
    address: str = "127.0.0.1"
    port: Port = 0
    enabled: bool = True
    # SO_REUSEPORT: several nodes on one machine listen on the same port, and the kernel
    # spreads the connections over them (README, "Cluster"). Every node of the port must
    # set it (and run as the same user).
    reuse_port: bool = False
    # Files one account may be uploading (downloading) at once through this server,
    # counted across every server and protocol of the gateway; 0 = unlimited. An
    # account's own `max_uploads` / `max_downloads` overrides them.
    max_uploads_per_account: Limit = 64
    max_downloads_per_account: Limit = 64


class PartnerConfig(Strict):
    """A remote system we connect to as a client. Protocols subclass it."""

    protocol: str
    address: str = ""
    port: Port = 0
    login: str = ""
    password: Secret | None = Field(default=None, repr=False)
    max_transfers: Annotated[int, Field(ge=1)] | None = None
    # A disabled partner is kept, but no transfer to or from it is created or started.
    enabled: bool = True


class AccountConfig(Strict):
    """A local account that partners use to log in to our servers."""

    # An argon2id hash ($argon2id$...) or bcrypt ($2b$...), never the password itself.
    password: Secret | None = Field(default=None, repr=False)
    public_keys: Names = ()
    enabled: bool = True
    # Overrides of the servers' `max_uploads_per_account` / `max_downloads_per_account`
    # for this account (0 = unlimited).
    max_uploads: Limit | None = None
    max_downloads: Limit | None = None

    @field_validator("password")
    @classmethod
    def _must_be_a_hash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("$argon2id$", "$2b$", "$2a$", "$2y$")):
            raise ValueError(
                "must be an argon2id or bcrypt hash (make one with `gatewayd hash-password`)"
            )
        return value


def _permission(value: str) -> str:
    if not re.fullmatch(r"[rwd]*", value):
        raise ValueError("must be made of the letters r (read), w (write) and d (delete)")
    return value


Permission = Annotated[str, AfterValidator(_permission)]


class AdminUserConfig(Strict):
    password: Secret = Field(repr=False)
    # A disabled user logs in no more (nor do its tokens), and is kept.
    enabled: bool = True
    # Per area (transfers, servers, partners, rules, users, administration): any of r, w, d.
    permissions: dict[
        Literal["transfers", "servers", "partners", "rules", "users", "administration"],
        Permission,
    ] = Field(default_factory=dict)

    @field_validator("password")
    @classmethod
    def _must_be_a_hash(cls, value: str) -> str:
        return AccountConfig._must_be_a_hash(value) or value


class LoginThrottleConfig(Strict):
    """The admin API's login throttle (README, "Admin API"): failures per address over
    `window` seconds; past `free_failures` each answer waits `base_delay` seconds,
    doubling up to `max_delay`; the `max_address_failures`-th bans the address for
    `ban` seconds."""

    window: Annotated[float, Field(gt=0)] = 900.0
    free_failures: Annotated[int, Field(ge=0)] = 2
    base_delay: Annotated[float, Field(ge=0)] = 0.5
    max_delay: Annotated[float, Field(ge=0)] = 8.0
    max_address_failures: Annotated[int, Field(ge=1)] = 10
    ban: Annotated[float, Field(gt=0)] = 900.0


class ApiConfig(Strict):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: Port = 8080
    users: dict[str, AdminUserConfig] = Field(default_factory=dict)
    # HTTPS: a PEM certificate chain and its private key (both or neither); relative
    # paths resolve against home.
    tls_cert: LaxPath | None = None
    tls_key: LaxPath | None = Field(default=None, validate_default=True)
    # Whether `/metrics` asks for credentials like the rest of the API (any user or
    # token, whatever its permissions). False lets anyone who reaches the API's
    # address scrape it.
    metrics_auth: bool = True
    # Files one element of a Tapis transfer task (/v3/files/transfers) may expand to; an
    # element naming a folder with more fails with a message saying so.
    tapis_max_files: Annotated[int, Field(gt=0)] = 10_000
    login_throttle: LoginThrottleConfig = LoginThrottleConfig()

    @field_validator("tls_key")
    @classmethod
    def _both_or_neither(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (value is None) != (info.data.get("tls_cert") is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        return value


# ------------------------------------------------------------------ OpenPGP keys (keys:)


class KeyConfig(Strict):
    """An OpenPGP key of `keys:`: a partner's public key, or one of our private keys with
    the passphrase that unlocks it (read from a file or an environment variable, never
    written in the configuration). The file (armored or binary) holds one key."""

    file: LaxPath
    kind: Literal["public", "private"]
    passphrase_file: LaxPath | None = None
    passphrase_env: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _passphrase_source(self) -> KeyConfig:
        given = [n for n in ("passphrase_file", "passphrase_env") if getattr(self, n) is not None]
        if self.kind == "private" and len(given) != 1:
            raise ValueError(
                "a private key needs exactly one of 'passphrase_file' and 'passphrase_env'"
            )
        if self.kind == "public" and given:
            raise ValueError(f"a public key has no passphrase: remove '{given[0]}'")
        return self


class Config(Strict):
    """The whole of `gatewayd.yaml`, plus the rules loaded from the rules folder."""

    daemon: DaemonConfig = DaemonConfig()
    database: DatabaseConfig = DatabaseConfig()
    logging: LoggingConfig = LoggingConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    api: ApiConfig = ApiConfig()
    passwords: PasswordsConfig = PasswordsConfig()
    # Validated by the loader, with their protocol's model and `FileName` names.
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    partners: dict[str, PartnerConfig] = Field(default_factory=dict)
    accounts: dict[FileName, AccountConfig] = Field(default_factory=dict)
    # OpenPGP keys by name, for the ENCRYPT/DECRYPT/SIGN/VERIFY tasks (gatewayd.crypto).
    keys: dict[FileName, KeyConfig] = Field(default_factory=dict)
    # Servers that tasks reach out to (gatewayd.config.outbound): ICAP scanners, SMTP
    # servers, receivers of notices.
    icap: dict[str, IcapServerConfig] = Field(default_factory=dict)
    smtp: dict[str, SmtpServerConfig] = Field(default_factory=dict)
    notify: dict[str, NotifyEndpointConfig] = Field(default_factory=dict)
    # Filled by the loader from the rules folder, not from gatewayd.yaml.
    rules: dict[str, RuleConfig] = Field(default_factory=dict, exclude=True)
    # Absolute path of the file this came from; relative paths resolve against home.
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("database")
    @classmethod
    def _named_node(cls, value: DatabaseConfig, info: ValidationInfo) -> DatabaseConfig:
        daemon = info.data.get("daemon")
        if value.backend == "postgresql" and daemon is not None and daemon.node is None:
            raise ValueError(
                "backend postgresql needs daemon.node: the name of this node, unique "
                "among the nodes that share the database"
            )
        return value


class AllowConfig(Strict):
    accounts: Names | Literal["all"] = ()
    partners: Names | Literal["all"] = ()


def _rule_name(value: str) -> str:
    # The name is also the rule's file name: keep it portable.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(
            "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def _virtual_path(value: str) -> str:
    parts = value.split("/")
    if (
        not value.startswith("/")
        or any(part in ("", ".", "..") for part in parts[1:])
        or re.search(r"[\\\x00-\x1f\x7f]", value)
    ):
        raise ValueError(
            "must be a path such as /inbox or /partners/acme: starting with '/', "
            "without empty, '.' or '..' parts, backslashes or control characters"
        )
    return value


class RuleConfig(Strict):
    """One rule: `rules/<name>.yaml`."""

    name: Annotated[str, AfterValidator(_rule_name), AfterValidator(_file_name)]
    direction: LaxDirection
    # How partners address the rule (the virtual folder for SFTP/HTTP).
    path: Annotated[str, AfterValidator(_virtual_path)]
    comment: str = ""
    # Local folder of the rule; default: <data_dir>/<name>.
    folder: LaxPath | None = None
    # Per-account subfolders unless shared.
    shared_folder: bool = False
    on_collision: Literal["rename", "overwrite", "fail"] = "rename"
    # receive rules: partners may rename the files they uploaded (within their folder).
    allow_rename: bool = False
    # send rules: partners may delete the files they may download ("get, then rm").
    allow_delete: bool = False
    allow: AllowConfig | Literal["all"] = AllowConfig()
    pre: Annotated[tuple[TaskConfig, ...], StrictMode(False)] = ()
    post: Annotated[tuple[TaskConfig, ...], StrictMode(False)] = ()
    error: Annotated[tuple[TaskConfig, ...], StrictMode(False)] = ()
    # Where this rule came from, for messages; set by the loader.
    source: Path | None = Field(default=None, exclude=True)

    def allows_account(self, name: str) -> bool:
        if self.allow == "all":
            return True
        return self.allow.accounts == "all" or name in self.allow.accounts

    def allows_partner(self, name: str) -> bool:
        if self.allow == "all":
            return True
        return self.allow.partners == "all" or name in self.allow.partners


Config.model_rebuild()
