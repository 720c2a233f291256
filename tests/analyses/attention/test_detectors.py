"""Head detectors: exact scores on hand-made patterns, TransformerLens parity, padded batches,
the one repeated-random-token generator, and the heads the toy model card names."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import interp
from analyses.attention import (
    DETECTORS,
    AttentionPatterns,
    detect_heads,
    detection_patterns,
    head_scores,
    pattern_scores,
    patterns,
    repeated_random_tokens,
)
from interp import toy
from interp.errors import InputError
from tests.analyses.helpers import hand_made, tiny_model
from tests.conftest import twin

N = 6


def identity(n: int = N) -> torch.Tensor:
    return torch.eye(n)[None, None]  # (layer, head, q_pos, k_pos)


def sub_diagonal(n: int = N) -> torch.Tensor:
    """Every query on the token before it; position 0 can only attend to itself."""
    a = torch.zeros(n, n)
    a[0, 0] = 1
    a[torch.arange(1, n), torch.arange(n - 1)] = 1
    return a[None, None]


def uniform(n: int = N) -> torch.Tensor:
    return (torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None])[None, None]


def scores_of(pattern: torch.Tensor, ids=None, **options) -> dict[str, float]:
    ids = list(range(10, 10 + pattern.shape[-1])) if ids is None else ids
    result = head_scores(hand_made(pattern, ids), **options)
    return {name: result.scores[name][0, 0].item() for name in DETECTORS}


# ---- exact scores on hand-made patterns -------------------------------------------------------


def test_identity_scores_are_the_formula_values():
    got = scores_of(identity())
    want = {
        "prev_token": 0,
        "duplicate_token": 0,
        "induction": 0,
        "first_token": 1 / N,
        "mean_distance": 0,
    }
    assert got == pytest.approx(want, abs=1e-7), "identity: only row 0 looks at position 0, from 0 tokens away"


def test_sub_diagonal_scores_are_the_formula_values():
    assert scores_of(sub_diagonal()) == pytest.approx(
        {
            "prev_token": (N - 1) / N,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": 2 / N,
            "mean_distance": (N - 1) / N,
        },
        abs=1e-7,
    )
    # without self-attention, row 0 drops out: every remaining query is on its previous token
    assert scores_of(sub_diagonal(), exclude_current=True) == pytest.approx(
        {
            "prev_token": 1,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": 1 / (N - 1),
            "mean_distance": 1,
        },
        abs=1e-7,
    )
    # without position 0, rows 0 and 1 drop out; first_token still counts position 0
    got = scores_of(sub_diagonal(), exclude_first=True)
    assert got["prev_token"] == pytest.approx(1) and got["mean_distance"] == pytest.approx(1)
    assert got["first_token"] == pytest.approx(2 / N), "exclude_first must not apply to first_token"


def test_uniform_scores_are_the_formula_values():
    harmonic = sum(1 / (q + 1) for q in range(N))
    assert scores_of(uniform()) == pytest.approx(
        {
            "prev_token": (harmonic - 1) / N,
            "duplicate_token": 0,
            "induction": 0,
            "first_token": harmonic / N,
            "mean_distance": (N - 1) / 4,
        },
        abs=1e-6,
    )
    kept = N - harmonic  # attention left once each row's weight on itself is dropped
    got = scores_of(uniform(), exclude_current=True)
    assert got["prev_token"] == pytest.approx((harmonic - 1) / kept, abs=1e-6)


def test_abs_measure_is_one_minus_the_mean_row_error():
    assert scores_of(sub_diagonal(), error_measure="abs")["prev_token"] == pytest.approx(1 - 1 / N)
    assert scores_of(identity(), error_measure="abs")["prev_token"] == pytest.approx(-1 + 1 / N)
    # first_token and mean_distance stay shares / means whatever the error measure
    assert scores_of(identity(), error_measure="abs")["first_token"] == pytest.approx(1 / N)


def test_repeats_score_as_induction_and_duplicate_heads():
    ids = [7, 8, 9, 7, 8, 9]
    marks = detection_patterns(torch.tensor(ids))
    for name in ("induction", "duplicate_token"):
        d = marks[name]
        a = d.clone()
        a[d.sum(1) == 0] = torch.eye(6)[d.sum(1) == 0]  # queries without a target look at themselves
        a = a / a.sum(1, keepdim=True)
        got = scores_of(a[None, None], ids)
        assert got[name] == pytest.approx(0.5), f"{name}: 3 of 6 queries have a target and attend to it"
    assert marks["induction"][3].nonzero().flatten().tolist() == [1], "after the earlier 7 comes position 1"
    assert marks["duplicate_token"][3].nonzero().flatten().tolist() == [0]


# ---- parity with TransformerLens's head detector ---------------------------------------------


@pytest.fixture(scope="module")
def rich_patterns() -> AttentionPatterns:
    model = tiny_model(seed=2, num_attention_heads=4)
    return patterns(model, torch.tensor([[5, 17, 3, 99, 5, 17, 3, 99, 42, 7, 5, 17, 17, 3]]))


def _tl_scores(pats: AttentionPatterns, tl_name: str, **options) -> torch.Tensor:
    """TL's detect_head fed our cached patterns through a stand-in model (nothing re-run)."""
    from transformer_lens import ActivationCache as TLCache
    from transformer_lens.head_detector import detect_head

    pattern, ids = pats.row(0)
    cfg = SimpleNamespace(device="cpu", dtype=torch.float32, n_ctx=10**6, n_layers=pats.n_layers, n_heads=pats.n_heads)
    stand_in = SimpleNamespace(cfg=cfg, to_tokens=lambda seq: torch.tensor([ids]))
    cache = TLCache(
        {f"blocks.{L}.attn.hook_pattern": pattern[i] for i, L in enumerate(pats.layers)},
        stand_in,
        has_batch_dim=False,
    )
    return detect_head(stand_in, "unused", tl_name, cache=cache, **options)


