"""`pythia-interp patch`: every method writes its files; bad input fails before any work."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from analyses.patching import command
from interp.errors import InterpError

NODE_COLUMNS = ["site", "layer", "head", "position", "effect", "effect_normalized"]
EDGE_COLUMNS = ["sender", "receiver", "effect", "effect_normalized"]


def run(*argv: str) -> int:
    """Through the CLI's registry when it lists `patch`, else through our add_parser on a fresh parser."""
    try:
        from analyses import cli

        if "patch" in cli.parser()._subparsers._group_actions[0].choices:
            return cli.main(["patch", *argv])
    except Exception:  # noqa: BLE001 - any registry problem: fall back to our own parser
        pass
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["patch", *argv])
    return args.func(args)


@pytest.mark.parametrize("method, columns, circuit", [
    ("activation", NODE_COLUMNS, False), ("attribution", NODE_COLUMNS, False), ("path", EDGE_COLUMNS, False),
    ("eap", EDGE_COLUMNS, True), ("eap-ig", EDGE_COLUMNS, True), ("circuit", EDGE_COLUMNS, True),
])
def test_every_method_writes_its_files(tmp_path, method, columns, circuit):
    out = tmp_path / method
    assert run("--model", "toy", "--task", "induction", "--method", method, "--n-prompts", "3", "--no-png",
               "--out", str(out)) == 0
    frame = pd.read_csv(out / "patching.csv")
    assert frame.columns.tolist() == columns and len(frame) > 0
    record = json.loads((out / "patching.json").read_text())
    assert record["model"] == "toy-2l" and record["method"] == method and record["task"]["name"] == "induction"
    assert (out / "patching.html").stat().st_size > 10_000
    assert (out / "circuit.json").exists() == circuit
    if circuit:
        graph = json.loads((out / "circuit.json").read_text())
        assert graph["schema"] == "pythia-interp/patching-graph/1" and len(graph["edges"]) == 69


def test_path_names_in_the_csv(tmp_path):
    run("--model", "toy", "--method", "path", "--senders", "L0H1,mlp0,embed", "--receivers", "L1H0.k,mlp1,logits",
        "--n-prompts", "2", "--no-png", "--out", str(tmp_path))
    frame = pd.read_csv(tmp_path / "patching.csv")
    assert set(frame.sender) == {"L0H1", "mlp0", "embed"} and set(frame.receiver) == {"L1H0.k", "mlp1", "logits"}


def test_own_pairs(tmp_path):
    run("--model", "toy", "--clean", "a b c a b", "--corrupt", "a d c a b", "--answer", " c", "--wrong", " d",
        "--method", "activation", "--sites", "resid_pre", "--no-png", "--out", str(tmp_path))
    assert len(pd.read_csv(tmp_path / "patching.csv")) > 0


def test_bad_input_fails_first(tmp_path):
    with pytest.raises(InterpError, match="Unknown patching method 'exact'.*activation, path"):
        command_run(tmp_path, "--method", "exact")
    with pytest.raises(InterpError, match="aligned token for token"):
        command_run(tmp_path, "--clean", "a b c", "--corrupt", "a", "--answer", " c", "--wrong", " d")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InterpError, match="is a file"):
        command_run(blocker, "--method", "path")


def command_run(out, *argv):
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["patch", "--model", "toy", "--no-png", "--out", str(out), *argv])
    return args.func(args)


@pytest.mark.parametrize("selection", ["top", "greedy"])
def test_circuit_selection(tmp_path, selection):
    """--selection greedy keeps a connected circuit: every kept edge's receiver is read by a kept edge's sender."""
    assert run("--model", "toy", "--method", "circuit", "--selection", selection, "--top", "6", "--n-prompts", "3",
               "--no-png", "--out", str(tmp_path)) == 0
    graph = json.loads((tmp_path / "circuit.json").read_text())
    kept = [(e["sender"], e["receiver"]) for e in graph["edges"] if e["in_circuit"]]
    assert len(kept) == 6
    assert json.loads((tmp_path / "patching.json").read_text())["options"]["selection"] == selection
    connected = all(r == "logits" or r.split(".")[0] in {s for s, _ in kept} for _, r in kept)
    assert connected or selection == "top"


@pytest.mark.parametrize("option, value", [("--top", "-3"), ("--n-prompts", "0"), ("--steps", "0"), ("--top", "x")])
def test_counts_are_checked_while_parsing(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        command_run(tmp_path / "out", "--method", "circuit", option, value)
    assert exit_.value.code == 2
    assert f"argument {option}: '{value}': give a whole number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
