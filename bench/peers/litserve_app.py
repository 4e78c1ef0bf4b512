"""LitServe serving the same ONNX file: an image upload in, the colour class map (palette PNG) out.

Written the way LitServe's documentation shows (a ``ls.LitAPI`` with ``setup``, ``decode_request``,
``predict`` and ``encode_response``, served by ``ls.LitServer``), doing the same work as danet-serve's
``POST /segment`` (decode the upload, run the model, encode a palette PNG), with onnxruntime's default
session plus the benchmark's thread count. Runs in the peers' own environment (``make peers``).

    .venv-peers/bin/python bench/peers/litserve_app.py --model m.onnx --threads 2 --port 8000
"""

import argparse
import io
import json

import litserve as ls
import numpy as np
import onnxruntime as ort
from fastapi.responses import Response
from PIL import Image


class SegmentAPI(ls.LitAPI):
    def __init__(self, path: str, threads: int) -> None:
        super().__init__()
        self.path = path
        self.threads = threads

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        palette = json.loads(metadata.get("palette", "[]")) or [[i, i, i] for i in range(256)]
        self.palette = [channel for colour in palette for channel in colour]

    # No annotations on decode_request/encode_response: LitServe reads them to pick the request and
    # response types, and unannotated means the FastAPI Request (form uploads) and Response.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        upload = request["image"]
        return np.asarray(Image.open(io.BytesIO(upload.file.read())).convert("RGB"))

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(["labels"], {"image": image[np.newaxis]})[0][0]

    def encode_response(self, labels):  # type: ignore[no-untyped-def]
        picture = Image.fromarray(labels.astype(np.uint8), "P")
        picture.putpalette(self.palette)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Response(content=buffer.getvalue(), media_type="image/png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=30, help="LitServer's request timeout (s)")
    args = parser.parse_args()
    server = ls.LitServer(SegmentAPI(args.model, args.threads), accelerator="cpu", timeout=args.timeout)
    server.run(port=args.port, generate_client_file=False)
