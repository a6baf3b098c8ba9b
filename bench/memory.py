"""Resident memory of a job on the Ray runner over a long replay: peak, and growth after warm-up.

What is measured, per pipeline (``--parts``, all three by default):

* ``linkload``: the default job (``load_pipeline("linkload")``, set ``default``: CfC
  liquid network, IL re-fit every 96, the CfC hybrid, persistence), one-row batches,
  cut at ``--max-batches`` (default 1800 of 2304). Its forecasters first fit at
  step 1344 (14 days; on 2 busy cores that first fit alone takes ~1.5 min), so the run
  goes on for ~450 batches after it, past the link failure (step 1728) and the
  hybrid's first re-fit on drift.
* ``nowcast``: ``load_pipeline("nowcast", model="gbm", target="temp", stations="JFK",
  hours=..., window=...)``, a short replay with a small window so that the GBM re-fits
  happen (``--nowcast-hours``, ``--nowcast-window``).
* ``river``: a synthetic ``friedman-drift`` stream (``--river-events`` rows in
  ``--river-batch`` row batches) -> validate -> DetectDrift(x0) ->
  River StandardScaler | LinearRegression with ADWIN on its error: many batches,
  a learner of bounded size, so its memory should be flat.

How:

* One local Ray is started first (``ensure_ray``, as the engine does, token
  authentication as Ray sets it) and kept for all parts; every part then runs
  ``pipeline.run(runner="ray", tracking=False, progress=False)``. Ray 2.60 rewrites
  the engine's ``_node_ip_address="127.0.0.1"`` to the machine's own IP (and its
  servers then listen on all interfaces) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``;
  this script sets that when it is unset, so Ray listens on 127.0.0.1 only. On a
  busy machine Ray's start can time out (its agents miss the raylet's fixed start-up
  window); the script then ends that attempt's processes and tries again (3 tries).
* Ray starts its worker processes at niceness 15: on a machine busy with other jobs
  they get almost no CPU and a long replay may not end. Memory does not depend on
  it, so this script starts Ray with ``RAY_worker_niceness`` = ``--worker-niceness``
  (default 0, like the driver) unless that variable is already set.
* A background thread samples every ``--interval`` s (default 0.5): the RSS of this
  driver process and of every Ray worker process (the raylet's child processes
  whose title is ``ray::...``, except Ray's own agents), the RSS of Ray's system
  processes (GCS, raylet, agents; reported apart, not in the totals), and the object
  store's bytes in use (``get_memory_info_reply``, else ``memory_summary``). Every
  ``--pss-every``-th sample also sums the PSS of driver + workers (``smaps_rollup``).
  Processes are found with psutil when it is installed, else from ``/proc``.
* **RSS** below is driver + workers, summed. A sum of RSS counts shared pages
  (libraries, object-store pages a worker has mapped) once per process, so it
  overstates what the job really occupies; it is the conservative number. **PSS**
  splits shared pages between the processes that share them: its sum is closer to
  the job's real footprint.
* Per batch, a ``BatchLog`` observer (``run(observers=[...])``) takes the batch's
  completion time in the driver and notes which learners fitted on it.
* **Warm-up** ends at the later of ``--warmup`` (default 20 %) of the batches and the
  batch after the last learner's first fit (strategies that fit once a window is
  full allocate then; that is not growth). ``RSS warm`` is the median over the
  samples in the few seconds after that batch, ``RSS end`` the median over the last
  few seconds of the run, ``growth`` = end / warm - 1. **flat** means growth <
  ``--flat-pct`` (default 5 %). ``slope`` is a least-squares fit of RSS over the
  post-warm-up samples, in MiB per minute.
* ``store peak`` is the largest object-store use seen during the run. After the run
  returns (its actors are killed) the script waits until the store is back to its
  level before the run and the run's worker processes are gone, at most ``--settle``
  s (default 10): ``store after`` is the use at the end of that wait and ``released
  s`` how long the store took to return to its level before the run ("-" = not within
  ``--settle``).
* ``< 4 GB`` checks the default job's peak RSS against 4 GB (4e9 bytes = 3815 MiB).

How to read it: RSS numbers depend on what the strategies import (torch alone is
several hundred MiB per actor process); what matters is that a part is flat after
warm-up. The machine's load average is printed and stored: a busy machine makes the
runs slower, not bigger, but a slower run has fewer samples. There is no pass/fail.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/memory.py --parts river --river-events 100000

Results: the table, and ``--json`` (default ``bench/results/memory.json``) with the
summary and the downsampled time series of every part.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
# keep Ray on the loopback interface (see the docstring); must be set before ray is imported
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):
    if str(_p) not in sys.path:  # run as a file from anywhere, without installing
        sys.path.insert(0, str(_p))

import tideflow as tf  # noqa: E402
from tideflow.pipelines.metrics.base import BatchRecord, Observer  # noqa: E402

from _common import _loadavg, machine_info, retry_ray_start, write_json  # noqa: E402

MIB = 1024 * 1024
LIMIT_BYTES = 4_000_000_000  # "< 4 GB" for the default job
_STORE_SLACK = 64 * 1024  # object-store bytes counted as "back to where it was"
# Ray's own per-node processes that are children of the raylet but are not workers
_AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")

try:
    import psutil
except ImportError:  # pragma: no cover - /proc fallback below
    psutil = None


# -- processes ----------------------------------------------------------------------------

def _proc_rss(pid: int) -> int | None:
    """RSS in bytes, or None when the process is gone."""
    if psutil is not None:
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return 0  # a zombie has no VmRSS line


def _proc_pss(pid: int) -> int | None:
    """Proportional set size in bytes (shared pages split between the processes sharing them)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _proc_title(pid: int) -> str:
    """The first word of the command line (Ray workers set it to ``ray::<what>``)."""
    try:
        if psutil is not None:
            cmd = psutil.Process(pid).cmdline()
        else:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cmd = [c.decode(errors="replace") for c in cmd]
    except Exception:  # noqa: BLE001 - the process may just have exited
        return ""
    return (cmd[0].split() or [""])[0] if cmd else ""


