"""Prototypes under 2-process CPU DDP equal the 1-process result and use every training image exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dapt_lightning.model.clip import load_clip

# Run by Lightning's DDP launcher (it re-executes this file once per extra rank). Each rank records which
# training images the prototype pass fetched and saves the prototypes it ended with.
SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import lightning as L
    from safetensors.torch import save_file

    from dapt_lightning.callbacks.prototypes import PrototypeCallback
    from dapt_lightning.data.datamodule import FewShotDataModule
    from dapt_lightning.data.image_dataset import ImageListDataset
    from dapt_lightning.methods import DAPT

    root, clip_file, out, devices = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    FETCHED = []


    class RecordingImages(ImageListDataset):
        def __getitem__(self, index):
            FETCHED.append(index % len(self.items))
            return super().__getitem__(index)


    class RecordingDataModule(FewShotDataModule):
        def dataset(self, split, transform=None):
            images = super().dataset(split, transform)
            if split != "train" or transform is None:  # the prototype pass asks for its transform explicitly
                return images
            seed = images.augment_seed
            return RecordingImages(images.items, images.transform, images.dataset_name, augment_seed=seed)


    data = RecordingDataModule("synthetic", root=root, num_shots=2, seed=1, batch_size=8, num_workers=0, image_size=64)
    module = DAPT(classnames=data.classnames, clip_name="dapt-tiny", pretrained=clip_file)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
        max_epochs=1,
        limit_train_batches=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PrototypeCallback(use_cache=False, batch_size=10)],
    )
    trainer.fit(module, datamodule=data)
    rank = trainer.global_rank
    name = f"world{devices}-rank{rank}"
    save_file({"prototypes": module.prototypes.contiguous()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps({"fetched": FETCHED, "train": len(data.splits.train)}))
    """
)


def _run(script: Path, root: Path, clip_file: Path, out: Path, devices: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(root), str(clip_file), str(out), str(devices)],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_ddp_prototypes_equal_single_process(synthetic_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    clip, _ = load_clip("dapt-tiny", None)
    clip_file = tmp_path / "clip.safetensors"
    save_file(clip.state_dict(), str(clip_file))
    script = tmp_path / "prototypes_ddp.py"
    script.write_text(SCRIPT)

    _run(script, synthetic_root, clip_file, tmp_path, devices=1)
    _run(script, synthetic_root, clip_file, tmp_path, devices=2)

    single = load_file(str(tmp_path / "world1-rank0.safetensors"))["prototypes"]
    assert single.shape == (24, 64) and single.abs().sum() > 0
    fetched: list[int] = []
    for rank in (0, 1):
        prototypes = load_file(str(tmp_path / f"world2-rank{rank}.safetensors"))["prototypes"]
        torch.testing.assert_close(prototypes, single, rtol=0, atol=1e-6)
        record = json.loads((tmp_path / f"world2-rank{rank}.json").read_text())
        assert record["fetched"], f"rank {rank} encoded no images"
        fetched += record["fetched"]
    # Every one of the 48 training images (24 classes x 2 shots) exactly once, across both ranks.
    images = len(single) * 2
    assert record["train"] == images
    assert sorted(fetched) == list(range(images))
    single_record = json.loads((tmp_path / "world1-rank0.json").read_text())
    assert sorted(single_record["fetched"]) == list(range(images))
