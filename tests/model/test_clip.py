"""load_clip: by name with random weights, pretrained tags (offline), local weight files, QuickGELU choice."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
from clip_weights import write_openai_torchscript, write_training_checkpoint
from open_clip.transformer import QuickGELU
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from dapt_lightning.model.clip import (
    TINY_CLIP_NAME,
    ClipLoadError,
    ClipWeightsUnavailableError,
    clip_image_size,
    is_torchscript_archive,
    load_clip,
    state_dict_sha256,
    wants_quick_gelu,
)

# OpenAI's checkpoints imply the head counts (width // 64): this test config follows that rule, so a model
# rebuilt from its OpenAI-format weights has the same architecture. Its config says plain GELU on purpose.
OPENAI_STYLE = "dapt-test-openai-style"
TWO_LAYERS = "dapt-test-two-layers"
TINY_GELU = "dapt-test-tiny-gelu"  # dapt-tiny's architecture (not one OpenAI's rules make), with GELU
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3}
_VISION = {"image_size": 64, "layers": 3, "width": 128, "head_width": 64, "patch_size": 8}


@pytest.fixture(scope="module", autouse=True)
def test_model_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("model_configs")
    configs = {
        OPENAI_STYLE: {"embed_dim": 64, "quick_gelu": False, "vision_cfg": _VISION, "text_cfg": _TEXT},
        TWO_LAYERS: {"embed_dim": 64, "vision_cfg": {**_VISION, "layers": 2}, "text_cfg": _TEXT},
        TINY_GELU: {**open_clip.get_model_config("dapt-tiny"), "quick_gelu": False},
    }
    for name, config in configs.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


def _activations(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, nn.GELU | QuickGELU)}


@torch.no_grad()
def _features(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    tokens = open_clip.tokenize(["a red circle.", "a photo of a blue star."])
    return model.encode_image(images), model.encode_text(tokens)


def test_random_weights_by_name() -> None:
    torch.manual_seed(0)
    model, identity = load_clip("dapt-tiny", None)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert identity.name == "dapt-tiny" and identity.pretrained is None
    assert identity.quick_gelu is True  # from dapt-tiny's config
    assert identity.weights_sha256 == state_dict_sha256(model)
    torch.manual_seed(1)
    _, other = load_clip("dapt-tiny", None)
    assert other.weights_sha256 != identity.weights_sha256


@pytest.mark.parametrize(("quick_gelu", "activation"), [(None, QuickGELU), (True, QuickGELU), (False, nn.GELU)])
def test_quick_gelu_switch(quick_gelu: bool | None, activation: type) -> None:
    model, identity = load_clip("dapt-tiny", None, quick_gelu=quick_gelu)
    assert _activations(model) == {activation}
    assert identity.quick_gelu is (activation is QuickGELU)


def testwants_quick_gelu() -> None:
    assert wants_quick_gelu("ViT-B-16", "openai", None) is True  # OpenAI weights were trained with QuickGELU
    assert wants_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is False
    assert wants_quick_gelu("ViT-B-16", None, None) is False
    assert wants_quick_gelu("ViT-B-16-quickgelu", None, None) is True
    assert wants_quick_gelu("dapt-tiny", None, None) is True
    assert wants_quick_gelu("ViT-B-16", "openai", False) is False  # an explicit choice wins
    assert wants_quick_gelu("ViT-B-16", None, True) is True


def test_unknown_model_name() -> None:
    with pytest.raises(ClipLoadError, match=r"--model.clip_name: unknown CLIP model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", None)


def test_unknown_tag() -> None:
    with pytest.raises(ClipLoadError, match=r"'no-such-tag' is neither a pretrained tag of 'ViT-B-32'.*openai"):
        load_clip("ViT-B-32", "no-such-tag")


def test_missing_file() -> None:
    with pytest.raises(ClipLoadError, match="weights file /nowhere/ViT-B-16.pt does not exist"):
        load_clip("dapt-tiny", "/nowhere/ViT-B-16.pt")


def test_pretrained_tag_offline_with_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import, which happened already: set its constant too (fails fast).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache_dir = tmp_path / "empty-cache"
    cache_dir.mkdir()
    with pytest.raises(ClipWeightsUnavailableError) as caught:
        load_clip("ViT-B-32", "openai", cache_dir=str(cache_dir))
    message = str(caught.value)
    assert "'ViT-B-32'" in message and "'openai'" in message
    assert str(cache_dir) in message
    assert "--model.cache_dir" in message  # way out 1: download once with network access
    # Way out 2: a local file, with the activation the tag's weights need (the file alone cannot tell LAION's
    # ViT-B-32 from OpenAI's), and where to get it.
    assert "--model.clip_name ViT-B-32 --model.pretrained /path/to/file --model.quick_gelu true" in message
    assert "https://openaipublic.azureedge.net/clip/models/" in message
    assert list(cache_dir.rglob("*.pt")) == [] and list(cache_dir.rglob("*.safetensors")) == []


def _openai_weights() -> nn.Module:
    """A random CLIP with OpenAI's architecture rules and activation, holding fp16 values as OpenAI's releases."""
    torch.manual_seed(4)
    model = open_clip.create_model(OPENAI_STYLE, quick_gelu=True).eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(tensor.half().float())
    return model


def _open_clip_weights() -> nn.Module:
    """A random CLIP of an architecture OpenAI's builder cannot make (dapt-tiny's head widths), with plain GELU."""
    torch.manual_seed(5)
    return open_clip.create_model(TINY_GELU, quick_gelu=False).eval()


def _write_torchscript(model: nn.Module, path: Path) -> None:
    write_openai_torchscript(model.state_dict(), path)


def _write_fp16_state_dict(model: nn.Module, path: Path) -> None:
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)  # OpenAI's weights are fp16


def _write_state_dict(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def _write_safetensors(model: nn.Module, path: Path) -> None:
    save_file(model.state_dict(), str(path))


def _write_training_checkpoint(model: nn.Module, path: Path) -> None:
    write_training_checkpoint(model.state_dict(), path)


# case -> (file name, writer, source weights, --model.clip_name, expected identity.source, expected activation)
FORMATS = {
    "openai-torchscript": (
        "ViT-B-16.pt",
        _write_torchscript,
        _openai_weights,
        OPENAI_STYLE,
        "openai-torchscript",
        QuickGELU,
    ),
    "openai-state-dict-pt": (
        "ViT-B-16.pt",
        _write_fp16_state_dict,
        _openai_weights,
        OPENAI_STYLE,
        "openai-state-dict",
        QuickGELU,
    ),
    # A file of another size than --model.clip_name (here ViT-B-16, the default): architecture from the tensors.
    "openai-state-dict-other-size": (
        "weights.pt",
        _write_state_dict,
        _openai_weights,
        "ViT-B-16",
        "openai-state-dict",
        QuickGELU,
    ),
    "openai-safetensors": (
        "ViT-B-16.safetensors",
        _write_safetensors,
        _openai_weights,
        OPENAI_STYLE,
        "openai-state-dict",
        QuickGELU,
    ),
    "open_clip-pt": ("tiny.pt", _write_state_dict, _open_clip_weights, TINY_GELU, "open_clip-state-dict", nn.GELU),
    "open_clip-safetensors": (
        "tiny.safetensors",
        _write_safetensors,
        _open_clip_weights,
        TINY_GELU,
        "open_clip-state-dict",
        nn.GELU,
    ),
    # open_clip's training-checkpoint wrapper marks open_clip's format, even around weights OpenAI's rules could build.
    "open_clip-training-checkpoint": (
        "epoch_32.pt",
        _write_training_checkpoint,
        _openai_weights,
        OPENAI_STYLE,
        "open_clip-state-dict",
        nn.GELU,
    ),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_weights_file_loads_as_trained(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    filename, write, weights, name, expected_source, activation = FORMATS[case]
    source = weights()
    if activation is nn.GELU:  # the source model runs the activation its weights were trained with
        state = source.state_dict()
        source = open_clip.create_model(name, quick_gelu=False).eval()
        source.load_state_dict(state)
    # Frozen like the loaded model: PyTorch picks another attention kernel (last-bit differences) for trainable weights.
    source.requires_grad_(False)
    path = tmp_path / filename
    write(source, path)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        model, identity = load_clip(name, str(path))
    assert identity.source == expected_source
    assert _activations(model) == {activation}
    assert identity.quick_gelu is (activation is QuickGELU)
    assert identity.pretrained == str(path) and identity.name == name
    assert identity.weights_sha256 == state_dict_sha256(source)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for ours, theirs in zip(_features(model), _features(source), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # open_clip logs "initialized randomly" whenever create_model itself loads nothing: here it would be false.
    assert not [r.getMessage() for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_explicit_quick_gelu_overrides_the_detection(tmp_path: Path) -> None:
    path = tmp_path / "laion-style.safetensors"
    _write_safetensors(_openai_weights(), path)  # e.g. GELU weights saved in OpenAI's layout
    model, identity = load_clip(OPENAI_STYLE, str(path), quick_gelu=False)
    assert _activations(model) == {nn.GELU} and identity.quick_gelu is False
    assert identity.source == "openai-state-dict"


def test_identity_equality_ignores_the_file_format(tmp_path: Path) -> None:
    source = _openai_weights()
    _write_torchscript(source, tmp_path / "a.pt")
    _write_safetensors(source, tmp_path / "a.safetensors")
    _, scripted = load_clip(OPENAI_STYLE, str(tmp_path / "a.pt"))
    _, safetensors = load_clip(OPENAI_STYLE, str(tmp_path / "a.safetensors"))
    assert scripted.source != safetensors.source
    assert (scripted.weights_sha256, scripted.quick_gelu) == (safetensors.weights_sha256, safetensors.quick_gelu)
    assert scripted.to_dict()["source"] == "openai-torchscript"


def test_shipped_tiny_weights_keep_their_config() -> None:
    model, identity = load_clip(TINY_CLIP_NAME, "tiny-synthetic")
    assert identity.source == "open_clip-state-dict" and identity.quick_gelu is True
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4  # dapt-tiny's 32-wide heads, not OpenAI's 64
    with pytest.raises(ClipLoadError, match="tiny-synthetic holds weights of 'dapt-tiny'.*--model.clip_name dapt-tiny"):
        load_clip("ViT-B-16", "tiny-synthetic")


def test_pretrained_tag_gets_the_tags_activation_without_a_mismatch_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tag of our test architecture whose download is a local file: the network is the only part replaced.
    path = tmp_path / "open_clip_model.safetensors"
    source = _openai_weights()
    _write_safetensors(source, path)
    tag = {"openai": {"hf_hub": "example/openai-style/", "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, OPENAI_STYLE, tag)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, identity = load_clip(OPENAI_STYLE, "openai")
    assert not [str(w.message) for w in caught if "QuickGELU mismatch" in str(w.message)]
    assert identity.source == "pretrained-tag" and identity.quick_gelu is True
    assert _activations(model) == {QuickGELU}
    assert identity.weights_sha256 == state_dict_sha256(source)


def test_image_size_follows_a_file_of_another_size(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    _write_safetensors(_openai_weights(), path)  # 64-pixel weights in OpenAI's layout
    assert clip_image_size("ViT-B-16") == 224
    assert clip_image_size("ViT-B-16", str(path)) == 64  # built from the file's tensors, so the file's size
    assert clip_image_size("ViT-B-16", "openai") == 224


def test_state_dict_file_is_not_a_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, path)
    assert not is_torchscript_archive(path)


def test_open_clip_file_of_another_architecture(tmp_path: Path) -> None:
    model, _ = load_clip(TWO_LAYERS, None)
    path = tmp_path / "two-layers.pt"
    _write_training_checkpoint(model, path)
    with pytest.raises(
        ClipLoadError, match=r"two-layers.pt do not fit the architecture 'dapt-tiny'.*--model.clip_name"
    ):
        load_clip("dapt-tiny", str(path))


def _truncated(path: Path) -> None:
    torch.save(_open_clip_weights().state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _jpeg(path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(path, format="JPEG")


def _dapt_checkpoint(path: Path) -> None:
    clip = {"name": "dapt-tiny", "pretrained": "tiny-synthetic", "quick_gelu": True, "weights_sha256": "ab"}
    torch.save({"state_dict": {}, "dapt_checkpoint_format": 1, "clip_identity": clip}, path)


BAD_FILES = {
    "random-bytes": (lambda p: p.write_bytes(b"this is not a checkpoint"), "is a file of unknown content"),
    "truncated": (_truncated, "is a truncated or damaged zip archive"),
    "image": (_jpeg, "is a JPEG image, not CLIP weights"),
    "other-tensors": (lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "holds 1 tensors .* not CLIP weights"),
    "dapt-checkpoint": (_dapt_checkpoint, "is a dapt_lightning checkpoint.*--ckpt_path.*\\(tiny-synthetic\\)"),
    "truncated-safetensors": (
        lambda p: p.write_bytes((1000).to_bytes(8, "little") + b'{"a": '),
        "is a truncated safetensors file",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_weights_file_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    write, expected = BAD_FILES[case]
    path = tmp_path / "ViT-B-16.pt"
    write(path)
    with pytest.raises(ClipLoadError, match=f"--model.pretrained: {re.escape(str(path))}.*{expected}") as caught:
        load_clip("dapt-tiny", str(path))
    assert "\n" not in str(caught.value)
