"""Attribution patching: AtP node scores, AtP*'s exact attention for queries and keys, EAP and EAP-IG edge scores.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> scores = atp(model, task, sites=["z", "k"])          # two forwards, one backward
    >>> edges = eap(model, task)                              # a score for every edge of the graph
    >>> edges_ig = eap_ig(model, task, steps=5)               # integrated gradients over the inputs

Every score estimates the noising effect of `analyses.patching.metrics` (same sign):
- AtP: (a_corrupt - a_clean) . dM/da at the clean run, per site, head and position;
- AtP* (`qk_fix=True`): for q and k, the attention pattern is recomputed exactly with the
  corrupt query or key (no linearisation of the softmax, which saturates), then dotted with dM/dpattern;
- EAP: for the edge s -> r, (out_s,corrupt - out_s,clean) . dM/d(input_r) at the clean run;
- EAP-IG: the same with dM/d(input_r) averaged over `steps` runs whose input embeddings go from
  corrupt to clean (k/steps of the way, k = 1..steps).

Gradients come from backward hooks on the receivers' input sites, accumulated into scores as the
backward pass reaches them, so no gradient tensor is kept; no parameter gradient is computed. With the
corrupt run as the ablation, the edge scores' dot products start at the first changed position: before
it every change is 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.patching import runs
from analyses.patching.activation import NODE_SITES, Patch, plan
from analyses.patching.graph import Graph
from analyses.patching.metrics import resolve
from analyses.patching.results import EdgeScores, NodeEffects, Provenance


def atp(model, task, sites: Sequence[str] = ("z",), *, metric=None, per_position: bool = True,
        qk_fix: bool = False, direction: str = "noising", ablation="corrupt",
        layers: Iterable[int] | None = None) -> NodeEffects:
    """AtP (or AtP* with `qk_fix`) scores, laid out as `activation_patch` lays out effects.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> from analyses.patching import activation_patch
    >>> atp(model, task, sites=["z"]).effects.shape == activation_patch(model, task, sites=["z"]).effects.shape
    True
    """
    runs.check_choice(direction, runs.DIRECTIONS, "direction")
    patches = plan(model, task.n_pos, sites, per_position, layers)
    metric = resolve(metric, model, task)
    base = task.clean if direction == "noising" else task.corrupt
    names = sorted({p.name() for p in patches})
    fix = qk_fix and any(p.site in ("q", "k") for p in patches)
    extra = _qk_names(model, {p.layer for p in patches}) if fix else []
    value, cache, grads = model.run_with_cache_and_grads(base, lambda lg: metric(lg).mean(), names=names + extra)
    with torch.no_grad():
        src, other_value = runs.source_run(model, task, names + extra, direction, ablation, metric)
        per_site = {name: _dot(name, src[name] - cache[name], grads[name]) for name in names}
        if fix:
            per_site.update(_qk_exact(model, {p.layer for p in patches if p.site in ("q", "k")}, cache, src, grads))
        effects = torch.stack([_pick(per_site[p.name()], p) for p in patches])
    clean, corrupt = (value, other_value) if direction == "noising" else (other_value, value)
    method = "atp*" if qk_fix else "atp"
    return NodeEffects.build(method, model, task, metric, patches, effects, float(clean), float(corrupt),
                             direction, ablation)


def _dot(name: str, delta: Tensor, grad: Tensor) -> Tensor:
    """delta . grad summed over prompts and the feature axis: (pos, head), (head, q_pos) or (pos,)."""
    dtype = torch.promote_types(delta.dtype, torch.float32)
    prod = (delta.to(dtype) * grad.to(dtype)).sum(0)
    return prod.sum(-1)  # z/q/k/v: (pos, head); pattern: (head, q_pos) summing keys; others (pos,)


def _pick(values: Tensor, p: Patch) -> Tensor:
    """One patch's score from a site's (pos[, head]) or (head, q_pos) table."""
    if p.site == "pattern":
        row = values[p.head]
    elif NODE_SITES[p.site][1]:
        row = values[:, p.head]
    else:
        row = values
    return row.sum() if p.position is None else row[p.position]


# ---- AtP*: exact attention for queries and keys -------------------------------------------


def _qk_names(model, layers: set[int]) -> list[str]:
    rotary = getattr(model, "rotary_dim", 0) > 0
    q, k = ("rot_q", "rot_k") if rotary else ("q", "k")
    return [f"blocks.{ly}.attn.hook_{s}" for ly in sorted(layers) for s in (q, k, "attn_scores", "pattern")]


def _qk_exact(model, layers: set[int], cache, src, grads) -> dict[str, Tensor]:
    """Per layer: q and k scores with the pattern recomputed exactly, (pos, head) each."""
    rotary = getattr(model, "rotary_dim", 0) > 0
    q_name, k_name = ("rot_q", "rot_k") if rotary else ("q", "k")
    out, dt = {}, runs.value_dtype(model)
    for ly in sorted(layers):
        at = f"blocks.{ly}.attn."
        q, k = cache[at + f"hook_{q_name}"].to(dt), cache[at + f"hook_{k_name}"].to(dt)  # (batch, pos, head, d)
        dq, dk = src[at + f"hook_{q_name}"].to(dt) - q, src[at + f"hook_{k_name}"].to(dt) - k
        scores, pattern = cache[at + "hook_attn_scores"].to(dt), cache[at + "hook_pattern"].to(dt)
        g = grads[at + "hook_pattern"].to(dt)  # (batch, head, q_pos, k_pos)
        scale = float(getattr(runs.module(model, at + "hook_pattern"), "scaling", model.d_head ** -0.5))
        allowed = pattern > 0
        delta_k = torch.einsum("bthd,bshd->bhts", q, dk) * scale * allowed
        out[at + "hook_k"] = _key_change(pattern, delta_k, g).sum(0).transpose(0, 1)  # (pos, head)
        delta_q = torch.einsum("bthd,bshd->bhts", dq, k) * scale * allowed
        change = torch.softmax(scores + delta_q, dim=-1) - torch.softmax(scores, dim=-1)
        out[at + "hook_q"] = (g * change).sum(-1).sum(0).transpose(0, 1)  # (pos, head)
    return out


def _key_change(pattern: Tensor, delta: Tensor, g: Tensor) -> Tensor:
    """sum_t g[t] . (softmax with key s's logit moved by delta[t, s] - pattern[t]), per key s: (batch, head, s).

    Moving one logit by delta rescales its weight a to a e^delta / D and every other weight by 1 / D,
    D = 1 - a + a e^delta; computed in logs so saturated patterns stay finite, and as changes
    (expm1) so an unmoved key gives exactly 0.
    """
    log_a = pattern.clamp_min(0).log()
    log_d = torch.logaddexp(torch.log1p(-pattern.clamp(max=1.0)), log_a + delta)
    log_d = torch.where(delta == 0, 0.0, log_d)  # an unmoved key changes nothing, exactly
    own = g * pattern  # (b, h, t, s)
    total = own.sum(-1, keepdim=True)  # (b, h, t, 1)
    changed = own * torch.expm1(delta - log_d) + (total - own) * torch.expm1(-log_d)
    return changed.sum(2)


# ---- EAP and EAP-IG -----------------------------------------------------------------------


def eap(model, task, *, metric=None, direction: str = "noising", ablation="corrupt") -> EdgeScores:
    """EAP: a score for every edge from one forward and one backward on the clean run (plus one corrupt forward).

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> eap(model, task).scores.shape[0] == Graph.from_model(model).n_edges
    True
    """
    return _edge_attribution(model, task, metric, direction, ablation, steps=0)


def eap_ig(model, task, steps: int = 5, *, metric=None, direction: str = "noising") -> EdgeScores:
    """EAP-IG: EAP with gradients averaged over `steps` inputs interpolated from corrupt to clean embeddings.

    >>> import interp
    >>> from analyses.patching import tasks
    >>> model = interp.load("toy")
    >>> task = tasks.induction(model, n_prompts=4)
    >>> eap_ig(model, task, steps=3).method
    'eap-ig'
    """
    if not isinstance(steps, int) or steps < 1:
        raise runs.UnknownMethodError(f"steps={steps!r}: EAP-IG needs an int >= 1 (5 to 20 is usual).")
    return _edge_attribution(model, task, metric, direction, "corrupt", steps)


def _edge_attribution(model, task, metric, direction: str, ablation, steps: int) -> EdgeScores:
    runs.check_choice(direction, runs.DIRECTIONS, "direction")
    graph, metric = Graph.from_model(model), resolve(metric, model, task)
    base = task.clean if direction == "noising" else task.corrupt
    n, out_sites = len(base), sender_sites(model, per_head="z")
    first = runs.first_change(task, ablation)  # every change is 0 before it: the dot products start there
    with torch.no_grad():
        src, other_value = runs.source_run(model, task, out_sites, direction, ablation, metric)
    start = src["hook_embed"] if steps else None  # EAP-IG starts from the other run's embeddings
    scores = torch.zeros(len(graph.senders), len(graph.receivers), device=model.device, dtype=runs.value_dtype(model))
    acts: dict[str, Tensor] = {}
    deltas: list[Tensor] = []
    leaf = _Leaf(start, steps, n)
    fwd = {name: _keep(acts, name, n) for name in out_sites}
    fwd["hook_embed"] = [_keep(acts, "hook_embed", n), leaf]
    final = f"blocks.{model.n_layers - 1}.hook_resid_post"
    fwd.setdefault(final, []).append(_keep(acts, "__final__", None))
    for layer in range(model.n_layers):  # ln1's statistics, to take q/k/v gradients back to each head's input
        for stat in ("normalized", "scale"):
            name = f"blocks.{layer}.ln1.hook_{stat}"
            fwd[name] = _keep(acts, name, None, detach=True)
    scorer = _Scorer(model, graph, deltas, scores, n, acts, first)
    bwd = {site: scorer.hook(site) for site in gradient_sites(model)}
    with torch.enable_grad(), model.hooks(fwd=fwd, bwd=bwd):
        # the forward stops before the unembedding; the metric reads the kept final residual at its positions
        model.run_with_cache(runs.tile(base, steps) if steps else base, names=[], stop_at_layer=model.n_layers)
        deltas.append(_sender_deltas(model, graph, acts, src, first))  # before the backward reaches any receiver
        values = runs.metric_values(model, metric, metric.gather(acts["__final__"]))
        torch.autograd.grad(values.mean(), [leaf.tensor])
    clean = metric.per_patch(values.detach())[-1]  # the last rows are the unmoved base run
    clean, corrupt = (clean, other_value) if direction == "noising" else (other_value, clean)
    prov = Provenance.of(model, task, metric, float(clean), float(corrupt), direction, ablation)
    return EdgeScores("eap-ig" if steps else "eap", graph, scores[graph.mask].cpu(), prov)


def sender_sites(model, per_head: str = "result") -> list[str]:
    """Sites holding every sender's output: the embedding, each layer's per-head results (or z) and MLP output."""
    per_layer = (f"blocks.{{}}.attn.hook_{per_head}", "blocks.{}.hook_mlp_out")
    return ["hook_embed", *(s.format(ly) for ly in range(model.n_layers) for s in per_layer)]


def receiver_sites(model) -> list[str]:
    """Sites holding every receiver's input: q/k/v inputs, MLP inputs, the final residual."""
    L = model.n_layers
    sites = [f"blocks.{ly}.attn.hook_{x}_input" for ly in range(L) for x in "qkv"]
    return sites + [f"blocks.{ly}.hook_mlp_in" for ly in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]


def gradient_sites(model) -> list[str]:
    """Where EAP reads gradients: each layer's q, k, v (taken back to each head's input through ln1), MLP inputs,
    and the final residual. Cheaper than the per-head input sites, which copy the residual for every head."""
    L = model.n_layers
    sites = [f"blocks.{ly}.attn.hook_{x}" for ly in range(L) for x in "qkv"]
    return sites + [f"blocks.{ly}.hook_mlp_in" for ly in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]


def _keep(acts: dict, name: str, n: int | None, detach: bool = False):
    """Keep a site's base-run value: the last n rows (for EAP-IG, the step that is the base run);
    with n None, every row (and its autograd history unless `detach`)."""
    def hook(x: Tensor, site) -> None:
        acts[name] = (x.detach() if detach else x) if n is None else x[-n:].detach()

    return hook


class _Leaf:
    """A hook making the embedding a leaf (gradients stop there); for EAP-IG, interpolated from `start`."""

    def __init__(self, start: Tensor | None, steps: int, n: int):
        self.start, self.steps, self.n, self.tensor = start, steps, n, None

    def __call__(self, x: Tensor, site) -> Tensor:
        x = x.detach()
        if self.steps:
            alpha = torch.arange(1, self.steps + 1, device=x.device, dtype=x.dtype) / self.steps
            start = self.start.to(x.dtype)[None]
            x = (start + alpha.view(-1, 1, 1, 1) * (x.view(self.steps, self.n, *x.shape[1:]) - start)).flatten(0, 1)
        self.tensor = x.requires_grad_(True)
        return self.tensor


def _sender_deltas(model, graph: Graph, acts: dict, src, first: int) -> Tensor:
    """(sender, prompt, pos, d_model) from position `first` on: source minus base output of every sender (a head's
    output is linear in its z, so its change is its z change through W_O)."""
    changes = {name: src[name][:, first:] - acts[name][:, first:] for name in sender_sites(model, per_head="z")}
    out = sender_outputs(graph, changes, model.W_O)
    return out.to(torch.promote_types(out.dtype, torch.float32))


def sender_outputs(graph: Graph, acts: dict[str, Tensor], w_o: Tensor) -> Float[Tensor, "sender prompt pos d_model"]:
    """Every sender's output, in graph.senders order, from the embedding, each layer's z and MLP output in `acts`.
    A head's is its z times its rows of W_O (hook_result's product), one batched product per layer."""
    z = acts["blocks.0.attn.hook_z"]
    n, n_pos, H = z.shape[:3]
    out = torch.empty(len(graph.senders), n, n_pos, w_o.shape[-1], dtype=z.dtype, device=z.device)
    for i, node in enumerate(graph.senders):
        if node.kind == "embed":
            out[i] = acts["hook_embed"]
        elif node.kind == "mlp":
            out[i] = acts[f"blocks.{node.layer}.hook_mlp_out"]
        elif node.head == 0:
            z = acts[f"blocks.{node.layer}.attn.hook_z"].permute(2, 0, 1, 3).reshape(H, n * n_pos, -1)
            torch.matmul(z, w_o[node.layer].to(z.dtype), out=out[i:i + H].view(H, n * n_pos, -1))
    return out


class _Scorer:
    """Backward hooks that collect the gradients at every receiver of a layer, then add delta . grad into the
    scores of all edges ending there with one matmul, (sender, prompt * pos * d) @ (prompt * pos * d, receiver).

    A head's q (k, v) gradient is taken back to that head's own input through ln1 by hand: input grad =
    (u - mean(u) - x_hat * mean(u * x_hat)) / scale with u = gamma * (W_Q[h] @ grad), the LayerNorm backward.
    """

    def __init__(self, model, graph: Graph, deltas: list[Tensor], scores: Tensor, n: int, acts: dict, first: int):
        self.model, self.graph, self.deltas, self.scores, self.n, self.acts = model, graph, deltas, scores, n, acts
        self.first = first  # the deltas' first position: the gradients are read from there on
        self.weights = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}  # (layer, head, d_model, d_head)
        counts = graph.mask.sum(0)  # senders before each receiver: a prefix of the sender list
        self.groups = {int(c): (counts == c).nonzero().flatten().tolist() for c in counts.unique()}
        self.row_of = {r: i for group in self.groups.values() for i, r in enumerate(group)}
        self.pending: dict[int, list] = {}  # count -> [(receiver, prompt * pos * d_model) gradients, rows filled]

    def hook(self, site_name: str):
        parts = site_name.split(".")
        kind = parts[-1][len("hook_"):]
        if kind == "resid_post":
            names = ["logits"]
        elif kind == "mlp_in":
            names = [f"mlp{parts[1]}"]
        else:
            names = [f"L{parts[1]}H{h}.{kind}" for h in range(self.model.n_heads)]
        index = [self.graph.receiver_index(r) for r in names]
        count = int(self.graph.mask[:, index[0]].sum())
        rows = runs.spaced([self.row_of[r] for r in index])

        def hook(grad: Tensor, site) -> None:
            g = grad[:, self.first:].to(self.scores.dtype)
            if kind in ("q", "k", "v"):
                g = self._head_inputs(int(parts[1]), kind, g)  # (head, row, pos, d_model)
                if g.shape[1] != self.n:
                    g = g.reshape(len(index), -1, self.n, *g.shape[2:]).sum(1)  # sum over EAP-IG steps
            else:
                g = g.view(-1, self.n, *g.shape[1:]).sum(0)[None]
            g = g.reshape(len(index), -1)
            if count not in self.pending:
                self.pending[count] = [g.new_empty(len(self.groups[count]), g.shape[1]), 0]
            entry = self.pending[count]
            entry[0][rows] = g
            entry[1] += len(index)
            if entry[1] == len(self.groups[count]):
                self._flush(count)

        return hook

    def _head_inputs(self, layer: int, kind: str, grad: Tensor) -> Tensor:
        """(row, pos, head, d_head) gradients at q, k or v -> (head, row, pos, d_model) at each head's input."""
        w = self.weights[kind][layer].to(grad.dtype)  # (head, d_model, d_head)
        ln = runs.module(self.model, f"blocks.{layer}.ln1.hook_normalized")
        rows, pos, heads, _ = grad.shape
        u = torch.bmm(grad.permute(2, 0, 1, 3).reshape(heads, rows * pos, -1), w.transpose(1, 2))
        u = u.view(heads, rows, pos, -1)  # (head, row, pos, d_model)
        if ln.weight is not None:
            u.mul_(ln.weight.to(grad.dtype))
        x_hat = self.acts[f"blocks.{layer}.ln1.hook_normalized"][:, self.first:].to(grad.dtype)  # (row, pos, d)
        scale = self.acts[f"blocks.{layer}.ln1.hook_scale"][:, self.first:].to(grad.dtype)  # (row, pos, 1)
        along = torch.einsum("hrpd,rpd->hrp", u, x_hat)[..., None] / u.shape[-1]  # mean(u * x_hat), per head
        u -= u.mean(-1, keepdim=True)
        u -= x_hat * along
        return u.div_(scale)

    def _flush(self, count: int) -> None:
        receivers = self.groups[count]
        grads, _ = self.pending.pop(count)  # (receiver, prompt * pos * d_model)
        self.scores[:count, receivers] += self.deltas[0][:count].flatten(1) @ grads.T
