"""Learning cost per strategy: samples/s learned, predict latency per batch, peak memory.

Every strategy runs in a fresh Python subprocess of its own (this script, started again
with ``--worker NAME``), so that the peak resident memory it reports
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that strategy's alone: the
interpreter, the libraries the strategy imports (torch and Avalanche weigh hundreds of
MiB), its data and its model. Within a worker the protocol is prequential, as in a
pipeline: for each batch ``predict`` is timed, then ``learn`` is timed.

Strategies and data (one data set per task; the strategies of a task see the same
batches, generated from fixed seeds in each worker):

================  ==========================================================  =================
row               strategy                                                    data
================  ==========================================================  =================
river-linear      ``RiverStrategy(StandardScaler | LinearRegression)``        friedman-drift
river-hoeffding   ``RiverStrategy(HoeffdingTreeClassifier)``                  sea-drift
aval-naive        ``AvalancheStrategy("Naive")``, MLP 3-16-2, SGD lr 0.1      sea-drift
aval-replay       ``AvalancheStrategy("Replay", mem_size=200)``               sea-drift
aval-ewc          ``AvalancheStrategy("EWC", ewc_lambda=0.5)``                sea-drift
aval-lwf          ``AvalancheStrategy("LwF", alpha=0.5, temperature=2)``      sea-drift
il-refit          ``IncrementalRefit(window 16, pretrain 192, B=48)``         daily profile
liquid-cfc        ``LiquidForecaster(cell="cfc", window 16, pretrain 192)``   daily profile
nowcast-gbm       ``NowcastGBM(window 240, 6 horizons, 6 lags, 40 trees)``    hourly series
nowcast-mlp       ``NowcastMLP(window 240, 6 horizons, 6 lags, hidden 128)``  hourly series
================  ==========================================================  =================

The classification, regression, series and hourly data are the synthetic sources the
tests use (``SyntheticSource("sea-drift" | "friedman-drift")``, the daily load profile of
``tests/strategies/test_forecasting.py``, the hourly series with a timestamp column of
``tests/strategies/test_nowcast.py``). ``--scale`` multiplies the stream lengths.

Columns:

* **samples/s**: rows through ``learn`` / seconds spent in ``learn``, over every batch
  but the first; the first batch's ``predict`` + ``learn`` (model construction, lazy
  set-up, the CUDA context) is shown apart as **1st batch s**. For the forecasters and nowcasters the learn time
  is almost all model fits, which happen every B samples (re-fitting) or every batch
  (``retrain="always"``), so their samples/s is "stream rows absorbed per second of
  fitting", not a per-row update cost.
* **learn ms/batch**: the median ``learn`` call; **late/early**: mean ``learn`` time of
  the last quarter of the batches over the first quarter (counting the batches after
  the one that made the first fit, so pretraining is left out), which
  shows a cost that grows with the stream (Avalanche EWC's default ``mode="separate"``
  keeps one penalty term per experience, and here every batch is an experience).
* **predict p50 / p95 ms**: latency of one ``predict`` call on one batch, over the
  batches where a model had been fitted before the call (before that the forecasters
  answer with persistence, which is not the cost of the model).
* **peak RSS MiB**: ``ru_maxrss`` of the worker at the end; **import s**: the worker's
  time to import tideflow and what the strategy needs (also what a Ray actor pays).
* **quality**: prequential accuracy (classifiers) or MAE (regressors, forecasters) over
  the same batches as the predict latencies, scored by the engine's own
  ``evaluation.score`` into a ``Scores`` total (what a pipeline's learn step reports);
  a sanity check, not a leaderboard. The scoring is outside the timed calls.

``--device cuda`` runs the strategies that can use a GPU (the Avalanche ones; their
adapter takes ``device="auto"|"cpu"|"cuda"`` and picks CUDA when
``torch.cuda.is_available()``) on the GPU, with ``torch.cuda.synchronize()`` inside the
timed ``learn``; the others are shown as n/a. On CPU the Avalanche strategies are given
``device="cpu"`` explicitly, so a GPU machine's CPU run stays on the CPU.
``--ray-check`` adds a short Ray run (sea-drift through an Avalanche learn step with
``num_gpus=1`` under ``--device cuda``, and ``num_gpus=0`` in any case) that reports
what the learn actor saw: ``torch.cuda.is_available()`` and the device of the model.
``--compare CPU.json CUDA.json`` prints two result files side by side and exits.
``--budget S`` caps the run's wall time: strategies not started when it is spent are
reported as skipped (``bench/gpu_check.sh`` uses it on a short GPU lease); the JSON is
rewritten after every strategy, so a run stopped from outside keeps what it measured.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/learning_cost.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/learning_cost.py --strategies aval-naive,aval-ewc --scale 2
    .venv/bin/python bench/learning_cost.py --device cuda --ray-check --json /tmp/lc_cuda.json

Reading the numbers: samples/s of strategies of the same task compare directly (same
batches); across tasks they compare costs of very different work. A cuda/cpu ratio
above 1 means the GPU learns faster; with a 3-16-2 MLP and minibatches of 32 the GPU is
expected to lose (kernel launches and copies dominate), which is itself the answer to
"does a GPU help this workload". Peak RSS is dominated by imports: ~200 MiB for River
and scikit-learn, ~750 MiB once torch is loaded, ~1 GiB with Avalanche, whatever the
model. Each batch is one Avalanche experience, so strategies whose state grows per
experience get slower as the stream goes on: EWC (one penalty per experience) shows it
in late/early; Replay's default experience-balanced buffer keeps a group per
experience and resizes all of them after each one. There is no pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

_T_START = time.perf_counter()

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
for _p in (str(REPO), str(BENCH)):
    if _p not in sys.path:  # run as a file from anywhere, without installing
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

import tideflow as tf  # noqa: E402
from tideflow.pipelines.evaluation import Scores, score  # noqa: E402
from tideflow.stream.batch import Batch  # noqa: E402
from tideflow.stream.schema import Schema  # noqa: E402

from _common import RESULTS, _loadavg, machine_info, peak_rss_mb, rss_mb, write_json  # noqa: E402

_RESULT_MARK = "@@learning_cost@@ "
SEED = 0

# -- data ------------------------------------------------------------------------------------
# Each returns (batches, schema); the sizes are scaled by --scale.


def data_sea(scale: float) -> tuple[list[Batch], Schema]:
    """sea-drift (3 features, 0/1 label), batches of 256 rows: the classification stream."""
    src = tf.SyntheticSource("sea-drift", n=max(4, round(20 * scale)) * 256, batch_size=256, seed=SEED)
    return list(src), src.schema()


def data_friedman(scale: float) -> tuple[list[Batch], Schema]:
    """friedman-drift (10 features, float target), batches of 500 rows: the regression stream."""
    src = tf.SyntheticSource("friedman-drift", n=max(4, round(20 * scale)) * 500, batch_size=500, seed=SEED)
    return list(src), src.schema()


PERIOD, PRETRAIN = 96, 192


def data_profile(scale: float) -> tuple[list[Batch], Schema]:
    """The daily-like profile of tests/strategies/test_forecasting.py (period 96, a level
    shift at 3/4), after 192 pretraining samples; batches of 4 steps."""
    n = PRETRAIN + max(96, round(384 * scale))
    t = np.arange(n)
    rng = np.random.default_rng(SEED)
    y = 2.0 + np.sin(2 * np.pi * t / PERIOD) + 0.3 * np.sin(4 * np.pi * t / PERIOD + 1.0)
    y = y + 0.02 * rng.normal(size=n)
    y[(3 * n) // 4:] += 1.0
    batches = [Batch.from_pydict({"y": y[i:i + 4]}, first_offset=i) for i in range(0, n, 4)]
    return batches, Schema({"y": "float64"}, target="y")


NOWCAST_WINDOW = 240


def data_hourly(scale: float) -> tuple[list[Batch], Schema]:
    """The hourly series of tests/strategies/test_nowcast.py (daily cycle, trend, noise, a
    covariate x) with a UTC timestamp column; one day (24 rows) per batch."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa

    n = NOWCAST_WINDOW + 24 * max(2, round(8 * scale))
    t = np.arange(n)
    rng = np.random.default_rng(SEED)
    y = 10 * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(scale=0.3, size=n)
    x = np.cos(2 * np.pi * t / 24) + rng.normal(scale=0.05, size=n)
    t0 = datetime(2013, 1, 1, tzinfo=timezone.utc)
    ts_type = pa.timestamp("s", tz="UTC")
    batches = []
    for i in range(0, n, 24):
        sl = slice(i, i + 24)
        batches.append(Batch.from_pydict({
            "timestamp": pa.array([t0 + timedelta(hours=int(h)) for h in t[sl]], type=ts_type),
            "x": x[sl], "y": y[sl]}, first_offset=i))
    schema = Schema({"timestamp": ts_type, "x": "float64", "y": "float64"}, target="y", time="timestamp")
    return batches, schema


