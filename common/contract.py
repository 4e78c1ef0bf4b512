"""The interface contract, defined once.

Tensor names, metadata keys, default ports and the location of the embedded
default model. Export, server, clients, benchmarks and tests import these
names; nothing else spells them out. See ../shared/CONTRACT.md.
"""

from __future__ import annotations

from pathlib import Path

# --- ONNX graph -------------------------------------------------------------
INPUT_IMAGE = "image"  # uint8 [batch, height, width, 3], RGB
OUTPUT_LABELS = "labels"  # class ids [batch, height, width], uint8 when <= 256 classes
OUTPUT_CONFIDENCE = "confidence"  # float [batch, height, width], max softmax probability
OUTPUT_LOGITS = "logits"  # float32 [batch, classes, height, width], only with --logits

# --- ONNX metadata_props keys (values are JSON strings) ---------------------
META_CLASSES = "classes"  # JSON list of class names
META_PALETTE = "palette"  # JSON list of [r, g, b]
META_ARCHITECTURE = "architecture"  # JSON dict: the DANet config (depth, stem, os, ...)
META_MEAN = "mean"  # JSON list of 3 floats (0-255 scale), applied inside the graph
META_STD = "std"  # JSON list of 3 floats (0-255 scale), applied inside the graph
META_SOURCE_FORMAT = "source_format"  # "official" | "mmseg" | "danet-serve"
META_SOURCE_SHA256 = "source_sha256"
META_PREFERRED_SIZE = "preferred_size"  # JSON [height, width] the model was trained/evaluated at
META_EXPORTER_VERSION = "exporter_version"
META_PRECISION = "precision"  # "fp32" | "fp16" | "int8"
META_MODEL_NAME = "model_name"  # suggested serving name
# Evaluation defaults for tta=official|mmseg (optional): JSON int N, or [a, b]
META_EVAL_BASE_SIZE = "eval_base_size"  # official: long side at scale 1; mmseg: Resize scale (long, short)
META_EVAL_CROP_SIZE = "eval_crop_size"  # sliding-window crop (height, width)
META_EVAL_STRIDE = "eval_stride"  # sliding-window stride (height, width)
META_VERIFICATION = "verification"  # JSON dict: error vs float64 truth, noise floor, agreement, rule

# --- Network ----------------------------------------------------------------
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
ENV_PREFIX = "DANET_"

# --- The embedded default model --------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL_NAME = "danet-synthetic"
DEFAULT_WEIGHTS_DIR = MODELS_DIR / "weights"
DEFAULT_ONNX = DEFAULT_WEIGHTS_DIR / f"{DEFAULT_MODEL_NAME}.onnx"
DEFAULT_CHECKPOINT = DEFAULT_WEIGHTS_DIR / f"{DEFAULT_MODEL_NAME}.safetensors"
