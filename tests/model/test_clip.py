"""load_clip: by name with random weights, pretrained tags (offline), local weight files, QuickGELU choice."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from torch import nn

from dapt_lightning.model.clip import (
    ClipLoadError,
    ClipWeightsUnavailableError,
    _wants_quick_gelu,
    is_torchscript_archive,
    load_clip,
    state_dict_sha256,
)

# OpenAI's checkpoints imply the head counts (width // 64): this test config follows that rule, so a model
# rebuilt from its OpenAI-format weights has the same architecture. Its config says plain GELU on purpose.
OPENAI_STYLE = "dapt-test-openai-style"
TWO_LAYERS = "dapt-test-two-layers"
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 3}
_VISION = {"image_size": 64, "layers": 3, "width": 128, "head_width": 64, "patch_size": 8}


@pytest.fixture(scope="module", autouse=True)
def test_model_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("model_configs")
    configs = {
        OPENAI_STYLE: {"embed_dim": 64, "quick_gelu": False, "vision_cfg": _VISION, "text_cfg": _TEXT},
        TWO_LAYERS: {"embed_dim": 64, "vision_cfg": {**_VISION, "layers": 2}, "text_cfg": _TEXT},
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


def test_wants_quick_gelu() -> None:
    assert _wants_quick_gelu("ViT-B-16", "openai", None) is True  # OpenAI weights were trained with QuickGELU
    assert _wants_quick_gelu("ViT-B-16", "laion2b_s34b_b88k", None) is False
    assert _wants_quick_gelu("ViT-B-16", None, None) is False
    assert _wants_quick_gelu("ViT-B-16-quickgelu", None, None) is True
    assert _wants_quick_gelu("dapt-tiny", None, None) is True
    assert _wants_quick_gelu("ViT-B-16", "openai", False) is False  # an explicit choice wins
    assert _wants_quick_gelu("ViT-B-16", None, True) is True


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
    assert "--model.pretrained /path/to/" in message  # way out 2: a local file
    assert list(cache_dir.rglob("*.pt")) == [] and list(cache_dir.rglob("*.safetensors")) == []


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_files(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(3)
    original, original_identity = load_clip("dapt-tiny", None)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(original.state_dict(), path)
    else:
        save_file(original.state_dict(), str(path))
    model, identity = load_clip("dapt-tiny", str(path))
    assert identity.pretrained == str(path)
    assert identity.weights_sha256 == original_identity.weights_sha256
    assert identity.quick_gelu is True
    for ours, theirs in zip(_features(model), _features(original), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def _openai_style_torchscript(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose state dict has OpenAI CLIP's key names, like OpenAI's ``ViT-B-16.pt``."""

    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, tensor in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
    # OpenAI's archives carry these three ints as tensors too; loaders must ignore them.
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_archive(tmp_path: Path) -> None:
    torch.manual_seed(4)
    original = open_clip.create_model(OPENAI_STYLE, quick_gelu=True).eval()
    with torch.no_grad():  # OpenAI archives hold fp16 weights; the loader casts to fp16, so start from fp16 values
        for tensor in original.state_dict().values():
            tensor.copy_(tensor.half().float())
    path = tmp_path / "ViT-B-16.pt"
    _openai_style_torchscript(original.state_dict(), path)
    assert is_torchscript_archive(path)

    model, identity = load_clip(OPENAI_STYLE, str(path))
    assert identity.quick_gelu is True  # TorchScript files are OpenAI's: QuickGELU although the config says GELU
    assert _activations(model) == {QuickGELU}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert identity.weights_sha256 == state_dict_sha256(original)
    for ours, theirs in zip(_features(model), _features(original), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_state_dict_file_is_not_a_torchscript_archive(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(1)}, path)
    assert not is_torchscript_archive(path)


def test_wrong_architecture_file(tmp_path: Path) -> None:
    model, _ = load_clip(TWO_LAYERS, None)
    path = tmp_path / "two-layers.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(ClipLoadError, match=r"two-layers.safetensors do not fit the architecture 'dapt-tiny'"):
        load_clip("dapt-tiny", str(path))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ClipLoadError, match="could not read CLIP weights from .*garbage.pt"):
        load_clip("dapt-tiny", str(path))
