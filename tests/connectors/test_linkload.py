"""Link-load streams: real demands, conserving routing, failures that re-route, exact seek."""

from __future__ import annotations

from datetime import datetime, timezone

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest
import topohub

from tideflow.connectors.linkload import LinkLoadSource
from tideflow.connectors.synthetic import source_from_spec
from tideflow.stream.batch import Batch

SPD = 96  # 15-minute steps per day


def _all(src: LinkLoadSource) -> Batch:
    return Batch.concat(list(src))


def _by_link(batch: Batch, link: str) -> tuple[np.ndarray, np.ndarray]:
    rows = batch.filter(np.asarray(batch.numpy("link") == link))
    return rows.numpy("step"), rows.numpy("load")


@pytest.fixture(scope="module")
def drastic() -> LinkLoadSource:
    return LinkLoadSource("abilene", scenario="drastic", seed=0, noise=0.0, links="all",
                          batch_steps=SPD)


@pytest.fixture(scope="module")
def drastic_rows(drastic: LinkLoadSource) -> Batch:
    drastic.seek(0)
    return _all(drastic)


@pytest.mark.parametrize("topology, key, nodes, pairs", [
    ("abilene", "sndlib/abilene", 12, 132),
    ("geant", "sndlib/geant", 22, 462),
])
def test_sndlib_topologies_bring_their_demand_matrices(topology, key, nodes, pairs):
    src = LinkLoadSource(topology, scenario="none", days=1)
    meta = src.metadata()
    raw = topohub.get(key)["graph"]["demands"]
    published = sum(v for row in raw.values() for v in row.values())
    assert (meta["demand_model"], meta["nodes"], meta["od_pairs"]) == ("sndlib", nodes, pairs)
    assert meta["total_base_demand"] == pytest.approx(published)
    assert meta["routing_weight"] == "dist"
    assert len(src.link_ids) == 2 * meta["physical_links"]  # one link per direction


@pytest.mark.parametrize("ecmp", [False, True])
@pytest.mark.parametrize("directed", [True, False])
def test_hop_routing_conserves_traffic(ecmp, directed):
    src = LinkLoadSource("geant", scenario="none", days=1, routing="hops", ecmp=ecmp,
                         directed=directed, links="all", batch_steps=SPD)
    rows = _all(src)
    graph = nx.node_link_graph(topohub.get("sndlib/geant"), edges="edges")
    hops = np.array([nx.shortest_path_length(graph, int(s), int(d)) for s, d in src.od_pairs])
    demand = src.demand(np.arange(SPD))
    per_step = np.bincount(rows.numpy("step"), weights=rows.numpy("load"))
    np.testing.assert_allclose(per_step, hops @ demand, rtol=1e-10)
    assert not rows.numpy("dropped_demand").any()


def test_failure_reroutes_onto_the_target(drastic, drastic_rows):
    meta = drastic.metadata()
    f = meta["failure_step"]
    assert f == 18 * SPD and meta["failure_offset"] == f * len(drastic.link_ids)
    assert meta["failure_time"] == "2024-01-19T00:00:00+00:00"
    u, v = meta["failed_link"].split("-")
    for link in (f"{u}-{v}", f"{v}-{u}"):
        steps, load = _by_link(drastic_rows, link)
        assert (load[steps < f] > 0).all() and (load[steps >= f] == 0).all()
    failed = drastic_rows.numpy("failed")
    assert failed[drastic_rows.numpy("step") >= f].sum() == 2 * (drastic.num_steps - f)
    assert not failed[drastic_rows.numpy("step") < f].any()
    steps, load = _by_link(drastic_rows, meta["target_link"])
    ratio = load[steps >= f].mean() / load[steps < f].mean()
    assert ratio == pytest.approx(1 + meta["rho"], rel=1e-9)  # noiseless: rho is exact
    assert not drastic_rows.numpy("dropped_demand").any()  # non-bridge failure: nothing lost


def test_noisy_shift_matches_rho():
    src = LinkLoadSource("geant", scenario="drastic", seed=0, batch_steps=SPD)
    meta = src.metadata()
    rows = _all(src)
    load, steps = rows.numpy("load"), rows.numpy("step")
    ratio = load[steps >= meta["failure_step"]].mean() / load[steps < meta["failure_step"]].mean()
    assert ratio == pytest.approx(1 + meta["rho"], abs=0.03)


