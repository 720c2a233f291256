"""Metrics against hand computations, on patch-major rows."""

from __future__ import annotations

import torch

from analyses.patching import metrics

from .helpers import random_task, tiny_model


def test_logit_diff_by_hand_over_tiled_rows():
    logits = torch.randn(6, 5, 11)  # 2 patches x 3 prompts
    answer, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    m = metrics.LogitDiff(3, metrics._positions(-1, 3), answer=answer, wrong=wrong)
    expected = torch.tensor([logits[r, -1, answer[r % 3]] - logits[r, -1, wrong[r % 3]] for r in range(6)])
    assert torch.allclose(m(logits), expected)
    assert torch.allclose(m.per_patch(m(logits)), expected.view(2, 3).mean(1))


def test_logit_diff_at_chosen_positions_averages_them():
    logits = torch.randn(2, 5, 11)
    m = metrics.LogitDiff(2, metrics._positions([1, 3], 2), answer=torch.tensor([0, 1]), wrong=torch.tensor([2, 2]))
    expected = torch.stack([(logits[b, [1, 3], b] - logits[b, [1, 3], 2]).mean() for b in range(2)])
    assert torch.allclose(m(logits), expected)


def test_kl_is_zero_on_clean_and_positive_elsewhere():
    model = tiny_model()
    task = random_task(model)
    kl = metrics.resolve("kl", model, task)
    assert kl(model(task.clean)).abs().max() < 1e-6
    assert (kl(model(task.corrupt)) >= 0).all()


def test_prob_diff_by_hand():
    logits = torch.randn(2, 3, 4)
    signs = torch.tensor([[1.0, -1.0, 0.0, 1.0], [0.0, 0.0, -1.0, 1.0]])
    m = metrics.ProbDiff(2, metrics._positions(-1, 2), signs=signs)
    p = logits[:, -1].softmax(-1)
    assert torch.allclose(m(logits), (p * signs).sum(-1))


def test_any_callable_scalar_or_per_prompt():
    model = tiny_model()
    task = random_task(model)
    logits = torch.randn(6, 10, model.d_vocab)
    scalar = metrics.resolve(lambda lg: lg[:, -1, 0].mean(), model, task)
    assert torch.allclose(scalar.per_patch(scalar(logits)), logits[:, -1, 0].view(2, 3).mean(1))
    per_prompt = metrics.resolve(lambda lg: lg[:, -1, 0], model, task)
    assert torch.allclose(per_prompt(logits), logits[:, -1, 0])
