"""Ray Serve vs danet-serve on the same model and image, in one run (needs the ``[ray]`` extra):

    flock /work/coord/bench.lock python -m bench.ray_serve [--size 512] [--rounds 40] [--seconds 8]

1. Per-request overhead of the Serve proxy: one request at a time, danet-serve and Ray Serve (one replica)
   alternating call by call in a shuffled order with a settle gap, so both see the same background load.
2. Throughput at ``--concurrency`` with 1 and with 2 replicas, each window interleaved with a danet-serve
   window (danet-serve's figure is the yardstick for drift between windows).
3. How long a new replica takes to become ready: scale 1 -> 2 and time until Serve reports it RUNNING.

Ray Serve is deployed from deploy/ray/serve.yaml with ``serve run`` (a free port, one proxy, fixed replicas).

Both sides run the same settings (``--intra-op-threads``, ``max_queue``), the embedded default model unless
``--model`` is given, and ``POST /segment`` with a PNG upload and the default colour PNG answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.images import bench_image, encode
from bench.server_proc import ServerProcess, free_port
from bench.stats import LatencyStats

MiB = 1024 * 1024
SERVE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "ray" / "serve.yaml"


def post(client: httpx.Client, url: str, data: bytes) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.post(url + "/segment", files={"image": ("image.png", data, "image/png")})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{url}/segment answered {response.status_code}: {response.text[:200]}")
    return elapsed, response


def interleaved_latency(
    urls: dict[str, str], data: bytes, rounds: int, settle_s: float
) -> dict[str, dict[str, LatencyStats]]:
    """Per side: the whole request and the part outside the engine's inference (total minus the
    X-Danet-Inference-Ms the engine reports), which is where a proxy adds its cost."""
    times: dict[str, list[float]] = {name: [] for name in urls}
    outside: dict[str, list[float]] = {name: [] for name in urls}
    with httpx.Client(timeout=120) as client:
        for url in urls.values():  # one warm-up call each (connections, first-shape work)
            post(client, url, data)
        for _ in range(rounds):
            order = list(urls)
            random.shuffle(order)
            for name in order:
                time.sleep(settle_s)
                elapsed, response = post(client, urls[name], data)
                times[name].append(elapsed)
                outside[name].append(elapsed - float(response.headers["x-danet-inference-ms"]) / 1000.0)
    return {
        name: {
            "total": LatencyStats.from_seconds(times[name]),
            "outside_inference": LatencyStats.from_seconds(outside[name]),
        }
        for name in urls
    }


def throughput(url: str, data: bytes, concurrency: int, seconds: float) -> tuple[float, set[str]]:
    """Requests per second with ``concurrency`` closed-loop clients; also the replicas that answered."""
    stop = time.monotonic() + seconds
    replicas: set[str] = set()

    def worker() -> int:
        done = 0
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop:
                _, response = post(client, url, data)
                replicas.add(response.headers.get("x-danet-replica", ""))
                done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda _: worker(), range(concurrency)))
    return total / (time.perf_counter() - started), replicas - {""}


def interleaved_throughput(
    urls: dict[str, str], data: bytes, concurrency: int, seconds: float, windows: int
) -> dict[str, dict[str, Any]]:
    rates: dict[str, list[float]] = {name: [] for name in urls}
    replicas: dict[str, set[str]] = {name: set() for name in urls}
    for _ in range(windows):
        for name, url in urls.items():
            rate, answered = throughput(url, data, concurrency, seconds)
            rates[name].append(rate)
            replicas[name] |= answered
    return {
        name: {
            "req_s": statistics.median(rates[name]),
            "windows": rates[name],
            "replicas": len(replicas[name]),
        }
        for name in urls
    }


def serve_config(port: int, settings: dict[str, Any], replicas: int) -> dict[str, Any]:
    """deploy/ray/serve.yaml with a free port, one proxy, ``replicas`` fixed replicas and no gRPC."""
    config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
    config.pop("grpc_options", None)
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["proxy_location"] = "HeadOnly"
    (app,) = config["applications"]
    app["args"] = {**app.get("args", {}), **settings}
    app["deployments"] = [
        {
            "name": app["deployments"][0]["name"],
            "num_replicas": replicas,
            "ray_actor_options": {"num_cpus": 1},
        }
    ]
    return config


def deploy(address: str, config: dict[str, Any], replicas: int, timeout_s: float = 300.0) -> float:
    """``serve run --non-blocking`` the config; seconds from the submission until ``replicas`` RUNNING."""
    from ray import serve

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    cli = Path(sys.executable).with_name("serve")
    subprocess.run(
        [str(cli), "run", "--non-blocking", "--address", address, fh.name], check=True, capture_output=True
    )
    submitted = time.perf_counter()
    while time.perf_counter() - submitted < timeout_s:
        app = serve.status().applications.get("danet")
        if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING":
            states = app.deployments["danet"].replica_states
            if (
                sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")
                == replicas
            ):
                return time.perf_counter() - submitted
        time.sleep(0.1)
    raise RuntimeError(f"{replicas} replicas not running after {timeout_s:.0f} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    image = bench_image(args.size, args.size)
    data = encode(image)
    settings: dict[str, Any] = {
        "intra_op_threads": args.intra_op_threads,
        "max_queue": 16,
        "access_log": False,
        "log_format": "text",
    }
    if args.model:
        settings["models"] = [str(args.model)]
    env = {"DANET_INTRA_OP_THREADS": str(args.intra_op_threads), "DANET_MAX_QUEUE": "16"}
    env["DANET_ACCESS_LOG"] = "false"
    direct = ServerProcess([args.model] if args.model else [], env=env, grpc=False).start()
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=100 * MiB, logging_level=logging.WARNING
    )
    try:
        port = free_port()
        address = ray.get_runtime_context().gcs_address
        first_deploy_s = deploy(address, serve_config(port, settings, 1), 1)
        urls = {"danet-serve": direct.http_url, "ray-serve": f"http://127.0.0.1:{port}"}
        latency = interleaved_latency(urls, data, args.rounds, args.settle_ms / 1000.0)
        one = interleaved_throughput(urls, data, args.concurrency, args.seconds, args.windows)
        # only num_replicas changes: Serve adds one replica and keeps the running one
        new_replica_s = deploy(address, serve_config(port, settings, 2), 2)
        two = interleaved_throughput(urls, data, args.concurrency, args.seconds, args.windows)
    finally:
        serve.shutdown()
        ray.shutdown()
        direct.stop()
    d, r = latency["danet-serve"]["total"], latency["ray-serve"]["total"]
    d_out, r_out = latency["danet-serve"]["outside_inference"], latency["ray-serve"]["outside_inference"]
    return {
        "run": {
            "size": args.size,
            "model": str(args.model or "embedded default"),
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "window_s": args.seconds,
            "windows": args.windows,
            "intra_op_threads": args.intra_op_threads,
            "ray": ray.__version__,
        },
        "latency_ms": {side: {k: v.to_dict() for k, v in parts.items()} for side, parts in latency.items()},
        "total_ratio_p50": r.p50 / d.p50,
        "outside_inference_ms_p50": {"danet-serve": d_out.p50, "ray-serve": r_out.p50},
        "proxy_overhead_ms_p50": r_out.p50 - d_out.p50,
        "throughput_1_replica": one,
        "throughput_2_replicas": two,
        "ready_s": {"first_deploy": first_deploy_s, "new_replica_scale_1_to_2": new_replica_s},
    }


def describe(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    one, two = result["throughput_1_replica"], result["throughput_2_replicas"]
    out = result["outside_inference_ms_p50"]
    c = result["run"]["concurrency"]
    return "\n".join(
        [
            f"run: {json.dumps(result['run'])}",
            "one at a time, interleaved, p50 ms (total / outside inference): "
            f"danet-serve {lat['danet-serve']['total']['p50']:.1f} / {out['danet-serve']:.1f}, "
            f"ray-serve {lat['ray-serve']['total']['p50']:.1f} / {out['ray-serve']:.1f}; "
            f"total ratio {result['total_ratio_p50']:.2f}x, "
            f"Serve proxy overhead {result['proxy_overhead_ms_p50']:+.1f} ms per request",
            f"req/s at c={c}, 1 replica: ray-serve {one['ray-serve']['req_s']:.2f} "
            f"vs danet-serve {one['danet-serve']['req_s']:.2f}",
            f"req/s at c={c}, 2 replicas: ray-serve {two['ray-serve']['req_s']:.2f} "
            f"({two['ray-serve']['replicas']} answered) vs danet-serve {two['danet-serve']['req_s']:.2f}",
            f"ready: first deploy {result['ready_s']['first_deploy']:.1f} s, "
            f"new replica (scale 1 -> 2) {result['ready_s']['new_replica_scale_1_to_2']:.1f} s "
            "(from the config's submission to RUNNING)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX file (default: the embedded default model)")
    parser.add_argument("--size", type=int, default=512, help="square image side (default 512)")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved one-at-a-time rounds")
    parser.add_argument("--settle-ms", type=float, default=100.0, help="gap before each timed call")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the throughput windows")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one throughput window")
    parser.add_argument("--windows", type=int, default=2, help="throughput windows per side")
    parser.add_argument("--intra-op-threads", type=int, default=1, help="onnxruntime threads, both sides")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(args)
    print(describe(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
