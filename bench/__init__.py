"""danet-bench: the serving stack measured against the floor, in one run.

The floor is onnxruntime's ``InferenceSession.run`` in-process on pre-made input; everything else
(``POST /segment``, gRPC ``Segment``, PyTorch eager, int8/fp16 variants) is reported as a ratio to it.
``bench.cli`` is the console script; the other modules are the pieces it assembles and the load/fault
tests reuse (``bench.server_proc``, ``bench.clients``).
"""
