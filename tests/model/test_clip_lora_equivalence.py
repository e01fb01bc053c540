"""CLIP-LoRA against a re-statement of the official computation (MaxZanella/CLIP-LoRA ``lora.py``, ``loralib/``),
in fp32.

The reference is written with open_clip's primitives: every attention block of both towers computed as
``PlainMultiheadAttentionLoRA`` does, with q, k and v as separate projections of the packed weight, each plus
``scaling * x (B A)^T`` (``LinearLoRA``; scaling ``alpha / sqrt(r)``), then scaled dot-product attention, the output
projection and the MLP; the text of the first template pooled at its end-of-text token; logits
``100 * cos(image, text)`` and cross-entropy. The method under test is built as a user builds it, from a weights
file, and runs through the lean block path (``model/blocks.py``).
"""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dapt_lightning.methods import CLIPLoRA
from dapt_lightning.model.lora import lora_of

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
TEMPLATE = "a photo of a {}, a type of pet."
RANK, ALPHA = 2, 1.0


def official_block(block, x, lora, mask=None):
    """One ``ResidualAttentionBlock`` with ``PlainMultiheadAttentionLoRA`` in place of its attention."""
    attn = block.attn
    d, heads = attn.embed_dim, attn.num_heads
    h = block.ln_1(x)
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    scaling = ALPHA / math.sqrt(RANK)
    projections = []
    for index in range(3):  # q_proj, k_proj, v_proj: LinearLoRA(x) = W x + b + x (B A)^T * scaling
        rows = slice(index * d, (index + 1) * d)
        merged = lora.B[index] @ lora.A[index]
        projections.append(F.linear(h, weight[rows], bias[rows]) + torch.matmul(h, merged.transpose(0, 1)) * scaling)
    batch, length = x.shape[0], x.shape[1]
    q, k, v = (p.reshape(batch, length, heads, d // heads).transpose(1, 2) for p in projections)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch, length, d)
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def official_features(clip, method, images):
    """Normalised image and text features with every block adapted."""
    visual = clip.visual
    x = visual._embeds(images)
    for block, lora in zip(visual.transformer.resblocks, method.lora["image"], strict=True):
        x = official_block(block, x, lora)
    pooled, _ = visual._pool(x)
    image = pooled @ visual.proj

    tokens = open_clip.tokenize([TEMPLATE.format(name.replace("_", " ")) for name in CLASSNAMES])
    x = clip.token_embedding(tokens) + clip.positional_embedding
    for block, lora in zip(clip.transformer.resblocks, method.lora["text"], strict=True):
        x = official_block(block, x, lora, mask=clip.attn_mask)
    x = clip.ln_final(x)
    text = x[torch.arange(len(CLASSNAMES)), tokens.argmax(dim=-1)] @ clip.text_projection
    return image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)


@pytest.fixture()
def method(clip_file) -> CLIPLoRA:
    _, path = clip_file
    built = CLIPLoRA(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), template=TEMPLATE, dropout=0.0)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # B away from its zero init, so that the updates and A's gradients are not zero
        for adapter in built.lora.modules():
            if hasattr(adapter, "B"):
                adapter.B.normal_(0.0, 0.3, generator=generator)
    return built


def test_forward_loss_and_gradients_equal_the_official_computation(clip_file, method: CLIPLoRA) -> None:
    clip, _ = clip_file
    method.train()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.tensor([0, 3, 1, 4])
    image, text = official_features(clip, method, images)
    expected = 100.0 * image @ text.t()
    with torch.no_grad():
        plain = clip.encode_image(images)
    assert not torch.allclose(F.normalize(plain, dim=-1), image, atol=1e-3)  # the updates change the features

    logits, image_features, text_features = method.forward_features(images)
    torch.testing.assert_close(image_features, image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_features, text, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    ours = F.cross_entropy(logits, labels)
    theirs = F.cross_entropy(expected, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    parameters = list(method.lora.parameters())
    assert len(parameters) == 2 * (len(clip.transformer.resblocks) + len(clip.visual.transformer.resblocks))
    ours_grads = torch.autograd.grad(ours, parameters)
    theirs_grads = torch.autograd.grad(theirs, parameters)
    for mine, reference in zip(ours_grads, theirs_grads, strict=True):
        assert reference.abs().max() > 0
        torch.testing.assert_close(mine, reference, rtol=5e-5, atol=5e-5 * reference.abs().max().item())


def test_evaluation_merges_the_updates_into_the_weights(clip_file, method: CLIPLoRA) -> None:
    clip, _ = clip_file
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        image, text = official_features(clip, method, images)
        method.eval()
        logits, _, _ = method.forward_features(images)
    torch.testing.assert_close(logits, 100.0 * image @ text.t(), rtol=1e-5, atol=1e-4)
    own_clip = method.model.clip
    adapter = lora_of(own_clip.visual.transformer.resblocks[0])
    assert adapter is method.lora["image"][0] and not adapter.training  # the merged path ran
    assert own_clip.state_dict().keys() == clip.state_dict().keys()  # the adapters are not part of the CLIP


def test_dropout_acts_on_the_update_only(clip_file) -> None:
    clip, path = clip_file
    method = CLIPLoRA(classnames=CLASSNAMES, clip_name="dapt-tiny", pretrained=str(path), dropout=0.25)
    method.train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        zero_update, _, _ = method.forward_features(images)  # B = 0 at init: no update, whatever the dropout
        plain = 100.0 * F.normalize(clip.encode_image(images), dim=-1) @ method.model.encode_text().t()
        torch.testing.assert_close(zero_update, plain, rtol=1e-5, atol=1e-4)
        for adapter in method.lora.modules():
            if hasattr(adapter, "B"):
                adapter.B.fill_(0.1)
        first, _, _ = method.forward_features(images)
        second, _, _ = method.forward_features(images)
    assert not torch.allclose(first, second)  # a new dropout mask each time


def test_checkpoints_hold_the_adapters_only(method: CLIPLoRA) -> None:
    kept = method.kept_state(method.state_dict())
    assert kept and all(key.startswith("lora.") for key in kept)
    assert method.hparams.rank == 2 and method.hparams.alpha == 1.0 and method.hparams.lr == 2e-4
