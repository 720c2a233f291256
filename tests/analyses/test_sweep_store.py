"""The results store: keys, atomic writes (a killed writer leaves nothing half-written), and plain readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from analyses.sweep.store import Key, ResultStore, data_hash

ROOT = Path(__file__).resolve().parents[2]


def frame(n: int = 4, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(range(n)), "score": [i / 10 + shift for i in range(n)],
                         "name": [f"L{i}" for i in range(n)]})


def test_roundtrip_and_layout(tmp_path):
    store, key = ResultStore(tmp_path), Key("attention", {"seq_len": 50, "dtype": "float32"})
    assert store.get(key, "toy-2l", "step0") is None and not store.has(key, "toy-2l", "step0")
    path = store.put(key, "toy-2l", "step0", frame())
    assert path == tmp_path / "attention" / key.digest / "toy-2l" / "step0.parquet"
    pd.testing.assert_frame_equal(store.get(key, "toy-2l", "step0"), frame(), check_dtype=False)
    params = json.loads((path.parents[1] / "_params.json").read_text())
    assert params == {"analysis": "attention", "version": "1", "params": {"seq_len": 50, "dtype": "float32"},
                      "data": "none"}
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(path).metadata[b"pythia_interp.key"])
    assert meta["digest"] == key.digest and meta["revision"] == "step0", "the key travels inside the file"
    assert store.manifest()[["analysis", "key", "model", "revision"]].values.tolist() == [
        ["attention", key.digest, "toy-2l", "step0"]]


def test_key_changes_with_every_part():
    base = Key("lens", {"apply_ln": True, "dtype": "float32"}, data_hash(["a"]))
    variants = [Key("attention", base.params, base.data_hash), Key("lens", {**base.params, "apply_ln": False},
                base.data_hash), Key("lens", {**base.params, "dtype": "float16"}, base.data_hash),
                Key("lens", base.params, data_hash(["b"])), Key("lens", base.params, base.data_hash, version="2")]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == 6, "analysis, parameters, dtype, data and version must each change the key"
    reordered = Key("lens", {"dtype": "float32", "apply_ln": True}, data_hash(["a"]))
    assert reordered.digest == base.digest, "parameter order must not matter"


def test_pandas_duckdb_polars_read_the_store(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    store = ResultStore(tmp_path)
    key, other = Key("attention", {"seed": 0}), Key("attention", {"seed": 1})
    expected = []
    for model in ("toy-2l", "toy-4l"):
        for i, rev in enumerate(("step0", "step8")):
            rows = frame(shift=i).assign(model=model, revision=rev, key=key.digest)
            store.put(key, model, rev, rows)
            expected.append(rows)
    store.put(other, "toy-2l", "step0", frame(shift=9).assign(model="toy-2l", revision="step0", key=other.digest))
    (store.key_dir(key) / "toy-2l" / ".step16.parquet.123.abcd.tmp").write_bytes(b"PAR1 half a file")
    want = pd.concat(expected).sort_values(["model", "revision", "layer"]).reset_index(drop=True)

    def check(got: pd.DataFrame, reader: str):
        got = got[want.columns].sort_values(["model", "revision", "layer"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=reader)

    analysis_dir = tmp_path / "attention"
    everything = pd.read_parquet(analysis_dir)
    assert len(everything) == len(want) + 4, "pandas reads every key of the analysis, skipping _params and temps"
    check(everything[everything["key"] == key.digest], "pandas")
    check(pd.read_parquet(store.key_dir(key)), "pandas (one key)")
    glob = f"{analysis_dir}/*/*/*.parquet"
    check(duckdb.sql(f"SELECT * FROM read_parquet('{glob}') WHERE key = '{key.digest}'").df(), "duckdb")
    check(pl.read_parquet(f"{store.key_dir(key)}/*/*.parquet").to_pandas(), "polars")


WRITER = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from analyses.sweep import store as st

    def slow_write(table, f):       # writes half a Parquet file, then hangs: the kill lands mid-write
        f.write(b"PAR1" + b"x" * 100_000)
        f.flush()
        print("writing", flush=True)
        time.sleep(60)

    st._write_parquet = slow_write
    s = st.ResultStore(sys.argv[1])
    s.put(st.Key("attention"), "toy-2l", "step1", pd.DataFrame({"layer": [0]}))
""")


def test_killed_writer_leaves_no_result(tmp_path):
    store, key = ResultStore(tmp_path), Key("attention")
    store.put(key, "toy-2l", "step0", frame())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not store.has(key, "toy-2l", "step1"), "a killed writer must leave no result under the final name"
    temps = store.temp_files()
    assert len(temps) == 1 and temps[0].stat().st_size > 100_000, "the half-written bytes stay in a temp file"
    assert store.manifest()["revision"].tolist() == ["step0"]
    assert len(pd.read_parquet(tmp_path / "attention")) == len(frame()), "readers skip the temp file"
    store.put(key, "toy-2l", "step1", frame(2))  # a rerun writes it whole
    assert store.get(key, "toy-2l", "step1")["layer"].tolist() == [0, 1]


def test_tables_just_written_assemble_as_if_read_back(tmp_path):
    import numpy as np

    store, key = ResultStore(tmp_path), Key("attention")
    plain = frame().assign(flag=[True, False, True, False], small=np.arange(4, dtype=np.int32),
                           score32=np.array([0.0, -0.0, np.nan, 1.5], dtype=np.float32))
    other = plain.assign(when=pd.to_datetime(["2024-01-01"] * 4), kind=pd.Categorical(["a", "b", "a", "b"]))
    for rows in (plain, other):
        pairs = [("toy-2l", "step0"), ("toy-2l", "step1")]
        written = {}
        for model, revision in pairs:
            table = store.table(key, model, revision, rows)
            store.write(key, model, revision, table)
            written[(model, revision)] = table
        want, lengths = store.get_all(key, pairs)
        for kept in (written, {pairs[1]: written[pairs[1]]}):  # all just written, or some read from the store
            got, got_lengths = store.get_all(key, pairs, kept)
            pd.testing.assert_frame_equal(got, want)
            assert got_lengths == lengths == [4, 4]
            assert got["score32"].to_numpy().view(np.uint32).tolist() == want["score32"].to_numpy().view(
                np.uint32).tolist(), "bit for bit (-0.0, nan)"
    from analyses.sweep.store import _kept

    assert _kept(written[pairs[0]]) is None, "timestamps and categories are read back from the file"


def test_overwrite_is_atomic_and_replaces(tmp_path):
    store, key = ResultStore(tmp_path), Key("attention")
    first = store.put(key, "toy-2l", "step0", frame(3))
    inode = first.stat().st_ino
    store.put(key, "toy-2l", "step0", frame(5))
    assert len(store.get(key, "toy-2l", "step0")) == 5 and first.stat().st_ino != inode, "renamed over, not edited"
    assert store.temp_files() == []


def test_bad_store_and_names(tmp_path):
    from interp import InterpError

    (tmp_path / "file").write_text("x")
    with pytest.raises(InterpError, match="is a file"):
        ResultStore(tmp_path / "file")
    with pytest.raises(InterpError, match="letter or digit"):
        ResultStore(tmp_path).path(Key("..."), "toy-2l", "step0")
    path = ResultStore(tmp_path).path(Key("a/b"), "EleutherAI/pythia-70m", "step0")
    assert path.parent.name == "EleutherAI_pythia-70m" and path.parents[2].name == "a_b"
