"""What a request will cost, known from its parameters before any work starts (admission by cost).

A request's cost is the model passes it needs and the pixels they hold together: scales x flips x windows,
each window or whole picture being one pass. The pipeline computes it from the options, the image size and
the model's defaults, and refuses a request over the server's limits with the cost and the limit in the
message (``PayloadTooLarge``: HTTP 413, gRPC RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import PayloadTooLarge
from server.segmentation.options import Size


@dataclass(frozen=True)
class Limits:
    """The server's bounds on one request (from ``Settings``)."""

    max_pixels: int  # one picture (uploaded, or resized by a procedure)
    max_inference_size: int | None  # longest side of one model pass
    max_request_pixels: int  # all passes together
    max_passes: int  # model passes of one request

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            max_pixels=settings.max_pixels,
            max_inference_size=settings.max_inference_size,
            max_request_pixels=settings.max_request_pixels,
            max_passes=settings.max_passes,
        )


@dataclass
class Cost:
    passes: int = 0
    pixels: int = 0
    largest: Size = (0, 0)  # the largest single pass (height, width)

    def add(self, size: Size, count: int = 1) -> None:
        self.passes += count
        self.pixels += count * size[0] * size[1]
        if size[0] * size[1] > self.largest[0] * self.largest[1]:
            self.largest = size

    def check(self, limits: Limits, what: str) -> None:
        """Raise PayloadTooLarge when this cost exceeds a limit; ``what`` names the procedure."""
        if self.passes > limits.max_passes:
            raise PayloadTooLarge(
                f"{what} needs {self.passes} model passes; the server's limit is {limits.max_passes} "
                "(max_passes): use fewer scales, a larger stride or a smaller base_size"
            )
        if self.pixels > limits.max_request_pixels:
            raise PayloadTooLarge(
                f"{what} needs {self.pixels} pixels over {self.passes} model passes; the server's limit is "
                f"{limits.max_request_pixels} (max_request_pixels): use fewer scales, a larger stride or a "
                "smaller image"
            )
        cap = limits.max_inference_size
        if cap is not None and max(self.largest) > cap:
            raise PayloadTooLarge(
                f"{what} runs a model pass of {self.largest[0]}x{self.largest[1]}; the server's limit is "
                f"{cap} pixels a side (max_inference_size)"
            )


def check_picture(size: Size, limits: Limits, what: str) -> None:
    """A picture a procedure resizes to must fit ``max_pixels`` like an upload."""
    if size[0] * size[1] > limits.max_pixels:
        raise PayloadTooLarge(
            f"{what} resizes the image to {size[0]}x{size[1]} = {size[0] * size[1]} pixels; the server's "
            f"limit is {limits.max_pixels} (max_pixels): lower base_size, max_size or the scales"
        )