DATA: dict[str, tuple[Callable[[float], tuple[list[Batch], Schema]], str]] = {
    "sea": (data_sea, "sea-drift, 256/batch"),
    "friedman": (data_friedman, "friedman-drift, 500/batch"),
    "profile": (data_profile, "daily profile, 4/batch"),
    "hourly": (data_hourly, "hourly series, 24/batch"),
}

# -- strategies ------------------------------------------------------------------------------
# name -> (data key, gpu-capable, modules to import up front, builder(device) -> Strategy)


def _river_linear(device: str) -> Any:
    from river import linear_model, preprocessing

    return tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression())


def _river_tree(device: str) -> Any:
    from river import tree

    return tf.RiverStrategy(tree.HoeffdingTreeClassifier())


AVALANCHE = {"aval-naive": ("Naive", {}), "aval-replay": ("Replay", {"mem_size": 200}),
             "aval-ewc": ("EWC", {"ewc_lambda": 0.5}), "aval-lwf": ("LwF", {"alpha": 0.5, "temperature": 2.0})}
#: the small MLP of tests/strategies/test_avalanche_adapter.py (adapter defaults: 1 epoch, minibatch 32)
AVALANCHE_PARAMS = {"n_classes": 2, "hidden": 16, "lr": 0.1, "seed": 1}


