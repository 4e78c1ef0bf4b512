"""gRPC adapters over the shared engine.

``server.grpc.server.create_grpc_server(settings, engine)`` builds the aio server with danet-serve's own
``danet.segmentation.v1.SegmentationService``, KServe v2's ``inference.GRPCInferenceService``,
``grpc.health.v1.Health`` and server reflection. Importing this package loads nothing heavy.
"""
