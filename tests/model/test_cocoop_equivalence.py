"""CoCoOp against a re-statement of the official computation (KaiyangZhou/CoOp ``trainers/cocoop.py``), in fp32.

The reference follows the official forward image by image, as it runs at batch 1: the image feature (normalised),
the meta-net's shift added to every context token, each class's full 77-token prompt through the text transformer,
``logit_scale * image @ text.T`` per image, then cross-entropy over the batch. The method under test encodes every
image's class texts in one call, with truncated prompts; it is built as a user builds it, from a weights file.
"""

from __future__ import annotations

from collections import OrderedDict

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.inference import Classifier
from dapt_lightning.methods import CoCoOp

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
CONTEXT = "a photo of a"


def reference(clip: nn.Module, ctx: torch.Tensor, meta: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    n_ctx = len(CONTEXT.split(" "))
    tokens = open_clip.tokenize([f"{CONTEXT} {name.replace('_', ' ')}." for name in CLASSNAMES])
    embedding = clip.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx :]
    image_features = clip.encode_image(images)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    bias = meta(image_features).unsqueeze(1)
    shifted = ctx.unsqueeze(0) + bias
    logits = []
    for ctx_i, imf_i in zip(shifted, image_features, strict=True):
        prompts = torch.cat([prefix, ctx_i.unsqueeze(0).expand(len(CLASSNAMES), -1, -1), suffix], dim=1)
        x = clip.ln_final(clip.transformer(prompts + clip.positional_embedding, attn_mask=clip.attn_mask))
        text = x[torch.arange(len(CLASSNAMES)), tokens.argmax(dim=-1)] @ clip.text_projection
        text = text / text.norm(dim=-1, keepdim=True)
        logits.append(clip.logit_scale.exp() * imf_i @ text.t())
    logits = torch.stack(logits)
    return logits, F.cross_entropy(logits, labels)


def test_cocoop_forward_loss_and_gradients_equal_the_official_computation(clip_file) -> None:
    clip, path = clip_file
    torch.manual_seed(0)
    method = CoCoOp(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path))
    context = method.model.text_prompt.txt_ctx
    assert context.shape == (4, 64)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        context.add_(0.3 * torch.randn(context.shape, generator=generator))
        for parameter in method.meta_net.parameters():  # shifts large enough to matter
            parameter.mul_(3.0)
    assert [layer.weight.shape for layer in (method.meta_net[0], method.meta_net[2])] == [(4, 64), (64, 4)]
    images = torch.randn(3, 3, 64, 64, generator=generator)
    labels = torch.tensor([0, 4, 2])

    ref_ctx = context.detach().clone().requires_grad_(True)
    # The official meta-net: linear1 (d -> d/16), ReLU, linear2 (d/16 -> context width).
    ref_meta = nn.Sequential(OrderedDict(linear1=nn.Linear(64, 4), relu=nn.ReLU(), linear2=nn.Linear(4, 64)))
    ref_meta.load_state_dict({k: v.detach().clone() for k, v in method.meta_net.state_dict().items()})
    expected_logits, expected_ce = reference(clip, ref_ctx, ref_meta, images, labels)

    logits, image_features, text_features = method.forward_features(images)
    terms = method.loss(logits, labels, image_features, text_features)
    assert text_features.shape == (3, len(CLASSNAMES), 64)  # each image its own class texts
    scale = expected_logits.abs().max().item()
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5 * scale)
    assert terms["total"].item() == pytest.approx(expected_ce.item(), rel=1e-5)

    ours = torch.autograd.grad(terms["total"], [context, *method.meta_net.parameters()])
    theirs = torch.autograd.grad(expected_ce, [ref_ctx, *ref_meta.parameters()])
    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=5e-5, atol=5e-5 * want.abs().max().item())


def test_a_cocoop_checkpoint_holds_the_context_and_the_meta_net(clip_file) -> None:
    _, path = clip_file
    method = CoCoOp(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path))
    kept = method.kept_state(method.state_dict())
    assert set(kept) == {"model.text_prompt.txt_ctx"} | {f"meta_net.{k}" for k in method.meta_net.state_dict()}


def test_the_classifier_runs_cocoops_own_texts_and_other_class_names(clip_file) -> None:
    clip, path = clip_file
    method = CoCoOp(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path))
    classifier = Classifier(method, device="cpu")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(classifier.logits(pixels), method.forward_features(pixels)[0])
        other = classifier.logits(pixels, ["dog", "cat"])
    assert other.shape == (2, 2)
    with pytest.raises(ValueError, match="CoCoOp encodes the class texts anew for every image"):
        classifier.graph()
