"""The ``linkload`` pipeline: link-load forecasting under a network failure.

Reproduces the setting of "Liquid Neural Network-based Adaptive Learning vs.
Incremental Learning for Link Load Prediction amid Concept Drift due to Network
Failures" (arXiv 2404.05304): a backbone's traffic is routed over its links, a
link fails, the re-routed traffic shifts the load of a target link, and
forecasters of that link's load are compared before and after the failure.

The protocol is fixed here, before any outcome was looked at, and is the same
for every strategy (`PROTOCOL`):

* data: `LinkLoadSource` (SNDlib Abilene / GEANT demands, sum-of-sines daily
  and weekly profiles, lognormal noise), 15-minute steps, 24 days, the failure
  at day 18, never repaired; only the target link's series is forecast;
* every forecaster sees a window of W = 16 past loads, is first fitted after 14
  days (1344 samples), and forecasts one step ahead; before its first fit it
  forecasts persistence, and those 14 days are not scored in the comparison;
* scoring segments: *before* = days 14-18, *first day* = the 96 steps after the
  failure, *after* = the rest;
* **time to convergence** (`time_to_convergence`): the rolling mean of the
  absolute percentage error over 24 steps (6 h); its reference level is the
  95th percentile of that rolling error over *before*; the forecaster has
  converged at the first step k after the failure from which the rolling error
  stays at or below 1.2 x the reference for the next 96 steps (one day, or to
  the end of the stream); reported in steps (hours = steps / 4), "never" if no
  such k exists. A percentile rather than the mean as reference, because the
  rolling error of even a perfect-pattern model fluctuates with the noise, and
  "stays below 1.2 x mean" would then almost never hold, before or after a failure.

Strategies (one `learn` step each, broadcast on the same stream):

* ``lnn_cfc`` / ``lnn_ltc``: `LiquidForecaster` (ncps CfC / LTC, AutoNCP
  wiring, 16 units), trained once, adapting only through its state;
* ``il_b24`` / ``il_b96`` / ``il_b288``: `IncrementalRefit`, the paper's IL
  baseline, re-fitted every B = 24 / 96 / 288 samples on the latest 1344;
* ``frozen_mlp`` / ``frozen_gru``: controls, fitted once, never updated;
* ``hybrid_cfc``: the hybrid the paper suggests: the CfC liquid network plus a
  re-fit when ADWIN on its own absolute error detects drift (events before its first
  fit, or while a re-fit is pending, are ignored: `LiquidForecaster`);
* ``persistence``: the last value (a reference).

`build` gives the pipeline (``set="default"``: CfC, IL B=96, hybrid, persistence
for ``tideflow run linkload``; ``set="full"``: all of the above); `compare` runs
the whole comparison (topologies x scenarios x seeds) and writes the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tideflow.connectors.base import Source
from tideflow.connectors.linkload import LinkLoadSource
from tideflow.pipelines.dsl import Pipeline
from tideflow.pipelines.metrics.convergence import TimeToConvergence
from tideflow.pipelines.metrics.convergence import time_to_convergence as _time_to_convergence
from tideflow.pipelines.metrics.segments import SegmentErrors
from tideflow.pipelines.tracking import log_run_artifacts
from tideflow.strategies.forecasting import FrozenGRU, FrozenMLP, IncrementalRefit, Persistence
from tideflow.strategies.liquid import LiquidForecaster

PROTOCOL: dict[str, Any] = {
    "step_minutes": 15,
    "days": 24,
    "failure_day": 18,
    "window": 16,
    "pretrain_steps": 14 * 96,
    "steps_per_day": 96,
    "rolling": 24,
    "reference_quantile": 0.95,
    "tolerance": 1.2,
    "hold_steps": 96,
    "error_detector": "ADWIN",
}

SETS = {
    "default": ["lnn_cfc", "il_b96", "hybrid_cfc", "persistence"],
    "full": ["lnn_cfc", "lnn_ltc", "il_b24", "il_b96", "il_b288", "frozen_mlp", "frozen_gru", "hybrid_cfc",
             "persistence"],
}


def make_strategy(name: str, *, seed: int, normalisation: str = "global") -> Any:
    """One strategy of the comparison, configured by the protocol."""
    common = {"target": "load", "features": [], "window": PROTOCOL["window"], "normalisation": normalisation,
              "pretrain_steps": PROTOCOL["pretrain_steps"], "seed": seed}
    # a state carried over windows that are each normalised differently means nothing:
    # with per-window normalisation the liquid nets re-run each window from a zero state
    liquid_mode = "stateful" if normalisation == "global" else "window"
    if name == "lnn_cfc":
        return LiquidForecaster(cell="cfc", mode=liquid_mode, **common)
    if name == "lnn_ltc":
        return LiquidForecaster(cell="ltc", mode=liquid_mode, **common)
    if name == "hybrid_cfc":
        return LiquidForecaster(cell="cfc", mode=liquid_mode, refit_on_drift=True, **common)
    if name.startswith("il_b"):
        return IncrementalRefit(refit_every=int(name[4:]), **common)
    if name == "frozen_mlp":
        return FrozenMLP(**common)
    if name == "frozen_gru":
        return FrozenGRU(**common)
    if name == "persistence":
        return Persistence(target="load", features=[])
    raise ValueError(f"unknown linkload strategy {name!r}; known: {SETS['full']}")


def build(source: Source | None = None, *, topology: str = "abilene", scenario: str = "drastic", seed: int = 0,
          set: str = "default", normalisation: str = "global", batch_steps: int = 1, **_: Any) -> Pipeline:
    if set not in SETS:
        raise ValueError(f"unknown strategy set {set!r}; known: {sorted(SETS)}")
    source = source or LinkLoadSource(topology, scenario=scenario, seed=seed, days=PROTOCOL["days"],
                                      step_minutes=PROTOCOL["step_minutes"], failure_day=PROTOCOL["failure_day"],
                                      links="target", batch_steps=batch_steps)
    p = Pipeline("linkload").source(source).validate()
    for name in SETS[set]:
        strategy = make_strategy(name, seed=seed, normalisation=normalisation)
        if name.startswith("hybrid"):
            p.learn(strategy, name=name, detector=PROTOCOL["error_detector"])
        else:
            p.learn(strategy, name=name)
    p.observe(*observers(source.metadata()))
    p.report(lambda result: report(result, source))
    return p


# -- scoring ----------------------------------------------------------------------------
def observers(metadata: dict[str, Any]) -> list[Any]:
    """The protocol's metrics as run observers: RMSE/MAPE per segment and time to convergence
    (none for a stream without a failure)."""
    if metadata.get("failure_offset") is None:
        return []
    failure = int(metadata["failure_offset"])
    eval_start = PROTOCOL["pretrain_steps"]
    day = PROTOCOL["steps_per_day"]
    return [SegmentErrors({"before": (eval_start, failure), "day1": (failure, failure + day),
                           "after": (failure + day, None)}),
            TimeToConvergence(failure, eval_start=eval_start, rolling=PROTOCOL["rolling"],
                              quantile=PROTOCOL["reference_quantile"], tolerance=PROTOCOL["tolerance"],
                              hold=PROTOCOL["hold_steps"])]


def time_to_convergence(ape: np.ndarray, failure: int, eval_start: int) -> int | None:
    """Steps after ``failure`` until the forecaster's error is back to its pre-failure level
    (the protocol's rule, `tideflow.pipelines.metrics.convergence`); None: never."""
    return _time_to_convergence(ape, failure, eval_start, rolling=PROTOCOL["rolling"],
                                quantile=PROTOCOL["reference_quantile"], tolerance=PROTOCOL["tolerance"],
                                hold=PROTOCOL["hold_steps"])


def score_run(result: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per strategy: RMSE/MAPE before, on the first day after and after the failure; TTC; compute.

    From the run's observers (`observers`), which `build` attaches; a run without them
    (a pipeline built by hand) is scored by the same observers here, from its predictions.
    """
    metrics = dict(getattr(result, "metrics", {}))
    if "segment_errors" not in metrics:
        for obs in observers(metadata):
            obs.on_start(None)
            obs.on_finish(result)
            metrics[obs.name] = obs.result()
    segments, ttc = metrics["segment_errors"], metrics["time_to_convergence"]
    out: dict[str, dict[str, Any]] = {}
    for name in result.predictions:
        row: dict[str, Any] = dict(segments[name])
        row["ttc_steps"] = ttc[name]
        s = result.summary[name]
        row["fits"] = s["fits"]
        row["refits"] = max(0, s["fits"] - 1)
        row["train_seconds"] = s["train_seconds"]
        row["drift_events"] = s["error_drift_events"]
        out[name] = row
    return out


def _fmt_ttc(v: int | None) -> str:
    return "never" if v is None else f"{v} ({v / 4:.1f} h)"


def report(result: Any, source: Any, *, plot: bool = True) -> dict[str, dict[str, Any]]:
    """Print the per-segment table of one run and save (and log) the forecast plot."""
    from rich.console import Console
    from rich.table import Table

    meta = source.metadata()
    scores = score_run(result, meta)
    table = Table(title=f"linkload {meta.get('topology')} {meta.get('scenario')}: target {meta.get('target_link')}, "
                        f"failed {meta.get('failed_link')}, shift rho={meta.get('rho', float('nan')):.2f}")
    for col in ("strategy", "RMSE before", "MAPE before", "RMSE day 1", "MAPE day 1", "RMSE after", "MAPE after",
                "time to converge", "re-fits", "train s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, r in scores.items():
        table.add_row(name, f"{r['rmse_before']:.1f}", f"{r['mape_before']:.2f}%", f"{r['rmse_day1']:.1f}",
                      f"{r['mape_day1']:.2f}%", f"{r['rmse_after']:.1f}", f"{r['mape_after']:.2f}%",
                      _fmt_ttc(r["ttc_steps"]), str(r["refits"]), f"{r['train_seconds']:.1f}")
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    (result.output_dir / "linkload_scores.json").write_text(json.dumps(scores, indent=2))
    if plot:
        path = plot_forecasts(result, meta, result.output_dir / "linkload.png")
        console.print(f"plot: {path}")
        log_run_artifacts(result, [path, result.output_dir / "linkload_scores.json"])
    return scores


def plot_forecasts(result: Any, meta: dict[str, Any], path: Path) -> Path:
    """Actual load vs each forecast from two days before to three days after the failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    failure = int(meta["failure_offset"])
    day = PROTOCOL["steps_per_day"]
    lo, hi = max(0, failure - 2 * day), failure + 3 * day
    fig, ax = plt.subplots(figsize=(13, 5))
    first = next(iter(result.predictions.values()))
    steps = first["offset"]
    sel = (steps >= lo) & (steps < hi)
    hours = (steps[sel] - failure) / 4
    ax.plot(hours, first["truth"][sel], color="black", lw=1.6, label="actual load")
    for name, arrays in result.predictions.items():
        ax.plot(hours, arrays["prediction"][sel], lw=0.9, label=name)
    ax.axvline(0, color="red", ls="--", lw=1.2, label=f"failure of {meta.get('failed_link')}")
    drawn = set()
    for e in result.drift_events:
        h = (e.offset - failure) / 4
        if lo <= e.offset < hi:
            ax.axvline(h, color="grey", ls=":", lw=0.8, label="drift detected" if "d" not in drawn else None)
            drawn.add("d")
    ax.set_xlabel("hours from the failure")
    ax.set_ylabel(f"load of link {meta.get('target_link')}")
    ax.set_title(f"{meta.get('topology')} {meta.get('scenario')} shift (rho={meta.get('rho', float('nan')):.2f})")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the comparison -----------------------------------------------------------------------
def run_one(topology: str, scenario: str, seed: int, *, set: str = "full", normalisation: str = "global",
            runner: str = "local", tracking: bool = False, progress: bool = False) -> dict[str, Any]:
    """One configuration of the comparison: its scores per strategy."""
    source = LinkLoadSource(topology, scenario=scenario, seed=seed, days=PROTOCOL["days"],
                            step_minutes=PROTOCOL["step_minutes"], failure_day=PROTOCOL["failure_day"],
                            links="target", batch_steps=1)
    pipeline = build(source, seed=seed, set=set, normalisation=normalisation)
    t0 = time.perf_counter()
    result = pipeline.run(runner=runner, tracking=tracking, progress=progress, keep_predictions=True)
    meta = source.metadata()
    return {"topology": topology, "scenario": scenario, "seed": seed, "target_link": meta.get("target_link"),
            "failed_link": meta.get("failed_link"), "rho": meta.get("rho"),
            "seconds": time.perf_counter() - t0, "scores": score_run(result, meta)}


def _run_one_quietly(args: tuple[Any, ...]) -> dict[str, Any]:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    topology, scenario, seed, kwargs = args
    return run_one(topology, scenario, seed, **kwargs)


def compare(*, topologies: list[str], scenarios: list[str], seeds: list[int], set: str = "full",
            normalisation: str = "global", runner: str = "local", tracking: bool = False,
            out: Path = Path("results/linkload"), progress: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Run the comparison and write ``<out>.json`` and ``<out>.md`` (the README table).

    ``jobs`` configurations run at once, each in its own process with one torch thread.
    """
    import concurrent.futures as cf
    import multiprocessing

    configs = [(t, sc, seed, {"set": set, "normalisation": normalisation, "runner": runner,
                              "tracking": tracking, "progress": progress and jobs == 1})
               for t in topologies for sc in scenarios for seed in seeds]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def done(run: dict[str, Any]) -> None:
        runs.append(run)
        print(f"[{len(runs)}/{len(configs)}] {run['topology']} {run['scenario']} seed {run['seed']}: "
              f"{run['seconds']:.0f} s (target {run['target_link']}, rho {run['rho']:.2f})", flush=True)

    if jobs <= 1:
        for c in configs:
            done(_run_one_quietly(c))
    else:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for run in pool.map(_run_one_quietly, configs):
                done(run)
    runs.sort(key=lambda r: (r["topology"], r["scenario"], r["seed"]))
    doc = {"protocol": PROTOCOL, "set": set, "normalisation": normalisation, "seeds": seeds,
           "seconds": time.perf_counter() - started, "runs": runs, "table": aggregate(runs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown_table(doc))
    return doc


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["topology"], r["scenario"]) for r in runs}, key=lambda k: (k[0], k[1] != "drastic"))
    for topology, scenario in keys:
        group = [r for r in runs if r["topology"] == topology and r["scenario"] == scenario]
        for name in group[0]["scores"]:
            vals = [g["scores"][name] for g in group]
            row: dict[str, Any] = {"topology": topology, "scenario": scenario, "strategy": name,
                                   "seeds": len(vals), "rho": float(np.mean([g["rho"] for g in group]))}
            for m in ("rmse_before", "mape_before", "mape_day1", "mape_after", "rmse_day1", "rmse_after",
                      "train_seconds", "refits"):
                xs = np.array([v[m] for v in vals], dtype=float)
                row[m] = float(np.mean(xs))
                row[m + "_std"] = float(np.std(xs))
            ttc = [v["ttc_steps"] for v in vals]
            row["ttc_steps"] = ttc
            row["converged"] = sum(t is not None for t in ttc)
            rows.append(row)
    return rows


def markdown_table(doc: dict[str, Any]) -> str:
    lines = [
        f"Seeds {doc['seeds']}, normalisation {doc['normalisation']}; mean ± std over seeds; "
        "time to convergence per seed in steps of 15 min ('-' = never).",
        "",
        "| topology | shift (rho) | strategy | MAPE before | MAPE day 1 | MAPE after | RMSE day 1 | "
        "time to converge | re-fits | train s |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in doc["table"]:
        ttc = ", ".join("-" if t is None else str(t) for t in r["ttc_steps"])
        lines.append(
            f"| {r['topology']} | {r['scenario']} ({r['rho']:.2f}) | {r['strategy']} | "
            f"{r['mape_before']:.2f} ± {r['mape_before_std']:.2f} | {r['mape_day1']:.2f} ± {r['mape_day1_std']:.2f} | "
            f"{r['mape_after']:.2f} ± {r['mape_after_std']:.2f} | {r['rmse_day1']:.0f} | {ttc} | "
            f"{r['refits']:.0f} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
