"""Every subcommand takes --model, --revision, --device, --dtype and --prompt or --prompts-file, each takes effect,
and a bad value is one line on stderr (exit 2, no traceback) before any model loads."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest
import torch

import interp
from analyses import cli

OPTIONS = ("--model", "--revision", "--device", "--dtype", "--prompt", "--prompts-file")
REVISION = "step1800"
PROMPTS = ["The cat sat on the mat. The cat sat on the", "def f(x): return x + 1"]
# patch: the prompts file holds the clean prompts of your own task, with these beside them
CLEAN, CORRUPT = ["a b c a b", "a b d a b"], ["a d c a b", "a c d a b"]

# Fast settings of every subcommand besides the model, prompt and output options; a new one must be added here.
FAST = {
    "report": ["--sweep", "0"],
    "attention": ["--no-png"],
    "logit-lens": ["--no-png"],
    "tuned-lens train": ["--steps", "1", "--batch-size", "1", "--seq-len", "64"],
    "rope": ["--ablate", "1", "--no-png"],
    "patch": ["--method", "eap", "--steps", "1", "--no-png"],
    "sweep": ["--analysis", "attention", "--param", "seq_len=8", "--param", "batch=1", "--no-progress"],
    "serve": [],
}
NEEDS_PROMPT = {"attention", "logit-lens"}  # the others have a default text or task


def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """'name' (or 'name action') -> parser of every subcommand that runs, sub-subcommands included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {" ".join(prefix): parser}
    return {k: v for name, sub in subs[0].choices.items() for k, v in leaves(sub, (*prefix, name)).items()}


COMMANDS = leaves(cli.parser())


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {f for action in parser._actions for f in action.option_strings}


def argv(command: str, *args: str, out=None) -> list[str]:
    """The command line: the command, its fast settings, `args`, and --out where it takes one."""
    to = [] if out is None or command == "serve" else ["--out", str(out)]
    return [*command.split(), *FAST[command], *args, *to]


@pytest.fixture
def loads(monkeypatch) -> list[interp.Model]:
    """Every model interp.load returns during the test."""
    real, seen = interp.load, []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(interp, "load", spy)
    return seen


