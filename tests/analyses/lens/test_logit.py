"""Logit lens: the last layer is the model, metrics match a naive full-vocabulary computation,
padding is excluded, chunking changes nothing, and TransformerLens's logit lens agrees."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.nn.functional import kl_div

import interp
from analyses.lens import (
    boundary,
    decode,
    lens_from_cache,
    logit_lens,
    resid_names,
)
from interp.text import figure_label as label
from tests.conftest import tiny_hf, twin, word_tokenizer


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities."""
    return kl_div(q_log, p_log, log_target=True, reduction="none").sum(-1)


def naive(model: interp.Model, ids: torch.Tensor) -> torch.Tensor:
    """Every layer's full log-probabilities, the obvious way: (layer, batch, pos, d_vocab)."""
    _, cache = model.run_with_cache(ids)
    acc = cache.accumulated_resid().values
    ln, unembed = model.hf.gpt_neox.final_layer_norm, model.hf.lm_head
    with torch.no_grad():
        return unembed(ln(acc)).log_softmax(-1)


def test_last_layer_is_the_models_own_log_probs(model, ids):
    own = model(ids).log_softmax(-1)
    _, cache = model.run_with_cache(ids, names=resid_names(model))
    last = decode(model, boundary(cache, model.n_layers), model.n_layers)
    assert kl(own, last).max() < 1e-6, "the last boundary must decode to the model's own output"
    result = logit_lens(model, ids, top_k=3)
    assert result.kl[-1].max() < 1e-6
    assert torch.equal(result.top_ids[-1, ..., 0], own.argmax(-1)), "top-1 of the last layer"
    assert torch.equal(result.final_top1, own.argmax(-1))
    assert result.agrees[-1].all()


def test_metrics_equal_a_naive_full_vocabulary_computation(model, ids):
    full = naive(model, ids)  # (layer, batch, pos, d_vocab)
    result = logit_lens(model, ids, target=[7, 42], top_k=4, chunk=5)
    torch.testing.assert_close(result.kl, kl(full[-1], full), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.entropy, -(full.exp() * full).sum(-1), atol=1e-5, rtol=1e-5)
    ce = -full[:, :, :-1].gather(-1, ids[None, :, 1:, None].expand(len(full), -1, -1, 1))[..., 0]
    torch.testing.assert_close(result.cross_entropy[:, :, :-1], ce, atol=1e-5, rtol=1e-5)
    assert result.cross_entropy[:, :, -1].isnan().all(), "the last position has no next token"
    top = full.topk(4, dim=-1)
    assert torch.equal(result.top_ids, top.indices)
    torch.testing.assert_close(result.top_probs, top.values.exp())
    torch.testing.assert_close(result.target_probs, full[..., [7, 42]].exp())
    ranks = (full[..., None, :] > full[..., [7, 42], None]).sum(-1) + 1
    assert torch.equal(result.target_ranks, ranks), "rank 1 means the lens's top token"


def test_chunk_size_changes_nothing(model, ids):
    small, large = logit_lens(model, ids, chunk=1), logit_lens(model, ids, chunk=10_000)
    for name in ("kl", "cross_entropy", "entropy", "top_probs"):
        torch.testing.assert_close(getattr(small, name), getattr(large, name), equal_nan=True)
    assert torch.equal(small.top_ids, large.top_ids)


