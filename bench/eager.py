"""PyTorch eager on the same weights and threads: what many users would run instead of a server.

The timed call does what the exported graph does (normalise, forward, softmax, argmax, confidence),
so that the comparison with onnxruntime is like for like. Needs the ``export`` extra (torch). On
``device="cuda"`` the input is on the device before timing and the label map comes back to the host
(like the server's), which synchronises.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def load_eager(
    checkpoint: Path, image: np.ndarray, *, threads: int, device: str = "cpu"
) -> tuple[Callable[[], np.ndarray], str]:
    """A function segmenting ``image`` with the checkpoint's model (returns labels [H, W] uint8), and
    a description of what runs it."""
    import torch

    from models.checkpoints import load_checkpoint

    if threads > 0:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(checkpoint)
    target = torch.device(device)
    model = loaded.model.eval().to(target)
    mean = torch.tensor(loaded.config.mean, dtype=torch.float32, device=target).view(1, 3, 1, 1)
    std = torch.tensor(loaded.config.std, dtype=torch.float32, device=target).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.ascontiguousarray(image[None])).to(target)

    def segment() -> np.ndarray:
        with torch.inference_mode():
            x = (pixels.permute(0, 3, 1, 2).float() - mean) / std
            probs = model(x).softmax(dim=1)
            confidence, labels = probs.max(dim=1)
            del confidence  # computed like the graph's output, not used here
            return labels.to(torch.uint8).cpu().numpy()[0]

    return segment, f"torch {torch.__version__} {target.type}"
