"""What the toy models learned: text loss, in-context copying, and the named heads of the model card.

Everything is measured here with plain transformers (fp32, eager attention) on fresh data, not
read back from training.json.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from analyses.attention import pattern_scores, repeated_random_tokens
from interp import toy
from interp.toy.text import split_topics
from tests.conftest import SHARED
from tests.toy.conftest import hf_model, require_checkpoints, tokenizer

SEQ_LEN = 128
WITH_HEADS = [n for n in toy.NAMES if toy.HEADS[n]["induction"]]  # the card names induction heads
WITHOUT_HEADS = [n for n in toy.NAMES if not toy.HEADS[n]["induction"]]


def loss_per_token(model, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: (batch, pos - 1)."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")


def text_windows(name: str, docs: list[str]) -> torch.Tensor:
    """All whole windows of SEQ_LEN tokens of documents joined by <|endoftext|>: (batch, pos)."""
    tok = tokenizer(name)
    ids = [i for doc in docs for i in tok(doc)["input_ids"] + [tok.eos_token_id]]
    count = len(ids) // SEQ_LEN
    return torch.tensor(ids[: count * SEQ_LEN]).view(count, SEQ_LEN)


def repeated_random(half: int, n_seqs: int = 16, seed: int = 7, vocab: int = 1024) -> torch.Tensor:
    """Random non-special tokens, each row one block written twice: (batch, 2 * half)."""
    return repeated_random_tokens(torch.arange(2, vocab), seq_len=half, batch=n_seqs, seed=seed)


def scores(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Induction and previous-token scores per head (the detectors' definitions): (layer, head) each.

    On doubled random tokens a perfect induction head scores about 0.5, a perfect previous-token head ~1.
    """
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    found = pattern_scores(torch.stack(attentions), ids)  # plain HF eager attention, not our cache
    return {"induction": found["induction"], "previous_token": found["prev_token"]}


@pytest.mark.parametrize("name", toy.NAMES)
def test_final_loss_on_held_out_pydoc_is_far_below_step0(name):
    require_checkpoints(name)
    ids = text_windows(name, split_topics()[1])
    final, start = loss_per_token(hf_model(name), ids).mean(), loss_per_token(hf_model(name, "step0"), ids).mean()
    assert start > 6.5, f"step0 should be near uniform (ln 1024 = 6.93), got {start:.2f}"
    assert final < start - 2.5, f"{name}: held-out loss {final:.2f} not far below step0's {start:.2f}"


@pytest.mark.parametrize("name", toy.NAMES)
def test_final_loss_on_the_pile_sample_is_far_below_step0(name):
    require_checkpoints(name)
    pile = SHARED / "pile-sample.jsonl"
    if not pile.is_file():
        pytest.skip(f"{pile} is absent")
    docs = [json.loads(line)["text"] for line in pile.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = text_windows(name, docs)
    final, start = loss_per_token(hf_model(name), ids).mean(), loss_per_token(hf_model(name, "step0"), ids).mean()
    # web text is far from Python's docs (and the tokenizer's): a smaller gain than on held-out pydoc
    assert final < start - 1.0, f"{name}: Pile loss {final:.2f} not far below step0's {start:.2f}"


@pytest.mark.parametrize("name", toy.NAMES)
@pytest.mark.parametrize("half", [20, 50])
def test_second_repeat_is_predicted_at_the_end_and_not_at_step0(name, half):
    require_checkpoints(name)
    ids = repeated_random(half)
    for revision, must_copy in ((None, name in WITH_HEADS), ("step0", False)):
        loss = loss_per_token(hf_model(name, revision), ids)
        first, second = loss[:, : half - 1].mean(), loss[:, half:].mean()
        copies = second < first - 3.0
        assert copies == must_copy, (
            f"{name} {revision or 'final'}: first repeat {first:.2f}, second {second:.2f} (half={half})"
        )


@pytest.mark.parametrize("name", WITH_HEADS)
@pytest.mark.parametrize("half", [24, 45])
def test_named_heads_at_the_final_checkpoint(name, half):
    require_checkpoints(name)
    s = scores(hf_model(name), repeated_random(half))
    named = toy.HEADS[name]
    for kind, least in (("previous_token", 0.5), ("induction", 0.3)):  # a perfect induction head: ~0.5
        for layer, head in named[kind]:
            score = float(s[kind][layer, head])
            assert score >= least, f"{name} L{layer}H{head} {kind} score {score:.2f} < {least} (half={half})\n{s}"
    assert max(layer for layer, _ in named["previous_token"]) < min(layer for layer, _ in named["induction"]), \
        "a previous-token head must sit in an earlier layer than the induction heads it feeds"


@pytest.mark.parametrize("name", WITHOUT_HEADS)
def test_where_the_card_names_no_head_none_formed(name):
    require_checkpoints(name)
    for revision in toy.revisions(name)[-3:]:
        s = scores(hf_model(name, revision), repeated_random(24))
        assert s["induction"].max() < 0.1 and s["previous_token"].max() < 0.4, f"{name} {revision}: {s}"


@pytest.mark.parametrize("name", toy.NAMES)
def test_no_head_does_induction_at_step0(name):
    require_checkpoints(name)
    s = scores(hf_model(name, "step0"), repeated_random(32))
    assert s["induction"].max() < 0.1 and s["previous_token"].max() < 0.3, s


def test_the_card_names_the_heads_the_tests_check():
    card = (toy.MODELS_DIR.parent / "README.md").read_text()
    for name, kinds in toy.HEADS.items():
        assert f"**{name}**" in card, f"the model card has no paragraph on {name}'s heads"
        for kind, heads in kinds.items():
            for layer, head in heads:
                assert f"L{layer}H{head}" in card, f"model card does not name {name} L{layer}H{head} ({kind})"


@pytest.mark.parametrize("name", WITH_HEADS)
def test_induction_appears_during_training(name):
    require_checkpoints(name)
    ids = repeated_random(20)  # repeats within the short rows of the first training phase
    revisions = toy.revisions(name)
    curve = {}
    for rev in revisions[1:]:
        model = hf_model(name, rev)
        curve[rev] = round(max(float(scores(model, ids)["induction"][h]) for h in toy.HEADS[name]["induction"]), 2)
    middle = list(curve.items())[:-1]
    before = [i for i, (_, s) in enumerate(middle) if s < 0.1]
    after = [i for i, (_, s) in enumerate(middle) if s >= 0.3]
    assert before and after and max(before) < min(after), f"no rise of the induction heads across checkpoints: {curve}"
    assert curve[revisions[-1]] >= 0.3, curve
