"""Checkpoint integrity: a fingerprint of each checkpoint's weight files, and which steps share one.

    >>> weights_sha256("toy-2l", "step0") == weights_sha256("toy-2l", "step0") != weights_sha256("toy-2l", "step1")
    True

Some hub checkpoints hold the very same weights as another step (the file was uploaded twice).
A sweep fingerprints every checkpoint it loads and flags the steps whose weights are
byte-identical to an earlier one: a `duplicate_of` column and a warning.

The fingerprint is the sha256 of the weight file (`model.safetensors` or `pytorch_model.bin`), the
same number the hub shows for the file; for sharded checkpoints, the sha256 of the shards' names
and sha256s. In a Hugging Face cache, files are stored under their sha256, so nothing is re-read.
A toy checkpoint stored as `model.safetensors.xz` is fingerprinted by the `model.safetensors`
inside it (what `xz -d` writes), so that the number does not depend on the compression.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from interp.files import file_sha256
from interp.loading import checkpoint_files


class DuplicateCheckpointWarning(UserWarning):
    """Two checkpoints of a sweep have byte-identical weights."""


def weights_sha256(model: str, revision: str, hf_model: torch.nn.Module | None = None,
                   known: Mapping[Path, str] | None = None) -> str:
    """Fingerprint of a checkpoint's weights: from its files (`known`: the sha256 of some already read), or from
    `hf_model`'s tensors if no file is found."""
    files = checkpoint_files(model, revision).weights  # the files `load` reads, found as it finds them
    if files:
        known = known or {}
        digests = [(p.name.removesuffix(".xz"), known.get(p) or file_sha256(p)) for p in files]
        if len(digests) == 1:
            return digests[0][1]
        return hashlib.sha256("".join(f"{n} {d}\n" for n, d in digests).encode()).hexdigest()
    if hf_model is None:
        return ""
    return tensors_sha256(hf_model.state_dict())


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def flag_duplicates(frame: pd.DataFrame, warn: bool = True) -> pd.DataFrame:
    """Add `duplicate_of`: the earliest revision of the same model with the same weights ("" if none).

    >>> frame = pd.DataFrame({"model": ["m"] * 3, "revision": ["step0", "step1", "step2"], "step": [0, 1, 2],
    ...                       "weights_sha256": ["a", "b", "b"]})
    >>> flag_duplicates(frame, warn=False)["duplicate_of"].tolist()
    ['', '', 'step1']
    """
    frame = frame.copy()
    models, revisions = frame["model"].tolist(), frame["revision"].tolist()
    shas, steps = frame["weights_sha256"].tolist(), frame["step"].tolist()
    firsts: dict[tuple[str, str], str] = {}  # (model, fingerprint) -> its earliest revision
    for i in sorted(range(len(steps)), key=steps.__getitem__):  # stable: ties keep the frame's order
        if shas[i]:
            firsts.setdefault((models[i], shas[i]), revisions[i])
    first = [firsts.get(key, "") for key in zip(models, shas, strict=True)]
    frame["duplicate_of"] = [f if f != rev else "" for f, rev in zip(first, revisions, strict=True)]
    if warn and (frame["duplicate_of"] != "").any():
        for message in duplicate_messages(frame):
            warnings.warn(message, DuplicateCheckpointWarning, stacklevel=3)
    return frame


def duplicate_messages(frame: pd.DataFrame) -> list[str]:
    """One sentence per flagged checkpoint."""
    flagged = frame.loc[frame["duplicate_of"] != "", ["model", "revision", "duplicate_of"]].drop_duplicates()
    return [f"{m} {r} has weights byte-identical to {d} (the same weight file), so its results repeat {d}'s"
            for m, r, d in flagged.itertuples(index=False)]
