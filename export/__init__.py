"""ONNX export of DANet checkpoints: a library (:func:`export.onnx_export.export_onnx`) and the
``danet-export`` command (:mod:`export.cli`).

Import-light: importing ``export`` does not import torch. See :mod:`export.onnx_export` for the
pipeline, :mod:`export.wrapper` for the graph contract and :mod:`export.attention` for the
bounded-memory position attention.
"""
