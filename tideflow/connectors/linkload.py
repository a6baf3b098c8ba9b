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
(see ``docs/methods/liquid.md``). Everything below is our
reconstruction, stated so that results can be read against it.

Modelling choices
-----------------
This module is the stream (`LinkLoadSource`); the model behind it lives in
three modules, whose docstrings state each choice in full:

Topology and routing (`tideflow.connectors.linkload_topology`)
    ``topohub`` graphs (``"abilene"``, ``"geant"`` or any topohub key such as
    ``"topozoo/Abilene"``); with ``directed=True`` (default) each direction is
    its own link ``"u-v"``. Destination-based shortest paths by distance
    (``routing="auto"``) or hop count, single path (``ecmp=False``, default)
    or per-hop ECMP. Loads are offered loads: no congestion, loss or TCP
    reaction is modelled, so utilisation may exceed 1 after a failure.
Traffic (`tideflow.connectors.linkload_traffic`)
    SNDlib's published demand matrix, or a gravity model
    (``demands="auto" | "sndlib" | "gravity"``); per OD pair, daily and weekly
    sine profiles peaking in the local evening, a linear ``growth`` per day
    (default 0) and mean-one lognormal ``noise`` (default 0.1). Time starts
    2024-01-01 00:00 UTC, a Monday (`START`). Each step's noise depends on the
    seed and that step alone, so ``seek`` is exact and costs nothing.
Failures and the target (`tideflow.connectors.linkload_failures`)
    Events fail a link or a node from ``day`` until ``repair_day``; traffic is
    re-routed in every failure state. The ``dropped_demand`` column holds the
    total unroutable demand of the step and ``metadata()["failure_states"]``
    lists the unroutable pairs of each state; a failed link has load 0 and
    ``failed=True``. For ``"drastic"`` / ``"moderate"`` one non-bridge link
    failure at ``failure_day`` (default ``0.75 × days``: day 18 of the default
    24 days of 15-minute steps, the setting of our first reconstruction in
    ``docs/methods/liquid.md``, not known from the paper) is chosen jointly
    with the target, so that the target's shift ``rho`` (mean load after /
    before − 1, noiseless) is closest to ``drastic_rho`` (0.8) or
    ``moderate_rho`` (0.2). ``"none"`` fails nothing and targets the busiest
    link. ``failed_link=`` / ``failed_node=`` (fail that element at
    ``failure_day``), ``target=`` and ``failures=`` override the choice; with
    ``failures=`` the scenario only chooses the target (the link whose shift
    is closest to its ``rho``; ``"none"``: the busiest link). Failures are
    written as one string, ``"link:7-9@18;node:ATLAng@18-20"`` (events joined
    by ``;``, each ``kind:element[@day[-repair_day]]``), with nodes named by
    id or by their topohub label, so they travel through a source spec
    (``linkload:topology=polska,failures=node:Warsaw@18``).
    ``metadata()["failed"]`` says what failed in words (``"node ATLAng"``).
