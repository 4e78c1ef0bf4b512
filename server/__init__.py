"""danet-serve's inference server: onnxruntime engine, REST (FastAPI) and gRPC adapters. No torch here."""

__version__ = "0.1.0"
