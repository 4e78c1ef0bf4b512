"""Independent PyTorch re-implementations of the two published evaluation procedures, for parity tests.

Written from the procedures as published, in their own terms: the image is normalised to float first
and every resize is ``F.interpolate`` on float tensors (the server resizes uint8 pixels with its own
NumPy code and lets the graph normalise), the network is the PyTorch DANet (the server runs the ONNX
export), and nothing is shared with ``server.tta``.

* official: PyTorch-Encoding ``MultiEvalModule.forward`` + ``module_inference`` (junfu1115/DANet,
  ``encoding/models/sseg/base.py``).
* mmseg: MMSegmentation 1.x ``EncoderDecoder.slide_inference`` / ``whole_inference``,
  ``BaseSegmentor.postprocess_result`` (un-flip, bilinear resize to the original shape with the head's
  ``align_corners``) and ``SegTTAModel.merge_preds`` (mean of softmax); the ``Resize`` transform's sizes
  follow mmcv's ``_scale_size`` / ``rescale_size``. mmcv resizes uint8 with OpenCV, so the float
  resize here is rounded to integers before normalising.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def normalise(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 HWC (0-255) -> float NCHW, (x - mean) / std with mean/std on the 0-255 scale."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


# --- official -----------------------------------------------------------------------------------------
def _official_net(model: torch.nn.Module, x: Tensor, flip: bool) -> Tensor:
    out = model(x)
    if flip:
        out = out + model(torch.flip(x, dims=[3])).flip(dims=[3])
    return out.exp()


def _official_pad(x: Tensor, pad_value: Tensor, crop: int) -> Tensor:
    _, c, h, w = x.shape
    ph, pw = max(crop, h), max(crop, w)
    out = pad_value.view(1, c, 1, 1).expand(1, c, ph, pw).clone()
    out[:, :, :h, :w] = x
    return out


@torch.no_grad()
def official_scores(
    model: torch.nn.Module,
    image: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    base_size: int,
    crop_size: int,
    scales: tuple[float, ...],
    flip: bool,
) -> Tensor:
    """Summed scores [C, H, W] of MultiEvalModule for one image."""
    x = normalise(image, mean, std)
    pad_value = -torch.tensor(mean) / torch.tensor(std)  # a black pixel, normalised
    _, _, h, w = x.shape
    stride = int(crop_size * 2.0 / 3.0)
    total: Tensor | None = None
    for scale in scales:
        long_size = int(math.ceil(base_size * scale))
        if h > w:
            height, width = long_size, int(1.0 * w * long_size / h + 0.5)
            short_size = width
        else:
            width, height = long_size, int(1.0 * h * long_size / w + 0.5)
            short_size = height
        cur = F.interpolate(x, (height, width), mode="bilinear", align_corners=True)
        if long_size <= crop_size:
            out = _official_net(model, _official_pad(cur, pad_value, crop_size), flip)[:, :, :height, :width]
        else:
            padded = _official_pad(cur, pad_value, crop_size) if short_size < crop_size else cur
            _, _, ph, pw = padded.shape
            acc = torch.zeros(1, out_channels(model), ph, pw)
            count = torch.zeros(1, 1, ph, pw)
            for i in range(int(math.ceil(1.0 * (ph - crop_size) / stride)) + 1):
                for j in range(int(math.ceil(1.0 * (pw - crop_size) / stride)) + 1):
                    h0, w0 = i * stride, j * stride
                    h1, w1 = min(h0 + crop_size, ph), min(w0 + crop_size, pw)
                    piece = _official_pad(padded[:, :, h0:h1, w0:w1], pad_value, crop_size)
                    acc[:, :, h0:h1, w0:w1] += _official_net(model, piece, flip)[:, :, : h1 - h0, : w1 - w0]
                    count[:, :, h0:h1, w0:w1] += 1
            out = (acc / count)[:, :, :height, :width]
        score = F.interpolate(out, (h, w), mode="bilinear", align_corners=True)
        total = score if total is None else total + score
    assert total is not None
    return total[0]


def out_channels(model: torch.nn.Module) -> int:
    return int(model.config.num_classes)  # type: ignore[union-attr]


# --- MMSegmentation -----------------------------------------------------------------------------------
def mmcv_rescaled(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size((w, h), scale tuple) -> (new_h, new_w)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_uint8_like_mmcv(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size, mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)


def _mmseg_slide(model: torch.nn.Module, x: Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    _, _, h_img, w_img = x.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = x.new_zeros((1, out_channels(model), h_img, w_img))
    count = x.new_zeros((1, 1, h_img, w_img))
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * h_stride, j * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logit = model(x[:, :, y1:y2, x1:x2])
            preds += F.pad(logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def mmseg_result(
    model: torch.nn.Module,
    image: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    scale: tuple[int, int] | None,
    crop: tuple[int, int] | None,
    stride: tuple[int, int] | None,
    ratios: tuple[float, ...] | None,
    flip: bool,
    align_corners: bool,
) -> Tensor:
    """Test pipeline (``ratios`` None: Resize to ``scale``) or TTA pipeline + SegTTAModel; [C, H, W]."""
    h, w = image.shape[:2]
    augmentations: list[tuple[tuple[int, int], bool]] = []
    if ratios is None:
        augmentations.append(((mmcv_rescaled(h, w, scale) if scale else (h, w)), False))
    else:
        for r in ratios:
            bound = (int(w * r + 0.5), int(h * r + 0.5))  # Resize(scale_factor=r): results['scale']
            for flipped in (False, True) if flip else (False,):
                augmentations.append((mmcv_rescaled(h, w, bound), flipped))
    merged: Tensor | None = None
    for size, flipped in augmentations:
        picture = _resize_uint8_like_mmcv(image, size)
        if flipped:
            picture = np.ascontiguousarray(picture[:, ::-1])
        x = normalise(picture, mean, std)
        logits = model(x) if crop is None else _mmseg_slide(model, x, crop, stride or crop)
        if flipped:
            logits = logits.flip(dims=(3,))
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=align_corners)[0]
        if ratios is None:
            return logits
        probs = logits.softmax(dim=0)
        merged = probs if merged is None else merged + probs
    assert merged is not None
    return merged / len(augmentations)
