"""The command line as a whole: output paths checked before any work with a one-line error (exit 2, no
traceback), one-line usage and system errors, and a registry that skips absent modules. (The model and prompt
options of every subcommand: test_cli_options.py.)"""

from __future__ import annotations

import json
import os
import sys

import pytest

from analyses import cli
from analyses.cli import main
from tests.analyses.test_cli_options import refuse_loading
from tests.conftest import tiny_hf, word_tokenizer

# every subcommand that writes into --out, with the arguments it needs besides --out
COMMANDS = {
    "attention": ["--prompt", "t5 t9 t5 t9", "--no-png"],
    "logit-lens": ["--prompt", "t5 t9 t5 t9", "--no-png"],
    "report": ["--prompt", "t5 t9 t5 t9", "--sweep", "0"],
    "tuned-lens train": ["--steps", "1"],
    "rope": ["--no-png"],
    "patch": ["--no-png"],
    "sweep": ["--analysis", "attention"],
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tiny_hf(seed=4).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def no_loading(monkeypatch):
    refuse_loading(monkeypatch)


def run(command: str, *args: str) -> int:
    return main([*command.split(), *args])


def test_a_missing_command_module_is_skipped_and_a_broken_one_is_not(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "analyses.no_such_analysis.command"))
    assert "attention" in cli.parser()._subparsers._group_actions[0].choices
    (tmp_path / "broken_command.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", ("broken_command",))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli.parser()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_refused_run_leaves_no_empty_output_folder(command, tmp_path, capsys, no_loading):
    out, kept = tmp_path / "new" / "out", tmp_path / "kept"
    kept.mkdir()
    for folder in (out, kept):
        assert run(command, *COMMANDS[command], "--model", "toy-9l", "--out", str(folder)) == 2
    assert not out.parent.exists() and kept.is_dir()  # made by the run and left empty: removed; given: kept


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_in_the_way_is_refused_before_any_work(command, tmp_path, capsys, no_loading):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert run(command, *COMMANDS[command], "--out", str(blocker)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pythia-interp {command}: error: "), err
    assert str(blocker) in err and "is a file, not a folder" in err and "Traceback" not in err


def test_a_file_above_the_folder_is_refused(tmp_path, capsys, no_loading):
    (tmp_path / "file").write_text("x")
    assert run("attention", *COMMANDS["attention"], "--out", str(tmp_path / "file" / "out")) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file'} is a file, so no folder can be made below it" in err


def test_an_unwritable_place_is_refused(tmp_path, capsys, no_loading):
    if os.geteuid() == 0:
        out = "/sys/pythia-interp-test/out"  # not writable even by root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = str(locked / "out")
    assert run("logit-lens", *COMMANDS["logit-lens"], "--out", out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} cannot be written" in err and "permissions" in err and err.count("\n") == 1


def test_a_folder_where_a_file_goes_is_refused(tmp_path, capsys, no_loading):
    (tmp_path / "head_scores.csv").mkdir()
    assert run("attention", *COMMANDS["attention"], "--out", str(tmp_path)) == 2
    assert f"{tmp_path / 'head_scores.csv'} is a folder" in capsys.readouterr().err


def test_a_png_without_a_renderer_is_refused_before_any_work(tmp_path, capsys, monkeypatch, no_loading):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert run("attention", "--prompt", "t5", "--out", str(tmp_path / "o")) == 2
    assert "--no-png" in capsys.readouterr().err


def test_prompts_file_problems_are_one_line(tmp_path, capsys, no_loading):
    missing = tmp_path / "missing.txt"
    assert run("attention", "--prompts-file", str(missing), "--no-png", "--out", str(tmp_path / "o")) == 2
    assert f"--prompts-file {missing}: no such file" in capsys.readouterr().err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert run("logit-lens", "--prompts-file", str(blank), "--no-png", "--out", str(tmp_path / "o")) == 2
    assert "holds no prompt" in capsys.readouterr().err


def test_prompt_and_prompts_file_exclude_each_other(tmp_path, capsys):
    assert run("attention", "--prompt", "x", "--prompts-file", "p.txt", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == ("pythia-interp attention: error: argument --prompts-file: not allowed with argument --prompt "
                   "(see pythia-interp attention --help)\n")


@pytest.mark.parametrize("flag,value,message", [
    ("--dtype", "fp8", "invalid choice: 'fp8'"),
    ("--device", "gpu7", "device='gpu7' is not a device this machine has"),
])
def test_bad_model_options_are_usage_errors_in_one_line(flag, value, message, tmp_path, capsys):
    assert run("attention", "--prompt", "x", flag, value, "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "usage:" not in err


def test_help_exits_zero(capsys):
    assert run("patch", "--help") == 0
    assert "--prompts-file" in capsys.readouterr().out


@pytest.mark.skipif(sys.platform != "linux", reason="CUDA presence check")
def test_an_absent_cuda_device_says_so(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert run("attention", "--prompt", "x", "--device", "cuda", "--out", str(tmp_path)) == 2
    assert "device='cuda' is not a device this machine has: use one of ['cpu']" in capsys.readouterr().err


def test_a_system_error_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    from analyses.commands import report

    def full_disk(args):
        raise OSError(28, "No space left on device", str(tmp_path / "report.html"))

    monkeypatch.setattr(report, "run", full_disk)
    assert run("report", "--out", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err == f"pythia-interp report: error: [Errno 28] No space left on device: '{tmp_path / 'report.html'}'\n"


def test_dtype_and_prompts_file_reach_the_analysis(saved_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("t5 t9 t5 t9\n\nt7 t3\n")
    out = tmp_path / "out"
    assert run("logit-lens", "--model", str(saved_model), "--prompts-file", str(prompts), "--dtype", "bf16",
               "--device", "cpu", "--no-png", "--out", str(out)) == 0
    record = json.loads((out / "logit_lens.json").read_text())
    assert "bfloat16" in record["dtype"] and record["prompts"] == ["t5 t9 t5 t9", "t7 t3"]
    assert record["tokens"] == [[5, 9, 5, 9], [7, 3]] and record["str_tokens"][1] == ["t7", "t3"]
