"""The parts of dynamic sparse training that need no stream: layer densities, masks, drop and grow.

`tideflow.strategies.dst.SparseTraining` (docs/methods/dst.md) keeps one dense store of weights
per layer and one mask per task over it; this module holds what that learner is made of, as
functions over tensors, so that each piece can be checked on its own:

* `layer_densities`: how a global density is shared out over the layers, uniform (the same
  in every layer) or ERK (Erdős–Rényi–Kernel: a layer's density proportional to the sum of
  its dimensions over their product, scaled so that the weights kept add up to the global
  density; a layer that would exceed 1 is made dense and the scale found again for the rest).
  The kept weights are ``round(d_l * n_l)`` per layer (`kept`), so the two ways keep the same
  number of weights up to rounding;
* `drop_rate`: the fraction of a layer's trainable weights replaced at a mask update, cosine
  from ``start`` to ``end`` over the steps of a task, then ``end``;
* `drop_and_grow`: one mask update of one layer. It drops the smallest-magnitude trainable
  weights and grows as many positions as it can by one of `GROWTH`. Its invariant: it never
  touches a frozen position (one a finished task holds): frozen positions are neither dropped
  nor grown, so what a task trains is always disjoint from what earlier tasks keep;
* `network`, `add_task`, `masked`, `trainable`, `forward`: the network as plain torch modules: the dense
  store ``weights[l]`` (shape ``(out, in)``, no bias), and per task its own hidden biases and
  its own dense head, so that nothing a task learns is shared with a later one except the
  masked store weights it freezes. Building happens inside `torch_core.build` (seeded).

No torch at import (the rule of `tideflow.strategies.torch_core`): torch is imported inside
the functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch

__all__ = ["GROWTH", "LAYER_DENSITIES", "add_task", "dense_size", "drop_and_grow", "drop_rate", "forward",
           "initial_values", "kept", "layer_densities", "masked", "network", "random_mask", "task_groups", "trainable",
           "update_moments"]

#: how a global density is shared out over the layers
LAYER_DENSITIES = ("erk", "uniform")
#: how dropped weights are replaced: random inactive positions; positions never active in the task
#: (random among them, then random among the others); the largest dense gradient (RigL); the largest
#: ``|m / (sqrt(v) + 1e-8)|`` of the dense gradient's Adam-style moments
GROWTH = ("random", "unfired", "gradient", "momentum")
#: what keeps the momentum score finite where ``v`` is 0
MOMENTUM_EPS = 1e-8
#: Adam's decays, for the moments of the dense gradient that momentum growth ranks by
BETAS = (0.9, 0.999)


# -- densities --------------------------------------------------------------------------------
def layer_densities(shapes: Sequence[Sequence[int]], density: float, method: str = "erk") -> list[float]:
    """The density of each layer of weight ``shapes`` for a global ``density`` (module docstring).

    >>> [round(d, 4) for d in layer_densities([(200, 64), (200, 200)], 0.2, "erk")]
    [0.328, 0.159]
    >>> layer_densities([(200, 64), (200, 200)], 0.2, "uniform")
    [0.2, 0.2]
    >>> layer_densities([(4, 2), (100, 100)], 0.5, "erk")[0]  # the small layer would exceed 1
    1.0
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if method not in LAYER_DENSITIES:
        raise ValueError(f"layer_density={method!r}: use one of {LAYER_DENSITIES}")
    sizes = [math.prod(s) for s in shapes]
    if method == "uniform" or density == 1.0:
        return [float(density)] * len(shapes)
    raw = [sum(s) / math.prod(s) for s in shapes]
    budget = density * sum(sizes)
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        scale = (budget - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in rest)
        # the layer that most exceeds 1 becomes dense, then the scale is found again for the rest
        over = max(rest, key=lambda i: raw[i])
        if scale * raw[over] <= 1.0 or len(rest) == 1:
            return [1.0 if i in dense else min(1.0, scale * raw[i]) for i in range(len(shapes))]
        dense.add(over)


