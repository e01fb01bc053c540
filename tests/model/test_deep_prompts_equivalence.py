"""IVLP, MaPLe and PromptSRC against a re-statement of the official computation, in fp32
(muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``, ``trainers/independentVL.py`` and
muzairkhattak/PromptSRC ``trainers/promptsrc.py``, with their modified ``clip/model.py``).

The reference runs open_clip's own blocks one by one, as the official ``ResidualAttentionBlock_IVLP`` /
``_MaPLe`` do: text — the prompt "<init phrase> <class>." with its first n context tokens replaced by the learned
context, then before blocks 1..J-1 the tokens 1..n replaced by that layer's context, features read at the highest
token id of the tokenized prompt; image — the learned tokens appended after the patch tokens and positional
embedding, before ``ln_pre``, then before blocks 1..J-1 the last n tokens replaced, ``ln_post`` of the class token.
MaPLe's visual prompts are its coupling functions (``proj`` for the input, one linear map per deeper layer) applied
to the text contexts. The methods are built as a user builds them, from a weights file.
"""

from __future__ import annotations

import math

import lightning as L
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from dapt_lightning.callbacks.gpa import GaussianPromptAggregation
from dapt_lightning.methods import IVLP, MaPLe, PromptSRC
from dapt_lightning.methods.promptsrc import teacher_templates

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
INIT = "a photo of a"


