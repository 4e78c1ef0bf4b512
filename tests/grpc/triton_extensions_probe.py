"""Run by test_grpc_shm.py in its own process: the statistics and system shared memory extensions through
the unmodified ``tritonclient.http`` and ``tritonclient.grpc`` (and ``tritonclient.utils.shared_memory``),
against a danet-serve that requires an API key. Writes what it saw to OUT_DIR (report.json, labels_*.npy).

    python triton_extensions_probe.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL IMAGES.npy OUT_DIR API_KEY
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm  # unmodified (the client extra pins setuptools < 81)
from google.protobuf.json_format import MessageToJson
from tritonclient.utils import InferenceServerException


def error_of(call: Any) -> str | None:
    try:
        call()
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"
    return None


def stats_of(client: Any, protocol: str, model: str, version: str = "") -> Any:
    if protocol == "grpc":
        return client.get_inference_statistics(model, version, headers=HEADERS, as_json=True)
    return client.get_inference_statistics(model, version, headers=HEADERS)


HEADERS: dict[str, str] = {}


def probe(protocol: str, url: str, model: str, images: np.ndarray, out: Path) -> dict[str, Any]:
    lib: Any = tgrpc if protocol == "grpc" else thttp
    client = lib.InferenceServerClient(url=url)
    as_json = {"as_json": True} if protocol == "grpc" else {}
    report: dict[str, Any] = {
        "extensions": client.get_server_metadata(headers=HEADERS, **as_json)["extensions"],
        "stats_before": stats_of(client, protocol, model),
    }
    labels_size = images.shape[0] * images.shape[1] * images.shape[2]  # uint8 labels [N, H, W]
    tag = f"danet_probe_{os.getpid()}_{protocol}"
    region_in = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", images.nbytes)
    region_out = shm.create_shared_memory_region(f"{tag}_out", f"/{tag}_out", labels_size + 16)
    try:
        shm.set_shared_memory_region(region_in, [images])
        report["unauthenticated_register"] = error_of(
            lambda: client.register_system_shared_memory("nokey", f"/{tag}_in", images.nbytes)
        )
        client.register_system_shared_memory("in", f"/{tag}_in", images.nbytes, headers=HEADERS)
        client.register_system_shared_memory("out", f"/{tag}_out", labels_size + 16, headers=HEADERS)
        report["register_twice"] = error_of(
            lambda: client.register_system_shared_memory("in", f"/{tag}_in", images.nbytes, headers=HEADERS)
        )
        report["register_beyond_object"] = error_of(
            lambda: client.register_system_shared_memory(
                "big", f"/{tag}_in", images.nbytes, offset=1, headers=HEADERS
            )
        )
        report["register_missing_key"] = error_of(
            lambda: client.register_system_shared_memory("gone", f"/{tag}_none", 16, headers=HEADERS)
        )
        report["status_all"] = client.get_system_shared_memory_status(headers=HEADERS, **as_json)
        report["status_one"] = client.get_system_shared_memory_status("out", headers=HEADERS, **as_json)
        report["status_unknown"] = error_of(
            lambda: client.get_system_shared_memory_status("nope", headers=HEADERS)
        )

        image = lib.InferInput("image", list(images.shape), "UINT8")
        image.set_shared_memory("in", images.nbytes)
        labels = lib.InferRequestedOutput("labels")
        labels.set_shared_memory("out", labels_size, offset=16)
        confidence = lib.InferRequestedOutput("confidence")
        result = client.infer(model, [image], outputs=[labels, confidence], headers=HEADERS)
        from_shm = shm.get_contents_as_numpy(region_out, np.uint8, [labels_size + 16])[16:]
        np.save(out / f"labels_{protocol}.npy", from_shm.reshape(images.shape[:3]).copy())
        np.save(out / f"confidence_{protocol}.npy", result.as_numpy("confidence"))
        if protocol == "grpc":
            response = result.get_response()
            report["labels_in_reply"] = len(response.raw_output_contents[0]) or None
            report["labels_output"] = json.loads(
                MessageToJson(response.outputs[0], preserving_proto_field_name=True)
            )
        else:
            output = result.get_output("labels")
            report["labels_in_reply"] = output.get("data") or output.get("parameters", {}).get(
                "binary_data_size"
            )
            report["labels_output"] = output

        too_far = lib.InferInput("image", list(images.shape), "UINT8")
        too_far.set_shared_memory("in", images.nbytes, offset=1)
        report["input_beyond_region"] = error_of(lambda: client.infer(model, [too_far], headers=HEADERS))
        small = lib.InferRequestedOutput("labels")
        small.set_shared_memory("out", labels_size - 1)
        image_again = lib.InferInput("image", list(images.shape), "UINT8")
        image_again.set_shared_memory("in", images.nbytes)
        report["output_too_small"] = error_of(
            lambda: client.infer(model, [image_again], outputs=[small], headers=HEADERS)
        )
        report["unknown_region"] = error_of(
            lambda: client.infer(
                model,
                [image_again],
                outputs=[_output(lib, "labels", "nope", labels_size)],
                headers=HEADERS,
            )
        )

        client.unregister_system_shared_memory("in", headers=HEADERS)
        report["status_after_one"] = client.get_system_shared_memory_status(headers=HEADERS, **as_json)
        client.unregister_system_shared_memory(headers=HEADERS)
        report["status_after_all"] = client.get_system_shared_memory_status(headers=HEADERS, **as_json)
    finally:
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)

    report["stats_after"] = stats_of(client, protocol, model)
    report["stats_version"] = stats_of(client, protocol, model, "1")
    report["stats_all"] = stats_of(client, protocol, "")
    report["stats_unknown"] = error_of(lambda: stats_of(client, protocol, "no-such-model"))
    client.close()
    return report


def _output(lib: Any, name: str, region: str, size: int) -> Any:
    output = lib.InferRequestedOutput(name)
    output.set_shared_memory(region, size)
    return output


def main(http_url: str, grpc_url: str, model: str, images_path: str, out: str, key: str) -> None:
    HEADERS["x-api-key"] = key
    images = np.load(images_path)
    out_dir = Path(out)
    report = {
        "http": probe("http", http_url, model, images, out_dir),
        "grpc": probe("grpc", grpc_url, model, images, out_dir),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:7])
