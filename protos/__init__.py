"""Protocol definitions (.proto) and their generated Python stubs.

The `.proto` sources live under this directory with their package path
(`danet/segmentation/v1/`, `inference/`); the stubs are generated into
`protos.gen` by `python -m protos.generate` and committed, so neither the
server nor the client needs grpcio-tools at run time.
"""
