"""The numerical parts of Adapt-∞ data selection (`tideflow.strategies.adapt_inf`), as functions.

Each function works on plain arrays, so that every step of the selection can be tested on
its own. What each keeps:

* `water_fill`: a budget split into equal shares over groups; a group smaller than its
  share is taken whole and what it leaves is shared again among the others, so the total
  is exactly ``min(budget, sum(sizes))`` and no group gets more than it holds. The last
  units that cannot be split equally go to the groups with the most rows left (ties: the
  lower index), so the split is a function of the sizes alone.
* `histogram_entropy` / `choose_expert`: the entropy of a score histogram is measured on the
  **standardised** scale (z-scores binned over a fixed ``[-span, span]``), so that it says how
  spread out the scores are, not how large their unit is (the reference bins at multiples of
  the raw standard deviation after standardising: the spec's first pitfall). As in the
  reference, a score outside the binned range is not counted (it is not piled into the edge
  bins): the entropy describes the bulk of the cluster's scores, and a few far outliers cannot
  raise it. A constant score has entropy 0 and loses to any expert that tells rows apart.
* `coverage_sample`: coverage-centric sampling; the strata are equal-width intervals of the
  score between two percentiles, each stratum gets an equal quota (`water_fill`), rows are
  drawn at random within it. By default only the lowest 5 % are cut: the highest scores of a
  stream are its newest rows (a class seen for the first time), which the reference's upper
  cut would drop first.
* `dedup_scores` / `prune`: SemDeDup-style permanent pruning; a row's redundancy is its largest
  cosine similarity to any *earlier* row of its cluster (the first of a set of near-duplicates
  scores low and is kept, its later copies score high and go), each cluster keeps its
  `water_fill` share of the pool's size budget, computed blockwise so memory stays at
  ``block x cluster size``.
* `pseudo_skills`: seeded k-means (scikit-learn's MiniBatchKMeans) on the sample vectors with
  the number of clusters cut to the number of distinct vectors, so k-means is never asked for
  more clusters than it can fill; clusters it still leaves empty simply get no rows. Its
  minibatches hold `KMEANS_BATCH` rows, the reference's setting: a pool up to that size is
  clustered on all of its rows at every step (sklearn's default of 1024 would fit a few
  thousand rows from samples, a noisier clustering the spec does not ask for), and a larger
  pool still costs bounded memory per step.
* `rademacher`: the random projection of the sample vectors, generated in fixed row chunks
  from the seed, so that any width of gradient is projected with bounded memory and the same
  seed gives the same matrix in every process.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: the selector experts tideflow implements (the spec's list; "grounding" needs two modalities)
EXPERTS = ("loss", "el2n", "entropy", "grad_norm", "grounding")
#: rows of the projection matrix generated from one seed draw (memory bound of `rademacher`)
PROJECTION_CHUNK = 4096
#: rows per MiniBatchKMeans step (the reference's ``batch_size``; module docstring)
KMEANS_BATCH = 10240


def water_fill(sizes: Any, budget: int) -> np.ndarray:
    """How many rows to take from each group: equal shares of ``budget``, capped at each group's
    size, with the remainder redistributed (module docstring)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros_like(sizes)
    left = int(min(max(budget, 0), int(sizes.sum())))
    while left > 0:
        room = sizes - take
        open_ = np.flatnonzero(room > 0)
        share = left // len(open_)
        if share == 0:
            # fewer units than open groups: one each to the groups with the most room
            order = sorted(open_.tolist(), key=lambda i: (-int(room[i]), i))[:left]
            take[order] += 1
            break
        add = np.minimum(room[open_], share)
        take[open_] += add
        left -= int(add.sum())
    return take


