"""Out-of-distribution detection by hyperdimensional computing (HDC), and the `HDCDetector` step.

A batch's rows are mapped into a space of ``dim`` (thousands of) signs, compared with class
prototypes built by adding up the hypervectors of rows seen before, and a batch in which most rows
match no prototype well is reported as out of distribution (after HDFF, Wilson et al., WACV 2023,
the detector of the EAR learner, `tideflow.strategies.ear`; docs/methods/ear.md). The pieces, and
what each keeps:

* `HDCSpace`: ``h(x) = sign(R^T (x - mean) / scale)`` with ``R`` a ``(d, dim)`` Gaussian matrix
  drawn from the seed (never stored: the same seed gives the same matrix on every machine) and the
  mean and scale of the rows it was fitted on. Centring matters: features after a ReLU all lie in
  one orthant, and random hyperplanes through the origin would hardly separate them. A sign of 0
  counts as +1.
* `HDCMemory`: one prototype per class, ``P_c = sum of h(x_i)`` over the rows of class c (kept
  as integer sums, so adding rows in any grouping gives the same prototype), and the score
  ``s(x) = max_c cos(h(x), P_c)``. Its threshold is the ``quantile`` (5 % by default) of the
  scores of its own most recent rows (``window``), each scored leave-one-out (its own hypervector
  taken out of its class's prototype): a row always matches the prototype it is part of, and an
  in-sample threshold would call too little in distribution. Without labels, the prototypes are the
  clusters of a few rounds of spherical k-means on the calibration rows (seeded).
* `HDCDetector`: an `Operator` on any numeric or tensor column(s). The first ``calibration_rows``
  rows (whole batches) fit the space and the first memory; from then on a row is out of
  distribution when its score is below every memory's threshold, and a batch is when more than
  ``vote`` of its rows are: the step emits one `DriftEvent` (detector ``"HDC"``, value: the share
  of rows out of distribution) and starts a new memory from those rows, which takes part in the
  vote once it holds ``calibration_rows`` rows. A return to a domain it has a memory of is
  therefore not reported again, and a shift is reported once, not on every batch after it. A
  calibrated memory is never changed (a fixed reference, as a drift detector's is); batches pass
  through unchanged.

Rows it cannot score (a NaN or infinite value in a watched column) pass through like every row,
are left out of the vote and the memories, and are counted (``skipped`` in the snapshot, with a
warning the first time); rows without a label (when ``label`` is given) are scored but not added
to a memory (``unlabeled``).

All arithmetic on hypervectors is on integers held in float64 (exact, so the same rows give the
same scores in any order and on any BLAS).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(400, 5)) * [3, 3, 0.1, 0.1, 0.1]  # in distribution: the first two axes
>>> space = HDCSpace.fit(x, dim=512, seed=0)
>>> memory = HDCMemory(512)
>>> sector = (np.arctan2(x[:, 1], x[:, 0]) // (np.pi / 4)).astype(int)  # 8 classes by angle
>>> memory.add(space.encode(x), sector); memory.calibrate()
>>> other = space.encode(rng.normal(size=(50, 5)) * [0.1, 0.1, 3, 3, 3])  # the other three
>>> bool((memory.scores(other) < memory.threshold).mean() > 0.9)
True

Only directions count (the sign of a projection does not see a row's length): a shift that only
scales the centred rows is not seen.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.stream.events import DriftEvent
from tideflow.stream.operator import Operator, SideOutput

__all__ = ["DEFAULT_DIM", "HDCDetector", "HDCMemory", "HDCSpace", "auroc", "projection", "stored_array"]

#: hypervector size when none is given (the HDC literature uses thousands)
DEFAULT_DIM = 4096


def stored_array(value: Any, dtype: Any = None) -> np.ndarray:
    """A numpy copy of a stored array (a snapshot may hold it as a torch tensor)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.array(value, dtype=dtype)


@functools.lru_cache(maxsize=8)
def projection(seed: int, d: int, dim: int) -> np.ndarray:
    """The ``(d, dim)`` Gaussian matrix of seed ``seed`` (float32, read-only; cached)."""
    rng = np.random.default_rng([int(seed), 0x4844, int(d), int(dim)])
    r = rng.standard_normal((d, dim), dtype=np.float32)
    r.setflags(write=False)
    return r


