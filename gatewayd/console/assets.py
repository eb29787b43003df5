"""The console's static files, shipped inside the package (`static/`): read once, then
served from memory with their type and a strict Content-Security-Policy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import resources

# Nothing but the gateway's own files: no inline script or style, no other host, no
# framing (clickjacking), no <base> or form posts elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
INDEX = "index.html"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def _read_all() -> dict[str, Asset]:
    found = {}
    for item in resources.files("gatewayd.console").joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in TYPES:
            found[item.name] = Asset(item.read_bytes(), TYPES[suffix])
    return found


class Assets:
    """The static files by name (loaded off the event loop at first use)."""

    def __init__(self) -> None:
        self._files: dict[str, Asset] | None = None
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> Asset | None:
        if self._files is None:
            async with self._lock:
                if self._files is None:
                    self._files = await asyncio.to_thread(_read_all)
        return self._files.get(name)
