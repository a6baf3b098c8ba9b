"""Failures in the link-load simulator: events, the network state of every step, the target.

Part of the link-load stream of `tideflow.connectors.linkload`: the concept
drift of arXiv 2404.05304 is a link failure whose traffic is re-routed onto
other links. This module decides what fails and when, which link's load the
stream forecasts (the *target*), how much that load shifts, and how traffic is
routed in each failure state. Our reconstruction of the paper's scenarios is
described in ``docs/methods/liquid.md``.

Failures
    Events fail a physical link (both directions) or a node (its links, and
    its own demands) from ``day`` until ``repair_day`` (None: never repaired).
    They are written as one string, so that they travel through a source spec
    and the command line: ``"link:7-9@18;node:ATLAng@18-20"`` is link 7-9
    failing at day 18 for good and node ATLAng failing at day 18, repaired at
    day 20 (events joined by ``;``, each ``kind:element[@day[-repair_day]]``,
    days since the stream's start, ``@day`` left out: the source's
    ``failure_day``). Nodes are named by id or label, links ``"u-v"`` by ids or
    labels (`tideflow.connectors.linkload_topology`); an unknown element is an
    error listing the valid ones, and an event that starts after the stream
    ends is an error too (it would fail nothing).
    At each step the traffic is routed over the graph minus what is failed at
    that step; routing is computed once per failure state and cached. Demands
    with no path left are not lost silently: each state records its
    unroutable pairs, and the stream reports their demand per step.
Scenarios and the target link
    The shift of a link is ``rho = (mean load after − mean load before) /
    mean load before``, computed from the noiseless demands routed over the
    network: before = steps ``[0, failure)``, after = steps from the failure
    to the next change (repair or end). For ``"drastic"`` / ``"moderate"`` a
    single link failure at ``failure_day`` is chosen jointly with the target:
    over every physical link whose failure keeps the graph connected
    (non-bridges) and every surviving link that receives re-routed traffic
    (its load at mean demand grows because of the new routing), the pair whose
    ``rho`` is closest to the scenario's goal wins; exact ties are broken by a
    seed-drawn order. ``"none"`` fails nothing and targets the busiest link
    (its ``rho`` then measures the drift of the profiles alone across
    ``failure_day``). A given failed link, target or list of events overrides
    the choice.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tideflow.connectors.linkload_topology import Network
from tideflow.connectors.linkload_traffic import TIEBREAK, Traffic

State = tuple[frozenset[int], frozenset[int]]
"""A failure state: the failed node indices and the failed physical link indices."""


FAILURES_EXAMPLE = "'link:7-9@18;node:ATLAng@18-20'"
FAILURES_SYNTAX = (f"{FAILURES_EXAMPLE} (events joined by ';', each "
                   "kind:element[@day[-repair_day]], kind link or node)")


def parse_failures(net: Network, spec: Any, default_day: float) -> list[dict[str, Any]]:
    """Failure events in canonical form from a string (`FAILURES_SYNTAX`, module docstring) or a
    list of events (strings, dicts or tuples, as `parse_event` takes them)."""
    if isinstance(spec, str):
        events: list[Any] = [e.strip() for e in spec.replace("\n", ";").split(";") if e.strip()]
    elif isinstance(spec, (list, tuple)):
        events = list(spec)
    else:
        raise TypeError(f"failures is a string such as {FAILURES_SYNTAX}, or a list of events; "
                        f"got {type(spec).__name__} {spec!r}")
    return [parse_event(net, e, default_day) for e in events]


def _day(value: Any, spec: Any) -> float:
    try:
        day = float(value)
    except (TypeError, ValueError):
        day = float("nan")
    if isinstance(value, bool) or not math.isfinite(day) or day < 0:
        raise ValueError(f"days are numbers >= 0 (days since the stream's start), got {value!r} "
                         f"in failure {spec!r}")
    return day


def _parse_text(net: Network, text: str, default_day: float) -> tuple[str, Any, Any, Any]:
    kind, colon, rest = text.partition(":")
    kind = kind.strip().lower()
    if not colon or kind not in ("link", "node") or not rest.strip():
        raise ValueError(f"a failure is kind:element[@day[-repair_day]] with kind 'link' or "
                         f"'node', e.g. {FAILURES_EXAMPLE}; got {text!r}")
    element, at, when = rest.rpartition("@")
    if not at:
        return kind, rest.strip(), default_day, None
    days = when.split("-")
    if len(days) > 2 or not all(d.strip() for d in days):
        raise ValueError(f"a failure's time is @day or @day-repair_day (days since the stream's "
                         f"start, e.g. @18 or @18-20.5), got {'@' + when!r} in {text!r}")
    return kind, element.strip(), days[0].strip(), days[1].strip() if len(days) == 2 else None


def parse_event(net: Network, spec: Any, default_day: float) -> dict[str, Any]:
    """A failure event in canonical form, ``{"link" | "node": id, "day", "repair_day"}``,
    from a string ``"kind:element[@day[-repair_day]]"``, a dict or an ``(element, day[,
    repair_day])`` tuple. Elements are named by ids or node names (`Network.node`); what is
    wrong raises a ValueError that says so (an unknown node lists the valid ones)."""
    if isinstance(spec, str):
        kind, element, day, repair = _parse_text(net, spec, default_day)
    elif isinstance(spec, dict):
        if ("link" in spec) == ("node" in spec):
            raise ValueError(f"a failure names one 'link' or one 'node': {spec!r}")
        unknown = set(spec) - {"link", "node", "day", "repair_day"}
        if unknown:
            raise ValueError(f"a failure's keys are link or node, day, repair_day; "
                             f"got {sorted(unknown)} in {spec!r}")
        kind = "link" if "link" in spec else "node"
        element, day = spec[kind], spec.get("day", default_day)
        repair = spec.get("repair_day")
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        element, day = spec[0], spec[1]
        repair = spec[2] if len(spec) == 3 else None
        kind = "link" if (isinstance(element, (tuple, list)) or
                          (isinstance(element, str) and "-" in element)) else "node"
    else:
        raise TypeError(f"a failure is a string such as 'node:ATLAng@18', a dict or "
                        f"(element, day[, repair_day]); got {type(spec).__name__} {spec!r}")
    try:
        name = (net.edge_id(net.edge(element)) if kind == "link"
                else str(net.nodes[net.node(element)]))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"failure {spec!r}: {exc}") from None
    day = _day(day, spec)
    repair = None if repair is None else _day(repair, spec)
    if repair is not None and repair <= day:
        raise ValueError(f"repair_day must come after day in {spec!r}")
    return {kind: name, "day": day, "repair_day": repair}


def _number(x: float) -> str:
    return f"{x:g}"


def format_failures(events: list[dict[str, Any]]) -> str:
    """The events as one string `parse_failures` reads back (ids, not names: unambiguous)."""
    out = []
    for ev in events:
        kind = "link" if "link" in ev else "node"
        when = _number(ev["day"]) + ("" if ev["repair_day"] is None
                                     else f"-{_number(ev['repair_day'])}")
        out.append(f"{kind}:{ev[kind]}@{when}")
    return ";".join(out)


def failure_label(net: Network, events: list[dict[str, Any]]) -> str | None:
    """What failed, for people: ``"link 7-9 (LOSAng-SNVAng)"``, ``"node ATLAng"``; several
    events are joined by ``", "``, each with its days when they differ or a repair ends one
    (``"link 7-9 (LOSAng-SNVAng) at day 18, node ATLAng from day 19 to 20"``). None when
    nothing fails."""
    if not events:
        return None
    timed = len({ev["day"] for ev in events}) > 1 or any(ev["repair_day"] is not None
                                                         for ev in events)
    parts = []
    for ev in events:
        if "link" in ev:
            text = f"link {net.link_label(ev['link'])}"
        else:
            text = f"node {net.node_label(net.node(ev['node']))}"
        if timed:
            text += (f" at day {_number(ev['day'])}" if ev["repair_day"] is None
                     else f" from day {_number(ev['day'])} to {_number(ev['repair_day'])}")
        parts.append(text)
    return ", ".join(parts)


def step_at(day: float, steps_per_day: float, num_steps: int) -> int:
    """The first step at or after ``day``, within ``[0, num_steps]``."""
    # a tiny slack absorbs float error, so a day that falls on a step maps to that step
    return min(max(int(math.ceil(day * steps_per_day - 1e-9)), 0), num_steps)


class FailurePlan:
    """What fails when, the target link and its shift, and the routing of every step.

    Args:
        net, traffic: the topology and its OD pairs.
        intact: ``net.route`` of the pairs on the intact network.
        noiseless: the noiseless demands of every step (pairs × steps); read
            while the plan is built, not kept.
        failures: canonical events (`parse_event`), or None to let the
            scenario choose one link failure at ``failure_day``.
        goal: the ``rho`` the scenario aims at (None for ``"none"``).
        failed_link, target: fix the scenario's failed link / the target.

    After construction: ``failures`` (the events, chosen or given),
    ``target_index``, ``split_step`` (first failure step, None without one),
    ``rho`` and ``rho_routing`` (None when undefined), ``states`` (plain-data
    description of each failure period) and, per step, ``state_of_step``
    indexing ``routing``, ``unroutable`` and ``down`` (failed links).
    """

    def __init__(self, net: Network, traffic: Traffic, intact: tuple[np.ndarray, np.ndarray],
                 noiseless: np.ndarray, *, num_steps: int, steps_per_day: float, days: float,
                 seed: int, scenario: str, goal: float | None, failure_day: float,
                 repair_day: float | None, failed_link: str | None, target: str | None,
                 failures: list[dict[str, Any]] | None) -> None:
        self.net = net
        self.src, self.dst = traffic.src, traffic.dst
        self.num_steps = num_steps
        self.steps_per_day = steps_per_day
        self.days = days
        self.seed = seed
        self.goal = goal
        self.failure_day = failure_day
        self.repair_day = repair_day
        self.failed_link_arg = failed_link
        self.target_arg = target
        self.failures = failures
        self.failure_step = self._step_at(failure_day)
        for ev in failures or []:
            # an event the stream never reaches fails nothing: a mistake, not a quiet no-op
            if self._step_at(ev["day"]) >= num_steps:
                raise ValueError(f"failure of {failure_label(net, [ev])} starts at day "
                                 f"{ev['day']:g}, after the {days:g}-day stream ends")
        self._intact = intact
        self._noiseless_all = noiseless
        self._choose(scenario)
        self._init_states()
        del self._noiseless_all

    def _step_at(self, day: float) -> int:
        return step_at(day, self.steps_per_day, self.num_steps)

    def _state(self, events: list[dict[str, Any]], step: int) -> State:
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

    def _mean_demands(self, start: int, split: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        noiseless = self._noiseless_all
        return noiseless[:, start:split].mean(axis=1), noiseless[:, split:end].mean(axis=1)

    def _choose(self, scenario: str) -> None:
        """Fix the failure events, the target link and rho (see module docstring)."""
        net = self.net
        goal = self.goal
        target = None if self.target_arg is None else net.link(self.target_arg)
        # exact ties (symmetric topologies) are broken by a seeded order, not by index
        tiebreak = np.random.default_rng([self.seed, TIEBREAK]).random(
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
        """One routing per distinct failure state (a state that recurs reuses its routing)."""
        events = self.failures or []
        cuts = self._boundaries(events)
        self.state_of_step = np.zeros(self.num_steps, dtype=np.int64)
        keys: list[State] = []
        self.routing: list[np.ndarray] = []
        self.unroutable: list[np.ndarray] = []
        self.down: list[np.ndarray] = []
        self.states: list[dict[str, Any]] = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            key = self._state(events, a)
            if key not in keys:
                keys.append(key)
                routing, unroutable = (self._intact if key == (frozenset(), frozenset())
                                       else self.net.route(self.src, self.dst, *key))
                self.routing.append(routing)
                self.unroutable.append(unroutable)
                self.down.append(self.net.failed_links(*key))
            sid = keys.index(key)
            self.state_of_step[a:b] = sid
            self.states.append({
                "start_step": int(a), "end_step": int(b),
                "failed_links": sorted(self.net.edge_id(e) for e in key[1]),
                "failed_nodes": sorted(str(self.net.nodes[v]) for v in key[0]),
                "unroutable_pairs": [f"{self.net.nodes[self.src[p]]}-{self.net.nodes[self.dst[p]]}"
                                     for p in np.flatnonzero(self.unroutable[sid])],
            })
