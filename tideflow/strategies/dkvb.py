"""Discrete key-value bottleneck (DKVB): a classifier that forgets little because it learns locally.

After Träuble et al., "Discrete Key-Value Bottleneck", ICML 2023. A frozen encoder's
embedding ``z`` is cut into C heads (``x_c = z R_c``, fixed random projections, or plain
slices of ``z``); each head looks up its nearest key among K keys of its own codebook and
fetches the value stored with that key; the logits are the mean of the C fetched values.
The keys are fitted on unlabeled data before the stream starts and then frozen; only the
values learn, and only the fetched ones: a batch of new classes changes the values of the
keys its inputs fall on and leaves every other value as it was. That locality is why the
method needs no task boundary, no replay and no task id.

What the code keeps, and why:

* **Keys frozen before the first batch.** EMA vector quantisation (k-means with
  exponential moving averages of cluster sizes and sums, Laplace-smoothed sizes, dead keys
  replaced by random vectors of the minibatch) on the key-init rows, then never touched:
  a key that moved would hand its value to inputs it was not learned on.
* **Values start at zero and learn by plain SGD** (no momentum, no weight decay): a value
  nobody fetches gets a zero gradient and so stays exactly where it is. Momentum would keep
  moving it after its last fetch, weight decay would shrink it: both are forgetting.
* **Keys never fetched while learning are masked at prediction**: an input whose nearest key
  holds no learned value is read from its nearest key that does.
* **Bad rows cost only themselves.** A null label, a label outside ``0 .. n_classes - 1``
  (`class_labels`: the reasons every classifier that skips bad labels row by row gives) or a
  null, NaN or infinite feature leaves that row out of learning, counted per reason in
  ``StepReport.skipped``; the batch's other rows are learned as if the bad ones were not there.
  A label column that is not integers is a `SchemaError`.
* **Determinism.** Projections, key initialisation and minibatch order each draw from a
  generator of their own (`torch_core.fit_seed` of the seed, 0, 1 and 2), never from the
  global ones, so a seed gives the same model in any process; the snapshot holds keys,
  values, the fetched-key mask, the optimiser's and the minibatch generator's state.

Departures from the paper, and why (docs/methods/dkvb.md has the whole list):

* The key-init rows default to what the engine hands to ``prepare`` (the source's
  ``unlabeled()``); without any, the first batch's inputs, with a warning: keys fitted on
  one task's inputs cover the later tasks' inputs badly (the spec's pitfall).
* The nearest key of each training row is looked up once per batch and reused over the
  ``epochs`` passes: the keys are frozen, so this is the same computation, done once.
* The encoder's embedding of the key-init rows is computed once, the projection per
  minibatch, so that memory holds embeddings, not every head's key-space vectors.

Besides the tideflow strategy (`KeyValueBottleneck`), the bottleneck is a torch module
(`KeyValueBottleneckModule`, built on first use so that importing this module does not
import torch) that plain Avalanche code trains with `dkvb_template` or with
`KeyValueBottleneckPlugin` and an SGD optimiser over ``module.values``.
"""

from __future__ import annotations

import time
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.strategies import torch_core
from tideflow.strategies.base import ClassScores, SchemaError, StepReport, Strategy, class_labels

__all__ = ["KeyValueBottleneck", "KeyValueBottleneckModule", "KeyValueBottleneckPlugin", "dkvb_template"]

PROJECTIONS = ("random", "partition")
#: rows x codebooks x keys of one distance block: bounds the memory of a lookup
_BLOCK = 1 << 24
#: Laplace smoothing of the EMA cluster sizes (the paper's)
_EPS = 1e-5


