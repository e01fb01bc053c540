"""A frozen CLIP: loading it by name, tag or file (``loading``), what its weights file is (``weights_file``), which
format they are in (``formats``), its identity (``identity``), its preprocessing (``preprocessing``) and its
architecture names (``names``; importing this package registers dapt_lightning's own configs with open_clip)."""

from dapt_lightning.model.clip.errors import ClipLoadError, ClipWeightsUnavailableError
from dapt_lightning.model.clip.formats import quiet_random_init
from dapt_lightning.model.clip.identity import ClipIdentity, WeightsSource, state_dict_sha256
from dapt_lightning.model.clip.loading import clip_tokenizer, load_clip
from dapt_lightning.model.clip.names import (
    ASSET_DIR,
    MODEL_CONFIG_DIR,
    TINY_CLIP_NAME,
    TINY_CLIP_WEIGHTS,
    wants_quick_gelu,
)
from dapt_lightning.model.clip.preprocessing import clip_image_size, clip_preprocessing
from dapt_lightning.model.clip.weights_file import (
    FileKind,
    WeightsFile,
    clip_weights_layout,
    identify_file,
    is_torchscript_archive,
    read_weights_file,
    unsafe_pickle_reason,
)

__all__ = [
    "ASSET_DIR",
    "MODEL_CONFIG_DIR",
    "TINY_CLIP_NAME",
    "TINY_CLIP_WEIGHTS",
    "ClipIdentity",
    "ClipLoadError",
    "ClipWeightsUnavailableError",
    "FileKind",
    "WeightsFile",
    "WeightsSource",
    "clip_image_size",
    "clip_preprocessing",
    "clip_tokenizer",
    "clip_weights_layout",
    "identify_file",
    "is_torchscript_archive",
    "load_clip",
    "quiet_random_init",
    "read_weights_file",
    "state_dict_sha256",
    "unsafe_pickle_reason",
    "wants_quick_gelu",
]