def official_text(clip: nn.Module, n_ctx: int, ctx: torch.Tensor, deep: list[torch.Tensor]) -> torch.Tensor:
    """The official TextEncoder over ``ResidualAttentionBlock_IVLP``/``_MaPLe`` text blocks (normalised)."""
    prefix = INIT if n_ctx <= 4 else " ".join(["X"] * n_ctx)
    tokens = open_clip.tokenize([f"{prefix} {name.replace('_', ' ')}." for name in CLASSNAMES])
    embedding = clip.token_embedding(tokens)
    x = torch.cat([embedding[:, :1], ctx.expand(len(CLASSNAMES), -1, -1), embedding[:, 1 + n_ctx :]], dim=1)
    x = x + clip.positional_embedding
    for index, block in enumerate(clip.transformer.resblocks):
        if 1 <= index <= len(deep):
            x = torch.cat([x[:, :1], deep[index - 1].expand(x.shape[0], -1, -1), x[:, 1 + n_ctx :]], dim=1)
        x = block(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    text = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ clip.text_projection
    return text / text.norm(dim=-1, keepdim=True)


def official_image(clip: nn.Module, images: torch.Tensor, layers: list[torch.Tensor]) -> torch.Tensor:
    """The official ``VisionTransformer`` (IVLP) / ``VisionTransformer_MaPLe`` forward (normalised)."""
    visual = clip.visual
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    zeros = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([visual.class_embedding + zeros, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, layers[0].expand(x.shape[0], -1, -1)], dim=1))
    n = layers[0].shape[0]
    for index, block in enumerate(visual.transformer.resblocks):
        if 1 <= index < len(layers):
            x = torch.cat([x[:, : x.shape[1] - n], layers[index].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    image = visual.ln_post(x[:, 0, :]) @ visual.proj
    return image / image.norm(dim=-1, keepdim=True)


def perturb_(parameters: list[torch.Tensor], seed: int) -> None:
    """Move every learned tensor away from its initialisation, so that each one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def assert_gradients_equal(ours: torch.Tensor, theirs: torch.Tensor, mine: list, reference: list) -> None:
    got = torch.autograd.grad(ours, mine, retain_graph=True, allow_unused=True)
    expected = torch.autograd.grad(theirs, reference, retain_graph=True, allow_unused=True)
    assert any(b is not None for b in expected)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        if b is None:  # a term of one tower only (PromptSRC's L1 terms)
            assert a is None or not a.any(), f"parameter {index} gets a gradient the reference does not give it"
            continue
        assert b.abs().max() > 0, f"parameter {index} gets no gradient in the reference"
        torch.testing.assert_close(a, b, rtol=5e-5, atol=5e-5 * b.abs().max().item(), msg=f"parameter {index}")


def assert_cross_entropy_step_equal(
    method: nn.Module,
    clip: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    expected: tuple[torch.Tensor, torch.Tensor],
    learned: list,
    reference: list,
) -> None:
    """The method's features, logits, cross-entropy and its gradients equal the reference's (``expected``: the
    normalised text and image features, computed from ``reference``, the copies of ``learned``)."""
    ref_text, ref_image = expected
    ref_logits = clip.logit_scale.exp() * ref_image @ ref_text.t()
    logits, image_features, text_features = method.model(images)
    torch.testing.assert_close(text_features, ref_text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image_features, ref_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5 * ref_logits.abs().max().item())
    ce, ref_ce = F.cross_entropy(logits, labels), F.cross_entropy(ref_logits, labels)
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-5)
    assert_gradients_equal(ce, ref_ce, learned, reference)


def batch(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 64, 64, generator=generator), torch.tensor([0, 3, 1, 4])


@pytest.mark.parametrize(
    ("text_tokens", "visual_tokens", "text_depth", "visual_depth", "text_encoding", "blocks"),
    [
        (4, 4, 3, 3, "auto", "lean"),
        (2, 3, 2, 3, "full", "lean"),
        (6, 2, 3, 1, "auto", "lean"),
        (4, 4, 3, 2, "auto", "open_clip"),
        (4, 2, 1, 2, "auto", "lean"),  # text prompts in the input only: CoOp's shared prefix applies
    ],
)
def test_ivlp_forward_and_gradients_equal_the_official_computation(
    clip_file, text_tokens: int, visual_tokens: int, text_depth: int, visual_depth: int, text_encoding: str, blocks: str
) -> None:
    clip, path = clip_file
    method = IVLP(
        classnames=CLASSNAMES,
        clip_name="dapt-tiny",
        pretrained=str(path),
        text_tokens=text_tokens,
        visual_tokens=visual_tokens,
        text_depth=text_depth,
        visual_depth=visual_depth,
        text_encoding=text_encoding,
    )
    if blocks == "open_clip":  # towers whose blocks run as open_clip's own (gradient checkpointing turns lean off)
        method.model.clip.transformer.grad_checkpointing = True
        method.model.clip.visual.transformer.grad_checkpointing = True
    assert method.model.text_tower.lean_blocks == (blocks == "lean")
    assert method.model.image_tower.computation == blocks
    text, visual = method.model.text_prompt, method.model.visual_prompt
    fast = "shared_prefix" if text_depth == 1 else "truncated"
    assert method.model.text_encoder.name == (fast if text_encoding == "auto" else "full")
    if text_tokens <= 4:  # the phrase's first tokens, the rest of it fixed words ("of a" for 2 tokens)
        initial = clip.token_embedding(open_clip.tokenize([INIT]))[0, 1 : 1 + text_tokens]
        torch.testing.assert_close(text.txt_ctx.detach(), initial)
    assert len(text.deep_ctx) == text_depth - 1 and len(visual.layers) == visual_depth
    learned = [text.txt_ctx, *text.deep_ctx, *visual.layers]
    perturb_(learned, seed=5)
    reference = [p.detach().clone().requires_grad_(True) for p in learned]
    images, labels = batch()
    ref_text = official_text(clip, text_tokens, reference[0], reference[1:text_depth])
    ref_image = official_image(clip, images, reference[text_depth:])
    assert_cross_entropy_step_equal(method, clip, images, labels, (ref_text, ref_image), learned, reference)


@pytest.mark.parametrize("depth", [3, 1])
def test_maple_forward_and_gradients_equal_the_official_computation(clip_file, depth: int) -> None:
    clip, path = clip_file
    method = MaPLe(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), depth=depth)
    text, coupling = method.model.text_prompt, method.model.visual_prompt
    # 2 learned tokens from "a photo"; "of a" stays in every prompt, so the end of text is where the whole
    # phrase's prompt has it.
    initial = clip.token_embedding(open_clip.tokenize([INIT]))[0, 1:3]
    torch.testing.assert_close(text.txt_ctx.detach(), initial)
    full_tokens = open_clip.tokenize([f"{INIT} {name.replace('_', ' ')}." for name in CLASSNAMES])
    assert torch.equal(text.pool_positions, full_tokens.argmax(dim=-1))
    assert coupling.proj.in_features == 64 and coupling.proj.out_features == 128  # text width -> image width
    assert len(coupling.layers) == depth - 1
    for layer in coupling.layers[1:]:  # the deeper coupling functions start as identical copies
        assert torch.equal(layer.weight, coupling.layers[0].weight) and torch.equal(layer.bias, coupling.layers[0].bias)
    learned = [text.txt_ctx, *text.deep_ctx, coupling.proj.weight, coupling.proj.bias]
    learned += [p for layer in coupling.layers for p in (layer.weight, layer.bias)]
    perturb_(learned, seed=7)
    reference = [p.detach().clone().requires_grad_(True) for p in learned]
    ctx, deep = reference[0], reference[1:depth]
    proj_w, proj_b = reference[depth : depth + 2]
    maps = reference[depth + 2 :]
    visual = [F.linear(ctx, proj_w, proj_b)] + [
        F.linear(context, maps[2 * k], maps[2 * k + 1]) for k, context in enumerate(deep)
    ]
    images, labels = batch()
    ref_text = official_text(clip, 2, ctx, deep)
    ref_image = official_image(clip, images, visual)
    assert_cross_entropy_step_equal(method, clip, images, labels, (ref_text, ref_image), learned, reference)


def test_promptsrc_loss_terms_and_gradients_equal_the_official_computation(clip_file) -> None:
    clip, path = clip_file
    method = PromptSRC(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), text_depth=3, visual_depth=2)
    assert (method.hparams.text_loss_weight, method.hparams.image_loss_weight) == (25.0, 10.0)
    text, visual = method.model.text_prompt, method.model.visual_prompt
    learned = [text.txt_ctx, *text.deep_ctx, *visual.layers]
    perturb_(learned, seed=11)
    reference = [p.detach().clone().requires_grad_(True) for p in learned]
    images, labels = batch()
    ref_text = official_text(clip, 4, reference[0], reference[1:3])
    ref_image = official_image(clip, images, reference[3:])
    scale = clip.logit_scale.exp()
    logits = scale * ref_image @ ref_text.t()
    with torch.no_grad():  # the frozen CLIP's features: 60 templates' unnormalised mean, then normalised
        per_template = [
            clip.encode_text(open_clip.tokenize([t.replace("{}", n.replace("_", " ")) for n in CLASSNAMES]))
            for t in teacher_templates()
        ]
        fixed = torch.stack(per_template, dim=1).mean(dim=1)
        fixed = fixed / fixed.norm(dim=-1, keepdim=True)
        zero_shot = clip.encode_image(images)
        zero_shot = zero_shot / zero_shot.norm(dim=-1, keepdim=True)
        zero_shot_logits = scale * zero_shot @ fixed.t()
    expected = {
        "ce": F.cross_entropy(logits, labels),
        "text_l1": F.l1_loss(ref_text, fixed, reduction="mean"),
        "image_l1": F.l1_loss(ref_image, zero_shot, reduction="mean"),
        "kl": F.kl_div(
            F.log_softmax(logits / 1, dim=1),
            F.log_softmax(zero_shot_logits / 1, dim=1),
            reduction="sum",
            log_target=True,
        )
        * (1 * 1)
        / logits.numel(),
    }
    expected["total"] = expected["ce"] + expected["kl"] + 25 * expected["text_l1"] + 10 * expected["image_l1"]

    ours_logits, terms = method.batch_loss(images, labels)
    torch.testing.assert_close(ours_logits, logits, rtol=1e-5, atol=1e-5 * logits.abs().max().item())
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert value.item() > 1e-4, f"{name} is trivially zero here"
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    for name in expected:
        assert_gradients_equal(terms[name], expected[name], learned, reference)


def test_the_teacher_templates_are_upstreams_sixty() -> None:
    templates = teacher_templates()
    openai = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == len(set(templates)) == 60 and set(templates) <= set(openai)
    assert templates[0] == "a photo of a {}." and templates[-1] == "itap of the {}."
    # Upstream's list stops before these of OpenAI's 80 (their 61st and last).
    assert "a jpeg corrupted photo of the {}." not in templates and "a tattoo of the {}." not in templates


def official_gpa(epochs: int, mean: float, std: float) -> list[float]:
    """Upstream's ``get_gauss`` over ``range(1, N + 1)``, divided by its sum."""
    gauss = [
        (1 / (std * math.sqrt(2 * math.pi))) * math.exp(-0.5 * ((a - mean) / std) ** 2) for a in range(1, epochs + 1)
    ]
    return [g / sum(gauss) for g in gauss]


class EpochEndPrompts(L.Callback):
    """The learned parameters after each epoch's last batch, before GPA acts on them (it runs after this one)."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            state = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
            self.snapshots.append(state)


class RandomImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.randn(3, 64, 64, generator=generator), index % len(CLASSNAMES), index


@pytest.mark.parametrize(("mean", "std"), [(2.0, 1.0), (1.0, 0.05), (6.0, 10.0)])
def test_gpa_keeps_upstreams_gaussian_weighting_of_each_epochs_prompts(clip_file, mean: float, std: float) -> None:
    _, path = clip_file
    torch.manual_seed(0)
    method = PromptSRC(
        classnames=CLASSNAMES,
        clip_name="dapt-tiny",
        pretrained=str(path),
        text_depth=2,
        visual_depth=2,
        gpa_mean=mean,
        gpa_std=std,
        lr=0.5,
        warmup_epochs=0,
    )
    recorder = EpochEndPrompts()
    loader = torch.utils.data.DataLoader(RandomImages(), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3, callbacks=[recorder], logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(method, train_dataloaders=loader)
    gpa = [c for c in trainer.callbacks if isinstance(c, GaussianPromptAggregation)]
    assert len(gpa) == 1 and (gpa[0].mean, gpa[0].std) == (mean, std)  # the method's settings reach the callback
    weights = official_gpa(3, mean, std)
    assert len(recorder.snapshots) == 3
    assert not torch.allclose(
        recorder.snapshots[0]["model.text_prompt.txt_ctx"], recorder.snapshots[2]["model.text_prompt.txt_ctx"]
    )
    for name, parameter in method.named_parameters():
        if parameter.requires_grad:
            expected = sum(w * s[name] for w, s in zip(weights, recorder.snapshots, strict=True))
            torch.testing.assert_close(parameter.detach(), expected, rtol=1e-6, atol=1e-7, msg=name)
