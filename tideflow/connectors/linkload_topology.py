"""Backbone topologies for the link-load simulator, and how traffic is routed over them.

Part of the link-load stream of `tideflow.connectors.linkload` (the setting of
arXiv 2404.05304, reconstructed in ``docs/methods/liquid.md``): this module
turns a topology into plain arrays once and computes, for any set of failed
links and nodes, which share of every origin-destination pair's traffic each
link carries. It knows nothing of time, demands or scenarios.

Topology
    ``topohub`` graphs (``"abilene"`` = ``sndlib/abilene``, ``"geant"`` =
    ``sndlib/geant``, or any ``"group/name"`` key such as ``"topozoo/Abilene"``),
    built with ``networkx.node_link_graph``. Physical links are undirected.
    With ``directed=True`` each direction is its own link, as interface
    counters see it: id ``"u-v"`` is the load from node ``u`` to ``v``. With
    ``directed=False`` a link's load is the sum of both directions. Node ids
    are topohub's ids (``use_names=False``); link ids are always made of them.
Node names
    Wherever a node is named (failures, links, the target), its id or its
    label (topohub's ``name`` attribute: ``"ATLAng"``, ``"Warsaw"``, ``"New
    York"``) is accepted: an id first, then the exact label, then the label
    ignoring case. A label several nodes share (some Topology Zoo graphs have
    two "London") is refused with their ids, and an unknown one is refused with
    the closest labels, so a reference never lands on a node silently guessed.
    A link written ``"u-v"`` may use labels that hold a ``-``
    (``"Louvain-la-Neuve-Brussels"``): every split at a ``-`` is tried, and
    exactly one must name two nodes.
Routing
    Destination-based shortest paths as a link-state IGP computes them:
    weights are the edge attribute ``dist`` (km in topohub; also ``length`` or
    ``distance``) when every edge has it (``routing="auto"``), else hop count
    (``routing="hops"``). ``ecmp=True`` splits traffic evenly over the
    equal-cost next hops at every node (per-hop ECMP, as routers do);
    ``ecmp=False`` takes the next hop with the lowest node index, a
    deterministic single path. A routing matrix is dense (links × OD pairs),
    which suits backbone-sized graphs (up to about 100 nodes).

topohub and networkx are imported when a topology is first built, not when
this module is imported.
"""

from __future__ import annotations

import difflib
import functools
import heapq
import math
from typing import Any

import numpy as np

SHORT_NAMES = {"abilene": "sndlib/abilene", "geant": "sndlib/geant"}


def topology_key(topology: str) -> str:
    """The topohub key of a topology name (``abilene`` -> ``sndlib/abilene``)."""
    if "/" in topology:
        return topology
    return SHORT_NAMES.get(topology.lower(), f"sndlib/{topology.lower()}")


@functools.lru_cache(maxsize=32)
def _graph(key: str) -> Any:
    """The undirected simple graph of a topohub key. Cached and shared, so its users only
    read it (`Network` copies what it needs into arrays)."""
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