def _avalanche(name: str) -> Callable[[str], Any]:
    strategy, kwargs = AVALANCHE[name]

    def build(device: str) -> Any:
        return tf.AvalancheStrategy(strategy, strategy_kwargs=dict(kwargs), device=device, **AVALANCHE_PARAMS)

    return build


def _il(device: str) -> Any:
    return tf.IncrementalRefit(window=16, pretrain_steps=PRETRAIN, refit_every=48, epochs=5)


def _cfc(device: str) -> Any:
    return tf.LiquidForecaster(cell="cfc", window=16, pretrain_steps=PRETRAIN, epochs=5)


def _gbm(device: str) -> Any:
    return tf.NowcastGBM(window=NOWCAST_WINDOW, horizons=6, lags=6, max_iter=40)


def _nmlp(device: str) -> Any:
    return tf.NowcastMLP(window=NOWCAST_WINDOW, horizons=6, lags=6, hidden=128, epochs=5)


_AVALANCHE_MODULES = ("torch", "avalanche.training", "avalanche.training.plugins",
                      "avalanche.benchmarks.scenarios.dataset_scenario", "avalanche.benchmarks.utils",
                      "avalanche.benchmarks.utils.classification_dataset")
STRATEGIES: dict[str, tuple[str, bool, tuple[str, ...], Callable[[str], Any]]] = {
    "river-linear": ("friedman", False, ("river.linear_model",), _river_linear),
    "river-hoeffding": ("sea", False, ("river.tree",), _river_tree),
    **{name: ("sea", True, _AVALANCHE_MODULES, _avalanche(name)) for name in AVALANCHE},
    "il-refit": ("profile", False, ("torch",), _il),
    "liquid-cfc": ("profile", False, ("torch", "ncps.torch"), _cfc),
    "nowcast-gbm": ("hourly", False, ("sklearn.ensemble",), _gbm),
    "nowcast-mlp": ("hourly", False, ("torch",), _nmlp),
}


