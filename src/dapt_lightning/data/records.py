"""What the code knows about a dataset, as plain declarations: its layout on disk, its downloads, its record.

Every dataset module declares one :class:`DatasetRecord`; ``dapt_lightning.data.registry`` collects them and
derives every per-dataset table (layouts, download plans, templates, benchmark lists) from the records. This
module only declares: it imports no other data module but ``types``, so that any of them can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dapt_lightning.data.types import DatasetSplits
from dapt_lightning.model.prompted_clip import GENERIC_TEMPLATE

DatasetReader = Callable[..., DatasetSplits]
"""A reader takes the data root (the folder that holds every dataset's folder) and the dataset's options as keyword
arguments (``--data.dataset_options``), and returns the full splits."""


@dataclass(frozen=True)
class Requirement:
    """A file or folder a dataset needs, relative to the data root, and how to get it.

    Attributes:
        path: Path relative to the data root, e.g. ``oxford_pets/images``.
        kind: ``"dir"`` or ``"file"``.
        hint: What to do when it is missing (a download URL, ``dapt data download NAME``, a copy step).
        unless: Paths (relative to the data root) that, when all present, make this one unnecessary: the
            official code generates a missing split file from the raw annotations.
    """

    path: str
    kind: str = "dir"
    hint: str = ""
    unless: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset lives under the data root and what must be there.

    Attributes:
        name: Registered name (``oxford_pets``).
        folder: Folder under the data root, spelled as CoOp's DATASETS.md (``oxford_pets``, ``caltech-101``).
        requirements: Files and folders the reader needs.
        split_file: The split_zhou JSON (relative to the data root), or ``None`` when the dataset has none.
        image_dir: Folder the split file's relative paths start from (relative to the data root).
    """

    name: str
    folder: str
    requirements: tuple[Requirement, ...] = field(default_factory=tuple)
    split_file: str | None = None
    image_dir: str | None = None


def drive_url(file_id: str) -> str:
    """Google Drive's direct-download form of a shared file (``confirm=t`` skips the large-file warning page)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass(frozen=True)
class Resource:
    """One file to fetch.

    Attributes:
        filename: Name of the downloaded file (also its name on a mirror: ``<mirror>/<dataset>/<filename>``).
        url: Direct URL (``""`` when ``drive_id`` is set).
        dest: Target relative to the data root: the folder an archive is extracted into, or the file's final path.
        extract: Whether the file is an archive (tar, tar.gz, tgz, zip) to extract into ``dest``.
        md5: Published MD5, checked when known.
        sha256: Published SHA-256, checked when known.
        strip: Archive-member prefix to strip; members outside it are skipped (FGVC: keep only ``data/``).
        drive_id: Google Drive file id; the URL is then :func:`drive_url`.
        copy_from: A file relative to the data root to copy instead of downloading, when present
            (the ImageNet variants reuse ``imagenet/classnames.txt``).
    """

    filename: str
    url: str = ""
    dest: str = ""
    extract: bool = False
    md5: str | None = None
    sha256: str | None = None
    strip: str = ""
    drive_id: str | None = None
    copy_from: str | None = None

    def source_url(self) -> str:
        """The public URL of the file."""
        return drive_url(self.drive_id) if self.drive_id else self.url

    def page_url(self) -> str:
        """A URL for a person to open when the automatic download fails."""
        return f"https://drive.google.com/file/d/{self.drive_id}/view" if self.drive_id else self.url


@dataclass(frozen=True)
class DownloadPlan:
    """Everything ``dapt data download NAME`` fetches, plus the steps it cannot do."""

    name: str
    """The dataset's registered name."""
    resources: tuple[Resource, ...]
    """The files fetched, in order."""
    manual: str = ""
    """Steps left to do by hand (``ROOT`` stands for the data root), or ``""``."""


@dataclass(frozen=True)
class DatasetRecord:
    """Everything the code knows about one dataset; register it with ``registry.register_dataset(record)``."""

    name: str
    """The ``--data.dataset`` value (lower case: ``oxford_pets``)."""
    reader: DatasetReader
    """``reader(root, **options)`` returns the full splits; ``options`` come from ``--data.dataset_options``."""
    layout: DatasetLayout | None = None
    """What must be under the data root, checked by ``dapt data check``; ``None`` for custom or synthetic data."""
    download: DownloadPlan | None = None
    """What ``dapt data download NAME`` fetches; ``None`` when nothing can be downloaded."""
    template: str = GENERIC_TEMPLATE
    """CoOp's zero-shot prompt for this dataset (``{}`` is the class name), the default of ``--model.template``."""
    benchmark: str | None = None
    """``"fewshot"`` for the 11 few-shot benchmark datasets, ``"domain_shift"`` for the 4 test-only ImageNet
    variants (the domain-generalisation targets), ``None`` otherwise."""
    config: str | None = None
    """Its config file under the repository's ``configs/`` (``oxfordpets.yaml``), or ``None`` when none ships."""
    max_epochs: int | None = None
    """The official protocol's fixed epoch count (ImageNet and its variants: 50); ``None``: set by the shot count."""
    prepare: Callable[..., None] | None = None
    """``prepare(root, **options)`` makes what the dataset can make itself, before the reader runs (once per node:
    the DataModule's ``prepare_data``); ``None`` for datasets that are downloaded."""
