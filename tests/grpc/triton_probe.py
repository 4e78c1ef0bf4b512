"""Run by test_grpc_tritonclient.py in its own process: drive danet-serve with the unmodified
``tritonclient.grpc`` and write what it saw to files (tritonclient's `inference.*` protobuf symbols cannot
share a process with ours).

    python triton_probe.py HOST:PORT MODEL IMAGES.npy OUT_DIR
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException


def status_of(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def main(target: str, model: str, images_path: str, out: str) -> None:
    out_dir = Path(out)
    images = np.load(images_path)
    client = triton.InferenceServerClient(url=target)
    report: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(model, as_json=True),
        "model_config": client.get_model_config(model, as_json=True),
    }

    image = triton.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    everything = client.infer(model, [image])  # no outputs listed = all outputs
    report["all_outputs"] = [o["name"] for o in everything.get_response(as_json=True)["outputs"]]
    chosen = client.infer(
        model,
        [image],
        outputs=[triton.InferRequestedOutput("confidence"), triton.InferRequestedOutput("labels")],
        request_id="req-7",
    )
    response = chosen.get_response(as_json=True)
    report["chosen_outputs"] = [o["name"] for o in response["outputs"]]
    report["chosen_id"] = response.get("id")
    np.savez(
        out_dir / "outputs.npz",
        labels=everything.as_numpy("labels"),
        confidence=everything.as_numpy("confidence"),
        logits=everything.as_numpy("logits"),
        chosen_labels=chosen.as_numpy("labels"),
    )

    wrong_type = triton.InferInput("image", list(images.shape), "FP32")
    wrong_type.set_data_from_numpy(images.astype(np.float32))
    report["errors"] = {
        "unknown_model": status_of(lambda: client.infer("no-such-model", [image])),
        "wrong_datatype": status_of(lambda: client.infer(model, [wrong_type])),
        "unknown_output": status_of(
            lambda: client.infer(model, [image], outputs=[triton.InferRequestedOutput("nope")])
        ),
    }

    # Streaming (ModelStreamInfer): replies come back with their request ids.
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    for i in range(3):
        one = triton.InferInput("image", [1, *images.shape[1:]], "UINT8")
        one.set_data_from_numpy(images[i % len(images)][None])
        client.async_stream_infer(
            model, [one], request_id=f"s{i}", outputs=[triton.InferRequestedOutput("labels")]
        )
    stream = []
    for _ in range(3):
        result, error = replies.get(timeout=60)
        stream.append(
            {"error": str(error) if error else None, "id": result.get_response().id if result else None}
        )
    client.stop_stream()
    report["stream"] = stream
    client.close()

    # tritonclient's own descriptors, for the field-by-field comparison with our .proto files.
    (out_dir / "service.desc").write_bytes(service_pb2.DESCRIPTOR.serialized_pb)
    (out_dir / "model_config.desc").write_bytes(model_config_pb2.DESCRIPTOR.serialized_pb)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:5])
