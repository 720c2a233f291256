"""Every patching method in every dtype on both architectures: it runs, and agrees with fp32 to the rounding."""

from __future__ import annotations

import pytest
import torch

from analyses.patching.activation import activation_patch
from analyses.patching.attribution import atp, eap, eap_ig
from analyses.patching.circuits import faithfulness_curve
from analyses.patching.metrics import LogitDiff
from analyses.patching.path import path_patch

from .helpers import random_task, tiny_model

METHODS = {
    "activation (residual engine)": lambda m, t, ref: activation_patch(m, t, sites=["z", "mlp_out"]).effects,
    "activation (hooks)": lambda m, t, ref: activation_patch(m, t, sites=["q", "pattern"]).effects,
    "path (residual engine)": lambda m, t, ref: path_patch(m, t, "heads", "logits").effects.flatten(),
    "path (hooks)": lambda m, t, ref: path_patch(m, t, "heads", ["logits", "mlp1"], engine="hooks").effects.flatten(),
    "atp*": lambda m, t, ref: atp(m, t, sites=["z", "k"], qk_fix=True).effects,
    "eap": lambda m, t, ref: eap(m, t).scores,
    "eap-ig": lambda m, t, ref: eap_ig(m, t, steps=3).scores,
    # the same circuits in every dtype: ranked by the fp32 model's scores
    "faithfulness curve": lambda m, t, ref: faithfulness_curve(m, t, eap(*ref), points=5).values,
}
# the dtype's rounding (eps) times a few roundings that add up, relative to the metric's own size
TOLERANCE = {torch.bfloat16: 8 * 2**-8, torch.float16: 8 * 2**-11, torch.float64: 1e-5}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("arch", ["neox", "gpt2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_in_every_dtype(method, arch, dtype):
    reference = tiny_model(arch)
    model = tiny_model(arch, dtype=dtype)
    task = random_task(reference, changed=(3,))
    run = METHODS[method]  # (model, its task, the fp32 model and task)
    expected = run(reference, task, (reference, task)).float()
    got = run(model, random_task(model, changed=(3,)), (reference, task)).float()
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())  # NaN only where a sender cannot reach a receiver
    assert torch.isfinite(got[~got.isnan()]).all()
    metric = LogitDiff.of(task)
    with torch.no_grad():
        scale = max(1.0, *(float(metric(reference(run)).abs().max()) for run in (task.clean, task.corrupt)))
    error = (got - expected).nan_to_num().abs().max()
    assert expected.nan_to_num().abs().max() > 1e-3, "the task should move the metric"
    assert error <= TOLERANCE[dtype] * scale, (error, scale)
