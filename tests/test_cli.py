"""The `dapt` entry point: one table of subcommands, listed by `dapt --help`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dapt_lightning.cli import SUBCOMMANDS, main


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    expected = ["fit", "validate", "test", "predict", "data", "sweep", "tune", "export", "serve", "demo"]
    assert listed == expected == list(SUBCOMMANDS)


def test_unknown_subcommand_is_named_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'train'" in err and "sweep" in err


def test_subcommands_reach_their_own_parsers(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("data", "sweep", "tune", "demo", "fit"):
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name


def test_console_script_module_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dapt_lightning.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "demo" in result.stdout
