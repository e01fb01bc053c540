"""Running sweeps: exclusive claims, run statuses, failures that stop nothing, SIGTERM, two concurrent workers into
one tree (end to end, with the tables recomputed from every metrics.json), and Slurm through submitit."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from tiny import REPO, SIZES, TINY_CONFIG, write_subset_dataset

from dapt_lightning.arguments import UsageError, parse
from dapt_lightning.callbacks.run_files import read_metrics
from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.experiments.claims import ERROR_FILE, RUNNING_FILE, claim_record, claimed, describe, is_stale
from dapt_lightning.experiments.run import RunInterrupted
from dapt_lightning.experiments.sweep import launch_slurm, load_sweep, plan, run_status, summarize, sweep_main
from dapt_lightning.experiments.sweep.command import _slurm_parameters, build_parser
from dapt_lightning.experiments.sweep.launch import DONE, execute_run

REGISTERED = {"synthetic": "synthetic", "subset": "custom"}
"""The end-to-end test's dataset names in its sweeps -> the registered dataset each one reads."""
QUIET = {"trainer.logger": False, "trainer.enable_progress_bar": False, "embedding_plots.enabled": False}


def write_sweep(path: Path, **sweep: object) -> Path:
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _try_claim(run_dir: str, barrier: multiprocessing.synchronize.Barrier, won: multiprocessing.Queue) -> None:
    barrier.wait()
    with claimed(Path(run_dir)) as ours:
        won.put(ours)
        if ours:
            time.sleep(0.5)  # hold it while the others try


