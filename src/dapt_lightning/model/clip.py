"""Load a frozen CLIP with open_clip: by model name and pretrained tag, from a local file, or random."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
TINY_CLIP_NAME = "dapt-tiny"
TINY_CLIP_WEIGHTS = ASSET_DIR / "dapt-tiny-synthetic.safetensors"

# Registering our tiny config beside open_clip's own lets every code path take it by name.
open_clip.add_model_config(MODEL_CONFIG_DIR)

WeightsSource = Literal["random", "pretrained-tag", "openai-torchscript", "openai-state-dict", "open_clip-state-dict"]
"""Where a CLIP's weights came from (``ClipIdentity.source``): no weights, an open_clip pretrained tag, OpenAI's
TorchScript archive, a state dict or safetensors file in OpenAI's layout (architecture and QuickGELU from OpenAI's
rules), or one in open_clip's layout (architecture and activation from ``--model.clip_name``'s config)."""

# OpenAI's archives store three ints as tensors beside the weights; they are no parameter of any model.
_OPENAI_INT_KEYS = ("input_resolution", "context_length", "vocab_size")
# The first bytes of `torch.save`'s pre-1.6 (non-zip) format: pickle protocol 2, then torch's magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy array file"),
)


class ClipWeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found in the cache nor downloaded."""


class ClipLoadError(ValueError):
    """A CLIP name, tag or weights file that cannot be used."""


@dataclass(frozen=True)
class ClipIdentity:
    """What a checkpoint records to rebuild (and check) the frozen CLIP it was trained on.

    Two identities are equal when name, tag or file, activation and weights are; ``source`` (what the weights were
    read from, see :data:`WeightsSource`) is recorded but not compared: one set of weights read from two formats is
    one CLIP.
    """

    name: str
    pretrained: str | None
    quick_gelu: bool
    weights_sha256: str | None
    source: WeightsSource = field(compare=False)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FileKind:
    """What a weights or checkpoint file is, judged from its first bytes and, for zip archives, its member names.

    Attributes:
        kind: ``torchscript``, ``torch`` (a ``torch.save`` file), ``safetensors``, ``damaged`` (the start of one
            of those, cut short or corrupted) or ``other``.
        description: the same in words, for messages (``"a JPEG image"``, ``"a truncated safetensors file"``).
    """

    kind: Literal["torchscript", "torch", "safetensors", "damaged", "other"]
    description: str


def identify_file(path: str | os.PathLike[str]) -> FileKind:
    """Tell a TorchScript archive, a ``torch.save`` file and a safetensors file from damaged and unrelated files."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):  # the central directory sits at the end: a cut-off zip has none
            return FileKind("damaged", "a truncated or damaged zip archive (the format of torch.save and TorchScript)")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            return FileKind("torchscript", "a TorchScript archive")
        if any(name.endswith("data.pkl") for name in names):
            return FileKind("torch", "a torch.save file")
        return FileKind("other", "a zip archive that torch.save did not write")
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return FileKind("torch", "a torch.save file (legacy format)")
    header_size = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and header_size < 1 << 30:  # a safetensors header: length, then JSON
        if header_size + 8 <= size:
            return FileKind("safetensors", "a safetensors file")
        return FileKind("damaged", "a truncated safetensors file")
    for signature, description in _SIGNATURES:
        if head.startswith(signature):
            return FileKind("other", description)
    if not head:
        return FileKind("other", "an empty file")
    return FileKind("other", "a file of unknown content (neither torch.save, TorchScript nor safetensors)")


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """True for a TorchScript (JIT) zip archive such as OpenAI's ``ViT-B-16.pt``."""
    return identify_file(path).kind == "torchscript"