@pytest.mark.parametrize(
    "name,tl_name",
    [
        ("prev_token", "previous_token_head"),
        ("duplicate_token", "duplicate_token_head"),
        ("induction", "induction_head"),
    ],
)
@pytest.mark.parametrize("error_measure", ["mul", "abs"])
@pytest.mark.parametrize("exclude_first", [False, True])
@pytest.mark.parametrize("exclude_current", [False, True])
def test_scores_equal_transformer_lens(rich_patterns, name, tl_name, error_measure, exclude_first, exclude_current):
    pytest.importorskip("transformer_lens")
    options = {"exclude_first": exclude_first, "exclude_current": exclude_current}
    theirs = _tl_scores(
        rich_patterns,
        tl_name,
        exclude_bos=exclude_first,
        exclude_current_token=exclude_current,
        error_measure=error_measure,
    )
    ours = head_scores(rich_patterns, error_measure=error_measure, **options).scores[name]
    atol = 1e-6 if error_measure == "mul" else 5e-4 + 1e-6  # TL rounds "abs" to 3 decimals
    torch.testing.assert_close(
        ours,
        theirs,
        atol=atol,
        rtol=0,
        msg=lambda m: f"{name} {error_measure} {options} vs TL: {m}",
    )


# ---- batches and random tokens ----------------------------------------------------------------


def test_padded_batch_scores_are_the_mean_of_each_prompt_alone():
    model = tiny_model(seed=1)
    prompts = ["t5 t17 t3 t99 t5 t17 t3 t99", "t8 t9 t8 t9 t8"]
    batch = patterns(model, prompts)
    assert batch.str_tokens[1] == ["t8", "t9", "t8", "t9", "t8"], "pads must not appear as tokens"
    alone = [head_scores(patterns(model, p), exclude_current=True) for p in prompts]
    together = head_scores(batch, exclude_current=True)
    for name in DETECTORS:
        mean = (alone[0].scores[name] + alone[1].scores[name]) / 2
        torch.testing.assert_close(together.scores[name], mean, atol=1e-5, rtol=1e-5)


def test_repeated_random_tokens_are_seeded_repeats_of_ordinary_tokens():
    model = tiny_model()
    ids = repeated_random_tokens(model, seq_len=20, batch=3, seed=4)
    assert ids.shape == (3, 40) and ids.dtype == torch.long
    assert torch.equal(ids[:, :20], ids[:, 20:])
    assert torch.equal(ids, repeated_random_tokens(model, 20, 3, seed=4))
    assert not torch.equal(ids, repeated_random_tokens(model, 20, 3, seed=5))
    assert not set(ids.flatten().tolist()) & set(model.tokenizer.all_special_ids)
    with pytest.raises(InputError, match=r"seq_len=40 must be in 2..32"):
        repeated_random_tokens(model, seq_len=40)
    with pytest.raises(InputError, match="batch=0"):
        repeated_random_tokens(model, batch=0)


def test_a_pool_of_ids_draws_uniformly_from_it():
    pool = torch.tensor([7, 9, 11])
    ids = repeated_random_tokens(pool, seq_len=500, batch=2, seed=0)
    counts = torch.bincount(ids[:, :500].flatten(), minlength=12)[pool]
    assert set(ids.unique().tolist()) == {7, 9, 11}
    assert counts.min() > 250, f"not uniform over the pool: {counts.tolist()}"


def test_pattern_scores_of_raw_hf_attention_equal_the_model_path():
    model = tiny_model(seed=1)
    ids = repeated_random_tokens(model, seq_len=8, batch=2, seed=3)
    hf = twin(model.hf)  # plain HF eager attention, independent of our cache
    with torch.no_grad():
        attentions = hf(input_ids=ids, output_attentions=True).attentions
    raw = pattern_scores(torch.stack(attentions), ids)
    ours = detect_heads(model, ids)
    for name in DETECTORS:
        torch.testing.assert_close(raw[name], ours.scores[name], atol=1e-5, rtol=1e-5, msg=name)


