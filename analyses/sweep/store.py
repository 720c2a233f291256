"""The results store: one Parquet file per (analysis, parameters, model, revision), written atomically.

    >>> import tempfile, pandas as pd
    >>> store = ResultStore(tempfile.mkdtemp())
    >>> key = Key("attention", {"seq_len": 50}, data_hash="none")
    >>> path = store.put(key, "toy-2l", "step0", pd.DataFrame({"layer": [0, 1], "induction": [0.1, 0.2]}))
    >>> path.relative_to(store.root).as_posix()  # <analysis>/<key digest>/<model>/<revision>.parquet
    'attention/8a34565bd057/toy-2l/step0.parquet'
    >>> store.get(key, "toy-2l", "step0")["induction"].tolist(), store.has(key, "toy-2l", "step1")
    ([0.1, 0.2], False)

Layout (a plain directory; pandas, DuckDB and polars read it as it is):

    <root>/<analysis>/<key>/_params.json              what the key means: parameters, data hash, version
    <root>/<analysis>/<key>/<model>/<revision>.parquet    one checkpoint's rows; the key travels inside too

    pd.read_parquet("<root>/attention")                                         # every key and checkpoint
    duckdb.sql("SELECT * FROM '<root>/attention/*/*/*.parquet' WHERE key = '...'")
    polars.read_parquet("<root>/attention/<key>/*/*.parquet")

A file appears only complete: it is written to a hidden temporary name beside its final place,
flushed to disk, then renamed over it (`os.replace`, atomic on POSIX and Windows). A killed writer
leaves at most a `.*.tmp` file, which every reader skips (names starting with "." are ignored by
pyarrow, and globs on `*.parquet` do not match it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from interp.errors import InputError

METADATA_KEY = b"pythia_interp.key"
KEY_COLUMNS = ("model", "revision", "step", "tokens_seen", "weights_sha256", "analysis", "key")


@dataclass(frozen=True)
class Key:
    """What makes two results the same: analysis (and its version), parameters and a hash of the data."""

    analysis: str
    params: dict = field(default_factory=dict)
    data_hash: str = "none"
    version: str = "1"

    @functools.cached_property
    def digest(self) -> str:
        """12 hex digits of the sha256 of the key's canonical JSON: the directory name of the key."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces), the text that is hashed."""
        record = {"analysis": self.analysis, "version": self.version, "params": self.params, "data": self.data_hash}
        return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def data_hash(value) -> str:
    """sha256 (16 hex digits) of prompts or any JSON-able data, so a key names the data it ran on.

    >>> data_hash(["The cat sat."]) == data_hash(["The cat sat."]) != data_hash(["The dog sat."])
    True
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultStore:
    """A directory of Parquet results, one file per (key, model, revision)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"store {str(self.root)!r} is a file; pass a directory (it is created if missing).")

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    def key_dir(self, key: Key) -> Path:
        """Directory of one key: `<root>/<analysis>/<digest>`."""
        return self.root / _safe(key.analysis) / key.digest

    def path(self, key: Key, model: str, revision: str) -> Path:
        """Where the result of (key, model, revision) lives (whether or not it exists yet)."""
        return self.key_dir(key) / _safe(model) / f"{_safe(revision)}.parquet"

    def has(self, key: Key, model: str, revision: str) -> bool:
        """Whether a complete result is stored."""
        return self.path(key, model, revision).is_file()

    def stored(self, key: Key, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (model, revision) pairs have a complete result stored, as `has` says (one listing per model).

        >>> import tempfile
        >>> store = ResultStore(tempfile.mkdtemp())
        >>> _ = store.put(Key("a"), "toy-2l", "step0", pd.DataFrame({"x": [1]}))
        >>> store.stored(Key("a"), [("toy-2l", "step0"), ("toy-2l", "step1"), ("toy-4l", "step0")])
        {('toy-2l', 'step0')}
        """
        listed: dict[str, set[str]] = {}
        for model in dict.fromkeys(model for model, _ in pairs):
            try:
                with os.scandir(self.key_dir(key) / _safe(model)) as entries:
                    listed[model] = {e.name for e in entries if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[model] = set()
        return {(m, r) for m, r in pairs if f"{_safe(r)}.parquet" in listed[m]}

    def get(self, key: Key, model: str, revision: str) -> pd.DataFrame | None:
        """The stored frame, or None when there is none."""
        path = self.path(key, model, revision)
        return pd.read_parquet(path) if path.is_file() else None

    def get_all(self, key: Key, pairs: Sequence[tuple[str, str]], written: Mapping | None = None,
                drop: Sequence[str] = ()) -> tuple[pd.DataFrame, list[int]]:
        """The stored frames of several (model, revision) pairs, one after another with a fresh index, as
        `pd.concat` of their `get`s gives them (less the columns in `drop`); and how many rows each has.
        `written` may hold the Arrow tables this process just stored (`table` then `write`), by (model,
        revision): those whose column types come back from Parquet exactly as they went in are not read again."""
        import pyarrow as pa

        written = written or {}
        tables = [_kept(written.get(pair)) for pair in pairs]
        tables = [_read_table(self.path(key, *pair)) if t is None else t for pair, t in zip(pairs, tables, strict=True)]
        lengths = [t.num_rows for t in tables]
        if not tables:
            return pd.DataFrame(), lengths
        first = tables[0].schema
        if all(_same_frame_schema(t.schema, first) for t in tables):  # one conversion: much faster than one each
            return pa.concat_tables(tables).drop_columns(list(drop)).to_pandas(), lengths
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True).drop(columns=list(drop)), lengths

    def put(self, key: Key, model: str, revision: str, frame: pd.DataFrame) -> Path:
        """Write a frame atomically (temp file, fsync, rename) with the key in its metadata."""
        return self.write(key, model, revision, self.table(key, model, revision, frame))

    def table(self, key: Key, model: str, revision: str, frame: pd.DataFrame):
        """The Arrow table `put` writes for a frame: its columns, and the key in the schema's metadata."""
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        record = {"key": json.loads(key.to_json()), "digest": key.digest, "model": model, "revision": revision}
        return table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: json.dumps(record)})

    def write(self, key: Key, model: str, revision: str, table) -> Path:
        """Write a table made by `table` atomically (temp file, fsync, rename)."""
        self._write_params(key)
        path = self.path(key, model, revision)
        atomic_write(path, lambda f: _write_parquet(table, f))
        return path

    def keys(self, analysis: str | None = None) -> Iterator[tuple[str, dict]]:
        """(directory, meaning) of every stored key, e.g. to find a digest by its parameters."""
        pattern = f"{_safe(analysis)}/*/_params.json" if analysis else "*/*/_params.json"
        for params in sorted(self.root.glob(pattern)):
            yield str(params.parent), json.loads(params.read_text())

    def manifest(self) -> pd.DataFrame:
        """One row per stored result: analysis, key, model, revision, bytes, path.

        >>> import tempfile
        >>> ResultStore(tempfile.mkdtemp()).manifest().columns.tolist()[:4]
        ['analysis', 'key', 'model', 'revision']
        """
        rows = []
        for path in sorted(self.root.glob("*/*/*/*.parquet")):
            rows.append({"analysis": path.parents[2].name, "key": path.parents[1].name, "model": path.parent.name,
                         "revision": path.stem, "bytes": path.stat().st_size, "path": str(path)})
        return pd.DataFrame(rows, columns=["analysis", "key", "model", "revision", "bytes", "path"])

    def temp_files(self) -> list[Path]:
        """Temporary files left by killed writers (never read; safe to delete when no sweep is running)."""
        return sorted(self.root.glob("**/.*.tmp"))

    def _write_params(self, key: Key) -> None:
        path = self.key_dir(key) / "_params.json"
        if not path.is_file():
            text = json.dumps(json.loads(key.to_json()), indent=2, sort_keys=True) + "\n"
            atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a hidden temp file beside `path`, fsync it, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def _write_parquet(table, f) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, f)


def _read_table(path: Path):
    """One stored file as an Arrow table (ParquetFile: a third of read_table's cost for many small files)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read(use_threads=False)


def _kept(table):
    """A table just written, if Parquet gives its columns back exactly (plain numbers, booleans and strings: the
    same types, values bit for bit, and the same schema metadata); else None, and the file is read."""
    import pyarrow.types as pt

    exact = (pt.is_integer, pt.is_float32, pt.is_float64, pt.is_boolean, pt.is_string, pt.is_large_string)
    if table is None or not all(any(is_(f.type) for is_ in exact) and not f.metadata for f in table.schema):
        return None
    return table


def _same_frame_schema(schema, other) -> bool:
    """Same columns and types, and the same pandas metadata: the frames convert alike, one by one or together."""
    pandas = b"pandas"
    return schema.equals(other, check_metadata=False) and \
        (schema.metadata or {}).get(pandas) == (other.metadata or {}).get(pandas)


def _safe(part: str) -> str:
    """A path component from a name: letters, digits, '.', '-', '_' kept, anything else '_', no leading '.'/'_'."""
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in str(part)).lstrip("._")
    if not safe:
        raise InputError(f"{part!r} cannot name a store directory: it needs a letter or digit.")
    return safe
