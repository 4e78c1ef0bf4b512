"""What a Triton-style model repository holds on disk: model directories, version directories, policies.

Pure functions over the file system (no sessions, no state): ``server.repository`` decides what to load.
Layout: ``ROOT/<name>/config.pbtxt`` (optional) and ``ROOT/<name>/<version>/model.onnx``, versions being
positive integers as in Triton. Only the parts of ``config.pbtxt`` that matter here are read (``name``,
``platform`` / ``backend``, ``version_policy``), with small patterns rather than a protobuf parser, so that
the server never registers Triton's ``inference.*`` symbols just to read a text file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
ONNX_PLATFORMS = ("onnxruntime_onnx",)
ONNX_BACKENDS = ("onnxruntime",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Fingerprint = tuple[int, ...]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve, as Triton's ``version_policy``."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :] if self.count > 0 else []

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return "all"


def parse_policy(text: str) -> VersionPolicy:
    """``latest:N`` (``latest`` = latest:1), ``all``, or ``specific:1,3``; ValueError otherwise."""
    kind, _, rest = text.strip().lower().partition(":")
    try:
        if kind == "all" and not rest:
            return VersionPolicy("all")
        if kind == "latest":
            count = int(rest) if rest else 1
            if count < 1:
                raise ValueError
            return VersionPolicy("latest", count=count)
        if kind == "specific" and rest:
            versions = tuple(sorted({int(v) for v in rest.split(",") if v.strip()}))
            if versions and min(versions) >= 1:
                return VersionPolicy("specific", versions=versions)
    except ValueError:
        pass
    raise ValueError(f"version policy must be latest:N, all or specific:V1,V2 (N, V >= 1), got {text!r}")


def _block(text: str, key: str) -> str | None:
    """The ``{ ... }`` body after ``key:`` / ``key`` (balanced braces), or None."""
    match = re.search(rf"\b{key}\s*:?\s*\{{", text)
    if match is None:
        return None
    depth, start = 1, match.end()
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise ValueError(f"unbalanced braces after {key!r}")


def policy_from_config(text: str) -> VersionPolicy | None:
    """The ``version_policy`` of a config.pbtxt, or None when it sets none."""
    body = _block(text, "version_policy")
    if body is None:
        return None
    latest = _block(body, "latest")
    if latest is not None:
        found = re.search(r"num_versions\s*:\s*(\d+)", latest)
        return parse_policy(f"latest:{found.group(1) if found else 1}")
    specific = _block(body, "specific")
    if specific is not None:
        numbers = re.findall(r"\d+", " ".join(re.findall(r"versions\s*:\s*(\[[^\]]*\]|\d+)", specific)))
        return parse_policy("specific:" + ",".join(numbers))
    if _block(body, "all") is not None:
        return VersionPolicy("all")
    raise ValueError("version_policy must hold latest, all or specific")


def _string_field(text: str, key: str) -> str | None:
    found = re.search(rf'^\s*{key}\s*:\s*"([^"]*)"', text, flags=re.M)
    return found.group(1) if found else None


def valid_model_name(name: str) -> bool:
    return bool(_NAME.match(name)) and name not in {".", ".."}


def _stat(path: Path) -> Fingerprint:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class VersionFiles:
    version: str
    model: Path
    fingerprint: Fingerprint  # model.onnx and config.pbtxt (mtime, size): a change means "reload"


@dataclass(frozen=True)
class ModelDir:
    """One model directory as found on disk."""

    name: str
    path: Path
    policy: VersionPolicy
    versions: dict[str, VersionFiles] = field(default_factory=dict)
    error: str | None = None  # the directory cannot be served at all (bad config.pbtxt)

    def wanted(self) -> list[str]:
        """The versions the policy selects, oldest first."""
        return [str(v) for v in self.policy.select(int(v) for v in self.versions)]


def read_model_dir(path: Path, default_policy: VersionPolicy) -> ModelDir:
    """Versions and policy of ``path`` (a model directory). Problems land in ``error``, never raise."""
    name = path.name
    config = path / CONFIG_FILENAME
    policy = default_policy
    config_print: Fingerprint = ()
    try:
        if config.is_file():
            config_print = _stat(config)
            text = config.read_text(encoding="utf-8", errors="replace")
            declared = _string_field(text, "name")
            if declared not in (None, "", name):
                raise ValueError(f"config.pbtxt names the model {declared!r}, its directory is {name!r}")
            platform, backend = _string_field(text, "platform"), _string_field(text, "backend")
            if (platform or backend) and platform not in ONNX_PLATFORMS and backend not in ONNX_BACKENDS:
                raise ValueError(
                    f"config.pbtxt asks for platform {platform!r} / backend {backend!r}; "
                    "danet-serve runs onnxruntime_onnx models"
                )
            policy = policy_from_config(text) or default_policy
    except (OSError, ValueError) as exc:
        return ModelDir(name, path, default_policy, error=f"{config}: {exc}")
    versions: dict[str, VersionFiles] = {}
    for child in path.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
            model = child / MODEL_FILENAME
            versions[str(int(child.name))] = VersionFiles(
                str(int(child.name)), model, _stat(model) + config_print
            )
    return ModelDir(name, path, policy, dict(sorted(versions.items(), key=lambda kv: int(kv[0]))))


def scan_repository(root: Path, default_policy: VersionPolicy) -> dict[str, ModelDir]:
    """Every model directory under ``root`` by name (sorted); hidden and invalid names are skipped."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a directory")
    return {
        child.name: read_model_dir(child, default_policy)
        for child in sorted(root.iterdir())
        if child.is_dir() and valid_model_name(child.name)
    }