def brute_force_induction(pattern: torch.Tensor, ids: list[int]) -> float:
    """TransformerLens's induction score of one head, the obvious way: mean over queries of the weight on
    every key whose previous token equals the query's token."""
    n = len(ids)
    total = 0.0
    for q in range(n):
        total += sum(float(pattern[q, k]) for k in range(1, q + 1) if ids[k - 1] == ids[q])
    return total / n


def test_induction_on_hand_made_repeats_is_about_one_half():
    ids = [5, 6, 7, 8, 5, 6, 7, 8]
    perfect = torch.zeros(8, 8)
    perfect[:4, 0] = 1  # the first copy has no earlier occurrence: attend to the first token
    perfect[torch.arange(4, 8), torch.arange(1, 5)] = 1  # after an earlier copy: the token that followed it
    got = pattern_scores(perfect[None, None, None], torch.tensor([ids]))["induction"].item()
    assert got == pytest.approx(brute_force_induction(perfect, ids)) == pytest.approx(0.5)


# ---- the toy suite: the heads its model card names (interp.toy.HEADS) --------------------------

DETECTOR_OF = {"previous_token": "prev_token", "induction": "induction"}  # the card's names -> DETECTORS


def load_toy(name: str, revision: str | None = None):
    """A toy model through interp.load; skipped where this checkout cannot load its architecture."""
    try:
        return interp.load(name, revision=revision)
    except interp.UnsupportedModelError as err:
        pytest.skip(f"{name}: {err}")


@pytest.fixture(scope="module", params=toy.NAMES)
def toy_model(request):
    return request.param, load_toy(request.param)


def test_detectors_find_the_heads_the_toy_model_card_names(toy_model):
    name, model = toy_model
    scores = detect_heads(model)  # 4 x (50 random tokens, twice)
    frame = scores.to_frame().round(3).to_string()
    if not any(toy.HEADS[name].values()):  # the card says no head formed: none may stand out
        assert scores.scores["induction"].max() < 0.1 and scores.scores["prev_token"].max() < 0.4, frame
        return
    for kind, named in toy.HEADS[name].items():
        detector = DETECTOR_OF[kind]
        values = scores.scores[detector]
        found = scores.top(detector, len(named))
        assert sorted(found) == sorted(named), f"{name}: best {detector} heads {found}, the card names {named}\n{frame}"
        weakest_named = min(values[L, h] for L, h in named)
        others = [values[L, h] for L in range(model.n_layers) for h in range(model.n_heads) if (L, h) not in named]
        assert weakest_named > 2 * max(others), f"{name}: {detector} heads do not stand out\n{frame}"
    # a perfect induction head scores 1/2 here: only the second copy has an earlier occurrence
    assert max(scores.scores["induction"][L, h] for L, h in toy.HEADS[name]["induction"]) > 0.35
    assert scores.scores["induction"].max() < 0.55, "above 1/2 is impossible on one repeat"


def test_toy_heads_show_on_a_repeated_text_prompt(toy_model):
    name, model = toy_model
    prompt = "If the object has a __len__ method, len() returns its length. " * 2
    scores = detect_heads(model, prompt.strip())
    if not toy.HEADS[name]["induction"]:
        pytest.skip(f"the model card names no heads of {name}")
    assert scores.top("induction", 1)[0] in toy.HEADS[name]["induction"]
    assert scores.top("prev_token", 1)[0] in toy.HEADS[name]["previous_token"]


def test_no_toy_head_is_detected_at_initialisation(toy_model):
    name, _ = toy_model
    scores = detect_heads(load_toy(name, "step0"))
    assert scores.scores["induction"].max() < 0.05 and scores.scores["prev_token"].max() < 0.1


@pytest.mark.parametrize("name", toy.NAMES)
def test_training_json_holds_the_one_induction_score(name):
    """The scores training.json records at a checkpoint are this module's, recomputed on plain HF attention."""
    from interp.loading import load_hf

    record = json.loads((toy.model_dir(name) / "training.json").read_text())
    final = record["checkpoints"][-1]
    repeat = record["repeat_eval"]
    ids = repeated_random_tokens(torch.arange(2, record["vocab_size"]), repeat["half"], repeat["n_seqs"],
                                 repeat["seed"])
    hf = load_hf(toy.checkpoint_path(name), dtype=torch.float32, attn_implementation="eager")  # plain HF model
    with torch.no_grad():
        pattern = torch.stack(hf(input_ids=ids, output_attentions=True).attentions)  # (layer, batch, head, q, k)
    recomputed = pattern_scores(pattern, ids)
    for kind, detector in DETECTOR_OF.items():
        torch.testing.assert_close(torch.tensor(final[kind]), recomputed[detector], atol=2e-4, rtol=0,
                                   msg=f"{name}: training.json does not hold the detectors' {detector} scores")
    for L, h in toy.HEADS[name]["induction"]:
        by_hand = sum(brute_force_induction(pattern[L, b, h], ids[b].tolist()) for b in range(4)) / 4
        assert pattern_scores(pattern[:, :4], ids[:4])["induction"][L, h].item() == pytest.approx(by_hand, abs=1e-5)
        assert 0.3 < final["induction"][L][h] < 0.55, "TransformerLens's scale: a perfect head is about 0.5"
