"""TransformerLens's TransformerBridge over a copy of a GPT-NeoX model's weights, for side-by-side benchmarks."""

from __future__ import annotations

import logging
import tempfile


def transformer_lens_bridge(hf):
    """The bridge over an eager-attention copy of `hf` (saved with a one-word tokenizer), or None if
    TransformerLens is not installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    path = tempfile.mkdtemp()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<e>": 0}, unk_token="<e>")),
                                  eos_token="<e>")
    config = hf.config
    copy = GPTNeoXForCausalLM(config.__class__(**config.to_dict())).eval()
    copy.load_state_dict(hf.state_dict())
    copy.config._attn_implementation = "eager"
    copy.save_pretrained(path)
    tok.save_pretrained(path)
    return TransformerBridge.boot_transformers(path, hf_model=copy, tokenizer=AutoTokenizer.from_pretrained(path),
                                               device="cpu")