def _descendants(pid: int) -> list[int]:
    if psutil is not None:
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return []
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            # the command may hold spaces and parentheses: the ppid follows the last ')'
            ppid = int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def ray_system_pids(ray: Any) -> dict[str, int]:
    """The Ray processes this driver started (raylet, GCS, ...), by type: pid."""
    node = getattr(ray._private.worker, "_global_node", None)
    out: dict[str, int] = {}
    if node is not None:
        for kind, infos in getattr(node, "all_processes", {}).items():
            for i, info in enumerate(infos):
                proc = getattr(info, "process", None)
                if proc is not None and getattr(proc, "pid", None):
                    out[kind if i == 0 else f"{kind}{i}"] = proc.pid
    if "raylet" not in out:
        # joined an existing local cluster: find its raylet by this node's socket name
        sock = getattr(getattr(ray._private.worker.global_worker, "node", None), "raylet_socket_name", None)
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = d.joinpath("cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "raylet" in cmd.split("\0")[0] and sock and sock in cmd:
                    out["raylet"] = int(d.name)
                    break
    return out


def object_store_bytes(ray: Any) -> int | None:
    """Bytes in use in the object store, summed over the cluster's nodes (None if unknown)."""
    from ray._private import internal_api

    try:
        gcs = ray.get_runtime_context().gcs_address
        reply = internal_api.get_memory_info_reply(internal_api.get_state_from_address(gcs))
        return int(reply.store_stats.object_store_bytes_used)
    except Exception:  # noqa: BLE001 - fall back to the text summary
        pass
    try:
        text = internal_api.memory_summary(stats_only=True)
        for line in text.splitlines():
            if line.startswith("Plasma memory usage"):
                return int(line.split()[3]) * MIB
    except Exception:  # noqa: BLE001
        return None
    return None


def start_ray(console: Any, attempts: int = 3) -> float:
    """``ensure_ray``, retried on a start-up time-out; returns the seconds of the attempt that worked."""
    import ray

    from tideflow.pipelines.runners.ray_session import ensure_ray

    def start() -> float:
        t = time.perf_counter()
        ensure_ray()
        return time.perf_counter() - t

    return retry_ray_start(start, console, "Ray", attempts, before_retry=ray.shutdown)


class Sampler(threading.Thread):
    """Samples driver + worker RSS, Ray system RSS and object-store use every ``interval`` s."""

    def __init__(self, ray: Any, interval: float, pss_every: int) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.ray = ray
        self.interval = interval
        self.pss_every = pss_every
        self.ticks = 0
        self.system = ray_system_pids(ray)
        self.raylet = self.system.get("raylet")
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.t0 = time.perf_counter()
        self.driver = os.getpid()

    def sample(self) -> dict[str, Any]:
        t = time.perf_counter()
        with_pss = self.pss_every > 0 and self.ticks % self.pss_every == 0
        self.ticks += 1
        driver = _proc_rss(self.driver) or 0
        pss = _proc_pss(self.driver) if with_pss else None
        workers = n_workers = n_actors = agents = 0
        if self.raylet is not None:
            for pid in _descendants(self.raylet):
                title = _proc_title(pid)
                rss = _proc_rss(pid)
                if rss is None:
                    continue
                if title.startswith("ray::") and title not in _AGENT_TITLES:
                    workers += rss
                    n_workers += 1
                    n_actors += title != "ray::IDLE"
                    if pss is not None:
                        pss += _proc_pss(pid) or 0
                else:
                    agents += rss
        system = agents + sum(_proc_rss(pid) or 0 for pid in self.system.values())
        return {"t": t, "driver": driver, "workers": workers, "n_workers": n_workers, "n_actors": n_actors,
                "total": driver + workers,
                "pss": pss, "ray_system": system, "store": object_store_bytes(self.ray)}

    def run(self) -> None:
        while not self.stop_event.is_set():
            start = time.perf_counter()
            try:
                rec = self.sample()
                rec["cost"] = time.perf_counter() - start
                self.samples.append(rec)
            except Exception as e:  # noqa: BLE001 - keep sampling; the error is reported
                if len(self.errors) < 20:
                    self.errors.append(repr(e))
            self.stop_event.wait(max(0.0, self.interval - (time.perf_counter() - start)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    def window(self, t_from: float, t_to: float) -> list[dict[str, Any]]:
        return [s for s in list(self.samples) if t_from <= s["t"] <= t_to]


# -- per-batch timestamps -----------------------------------------------------------------
Batches = list[tuple[float, int, int, tuple[str, ...]]]  # (t, seq, rows, learners that fitted)


class BatchLog(Observer):
    """Per batch, in stream order: (completion time in the driver, seq, rows read, learners that fitted).

    The time is the one the sampler's clock (``time.perf_counter``) gives, taken when the
    collector recorded the batch, so batches and memory samples share one time axis. After
    a recovery's rollback the batches that come again replace the ones recorded before,
    so the log holds each batch of the run once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches: Batches = []

    def on_start(self, graph: Any) -> None:
        self.batches = []

    def on_batch(self, record: BatchRecord) -> None:
        fitted = tuple(name for name, r in record.results.items() if r.fits)
        self.batches.append((record.time, record.seq, record.rows, fitted))

    def on_rollback(self, seq: int) -> None:
        self.batches = [b for b in self.batches if b[1] <= seq]

    def result(self) -> Batches:
        return list(self.batches)


# -- pipelines ----------------------------------------------------------------------------

def linkload_pipeline(args: argparse.Namespace) -> tuple[tf.Pipeline, int | None]:
    from tideflow.pipelines.ready import load_pipeline

    return load_pipeline("linkload", set="default"), args.max_batches or None


def nowcast_pipeline(args: argparse.Namespace) -> tuple[tf.Pipeline, int | None]:
    from tideflow.pipelines.ready import load_pipeline

    return load_pipeline("nowcast", model="gbm", target="temp", stations="JFK", hours=args.nowcast_hours,
                         window=args.nowcast_window), None


def river_pipeline(args: argparse.Namespace) -> tuple[tf.Pipeline, int | None]:
    from river import linear_model, preprocessing

    source = tf.SyntheticSource("friedman-drift", n=args.river_events, batch_size=args.river_batch, seed=0)
    return (tf.Pipeline("memory-river").source(source).validate().detect(tf.DetectDrift(on="x0"))
            .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
                   name="linear", detector="ADWIN")), None


PARTS = {"linkload": linkload_pipeline, "nowcast": nowcast_pipeline, "river": river_pipeline}


# -- analysis -----------------------------------------------------------------------------

def _median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    vals = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def _slope_mib_per_min(samples: list[dict[str, Any]]) -> float | None:
    if len(samples) < 3:
        return None
    xs = [s["t"] for s in samples]
    ys = [s["total"] / MIB for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def warmup_batch(batches: Batches, frac: float) -> tuple[int, str]:
    """Index of the batch that ends warm-up, and why (see the module docstring)."""
    n = len(batches)
    by_frac = min(n - 1, max(0, math.ceil(frac * n) - 1))
    first_fit: dict[str, int] = {}
    for i, (_, _, _, fitted) in enumerate(batches):
        for name in fitted:
            first_fit.setdefault(name, i)
    by_fit = max(first_fit.values()) + 1 if first_fit else -1
    if by_fit > by_frac:
        return min(n - 1, by_fit), f"first fit of every fitting learner (batch {by_fit - 1})"
    return by_frac, f"{frac:.0%} of the batches"


def wait_released(sampler: Sampler, t_start: float, t_end: float, settle: float) -> None:
    """Wait (at most ``settle`` s, at least one sample) until the object store is back to its level
    before the run and no worker process holds an actor any more (idle workers may stay)."""
    before = sampler.window(t_start - 3 * sampler.interval, t_start)
    store0 = before[-1]["store"] if before and before[-1]["store"] is not None else 0
    while time.perf_counter() - t_end < settle:
        time.sleep(sampler.interval)
        last = sampler.samples[-1] if sampler.samples else None
        if (last is not None and last["t"] > t_end and (last["store"] or 0) <= store0 + _STORE_SLACK
                and last["n_actors"] == 0):
            return


def analyse(name: str, sampler: Sampler, batches: Batches, *,
            t_start: float, t_end: float, t_settled: float, frac: float, flat_pct: float) -> dict[str, Any]:
    run_samples = sampler.window(t_start, t_end)
    out: dict[str, Any] = {"part": name, "batches": len(batches), "events": sum(b[2] for b in batches),
                           "seconds": t_end - t_start, "samples": len(run_samples)}
    before = sampler.window(t_start - 3 * sampler.interval, t_start)
    out["rss_before_mib"] = before[-1]["total"] / MIB if before else None
    if run_samples:
        peak = max(run_samples, key=lambda s: s["total"])
        out["peak_rss_mib"] = peak["total"] / MIB
        out["peak_driver_mib"] = max(s["driver"] for s in run_samples) / MIB
        out["peak_workers_mib"] = max(s["workers"] for s in run_samples) / MIB
        out["max_worker_processes"] = max(s["n_workers"] for s in run_samples)
        pss = [s["pss"] for s in run_samples if s.get("pss") is not None]
        out["peak_pss_mib"] = max(pss) / MIB if pss else None
        out["peak_ray_system_mib"] = max(s["ray_system"] for s in run_samples) / MIB
        stores = [s["store"] for s in run_samples if s["store"] is not None]
        out["store_peak_mib"] = max(stores) / MIB if stores else None
    settled = sampler.window(t_end, t_settled)
    after = [s["store"] for s in settled[-2:] if s["store"] is not None]
    out["store_after_mib"] = after[-1] / MIB if after else None
    base = before[-1]["store"] if before and before[-1]["store"] is not None else 0
    out["store_before_mib"] = base / MIB
    released = next((s["t"] for s in settled if s["store"] is not None and s["store"] <= base + _STORE_SLACK), None)
    out["store_released_s"] = None if released is None else released - t_end
    out["workers_after"] = settled[-1]["n_workers"] if settled else None
    out["workers_after_mib"] = settled[-1]["workers"] / MIB if settled else None
    if len(batches) >= 5 and run_samples:
        w, why = warmup_batch(batches, frac)
        t_w, t_last = batches[w][0], batches[-1][0]
        span = t_last - t_w
        edge = max(2.0, 0.03 * (t_last - batches[0][0]), 3 * sampler.interval)
        # both windows stay inside [warm-up batch, last batch]: after the run the actors are gone
        warm = sampler.window(t_w, min(t_w + edge, t_last))
        end = sampler.window(max(t_last - edge, t_w), t_last)
        rss_warm, rss_end = _median_of(warm, "total"), _median_of(end, "total")
        out.update({
            "warmup_batch": w, "warmup_reason": why, "warmup_at_s": t_w - t_start,
            "after_warmup_s": span, "window_s": edge,
            "rss_warm_mib": rss_warm / MIB if rss_warm else None,
            "rss_end_mib": rss_end / MIB if rss_end else None,
            "driver_warm_mib": (_median_of(warm, "driver") or 0) / MIB,
            "driver_end_mib": (_median_of(end, "driver") or 0) / MIB,
            # a slope over a few seconds is noise: only from 10 s of samples on
            "slope_mib_per_min": _slope_mib_per_min(sampler.window(t_w, t_last)) if span >= 10 else None,
        })
        if span < 4 * sampler.interval:
            out["growth_note"] = "run too short after warm-up for a growth figure"
        elif rss_warm and rss_end:
            growth = 100 * (rss_end / rss_warm - 1)
            out["growth_pct"] = growth
            out["flat_after_warmup"] = growth < flat_pct
    return out


def downsample(samples: list[dict[str, Any]], t0: float, points: int) -> dict[str, list[Any]]:
    """Column lists of at most ``points`` samples (evenly spaced, the peak always kept), MiB, s from t0."""
    if not samples:
        return {}
    n = len(samples)
    keep = {round(i * (n - 1) / max(1, points - 1)) for i in range(min(n, points))}
    keep.add(max(range(n), key=lambda i: samples[i]["total"]))
    sel = [samples[i] for i in sorted(keep)]
    mib = lambda v: None if v is None else round(v / MIB, 1)  # noqa: E731
    return {
        "t_s": [round(s["t"] - t0, 2) for s in sel],
        "total_mib": [mib(s["total"]) for s in sel],
        "driver_mib": [mib(s["driver"]) for s in sel],
        "workers_mib": [mib(s["workers"]) for s in sel],
        "n_workers": [s["n_workers"] for s in sel],
        "pss_mib": [mib(s.get("pss")) for s in sel],
        "ray_system_mib": [mib(s["ray_system"]) for s in sel],
        "store_mib": [mib(s["store"]) for s in sel],
    }


def batch_series(batches: Batches, t0: float, points: int) -> dict[str, Any]:
    n = len(batches)
    idx = sorted({round(i * (n - 1) / max(1, points - 1)) for i in range(min(n, points))}) if n else []
    fits = [i for i, b in enumerate(batches) if b[3]]
    return {"t_s": [round(batches[i][0] - t0, 2) for i in idx], "batch": idx,
            "batches_with_fits": len(fits), "first_fit_batch": fits[0] if fits else None}


# -- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="linkload,nowcast,river", help="subset of linkload,nowcast,river (default all)")
    ap.add_argument("--max-batches", type=int, default=1800,
                    help="linkload: batches (one step each) replayed; 0 = all 2304 (default 1800)")
    ap.add_argument("--nowcast-hours", type=int, default=288, help="nowcast: hours replayed (default 288)")
    ap.add_argument("--nowcast-window", type=int, default=120, help="nowcast: training window in rows (default 120)")
    ap.add_argument("--river-events", type=int, default=300_000, help="river part: events (default 300000)")
    ap.add_argument("--river-batch", type=int, default=500, help="river part: batch size (default 500)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    ap.add_argument("--pss-every", type=int, default=4,
                    help="also read PSS (smaps_rollup, costlier) every N-th sample; 0 = never (default 4)")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="warm-up: at least this fraction of the batches (default 0.2)")
    ap.add_argument("--flat-pct", type=float, default=5.0, help="'flat' when growth after warm-up is below this %% (5)")
    ap.add_argument("--checkpoint-every", type=int, default=100,
                    help="the runner's checkpoint interval in batches (default 100, the engine's; 0 = none)")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="after each run, wait at most this many s for the store and workers to be released (10)")
    ap.add_argument("--max-in-flight", type=int, default=4, help="Ray runner backpressure (run_graph default 4)")
    ap.add_argument("--worker-niceness", type=int, default=0,
                    help="niceness of Ray's worker processes (RAY_worker_niceness; Ray's own default is 15) "
                         "unless RAY_worker_niceness is set (default 0)")
    ap.add_argument("--points", type=int, default=300, help="samples kept per part in the JSON (default 300)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "memory.json"),
                    help="where to write the results (default bench/results/memory.json)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        ap.error(f"--parts takes {', '.join(PARTS)}")
    if args.interval <= 0 or not 0 <= args.warmup < 1 or args.max_batches < 0 or args.points < 2:
        ap.error("--interval > 0, 0 <= --warmup < 1, --max-batches >= 0, --points >= 2")

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=170)
    wall0 = time.perf_counter()
    info = machine_info()
    console.print(f"[bold]memory[/]: parts {parts}, sample every {args.interval} s, "
                  f"{info['cpu_affinity'] or info['cpu_count']} CPUs, ray {info['ray']}, "
                  f"psutil {'yes' if psutil is not None else 'no (/proc)'}, load average {info['loadavg_at_start']}")

    import ray

    results: list[dict[str, Any]] = []
    series: dict[str, Any] = {}
    sampler: Sampler | None = None
    ray_init_s = None
    os.environ.setdefault("RAY_worker_niceness", str(args.worker_niceness))
    try:
        ray_init_s = start_ray(console)
        console.print(f"ray.init (not sampled): {ray_init_s:.1f} s; Ray processes {ray_system_pids(ray)}")
        sampler = Sampler(ray, args.interval, args.pss_every)
        sampler.start()
        time.sleep(max(1.0, 2 * args.interval))
        with tempfile.TemporaryDirectory(prefix="tideflow-bench-memory-") as tmp:
            for name in parts:
                pipeline, max_batches = PARTS[name](args)
                log = BatchLog()
                t_start = time.perf_counter()
                result = pipeline.run(runner="ray", tracking=False, progress=False, max_batches=max_batches,
                                      checkpoint_every=args.checkpoint_every, observers=[log],
                                      output_dir=Path(tmp) / name, max_in_flight=args.max_in_flight)
                t_end = time.perf_counter()
                wait_released(sampler, t_start, t_end, args.settle)
                t_settled = time.perf_counter()
                batches = result.metrics[log.name]
                row = analyse(name, sampler, batches, t_start=t_start, t_end=t_end, t_settled=t_settled,
                              frac=args.warmup, flat_pct=args.flat_pct)
                row["rows"] = result.rows
                row["events_per_second"] = result.events_per_second
                row["strategy_errors"] = {k: v["errors"] for k, v in result.summary.items() if v.get("errors")}
                row["fits"] = {k: v["fits"] for k, v in result.summary.items()}
                if name == "linkload":
                    row["under_4gb"] = row.get("peak_rss_mib") is not None and row["peak_rss_mib"] * MIB < LIMIT_BYTES
                results.append(row)
                series[name] = {"samples": downsample(sampler.window(t_start, t_settled), t_start, args.points),
                                "batches": batch_series(batches, t_start, args.points)}
                g = row.get("growth_pct")
                console.print(f"  {name:<8} {row['batches']:>5} batches, {row['events']:>7,} events in "
                              f"{row['seconds']:6.1f} s; peak {row.get('peak_rss_mib', 0):,.0f} MiB, "
                              f"growth after warm-up {'-' if g is None else f'{g:+.1f} %'}, "
                              f"{row['samples']} samples")
                if row["strategy_errors"]:
                    console.print(f"[yellow]  {name}: strategy errors {row['strategy_errors']}")
    finally:
        if sampler is not None:
            sampler.stop()
        ray.shutdown()
    total_s = time.perf_counter() - wall0

    fmt = lambda v, f="{:,.0f}": "-" if v is None else f.format(v)  # noqa: E731
    yn = lambda v: "-" if v is None else ("yes" if v else "NO")  # noqa: E731
    table = Table(title="resident memory on the Ray runner: driver + Ray workers (sums over processes, MiB)")
    for col in ("part", "batches", "events", "s", "procs", "peak RSS", "peak PSS", "warm-up batch", "RSS warm",
                "RSS end", "growth", f"flat <{args.flat_pct:g}%", "store peak", "store after", "released s", "< 4 GB"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for r in results:
        table.add_row(
            r["part"], str(r["batches"]), f"{r['events']:,}", f"{r['seconds']:.0f}",
            fmt(r.get("max_worker_processes"), "1+{}"), fmt(r.get("peak_rss_mib")), fmt(r.get("peak_pss_mib")),
            fmt(r.get("warmup_batch"), "{}"), fmt(r.get("rss_warm_mib")),
            fmt(r.get("rss_end_mib")), fmt(r.get("growth_pct"), "{:+.1f} %"), yn(r.get("flat_after_warmup")),
            fmt(r.get("store_peak_mib"), "{:,.1f}"), fmt(r.get("store_after_mib"), "{:,.1f}"),
            fmt(r.get("store_released_s"), "{:.1f}"), yn(r.get("under_4gb")) if r["part"] == "linkload" else "")
    console.print(table)
    console.print("procs = driver + Ray worker processes (ray::*, Ray's agents excluded). RSS sums count shared pages "
                  "once per process; PSS splits them. warm = median of the samples just after the warm-up batch, end = "
                  "of the last seconds; store after / released s: object store once the run's workers are gone "
                  f"(at most {args.settle:g} s after the run) / time until it was back to its level before the run.")
    for r in results:
        console.print(f"  {r['part']}: warm-up ends at batch {r.get('warmup_batch')} ({r.get('warmup_reason')}) "
                      f"after {fmt(r.get('warmup_at_s'), '{:.0f}')} s, then {fmt(r.get('after_warmup_s'), '{:.0f}')} s "
                      f"more; slope after it {fmt(r.get('slope_mib_per_min'), '{:+.1f}')} MiB/min; driver peak "
                      f"{fmt(r.get('peak_driver_mib'))} MiB; RSS before the run "
                      f"{fmt(r.get('rss_before_mib'))} MiB; Ray system processes peak "
                      f"{fmt(r.get('peak_ray_system_mib'))} MiB; worker processes left after the run: "
                      f"{r.get('workers_after')} ({fmt(r.get('workers_after_mib'))} MiB)")
    if sampler is not None and sampler.errors:
        console.print(f"[yellow]sampler errors: {sampler.errors[:3]}")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']} (other processes on the machine skew the timings)")

    doc = {
        "benchmark": "memory",
        "description": "resident memory (driver + Ray worker processes, sum of RSS) and object-store use over "
                       "long replays on the Ray runner: peak, growth after warm-up, store released after the run",
        "protocol": {
            "parts": parts, "interval_s": args.interval, "warmup_fraction": args.warmup,
            "flat_pct": args.flat_pct, "settle_s": args.settle, "max_in_flight": args.max_in_flight,
            "linkload": {"set": "default", "max_batches": args.max_batches or None},
            "nowcast": {"model": "gbm", "target": "temp", "stations": "JFK", "hours": args.nowcast_hours,
                        "window": args.nowcast_window},
            "river": {"stream": "friedman-drift", "events": args.river_events, "batch_size": args.river_batch,
                      "learner": "StandardScaler | LinearRegression, ADWIN on its error"},
            "RAY_worker_niceness": os.environ.get("RAY_worker_niceness"),
            "limit_bytes": LIMIT_BYTES, "process_discovery": "psutil" if psutil is not None else "/proc",
            "rss": "sum of RSS of the driver and of the raylet's ray::* children except Ray's agents",
            "warmup": "later of warmup_fraction of the batches and the batch after every fitting learner's "
                      "first fit; warm/end = median of the samples in window_s after it / before the last batch",
            "store": "object_store_bytes_used from the raylets (get_memory_info_reply)",
        },
        "machine": info,
        "ray_init_seconds": ray_init_s,
        "total_seconds": total_s,
        "rows": results,
        "series": series,
    }
    out = write_json(doc, args.json)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
