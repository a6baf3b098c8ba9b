"""Origin-destination traffic of the link-load simulator: base demands and their cycles.

Part of the link-load stream of `tideflow.connectors.linkload` (the setting of
arXiv 2404.05304, whose sum-of-sines generator we reconstruct in
``docs/methods/liquid.md``): the traffic every OD pair offers to routing at
each time step, before it meets links or failures.

Base demands
    SNDlib graphs carry their published demand matrix (``graph["demands"]``,
    src -> dst -> volume, in SNDlib's units): used as is. Graphs without one
    (Topology Zoo) get a gravity model: ``d_ij ∝ w_i w_j`` (i != j) with node
    weight ``w_i = degree_i × lognormal(0, 0.5)`` drawn from the seed (a
    population-like spread), scaled so that all demands sum to
    ``gravity_total``. ``demands="auto" | "sndlib" | "gravity"`` picks.
Traffic over time (per OD pair p, t in days from step 0, a Monday 00:00 UTC)
    ``d_p(t) = base_p × daily_p(t) × weekly_p(t) × (1 + growth·t) × noise_p(t)``

    * ``daily_p(t) = 1 + a1 sin(2πt + φ1) + a2 sin(4πt + φ2)`` with
      ``a1 ~ U(0.25, 0.45)``, ``a2 ~ U(0.05, 0.15)``, ``φ2 ~ U(0, 2π)``; ``φ1``
      puts the first harmonic's peak at a local hour drawn from ``N(19, 1.5)``
      (evening peak of Internet traffic), where local time is UTC shifted by
      the mean longitude of the two end nodes / 15 h (nodes' ``pos``; 0 if
      absent), so that US and European networks peak at their own evenings.
    * ``weekly_p(t) = 1 + b sin(2πt/7 + ψ)``, ``b ~ U(0.05, 0.15)``, ``ψ`` puts
      the trough on Saturday noon (jitter ``N(0, 0.2)`` rad): weekends are
      quieter.
    * ``growth`` is a linear trend per day (default 0: no trend).
    * ``noise_p(t) = exp(σ z − σ²/2)``, ``z ~ N(0, 1)`` independent per pair
      and step (mean-one lognormal, ``σ = noise``). The noise of step ``s``
      comes from ``numpy.random.default_rng([seed, NOISE, s])``, so any step is
      generated on its own: a source built on this can seek exactly, at no cost.

    All profile parameters are drawn once per pair from ``default_rng([seed, PROFILE])``.
"""

from __future__ import annotations

import numpy as np

from tideflow.connectors.linkload_topology import Network

# Seed-sequence tags of the link-load simulator, all defined here so that they stay
# distinct: each purpose draws from its own independent random stream, and changing
# how one purpose draws leaves the others' numbers as they were.
NOISE, PROFILE, GRAVITY, TIEBREAK = 1, 2, 3, 4


class Traffic:
    """The demands of every OD pair with positive base demand, at any time step.

    ``src`` / ``dst`` (node indices of `Network`) and ``base`` list the pairs;
    ``model`` says where the base demands came from (``"sndlib"`` or ``"gravity"``).
    """

    def __init__(self, net: Network, demands: str, *, topology: str, seed: int,
                 gravity_total: float, steps_per_day: float, noise: float,
                 growth: float) -> None:
        self.seed = seed
        self.steps_per_day = steps_per_day
        self.noise = noise
        self.growth = growth
        raw = net.graph.graph.get("demands") or {}
        model = demands
        if model not in ("auto", "sndlib", "gravity"):
            raise ValueError(f"demands must be 'auto', 'sndlib' or 'gravity', got {model!r}")
        if model == "sndlib" and not raw:
            raise ValueError(f"topology {topology!r} has no demand matrix: "
                             "use demands='gravity'")
        n = len(net.nodes)
        matrix = np.zeros((n, n))
        if model != "gravity" and raw:
            model = "sndlib"
            for s, row in raw.items():
                for d, volume in row.items():
                    matrix[net.node(s), net.node(d)] += float(volume)
        else:
            model = "gravity"
            rng = np.random.default_rng([seed, GRAVITY])
            degree = np.array([net.graph.degree(v) for v in net.nodes], dtype=float)
            weight = degree * rng.lognormal(0.0, 0.5, size=n)
            matrix = np.outer(weight, weight)
        np.fill_diagonal(matrix, 0.0)
        if model == "gravity":
            matrix *= gravity_total / matrix.sum()
        self.model = model
        self.src, self.dst = (a.astype(np.int64) for a in np.nonzero(matrix > 0))
        self.base = matrix[self.src, self.dst]
        if not len(self.base):
            raise ValueError(f"topology {topology!r} has no positive demand")

        rng = np.random.default_rng([seed, PROFILE])
        p = len(self.base)
        lon = np.array([float((net.graph.nodes[v].get("pos") or (0.0, 0.0))[0]) for v in net.nodes])
        local_hours = (lon[self.src] + lon[self.dst]) / 2.0 / 15.0
        # the draws' order is part of the stream: the same seed gives the same profiles
        self.a1 = rng.uniform(0.25, 0.45, p)
        self.a2 = rng.uniform(0.05, 0.15, p)
        peak_local = rng.normal(19.0, 1.5, p)
        self.phi1 = np.pi / 2 - 2 * np.pi * (peak_local - local_hours) / 24.0
        self.phi2 = rng.uniform(0.0, 2 * np.pi, p)
        self.b = rng.uniform(0.05, 0.15, p)
        self.psi = 1.5 * np.pi - 2 * np.pi * 5.5 / 7.0 + rng.normal(0.0, 0.2, p)

    def noiseless(self, steps: np.ndarray) -> np.ndarray:
        """Noiseless demands, pairs × steps."""
        t = steps.astype(float)[None, :] / self.steps_per_day
        daily = (1.0 + self.a1[:, None] * np.sin(2 * np.pi * t + self.phi1[:, None])
                 + self.a2[:, None] * np.sin(4 * np.pi * t + self.phi2[:, None]))
        weekly = 1.0 + self.b[:, None] * np.sin(2 * np.pi * t / 7.0 + self.psi[:, None])
        return self.base[:, None] * daily * weekly * (1.0 + self.growth * t)

    def sample(self, steps: np.ndarray) -> np.ndarray:
        """Demands with noise, pairs × steps: each step's noise depends on that step alone."""
        d = self.noiseless(steps)
        if self.noise > 0:
            sigma = self.noise
            pairs = len(self.base)
            z = np.stack([np.random.default_rng([self.seed, NOISE, int(s)]).standard_normal(pairs)
                          for s in steps], axis=1)
            d = d * np.exp(sigma * z - sigma * sigma / 2.0)
        return d