@lru_cache(maxsize=None)
def _module_class() -> type:
    """`KeyValueBottleneckModule`, defined on first use (torch is imported here, not at import)."""
    import torch
    from torch import nn

    class KeyValueBottleneckModule(nn.Module):
        """The bottleneck as a torch module: frozen encoder, projections and keys; learned values.

        ``forward(x)`` maps rows ``x`` (n, *input shape; ``n_inputs`` is the input's width or
        shape) to logits (n, n_classes). In train mode every key fetched is marked in
        ``fetched``; in eval mode only marked keys can be fetched (a codebook with none gives
        zeros). Call `init_keys` once, before training.
        """

        def __init__(self, n_inputs: int | tuple[int, ...], n_classes: int, *, encoder: Any = None,
                     codebooks: int = 64, keys: int = 128, key_dim: int = 8, projection: str = "random",
                     seed: int = 0) -> None:
            super().__init__()
            if projection not in PROJECTIONS:
                raise ValueError(f"projection {projection!r}: use one of {PROJECTIONS}")
            self.encoder = encoder
            if isinstance(encoder, nn.Module):
                encoder.requires_grad_(False)  # frozen: no optimiser may move it
            shape = (n_inputs,) if isinstance(n_inputs, int) else tuple(n_inputs)
            with torch.no_grad():
                m = int(self.encode(torch.zeros(1, *shape)).shape[1])
            if projection == "partition" and m != codebooks * key_dim:
                raise ValueError(f"projection='partition' cuts the {m}-dim embedding into codebooks x key_dim "
                                 f"slices: {codebooks} x {key_dim} = {codebooks * key_dim} != {m}")
            self.n_inputs, self.n_classes, self.embed_dim = n_inputs, n_classes, m
            self.codebooks, self.n_keys, self.key_dim, self.projection = codebooks, keys, key_dim, projection
            if projection == "random":
                # fixed Gaussian projections, each key-space direction of unit length over the input
                r = torch.randn(codebooks, m, key_dim, generator=torch_core.seeded_generator(
                    torch_core.fit_seed(seed, 0)))
                self.register_buffer("projections", r / r.norm(dim=1, keepdim=True))
            else:
                self.projections = None
            self.register_buffer("keys", torch.zeros(codebooks, keys, key_dim))
            self.register_buffer("fetched", torch.zeros(codebooks, keys, dtype=torch.bool))
            self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
            self.values = nn.Parameter(torch.zeros(codebooks, keys, n_classes))

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            if isinstance(self.encoder, nn.Module):
                self.encoder.eval()  # frozen, in train mode too (no dropout, no batch-norm updates)
            return self

        # -- the lookup ----------------------------------------------------------------------
        def encode(self, x: Any) -> Any:
            """The frozen encoder's embedding (n, m); without an encoder, the rows flattened."""
            with torch.no_grad():
                return x.reshape(len(x), -1) if self.encoder is None else self.encoder(x)

        def heads(self, z: Any) -> Any:
            """Embeddings (n, m) to key space (n, codebooks, key_dim)."""
            if self.projections is None:
                return z.reshape(len(z), self.codebooks, self.key_dim)
            return torch.einsum("nm,cmk->nck", z, self.projections)

        def head(self, z: Any, i: int) -> Any:
            """Embeddings (n, m) to codebook ``i``'s key space (n, key_dim)."""
            if self.projections is None:
                return z[:, i * self.key_dim:(i + 1) * self.key_dim]
            return z @ self.projections[i]

        def nearest(self, h: Any, masked: bool) -> Any:
            """Index (n, codebooks) of each head's nearest key (L2); ``masked``: fetched keys only."""
            k2 = (self.keys ** 2).sum(-1)  # (C, K); |h|^2 is the same for every key of a head
            if masked:
                k2 = k2.masked_fill(~self.fetched, float("inf"))
            rows = max(1, _BLOCK // (self.codebooks * self.n_keys))
            out = [(k2 - 2 * torch.einsum("nck,cjk->ncj", part, self.keys)).argmin(-1) for part in h.split(rows)]
            return torch.cat(out) if out else torch.zeros(0, self.codebooks, dtype=torch.long, device=h.device)

        def codes(self, x: Any) -> Any:
            """Rows to the key index per codebook (n, codebooks); in eval mode among fetched keys only."""
            with torch.no_grad():
                parts = [self.nearest(self.heads(self.encode(p)), masked=not self.training) for p in x.split(4096)]
            return torch.cat(parts) if parts else torch.zeros(0, self.codebooks, dtype=torch.long, device=x.device)

        def read(self, codes: Any) -> Any:
            """Logits of rows whose keys are ``codes``: the mean over codebooks of the fetched values."""
            c = torch.arange(self.codebooks, device=codes.device)
            fetched = self.values[c, codes]  # (n, C, classes): gradients reach the fetched values only
            if not self.training:
                fetched = fetched * self.fetched.any(1)[None, :, None]  # codebooks with nothing learned
            return fetched.mean(1)

        def mark(self, codes: Any) -> None:
            """Record ``codes`` as fetched while training (what prediction may fetch)."""
            c = torch.arange(self.codebooks, device=codes.device).expand_as(codes)
            self.fetched[c.reshape(-1), codes.reshape(-1)] = True

        def forward(self, x: Any) -> Any:
            if self.training and not bool(self.initialised):
                raise RuntimeError("KeyValueBottleneckModule: keys not initialised; call init_keys(unlabeled) "
                                   "before training (KeyValueBottleneckPlugin does it for Avalanche)")
            codes = self.codes(x)
            if self.training:
                self.mark(codes)
            return self.read(codes)

        # -- key initialisation ------------------------------------------------------------------
        def init_keys(self, x: Any, *, epochs: int = 10, decay: float = 0.95, minibatch: int = 256,
                      generator: Any = None) -> int:
            """Fit the keys on unlabeled rows ``x`` (n, n_inputs) by EMA vector quantisation, then
            freeze them; returns the rows processed (epochs x n). See the module docstring."""
            if bool(self.initialised):
                raise RuntimeError("KeyValueBottleneckModule: keys are frozen once initialised")
            n = len(x)
            if n == 0:
                raise ValueError("KeyValueBottleneckModule: no rows to initialise the keys on")
            g = generator if generator is not None else torch_core.seeded_generator(0)
            dev = self.keys.device
            with torch.no_grad():
                z = torch.cat([self.encode(p.to(dev)) for p in x.split(4096)])
                C, K = self.codebooks, self.n_keys
                c = torch.arange(C, device=dev)
                # start: K rows drawn per codebook (without replacement when there are enough)
                pick = (torch.rand(C, n, generator=g).argsort(1)[:, :K] if n >= K
                        else torch.randint(n, (C, K), generator=g)).to(dev)
                keys = torch.stack([self.head(z[pick[i]], i) for i in range(C)])  # (C, K, kd)
                size = torch.ones(C, K, device=dev)
                total = keys.clone()
                for idx in torch_core.minibatches(n, minibatch, g, epochs=epochs):
                    h = self.heads(z[idx.to(dev)])  # (B, C, kd)
                    B = len(h)
                    self.keys.copy_(keys)
                    near = self.nearest(h, masked=False).T  # (C, B)
                    counts = torch.zeros(C, K, device=dev).scatter_add_(1, near, torch.ones(C, B, device=dev))
                    sums = torch.zeros(C, K, self.key_dim, device=dev).scatter_add_(
                        1, near[..., None].expand(C, B, self.key_dim), h.transpose(0, 1).contiguous())
                    size.mul_(decay).add_(counts, alpha=1 - decay)
                    total.mul_(decay).add_(sums, alpha=1 - decay)
                    n_all = size.sum(1, keepdim=True)
                    keys = total / ((size + _EPS) / (n_all + K * _EPS) * n_all)[..., None]
                    # dead keys (too few rows in the moving average) restart on a random row of this
                    # minibatch, as if that row had just been assigned to them alone
                    rows = torch.randint(B, (C, K), generator=g).to(dev)
                    dead = size < 0.1 * B / K
                    fresh = h[rows, c[:, None]]  # (C, K, kd)
                    keys = torch.where(dead[..., None], fresh, keys)
                    total = torch.where(dead[..., None], fresh, total)
                    size = torch.where(dead, torch.ones_like(size), size)
                self.keys.copy_(keys)
                self.initialised.fill_(True)
            return epochs * n

        def flops_per_lookup(self) -> float:
            """Floating-point operations of one row's key lookup: the encoder (2 x its parameters, a
            dense-net estimate; 0 for the identity), the projection and the distances to every key."""
            enc = sum(p.numel() for p in self.encoder.parameters()) if isinstance(self.encoder, nn.Module) else 0
            proj = self.embed_dim * self.codebooks * self.key_dim if self.projections is not None else 0
            return 2.0 * (enc + proj + self.codebooks * self.n_keys * self.key_dim)

    KeyValueBottleneckModule.__module__ = __name__
    KeyValueBottleneckModule.__qualname__ = "KeyValueBottleneckModule"
    return KeyValueBottleneckModule


def __getattr__(name: str) -> Any:  # the torch module class, defined when first asked for (pickle too)
    if name == "KeyValueBottleneckModule":
        return _module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ClippedSGD:
    """Plain SGD (no momentum, no weight decay) whose step first clips the gradient norm: what
    `torch_core.train` calls ``optimiser`` (it needs ``zero_grad`` and ``step`` only)."""

    def __init__(self, values: Any, lr: float, clip: float | None) -> None:
        import torch

        self.sgd = torch.optim.SGD([values], lr=lr, momentum=0.0, weight_decay=0.0)
        self.values, self.clip = values, clip

    def zero_grad(self) -> None:
        self.sgd.zero_grad()

    def step(self) -> None:
        import torch

        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_([self.values], self.clip)
        self.sgd.step()


class KeyValueBottleneck(Strategy):
    """A discrete key-value bottleneck classifier (Träuble et al., ICML 2023; module docstring).

    Args:
        n_classes: labels are 0 .. n_classes - 1 (the values' width, fixed up front).
        encoder: frozen torch module (or callable) from the flattened feature rows (n, d) to
            embeddings (n, m); None: the identity (the features are the embedding). Its
            parameters are set not to require gradients.
        codebooks, keys, key_dim: C heads, K keys per codebook, each key of ``key_dim`` numbers.
        projection: ``"random"`` (fixed Gaussian projections, unit length over the embedding)
            or ``"partition"`` (the embedding cut into C slices of ``key_dim``: m = C x key_dim).
        init_epochs, init_decay: EMA vector quantisation of the keys (passes, decay).
        lr, label_smoothing, grad_clip: SGD on the values (no momentum, no weight decay),
            cross-entropy with label smoothing, gradient-norm clip (None: none).
        epochs, minibatch: passes over each batch, rows per SGD step (and per key-init step).
        key_init: unlabeled rows to fit the keys on (an (n, d) array of feature rows, or a
            Batch with the feature columns); default: the rows ``prepare`` is given (the
            source's ``unlabeled()``); without either, the first batch's inputs, with a
            warning (keys that only cover the first task).
        seed: projections, key initialisation and minibatch order.
        device: ``None``/``"auto"`` (CUDA when this process has one), ``"cpu"``, ``"cuda"``.
    """

    problem = "classification"

    def __init__(self, n_classes: int, *, encoder: Any = None, codebooks: int = 64, keys: int = 128,
                 key_dim: int = 8, projection: str = "random", init_epochs: int = 10, init_decay: float = 0.95,
                 lr: float = 0.3, label_smoothing: float = 0.1, grad_clip: float | None = 1.0, epochs: int = 1,
                 minibatch: int = 256, key_init: Any = None, seed: int = 0, device: str | None = None,
                 target: str | None = None, features: list[str] | None = None) -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection {projection!r}: use one of {PROJECTIONS}")
        self.n_classes, self.encoder = n_classes, encoder
        self.codebooks, self.keys, self.key_dim, self.projection = codebooks, keys, key_dim, projection
        self.init_epochs, self.init_decay = init_epochs, init_decay
        self.lr, self.label_smoothing, self.grad_clip = lr, label_smoothing, grad_clip
        self.epochs, self.minibatch, self.key_init = epochs, minibatch, key_init
        self.seed, self.device = seed, device
        self.target = target
        self.features = list(features) if features is not None else None
        self._net: Any = None
        self._optimiser: _ClippedSGD | None = None
        self._generator: Any = None
        self.n_batches = 0
        self.n_learned = 0
        self.keys_from: str | None = None  # "key_init", "prepare" or "first_batch"
        self._init_flops = 0.0  # key-init compute, reported with the next learn

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"n_classes": 2, "codebooks": 4, "keys": 8, "key_dim": 2, "init_epochs": 2, "minibatch": 32,
                "epochs": 2, "device": "cpu"}

    def describe(self) -> str:
        return (f"KeyValueBottleneck(n_classes={self.n_classes}, codebooks={self.codebooks}, keys={self.keys}, "
                f"key_dim={self.key_dim}, projection={self.projection!r}, lr={self.lr})")

    # -- building -----------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> np.ndarray:
        assert self.features is not None
        return batch.features(self.features, dtype=np.float32)

    def _build(self, n_inputs: int) -> None:
        device = torch_core.choose_device(self.device)
        net = _module_class()(n_inputs, self.n_classes, encoder=self.encoder, codebooks=self.codebooks,
                              keys=self.keys, key_dim=self.key_dim, projection=self.projection, seed=self.seed)
        self._net = net.to(device).eval()
        self._optimiser = _ClippedSGD(self._net.values, self.lr, self.grad_clip)
        self._generator = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 2))

    def _init_keys(self, x: np.ndarray, source: str) -> None:
        import torch

        if self._net is None:
            self._build(x.shape[1])
        if x.shape[1] != self._net.n_inputs:
            raise SchemaError(f"KeyValueBottleneck: key-init rows have {x.shape[1]} inputs, the model "
                              f"{self._net.n_inputs}")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            warnings.warn(f"KeyValueBottleneck: {int((~finite).sum())} key-init rows with non-finite inputs "
                          "left out of the key fit", stacklevel=3)
            x = x[finite]
        gen = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 1))
        rows = self._net.init_keys(torch.from_numpy(np.ascontiguousarray(x)), epochs=self.init_epochs,
                                   decay=self.init_decay, minibatch=self.minibatch, generator=gen)
        self._init_flops += rows * self._net.flops_per_lookup()
        self.keys_from = source

    def _given_key_init(self) -> np.ndarray:
        if isinstance(self.key_init, Batch):
            self._check_columns(self.key_init, need_target=False)
            return self._inputs(self.key_init)
        x = np.asarray(self.key_init, dtype=np.float32)
        return x.reshape(len(x), -1)

    def prepare(self, unlabeled: Batch) -> None:
        """Fit the keys on ``unlabeled`` (or on ``key_init`` when given), unless they are fitted
        already: keys are frozen for good once fitted (a warm-started model keeps its own)."""
        if self._net is not None and bool(self._net.initialised):
            return
        if self.key_init is not None:
            self._init_keys(self._given_key_init(), "key_init")
            return
        self._check_columns(unlabeled, need_target=False)
        if len(unlabeled):
            self._init_keys(self._inputs(unlabeled), "prepare")

    # -- the contract -----------------------------------------------------------------------
    def learn(self, batch: Batch) -> StepReport:
        if not len(batch):
            return StepReport()
        start = time.perf_counter()
        self._check_columns(batch, need_target=True)
        assert self.target is not None
        # rows it cannot learn from are counted in the report, never dropped in silence, and cost
        # only themselves: a null label, a label outside 0..n_classes-1 (`class_labels`: the same
        # reasons as every classifier that skips bad labels row by row), a null, NaN or infinite
        # feature (no nearest key); a label column that is not integers is a SchemaError
        y, keep, skipped = class_labels(batch, self.target, self.n_classes, "KeyValueBottleneck")
        x = self._inputs(batch)
        finite = np.isfinite(x).all(axis=1)
        if (keep & ~finite).any():
            skipped["null_feature"] = int((keep & ~finite).sum())
        keep &= finite
        x, y = x[keep], y[keep]
        if len(y) and (self._net is None or not bool(self._net.initialised)):
            if self.key_init is not None:
                self._init_keys(self._given_key_init(), "key_init")
            else:
                warnings.warn("KeyValueBottleneck: no key-init rows (key_init=None and no prepare); fitting the "
                              "keys on the first batch's inputs, which may not cover later tasks", stacklevel=2)
                self._init_keys(x, "first_batch")
        flops, rows = self._init_flops, 0
        self._init_flops = 0.0
        if len(y):
            rows, flops = self._fit(x, y, flops)
        self.n_batches += 1
        self.n_learned += len(y)
        # train_rows: rows through an SGD step (epochs x rows); flops: the key lookup of each row
        # once (keys are frozen; `flops_per_lookup`), per epoch the mean of C fetched values forward
        # and its gradient back (3 x C x classes per row), plus any key fit since the last report
        return StepReport(samples=len(batch), fits=1 if len(y) else 0, train_seconds=time.perf_counter() - start,
                          extra={"train_rows": float(rows), "flops": float(flops)}, skipped=skipped)

    def _fit(self, x: np.ndarray, y: np.ndarray, flops: float) -> tuple[int, float]:
        import torch
        import torch.nn.functional as F

        net = self._net
        device = net.values.device
        net.train()
        codes = net.codes(torch.from_numpy(np.ascontiguousarray(x)).to(device))
        net.mark(codes)
        target = torch.from_numpy(y).to(device)
        smoothing = self.label_smoothing

        def loss(idx: Any) -> Any:
            idx = idx.to(device)
            return F.cross_entropy(net.read(codes[idx]), target[idx], label_smoothing=smoothing)

        rows = torch_core.train(net, loss, len(y), optimiser=self._optimiser, generator=self._generator,
                                minibatch=self.minibatch, epochs=self.epochs)
        flops += len(y) * net.flops_per_lookup() + rows * 3.0 * self.codebooks * self.n_classes
        return rows, flops

    def _logits(self, batch: Batch) -> np.ndarray:
        import torch

        self._check_columns(batch, need_target=False)
        if self._net is None:
            return np.zeros((len(batch), self.n_classes), dtype=np.float32)  # nothing learned: no opinion
        x = self._inputs(batch)
        finite = np.isfinite(x).all(axis=1)
        x = np.where(finite[:, None], x, 0.0).astype(np.float32)
        net = self._net.eval()
        with torch.no_grad():
            out = net.read(net.codes(torch.from_numpy(x).to(net.values.device))).cpu().numpy()
        out[~finite] = 0.0  # a row with non-finite inputs has no nearest key: no opinion
        return out

    def predict(self, batch: Batch) -> pa.Array:
        if not len(batch):
            return pa.array([], type=pa.int64())
        return pa.array(self._logits(batch).argmax(axis=1).astype(np.int64))

    def predict_scores(self, batch: Batch) -> ClassScores:
        """The logits (mean fetched value) per class 0 .. n_classes - 1."""
        classes = list(range(self.n_classes))
        if not len(batch):
            return ClassScores(np.zeros((0, self.n_classes), dtype=np.float32), classes)
        return ClassScores(self._logits(batch), classes)

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"built": self._net is not None, "n_batches": self.n_batches,
                                 "n_learned": self.n_learned, "keys_from": self.keys_from,
                                 "init_flops": self._init_flops}
        if self._net is not None:
            net = self._net
            state.update({"n_inputs": int(net.n_inputs), "initialised": bool(net.initialised),
                          "keys": torch_core.plain_tensor(net.keys), "values": torch_core.plain_tensor(net.values),
                          "fetched": torch_core.plain_tensor(net.fetched),
                          "optimiser": torch_core.optimiser_state(self._optimiser.sgd),
                          "generator": torch_core.generator_state(self._generator)})
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.n_batches, self.n_learned = int(state["n_batches"]), int(state["n_learned"])
        self.keys_from, self._init_flops = state["keys_from"], float(state["init_flops"])
        if not state["built"]:
            self._net = self._optimiser = self._generator = None
            return
        import torch

        self._build(int(state["n_inputs"]))
        net = self._net
        with torch.no_grad():
            net.keys.copy_(state["keys"])
            net.values.copy_(state["values"])
            net.fetched.copy_(state["fetched"])
            net.initialised.fill_(bool(state["initialised"]))
        torch_core.load_optimiser_state(self._optimiser.sgd, state["optimiser"])
        self._generator = torch_core.load_generator_state(state["generator"])


