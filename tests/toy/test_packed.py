"""toy-gpt2 ships its checkpoints as model.safetensors.xz: within 10 MB, loaded strictly, and the trained weights."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

import interp
from interp import files, toy
from interp.errors import WeightsNotFoundError
from interp.loading import load_hf
from interp.toy.text import split_topics
from tests.toy.conftest import require_checkpoints

PACKED = sorted(toy.PACKED)
BUDGET = 10_000_000  # bytes of weight files per toy model (issue 12)
SEQ_LEN = 128  # the held-out windows training.json's heldout_loss was measured on
IDS = torch.tensor([[5, 300, 17, 900, 42, 5, 300, 17], [9, 8, 7, 6, 5, 4, 3, 2]])


def test_toy_gpt2_is_packed():
    assert "toy-gpt2" in toy.PACKED and set(toy.PACKED) <= set(toy.NAMES)


@pytest.mark.parametrize("name", PACKED)
def test_packed_weights_fit_10_mb(name):
    require_checkpoints(name)
    found = [files.weight_files(toy.checkpoint_path(name, rev)) for rev in toy.revisions(name)]
    assert all([p.name for p in paths] == [files.PACKED] for paths in found), "every checkpoint is packed"
    total = sum(p.stat().st_size for paths in found for p in paths)
    assert total <= BUDGET, f"{name}'s weight files take {total:,} bytes, over {BUDGET:,}"


@pytest.mark.parametrize("name", PACKED)
def test_every_packed_checkpoint_loads_strictly(name):
    """Every tensor of the file fills a parameter of the config's model and every parameter is filled."""
    require_checkpoints(name)
    for rev in toy.revisions(name):
        stored = files.read_tensors(files.weight_files(toy.checkpoint_path(name, rev)))
        model = interp.load(name, revision=rev)
        params = dict(model.hf.named_parameters())  # a tied head appears once, under the embedding's name
        assert sorted(stored) == sorted(params), f"{rev}: the file's tensors are not the model's parameters"
        for key, tensor in stored.items():
            assert torch.equal(params[key].detach(), tensor.float()), f"{rev}: {key} was not loaded as stored"


def test_a_packed_file_that_does_not_fit_is_refused(tmp_path):
    require_checkpoints("toy-gpt2")
    from safetensors.torch import save

    folder = tmp_path / "step0"
    shutil.copytree(toy.checkpoint_path("toy-gpt2", "step0"), folder)
    state = files.read_tensors(files.weight_files(folder))
    state.pop("transformer.h.0.mlp.c_fc.bias")
    state["transformer.extra.weight"] = torch.zeros(2)
    (folder / files.PACKED).write_bytes(lzma.compress(save(state)))
    with pytest.raises(WeightsNotFoundError, match=r"c_fc\.bias.*|extra"):
        interp.load(folder)


@pytest.mark.parametrize("name", PACKED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_packed_loads_as_transformers_loads_the_unpacked_directory(tmp_path, name, dtype):
    """`xz -d` gives a Hugging Face directory; from_pretrained on it and our loader agree bit for bit."""
    require_checkpoints(name)
    from transformers import AutoModelForCausalLM

    for rev in ("step0", "main"):
        folder = tmp_path / rev
        shutil.copytree(toy.checkpoint_path(name, rev), folder)
        packed = folder / files.PACKED
        (folder / files.SAFETENSORS).write_bytes(files.unpacked_bytes(packed))
        packed.unlink()
        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
        ours = interp.load(name, revision=rev, dtype=dtype)
        with torch.no_grad():
            assert torch.equal(ours(IDS), plain(IDS).logits), f"{rev} {dtype}: logits differ from the plain file's"
        assert type(ours.hf) is type(plain) and ours.hf.config.to_dict() | {"_name_or_path": ""} == \
            plain.config.to_dict() | {"_name_or_path": ""}
        assert ours.hf.generation_config.to_dict() == plain.generation_config.to_dict()
        assert ours.hf.lm_head.weight is ours.hf.get_input_embeddings().weight, "the head must stay tied"
        assert load_hf(toy.checkpoint_path(name, rev)).name_or_path == str(toy.checkpoint_path(name, rev))


@pytest.mark.parametrize("name", PACKED)
def test_packed_files_are_standard_xz(name):
    require_checkpoints(name)
    path = files.weight_files(toy.checkpoint_path(name, "main"))[0]
    if shutil.which("xz") is None:
        pytest.skip("no xz command here")
    out = subprocess.run(["xz", "-dc", str(path)], capture_output=True, check=True).stdout
    assert out == files.unpacked_bytes(path) and out[8:9] == b"{", "xz -d must give a safetensors file"


@pytest.mark.parametrize("name", PACKED)
def test_the_sweep_fingerprint_is_the_unpacked_files(name):
    require_checkpoints(name)
    from analyses.sweep.integrity import weights_sha256

    path = files.weight_files(toy.checkpoint_path(name, "step450"))[0]
    assert weights_sha256(name, "step450") == hashlib.sha256(files.unpacked_bytes(path)).hexdigest()


@pytest.mark.parametrize("name", PACKED)
def test_packed_weights_reproduce_the_recorded_heldout_loss(name):
    """The held-out loss training.json records at each checkpoint, recomputed plainly from the loaded model:
    the windows of SEQ_LEN tokens of the held-out pydoc topics (each document followed by <|endoftext|>)."""
    require_checkpoints(name)
    record = json.loads((toy.model_dir(name) / "training.json").read_text())
    tokenizer = Tokenizer.from_file(str(toy.model_dir(name) / "tokenizer.json"))
    eot = tokenizer.token_to_id("<|endoftext|>")
    stream = [i for enc in tokenizer.encode_batch(split_topics()[1]) for i in [*enc.ids, eot]]
    if len(stream) != record["corpus"]["heldout_tokens"]:
        pytest.skip("this Python's bundled docs differ from those the suite was trained on")
    windows = torch.tensor(stream[: len(stream) // SEQ_LEN * SEQ_LEN]).view(-1, SEQ_LEN)  # (batch, pos)
    for checkpoint in record["checkpoints"]:
        model = interp.load(name, revision=f"step{checkpoint['step']}")
        with torch.no_grad():
            logits = model(windows)  # (batch, pos, d_vocab)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), windows[:, 1:].flatten())
        assert abs(float(loss) - checkpoint["heldout_loss"]) < 2e-5, \
            f"step{checkpoint['step']}: held-out loss {float(loss):.6f}, training recorded {checkpoint['heldout_loss']}"
