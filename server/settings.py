"""Server configuration: one ``Settings`` object built in ``server.main.main()`` and passed down.

Every field can be set by a ``DANET_<FIELD>`` environment variable (lists as JSON or comma-separated) or by
keyword when constructing ``Settings`` (the ``danet-serve`` flags do that). Nothing here reads files or loads
models; it only describes what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, ENV_PREFIX
from server.flags import none_word, takes_none_word

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings given as one string."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def parse_size(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"512x1024"`` (height x width) -> (512, 1024)."""
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"expected [height, width], got {value!r}")
        h, w = int(value[0]), int(value[1])
    else:
        parts = str(value).lower().replace("*", "x").split("x")
        if len(parts) == 1:
            h = w = int(parts[0])
        elif len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
        else:
            raise ValueError(f"expected HEIGHTxWIDTH, got {value!r}")
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {value!r}")
    return h, w


class Settings(BaseSettings):
    """All knobs of danet-serve. Field docs double as ``--help`` texts for the CLI."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # --- network -----------------------------------------------------------------------------------
    host: str = Field("0.0.0.0", description="Interface to bind HTTP and gRPC to.")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="HTTP port (0 = any free port).")
    grpc_port: int = Field(
        DEFAULT_GRPC_PORT, ge=-1, le=65535, description="gRPC port (0 = any free port, -1 = no gRPC server)."
    )

    # --- models ------------------------------------------------------------------------------------
    models: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="ONNX files or directories of .onnx files; empty = the embedded default model.",
    )
    default_model: str | None = Field(
        None, description="Model used when a request names none (default: the first)."
    )
    model_repository: Path | None = Field(
        None, description="Triton-style repository DIR/<name>/<version>/model.onnx (instead of models)."
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="Triton's model control: none = load at start only, explicit = load/unload by API, "
        "poll = re-scan the repository every repository_poll_s seconds.",
    )
    load_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models to load at start in explicit mode ('*' = all)."
    )
    repository_poll_s: float = Field(
        15.0, gt=0.0, description="Seconds between repository scans in poll mode."
    )
    version_policy: str = Field(
        "latest:1",
        description="Versions served per model unless its config.pbtxt says otherwise: latest:N, all, "
        "or specific:1,3.",
    )

    # --- execution providers -----------------------------------------------------------------------
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        description="onnxruntime execution providers in priority order; unavailable ones are skipped.",
    )
    require_gpu: bool = Field(False, description="Refuse to start unless a GPU provider is active.")
    device_id: int = Field(0, ge=0, description="CUDA device index.")
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads (0 = onnxruntime default)."
    )
    inter_op_threads: int = Field(
        0, ge=0, description="onnxruntime inter-op threads (0 = onnxruntime default)."
    )
    codec_threads: int = Field(
        0,
        ge=0,
        description="Threads that decode uploads and encode replies, shared by every front door; more "
        "requests' codec work waits its turn (0 = asyncio's default pool, up to cores + 4 at once).",
    )
    intra_op_spinning: bool = Field(
        True,
        description="onnxruntime's intra-op threads spin for work after each parallel section "
        "(session.intra_op.allow_spinning). Off: they sleep, leaving the cores to the image codecs and "
        "other requests between a run's operators.",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="cuDNN convolution algorithm search (EXHAUSTIVE costs ~0.6 s per new shape)."
    )
    cpu_mem_arena: bool = Field(
        True,
        description="onnxruntime CPU memory arena (expert switch; see cpu_arena_max_model_mb for the "
        "per-model policy). On: fastest for small models (off costs 2-3x on the slim default model, "
        "measured). Off: freed activations go back to the OS.",
    )
    cpu_arena_max_model_mb: float | None = Field(
        64.0,
        ge=0,
        description="Per-model memory policy: a model whose file is larger than this (MB) runs without "
        "the CPU arena and memory patterns, because the arena keeps the fragments of full-resolution "
        "activations (DANet-R50 1024x2048 in danet-serve: 963 MB peak RSS over four requests, 1.52-2.47 GB "
        "with the arena, measured). None = arena for every model.",
    )
    cpu_arena_shrink: bool = Field(
        False,
        description="Models with the CPU arena: no memory patterns, and after every run the arena gives "
        "back the regions it no longer uses (onnxruntime's memory.enable_memory_arena_shrinkage). With "
        "cpu_arena_max_model_mb=none this is the speed-first setting for large models: DANet-R50 1024x2048 "
        "through danet-serve, 0.98-1.05x of a default session with a whole-server peak of 1841-1880 MB (the "
        "default memory policy: 1.05-1.19x over recent runs, 949 MB); between runs the arena is back at its loaded size "
        "(measured). Off: the arena keeps what it grew to.",
    )
    cpu_buffer_reuse: bool = Field(
        False,
        description="Models without the CPU arena: onnxruntime's allocation planner hands a freed tensor's "
        "buffer to a later tensor of the same size (enable_mem_reuse), which holds the buffer through the "
        "gap between the two. Off: every tensor is freed at its last use. DANet-R50 1024x2048 in-process, "
        "measured: a 68-80 MB lower peak (the attention head held planned buffers while the 2048-channel "
        "features were still live), the same speed at 512x512 and 1024x2048; the whole server over four "
        "1024x2048 paths: 949 MB off, 1003 MB on. Models with the arena always reuse.",
    )
    cpu_heap_reuse_max_pixels: int = Field(
        512 * 512,
        ge=0,
        description="Models without the CPU arena, glibc malloc: a run of up to this many input pixels "
        "(batch included) keeps every freed block in malloc's heaps for the next run (no page faults or "
        "zeroing); a larger run first hands that memory back, maps its activations fresh and runs on a "
        "thread of its own, one at a time. DANet-R50 exported with 16 MiB attention chunks, measured: "
        "512x512 0.83-0.94x of a default session (1.16x with 0); whole-server peak over mixed 512x512 / "
        "1024x2048 HTTP requests 997 MB. 0 = every run hands back. Off when MALLOC_MMAP_THRESHOLD_, "
        "MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_MAX_ or MALLOC_TOP_PAD_ is set or another allocator is loaded.",
    )
    cpu_allocator: Literal["system", "mimalloc", "jemalloc"] = Field(
        "system",
        description="C allocator under onnxruntime. mimalloc / jemalloc: danet-serve re-executes itself once "
        "at start with the library preloaded (LD_PRELOAD; Debian libmimalloc2.0 or libmimalloc3, "
        "libjemalloc2); system when not installed. system (glibc) keeps the least memory: with DANet-R50 "
        "mimalloc held 220 MB more after loading and peaked at 1129 MB instead of 896 MB at 1024x2048, "
        "measured. A library already in LD_PRELOAD is kept.",
    )
    cpu_block_cache: bool = Field(
        True,
        description="With the system allocator: danet-serve preloads its block cache (server/native, built by "
        "make with the system's C compiler; without the library this does nothing). Blocks of 4 MiB and more "
        "are kept when freed for the next request of the same size, only while live + kept stays at most "
        "the highest live total seen, so keeping them adds no peak memory; every large run gives them back "
        "when it ends. Models without the CPU arena then stop faulting and zeroing their activations afresh on "
        "every pass (DANet-R50 1024x2048 in-process: 2,500-3,300 page faults a pass instead of 297,000-300,000, "
        "measured).",
    )
    cpu_allocator_path: Path | None = Field(
        None, description="Library file for cpu_allocator mimalloc/jemalloc (default: found in the system)."
    )
    cpu_allocator_huge_pages: bool = Field(
        True,
        description="Transparent huge pages for malloc's large blocks (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, "
        "or MIMALLOC_LARGE_OS_PAGES=1 with mimalloc; set at start by re-executing once, unless already "
        "set). Models without the CPU arena give their activations back to the OS after each use; this "
        "brings them back in 2 MiB pages instead of 4 KiB ones (DANet-R50 512x512: 31,000 instead of "
        "222,000 page faults per pass, same peak memory, measured). Needs glibc >= 2.35.",
    )
    cpu_allocator_reserve_mb: int = Field(
        0,
        ge=0,
        description="With cpu_allocator mimalloc: address space (MiB) reserved at start "
        "(MIMALLOC_RESERVE_OS_MEMORY unless set). Large blocks freed into it stay resident for reuse: no "
        "page faults at all, but memory grows to the largest shape's high-water mark (DANet-R50 "
        "1024x2048: over 1.4 GB). 0 = no reservation.",
    )
    gpu_mem_limit_mb: int | None = Field(None, ge=1, description="CUDA arena limit in MiB (None = no limit).")
    arena_extend_strategy: Literal["kSameAsRequested", "kNextPowerOfTwo"] = Field(
        "kSameAsRequested", description="CUDA arena growth strategy."
    )
    trt_cache_dir: Path = Field(
        Path.home() / ".cache" / "danet-serve" / "tensorrt",
        description="Persistent TensorRT engine + timing cache directory.",
    )
    trt_fp16: bool = Field(False, description="Let TensorRT build fp16 engines.")
    io_binding: bool = Field(True, description="Use onnxruntime IO binding when a GPU provider is active.")

    # --- scheduling --------------------------------------------------------------------------------
    workers: int = Field(1, ge=1, le=64, description="Inference worker threads per model.")
    batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Dynamic batching of same-shape requests (auto = on for GPU providers, off on CPU).",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Largest dynamic batch (images).")
    batch_delay_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="How long a batch waits for more same-shape requests."
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="Requests per model queued, or decoding their upload on the way to the queue, "
        "before answering 503 Overloaded.",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 Overloaded.")
    request_timeout_s: float = Field(120.0, gt=0, description="Deadline for one inference (queue + run).")
    warmup_sizes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["preferred"],
        description="Shape buckets run once before ready: HxW or 'preferred' (the model's metadata size).",
    )

    # --- segmentation defaults ---------------------------------------------------------------------
    max_inference_size: int | None = Field(
        2048, ge=8, description="Longest side used for inference; larger images are shrunk (None = never)."
    )
    slide_crop: int | None = Field(
        None, ge=8, description="Sliding-window crop size (default: the model's preferred size)."
    )
    slide_stride_ratio: float = Field(2 / 3, gt=0.0, le=1.0, description="Sliding-window stride / crop.")

    # --- limits ------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="Largest accepted request body (bytes)."
    )
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted image (width x height).")
    max_request_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Most pixels one request may send through the model, over all its passes (scales x flips "
        "x windows; KServe: batch x height x width). The official DANet and MMSegmentation Cityscapes "
        "multi-scale + flip evaluations of a 1024x2048 image need 73 M and 84 M.",
    )
    max_passes: int = Field(
        256,
        ge=1,
        description="Most model passes one request may need (the Cityscapes multi-scale + flip evaluations "
        "need 124 and 160).",
    )
    max_reply_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest reply the server builds (KServe v2 JSON or binary tensors; checked before "
        "inference from the output shapes).",
    )
    max_json_reply_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest KServe v2 REST reply whose tensors are JSON lists (about 1.4 M float values); "
        "binary outputs are bounded by max_reply_bytes only.",
    )
    infer_at_preferred_size: bool = Field(
        True,
        description="Whole-image inference runs at the model's preferred size (its metadata; the default "
        "model's training size) unless the request sets max_size; labels are restored to full size.",
    )

    # --- slow, idle and unauthenticated clients; repository boundaries -------------------------------
    http_header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="Seconds a client has to send a request's headers, from the connection or from the "
        "request's first byte; then 408 and the connection is closed.",
    )
    http_body_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Seconds a request body may take beyond what http_body_min_rate buys; a slower body "
        "is answered 408 (or the connection closed once a reply has started).",
    )
    http_body_min_rate: int = Field(
        16 * 1024,
        ge=1,
        description="Bytes per second: each received body byte extends the body deadline by "
        "1/http_body_min_rate s (a body slower than this on average after http_body_timeout_s is dropped); "
        "each reply byte a client reads extends the write deadline the same way.",
    )
    http_write_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Seconds a reply may wait on a client that does not read it, beyond what "
        "http_body_min_rate buys for the bytes it does read; then the connection is closed and its buffered "
        "reply dropped.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Open HTTP connections at once; one more is answered 503 and closed.",
    )
    keep_alive_s: int = Field(5, ge=1, description="Seconds an idle HTTP keep-alive connection stays open.")
    grpc_max_connection_idle_s: float | None = Field(
        300.0, gt=0.0, description="Seconds a gRPC connection without calls stays open (None = forever)."
    )
    grpc_max_connection_age_s: float | None = Field(
        3600.0,
        gt=0.0,
        description="Seconds before a gRPC connection is asked to reconnect (GOAWAY); calls then in flight "
        "get request_timeout_s more to finish (None = forever).",
    )
    grpc_max_connections: int = Field(
        512,
        ge=1,
        description="Open gRPC connections at once; one more is closed as soon as it is accepted "
        "(grpc.max_allowed_incoming_connections), and the client sees UNAVAILABLE.",
    )
    grpc_max_concurrent_streams: int = Field(
        100, ge=1, description="Concurrent gRPC calls (HTTP/2 streams) per connection."
    )
    grpc_keepalive_s: float = Field(
        60.0,
        gt=0.0,
        description="Seconds of silence before the gRPC server pings a client; one that does not answer "
        "within 20 s is disconnected.",
    )
    require_api_key: bool = Field(
        False, description="Refuse to start without an API key (api_key / DANET_API_KEY)."
    )
    metrics_public: bool = Field(
        False,
        description="Serve /metrics without the API key (for a Prometheus scrape that sends none).",
    )
    allow_links_outside_repository: bool = Field(
        False,
        description="Serve model and version directories or files that resolve (symlinks) outside "
        "model_repository.",
    )

    # --- HTTP --------------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(None, description="Require this key (Bearer or X-API-Key) when set.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    log_level: str = Field("INFO", description="Log level.")
    access_log: bool = Field(True, description="Log one line per HTTP request.")
    shutdown_grace_s: float = Field(30.0, ge=0.0, description="Time to finish in-flight requests on SIGTERM.")
    grpc_max_message_bytes: int = Field(
        256 * 1024 * 1024, ge=4 * 1024 * 1024, description="gRPC max send/receive message size."
    )
    grpc_tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve gRPC over TLS (with the key)."
    )
    grpc_tls_key: Path | None = Field(None, description="PEM private key for grpc_tls_cert.")
    replica_id: str | None = Field(
        None,
        description="Name of this replica, sent as the X-Danet-Replica response header when set (the Ray "
        "Serve application sets it per replica).",
    )
    # --- Triton extensions and tracing ---------------------------------------------------------------
    allow_client_shm: bool = Field(
        True,
        description="Let clients register POSIX shared memory regions (system shared memory extension) "
        "that requests read inputs from and write outputs to; only clients on the same host can use it.",
    )
    max_shm_regions: int = Field(
        64, ge=1, description="Most system shared memory regions registered at once (each holds a mapping)."
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry tracing: spans for decode, queue, inference and encode, exported over "
        "OTLP as the standard OTEL_* variables say (needs the `tracing` extra). Also on when "
        "OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.",
    )

    @model_validator(mode="before")
    @classmethod
    def _none_words(cls, data: Any) -> Any:
        """``none`` in a DANET_* variable means None for an optional number, path or choice, as it does for
        the field's flag (``DANET_CPU_ARENA_MAX_MODEL_MB=none``)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            data = {
                key: None
                if key in fields and none_word(value) and takes_none_word(fields[key].annotation)
                else value
                for key, value in data.items()
            }
        return data

    @field_validator("models", "providers", "warmup_sizes", "cors_origins", "load_models", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("warmup_sizes")
    @classmethod
    def _check_sizes(cls, value: list[str]) -> list[str]:
        for item in value:
            if item != "preferred":
                parse_size(item)
        return value

    @field_validator("version_policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        from server.versions import parse_policy  # a pure parser (no I/O)

        parse_policy(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Settings:
        if self.model_repository is not None and self.models:
            raise ValueError("give models (--model) or model_repository (--model-repository), not both")
        if self.model_repository is None and (self.model_control_mode != "none" or self.load_models):
            raise ValueError(
                "model_control_mode and load_models (--model-control-mode, --load-model) need "
                "model_repository (--model-repository)"
            )
        return self

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _key_required(self) -> Settings:
        if self.require_api_key and not self.api_key_value():
            raise ValueError("require_api_key is set but no API key is given (set api_key / DANET_API_KEY)")
        return self

    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None
