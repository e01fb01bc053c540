"""The `dapt` CLI with other CLIPs: the data follows the CLIP's preprocessing; what a backbone cannot do is refused
before any work; a tokenizer that cannot be loaded says what it needs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dapt_lightning.cli import main
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.data.transforms import ImagePreprocessing
from dapt_lightning.methods import DAPT
from dapt_lightning.model.clip import ClipLoadError, clip_preprocessing, clip_tokenizer


def test_the_data_follows_the_clips_preprocessing(synthetic_root: Path) -> None:
    module = DAPT(classnames=["a", "b"], clip_name="dapt-tiny", pretrained=None)
    data = FewShotDataModule("synthetic", root=str(synthetic_root))
    assert data.preprocessing == ImagePreprocessing()  # OpenAI's, without a model
    data.follow(module)
    assert data.preprocessing == ImagePreprocessing(**clip_preprocessing("dapt-tiny", None))
    assert data.preprocessing.size == 64 == module.image_size


def test_preprocessing_flags_given_explicitly_are_kept() -> None:
    siglip = SimpleNamespace(image_preprocessing=clip_preprocessing("ViT-B-16-SigLIP", "webli"))
    data = FewShotDataModule("synthetic", image_size=256)
    data.follow(siglip)
    assert data.preprocessing == ImagePreprocessing(
        size=256, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", resize_mode="squash"
    )


def test_visual_prompts_on_a_convolutional_clip_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--model", "DAPT", "--model.clip_name", "RN50", "--model.pretrained", "null"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--data.dataset", "synthetic", "--data.root", str(tmp_path / "data")])
    assert exit_info.value.code == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dapt: error")]
    usable = "With RN50 use: ZeroShotCLIP, LinearProbe, CoOp, CoCoOp, KgCoOp, TipAdapterF."
    assert "--model DAPT needs visual prompts" in line and usable in line
    assert os.listdir(tmp_path) == []  # no data written, no run folder made


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="needs a machine without transformers")
def test_a_hugging_face_tokenizer_that_cannot_load_says_what_it_needs() -> None:
    with pytest.raises(ClipLoadError) as error:
        clip_tokenizer("ViT-B-16-SigLIP", 64)
    message = str(error.value)
    assert "timm/ViT-B-16-SigLIP" in message and "pip install transformers" in message and "\n" not in message
