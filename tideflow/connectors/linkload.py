"""Link-load streams on real backbone topologies, with failures that re-route traffic.

Simulates what a network operator's monitoring would record: the offered load
of each link every ``step_minutes`` for ``days``, when per-pair (origin ->
destination) traffic follows daily and weekly cycles, is routed over shortest
paths, and a link fails at ``failure_day`` so that its traffic is re-routed and
lands on other links. The load of one such link (the *target*) shifts
abruptly: that is the concept drift studied in

    "Liquid Neural Network-based Adaptive Learning vs. Incremental Learning for
    Link Load Prediction amid Concept Drift due to Network Failures",
    arXiv 2404.05304.

The paper used the Euro28 topology and a sum-of-sines generator whose
parameters follow the nodes' economic/population characteristics; its exact
generator, parameters and choice of the affected link are not known to us
(see ``/work/shared/specs/liquid.md``). Everything below is our
reconstruction, stated so that results can be read against it.

Modelling choices
-----------------
Topology
    ``topohub`` graphs (``"abilene"`` = ``sndlib/abilene``, ``"geant"`` =
    ``sndlib/geant``, or any ``"group/name"`` key such as ``"topozoo/Abilene"``),
    built with ``networkx.node_link_graph``. Physical links are undirected.
    With ``directed=True`` (default) each direction is its own link, as
    interface counters see it: id ``"u-v"`` is the load from node ``u`` to
    ``v``. With ``directed=False`` a link's load is the sum of both directions.
    Node ids are topohub's integer ids (``use_names=False``).
Base demands
    SNDlib graphs carry their published demand matrix (``graph["demands"]``,
    src -> dst -> volume, in SNDlib's units): used as is. Graphs without one
    (Topology Zoo) get a gravity model: ``d_ij ∝ w_i w_j`` (i != j) with node
    weight ``w_i = degree_i × lognormal(0, 0.5)`` drawn from the seed (a
    population-like spread), scaled so that all demands sum to
    ``gravity_total``. ``demands="auto" | "sndlib" | "gravity"`` picks.
Traffic over time (per OD pair p, t in days from 2024-01-01 00:00 UTC, a Monday)
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
      and step (mean-one lognormal, ``σ = noise``, default 0.1). The noise of
      step ``s`` comes from ``numpy.random.default_rng([seed, 1, s])``, so any
      step is generated on its own: ``seek`` is exact and costs nothing.

    All profile parameters are drawn once per pair from ``default_rng([seed, 2])``.
Routing
    Destination-based shortest paths as a link-state IGP computes them:
    weights are the edge attribute ``dist`` (km in topohub; also ``length`` or
    ``distance``) when every edge has it (``routing="auto"``), else hop count
    (``routing="hops"``). ``ecmp=True`` splits traffic evenly over the equal-cost
    next hops at every node (per-hop ECMP, as routers do); ``ecmp=False``
    (default) takes the next hop with the lowest node index, a deterministic
    single path. Loads are offered loads: no congestion, loss or TCP reaction
    is modelled, so utilisation may exceed 1 after a failure.
Failures
    Events fail a physical link (both directions) or a node (its links, and
    its own demands) from ``day`` until ``repair_day`` (None: never repaired).
    At each step the traffic is routed over the graph minus what is failed at
    that step; routing is computed once per failure state and cached. Demands
    with no path left are not lost silently: the ``dropped_demand`` column
    holds the total unroutable demand of the step and ``metadata()`` lists the
    unroutable pairs of each state. A failed link has load 0 and ``failed=True``.
Scenarios and the target link
    The shift of a link is ``rho = (mean load after − mean load before) /
    mean load before``, computed from the noiseless demands routed over the
    network: before = steps ``[0, failure)``, after = steps from the failure
    to the next change (repair or end). For ``"drastic"`` / ``"moderate"`` a
    single link failure at ``failure_day`` (default ``0.75 × days``: day 18 of
    the default 24 days of 15-minute steps, the setting of our first
    reconstruction in ``liquid.md``, not known from the paper) is chosen
    jointly with the target: over every physical link whose failure keeps the
    graph connected
    (non-bridges) and every surviving link that receives re-routed traffic
    (its load at mean demand grows because of the new routing), the pair whose
    ``rho`` is closest to ``drastic_rho`` (0.8) or ``moderate_rho`` (0.2) wins;
    exact ties are broken by a seed-drawn order. ``"none"`` fails nothing and
    targets the busiest link (its ``rho`` then measures the drift of the
    profiles alone across ``failure_day``). ``failed_link=``, ``target=`` and
    ``failures=[...]`` override the choice.
Capacity
    From the topology's ``capacity`` edge attribute when every edge has one
    (topohub's graphs do not). Otherwise ``capacity_factor`` (1.5) × the
    link's peak noiseless load over the whole horizon in the intact network
    (links dimensioned for normal operation); a link that carries nothing
    then gets 1.5 × the median of the others' peaks.

Output rows
    ``link`` (id), ``timestamp`` (timestamp[s], UTC), ``step``, ``load`` (the
    target), ``capacity``, ``utilisation`` (= load / capacity), ``failed``,
    ``dropped_demand``; roles target="load", key="link", time="timestamp".
    ``links="target"`` (default) emits the target's row per step, ``"all"``
    every link's, or a list of link ids. Offsets number the rows in order
    (step-major), so ``seek`` maps an offset to (step, link) directly.

    ``utilisation`` is the target rescaled by a constant: a learner that takes
    every non-role column as a feature would see the answer. Bind features
    explicitly (``metadata()["leaky_columns"]`` names it).

Routing matrices are dense (links × OD pairs): meant for backbone-sized
graphs (up to about 100 nodes).

>>> src = LinkLoadSource("abilene", scenario="drastic", days=4, seed=0)
>>> m = src.metadata()
>>> m["target_link"], m["failed_link"], round(m["rho"], 2), m["failure_offset"]
('11-1', '2-8', 0.77, 288)
>>> b = next(iter(src))
>>> b.column_names  # doctest: +NORMALIZE_WHITESPACE
['offset', 'link', 'timestamp', 'step', 'load', 'capacity', 'utilisation', 'failed',
 'dropped_demand']
>>> src.num_rows, src.seek(300), next(iter(src)).first_offset
(384, None, 300)
"""