@pytest.mark.parametrize("topology", ["abilene", "geant"])
def test_drastic_shift_exceeds_moderate(topology):
    drastic = LinkLoadSource(topology, scenario="drastic", seed=0).metadata()
    moderate = LinkLoadSource(topology, scenario="moderate", seed=0).metadata()
    assert drastic["rho"] == pytest.approx(0.8, abs=0.05)
    assert moderate["rho"] == pytest.approx(0.2, abs=0.02)
    assert drastic["rho"] > moderate["rho"]
    for meta in (drastic, moderate):
        u, v = meta["failed_link"].split("-")
        assert meta["target_link"] not in {f"{u}-{v}", f"{v}-{u}"}
        assert meta["rho_routing"] > 0  # the target gets re-routed traffic
    # the only bridge of SNDlib Abilene (ATLAM5-ATLAng) would disconnect the graph
    assert LinkLoadSource("abilene", scenario="drastic", seed=0).metadata()["failed_link"] != "0-1"


def test_repair_restores_the_intact_loads():
    intact = _all(LinkLoadSource("abilene", scenario="none", days=3, links="all", batch_steps=SPD))
    src = LinkLoadSource("abilene", scenario="drastic", days=3, links="all", batch_steps=SPD,
                         failures=[{"link": "7-9", "day": 1, "repair_day": 2}])
    broken = _all(src)
    steps = broken.numpy("step")
    down = (steps >= SPD) & (steps < 2 * SPD)
    np.testing.assert_array_equal(broken.numpy("load")[~down], intact.numpy("load")[~down])
    assert not np.array_equal(broken.numpy("load")[down], intact.numpy("load")[down])
    assert broken.numpy("failed")[down].sum() == 2 * SPD and not broken.numpy("failed")[~down].any()
    states = src.metadata()["failure_states"]
    assert [(s["start_step"], s["end_step"], s["failed_links"]) for s in states] == [
        (0, SPD, []), (SPD, 2 * SPD, ["7-9"]), (2 * SPD, 3 * SPD, [])]


def test_unroutable_demand_is_counted_not_lost():
    # link 0-1 is a bridge: node 0 (ATLAM5) is cut off, its 22 demands are dropped
    src = LinkLoadSource("abilene", scenario="moderate", days=2, batch_steps=SPD,
                         failures=[("0-1", 1.0)], target="2-5")
    rows = _all(src)
    dropped, steps = rows.numpy("dropped_demand"), rows.numpy("step")
    assert not dropped[steps < SPD].any() and (dropped[steps >= SPD] > 0).all()
    cut = src.metadata()["failure_states"][1]["unroutable_pairs"]
    assert len(cut) == 22 and all("0" in pair.split("-") for pair in cut)
    demand = src.demand(steps[steps >= SPD])
    lost = np.array(["0" in pair for pair in src.od_pairs])
    np.testing.assert_allclose(dropped[steps >= SPD], demand[lost].sum(axis=0))


