"""The model repository: which versions exist, which serve, and how one replaces another without downtime.

The engine asks it for "the current session of (name, version)" (``lease``) and keeps queues, batching,
execution and the segmentation pipeline to itself; this module discovers, loads, verifies, swaps and retires
versions. Sources: ``--model FILE`` (each file one model, version "1", loaded once) or ``--model-repository
DIR`` (Triton's layout, see ``server.versions``) with Triton's control modes ``none`` / ``explicit`` / ``poll``.

A swap: the new version's session is built, checked against the contract and warmed up while the old one
serves; one assignment under ``_lock`` makes it current; the old version is then out of reach for new
requests, waits until the requests that hold it (``lease``) are done, and is released. A version that fails
to load leaves the serving ones untouched and is listed UNAVAILABLE with the reason.

Memory: every change (start-up, explicit load/unload, each poll) runs under one lock, ``_changes``, from the
first byte of the new session to the release of the one it replaces, and versions are built one after the
other. So only one model changes at a time, and it holds at most the versions it serves plus the ones
replacing them: with the default policy ``latest:1``, its old and its new session, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from server.batching import BatchStats
from server.errors import InvalidOption, ModelLoadError, ModelNotFound, NotReady
from server.instance import ModelInstance
from server.model import ModelInfo, describe_session, resolve_model_paths
from server.names import check_model_name, check_version, name_problem, printable
from server.providers import create_session
from server.settings import Settings
from server.versions import (
    Fingerprint,
    ModelDir,
    VersionFiles,
    parse_policy,
    read_batching,
    read_model_dir,
    scan_repository,
)

logger = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"
UNLOADED = "unloaded"


@dataclass
class VersionStatus:
    state: str
    reason: str = ""
    fingerprint: Fingerprint = ()  # of the files the last attempt read: a failed version is retried on change


class Runtime(Protocol):
    """What the repository needs from the engine: warm a new instance up before it serves, and hear about
    instances (metrics): created, batches run, which versions serve after each switch."""

    def added(self, instance: ModelInstance) -> None: ...

    def batch_done(self, info: ModelInfo, stats: BatchStats) -> None: ...

    async def warm(self, instance: ModelInstance) -> None: ...

    def serving(self, name: str, versions: list[str], retired: list[str]) -> None: ...


def _by_version(entries: dict[str, ModelInstance]) -> dict[str, ModelInstance]:
    return dict(sorted(entries.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0))


class ModelRepository:
    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self._settings = settings
        self._runtime = runtime
        self._root: Path | None = settings.model_repository
        self._policy = parse_policy(settings.version_policy)
        self._lock = threading.Lock()  # guards _served: lookups (any thread) against swaps
        self._served: dict[str, dict[str, ModelInstance]] = {}  # name -> version -> entry, oldest first
        self._status: dict[str, dict[str, VersionStatus]] = {}
        self._changes: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self.initialised = False

    @property
    def mode(self) -> str:
        """``files`` (--model) or the control mode of the repository."""
        return "files" if self._root is None else self._settings.model_control_mode

    # --- reading (any thread) ---------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return list(self._served)

    @property
    def default_model(self) -> str | None:
        with self._lock:
            return self._default_key()

    def _default_key(self) -> str | None:
        return self._settings.default_model or next(iter(self._served), None)

    def current(self, name: str | None, version: str | None = None) -> ModelInstance:
        """The entry serving (name, version); no version = the newest ready one."""
        with self._lock:
            return self._pick(name, version)

    def _pick(self, name: str | None, version: str | None) -> ModelInstance:
        if name:
            check_model_name(name)
        if version:
            check_version(version)
        if not self.initialised:
            raise NotReady("models are still loading")
        key = name or self._default_key()
        versions = self._served.get(key) if key else None
        if not versions:
            if key is None:
                raise ModelNotFound("no model is loaded")
            raise ModelNotFound(f"model {key!r} is not served; available: {sorted(self._served)}")
        if not version:
            return versions[next(reversed(versions))]
        entry = versions.get(version)
        if entry is None:
            raise ModelNotFound(f"model {key!r} has no ready version {version!r}; ready: {list(versions)}")
        return entry

    @contextlib.contextmanager
    def lease(self, name: str | None, version: str | None = None) -> Iterator[ModelInstance]:
        """Hold (name, version) for one request: a replaced version is released only after its leases end."""
        with self._lock:
            entry = self._pick(name, version)
            entry.enter()
        try:
            yield entry
        finally:
            entry.leave()

    def snapshot(self) -> dict[str, list[ModelInstance]]:
        """Every model's serving versions (oldest first), read at one instant."""
        with self._lock:
            return {name: list(versions.values()) for name, versions in self._served.items()}

    def versions(self, name: str) -> list[ModelInfo]:
        with self._lock:
            return [e.info for e in self._served.get(name, {}).values()]

    def entries(self) -> list[ModelInstance]:
        with self._lock:
            return [e for versions in self._served.values() for e in versions.values()]

    def queue_depth(self, name: str) -> int:
        with self._lock:
            return sum(e.batcher.depth for e in self._served.get(name, {}).values())

    def index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one entry per known version; models never loaded by name only. Entries
        that cannot be served (an invalid name, a link outside the repository, a directory named like a
        version that is not one) are listed UNAVAILABLE with the reason."""
        found = self._scan_quietly() if not ready_only else {}
        rows: list[dict[str, str]] = []
        for name in sorted(set(self._status) | set(found)):
            statuses = self._status.get(name, {})
            shown = printable(name)
            entry = found.get(name)
            if not statuses and not ready_only:
                if entry is not None and entry.error:
                    rows.append({"name": shown, "state": UNAVAILABLE, "reason": entry.error})
                else:
                    rows.append({"name": shown})
            for version, status in sorted(statuses.items(), key=lambda kv: int(kv[0])):
                if ready_only and status.state != READY:
                    continue
                row = {"name": shown, "version": version, "state": status.state}
                if status.reason:
                    row["reason"] = status.reason
                rows.append(row)
            for odd, reason in sorted(entry.problems.items()) if entry is not None else ():
                rows.append(
                    {"name": shown, "version": printable(odd), "state": UNAVAILABLE, "reason": reason}
                )
        return rows

    def _scan(self) -> dict[str, ModelDir]:
        assert self._root is not None
        return scan_repository(
            self._root, self._policy, allow_links_outside=self._settings.allow_links_outside_repository
        )

    def _scan_quietly(self) -> dict[str, ModelDir]:
        if self._root is None:
            return {}
        try:
            return self._scan()
        except OSError:
            return {}

    def _relative(self, text: str) -> str:
        """``text`` with the repository's location taken out: reasons are shown relative to the root."""
        if self._root is None:
            return text
        for base in sorted({str(self._root), str(self._root.resolve())}, key=len, reverse=True):
            text = text.replace(base.rstrip("/") + "/", "").replace(base, ".")
        return text

    # --- changes (event loop) ---------------------------------------------------------------------
    def _change_lock(self) -> asyncio.Lock:
        if self._changes is None:
            self._changes = asyncio.Lock()
        return self._changes

    async def load_initial(self) -> None:
        """Start-up: every --model file, or the repository per control mode. Any failure: ModelLoadError."""
        if self.initialised:
            return
        async with self._change_lock():
            if self._root is None:
                await asyncio.to_thread(self._load_files)
            else:
                await self._load_repository()
            self.initialised = True

    def _load_files(self) -> None:
        loaded: dict[str, ModelInstance] = {}
        try:
            for path in resolve_model_paths(list(self._settings.models)):
                entry = self._build(path, None, "1", ())
                name = entry.info.name
                problem = name_problem(name)
                if problem is not None:
                    entry.close(1.0)
                    raise ModelLoadError(f"{path}: invalid model name {name!r}: a model name {problem}")
                if name in loaded:
                    raise ModelLoadError(
                        f"two models are named {name!r} ({loaded[name].info.path} and {path}); "
                        "rename a file or set different model_name metadata"
                    )
                loaded[name] = entry
        except BaseException:
            for entry in loaded.values():
                entry.close(1.0)
            raise
        default = self._settings.default_model or next(iter(loaded))
        if default not in loaded:
            for entry in loaded.values():
                entry.close(1.0)
            raise ModelLoadError(f"default_model {default!r} is not among the loaded models {sorted(loaded)}")
        with self._lock:
            self._served = {name: {"1": entry} for name, entry in loaded.items()}
        for name in loaded:
            self._runtime.serving(name, ["1"], [])
        self._status = {name: {"1": VersionStatus(READY)} for name in loaded}

    async def _load_repository(self) -> None:
        assert self._root is not None
        try:
            found = self._scan()
        except OSError as exc:
            raise ModelLoadError(f"{self._root}: {exc}") from exc
        skipped = {n for n, e in found.items() if e.rejected or (e.problems and not e.versions)}
        for name in sorted(skipped):  # listed UNAVAILABLE by the index; the other models still start
            entry = found[name]
            reason = entry.error or "; ".join(entry.problems.values())
            logger.warning("model repository entry %r skipped: %s", name, reason)
        names = [name for name in found if name not in skipped]
        if self.mode == "explicit":
            wanted = list(self._settings.load_models)
            names = names if "*" in wanted else wanted
            missing = [n for n in names if n not in found]
            if missing:
                raise ModelLoadError(f"--load-model {missing}: not in the model repository {self._root}")
        for name in names:
            errors = await self._apply(name, found[name], warm=False, retry_failed=True)
            if errors or not self._served.get(name):
                raise ModelLoadError(
                    f"model {name!r} in {self._root}: "
                    + ("; ".join(errors) or "no version directory with a model.onnx under its version policy")
                )

    def _build(self, path: Path, name: str | None, version: str, fingerprint: Fingerprint) -> ModelInstance:
        """Blocking: session + contract check + its instance (batcher included). Raises ModelLoadError."""
        if not path.is_file():
            raise ModelLoadError(f"{path} does not exist")
        try:
            handle = create_session(path, self._settings, label=str(path))
        except ModelLoadError:
            raise
        except Exception as exc:  # anything onnxruntime says about an unreadable file
            raise ModelLoadError(f"cannot load {path}: {exc}") from exc
        info = describe_session(handle.session, path, handle.provider, fallback=handle.fallback)
        info = dataclasses.replace(info, name=name or info.name, version=version)
        config = read_batching(path.parent.parent) if self._root is not None else None
        instance = ModelInstance.create(
            info,
            handle,
            self._settings,
            config=config,
            fingerprint=fingerprint,
            on_batch=self._runtime.batch_done,
        )
        self._runtime.added(instance)
        return instance

    async def _build_version(self, name: str, files: VersionFiles, *, warm: bool) -> ModelInstance:
        entry = await asyncio.to_thread(self._build, files.model, name, files.version, files.fingerprint)
        if warm:
            try:
                await self._runtime.warm(entry)
            except BaseException:
                await asyncio.to_thread(entry.close, 1.0)
                raise
        return entry

    async def _apply(self, name: str, found: ModelDir | None, *, warm: bool, retry_failed: bool) -> list[str]:
        """Bring ``name`` in line with ``found`` (None: the directory is gone). Returns the load errors."""
        status = self._status.setdefault(name, {})
        with self._lock:
            current = dict(self._served.get(name, {}))
        if found is not None and found.error:
            logger.error("model %s: %s", name, found.error, extra={"model": name})
            for version in current:
                status.setdefault(version, VersionStatus(READY)).reason = found.error
            if not current:
                status["0"] = VersionStatus(UNAVAILABLE, found.error)
            return [found.error]
        status.pop("0", None)
        wanted = found.wanted() if found is not None else []
        fresh: dict[str, ModelInstance] = {}
        errors: list[str] = []
        for version in wanted:
            assert found is not None
            files = found.versions[version]
            old = current.get(version)
            if old is not None and old.fingerprint == files.fingerprint:
                continue
            prior = status.get(version)
            if (
                not retry_failed
                and prior is not None
                and prior.state == UNAVAILABLE
                and prior.reason != UNLOADED
                and prior.fingerprint == files.fingerprint
            ):
                errors.append(f"version {version}: {prior.reason}")
                continue  # the same broken files: not retried at every poll
            if old is None:
                status[version] = VersionStatus(LOADING, fingerprint=files.fingerprint)
            try:
                fresh[version] = await self._build_version(name, files, warm=warm)
            except Exception as exc:
                said = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                logger.error("cannot load %s version %s: %s", name, version, said, extra={"model": name})
                reason = self._relative(said)  # answers show paths relative to the repository
                errors.append(f"version {version}: {reason}")
                if old is None:
                    status[version] = VersionStatus(UNAVAILABLE, reason, files.fingerprint)
                else:
                    status[version].reason = f"reload failed, previous files still served: {reason}"
        complete = not errors
        keep = {v: e for v, e in current.items() if not complete or v in wanted}
        served = _by_version({**keep, **fresh})
        replaced = [e for v, e in current.items() if served.get(v) is not e]
        if not fresh and not replaced:
            return errors
        with self._lock:  # the switch: one assignment, seen by every later lookup
            if served:
                self._served[name] = served
            else:
                self._served.pop(name, None)
        for version in fresh:
            status[version] = VersionStatus(
                READY, fingerprint=found.versions[version].fingerprint if found else ()
            )
        self._runtime.serving(name, list(served), [v for v in current if v not in served])
        logger.info(
            "model %s now serves version(s) %s",
            name,
            list(served) or "none",
            extra={"model": name, "versions": list(served)},
        )
        await self._retire(name, replaced, served)
        return errors

    async def _retire(
        self, name: str, entries: list[ModelInstance], served: dict[str, ModelInstance]
    ) -> None:
        """Out of reach already: wait for the requests holding them, then release their sessions."""
        status = self._status.setdefault(name, {})
        for entry in entries:
            version = entry.info.version
            if version not in served:
                status[version] = VersionStatus(UNLOADING)
            drained = await asyncio.to_thread(entry.wait_idle, self._settings.request_timeout_s)
            await asyncio.to_thread(entry.close, self._settings.shutdown_grace_s)
            if version not in served:
                status[version] = VersionStatus(UNAVAILABLE, UNLOADED)
            logger.info(
                "released %s version %s%s",
                name,
                version,
                "" if drained else " (requests still running after request_timeout_s)",
                extra={"model": name},
            )

    # --- the repository API (explicit mode) and polling -------------------------------------------
    def _require_explicit(self) -> Path:
        if self.mode != "explicit" or self._root is None:
            hint = (
                "explicit model load / unload is not allowed while polling the repository"
                if self.mode == "poll"
                else "model control is disabled (start danet-serve with --model-repository DIR "
                "--model-control-mode explicit)"
            )
            raise InvalidOption(hint)
        return self._root

    async def load_model(self, name: str, parameters: Collection[str] = ()) -> None:
        """Load (or reload) ``name`` from the repository; raise InvalidOption with the reason on failure.

        ``parameters``: the names of the request's load parameters (REST and gRPC alike); Triton's
        override ``config`` and ``file:...`` contents are refused, the repository is the only source."""
        if "config" in parameters or any(key.startswith("file:") for key in parameters):
            raise InvalidOption(
                "loading with an override config or files is not supported; edit the repository"
            )
        check_model_name(name)
        root = self._require_explicit()
        path = root / name
        if not path.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the model repository")
        async with self._change_lock():
            found = read_model_dir(
                path,
                self._policy,
                root=root,
                allow_links_outside=self._settings.allow_links_outside_repository,
            )
            if found.error is None and not found.wanted():
                odd = "".join(f"; {reason}" for reason in found.problems.values())
                raise InvalidOption(
                    f"failed to load {name!r}: no version directory with a model.onnx under its version "
                    f"policy ({found.policy}){odd}"
                )
            errors = await self._apply(name, found, warm=True, retry_failed=True)
        if errors:
            raise InvalidOption(f"failed to load {name!r}: " + "; ".join(errors))

    async def unload_model(self, name: str) -> None:
        """Unload every version of ``name``: requests then get ModelNotFound."""
        check_model_name(name)
        self._require_explicit()
        async with self._change_lock():
            if name not in self._status and name not in self._served:
                raise ModelNotFound(f"model {name!r} is not loaded")
            await self._apply(name, None, warm=False, retry_failed=False)

    async def poll_once(self) -> None:
        assert self._root is not None
        async with self._change_lock():
            found = self._scan()
            for name in sorted(set(found) | set(self.names())):
                await self._apply(name, found.get(name), warm=True, retry_failed=False)

    def start_polling(self) -> None:
        if self.mode == "poll" and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_forever(), name="repository-poll"
            )

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:  # a bad scan must not end polling
                logger.exception("model repository poll failed")

    async def close(self, grace: float) -> None:
        """Stop polling; let every version finish what is queued; release them."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await poller
        entries = self.entries()
        await asyncio.gather(*(asyncio.to_thread(e.close, grace) for e in entries))

    def describe(self) -> dict[str, Any]:
        # no location: /readyz shows this without authentication
        return {"mode": self.mode}
