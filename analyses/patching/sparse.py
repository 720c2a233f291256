"""Circuits evaluated node by node: each circuit computes only the nodes its masks change.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> from analyses.patching.metrics import LogitDiff
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> applies(model, LogitDiff.of(task), task.n_pos), applies(model, LogitDiff.of(task, positions=[1]), task.n_pos)
    (True, False)
    >>> from analyses.patching import masked_values     # runs through this module when it applies

In a masked run, a node (a head or an MLP) often reads exactly what it reads in one of the two
reference runs:

- BASE: every incoming edge is kept and comes from a sender at its base value, so the node reads
  its base input and gives its base output;
- OTHER: every incoming edge is ablated, or comes from a sender already at its ablated value, so
  the node reads the ablated input. With the corrupt run as the ablation (and the same padding),
  its output is then the corrupt run's, which is its ablated value;
- MIXED: anything else. Only these are computed, for the circuits where they are mixed, batched
  over circuits, and only over the positions from the first one clean and corrupt differ in (the
  earlier keys and values are the base run's).

Two more things are left out. A node that nothing reads (every edge it has to a node that matters
is ablated) counts as at its ablated value. A node read at the last position alone (its kept edges
reach no key or value, and no node read everywhere) runs there alone: every MLP and head after the
last attention, and on large circuits many before it.

A mixed receiver's input is assembled from the ablated input by adding back what its kept edges
carry: input_r = ablated_in_r - sum over kept senders s of (ablated_s - value_s). Senders at their
ablated value drop out, so a small circuit sums few terms; the sum over a circuit's changed senders
is one matrix product per layer. The results equal the hooks' masked runs to float rounding (the
tests check 1e-5 in fp32, on both architectures, padded or not).
"""

from __future__ import annotations

import math
import weakref

import torch
from jaxtyping import Float
from torch import Tensor, nn

from analyses.patching import engine, runs
from analyses.patching.attribution import sender_outputs, sender_sites
from analyses.patching.errors import PatchingError
from analyses.patching.graph import Graph
from analyses.patching.metrics import Metric
from interp.attention import additive_mask
from interp.model import Model
from interp.tokens import Tokens

BASE, OTHER, MIXED = 0, 1, 2
PACKED = ("eager", "sdpa")  # attention implementations that take a custom 4-D mask, so both references run in one pass

# Each CPU model's scratch memory, kept between calls. A freed block that large goes back to the system, and the
# first touch of each of its fresh pages would cost the next call about as much as the arithmetic that fills it
# (a CUDA device keeps freed blocks in its caching allocator already). A call takes the block out while it runs,
# so calls at the same time never share one; it goes when the model does, or with `release_scratch`.
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def release_scratch(model=None) -> int:
    """Free the scratch memory that circuit evaluation keeps between calls on CPU, for one model or all of them;
    the bytes freed (allocated; the pages ever written, which are what the process holds, can be fewer). The
    next call allocates afresh.

        >>> import interp, torch
        >>> from analyses.patching import Graph, masked_values, tasks
        >>> model = interp.load("toy")
        >>> none = torch.ones(1, Graph.from_model(model).n_edges)   # one circuit: every edge ablated
        >>> values = masked_values(model, tasks.induction(model, n_prompts=4), none)
        >>> release_scratch(model) > 0, release_scratch(model)
        (True, 0)
    """
    if model is not None and not isinstance(model, Model):
        raise PatchingError(f"release_scratch got {type(model).__name__} {model!r:.60}; pass the interp.Model the "
                            "circuits ran on (e.g. the one interp.load returned), or nothing to free every model's.")
    models = list(_kept) if model is None else [model]
    return sum(block.nbytes for block in (_kept.pop(m, None) for m in models) if block is not None)


def applies(model, metric: Metric, n_pos: int) -> bool:
    """Whether node-by-node evaluation serves this model and metric: where the residual engine does (the metric
    reads only the last position), in eval mode."""
    return engine.applies(model, set(), metric, n_pos) and not model.hf.training