def test_node_failure_downs_its_links():
    src = LinkLoadSource("geant", scenario="none", days=1, links="all", batch_steps=SPD,
                         failures=[{"node": 2, "day": 0.5}])
    rows = _all(src)
    after = rows.filter(rows.numpy("step") >= SPD // 2)
    touching = np.array(["2" in link.split("-") for link in after.numpy("link")])
    assert (after.numpy("failed") == touching).all()
    assert not after.numpy("load")[touching].any()
    assert (after.numpy("dropped_demand") > 0).all()
    assert src.metadata()["failed_node"] == "2"


def test_same_seed_same_stream_other_seed_other_stream():
    a = _all(LinkLoadSource("abilene", scenario="moderate", seed=3, days=2, batch_steps=7))
    b = _all(LinkLoadSource("abilene", scenario="moderate", seed=3, days=2, batch_steps=7))
    c = _all(LinkLoadSource("abilene", scenario="moderate", seed=4, days=2, batch_steps=7))
    assert a.data.equals(b.data)
    assert not np.array_equal(a.numpy("load"), c.numpy("load"))


def test_params_rebuild_the_same_stream():
    src = LinkLoadSource("abilene", scenario="drastic", seed=2, days=3, links="all",
                         batch_steps=SPD)
    again = LinkLoadSource(**src.params())
    assert again.metadata() == src.metadata()
    assert _all(again).data.equals(_all(src).data)
    assert src.stream_id == "linkload-abilene-drastic-s2"


@pytest.mark.parametrize("links, batch_steps", [("target", 1), ("all", 7)])
def test_seek_gives_the_tail_of_a_full_iteration(links, batch_steps):
    src = LinkLoadSource("abilene", scenario="moderate", days=1, links=links,
                         batch_steps=batch_steps)
    full = _all(src)
    assert len(full) == src.num_rows and src.position == src.num_rows
    np.testing.assert_array_equal(full.offsets, np.arange(src.num_rows))
    for offset in (0, 1, 5, 31, 200, src.num_rows - 1):
        if offset >= src.num_rows:
            continue
        src.seek(offset)
        assert src.position == offset
        tail = _all(src)
        assert tail.first_offset == offset
        assert tail.data.equals(full.slice(offset).data)
    src.restore({"position": 17})
    assert next(iter(src)).first_offset == 17 and src.snapshot()["position"] > 17
    src.seek(src.num_rows + 10)
    assert list(src) == []


def test_all_links_one_row_per_link_per_step(drastic, drastic_rows):
    n_links = len(drastic.link_ids)
    assert len(drastic_rows) == drastic.num_rows == drastic.num_steps * n_links
    links = drastic_rows.numpy("link").reshape(drastic.num_steps, n_links)
    assert (links == np.array(drastic.link_ids)).all()
    steps = drastic_rows.numpy("step").reshape(drastic.num_steps, n_links)
    assert (steps == np.arange(drastic.num_steps)[:, None]).all()


def test_schema_and_roles():
    src = LinkLoadSource("abilene", scenario="moderate", days=1, batch_steps=4)
    schema = src.schema()
    assert (schema.target, schema.key, schema.time) == ("load", "link", "timestamp")
    batch = next(iter(src))
    assert batch.schema.equals(schema.arrow_schema())
    assert batch.schema.field("timestamp").type == pa.timestamp("s", tz="UTC")
    times = batch.column("timestamp").to_pylist()
    assert times[0] == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert (times[1] - times[0]).total_seconds() == 15 * 60
    assert (batch.numpy("link") == src.metadata()["target_link"]).all()
    expected = batch.numpy("load") / batch.numpy("capacity")
    np.testing.assert_allclose(batch.numpy("utilisation"), expected)
    assert "utilisation" in src.metadata()["leaky_columns"]
    assert batch.stream_id == src.stream_id


def test_daily_cycle_is_visible():
    src = LinkLoadSource("geant", scenario="none", seed=1, days=14, batch_steps=SPD)
    load = _all(src).numpy("load")
    x = load - load.mean()

    def autocorrelation(lag: int) -> float:
        return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))

    assert autocorrelation(SPD) > 0.5 > 0 > autocorrelation(SPD // 2)


def test_capacity_is_above_the_intact_peak(drastic, drastic_rows):
    steps = drastic_rows.numpy("step")
    before = drastic_rows.filter(steps < drastic.metadata()["failure_step"])
    assert (before.numpy("utilisation") <= 1 / 1.5 + 1e-9).all()
    assert drastic.metadata()["capacity_source"].startswith("1.5 x peak")


def test_source_from_spec_builds_a_link_load_stream():
    src = source_from_spec("linkload:topology=abilene,scenario=moderate,days=3")
    assert isinstance(src, LinkLoadSource)
    meta = src.metadata()
    assert meta["failure_step"] == int(0.75 * 3 * SPD) and meta["rho"] > 0
    assert src.num_rows == 3 * SPD
    spec = source_from_spec("linkload:topology=geant,scenario=none,days=1,links=all,ecmp=true")
    assert spec.ecmp is True and spec.num_rows == SPD * len(spec.link_ids)


def test_topology_zoo_graph_gets_gravity_demands():
    src = LinkLoadSource("topozoo/Abilene", scenario="drastic", seed=0, days=4, batch_steps=SPD)
    meta = src.metadata()
    n = meta["nodes"]
    assert meta["demand_model"] == "gravity" and meta["od_pairs"] == n * (n - 1)
    assert meta["total_base_demand"] == pytest.approx(1e6)
    assert meta["rho"] == pytest.approx(0.8, abs=0.1)
    assert len(_all(src)) == 4 * SPD
    assert src.stream_id == "linkload-topozoo-Abilene-drastic-s0"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="scenario"):
        LinkLoadSource("abilene", scenario="big")
    with pytest.raises(ValueError, match="no step"):
        LinkLoadSource("abilene", scenario="drastic", days=2, failure_day=5)
    with pytest.raises(ValueError, match="no link"):
        LinkLoadSource("abilene", scenario="drastic", failed_link="0-11")
    with pytest.raises(ValueError, match="unknown topology"):
        LinkLoadSource("sndlib/nowhere")
    with pytest.raises(ValueError, match="no demand matrix"):
        LinkLoadSource("topozoo/Abilene", demands="sndlib")


