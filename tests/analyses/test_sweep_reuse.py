"""A checkpoint swapped into a live model is the model `interp.load` gives for it, bit for bit, and sweeps that
swap give the same tables as sweeps that load every checkpoint whole, with prefetch or without."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import interp
from analyses.sweep import reuse, sweep
from analyses.sweep.integrity import weights_sha256
from interp import files, toy
from interp.loading import SHIPPED
from tests.hub_cache import HubCache, add_snapshot, use_hub_cache

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IDS = torch.tensor([[5, 300, 17, 900, 42, 5, 300, 17], [9, 8, 7, 6, 5, 4, 3, 2]])
HUB_IDS = torch.tensor([[3, 9, 27, 41, 3, 9, 27, 63]])
PYTHIA = "EleutherAI/pythia-160m"


def assert_same_model(swapped: interp.Model, fresh: interp.Model, ids: torch.Tensor, what: str) -> None:
    """Logits bitwise equal, every tensor equal, and the same labels and provenance."""
    with torch.no_grad():
        assert torch.equal(swapped(ids), fresh(ids)), f"{what}: logits differ from a fresh interp.load"
    mine, theirs = swapped.hf.state_dict(), fresh.hf.state_dict()
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), f"{what}: {key}"
    assert (swapped.name, swapped.revision, swapped.tokenizer_source) == (fresh.name, fresh.revision,
                                                                         fresh.tokenizer_source), what
    assert swapped.origin == fresh.origin, what
    assert swapped.hf.name_or_path == fresh.hf.name_or_path and not swapped.hf.training, what


@pytest.mark.parametrize("name", toy.NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_toy_checkpoint_swapped_in_equals_a_fresh_load(name, dtype):
    revisions = [*toy.revisions(name), "main"]
    model = interp.load(name, revision=revisions[0], dtype=dtype)
    template = reuse.Template.of(model)
    assert template is not None, "a toy model's later checkpoints must be swappable"
    stacks = model.W_Q.clone()  # builds the cached weight stacks, which a swap must invalidate
    for revision in [*revisions[1:], revisions[0]]:
        staged = reuse.stage(name, revision, template)
        assert staged is not None, f"{name} {revision} did not fit its own model"
        assert reuse.swap_(model, staged) is model
        fresh = interp.load(name, revision=revision, dtype=dtype)
        assert_same_model(model, fresh, IDS, f"{name} {revision} {dtype}")
        assert torch.equal(model.W_Q, fresh.W_Q) and torch.equal(model.W_O, fresh.W_O), "stale weight stacks"
    assert torch.equal(model.W_Q, stacks), "back at the first checkpoint"
    if toy.ARCH[name] == "gpt2":
        assert model.hf.lm_head.weight is model.hf.get_input_embeddings().weight, "the head must stay tied"


def test_weights_read_whole_are_viewed_as_safetensors_loads_them(tmp_path):
    from safetensors.torch import load, save

    paths = [p for name in toy.NAMES for r in toy.revisions(name)[:3] for p in files.weight_files(
        toy.checkpoint_path(name, r))]
    odd = {"empty": torch.zeros(0, 3), "f8": torch.ones(4).to(torch.float8_e4m3fn), "b": torch.tensor([True, False])}
    cases = [files.unpacked_bytes(p) if files.is_packed(p) else p.read_bytes() for p in paths]
    cases += [save({"a": torch.arange(5, dtype=torch.int16), "b": torch.randn(3, 2).bfloat16()}), save(odd)]
    for data in cases:
        want, got = load(data), reuse._tensors_of(bytearray(data))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            assert torch.equal(got[key].view(torch.uint8), want[key].view(torch.uint8)), key
    assert reuse._views(bytearray(save(odd))) is None, "an empty tensor or a float8 one: safetensors reads it"
    assert reuse._views(bytearray(b"\xff" * 16)) is None and reuse._views(bytearray(b"12")) is None


def test_a_swap_fills_the_parameters_the_model_has_now():
    model = interp.load("toy-2l", revision="step0")
    template = reuse.Template.of(model)
    head = model.hf.get_output_embeddings()
    head.weight = torch.nn.Parameter(torch.zeros_like(head.weight))  # replaced after the template was taken
    reuse.swap_(model, reuse.stage("toy-2l", "step450", template))
    assert_same_model(model, interp.load("toy-2l", revision="step450"), IDS, "a replaced parameter")


def test_what_does_not_fit_is_loaded_whole():
    template = reuse.Template.of(interp.load("toy-2l", revision="step0"))
    assert reuse.stage("toy-4l", "step0", template) is None, "another model"
    assert reuse.stage("toy-gpt2", "step0", template) is None, "another architecture"
    assert reuse.stage("toy-2l", "step1", None) is None
    assert reuse.Template.of(interp.load(toy.checkpoint_path("toy-2l", "step1"))) is None, "a directory"
    stored = files.read_tensors(template.files.weights)
    assert template.fit(stored) is not None
    assert template.fit({k: v for k, v in stored.items() if k != "embed_out.weight"}) is None, "a tensor missing"
    assert template.fit({**stored, "embed_out.weight": stored["embed_out.weight"][:-1]}) is None, "a shape"
    assert template.fit({**stored, "gpt_neox.layers.0.attention.bias": torch.ones(3)}) is not None, \
        "a tensor the model does not have is ignored, as from_pretrained ignores it"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubCache:
    """Pythia snapshots in a local hub cache: three sharing one tokenizer, one with its own, one another config."""
    cache = HubCache(tmp_path / "hub")
    for revision in ("step1000", "step2000", "step3000"):
        add_snapshot(cache, PYTHIA, revision, marker="shared")
    add_snapshot(cache, PYTHIA, "step4000")  # a tokenizer of its own
    add_snapshot(cache, PYTHIA, "step5000", marker="shared", kind="gpt2")  # another architecture, same name
    add_snapshot(cache, PYTHIA, "step6000", tokenizer=False)
    add_snapshot(cache, PYTHIA, "step7000", tokenizer=False)
    use_hub_cache(monkeypatch, cache.root)
    return cache


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_pythia_checkpoint_from_the_hub_cache_swapped_in_equals_a_fresh_load(hub, dtype):
    model = interp.load("pythia-160m", revision="step1000", dtype=dtype)
    template = reuse.Template.of(model)
    for revision in ("step2000", "step3000", "step1000"):
        staged = reuse.stage("pythia-160m", revision, template)
        assert staged is not None, f"{revision}: same config and tokenizer files, so it must be swapped in"
        fresh = interp.load("pythia-160m", revision=revision, dtype=dtype)
        assert_same_model(reuse.swap_(model, staged), fresh, HUB_IDS, f"{revision} {dtype}")
        assert model.origin.commit == hub.commits[PYTHIA, revision]
        assert model.tokenizer_source == f"{PYTHIA}@{revision}"
    assert reuse.stage("pythia-160m", "step4000", template) is None, "another tokenizer"
    assert reuse.stage("pythia-160m", "step5000", template) is None, "another config"
    assert reuse.stage("pythia-160m", "step8000", template) is None, "not in the cache"


def test_a_pythia_checkpoint_without_a_tokenizer_swapped_in(hub):
    with pytest.warns(interp.TokenizerWarning):
        model = interp.load("pythia-160m", revision="step6000")
    staged = reuse.stage("pythia-160m", "step7000", reuse.Template.of(model))
    assert staged is not None and model.tokenizer is None
    with pytest.warns(interp.TokenizerWarning):
        fresh = interp.load("pythia-160m", revision="step7000")
    assert_same_model(reuse.swap_(model, staged), fresh, HUB_IDS, "no tokenizer")
    assert model.tokenizer_source is None and fresh.tokenizer_source != SHIPPED


def logits(model) -> pd.DataFrame:
    """The model's logits on fixed ids, every value a row: equal tables mean bitwise equal logits."""
    ids = HUB_IDS if model.d_vocab < 1000 else IDS
    with torch.no_grad():
        return pd.DataFrame({"logit": model(ids).flatten().double().numpy()})


