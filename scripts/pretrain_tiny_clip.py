"""Reproduce the shipped tiny-CLIP weights: contrastive pre-training on procedural images and their captions.

    python scripts/pretrain_tiny_clip.py --out src/dapt_lightning/assets/dapt-tiny-synthetic.safetensors

The world is every coloured shape of ``synthetic_render``, seen plainly or through its colour filter, with captions
that name how it is seen ("a photo of a red circle.", "a red circle through a filter."). A filtered image looks
exactly like a plain photo of another colour, so each image has two true captions, and the loss asks the model to
match both: the image to every caption of the world, with the target spread evenly over the true ones. The text
tower must therefore learn what the filter does to each colour word. Deterministic for a seed and thread count on
a CPU; about 21 minutes on 2 cores (the shipped weights: the defaults, 1235 s).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as TF

from dapt_lightning.data.synthetic_render import COLOURS, SHAPES, STYLES, render
from dapt_lightning.data.transforms import CLIP_MEAN, CLIP_STD
from dapt_lightning.model.clip import TINY_CLIP_NAME  # importing registers the tiny config with open_clip

IMAGE_SIZE = 64
Caption = tuple[str, str, str]
"""A caption's (style, colour, shape)."""


def render_bank(per_look: int, seed: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """``per_look`` uint8 renderings ``[N, 3, 64, 64]`` of every (colour, shape) look, and each one's look."""
    images, looks = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            for index in range(per_look):
                rng = random.Random(f"pretrain-{seed}-{colour}-{shape}-{index}")
                images.append(TF.pil_to_tensor(render(colour, shape, rng, IMAGE_SIZE, "photo")))
                looks.append((colour, shape))
    return torch.stack(images), looks


def caption_targets(looks: list[tuple[str, str]], captions: list[Caption]) -> torch.Tensor:
    """``[len(looks), len(captions)]``: for each look, the even distribution over the captions it fits."""
    fits = torch.tensor(
        [
            [STYLES[style].appearance(colour) == look and shape == look_shape for style, colour, shape in captions]
            for look, look_shape in looks
        ],
        dtype=torch.float32,
    )
    return fits / fits.sum(dim=1, keepdim=True)


def augment(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """A random resized crop (area ``scale``, aspect 3/4 to 4/3) and a coin-flip mirror per image; float, normalised."""
    out = []
    for image in images:
        area = torch.empty(()).uniform_(*scale, generator=generator).item()
        aspect = torch.empty(()).uniform_(-0.2877, 0.2877, generator=generator).exp().item()
        h = min(IMAGE_SIZE, round(IMAGE_SIZE * (area / aspect) ** 0.5))
        w = min(IMAGE_SIZE, round(IMAGE_SIZE * (area * aspect) ** 0.5))
        top = int(torch.randint(0, IMAGE_SIZE - h + 1, (), generator=generator))
        left = int(torch.randint(0, IMAGE_SIZE - w + 1, (), generator=generator))
        crop = TF.resized_crop(image, top, left, h, w, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return normalise(torch.stack(out))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as the CLIP's normalised floats."""
    return TF.normalize(images.float().div_(255), list(CLIP_MEAN), list(CLIP_STD))


def encode_text(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """open_clip's ``encode_text`` on token ids cut after the longest text's end token: the text tower is causal and
    pools at the end token, so the features are those of all 77 tokens, at a fraction of the cost."""
    ids = tokenizer(texts)
    length = int(ids.argmax(-1).max()) + 1
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer, seed: int) -> dict[str, float]:
    """Zero-shot accuracy on fresh renderings: plain photos with the photo prompt, and filtered images with the
    photo prompt and with the filter's prompt."""
    model.eval()
    classes = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    names = [f"{colour} {shape}" for colour, shape in classes]
    scores = {}
    for style in STYLES:
        images, labels = [], []
        for label, (colour, shape) in enumerate(classes):
            for index in range(8):
                rng = random.Random(f"evaluate-{seed}-{style}-{label}-{index}")
                images.append(TF.pil_to_tensor(render(colour, shape, rng, IMAGE_SIZE, style)))
                labels.append(label)
        features = F.normalize(model.encode_image(normalise(torch.stack(images))), dim=-1)
        for prompt_style in dict.fromkeys(("photo", style)):
            template = STYLES[prompt_style].captions[0]
            text = F.normalize(encode_text(model, tokenizer, [template.format(n) for n in names]), dim=-1)
            correct = (features @ text.T).argmax(-1) == torch.tensor(labels)
            scores[f"{style}/{prompt_style}"] = correct.float().mean().item()
    model.train()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-look", type=int, default=192, help="pre-rendered images per (colour, shape) look")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (0: none)")
    parser.add_argument("--out", type=Path, default=Path("src/dapt_lightning/assets/dapt-tiny-synthetic.safetensors"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    bank, looks = render_bank(args.per_look, args.seed)
    captions: list[Caption] = [(style, c, s) for style in STYLES for c in COLOURS for s in SHAPES]
    distinct_looks = list(dict.fromkeys(looks))  # in rendering order
    targets = caption_targets(distinct_looks, captions)
    look_index = {look: i for i, look in enumerate(distinct_looks)}
    bank_targets = torch.tensor([look_index[look] for look in looks])
    print(f"rendered {len(bank)} images; {len(captions)} captions", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0}], lr=args.lr
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    start = time.time()
    model.train()
    for step in range(args.steps):
        picks = torch.randint(0, len(bank), (args.batch_size,), generator=generator)
        images = augment(bank[picks], generator, (0.5, 1.0))
        texts = [rng.choice(STYLES[style].captions).format(f"{c} {s}") for style, c, s in captions]
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_text(model, tokenizer, texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        loss = F.cross_entropy(logits, targets[bank_targets[picks]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps - 1):
            scores = evaluate(model, tokenizer, args.seed)
            shown = "  ".join(f"{k} {100 * v:.1f}" for k, v in scores.items())
            scale = model.logit_scale.exp().item()
            print(
                f"step {step:5d}  loss {loss.item():.3f}  scale {scale:.1f}  {shown}  {time.time() - start:.0f}s",
                flush=True,
            )
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"model": "dapt-tiny", "steps": str(args.steps), "seed": str(args.seed)})
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