def test_failures_from_a_string_with_node_names():
    # one string, as a source spec or `--set failures=...` carries it: names and ids alike
    text = "link:LOSAng-SNVAng@2; node:ATLAng@2.5-3"
    by_name = LinkLoadSource("abilene", scenario="moderate", days=4, links="all",
                             batch_steps=SPD, failures=text)
    by_id = LinkLoadSource("abilene", scenario="moderate", days=4, links="all", batch_steps=SPD,
                           failures=[{"link": "7-9", "day": 2},
                                     {"node": 1, "day": 2.5, "repair_day": 3}])
    spec = source_from_spec("linkload:topology=abilene,scenario=moderate,days=4,links=all,"
                            f"batch_steps={SPD},failures={text}")
    meta = by_name.metadata()
    assert [(s["start_step"], s["failed_links"], s["failed_nodes"])
            for s in meta["failure_states"]] == [
        (0, [], []), (2 * SPD, ["7-9"], []), (2 * SPD + SPD // 2, ["7-9"], ["1"]),
        (3 * SPD, ["7-9"], [])]
    assert meta["failed"] == "link 7-9 (LOSAng-SNVAng) at day 2, node ATLAng from day 2.5 to 3"
    assert meta["failures_text"] == "link:7-9@2;node:1@2.5-3"
    rows = _all(by_name).data
    assert rows.equals(_all(by_id).data) and rows.equals(_all(spec).data)
    again = LinkLoadSource(**by_name.params())  # canonical events rebuild the same stream
    assert again.metadata() == meta


def test_a_wrong_failure_says_what_is_valid():
    with pytest.raises(ValueError, match=r"unknown node 'Atlanta'.*closest: ATLAng.*0 ATLAM5"):
        LinkLoadSource("abilene", days=4, failures="node:Atlanta@3")
    with pytest.raises(ValueError, match=r"no link 'LOSAng-NYCMng' \(7-8\).*links at 7 \(LOSAng\)"):
        LinkLoadSource("abilene", days=4, failures="link:LOSAng-NYCMng@3")
    with pytest.raises(ValueError, match=r"failed_node=49: unknown node 49.*11 WASHng"):
        LinkLoadSource("abilene", days=4, failed_node=49)
    with pytest.raises(TypeError, match="failed_node=.*a node is an id or a name"):
        LinkLoadSource("abilene", days=4, failed_node=[1])
    with pytest.raises(TypeError, match="failures is a string such as 'link:7-9@18"):
        LinkLoadSource("abilene", days=4, failures=49)
    with pytest.raises(ValueError, match="kind:element"):
        LinkLoadSource("abilene", days=4, failures="ATLAng@3")
    with pytest.raises(ValueError, match="after the 4-day stream ends"):
        LinkLoadSource("abilene", days=4, failures="node:ATLAng@18")
    with pytest.raises(ValueError, match="not failed_link= and failed_node="):
        LinkLoadSource("abilene", days=4, failed_link="7-9", failed_node="ATLAng")


@pytest.mark.parametrize("topology, failure, node", [
    ("polska", "node:Warsaw", "Warsaw"),                 # SNDlib
    ("topozoo/Belnet2009", "node:Louvain-la-Neuve", "Louvain-la-Neuve"),  # Topology Zoo, a '-'
])
def test_node_failure_by_name_on_other_topologies(topology, failure, node):
    src = LinkLoadSource(topology, scenario="drastic", days=4, links="all", batch_steps=SPD,
                         failures=f"{failure}@3")
    meta = src.metadata()
    failed = meta["failure_states"][1]["failed_nodes"]
    assert meta["failed"] == f"node {node}" and len(failed) == 1
    assert meta["failure_step"] == 3 * SPD and meta["rho"] > 0
    rows = _all(src)
    after = rows.filter(rows.numpy("step") >= 3 * SPD)
    touching = np.array([failed[0] in link.split("-") for link in after.numpy("link")])
    assert touching.any() and (after.numpy("failed") == touching).all()
    assert not after.numpy("load")[touching].any()
    # a node failure is also reachable as failed_node= (the scenario's day)
    same = LinkLoadSource(topology, scenario="drastic", days=4, failure_day=3, failed_node=node)
    assert same.metadata()["target_link"] == meta["target_link"]


def test_a_link_by_names_that_hold_a_dash():
    src = LinkLoadSource("topozoo/Belnet2009", scenario="moderate", days=4,
                         failures="link:Louvain-la-Neuve-Charleroi@3")
    meta = src.metadata()
    assert meta["failed_link"] == "0-1"
    assert meta["failed"] == "link 0-1 (Louvain-la-Neuve-Charleroi)"
