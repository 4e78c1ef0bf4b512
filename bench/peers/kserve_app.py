"""The KServe Python model server serving the same ONNX file over the Open Inference Protocol (v2).

Written the way KServe's custom-model documentation shows (a ``kserve.Model`` subclass with ``load`` and
``predict``, started by ``kserve.ModelServer``), with onnxruntime's default session plus the benchmark's
thread count. Runs in the peers' own environment (``make peers``), never imported by danet-serve.

    .venv-peers/bin/python bench/peers/kserve_app.py --model_name danet --model_path m.onnx --threads 2 \\
        --http_port 8080 --grpc_port 8081
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

_DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


class OnnxSegmenter(Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict | None = None,
    ) -> InferResponse:
        assert self.session is not None
        images = payload.inputs[0].as_numpy()
        names = [o.name for o in payload.request_outputs or []] or [
            o.name for o in self.session.get_outputs()
        ]
        values = self.session.run(names, {payload.inputs[0].name: images})
        outputs = [
            InferOutput(name=name, shape=list(value.shape), datatype=_DATATYPES[value.dtype], data=value)
            for name, value in zip(names, values, strict=True)
        ]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args, _ = parser.parse_known_args()
    ModelServer().start([OnnxSegmenter(args.model_name, args.model_path, args.threads)])
