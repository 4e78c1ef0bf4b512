"""What a model name and a version may be, checked once wherever one enters (repository API, lookups, scans).

A model name becomes a directory name under the repository root, a metrics label and a log field, so it must
be one plain path component: no ``.`` / ``..``, no ``/`` or ``\\``, no NUL or other control characters, at
most 255 bytes of UTF-8 (the usual file-name limit). A version is what Triton allows: a positive integer in
ASCII digits (``str.isdigit()`` alone also accepts ``²``, which ``int()`` then refuses).
"""

from __future__ import annotations

import unicodedata

from server.errors import InvalidOption

MAX_NAME_BYTES = 255


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid model name, or None when it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name:
        return "must not be empty"
    if name in {".", ".."}:
        return f"must not be {name!r}"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\'"
    bad = next((c for c in name if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}), None)
    if bad is not None:
        return f"must not contain control characters (found U+{ord(bad):04X})"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes of UTF-8, more than {MAX_NAME_BYTES}"
    return None


def version_problem(version: object) -> str | None:
    """Why ``version`` is not a valid version, or None when it is."""
    if not isinstance(version, str):
        return f"must be a string, got {type(version).__name__}"
    if not version or not (version.isascii() and version.isdigit()):
        return "must be a positive integer in ASCII digits"
    if int(version) < 1:
        return "must be a positive integer (1 or more)"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_model_name(name: str) -> str:
    """``name`` unchanged, or InvalidOption (HTTP 400 / INVALID_ARGUMENT) saying what is wrong with it."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidOption(f"invalid model name {_shown(name)}: a model name {problem}")
    return name


def check_version(version: str) -> str:
    """``version`` unchanged, or InvalidOption saying what is wrong with it."""
    problem = version_problem(version)
    if problem is not None:
        raise InvalidOption(f"invalid model version {_shown(version)}: a version {problem}")
    return version


def printable(text: str) -> str:
    """A directory name as it can travel in JSON and protobuf strings (undecodable bytes escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