def test_left_padding_is_excluded():
    model = interp.Model(tiny_hf(), word_tokenizer())
    short, long = "t5 t9 t14", "t3 t8 t2 t70 t6 t11"
    batch = logit_lens(model, [short, long], target="t9")
    alone = logit_lens(model, short, target="t9")
    pad = batch.attention_mask == 0
    assert pad.sum() == 3
    assert batch.kl[:, pad].isnan().all() and (batch.top_ids[:, pad] == -1).all()
    torch.testing.assert_close(batch.kl[:, 0, 3:], alone.kl[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.target_probs[:, 0, 3:], alone.target_probs[:, 0],
                               atol=1e-6, rtol=1e-4)
    frame = batch.to_frame()
    assert len(frame) == (model.n_layers + 1) * (3 + 6), "one row per layer and real token"
    assert frame.query("prompt == 0")["position"].tolist()[:3] == [0, 1, 2]
    assert frame.query("prompt == 0 and layer == 0")["next_token"].tolist() == ["t9", "t14", ""]


def test_frame_columns_and_layer_numbering(model, ids):
    result = logit_lens(model, ids, target=5)
    frame = result.to_frame()
    for column in ("layer", "position", "token", "top1", "kl", "cross_entropy", "entropy",
                   "prob[t5]", "rank[t5]"):
        assert column in frame.columns, f"missing column {column}"
    assert sorted(frame["layer"].unique()) == list(range(model.n_layers + 1)), \
        "layer 0 is the embedding, L+1 the output of block L"
    means = result.layer_means()
    assert len(means) == model.n_layers + 1 and means["agrees"].iloc[-1] == 1.0
    per_prompt = result.layer_means(per_prompt=True)
    assert len(per_prompt) == 2 * (model.n_layers + 1)
    assert per_prompt.groupby("layer")["kl"].mean().tolist() == pytest.approx(means["kl"].tolist())


def test_skipping_the_final_layer_norm_reads_the_raw_stream(model, ids):
    _, cache = model.run_with_cache(ids, names=resid_names(model))
    raw = decode(model, boundary(cache, 1), 1, apply_ln=False)
    expected = model.hf.lm_head(cache["resid_post", 0]).log_softmax(-1)
    torch.testing.assert_close(raw, expected)
    result = lens_from_cache(model, cache, apply_ln=False, layers=[1, -1])
    assert result.layers == [1, model.n_layers] and not result.apply_ln
    assert result.kl[-1].max() > 1e-3, "without the LayerNorm the last layer is not the model"


def test_bad_arguments_name_the_fix(model, ids):
    with pytest.raises(interp.InputError, match="2 tokens"):
        logit_lens(model, ids, target="t5 t6")
    with pytest.raises(interp.InputError, match=r"0\.\.3"):
        logit_lens(model, ids, layers=[7])
    with pytest.raises(interp.InputError, match="'logit' or a TunedLens"):
        logit_lens(model, ids, lens="tuned")
    with pytest.raises(interp.InputError, match="top_k=0 must be in 1..128"):
        logit_lens(model, ids, top_k=0)
    with pytest.raises(interp.InputError, match="chunk=0"):
        logit_lens(model, ids, chunk=0)
    result = logit_lens(model, ids)
    with pytest.raises(interp.InputError, match="kl"):
        result.figure("perplexity")
    with pytest.raises(interp.InputError, match="target="):
        result.target_figure()


def test_figures_show_top_tokens_and_targets(model):
    result = logit_lens(model, ["t5 t9 t14 t3", "t8 t2"], target=["t14", "t3"])
    grid = result.figure("kl", prompt=1)
    heat = grid.data[0]
    assert len(heat.z) == 2 and len(heat.z[0]) == model.n_layers + 1, "a row per real position; padding not drawn"
    assert heat.text[0][-1] == result.token_str(result.final_top1[1, 2]), "the last layer shows the model's top-1"
    assert "layer embed" in heat.customdata[0][0] and heat.customdata[0][0].count("<br>") == 6
    torch.testing.assert_close(torch.tensor(heat.z), result.kl[:, 1, 2:].T, msg="z is (position, layer)")
    assert list(grid.layout.yaxis.ticktext) == ["t8 (0)", "t2 (1)"] and grid.layout.yaxis.autorange == "reversed"
    assert result.figure("prob[t14]").data[0].z is not None
    lines = result.target_figure(prompt=0, position=1)
    assert [d.name for d in lines.data] == ["t14", "t14", "t3", "t3"]
    assert list(lines.data[0].x) == list(range(model.n_layers + 1))


def test_long_prompts_show_their_last_positions_in_a_page_wide_grid(model):
    ids = torch.randint(1, 128, (1, 60), generator=torch.Generator().manual_seed(0))
    result = logit_lens(model, ids)
    fig = result.figure("entropy", max_pos=16)
    assert len(fig.data[0].z) == 16 and "the last 16 of 60 positions" in fig.layout.title.text
    assert list(fig.layout.yaxis.ticktext)[-1].endswith("(59)"), "rows are labelled with their position"
    torch.testing.assert_close(torch.tensor(fig.data[0].z), result.entropy[:, 0, -16:].T)
    assert fig.layout.width <= 1000 and result.figure().layout.width <= 1000, "no wider than a page"
    with pytest.raises(interp.InputError, match="max_pos=0"):
        result.figure(max_pos=0)


def test_the_lens_keeps_no_graph_and_leaves_no_grad(model, ids):
    with torch.enable_grad():
        result = logit_lens(model, ids)
    assert not result.kl.requires_grad
    assert all(p.grad is None for p in model.hf.parameters()), "the lens touched the model's gradients"


def test_figure_labels_are_inert_text():
    assert label(" <br>\x19") == "·&lt;br&gt;\\x19", "plotly markup and control characters"
    assert label("abcdefghijklmnop", width=6) == "abcde…"


@pytest.fixture(scope="module")
def bridge_pair(tmp_path_factory):
    """Our Model and a TransformerLens bridge over an independent copy of the same weights."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    hf, tok = tiny_hf(seed=5), word_tokenizer()
    path = tmp_path_factory.mktemp("tiny-lens")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    bridge = TransformerBridge.boot_transformers(
        str(path), hf_model=twin(hf), tokenizer=AutoTokenizer.from_pretrained(path), device="cpu")
    return interp.Model(hf, tok), bridge


@pytest.mark.parametrize("apply_ln", [True, False])
def test_matches_transformer_lens(bridge_pair, ids, apply_ln):
    model, bridge = bridge_pair
    _, tl_cache = bridge.run_with_cache(ids)
    with torch.no_grad():
        acc = tl_cache.accumulated_resid(apply_ln=apply_ln)  # (layer, batch, pos, d_model)
        theirs = (acc @ bridge.W_U + bridge.b_U).log_softmax(-1)
    _, cache = model.run_with_cache(ids, names=resid_names(model))
    for layer in range(model.n_layers + 1):
        ours = decode(model, boundary(cache, layer), layer, apply_ln=apply_ln)
        torch.testing.assert_close(ours, theirs[layer], atol=1e-5, rtol=1e-5,
                                   msg=lambda m, layer=layer: f"layer {layer}: {m}")
    result = lens_from_cache(model, cache, apply_ln=apply_ln)
    assert torch.equal(result.top_ids[..., 0], theirs.argmax(-1))
    torch.testing.assert_close(result.kl, kl(theirs[-1] if apply_ln else model(ids).log_softmax(-1),
                                             theirs), atol=1e-5, rtol=1e-4)


def test_matches_transformer_lens_logit_lens_tool(bridge_pair, ids):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens

    model, bridge = bridge_pair
    _, tl_cache = bridge.run_with_cache(ids)
    theirs = tl_logit_lens(bridge, cache=tl_cache, positions=None, return_type="log_probs").values
    ours = logit_lens(model, ids, top_k=3)
    assert theirs.shape[0] == model.n_layers + 1
    top = theirs.topk(3, dim=-1)
    assert torch.equal(ours.top_ids, top.indices)
    torch.testing.assert_close(ours.top_probs, top.values.exp(), atol=1e-6, rtol=1e-5)


MEMORY_CHILD = """
import json, resource, torch, transformers, interp
from analyses.lens import logit_lens

torch.manual_seed(0)
model = interp.Model(transformers.GPTNeoXForCausalLM(interp.suite.config("160m")), name="random")
ids = torch.randint(0, 50000, (1, 2048))
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * resource.getpagesize()
result = logit_lens(model, ids, layers=[0], chunk=128)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"extra": peak - before, "kl_shape": list(result.kl.shape)}))
"""


def test_memory_stays_far_below_the_full_vocabulary_tensor():
    """pythia-160m shapes (random weights), 2048 tokens: peak RSS added by the lens, forward pass
    included, in a fresh process; large allocations are mmapped so freed memory leaves RSS.
    Only layer 0 is decoded besides the reference last layer, to keep the test short: what each
    extra layer keeps is (pos,)-sized, and bench/logit_lens_memory.py measures all layers."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    config = interp.suite.config("160m")
    full = (config.num_hidden_layers + 1) * 2048 * config.vocab_size * 4  # fp32 bytes, 5.4 GB
    one_layer = 2048 * config.vocab_size * 4
    assert measured["kl_shape"] == [1, 1, 2048]
    assert measured["extra"] < full / 10, \
        f"lens used {measured['extra'] / 2**20:.0f} MiB; the full tensor is {full / 2**20:.0f} MiB"
    assert measured["extra"] < one_layer, "less than even one layer's logits for every position"