from __future__ import annotations

import functools
import heapq
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import RowIndexedSource, as_bool
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
"""Time of step 0 (a Monday)."""

SCENARIOS = ("drastic", "moderate", "none")
SHORT_NAMES = {"abilene": "sndlib/abilene", "geant": "sndlib/geant"}
TIMESTAMP = pa.timestamp("s", tz="UTC")

# seed-sequence tags: one independent random stream per purpose
_NOISE, _PROFILE, _GRAVITY, _TIEBREAK = 1, 2, 3, 4


# -- topology -----------------------------------------------------------------------------
def topology_key(topology: str) -> str:
    """The topohub key of a topology name (``abilene`` -> ``sndlib/abilene``)."""
    if "/" in topology:
        return topology
    return SHORT_NAMES.get(topology.lower(), f"sndlib/{topology.lower()}")


@functools.lru_cache(maxsize=32)
def _graph(key: str) -> Any:
    import networkx as nx
    import topohub

    try:
        data = topohub.get(key)
    except KeyError:
        raise ValueError(f"unknown topology {key!r}: give a topohub key such as 'sndlib/abilene' "
                         "or 'topozoo/Abilene'") from None
    graph = nx.node_link_graph(data, edges="edges")
    if graph.is_directed() or graph.is_multigraph():
        graph = nx.Graph(graph)
    return graph