# -- plain Avalanche -----------------------------------------------------------------------------
class KeyValueBottleneckPlugin:
    """An Avalanche plugin (Avalanche calls whichever callbacks a plugin has) for a template whose
    model is a `KeyValueBottleneckModule`: fits the keys before the first training experience (on
    ``key_init`` rows, else on that experience's inputs, with a warning) and clips the values'
    gradient norm before each optimiser step."""

    def __init__(self, key_init: Any = None, *, grad_clip: float | None = 1.0, init_epochs: int = 10,
                 init_decay: float = 0.95, minibatch: int = 256, seed: int = 0) -> None:
        self.key_init, self.grad_clip = key_init, grad_clip
        self.init_epochs, self.init_decay, self.minibatch, self.seed = init_epochs, init_decay, minibatch, seed

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        import torch

        net = strategy.model
        if bool(net.initialised):
            return
        if self.key_init is not None:
            x = torch.as_tensor(np.asarray(self.key_init, dtype=np.float32))
        else:
            warnings.warn("KeyValueBottleneckPlugin: no key_init rows; fitting the keys on the first "
                          "experience's inputs, which may not cover later experiences", stacklevel=2)
            data = strategy.experience.dataset
            x = torch.stack([torch.as_tensor(data[i][0], dtype=torch.float32) for i in range(len(data))])
        gen = torch_core.seeded_generator(torch_core.fit_seed(self.seed, 1))
        net.init_keys(x, epochs=self.init_epochs, decay=self.init_decay,
                      minibatch=self.minibatch, generator=gen)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        import torch

        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([strategy.model.values], self.grad_clip)


