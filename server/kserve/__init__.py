"""KServe v2 / Open Inference Protocol: one codec shared by the REST and gRPC front doors."""
