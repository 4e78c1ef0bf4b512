"""SegmentationWrapper: the pre/post-processing that becomes part of the graph (eager checks)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.wrapper import SegmentationWrapper, fp32_channel_attention, labels_dtype
from models.attention import ChannelAttention
from tests.export.conftest import tiny_config


class _Recorder(nn.Module):
    """Returns fixed logits and remembers what it was fed."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.seen: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x
        return self.logits.to(x.dtype)


def test_labels_dtype_by_class_count() -> None:
    assert labels_dtype(2) == labels_dtype(256) == torch.uint8
    assert labels_dtype(257) == labels_dtype(1000) == torch.int32


def test_normalisation_argmax_and_confidence() -> None:
    config = tiny_config(num_classes=3, classes=("a", "b", "c"), palette=((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    logits = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0)) * 4
    model = _Recorder(logits)
    image = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    labels, confidence, out = SegmentationWrapper(model, config)(image)
    expected_x = (
        image.permute(0, 3, 1, 2).float() - torch.tensor(config.mean).view(1, 3, 1, 1)
    ) / torch.tensor(config.std).view(1, 3, 1, 1)
    assert model.seen is not None
    torch.testing.assert_close(model.seen, expected_x)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 5, 6)
    torch.testing.assert_close(labels.long(), logits.argmax(1))
    torch.testing.assert_close(confidence, torch.softmax(logits, 1).amax(1))
    torch.testing.assert_close(out, logits)
    assert len(SegmentationWrapper(model, config, with_logits=False)(image)) == 2


def test_many_classes_use_int32_labels() -> None:
    config = tiny_config(num_classes=300, classes=(), palette=())
    logits = torch.zeros(1, 300, 2, 2)
    logits[0, 299, 1, 1] = 5.0
    labels, _, _ = SegmentationWrapper(_Recorder(logits), config)(torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
    assert labels.dtype == torch.int32 and int(labels[0, 1, 1]) == 299


def test_half_network_float32_edges() -> None:
    config = tiny_config()
    logits = torch.randn(1, 7, 4, 4)
    model = _Recorder(logits)
    labels, confidence, out = SegmentationWrapper(model, config, half=True)(
        torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    )
    assert model.seen is not None and model.seen.dtype == torch.float16
    assert confidence.dtype == out.dtype == torch.float32 and labels.dtype == torch.uint8


def test_channel_attention_runs_in_float32_inside_a_half_model() -> None:
    """X X^T over 4096 positions of value 30 is 3.7e6: inf in float16, NaN after max - energy."""
    cam = ChannelAttention()
    net = nn.Sequential(nn.Identity(), cam).half()
    with torch.no_grad():
        cam.gamma.fill_(0.5)
    big = torch.full((1, 4, 64, 64), 30.0, dtype=torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(cam(big)).all()  # what a plain half conversion would export
        with fp32_channel_attention(net) as count:
            assert count == 1
            out = cam(big)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full_like(big, 45.0, dtype=torch.float32))
    assert "forward" not in vars(cam)  # restored
