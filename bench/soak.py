"""Soak: one pipeline on the Ray runner for ``--minutes`` (default 10), throughput and memory over time.

The job is what a long-lived deployment runs, everything on:

    SyntheticSource("sea-drift", 10^8 rows (one drift at 20 000), --batch rows) -> Validate -> DetectDrift(x1, ADWIN)
        -> River LogisticRegression (ADWIN on its error)
        -> Avalanche Naive (MLP)                                 # torch in a second actor
    tracking on (MLflow SQLite in a temp folder, per-second intervals), checkpoints
    every --checkpoint-every batches (in memory and to a temp folder on disk)

Both learners have bounded state and a constant cost per batch, so anything that
grows (memory, or time per batch) is the engine's: buffers, per-batch records,
object-store references, tracking. Avalanche's Replay is not used here: with one
experience per batch its cost per batch grows with the number of experiences seen
(its default per-experience balanced buffer; a reservoir storage policy slows down
too, less; seen in a hand check), which would hide the engine's own trend. The source stops yielding at the deadline
(absolute wall time, so it works inside the source actor); the run then ends as any
run does.

Sampled every ``--interval`` s (default 5) by `bench/memory.py`'s sampler: RSS and PSS
of the driver plus every Ray worker, Ray's own processes apart, and object-store use.
Throughput per minute comes from the driver's per-batch completion times, recorded by
`bench/memory.py`'s ``BatchLog`` observer (``run(observers=[...])``).

Growth: ``warm`` is the median RSS (and PSS) over the minute after ``--warmup-min``
(default 2 minutes: torch, the replay buffer and MLflow's caches fill up first), ``end``
the median over the last minute; growth = end / warm - 1; the goal is < 5 %. A
least-squares slope (MiB/min) over the post-warm-up samples is printed too.

The per-batch records the run keeps for its `RunResult` (one small dict per batch and
learner) do grow with the run: at 500-row batches that is ~1 MB per 10 000 batches.

Run from the repository root (``make soak``)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py --minutes 3 --warmup-min 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_worker_niceness", "0")  # see bench/memory.py

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import memory as mem  # noqa: E402  (its sampler, and the BatchLog observer for per-batch times)

import tideflow as tf  # noqa: E402
from tideflow.connectors.base import Source  # noqa: E402
from tideflow.stream.batch import Batch  # noqa: E402

from _common import _loadavg, machine_info, write_json  # noqa: E402

MIB = 1024 * 1024


class UntilSource(Source):
    """Yields ``inner``'s batches until wall time ``deadline`` (``time.time()``), then stops."""

    def __init__(self, inner: Source, deadline: float) -> None:
        self.inner = inner
        self.deadline = deadline
        self.stream_id = inner.stream_id

    def schema(self) -> Any:
        return self.inner.schema()

    def batches(self) -> Iterator[Batch]:
        for batch in self.inner.batches():
            if time.time() >= self.deadline:
                return
            yield batch

    def seek(self, offset: int) -> None:
        self.inner.seek(offset)

    @property
    def position(self) -> int:
        return self.inner.position

    def params(self) -> dict[str, Any]:
        return {"inner": self.inner.describe()}


