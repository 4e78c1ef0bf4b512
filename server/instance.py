"""A servable model version: its session, its batching settings and its batcher, and who is using it.

Each version owns its execution, as Triton's model instances do: ``max_batch_size``, ``dynamic_batching``
(``max_queue_delay_microseconds``, ``preferred_batch_size``) and ``instance_group`` (the summed ``count``) come
from the model's ``config.pbtxt`` when it has one, else from the server's settings. A group's ``kind`` is not
read: the execution provider is the server's choice. The repository creates and
retires instances; the engine schedules requests onto them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.contract import INPUT_IMAGE
from server import allocator
from server.batching import Batcher, BatchStats, CancelToken
from server.errors import Cancelled
from server.model import ModelInfo
from server.providers import SessionHandle
from server.settings import Settings
from server.versions import Fingerprint

logger = logging.getLogger(__name__)

#: onnxruntime's run option that frees the arena's unused regions at the end of the run.
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


@dataclass(frozen=True)
class BatchingConfig:
    """How one version batches and how many worker threads (instances) run it."""

    max_batch_size: int  # 1 = no batching
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1
    source: str = "settings"  # "settings" or "config.pbtxt"

    @classmethod
    def resolve(
        cls, settings: Settings, on_gpu: bool, config: dict[str, Any] | None = None
    ) -> BatchingConfig:
        """The model's config.pbtxt where it says something, the server's settings for the rest.

        Triton's meaning: ``max_batch_size: 0`` or no ``dynamic_batching`` block means one request per run."""
        default_on = settings.batching == "on" or (settings.batching == "auto" and on_gpu)
        default_batch = settings.max_batch_size if default_on else 1
        delay_us = int(settings.batch_delay_ms * 1000)
        if not config:
            return cls(default_batch, delay_us, (), settings.workers)
        max_batch = int(config.get("max_batch_size", settings.max_batch_size))
        dynamic = config.get("dynamic_batching")
        batch = max(1, max_batch) if dynamic is not None else 1
        if dynamic:
            delay_us = int(dynamic.get("max_queue_delay_microseconds", delay_us))
        preferred = tuple(
            int(p) for p in (dynamic or {}).get("preferred_batch_size", ()) if 0 < int(p) <= batch
        )
        instances = int(config.get("instance_count", settings.workers))
        return cls(batch, delay_us, preferred, max(1, instances), "config.pbtxt")


@dataclass(eq=False)
class ModelInstance:
    """One loaded version. ``run`` is called on the batcher's worker threads."""

    info: ModelInfo
    handle: SessionHandle
    batching: BatchingConfig
    use_io_binding: bool
    fingerprint: Fingerprint = ()
    heap_reuse_max_pixels: int | None = None  # CPU sessions without the arena: allocator.HEAP per run
    shrink_arena: bool = False  # the CPU arena gives back its free regions after every run
    batcher: Batcher = field(init=False)
    _active: int = 0
    _idle: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def create(
        cls,
        info: ModelInfo,
        handle: SessionHandle,
        settings: Settings,
        *,
        config: dict[str, Any] | None = None,
        fingerprint: Fingerprint = (),
        on_batch: Callable[[ModelInfo, BatchStats], None] | None = None,
    ) -> ModelInstance:
        batching = BatchingConfig.resolve(settings, handle.on_gpu, config)
        heap = None
        if not handle.cpu_arena and not handle.on_gpu and allocator.heap_modes_apply():
            heap = settings.cpu_heap_reuse_max_pixels
            if heap > 0:
                allocator.HEAP.prepare()
        instance = cls(
            info,
            handle,
            batching,
            settings.io_binding and handle.on_gpu,
            fingerprint,
            heap,
            handle.cpu_arena and settings.cpu_arena_shrink,
        )
        instance.batcher = Batcher(
            lambda images, outputs, token: instance.run(
                images, outputs, token
            ),  # late-bound (tests wrap run)
            name=f"{info.name}-v{info.version}",
            workers=batching.instances,
            max_batch=batching.max_batch_size,
            max_delay_s=batching.max_queue_delay_us / 1e6,
            preferred_batch_sizes=batching.preferred_batch_sizes,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            on_batch=None if on_batch is None else (lambda stats: on_batch(info, stats)),
        )
        logger.info(
            "loaded model %s version %s on %s (max batch %d, %d instance(s), batching from %s, io binding %s)",
            info.name,
            info.version,
            handle.provider,
            batching.max_batch_size,
            batching.instances,
            batching.source,
            instance.use_io_binding,
            extra={"model": info.name, "version": info.version, "provider": handle.provider},
        )
        return instance

    # --- execution (worker threads) ---------------------------------------------------------------
    def run(self, images: np.ndarray, outputs: tuple[str, ...], token: CancelToken) -> dict[str, np.ndarray]:
        """One onnxruntime run; ``token`` stops it (``RunOptions.terminate``) when every caller has gone."""
        import onnxruntime as ort

        options = ort.RunOptions()
        if self.shrink_arena:
            options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
        token.on_cancel(lambda: setattr(options, "terminate", True))
        session = self.handle.session
        try:
            if self.heap_reuse_max_pixels is None:
                values = self._run(session, images, outputs, options)
            else:
                values = allocator.HEAP.call(
                    int(np.prod(images.shape[:-1])),
                    self.heap_reuse_max_pixels,
                    lambda: self._run(session, images, outputs, options),
                )
        except Exception as exc:
            if token.cancelled:
                raise Cancelled("the run was stopped: every caller had gone") from exc
            raise
        return dict(zip(outputs, values, strict=True))

    def _run(self, session: Any, images: np.ndarray, outputs: tuple[str, ...], options: Any) -> list[Any]:
        if self.use_io_binding:
            binding = session.io_binding()
            binding.bind_cpu_input(INPUT_IMAGE, images)
            for name in outputs:
                binding.bind_output(name)  # onnxruntime allocates; copied back below
            session.run_with_iobinding(binding, options)
            return list(binding.copy_outputs_to_cpu())
        return list(session.run(list(outputs), {INPUT_IMAGE: images}, options))

    # --- leases -----------------------------------------------------------------------------------
    def enter(self) -> None:
        with self._idle:
            self._active += 1

    def leave(self) -> None:
        with self._idle:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request holds this version (True) or ``timeout`` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def close(self, timeout: float) -> None:
        self.batcher.close(timeout=timeout)
