"""How images become a CLIP's input: its image size and open_clip's preprocessing for its pretrained tag."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import open_clip

from dapt_lightning.model.clip.errors import ClipLoadError
from dapt_lightning.model.clip.formats import is_openai_architecture, openai_image_size
from dapt_lightning.model.clip.names import check_name
from dapt_lightning.model.clip.weights_file import clip_weights_layout, read_weights_file


def clip_image_size(name: str, pretrained: str | None = None) -> int:
    """The input resolution of the CLIP :func:`load_clip` builds (224 for ViT-B-16, 64 for ``dapt-tiny``).

    Architecture ``name``'s, unless ``pretrained`` is a weights file built from its own tensors (OpenAI's layout,
    another size than ``name``): then the file's, which costs one read of the file.
    """
    check_name(name)
    if pretrained is not None and Path(pretrained).expanduser().is_file():
        try:
            weights = read_weights_file(Path(pretrained).expanduser())
        except ClipLoadError as error:
            raise ClipLoadError(f"--model.pretrained: {error}") from error
        if clip_weights_layout(weights.tensors) == "openai" and is_openai_architecture(name, weights):
            try:
                return openai_image_size(weights.tensors)
            except KeyError:
                pass  # not a CLIP after all: load_clip says what is wrong with the file
    size = open_clip.get_model_config(name)["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, list | tuple) else size)


def clip_preprocessing(name: str, pretrained: str | None = None, image_size: int | None = None) -> dict[str, Any]:
    """How images become ``name``'s input, as open_clip sets it up: image size, mean, std, interpolation, resize
    mode and fill colour (the fields of open_clip's ``PreprocessCfg``).

    open_clip's defaults (OpenAI's normalisation, bicubic, resize the shortest side), updated by the pretrained
    tag's configuration (SigLIP's tags: mean and std 0.5, squash), with the size of the image tower: ``image_size``
    (the built model's), else :func:`clip_image_size`. A weights file carries no such configuration: it gets the
    defaults, which are OpenAI's.
    """
    config = asdict(open_clip.transform.PreprocessCfg())
    is_file = pretrained is not None and Path(pretrained).expanduser().is_file()
    if pretrained and not is_file and pretrained in open_clip.list_pretrained_tags_by_model(name):
        config = open_clip.transform.merge_preprocess_dict(config, open_clip.get_pretrained_cfg(name, pretrained))
    config["size"] = image_size if image_size is not None else clip_image_size(name, pretrained)
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    config.pop("mode", None)
    return config
