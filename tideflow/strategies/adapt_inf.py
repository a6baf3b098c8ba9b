"""Adapt-∞ data selection (Maharana et al., ICLR 2025) as the selection stage of a learn step.

``tf.Pipeline(...).learn(strategy, select=AdaptInfinity(budget=200, ...))``: the learn step
scores every incoming batch with the strategy as always, then hands the batch to this
selector, which keeps a pool of past and new rows and, at its selection points, hands the
strategy a budgeted, skill-balanced training set drawn from the pool instead of the raw batch
(`tideflow.strategies.selection` is the contract). Between selection points the strategy learns
nothing; rows only join the pool. docs/methods/adapt-inf.md says what the paper does, what we
implement and where we depart from it.

At a selection point (every ``N`` batches, the source's end-of-task mark or a task boundary,
a drift event: ``every=``):

1. **Sample vectors** of every pool row with the current scoring model (the strategy's own
   torch classifier when it exposes one, else a small proxy model the selector keeps and
   trains on the rows it selects: `tideflow.strategies.adapt_inf_model`): the per-row
   gradient of the cross-entropy with respect to the last layer in closed form, or of chosen
   parameters through ``torch.func`` (``layers=``), randomly projected to ``projection_dim``
   and L2-normalised.
2. **Pseudo-skills**: k-means with ``clusters`` clusters on the vectors, fitted afresh at each
   point (seeded by ``seed`` and the point's number): the vectors are gradients of the model of
   the moment, which has learned since the last point, so last point's centroids do not
   describe them; cluster j of one point is not cluster j of the next.
3. **Experts** score every row (loss, EL2N, entropy, gradient norm; input-ablation grounding
   for rows with two modalities, ``ablate=`` naming the columns zeroed); per cluster the expert
   whose standardised score histogram has the highest entropy is used.
4. **Budget**: ``budget`` rows split equally over the clusters, small clusters taken whole and
   the rest redistributed; within a cluster **coverage-centric sampling** over score strata
   (``coverage=False``: the highest scores).
5. **Guard**: every class first seen since the last selection point gets at least its fair
   share (``budget // classes in the pool``, or ``guard=`` rows), taken from the classes
   with the most selected rows, so that equal cluster budgets cannot starve a new class.
6. **Pruning**: when the pool holds more than ``pool_size`` rows, each cluster keeps its
   share of ``pool_size``, its least redundant rows first (SemDeDup: the largest cosine
   similarity to an earlier row of the cluster), for good.

Invariants the code keeps:

* **The pool never exceeds ``pool_size`` at rest**: it is cut at the end of every ``select``
  call that took it over, selection point or not (between points the whole pool is
  vectorised and clustered again with the model of the moment, so that the new rows form
  clusters of their own and are not cut against old rows of an old cluster before any point
  saw them), so the pool's rows and the snapshot's size are bounded by ``pool_size`` over a
  stream of any length (tested).
* **Determinism**: k-means, sampling and the projection draw from generators seeded by
  (``seed``, selection point); torch and the BLAS/OpenMP pools run ``threads`` threads
  inside a call, so the same stream selects the same rows on either runner (tested).
* **The strategy is never changed**: its model is run in eval mode without gradients on its
  parameters, and put back in the mode it was in.
* **Rows it cannot use are counted, not dropped in silence** (``select.unusable``): a null
  label, a NaN or infinite feature, a label outside the strategy model's classes; they never
  enter the pool. Scores a diverged model makes non-finite are replaced by the median of the
  finite ones and counted (``select.nonfinite``).
* **Bad configurations fail at construction** (unknown expert, grounding without ``ablate``,
  a budget the pool can never hold); at run time a budget larger than the pool hands the
  whole pool (``select.short`` counts the missing rows), a cluster k-means leaves empty gets
  no rows, and a strategy without a usable model is scored by the proxy (``select.proxy``),
  or refused with `SelectionError` when ``model="strategy"`` was asked for.

Report of a call (summed by the engine into the step's ``extra`` as ``select.<key>``, logged
per batch): ``pool`` (rows after the call), ``unusable``, ``pruned``, and at a selection
point ``selected``, ``short``, ``clusters`` (non-empty), ``cluster<j>.rows``,
``expert.<name>`` (clusters that used it), ``guard`` (rows the guard added), ``scored``
(rows given a vector), ``proxy`` (1 when the proxy scored), ``proxy_rows``, ``nonfinite``,
``seconds`` (wall time of the call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent, TaskBoundary
from tideflow.strategies import torch_core
from tideflow.strategies.adapt_inf_core import (
    EXPERTS,
    choose_expert,
    coverage_sample,
    expert_scores,
    prune,
    pseudo_skills,
    water_fill,
)
from tideflow.strategies.adapt_inf_model import (
    NoModel,
    Proxy,
    forward,
    last_layer_vectors,
    layer_vectors,
    softmax,
    strategy_module,
)
from tideflow.strategies.selection import Selection, Selector

__all__ = ["AdaptInfinity", "SelectionError", "ipc_bytes"]

#: the selection points ``every=`` names (besides a number of batches)
POINTS = ("task", "drift")
MODELS = ("auto", "strategy", "proxy")


def ipc_bytes(batch: Batch) -> bytes:
    """A batch's rows as Arrow IPC stream bytes: how the pool is kept in a snapshot (plain bytes,
    read back without unpickling anything)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.data.schema) as writer:
        writer.write_batch(batch.data)
    return sink.getvalue().to_pybytes()