class HDCSpace:
    """``h(x) = sign(R^T (x - mean) / scale)`` (module docstring)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, dim: int = DEFAULT_DIM, seed: int = 0) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        if self.mean.shape != self.scale.shape or self.mean.ndim != 1:
            raise ValueError(f"mean {self.mean.shape} and scale {self.scale.shape} must be equal 1-d shapes")
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)

    @classmethod
    def fit(cls, x: np.ndarray, dim: int = DEFAULT_DIM, seed: int = 0, *, standardize: bool = False,
            blocks: Sequence[int] | None = None) -> HDCSpace:
        """A space centred on the rows ``x`` ``(n, d)``.

        Scaling every value alike changes no sign, so by default only the centre matters.
        ``standardize``: each value is also divided by its standard deviation there (a value that
        never varies keeps scale 1); values that barely vary then weigh as much as the others.
        ``blocks``: the row is several layers' features side by side (their widths, summing to d),
        as HDFF fuses layers: each block (after ``standardize``) is divided by the square root of
        its total variance, so that every layer weighs alike in the projection whatever its width
        and its values' size (one projection of the scaled blocks is the sum of one per block).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or not len(x):
            raise ValueError(f"fit needs rows (n, d) with n >= 1, got shape {x.shape}")
        std = x.std(axis=0)
        scale = np.where(std > 1e-12, std, 1.0) if standardize else np.ones(x.shape[1])
        if blocks is not None:
            if sum(blocks) != x.shape[1] or min(blocks) < 1:
                raise ValueError(f"blocks {list(blocks)} do not split rows of {x.shape[1]} values")
            start = 0
            for width in blocks:
                part = slice(start, start + width)
                total = float(((std[part] / scale[part]) ** 2).sum())
                scale[part] *= np.sqrt(total) if total > 1e-24 else 1.0
                start += width
        return cls(x.mean(axis=0), scale, dim, seed)

    @property
    def d(self) -> int:
        return len(self.mean)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Hypervectors ``(n, dim)`` of +1/-1 (int8) of the rows ``x`` ``(n, d)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"rows of shape {x.shape[1:]}: this space takes vectors of {self.d} values")
        z = ((x - self.mean) / self.scale) @ projection(self.seed, self.d, self.dim)
        return np.where(z >= 0, 1, -1).astype(np.int8)

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "scale": self.scale.copy(), "dim": self.dim, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HDCSpace:
        return cls(stored_array(state["mean"]), stored_array(state["scale"]), int(state["dim"]), int(state["seed"]))


