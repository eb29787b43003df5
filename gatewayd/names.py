"""Names that become path components: the files of transfers, and the names of
accounts, rules, partners, servers and nodes.

One check for all of them, so that nothing a partner or an admin writes can climb out
of a folder, hide in one of the gateway's own (`.tmp`), or disguise itself in a listing
or a log line (line separators, right-to-left overrides).
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 255

# The gateway's own names inside rule folders: the folder of incoming temp files; in the
# data folder (where rule folders are named after their rules): the nodes' markers
# (gatewayd.cluster.shared_folder).
TMP_FOLDER = ".tmp"
NODE_MARKERS = ".gatewayd-nodes"
RESERVED = frozenset({TMP_FOLDER, NODE_MARKERS})

# Characters that reorder or isolate text when displayed (Unicode bidi controls):
# U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069. Other format characters (ZWJ,
# ZWNJ: Persian names, emoji) stay allowed.
_BIDI = frozenset(
    chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
)
# Control characters (Cc: C0, DEL, C1 such as U+0085 NEL and U+009B CSI), and the line
# and paragraph separators U+2028 and U+2029 (Zl, Zp).
_REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def is_refused_char(c: str) -> bool:
    """Whether `c` may not appear in a name: a control, a line or paragraph separator,
    or a bidi control."""
    return c in _BIDI or unicodedata.category(c) in _REFUSED_CATEGORIES


def escaped(text: str) -> str:
    """`text` with every refused character (and backslash) written as an escape, so that
    it can be shown in a message or a log line without acting on the terminal."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif is_refused_char(c):
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(c)
    return "".join(out)


def _describe(c: str) -> str:
    name = unicodedata.name(c, "")
    code = f"U+{ord(c):04X}"
    return f"{code} ({name.lower()})" if name else code


def check_name(name: str, *, reserved: bool = True) -> str | None:
    """Why `name` cannot be a path component (None when it can): empty, `.` or `..`,
    longer than 255 bytes, a path separator, a refused character, or (with
    `reserved`) one of the gateway's own names."""
    if not name or name in (".", ".."):
        return "empty or dot name"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    for c in name:
        if is_refused_char(c):
            kind = "a bidi control" if c in _BIDI else "a control or line-break character"
            return f"contains {kind}, {_describe(c)}"
    if reserved and name in RESERVED:
        return f"'{name}' is reserved for the gateway's own use"
    return None