class SelectionError(ValueError):
    """The selector cannot work with this strategy or batch (the message says what is missing)."""


@dataclass
class _Scored:
    """Scoring-model outputs for some pool rows."""

    keep: np.ndarray  # rows usable by the scoring model (the others leave the pool)
    vectors: np.ndarray  # (kept rows, projection_dim), L2-normalised
    scores: dict[str, np.ndarray]
    y: np.ndarray  # class index per kept row (the scoring model's)
    proxy: bool
    nonfinite: int


class AdaptInfinity(Selector):
    """Adapt-∞ selection stage (module docstring).

    Args:
        budget: rows handed to the strategy per selection point; None: the whole pool.
        pool_size: rows the pool keeps at rest (pruning above it); None: every usable row is
            kept (the pool then grows with the stream).
        every: selection points: an int N (every N batches), ``"task"`` (the source's
            end-of-task mark, or the next batch after a task boundary the learn step reports),
            ``"drift"`` (the next batch after a drift event), or a tuple of these.
        clusters: k of the k-means pseudo-skills (1: no clustering).
        projection_dim: width of the projected sample vectors.
        experts: selector experts (`adapt_inf_core.EXPERTS`); one name: that expert in every
            cluster; empty: rows drawn at random within clusters.
        coverage: coverage-centric sampling within clusters (False: highest scores first).
        strata / trim: CCS strata and the score fractions cut at the low and high end.
        guard: minimum rows per class new since the last point: ``"fair"`` (budget // classes
            in the pool), an int, or None (no guard).
        layers: parameter names of the strategy's module whose per-row gradients make the
            vectors (``torch.func``); None: the last layer in closed form. The proxy always
            uses its last layer.
        model: ``"auto"`` (the strategy's model when usable, else the proxy), ``"strategy"``
            (refuse a strategy without one) or ``"proxy"``.
        ablate: feature columns the grounding expert zeroes (the second modality).
        proxy_hidden / proxy_epochs / proxy_lr: the proxy's width, passes over the selected
            rows per point, Adam learning rate.
        bins: histogram bins of the expert choice.
        seed: seeds k-means, sampling, projection and the proxy.
        threads: torch and BLAS threads inside a call (None: leave them).
    """

    # the operator check suite is for ``process``/``drain`` stages; a selector's contract
    # (params, plain snapshot, snapshot/restore, determinism) is tested in
    # tests/strategies/test_adapt_inf.py
    checkable = False

    def __init__(self, budget: int | None = 200, *, pool_size: int | None = None,
                 every: int | str | tuple[int | str, ...] = "task", clusters: int = 10,
                 projection_dim: int = 128,
                 experts: tuple[str, ...] = ("loss", "el2n", "entropy", "grad_norm"), coverage: bool = True,
                 strata: int = 50, trim: tuple[float, float] = (0.05, 0.0), guard: int | str | None = "fair",
                 layers: tuple[str, ...] | None = None, model: str = "auto", ablate: tuple[str, ...] = (),
                 proxy_hidden: int = 64, proxy_epochs: int = 5, proxy_lr: float = 1e-2, bins: int = 50,
                 seed: int = 0, threads: int | None = 1) -> None:
        self.budget = budget
        self.pool_size = pool_size
        self.every = every
        self.clusters = clusters
        self.projection_dim = projection_dim
        self.experts = tuple(experts)
        self.coverage = coverage
        self.strata = strata
        self.trim = tuple(trim)
        self.guard = guard
        self.layers = tuple(layers) if layers is not None else None
        self.model = model
        self.ablate = tuple(ablate)
        self.proxy_hidden = proxy_hidden
        self.proxy_epochs = proxy_epochs
        self.proxy_lr = proxy_lr
        self.bins = bins
        self.seed = seed
        self.threads = threads
        self._when = self._check()
        self._reset()

    def _check(self) -> tuple[int | None, bool, bool]:
        """Refuse configurations that cannot work; returns (every N batches, at tasks, on drift)."""
        name = type(self).__name__
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"{name}: budget must be a positive int or None, got {self.budget!r}")
        if self.pool_size is not None and (not isinstance(self.pool_size, int) or self.pool_size < 1):
            raise ValueError(f"{name}: pool_size must be a positive int or None, got {self.pool_size!r}")
        if self.pool_size is not None and self.budget is not None and self.budget > self.pool_size:
            raise ValueError(f"{name}: budget {self.budget} > pool_size {self.pool_size}: the pool could never "
                             "hold a full selection; raise pool_size or lower the budget")
        if self.clusters < 1 or self.projection_dim < 1 or self.strata < 1 or self.bins < 2:
            raise ValueError(f"{name}: clusters, projection_dim and strata must be >= 1 and bins >= 2")
        unknown = [e for e in self.experts if e not in EXPERTS]
        if unknown or len(set(self.experts)) != len(self.experts):
            raise ValueError(f"{name}: experts {list(self.experts)}: each once, from {EXPERTS}")
        if ("grounding" in self.experts) != bool(self.ablate):
            raise ValueError(f"{name}: the grounding expert needs ablate= (the feature columns of the modality "
                             "it zeroes), and ablate= is only used by it")
        if len(self.trim) != 2 or not (0.0 <= self.trim[0] and 0.0 <= self.trim[1] and sum(self.trim) < 1.0):
            raise ValueError(f"{name}: trim must be two fractions (low, high) summing below 1, got {self.trim}")
        if not (self.guard is None or self.guard == "fair" or (isinstance(self.guard, int) and self.guard >= 0)):
            raise ValueError(f"{name}: guard must be 'fair', a non-negative int or None, got {self.guard!r}")
        if self.model not in MODELS:
            raise ValueError(f"{name}: model must be one of {MODELS}, got {self.model!r}")
        points = self.every if isinstance(self.every, tuple) else (self.every,)
        n, task, drift = None, False, False
        for p in points:
            if isinstance(p, int) and not isinstance(p, bool) and p >= 1:
                n = p
            elif p in POINTS:
                task, drift = task or p == "task", drift or p == "drift"
            else:
                raise ValueError(f"{name}: every={self.every!r}: use a number of batches >= 1, "
                                 f"{' or '.join(repr(x) for x in POINTS)}, or a tuple of these")
        return n, task, drift

    def _reset(self) -> None:
        self._pool: Batch | None = None
        # vectors and cluster of the pool's leading rows (rows joined since have none yet)
        self._vectors = np.zeros((0, self.projection_dim), dtype=np.float32)
        self._clusters = np.zeros(0, dtype=np.int64)
        self._centroids = np.zeros((0, self.projection_dim), dtype=np.float32)
        self._calls = 0  # select calls (batches)
        self._points = 0  # selection points so far
        self._due = False  # a task boundary or drift event asked for a point at the next call
        self._pooled_since = 0  # rows pooled since the last selection point
        self._seen: list[Any] = []  # classes of the pool at the last selection point
        self._proxy: Proxy | None = None

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"budget": 20, "pool_size": 60, "every": 2, "clusters": 3, "projection_dim": 16}

    @property
    def pool_rows(self) -> int:
        """Rows in the pool now."""
        return 0 if self._pool is None else len(self._pool)

    # -- the contract ----------------------------------------------------------------------
    def select(self, batch: Batch, strategy: Any) -> Selection:
        start = time.perf_counter()
        torch_core.set_threads(self.threads)
        from threadpoolctl import threadpool_limits

        report: dict[str, float] = {}
        with threadpool_limits(limits=self.threads):
            self._calls += 1
            self._add(batch, strategy, report)
            rows = self._choose(strategy, report) if self._is_point(batch) else None
            self._cap(strategy, report)
        report["pool"] = float(self.pool_rows)
        report["seconds"] = time.perf_counter() - start
        return Selection(rows, report)

    def on_drift(self, event: DriftEvent) -> None:
        if self._when[2]:
            self._due = True

    def on_task_boundary(self, boundary: TaskBoundary) -> None:
        # a boundary right after a point taken at the end-of-task mark has nothing new to select
        if self._when[1] and self._pooled_since > 0:
            self._due = True

    def _is_point(self, batch: Batch) -> bool:
        every, at_task, _ = self._when
        point = self._due or (every is not None and self._calls % every == 0) or (at_task and batch.end_of_task)
        self._due = False
        return point and self.pool_rows > 0

    # -- the pool --------------------------------------------------------------------------
    def _columns(self, strategy: Any) -> tuple[list[str], str]:
        features, target = getattr(strategy, "features", None), getattr(strategy, "target", None)
        if features is None or target is None:
            raise SelectionError(f"{type(strategy).__name__} has no features/target: bind it to a schema first")
        return list(features), target

    def _add(self, batch: Batch, strategy: Any, report: dict[str, float]) -> None:
        """Pool the batch's usable rows (module docstring: the others are counted)."""
        if not len(batch):
            return
        features, target = self._columns(strategy)
        missing = [c for c in [*features, target] if c not in batch.column_names]
        if missing:
            raise SelectionError(f"batch lacks columns {missing} the strategy learns from; it has {batch.column_names}")
        ok = ~batch.column(target).is_null().to_numpy(zero_copy_only=False)
        x = batch.features(features, dtype=np.float32)
        ok &= np.isfinite(x).all(axis=1)
        if self.model != "proxy" and ok.any():  # labels the strategy's classifier has no output for
            try:  # one row through the model tells whether it is a classifier head, and its width
                n_classes = forward(*strategy_module(strategy), x[np.flatnonzero(ok)[:1]])[0].shape[1]
            except NoModel:
                n_classes = None
            if n_classes is not None:
                ok &= np.asarray([isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_classes
                                  for v in batch.column(target).to_pylist()], dtype=bool)
        if not ok.all():
            report["unusable"] = report.get("unusable", 0.0) + float((~ok).sum())
            batch = batch.filter(ok)
        if not len(batch):
            return
        rows = Batch(batch.data, batch.stream_id, False)
        self._pool = rows if self._pool is None else Batch.concat([self._pool, rows])
        self._pooled_since += len(rows)

    def _keep(self, mask: np.ndarray, report: dict[str, float]) -> None:
        """Leave only the pool rows in ``mask`` (vectors and clusters follow)."""
        assert self._pool is not None
        dropped = int((~mask).sum())
        if not dropped:
            return
        m = len(self._vectors)
        self._vectors, self._clusters = self._vectors[mask[:m]], self._clusters[mask[:m]]
        self._pool = Batch(self._pool.data.filter(pa.array(mask)), self._pool.stream_id, False)
        report["unusable"] = report.get("unusable", 0.0) + dropped

    # -- scoring ---------------------------------------------------------------------------
    def _score(self, rows: Batch, strategy: Any, with_scores: bool, report: dict[str, float]) -> _Scored:
        """Vectors (and expert scores) of ``rows`` with the scoring model of the moment."""
        features, target = self._columns(strategy)
        x = rows.features(features, dtype=np.float32)
        labels = rows.column(target).to_pylist()
        try:
            if self.model == "proxy":
                raise NoModel("model='proxy' was asked for")
            net, last = strategy_module(strategy)
            logits, h = forward(net, last, x)
            y = np.asarray([v if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else -1
                            for v in labels], dtype=np.int64)
            keep = (y >= 0) & (y < logits.shape[1])
            proxy = False
        except NoModel as exc:
            if self.model == "strategy":
                raise SelectionError(f"{type(self).__name__}(model='strategy'): {exc}") from None
            if self._proxy is None:
                self._proxy = Proxy(x.shape[1], self.proxy_hidden, self.seed, self.proxy_lr)
            self._proxy.fit_statistics(x)
            y = self._proxy.index(labels)
            logits, h = self._proxy.forward(x)
            net, last, keep, proxy = self._proxy.net, self._proxy.net[2], np.ones(len(x), dtype=bool), True
        if not keep.all():
            x, y, logits, h = x[keep], y[keep], logits[keep], h[keep]
        probs = softmax(logits.astype(np.float64))
        seed = torch_core.fit_seed(self.seed, 0)  # one projection for the whole stream
        if self.layers is not None and not proxy:
            vectors, grad_norm = layer_vectors(net, self.layers, x, y, seed, self.projection_dim)
        else:
            vectors, grad_norm = last_layer_vectors(probs, y, h, seed, self.projection_dim)
        bad = ~np.isfinite(vectors).all(axis=1)
        vectors[bad] = 0.0
        scores: dict[str, np.ndarray] = {}
        if with_scores and self.experts:
            ablated = None
            if "grounding" in self.experts:
                xa = self._ablated(rows.filter(keep) if not keep.all() else rows, x, features)
                ablated = softmax((self._proxy.forward(xa)[0] if proxy else forward(net, last, xa)[0])
                                  .astype(np.float64))
            scores = {k: v for k, v in expert_scores(probs, y, grad_norm, ablated).items() if k in self.experts}
            for k, s in scores.items():
                finite = np.isfinite(s)
                bad |= ~finite
                if not finite.all():
                    s[~finite] = np.median(s[finite]) if finite.any() else 0.0
        report["scored"] = report.get("scored", 0.0) + float(len(x))
        if proxy:
            report["proxy"] = 1.0
        if bad.any():
            report["nonfinite"] = report.get("nonfinite", 0.0) + float(bad.sum())
        return _Scored(keep, vectors, scores, y, proxy, int(bad.sum()))

    def _ablated(self, rows: Batch, x: np.ndarray, features: list[str]) -> np.ndarray:
        """``x`` with the ``ablate`` columns' positions set to 0 (the other modality kept)."""
        missing = [c for c in self.ablate if c not in features]
        if missing:
            raise SelectionError(f"ablate columns {missing} are not among the strategy's features {features}")
        xa = x.copy()
        pos = 0
        for c in features:
            width = rows.features([c], dtype=np.float32).shape[1] if len(rows) else 0
            if c in self.ablate:
                xa[:, pos:pos + width] = 0.0
            pos += width
        return xa

    # -- a selection point -----------------------------------------------------------------
    def _choose(self, strategy: Any, report: dict[str, float]) -> Batch | None:
        assert self._pool is not None
        self._points += 1
        rng = np.random.default_rng([self.seed, self._points])
        self._pooled_since = 0
        # one cluster and no expert: nothing to score; rows are drawn uniformly from the pool
        # (pruning, if due, vectorises the pool on its own)
        uniform = self.clusters == 1 and not self.experts
        self._vectors = np.zeros((0, self.projection_dim), dtype=np.float32)
        self._clusters = np.zeros(0, dtype=np.int64)
        if uniform:
            scored = None
            clusters = np.zeros(self.pool_rows, dtype=np.int64)
            self._centroids = np.zeros((0, self.projection_dim), dtype=np.float32)
            n_clusters = 1
        else:
            scored = self._score(self._pool, strategy, True, report)
            self._keep(scored.keep, report)
            clusters, self._centroids = pseudo_skills(scored.vectors, self.clusters,
                                                      torch_core.fit_seed(self.seed, self._points))
            self._vectors, self._clusters = scored.vectors, clusters
            n_clusters = len(self._centroids)
        n = self.pool_rows
        if not n:
            return None
        sizes = np.bincount(clusters, minlength=n_clusters)
        budget = n if self.budget is None else min(self.budget, n)
        if self.budget is not None and self.budget > n:
            report["short"] = float(self.budget - n)
        chosen = []
        for j, quota in enumerate(water_fill(sizes, budget)):
            report[f"cluster{j}.rows"] = float(quota)
            members = np.flatnonzero(clusters == j)
            if quota >= len(members):
                chosen.append(members)
            elif quota and not self.experts:
                chosen.append(np.sort(rng.choice(members, quota, replace=False)))
            elif quota:
                assert scored is not None
                candidates = {e: scored.scores[e][members] for e in self.experts}
                name = choose_expert(candidates, self.bins) if len(self.experts) > 1 else self.experts[0]
                report[f"expert.{name}"] = report.get(f"expert.{name}", 0.0) + 1.0
                s = candidates[name]
                pick = (coverage_sample(s, int(quota), rng, strata=self.strata, trim=self.trim) if self.coverage
                        else np.argsort(-s, kind="stable")[:quota])
                chosen.append(members[pick])
        selected = np.zeros(n, dtype=bool)
        selected[np.concatenate(chosen)] = True
        labels = self._pool.column(self._columns(strategy)[1]).to_pylist()
        self._guard(selected, labels, budget, rng, report)
        self._seen = sorted(set(self._seen) | set(labels), key=repr)
        idx = np.flatnonzero(selected)
        if scored is not None and scored.proxy and self._proxy is not None:
            x = self._pool.features(self._columns(strategy)[0], dtype=np.float32)[idx]
            report["proxy_rows"] = float(self._proxy.train(x, scored.y[idx], self.proxy_epochs))
        report["selected"] = float(len(idx))
        report["clusters"] = float((sizes > 0).sum())
        return Batch(self._pool.data.take(pa.array(idx, type=pa.int64())), self._pool.stream_id, False)

    def _guard(self, selected: np.ndarray, labels: list[Any], budget: int, rng: np.random.Generator,
               report: dict[str, float]) -> None:
        """Module docstring, step 5 (``selected`` is changed in place; its total does not grow)."""
        seen = set(self._seen)
        order = list(dict.fromkeys(labels))  # the pool's classes in order of arrival
        new = [c for c in order if c not in seen]
        if self.guard is None or not new:
            return
        lab = np.empty(len(labels), dtype=object)
        lab[:] = labels
        minimum = budget // len(order) if self.guard == "fair" else int(self.guard)
        counts = {d: int((selected & (lab == d)).sum()) for d in order}
        added = 0
        for c in new:
            of_c = lab == c
            want = min(minimum, int(of_c.sum())) - counts[c]
            if want <= 0:
                continue
            selected[rng.choice(np.flatnonzero(of_c & ~selected), want, replace=False)] = True
            counts[c] += want
            added += want
            for _ in range(want):  # one row back from the class with the most selected rows
                donors = [d for d in order if d != c and counts[d] > (minimum if d in new else 0)]
                if not donors:
                    break
                donor = max(donors, key=lambda d: (counts[d], -order.index(d)))
                selected[rng.choice(np.flatnonzero(selected & (lab == donor)))] = False
                counts[donor] -= 1
        if added:
            report["guard"] = report.get("guard", 0.0) + float(added)

    # -- pruning ---------------------------------------------------------------------------
    def _cap(self, strategy: Any, report: dict[str, float]) -> None:
        """Cut the pool to ``pool_size`` (module docstring, step 6 and the first invariant)."""
        if self.pool_size is None or self.pool_rows <= self.pool_size:
            return
        assert self._pool is not None
        if len(self._vectors) < self.pool_rows:
            # rows joined since the last vectors: the whole pool is vectorised and clustered
            # again with the model of the moment, so that new rows (a new class) form clusters
            # of their own rather than being cut against old rows in an old cluster
            scored = self._score(self._pool, strategy, False, report)
            self._vectors = np.zeros((0, self.projection_dim), dtype=np.float32)
            self._clusters = np.zeros(0, dtype=np.int64)
            self._keep(scored.keep, report)
            self._clusters, self._centroids = pseudo_skills(scored.vectors, self.clusters,
                                                            torch_core.fit_seed(self.seed, self._calls))
            self._vectors = scored.vectors
        n = self.pool_rows
        if n <= self.pool_size:
            return
        keep = prune(self._vectors, self._clusters, self.pool_size)
        self._pool = Batch(self._pool.data.take(pa.array(keep, type=pa.int64())), self._pool.stream_id, False)
        self._vectors, self._clusters = self._vectors[keep], self._clusters[keep]
        report["pruned"] = report.get("pruned", 0.0) + float(n - len(keep))

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        pool = None if self._pool is None else {"ipc": ipc_bytes(self._pool), "stream_id": self._pool.stream_id}
        return {"pool": pool, "vectors": self._vectors.copy(), "clusters": self._clusters.copy(),
                "centroids": self._centroids.copy(), "calls": self._calls, "points": self._points,
                "due": self._due, "pooled_since": self._pooled_since, "seen": list(self._seen),
                "proxy": None if self._proxy is None else self._proxy.state()}

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        if state["pool"] is not None:
            table = pa.ipc.open_stream(pa.py_buffer(state["pool"]["ipc"])).read_all().combine_chunks()
            data = table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
            self._pool = Batch(data, state["pool"]["stream_id"], False)
        self._vectors = np.asarray(state["vectors"], dtype=np.float32).copy()
        self._clusters = np.asarray(state["clusters"], dtype=np.int64).copy()
        self._centroids = np.asarray(state["centroids"], dtype=np.float32).copy()
        self._calls, self._points = int(state["calls"]), int(state["points"])
        self._due, self._pooled_since = bool(state["due"]), int(state["pooled_since"])
        self._seen = list(state["seen"])
        if state["proxy"] is not None:
            self._proxy = Proxy(int(state["proxy"]["n_inputs"]), self.proxy_hidden, self.seed, self.proxy_lr)
            self._proxy.load(state["proxy"])
