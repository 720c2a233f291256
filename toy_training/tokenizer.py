"""A small GPT-NeoX-style byte-level BPE tokenizer, trained on the toy corpus."""

from __future__ import annotations

from toy_training.corpus import EOT
from toy_training.spec import SPECIAL_TOKENS, VOCAB_SIZE


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE (NFC, no prefix space) and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def load_tokenizer(directory):
    """The suite's tokenizer saved in `directory` (tokenizer.json), wrapped as `train_tokenizer` wraps it."""
    from pathlib import Path

    from tokenizers import Tokenizer

    return wrap(Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))


def wrap(tok):
    """PreTrainedTokenizerFast with Pythia's special tokens: bos = eos = unk = <|endoftext|>."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        add_bos_token=False,
        model_max_length=2048,
    )