class HDCMemory:
    """Class prototypes by bundling and a leave-one-out calibrated threshold (module docstring).

    Args:
        dim: the hypervectors' size.
        window: how many of the most recent rows the threshold is calibrated on.
        quantile: the threshold is this quantile of the window's leave-one-out scores.
    """

    def __init__(self, dim: int, *, window: int = 1024, quantile: float = 0.05) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2 rows, got {window}")
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
        self.dim, self.window, self.quantile = int(dim), int(window), float(quantile)
        self.classes: list[int] = []
        self.sums = np.zeros((0, self.dim), dtype=np.float64)  # integer valued
        self.counts = np.zeros(0, dtype=np.int64)
        self.window_h = np.zeros((0, self.dim), dtype=np.int8)
        self.window_c = np.zeros(0, dtype=np.int64)  # index into classes
        self.threshold = float("nan")

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @property
    def calibrated(self) -> bool:
        return self.threshold == self.threshold

    def add(self, h: np.ndarray, labels: Sequence[Any] | np.ndarray) -> None:
        """Bundle hypervectors ``h`` into the prototypes of their ``labels`` (integers)."""
        labels = np.asarray(labels).astype(np.int64)
        if len(labels) != len(h):
            raise ValueError(f"{len(h)} hypervectors and {len(labels)} labels")
        if not len(h):
            return
        new = sorted(set(labels.tolist()) - set(self.classes))
        if new:
            self.classes = self.classes + [int(c) for c in new]
            self.sums = np.vstack([self.sums, np.zeros((len(new), self.dim))])
            self.counts = np.concatenate([self.counts, np.zeros(len(new), dtype=np.int64)])
        index = {c: i for i, c in enumerate(self.classes)}
        idx = np.array([index[int(c)] for c in labels.tolist()], dtype=np.int64)
        np.add.at(self.sums, idx, h.astype(np.float64))
        self.counts += np.bincount(idx, minlength=len(self.classes))
        self.window_h = np.vstack([self.window_h, h.astype(np.int8)])[-self.window:]
        self.window_c = np.concatenate([self.window_c, idx])[-self.window:]

    def similarities(self, h: np.ndarray) -> np.ndarray:
        """``cos(h(x), P_c)`` for every row and class, ``(n, classes)`` (0 for an empty prototype)."""
        dots = h.astype(np.float64) @ self.sums.T
        norms = np.sqrt((self.sums ** 2).sum(axis=1)) * np.sqrt(self.dim)
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)

    def scores(self, h: np.ndarray) -> np.ndarray:
        """``s(x) = max_c cos(h(x), P_c)`` per row (-1 when the memory is empty)."""
        if not len(self.classes):
            return np.full(len(h), -1.0)
        return self.similarities(h).max(axis=1)

    def loo_scores(self) -> np.ndarray:
        """The window rows' scores with each row's own hypervector taken out of its prototype."""
        h = self.window_h.astype(np.float64)
        if not len(h):
            return np.zeros(0)
        dots = h @ self.sums.T
        sq = (self.sums ** 2).sum(axis=1)
        rows = np.arange(len(h))
        own = self.window_c
        dots[rows, own] -= self.dim
        own_sq = sq[own] - 2.0 * (dots[rows, own] + self.dim) + self.dim
        norms = np.tile(sq, (len(h), 1))
        norms[rows, own] = np.maximum(own_sq, 0.0)
        norms = np.sqrt(norms) * np.sqrt(self.dim)
        cos = np.divide(dots, norms, out=np.full_like(dots, -np.inf), where=norms > 0)
        best = cos.max(axis=1)
        return np.where(np.isfinite(best), best, -1.0)  # a row alone in a memory of one class

    def calibrate(self) -> None:
        """Set the threshold from the window (see the class docstring)."""
        scores = self.loo_scores()
        self.threshold = float(np.quantile(scores, self.quantile)) if len(scores) else float("nan")

    def state(self) -> dict[str, Any]:
        return {"dim": self.dim, "window": self.window, "quantile": self.quantile, "classes": list(self.classes),
                "sums": self.sums.astype(np.int64), "counts": self.counts.copy(), "window_h": self.window_h.copy(),
                "window_c": self.window_c.copy(), "threshold": self.threshold}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HDCMemory:
        m = cls(int(state["dim"]), window=int(state["window"]), quantile=float(state["quantile"]))
        m.classes = [int(c) for c in state["classes"]]
        m.sums = stored_array(state["sums"], dtype=np.float64).reshape(len(m.classes), m.dim)
        m.counts = stored_array(state["counts"], dtype=np.int64)
        m.window_h = stored_array(state["window_h"], dtype=np.int8).reshape(-1, m.dim)
        m.window_c = stored_array(state["window_c"], dtype=np.int64)
        m.threshold = float(state["threshold"])
        return m


