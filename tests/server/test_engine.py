"""Engine: model loading from files/directories/metadata, raw inference, the segmentation pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.engine import Engine
from server.errors import InvalidOption, ModelLoadError, ModelNotFound, NotReady, PayloadTooLarge
from server.segmentation import Segmenter, SegmentOptions
from server.segmentation.tiling import inference_size, resize_logits, slide_windows
from server.settings import Settings
from tests.conftest import make_scene
from tests.onnx_fixtures import reference_logits, write_model


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def engine_for(models: list[Path], **kw: Any) -> Engine:
    kw.setdefault("infer_at_preferred_size", False)  # references are computed at the upload's size
    return Engine(Settings(models=models, providers=["CPUExecutionProvider"], warmup_sizes=["32x32"], **kw))


@pytest.fixture
def engine(tiny_onnx: Path):
    e = engine_for([tiny_onnx])
    run(e.start())
    yield e
    run(e.close())


def test_model_info_from_metadata(engine: Engine, tiny_onnx: Path) -> None:
    info = engine.get_model(None)
    assert info.name == "tiny" and info.path == str(tiny_onnx)
    assert info.num_classes == 4 and info.has_logits and info.preferred_size == (32, 32)
    assert engine.get_model("tiny") is info
    with pytest.raises(ModelNotFound, match="tiny"):
        engine.get_model("other")


def test_infer_matches_direct_onnxruntime(engine: Engine, tiny_onnx: Path) -> None:
    images = np.stack([make_scene(20, 24, seed=s) for s in range(3)])
    out = run(engine.infer("tiny", images, ["labels", "logits"]))
    direct = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(
        None, {"image": images}
    )
    np.testing.assert_array_equal(out["labels"], direct[0])
    np.testing.assert_allclose(out["logits"], direct[2], rtol=1e-6)
    assert set(run(engine.infer(None, images[:1])).keys()) == {"labels", "confidence", "logits"}


@pytest.mark.parametrize(
    "images, error",
    [
        (np.zeros((1, 16, 16, 3), np.float32), InvalidOption),
        (np.zeros((16, 16, 3), np.uint8), InvalidOption),
        (np.zeros((1, 16, 16, 4), np.uint8), InvalidOption),
        (np.zeros((1, 4, 16, 3), np.uint8), InvalidOption),
    ],
)
def test_infer_validates_input(engine: Engine, images: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        run(engine.infer(None, images))


def test_infer_pixel_limit_and_unknown_output(tiny_onnx: Path) -> None:
    e = engine_for([tiny_onnx], max_pixels=100)
    run(e.start())
    with pytest.raises(PayloadTooLarge):
        run(e.infer(None, np.zeros((1, 16, 16, 3), np.uint8)))
    with pytest.raises(InvalidOption, match="masks"):
        run(e.infer(None, np.zeros((1, 8, 8, 3), np.uint8), ["masks"]))
    run(e.close())


def test_not_ready_until_warmed_up_and_after_close(tiny_onnx: Path) -> None:
    e = engine_for([tiny_onnx])
    with pytest.raises(NotReady):
        e.get_model(None)
    run(e.load())
    assert not e.ready and e.loaded
    with pytest.raises(NotReady, match="warming"):
        run(Segmenter(e).segment(make_scene(), SegmentOptions()))
    run(e.warm_up())
    assert e.ready
    run(e.close())
    assert not e.ready
    with pytest.raises(NotReady, match="shutting down"):
        run(e.infer(None, np.zeros((1, 8, 8, 3), np.uint8)))


def test_segment_whole_equals_reference(engine: Engine) -> None:
    image = make_scene(37, 53)
    result = run(Segmenter(engine).segment(image, SegmentOptions()))
    reference = reference_logits(image[None])[0]
    np.testing.assert_array_equal(result.labels, reference.argmax(0))
    assert result.labels.dtype == np.uint8 and result.confidence is not None
    probs = np.exp(reference - reference.max(0)) / np.exp(reference - reference.max(0)).sum(0)
    np.testing.assert_allclose(result.confidence, probs.max(0), rtol=1e-5)
    assert result.provider == "CPUExecutionProvider" and result.model == "tiny"
    assert {"preprocess_ms", "inference_ms", "postprocess_ms"} <= set(result.timings)


def test_slide_uses_batched_windows_and_matches_whole(tiny_onnx: Path) -> None:
    e = engine_for([tiny_onnx], batching="on", max_batch_size=4, batch_delay_ms=20, slide_crop=16)
    run(e.start())
    try:
        image = make_scene(40, 50)
        whole = run(Segmenter(e).segment(image, SegmentOptions()))
        slide = run(Segmenter(e).segment(image, SegmentOptions(mode="slide")))
        np.testing.assert_array_equal(slide.labels, whole.labels)
        assert whole.confidence is not None and slide.confidence is not None
        np.testing.assert_allclose(slide.confidence, whole.confidence, rtol=1e-4)
        text = e.metrics.render().decode()
        # 16 windows of 16x16 (stride 11): batched, so some runs carry more than one window
        assert 'danet_batch_size_bucket{le="1.0",model="tiny"}' in text
        bucket_one = float(text.split('danet_batch_size_bucket{le="1.0",model="tiny"} ')[1].split()[0])
        total = float(text.split('danet_batch_size_count{model="tiny"} ')[1].split()[0])
        assert total > bucket_one
    finally:
        run(e.close())


def test_tta_flip_and_scales(engine: Engine) -> None:
    image = make_scene(40, 40)
    whole = run(Segmenter(engine).segment(image, SegmentOptions()))
    flipped = run(Segmenter(engine).segment(image, SegmentOptions(flip=True)))
    np.testing.assert_array_equal(flipped.labels, whole.labels)
    multi = run(Segmenter(engine).segment(image, SegmentOptions(scales=(0.75, 1.0, 1.25), flip=True)))
    assert multi.labels.shape == (40, 40) and (multi.labels == whole.labels).mean() > 0.9


def test_max_size_shrinks_then_restores_size(engine: Engine) -> None:
    image = make_scene(60, 90)
    result = run(Segmenter(engine).segment(image, SegmentOptions(max_size=30)))
    assert result.inference_size == (20, 30) and result.labels.shape == (60, 90)
    assert result.confidence is not None and result.confidence.shape == (60, 90)
    small = run(Segmenter(engine).segment(make_scene(3, 5), SegmentOptions()))
    assert small.labels.shape == (3, 5)


def test_server_wide_max_inference_size(tiny_onnx: Path) -> None:
    e = engine_for([tiny_onnx], max_inference_size=20)
    run(e.start())
    result = run(Segmenter(e).segment(make_scene(40, 40), SegmentOptions()))
    assert result.inference_size == (20, 20) and result.labels.shape == (40, 40)
    run(e.close())


def test_options_validation(engine: Engine, tiny_onnx_no_logits: Path) -> None:
    """Options validate themselves when built: an invalid one never reaches the pipeline."""
    for options in (
        {"mode": "tile"},
        {"scales": ()},
        {"scales": (5.0,)},
        {"scales": (float("nan"),)},
        {"scales": (1.0,) * 9},
        {"max_size": 4},
        {"tta": "official", "crop_size": 8},  # below the smallest window
        {"tta": "official", "crop_size": 512, "stride": 32},  # more than 8 windows a pixel per axis
    ):
        with pytest.raises(InvalidOption):
            SegmentOptions(**options)
    e = engine_for([tiny_onnx_no_logits])
    run(e.start())
    assert e.get_model(None).name == "plain"  # no model_name metadata: the file stem
    with pytest.raises(InvalidOption, match="logits"):
        run(Segmenter(e).segment(make_scene(), SegmentOptions(mode="slide")))
    assert run(Segmenter(e).segment(make_scene(), SegmentOptions())).labels.shape == (48, 64)
    run(e.close())


def test_many_classes_give_uint16_labels(tmp_path: Path) -> None:
    classes = [f"c{i}" for i in range(300)]
    path = write_model(tmp_path / "big.onnx", classes=classes, palette=None)
    e = engine_for([path])
    run(e.start())
    info = e.get_model(None)
    assert len(info.palette) == 300  # generated when the metadata has none
    result = run(Segmenter(e).segment(make_scene(), SegmentOptions()))
    assert result.labels.dtype == np.uint16 and result.labels.max() >= 0
    run(e.close())


def test_directory_of_models(tmp_path: Path) -> None:
    write_model(tmp_path / "b.onnx", model_name="bravo")
    write_model(tmp_path / "a.onnx")
    (tmp_path / "notes.txt").write_text("ignored")
    e = engine_for([tmp_path])
    run(e.load())
    assert [m.name for m in e.list_models()] == ["a", "bravo"] and e.default_model == "a"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "missing.onnx", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no .onnx"),
        (lambda d: (d / "junk.onnx").write_bytes(b"not a model") and d / "junk.onnx", "cannot load"),
        (lambda d: write_model(d / "x.onnx", include_classes=False), "classes"),
        (lambda d: write_model(d / "y.onnx", input_name="pixels"), "input named 'image'"),
    ],
)
def test_bad_models_are_clear_load_errors(tmp_path: Path, setup: Any, message: str) -> None:
    e = engine_for([setup(tmp_path)])
    with pytest.raises(ModelLoadError, match=message):
        run(e.start())


def test_duplicate_names_and_unknown_default(tmp_path: Path) -> None:
    one = write_model(tmp_path / "one.onnx", model_name="same")
    two = write_model(tmp_path / "two.onnx", model_name="same")
    with pytest.raises(ModelLoadError, match="two models are named 'same'"):
        run(engine_for([one, two]).load())
    with pytest.raises(ModelLoadError, match="default_model"):
        run(engine_for([one], default_model="zzz").load())


def test_tiling_helpers() -> None:
    assert inference_size(1000, 500, 100) == (100, 50)
    assert inference_size(10, 10, None) == (16, 16)
    assert inference_size(100, 60, None) == (100, 60)
    windows = slide_windows(40, 50, (16, 16), (11, 11))
    assert all(y1 - y0 == 16 and x1 - x0 == 16 for y0, y1, x0, x1 in windows)
    covered = np.zeros((40, 50), bool)
    for y0, y1, x0, x1 in windows:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert slide_windows(10, 10, (16, 16), (11, 11)) == [(0, 10, 0, 10)]
    ramp = np.arange(4, dtype=np.float32).reshape(1, 1, 4) * np.ones((2, 3, 1), np.float32)
    resized = resize_logits(ramp, (3, 8))
    assert resized.shape == (2, 3, 8)
    assert resized[0, 0, 0] == 0.0 and resized[0, 0, -1] == 3.0 and np.all(np.diff(resized[0, 0]) >= 0)


def test_whole_image_inference_runs_at_the_preferred_size_by_default(tiny_onnx: Path) -> None:
    """The tiny model's metadata prefers 32x32: a 64x96 upload is inferred at 21x32 (long side 32) and its
    labels restored to 64x96; max_size overrides the policy, and slide keeps the server's cap."""
    e = engine_for([tiny_onnx], infer_at_preferred_size=True)
    run(e.start())
    try:
        segmenter = Segmenter(e)
        image = make_scene(64, 96)
        result = run(segmenter.segment(image, SegmentOptions()))
        assert result.inference_size == (21, 32) and result.labels.shape == (64, 96)
        assert run(segmenter.segment(image, SegmentOptions(max_size=48))).inference_size == (32, 48)
        assert run(segmenter.segment(image, SegmentOptions(mode="slide"))).inference_size == (64, 96)
    finally:
        run(e.close())


def test_scales_never_exceed_the_inference_cap(tiny_onnx: Path) -> None:
    """max_inference_size bounds every pass: with scales up to 2, the work size is half the cap."""
    e = engine_for([tiny_onnx], max_inference_size=64)
    run(e.start())
    try:
        segmenter = Segmenter(e)
        result = run(segmenter.segment(make_scene(64, 96), SegmentOptions(scales=(1.0, 2.0))))
        assert max(result.inference_size) == 32
        # a client's max_size above the cap does not lift it
        assert (
            max(run(segmenter.segment(make_scene(64, 96), SegmentOptions(max_size=90))).inference_size) == 64
        )
    finally:
        run(e.close())
