"""The computational graph of a transformer as senders, receivers and the edges between them.

    >>> g = Graph.from_dims(n_layers=6, n_heads=8, parallel_residual=True)   # pythia-70m
    >>> g.n_edges, g.n_edges == edge_count(6, 8, parallel_residual=True)
    (3580, True)
    >>> g.has_edge("L2H0", "mlp2"), Graph.from_dims(6, 8, parallel_residual=False).has_edge("L2H0", "mlp2")
    (False, True)

Senders write into the residual stream: the token embedding `embed`, each head `L{l}H{h}` and each
MLP `mlp{l}`. (GPT-2's learned position embedding depends only on the position, so it is the same in
every run; it is part of every receiver's input and never ablated, not even by a zero ablation.)
Receivers read from it: each head's query, key and value input `L{l}H{h}.q|k|v`, each MLP's input
`mlp{l}` and the unembedding `logits`. An edge joins a sender to every receiver that
reads the residual stream after the sender wrote it:

- parallel residual (Pythia): a layer's heads and MLP both read `resid_pre`, so a head never
  reaches its own layer's MLP;
- sequential residual (GPT-2): the MLP reads `resid_mid`, after its own layer's heads wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from analyses.patching.errors import GraphError

QKV = ("q", "k", "v")
_HEAD = re.compile(r"L(\d+)H(\d+)")
_RECEIVER = re.compile(r"L(\d+)H(\d+)\.([qkv])")
_MLP = re.compile(r"mlp(\d+)")


@dataclass(frozen=True)
class Node:
    """A sender or a receiver: `kind` is embed, head, mlp, q, k, v or logits; embed sits at layer -1."""

    name: str
    kind: str
    layer: int
    head: int | None = None

    @property
    def is_head(self) -> bool:
        return self.head is not None


def edge_count(n_layers: int, n_heads: int, parallel_residual: bool = True) -> int:
    """Closed form of the number of edges, with q, k and v as separate receivers.

    >>> edge_count(6, 8), edge_count(12, 12), edge_count(12, 12, parallel_residual=False)
    (3580, 32347, 32491)
    """
    senders, receivers = n_heads + 1, 3 * n_heads + 1  # per layer
    from_embed = n_layers * receivers + 1
    later = senders * (receivers * n_layers * (n_layers - 1) // 2 + n_layers)  # to later layers and the logits
    same_layer = 0 if parallel_residual else n_layers * n_heads  # head -> its own layer's MLP
    return from_embed + later + same_layer


class Graph:
    """Senders, receivers and the edge mask of one model's residual form."""

    def __init__(self, n_layers: int, n_heads: int, parallel_residual: bool = True):
        self.n_layers, self.n_heads, self.parallel_residual = n_layers, n_heads, parallel_residual
        self.senders: list[Node] = [Node("embed", "embed", -1)]
        self.receivers: list[Node] = []
        for layer in range(n_layers):
            heads = [Node(f"L{layer}H{h}", "head", layer, h) for h in range(n_heads)]
            self.senders += [*heads, Node(f"mlp{layer}", "mlp", layer)]
            self.receivers += [Node(f"{n.name}.{x}", x, layer, n.head) for n in heads for x in QKV]
            self.receivers.append(Node(f"mlp{layer}", "mlp", layer))
        self.receivers.append(Node("logits", "logits", n_layers))
        self._senders = {n.name: i for i, n in enumerate(self.senders)}
        self._receivers = {n.name: i for i, n in enumerate(self.receivers)}

    @classmethod
    def from_dims(cls, n_layers: int, n_heads: int, parallel_residual: bool = True) -> Graph:
        """The graph of any model with these dimensions."""
        return cls(n_layers, n_heads, parallel_residual)

    @classmethod
    def from_model(cls, model) -> Graph:
        """The graph of a loaded model, from its dimensions and residual form.

        >>> import interp
        >>> Graph.from_model(interp.load("toy")).n_edges
        69
        """
        return cls(model.n_layers, model.n_heads, _parallel(model))

    def __repr__(self) -> str:
        form = "parallel" if self.parallel_residual else "sequential"
        return (f"Graph({self.n_layers} layers x {self.n_heads} heads, {form} residual: "
                f"{len(self.senders)} senders, {len(self.receivers)} receivers, {self.n_edges} edges)")

    # ---- where each node writes and reads, on one line of residual-stream positions ----------

    def writes_at(self, node: Node) -> int:
        """Residual position a sender's output first appears at."""
        if node.kind == "embed":
            return 0
        if self.parallel_residual:
            return node.layer + 1
        return 2 * node.layer + (1 if node.kind == "head" else 2)

    def reads_at(self, node: Node) -> int:
        """Residual position a receiver reads."""
        if node.kind == "logits":
            return self.n_layers if self.parallel_residual else 2 * self.n_layers
        if self.parallel_residual:
            return node.layer
        return 2 * node.layer + (1 if node.kind == "mlp" else 0)

    @cached_property
    def mask(self) -> Tensor:
        """(sender, receiver) bool: True where the edge exists."""
        writes = torch.tensor([self.writes_at(s) for s in self.senders])
        reads = torch.tensor([self.reads_at(r) for r in self.receivers])
        return writes[:, None] <= reads[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @cached_property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge as (sender name, receiver name), sender-major."""
        pairs = self.mask.nonzero().tolist()
        return [(self.senders[s].name, self.receivers[r].name) for s, r in pairs]

    # ---- lookups --------------------------------------------------------------------------

    def sender(self, name: str) -> Node:
        """The sender called `name` (`embed`, `L3H2`, `mlp3`)."""
        if name not in self._senders:
            raise GraphError(f"No sender {name!r} in {self!r}. Senders are 'embed', "
                             f"'L{{layer}}H{{head}}' and 'mlp{{layer}}', e.g. 'L0H1' or 'mlp0'.")
        return self.senders[self._senders[name]]

    def receiver(self, name: str) -> Node:
        """The receiver called `name` (`L3H2.q`, `mlp3`, `logits`)."""
        if name not in self._receivers:
            hint = f" Did you mean '{name}.q', '{name}.k' or '{name}.v'?" if _HEAD.fullmatch(name) else ""
            raise GraphError(f"No receiver {name!r} in {self!r}.{hint} Receivers are "
                             f"'L{{layer}}H{{head}}.q|k|v', 'mlp{{layer}}' and 'logits'.")
        return self.receivers[self._receivers[name]]

    def sender_index(self, name: str) -> int:
        self.sender(name)
        return self._senders[name]

    def receiver_index(self, name: str) -> int:
        self.receiver(name)
        return self._receivers[name]

    def has_edge(self, sender: str, receiver: str) -> bool:
        """Whether `receiver` reads what `sender` wrote."""
        return bool(self.mask[self.sender_index(sender), self.receiver_index(receiver)])

    def mediators(self, sender: str, receiver: str) -> list[Node]:
        """The MLPs on a path from sender to receiver (they read after the sender wrote, write before it reads)."""
        s, r = self.sender(sender), self.receiver(receiver)
        return [m for m in self.senders if m.kind == "mlp" and self.writes_at(s) <= self.reads_at(m)
                and self.writes_at(m) <= self.reads_at(r)]

    def edge_index(self, sender: str, receiver: str) -> int:
        """Position of an edge in `edges` (and in every per-edge tensor)."""
        if not self.has_edge(sender, receiver):
            raise GraphError(
                f"There is no edge {sender} -> {receiver}: {receiver} reads the residual stream before "
                f"{sender} writes to it. Pick a receiver in a later layer"
                f"{'' if self.parallel_residual else ' (or its own layer MLP)'}."
            )
        return self._edge_ids[(sender, receiver)]

    @cached_property
    def _edge_ids(self) -> dict[tuple[str, str], int]:
        return {e: i for i, e in enumerate(self.edges)}

    def edge_tensor(self, values: Tensor) -> Tensor:
        """Scatter per-edge values (n_edges,) into a (sender, receiver) matrix, NaN where no edge."""
        out = torch.full(self.mask.shape, float("nan"), dtype=values.dtype)
        out[self.mask] = values.to("cpu")
        return out

    def nodes(self) -> list[Node]:
        """Every node once, in layer order: embed, each layer's heads then MLP, logits."""
        return [*self.senders, self.receivers[-1]]


def parse_sender(name: str) -> tuple[str, int, int | None]:
    """('head', layer, head) | ('mlp', layer, None) | ('embed', -1, None) from a sender's name."""
    if name == "embed":
        return "embed", -1, None
    if m := _HEAD.fullmatch(name):
        return "head", int(m[1]), int(m[2])
    if m := _MLP.fullmatch(name):
        return "mlp", int(m[1]), None
    raise GraphError(f"{name!r} is not a sender name: use 'embed', 'L{{layer}}H{{head}}' or 'mlp{{layer}}'.")


def _parallel(model) -> bool:
    return bool(model.parallel_residual)