class Network:
    """A topology's links, weights and a router: plain arrays, no networkx after build."""

    def __init__(self, key: str, routing: str, ecmp: bool, directed: bool) -> None:
        import networkx as nx

        g = _graph(key)
        if g.number_of_nodes() < 2 or not nx.is_connected(g):
            raise ValueError(f"topology {key!r} must be a connected graph with at least 2 nodes")
        self.graph = g
        self.key = key
        self.nodes = list(g.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.by_name = {str(n): i for i, n in enumerate(self.nodes)}
        # labels as topohub gives them; a node without one is known by its id
        self.labels = [str(g.nodes[n].get("name") or n).strip() for n in self.nodes]
        self.by_label: dict[str, list[int]] = {}
        self.by_folded: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            self.by_label.setdefault(label, []).append(i)
            self.by_folded.setdefault(label.casefold(), []).append(i)
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
        """Index of the node named ``name``: its id, else its label (module docstring)."""
        if isinstance(name, bool) or not isinstance(name, (str, int, np.integer)):
            raise TypeError(f"a node is an id or a name (a string or an integer), "
                            f"got {type(name).__name__} {name!r}")
        text = str(name).strip()
        if text in self.by_name:
            return self.by_name[text]
        for table, key in ((self.by_label, text), (self.by_folded, text.casefold())):
            found = table.get(key)
            if found and len(found) == 1:
                return found[0]
            if found:
                raise ValueError(f"node name {name!r} is shared by nodes "
                                 f"{', '.join(str(self.nodes[i]) for i in found)} of {self.key}: "
                                 "give the id")
        raise ValueError(f"unknown node {name!r} in {self.key}; {self.suggest(text)}")

    def node_label(self, i: int) -> str:
        """How a node is shown to people: its label when no other node has it, else its id."""
        label = self.labels[i]
        return label if len(self.by_folded[label.casefold()]) == 1 else str(self.nodes[i])

    def suggest(self, text: str, limit: int = 12) -> str:
        """The closest node labels and ids to ``text``, and the first nodes (id name): what an
        error about an unknown node shows, short enough for one line on any graph size."""
        folded = {label.casefold(): label for label in self.labels}
        close = [folded[c] for c in difflib.get_close_matches(text.casefold(), list(folded), n=3,
                                                               cutoff=0.5)]
        listed = [f"{n} {label}" if str(n) != label else label
                  for n, label in zip(self.nodes[:limit], self.labels)]
        more = f", ... ({len(self.nodes)} nodes)" if len(self.nodes) > limit else ""
        hint = f"closest: {', '.join(close)}; " if close else ""
        return f"{hint}nodes (id name): {', '.join(listed)}{more}"

    def _ends(self, link: Any) -> tuple[int, int]:
        if isinstance(link, str):
            cuts = [i for i, c in enumerate(link) if c == "-"]
            if not cuts:
                raise ValueError(f"a link is 'u-v' (node ids or names), got {link!r}")
            found: dict[tuple[int, int], None] = {}
            first_error: Exception | None = None
            for i in cuts:  # a name may hold '-': every split that names two nodes counts
                try:
                    found[(self.node(link[:i]), self.node(link[i + 1:]))] = None
                except ValueError as exc:
                    first_error = first_error or exc
            if len(found) == 1:
                return next(iter(found))
            if found:
                raise ValueError(f"link {link!r} can be read as "
                                 f"{' or '.join(self._pair(*ends) for ends in found)}: "
                                 "write it with node ids")
            if len(cuts) == 1:  # one way to read it: say which end is unknown
                raise first_error or ValueError(link)
            raise ValueError(f"link {link!r} does not name two nodes of {self.key} "
                             f"at any '-'; {self.suggest(link)}")
        if isinstance(link, (tuple, list)) and len(link) == 2:
            return self.node(link[0]), self.node(link[1])
        raise TypeError(f"a link is 'u-v' or (u, v), got {type(link).__name__} {link!r}")

    def _pair(self, u: int, v: int) -> str:
        return f"{self.nodes[u]}-{self.nodes[v]}"

    def _shown(self, link: Any, ends: tuple[int, int]) -> str:
        ids = self._pair(*ends)
        return repr(ids) if str(link) == ids else f"{link!r} ({ids})"

    def _neighbourhood(self, ends: tuple[int, int]) -> str:
        """The links at the ends of a link that does not exist: what the user may have meant."""
        parts = []
        for u in dict.fromkeys(ends):
            at = [self._pair(a, b) for (a, b) in sorted(self.link_of) if a == u]
            parts.append(f"links at {self.nodes[u]} ({self.labels[u]}): {', '.join(at) or 'none'}")
        return "; ".join(parts)

    def link_label(self, link: Any) -> str:
        """``"11-1 (WASHng-ATLAng)"``: a link's id with its nodes' labels (the id alone when the
        graph has no labels)."""
        u, v = self._ends(link)
        ids, names = self._pair(u, v), f"{self.node_label(u)}-{self.node_label(v)}"
        return ids if names == ids else f"{ids} ({names})"

    def edge(self, link: Any) -> int:
        """Index of the physical link named ``link`` (either orientation)."""
        ends = self._ends(link)
        if ends not in self.edge_of:
            raise ValueError(f"no link {self._shown(link, ends)} in {self.key}; "
                             f"{self._neighbourhood(ends)}")
        return self.edge_of[ends]

    def link(self, link: Any) -> int:
        """Index of the (directed, when ``directed``) link named ``link``."""
        ends = self._ends(link)
        if ends not in self.link_of:
            raise ValueError(f"no link {self._shown(link, ends)} in {self.key}; "
                             f"{self._neighbourhood(ends)}")
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
