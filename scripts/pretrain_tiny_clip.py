"""Reproduce the shipped tiny-CLIP weights: contrastive pre-training on procedural images and their captions.

    python scripts/pretrain_tiny_clip.py --steps 1200 --out src/dapt_lightning/assets/dapt-tiny-synthetic.safetensors

The model learns colour and shape words from *clean* renderings (plain grey backgrounds) only; the demo
dataset uses *tinted* renderings (random background colours), so zero-shot accuracy there is above chance but
far from perfect, and prompt tuning has something to improve. Uses open_clip's own ClipLoss; deterministic for a
seed on CPU.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from torchvision import transforms as T

from dapt_lightning.data.synthetic_render import COLOURS, SHAPES, render
from dapt_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from dapt_lightning.model.clip import TINY_CLIP_NAME  # importing registers the tiny config with open_clip

TEMPLATES = ("a photo of a {}.", "a {}.", "a drawing of a {}.", "{}", "a picture of a {}.", "a small {}.", "a big {}.")


def render_bank(per_class: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Pre-render ``per_class`` clean, augmented images per class (rendering stays out of the training loop)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    # Milder crops than the fine-tuning transform: a caption must still describe what is left in the crop.
    transform = T.Compose(
        [
            T.RandomResizedCrop(64, scale=(0.4, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    images, names = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            for _ in range(per_class):
                images.append(transform(render(colour, shape, rng, 64, "clean")))
                names.append(f"{colour} {shape}")
    return torch.stack(images), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=96, help="pre-rendered images per class")
    parser.add_argument("--out", type=Path, default=Path("src/dapt_lightning/assets/dapt-tiny-synthetic.safetensors"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    loss_fn = open_clip.ClipLoss()
    bank, names = render_bank(args.per_class, args.seed)
    print(f"rendered {len(bank)} images", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    start = time.time()
    model.train()
    for step in range(args.steps):
        picks = rng.sample(range(len(bank)), args.batch_size)
        images = bank[picks]
        tokens = tokenizer([rng.choice(TEMPLATES).format(names[i]) for i in picks])
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if step % 50 == 0 or step == args.steps - 1:
            scale = model.logit_scale.exp().item()
            print(f"step {step:5d}  loss {loss.item():.3f}  scale {scale:.1f}  {time.time() - start:.0f}s", flush=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"model": "dapt-tiny", "steps": str(args.steps), "seed": str(args.seed)})
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
