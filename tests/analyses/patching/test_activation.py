"""Batched activation patching against one plain forward per patch, on both architectures, padded or not."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analyses.patching import suffix
from analyses.patching.activation import NODE_SITES, activation_patch
from analyses.patching.errors import UnknownMethodError
from analyses.patching.metrics import LogitDiff

from .helpers import random_task, same, tiny_model

SITES = list(NODE_SITES)


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


@pytest.mark.parametrize("sites", [SITES, [s for s in SITES if s != "pattern"]], ids=["full runs", "suffix runs"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_batched_equals_one_forward_per_patch(arch, padded, sites):
    """Without the pattern, patches run from their position on, sharing the prefix's keys and values."""
    model = tiny_model(arch)
    task = random_task(model, padded=padded)
    assert suffix.applies(set(sites), LogitDiff.of(task), task.n_pos) == ("pattern" not in sites)
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


@pytest.mark.parametrize("direction, ablation", [("denoising", "corrupt"), ("noising", "zero")])
def test_directions_and_ablations(direction, ablation):
    model = tiny_model()
    task = random_task(model, padded=True)
    result = activation_patch(model, task, sites=["z", "mlp_out"], per_position=False, direction=direction,
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


@pytest.mark.parametrize("sites", [SITES, ["z", "resid_pre", "k"]], ids=["full runs", "suffix runs"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_clean_into_clean_changes_nothing_exactly(arch, direction, sites):
    model = tiny_model(arch)
    result = activation_patch(model, same(random_task(model, padded=True)), sites=sites, direction=direction)
    assert result.effects.abs().max() == 0


def test_effects_do_not_depend_on_the_chunking():
    model = tiny_model()
    task = random_task(model)
    one = activation_patch(model, task, sites=["z", "pattern"])
    many = activation_patch(model, task, sites=["z", "pattern"], budget_mb=0.01)
    assert torch.allclose(one.effects, many.effects, atol=1e-6)


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