Capacity
    From the topology's ``capacity`` edge attribute when every edge has one
    (topohub's graphs do not). Otherwise ``capacity_factor`` (1.5) × the
    link's peak noiseless load over the whole horizon in the intact network
    (links dimensioned for normal operation); a link that carries nothing
    then gets ``capacity_factor`` × the median of the others' peaks.

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

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import RowIndexedSource, as_bool
from tideflow.connectors.linkload_failures import (
    FailurePlan,
    failure_label,
    format_failures,
    parse_failures,
    step_at,
)
from tideflow.connectors.linkload_topology import (
    SHORT_NAMES,  # noqa: F401 (re-exported)
    Network,
    topology_key,
)
from tideflow.connectors.linkload_traffic import Traffic
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
"""Time of step 0 (a Monday)."""

SCENARIOS = ("drastic", "moderate", "none")
TIMESTAMP = pa.timestamp("s", tz="UTC")


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
        failed_link: fail this link (``"u-v"``) at ``failure_day`` instead of choosing one.
        failed_node: fail this node (an id or a name such as ``"ATLAng"``) at
            ``failure_day`` instead of choosing a link.
        target: the target link (``"u-v"``) instead of choosing one.
        failures: explicit events replacing the scenario's failure: a string
            ``"link:7-9@18;node:ATLAng@18-20"`` (events joined by ``;``, each
            ``kind:element[@day[-repair_day]]``, kind ``link`` or ``node``, days
            since the start, ``@day`` left out: ``failure_day``), or a list of such
            strings, dicts ``{"link": "u-v" | "node": id, "day": float,
            "repair_day": float | None}`` or tuples ``(element, day[, repair_day])``
            (element ``"u-v"``/``(u, v)`` for a link, a node otherwise). Nodes are
            named by id or by their topohub label, links by ``"u-v"`` of either;
            an unknown one is a ValueError that lists the valid names.
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
                 failed_node: str | int | None = None, target: str | None = None,
                 failures: str | Sequence[Any] | None = None,
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
        self.failed_node_arg = failed_node
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

        self.net = Network(topology_key(self.topology), routing, self.ecmp, self.directed)
        self.traffic = Traffic(self.net, demands, topology=self.topology, seed=self.seed,
                               gravity_total=self.gravity_total,
                               steps_per_day=self.steps_per_day, noise=self.noise,
                               growth=self.growth)
        # every step's noiseless demands: read to size links and choose the failure, not kept
        noiseless = self.traffic.noiseless(np.arange(self.num_steps))
        self._failures_given = failures is not None
        given = self._given_failures(scenario, failures, failed_link, failed_node)
        intact = self.net.route(self.traffic.src, self.traffic.dst)
        self._init_capacity(intact, noiseless)
        self.plan = FailurePlan(
            self.net, self.traffic, intact, noiseless, num_steps=self.num_steps,
            steps_per_day=self.steps_per_day, days=self.days, seed=self.seed, scenario=scenario,
            goal=self._goal(), failure_day=self.failure_day, repair_day=self.repair_day,
            failed_link=failed_link, target=target, failures=given)
        self._init_links(links)
        self._arrow_schema = self.schema().arrow_schema()
        self._next = 0

    # -- construction ---------------------------------------------------------------
    def _init_capacity(self, intact: tuple[np.ndarray, np.ndarray],
                       noiseless: np.ndarray) -> None:
        if self.net.capacities is not None:
            self.capacity = self.net.capacities[self.net.link_edge_arr]
            self.capacity_source = "topology"
            return
        peak = (intact[0] @ noiseless).max(axis=1)
        fallback = float(np.median(peak[peak > 0])) if (peak > 0).any() else 1.0
        self.capacity = self.capacity_factor * np.where(peak > 0, peak, fallback)
        self.capacity_source = f"{self.capacity_factor} x peak noiseless load, intact network"

    def _given_failures(self, scenario: str, failures: Any, failed_link: Any,
                        failed_node: Any) -> list[dict[str, Any]] | None:
        """The events the caller fixed (canonical), or None to let the scenario choose. Every
        way of fixing them excludes the others: two would leave one silently unused."""
        chosen = [name for name, v in (("failures", failures), ("failed_link", failed_link),
                                       ("failed_node", failed_node)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"give one of failures=, failed_link= or failed_node=, not "
                             f"{' and '.join(c + '=' for c in chosen)}")
        if failures is not None:
            return parse_failures(self.net, failures, self.failure_day)
        if scenario == "none" and chosen:
            raise ValueError(f"scenario='none' fails nothing, so {chosen[0]}= cannot apply: "
                             "give failures= to fail something with the busiest link as target")
        if failed_node is None:
            return None  # failed_link is a choice the scenario's search is restricted to
        try:
            node = str(self.net.nodes[self.net.node(failed_node)])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"failed_node={failed_node!r}: {exc}") from None
        step = step_at(self.failure_day, self.steps_per_day, self.num_steps)
        if not 0 < step < self.num_steps:
            raise ValueError(f"failure_day={self.failure_day} leaves no step before or after "
                             f"the failure in a {self.days}-day stream")
        if self.repair_day is not None and self.repair_day <= self.failure_day:
            raise ValueError("repair_day must come after failure_day")
        return [{"node": node, "day": self.failure_day, "repair_day": self.repair_day}]

    def _goal(self) -> float | None:
        return {"drastic": self.drastic_rho, "moderate": self.moderate_rho}.get(self.scenario)

    def _init_links(self, links: str | Sequence[str]) -> None:
        if isinstance(links, str) and links in ("target", "all"):
            self.links_arg: str | list[str] = links
            everything = list(range(len(self.net.link_ids)))
            chosen = [self.plan.target_index] if links == "target" else everything
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
        return self.net.link_ids[self.plan.target_index]

    @property
    def link_ids(self) -> list[str]:
        """Every link's id, in the order of ``links="all"`` rows."""
        return list(self.net.link_ids)

    @property
    def od_pairs(self) -> list[tuple[str, str]]:
        """The (origin, destination) node ids of the demands, in the order of ``demand``."""
        name = [str(v) for v in self.net.nodes]
        return [(name[s], name[d]) for s, d in zip(self.traffic.src, self.traffic.dst)]

    def demand(self, steps: Sequence[int] | np.ndarray, *, noise: bool = True) -> np.ndarray:
        """The traffic of every OD pair at ``steps`` (pairs × steps), as offered to routing."""
        steps = np.asarray(steps, dtype=np.int64)
        return self.traffic.sample(steps) if noise else self.traffic.noiseless(steps)

    def schema(self) -> Schema:
        return Schema({"link": "string", "timestamp": TIMESTAMP, "step": "int64", "load": "float64",
                       "capacity": "float64", "utilisation": "float64", "failed": "bool",
                       "dropped_demand": "float64"},
                      target="load", key="link", time="timestamp")

    def params(self) -> dict[str, Any]:
        # the scenario's chosen failure is not a constructor argument: only given ones are
        failures = [dict(f) for f in self.plan.failures or []] if self._failures_given else None
        links = self.links_arg if isinstance(self.links_arg, str) else list(self.links_arg)
        return {"topology": self.topology, "scenario": self.scenario, "seed": self.seed,
                "days": self.days, "step_minutes": self.step_minutes,
                "failure_day": self.failure_day, "repair_day": self.repair_day,
                "failed_link": self.failed_link_arg, "failed_node": self.failed_node_arg,
                "target": self.target_arg,
                "failures": failures, "links": links,
                "batch_steps": self.batch_steps, "noise": self.noise, "growth": self.growth,
                "routing": self.routing, "ecmp": self.ecmp, "directed": self.directed,
                "demands": self.demand_model, "gravity_total": self.gravity_total,
                "capacity_factor": self.capacity_factor, "drastic_rho": self.drastic_rho,
                "moderate_rho": self.moderate_rho}

    def metadata(self) -> dict[str, Any]:
        plan = self.plan
        failed = next(iter(plan.failures or []), None)
        failure_time = None
        if failed is not None:
            failure_time = (START + timedelta(days=failed["day"])).isoformat()
        return {
            **super().metadata(), **self.params(),
            "paper": "arXiv 2404.05304",
            "topohub_key": topology_key(self.topology),
            "nodes": len(self.net.nodes), "physical_links": len(self.net.edges),
            "link_ids": list(self.net.link_ids),
            "demand_model": self.traffic.model, "od_pairs": len(self.traffic.base),
            "total_base_demand": float(self.traffic.base.sum()),
            "routing_weight": self.net.routing,
            "capacity_source": self.capacity_source,
            "start": START.isoformat(), "num_steps": self.num_steps,
            "rows_per_step": self.rows_per_step, "num_rows": self.num_rows,
            "target_link": self.target_link,
            "target_capacity": float(self.capacity[plan.target_index]),
            "target_label": self.net.link_label(self.target_link),
            "failed_link": None if failed is None else failed.get("link"),
            "failed_node": None if failed is None else failed.get("node"),
            # what failed in words (every event), for titles and legends
            "failed": failure_label(self.net, plan.failures or []),
            "failures_text": format_failures(plan.failures or []) or None,
            "failure_time": failure_time,
            "failure_step": plan.split_step,
            "failure_offset": (None if plan.split_step is None
                               else plan.split_step * self.rows_per_step),
            "rho": plan.rho, "rho_routing": plan.rho_routing,
            "rho_goal": self._goal(),
            "failure_states": [dict(s) for s in plan.states],
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
        demand = self.traffic.sample(steps)
        plan = self.plan
        states = plan.state_of_step[steps]
        load = np.empty((len(steps), len(self._links)))
        dropped = np.empty(len(steps))
        down = np.empty((len(steps), len(self._links)), dtype=bool)
        for sid in np.unique(states):
            cols = np.flatnonzero(states == sid)
            load[cols] = (plan.routing[sid][self._links] @ demand[:, cols]).T
            dropped[cols] = plan.unroutable[sid] @ demand[:, cols]
            down[cols] = plan.down[sid][self._links]
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

