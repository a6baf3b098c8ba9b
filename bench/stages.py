"""Stage throughput: events/s of single pipeline steps, each beside its natural limit.

Every stage is timed on its own, outside any runner, on data built once before the
timings. Next to it, in the same run and on the same data, the script times the
cheapest code that does the same core work with the library underneath (the
*limit*). The ratio ``ours/limit`` (events/s over events/s) is then what the tideflow
layer keeps of that library's speed: 1.00 means no cost, 0.50 means half as fast.
A ratio above 1 comes from noise (a busy machine, the page cache for the recording
lines) or from a limit that does work ours skips; see each line below.

Stages and their limits:

* **validate**: ``Validate(schema)`` (the source's schema, offset checks on) over
  ``friedman-drift`` batches of each ``--batch-sizes``, clean, and with about 1 % of
  rows malformed (a NaN, an inf or a null in one feature column, in equal shares),
  which sends those rows to quarantine. Limit: bare pyarrow on the same batches:
  ``pc.cast`` of every declared column to its declared type, a ``pc.is_finite`` /
  validity mask over them, ``filter`` when a row is bad, and the record batch
  rebuilt under the schema. It builds no quarantine records and checks no offsets;
  the line ``validate, no offset check`` (``check_offsets=False``) shows what the
  per-row offset check costs.
* **drift, ADWIN**: ``RiverDetector("ADWIN").update(errors, offsets=...)``, one call
  per batch, on per-row absolute errors (``|y - X w|`` of a least-squares fit on the
  first 10 % of the stream, so the errors jump when the stream drifts). Limit:
  River's own loop ``for v in values: adwin.update(v)`` on the same values, per
  batch (``values.tolist()`` included, as ours converts too). A second line compares
  with the River loop that also reads ``adwin.drift_detected`` after each value,
  which any caller that acts on a detection must do; both must count the same
  detections.
* **drift, DetectDrift**: the ``DetectDrift(on="x0")`` operator (``process`` +
  ``drain`` per batch) against the River loop on that column's values.
* **VarianceHorizon**: ``VarianceHorizon(on="value", key="key")`` with its defaults
  (alpha 0.97, min_window 48, step 24, max_window 1200) over an hourly-like series
  (daily cycle, noise whose level changes every few days) of 2 keys, interleaved,
  48 rows (one day of both keys) per batch. Limit: the bare ``variance_horizon``
  function called for every row on the same windows, without the operator (no
  grouping by key, no history concatenation, no output column); both must give the
  same look-backs.
* **recording write / read**: ``record(MemorySource(batches), path)`` (the
  ``RecordingWriter`` with its checks) and ``RecordingSource(path).batches()`` against
  ``pa.ipc.new_stream(...).write_batch`` and ``pa.ipc.open_stream(pa.memory_map(path))``
  on the same batches and the same file.

Protocol: the ``friedman-drift`` stream (seed 0) of ``--events`` rows is generated
once (not timed) and sliced into batches. Each stage is run ``--repeats`` times,
ours and the limit alternating, each pass with a fresh operator (the operators keep
state: offsets, detector windows, histories); the table shows the median events/s,
the JSON keeps every pass.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/stages.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/stages.py --events 20000 --repeats 3

There is no pass/fail; the numbers go to the terminal and to ``--json``
(default ``bench/results/stages.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file from anywhere, without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

import tideflow as tf  # noqa: E402
from tideflow.connectors.base import MemorySource  # noqa: E402
from tideflow.connectors.recording import RecordingSource, record  # noqa: E402
from tideflow.stream.drift import DetectDrift, RiverDetector  # noqa: E402
from tideflow.stream.reduce import VarianceHorizon, variance_horizon  # noqa: E402
from tideflow.stream.schema import Schema  # noqa: E402
from tideflow.stream.validate import Validate  # noqa: E402

from _common import _fmt_eps, _fmt_ratio, _loadavg, _median, machine_info, write_json  # noqa: E402

STREAM = "friedman-drift"
SEED = 0
BAD_FRACTION = 0.01
VH_BATCH = 48  # one day of 2 hourly keys
VH_KEYS = ("a", "b")


# -- data -------------------------------------------------------------------------------

def make_stream(events: int) -> tuple[pa.RecordBatch, Schema, str]:
    """The friedman-drift stream as one record batch (generated once, not timed)."""
    src = tf.SyntheticSource(STREAM, n=events, batch_size=8192, seed=SEED)
    parts = [b.data for b in src.batches()]
    data = pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
    return data, src.schema(), src.stream_id


def make_dirty(data: pa.RecordBatch, features: list[str], fraction: float,
               seed: int = 1) -> tuple[pa.RecordBatch, int]:
    """A copy with ``fraction`` of the rows broken in one feature column: NaN, inf or null."""
    rng = np.random.default_rng(seed)
    n = data.num_rows
    bad = np.sort(rng.choice(n, size=max(1, int(round(n * fraction))), replace=False))
    which_col = rng.integers(0, len(features), size=len(bad))
    kind = np.arange(len(bad)) % 3  # 0 NaN, 1 inf, 2 null
    arrays = []
    for name in data.schema.names:
        col = data.column(name)
        if name in features:
            j = features.index(name)
            rows = bad[which_col == j]
            kinds = kind[which_col == j]
            values = col.to_numpy(zero_copy_only=False).copy()
            values[rows[kinds == 0]] = np.nan
            values[rows[kinds == 1]] = np.inf
            mask = np.zeros(n, dtype=bool)
            mask[rows[kinds == 2]] = True
            col = pa.array(values, mask=mask, type=pa.float64())
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=data.schema.names), len(bad)


def split(data: pa.RecordBatch, size: int, stream_id: str) -> list[tf.Batch]:
    return [tf.Batch(data.slice(i, size), stream_id) for i in range(0, data.num_rows, size)]


def abs_errors(data: pa.RecordBatch, features: list[str]) -> np.ndarray:
    """Per-row |y - X w| of a least-squares fit on the first 10 % (errors grow after a drift)."""
    x = np.column_stack([data.column(f).to_numpy() for f in features] + [np.ones(data.num_rows)])
    y = data.column("y").to_numpy()
    k = max(len(features) + 2, data.num_rows // 10)
    w, *_ = np.linalg.lstsq(x[:k], y[:k], rcond=None)
    return np.abs(y - x @ w)


def hourly_series(rows: int, seed: int = 2) -> pa.RecordBatch:
    """Two interleaved hourly-like series: a daily cycle plus noise whose level changes every 3-12 days."""
    rng = np.random.default_rng(seed)
    hours = max(1, rows // len(VH_KEYS))
    cols: list[np.ndarray] = []
    for k in range(len(VH_KEYS)):
        t = np.arange(hours)
        level = np.empty(hours)
        i = 0
        while i < hours:
            span = int(rng.integers(3, 13)) * 24
            level[i:i + span] = rng.choice([0.3, 1.0, 3.0])
            i += span
        cols.append(10 + 5 * k + 4 * np.sin(2 * np.pi * t / 24) + level * rng.standard_normal(hours))
    values = np.column_stack(cols).reshape(-1)  # hour 0 a, hour 0 b, hour 1 a, ...
    keys = np.tile(np.array(VH_KEYS), hours)
    return tf.Batch.from_pydict({"key": keys, "value": values}).data


# -- the passes: each returns (rows, check) and builds fresh state -----------------------

def validate_ours(batches: list[tf.Batch], schema: Schema, *, check_offsets: bool = True) -> tuple[int, Any]:
    v = Validate(schema, check_offsets=check_offsets)
    kept = 0
    for b in batches:
        out = v.process(b)
        v.drain()
        if out is not None:
            kept += len(out)
    return sum(len(b) for b in batches), kept


def validate_arrow(batches: list[tf.Batch], schema: Schema) -> tuple[int, Any]:
    """The limit: cast each declared column, a finite/valid mask, filter, rebuild."""
    target = schema.arrow_schema()
    fields = list(target)
    floats = {f.name for f in fields if pa.types.is_floating(f.type)}
    kept = 0
    rows = 0
    for b in batches:
        rb = b.data
        rows += rb.num_rows
        cols = [pc.cast(rb.column(f.name), f.type, safe=True) for f in fields]
        ok = None
        for f, col in zip(fields, cols):
            if f.name in floats:
                m = pc.is_finite(col)  # null stays null, filled below
            elif col.null_count:
                m = pc.is_valid(col)
            else:
                continue
            ok = m if ok is None else pc.and_(ok, m)
        out = pa.RecordBatch.from_arrays(cols, schema=target)
        if ok is not None:
            ok = pc.fill_null(ok, False)
            if not pc.all(ok).as_py():
                out = out.filter(ok)
        kept += out.num_rows
    return rows, kept


def adwin_ours(chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, Any]:
    d = RiverDetector("ADWIN", statistic="abs_error")
    rows = 0
    for values, offsets in chunks:
        d.update(values, offsets=offsets, stream_id="s")
        rows += len(values)
    return rows, d.n_detections


def adwin_river(chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, Any]:
    from river import drift

    adwin = drift.ADWIN()
    rows = 0
    for values, _ in chunks:
        for v in values.tolist():
            adwin.update(v)
        rows += len(values)
    return rows, None


def adwin_river_checked(chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, Any]:
    from river import drift

    adwin = drift.ADWIN()
    rows = 0
    found = 0
    for values, _ in chunks:
        for v in values.tolist():
            adwin.update(v)
            if adwin.drift_detected:
                found += 1
        rows += len(values)
    return rows, found


def detect_ours(batches: list[tf.Batch], column: str) -> tuple[int, Any]:
    op = DetectDrift(on=column, detector="ADWIN")
    events = 0
    for b in batches:
        op.process(b)
        events += len(op.drain().drift_events)
    return sum(len(b) for b in batches), events


def detect_river(batches: list[tf.Batch], column: str) -> tuple[int, Any]:
    from river import drift

    adwin = drift.ADWIN()
    found = 0
    for b in batches:
        for v in b.column(column).to_numpy(zero_copy_only=False).tolist():
            adwin.update(v)
            if adwin.drift_detected:
                found += 1
    return sum(len(b) for b in batches), found


def vh_ours(batches: list[tf.Batch]) -> tuple[int, Any]:
    op = VarianceHorizon(on="value", key="key")
    for b in batches:
        op.process(b)
    return op.rows_seen, op.lookback_sum


def vh_bare(series: dict[str, np.ndarray], rows: int) -> tuple[int, Any]:
    """The limit: the rule itself per row, over each key's precomputed history."""
    op = VarianceHorizon(on="value")  # only for its default parameters
    total = 0
    for values in series.values():
        for end in range(1, len(values) + 1):
            total += variance_horizon(values[max(0, end - op.max_window):end], alpha=op.alpha,
                                      min_window=op.min_window, step=op.step)
    return rows, total


