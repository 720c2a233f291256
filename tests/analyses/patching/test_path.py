"""Exact path patching against a brute-force reference; the residual engine against the hooks engine."""

from __future__ import annotations

import pytest
import torch

import interp
from analyses.patching import tasks
from analyses.patching.errors import GraphError
from analyses.patching.metrics import LogitDiff
from analyses.patching.path import path_patch

from .helpers import random_task, same, tiny_model


def sender_hooks(model, task, sender: str, mediate: bool) -> dict:
    """The first run's hooks: the sender corrupt, every other head frozen clean, MLPs free or frozen."""
    L = model.n_layers
    names = ["hook_embed", *(f"blocks.{ly}.attn.hook_z" for ly in range(L)),
             *(f"blocks.{ly}.hook_mlp_out" for ly in range(L))]
    _, clean = model.run_with_cache(task.clean, names=names)
    _, corrupt = model.run_with_cache(task.corrupt, names=names)
    hooks = {}
    for ly in range(L):
        def freeze_heads(z, hook, ly=ly):
            out = clean[f"blocks.{ly}.attn.hook_z"].clone()
            for h in range(model.n_heads):
                if sender == f"L{ly}H{h}":
                    out[:, :, h] = corrupt[f"blocks.{ly}.attn.hook_z"][:, :, h]
            return out
        hooks[f"blocks.{ly}.attn.hook_z"] = freeze_heads
        if sender == f"mlp{ly}":
            hooks[f"blocks.{ly}.hook_mlp_out"] = lambda x, hook, ly=ly: corrupt[f"blocks.{ly}.hook_mlp_out"]
        elif not mediate:
            hooks[f"blocks.{ly}.hook_mlp_out"] = lambda x, hook, ly=ly: clean[f"blocks.{ly}.hook_mlp_out"]
    if sender == "embed":
        hooks["hook_embed"] = lambda x, hook: corrupt["hook_embed"]
    return hooks


def receiver_site(model, receiver: str) -> tuple[str, int | None]:
    if receiver == "logits":
        return f"blocks.{model.n_layers - 1}.hook_resid_post", None
    if receiver.startswith("mlp"):
        return f"blocks.{receiver[3:]}.hook_mlp_in", None
    name, kind = receiver.split(".")
    layer, head = (int(v) for v in name[1:].split("H"))
    return f"blocks.{layer}.attn.hook_{kind}_input", head


def reference(model, task, sender: str, receiver: str, mediate: bool = True) -> float:
    """Wang et al. by hand, one pair, separate forwards: record the receiver's input with the sender
    corrupt and every other head frozen clean, then rerun clean with only that input patched."""
    hooks = sender_hooks(model, task, sender, mediate)
    site, head = receiver_site(model, receiver)
    recorded = {}

    def record(x, hook):
        recorded["x"] = (x if head is None else x[:, :, head]).clone()

    with torch.no_grad():
        with model.hooks(fwd={**hooks, site: [hooks[site], record] if site in hooks else record}):
            model(task.clean)

        def patch(x, hook):
            if head is None:
                return recorded["x"]
            x = x.clone()
            x[:, :, head] = recorded["x"]
            return x

        metric = LogitDiff.of(task)
        before = metric(model(task.clean)).mean()
        with model.hooks(fwd={site: patch}):
            after = metric(model(task.clean)).mean()
    return float(after - before)


PAIRS = [("L0H1", "L2H0.k"), ("L0H0", "L1H1.q"), ("L1H1", "L2H1.v"), ("embed", "mlp2"), ("mlp0", "logits"),
         ("L0H1", "logits"), ("L2H0", "logits"), ("embed", "L1H0.q")]


