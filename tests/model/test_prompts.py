"""CoOp text prompts and VPT-shallow visual prompts: token layout, embeddings, initialisation, insertion point."""

from __future__ import annotations

import math
from types import SimpleNamespace

import open_clip
import pytest
import torch
from prompt_steps import build_prompted
from torch import nn

from dapt_lightning.model.prompts import TextPromptLearner, VisualPromptLearner, prompt_texts
from dapt_lightning.model.towers import ImageTower, TextTower

SOT, EOT = 49406, 49407
CLASSNAMES = ["cat", "american_bulldog", "sea or lake"]


def _ids(text: str) -> list[int]:
    """BPE ids of ``text`` without SOT/EOT."""
    row = open_clip.get_tokenizer("ViT-B-16")([text])[0].tolist()
    return row[1 : row.index(EOT)]


def test_prompt_texts_replace_underscores() -> None:
    assert prompt_texts(["american_bulldog", "cat"], "X X") == ["X X american bulldog.", "X X cat."]


def test_token_layout(tiny_clip: nn.Module) -> None:
    learner = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, num_tokens=16)
    (x_id,) = _ids("X")
    (period,) = _ids(".")
    assert learner.tokens.shape == (3, 77)
    for row, name in zip(learner.tokens.tolist(), ["cat", "american bulldog", "sea or lake"], strict=True):
        expected = [SOT] + [x_id] * 16 + _ids(name) + [period, EOT]
        assert row == expected + [0] * (77 - len(expected))
    # Underscores are spaces: "american_bulldog" tokenizes as "american bulldog" (two words), not one odd token.
    assert len(_ids("american bulldog")) == 2


def test_eot_position_is_argmax(tiny_clip: nn.Module) -> None:
    learner = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, num_tokens=16)
    positions = learner.pool_positions.tolist()
    assert positions == learner.tokens.argmax(-1).tolist()
    assert positions == [1 + 16 + len(_ids(name)) + 1 for name in ["cat", "american bulldog", "sea or lake"]]
    assert all(learner.tokens[i, p] == EOT for i, p in enumerate(positions))


def test_prompt_embeddings(tiny_clip: nn.Module) -> None:
    tower = TextTower(tiny_clip)
    learner = TextPromptLearner(tower, CLASSNAMES, num_tokens=16)
    assert learner.txt_ctx.shape == (16, tower.width)
    assert learner.txt_ctx.std().item() == pytest.approx(0.02, rel=0.15)  # N(0, 0.02^2)
    with torch.no_grad():
        learner.txt_ctx.normal_()  # make the context clearly different from the 'X' embeddings
    embeddings = learner()
    frozen = tiny_clip.token_embedding(learner.tokens)
    assert embeddings.shape == (3, 77, tower.width)
    for c in range(3):
        torch.testing.assert_close(embeddings[c, 1:17], learner.txt_ctx, rtol=0, atol=0)
    torch.testing.assert_close(embeddings[:, :1], frozen[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(embeddings[:, 17:], frozen[:, 17:], rtol=0, atol=0)
    # A shorter length cuts every sequence and keeps the same leading rows.
    torch.testing.assert_close(learner(24), embeddings[:, :24], rtol=0, atol=0)


def test_gradient_reaches_only_context_rows(tiny_clip: nn.Module) -> None:
    learner = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, num_tokens=16)
    learner().sum().backward()
    assert learner.txt_ctx.grad is not None
    torch.testing.assert_close(learner.txt_ctx.grad, torch.full_like(learner.txt_ctx, 3.0))  # shared by 3 classes
    assert not tiny_clip.token_embedding.weight.requires_grad


def test_init_from_phrase(tiny_clip: nn.Module) -> None:
    learner = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, num_tokens=16, init_phrase="a photo of a")
    phrase = _ids("a photo of a")
    assert learner.num_tokens == 4 and len(phrase) == 4
    expected = tiny_clip.token_embedding.weight[phrase]
    torch.testing.assert_close(learner.txt_ctx.detach(), expected, rtol=0, atol=0)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert torch.equal(learner.tokens[1], tokenizer(["a photo of a american bulldog."])[0])
    assert learner.pool_positions.tolist() == [
        1 + 4 + len(_ids(n)) + 1 for n in ["cat", "american bulldog", "sea or lake"]
    ]
    # Initialised from the phrase, the prompt embeddings equal the embeddings of the real sentence.
    sentence = tokenizer(["a photo of a sea or lake."])
    torch.testing.assert_close(learner()[2], tiny_clip.token_embedding(sentence)[0], rtol=0, atol=0)