# -- the worker (one strategy, one process) -------------------------------------------------


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.quantile(np.asarray(values), q))


def worker(name: str, device: str, scale: float) -> dict[str, Any]:
    import importlib

    data_key, gpu, modules, build = STRATEGIES[name]
    out: dict[str, Any] = {"strategy": name, "device": device, "data": DATA[data_key][1]}
    t = time.perf_counter()
    for m in modules:
        importlib.import_module(m)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    out["import_s"] = time.perf_counter() - _T_START  # interpreter start to here: tideflow and the libraries
    out["import_libs_s"] = time.perf_counter() - t
    torch = sys.modules.get("torch")
    if device == "cuda":
        if not gpu:
            raise ValueError(f"{name} has no GPU path")
        if torch is None or not torch.cuda.is_available():
            version = getattr(torch, "__version__", None)
            built = getattr(getattr(torch, "version", None), "cuda", None)
            return {**out, "error": f"no CUDA: torch.cuda.is_available() is False (torch {version}, "
                                    f"built for CUDA {built})"}
        out["device_name"] = torch.cuda.get_device_name(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    batches, schema = DATA[data_key][0](scale)
    out["rss_before_mb"] = rss_mb()
    strategy = build(device if gpu else "cpu")
    strategy.bind(schema)
    target = strategy.target
    task = strategy.problem

    learn_s: list[float] = []
    predict_s: list[float] = []
    first_batch_s = None
    first_fit = 0  # index of the batch whose learn made the first fit
    fitted = False
    fits = 0
    # prequential quality scored as a pipeline's learn step scores it (the engine's `score`)
    quality = Scores()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in batches:
            t = time.perf_counter()
            pred = strategy.predict(batch)
            sync()
            dt_predict = time.perf_counter() - t
            if fitted:
                predict_s.append(dt_predict)
                quality.add(score(task, pred, batch.numpy(target))[0])
            t = time.perf_counter()
            report = strategy.learn(batch)
            sync()
            learn_s.append(time.perf_counter() - t)
            rows.append(len(batch))
            if fits == 0 and report.fits:
                first_fit = len(learn_s) - 1
            fits += report.fits
            if first_batch_s is None:  # model construction, lazy set-up, CUDA context: on the first batch
                first_batch_s = dt_predict + learn_s[0]
            fitted = fitted or fits > 0  # a model exists: from now on predict costs what the model costs
    net = getattr(strategy, "_net", None) if gpu else None
    out["model_device"] = str(next(net.parameters()).device) if net is not None else "cpu"

    rest_rows, rest_s = sum(rows[1:]), sum(learn_s[1:])
    tail = learn_s[1:]
    fitted_tail = learn_s[max(1, first_fit + 1):]  # the batches after the first fit: a model is being updated
    q = max(1, len(fitted_tail) // 4)
    early, late = ((statistics.fmean(fitted_tail[:q]), statistics.fmean(fitted_tail[-q:]))
                   if len(fitted_tail) >= 4 else (None, None))
    metrics = quality.metrics(task)  # accuracy for classifiers, mae for the rest; neither when nothing was scored
    out.update({
        "task": task,
        "batches": len(batches),
        "batch_size": rows[0] if rows else None,
        "rows": sum(rows),
        "rows_timed": rest_rows,
        "learn_seconds": rest_s,
        "samples_per_s": rest_rows / rest_s if rest_s > 0 else None,
        "first_batch_s": first_batch_s,
        "learn_ms_median": 1000 * statistics.median(tail) if tail else None,
        "late_over_early": late / early if early else None,
        "predict_calls_timed": len(predict_s),
        "predict_ms_p50": None if not predict_s else 1000 * _quantile(predict_s, 0.5),
        "predict_ms_p95": None if not predict_s else 1000 * _quantile(predict_s, 0.95),
        "fits": fits,
        "rows_scored": quality.n,
        "accuracy": metrics.get("accuracy"),
        "mae": metrics.get("mae"),
        "peak_rss_mb": peak_rss_mb(),
        "describe": strategy.describe() if hasattr(strategy, "describe") else type(strategy).__name__,
    })
    return out


def run_worker(name: str, device: str, scale: float, timeout: float) -> dict[str, Any]:
    """Start a fresh interpreter for one strategy and read its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--device", device,
           "--scale", repr(scale)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"strategy": name, "device": device, "error": f"timed out after {timeout:.0f} s",
                "wall_s": time.perf_counter() - t}
    wall = time.perf_counter() - t
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            res = json.loads(line[len(_RESULT_MARK):])
            res["wall_s"] = wall
            return res
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
    return {"strategy": name, "device": device, "error": f"worker exited {proc.returncode}: {tail}", "wall_s": wall}


# -- the Ray check ---------------------------------------------------------------------------


class DeviceProbe(tf.AvalancheStrategy):
    """An AvalancheStrategy that also reports, per learn call, what its process sees:
    ``torch.cuda.is_available()``, whether the model sits on CUDA and Ray's GPU ids.
    The counts are summed over batches into the run summary's ``extra``."""

    def learn(self, batch: Batch) -> Any:
        report = super().learn(batch)
        import torch

        report.extra["probe_cuda_available"] = float(torch.cuda.is_available())
        report.extra["probe_model_on_cuda"] = float(next(self._net.parameters()).is_cuda)
        try:
            import ray

            report.extra["probe_ray_gpu_ids"] = float(len(ray.get_gpu_ids()))
        except Exception:  # noqa: BLE001 - outside Ray, or Ray without GPUs
            report.extra["probe_ray_gpu_ids"] = 0.0
        report.extra["probe_calls"] = 1.0
        return report


def ray_check(num_gpus_list: list[float], console: Any,
              left: Callable[[], float] = lambda: float("inf")) -> list[dict[str, Any]]:
    from tideflow.pipelines.runners.ray_session import ensure_ray

    out = []
    t = time.perf_counter()
    ray = ensure_ray()
    init_s = time.perf_counter() - t
    console.print(f"ray.init {init_s:.1f} s; cluster resources: "
                  f"CPU={ray.cluster_resources().get('CPU')}, GPU={ray.cluster_resources().get('GPU', 0)}")
    for num_gpus in num_gpus_list:
        rec: dict[str, Any] = {"num_gpus": num_gpus, "ray_init_s": init_s}
        if left() < 15:
            rec["error"] = "skipped: --budget spent"
            console.print(f"[yellow]ray check num_gpus={num_gpus}: skipped, --budget spent")
            out.append(rec)
            continue
        if num_gpus > ray.cluster_resources().get("GPU", 0):
            rec["error"] = f"the Ray cluster has no GPU for num_gpus={num_gpus}"
            console.print(f"[yellow]ray check num_gpus={num_gpus}: skipped, {rec['error']}")
            out.append(rec)
            continue
        probe = DeviceProbe("Naive", device="auto", **AVALANCHE_PARAMS)
        pipeline = (tf.Pipeline("ray-gpu-check")
                    .source(tf.SyntheticSource("sea-drift", n=20 * 256, batch_size=256, seed=SEED))
                    .learn(probe, name="avalanche", num_gpus=num_gpus))
        with tempfile.TemporaryDirectory(prefix="tideflow-bench-") as tmp:
            t = time.perf_counter()
            try:
                result = pipeline.run(runner="ray", tracking=False, progress=False, output_dir=tmp)
            except Exception as exc:  # noqa: BLE001 - reported, the bench goes on
                rec["error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]ray check num_gpus={num_gpus}: {rec['error']}")
                out.append(rec)
                continue
            wall = time.perf_counter() - t
        s = result.summary["avalanche"]
        extra = s.get("extra", {})
        calls = int(extra.get("probe_calls", 0))
        rec.update({
            "wall_s": wall, "rows": result.rows, "events_per_s": result.events_per_second,
            "accuracy": s.get("accuracy"), "train_seconds": s.get("train_seconds"), "learn_calls": calls,
            "actor_cuda_available_calls": int(extra.get("probe_cuda_available", 0)),
            "actor_model_on_cuda_calls": int(extra.get("probe_model_on_cuda", 0)),
            "actor_ray_gpu_ids": (extra.get("probe_ray_gpu_ids", 0) / calls) if calls else None,
            "errors": s.get("errors"), "first_error": s.get("first_error"),
        })
        where = "CUDA" if calls and rec["actor_model_on_cuda_calls"] == calls else "CPU"
        console.print(
            f"ray check num_gpus={num_gpus}: learn actor ran on [bold]{where}[/]: "
            f"torch.cuda.is_available() True in {rec['actor_cuda_available_calls']}/{calls} learn calls, "
            f"model on cuda in {rec['actor_model_on_cuda_calls']}/{calls}, ray GPU ids per actor "
            f"{rec['actor_ray_gpu_ids']}; {result.rows:,} rows in {wall:.1f} s (actor start-up included), "
            f"accuracy {rec['accuracy']}, errors {rec['errors']}")
        out.append(rec)
        time.sleep(0.5)
    ray.shutdown()
    return out


# -- tables ----------------------------------------------------------------------------------


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _short(r: dict[str, Any] | None) -> str:
    """What stands in a table cell for a row that was not measured."""
    if not r:
        return "-"
    if r.get("na"):
        return "n/a (CPU only)"
    err = str(r.get("error", ""))
    return "no CUDA" if err.startswith("no CUDA") else "skipped" if err.startswith("skipped") else "error"


def results_table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    cols = [("strategy", "left"), ("data", "left"), ("rows", "right"), ("samples/s", "right"),
            ("learn ms/batch", "right"), ("late/early", "right"), ("1st batch s", "right"),
            ("predict p50 ms", "right"), ("predict p95 ms", "right"), ("peak RSS MiB", "right"),
            ("import s", "right"), ("quality", "right")]
    for c, j in cols:
        table.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in rows:
        if r.get("error") or r.get("na"):
            table.add_row(r["strategy"], r.get("data") or "-", "-", _short(r), *["-" for _ in cols[4:]])
            continue
        quality = (f"acc {r['accuracy']:.3f}" if r.get("accuracy") is not None
                   else f"MAE {r['mae']:.3f}" if r.get("mae") is not None else "-")
        table.add_row(r["strategy"], r["data"], f"{r['rows']:,}", _f(r["samples_per_s"], ",.0f"),
                      _f(r["learn_ms_median"], ".2f"), _f(r["late_over_early"], ".2f"),
                      _f(r["first_batch_s"], ".2f"), _f(r["predict_ms_p50"], ".3f"),
                      _f(r["predict_ms_p95"], ".3f"), _f(r["peak_rss_mb"], ",.0f"), _f(r["import_s"], ".1f"),
                      quality)
    return table


def compare(cpu_path: str, gpu_path: str, console: Any) -> int:
    from rich.table import Table

    a, b = (json.loads(Path(p).read_text()) for p in (cpu_path, gpu_path))
    da, db = a.get("protocol", {}).get("device"), b.get("protocol", {}).get("device")
    ra = {r["strategy"]: r for r in a.get("rows", [])}
    rb = {r["strategy"]: r for r in b.get("rows", [])}
    table = Table(title=f"learning cost side by side: {da} ({Path(cpu_path).name}) vs {db} ({Path(gpu_path).name})")
    for c in ("strategy", f"{da} samples/s", f"{db} samples/s", f"{db}/{da}", f"{da} learn ms",
              f"{db} learn ms", f"{da} 1st batch s", f"{db} 1st batch s", f"{da} predict p50 ms",
              f"{db} predict p50 ms", f"{da} peak RSS", f"{db} peak RSS"):
        table.add_column(c, justify="left" if c == "strategy" else "right")

    def ok(r: dict[str, Any] | None) -> bool:
        return bool(r) and not r.get("error") and not r.get("na")

    for name in list(ra) + [n for n in rb if n not in ra]:
        x, y = ra.get(name), rb.get(name)

        def cell(r: dict[str, Any] | None, key: str, fmt: str) -> str:
            if not ok(r):
                return _short(r)
            return _f(r.get(key), fmt)  # type: ignore[union-attr]

        ratio = "-"
        if ok(x) and ok(y) and x["samples_per_s"] and y["samples_per_s"]:  # type: ignore[index]
            ratio = f"{y['samples_per_s'] / x['samples_per_s']:.2f}"  # type: ignore[index]
        table.add_row(name, cell(x, "samples_per_s", ",.0f"), cell(y, "samples_per_s", ",.0f"), ratio,
                      cell(x, "learn_ms_median", ".2f"), cell(y, "learn_ms_median", ".2f"),
                      cell(x, "first_batch_s", ".2f"), cell(y, "first_batch_s", ".2f"),
                      cell(x, "predict_ms_p50", ".3f"), cell(y, "predict_ms_p50", ".3f"),
                      cell(x, "peak_rss_mb", ",.0f"), cell(y, "peak_rss_mb", ",.0f"))
    console.print(table)
    for doc in (a, b):
        for rc in doc.get("ray_check") or []:
            console.print(f"ray check ({doc.get('protocol', {}).get('device')} run) num_gpus={rc.get('num_gpus')}: "
                          + (rc["error"] if rc.get("error") else
                             f"actor torch.cuda.is_available() in {rc['actor_cuda_available_calls']}/"
                             f"{rc['learn_calls']} calls, model on cuda in {rc['actor_model_on_cuda_calls']}/"
                             f"{rc['learn_calls']}"))
    return 0


# -- main ------------------------------------------------------------------------------------


def _gpu_info() -> str | None:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return proc.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (default): every strategy on the CPU; cuda: the GPU-capable ones on the GPU")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated subset of {','.join(STRATEGIES)} (default all)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every stream's length (default 1)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per worker before it is stopped")
    ap.add_argument("--budget", type=float, default=None,
                    help="wall seconds for the whole run: once spent, the remaining strategies (and the Ray "
                         "check) are skipped and reported as such (default: no limit)")
    ap.add_argument("--ray-check", action="store_true",
                    help="also run an Avalanche learn step on the Ray runner and report the actor's device")
    ap.add_argument("--compare", nargs=2, metavar=("CPU_JSON", "GPU_JSON"),
                    help="print two result files side by side and exit")
    ap.add_argument("--json", default=str(RESULTS / "learning_cost.json"),
                    help="where to write the results (default bench/results/learning_cost.json)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        if args.worker not in STRATEGIES:
            ap.error(f"unknown strategy {args.worker!r}")
        try:
            res = worker(args.worker, args.device, args.scale)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as a row
            import traceback

            traceback.print_exc()
            res = {"strategy": args.worker, "device": args.device, "error": f"{type(exc).__name__}: {exc}"}
        print(_RESULT_MARK + json.dumps(res, default=str), flush=True)
        sys.stderr.flush()
        os._exit(0)  # skip the interpreter's teardown (seconds with torch and Avalanche loaded): nothing left to do

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.compare:
        return compare(args.compare[0], args.compare[1], console)

    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        ap.error(f"unknown strategies {unknown}; known: {','.join(STRATEGIES)}")
    if args.scale <= 0:
        ap.error("--scale must be > 0")

    wall0 = time.perf_counter()
    info = machine_info()
    info["gpu"] = _gpu_info()
    console.print(f"[bold]learning cost[/] on {args.device}: {len(names)} strategies, one subprocess each, "
                  f"scale {args.scale}, {info['cpu_affinity'] or info['cpu_count']} CPUs, python {info['python']}, "
                  f"GPU {info['gpu'] or 'none seen by nvidia-smi'}, load average {info['loadavg_at_start']}")

    rows: list[dict[str, Any]] = []
    ray_rows: list[dict[str, Any]] | None = None
    doc: dict[str, Any] = {
        "benchmark": "learning_cost",
        "description": "per strategy, each in its own subprocess: samples/s through learn, predict latency per "
                       "batch, peak RSS; prequential over one data set per task",
        "protocol": {
            "device": args.device, "scale": args.scale, "seed": SEED, "strategies": names,
            "samples_per_s": "rows learned / seconds in learn, first batch excluded (its predict + learn is "
                             "first_batch_s)",
            "predict": "one predict call per batch, timed on batches after the first fit",
            "peak_rss": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the worker process",
            "avalanche_params": AVALANCHE_PARAMS,
            "cuda_sync": args.device == "cuda",
            "budget_s": args.budget,
        },
        "machine": info,
        "complete": False,
        "total_seconds": None,
        "rows": rows,
        "ray_check": None,
    }

    def left() -> float:
        return float("inf") if args.budget is None else args.budget - (time.perf_counter() - wall0)

    no_cuda: str | None = None
    for name in names:
        data_key, gpu, _, _ = STRATEGIES[name]
        base = {"strategy": name, "device": args.device, "data": DATA[data_key][1]}
        if args.device == "cuda" and not gpu:
            rows.append({**base, "na": "n/a: CPU only (no GPU path)"})
            continue
        if no_cuda is not None:
            rows.append({**base, "error": no_cuda})
            continue
        if left() < 15:
            rows.append({**base, "error": "skipped: --budget spent"})
            console.print(f"[yellow]  {name}: skipped, --budget spent")
            continue
        res = run_worker(name, args.device, args.scale, max(15.0, min(args.timeout, left())))
        rows.append(res)
        if res.get("error"):
            console.print(f"[red]  {name}: {res['error']}")
            if str(res["error"]).startswith("no CUDA"):
                no_cuda = res["error"]
                console.print("[bold red]CUDA is not available to torch: the GPU strategies are not measured")
        else:
            console.print(f"  {name:<16} {res['rows']:>6,} rows  {_f(res['samples_per_s'], ',.0f'):>8} samples/s  "
                          f"predict p50 {_f(res['predict_ms_p50'], '.3f')} ms  peak RSS {res['peak_rss_mb']:,.0f} MiB  "
                          f"(worker {res['wall_s']:.1f} s, model on {res.get('model_device') or 'cpu'})")
        write_json(doc, args.json)  # after every worker: a run cut off from outside still leaves its rows

    if args.ray_check:
        if args.device == "cuda" and no_cuda is not None:
            console.print(f"[yellow]ray check: skipped, {no_cuda}")
            ray_rows = [{"num_gpus": 1, "error": no_cuda}]
        elif left() < 30:
            console.print("[yellow]ray check: skipped, less than 30 s of --budget left")
            ray_rows = [{"num_gpus": None, "error": "skipped: --budget spent"}]
        else:
            ray_rows = ray_check([1.0, 0.0] if args.device == "cuda" else [0.0], console, left)

    total_s = time.perf_counter() - wall0
    console.print(results_table(rows, f"learning cost per strategy on {args.device} "
                                      f"(prequential; samples/s over all batches but the first)"))
    for r in rows:
        if r.get("error"):
            console.print(f"[red]{r['strategy']}: {r['error']}")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, at end "
                  f"{info['loadavg_at_end']} (other processes on the machine skew the numbers)")
    doc.update({"complete": True, "total_seconds": total_s, "ray_check": ray_rows})
    out = write_json(doc, args.json)
    console.print(f"results: {out}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