def dkvb_template(module: Any, *, key_init: Any = None, lr: float = 0.3, label_smoothing: float = 0.1,
                  grad_clip: float | None = 1.0, train_mb_size: int = 256, train_epochs: int = 1,
                  init_epochs: int = 10, init_decay: float = 0.95, seed: int = 0, device: str | None = None,
                  **template_kwargs: Any) -> Any:
    """An Avalanche ``Naive`` template that trains ``module`` (a `KeyValueBottleneckModule`) as the
    paper does: plain SGD on the values, cross-entropy with label smoothing, keys fitted by
    `KeyValueBottleneckPlugin` before the first experience. ``template_kwargs`` go to ``Naive``
    (``evaluator``, ``eval_mb_size``, ``plugins``, ...)."""
    import torch
    from avalanche.training import Naive

    plugins = list(template_kwargs.pop("plugins", None) or [])
    plugins.append(KeyValueBottleneckPlugin(key_init, grad_clip=grad_clip, init_epochs=init_epochs,
                                            init_decay=init_decay, minibatch=train_mb_size, seed=seed))
    optimiser = torch.optim.SGD([module.values], lr=lr, momentum=0.0, weight_decay=0.0)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return Naive(model=module, optimizer=optimiser, criterion=criterion,
                 train_mb_size=train_mb_size, train_epochs=train_epochs, device=torch_core.choose_device(device),
                 plugins=plugins, **template_kwargs)