@pytest.fixture
def saved_model(tmp_path):
    """A tiny model and its tokenizer in a save_pretrained folder, loadable by `--model PATH`."""
    path = tmp_path / "tiny"
    tiny_hf(seed=4).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_cli_writes_csv_html_png_and_provenance(saved_model, tmp_path):
    import pandas as pd

    from analyses.cli import main
    from analyses.export import find_browser

    out = tmp_path / "out"
    png = find_browser() is not None
    argv = ["logit-lens", "--model", str(saved_model), "--prompt", "t5 t9 t14 t3", "--target", "t3",
            "--out", str(out), *([] if png else ["--no-png"])]
    assert main(argv) == 0
    frame = pd.read_csv(out / "logit_lens.csv", keep_default_na=False)
    for column in ("lens", "layer", "position", "token", "top1", "kl", "cross_entropy", "entropy"):
        assert column in frame.columns
    assert sorted(frame["layer"].unique()) == [0, 1, 2, 3] and len(frame) == 4 * 4
    assert frame.query("layer == 0")["token"].tolist() == ["t5", "t9", "t14", "t3"]
    record = json.loads((out / "logit_lens.json").read_text())
    assert record["tokens"] == [[5, 9, 14, 3]] and record["targets"] == {"t3": 3}
    assert record["model"] == "tiny" and record["tuned_lens"] is None
    html = (out / "logit_lens.html").read_text()
    assert "<script" in html and "<script src=" not in html, "self-contained HTML"
    if png:
        assert (out / "logit_lens.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_a_bad_target_without_a_traceback(saved_model, tmp_path, capsys):
    from analyses.cli import main

    argv = ["logit-lens", "--model", str(saved_model), "--prompt", "t5 t9", "--target", "t3 t4",
            "--out", str(tmp_path / "out"), "--no-png"]
    assert main(argv) == 2
    assert "2 tokens" in capsys.readouterr().err
