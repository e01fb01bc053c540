"""Every tower family (tests/clip_families.py): zero-shot features equal open_clip's own on open_clip's own inputs,
one training step of each supported method, fast and full text paths agree, unsupported methods are refused early."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_families import ARCHITECTURES, reduced_clip, tokenizer_for
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from prompt_steps import build_prompted

from dapt_lightning.data.transforms import ImagePreprocessing, build_transform
from dapt_lightning.losses import dapt_loss
from dapt_lightning.methods import PromptTuning, list_methods, method_class
from dapt_lightning.methods.compatibility import method_refusal, usable_methods
from dapt_lightning.model.clip import clip_preprocessing
from dapt_lightning.model.prompted_clip import PromptedCLIP

CLASSNAMES = ["red fox", "golden retriever", "sunflower"]
TEMPLATE = "a photo of a {}."
KEYS = list(ARCHITECTURES)
# Which families take visual prompts, stated here rather than read back from the code under test.
TAKES_VISUAL_PROMPTS = {"vit-b-32-openai", "vit-l-14-openai", "vit-b-32-laion", "vit-l-14-clipa", "siglip", "eva02"}
# Deep prompts (IVLP, MaPLe, PromptSRC) replace tokens between open_clip's own VisionTransformer blocks only.
TAKES_DEEP_PROMPTS = {"vit-b-32-openai", "vit-l-14-openai", "vit-b-32-laion", "vit-l-14-clipa"}
TAKES_LORA = {"vit-b-32-openai", "vit-l-14-openai", "vit-b-32-laion"}  # open_clip's plain blocks, causal text
CAUSAL_TEXT = {"vit-b-32-openai", "vit-l-14-openai", "vit-b-32-laion", "eva02", "rn50", "convnext"}


def pictures() -> list[Image.Image]:
    """Two RGB pictures, neither square nor at the model's size, so resize modes differ."""
    generator = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(torch.randint(0, 256, size, generator=generator, dtype=torch.uint8).numpy())
        for size in ((180, 260, 3), (300, 210, 3))
    ]


def open_clip_inputs(key: str) -> torch.Tensor:
    """The pictures through open_clip's own evaluation transform for the architecture and its tag."""
    arch = ARCHITECTURES[key]
    config = open_clip.transform.merge_preprocess_dict(
        PreprocessCfg(), open_clip.get_pretrained_cfg(arch.name, arch.tag)
    )
    config["size"] = reduced_clip(key).visual.image_size
    transform = image_transform_v2(PreprocessCfg(**config), is_train=False)
    return torch.stack([transform(picture) for picture in pictures()])


def prompted(key: str, method: str, **kwargs) -> PromptedCLIP:
    model = reduced_clip(key)
    method_type = method_class(method)
    return build_prompted(
        model,
        CLASSNAMES,
        text_prompts=method_type.uses_text_prompts,
        visual_prompts=method_type.uses_visual_prompts,
        method=method_type if method_type.deep_visual_prompts else None,  # deep prompts: the method itself
        text_tokens=4,
        visual_tokens=3,
        template=TEMPLATE,
        tokenizer=tokenizer_for(key, model),
        **kwargs,
    )


@pytest.mark.parametrize("key", KEYS)
def test_our_test_transform_is_open_clips_for_the_models_pretrained_configuration(key: str) -> None:
    arch = ARCHITECTURES[key]
    preprocessing = ImagePreprocessing(**clip_preprocessing(arch.name, arch.tag))
    ours = torch.stack([build_transform("test", preprocessing)(picture) for picture in pictures()])
    assert torch.equal(ours, open_clip_inputs(key))


def test_siglip_preprocessing_is_its_own_not_openais() -> None:
    preprocessing = clip_preprocessing("ViT-B-16-SigLIP", "webli")
    assert (preprocessing["mean"], preprocessing["std"]) == ((0.5,) * 3, (0.5,) * 3)
    assert preprocessing["resize_mode"] == "squash"
    assert clip_preprocessing("ViT-B-16", "openai")["mean"] == (0.48145466, 0.4578275, 0.40821073)


