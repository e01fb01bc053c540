"""`dapt sweep` plans: one folder per run whatever the plan, every variant run, printed commands, sweep-file errors."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path

import pytest
import yaml
from tiny import REPO

from dapt_lightning.arguments import UsageError
from dapt_lightning.experiments.runs import evaluation_folder, last_checkpoint
from dapt_lightning.experiments.sweep import load_sweep, plan, sweep_main
from dapt_lightning.experiments.sweep.results import DG_TARGETS, PAPER_DATASETS

CONFIGS = {name: f"configs/{name}.yaml" for name in ("a", "b", "c", "d")}
VARIANTS = {
    "inter_only": {"method": "dapt", "overrides": {"model.beta_v": 0.0}},
    "wide": {"method": "coop_vpt", "overrides": {"model.text_tokens": 4}},
}


def write_sweep(tmp_path: Path, **sweep: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def generated_sweeps() -> list[dict]:
    """Plans that used to collide: targets that are also datasets, several sources per target, variants, and both
    protocols, all into one runs folder."""
    sweeps = []
    for datasets, targets, methods, protocol in itertools.product(
        (["a"], ["a", "b"], ["a", "b", "c"]),
        ([], ["b"], ["c"], ["b", "c"], ["d"], ["c", "d"]),
        (["zeroshot", "coop"], ["coop", "inter_only"], ["zeroshot", "dapt", "inter_only", "wide"]),
        ("fewshot", "base2new"),
    ):
        if protocol == "base2new" and targets:
            continue
        sweeps.append(
            {
                "runs_dir": "runs",
                "protocol": protocol,
                "datasets": {name: CONFIGS[name] for name in datasets},
                "targets": {name: CONFIGS[name] for name in targets},
                "methods": methods,
                "variants": VARIANTS,
                "shots": [1, 4],
                "seeds": [1, 2],
            }
        )
    return sweeps


def test_every_run_of_every_plan_has_its_own_folder(tmp_path: Path) -> None:
    owner: dict[Path, list[str]] = {}  # folder -> the command that fills it, across every plan
    sweeps = generated_sweeps()
    assert len(sweeps) == 3 * 6 * 3 + 3 * 3
    for index, sweep in enumerate(sweeps):
        runs = plan(load_sweep(write_sweep(tmp_path, **sweep)))
        folders = [step.run_dir for run in runs for step in run.steps]
        assert len(folders) == len(set(folders)), f"sweep {index} files two steps in one folder"
        for run in runs:
            for step in run.steps:
                assert arg(step.spec.command_line(), "--run.dir") == str(step.run_dir)
                assert step.run_dir == run.run_dir or run.run_dir in step.run_dir.parents  # a test lives in its run
                owner.setdefault(step.run_dir, step.spec.command_line())
                words = step.spec.command_line()
                assert owner[step.run_dir] == words, f"{step.run_dir} is a different run in another plan"
            for step in run.steps[1:]:
                assert step.kind in ("new", "transfer")
                if run.method != "zeroshot":  # the prompts tested are this run's, never another's
                    assert arg(step.spec.command_line(), "--ckpt_path") == str(last_checkpoint(run.run_dir))
                if step.kind == "transfer":  # where `dapt test --ckpt_path` of this run puts it by default
                    target = step.run_dir.name
                    assert step.run_dir == evaluation_folder(run.run_dir, "test", target) and target != run.dataset
                    assert arg(step.spec.command_line(), "--config") == CONFIGS[target]
                else:
                    assert step.run_dir == evaluation_folder(run.run_dir, "test", run.dataset, "new")
                    assert arg(step.spec.command_line(), "--data.subsample") == "new"
        # Every (dataset, method, shots, seed) of the grid is run exactly once.
        expected = {
            (dataset, label, shots if label != "zeroshot" else 0, seed if label != "zeroshot" else 1)
            for dataset in sweep["datasets"]
            for label in [*sweep["methods"], *(v for v in VARIANTS if v not in sweep["methods"])]
            for shots in sweep["shots"]
            for seed in sweep["seeds"]
        }
        assert sorted((r.dataset, r.label, r.shots, r.seed) for r in runs) == sorted(expected)
        expected_tests = {(r.dataset, t) for r in runs for t in sweep["targets"] if t != r.dataset}
        assert {(r.dataset, s.run_dir.name) for r in runs for s in r.steps if s.kind == "transfer"} == expected_tests


def test_issue_example_pets_to_eurosat_no_longer_replaces_eurosat(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        runs_dir="runs",
        datasets={"oxford_pets": "configs/oxfordpets.yaml", "eurosat": "configs/eurosat.yaml"},
        targets={"eurosat": "configs/eurosat.yaml"},
        methods=["coop"],
        shots=[1],
        seeds=[1],
    )
    pets, eurosat = plan(load_sweep(sweep))
    assert [s.run_dir for s in pets.steps] == [
        Path("runs/oxford_pets/coop/1shots/seed1"),
        Path("runs/oxford_pets/coop/1shots/seed1/test/eurosat"),
    ]
    assert [s.run_dir for s in eurosat.steps] == [Path("runs/eurosat/coop/1shots/seed1")]  # its own test, no copy


def test_variants_all_run_unless_the_file_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_sweep(
        tmp_path,
        runs_dir=str(tmp_path / "runs"),
        datasets={"oxford_pets": "configs/oxfordpets.yaml"},
        methods=["coop", "dapt"],
        variants={
            "dapt_inter_only": {"method": "dapt", "overrides": {"model.beta_v": 0.0}},
            "dapt_intra_only": {"method": "dapt", "overrides": {"model.beta_t": 0.0}},
            "dapt_lr20": {"method": "dapt", "overrides": {"model.lr": 20}, "skip": "diverges at 16 shots"},
        },
        shots=[16],
        seeds=[1],
    )
    runs = plan(load_sweep(sweep))
    assert [run.label for run in runs] == ["coop", "dapt", "dapt_inter_only", "dapt_intra_only"]
    assert "--model.beta_v 0.0" in runs[2].command() and "--run.label dapt_inter_only" in runs[2].command()
    assert sweep_main([str(sweep), "--list"]) == 0
    out = capsys.readouterr().out
    assert "not run  variant dapt_lr20: diverges at 16 shots" in out
    assert "dapt_intra_only 16 shots seed 1" in out and "4 runs: 0 done, 0 running, 0 failed, 4 todo" in out


def test_shipped_fewshot_sweep_runs_its_ablations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep("configs/sweeps/fewshot.yaml")
    runs = plan(sweep)
    labels = {run.label for run in runs}
    assert {"dapt_inter_only", "dapt_intra_only"} <= labels
    # 11 datasets x (zero-shot once + (12 methods + 2 variants) x 5 shot counts x 3 seeds)
    assert len(runs) == 11 * (1 + 14 * 5 * 3)
    lora = next(run for run in runs if run.label == "clip_lora")
    assert lora.steps[0].spec.configs[-1] == "configs/methods/clip_lora.yaml"  # its official settings, composed last


def test_printed_commands_one_line_per_run_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write_sweep(
        tmp_path,
        runs_dir="runs",
        datasets={"oxford_pets": "configs/oxfordpets.yaml"},
        shots=[1, 16],
        seeds=[1, 2, 3],
        methods=["zeroshot", "coop", "no_inter"],
        variants={"no_inter": {"method": "dapt", "overrides": {"model.beta_t": 0.0}}},
        targets={"eurosat": {"config": "configs/eurosat.yaml", "overrides": {"data.num_workers": 2}}},
    )
    runs = plan(load_sweep(sweep))
    assert len(runs) == 1 + 2 * 2 * 3  # zero-shot once per dataset
    assert sweep_main([str(sweep), "--print_commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [run.command() for run in runs]  # line K is run K: `--index K` of a job array runs line K
    steps = [[shlex.split(part) for part in line.split(" && ")] for line in lines]
    assert steps[0][0][:4] == ["dapt", "test", "--config", "configs/oxfordpets.yaml"] and "zeroshot" in lines[0]
    assert all(line_steps[0][:2] == ["dapt", "fit"] for line_steps in steps[1:])
    assert all(line_steps[0][-2:] == ["--ckpt_path", "last"] for line_steps in steps[1:])  # a rerun resumes
    last = steps[-1]
    assert "--model.beta_t" in last[0] and arg(last[0], "--run.label") == "no_inter"
    assert arg(last[1], "--config") == "configs/eurosat.yaml" and arg(last[1], "--data.num_workers") == "2"
    assert arg(last[1], "--model.beta_t") == "0.0"  # the variant's settings shape the prompts being tested
    with pytest.raises(UsageError, match="--index must be in"):
        sweep_main([str(sweep), "--index", str(len(runs))])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["prograd"]}, "method 'prograd' is neither"),
        ({"method_configs": {"coop": {"a": "c.yaml"}}}, "method_configs.coop must be a config path, or a mapping"),
        ({"shots": [0]}, "'shots' must be a list of integers >= 1"),
        ({"seeds": [1, 1]}, "'seeds' lists a value twice"),
        ({"protocol": "b2n"}, "protocol must be 'fewshot' or 'base2new'"),
        ({"protocol": "base2new", "targets": {"b": "b.yaml"}}, "'targets' needs protocol fewshot"),
        ({"variants": {"v": {"method": "dapt", "skip": ""}}}, r"variants.v.skip must say why"),
        ({"variants": {"v": {"method": "dapt", "override": {}}}}, r"variants.v must be \{method"),
        ({"variants": {"coop": {"method": "dapt"}}}, "shadows the method 'coop'"),
        ({"targets": {"b": {"path": "b.yaml"}}}, "targets.b must be a config path"),
        ({"epochs": 3}, "unknown key"),
        (
            {"protocol": "base2new", "methods": ["coop", "tip_adapter"]},
            r"method 'tip_adapter' \(TipAdapterF\) classifies only the classes it was trained on, so protocol base2new",
        ),
        (
            {"targets": {"b": "b.yaml"}, "variants": {"probe": {"method": "LinearProbe"}}, "methods": ["probe"]},
            r"method 'probe' \(LinearProbe\) classifies only .* so 'targets' \(cross-dataset\) cannot test it",
        ),
    ],
)
def test_sweep_file_errors_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    sweep = {"datasets": {"a": "a.yaml"}, "methods": ["coop"], **change}
    path = write_sweep(tmp_path, **sweep)
    with pytest.raises(ValueError, match=message) as error:
        load_sweep(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_parse_and_name_existing_configs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    sweep = load_sweep(path)
    runs = plan(sweep)
    assert runs and all(run.steps for run in runs)
    configs = {path for run in runs for step in run.steps for path in step.spec.configs if path.startswith("configs/")}
    missing = sorted(c for c in configs if not (REPO / c).is_file())
    assert not missing, f"{path.name} names configs that do not exist: {missing}"


def test_shipped_transfer_sweeps_cover_the_papers_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    cross = load_sweep("configs/sweeps/cross_dataset.yaml")
    assert list(cross["datasets"]) == ["imagenet"] and tuple(cross["targets"]) == PAPER_DATASETS[1:]
    shift = load_sweep("configs/sweeps/domain_generalisation.yaml")
    assert list(shift["datasets"]) == ["imagenet"] and tuple(shift["targets"]) == DG_TARGETS
    for sweep in (cross, shift):
        assert all(len(run.steps) == 1 + len(sweep["targets"]) for run in plan(sweep))  # every run, every target