def make_pipeline(deadline: float, batch: int) -> tf.Pipeline:
    from river import linear_model

    src = UntilSource(tf.SyntheticSource("sea-drift", n=10**8, batch_size=batch, seed=0,
                                           position=20_000, width=2_000), deadline)
    return (tf.Pipeline("soak").source(src).validate()
            .detect(tf.DetectDrift(on="x1"))
            .learn(tf.RiverStrategy(linear_model.LogisticRegression()), name="logreg", detector="ADWIN")
            .learn(tf.AvalancheStrategy("Naive", n_classes=2, hidden=64, seed=0), name="naive"))


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    ap.add_argument("--warmup-min", type=float, default=2.0, help="warm-up before growth is measured (default 2)")
    ap.add_argument("--batch", type=int, default=500, help="rows per batch (default 500)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--checkpoint-every", type=int, default=100, help="batches between checkpoints (default 100)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "soak.json"))
    args = ap.parse_args(argv)
    if args.minutes <= args.warmup_min + 1:
        ap.error("--minutes must exceed --warmup-min by more than one minute")

    info = machine_info()
    print(f"soak: {args.minutes:g} min on the Ray runner, batches of {args.batch}, load {info['loadavg_at_start']}",
          flush=True)
    mem.start_ray(type("C", (), {"print": staticmethod(print)})())
    import ray

    sampler = mem.Sampler(ray, args.interval, pss_every=1)
    sampler.start()
    log = mem.BatchLog()
    with tempfile.TemporaryDirectory(prefix="tideflow-soak-") as tmp:
        deadline = time.time() + args.minutes * 60
        t0 = time.perf_counter()
        result = make_pipeline(deadline, args.batch).run(
            runner="ray", progress=False, tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="soak",
            output_dir=Path(tmp) / "out", checkpoint_every=args.checkpoint_every,
            checkpoint_dir=Path(tmp) / "ckpt", observers=[log])
        t_end = time.perf_counter()
    sampler.stop()
    ray.shutdown()

    samples = [s for s in sampler.samples if s["t"] <= t_end]
    batches = result.metrics[log.name]
    minute = 60.0
    rows_out = []
    for k in range(int((t_end - t0) // minute) + 1):
        lo, hi = t0 + k * minute, min(t_end, t0 + (k + 1) * minute)
        if hi - lo < 10:
            continue
        win = [s for s in samples if lo <= s["t"] < hi]
        done = [b for b in batches if lo <= b[0] < hi]
        rows_out.append({"minute": k + 1, "events_per_s": sum(b[2] for b in done) / (hi - lo),
                         "batches": len(done),
                         "rss_mib": (_median([s["total"] for s in win]) or 0) / MIB,
                         "pss_mib": (_median([s["pss"] for s in win if s["pss"]]) or 0) / MIB,
                         "store_mib": (_median([s["store"] for s in win if s["store"] is not None]) or 0) / MIB,
                         "actors": max((s["n_actors"] for s in win), default=0)})
    warm_lo = t0 + args.warmup_min * minute
    warm = [s for s in samples if warm_lo <= s["t"] < warm_lo + minute]
    end = [s for s in samples if s["t"] >= t_end - minute]
    growth = {}
    for key in ("total", "pss"):
        w = _median([s[key] for s in warm if s[key]])
        e = _median([s[key] for s in end if s[key]])
        growth[key] = {"warm_mib": w / MIB if w else None, "end_mib": e / MIB if e else None,
                       "growth_pct": 100.0 * (e / w - 1) if w and e else None}
    post = [s for s in samples if s["t"] >= warm_lo]
    slope = None
    if len(post) > 2:
        xs = [(s["t"] - t0) / minute for s in post]
        ys = [s["total"] / MIB for s in post]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None

    print(f"{'min':>4} {'events/s':>9} {'batches':>8} {'RSS MiB':>8} {'PSS MiB':>8} {'store MiB':>9}")
    for r in rows_out:
        print(f"{r['minute']:>4} {r['events_per_s']:>9,.0f} {r['batches']:>8} {r['rss_mib']:>8.0f} "
              f"{r['pss_mib']:>8.0f} {r['store_mib']:>9.1f}")
    g, p = growth["total"], growth["pss"]
    verdict = "flat" if g["growth_pct"] is not None and g["growth_pct"] < 5 else "GROWS"
    print(f"RSS after warm-up {g['warm_mib']:.0f} MiB -> end {g['end_mib']:.0f} MiB: growth "
          f"{g['growth_pct']:+.2f} % ({verdict}; goal < 5 %); PSS {p['growth_pct']:+.2f} %; "
          f"slope {slope:+.2f} MiB/min" if g["growth_pct"] is not None and slope is not None
          else "not enough samples for a growth figure")
    print(f"{result.rows:,} events in {result.batches:,} batches, {result.seconds:.0f} s; "
          f"restarts {result.extra.get('restarts')}; tracking {result.extra.get('tracking')}")
    info["loadavg_at_end"] = _loadavg()
    doc = {"benchmark": "soak", "protocol": vars(args), "machine": info, "rows": result.rows,
           "batches": result.batches, "seconds": result.seconds, "per_minute": rows_out, "growth": growth,
           "slope_mib_per_min": slope, "tracking": result.extra.get("tracking"),
           "sampler_errors": sampler.errors}
    print(f"results: {write_json(doc, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