def histogram_entropy(scores: np.ndarray, bins: int = 50, span: float = 4.0) -> float:
    """Shannon entropy (nats) of the histogram of the standardised scores over [-span, span]
    (scores outside that range are not counted)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return 0.0
    std = s.std()
    if not std > 0:
        return 0.0
    z = (s - s.mean()) / std  # np.histogram leaves out values outside the range (module docstring)
    hist = np.histogram(z, bins=bins, range=(-span, span))[0].astype(np.float64)
    if not hist.sum() > 0:
        return 0.0
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())


def choose_expert(scores: dict[str, np.ndarray], bins: int = 50) -> str:
    """The expert whose standardised score histogram has the highest entropy (ties: the first)."""
    best, best_h = None, -1.0
    for name, s in scores.items():
        h = histogram_entropy(s, bins)
        if h > best_h + 1e-12:
            best, best_h = name, h
    assert best is not None, "no expert to choose from"
    return best


def coverage_sample(scores: np.ndarray, k: int, rng: np.random.Generator, *, strata: int = 50,
                    trim: tuple[float, float] = (0.05, 0.0)) -> np.ndarray:
    """``k`` row indices drawn over equal-width score strata (module docstring); all rows when
    ``k`` covers them. ``trim``: the fractions cut at the low and the high end; if fewer rows
    than ``k`` remain, the cut rows fill the rest at random."""
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    lo = np.quantile(s, trim[0]) if trim[0] > 0 else s.min()
    hi = np.quantile(s, 1.0 - trim[1]) if trim[1] > 0 else s.max()
    inside = np.flatnonzero((s >= lo) & (s <= hi))
    if len(inside) < k:
        outside = np.setdiff1d(np.arange(n), inside)
        extra = rng.choice(outside, k - len(inside), replace=False)
        return np.sort(np.concatenate([inside, extra]))
    if not hi > lo:
        return np.sort(rng.choice(inside, k, replace=False))
    stratum = np.clip(((s[inside] - lo) / (hi - lo) * strata).astype(np.int64), 0, strata - 1)
    quota = water_fill(np.bincount(stratum, minlength=strata), k)
    chosen = [rng.choice(inside[stratum == j], q, replace=False) for j, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen))


def dedup_scores(vectors: np.ndarray, block: int = 1024) -> np.ndarray:
    """Per row (in the given order): its largest cosine similarity to any earlier row; -inf
    for the first. ``vectors`` are L2-normalised rows."""
    n = len(vectors)
    out = np.full(n, -np.inf)
    v = np.asarray(vectors, dtype=np.float32)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = v[start:stop] @ v[:stop].T  # rows of this block against every row up to it
        rows = np.arange(start, stop)[:, None]
        sims[np.arange(stop)[None, :] >= rows] = -np.inf
        out[start:stop] = sims.max(axis=1)
    return out


def prune(vectors: np.ndarray, clusters: np.ndarray, size: int) -> np.ndarray:
    """Indices (ascending, i.e. arrival order) of the rows kept when a pool of these rows is cut
    to ``size``: each cluster keeps its `water_fill` share, its least redundant rows first
    (ties: the earlier row)."""
    n = len(vectors)
    if n <= size:
        return np.arange(n)
    ids = np.unique(clusters)
    members = [np.flatnonzero(clusters == c) for c in ids]
    shares = water_fill([len(m) for m in members], size)
    keep = []
    for m, share in zip(members, shares):
        if share == 0:
            continue
        redundancy = dedup_scores(vectors[m])
        order = np.lexsort((m, redundancy))  # lowest redundancy first, then arrival
        keep.append(m[order[:share]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def pseudo_skills(vectors: np.ndarray, k: int, seed: int,
                  init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (0 .. k'-1) and centroids of k-means on ``vectors`` (module docstring).

    ``init``: centroids to start from, used when their number and width fit (AdaptInfinity
    passes none: its vectors change with the model between points, see its docstring)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, vectors.shape[1]), dtype=np.float32)
    distinct = len(np.unique(np.round(vectors, 6), axis=0))
    k_eff = max(1, min(k, n, distinct))
    if k_eff == 1:
        return np.zeros(n, dtype=np.int64), vectors.mean(axis=0, keepdims=True).astype(np.float32)
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    warm = init is not None and init.shape == (k_eff, vectors.shape[1])
    km = MiniBatchKMeans(n_clusters=k_eff, random_state=seed, n_init=1 if warm else 3,
                         init=init if warm else "k-means++", batch_size=min(KMEANS_BATCH, n), max_iter=100)
    # one thread: the clusters (and so the selection) must not depend on the thread count
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer distinct clusters than n_clusters": handled as empty
        labels = km.fit_predict(np.asarray(vectors, dtype=np.float32))
    return labels.astype(np.int64), km.cluster_centers_.astype(np.float32)


def rademacher(seed: int, start: int, stop: int, k: int) -> np.ndarray:
    """Rows ``start .. stop-1`` of the ``(*, k)`` projection matrix of ``seed``: entries +-1/sqrt(k),
    each chunk of `PROJECTION_CHUNK` rows drawn from a generator seeded (seed, chunk)."""
    parts = []
    first, last = start // PROJECTION_CHUNK, (stop - 1) // PROJECTION_CHUNK
    for chunk in range(first, last + 1):
        rng = np.random.default_rng([seed, chunk])
        block = rng.integers(0, 2, size=(PROJECTION_CHUNK, k), dtype=np.int8)
        lo = max(start - chunk * PROJECTION_CHUNK, 0)
        hi = min(stop - chunk * PROJECTION_CHUNK, PROJECTION_CHUNK)
        parts.append(block[lo:hi])
    signs = np.concatenate(parts).astype(np.float32) * 2.0 - 1.0
    return signs / np.sqrt(k, dtype=np.float32)


def normalise_rows(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def expert_scores(probs: np.ndarray, y: np.ndarray, grad_norm: np.ndarray,
                  ablated_probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-row scores of the experts from the scoring model's class probabilities ``probs``
    (rows x classes), class indices ``y`` and gradient norms: loss (cross-entropy), EL2N
    (``||p - onehot(y)||``), predictive entropy, the gradient norm, and (with the probabilities
    of the input-ablated rows) grounding = CE(ablated) - CE(input)."""
    eps = 1e-12
    rows = np.arange(len(y))
    p_true = probs[rows, y]
    loss = -np.log(np.maximum(p_true, eps))
    onehot = np.zeros_like(probs)
    onehot[rows, y] = 1.0
    out = {
        "loss": loss,
        "el2n": np.linalg.norm(probs - onehot, axis=1),
        "entropy": -(probs * np.log(np.maximum(probs, eps))).sum(axis=1),
        "grad_norm": grad_norm,
    }
    if ablated_probs is not None:
        out["grounding"] = -np.log(np.maximum(ablated_probs[rows, y], eps)) - loss
    return out
