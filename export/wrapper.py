"""The module that becomes the ONNX graph: raw pixels in, class ids and confidences out.

Everything a client would otherwise have to re-implement lives here, once: the NHWC uint8 ->
NCHW float conversion, the checkpoint's mean/std normalisation, the argmax and the confidence.
Doing them in the graph keeps preprocessing in one place (the classic cause of "ONNX differs from
PyTorch") and lets a GPU return one byte per pixel instead of float logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from models.config import DANetConfig

__all__ = ["SegmentationWrapper", "fp32_channel_attention", "labels_dtype"]


def labels_dtype(num_classes: int) -> torch.dtype:
    """uint8 for up to 256 classes, else int32 (the class ids of the ``labels`` output)."""
    return torch.uint8 if num_classes <= 256 else torch.int32


class SegmentationWrapper(nn.Module):
    """uint8 ``image`` [N, H, W, 3] RGB -> ``(labels, confidence[, logits])`` at the input resolution.

    ``labels`` [N, H, W] (uint8 for <= 256 classes, else int32): argmax over the classes.
    ``confidence`` float32 [N, H, W]: the maximum softmax probability, computed as
    ``1 / sum(exp(logits - max))`` so that no full softmax tensor is materialised.
    ``logits`` float32 [N, C, H, W] when ``with_logits``.

    With ``half``, the network runs in float16 but the normalisation, the argmax and the
    confidence stay in float32 (the logits are cast back before them).
    """

    def __init__(
        self,
        model: nn.Module,
        config: DANetConfig,
        *,
        with_logits: bool = True,
        half: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self.half_precision = half
        self.labels_dtype = labels_dtype(config.num_classes)
        # 1/std is folded so the graph does one Sub and one Mul per pixel.
        # ``dtype`` float64 gives the verification's reference run (the network converted too).
        self.register_buffer("mean", torch.tensor(config.mean, dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer(
            "inv_std", (1.0 / torch.tensor(config.std, dtype=torch.float64)).to(dtype).view(1, 3, 1, 1)
        )

    mean: Tensor
    inv_std: Tensor

    def normalise(self, image: Tensor) -> Tensor:
        """uint8 NHWC -> float NCHW (float32, or the wrapper's ``dtype``) normalised with mean/std."""
        x = image.permute(0, 3, 1, 2).to(self.mean.dtype)
        return (x - self.mean) * self.inv_std

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = self.normalise(image)
        if self.half_precision:
            x = x.half()
        logits = self.model(x)
        logits = logits.float() if logits.dtype == torch.float16 else logits
        labels = logits.argmax(dim=1).to(self.labels_dtype)
        peak = logits.amax(dim=1, keepdim=True)
        confidence = torch.reciprocal(torch.exp(logits - peak).sum(dim=1))
        if self.with_logits:
            return labels, confidence, logits
        return labels, confidence


@contextlib.contextmanager
def fp32_channel_attention(model: nn.Module) -> Iterator[int]:
    """Run every ChannelAttention of a half-precision ``model`` in float32 (its parameters stay float32;
    the forward override is removed on exit).

    The channel energy sums products over all positions (tens of thousands at full resolution),
    far beyond float16's range; the module keeps its own code, only its input is upcast and its
    output cast back. Yields the number of wrapped modules.
    """
    from models.attention import ChannelAttention

    modules = [module for module in model.modules() if isinstance(module, ChannelAttention)]
    for module in modules:
        module.float()
        original = type(module).forward

        def forward(x: Tensor, module: nn.Module = module, original=original) -> Tensor:  # type: ignore[no-untyped-def]
            return original(module, x.float()).to(x.dtype)

        setattr(module, "forward", forward)  # noqa: B010 - instance override, removed on exit
    try:
        yield len(modules)
    finally:
        for module in modules:
            delattr(module, "forward")
