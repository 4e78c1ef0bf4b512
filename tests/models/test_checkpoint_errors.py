"""Every bad checkpoint is refused with one paragraph naming the file, the format and the keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from danet_reference import mmseg_state_dict, official_state_dict
from safetensors.torch import save_file

from models.checkpoints import CheckpointError, load_checkpoint
from models.checkpoints.native import save_native
from models.danet import danet_slim


def _official(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "official.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return official_state_dict(50, True, 19, stem_width=8, base=8)


def _refused(path: Path, *fragments: str, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"Cannot load checkpoint {path} ")
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_key(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    state = dict(official_state)
    del state["head.conv51.1.running_var"]
    del state["pretrained.layer3.2.conv2.weight"]
    path = _official(tmp_path, state)
    _refused(
        path,
        "(detected format: official)",
        "missing keys (2: head.conv51.1.running_var, pretrained.layer3.2.conv2.weight)",
    )


def test_many_missing_keys_are_summarised(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in official_state.items() if not k.startswith("pretrained.layer4.1.")}
    state = {k: v for k, v in state.items() if not k.startswith("head.conv52.")}
    message = _refused(_official(tmp_path, state), "(detected format: official)", "missing keys (")
    assert "... and" in message and "more" in message


def test_unexpected_key(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    state = dict(official_state)
    state["head.extra_conv.weight"] = torch.zeros(3)
    state["pretrained.layer1.0.se.weight"] = torch.zeros(10, 2048)
    _refused(
        _official(tmp_path, state),
        "(detected format: official)",
        "unexpected keys (2: head.extra_conv.weight, pretrained.layer1.0.se.weight)",
    )


def test_shape_mismatch(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    state = dict(official_state)
    state["pretrained.layer2.0.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    _refused(
        _official(tmp_path, state),
        "(detected format: official)",
        "shape mismatches (1: pretrained.layer2.0.conv2.weight [16, 16, 1, 1] vs expected [16, 16, 3, 3])",
    )


def test_mmseg_problems_use_mmseg_names(tmp_path: Path) -> None:
    state = mmseg_state_dict(18, True, 5, stem_channels=16, base=8)
    del state["decode_head.cam.gamma.scale"]
    state["decode_head.pam_out_conv.bn.weight"] = torch.ones(3)
    state["decode_head.bogus.weight"] = torch.ones(1)
    path = tmp_path / "mm.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    _refused(
        path,
        "(detected format: mmseg)",
        "missing keys (1: decode_head.cam.gamma.scale)",
        "unexpected keys (1: decode_head.bogus.weight)",
        "decode_head.pam_out_conv.bn.weight [3] vs expected",
    )


def test_unsupported_depth_layout(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in official_state.items() if not k.startswith("pretrained.layer3.5.")}
    _refused(
        _official(tmp_path, state), "(detected format: official)", "[3, 4, 5, 3]", "matches no ResNet depth"
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_truncated_file(tmp_path: Path, official_state: dict[str, torch.Tensor], legacy: bool) -> None:
    path = tmp_path / "truncated.pth"
    torch.save(official_state, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(path, "(detected format: unknown)", "truncated or corrupted")


def test_truncated_native_file(tmp_path: Path) -> None:
    model = danet_slim(3)
    path = save_native(model, model.config, tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _refused(path, "(detected format: danet-serve)", "truncated")
    path.write_bytes(data[:20])
    _refused(path, "(detected format: danet-serve)", "truncated")


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"name,value\n1,2\n", json.dumps({"a": 1}).encode()],
    ids=["png", "csv", "json"],
)
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    _refused(path, "(detected format: unknown)", "not a PyTorch checkpoint")


def test_pickle_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], path)
    _refused(path, "(detected format: unknown)", "holds a list, not a state dict")
    torch.save({"epoch": 3, "best_pred": 0.5}, path)
    _refused(path, "(detected format: unknown)", "holds no tensors")


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _refused(empty, "the file is empty")
    _refused(tmp_path / "nope.pth", "no such file")


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    _refused(
        path,
        "(detected format: unknown)",
        "match neither the official DANet layout",
        "conv1.weight, fc.weight",
    )


class _Exploit:
    """Pickles to a call of os.system: a loader that runs it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"head.conv5a.0.weight": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    refused = f"refused to unpickle {os.system.__module__}.system"  # posix.system on Linux
    _refused(path, "(detected format: unknown)", refused, "could execute code")
    assert not marker.exists()


def test_safetensors_without_config(tmp_path: Path) -> None:
    path = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    _refused(path, "(detected format: danet-serve)", "no 'danet_config' metadata")
    save_file({"w": torch.zeros(2)}, str(path), metadata={"danet_config": json.dumps({"depth": 7})})
    _refused(
        path, "(detected format: danet-serve)", "invalid 'danet_config' metadata", "depth must be one of"
    )


def test_native_with_missing_and_extra_tensors(tmp_path: Path) -> None:
    model = danet_slim(3)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "head.cls_cam.bias"}
    state["head.surplus"] = torch.zeros(1)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path), metadata={"danet_config": model.config.to_json()})
    _refused(
        path,
        "(detected format: danet-serve)",
        "missing keys (1: head.cls_cam.bias)",
        "unexpected keys (1: head.surplus)",
    )


def test_label_set_of_the_wrong_size(tmp_path: Path, official_state: dict[str, torch.Tensor]) -> None:
    _refused(
        _official(tmp_path, official_state),
        "(detected format: official)",
        "'ade20k' has 150 classes but the checkpoint predicts 19",
        classes="ade20k",
    )
