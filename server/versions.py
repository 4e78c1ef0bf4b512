"""What a Triton-style model repository holds on disk: model directories, version directories, policies.

Pure functions over the file system (no sessions, no state): ``server.repository`` decides what to load.
Layout: ``ROOT/<name>/config.pbtxt`` (optional) and ``ROOT/<name>/<version>/model.onnx``, versions being
positive integers as in Triton. Only the parts of ``config.pbtxt`` that matter here are read (``name``,
``platform`` / ``backend``, ``version_policy``), with small patterns rather than a protobuf parser, so that
the server never registers Triton's ``inference.*`` symbols just to read a text file.

Nothing here raises on an odd entry: a model directory that cannot be served carries its ``error``, a version
directory that cannot be one lands in ``problems``, and every reason names paths relative to the repository
root (answers never show where the repository lives). Directories and files that resolve (symlinks) outside
the root are refused unless ``allow_links_outside`` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from server.names import name_problem, version_problem

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
ONNX_PLATFORMS = ("onnxruntime_onnx",)
ONNX_BACKENDS = ("onnxruntime",)

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


def relative(path: Path, root: Path) -> str:
    """``path`` as shown in answers: relative to the repository root (never the absolute location)."""
    for base in (root, root.resolve()):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.name


def escapes(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (through symlinks) to somewhere outside ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop
        return True
    return False


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
    error: str | None = None  # the directory cannot be served at all (bad name, link outside, bad config)
    problems: dict[str, str] = field(default_factory=dict)  # entry name -> why it is not a usable version
    rejected: bool = False  # not a model directory at all (invalid name, resolves outside the repository)

    def wanted(self) -> list[str]:
        """The versions the policy selects, oldest first."""
        return [str(v) for v in self.policy.select(int(v) for v in self.versions)]


def _version_dir(child: Path, root: Path, allow_links_outside: bool) -> str | None:
    """Why ``child`` (a directory named like a version) cannot be served, or None."""
    if not allow_links_outside:
        for path in (child, child / MODEL_FILENAME):
            if path.exists() and escapes(path, root):
                return f"{relative(path, root)} resolves outside the model repository"
    return None


def read_model_dir(
    path: Path, default_policy: VersionPolicy, *, root: Path | None = None, allow_links_outside: bool = False
) -> ModelDir:
    """Versions and policy of ``path`` (a model directory under ``root``, by default its parent).
    Problems land in ``error`` and ``problems``, never raise."""
    root = path.parent if root is None else root
    name = path.name
    problem = name_problem(name)
    if problem is not None:
        return ModelDir(
            name, path, default_policy, error=f"invalid model name: a model name {problem}", rejected=True
        )
    if not allow_links_outside and escapes(path, root):
        return ModelDir(
            name, path, default_policy, error=f"{name} resolves outside the model repository", rejected=True
        )
    config = path / CONFIG_FILENAME
    policy = default_policy
    config_print: Fingerprint = ()
    try:
        if config.is_file():
            if not allow_links_outside and escapes(config, root):
                raise ValueError("resolves outside the model repository")
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
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return ModelDir(name, path, default_policy, error=f"{relative(config, root)}: {reason}")
    versions: dict[str, VersionFiles] = {}
    problems: dict[str, str] = {}
    try:
        children = sorted(path.iterdir())
    except OSError as exc:
        return ModelDir(name, path, policy, error=f"{name}: {exc.strerror or exc}")
    for child in children:
        if not child.name.isdigit() or not child.is_dir():
            continue  # not a version directory (Triton ignores these as well)
        problem = version_problem(child.name)
        if problem is not None:
            if not (child.name.isascii() and int(child.name) == 0):  # "0": ignored, as by Triton
                problems[child.name] = f"{relative(child, root)}: not a version: a version {problem}"
            continue
        problem = _version_dir(child, root, allow_links_outside)
        if problem is not None:
            problems[child.name] = problem
            continue
        model = child / MODEL_FILENAME
        version = str(int(child.name))
        versions[version] = VersionFiles(version, model, _stat(model) + config_print)
    ordered = dict(sorted(versions.items(), key=lambda kv: int(kv[0])))
    return ModelDir(name, path, policy, ordered, problems=problems)


def scan_repository(
    root: Path, default_policy: VersionPolicy, *, allow_links_outside: bool = False
) -> dict[str, ModelDir]:
    """Every model directory under ``root`` by name (sorted); hidden entries (``.name``) are skipped, invalid
    names and directories that resolve outside ``root`` are listed with their ``error``."""
    if not root.is_dir():
        raise FileNotFoundError("the model repository is not a directory")
    found: dict[str, ModelDir] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        found[child.name] = read_model_dir(
            child, default_policy, root=root, allow_links_outside=allow_links_outside
        )
    return found


def batching_from_config(text: str) -> dict[str, object] | None:
    """``max_batch_size``, ``dynamic_batching`` and ``instance_group`` of a config.pbtxt, None when it sets
    none of them. ``instance_count`` sums the groups' counts (Triton runs that many instances)."""
    found: dict[str, object] = {}
    size = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", text, flags=re.M)
    if size:
        found["max_batch_size"] = int(size.group(1))
    dynamic = _block(text, "dynamic_batching")
    if dynamic is not None:
        settings: dict[str, object] = {}
        delay = re.search(r"max_queue_delay_microseconds\s*:\s*(\d+)", dynamic)
        if delay:
            settings["max_queue_delay_microseconds"] = int(delay.group(1))
        preferred = re.findall(r"preferred_batch_size\s*:\s*(\[[^\]]*\]|\d+)", dynamic)
        if preferred:
            settings["preferred_batch_size"] = [int(v) for v in re.findall(r"\d+", " ".join(preferred))]
        found["dynamic_batching"] = settings
    groups = re.search(r"\binstance_group\s*:?\s*\[(.*?)\]", text, flags=re.S)
    if groups:
        counts = [int(c) for c in re.findall(r"\bcount\s*:\s*(\d+)", groups.group(1))]
        found["instance_count"] = sum(counts) if counts else 1
    return found or None


def read_batching(model_dir: Path) -> dict[str, object] | None:
    """The batching part of ``model_dir/config.pbtxt`` (None without the file or the fields)."""
    config = model_dir / CONFIG_FILENAME
    try:
        return batching_from_config(config.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