class _Network:
    """A topology's links, weights and a router: plain arrays, no networkx after build."""

    def __init__(self, key: str, routing: str, ecmp: bool, directed: bool) -> None:
        import networkx as nx

        g = _graph(key)
        if g.number_of_nodes() < 2 or not nx.is_connected(g):
            raise ValueError(f"topology {key!r} must be a connected graph with at least 2 nodes")
        self.graph = g
        self.nodes = list(g.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.by_name = {str(n): i for i, n in enumerate(self.nodes)}
        self.edges = [(self.index[u], self.index[v]) for u, v in g.edges]
        attrs = [d for _, _, d in g.edges(data=True)]
        weight_attr = next((a for a in ("dist", "length", "distance")
                            if all(isinstance(d.get(a), (int, float)) for d in attrs)), None)
        if routing == "auto":
            routing = "dist" if weight_attr else "hops"
        if routing == "dist":
            if weight_attr is None:
                raise ValueError(f"topology {key!r} has no edge distances: use routing='hops'")
            w = np.array([float(d[weight_attr]) for d in attrs])
            self.weights = np.maximum(w, 1e-9 * max(float(w.max()), 1.0))
        elif routing == "hops":
            self.weights = np.ones(len(self.edges))
        else:
            raise ValueError(f"routing must be 'auto', 'dist' or 'hops', got {routing!r}")
        self.routing = routing
        self.ecmp = ecmp
        self.directed = directed
        has_capacity = all(isinstance(d.get("capacity"), (int, float)) for d in attrs)
        self.capacities = np.array([float(d["capacity"]) for d in attrs]) if has_capacity else None
        name = [str(n) for n in self.nodes]
        self.link_edge: list[int] = []
        self.link_ids: list[str] = []
        self.link_of: dict[tuple[int, int], int] = {}
        for e, (u, v) in enumerate(self.edges):
            if directed:
                for a, b in ((u, v), (v, u)):
                    self.link_of[(a, b)] = len(self.link_ids)
                    self.link_ids.append(f"{name[a]}-{name[b]}")
                    self.link_edge.append(e)
            else:
                self.link_of[(u, v)] = self.link_of[(v, u)] = len(self.link_ids)
                self.link_ids.append(f"{name[u]}-{name[v]}")
                self.link_edge.append(e)
        self.link_edge_arr = np.array(self.link_edge)
        self.edge_of = {(u, v): e for e, (u, v) in enumerate(self.edges)}
        self.edge_of.update({(v, u): e for e, (u, v) in enumerate(self.edges)})
        self.bridges = {self.edge_of[(self.index[u], self.index[v])] for u, v in nx.bridges(g)}

    # -- names ------------------------------------------------------------------------
    def node(self, name: Any) -> int:
        try:
            return self.by_name[str(name)]
        except KeyError:
            raise ValueError(f"unknown node {name!r}; nodes: {sorted(self.by_name)}") from None

    def _ends(self, link: Any) -> tuple[int, int]:
        if isinstance(link, str):
            parts = link.split("-")
            if len(parts) != 2:
                raise ValueError(f"a link id is 'u-v' (node ids), got {link!r}")
        elif isinstance(link, (tuple, list)) and len(link) == 2:
            parts = list(link)
        else:
            raise ValueError(f"a link is 'u-v' or (u, v), got {link!r}")
        return self.node(parts[0]), self.node(parts[1])

    def edge(self, link: Any) -> int:
        """Index of the physical link named ``link`` (either orientation)."""
        ends = self._ends(link)
        if ends not in self.edge_of:
            raise ValueError(f"no link {link!r} in the topology; links: {self.edge_ids()}")
        return self.edge_of[ends]

    def link(self, link: Any) -> int:
        """Index of the (directed, when ``directed``) link named ``link``."""
        ends = self._ends(link)
        if ends not in self.link_of:
            raise ValueError(f"no link {link!r} in the topology; links: {self.link_ids}")
        return self.link_of[ends]

    def edge_id(self, e: int) -> str:
        u, v = self.edges[e]
        return f"{self.nodes[u]}-{self.nodes[v]}"

    def edge_ids(self) -> list[str]:
        return [self.edge_id(e) for e in range(len(self.edges))]

    def failed_links(self, failed_nodes: frozenset[int],
                     failed_edges: frozenset[int]) -> np.ndarray:
        down = np.array([e in failed_edges or u in failed_nodes or v in failed_nodes
                         for e, (u, v) in enumerate(self.edges)], dtype=bool)
        return down[self.link_edge_arr]

    # -- routing ----------------------------------------------------------------------
    def route(self, src: np.ndarray, dst: np.ndarray, failed_nodes: frozenset[int] = frozenset(),
              failed_edges: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """Routing matrix ``R`` (links × pairs: share of pair p's traffic on link l) and the
        mask of pairs left without a path, on the graph minus the failed elements."""
        n = len(self.nodes)
        adj: list[list[tuple[int, float, int]]] = [[] for _ in range(n)]
        for e, (u, v) in enumerate(self.edges):
            if e in failed_edges or u in failed_nodes or v in failed_nodes:
                continue
            w = float(self.weights[e])
            adj[u].append((v, w, self.link_of[(u, v)]))
            adj[v].append((u, w, self.link_of[(v, u)]))
        for a in adj:
            a.sort()
        routing = np.zeros((len(self.link_ids), len(src)))
        routable = np.zeros(len(src), dtype=bool)
        for t in np.unique(dst):
            t = int(t)
            if t in failed_nodes:
                continue
            cols = np.flatnonzero(dst == t)
            dist = _dijkstra(adj, t)
            reach = [u for u in range(n) if math.isfinite(dist[u]) and u != t]
            # F[u, s]: share of source s's traffic (towards t) that passes through u; nodes
            # are handled farthest first, so all of u's inflow has arrived when u splits it
            flow = np.zeros((n, n))
            flow[reach, reach] = 1.0
            on_link = np.zeros((len(self.link_ids), n))
            for u in sorted(reach, key=lambda x: (-dist[x], x)):
                tol = 1e-9 * (1.0 + dist[u])
                hops = [(v, li) for v, w, li in adj[u] if abs(w + dist[v] - dist[u]) <= tol]
                if not self.ecmp:
                    hops = hops[:1]
                share = flow[u] / len(hops)
                for v, li in hops:
                    on_link[li] += share
                    flow[v] += share
            sources = src[cols]
            routing[:, cols] = on_link[:, sources]
            routable[cols] = np.isfinite(dist[sources]) & (sources != t)
        return routing, ~routable


def _dijkstra(adj: list[list[tuple[int, float, int]]], source: int) -> np.ndarray:
    dist = np.full(len(adj), np.inf)
    dist[source] = 0.0
    heap = [(0.0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v, w, _ in adj[u]:
            nd = d + w
            if nd < dist[v]:
                dist[v] = nd
                heapq.heappush(heap, (nd, v))
    return dist


# -- the source ---------------------------------------------------------------------------
class LinkLoadSource(RowIndexedSource):
    """Per-link load time series of a backbone under failures (see module docstring).

    Args:
        topology: ``"abilene"``, ``"geant"`` or a topohub key (``"topozoo/Geant2012"``).
        scenario: ``"drastic"``, ``"moderate"`` or ``"none"``.
        seed: seeds profiles, gravity weights, noise and tie-breaking.
        days: length of the stream in days.
        step_minutes: time between samples.
        failure_day: when the scenario's link fails (default ``0.75 × days``).
        repair_day: when it is repaired (None: never).
        failed_link: fail this link (``"u-v"``) instead of choosing one.
        target: the target link (``"u-v"``) instead of choosing one.
        failures: explicit events replacing the scenario's failure: dicts
            ``{"link": "u-v" | "node": id, "day": float, "repair_day": float | None}``
            or tuples ``(element, day[, repair_day])`` (element ``"u-v"``/``(u, v)``
            for a link, a node id otherwise).
        links: ``"target"``, ``"all"``, or link ids (a list, or one string joined by ``;``).
        batch_steps: time steps per batch.
        noise: sigma of the per-pair lognormal noise.
        growth: linear traffic growth per day.
        routing: ``"auto"`` (distance if the topology has it), ``"dist"`` or ``"hops"``.
        ecmp: split over equal-cost next hops.
        directed: one link per direction (else both directions summed).
        demands: ``"auto"``, ``"sndlib"`` or ``"gravity"``.
        gravity_total: sum of gravity-model demands.
        capacity_factor: capacity = factor × peak intact load (when the topology has none).
        drastic_rho, moderate_rho: the shifts the scenarios aim at.
    """

    leaky_columns = ("utilisation",)

    def __init__(self, topology: str = "abilene", *, scenario: str = "drastic", seed: int = 0,
                 days: float = 24, step_minutes: float = 15, failure_day: float | None = None,
                 repair_day: float | None = None, failed_link: str | None = None,
                 target: str | None = None, failures: Sequence[Any] | None = None,
                 links: str | Sequence[str] = "target", batch_steps: int = 1, noise: float = 0.1,
                 growth: float = 0.0, routing: str = "auto", ecmp: bool = False,
                 directed: bool = True, demands: str = "auto", gravity_total: float = 1e6,
                 capacity_factor: float = 1.5, drastic_rho: float = 0.8,
                 moderate_rho: float = 0.2) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
        if int(seed) < 0:
            raise ValueError("seed must be >= 0")
        if step_minutes <= 0 or days <= 0 or int(batch_steps) < 1 or noise < 0:
            raise ValueError("days and step_minutes must be > 0, batch_steps >= 1, noise >= 0")
        self.topology = str(topology)
        self.scenario = scenario
        self.seed = int(seed)
        self.days = days
        self.step_minutes = step_minutes
        self.steps_per_day = 1440.0 / float(step_minutes)
        self.num_steps = int(round(float(days) * self.steps_per_day))
        if self.num_steps < 2:
            raise ValueError("the stream needs at least 2 time steps")
        self.failure_day = float(0.75 * float(days) if failure_day is None else failure_day)
        self.repair_day = None if repair_day is None else float(repair_day)
        self.failed_link_arg = failed_link
        self.target_arg = target
        self.batch_steps = int(batch_steps)
        self.noise = float(noise)
        self.growth = float(growth)
        self.routing = routing
        self.ecmp = as_bool(ecmp)
        self.directed = as_bool(directed)
        self.demand_model = demands
        self.gravity_total = float(gravity_total)
        self.capacity_factor = float(capacity_factor)
        self.drastic_rho = float(drastic_rho)
        self.moderate_rho = float(moderate_rho)
        self.stream_id = f"linkload-{self.topology.replace('/', '-')}-{scenario}-s{self.seed}"

        self.net = _Network(topology_key(self.topology), routing, self.ecmp, self.directed)
        self._init_demands()
        self._noiseless_all = self._noiseless(np.arange(self.num_steps))
        self.failure_step = self._step_at(self.failure_day)
        self._failures_given = failures is not None
        self.failures: list[dict[str, Any]] | None = (
            [self._event(f) for f in failures] if failures is not None else None)
        self._intact = self.net.route(self.src, self.dst)
        self._init_capacity()
        self._choose(scenario)
        self._init_states()
        self._init_links(links)
        del self._noiseless_all
        self._arrow_schema = self.schema().arrow_schema()
        self._next = 0

    # -- construction ---------------------------------------------------------------
    def _init_demands(self) -> None:
        net = self.net
        raw = net.graph.graph.get("demands") or {}
        model = self.demand_model
        if model not in ("auto", "sndlib", "gravity"):
            raise ValueError(f"demands must be 'auto', 'sndlib' or 'gravity', got {model!r}")
        if model == "sndlib" and not raw:
            raise ValueError(f"topology {self.topology!r} has no demand matrix: "
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
            rng = np.random.default_rng([self.seed, _GRAVITY])
            degree = np.array([net.graph.degree(v) for v in net.nodes], dtype=float)
            weight = degree * rng.lognormal(0.0, 0.5, size=n)
            matrix = np.outer(weight, weight)
        np.fill_diagonal(matrix, 0.0)
        if model == "gravity":
            matrix *= self.gravity_total / matrix.sum()
        self.demand_source = model
        self.src, self.dst = (a.astype(np.int64) for a in np.nonzero(matrix > 0))
        self.base = matrix[self.src, self.dst]
        if not len(self.base):
            raise ValueError(f"topology {self.topology!r} has no positive demand")

        rng = np.random.default_rng([self.seed, _PROFILE])
        p = len(self.base)
        lon = np.array([float((net.graph.nodes[v].get("pos") or (0.0, 0.0))[0]) for v in net.nodes])
        local_hours = (lon[self.src] + lon[self.dst]) / 2.0 / 15.0
        self.a1 = rng.uniform(0.25, 0.45, p)
        self.a2 = rng.uniform(0.05, 0.15, p)
        peak_local = rng.normal(19.0, 1.5, p)
        self.phi1 = np.pi / 2 - 2 * np.pi * (peak_local - local_hours) / 24.0
        self.phi2 = rng.uniform(0.0, 2 * np.pi, p)
        self.b = rng.uniform(0.05, 0.15, p)
        self.psi = 1.5 * np.pi - 2 * np.pi * 5.5 / 7.0 + rng.normal(0.0, 0.2, p)

    def _noiseless(self, steps: np.ndarray) -> np.ndarray:
        """Noiseless demands, pairs × steps."""
        t = steps.astype(float)[None, :] / self.steps_per_day
        daily = (1.0 + self.a1[:, None] * np.sin(2 * np.pi * t + self.phi1[:, None])
                 + self.a2[:, None] * np.sin(4 * np.pi * t + self.phi2[:, None]))
        weekly = 1.0 + self.b[:, None] * np.sin(2 * np.pi * t / 7.0 + self.psi[:, None])
        return self.base[:, None] * daily * weekly * (1.0 + self.growth * t)

    def _demands(self, steps: np.ndarray) -> np.ndarray:
        d = self._noiseless(steps)
        if self.noise > 0:
            sigma = self.noise
            pairs = len(self.base)
            z = np.stack([np.random.default_rng([self.seed, _NOISE, int(s)]).standard_normal(pairs)
                          for s in steps], axis=1)
            d = d * np.exp(sigma * z - sigma * sigma / 2.0)
        return d

    def _step_at(self, day: float) -> int:
        # the first step at or after ``day`` (a tiny slack absorbs float error)
        return min(max(int(math.ceil(day * self.steps_per_day - 1e-9)), 0), self.num_steps)

    def _event(self, spec: Any) -> dict[str, Any]:
        if isinstance(spec, dict):
            if ("link" in spec) == ("node" in spec):
                raise ValueError(f"a failure names one 'link' or one 'node': {spec!r}")
            kind = "link" if "link" in spec else "node"
            element, day = spec[kind], spec.get("day", self.failure_day)
            repair = spec.get("repair_day")
        elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
            element, day = spec[0], spec[1]
            repair = spec[2] if len(spec) == 3 else None
            kind = "link" if (isinstance(element, (tuple, list)) or
                              (isinstance(element, str) and "-" in element)) else "node"
        else:
            raise ValueError(f"a failure is a dict or (element, day[, repair_day]), got {spec!r}")
        if kind == "link":
            name = self.net.edge_id(self.net.edge(element))
        else:
            name = str(self.net.nodes[self.net.node(element)])
        if repair is not None and float(repair) <= float(day):
            raise ValueError(f"repair_day must come after day in {spec!r}")
        return {kind: name, "day": float(day),
                "repair_day": None if repair is None else float(repair)}

    def _init_capacity(self) -> None:
        if self.net.capacities is not None:
            self.capacity = self.net.capacities[self.net.link_edge_arr]
            self.capacity_source = "topology"
            return
        peak = (self._intact[0] @ self._noiseless_all).max(axis=1)
        fallback = float(np.median(peak[peak > 0])) if (peak > 0).any() else 1.0
        self.capacity = self.capacity_factor * np.where(peak > 0, peak, fallback)
        self.capacity_source = f"{self.capacity_factor} x peak noiseless load, intact network"

    def _state(self, events: list[dict[str, Any]],
               step: int) -> tuple[frozenset[int], frozenset[int]]:
        nodes, edges = set(), set()
        for ev in events:
            if self._step_at(ev["day"]) <= step < (self.num_steps if ev["repair_day"] is None
                                                   else self._step_at(ev["repair_day"])):
                if "link" in ev:
                    edges.add(self.net.edge(ev["link"]))
                else:
                    nodes.add(self.net.node(ev["node"]))
        return frozenset(nodes), frozenset(edges)

    def _boundaries(self, events: list[dict[str, Any]]) -> list[int]:
        cuts = {0, self.num_steps}
        for ev in events:
            cuts.add(self._step_at(ev["day"]))
            if ev["repair_day"] is not None:
                cuts.add(self._step_at(ev["repair_day"]))
        return sorted(c for c in cuts if 0 <= c <= self.num_steps)

    def _shifts(self, routing_after: np.ndarray, down: np.ndarray, before: np.ndarray,
                after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every link's rho, and which links may be targets: up, loaded before, and
        receiving re-routed traffic (their load at the mean demand grows with the new routing)."""
        routing0 = self._intact[0]
        load0 = routing0 @ before
        per_load = np.where(load0 > 0, load0, np.inf)
        rho = routing_after @ after / per_load - 1.0
        moved = (routing_after - routing0) @ before / per_load
        return rho, (~down) & (load0 > 0) & (moved > 1e-9)

    def _goal(self) -> float | None:
        return {"drastic": self.drastic_rho, "moderate": self.moderate_rho}.get(self.scenario)

    def _mean_demands(self, start: int, split: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        noiseless = self._noiseless_all
        return noiseless[:, start:split].mean(axis=1), noiseless[:, split:end].mean(axis=1)

    def _choose(self, scenario: str) -> None:
        """Fix the failure events, the target link and rho (see module docstring)."""
        net = self.net
        goal = self._goal()
        target = None if self.target_arg is None else net.link(self.target_arg)
        # exact ties (symmetric topologies) are broken by a seeded order, not by index
        tiebreak = np.random.default_rng([self.seed, _TIEBREAK]).random(
            (len(net.edges), len(net.link_ids)))
        if self.failures is None and scenario != "none":
            end = self.num_steps if self.repair_day is None else self._step_at(self.repair_day)
            if not 0 < self.failure_step < self.num_steps:
                raise ValueError(f"failure_day={self.failure_day} leaves no step before or after "
                                 f"the failure in a {self.days}-day stream")
            if end <= self.failure_step:
                raise ValueError("repair_day must come after failure_day")
            before, after = self._mean_demands(0, self.failure_step, end)
            if self.failed_link_arg is not None:
                candidates = [net.edge(self.failed_link_arg)]
            else:  # failures that keep the graph connected
                candidates = [e for e in range(len(net.edges)) if e not in net.bridges]
            best: tuple[Any, ...] | None = None
            for e in candidates:
                failed = (frozenset(), frozenset([e]))
                rho, ok = self._shifts(net.route(self.src, self.dst, *failed)[0],
                                       net.failed_links(*failed), before, after)
                if target is not None:
                    ok &= np.arange(len(ok)) == target
                for li in np.flatnonzero(ok):
                    key = (round(abs(rho[li] - goal), 12), tiebreak[e, li], e, int(li))
                    best = key if best is None or key < best else best
            if best is None:
                raise ValueError("no link receives re-routed traffic for the failures considered: "
                                 "give failed_link= or target= explicitly")
            target = best[3]
            self.failures = [{"link": net.edge_id(best[2]), "day": self.failure_day,
                              "repair_day": self.repair_day}]

        events = self.failures or []
        split = self._step_at(min(ev["day"] for ev in events)) if events else self.failure_step
        self.split_step = split if events and split < self.num_steps else None
        self.rho: float | None = None
        self.rho_routing: float | None = None
        if not 0 < split < self.num_steps:
            if target is None:
                target = int(np.argmax(self._intact[0] @ self._noiseless_all.mean(axis=1)))
            self.target_index = int(target)
            return
        end = next(c for c in self._boundaries(events) if c > split)
        before, after = self._mean_demands(0, split, end)
        state = self._state(events, split)
        routing_after = net.route(self.src, self.dst, *state)[0] if events else self._intact[0]
        rho, ok = self._shifts(routing_after, net.failed_links(*state), before, after)
        if target is None and (scenario == "none" or not events):
            target = int(np.argmax(self._intact[0] @ self._noiseless_all.mean(axis=1)))
        elif target is None:
            if not ok.any():
                raise ValueError("no link receives re-routed traffic after the first failure: "
                                 "give target= explicitly")
            first = net.edge(events[0]["link"]) if "link" in events[0] else 0
            target = int(min(np.flatnonzero(ok),
                             key=lambda li: (round(abs(rho[li] - goal), 12), tiebreak[first, li])))
        self.target_index = int(target)
        load0 = float((self._intact[0] @ before)[target])
        if load0 > 0:
            self.rho = float(rho[target])
            self.rho_routing = float(((routing_after - self._intact[0]) @ before)[target]) / load0

    def _init_states(self) -> None:
        events = self.failures or []
        cuts = self._boundaries(events)
        self._state_of_step = np.zeros(self.num_steps, dtype=np.int64)
        keys: list[tuple[frozenset[int], frozenset[int]]] = []
        self._routing: list[np.ndarray] = []
        self._unroutable: list[np.ndarray] = []
        self._down: list[np.ndarray] = []
        self.states: list[dict[str, Any]] = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            key = self._state(events, a)
            if key not in keys:
                keys.append(key)
                routing, unroutable = (self._intact if key == (frozenset(), frozenset())
                                       else self.net.route(self.src, self.dst, *key))
                self._routing.append(routing)
                self._unroutable.append(unroutable)
                self._down.append(self.net.failed_links(*key))
            sid = keys.index(key)
            self._state_of_step[a:b] = sid
            self.states.append({
                "start_step": int(a), "end_step": int(b),
                "failed_links": sorted(self.net.edge_id(e) for e in key[1]),
                "failed_nodes": sorted(str(self.net.nodes[v]) for v in key[0]),
                "unroutable_pairs": [f"{self.net.nodes[self.src[p]]}-{self.net.nodes[self.dst[p]]}"
                                     for p in np.flatnonzero(self._unroutable[sid])],
            })

    def _init_links(self, links: str | Sequence[str]) -> None:
        if isinstance(links, str) and links in ("target", "all"):
            self.links_arg: str | list[str] = links
            everything = list(range(len(self.net.link_ids)))
            chosen = [self.target_index] if links == "target" else everything
        else:
            names = [s for s in links.split(";") if s] if isinstance(links, str) else list(links)
            chosen = [self.net.link(s) for s in names]
            self.links_arg = [self.net.link_ids[i] for i in chosen]
            if not chosen:
                raise ValueError("links must name at least one link")
        self._links = np.array(chosen, dtype=np.int64)
        self._link_names = np.array([self.net.link_ids[i] for i in chosen], dtype=object)

    # -- Source contract --------------------------------------------------------------
    @property
    def rows_per_step(self) -> int:
        return len(self._links)

    @property
    def num_rows(self) -> int:
        return self.num_steps * self.rows_per_step

    @property
    def target_link(self) -> str:
        return self.net.link_ids[self.target_index]

    @property
    def link_ids(self) -> list[str]:
        """Every link's id, in the order of ``links="all"`` rows."""
        return list(self.net.link_ids)

    @property
    def od_pairs(self) -> list[tuple[str, str]]:
        """The (origin, destination) node ids of the demands, in the order of ``demand``."""
        name = [str(v) for v in self.net.nodes]
        return [(name[s], name[d]) for s, d in zip(self.src, self.dst)]

    def demand(self, steps: Sequence[int] | np.ndarray, *, noise: bool = True) -> np.ndarray:
        """The traffic of every OD pair at ``steps`` (pairs × steps), as offered to routing."""
        steps = np.asarray(steps, dtype=np.int64)
        return self._demands(steps) if noise else self._noiseless(steps)

    def schema(self) -> Schema:
        return Schema({"link": "string", "timestamp": TIMESTAMP, "step": "int64", "load": "float64",
                       "capacity": "float64", "utilisation": "float64", "failed": "bool",
                       "dropped_demand": "float64"},
                      target="load", key="link", time="timestamp")

    def params(self) -> dict[str, Any]:
        # the scenario's chosen failure is not a constructor argument: only given ones are
        failures = [dict(f) for f in self.failures or []] if self._failures_given else None
        links = self.links_arg if isinstance(self.links_arg, str) else list(self.links_arg)
        return {"topology": self.topology, "scenario": self.scenario, "seed": self.seed,
                "days": self.days, "step_minutes": self.step_minutes,
                "failure_day": self.failure_day, "repair_day": self.repair_day,
                "failed_link": self.failed_link_arg, "target": self.target_arg,
                "failures": failures, "links": links,
                "batch_steps": self.batch_steps, "noise": self.noise, "growth": self.growth,
                "routing": self.routing, "ecmp": self.ecmp, "directed": self.directed,
                "demands": self.demand_model, "gravity_total": self.gravity_total,
                "capacity_factor": self.capacity_factor, "drastic_rho": self.drastic_rho,
                "moderate_rho": self.moderate_rho}

    def metadata(self) -> dict[str, Any]:
        failed = next(iter(self.failures or []), None)
        failure_time = None
        if failed is not None:
            failure_time = (START + timedelta(days=failed["day"])).isoformat()
        return {
            **super().metadata(), **self.params(),
            "paper": "arXiv 2404.05304",
            "topohub_key": topology_key(self.topology),
            "nodes": len(self.net.nodes), "physical_links": len(self.net.edges),
            "link_ids": list(self.net.link_ids),
            "demand_model": self.demand_source, "od_pairs": len(self.base),
            "total_base_demand": float(self.base.sum()),
            "routing_weight": self.net.routing,
            "capacity_source": self.capacity_source,
            "start": START.isoformat(), "num_steps": self.num_steps,
            "rows_per_step": self.rows_per_step, "num_rows": self.num_rows,
            "target_link": self.target_link,
            "target_capacity": float(self.capacity[self.target_index]),
            "failed_link": None if failed is None else failed.get("link"),
            "failed_node": None if failed is None else failed.get("node"),
            "failure_time": failure_time,
            "failure_step": self.split_step,
            "failure_offset": (None if self.split_step is None
                               else self.split_step * self.rows_per_step),
            "rho": self.rho, "rho_routing": self.rho_routing,
            "rho_goal": self._goal(),
            "failure_states": [dict(s) for s in self.states],
            "leaky_columns": list(self.leaky_columns),
        }

    def batches(self) -> Iterator[Batch]:
        k = self.rows_per_step
        while self._next < self.num_rows:
            first = (self._next // k) // self.batch_steps * self.batch_steps
            last = min(first + self.batch_steps, self.num_steps)
            batch = self.steps(first, last)
            skip = self._next - first * k
            self._next = last * k
            yield batch.slice(skip) if skip else batch

    def steps(self, first: int, last: int) -> Batch:
        """The rows of steps ``[first, last)`` (any range: each step is generated on its own)."""
        if not 0 <= first <= last <= self.num_steps:
            raise ValueError(f"steps must lie within [0, {self.num_steps}], got [{first}, {last})")
        steps = np.arange(first, last, dtype=np.int64)
        demand = self._demands(steps)
        states = self._state_of_step[steps]
        load = np.empty((len(steps), len(self._links)))
        dropped = np.empty(len(steps))
        down = np.empty((len(steps), len(self._links)), dtype=bool)
        for sid in np.unique(states):
            cols = np.flatnonzero(states == sid)
            load[cols] = (self._routing[sid][self._links] @ demand[:, cols]).T
            dropped[cols] = self._unroutable[sid] @ demand[:, cols]
            down[cols] = self._down[sid][self._links]
        k = len(self._links)
        capacity = np.tile(self.capacity[self._links], len(steps))
        flat = load.ravel()
        seconds = int(START.timestamp()) + np.round(steps * self.step_minutes * 60).astype(np.int64)
        cols = {
            OFFSET: pa.array(np.arange(first * k, last * k, dtype=np.int64)),
            "link": pa.array(np.tile(self._link_names, len(steps)).tolist(), type=pa.string()),
            "timestamp": pa.array(np.repeat(seconds, k), type=TIMESTAMP),
            "step": pa.array(np.repeat(steps, k)),
            "load": pa.array(flat),
            "capacity": pa.array(capacity),
            "utilisation": pa.array(flat / capacity),
            "failed": pa.array(down.ravel()),
            "dropped_demand": pa.array(np.repeat(dropped, k)),
        }
        data = pa.RecordBatch.from_pydict(cols, schema=self._arrow_schema)
        return Batch(data, self.stream_id)

