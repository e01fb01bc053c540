"""KgCoOp against a re-statement of the official computation (htyao89/KgCoOp ``trainers/kgcoop.py``), in fp32.

The reference is written with open_clip's primitives only: the prompt "a photo of a <class>." with its 4 context
token embeddings replaced by the learned context, the full 77-token causal text transformer, the hand-crafted
prompt's features from the same frozen CLIP (``encode_text`` of the dataset's template, normalised, and normalised
again in the forward as the official code does), the score ``1 - mean cos`` with ``eps=1e-7``, and
``CE + W * score``. The method under test is built as a user builds it, from a weights file.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.methods import KgCoOp

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
TEMPLATE = "a photo of a {}, a type of pet."
CONTEXT = "a photo of a"
W = 8.0


def reference(clip: nn.Module, ctx: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> dict:
    n_ctx = len(CONTEXT.split(" "))
    tokens = open_clip.tokenize([f"{CONTEXT} {name.replace('_', ' ')}." for name in CLASSNAMES])
    x = clip.token_embedding(tokens)
    x = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(len(CLASSNAMES), -1, -1), x[:, 1 + n_ctx :]], dim=1)
    x = clip.ln_final(clip.transformer(x + clip.positional_embedding, attn_mask=clip.attn_mask))
    text = x[torch.arange(len(CLASSNAMES)), tokens.argmax(dim=-1)] @ clip.text_projection
    text = text / text.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        old = clip.encode_text(open_clip.tokenize([TEMPLATE.format(n.replace("_", " ")) for n in CLASSNAMES]))
        old = old / old.norm(dim=-1, keepdim=True)
    old = old / old.norm(dim=-1, keepdim=True)
    image = clip.encode_image(images)
    image = image / image.norm(dim=-1, keepdim=True)
    logits = clip.logit_scale.exp() * image @ text.t()
    score = 1.0 - torch.mean(torch.nn.CosineSimilarity(dim=1, eps=1e-07)(text, old))
    ce = F.cross_entropy(logits, labels)
    return {"text": text, "logits": logits, "ce": ce, "kg": score, "total": ce + W * score}


@pytest.mark.parametrize("text_encoding", ["full", "auto"])
def test_kgcoop_forward_losses_and_gradients_equal_the_official_computation(clip_file, text_encoding: str) -> None:
    clip, path = clip_file
    method = KgCoOp(
        classnames=CLASSNAMES,
        clip_name="dapt-tiny",
        pretrained=str(path),
        template=TEMPLATE,
        text_encoding=text_encoding,
    )
    context = method.model.text_prompt.txt_ctx
    assert context.shape == (4, 64)  # "a photo of a": 4 tokens, whatever text_tokens says
    initial = clip.token_embedding(open_clip.tokenize([CONTEXT]))[0, 1:5]
    torch.testing.assert_close(context.detach(), initial)  # initialised from the phrase's embeddings
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        context.add_(0.3 * torch.randn(context.shape, generator=generator))  # away from the init, to matter more
    images = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.tensor([0, 3, 1, 4])
    ref_ctx = context.detach().clone().requires_grad_(True)
    expected = reference(clip, ref_ctx, images, labels)

    logits, image_features, text_features = method.model(images)
    terms = method.loss(logits, labels, image_features, text_features)
    torch.testing.assert_close(text_features, expected["text"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5 * expected["logits"].abs().max().item())
    for name in ("ce", "kg", "total"):
        assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-5), name
    assert terms["kg"].item() > 1e-3  # the guiding term is not trivially zero here

    for name, weight in (("ce", 1.0), ("kg", W), ("total", 1.0)):
        (ours,) = torch.autograd.grad(weight * terms[name], [context], retain_graph=True)
        (theirs,) = torch.autograd.grad(weight * expected[name], [ref_ctx], retain_graph=True)
        torch.testing.assert_close(ours, theirs, rtol=5e-5, atol=5e-5 * theirs.abs().max().item())


def test_kgcoop_checkpoints_hold_only_the_context(clip_file, tmp_path: Path) -> None:
    _, path = clip_file
    method = KgCoOp(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), template=TEMPLATE)
    kept = method.kept_state(method.state_dict())
    assert set(kept) == {"model.text_prompt.txt_ctx"}  # the guiding features are rebuilt, never stored
    assert method.hparams.kg_weight == 8.0 and method.hparams.template == TEMPLATE


def test_a_negative_weight_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="--model.kg_weight must be >= 0, got -1"):
        KgCoOp(kg_weight=-1)
