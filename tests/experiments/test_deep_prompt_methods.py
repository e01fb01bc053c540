"""IVLP, MaPLe and PromptSRC as a user runs them: `dapt fit` from a dataset's config and the method's config of
official settings, `dapt test` of the checkpoint, GPA's flags, resuming, tuning and the shipped sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from fake_datasets import make_fake_dataset
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from tiny import REPO, SIZES, TINY_CONFIG, exit_status, read_test_metrics, run_cli, run_dapt, tiny_args

from dapt_lightning.callbacks.gpa import GaussianPromptAggregation
from dapt_lightning.cli import main
from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.experiments.sweep import summarize, sweep_main
from dapt_lightning.experiments.sweep.plan import load_sweep, plan
from dapt_lightning.experiments.tune.request import parse_request
from dapt_lightning.experiments.tune.study import StudyFolder
from dapt_lightning.methods import IVLP, MaPLe, PromptSRC
from dapt_lightning.methods.compatibility import method_refusal
from dapt_lightning.methods.promptsrc import teacher_templates

# ViT-B/16 on the real dataset becomes the tiny CLIP on a fake one; three epochs of the method's own settings.
TINY = ["--model.clip_name", "dapt-tiny", "--model.pretrained", "null", "--trainer.max_epochs", "3"]
TINY += ["--data.num_workers", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
PETS = str(REPO / "configs/oxfordpets.yaml")


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_fake_dataset("oxford_pets", root)
    return root


def learned(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    ("config", "method", "settings", "stored"),
    [
        ("ivlp", "IVLP", {"lr": 0.0025, "text_tokens": 4, "visual_tokens": 4, "text_depth": 9}, 3 + 3),
        ("maple", "MaPLe", {"lr": 0.0035, "text_tokens": 2, "depth": 9}, 3 + 2 * 3),
        ("promptsrc", "PromptSRC", {"lr": 0.0025, "text_loss_weight": 25.0, "gpa_mean": 15.0}, 3 + 3),
    ],
)
def test_each_deep_prompt_method_trains_tests_and_keeps_only_its_prompts(
    pets_root: Path, tmp_path: Path, config: str, method: str, settings: dict, stored: int
) -> None:
    configs = ["--config", PETS, "--config", str(REPO / f"configs/methods/{config}.yaml")]
    run = tmp_path / "run"
    record = run_cli(["fit", *configs, *TINY, "--data.root", str(pets_root), "--run.dir", str(run)])
    model = record.model
    assert type(model).__name__ == method and record.record["method"] == config
    assert {key: model.hparams[key] for key in settings} == settings
    assert record.datamodule.batch_size == 4
    # Depth 9 asked of the tiny CLIP's 3 blocks: all 3 are prompted, as upstream does.
    state = learned(run / "checkpoints" / "last.ckpt")
    assert len(state) == stored and all(not key.startswith("model.clip.") for key in state)
    assert model.model.text_encoder.name == "truncated"  # the fast exact path; no shared prefix for deep prompts
    accuracy = record.record["test"]["test/acc"]
    assert 0 <= accuracy <= 1
    if method == "PromptSRC":
        fit = record.record["fit"]
        terms = fit["train/loss_ce"] + fit["train/loss_kl"] + 25 * fit["train/loss_text_l1"]
        assert fit["train/loss"] == pytest.approx(terms + 10 * fit["train/loss_image_l1"], rel=1e-5)

    again = tmp_path / "test"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    tested = run_cli(["test", "--ckpt_path", ckpt, "--data.root", str(pets_root), "--run.dir", str(again)])
    assert type(tested.model).__name__ == method
    assert tested.record["test"]["test/acc"] == accuracy  # the checkpoint's prompts, exactly


def test_gpas_flags_change_which_epochs_prompts_are_kept(
    pets_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, isolated_env: Path
) -> None:
    configs = ["--config", PETS, "--config", str(REPO / "configs/methods/promptsrc.yaml")]
    kept = {}
    for mean in (1, 3):
        run = tmp_path / f"mean{mean}"
        flags = ["--model.gpa_mean", str(mean), "--model.gpa_std", "0.05", "--model.lr", "0.5"]
        record = run_cli(["fit", *configs, *TINY, *flags, "--data.root", str(pets_root), "--run.dir", str(run)])
        gpa = [c for c in record.trainer.callbacks if isinstance(c, GaussianPromptAggregation)]
        assert [(c.mean, c.std) for c in gpa] == [(mean, 0.05)]
        kept[mean] = learned(run / "checkpoints" / "last.ckpt")
    # The teacher's text features were computed by the first run and read from the cache by the second.
    (cached,) = (isolated_env / "promptsrc").glob("teacher-*.safetensors")
    model = record.model
    computed = torch.stack([model.model.template_features(t) for t in teacher_templates()]).mean(dim=0)
    assert torch.equal(load_file(cached)["teacher_text"], computed) and torch.equal(model.teacher_text, computed)
    assert "PromptSRC: the teacher's class text features, from the cache" in (run / "run.log").read_text()
    # std 0.05 puts all the weight on one epoch: the first one's prompts, or the last one's.
    context = "model.text_prompt.txt_ctx"
    assert not torch.allclose(kept[1][context], kept[3][context])
    bad = tmp_path / "bad"
    args = ["--model.gpa_std", "0", "--data.root", str(pets_root), "--run.dir", str(bad)]
    status = exit_status(["fit", *configs, *TINY, *args])
    assert status != 0 and "--model.gpa_std must be > 0, got 0" in capsys.readouterr().err
    assert not bad.exists()


class StopAtEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("interrupted")


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(index)), index % 3, index


def promptsrc_fit(folder: Path, stop_at: int | None = None, ckpt_path: str | None = None) -> PromptSRC:
    torch.manual_seed(0)
    method = PromptSRC(
        classnames=["cat", "dog", "fox"], clip_name="dapt-tiny", pretrained=None, gpa_mean=2.0, gpa_std=1.0, lr=0.2
    )
    callbacks = [ModelCheckpoint(dirpath=folder, save_last=True)] + ([StopAtEpoch(stop_at)] if stop_at else [])
    trainer = L.Trainer(max_epochs=4, callbacks=callbacks, logger=False, enable_progress_bar=False)
    trainer.fit(method, torch.utils.data.DataLoader(Images(), batch_size=4), ckpt_path=ckpt_path)
    return method


def test_an_interrupted_promptsrc_run_resumes_to_the_same_aggregated_prompts(tmp_path: Path) -> None:
    reference = promptsrc_fit(tmp_path / "reference")
    with pytest.raises(RuntimeError, match="interrupted"):
        promptsrc_fit(tmp_path / "interrupted", stop_at=2)
    last = tmp_path / "interrupted" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    gpa_state = [v for k, v in saved["callbacks"].items() if k.startswith("GaussianPromptAggregation")]
    assert len(gpa_state) == 1 and gpa_state[0]["epochs_added"] == 2  # the running sum travels in the checkpoint
    assert set(saved["state_dict"]) == {k for k, p in reference.named_parameters() if p.requires_grad}
    resumed = promptsrc_fit(tmp_path / "interrupted", ckpt_path=str(last))
    for name, parameter in reference.named_parameters():
        if parameter.requires_grad:
            assert torch.equal(dict(resumed.named_parameters())[name], parameter), name


def test_each_method_tunes_its_own_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)

    def searched(model: str) -> list[str]:
        return [param.name for param in parse_request(["--config", PETS, "--model", model]).space.params]

    assert searched("IVLP") == searched("MaPLe") == ["model.lr"]
    assert searched("PromptSRC") == ["model.lr", "model.text_loss_weight", "model.image_loss_weight"]


def test_the_shipped_sweeps_run_each_with_its_official_config() -> None:
    def configs_of(sweep: str, method: str) -> dict[str, str]:
        runs = plan(load_sweep(REPO / f"configs/sweeps/{sweep}.yaml"))
        return {run.dataset: run.steps[0].spec.configs[-1] for run in runs if run.method == method and run.seed == 1}

    fewshot = configs_of("fewshot", "promptsrc")
    assert fewshot["oxford_pets"] == "configs/methods/promptsrc_fewshot.yaml"  # GPA 30/30
    assert fewshot["dtd"] == fewshot["eurosat"] == "configs/methods/promptsrc_fewshot_late.yaml"  # GPA 45/5
    late = yaml.safe_load((REPO / fewshot["dtd"]).read_text())["model"]["init_args"]
    assert (late["gpa_mean"], late["gpa_std"], late["text_depth"]) == (45.0, 5.0, 9)
    assert set(configs_of("base2new", "maple").values()) == {"configs/methods/maple.yaml"}
    assert set(configs_of("cross_dataset", "maple").values()) == {"configs/methods/maple_cross_dataset.yaml"}
    assert set(configs_of("domain_generalisation", "promptsrc").values()) == {
        "configs/methods/promptsrc_cross_dataset.yaml"
    }


@pytest.mark.slow
def test_a_base_to_new_sweep_runs_the_three_and_its_table_names_them(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    shipped = yaml.safe_load((REPO / "configs/sweeps/base2new.yaml").read_text())
    methods = ["ivlp", "maple", "promptsrc"]
    sweep = {
        "runs_dir": str(tmp_path / "runs"),
        "protocol": "base2new",
        "datasets": {"synthetic": str(TINY_CONFIG)},
        "shots": [1],
        "seeds": [1],
        "methods": methods,
        "method_configs": {m: str(REPO / shipped["method_configs"][m]) for m in methods},  # the official settings
        "overrides": {"data.root": str(root), "trainer.max_epochs": 2, "data.num_workers": 0},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert sweep_main([str(path), "--workers", "1"]) == 0
    written = summarize(tmp_path / "runs", tmp_path / "results")
    table = written["base2new"].read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row for row in rows if row != "method"] == methods * 2  # the average and the dataset's own section
    for method in methods:  # each tested on the base classes and, with the same prompts, on the new ones
        run = tmp_path / "runs" / "synthetic" / method / "1shots-base" / "seed1"
        new = json.loads((run / "test" / "synthetic-new" / "metrics.json").read_text())
        assert new["num_classes"] == 12 and new["method"] == method and new["trained_on"]["subsample"] == "base"


@pytest.mark.slow
def test_promptsrc_tunes_end_to_end(pets_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = ["--model.clip_name", "dapt-tiny", "--model.pretrained", "null", "--trainer.max_epochs", "2"]
    tiny += ["--data.batch_size", "10", "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    tiny += ["--embedding_plots.enabled", "false", "--data.root", str(pets_root)]
    assert main(["tune", "--config", PETS, "--model", "PromptSRC", "--trials", "2", *tiny]) in (0, None)
    assert "PromptSRC's search space" in capsys.readouterr().out
    summary = json.loads(StudyFolder(Path("tuned"), "oxfordpets").summary.read_text())
    assert set(summary["settings"]) == {"model.lr", "model.text_loss_weight", "model.image_loss_weight"}


def test_towers_that_take_no_deep_prompts_are_refused_in_one_line() -> None:
    for method in (IVLP, MaPLe, PromptSRC):
        refusal = method_refusal(method, "ViT-B-16-SigLIP")
        assert refusal.startswith(f"--model {method.__name__} needs deep visual prompts, but in ViT-B-16-SigLIP")
        assert "\n" not in refusal and "With ViT-B-16-SigLIP use:" in refusal and "VPT" in refusal
        assert method_refusal(method, "RN50").startswith(f"--model {method.__name__} needs visual prompts")
        assert method_refusal(method, "ViT-B-16") is None


@pytest.mark.slow
def test_a_promptsrc_checkpoint_evaluates_exactly_in_ddp_and_trains_in_bf16(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Two processes count every test image once and predict what one predicts, under bf16-mixed (fp32 DDP
    evaluation shares this code: tests/experiments/test_reliability.py)."""
    bf16 = ["--model", "PromptSRC", "--model.gpa_mean", "1", "--trainer.precision", "bf16-mixed"]
    fit = tmp_path / "fit"
    record = run_cli(["fit", *tiny_args(synthetic_root, fit), *bf16, "--trainer.max_epochs", "2"])
    assert record.record["settings"]["trainer"]["precision"] == "bf16-mixed"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record.record["fit"].items() if k.startswith("train/"))
    flags = ["--ckpt_path", str(fit / "checkpoints" / "last.ckpt"), "--trainer.precision", "bf16-mixed"]
    one = run_cli(["test", *tiny_args(synthetic_root, tmp_path / "one"), *flags]).record["test"]
    two_processes = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    run_dapt(["test", *tiny_args(synthetic_root, tmp_path / "two"), *flags, *two_processes])
    two = read_test_metrics(tmp_path / "two")
    assert two["test/acc"] == one["test/acc"] and two["test/macro_f1"] == one["test/macro_f1"]