def test_class_specific_context(tiny_clip: nn.Module) -> None:
    learner = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, num_tokens=16, class_specific=True)
    assert learner.txt_ctx.shape == (3, 16, tiny_clip.ln_final.weight.shape[0])
    assert not torch.equal(learner.txt_ctx[0], learner.txt_ctx[1])  # independent random init per class
    embeddings = learner()
    for c in range(3):
        torch.testing.assert_close(embeddings[c, 1:17], learner.txt_ctx[c], rtol=0, atol=0)
    phrase = TextPromptLearner(TextTower(tiny_clip), CLASSNAMES, init_phrase="a photo of a", class_specific=True)
    assert phrase.txt_ctx.shape[:2] == (3, 4)
    torch.testing.assert_close(phrase.txt_ctx[0], phrase.txt_ctx[2], rtol=0, atol=0)


def test_too_long_class_name_is_an_error(tiny_clip: nn.Module) -> None:
    with pytest.raises(ValueError, match="too long"):
        TextPromptLearner(TextTower(tiny_clip), ["word " * 70], num_tokens=16)


def test_vpt_init_bound_and_shape(tiny_clip: nn.Module) -> None:
    tower = ImageTower(tiny_clip)
    learner = VisualPromptLearner(tower, num_tokens=16)
    bound = math.sqrt(6 / (3 * 8 * 8 + 128))  # dapt-tiny: 8x8 patches, width 128
    assert learner.vis_ctx.shape == (16, 128)
    assert learner.vis_ctx.abs().max().item() <= bound
    assert learner.vis_ctx.abs().max().item() > 0.95 * bound  # uniform over the whole interval, not narrower
    assert learner.vis_ctx.mean().abs().item() < 0.1 * bound


def test_vpt_bound_for_vit_b16() -> None:
    # VisualPromptLearner only reads the tower's patch size and width: ViT-B/16's give the SPEC's 0.0625.
    learner = VisualPromptLearner(SimpleNamespace(patch_size=(16, 16), width=768), num_tokens=16)
    assert learner.vis_ctx.shape == (16, 768)
    assert 0.06 < learner.vis_ctx.abs().max().item() <= 0.0625


def test_vpt_insertion_position(tiny_clip: nn.Module) -> None:
    model = build_prompted(tiny_clip, CLASSNAMES)
    visual = tiny_clip.visual
    captured: list[torch.Tensor] = []
    # The input of the first block, as its first LayerNorm sees it: the tower computes the blocks itself (lean, from
    # their weights) rather than through visual.transformer or the blocks' own forward.
    first_norm = visual.transformer.resblocks[0].ln_1
    handle = first_norm.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    images = torch.randn(2, 3, 64, 64)
    try:
        model.encode_image(images)
    finally:
        handle.remove()
    (x,) = captured
    x = x.reshape(2, -1, x.shape[-1])  # the lean blocks take the tokens of all images flattened to [B * L, W]
    assert visual.transformer.batch_first
    prompts = model.visual_prompt.vis_ctx.detach()
    patches = visual.conv1(images).flatten(2).transpose(1, 2)
    tokens = torch.cat([visual.class_embedding.expand(2, 1, -1), patches], dim=1) + visual.positional_embedding
    normed = visual.ln_pre(tokens)
    assert x.shape == (2, 1 + 16 + 64, 128)  # CLS, 16 prompts, 8x8 patches
    torch.testing.assert_close(x[:, 0], normed[:, 0])  # CLS first, after ln_pre
    torch.testing.assert_close(x[:, 1:17], prompts.expand(2, -1, -1), rtol=0, atol=0)  # no pos. emb., no ln_pre
    torch.testing.assert_close(x[:, 17:], normed[:, 1:])


def test_vpt_prompts_change_the_image_features_only_when_used(tiny_clip: nn.Module) -> None:
    model = build_prompted(tiny_clip, CLASSNAMES)
    images = torch.randn(2, 3, 64, 64)
    zero_shot = torch.nn.functional.normalize(tiny_clip.encode_image(images), dim=-1)
    torch.testing.assert_close(model.encode_image(images, use_prompts=False), zero_shot)
    assert not torch.allclose(model.encode_image(images), zero_shot, atol=1e-4)