def whole_loads_only(monkeypatch) -> None:
    monkeypatch.setattr(reuse, "find", lambda name, revision, template: None)


@pytest.mark.parametrize("models, revisions", [
    (["toy-2l", "toy-gpt2", "toy-4l"], "all"),
    ("pythia-160m", "step1000,step2000,step4000,step3000,step5000"),
], ids=["toy", "hub"])
def test_sweep_tables_are_the_same_swapped_or_loaded_whole_with_prefetch_or_without(hub, monkeypatch, models,
                                                                                   revisions):
    swapped = {pf: sweep(models, logits, revisions, prefetch=pf, progress=False) for pf in (True, False)}
    whole_loads_only(monkeypatch)
    whole = sweep(models, logits, revisions, progress=False)
    pd.testing.assert_frame_equal(swapped[True].to_frame(), swapped[False].to_frame())
    pd.testing.assert_frame_equal(swapped[True].to_frame(), whole.to_frame())
    assert swapped[True].timings["swapped"].any() and not whole.timings["swapped"].any()
    if models == "pythia-160m":  # step4000 (its own tokenizer) and step5000 (another config) load whole
        assert swapped[True].timings["swapped"].tolist() == [False, True, False, False, False]


def test_attention_sweep_tables_are_the_same_with_prefetch_or_without():
    tables = [sweep(["toy-2l", "toy-gpt2"], "attention", "all", prefetch=pf, progress=False) for pf in (True, False)]
    pd.testing.assert_frame_equal(tables[0].to_frame(), tables[1].to_frame())
    assert tables[0].timings["swapped"].sum() == 2 * (len(toy.revisions("toy-2l")) - 1), "all but each first"
    shas = tables[0].to_frame().drop_duplicates(["model", "revision"])
    for model, revision, sha in shas[["model", "revision", "weights_sha256"]].itertuples(index=False):
        assert sha == weights_sha256(model, revision), f"{model} {revision}: the fingerprint of a staged read"


def test_one_model_object_serves_every_checkpoint_of_a_name():
    seen = []

    def record(model):
        seen.append((id(model), model.revision))
        return {"layers": model.n_layers}

    sweep(["toy-2l", "toy-4l"], record, "step0,step1,main", progress=False)
    assert [rev for _, rev in seen] == ["step0", "step1", "step3600"] * 2
    assert len({i for i, _ in seen[:3]}) == 1 and len({i for i, _ in seen[3:]}) == 1, "one model per name"
