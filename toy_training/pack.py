"""Store toy checkpoints as `model.safetensors.xz`, each byte checked: the models named in `interp.toy.PACKED`.

    python -m toy_training.pack                   # every packed toy model under interp/toy/models/
    python -m toy_training.pack --model toy-gpt2  # one

`stepN/model.safetensors` becomes `stepN/model.safetensors.xz`: standard xz (preset 9 extreme, as
`xz -9e` writes it), so `xz -d` gives the Hugging Face file back. The original is removed only once
the decompressed bytes are found equal to it (sha256). Training packs as it saves; this packs
checkpoints saved before.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
from pathlib import Path

from interp import toy
from interp.files import PACKED, SAFETENSORS

PRESET = 9 | lzma.PRESET_EXTREME


def pack(path: Path) -> Path:
    """Compress one `model.safetensors` beside itself, check the round trip, remove the original; return the .xz."""
    data = path.read_bytes()
    packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=PRESET)
    if _sha256(lzma.decompress(packed)) != _sha256(data):
        raise RuntimeError(f"xz round trip of {path} changed its bytes; nothing was written")
    out = path.with_name(PACKED)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(packed)
    tmp.replace(out)
    path.unlink()
    return out


def pack_model(root: Path) -> list[tuple[str, str, int, int]]:
    """Pack every step<N>/model.safetensors under `root`: (checkpoint, sha256, bytes before, bytes after) each."""
    done = []
    for path in sorted(root.glob(f"step*/{SAFETENSORS}")):
        sha, size = _sha256(path.read_bytes()), path.stat().st_size
        out = pack(path)
        done.append((path.parent.name, sha, size, out.stat().st_size))
    return done


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="all", choices=["all", *sorted(toy.PACKED)])
    parser.add_argument("--root", type=Path, default=toy.MODELS_DIR, help="the folder holding <model>/step<N>/")
    args = parser.parse_args(argv)
    for name in sorted(toy.PACKED) if args.model == "all" else [args.model]:
        for step, sha, before, after in pack_model(args.root / name):
            print(f"{name} {step}: {before:,} -> {after:,} bytes, sha256 {sha} (decompressed bytes equal)")


if __name__ == "__main__":
    main()
