"""The admin API as the CLI reaches it: where it is, who we are, and one request at a time.

Settings come from, in order: command-line options, the environment
(`GATEWAYD_API_URL`, `GATEWAYD_API_USER`, `GATEWAYD_API_PASSWORD`, `GATEWAYD_API_TOKEN`),
then a small YAML file (`--client-config`, `$GATEWAYD_CLIENT_CONFIG`, or
`~/.config/gatewayd/client.yaml`) with the keys `url`, `user`, `password`, `token`,
`cacert` and `insecure`. A file that holds a password or a token must not be readable
by others. Standard library only: the CLI is short-lived and blocking is fine here.
"""

from __future__ import annotations

import base64
import getpass
import ipaddress
import json
import os
import ssl
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.cli.exits import CliError, Exit

URL_ENV = "GATEWAYD_API_URL"
USER_ENV = "GATEWAYD_API_USER"
PASSWORD_ENV = "GATEWAYD_API_PASSWORD"
TOKEN_ENV = "GATEWAYD_API_TOKEN"
CLIENT_CONFIG_ENV = "GATEWAYD_CLIENT_CONFIG"
DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_KEYS = ("url", "user", "password", "token", "cacert", "insecure")


@dataclass(frozen=True)
class Settings:
    url: str
    user: str | None
    password: str | None
    token: str | None
    cacert: str | None
    insecure: bool

    def __repr__(self) -> str:  # never the password or the token
        return f"Settings(url={self.url!r}, user={self.user!r})"


def default_client_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gatewayd" / "client.yaml"


def _read_client_config(path: Path, explicit: bool) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        info = path.stat()
    except FileNotFoundError:
        if explicit:
            raise CliError(Exit.USAGE, f"{path}: no such file") from None
        return {}
    except OSError as exc:
        raise CliError(Exit.USAGE, f"{path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CliError(Exit.USAGE, f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise CliError(Exit.USAGE, f"{path}: expected a mapping of settings")
    unknown = sorted(str(k) for k in data if k not in CONFIG_KEYS)
    if unknown:
        raise CliError(
            Exit.USAGE,
            f"{path}: unknown setting {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})",
        )
    if (data.get("password") or data.get("token")) and stat.S_IMODE(info.st_mode) & 0o077:
        raise CliError(
            Exit.USAGE,
            f"{path} holds a secret but others may read it: chmod 600 {path}",
        )
    return data


def resolve_settings(
    *,
    url: str | None,
    user: str | None,
    client_config: str | None,
    cacert: str | None,
    insecure: bool,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Options, then environment, then the client configuration file."""
    env = os.environ if environ is None else environ
    explicit = client_config or env.get(CLIENT_CONFIG_ENV)
    path = Path(explicit) if explicit else default_client_config()
    file = _read_client_config(path, explicit=bool(explicit))

    def pick(option: str | None, env_name: str | None, key: str) -> Any:
        if option:
            return option
        if env_name and env.get(env_name):
            return env[env_name]
        return file.get(key)

    chosen_user = pick(user, USER_ENV, "user")
    # A user named on the command line means "log in as that user", not a token.
    token = None if user else pick(None, TOKEN_ENV, "token")
    password = pick(None, PASSWORD_ENV, "password") if chosen_user else None
    return Settings(
        url=str(pick(url, URL_ENV, "url") or DEFAULT_URL).rstrip("/"),
        user=None if chosen_user is None else str(chosen_user),
        password=None if password is None else str(password),
        token=None if token is None else str(token),
        cacert=pick(cacert, None, "cacert"),
        insecure=bool(insecure or file.get("insecure") is True),
    )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiClient:
    """Requests to the admin API; every failure becomes a one-line `CliError`."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.timeout = timeout
        parsed = urllib.parse.urlsplit(settings.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CliError(Exit.USAGE, f"bad API URL {settings.url!r} (e.g. {DEFAULT_URL})")
        handlers: list[urllib.request.BaseHandler] = []
        if parsed.scheme == "https":
            context = ssl.create_default_context(cafile=settings.cacert)
            if settings.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=context))
        if _is_loopback(parsed.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy this machine
        self._opener = urllib.request.build_opener(*handlers)
        self._auth: str | None = None

    def _authorization(self) -> str:
        if self._auth is not None:
            return self._auth
        s = self.settings
        if s.token:
            self._auth = f"Bearer {s.token}"
        elif s.user:
            password = s.password
            if password is None:
                if not sys.stdin.isatty():
                    raise CliError(
                        Exit.AUTH, f"no password for user '{s.user}': set {PASSWORD_ENV}"
                    )
                password = getpass.getpass(f"Password for {s.user}: ")
            raw = f"{s.user}:{password}".encode()
            self._auth = "Basic " + base64.b64encode(raw).decode("ascii")
        else:
            raise CliError(
                Exit.AUTH,
                f"no credentials: use --user (with {PASSWORD_ENV}) or set {TOKEN_ENV}",
            )
        return self._auth

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Send one request; returns (status, decoded JSON or None, headers) for 2xx
        answers and raises CliError for everything else."""
        url = self.settings.url + path
        if query:
            url += "?" + urllib.parse.urlencode(list(query))
        data = raw
        headers = {"Authorization": self._authorization(), "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                status, payload, answer_headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as exc:
            status, payload, answer_headers = exc.code, exc.read(), exc.headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                Exit.UNREACHABLE, f"cannot reach the API at {self.settings.url}: {reason}"
            ) from None
        decoded = _decode(payload)
        if status >= 400:
            raise _http_error(status, decoded)
        return status, decoded, dict(answer_headers.items())

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        return self.request("GET", path, query=query)[1]

    def events(self, path: str) -> Iterator[tuple[str, Any]]:
        """The (event, decoded JSON data) of a Server-Sent Events stream, as they come;
        `NoStream` when the gateway has no such stream (an older version)."""
        headers = {"Authorization": self._authorization(), "Accept": "text/event-stream"}
        request = urllib.request.Request(self.settings.url + path, headers=headers)
        try:
            answer = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 405):
                raise NoStream(path) from None
            raise _http_error(exc.code, _decode(exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                Exit.UNREACHABLE, f"cannot reach the API at {self.settings.url}: {reason}"
            ) from None
        with answer:
            if not answer.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise NoStream(path)
            event = "message"
            data: list[str] = []
            try:
                for raw in answer:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data:
                            yield event, _decode("\n".join(data).encode())
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
            except OSError as exc:
                raise CliError(Exit.UNREACHABLE, f"the event stream broke: {exc}") from None


class NoStream(Exception):
    """The gateway does not offer that event stream."""


def _decode(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


def _http_error(status: int, decoded: Any) -> CliError:
    messages = []
    if isinstance(decoded, dict) and isinstance(decoded.get("errors"), list):
        messages = [str(e.get("message", e)) for e in decoded["errors"] if isinstance(e, dict)]
    if messages:
        text = "; ".join(messages)
    else:  # not our API's answer (a proxy, another server): a short excerpt
        text = " ".join(str(decoded or "no details").split())
        text = text if len(text) <= 160 else text[:157] + "..."
    code = {401: Exit.AUTH, 403: Exit.AUTH, 404: Exit.NOT_FOUND}.get(status, Exit.ERROR)
    return CliError(code, f"HTTP {status}: {' '.join(text.split())}")
