"""gRPC adapter tests (in-process server on port 0; tritonclient in subprocesses)."""