@pytest.mark.parametrize("key", KEYS)
def test_zero_shot_features_equal_open_clips_encoders(key: str) -> None:
    model = reduced_clip(key)
    images = open_clip_inputs(key)
    zero_shot = prompted(key, "zeroshot")
    with torch.no_grad():
        ours_image = zero_shot.encode_image(images, use_prompts=False)
        ours_text = zero_shot.encode_template(TEMPLATE)
        reference_image = F.normalize(model.encode_image(images), dim=-1)
        tokens = tokenizer_for(key, model)([TEMPLATE.format(name) for name in CLASSNAMES])
        reference_text = F.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(ours_image, reference_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_text, reference_text, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_families_take_visual_prompts_as_stated(key: str) -> None:
    methods = [method.name for method in usable_methods(reduced_clip(key))]
    text_only = [name for name in list_methods() if not method_class(name).uses_visual_prompts]
    expected = list_methods() if key in TAKES_VISUAL_PROMPTS else text_only
    if key not in TAKES_LORA:
        expected = [name for name in expected if not method_class(name).adapts_attention]
    if key not in TAKES_DEEP_PROMPTS:
        expected = [name for name in expected if not method_class(name).deep_visual_prompts]
    assert {"zeroshot", "coop", "cocoop", "kgcoop"} <= set(text_only)
    assert methods == expected


@pytest.mark.parametrize("key", sorted(TAKES_VISUAL_PROMPTS))
def test_prompt_insertion_path_with_no_prompts_is_the_towers_own_forward(key: str) -> None:
    """The path that inserts prompts, given none, computes exactly the tower's own features: inserting cannot have
    dropped or reordered a step of the tower."""
    model = reduced_clip(key)
    tower = prompted(key, "vpt").image_tower
    images = open_clip_inputs(key)
    with torch.no_grad():
        inserted = tower(images, torch.zeros(0, tower.width))
        torch.testing.assert_close(inserted, model.visual(images), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tower(images, torch.randn(3, tower.width)), inserted, atol=1e-4)


@pytest.mark.parametrize("key", KEYS)
def test_every_tower_gives_the_linear_probe_and_tip_adapter_its_plain_features(key: str) -> None:
    """Without prompts the tower is open_clip's own image encoder: what the feature cache of the linear probe and
    Tip-Adapter stores, so both run on every family."""
    model = reduced_clip(key)
    tower = prompted(key, "zeroshot").image_tower
    images = open_clip_inputs(key)
    with torch.no_grad():
        torch.testing.assert_close(tower(images, None), model.visual(images), rtol=1e-5, atol=1e-6)
    assert method_refusal(method_class("linear_probe"), ARCHITECTURES[key].name) is None
    assert method_refusal(method_class("tip_adapter"), ARCHITECTURES[key].name) is None


@pytest.mark.parametrize("key", KEYS)
def test_clip_lora_adapts_every_family_with_plain_blocks_and_refuses_the_others(key: str) -> None:
    arch = ARCHITECTURES[key]
    lora = method_class("CLIPLoRA")
    refusal = method_refusal(lora, arch.name)
    clip = reduced_clip(key)
    if refusal is not None:
        assert "\n" not in refusal and refusal.startswith("--model CLIPLoRA adapts q/k/v of every attention block")
        assert lora not in usable_methods(clip)
        return
    method = lora(clip_name=arch.name, pretrained=None, dropout=0.0)
    method.model = method.build_model(clip, CLASSNAMES, tokenizer_for(key, clip))
    method.build_state(len(CLASSNAMES), method.model.text_tower.output_dim)
    with torch.no_grad():
        for adapter in method.lora.modules():
            if hasattr(adapter, "B"):
                adapter.B.normal_(0.0, 0.1)
    images = open_clip_inputs(key)
    logits, _, _ = method.forward_features(images)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in method.lora.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():  # the adapters change the image features
        plain = F.normalize(clip.visual(images), dim=-1)
        assert not torch.allclose(method.model.encode_image(images), plain, atol=1e-4)


@pytest.mark.parametrize(
    ("key", "method"),
    # The methods that learn prompts; the linear probe and Tip-Adapter learn on the tower's plain output, which the
    # tower tests above compare with open_clip's own for every family.
    [(key, method) for key in KEYS for method in list_methods() if issubclass(method_class(method), PromptTuning)],
)
def test_one_training_step_of_each_method(key: str, method: str) -> None:
    supported = method_class(method) in usable_methods(reduced_clip(key))
    if not supported:
        with pytest.raises(ValueError, match="takes no (deep )?visual prompts"):
            prompted(key, method)
        return
    torch.manual_seed(1)
    model = prompted(key, method)
    parameters = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in parameters]
    images = open_clip_inputs(key)
    labels = torch.tensor([0, 2])
    logits, image_features, text_features = model(images)
    prototypes = F.normalize(torch.randn(len(CLASSNAMES), text_features.shape[1]), dim=-1)
    terms = dapt_loss(logits, labels, image_features, text_features, prototypes, 10.0, 0.01, 2.0)
    torch.optim.SGD(parameters, lr=0.1).zero_grad()
    terms.total.backward()
    torch.optim.SGD(parameters, lr=0.1).step()
    assert parameters and all(p.grad is not None and torch.isfinite(p.grad).all() for p in parameters)
    assert all(not torch.equal(p, b) for p, b in zip(parameters, before, strict=True))