def write_ours(batches: list[tf.Batch], schema: Schema, path: Path) -> tuple[int, Any]:
    info = record(MemorySource(batches, schema), path, progress=False)
    return info["rows"], path.stat().st_size


def write_arrow(batches: list[tf.Batch], schema: pa.Schema, path: Path) -> tuple[int, Any]:
    rows = 0
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, schema) as w:
        for b in batches:
            w.write_batch(b.data)
            rows += len(b)
    return rows, path.stat().st_size


def read_ours(path: Path) -> tuple[int, Any]:
    return sum(len(b) for b in RecordingSource(path).batches()), None


def read_arrow(path: Path) -> tuple[int, Any]:
    rows = 0
    with pa.memory_map(str(path), "r") as mm:
        for rb in pa.ipc.open_stream(mm):
            rows += rb.num_rows
    return rows, None


# -- timing -------------------------------------------------------------------------------

def side_by_side(ours: Callable[[], tuple[int, Any]], limits: dict[str, Callable[[], tuple[int, Any]]],
                 repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Run ours and each limit ``repeats`` times, alternating; seconds, rows and check values of each pass."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], **{k: [] for k in limits}}
    fns = {"ours": ours, **limits}
    for i in range(repeats):
        order = list(fns) if i % 2 == 0 else list(fns)[::-1]  # alternate who goes first
        for name in order:
            t = time.perf_counter()
            rows, check = fns[name]()
            s = time.perf_counter() - t
            runs[name].append({"seconds": s, "rows": rows, "eps": rows / s if s > 0 else None, "check": check})
    return runs


def _eps(passes: list[dict[str, Any]]) -> float | None:
    return _median([p["eps"] for p in passes])


# -- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000,
                    help=f"{STREAM} events generated and used by the validate, drift and recording stages "
                         "(default 100000)")
    ap.add_argument("--vh-events", type=int, default=12_000,
                    help="rows of the hourly series for VarianceHorizon, both keys together (default 12000)")
    ap.add_argument("--batch-sizes", default="1024,8192", help="comma-separated (default 1024,8192)")
    ap.add_argument("--repeats", type=int, default=5, help="passes per measurement; medians are shown (default 5)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "stages.json"),
                    help="where to write the results (default bench/results/stages.json)")
    args = ap.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.events < 100 or args.vh_events < 2 or args.repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        ap.error("--events must be >= 100, --vh-events >= 2, --repeats and batch sizes >= 1")

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    wall0 = time.perf_counter()
    info = machine_info()
    console.print(f"[bold]stage throughput[/]: {STREAM} seed={SEED}, {args.events:,} events, "
                  f"batch sizes {batch_sizes}, repeats {args.repeats}, "
                  f"{info['cpu_affinity'] or info['cpu_count']} CPUs, python {info['python']}, "
                  f"pyarrow {info['pyarrow']}, river {info['river']}, load average {info['loadavg_at_start']}")

    t = time.perf_counter()
    data, schema, stream_id = make_stream(args.events)
    features = schema.feature_names
    dirty, n_bad = make_dirty(data, features, BAD_FRACTION)
    errors = abs_errors(data, features)
    offsets = data.column("offset").to_numpy()
    gen_s = time.perf_counter() - t
    console.print(f"generated {data.num_rows:,} events ({n_bad} made malformed in a copy) in {gen_s:.1f} s")

    rows_out: list[dict[str, Any]] = []

    def add(stage: str, variant: str, bs: int | None, runs: dict[str, list[dict[str, Any]]], limit: str,
            limit_label: str, note: str = "") -> dict[str, Any]:
        ours_eps, limit_eps = _eps(runs["ours"]), _eps(runs[limit])
        row = {"stage": stage, "variant": variant, "batch_size": bs, "events": runs["ours"][0]["rows"],
               "ours_eps": ours_eps, "limit": limit_label, "limit_eps": limit_eps,
               "ours_over_limit": ours_eps / limit_eps if ours_eps and limit_eps else None,
               "ours_check": runs["ours"][0]["check"], "limit_check": runs[limit][0]["check"], "note": note,
               "passes": {"ours": runs["ours"], limit: runs[limit]}}
        rows_out.append(row)
        console.print(f"  {stage:<25} {variant:<23} batch {bs if bs is not None else '-':>5}: "
                      f"ours {_fmt_eps(ours_eps):>10}/s  limit {_fmt_eps(limit_eps):>10}/s  "
                      f"ratio {_fmt_ratio(ours_eps, limit_eps)}")
        return row

    # validation ------------------------------------------------------------------------
    for bs in batch_sizes:
        for label, rb in (("clean", data), (f"{BAD_FRACTION:.0%} malformed", dirty)):
            batches = split(rb, bs, stream_id)
            runs = side_by_side(lambda: validate_ours(batches, schema),
                                {"arrow": lambda: validate_arrow(batches, schema),
                                 "ours_no_offsets": lambda: validate_ours(batches, schema, check_offsets=False)},
                                args.repeats)
            row = add("validate", label, bs, runs, "arrow", "pyarrow cast + is_finite + filter")
            if row["ours_check"] != row["limit_check"]:
                console.print(f"[yellow]    rows kept differ: ours {row['ours_check']}, pyarrow {row['limit_check']}")
            nrow = add("validate, no offset check", label, bs,
                       {"ours": runs["ours_no_offsets"], "arrow": runs["arrow"]}, "arrow",
                       "pyarrow cast + is_finite + filter")
            nrow["passes"]["ours_with_offsets"] = runs["ours"]

    # drift ------------------------------------------------------------------------------
    for bs in batch_sizes:
        chunks = [(errors[i:i + bs], offsets[i:i + bs]) for i in range(0, len(errors), bs)]
        runs = side_by_side(lambda: adwin_ours(chunks),
                            {"river": lambda: adwin_river(chunks),
                             "river_checked": lambda: adwin_river_checked(chunks)},
                            args.repeats)
        add("drift ADWIN (|error|)", "RiverDetector.update", bs, runs, "river",
            "river: for v: adwin.update(v)")
        r = add("drift ADWIN (|error|)", "RiverDetector.update", bs,
                {"ours": runs["ours"], "river_checked": runs["river_checked"]}, "river_checked",
                "river loop + drift_detected check")
        if r["ours_check"] != r["limit_check"]:
            console.print(f"[yellow]    detections differ: ours {r['ours_check']}, river {r['limit_check']}")
    for bs in batch_sizes:
        batches = split(data, bs, stream_id)
        runs = side_by_side(lambda: detect_ours(batches, "x0"), {"river": lambda: detect_river(batches, "x0")},
                            args.repeats)
        r = add("drift DetectDrift(x0)", "process + drain", bs, runs, "river",
                "river loop on the column + check")
        if r["ours_check"] != r["limit_check"]:
            console.print(f"[yellow]    detections differ: ours {r['ours_check']}, river {r['limit_check']}")

    # Variance Horizon -----------------------------------------------------------------------
    series_rb = hourly_series(args.vh_events)
    vh_batches = split(series_rb, VH_BATCH, "hourly")
    keys = np.asarray(series_rb.column("key").to_pylist())
    values = series_rb.column("value").to_numpy()
    per_key = {k: values[keys == k] for k in VH_KEYS}
    runs = side_by_side(lambda: vh_ours(vh_batches), {"bare": lambda: vh_bare(per_key, series_rb.num_rows)},
                        args.repeats)
    r = add("VarianceHorizon", f"{len(VH_KEYS)} keys, hourly", VH_BATCH, runs, "bare",
            "bare variance_horizon() per row")
    r["mean_lookback"] = r["ours_check"] / series_rb.num_rows if r["ours_check"] else None
    if r["ours_check"] != r["limit_check"]:
        console.print(f"[yellow]    look-backs differ: ours sum {r['ours_check']}, bare sum {r['limit_check']}")

    # recording -------------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="tideflow-bench-stages-") as tmp:
        tmpdir = Path(tmp)
        ours_path, arrow_path = tmpdir / "ours.arrows", tmpdir / "arrow.arrows"
        arrow_schema = schema.arrow_schema()
        for bs in batch_sizes:
            batches = split(data, bs, stream_id)
            runs = side_by_side(lambda: write_ours(batches, schema, ours_path),
                                {"arrow": lambda: write_arrow(batches, arrow_schema, arrow_path)},
                                args.repeats)
            add("recording write", "record(MemorySource)", bs, runs, "arrow", "pa.ipc.new_stream write_batch",
                note=f"file bytes ours {runs['ours'][0]['check']:,}, pyarrow {runs['arrow'][0]['check']:,}")
            write_ours(batches, schema, ours_path)  # the file both readers read
            runs = side_by_side(lambda: read_ours(ours_path), {"arrow": lambda: read_arrow(ours_path)},
                                args.repeats)
            add("recording read", "RecordingSource.batches", bs, runs, "arrow", "pa.ipc.open_stream(memory_map)")

    total_s = time.perf_counter() - wall0
    table = Table(title=f"stage throughput, events/s (median of {args.repeats}); ratio = ours / limit")
    for col in ("stage", "variant", "batch", "events", "ours ev/s", "limit", "limit ev/s", "ours/limit"):
        table.add_column(col, justify="left" if col in ("stage", "variant", "limit") else "right")
    for r in rows_out:
        table.add_row(r["stage"], r["variant"], str(r["batch_size"]), f"{r['events']:,}", _fmt_eps(r["ours_eps"]),
                      r["limit"], _fmt_eps(r["limit_eps"]), _fmt_ratio(r["ours_eps"], r["limit_eps"]))
    console.print(table)
    vh = next(r for r in rows_out if r["stage"] == "VarianceHorizon")
    if vh.get("mean_lookback") is not None:
        console.print(f"VarianceHorizon mean look-back {vh['mean_lookback']:.0f} rows (max_window 1200)")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']} (other processes on the machine skew the numbers)")

    doc = {
        "benchmark": "stages",
        "description": "events/s of single pipeline stages (Validate, RiverDetector/DetectDrift, "
                       "VarianceHorizon, recording write/read), each beside the bare library code doing "
                       "the same core work",
        "protocol": {
            "stream": STREAM, "seed": SEED, "events": args.events, "batch_sizes": batch_sizes,
            "repeats": args.repeats, "statistic": "median", "order": "ours and limits alternate per pass",
            "malformed_fraction": BAD_FRACTION, "malformed_rows": n_bad,
            "malformed_kinds": "NaN, inf, null in one feature column, in equal shares",
            "adwin_values": "|y - X w|, w least squares on the first 10 % of the stream",
            "vh_events": series_rb.num_rows, "vh_batch": VH_BATCH, "vh_keys": list(VH_KEYS),
            "vh_params": {"alpha": 0.97, "min_window": 48, "step": 24, "max_window": 1200},
        },
        "machine": info,
        "generate_seconds": gen_s,
        "total_seconds": total_s,
        "rows": rows_out,
    }
    out = write_json(doc, args.json)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
