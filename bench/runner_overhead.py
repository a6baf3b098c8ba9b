"""Runner overhead: events/s of one pipeline on the local and the Ray runner, against plain Python.

Pipeline (the same operators on every path)::

    RecordingSource -> Validate -> DetectDrift(on="x0")
        -> RiverStrategy(StandardScaler | LinearRegression)   # prequential: predict, score, learn

The learner is deliberately cheap, so what a runner adds per batch shows.

Protocol:

* A ``friedman-drift`` stream of ``--events`` rows is recorded once to a temporary
  Arrow file; every measurement replays it with ``RecordingSource(path,
  batch_size=B)``, so all runners read identical data.
* At batch size ``B`` a measurement uses ``min(events, B * --max-batches)`` events
  (the first ones of the recording): small batches on Ray are slow, and this keeps the
  whole script short. The count used is printed and stored per row.
* ``plain``, the reference: what a user writes by hand without the engine, over the
  very operators of the built graph. A bare ``for`` loop over the source's batches
  passes each one through the data-path operators with the engine's public
  ``run_chain`` (``validate`` -> ``detect``, side outputs drained), hands the drift
  events to the strategy's ``on_drift``, then predicts, scores with the engine's
  ``evaluation.score`` into a ``Scores`` total, and learns. No runner, no collector,
  no learn step (no routing, label-delay queue, error detector or per-batch
  records): what the runners add on top of that is what this script measures.
* ``local`` / ``ray`` / ``ray-unfused``: ``run_graph`` with ``tracking=False, progress=False``;
  ``ray`` runs the data path inside the source actor (the default, ``ray_fuse_chain=True``),
  ``ray-unfused`` gives every data-path step its own actor (two more actor calls and
  object-store round trips per batch).
  ``ray.init`` is paid once, before any timing (``ensure_ray``); actor start-up is part
  of each Ray run, so the Ray ``events/s`` is the total (start-up included), and
  ``steady`` is events/s over the batches after the first ``max(3, 10%)``, from a
  per-batch completion timestamp taken in the driver by the engine's ``BatchTimes``
  observer (``run(observers=[BatchTimes()])``, the same on both runners).
  ``startup`` is the time from the start of the run to the first batch completed.
* Per-event latency: the source is wrapped (``Stamped``) so that it writes the time each
  batch leaves it (``perf_counter``, CLOCK_MONOTONIC on Linux: one clock for the driver and
  the Ray actors) on every path, plain included; an event's latency is its batch's
  completion time in the driver (``BatchTimes``) minus that stamp: from the source reading
  the event to its prediction being scored and recorded. The table gives p50 and p99 over
  events. On the Ray runner a chained graph (this one) hands batches to the driver in
  groups that grow for transport up to ``--max-delay-ms`` (coalescing,
  ``RayOptions.max_delay_ms``, default 5; 0 turns it off): throughput against latency at
  small batches.
* Each measurement is repeated ``--repeats`` times; the table shows medians; every
  repeat is in the JSON.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/runner_overhead.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/runner_overhead.py --repeats 3 --batch-sizes 1024

There is no pass/fail; the numbers go to the terminal and to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file from anywhere, without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import tideflow as tf  # noqa: E402
from tideflow.connectors.base import Source  # noqa: E402
from tideflow.connectors.recording import RecordingSource, record  # noqa: E402
from tideflow.pipelines.evaluation import Scores, score  # noqa: E402
from tideflow.pipelines.metrics.batch_times import BatchTimes, steady_state  # noqa: E402
from tideflow.pipelines.runners.data_path import run_chain  # noqa: E402

from _common import _fmt_eps, _fmt_ratio, _loadavg, _median, machine_info  # noqa: E402

STREAM = "friedman-drift"
RUNNERS = ("plain", "local", "ray", "ray-unfused")
SEED = 0


# -- the pipeline -------------------------------------------------------------------------

class Stamped(Source):
    """The recording, writing the time each batch leaves it to ``log`` (one line per batch, in
    order): ``time.perf_counter``, which on Linux reads CLOCK_MONOTONIC, one clock for every
    process on the machine, so a Ray actor's stamps compare with the driver's. Lines are
    buffered and flushed every 64 batches and at the ``last`` one, so a stamp costs no write."""

    def __init__(self, inner: RecordingSource, log: str, last: int | None) -> None:
        self.inner, self.log, self.last, self.stream_id = inner, log, last, inner.stream_id

    def schema(self) -> Any:
        return self.inner.schema()

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def batches(self) -> Any:
        with open(self.log, "a", buffering=1 << 16) as fh:
            for i, b in enumerate(self.inner.batches()):
                fh.write(f"{time.perf_counter()!r}\n")
                if i % 64 == 63 or (self.last is not None and i + 1 == self.last):
                    fh.flush()
                yield b

    def seek(self, offset: int) -> None:
        self.inner.seek(offset)

    @property
    def position(self) -> int:
        return self.inner.position


def latencies(log: Path, ts: list[tuple[float, int]]) -> dict[str, Any]:
    """Per-event latency from the source handing out an event's batch to its prediction being
    scored (the batch's completion in the driver): p50 and p99 over events (each batch weighs
    its rows), in milliseconds."""
    read = [float(x) for x in log.read_text().split()] if log.exists() else []
    n = min(len(read), len(ts))
    if not n:
        return {"p50_ms": None, "p99_ms": None, "batches_stamped": 0}
    lat = np.array([ts[i][0] - read[i] for i in range(n)]) * 1e3
    rows = np.array([max(1, ts[i][1]) for i in range(n)])
    per_event = np.repeat(lat, rows)
    return {"p50_ms": float(np.percentile(per_event, 50)), "p99_ms": float(np.percentile(per_event, 99)),
            "batches_stamped": n}


def make_pipeline(path: Path, batch_size: int, log: Path | None = None,
                  max_batches: int | None = None) -> tf.Pipeline:
    """A fresh pipeline (operators and learner keep state, so one per measurement); with ``log``,
    its source stamps every batch it hands out (`Stamped`)."""
    from river import linear_model, preprocessing

    source: Source = RecordingSource(path, batch_size=batch_size)
    if log is not None:
        source = Stamped(source, str(log), max_batches)  # type: ignore[arg-type]
    return (
        tf.Pipeline("runner-overhead")
        .source(source)
        .validate()
        .detect(tf.DetectDrift(on="x0"))
        .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
               name="linear")
    )


def run_plain(path: Path, batch_size: int, max_batches: int | None, log: Path | None = None) -> dict[str, Any]:
    """The reference (see the module docstring): the built graph's own operators in a bare loop.

    Its parts are the engine's public ones (``run_chain``, ``score``, ``Scores``), so the
    reference does the same data-path and scoring work as the runners, bit for bit: the
    prequential MAE of every path must agree, which ``main`` checks.
    """
    graph = make_pipeline(path, batch_size, log, max_batches).build()  # validates and binds the strategy
    source = graph.source.op
    chain = [s.op for s in graph.chain]
    strategy = graph.learners[0].op
    target = strategy.target
    problem = strategy.problem
    total = Scores()
    rows = 0
    drift = 0
    ts: list[tuple[float, int]] = []  # (completion time, rows read), as BatchTimes records for the runners
    start = time.perf_counter()
    batches = source.batches()
    for seq in range(max_batches if max_batches is not None else sys.maxsize):
        batch = next(batches, None)  # read no batch past max_batches, as the runners do
        if batch is None:
            break
        n = len(batch)
        current, events, _ = run_chain(chain, batch, [])
        for e in events:
            strategy.on_drift(e)
        if current is not None and len(current):
            preds = strategy.predict(current)  # test ...
            total.add(score(problem, preds, current.numpy(target))[0])
            strategy.learn(current)  # ... then train
        drift += len(events)
        rows += n
        ts.append((time.perf_counter(), n))
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "eps": rows / seconds, "ts": ts, "t0": start,
            "mae": total.metrics(problem).get("mae"), "rows_scored": total.n, "drift_events": drift}


def run_runner(runner: str, path: Path, batch_size: int, max_batches: int | None, *, out: Path,
               max_in_flight: int, log: Path | None = None, max_delay_ms: float = 5.0) -> dict[str, Any]:
    """One run of the engine; per-batch completion times come from its ``BatchTimes`` observer."""
    pipeline = make_pipeline(path, batch_size, log, max_batches)
    fused = runner != "ray-unfused"
    times = BatchTimes()
    result = pipeline.run(runner=runner.split("-")[0], tracking=False, progress=False, max_batches=max_batches,
                          output_dir=out, max_in_flight=max_in_flight, ray_fuse_chain=fused, observers=[times],
                          **({"max_delay_ms": max_delay_ms} if runner.startswith("ray") else {}))
    bt = result.metrics[times.name]
    summary = result.summary.get("linear", {})
    return {"rows": result.rows, "seconds": result.seconds, "eps": result.events_per_second,
            "mae": summary.get("mae"), "rows_scored": summary.get("rows_scored"),
            "drift_events": len(result.drift_events), "ts": bt["ts"], "t0": bt["t0"]}


def derive(rec: dict[str, Any]) -> dict[str, Any]:
    """Plain numbers of one measurement for the JSON (timestamps reduced)."""
    ts = rec.get("ts")
    out = {k: rec[k] for k in ("rows", "seconds", "eps", "mae", "rows_scored", "drift_events")}
    out["batches"] = len(ts) if ts else None
    out["steady_eps"] = steady_state(ts) if ts else None
    out["first_batch_s"] = (ts[0][0] - rec["t0"]) if ts else None
    if rec.get("log") is not None and ts:
        out.update({f"latency_{k}": v for k, v in latencies(rec["log"], ts).items()})
    return out


# -- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000,
                    help="events recorded, and used per measurement at large batch sizes (default 400000: "
                         "~10 s per run, long enough for a steady-state figure that repeats within a few %%)")
    ap.add_argument("--batch-sizes", default="1,64,1024,8192", help="comma-separated (default 1,64,1024,8192)")
    ap.add_argument("--max-batches", type=int, default=600,
                    help="at most this many batches per measurement: events = min(events, B * this) "
                         "(default 600)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per measurement; medians are shown (default 3)")
    ap.add_argument("--runners", default="plain,local,ray,ray-unfused",
                    help="subset of plain,local,ray,ray-unfused (default all; ray-unfused = the Ray runner "
                         "with one actor per data-path step, ray_fuse_chain=False)")
    ap.add_argument("--max-in-flight", type=int, default=4, help="Ray runner backpressure (run_graph default 4)")
    ap.add_argument("--max-delay-ms", type=float, default=5.0,
                    help="Ray runner: the coalescing delay bound, RayOptions.max_delay_ms (0: groups of "
                         "max_in_flight; default 5, the option's default): latency against throughput")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "runner_overhead.json"),
                    help="where to write the results (default bench/results/runner_overhead.json)")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    if any(r not in RUNNERS for r in runners) or not runners:
        ap.error(f"--runners takes {', '.join(RUNNERS)}")
    if args.events < 1 or args.repeats < 1 or args.max_batches < 1 or not batch_sizes or min(batch_sizes) < 1:
        ap.error("--events, --repeats, --max-batches and batch sizes must be >= 1")

    from rich.console import Console
    from rich.table import Table

    # wide enough for the table also when the output is piped to a file
    console = Console() if sys.stdout.isatty() else Console(width=160)
    wall0 = time.perf_counter()
    info = machine_info()
    console.print(f"[bold]runner overhead[/]: {STREAM} seed={SEED}, {args.events:,} events recorded, "
                  f"batch sizes {batch_sizes}, repeats {args.repeats}, "
                  f"{info['cpu_affinity'] or info['cpu_count']} CPUs, python {info['python']}, "
                  f"ray {info['ray']}, pyarrow {info['pyarrow']}, load average {info['loadavg_at_start']}")

    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-") as tmp:
        tmpdir = Path(tmp)
        path = tmpdir / "stream.arrows"
        t = time.perf_counter()
        rec_info = record(tf.SyntheticSource(STREAM, n=args.events, batch_size=4096, seed=SEED), path,
                          progress=False)
        record_s = time.perf_counter() - t
        console.print(f"recorded {rec_info['rows']:,} events to a temp file in {record_s:.1f} s")

        ray_init_s = None
        if any(r.startswith("ray") for r in runners):
            from tideflow.pipelines.runners.ray_session import ensure_ray

            t = time.perf_counter()
            ensure_ray()
            ray_init_s = time.perf_counter() - t
            console.print(f"ray.init (excluded from timings): {ray_init_s:.1f} s")

        run_no = 0
        for bs in batch_sizes:
            max_batches = None if bs * args.max_batches >= args.events else args.max_batches
            events = args.events if max_batches is None else bs * max_batches
            reps: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
            for _ in range(args.repeats):
                for runner in runners:
                    run_no += 1
                    log = tmpdir / f"stamps{run_no}.txt"
                    if runner == "plain":
                        rec = run_plain(path, bs, max_batches, log)
                    else:
                        rec = run_runner(runner, path, bs, max_batches, out=tmpdir / f"run{run_no}",
                                         max_in_flight=args.max_in_flight, log=log,
                                         max_delay_ms=args.max_delay_ms)
                        if runner.startswith("ray"):
                            time.sleep(1.0)  # let the killed actors' processes exit before the next timing
                    rec["log"] = log
                    d = derive(rec)
                    if d["rows"] != events:
                        raise RuntimeError(f"{runner} at batch {bs} read {d['rows']} events, expected {events}")
                    reps[runner].append(d)
                    steady = f", steady {_fmt_eps(d['steady_eps'])}/s" if d["steady_eps"] else ""
                    start = (f", first batch after {d['first_batch_s']:.2f} s"
                             if runner.startswith("ray") and d["first_batch_s"] is not None else "")
                    console.print(f"  batch {bs:>5} {runner:<11} {d['rows']:>7,} events in {d['seconds']:6.2f} s "
                                  f"= {_fmt_eps(d['eps']):>7}/s{steady}{start}")
            keys = ("eps", "steady_eps", "seconds", "first_batch_s", "latency_p50_ms", "latency_p99_ms")
            med = {r: {k: _median([d[k] for d in reps[r] if d.get(k) is not None]) for k in keys}
                   for r in runners}
            maes = {r: reps[r][0]["mae"] for r in runners}
            ref = next(iter(maes.values()))
            same = all(m is not None and ref is not None and abs(m - ref) <= 1e-9 * max(1.0, abs(ref))
                       for m in maes.values())
            row: dict[str, Any] = {"batch_size": bs, "events": events,
                                   "batches": math.ceil(events / bs), "mae_identical": same, "mae": maes}
            for r in runners:
                row[f"{r}_eps"] = med[r]["eps"]
                row[f"{r}_seconds"] = med[r]["seconds"]
                row[f"{r}_steady_eps"] = med[r]["steady_eps"]
                row[f"{r}_first_batch_s"] = med[r]["first_batch_s"]
                row[f"{r}_latency_p50_ms"] = med[r]["latency_p50_ms"]
                row[f"{r}_latency_p99_ms"] = med[r]["latency_p99_ms"]
                row[f"{r}_repeats"] = reps[r]

            def ratio(a: str, b: str, key: str = "eps") -> float | None:
                x, y = row.get(f"{a}_{key}"), row.get(f"{b}_{key}")
                return x / y if x is not None and y else None

            row["local_over_plain"] = ratio("local", "plain")
            row["ray_over_plain"] = ratio("ray", "plain")
            row["ray_over_local"] = ratio("ray", "local")
            row["ray_over_local_steady"] = ratio("ray", "local", "steady_eps")
            row["ray_over_plain_steady"] = ratio("ray", "plain", "steady_eps")
            row["ray_unfused_over_plain_steady"] = ratio("ray-unfused", "plain", "steady_eps")
            rows_out.append(row)
            if not same:
                console.print(f"[yellow]  batch {bs}: MAE differs between runners: {maes}")

    if any(r.startswith("ray") for r in runners):
        import ray

        ray.shutdown()
    total_s = time.perf_counter() - wall0

    table = Table(title=f"events/s, {STREAM} + Validate + DetectDrift + River StandardScaler|LinearRegression "
                        f"(median of {args.repeats})")
    # (header, runners it needs, cell)
    spec = [
        ("batch", (), lambda r: str(r["batch_size"])),
        ("events", (), lambda r: f"{r['events']:,}"),
        ("plain ev/s", ("plain",), lambda r: _fmt_eps(r.get("plain_eps"))),
        ("local ev/s", ("local",), lambda r: _fmt_eps(r.get("local_eps"))),
        ("ray ev/s", ("ray",), lambda r: _fmt_eps(r.get("ray_eps"))),
        ("local/plain", ("local", "plain"), lambda r: _fmt_ratio(r.get("local_eps"), r.get("plain_eps"))),
        ("ray/plain", ("ray", "plain"), lambda r: _fmt_ratio(r.get("ray_eps"), r.get("plain_eps"))),
        ("ray/local", ("ray", "local"), lambda r: _fmt_ratio(r.get("ray_eps"), r.get("local_eps"))),
        ("ray steady ev/s", ("ray",), lambda r: _fmt_eps(r.get("ray_steady_eps"))),
        ("steady ray/local", ("ray", "local"),
         lambda r: _fmt_ratio(r.get("ray_steady_eps"), r.get("local_steady_eps"))),
        ("steady ray/plain", ("ray", "plain"),
         lambda r: _fmt_ratio(r.get("ray_steady_eps"), r.get("plain_steady_eps"))),
        ("steady unfused/plain", ("ray-unfused", "plain"),
         lambda r: _fmt_ratio(r.get("ray-unfused_steady_eps"), r.get("plain_steady_eps"))),
        ("ray 1st batch s", ("ray",),
         lambda r: "-" if r.get("ray_first_batch_s") is None else f"{r['ray_first_batch_s']:.2f}"),
    ]
    spec = [c for c in spec if all(n in runners for n in c[1])]
    for header, _, _ in spec:
        table.add_column(header, justify="right")
    for row in rows_out:
        table.add_row(*(cell(row) for _, _, cell in spec))
    console.print(table)
    lat = Table(title="per-event latency, ms: from the source handing out the event's batch to its prediction "
                      f"being scored (median over repeats of each run's p50 / p99 over events)")
    for header in ("batch", *(f"{r} p50 / p99" for r in runners)):
        lat.add_column(header, justify="right")

    def _ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for row in rows_out:
        lat.add_row(str(row["batch_size"]), *(f"{_ms(row.get(f'{r}_latency_p50_ms'))} / "
                                              f"{_ms(row.get(f'{r}_latency_p99_ms'))}" for r in runners))
    console.print(lat)
    console.print("ray ev/s includes actor start-up (2 actors per run fused, 4 unfused); 'steady' skips the first max(3, 10%) "
                  "batches; ray.init is excluded.")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']} (other processes on the machine skew the numbers)")

    doc = {
        "benchmark": "runner_overhead",
        "description": "events/s of one pipeline (RecordingSource -> Validate -> DetectDrift(x0) -> "
                       "RiverStrategy(StandardScaler|LinearRegression), prequential) on a plain Python loop, "
                       "the local runner and the Ray runner",
        "protocol": {
            "stream": STREAM, "seed": SEED, "events_recorded": args.events, "batch_sizes": batch_sizes,
            "max_batches": args.max_batches, "repeats": args.repeats, "statistic": "median",
            "max_in_flight": args.max_in_flight, "max_delay_ms": args.max_delay_ms, "tracking": False,
            "progress": False,
            "steady_state": "events/s over batches after the first max(3, ceil(10%)), from driver-side "
                            "per-batch completion timestamps",
            "ray_eps": "total: rows / RunResult.seconds, actor start-up included; ray.init excluded",
            "latency": "per event: driver-side completion time of its batch minus the time the source handed "
                       "the batch out (perf_counter = CLOCK_MONOTONIC, shared by the actors' processes); p50 and "
                       "p99 over events, each batch weighted by its rows; the source stamps every batch on every "
                       "path, plain included",
        },
        "machine": info,
        "record_seconds": record_s,
        "ray_init_seconds": ray_init_s,
        "total_seconds": total_s,
        "rows": rows_out,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