def cluster_labels(h: np.ndarray, k: int, seed: int, rounds: int = 10) -> np.ndarray:
    """Spherical k-means of hypervectors ``h`` into at most ``k`` clusters: a label per row.

    Seeds by k-means++ on cosine distance (a generator of ``seed``), then ``rounds`` rounds of
    assigning each row to the closest cluster sum and re-summing. Clusters that end empty vanish;
    labels are renumbered 0 .. clusters - 1.
    """
    n = len(h)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    hf = h.astype(np.float64)
    rng = np.random.default_rng([int(seed), 0x4B4D])
    centres = [int(rng.integers(n))]
    k = min(k, n)
    dist = 1.0 - (hf @ hf[centres[0]]) / h.shape[1]
    while len(centres) < k:
        p = np.maximum(dist, 0.0)
        if p.sum() <= 0:
            break
        centres.append(int(rng.choice(n, p=p / p.sum())))
        dist = np.minimum(dist, 1.0 - (hf @ hf[centres[-1]]) / h.shape[1])
    sums = hf[centres].copy()
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(rounds):
        norms = np.sqrt((sums ** 2).sum(axis=1))
        cos = np.divide(hf @ sums.T, norms, out=np.full((n, len(sums)), -np.inf), where=norms > 0)
        new = cos.argmax(axis=1)
        sums = np.zeros_like(sums)
        np.add.at(sums, new, hf)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling ``out`` rows from ``in`` rows by a score that is higher
    for out-of-distribution rows (ties count one half): the probability that a random out row
    scores above a random in row."""
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    if not len(a) or not len(b):
        raise ValueError("AUROC needs at least one in-distribution and one out-of-distribution score")
    both = np.concatenate([a, b])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


class HDCDetector(Operator):
    """Pipeline step: out-of-distribution batches by hyperdimensional computing (module docstring).

    ``.detect(tf.HDCDetector(on="image"))`` in any pipeline: every learn step gets the events in
    ``on_drift``; MLflow and the run's events record them like any detector's.

    Args:
        on: the column (a scalar or fixed-shape tensor column) or columns to watch; their values
            are concatenated and flattened per row.
        label: a column of integer labels: one prototype per label. None: prototypes are
            ``clusters`` clusters of the calibration rows.
        dim: the hypervectors' size.
        calibration_rows: rows (whole batches) that fit the space and each memory.
        quantile: a memory's threshold is this quantile of its rows' leave-one-out scores.
        vote: a batch is out of distribution when more than this share of its rows are.
        clusters: prototypes per memory without labels.
        standardize: the space also divides each value by its deviation in the first calibration
            rows (`HDCSpace.fit`): shifts away from those rows stand out more, but later domains
            look more alike to each other (docs/methods/ear.md).
        seed: the projection and the clustering.
        name: step name written into the events.
    """

    kind = "detect"

    def __init__(self, on: str | Sequence[str], *, label: str | None = None, dim: int = DEFAULT_DIM,
                 calibration_rows: int = 256, quantile: float = 0.05, vote: float = 0.25, clusters: int = 8,
                 standardize: bool = False, seed: int = 0, name: str | None = None) -> None:
        if calibration_rows < 2:
            raise ValueError(f"calibration_rows must be at least 2, got {calibration_rows}")
        if not 0.0 <= vote < 1.0:
            raise ValueError(f"vote must be in [0, 1), got {vote}")
        if clusters < 1:
            raise ValueError(f"clusters must be at least 1, got {clusters}")
        HDCMemory(max(2, int(dim)), quantile=quantile)  # checks quantile
        if int(dim) < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        self.on = on if isinstance(on, str) else list(on)
        self.label = label
        self.dim = int(dim)
        self.calibration_rows = int(calibration_rows)
        self.quantile = float(quantile)
        self.vote = float(vote)
        self.clusters = int(clusters)
        self.standardize = bool(standardize)
        self.seed = int(seed)
        self.name = name or f"hdc_{self.on if isinstance(self.on, str) else '_'.join(self.on)}"
        self._reset()

    def _reset(self) -> None:
        self._space: HDCSpace | None = None
        self._memories: list[HDCMemory] = []
        self._buffer_x: list[np.ndarray] = []  # rows before the space exists
        self._buffer_y: list[np.ndarray] = []
        self._filling: list[np.ndarray] = []  # hypervectors of a memory being filled (no labels)
        self._filling_y: list[np.ndarray] = []
        self._pending: list[DriftEvent] = []
        self.batches = 0
        self.scored = 0
        self.detections = 0
        self.skipped = 0
        self.unlabeled = 0

    @property
    def columns(self) -> list[str]:
        return [self.on] if isinstance(self.on, str) else list(self.on)

    @classmethod
    def _unit_test_params(cls) -> dict[str, Any]:
        return {"on": "x", "dim": 256, "calibration_rows": 64}

    def output_schema(self, schema: Any) -> Any:
        """The graph's check before anything runs: the watched columns (and the label) exist and
        hold numbers; the schema passes through."""
        import pyarrow as pa

        from tideflow.stream.batch import is_tensor_type

        for col in self.columns + ([self.label] if self.label else []):
            if col not in schema.fields:
                raise ValueError(f"HDCDetector {self.name!r} watches column {col!r}, which is not in the schema "
                                 f"({schema.names})")
        for col in self.columns:
            t = schema.fields[col].type
            if not (is_tensor_type(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise ValueError(f"HDCDetector {self.name!r}: column {col!r} is {t}, not numbers or a tensor")
        if self.label and not pa.types.is_integer(schema.fields[self.label].type):
            raise ValueError(f"HDCDetector {self.name!r}: label column {self.label!r} is "
                             f"{schema.fields[self.label].type}, not integers")
        return schema

    # -- rows ------------------------------------------------------------------------------
    def _rows(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Values ``(n, d)``, the scorable-row mask and the labels (None without a label column)."""
        x = batch.features(self.columns, dtype=np.float32)
        ok = np.isfinite(x).all(axis=1)
        if not ok.all():
            if self.skipped == 0:
                logging.getLogger("tideflow").warning(
                    "HDCDetector %r: rows with NaN or infinite values in %s are not scored (first at offset %d); "
                    "counted in its snapshot as 'skipped'", self.name, self.columns,
                    int(batch.offsets[~ok][0]))
            self.skipped += int((~ok).sum())
        y = None
        if self.label:
            col = batch.column(self.label)
            valid = ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            self.unlabeled += int((ok & ~valid).sum())
            y = np.where(valid, np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False)), -1).astype(np.int64)
        return x, ok, y

    def scores(self, batch: Batch) -> np.ndarray:
        """Each row's score against each calibrated memory, ``(n, memories)`` (NaN for rows that
        cannot be scored); no side effects. Empty before the first memory is calibrated."""
        x = batch.features(self.columns, dtype=np.float32)
        active = [m for m in self._memories if m.calibrated]
        out = np.full((len(x), len(active)), np.nan)
        if self._space is None or not active:
            return out
        ok = np.isfinite(x).all(axis=1)
        h = self._space.encode(x[ok])
        for k, m in enumerate(active):
            out[ok, k] = m.scores(h)
        return out

    def thresholds(self) -> list[float]:
        """Every calibrated memory's threshold, in the order of `scores`' columns."""
        return [m.threshold for m in self._memories if m.calibrated]

    def _memory_from(self, h: np.ndarray, y: np.ndarray | None) -> HDCMemory:
        memory = HDCMemory(self.dim, window=max(self.calibration_rows, 2), quantile=self.quantile)
        if y is None or not (y >= 0).any():
            memory.add(h, cluster_labels(h, self.clusters, self.seed + len(self._memories)))
        else:
            memory.add(h[y >= 0], y[y >= 0])
        memory.calibrate()
        return memory

    # -- the operator ----------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch | None:
        if not len(batch):
            return batch
        self.batches += 1
        x, ok, y = self._rows(batch)
        x, ys = x[ok], (y[ok] if y is not None else None)
        if not len(x):
            return batch
        if self._space is None:  # the first calibration: rows are kept until there are enough
            self._buffer_x.append(x)
            if ys is not None:
                self._buffer_y.append(ys)
            if sum(len(b) for b in self._buffer_x) >= self.calibration_rows:
                rows = np.concatenate(self._buffer_x)
                self._space = HDCSpace.fit(rows, self.dim, self.seed, standardize=self.standardize)
                labels = np.concatenate(self._buffer_y) if self._buffer_y else None
                self._memories.append(self._memory_from(self._space.encode(rows), labels))
                self._buffer_x, self._buffer_y = [], []
            return batch
        h = self._space.encode(x)
        if self._filling:  # a new memory takes the rows until it holds enough
            self._fill(h, ys)
            return batch
        self.scored += len(h)
        below = np.ones(len(h), dtype=bool)
        for m in self._memories:
            below &= m.scores(h) < m.threshold
        share = float(below.mean())
        if share > self.vote:
            self.detections += 1
            first = int(batch.offsets[ok][below][0])
            self._pending.append(DriftEvent(batch.stream_id, first, "HDC", ",".join(self.columns), self.name, share))
            self._fill(h[below], ys[below] if ys is not None else None)
        return batch

    def _fill(self, h: np.ndarray, y: np.ndarray | None) -> None:
        self._filling.append(h)
        if y is not None:
            self._filling_y.append(y)
        if sum(len(f) for f in self._filling) >= self.calibration_rows:
            labels = np.concatenate(self._filling_y) if self._filling_y else None
            self._memories.append(self._memory_from(np.concatenate(self._filling), labels))
            self._filling, self._filling_y = [], []

    def drain(self) -> SideOutput:
        out = SideOutput(drift_events=self._pending)
        self._pending = []
        return out

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        # rows kept aside are None rather than empty arrays: an empty array becomes empty bytes,
        # which a checkpoint that also holds torch tensors cannot read back (torch.load with
        # weights_only refuses how pickle writes b"")
        def stack(parts: list[np.ndarray], dtype: Any) -> np.ndarray | None:
            return np.concatenate(parts).astype(dtype) if parts else None

        return {
            "space": None if self._space is None else self._space.state(),
            "memories": [m.state() for m in self._memories],
            "buffer_x": stack(self._buffer_x, np.float32),
            "buffer_y": stack(self._buffer_y, np.int64),
            "filling": stack(self._filling, np.int8),
            "filling_y": stack(self._filling_y, np.int64),
            "batches": self.batches, "scored": self.scored, "detections": self.detections,
            "skipped": self.skipped, "unlabeled": self.unlabeled,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._reset()
        self._space = None if state["space"] is None else HDCSpace.from_state(state["space"])
        self._memories = [HDCMemory.from_state(m) for m in state["memories"]]
        def parts(key: str, dtype: Any) -> list[np.ndarray]:
            return [] if state[key] is None else [stored_array(state[key], dtype)]

        self._buffer_x, self._buffer_y = parts("buffer_x", np.float32), parts("buffer_y", np.int64)
        self._filling, self._filling_y = parts("filling", np.int8), parts("filling_y", np.int64)
        for key in ("batches", "scored", "detections", "skipped", "unlabeled"):
            setattr(self, key, int(state[key]))
