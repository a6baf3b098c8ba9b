"""The scoring model of Adapt-∞ selection: whose predictions and gradients rank the pool's rows.

`tideflow.strategies.adapt_inf.AdaptInfinity` scores rows with the model of the strategy it
feeds when it can read one, and otherwise with a small proxy model of its own (and says so in
its report, ``select.proxy``). This module finds the strategy's model, runs it without
changing it, and computes the sample vectors:

* **The strategy's model.** A strategy may expose it through a public ``scoring_module()``
  method; otherwise the ``_net`` attribute the torch strategies of this project build is read.
  It is usable when it is a ``torch.nn.Module`` that can be called on the rows' features alone
  and whose **last** ``nn.Linear`` layer produces the module's output (a classifier head): its
  input is the penultimate representation ``h``, its output the logits. That is checked on
  every forward pass (a hook compares the layer's output with the module's), so a model of
  another form (prototypes, a key-value bottleneck, a projection head, a container of masked
  weights without ``forward``) is never misread: it falls back to the proxy. The module is run in eval
  mode under ``no_grad`` (its mode is put back), its parameters are never touched.
* **The proxy** (`Proxy`): inputs standardised with the statistics of the rows it first saw,
  one hidden layer, a softmax output that grows when new classes appear (old rows of the
  output layer copied, Adam's moments restarted), trained with `tideflow.strategies.torch_core`
  on the rows selected at each selection point (the rows the strategy learns).
* **Sample vectors** (`last_layer_vectors`, `layer_vectors`): the per-row gradient of the
  cross-entropy with respect to the last layer, in closed form ``(p - onehot(y)) (x) [h, 1]``,
  or with respect to chosen parameters through ``torch.func`` (``vmap`` of ``grad``); both laid
  out as the parameters' flattened gradients (weight then bias), so that the two agree on the
  last layer (tested), randomly projected (`adapt_inf_core.rademacher`) and L2-normalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tideflow.strategies import torch_core
from tideflow.strategies.adapt_inf_core import normalise_rows, rademacher

#: rows per forward pass and per torch.func gradient block (bounds memory on a large pool)
FORWARD_CHUNK = 4096
GRAD_CHUNK = 256


class NoModel(Exception):
    """The strategy exposes no model the selector can score with (the message says why)."""


def strategy_module(strategy: Any) -> tuple[Any, Any]:
    """The strategy's torch module and its last Linear layer, or `NoModel` saying why not."""
    accessor = getattr(strategy, "scoring_module", None)
    net = accessor() if callable(accessor) else getattr(strategy, "_net", None)
    name = type(strategy).__name__
    if net is None:
        raise NoModel(f"{name} exposes no torch module (no scoring_module() and no built model)")
    import torch

    if not isinstance(net, torch.nn.Module):
        raise NoModel(f"{name}'s model is a {type(net).__name__}, not a torch module")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise NoModel(f"{name}'s torch module has no Linear layer to take gradients of")
    return net, linears[-1]


