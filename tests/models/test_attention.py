"""Position/channel attention: the bounded-memory PAM is exact, the CAM follows the official formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.attention import ChannelAttention, PositionAttention, attend_chunked, attend_naive, attend_split

SIZES = [(5, 7), (8, 8), (13, 9), (3, 31), (23, 17)]  # non-square, not multiples of 8, N from 21 to 391


def _pam(query_chunk: int = 7, export_chunks: int = 5, seed: int = 0) -> PositionAttention:
    torch.manual_seed(seed)
    pam = PositionAttention(32, 4, query_chunk=query_chunk, export_chunks=export_chunks).eval()
    with torch.no_grad():
        pam.gamma.fill_(0.9)
    return pam


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_chunked_pam_equals_naive(height: int, width: int) -> None:
    pam = _pam()
    x = torch.randn(2, 32, height, width) * 3
    with torch.no_grad():
        naive = pam._attend_naive(x)
        chunked = pam._attend_chunked(x)
        split = pam._attend_split(x)
        out = pam(x)
    assert (chunked - naive).abs().max().item() <= 1e-5
    assert (split - naive).abs().max().item() <= 1e-5
    assert (out - (0.9 * naive + x)).abs().max().item() <= 1e-5
    assert naive.abs().max() > 0.1  # the attention really contributes


def test_attend_functions_cover_uneven_and_oversized_chunks() -> None:
    torch.manual_seed(1)
    query, key, value = torch.randn(1, 37, 4), torch.randn(1, 4, 37), torch.randn(1, 6, 37)
    reference = attend_naive(query, key, value)
    for chunk in (1, 5, 36, 37, 100):
        assert (attend_chunked(query, key, value, chunk) - reference).abs().max().item() <= 1e-6
    for chunks in (1, 4, 37, 64):  # 64 > N: padded rows only
        assert (attend_split(query, key, value, chunks) - reference).abs().max().item() <= 1e-6


def test_pam_matches_official_formula() -> None:
    """The official PAM_Module forward, written out: bmm(V, softmax(Q^T K)^T)."""
    pam = _pam(query_chunk=3)
    x = torch.randn(1, 32, 6, 5)
    with torch.no_grad():
        b, c, h, w = x.shape
        q = pam.query(x).view(b, -1, w * h).permute(0, 2, 1)
        k = pam.key(x).view(b, -1, w * h)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)
        v = pam.value(x).view(b, -1, w * h)
        expected = pam.gamma * torch.bmm(v, attention.permute(0, 2, 1)).view(b, c, h, w) + x
        assert (pam(x) - expected).abs().max().item() <= 1e-5


def test_pam_uses_the_traceable_path_when_exporting() -> None:
    pam = _pam(query_chunk=4, export_chunks=3)
    calls: list[str] = []
    original = pam._attend_split

    def spy(x: torch.Tensor) -> torch.Tensor:
        calls.append("split")
        return original(x)

    pam._attend_split = spy  # type: ignore[method-assign]
    x = torch.randn(1, 32, 5, 6)
    with torch.no_grad():
        pam(x)
        assert calls == []
        traced = torch.jit.trace(pam, (x,))
    assert calls and set(calls) == {"split"}  # the tracer may run the module more than once
    other = torch.randn(1, 32, 9, 4)  # another size: the traced graph must not freeze N
    with torch.no_grad():
        assert (traced(other) - (pam.gamma * pam._attend_naive(other) + other)).abs().max().item() <= 1e-5


def test_pam_onnx_export_keeps_height_and_width_dynamic(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pam = _pam(export_chunks=4)
    x = torch.randn(1, 32, 6, 7)
    path = tmp_path / "pam.onnx"
    dims = {2: torch.export.Dim("h", min=1, max=256), 3: torch.export.Dim("w", min=1, max=256)}
    torch.onnx.export(
        pam, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True, dynamic_shapes={"x": dims}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in [(6, 7), (11, 13), (2, 3)]:
        xi = torch.randn(1, 32, height, width)
        with torch.no_grad():
            expected = (pam.gamma * pam._attend_naive(xi) + xi).numpy()
        got = session.run(None, {"x": xi.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5


def test_cam_matches_official_formula_with_max_minus_energy() -> None:
    torch.manual_seed(2)
    cam = ChannelAttention()
    with torch.no_grad():
        cam.gamma.fill_(0.5)
    x = torch.randn(2, 8, 5, 3)
    b, c, h, w = x.shape
    q = x.view(b, c, -1)
    energy = torch.bmm(q, q.permute(0, 2, 1))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    expected = 0.5 * torch.bmm(torch.softmax(energy_new, dim=-1), q).view(b, c, h, w) + x
    # Softmax of plain energy would be a different (wrong) module: make sure the test can tell.
    wrong = 0.5 * torch.bmm(torch.softmax(energy, dim=-1), q).view(b, c, h, w) + x
    with torch.no_grad():
        out = cam(x)
    assert (out - expected).abs().max().item() <= 1e-5
    assert (out - wrong).abs().max().item() > 1e-2


def test_gammas_start_at_zero() -> None:
    assert PositionAttention(16, 2).gamma.item() == 0.0
    assert ChannelAttention().gamma.item() == 0.0
