"""Architecture names: dapt_lightning's own configs registered beside open_clip's, and the check of a name."""

from __future__ import annotations

from pathlib import Path

import open_clip

from dapt_lightning.model.clip.errors import ClipLoadError

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "model_configs"
ASSET_DIR = Path(__file__).resolve().parents[2] / "assets"
TINY_CLIP_NAME = "dapt-tiny"
TINY_CLIP_WEIGHTS = ASSET_DIR / "dapt-tiny-synthetic.safetensors"

# Registering our tiny config beside open_clip's own lets every code path take it by name.
open_clip.add_model_config(MODEL_CONFIG_DIR)


def check_name(name: str) -> None:
    """Refuse an architecture name open_clip does not know, in one line naming the setting."""
    if open_clip.get_model_config(name) is None:
        raise ClipLoadError(
            f"--model.clip_name: unknown CLIP model {name!r}. Use one of open_clip.list_models(), "
            f"e.g. 'ViT-B-16', 'ViT-B-32', 'ViT-L-14', or {TINY_CLIP_NAME!r} for the tiny test model."
        )


def wants_quick_gelu(name: str, pretrained: str | None, quick_gelu: bool | None) -> bool:
    """Whether ``name`` with ``pretrained`` runs QuickGELU: as asked, else for OpenAI's weights and configs that
    say so."""
    if quick_gelu is not None:
        return quick_gelu
    config = open_clip.get_model_config(name) or {}
    # OpenAI's weights were trained with QuickGELU; open_clip 3.x builds plain GELU for them unless told.
    return pretrained == "openai" or bool(config.get("quick_gelu", False))