def unsafe_pickle_reason(error: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line (e.g. ``Unsupported global: GLOBAL
    pathlib.PosixPath was not an allowed global by default``).

    Its message is a paragraph whose advice includes ``weights_only=False``, which we never want to pass on.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours part of it
    text = text.split("WeightsUnpickler error:", 1)[-1]
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Please file an issue", "Check the documentation")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return line.split(". ")[0].rstrip(".")
    return "unpickling refused"


def _unwrap_state_dict(obj: object) -> tuple[object, bool]:
    """``obj``'s state dict and whether it was wrapped as in open_clip's training checkpoints.

    Those are ``{"epoch", "name", "state_dict", ...}`` with ``module.``-prefixed keys when saved under DDP.
    """
    wrapped = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
    state = obj["state_dict"] if wrapped else obj
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, wrapped


def clip_weights_layout(obj: object) -> Literal["openai", "open_clip"] | None:
    """``openai`` for a state dict in OpenAI's layout, ``open_clip`` for one in open_clip's own, None otherwise.

    OpenAI's layout (also open_clip's for the models it shares with OpenAI) has the text tower at the top level
    (``positional_embedding``, ``token_embedding.weight``, ``transformer.resblocks.*``, ``ln_final``,
    ``text_projection``) beside ``visual.conv1`` (ViT) or ``visual.layer1`` (ResNet). open_clip's own layout for
    other text towers puts them under ``text.``. A wrapped open_clip training checkpoint counts as its state dict.
    """
    state, _ = _unwrap_state_dict(obj)
    if not isinstance(state, dict) or not state:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return None
    keys = set(state)
    text_top_level = {"positional_embedding", "token_embedding.weight", "ln_final.weight", "text_projection"}
    visual_stem = {"visual.conv1.weight", "visual.layer1.0.conv1.weight"}
    if text_top_level <= keys and keys & visual_stem and any(k.startswith("transformer.resblocks.") for k in keys):
        return "openai"
    if any(k.startswith("visual.") for k in keys) and any(k.startswith("text.") for k in keys):
        return "open_clip"
    return None


@dataclass(frozen=True)
class WeightsFile:
    """The tensors of a CLIP weights file and how they were stored.

    Attributes:
        path: the file.
        kind: what :func:`identify_file` found (``torchscript``, ``torch`` or ``safetensors``).
        tensors: name -> tensor, unwrapped from an open_clip training checkpoint, without OpenAI's int entries.
        training_checkpoint: the tensors came wrapped in an open_clip training checkpoint (open_clip's format).
    """

    path: Path
    kind: FileKind
    tensors: dict[str, torch.Tensor]
    training_checkpoint: bool = False


def read_weights_file(path: str | os.PathLike[str]) -> WeightsFile:
    """Read the tensors of a TorchScript archive, a ``torch.save`` state dict or a safetensors file.

    Nothing is unpickled beyond tensors and plain values (``torch.load(weights_only=True)``; TorchScript archives
    are read by TorchScript's own loader).

    Raises:
        ClipLoadError: one line naming the file and what it is instead (damaged, an image, a dapt_lightning
            checkpoint, objects other than tensors, ...).
    """
    path = Path(path)
    kind = identify_file(path)
    if kind.kind == "damaged":
        raise ClipLoadError(f"{path} is {kind.description}: an interrupted download or copy? Fetch it again.")
    if kind.kind == "other":
        raise ClipLoadError(
            f"{path} is {kind.description}, not CLIP weights: pass OpenAI's TorchScript archive (ViT-B-16.pt) or a "
            "state dict saved with torch.save or safetensors."
        )
    try:
        if kind.kind == "torchscript":
            loaded: object = torch.jit.load(str(path), map_location="cpu").state_dict()
        elif kind.kind == "safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ClipLoadError(
            f"refusing to read {path}: it holds objects other than tensors and plain values "
            f"({unsafe_pickle_reason(error)}); save the weights as a plain state dict (torch.save or safetensors)."
        ) from error
    except Exception as error:  # torch, TorchScript and safetensors raise many types for damaged files
        raise ClipLoadError(
            f"{path} is {kind.description} that cannot be read ({_first_line(error)}): truncated or damaged? "
            "Fetch it again."
        ) from error
    if isinstance(loaded, dict) and "dapt_checkpoint_format" in loaded:
        trained_on = (loaded.get("clip_identity") or {}).get("pretrained")
        raise ClipLoadError(
            f"{path} is a dapt_lightning checkpoint (learned prompts, no CLIP weights): pass it as --ckpt_path, "
            f"and as --model.pretrained the CLIP it was trained on ({trained_on})."
        )
    state, wrapped = _unwrap_state_dict(loaded)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict with values other than tensors"
        raise ClipLoadError(f"{path} holds {what}, not a state dict of CLIP weights.")
    tensors = {k: v for k, v in state.items() if k not in _OPENAI_INT_KEYS}
    return WeightsFile(path, kind, tensors, training_checkpoint=wrapped)


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(module: nn.Module) -> str:
    """Hex SHA-256 of a module's parameters and buffers (names, shapes and fp32 values), order-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _wants_quick_gelu(name: str, pretrained: str | None, quick_gelu: bool | None) -> bool:
    if quick_gelu is not None:
        return quick_gelu
    config = open_clip.get_model_config(name) or {}
    # OpenAI's weights were trained with QuickGELU; open_clip 3.x builds plain GELU for them unless told.
    return pretrained == "openai" or bool(config.get("quick_gelu", False))


def _activation_kwargs(quick_gelu: bool) -> dict[str, bool]:
    # force_quick_gelu sets the config's own flag, so open_clip's check against the tag's flag sees it (a model kwarg
    # would warn of a mismatch that is not there); it can only switch QuickGELU on, so off is a model kwarg.
    return {"force_quick_gelu": True} if quick_gelu else {"quick_gelu": False}


def _check_name(name: str) -> None:
    if open_clip.get_model_config(name) is None:
        raise ClipLoadError(
            f"--model.clip_name: unknown CLIP model {name!r}. Use one of open_clip.list_models(), "
            f"e.g. 'ViT-B-16', 'ViT-B-32', 'ViT-L-14', or {TINY_CLIP_NAME!r} for the tiny test model."
        )


def clip_image_size(name: str, pretrained: str | None = None) -> int:
    """The input resolution of the CLIP :func:`load_clip` builds (224 for ViT-B-16, 64 for ``dapt-tiny``).

    Architecture ``name``'s, unless ``pretrained`` is a weights file built from its own tensors (OpenAI's layout,
    another size than ``name``): then the file's, which costs one read of the file.
    """
    _check_name(name)
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        try:
            weights = read_weights_file(Path(pretrained).expanduser())
        except ClipLoadError as error:
            raise ClipLoadError(f"--model.pretrained: {error}") from error
        if clip_weights_layout(weights.tensors) == "openai" and _is_openai_architecture(name, weights):
            try:
                return _openai_image_size(weights.tensors)
            except KeyError:
                pass  # not a CLIP after all: load_clip says what is wrong with the file
    size = open_clip.get_model_config(name)["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


def _openai_image_size(tensors: Mapping[str, torch.Tensor]) -> int:
    # As open_clip's build_model_from_openai_state_dict: the position grid times the patch (ViT) or 32 (ResNet).
    if "visual.proj" in tensors:
        grid = round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return grid * tensors["visual.conv1.weight"].shape[-1]
    return round((tensors["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32


def _follows_openai_rules(name: str) -> bool:
    """Whether OpenAI's builder, which sees only tensor shapes, would build architecture ``name`` exactly.

    It derives every size from the tensors and takes open_clip's defaults for the rest: 64-wide attention heads,
    no layer scale, argmax pooling... A config that sets any of these otherwise (``dapt-tiny``'s 32-wide heads) is
    not OpenAI's architecture, and neither is a config with more than the two towers and the embedding width.
    """
    config = open_clip.get_model_config(name)
    if set(config) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}:
        return False
    try:
        vision = CLIPVisionCfg(**config["vision_cfg"])
        text = CLIPTextCfg(**config["text_cfg"])
    except TypeError:  # keys of timm or Hugging Face towers
        return False
    openai_vision = CLIPVisionCfg(
        layers=vision.layers, width=vision.width, patch_size=vision.patch_size, image_size=vision.image_size
    )
    openai_text = CLIPTextCfg(
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        width=text.width,
        heads=text.width // 64,
        layers=text.layers,
    )
    return vision == openai_vision and text == openai_text


def _fits(name: str, tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` have exactly the names and shapes of architecture ``name``'s state dict."""
    try:
        with quiet_random_init(), torch.device("meta"):  # shapes only: nothing is allocated or initialised
            expected = open_clip.create_model(name, device="meta").state_dict()
    except Exception:  # towers from timm or Hugging Face may not build on the meta device; those are no fit
        return False
    return set(expected) == set(tensors) and all(expected[k].shape == tensors[k].shape for k in expected)


def _is_openai_architecture(name: str, weights: WeightsFile) -> bool:
    """Whether a state dict is to be built as OpenAI's (architecture from the tensors, QuickGELU).

    OpenAI's layout is also open_clip's for the models both have, so the layout alone cannot tell OpenAI's weights
    from open_clip's. The named config decides: weights that fit an architecture OpenAI's builder cannot make
    (other head widths, ...) are open_clip's for that config; all others in OpenAI's layout are taken as OpenAI's.
    """
    if weights.kind.kind == "torchscript":
        return True
    if weights.training_checkpoint or clip_weights_layout(weights.tensors) != "openai":
        return False
    return _follows_openai_rules(name) or not _fits(name, weights.tensors)


@contextmanager
def quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "Model initialized randomly" line while building a model whose weights are loaded next.

    open_clip logs it whenever ``create_model`` itself loads nothing; here it would be false.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _load_exactly(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    model = model.float()
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model


def _build_openai(weights: WeightsFile, quick_gelu: bool) -> nn.Module:
    try:
        # cast_dtype None: open_clip's plain LayerNorm, as create_model builds; the builder still rounds the
        # weights it loads to fp16, so the exact values are loaded again.
        model = open_clip.model.build_model_from_openai_state_dict(
            dict(weights.tensors), quick_gelu=quick_gelu, cast_dtype=None
        )
        return _load_exactly(model, weights.tensors)
    except (KeyError, IndexError, RuntimeError, ValueError) as error:
        raise ClipLoadError(
            f"--model.pretrained: {weights.path} has OpenAI's key layout, but its tensors do not make a CLIP "
            f"({_first_line(error)}). Check the file."
        ) from error


def _build_open_clip(name: str, weights: WeightsFile, quick_gelu: bool) -> nn.Module:
    with quiet_random_init():
        model = open_clip.create_model(name, pretrained=None, **_activation_kwargs(quick_gelu))
    tensors = weights.tensors
    if "positional_embedding" in tensors and not hasattr(model, "positional_embedding"):
        tensors = open_clip.model.convert_to_custom_text_state_dict(tensors)  # OpenAI's layout into text.*
    try:
        return _load_exactly(model, tensors)
    except RuntimeError as error:
        raise ClipLoadError(
            f"--model.pretrained: the weights in {weights.path} do not fit the architecture {name!r} "
            f"({_first_line(error)}). Set --model.clip_name to the architecture the file was saved from."
        ) from error


def _first_line(error: BaseException) -> str:
    """The informative line of an error, for one-line messages (load_state_dict's first line is only a title)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return f"{type(error).__name__}: {(lines or [''])[0][:200]}"


def _load_file(name: str, path: Path, quick_gelu: bool | None) -> tuple[nn.Module, bool, WeightsSource]:
    try:
        weights = read_weights_file(path)
    except ClipLoadError as error:
        raise ClipLoadError(f"--model.pretrained: {error}") from error
    if clip_weights_layout(weights.tensors) is None:
        sample = ", ".join(list(weights.tensors)[:3]) or "no tensors"
        raise ClipLoadError(
            f"--model.pretrained: {path} holds {len(weights.tensors)} tensors ({sample}, ...) but not CLIP weights in "
            "OpenAI's or open_clip's layout. Pass OpenAI's ViT-B-16.pt or a state dict of an open_clip CLIP."
        )
    if _is_openai_architecture(name, weights):
        use_quick_gelu = True if quick_gelu is None else quick_gelu  # OpenAI trained with QuickGELU
        source: WeightsSource = "openai-torchscript" if weights.kind.kind == "torchscript" else "openai-state-dict"
        return _build_openai(weights, use_quick_gelu), use_quick_gelu, source
    use_quick_gelu = _wants_quick_gelu(name, None, quick_gelu)
    return _build_open_clip(name, weights, use_quick_gelu), use_quick_gelu, "open_clip-state-dict"


def _weights_sources(name: str, tag: str) -> str:
    """Where the weights of ``name``/``tag`` can be downloaded by hand, for the offline error."""
    config = open_clip.get_pretrained_cfg(name, tag)
    hub = config.get("hf_hub", "").strip("/")
    sources = (
        [f"open_clip_model.safetensors or open_clip_pytorch_model.bin of https://huggingface.co/{hub}"] if hub else []
    )
    sources += [config["url"]] if config.get("url") else []
    return " or ".join(sources) or "see open_clip's pretrained list"


def _load_tag(name: str, tag: str, quick_gelu: bool, cache_dir: str | None) -> nn.Module:
    known_tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in known_tags:
        raise ClipLoadError(
            f"--model.pretrained: {tag!r} is neither a pretrained tag of {name!r} nor an existing file. "
            f"Known tags: {', '.join(known_tags) or 'none'}."
        )
    try:
        return open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir, **_activation_kwargs(quick_gelu))
    except Exception as error:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
        raise ClipWeightsUnavailableError(
            f"Could not load pretrained CLIP weights for model {name!r} with tag {tag!r}: not found in the cache "
            f"({where}) and the download failed ({type(error).__name__}: {error}).\n"
            "Two ways out:\n"
            "  1. run once on a machine with network access (the weights are then cached), optionally with "
            "--model.cache_dir pointing at a shared folder;\n"
            f"  2. copy the weights file here ({_weights_sources(name, tag)}) and pass it: "
            f"--model.clip_name {name} --model.pretrained /path/to/file --model.quick_gelu "
            f"{str(quick_gelu).lower()} (the activation these weights were trained with)."
        ) from error


def load_clip(
    name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> tuple[nn.Module, ClipIdentity]:
    """Build a frozen fp32 CLIP in eval mode and its identity.

    Args:
        name: open_clip architecture name (``ViT-B-16``, ``ViT-B-32``, ``dapt-tiny`` ...).
        pretrained: a pretrained tag (``openai``), a local weights file, ``"tiny-synthetic"`` for the shipped
            tiny weights, or None for random weights. A file in OpenAI's layout (TorchScript archive, state dict or
            safetensors) is built as OpenAI's: architecture from its tensors, QuickGELU; one in open_clip's layout
            with ``name``'s config (see :func:`clip_weights_layout` and ``_is_openai_architecture``).
        quick_gelu: force QuickGELU on or off; None chooses it for OpenAI weights and from the config otherwise.
        cache_dir: where downloaded weights are cached.
    """
    _check_name(name)
    if pretrained == "tiny-synthetic":
        if name != TINY_CLIP_NAME:
            raise ClipLoadError(
                f"--model.pretrained tiny-synthetic holds weights of {TINY_CLIP_NAME!r}, not of {name!r}: "
                f"pass --model.clip_name {TINY_CLIP_NAME}."
            )
        pretrained = str(TINY_CLIP_WEIGHTS)
    source: WeightsSource
    if pretrained is None:
        use_quick_gelu, source = _wants_quick_gelu(name, None, quick_gelu), "random"
        # A model kwarg, not force_quick_gelu: that one can only switch QuickGELU on, never off.
        model = open_clip.create_model(name, pretrained=None, quick_gelu=use_quick_gelu)
    elif Path(pretrained).expanduser().is_file():
        model, use_quick_gelu, source = _load_file(name, Path(pretrained).expanduser(), quick_gelu)
    elif any(sep in pretrained for sep in ("/", os.sep)) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    ):
        raise ClipLoadError(f"--model.pretrained: weights file {pretrained} does not exist. Check the path.")
    else:
        use_quick_gelu, source = _wants_quick_gelu(name, pretrained, quick_gelu), "pretrained-tag"
        model = _load_tag(name, pretrained, use_quick_gelu, cache_dir)
    model = model.float().eval()
    model.requires_grad_(False)
    return model, ClipIdentity(name, pretrained, use_quick_gelu, state_dict_sha256(model), source)


def clip_tokenizer(name: str, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    """The tokenizer open_clip pairs with architecture ``name`` (CLIP's BPE, or a Hugging Face tokenizer).

    Raises:
        ClipLoadError: a Hugging Face tokenizer that cannot be loaded here, saying what it needs.
    """
    try:
        return open_clip.get_tokenizer(name, context_length=context_length)
    except Exception as error:  # ImportError without transformers; OSError and others when offline
        hf_name = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name", "?")
        raise ClipLoadError(
            f"--model.clip_name {name}: its tokenizer is the Hugging Face tokenizer {hf_name}, which could not be "
            f"loaded ({_first_line(error)}). Install transformers (pip install transformers) and run once with "
            "network access; it is cached for later offline runs."
        ) from error


def clip_preprocessing(name: str, pretrained: str | None = None) -> dict[str, Any]:
    """How images become ``name``'s input, as open_clip sets it up: image size, mean, std, interpolation, resize
    mode and fill colour (the fields of open_clip's ``PreprocessCfg``).

    open_clip's defaults (OpenAI's normalisation, bicubic, resize the shortest side), updated by the pretrained
    tag's configuration (SigLIP's tags: mean and std 0.5, squash), with the size of the image tower. A weights file
    carries no such configuration: it gets the defaults, which are OpenAI's.
    """
    config = asdict(open_clip.transform.PreprocessCfg())
    is_file = pretrained is not None and Path(pretrained).expanduser().is_file()
    if pretrained and not is_file and pretrained in open_clip.list_pretrained_tags_by_model(name):
        config = open_clip.transform.merge_preprocess_dict(config, open_clip.get_pretrained_cfg(name, pretrained))
    config["size"] = clip_image_size(name, pretrained)
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    config.pop("mode", None)
    return config


# The DataModule's flags for clip_preprocessing's fields.
_PREPROCESSING_FLAGS = {
    "image_size": "size",
    "image_mean": "mean",
    "image_std": "std",
    "interpolation": "interpolation",
    "resize_mode": "resize_mode",
}


def fill_clip_preprocessing(data_args: MutableMapping[str, Any], name: str, pretrained: str | None) -> None:
    """Set every preprocessing flag of the DataModule's arguments left unset (None) to the CLIP's own: the data
    follows the model (:func:`clip_preprocessing`). A flag given explicitly is kept."""
    if all(data_args.get(flag) is not None for flag in _PREPROCESSING_FLAGS):
        return
    preprocessing = clip_preprocessing(name, pretrained)
    for flag, key in _PREPROCESSING_FLAGS.items():
        if data_args.get(flag) is None:
            data_args[flag] = preprocessing[key]
