"""interp.load from directories and toy names: options, errors before any work, honest revisions, tokenizers."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, GPT2LMHeadModel, PreTrainedModel

import interp
from interp import suite, toy
from interp.errors import InvalidOptionError, TokenizerWarning
from interp.loading import SHIPPED, SHIPPED_TOKENIZER, shipped_tokenizer
from tests.conftest import SHARED, tiny_hf, word_tokenizer
from tests.hub_cache import disk_state


@pytest.fixture
def saved(tmp_path):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "m")
    word_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m", hf


def test_load_a_saved_directory_gives_the_same_model(saved):
    path, hf = saved
    model = interp.load(path)
    ids = torch.randint(1, 128, (1, 9))
    assert not model.hf.training, "load() must return an eval-mode model"
    assert torch.equal(model(ids), hf(ids).logits)
    assert model.tokenizer is not None and model.to_tokens("t4 t5").ids.tolist() == [[4, 5]]
    assert model.dtype == torch.float32
    assert model.revision is None, "a directory holds one checkpoint and has no revision to claim"
    assert model.origin.kind == "directory" and model.origin.name == str(path.resolve()) and model.name == "m"
    assert model.tokenizer_source == str(path.resolve())


def test_tokenizer_is_found_in_the_parent_directory(tmp_path):
    tiny_hf().save_pretrained(tmp_path / "step10")
    word_tokenizer().save_pretrained(tmp_path)
    model = interp.load(tmp_path / "step10")
    assert model.to_tokens("t9").ids.tolist() == [[9]] and model.tokenizer_source == str(tmp_path.resolve())


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("float16", torch.float16),
                                            ("torch.bfloat16", torch.bfloat16), (torch.float16, torch.float16),
                                            (None, torch.float32)])
def test_dtypes(saved, dtype, expected):
    assert interp.load(saved[0], dtype=dtype).dtype == expected


def test_device_and_attention_implementation_pass_through(saved):
    model = interp.load(saved[0], device="cpu", attn_implementation="eager")
    assert model.device == torch.device("cpu") and model.hf.config._attn_implementation == "eager"
    assert interp.load(saved[0], device=torch.device("cpu")).hf.config._attn_implementation == "sdpa"


@pytest.fixture
def no_work(monkeypatch):
    """Make reading any config or weights fail loudly: errors must come before that."""

    def boom(*args, **kwargs):
        raise AssertionError("interp.load started reading a model before validating its arguments")

    monkeypatch.setattr(AutoConfig, "from_pretrained", boom)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(boom))


BAD_ARGUMENTS = [
    (dict(dtype="int8"), InvalidOptionError, r"dtype='int8'.*'bf16'"),
    (dict(dtype=torch.int64), InvalidOptionError, r"dtype=torch\.int64.*torch\.bfloat16"),
    (dict(device="gpu0"), InvalidOptionError, r"device='gpu0'.*'cpu'"),
    (dict(device="cuda:99"), InvalidOptionError, r"device='cuda:99'.*'cpu'"),
    (dict(device="meta"), InvalidOptionError, r"device='meta'"),
    (dict(attn_implementation="flash"), InvalidOptionError, r"'flash'.*'sdpa', 'eager'"),
    (dict(revision=1000), interp.UnknownRevisionError, r"revision=1000.*revision='step1000'"),
    (dict(revision="step1500"), interp.UnknownRevisionError, r"step1000, step2000"),
    (dict(name="pythia-16m"), interp.UnknownModelError, r"'pythia-16m'.*pythia-160m"),
    (dict(name="gtp2-xl"), interp.UnknownModelError, r"'gtp2-xl'.*gpt2-xl"),
    (dict(name="pythia-14m-v0"), interp.UnknownModelError, r"no -v0 variant"),
    (dict(name=160), interp.UnknownModelError, r"160.*int.*'pythia-160m'"),
    (dict(name="nowhere/at/all"), interp.UnknownModelError, r"'nowhere/at/all' is neither a model name nor"),
    (dict(name="toy", revision="step5"), interp.UnknownRevisionError, r"'step5'.*step4, step8"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD_ARGUMENTS, ids=[str(k) for k, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_fail_before_any_work(kwargs, error, match, no_work):
    kwargs = {"name": "pythia-70m", **kwargs}
    with pytest.raises(error, match=match) as err:
        interp.load(kwargs.pop("name"), **kwargs)
    assert isinstance(err.value, interp.InterpError)


def test_a_revision_for_a_directory_is_refused(saved, no_work):
    with pytest.raises(interp.UnknownRevisionError, match=r"'step10' applies to hub names, not the directory"):
        interp.load(saved[0], revision="step10")


def test_missing_directories(tmp_path, no_work):
    with pytest.raises(interp.UnknownModelError, match="neither a model name nor an existing directory"):
        interp.load(tmp_path / "nowhere" / "model")
    with pytest.raises(interp.UnknownModelError, match=r"no directory at './pythia-1.4b'.*'pythia-1.4b'"):
        interp.load("./pythia-1.4b")


def test_other_architectures_are_refused_before_their_weights(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                vocab_size=50).save_pretrained(tmp_path)  # config.json only: no weights to read
    with pytest.raises(interp.UnsupportedModelError, match=r"'llama' model.*gpt_neox.*gpt2"):
        interp.load(tmp_path)


@pytest.mark.parametrize("revision", [None, "main", "step450"])
def test_toy_records_the_checkpoint_it_loaded(revision):
    expected = toy.revisions("toy-2l")[-1] if revision in (None, "main") else revision
    assert expected == ("step3600" if revision != "step450" else "step450")
    model = interp.load("toy", revision=revision)
    assert model.revision == model.origin.revision == expected and model.origin.requested_revision == revision
    assert model.origin.name == model.name == "toy-2l" and model.origin.kind == "toy"
    reference = toy.checkpoint_path("toy-2l", expected) / "model.safetensors"
    from safetensors.torch import load_file

    state = disk_state(model.hf)
    for name, value in load_file(reference).items():
        assert torch.equal(state[name], value), f"{name} is not {expected}'s"
    _, cache = model.run_with_cache("Hello", names=["blocks.0.hook_resid_post"])
    assert cache.provenance.revision == expected


def test_a_directory_without_a_tokenizer_says_so(tmp_path):
    tiny_hf().save_pretrained(tmp_path / "m")
    with pytest.warns(TokenizerWarning, match="No tokenizer for .*token ids only"):
        model = interp.load(tmp_path / "m")
    assert model.tokenizer is None and model.tokenizer_source is None


def test_a_pythia_sized_directory_without_a_tokenizer_gets_the_shipped_one(tmp_path):
    tiny_hf(vocab_size=suite.SIZES["70m"].d_vocab).save_pretrained(tmp_path / "m")
    with pytest.warns(TokenizerWarning, match="GPT-NeoX-20B tokenizer shipped"):
        model = interp.load(tmp_path / "m")
    assert model.tokenizer_source == SHIPPED and model.to_tokens("Hello, I am").ids.tolist() == [[12092, 13, 309, 717]]


def test_the_shipped_tokenizer_is_gpt_neox_20b():
    tok = shipped_tokenizer()
    assert tok("Hello, I am")["input_ids"] == [12092, 13, 309, 717]
    assert len(tok) == suite.TOKENIZER_VOCAB == 50277
    assert tok.eos_token_id == tok.bos_token_id == suite.EOS_TOKEN_ID == 0
    if (SHARED / "gpt-neox-20b-tokenizer.json").exists():
        assert SHIPPED_TOKENIZER.read_bytes() == (SHARED / "gpt-neox-20b-tokenizer.json").read_bytes()


def test_the_shipped_tokenizer_matches_the_reference_tokenizations():
    path = SHARED / "neox-tokenization-reference.txt"
    if not path.exists():
        pytest.skip("../shared/data/neox-tokenization-reference.txt is absent")
    lines = [line.rsplit(" => ", 1) for line in path.read_text().splitlines() if " => " in line]
    assert len(lines) == 100
    tok = shipped_tokenizer()
    for text, ids in lines:
        assert tok(text)["input_ids"] == [int(i) for i in ids.split(",")], text


def test_the_shipped_tokenizer_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["interp"]
    relative = SHIPPED_TOKENIZER.relative_to(Path(interp.__file__).parent).as_posix()
    assert any(fnmatch(relative, pattern) for pattern in patterns), f"{relative} would not be installed"


def test_a_gpt2_directory_loads(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(suite.gpt2_config(d_model=32, n_layers=2, n_heads=2, d_vocab=128, n_ctx=64)).eval()
    hf.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    model = interp.load(tmp_path)
    ids = torch.randint(1, 128, (2, 7))
    assert isinstance(model.hf, GPT2LMHeadModel) and torch.equal(model(ids), hf(ids).logits)
    assert model.to_tokens("t4 t5").ids.tolist() == [[4, 5]] and model.tokenizer_source == str(tmp_path.resolve())


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "folder"])
def test_loads_in_threads_at_once_leave_gpt2_heads_tied(tmp_path, packed):
    """transformers' from_pretrained swaps PreTrainedModel.tie_weights for a no-op while it builds a model; two
    loads at once in threads (the explorer prefetches in one) could leave the no-op in place, and every GPT-2
    loaded after that had an untied, random lm_head. Loads are serialized: the method stays, heads stay tied."""
    import threading

    from tests.conftest import tiny_gpt2

    if packed:
        source = "toy-gpt2"
    else:
        source = tmp_path / "gpt2"
        tiny_gpt2(seed=2).save_pretrained(source)
        word_tokenizer().save_pretrained(source)
    original = PreTrainedModel.tie_weights
    errors = []

    def load() -> None:
        try:
            for _ in range(4):
                model = interp.load(source)
                assert model.hf.lm_head.weight is model.hf.transformer.wte.weight
        except Exception as err:  # noqa: BLE001 - reported below, with the thread's failure
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    swapped, PreTrainedModel.tie_weights = PreTrainedModel.tie_weights, original  # later tests load tied models
    assert not errors
    assert swapped is original
    hf = GPT2LMHeadModel(tiny_gpt2(seed=3).config)
    assert hf.lm_head.weight is hf.transformer.wte.weight
