"""The toy suite as data: architectures, model shapes, optimiser settings and the checkpoint schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

VOCAB_SIZE = 1024
SEQ_LEN = 128
SHORT_LEN = 48  # row length of the first phase of training
SPECIAL_TOKENS = ("<|endoftext|>", "<|padding|>")  # ids 0 and 1, as in GPT-NeoX-20B


@dataclass(frozen=True)
class ToySpec:
    """Architecture and training recipe of one toy model."""

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    arch: Literal["neox", "gpt2"] = "neox"  # Pythia's GPTNeoXForCausalLM, or GPT2LMHeadModel
    steps: int = 3600
    short_steps: int = 2400  # the first steps use short rows (SHORT_LEN tokens) and data.SHORT_MIX
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to 10% of lr, as in Pythia
    warmup: int = 100
    weight_decay: float = 0.01  # Pythia's
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 1234
    n_evenly: int = 8  # evenly spaced checkpoints after the log-spaced ones
    last_log_step: int = 64  # step1, step2, step4, ... up to this one

    @property
    def d_head(self) -> int:
        """Dimensions per head (32 here, so 8 rotary dims at rotary_pct 0.25)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """Plain-data view for training.json."""
        return asdict(self)


SPECS: dict[str, ToySpec] = {
    "toy-2l": ToySpec(name="toy-2l", d_model=96, n_layers=2, n_heads=3),
    "toy-4l": ToySpec(name="toy-4l", d_model=64, n_layers=4, n_heads=2),
    "toy-gpt2": ToySpec(name="toy-gpt2", d_model=96, n_layers=2, n_heads=3, arch="gpt2"),  # toy-2l's size
}
N_CTX = 2 * SEQ_LEN  # positions every toy model can attend over


def schedule(spec: ToySpec) -> list[int]:
    """Checkpoint steps: 0, then 1, 2, 4, ... up to last_log_step, then evenly spaced to the end."""
    steps = [0]
    step = 1
    while step <= spec.last_log_step:
        steps.append(step)
        step *= 2
    every = spec.steps // spec.n_evenly
    steps += [every * k for k in range(1, spec.n_evenly + 1)]
    return sorted(set(steps))


def hf_config(spec: ToySpec):
    """The Hugging Face config of a toy model: Pythia's or GPT-2's architecture at the toy's size."""
    return gpt2_config(spec) if spec.arch == "gpt2" else neox_config(spec)


def neox_config(spec: ToySpec):
    """A GPTNeoXConfig with Pythia's architecture at the toy's size."""
    from interp.suite import neox_config as pythia_architecture

    return pythia_architecture(spec.d_model, spec.n_layers, spec.n_heads, VOCAB_SIZE, n_ctx=N_CTX)


def gpt2_config(spec: ToySpec):
    """A GPT2Config at the toy's size: learned positions, sequential residual, tied embeddings, no dropout."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=N_CTX,
        n_embd=spec.d_model,
        n_layer=spec.n_layers,
        n_head=spec.n_heads,
        n_inner=4 * spec.d_model,
        activation_function="gelu_new",  # GPT-2's tanh approximation
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # trained like the Pythia-architecture toys, without dropout
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
