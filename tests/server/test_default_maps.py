"""The default model gives clean maps at the server's defaults, whatever the picture's size: whole-image
inference runs at the model's preferred size (its training size, 160 px) and the labels are restored to the
picture's size. A 4000x3000 photo-like picture is checked against its exact map, in-process."""

from __future__ import annotations

import asyncio

import numpy as np

from common.contract import DEFAULT_ONNX
from models.synthetic import HELDOUT_STREAM, generate_scene
from samples.generate import photo_like
from server.engine import Engine
from server.segmentation import Segmenter, SegmentOptions
from server.settings import Settings


def test_a_4000x3000_photo_is_clean_at_the_defaults() -> None:
    image, expected = generate_scene(7, 3000, 4000, stream=HELDOUT_STREAM)
    picture = np.asarray(photo_like(image))
    engine = Engine(Settings(models=[DEFAULT_ONNX], providers=["CPUExecutionProvider"], warmup_sizes=[]))

    async def run() -> tuple[float, float, tuple[int, int]]:
        await engine.start()
        try:
            segmenter = Segmenter(engine)
            default = await segmenter.segment(picture, SegmentOptions())
            large = await segmenter.segment(picture, SegmentOptions(max_size=512))
        finally:
            await engine.close()
        assert default.labels.shape == expected.shape
        return (
            float((default.labels == expected).mean()),
            float((large.labels == expected).mean()),
            default.inference_size,
        )

    default_accuracy, large_accuracy, size = asyncio.run(run())
    print(
        f"\npixels as expected: {default_accuracy:.2%} at the defaults ({size}), {large_accuracy:.2%} at 512"
    )
    assert size == (120, 160)
    assert default_accuracy >= 0.95
    assert default_accuracy > large_accuracy
