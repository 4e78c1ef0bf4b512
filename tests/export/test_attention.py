"""The Scan-lowered position attention: exact for any size, chunk count and padding, one graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.attention import bounded_attention, make_translation_table, pam_attention
from models.attention import PositionAttention, attend_naive


class _PamOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.pam = PositionAttention(16, 4)
        with torch.no_grad():
            self.pam.gamma.fill_(0.8)
            self.pam.query.weight.mul_(3.0)  # peaky attention: chunking mistakes would show

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pam(x)


def _naive(module: _PamOnly, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        attended = attend_naive(*module.pam._project(x)).reshape(x.shape)
        return (module.pam.gamma * attended + x).numpy()


@pytest.fixture(scope="module")
def scan_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PAM exported with a tiny budget (48 energy elements per chunk) so that chunking kicks in."""
    module = _PamOnly().eval()
    path = tmp_path_factory.mktemp("pam") / "pam.onnx"
    dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")}
    with bounded_attention(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals
        program = torch.onnx.export(
            module,
            (torch.randn(2, 16, 6, 10),),
            dynamo=True,
            input_names=["x"],
            dynamic_shapes={"x": dims},
            custom_translation_table=make_translation_table(budget=48),
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    return path


@pytest.mark.parametrize(
    ("batch", "height", "width"),
    [(1, 1, 1), (1, 3, 5), (2, 3, 5), (1, 7, 9), (3, 4, 4), (1, 11, 13), (1, 1, 7), (1, 2, 4)],
)
def test_scan_attention_is_exact(scan_graph: Path, batch: int, height: int, width: int) -> None:
    # N=15 -> 3 queries per chunk, 5 chunks; N=63 -> 1 per chunk; (2, 3, 5): chunk 1 with batch 2;
    # N=16, B=3 -> 1 per chunk; N=143 -> budget < N: still one query per chunk; N=7 -> at most 6 per
    # chunk, split evenly into 2 chunks of 4 (one padded row); N=8 -> 2 chunks of 4, none padded.
    module = _PamOnly().eval()
    x = torch.randn(batch, 16, height, width, generator=torch.Generator().manual_seed(height * width))
    session = ort.InferenceSession(str(scan_graph), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    expected = _naive(module, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


def test_graph_holds_one_scan_and_no_python_loop(scan_graph: Path) -> None:
    model = onnx.load(str(scan_graph))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Scan") == 1 and ops.count("Softmax") == 0  # the softmax lives in the Scan body
    body = next(a.g for n in model.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body")
    assert [node.op_type for node in body.node] == ["MatMul", "Softmax", "MatMul"]


def test_patch_is_restored_and_eager_op_matches_naive() -> None:
    module = _PamOnly().eval()
    with bounded_attention(module) as patched:
        assert patched == 1
        assert module.pam.force_split is True and "_attend_split" in vars(module.pam)
        x = torch.randn(1, 16, 5, 7)
        with torch.no_grad():
            np.testing.assert_allclose(module(x).numpy(), _naive(module, x), atol=1e-5)
    assert module.pam.force_split is False and "_attend_split" not in vars(module.pam)
    q, k, v = torch.randn(2, 9, 4), torch.randn(2, 4, 9), torch.randn(2, 6, 9)
    torch.testing.assert_close(pam_attention(q, k, v), attend_naive(q, k, v))


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        make_translation_table(0)
