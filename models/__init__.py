"""PyTorch DANet: architecture, label sets and checkpoint import.

Import-light on purpose: importing ``models`` does not import torch. Use the submodules:
``models.config`` (DANetConfig, pure Python), ``models.labels`` (pure Python),
``models.danet`` (DANet, builders), ``models.checkpoints`` (load_checkpoint, CheckpointError).
"""
