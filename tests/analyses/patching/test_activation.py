"""Batched activation patching against one plain forward per patch, on both architectures, padded or not."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analyses.patching import engine, suffix
from analyses.patching.activation import NODE_SITES, activation_patch
from analyses.patching.errors import UnknownMethodError
from analyses.patching.metrics import LogitDiff

from .helpers import random_task, same, tiny_model

SITES = list(NODE_SITES)
RESIDUAL = sorted(engine.SITES)
# which batched path runs: hooks on whole prompts; hooks on suffixes; the residual engine
RUNS = {"full runs": SITES, "suffix runs": [s for s in SITES if s != "pattern"], "residual engine": RESIDUAL}


def reference(model, task, site: str, layer: int, head, position, direction="noising", ablation="corrupt"):
    """One patch, one plain forward: replace the site's value by the source's, read the metric."""
    name = NODE_SITES[site][0].replace("{L}", str(layer))
    base, other = (task.clean, task.corrupt) if direction == "noising" else (task.corrupt, task.clean)
    _, cache = model.run_with_cache(other if ablation == "corrupt" else task.clean, names=[name])
    source = cache[name]
    if ablation == "zero":
        source = torch.zeros_like(source)
    pos = slice(None) if position is None else position

    def patch(x, hook):
        x = x.clone()
        if site == "pattern":
            x[:, head, pos] = source[:, head, pos]
        elif head is not None:
            x[:, pos, head] = source[:, pos, head]
        else:
            x[:, pos] = source[:, pos]
        return x

    metric = LogitDiff.of(task)
    with torch.no_grad():
        before = metric(model(base)).mean()
        with model.hooks(fwd={name: patch}):
            after = metric(model(base)).mean()
    return float(after - before)


@pytest.mark.parametrize("sites", RUNS.values(), ids=RUNS.keys())
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_batched_equals_one_forward_per_patch(arch, padded, sites):
    """Without the pattern, patches run from their position on, sharing the prefix's keys and values;
    residual patches run from the layer they enter on."""
    model = tiny_model(arch)
    task = random_task(model, padded=padded, changed=(2, 6))
    metric = LogitDiff.of(task)
    assert suffix.applies(set(sites), metric, task.n_pos) == ("pattern" not in sites)
    assert engine.applies(model, set(sites), metric, task.n_pos) == (sites == RESIDUAL)
    result = activation_patch(model, task, sites=sites, budget_mb=1)  # a small budget: many chunks
    frame = result.to_frame()
    per_head = sum(NODE_SITES[s][1] for s in sites)
    assert len(frame) == model.n_layers * task.n_pos * (len(sites) - per_head + per_head * model.n_heads)
    picks = frame.sample(30, random_state=0)
    for row in picks.itertuples():
        head = None if pd.isna(row.head) else int(row.head)
        expected = reference(model, task, row.site, row.layer, head, int(row.position))
        assert abs(row.effect - expected) < 1e-5, (row, expected)
    assert frame.effect.abs().max() > 1e-2, "the test task should move the metric"


@pytest.mark.parametrize("sites", [["z", "mlp_out"], ["z", "mlp_out", "v"]], ids=["residual engine", "hooks"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("direction, ablation", [("denoising", "corrupt"), ("noising", "zero")])
def test_directions_and_ablations(direction, ablation, arch, sites):
    model = tiny_model(arch)
    task = random_task(model, padded=True)
    result = activation_patch(model, task, sites=sites, per_position=False, direction=direction,
                              ablation=ablation)
    for row in result.to_frame().itertuples():
        head = None if pd.isna(row.head) else int(row.head)
        expected = reference(model, task, row.site, row.layer, head, None, direction, ablation)
        assert abs(row.effect - expected) < 1e-5


def test_mean_ablation_takes_the_mean_over_prompts():
    model = tiny_model()
    task = random_task(model, n_prompts=4)
    result = activation_patch(model, task, sites=["resid_pre"], per_position=False, ablation="mean", layers=[1])
    _, cache = model.run_with_cache(task.clean, names=["blocks.1.hook_resid_pre"])
    mean = cache["blocks.1.hook_resid_pre"].mean(0, keepdim=True).expand(4, -1, -1)
    metric = LogitDiff.of(task)
    with torch.no_grad():
        before = metric(model(task.clean)).mean()
        with model.hooks(fwd={"blocks.1.hook_resid_pre": lambda x, hook: mean}):
            after = metric(model(task.clean)).mean()
    assert abs(float(result.effects[0]) - float(after - before)) < 1e-5


@pytest.mark.parametrize("sites", RUNS.values(), ids=RUNS.keys())
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_clean_into_clean_changes_nothing_exactly(arch, direction, sites):
    model = tiny_model(arch)
    result = activation_patch(model, same(random_task(model, padded=True)), sites=sites, direction=direction)
    assert result.effects.abs().max() == 0


@pytest.mark.parametrize("sites", [["z", "pattern"], RESIDUAL], ids=["hooks", "residual engine"])
def test_effects_do_not_depend_on_the_chunking(sites):
    model = tiny_model()
    task = random_task(model)
    one = activation_patch(model, task, sites=sites)
    many = activation_patch(model, task, sites=sites, budget_mb=0.01)
    assert torch.allclose(one.effects, many.effects, atol=1e-6)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_patches_that_change_nothing_the_metric_reads_are_exactly_zero(arch):
    """Positions before the first changed token, and patches after the last attention away from the last position."""
    model = tiny_model(arch)
    task = random_task(model, changed=(5,))
    frame = activation_patch(model, task, sites=RESIDUAL).to_frame()
    assert (frame[frame.position < 5].effect == 0).all()
    last = model.n_layers - 1
    after = frame[(frame.layer == last) & (frame.site == "mlp_out") & (frame.position < task.n_pos - 1)]
    assert len(after) and (after.effect == 0).all()
    assert frame[frame.position >= 5].effect.abs().max() > 1e-2


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 0.1), (torch.float16, 2e-2), (torch.float64, 1e-10)])
def test_residual_engine_in_every_dtype(dtype, tol):
    """The engine runs in the model's dtype; it agrees with one forward per patch to that dtype's rounding."""
    model = tiny_model(dtype=dtype)
    task = random_task(model, changed=(3,))
    frame = activation_patch(model, task, sites=RESIDUAL).to_frame()
    for row in frame[frame.position >= 3].sample(12, random_state=1).itertuples():
        head = None if pd.isna(row.head) else int(row.head)
        expected = reference(model, task, row.site, row.layer, head, int(row.position))
        assert abs(row.effect - expected) <= tol * max(1.0, abs(expected)), (row, expected)


def test_unknown_site_and_direction():
    model = tiny_model()
    task = random_task(model)
    with pytest.raises(UnknownMethodError, match="Unknown site 'zz'.*resid_pre"):
        activation_patch(model, task, sites=["zz"])
    with pytest.raises(UnknownMethodError, match="noising, denoising"):
        activation_patch(model, task, direction="sideways")
    with pytest.raises(UnknownMethodError, match="only makes sense when noising"):
        activation_patch(model, task, direction="denoising", ablation="mean")


def test_frame_and_figure():
    model = tiny_model()
    task = random_task(model)
    result = activation_patch(model, task, sites=["z", "attn_out"])
    frame = result.to_frame()
    assert frame.columns.tolist() == ["site", "layer", "head", "position", "effect", "effect_normalized"]
    span = result.clean - result.corrupt
    assert torch.allclose(torch.tensor(frame.effect_normalized.to_numpy()), result.effects / span)
    assert result.grid("z").shape == (model.n_layers, model.n_heads, task.n_pos)
    fig = result.figure()
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]


def test_gpt2_with_its_fp32_attention_path_patches_through_hooks():
    """`reorder_and_upcast_attn` changes GPT-2's attention arithmetic: the engine leaves it to the hooks, exactly."""
    model = tiny_model("gpt2", reorder_and_upcast_attn=True)
    task = random_task(model)
    assert not engine.applies(model, {"z"}, LogitDiff.of(task), task.n_pos)
    frame = activation_patch(model, task, sites=["z"], layers=[0]).to_frame()
    row = frame[frame.position == 4].iloc[0]
    assert abs(row.effect - reference(model, task, "z", 0, int(row["head"]), 4)) < 1e-5
