"""Transport-neutral segmentation: options, the pipeline (decode -> size policy / TTA -> inference ->
restore) and one renderer. ``POST /segment`` and gRPC ``Segment`` / ``SegmentStream`` are codecs over it."""

from server.segmentation.options import SegmentOptions
from server.segmentation.pipeline import Segmenter, SegmentResult

__all__ = ["SegmentOptions", "SegmentResult", "Segmenter"]