class References:
    """What every circuit shares: the base run, the ablated values and both runs' q, k, v, from `start` on.

    With `src=None` the ablation is the `other` run (the corrupt one when noising): it runs once, on the
    positions from `start` on (the earlier ones equal the base run's), and OTHER shortcuts apply.
    Otherwise `src` holds every sender's ablated output (sender, prompt, pos, d_model) and no node is
    ever at its ablated value (a mean or zero ablation is not any node's output).
    """

    @torch.no_grad()
    def __init__(self, model, graph: Graph, base: Tokens, start: int, metric: Metric, other: Tokens | None = None,
                 src: Tensor | None = None):
        self.model, self.graph, self.start, self.metric = model, graph, start, metric
        self.arch, self.n, self.n_pos = model.arch, len(base), base.ids.shape[1]
        self.acc = torch.promote_types(model.dtype, torch.float32)  # sums of many terms: fp32 for half models
        self.reads = [_read_site(graph, t) for t in range(_n_reads(graph))]
        self._layout(graph)
        qkv = [f"blocks.{ly}.attn.hook_{x}" for ly in range(model.n_layers) for x in "qkv"]
        final_site = f"blocks.{model.n_layers - 1}.hook_resid_post"
        names = {*sender_sites(model, "z"), *qkv, *(r for r in self.reads if r), final_site}
        names = sorted(names | ({"hook_pos_embed"} if self.arch.has("pos_embed") else set()))
        same = other is not None and torch.equal(other.ids, base.ids) and torch.equal(other.attention_mask,
                                                                                     base.attention_mask)
        cache, acts = self._runs(base, other if src is None and not same else None, names)
        final = cache[final_site]
        self.mask = base.attention_mask.to(model.device).bool()
        # per-head weights, (layer, head, ...): read once (each property access checks every layer's parameters)
        self.w_qkv, self.b_qkv = (model.W_Q, model.W_K, model.W_V), (model.b_Q, model.b_K, model.b_V)
        self.w_o = model.W_O
        self._folded: tuple[int, list[tuple[Tensor, Tensor, Tensor]]] = (-1, [])
        self._fold_buffer: Tensor | None = None
        self.eps = [self.arch.module(model.hf, "ln1", layer).eps for layer in range(model.n_layers)]
        self._block: Tensor | None = None  # the scratch memory, from `_kept` or allocated by `scratch`
        self.cos_sin = engine.rotary(model, final, base.position_ids.to(model.device))
        self.base_qkv = [self._rotated([cache[f"blocks.{ly}.attn.hook_{x}"] for x in "qkv"], 0)
                         for ly in range(model.n_layers)]  # (prompt, head, pos, d_head), every position
        self.other_qkv = None
        base_out = self._senders(cache, start)
        if src is not None:
            src = src[:, :, start:]
        elif same:
            src = base_out  # the same tokens: the same run, exactly
            self.other_qkv = [[t[:, :, start:] for t in qkv] for qkv in self.base_qkv]
        else:
            src = self._senders(acts, 0)
            self.other_qkv = [self._rotated([acts[f"blocks.{ly}.attn.hook_{x}"] for x in "qkv"], start)
                              for ly in range(model.n_layers)]  # from `start` on
        given = src is not None and self.other_qkv is None  # a mean or zero ablation
        self.src = src.to(self.acc)  # (sender, prompt, pos, d_model), from `start` on
        self.delta = self.src - base_out.to(self.acc)
        base_in = [(cache[r] if r else final)[:, start:].to(self.acc) for r in self.reads]
        # every receiver's input with every edge ablated: the base input plus every earlier sender's change, or,
        # for a mean or zero ablation, what is not a sender's output plus every earlier sender's ablated output.
        # (A zero ablation's residual is small next to the base's, and the base input less the changes would
        # keep the base run's rounding, which is large in a half-precision model.)
        start_in, terms = (self._rest(cache), self.src) if given else (base_in, self.delta)
        self.other_in, total, done = [], torch.zeros_like(base_in[0]), 0
        for count, b in zip(self.counts, start_in, strict=True):
            total += terms[done:count].sum(0)
            self.other_in.append(b + total)
            done = count
        ends = torch.cat([base_in[-1][:, -1:], self.other_in[-1][:, -1:]])  # both runs' final states, one unembedding
        self.base_values, self.other_values = self.values(ends).view(2, self.n)

    def _layout(self, graph: Graph) -> None:
        """Where nodes sit, from the graph alone: the receivers reading at each point (`stages`), how many senders
        wrote before each (`counts`), and which receivers are read at every position whenever their node matters
        (`everywhere`: keys and values, which later queries read)."""
        self.writes = [graph.writes_at(s) for s in graph.senders]
        self.last_attention = max(graph.reads_at(r) for r in graph.receivers if r.kind in "qkv")
        self.stages = [[i for i, r in enumerate(graph.receivers) if graph.reads_at(r) == t]
                       for t in range(len(self.reads))]
        assert all(stage == list(range(stage[0], stage[-1] + 1)) for stage in self.stages)  # see _span
        self.counts = [sum(w <= t for w in self.writes) for t in range(len(self.reads))]
        self.everywhere = torch.tensor([r.kind in "kv" for r in graph.receivers])
        self.owner = torch.tensor([-1 if r.kind == "logits" else graph.sender_index(r.name.split(".")[0])
                                   for r in graph.receivers])  # the node each receiver feeds
        self.write_groups = [[s for s, w in enumerate(self.writes) if w == t] for t in sorted(set(self.writes))]

    def _runs(self, base: Tokens, other: Tokens | None, names: list[str]) -> tuple[dict, dict | None]:
        """The named sites of the base run, and of the other run from `start` on (None without one).

        Both run in one pass, each prompt packed into one sequence: the other's tokens from `start` on
        follow the base's, at their own positions, and attend to the base's keys before `start` (the
        other's own there) and to each other. One pass of 1.5 times the tokens costs less than two.
        """
        model, start, n_pos = self.model, self.start, base.ids.shape[1]
        packed = other is not None and model.hf.config._attn_implementation in PACKED
        acts: dict[str, Tensor] = {}

        def keep(x: Tensor, site) -> None:
            acts[site.name] = torch.cat([acts[site.name], x.detach()], 1) if site.name in acts else x.detach()

        device = model.device
        with torch.no_grad(), model.hooks(fwd={name: keep for name in names}):
            if packed:
                model.hf.base_model(input_ids=torch.cat([base.ids, other.ids[:, start:]], 1).to(device),
                                    position_ids=torch.cat([base.position_ids, other.position_ids[:, start:]],
                                                           1).to(device),
                                    attention_mask=self._packed_mask(base, other), use_cache=False)
            else:  # an attention implementation that takes no custom mask: the two runs one after the other
                for tokens in (base,) if other is None else (base, other):
                    model.hf.base_model(**{k: v.to(device) for k, v in tokens.hf_inputs().items()}, use_cache=False)
        if other is None:
            return acts, None
        rest = n_pos if packed else n_pos + start  # where the other's positions from `start` on begin
        return {k: v[:, :n_pos] for k, v in acts.items()}, {k: v[:, rest:] for k, v in acts.items()}

    def _packed_mask(self, base: Tokens, other: Tokens) -> Float[Tensor, "prompt 1 q_pos k_pos"]:
        """The additive mask of the packed runs: causal within each, the other's queries also on the base's keys
        before `start`, padding masked. A query that sees no key (a pad) sees itself: its value is never read."""
        n_pos, start = base.ids.shape[1], self.start
        extra = n_pos - start
        base_keys, other_keys = base.attention_mask.bool(), other.attention_mask[:, start:].bool()
        allowed = torch.zeros(len(base), n_pos + extra, n_pos + extra, dtype=torch.bool)
        allowed[:, :n_pos, :n_pos] = torch.ones(n_pos, n_pos, dtype=torch.bool).tril() & base_keys[:, None, :]
        allowed[:, n_pos:, :start] = base_keys[:, None, :start]
        allowed[:, n_pos:, n_pos:] = torch.ones(extra, extra, dtype=torch.bool).tril() & other_keys[:, None, :]
        allowed |= torch.eye(n_pos + extra, dtype=torch.bool) & ~allowed.any(-1, keepdim=True)
        return additive_mask(allowed[:, None], torch.empty(0, dtype=self.model.dtype)).to(self.model.device)

    def _rest(self, cache: dict[str, Tensor]) -> list[Tensor]:
        """What the residual stream holds at each read point besides the senders' outputs, from `start` on: the
        attention output biases written by then, and the position embeddings where the model adds them (GPT-2)."""
        model, start = self.model, self.start
        rest = torch.zeros(self.n, self.n_pos - start, model.d_model, dtype=self.acc, device=model.device)
        if "hook_pos_embed" in cache:
            rest += cache["hook_pos_embed"][:, start:].to(self.acc)
        biases = self.model.b_O.to(self.acc)  # (layer, d_model)
        written = [self.writes[self.graph.sender_index(f"L{layer}H0")] for layer in range(model.n_layers)]
        return [rest + biases[[w <= t for w in written]].sum(0) for t in range(len(self.reads))]

    def _senders(self, acts: dict[str, Tensor], first: int) -> Float[Tensor, "sender prompt pos d_model"]:
        """Every sender's output from position `first` on, in graph.senders order."""
        return sender_outputs(self.graph, {name: x[:, first:] for name, x in acts.items()}, self.w_o)

    def _rotated(self, qkv: list[Tensor], first: int) -> list[Tensor]:
        """q, k, v (prompt, pos, head, d_head) as (prompt, head, pos, d_head), q and k rotated at positions first.."""
        q, k, v = (t.transpose(1, 2) for t in qkv)
        if self.cos_sin is not None:
            cos, sin = (t[:, first:] for t in self.cos_sin)
            q, k = self.arch.apply_rotary(q, k, cos, sin)
        return [q, k, v]

    def scratch(self, k: int) -> tuple[Tensor, Tensor]:
        """The bank (1 + sender, circuit, prompt, pos, d_model) and input (receiver, circuit, ...) buffers for k
        circuits, in one block of memory that later chunks, and on CPU later calls, reuse (see `_kept`). The
        bank's row 0 holds the inputs' common term (`_Chunk._inputs`), sender s's change is row 1 + s. They hold
        whatever an earlier use left: every row is written before it counts."""
        shape = (k, self.n, self.n_pos - self.start, self.model.d_model)
        per, rows = math.prod(shape), 1 + len(self.graph.senders)  # one row's elements; the bank's rows
        size = (rows + max(map(len, self.stages))) * per
        if self._block is None:
            self._block = _kept.pop(self.model, None)
        block = self._block
        if block is None or block.numel() < size or block.dtype != self.acc or block.device != self.model.device:
            self._block = block = None  # the old one goes before the new one is allocated
            self._block = block = torch.empty(size, dtype=self.acc, device=self.model.device)
        return block[:rows * per].view(rows, *shape), block[rows * per:size].view(-1, *shape)

    def __enter__(self) -> References:
        return self

    def __exit__(self, *exc) -> None:
        """Done with the scratch memory: on CPU it is kept for the model's next call, if larger than any kept."""
        block, self._block = self._block, None
        if block is not None and block.device.type == "cpu":
            kept = _kept.get(self.model)
            if kept is None or kept.nbytes < block.nbytes:
                _kept[self.model] = block

    def folded(self, layer: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """ln1 folded into each head's q, k and v projections: per kind, (g W, sum of g W over d_model, b W + b'),
        each (head, ...). One layer's at a time (a layer's heads run together), in one buffer that every
        layer reuses: fresh memory for each would cost more than the products that fill it."""
        if self._folded[0] != layer:
            ln = self.arch.module(self.model.hf, "ln1", layer)
            g, beta = ln.weight.detach().to(self.acc), ln.bias.detach().to(self.acc)  # a parameter in @ copies w
            folds = []
            for which, (weights, biases) in enumerate(zip(self.w_qkv, self.b_qkv, strict=True)):
                w = weights[layer].to(self.acc)  # (head, d_model, d_head)
                if self._fold_buffer is None:
                    self._fold_buffer = torch.empty(3, *w.shape, dtype=self.acc, device=w.device)
                gw = torch.mul(g[None, :, None], w, out=self._fold_buffer[which])
                sums = torch.stack([g, beta]) @ w  # (head, 2, d_head): sum of g W over d_model, and b W
                folds.append((gw, sums[:, 0], sums[:, 1] + biases[layer].to(self.acc)))
            self._folded = (layer, folds)
        return self._folded[1]

    def values(self, resid: Float[Tensor, "row 1 d_model"]) -> Tensor:
        """The metric of each row, in fp32 at least (averaged over prompts without the model's rounding)."""
        values = runs.metric_values(self.model, self.metric, resid.to(self.model.dtype))
        return values.to(runs.value_dtype(self.model))


def node_values(refs: References, ablate: Float[Tensor, "circuit edge"]) -> Float[Tensor, " circuit"]:
    """The metric of each circuit's masked run (1 = edge ablated), rows of `ablate` evaluated together."""
    return _Chunk(refs, ablate).run()


def circuit_bytes(model, graph: Graph, n: int, n_pos: int) -> int:
    """Rough peak bytes one circuit needs: its sender-change bank, one layer's inputs, the MLP's hidden layer."""
    width = (len(graph.senders) + 3 * model.n_heads + 2) * model.d_model + 2 * model.d_mlp + 3 * model.n_heads * n_pos
    return n * n_pos * width * torch.finfo(torch.promote_types(model.dtype, torch.float32)).bits // 8


class _Chunk:
    """Statuses, sender changes and the layer-by-layer run of k circuits.

    Two buffers, both in the accumulation dtype: `bank` (sender, circuit, prompt, pos, d_model) holds
    each sender's ablated minus running value per circuit (BASE: the run-wide delta; OTHER: 0 once
    read, as it carries no change), and `x` (receiver, circuit, ...) one read point's assembled inputs.
    Both are laid out so that a circuit's senders, and a receiver's run of circuits, are plain
    strided views: the matrix products read and write them in place.
    """

    def __init__(self, refs: References, ablate: Tensor):
        self.model, self.graph, self.refs, self.metric = refs.model, refs.graph, refs, refs.metric
        graph, self.k, self.acc = self.graph, ablate.shape[0], refs.acc
        dense = torch.zeros(self.k, graph.mask.numel(), dtype=refs.acc, device=ablate.device)
        edges = graph.mask.flatten().nonzero().flatten().to(ablate.device)  # graph.edges order is the mask's
        self.ablated = dense.index_copy_(1, edges, ablate.to(refs.acc)).view(self.k, *graph.mask.shape)
        self.status = torch.full((self.k, len(graph.senders)), OTHER, dtype=torch.int8)
        self.status[:, 0] = BASE  # the embedding is never masked
        self.live, self.every = self._live()
        self.filled = torch.zeros(self.k, len(graph.senders), dtype=torch.bool)  # bank row holds the change
        self.rows, self.x = refs.scratch(self.k)
        self.bank = self.rows[1:]  # (sender, circuit, ...)
        self.writes, self.last_attention = refs.writes, refs.last_attention

    def _live(self) -> tuple[Tensor, Tensor]:
        """(circuit, receiver) twice: whether the receiver's node matters, and whether its input is needed at every
        position from the first change on (else at the last one alone).

        A node matters if it has a kept edge to a receiver that does (the logits always do). Nothing reads
        the running value of a node that does not: every edge it has to one that matters is ablated. So it
        counts as at its ablated value (OTHER) and is never computed. A node is needed at every position
        if it has a kept edge to a receiver that is; keys and values are (later queries read them). Otherwise
        only its last position is ever read, and it runs there alone: an MLP whose kept edges all go to the
        last layer's queries, to nodes like it and to the logits; a head's query and result likewise (its
        keys and values are still read at every position, by its own last query).
        """
        kept, owner = (self.ablated < 1).cpu(), self.refs.owner
        live = torch.zeros(self.k, len(self.graph.receivers), dtype=torch.bool)
        live[:, owner == -1] = True
        every = torch.zeros_like(live)
        for group in reversed(self.refs.write_groups):  # nodes that write later first: edges only go forward
            reads = kept[:, group] & live[:, None, :]  # (circuit, sender in group, receiver)
            live_senders, every_senders = reads.any(2), (reads & every[:, None, :]).any(2)
            for i, s in enumerate(group):
                mine = owner == s
                live[:, mine] = live_senders[:, i:i + 1]
                every[:, mine] = live_senders[:, i:i + 1] & (self.refs.everywhere[mine] | every_senders[:, i:i + 1])
        return live, every

    @torch.no_grad()
    def run(self) -> Tensor:
        for t, (recv, count) in enumerate(zip(self.refs.stages, self.refs.counts, strict=True)):
            status = self._statuses(recv, count)  # (circuit, receiver at t)
            self._inputs(t, recv, count, status)
            nodes = [self.graph.receivers[r] for r in recv]
            if nodes[0].kind == "logits":
                return self._logits(status[:, 0])
            heads = [j for j, node in enumerate(nodes) if node.kind in "qkv"]
            if heads:
                self._heads(nodes[0].layer, status[:, heads], [recv[j] for j in heads])
            mlp = [j for j, node in enumerate(nodes) if node.kind == "mlp"]
            if mlp:
                self._mlp(nodes[mlp[0]].layer, mlp[0], status[:, mlp[0]])
        raise AssertionError("the logits are the last receiver")

    # ---- statuses and inputs ----------------------------------------------------------------

    def _statuses(self, recv: list[int], count: int) -> Tensor:
        a = self.ablated[:, :count, _span(recv)]  # (circuit, sender, receiver): every earlier sender has an edge
        st = self.status[:, :count, None].to(a.device)
        base = ((a == 0) & (st == BASE)).all(1)
        other = ((a == 1) | (st == OTHER)).all(1) if self.refs.other_qkv is not None else torch.zeros_like(base)
        out = torch.full(base.shape, MIXED, dtype=torch.int8, device=base.device)
        out[other] = OTHER
        out[base] = BASE
        out = out.cpu()
        out[~self.live[:, recv]] = OTHER  # nothing reads what it would compute
        return out

    def _inputs(self, t: int, recv: list[int], count: int, status: Tensor) -> None:
        """Each mixed (receiver, circuit)'s input into x: the ablated input, minus what its kept edges undo.

        input_r = ablated_in_r - sum over senders s of keep(s, r) * (ablated_s - running_s); one matrix
        product per circuit, over the receivers between its first and last mixed one (any receiver's input
        comes out right, so the few unmixed ones in between cost a little and change nothing). The ablated
        input is the product's first row, with weight 1 (the bank's row 0): the product writes x once
        instead of adding to a copy of it, which costs as much as the product where it has few senders."""
        changing = (self.status[:, :count] != OTHER).to(self.ablated.device)  # OTHER senders carry no change
        mixed = (status == MIXED).to(self.ablated.device)
        last = (~self.every[:, recv]).to(mixed.device)  # (circuit, receiver): read at the last position alone
        coef = (self.ablated[:, :count, _span(recv)] - 1) * changing[:, :, None]  # -keep: (circuit, sender, receiver)
        used = (coef.ne(0) & mixed[:, None, :]).any(2)  # (circuit, sender): senders whose change reaches a mixed one
        whole = 2 * used.sum(1) >= count  # (circuit,): most senders count: the whole bank, no copy of its rows
        self._fill(torch.where(whole[:, None], True, used) & mixed.any(1, keepdim=True))
        ablated_in = self.refs.other_in[t]
        first = torch.ones(1, len(recv), dtype=coef.dtype, device=coef.device)  # the ablated input's weight
        groups = [[[j for j, m in enumerate(row) if m] for row in part.tolist()]
                  for part in (mixed & ~last, mixed & last)]  # per circuit, its mixed receivers: everywhere, last
        for c, whole_bank in enumerate(whole.tolist()):
            everywhere, alone = groups[0][c], groups[1][c]
            if not everywhere and not alone:
                continue
            span = slice(None) if everywhere else slice(-1, None)  # the positions read: all, or the last
            self.rows[0, c, :, span] = ablated_in[:, span]
            if whole_bank:
                bank, k = self.rows[:1 + count, c], torch.cat([first, coef[c]])
            else:
                cols = used[c].nonzero().flatten()
                bank = self.rows[torch.cat([cols.new_zeros(1), 1 + cols]), c, :, span]
                k = torch.cat([first, coef[c, cols]])
            for rows, pos in ((everywhere, slice(None)), (alone, slice(-1, None))):
                if not rows:
                    continue
                j0, j1 = rows[0], rows[-1] + 1
                if pos.start is not None:  # the last position: a small product
                    self.x[j0:j1, c, :, pos] = torch.einsum("sr,snpd->rnpd", k[:, j0:j1], bank[:, :, pos])
                elif 2 * len(rows) < j1 - j0:  # a few scattered receivers: only theirs, then into place
                    self.x[rows, c] = (k[:, rows].T @ bank.reshape(len(k), -1)).view(len(rows), *bank.shape[1:])
                else:  # written in place
                    torch.mm(k[:, j0:j1].T, bank.reshape(len(k), -1), out=self.x[j0:j1, c].view(j1 - j0, -1))

    def _fill(self, read: Tensor) -> None:
        """The bank rows that `read` (circuit, sender) marks, where first read: a BASE sender's change is the
        run-wide delta, an OTHER sender's is 0 (multiplied by 0, not skipped, so it must be a number). Rows
        never read are never written, so their memory is never touched."""
        count = read.shape[1]
        new = read.cpu() & ~self.filled[:, :count]
        status = self.status[:, :count]
        circuits, senders = (new & (status == BASE)).nonzero(as_tuple=True)
        if len(senders):
            self.bank[senders, circuits] = self.refs.delta[senders]
        circuits, senders = (new & (status == OTHER)).nonzero(as_tuple=True)
        if len(senders):
            self.bank[senders, circuits] = 0
        self.filled[:, :count] |= new

    # ---- nodes --------------------------------------------------------------------------------

    def _heads(self, layer: int, status: Tensor, receivers: list[int]) -> None:
        """The mixed heads of one layer in every circuit: their q, k, v, attention and result.

        Every head runs over the run of circuits from the first to the last with a mixed head in this
        layer (one batched product per step, no gathering); only mixed heads' results are kept. A head
        read at the last position alone gets its query and result there alone (its other queries are the
        reference run's, its other results 0: nothing reads them)."""
        H, refs = self.model.n_heads, self.refs
        st = status.view(self.k, H, 3)  # receivers are head-major: (head, q|k|v)
        head_status = torch.where((st == BASE).all(-1), BASE, torch.where((st == OTHER).all(-1), OTHER, MIXED))
        first = self.graph.sender_index(f"L{layer}H0")
        circuits = (head_status == MIXED).any(1).nonzero().flatten()
        if len(circuits):
            c0, c1 = int(circuits[0]), int(circuits[-1]) + 1
            only_last = self.writes[first] > self.last_attention  # nothing attends after this layer: the last query
            last = None if only_last else ~self.every[c0:c1, receivers].view(c1 - c0, H, 3)[:, :, 0].T
            x = self.x[:3 * H].view(H, 3, *self.x.shape[1:])[:, :, c0:c1]  # (head, q|k|v, circuit, prompt, pos, d)
            q, k, v = (self._piece(layer, which, x[:, which], st[c0:c1, :, which].T,
                                   slice(-1, None) if only_last and which == 0 else slice(None),
                                   last if which == 0 else None) for which in range(3))
            z = self._attend(layer, q, k, v, only_last)  # (head, circuit, prompt, pos, d_head)
            P, w_o, mixed = z.shape[3], refs.w_o[layer].to(self.acc), (head_status[c0:c1] == MIXED).T
            src = refs.src[first:first + H]
            for h in mixed.any(1).nonzero().flatten().tolist():  # each mixed head's run of circuits, in place:
                alone = mixed[h] & last[h] if last is not None else torch.zeros_like(mixed[h])
                rows = (mixed[h] & ~alone).nonzero().flatten()
                if len(rows):
                    a, b = int(rows[0]), int(rows[-1]) + 1
                    bank = self.bank[first + h, c0 + a:c0 + b, :, -P:]  # (circuit, prompt, pos, d_model)
                    bank.copy_(src[h, None, :, -P:].expand_as(bank))  # ablated minus z W_O
                    bank.view(-1, bank.shape[-1]).addmm_(z[h, a:b].reshape(-1, z.shape[-1]).to(self.acc), w_o[h],
                                                         alpha=-1)
                rows = alone.nonzero().flatten().tolist()
                if rows:
                    result = z[h, :, :, -1:][rows].to(self.acc) @ w_o[h]  # (circuit, prompt, 1, d_model)
                    self._write_last(first + h, [c0 + c for c in rows], result)
        self._set(first, head_status)

    def _piece(self, layer: int, which: int, x: Tensor, st: Tensor, pos: slice, last: Tensor | None = None) -> Tensor:
        """q (0), k (1) or v (2) of every head in a run of circuits, (head, circuit, prompt, pos, d_head): a reference
        run's, and projected from x where the head's input is mixed (every head over the run of circuits where
        any is, in one product: whatever the others' rows of x hold is discarded); at the last position alone
        where `last` (head, circuit) says so. k and v come with the base run's prefix (the positions before the
        first change), which every query reads."""
        refs, mixed = self.refs, st == MIXED
        lead = 0 if which == 0 else refs.start
        base = refs.base_qkv[layer][which][:, :, refs.start - lead:][:, :, pos].transpose(0, 1)[:, None]  # (head, 1..)
        out = torch.empty(base.shape[0], st.shape[1], *base.shape[2:], dtype=self.acc, device=base.device)
        out[:, :, :, :lead] = base[:, :, :, :lead]
        ref = base[:, :, :, lead:]
        if refs.other_qkv is not None:
            other = refs.other_qkv[layer][which][:, :, pos].transpose(0, 1)[:, None]
            ref = torch.where((st == OTHER)[:, :, None, None, None], other, ref)
        out[:, :, :, lead:] = ref
        cos_sin = None
        if refs.cos_sin is not None and which < 2:
            cos_sin = [t[:, refs.start:][:, pos] for t in refs.cos_sin]
        alone = mixed & last if last is not None else torch.zeros_like(mixed)
        every = mixed & ~alone
        circuits = every.any(0).nonzero().flatten()
        if len(circuits):  # every head over the run of circuits where any is mixed: one product for them all
            run = slice(int(circuits[0]), int(circuits[-1]) + 1)
            xs = x[:, run][:, :, :, pos]  # (head, circuit, prompt, pos, d_model)
            got = self._project(layer, which, slice(None), xs.reshape(xs.shape[0], -1, xs.shape[-1]))
            got = self._rotate(got.view(-1, *xs.shape[2:-1], got.shape[-1]), cos_sin).view(*xs.shape[:-1], -1)
            mine = out[:, run, :, lead:]
            keep = every[:, run]
            mine.copy_(got if bool(keep.all()) else torch.where(keep[:, :, None, None, None], got, mine))
        for h in alone.any(1).nonzero().flatten().tolist():
            rows = alone[h].nonzero().flatten().tolist()
            got = self._project(layer, which, h, x[h][:, :, pos][:, :, -1:][rows])
            out[h, rows, :, -1:] = self._rotate(got, cos_sin and [t[:, -1:] for t in cos_sin])
        return out.to(self.model.dtype)

    def _rotate(self, x: Tensor, cos_sin: list[Tensor] | None) -> Tensor:
        """The model's rotary on q or k of a run of circuits (circuit, prompt, pos, d_head); it rotates q and k
        together, and a one-row k costs nothing."""
        if cos_sin is None:
            return x
        turned = x.transpose(0, 1)  # (prompt, circuit, pos, d_head): circuits as heads
        return self.refs.arch.apply_rotary(turned, turned[:, :1], *cos_sin)[0].transpose(0, 1)

    def _project(self, layer: int, which: int, head: int | slice, x: Tensor) -> Tensor:
        """ln1 then the q, k or v projection of one head (x: (..., d_model)) or of every head (`slice(None)`;
        x: (head, row, d_model)), folded into one product that reads x where it lies:
        ((x - mean) / std * g + b) W + b' = (x (g W) - mean * sum(g W)) / std + (b W + b')."""
        w, c, b = (t[head] for t in self.refs.folded(layer)[which])  # ([head,] d_model, d_head), ([head,] d_head)
        if w.dim() == 3:
            c, b = c[:, None], b[:, None]
        d = x.shape[-1]
        mean = x.sum(-1, keepdim=True).div_(d)
        square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d)
        scale = square.sub_(mean.square()).add_(self.refs.eps[layer]).rsqrt_()
        return torch.matmul(x, w).addcmul_(mean, c, value=-1).mul_(scale).add_(b)

    def _attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, only_last: bool) -> Tensor:
        """HF's attention arithmetic for every head's queries over the keys and values (the base prefix's, then the
        circuit's own)."""
        refs, start = self.refs, self.refs.start
        module = self._module("attn", layer)
        scores = torch.matmul(q, k.transpose(-1, -2)) * module.scaling  # (head, circuit, prompt, q_pos, k_pos)
        if self.model.arch.kind == "gpt2" and getattr(module, "scale_attn_by_inverse_layer_idx", False):
            scores = scores / float(layer + 1)
        scores = scores + engine.query_mask(refs.mask, refs.n_pos - 1 if only_last else start, scores)
        pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        return torch.matmul(pattern.to(v.dtype), v)

    def _mlp(self, layer: int, j: int, status: Tensor) -> None:
        """One layer's MLP: at every position over the run of circuits from the first to the last that need it
        there, and at the last position where it is mixed and only read there, in one pass (the weights, which
        dwarf the last positions' rows, are read once)."""
        index, src = self.graph.sender_index(f"mlp{layer}"), self.refs.src
        mixed, every = status == MIXED, self.every[:, self.graph.receiver_index(f"mlp{layer}")]
        circuits, last = (mixed & every).nonzero().flatten(), (mixed & ~every).nonzero().flatten().tolist()
        run = slice(int(circuits[0]), int(circuits[-1]) + 1) if len(circuits) else slice(0)
        everywhere, alone = self.x[j, run], self.x[j, last, :, -1:]  # (circuit, prompt, pos or 1, d_model)
        if len(circuits) or last:
            out = self._run_mlp(layer, torch.cat([everywhere.flatten(0, -2), alone.flatten(0, -2)]))
            split = everywhere[..., 0].numel()
            if len(circuits):
                torch.sub(src[index], out[:split].view(everywhere.shape), out=self.bank[index, run])
            if last:
                self._write_last(index, last, out[split:].view(alone.shape))
        self._set(index, status[:, None])

    def _write_last(self, sender: int, circuits: list[int], out: Tensor) -> None:
        """Bank rows of a sender read at the last position alone: ablated minus `out` there, 0 elsewhere (only ever
        multiplied by 0, so they must be numbers)."""
        self.bank[sender, circuits, :, -1:] = self.refs.src[sender, :, -1:] - out
        self.bank[sender, circuits, :, :-1] = 0

    def _run_mlp(self, layer: int, x: Tensor) -> Tensor:
        return self._module("mlp", layer)(self._module("ln2", layer)(x.to(self.model.dtype)))

    def _logits(self, status: Tensor) -> Tensor:
        refs, n = self.refs, self.refs.n
        values = torch.empty(self.k, n, dtype=runs.value_dtype(self.model), device=refs.base_values.device)
        values[status == BASE] = refs.base_values
        values[status == OTHER] = refs.other_values
        circuits = (status == MIXED).nonzero().flatten()
        if len(circuits):
            x = self.x[0][runs.spaced(circuits.tolist())][:, :, -1:]  # (circuit, prompt, 1, d_model)
            values[circuits] = refs.values(x.flatten(0, 1)).view(len(circuits), n).to(values.dtype)
        return self.metric.per_patch(values.flatten())

    # ---- sender bookkeeping --------------------------------------------------------------------

    def _set(self, first: int, status: Tensor) -> None:
        """Statuses of senders first.. (circuit, sender). A MIXED sender's bank row was just written; a BASE or
        OTHER one's is filled where first read (a run over circuits may have written it too)."""
        self.status[:, first:first + status.shape[1]] = status
        self.filled[:, first:first + status.shape[1]] = status == MIXED

    def _module(self, role: str, layer: int) -> nn.Module:
        return self.model.arch.module(self.model.hf, role, layer)


def _span(receivers: list[int]) -> slice:
    """A read point's receivers, which follow one another in graph order, as a slice (a view, not a copy)."""
    return slice(receivers[0], receivers[-1] + 1)


# ---- reference runs --------------------------------------------------------------------------


def _n_reads(graph: Graph) -> int:
    return graph.reads_at(graph.receivers[-1]) + 1


def _read_site(graph: Graph, t: int) -> str | None:
    """The site holding the residual stream receivers read at `t` (None: the final one)."""
    return None if t == _n_reads(graph) - 1 else engine.state_name(graph.parallel_residual, t)


def sender_stack(graph: Graph, cache, start: int = 0) -> Float[Tensor, "sender prompt pos d_model"]:
    """Every sender's output from position `start` on, in graph.senders order."""
    rows = []
    for node in graph.senders:
        if node.kind == "embed":
            rows.append(cache["hook_embed"][:, start:])
        elif node.kind == "head":
            rows.append(cache[f"blocks.{node.layer}.attn.hook_result"][:, start:, node.head])
        else:
            rows.append(cache[f"blocks.{node.layer}.hook_mlp_out"][:, start:])
    return torch.stack(rows)
