"""Loading a --ckpt_path file: every file that is not a dapt_lightning checkpoint is refused with one line that
names it, says what it is and what to pass instead; nothing is unpickled beyond tensors and plain values."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from clip_weights import write_openai_torchscript, write_training_checkpoint
from PIL import Image
from safetensors.torch import save_file
from tiny import tiny_args

from dapt_lightning.checkpoint import (
    CKPT_PATH_TAKES,
    CheckpointFileError,
    SafeCheckpointIO,
    UnsafeCheckpointError,
    load_checkpoint_file,
)
from dapt_lightning.model.clip import load_clip


def _dapt_checkpoint() -> dict[str, object]:
    """The shape of what `dapt fit` writes (module.on_save_checkpoint adds the last three keys)."""
    return {
        "epoch": 1,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {"model.text_prompt.txt_ctx": torch.randn(16, 64)},
        "dapt_checkpoint_format": 1,
        "clip_identity": {"name": "dapt-tiny", "pretrained": None, "quick_gelu": True, "weights_sha256": "ab"},
        "classnames": ["cat", "dog"],
    }


@pytest.fixture(scope="module")
def clip_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    clip, _ = load_clip("dapt-tiny", None)
    return clip.state_dict()


def _truncated(path: Path, clip_state: dict) -> None:
    torch.save(_dapt_checkpoint(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # a copy or a write cut short


def _jpeg(path: Path, clip_state: dict) -> None:
    Image.new("RGB", (16, 16), "blue").save(path, format="JPEG")


def _lightning_checkpoint_of_another_model(path: Path, clip_state: dict) -> None:
    state = {"backbone.fc.weight": torch.zeros(2, 2)}
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.6.0", "state_dict": state}, path)


# case -> (write the file, what the message must say it is, what it must say to pass instead)
BAD_FILES: dict[str, tuple[Callable[[Path, dict], None], str, str]] = {
    "truncated": (_truncated, "is a truncated or damaged zip archive", "Copy it again"),
    "random-bytes": (
        lambda p, _: p.write_bytes(bytes(range(256)) * 4),
        "is a file of unknown content",
        CKPT_PATH_TAKES,
    ),
    "image": (_jpeg, "is a JPEG image, not a checkpoint", CKPT_PATH_TAKES),
    "empty": (lambda p, _: p.write_bytes(b""), "is an empty file", CKPT_PATH_TAKES),
    "clip-state-dict": (lambda p, s: torch.save(s, p), "is a state dict of CLIP weights", "--model.pretrained"),
    "clip-safetensors": (
        lambda p, s: save_file(s, str(p)),
        "is a safetensors file of CLIP weights",
        "--model.pretrained",
    ),
    "clip-torchscript": (
        lambda p, s: write_openai_torchscript(s, p),
        "is a TorchScript archive of CLIP weights",
        "--model.pretrained",
    ),
    "open_clip-training-checkpoint": (
        lambda p, s: write_training_checkpoint(s, p),
        "is a state dict of CLIP weights",
        "--model.pretrained",
    ),
    "other-library": (
        lambda p, _: torch.save({"model": {"fc.weight": torch.zeros(2)}, "optimizer": {}, "epoch": 3}, p),
        "is a torch.save file of another library",
        CKPT_PATH_TAKES,
    ),
    "other-lightning-model": (
        _lightning_checkpoint_of_another_model,
        "is the Lightning checkpoint of another model .*no dapt_checkpoint_format.*backbone.fc.weight",
        CKPT_PATH_TAKES,
    ),
    "a-tensor": (lambda p, _: torch.save(torch.zeros(3), p), "holding a Tensor", CKPT_PATH_TAKES),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_checkpoint_file_is_one_line_naming_it(
    tmp_path: Path, clip_state: dict[str, torch.Tensor], case: str
) -> None:
    write, what, instead = BAD_FILES[case]
    path = tmp_path / "last.ckpt"
    write(path, clip_state)
    for load in (load_checkpoint_file, SafeCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointFileError) as caught:
            load(path)
        message = str(caught.value)
        assert "\n" not in message
        assert re.search(re.escape(str(path)) + ".*" + what, message), message
        assert instead in message
        assert "weights_only=False" not in message  # never suggest unpickling arbitrary code


def test_dapt_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    checkpoint = _dapt_checkpoint()
    torch.save(checkpoint, path)
    for loaded in (load_checkpoint_file(path), SafeCheckpointIO().load_checkpoint(path)):
        assert loaded["classnames"] == ["cat", "dog"] and loaded["dapt_checkpoint_format"] == 1
        assert torch.equal(
            loaded["state_dict"]["model.text_prompt.txt_ctx"], checkpoint["state_dict"]["model.text_prompt.txt_ctx"]
        )


def test_lightning_internal_state_dicts_still_load(tmp_path: Path) -> None:
    # ddp_spawn hands the trained weights back to the main process as a bare state dict through the checkpoint I/O.
    path = tmp_path / ".temp.ckpt"
    state = {"model.text_prompt.txt_ctx": torch.ones(2, 3), "model.clip.visual.conv1.weight": torch.zeros(1)}
    SafeCheckpointIO().save_checkpoint(state, path)
    loaded = SafeCheckpointIO().load_checkpoint(path)
    assert set(loaded) == set(state) and torch.equal(loaded["model.text_prompt.txt_ctx"], torch.ones(2, 3))
    with pytest.raises(CheckpointFileError, match="another library"):
        load_checkpoint_file(path)  # but it is no --ckpt_path


def test_unsafe_checkpoint_refusal_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"dapt_checkpoint_format": 1, "payload": Path("/")}, path)  # an object weights_only refuses
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "pathlib" in message  # what was refused
    assert "weights_only=False" not in message


@pytest.mark.parametrize("case", ["image", "clip-safetensors", "truncated"])
def test_dapt_test_with_a_bad_checkpoint_prints_one_line(
    tmp_path: Path,
    synthetic_root: Path,
    clip_state: dict[str, torch.Tensor],
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    from dapt_lightning.cli import main  # here, so that the loader's tests do not depend on the whole CLI

    path = tmp_path / "bad.ckpt"
    BAD_FILES[case][0](path, clip_state)
    with pytest.raises(SystemExit):
        main(["test", *tiny_args(synthetic_root, tmp_path / "run"), "--ckpt_path", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("dapt: error: ") and str(path) in err[0], err
    assert len(err) == 2 and "DAPT_DEBUG" in err[1], err  # the message, then how to see the traceback