def kept(size: int, density: float) -> int:
    """How many of ``size`` weights a layer of ``density`` keeps (at least one)."""
    return max(1, min(size, int(round(density * size))))


def drop_rate(step: int, steps: int, start: float = 0.5, end: float = 0.005) -> float:
    """The drop fraction at ``step`` of a task scheduled over ``steps``: cosine from ``start`` to ``end``.

    >>> drop_rate(0, 100), round(drop_rate(50, 100), 4), drop_rate(100, 100), drop_rate(400, 100)
    (0.5, 0.2525, 0.005, 0.005)
    """
    s = min(max(step, 0), steps) / steps
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * s))


# -- masks ------------------------------------------------------------------------------------
def random_mask(shape: Sequence[int], count: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of ``shape`` with ``count`` positions drawn uniformly (on the CPU)."""
    import torch

    n = math.prod(shape)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:count]] = True
    return mask.reshape(tuple(shape))


def _top(score: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` highest ``score`` among ``allowed`` (ties: the lower index first)."""
    import torch

    key = torch.where(allowed, score, torch.full_like(score, -math.inf))
    order = torch.sort(key.flatten(), descending=True, stable=True).indices
    return order[:k]


def drop_and_grow(weight: torch.Tensor, active: torch.Tensor, frozen: torch.Tensor, fraction: float,
                  growth: str, *, generator: torch.Generator, ever: torch.Tensor | None = None,
                  gradient: torch.Tensor | None = None, moments: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mask update of a layer: the new trainable mask, and the flat positions dropped and grown.

    ``active``: the task's trainable positions (never frozen ones); ``frozen``: positions finished
    tasks hold. ``round(fraction * active)`` trainable weights of smallest ``|weight|`` are dropped
    (ties: the lower index); as many positions are grown among those neither frozen nor still
    active (the ones just dropped included), fewer when fewer are free. Growth scores: ``random``
    draws from ``generator``; ``unfired`` prefers positions outside ``ever`` (never active in the
    task); ``gradient`` the largest ``|gradient|`` (the dense gradient of the task's loss);
    ``momentum`` the largest ``|m / (sqrt(v) + 1e-8)|`` of ``moments = (m, v)``. The caller sets the
    weights (and optimiser moments) at the changed positions to zero.
    """
    import torch

    if growth not in GROWTH:
        raise ValueError(f"growth={growth!r}: use one of {GROWTH}")
    if bool((active & frozen).any()):
        raise ValueError("a trainable position is frozen: the task's mask overlaps what earlier tasks hold")
    flat_active = active.flatten()
    n_drop = int(round(fraction * int(flat_active.sum())))
    none = torch.zeros(0, dtype=torch.long, device=weight.device)
    if n_drop == 0:
        return active.clone(), none, none
    magnitude = weight.detach().abs().flatten()
    dropped = _top(-magnitude, flat_active, n_drop)
    after = flat_active.clone()
    after[dropped] = False
    candidates = ~frozen.flatten() & ~after
    n_grow = min(n_drop, int(candidates.sum()))
    if growth in ("random", "unfired"):
        score = torch.rand(magnitude.shape, generator=generator).to(weight.device)
        if growth == "unfired":
            if ever is None:
                raise ValueError("unfired growth needs the positions ever active in the task (ever=)")
            score = score + (~ever.flatten()).to(score.dtype)  # never-active positions rank first
    elif growth == "gradient":
        if gradient is None:
            raise ValueError("gradient growth needs the dense gradient (gradient=)")
        score = gradient.detach().abs().flatten()
    else:
        if moments is None:
            raise ValueError("momentum growth needs the dense gradient's moments (moments=)")
        m, v = moments
        score = (m / (v.sqrt() + MOMENTUM_EPS)).abs().flatten()
    grown = _top(score, candidates, n_grow)
    after[grown] = True
    return after.reshape(active.shape), dropped, grown


def update_moments(moments: Sequence[Sequence[torch.Tensor]], gradients: Sequence[torch.Tensor]) -> None:
    """Adam's moment update, in place, of each layer's ``[m, v]`` with its dense gradient (momentum growth;
    no bias correction: it scales every position of a layer alike, so the ranking does not change)."""
    for (m, v), g in zip(moments, gradients):
        m.mul_(BETAS[0]).add_(g, alpha=1.0 - BETAS[0])
        v.mul_(BETAS[1]).addcmul_(g, g, value=1.0 - BETAS[1])


def task_groups(keys: list[Any] | None, use: Any) -> list[tuple[Any, Any]]:
    """The indices of the usable rows (bool array ``use``) per task id in ``keys``, in the order each
    task first appears; one group with key None when there are no ids."""
    import numpy as np

    rows = np.flatnonzero(use)
    if not len(rows):
        return []
    if keys is None:
        return [(None, rows)]
    order: dict[Any, list[int]] = {}
    for i in rows.tolist():
        order.setdefault(keys[i], []).append(i)
    return [(k, np.asarray(v, dtype=np.int64)) for k, v in order.items()]


# -- the network ------------------------------------------------------------------------------
def network(input_dim: int, hidden: Sequence[int]) -> torch.nn.Module:
    """The dense store: ``weights[l]`` of shape ``(hidden[l], in_l)``, all zero (a position gets a
    value when a task's mask first claims it), and an empty list of ``tasks``."""
    import torch

    net = torch.nn.Module()
    dims = [int(input_dim), *[int(h) for h in hidden]]
    net.weights = torch.nn.ParameterList(
        [torch.nn.Parameter(torch.zeros(dims[i + 1], dims[i])) for i in range(len(hidden))])
    net.tasks = torch.nn.ModuleList()
    return net


def add_task(net: torch.nn.Module, n_classes: int) -> torch.nn.Module:
    """Append a task's own parts (call inside `torch_core.build` for seeded weights): zero biases
    for every hidden layer and a dense head ``nn.Linear(width, n_classes)``; returns them."""
    import torch

    part = torch.nn.Module()
    part.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(w.shape[0])) for w in net.weights])
    part.head = torch.nn.Linear(net.weights[-1].shape[0], n_classes)
    net.tasks.append(part)
    return part


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight`` where ``mask``, exactly 0 elsewhere (a select, not a product: a value outside the
    mask cannot leak in, whatever it holds)."""
    import torch

    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def trainable(weight: torch.Tensor, active: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """What a task trains through: ``weight`` at its ``active`` positions (the gradient reaches those
    only), ``constant`` elsewhere: the frozen weights the task's mask reuses, 0 outside its mask
    (``masked(weight, reused).detach()``, fixed for the whole task)."""
    import torch

    return torch.where(active, weight, constant)


def forward(net: torch.nn.Module, x: torch.Tensor, task: int, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Logits of task ``task`` for inputs ``x`` through the (already masked) ``weights``."""
    import torch

    part = net.tasks[task]
    h = x
    for w, b in zip(weights, part.biases):
        h = torch.relu(torch.nn.functional.linear(h, w, b))
    return part.head(h)


def initial_values(shape: Sequence[int], density: float, generator: torch.Generator) -> torch.Tensor:
    """Fresh values for a layer's newly claimed positions: uniform in ``+-1/sqrt(fan_in * density)``,
    torch's default bound for a dense layer with the fan-in a row of this sparse layer really has."""
    import torch

    fan_in = max(1.0, shape[1] * density)
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(tuple(shape), generator=generator) * 2.0 - 1.0) * bound


def dense_size(net: Any) -> int:
    """Weights of the store (every layer, dense)."""
    return sum(int(w.numel()) for w in net.weights)