def refuse_loading(monkeypatch) -> None:
    """Make loading a model, or starting the explorer's server, fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded (or the server started) before the bad input was refused")

    monkeypatch.setattr(interp, "load", refuse)
    monkeypatch.setattr("analyses.app.server.serve", refuse)


@pytest.fixture
def no_loading(monkeypatch):
    refuse_loading(monkeypatch)


def test_every_subcommand_has_fast_settings_here():
    assert set(FAST) == set(COMMANDS), "add the new subcommand to FAST (and to the effect checks below)"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_takes_the_model_and_prompt_options(command):
    missing = set(OPTIONS) - flags(COMMANDS[command])
    assert not missing, f"pythia-interp {command} lacks {sorted(missing)}"


# ---- each option takes effect ------------------------------------------------------------------------


def lines(path, rows: list[str]):
    path.write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    return path


def outcome(command: str, out, prompts_file) -> dict:
    """What the command's files say it ran on: revision, dtype, device (where recorded) and prompts."""
    if command in ("attention", "logit-lens", "rope", "report"):
        name = {"logit-lens": "logit_lens"}.get(command, command)
        record = json.loads((out / f"{name}.json").read_text())
        return record
    if command == "patch":
        record = json.loads((out / "patching.json").read_text())
        return {**record, "prompts": record["prompts"]["clean"]}
    if command == "sweep":
        record = json.loads((out / "sweep.json").read_text())
        table = pd.read_csv(out / "sweep.csv")
        return {**record, "revision": "/".join(sorted(set(table["revision"])))}
    if command == "tuned-lens train":
        record = json.loads((out / "tuned_lens.json").read_text())
        assert record["text"] == f"{prompts_file} ({len(PROMPTS)} prompts)", record["text"]
        from analyses.lens.tuned import token_stream

        stream = token_stream(interp.load("toy"), PROMPTS)  # trained on the file's prompts, each a document
        assert record["seq_len"] == len(stream) < 64, "the windows span the prompts' tokens, not another text"
        return {**record, "prompts": PROMPTS}
    raise AssertionError(f"no effect check for {command}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "serve"])
def test_each_option_reaches_the_output(command, tmp_path, loads, capsys):
    prompts = CLEAN if command == "patch" else PROMPTS
    prompts_file = lines(tmp_path / "prompts.txt", prompts)
    extra = ["--corrupt-file", str(lines(tmp_path / "corrupt.txt", CORRUPT)),
             "--answer", " c", " d", "--wrong", " d", " c"] if command == "patch" else []
    out = tmp_path / "out"
    options = ["--model", "toy", "--revision", REVISION, "--dtype", "bfloat16", "--device", "cpu",
               "--prompts-file", str(prompts_file), *extra]
    assert cli.main(argv(command, *options, out=out)) == 0, capsys.readouterr().err
    assert loads, "no model was loaded"
    for model in loads:  # the load itself
        assert (model.revision, model.dtype, model.device.type) == (REVISION, torch.bfloat16, "cpu"), command
    found = outcome(command, out, prompts_file)  # and what the files say
    assert found["revision"] == REVISION and found["dtype"] == "bfloat16", found
    assert found.get("device", "cpu") == "cpu" and found["prompts"] == prompts, found


def test_serve_starts_in_the_state_the_options_ask_for(tmp_path, loads, monkeypatch):
    from analyses.app import command

    built, served, real_build = [], [], command.build

    def build(args):
        built.append(real_build(args))
        return built[-1]

    monkeypatch.setattr(command, "build", build)
    monkeypatch.setattr("analyses.app.server.serve", lambda app, host, port: served.append((app, host, port)))
    options = ["--model", "toy-4l", "--revision", REVISION, "--dtype", "bf16", "--device", "cpu",
               "--prompts-file", str(lines(tmp_path / "prompts.txt", PROMPTS)), "--port", "8123"]
    assert cli.main(argv("serve", *options)) == 0
    [(app, explorer)] = built
    assert served == [(app, "127.0.0.1", 8123)], "served once, the app built from the options (no browser here)"
    layout = components(app.layout)
    assert layout["model-a"].value == "toy-4l" and layout["prompt"].value == "\n".join(PROMPTS)
    revision = explorer.revision_at("toy-4l", layout["rev-a"].value)
    assert revision == REVISION, "the slider starts at --revision"
    assert loads == [], "nothing loads before the page asks"
    model = explorer.model("toy-4l", revision)
    assert (model.dtype, model.device.type, model.revision) == (torch.bfloat16, "cpu", REVISION)


def components(layout) -> dict:
    """id -> component of a Dash layout."""
    found, todo = {}, [layout]
    while todo:
        node = todo.pop()
        if getattr(node, "id", None) is not None:
            found[node.id] = node
        children = getattr(node, "children", None)
        todo += children if isinstance(children, (list, tuple)) else [children] if hasattr(children, "id") else []
    return found


# ---- bad values --------------------------------------------------------------------------------------

BAD = {  # option values -> what the one line must say (the value, and the fix)
    "unknown model": (["--model", "pythia-16m"], ["'pythia-16m'", "pythia-160m"]),
    "unknown revision": (["--revision", "step7"], ["'step7'", "step4, step8"]),
    "bad dtype": (["--dtype", "fp8"], ["'fp8'", "choose from", "bf16"]),
    "missing prompts file": (["--prompts-file", "{tmp}/missing.txt"], ["missing.txt: no such file", "Pass an "]),
    "empty prompt": (["--prompt", " "], ["' ' is an empty prompt", "give some text"]),
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_value_is_one_line_before_any_model_loads(command, bad, tmp_path, capsys, no_loading):
    values, says = BAD[bad]
    values = [v.replace("{tmp}", str(tmp_path)) for v in values]
    given = {"--prompt", "--prompts-file"} & set(values)
    prompt = ["--prompt", "x"] if command in NEEDS_PROMPT and not given else []
    assert cli.main(argv(command, *values, *prompt, out=tmp_path / "out")) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"pythia-interp {command}"), err
    assert "error: " in err and "Traceback" not in err + captured.out, err
    for words in says:
        assert words in err, f"{words!r} not in {err!r}"


@pytest.mark.parametrize("values, says", [
    (["--prompt", "a b c a b"], "needs clean prompts"),
    (["--prompt", "a b c a b", "--corrupt", "a d c a b", "x y", "--answer", " c", "--wrong", " d"],
     "1 clean prompts and 2 corrupt ones"),
    (["--task", "ioi", "--clean", "a b", "--corrupt", "a c", "--answer", " c", "--wrong", " d"],
     "--task ioi and your own prompts exclude each other"),
    (["--task", "nope"], "Unknown task 'nope'"),
    (["--corrupt-file", "{tmp}/none.txt", "--prompt", "a", "--answer", " c", "--wrong", " d"],
     "--corrupt-file {tmp}/none.txt: no such file"),
])
def test_patch_refuses_an_incomplete_task_of_your_own_before_loading(values, says, tmp_path, capsys, no_loading):
    values = [v.replace("{tmp}", str(tmp_path)) for v in values]
    assert cli.main(["patch", *values, "--no-png", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says.replace("{tmp}", str(tmp_path)) in err, err


def test_patch_takes_one_prompt_and_its_corruption(tmp_path):
    out = tmp_path / "o"
    assert cli.main(["patch", "--prompt", "a b c a b", "--corrupt", "a d c a b", "--answer", " c", "--wrong", " d",
                     "--method", "attribution", "--sites", "resid_pre", "--no-png", "--out", str(out)]) == 0
    record = json.loads((out / "patching.json").read_text())
    assert record["prompts"] == {"clean": ["a b c a b"], "corrupt": ["a d c a b"], "answer": " c", "wrong": " d"}
    assert record["task"]["name"] == "custom" and len(record["task"]["clean"]) == 1
