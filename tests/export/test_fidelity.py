"""Default-flag ``danet-export`` on checkpoints with a trained network's scale, judged against an
independent float64 reference.

The checkpoints are random upstream state dicts (official R50 deep stem OS8, official R101 7x7 OS8
multi-grid 4-8-16, MMSegmentation R50-V1c OS8, an OS16 variant; reduced widths) whose BN statistics
are calibrated on a batch of scenes and whose logits reach |15-30|, as a trained DANet's do. The
truth is ``tests/models/danet_reference.py`` (which shares no code with ``models``) run in float64;
its float32 run is the noise floor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch

from common.contract import META_VERIFICATION, OUTPUT_CONFIDENCE, OUTPUT_LABELS, OUTPUT_LOGITS
from export.metadata import read_metadata
from export.verify import DEFAULT_TOLERANCE, FLOAT32_FLOOR, judge, onnx_runner, run_reference
from tests.export.conftest import REALISTIC_LAYOUTS, normalised, reference_module

SHAPES = ((1, 72, 96), (1, 65, 99))


def _independent(layout: str, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    """uint8 batch -> outputs of the upstream forward pass in ``dtype`` (no code shared with models)."""
    ref = reference_module()
    kind, _, forward_args, _ = REALISTIC_LAYOUTS[layout]
    forward = ref.official_forward if kind == "official" else ref.mmseg_forward
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            logits = forward(weights, normalised(batch).to(dtype), **forward_args)[0].double().numpy()
        peak = logits.max(axis=1, keepdims=True)
        return {
            OUTPUT_LOGITS: logits,
            OUTPUT_LABELS: logits.argmax(axis=1),
            OUTPUT_CONFIDENCE: 1.0 / np.exp(logits - peak).sum(axis=1),
        }

    return run


#: One layout in the default run (it is also the mutation tests' subject); each further ResNet-50/101
#: export costs 30-170 s on a 2-core machine, so the other layouts run with ``-m slow``.
FAST_LAYOUT = "official-r50-deepstem-os8"


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(layout, marks=() if layout == FAST_LAYOUT else pytest.mark.slow)
        for layout in REALISTIC_LAYOUTS
    ],
)
def test_default_flags_accept_and_match_the_independent_float64_reference(
    realistic: Any, layout: str
) -> None:
    checkpoint, state, report = realistic(layout)
    (fp32,) = report["artifacts"]
    verification = fp32["verification"]
    assert verification["passed"]
    assert verification["logit_scale"] > 10, "not a trained-scale checkpoint"
    # what the export judged is stored in the artifact
    model = onnx.load(fp32["path"])
    stored = read_metadata(model)[META_VERIFICATION]
    assert stored["passed"] and stored["floor"] == FLOAT32_FLOOR
    assert stored["noise_floor"]["min"] <= stored["noise_floor"]["max"]
    assert stored["max_abs_logit_diff"] <= stored["allowed_logit_diff"]
    assert stored["rule"] == {
        "k": DEFAULT_TOLERANCE.k,
        "rtol": DEFAULT_TOLERANCE.rtol,
        "margin": DEFAULT_TOLERANCE.margin,
    }

    # and against the independent upstream forward pass, with the same rule
    reference = run_reference(
        _independent(layout, state, torch.float64), _independent(layout, state, torch.float32), shapes=SHAPES
    )
    runner, provider = onnx_runner(model)
    independent = judge(runner, reference, subject=f"{layout} ONNX vs upstream float64", provider=provider)
    assert independent.passed, independent.summary()
    assert independent.logit_scale > 10
    assert independent.noise_floor > 0


def test_native_checkpoint_with_calibrated_statistics(tmp_path: Any) -> None:
    """Our own format, BN statistics from a training-mode pass over scenes (logits scaled to ~20)."""
    from export.onnx_export import export_onnx
    from models.checkpoints import load_checkpoint
    from models.checkpoints.native import save_native
    from models.danet import build_danet
    from tests.export.conftest import calibration_batch, tiny_config

    config = tiny_config()
    torch.manual_seed(5)
    model = build_danet(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the batch statistics
            module.reset_running_stats()
        if hasattr(module, "gamma") and isinstance(module.gamma, torch.nn.Parameter):
            module.gamma.data.fill_(0.5)
    model.train()
    with torch.no_grad():
        model(calibration_batch().float())
        model.eval()
        logits = model(calibration_batch().float())
        model.head.cls_fused.weight.mul_(20.0 / logits.abs().max())
        model.head.cls_fused.bias.mul_(20.0 / logits.abs().max())
    path = save_native(model, config, tmp_path / "native.safetensors")
    report = export_onnx(load_checkpoint(path), tmp_path / "native.onnx")
    assert report.verification is not None and report.verification.passed
    assert report.verification.logit_scale > 10
    stored = read_metadata(onnx.load(str(report.output)))[META_VERIFICATION]
    assert stored["agreement"] >= stored["required_agreement"]