@pytest.mark.parametrize("mediate", [True, False])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_equals_the_brute_force_reference(arch, mediate):
    model = tiny_model(arch)
    task = random_task(model, changed=(2, 5, 8))
    pairs = PAIRS + ([("L1H0", "mlp1"), ("L0H1", "mlp1")] if arch == "gpt2" else [])
    for engine in ("residual", "hooks"):
        result = path_patch(model, task, [s for s, _ in pairs], sorted({r for _, r in pairs}), mediate=mediate,
                            engine=engine)
        for s, r in pairs:
            assert abs(result[s, r] - reference(model, task, s, r, mediate)) < 1e-5, (engine, s, r)
    assert max(abs(result[s, r]) for s, r in pairs) > 1e-2, "the test task should move the metric"


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_residual_engine_equals_hooks_engine_everywhere(arch, padded):
    model = tiny_model(arch)
    task = random_task(model, padded=padded, changed=(3, 6))
    receivers = ["logits", "mlp0", "mlp2", ("L1H0.k", "L1H1.k"), "L2H1.q", ("L2H0.v", "mlp1")]
    for mediate in (True, False):
        fast = path_patch(model, task, "all", receivers, mediate=mediate, engine="residual", positions=[3, 6, 9])
        slow = path_patch(model, task, "all", receivers, mediate=mediate, engine="hooks", positions=[3, 6, 9])
        assert torch.equal(fast.effects.isnan(), slow.effects.isnan())
        assert torch.allclose(fast.effects.nan_to_num(), slow.effects.nan_to_num(), atol=1e-5)


@pytest.mark.parametrize("engine", ["residual", "hooks"])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_clean_into_clean_changes_nothing_exactly(arch, engine):
    model = tiny_model(arch)
    task = same(random_task(model, padded=True))
    for direction in ("noising", "denoising"):
        result = path_patch(model, task, "all", ["logits", "mlp1", "L2H0.q", "L1H1.k"], engine=engine,
                            direction=direction)
        assert result.effects.nan_to_num().abs().max() == 0


def test_denoising_is_noising_with_the_runs_swapped():
    model = tiny_model()
    task = random_task(model, changed=(2, 5))
    swapped = tasks.Task("swapped", task.corrupt, task.clean, task.answer, task.wrong)
    a = path_patch(model, task, "heads", ["logits", "L2H0.k"], direction="denoising")
    b = path_patch(model, swapped, "heads", ["logits", "L2H0.k"])
    assert torch.allclose(a.effects.nan_to_num(), b.effects.nan_to_num(), atol=1e-6)


def test_toy_induction_runs_through_the_induction_heads_keys():
    """The previous-token head reaches the induction heads through their keys, hardly their queries."""
    model = interp.load("toy")
    task = tasks.induction(model, n_prompts=8)
    prev = "L{}H{}".format(*interp.toy.HEADS["toy-2l"]["previous_token"][0])
    heads = ["L{}H{}".format(*h) for h in interp.toy.HEADS["toy-2l"]["induction"]]
    k, q = tuple(f"{h}.k" for h in heads), tuple(f"{h}.q" for h in heads)
    result = path_patch(model, task, [prev], [k, q, "logits"])
    total = result.clean - result.corrupt
    share_k, share_q = -result[prev, "+".join(k)] / total, -result[prev, "+".join(q)] / total
    assert share_k > 0.8 and abs(share_q) < 0.05, (share_k, share_q)


def test_receiver_earlier_than_sender_is_refused():
    model = tiny_model()
    task = random_task(model)
    with pytest.raises(GraphError, match="reads the residual stream before every sender.*later layer"):
        path_patch(model, task, ["L2H0"], ["L1H0.q"])
    with pytest.raises(GraphError, match="'L1H0.q', 'L1H0.k' or 'L1H0.v'"):
        path_patch(model, task, ["L0H0"], ["L1H0"])
    result = path_patch(model, task, ["L0H0", "L2H0"], ["L1H0.q"])  # one pair without a path: NaN
    assert result.effects[1, 0].isnan() and not result.effects[0, 0].isnan()


def test_frame_and_figure():
    model = tiny_model()
    result = path_patch(model, random_task(model), "heads", ["logits", "L2H0.k"])
    frame = result.to_frame()
    assert frame.columns.tolist() == ["sender", "receiver", "effect", "effect_normalized"]
    assert len(frame) == model.n_layers * model.n_heads + 2 * model.n_heads  # NaN pairs left out
    assert result.figure().data[0].type == "heatmap"