@pytest.mark.parametrize("key", KEYS)
def test_fast_and_full_text_paths_agree_where_both_apply(key: str) -> None:
    torch.manual_seed(2)
    full = prompted(key, "coop", text_encoding="full")
    fast = prompted(key, "coop", text_encoding="auto")
    fast.load_state_dict(full.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_text(), full.encode_text(), rtol=1e-5, atol=1e-6)
    if key in CAUSAL_TEXT:
        assert fast.text_encoder.name == "shared_prefix"
    else:  # bidirectional: every token reaches the pooled one, so only the full path is exact
        assert fast.text_encoder.name == "full"
        with pytest.raises(ValueError, match="bidirectional"):
            prompted(key, "coop", text_encoding="truncated")


def test_context_goes_where_the_tokenizer_puts_the_first_word() -> None:
    clip_layout = prompted("vit-b-32-openai", "coop").text_prompt
    siglip_layout = prompted("siglip", "coop").text_prompt
    assert clip_layout.context_start == 1  # after CLIP's start-of-text token
    assert siglip_layout.context_start == 0  # SigLIP's tokenizer has no start token
    # SigLIP pools its last position; CLIP its end-of-text token, right after "{context} {name} ."
    assert siglip_layout.pool_positions.tolist() == [63] * len(CLASSNAMES)
    name_lengths = [len(name.split()) for name in CLASSNAMES]
    assert clip_layout.pool_positions.tolist() == [1 + 4 + n + 1 for n in name_lengths]


@pytest.mark.parametrize("key", ["rn50", "convnext"])
def test_visual_prompt_methods_are_refused_from_the_config_in_one_line(key: str) -> None:
    arch = ARCHITECTURES[key]
    for name in ("VPT", "CoOpVPT", "DAPT"):
        message = method_refusal(method_class(name), arch.name)
        assert message is not None and "\n" not in message
        assert message.startswith(f"--model {name} needs visual prompts")
        assert message.endswith(f"With {arch.name} use: ZeroShotCLIP, LinearProbe, CoOp, CoCoOp, KgCoOp, TipAdapterF.")
        assert method_refusal(method_class(name), arch.name, reduced_clip(key)) is not None
    assert method_refusal(method_class("CoOp"), arch.name) is None


def test_rotary_towers_give_prompt_tokens_the_identity_rotation() -> None:
    """EVA-02: our path (identity rows prepended to the rotary embedding) against timm's own blocks told that the
    prompts are prefix tokens (``num_prefix_tokens`` 1 + P: timm leaves prefix tokens unrotated)."""
    model = reduced_clip("eva02")
    tower = prompted("eva02", "vpt").image_tower
    assert tower.family == "timm-rope" and tower.prompt_refusal is None
    trunk = model.visual.trunk
    images = open_clip_inputs("eva02")
    prompts = torch.randn(3, tower.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tower(images, prompts)
        x, rope = trunk._pos_embed(trunk.patch_embed(images))
        x = trunk.norm_pre(x)
        x = torch.cat([x[:, :1], prompts.expand(len(images), -1, -1), x[:, 1:]], dim=1)
        for block in trunk.blocks:
            block.attn.num_prefix_tokens = 1 + len(prompts)
            try:
                x = block(x, rope=rope)
            finally:
                block.attn.num_prefix_tokens = 1
        x = torch.cat([x[:, :1], x[:, 1 + len(prompts) :]], dim=1)
        reference = model.visual.head(trunk.forward_head(trunk.norm(x)))
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ours, model.visual(images), atol=1e-4)  # the prompts act
        torch.testing.assert_close(tower(images, prompts[:0]), model.visual(images), rtol=1e-5, atol=1e-6)
    for name in ("VPT", "DAPT"):
        assert method_refusal(method_class(name), ARCHITECTURES["eva02"].name) is None


def test_hugging_face_text_towers_are_refused_from_the_config() -> None:
    message = method_refusal(method_class("CoOp"), "xlm-roberta-base-ViT-B-32")
    assert message is not None and "Hugging Face transformer xlm-roberta-base" in message