def forward(net: Any, last: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate representations (the last Linear's input) of rows ``x``, the module
    unchanged; `NoModel` when that layer's output is not the module's output."""
    import torch

    device = next(net.parameters()).device
    seen: dict[str, Any] = {}

    def hook(module: Any, inputs: Any, output: Any) -> None:
        seen["h"], seen["out"] = inputs[0], output

    handle = last.register_forward_hook(hook)
    was_training = net.training
    net.eval()
    logits, feats = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(x), FORWARD_CHUNK):
                rows = torch.from_numpy(np.ascontiguousarray(x[start:start + FORWARD_CHUNK])).to(device)
                try:
                    out = net(rows)
                except torch.cuda.OutOfMemoryError:
                    raise  # a resource fault, not a model of another form: the engine counts it
                except (NotImplementedError, TypeError, RuntimeError) as exc:
                    # a container without forward(), a forward that wants more than the rows
                    # (task ids, masks), or another input width: not a module the selector can run
                    raise NoModel(f"{type(net).__name__} cannot be called on the rows' features "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
                if not isinstance(out, torch.Tensor) or out.dim() != 2 or "out" not in seen or not (
                        seen["out"] is out or (seen["out"].shape == out.shape and torch.equal(seen["out"], out))):
                    raise NoModel(f"the last Linear layer of {type(net).__name__} does not produce its output "
                                  "(not a classifier head)")
                logits.append(out.float().cpu().numpy())
                feats.append(seen["h"].reshape(len(out), -1).float().cpu().numpy())
                seen.clear()
    finally:
        handle.remove()
        net.train(was_training)
    return np.concatenate(logits), np.concatenate(feats)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def last_layer_vectors(probs: np.ndarray, y: np.ndarray, h: np.ndarray, seed: int,
                       dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Projected, normalised last-layer gradients and their norms (module docstring).

    The flattened gradient is ``[(p - e_y) outer h (row-major), p - e_y]`` (a Linear layer's
    weight, then its bias); its projection is computed one class at a time, never built whole."""
    n, c = probs.shape
    d = h.shape[1]
    g = probs.astype(np.float32).copy()
    g[np.arange(n), y] -= 1.0
    r = rademacher(seed, 0, c * d + c, dim)
    h32 = h.astype(np.float32)
    v = g @ r[c * d:]
    for j in range(c):
        v += g[:, j:j + 1] * (h32 @ r[j * d:(j + 1) * d])
    norm = np.linalg.norm(g, axis=1) * np.sqrt((h32.astype(np.float64) ** 2).sum(axis=1) + 1.0)
    return normalise_rows(v), norm


def layer_vectors(net: Any, names: tuple[str, ...], x: np.ndarray, y: np.ndarray, seed: int,
                  dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Projected, normalised per-row gradients of the cross-entropy with respect to the parameters
    ``names`` of ``net`` (flattened in that order), computed with ``torch.func``, and their norms."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in net.named_parameters()}
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"layers {unknown} are not parameters of {type(net).__name__}; it has {sorted(params)}")
    chosen = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in chosen}
    buffers = dict(net.named_buffers())
    device = next(net.parameters()).device
    width = sum(p.numel() for p in chosen.values())
    proj = torch.from_numpy(rademacher(seed, 0, width, dim)).to(device)

    def loss_one(sel: dict[str, Any], xi: Any, yi: Any) -> Any:
        out = functional_call(net, {**rest, **sel, **buffers}, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_row = vmap(grad(loss_one), in_dims=(None, 0, 0))
    was_training = net.training
    net.eval()
    vecs, norms = [], []
    try:
        for start in range(0, len(x), GRAD_CHUNK):
            xb = torch.from_numpy(np.ascontiguousarray(x[start:start + GRAD_CHUNK])).to(device)
            yb = torch.from_numpy(y[start:start + GRAD_CHUNK].astype(np.int64)).to(device)
            grads = per_row(chosen, xb, yb)
            flat = torch.cat([grads[n].reshape(len(xb), -1) for n in names], dim=1)
            norms.append(flat.norm(dim=1).double().cpu().numpy())
            vecs.append((flat @ proj).cpu().numpy())
    finally:
        net.train(was_training)
    return normalise_rows(np.concatenate(vecs)), np.concatenate(norms)


class Proxy:
    """The selector's own small classifier, for strategies without a usable torch module (module
    docstring). Its state is plain data (`state` / `load`)."""

    def __init__(self, n_inputs: int, hidden: int, seed: int, lr: float) -> None:
        self.n_inputs, self.hidden, self.seed, self.lr = n_inputs, hidden, seed, lr
        self.classes: list[Any] = []
        self.mean = np.zeros(n_inputs, dtype=np.float32)
        self.std = np.ones(n_inputs, dtype=np.float32)
        self.fits = 0
        self.net: Any = None
        self.optimiser: Any = None
        self.generator = torch_core.seeded_generator(torch_core.fit_seed(seed, 1))

    # -- the network ---------------------------------------------------------------------
    def _build(self, n_classes: int) -> None:
        import torch
        from torch import nn

        old = self.net
        net = torch_core.build(lambda: nn.Sequential(nn.Linear(self.n_inputs, self.hidden), nn.ReLU(),
                                                     nn.Linear(self.hidden, n_classes)),
                               torch_core.fit_seed(self.seed, 2 + n_classes))
        if old is not None:  # a grown output layer keeps what the old one learned
            with torch.no_grad():
                net[0].load_state_dict(old[0].state_dict())
                k = old[2].out_features
                net[2].weight[:k] = old[2].weight
                net[2].bias[:k] = old[2].bias
        self.net = net.eval()
        self.optimiser = torch_core.adam(self.net, self.lr)

    def fit_statistics(self, x: np.ndarray) -> None:
        """Input standardisation from the first rows it sees (kept for good: the model's inputs
        must not change meaning under it)."""
        if self.net is None and len(x):
            self.mean = x.mean(axis=0).astype(np.float32)
            std = x.std(axis=0).astype(np.float32)
            self.std = np.where(std > 0, std, 1.0).astype(np.float32)

    def index(self, labels: list[Any]) -> np.ndarray:
        """Class index of each label; new labels are added (the output layer grows)."""
        known = {c: i for i, c in enumerate(self.classes)}
        for v in labels:
            if v not in known:
                known[v] = len(self.classes)
                self.classes.append(v)
        if self.net is None or self.net[2].out_features < len(self.classes):
            self._build(max(len(self.classes), 1))
        return np.asarray([known[v] for v in labels], dtype=np.int64)

    def _inputs(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(((x - self.mean) / self.std).astype(np.float32))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and hidden representations of rows ``x``."""
        import torch

        if self.net is None:
            self._build(max(len(self.classes), 1))
        with torch.no_grad():
            h = self.net[1](self.net[0](self._inputs(x)))
            return self.net[2](h).numpy(), h.numpy()

    def train(self, x: np.ndarray, y: np.ndarray, epochs: int, minibatch: int = 32) -> int:
        """``epochs`` passes over the rows (what the strategy is handed); returns rows trained."""
        import torch

        if not len(x) or epochs <= 0:
            return 0
        xt, yt = self._inputs(x), torch.from_numpy(y.astype(np.int64))
        net = self.net

        def loss(idx: Any) -> Any:
            return torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])

        rows = torch_core.train(net, loss, len(x), optimiser=self.optimiser, generator=self.generator,
                                minibatch=minibatch, epochs=epochs)
        self.fits += 1
        return rows

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"n_inputs": self.n_inputs, "classes": list(self.classes), "mean": self.mean.copy(),
                "std": self.std.copy(), "fits": self.fits,
                "model": None if self.net is None else torch_core.module_state(self.net),
                "width": None if self.net is None else int(self.net[2].out_features),
                "optimiser": None if self.optimiser is None else torch_core.optimiser_state(self.optimiser),
                "generator": torch_core.generator_state(self.generator)}

    def load(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.mean, self.std = np.asarray(state["mean"]).copy(), np.asarray(state["std"]).copy()
        self.fits = int(state["fits"])
        self.net = self.optimiser = None
        if state["model"] is not None:
            self._build(int(state["width"]))
            torch_core.load_module_state(self.net, state["model"])
            torch_core.load_optimiser_state(self.optimiser, state["optimiser"])
        self.generator = torch_core.load_generator_state(state["generator"])