def race(run_dir: Path, workers: int = 6) -> list[bool]:
    """``workers`` processes try to claim ``run_dir`` at the same instant; returns who got it."""
    context = multiprocessing.get_context("fork")  # the children only touch files
    barrier, won = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_try_claim, args=(str(run_dir), barrier, won)) for _ in range(workers)]
    for process in processes:
        process.start()
    results = [won.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return results


@contextmanager
def live_process() -> Iterator[int]:
    """The pid of a process that lives until the block ends (a worker holding a claim)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_one_claim_per_run_even_when_workers_race(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert sorted(race(run_dir)) == [False] * 5 + [True]
    assert not (run_dir / RUNNING_FILE).exists()  # released
    # A claim by a dead process on this host is stale: exactly one of the racing workers takes it over.
    (run_dir / RUNNING_FILE).write_text(json.dumps(claim_record(dead_pid())))
    assert sorted(race(run_dir)) == [False] * 5 + [True]
    # A live process's claim, or one from another host (which cannot be checked), is respected.
    with live_process() as pid:
        for claim in (claim_record(pid), {**claim_record(), "host": "elsewhere"}):
            (run_dir / RUNNING_FILE).write_text(json.dumps(claim))
            with claimed(run_dir) as ours:
                assert not ours
            assert json.loads((run_dir / RUNNING_FILE).read_text()) == claim
        # The pid alive but started later than the claim says: a reused pid, so the claim is stale.
        (run_dir / RUNNING_FILE).write_text(json.dumps({**claim_record(pid), "process_start": "1"}))
        with claimed(run_dir) as ours:
            assert ours and json.loads((run_dir / RUNNING_FILE).read_text())["pid"] == os.getpid()


def test_statuses_and_a_failed_run_does_not_stop_the_others(
    tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        runs_dir=str(tmp_path / "runs"),
        datasets={
            "typo": {"config": str(TINY_CONFIG), "overrides": {"model.no_such_setting": 1}},
            "missing": {"config": str(TINY_CONFIG), "overrides": {"data.dataset": "dtd"}},  # not in the data root
            "synthetic": str(TINY_CONFIG),
            "later": str(TINY_CONFIG),
        },
        methods=["zeroshot"],
        overrides={"data.root": str(synthetic_root), **QUIET},
    )
    typo, missing, good, later = plan(load_sweep(sweep))
    assert sweep_main([str(sweep), "--index", "0"]) == 1
    assert sweep_main([str(sweep), "--index", "1"]) == 1
    assert sweep_main([str(sweep), "--index", "2"]) == 0
    assert read_metrics(good.run_dir / "metrics.json")["dataset"] == "synthetic"
    assert not any(run.run_dir.joinpath(RUNNING_FILE).exists() for run in (typo, missing, good))
    typo_error = (typo.run_dir / ERROR_FILE).read_text()
    assert typo_error.startswith("UsageError: unknown setting --model.no_such_setting")
    assert "command: dapt test --config" in typo_error and "Traceback" in typo_error
    summary = (missing.run_dir / ERROR_FILE).read_text().split("\n")[0]
    assert "dtd" in summary and str(synthetic_root) in summary

    # A live worker's claim: --list says running, and a sweep leaves that run to it.
    with live_process() as pid:
        (missing.run_dir / RUNNING_FILE).write_text(json.dumps(claim_record(pid)))
        capsys.readouterr()
        assert sweep_main([str(sweep), "--list"]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert listed[0].split()[:2] == ["0", "failed"] and "UsageError: unknown setting --model.no_such" in listed[0]
        assert str(typo.run_dir / ERROR_FILE) in listed[0]
        assert listed[1].split()[:2] == ["1", "running"] and f"pid {pid} on {socket.gethostname()}" in listed[1]
        assert listed[2].split()[:2] == ["2", "done"] and listed[3].split()[:2] == ["3", "todo"]
        assert listed[-1] == "4 runs: 1 done, 1 running, 1 failed, 1 todo"
        assert execute_run(missing) == "busy" and (missing.run_dir / RUNNING_FILE).exists()
    # Its worker died: the run is failed (stale), and the next sweep takes it over (its claim goes), runs the rest,
    # and exits 1.
    status = run_status(missing)
    assert status.state == "failed" and f"pid {pid}" in status.detail
    assert sweep_main([str(sweep)]) == 1
    assert later.finished and not typo.finished and good.finished
    assert (missing.run_dir / ERROR_FILE).is_file() and not (missing.run_dir / RUNNING_FILE).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_is_recorded_and_releases_the_claim(
    tmp_path: Path, synthetic_root: Path, sig: signal.Signals
) -> None:
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        runs_dir=str(tmp_path / "runs"),
        datasets={"synthetic": str(TINY_CONFIG)},
        methods=["coop"],
        shots=[1],
        seeds=[1],
        overrides={"data.root": str(synthetic_root), "trainer.max_epochs": 500, **QUIET},
    )
    (run,) = plan(load_sweep(sweep))
    marker = run.run_dir / RUNNING_FILE

    def terminate_when_running() -> None:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # well into the fit
        if marker.exists():
            os.kill(os.getpid(), sig)  # SIGTERM: what Slurm sends at the time limit; SIGINT: Ctrl-C

    thread = threading.Thread(target=terminate_when_running)
    thread.start()
    with pytest.raises(RunInterrupted):
        execute_run(run)
    thread.join()
    assert not marker.exists()
    summary = (run.run_dir / ERROR_FILE).read_text().split("\n")[0]
    assert summary == f"interrupted by {sig.name} (a rerun resumes from the last checkpoint)"
    assert run_status(run).state == "failed" and not run.finished


def test_a_claim_from_another_host_is_held_unless_slurm_says_its_job_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    claim = {**claim_record(), "host": "elsewhere", "slurm_job": "123"}
    (run_dir / RUNNING_FILE).write_text(json.dumps(claim))
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here: Slurm cannot be asked, so the claim stands
    assert not is_stale(claim) and "Slurm job 123" in describe(claim)
    with claimed(run_dir) as ours:
        assert not ours


def test_slurm_launcher_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = write_sweep(
        tmp_path / "s.yaml", runs_dir=str(tmp_path / "runs"), datasets={"a": "a.yaml"}, methods=["coop"]
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without Slurm's commands (CI's has a test cluster)
    try:
        import submitit  # noqa: F401

        expected = "no `sbatch` on this machine"
    except ImportError:
        expected = "pip install 'dapt_lightning\\[slurm\\]'"
    with pytest.raises(RuntimeError, match=expected):
        sweep_main([str(sweep), "--launcher", "slurm", "--slurm", "timeout_min=60"])


def test_the_readme_slurm_flags_become_submitit_parameters() -> None:
    readme = (REPO / "README.md").read_text().split("## Scale out", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    line = shlex.split(readme.replace("\\\n", " ").strip().splitlines()[0])
    assert line[:3] == ["dapt", "sweep", "configs/sweeps/fewshot.yaml"]
    args = parse(build_parser(), line[2:])
    assert _slurm_parameters(args) == {
        "timeout_min": 720,
        "cpus_per_task": 8,
        "gpus_per_node": 1,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 32,
    }
    more = parse(build_parser(), [*line[2:], "--mem_gb", "64", "--slurm", "slurm_account=ml"])
    assert _slurm_parameters(more) == {**_slurm_parameters(args), "mem_gb": 64, "slurm_account": "ml"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--time_min", "60"], "--time_min: only with --launcher slurm"),
        (["--launcher", "slurm", "--cpus_per_run", "0"], "--cpus_per_run must be >= 1, got 0"),
        (["--launcher", "slurm", "--array_parallelism", "-2"], "--array_parallelism must be >= 1, got -2"),
    ],
)
def test_bad_slurm_flags_are_refused_before_anything_is_submitted(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    sweep = write_sweep(tmp_path / "s.yaml", runs_dir=str(tmp_path / "runs"), datasets={"a": "a.yaml"})
    with pytest.raises(UsageError, match=re.escape(message)):
        sweep_main([str(sweep), *flags])
    assert not (tmp_path / "runs").exists()


# --- end to end -----------------------------------------------------------------------------------------------


def write_tiny_world(tmp_path: Path) -> tuple[Path, dict]:
    """Generated data (the synthetic dataset and a 5-class subset of it as a `custom` dataset), the subset's config,
    and the overrides every run gets: the shipped pre-trained tiny CLIP (so methods, variants and seeds give
    different accuracies, and a mixed-up cell would show), one epoch at a learning rate that moves the prompts."""
    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"].update(dataset="custom", dataset_options=write_subset_dataset(root))
    subset = tmp_path / "subset.yaml"
    subset.write_text(yaml.safe_dump(config))
    overrides = {
        "model.pretrained": "tiny-synthetic",
        "model.lr": 2.0,
        "model.warmup_epochs": 0,  # the one epoch trains at model.lr
        "data.root": str(root),
        "trainer.max_epochs": 1,
        **QUIET,
    }
    return subset, overrides


def markdown_cells(markdown: str) -> dict[tuple[str, str, str], str]:
    """Every cell of every Markdown table: (section, method, column) -> text."""
    cells = {}
    for block in markdown.split("\n### ")[1:]:
        section, *lines = block.splitlines()
        header, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
        for values in rows:  # the |---| separator line does not start with "| "
            for column, text in zip(header[1:], values[1:], strict=True):
                cells[(section, values[0], column)] = text
    return cells


def expected_tables(fewshot_runs: list, b2n_runs: list) -> dict[tuple[str, str, str, str], tuple]:
    """Every number the tables should hold, recomputed from the runs' metrics.json files alone."""

    def acc(folder: Path) -> float:
        return 100 * read_metrics(folder / "metrics.json")["test"]["test/acc"]

    def cell(values: dict[int, float]) -> tuple:
        seeds = sorted(values)
        std = statistics.stdev(values.values()) if len(values) > 1 else None
        return statistics.fmean(values.values()), std, len(seeds), seeds

    def average(cells: list[dict[int, float]]) -> dict[int, float]:
        return {seed: statistics.fmean(c[seed] for c in cells) for seed in cells[0]}

    own: dict[tuple[str, str], dict[int, float]] = {}
    transfer: dict[tuple[str, str], dict[int, float]] = {}
    base: dict[tuple[str, str], dict[int, float]] = {}
    new: dict[tuple[str, str], dict[int, float]] = {}
    for run in fewshot_runs:
        own.setdefault((run.label, run.dataset), {})[run.seed] = acc(run.run_dir)
        for step in run.steps[1:]:
            transfer.setdefault((run.label, step.run_dir.name), {})[run.seed] = acc(step.run_dir)
    for run in b2n_runs:
        base.setdefault((run.label, run.dataset), {})[run.seed] = acc(run.run_dir)
        new.setdefault((run.label, run.dataset), {})[run.seed] = acc(run.steps[1].run_dir)

    expected = {}
    labels = sorted({label for label, _ in own})
    for label in labels:
        per_dataset = [own[(label, d)] for d in ("synthetic", "subset")]
        few_average = cell(average(per_dataset))
        for dataset, values in zip(("synthetic", "subset"), per_dataset, strict=True):
            expected[("fewshot", "1 shots", label, dataset)] = cell(values)
        expected[("fewshot", "1 shots", label, "Average (2)")] = few_average
        xd = "synthetic -> targets, 1 shots"
        expected[("cross_dataset", xd, label, "synthetic (source)")] = cell(own[(label, "synthetic")])
        expected[("cross_dataset", xd, label, "subset")] = cell(transfer[(label, "subset")])
        expected[("cross_dataset", xd, label, "Average (1 targets)")] = cell(transfer[(label, "subset")])
        b, n = cell(base[(label, "synthetic")]), cell(new[(label, "synthetic")])
        h = (2 * b[0] * n[0] / (b[0] + n[0]), None, b[2], b[3])
        for section in ("1 shots, average over 1 datasets", "1 shots, synthetic"):
            expected.update({("base2new", section, label, c): v for c, v in (("Base", b), ("New", n), ("H", h))})
        ablation = "average accuracy: few-shot over 2 datasets, base-to-new over 1 datasets"
        expected[("ablation", ablation, label, "1 shots")] = few_average
        for column, value in (("Base", b), ("New", n), ("H", h)):
            expected[("ablation", ablation, label, f"{column} (1 shots)")] = value
    return expected


def text(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}") + f" (n={n})"


@pytest.mark.slow
def test_two_workers_run_a_sweep_into_one_tree_and_every_table_number_equals_the_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    subset, overrides = write_tiny_world(tmp_path)
    common = {
        "datasets": {"synthetic": str(TINY_CONFIG), "subset": str(subset)},
        "methods": ["coop", "dapt"],
        "variants": {
            "dapt_inter_only": {"method": "dapt", "overrides": {"model.beta_v": 0.0}},
            "dapt_lr_huge": {"method": "dapt", "overrides": {"model.lr": 1e9}, "skip": "diverges; kept as a record"},
        },
        "shots": [1],
        "overrides": overrides,
    }
    fewshot = write_sweep(
        tmp_path / "fewshot.yaml",
        runs_dir=str(tmp_path / "runs" / "fewshot"),
        seeds=[1, 2],
        targets={"subset": str(subset)},  # also a source dataset
        **common,
    )
    base2new = write_sweep(
        tmp_path / "base2new.yaml",
        runs_dir=str(tmp_path / "runs" / "base2new"),
        protocol="base2new",
        seeds=[1],
        **{**common, "datasets": {"synthetic": str(TINY_CONFIG)}},
    )
    fewshot_runs, b2n_runs = plan(load_sweep(fewshot)), plan(load_sweep(base2new))
    assert len(fewshot_runs) == 2 * 3 * 2 and len(b2n_runs) == 3

    assert sweep_main([str(fewshot), "--workers", "2"]) == 0
    assert sweep_main([str(base2new)]) == 0  # one after another, in this process
    assert "variant dapt_lr_huge is not run: diverges; kept as a record" in capsys.readouterr().out

    # Every step of every run has its own folder, holding a record of exactly that run.
    steps = [(run, step) for run in [*fewshot_runs, *b2n_runs] for step in run.steps]
    folders = [step.run_dir for _, step in steps]
    assert len(folders) == len(set(folders)) == len(list((tmp_path / "runs").rglob("metrics.json"))) == 12 + 6 + 6
    for run, step in steps:
        metrics = read_metrics(step.run_dir / "metrics.json")
        assert (metrics["label"], metrics["seed"], metrics["shots"]) == (run.label, run.seed, 1)
        tested = step.run_dir.name if step.kind == "transfer" else run.dataset
        assert metrics["dataset"] == REGISTERED[tested] and metrics["trained_on"]["dataset"] == REGISTERED[run.dataset]
        assert metrics["num_classes"] == (12 if run.subsample == "base" else {"subset": 5, "synthetic": 24}[tested])
    assert not list((tmp_path / "runs").rglob(RUNNING_FILE)) and not list((tmp_path / "runs").rglob(ERROR_FILE))
    # The two workers ran at the same time: some runs' wall-clock intervals overlap.
    spans = sorted(
        (path.stat().st_mtime - read_metrics(path)["elapsed_s"], path.stat().st_mtime)
        for path in (tmp_path / "runs" / "fewshot").rglob("metrics.json")
    )
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))

    results = tmp_path / "results"
    written = summarize(tmp_path / "runs", results)
    expected = expected_tables(fewshot_runs, b2n_runs)
    # The runs differ (else a cell filled from the wrong runs could still match): most few-shot cells are distinct.
    means = [value[0] for key, value in expected.items() if key[0] == "fewshot"]
    assert len({round(mean, 9) for mean in means}) >= len(means) - 2
    for name in ("fewshot", "cross_dataset", "base2new", "ablation"):
        with open(written[f"{name}_csv"]) as handle:
            rows = {(r["table"], r["section"], r["method"], r["column"]): r for r in csv.DictReader(handle)}
        mine = {key: value for key, value in expected.items() if key[0] == name}
        assert set(rows) == set(mine), f"{name}: cells differ from the recomputation"
        for key, (mean, std, n, seeds) in mine.items():
            row = rows[key]
            assert float(row["mean"]) == pytest.approx(mean, abs=1e-9) and int(row["n"]) == n, key
            assert (row["std"] == "") if std is None else float(row["std"]) == pytest.approx(std, abs=1e-9), key
            assert row["seeds"] == " ".join(map(str, seeds))
        cells = markdown_cells(written[name].read_text())
        assert "—" not in cells.values(), f"{name} has a missing cell"
        for (_, section, label, column), (mean, std, n, _) in mine.items():
            assert cells[(section, label, column)] == text(mean, std, n), (name, section, label, column)
    assert written["fewshot_png"].is_file()

    # An interrupted run (checkpoint, no metrics.json) resumes from its checkpoint: --index K runs only run K.
    index = next(
        i for i, run in enumerate(fewshot_runs) if (run.dataset, run.label, run.seed) == ("synthetic", "dapt", 2)
    )
    fit = fewshot_runs[index].run_dir / "metrics.json"
    epochs = read_metrics(fit)["epochs"]
    fit.unlink()
    capsys.readouterr()
    assert sweep_main([str(fewshot), "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert out.count("[sweep] dapt fit") == 1 and "--ckpt_path last" in out and "[sweep] dapt test" not in out
    assert read_metrics(fit)["epochs"] == epochs
    # A finished sweep runs nothing.
    assert sweep_main([str(fewshot)]) == 0
    out = capsys.readouterr().out
    assert "[sweep] 12 runs, 12 finished already" in out and "[sweep] dapt" not in out


@pytest.mark.slow
def test_slurm_launcher_submits_an_array_through_submitit(tmp_path: Path, synthetic_root: Path) -> None:
    pytest.importorskip("submitit")
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        runs_dir=str(tmp_path / "runs"),
        datasets={"synthetic": str(TINY_CONFIG), "again": str(TINY_CONFIG)},
        methods=["zeroshot"],
        overrides={"data.root": str(synthetic_root), **QUIET},
    )
    runs = plan(load_sweep(sweep))
    # submitit's local executor runs each job of the array as a process here, as Slurm would on its nodes.
    outcomes = launch_slurm(runs, tmp_path / "jobs", {"timeout_min": 10}, wait=True, cluster="local")
    assert outcomes is not None and [run.name for run in outcomes[DONE]] == [run.name for run in runs]
    assert all(run.finished for run in runs) and not list((tmp_path / "runs").rglob(RUNNING_FILE))
    assert read_metrics(runs[1].run_dir / "metrics.json")["method"] == "zeroshot"
