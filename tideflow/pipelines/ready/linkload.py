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
  stays at or below 1.2 x the reference for the next 96 steps (one day), all of
  them within the stream; reported in steps (hours = steps / 4). Without such a
  k it is "never" (out of band at the stream's end) or "not within the stream"
  (back in band for fewer than 96 steps when the stream ended: a k near the end
  is not a convergence, since the rule could not check its whole day). A
  percentile rather than the mean as reference, because the rolling error of
  even a perfect-pattern model fluctuates with the noise, and "stays below 1.2 x
  mean" would then almost never hold, before or after a failure.

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
for ``tideflow run linkload``; ``set="full"``: all of the above; its docstring
lists the options, which ``tideflow run linkload --set key=value`` passes);
`compare` runs the whole comparison (topologies x scenarios x seeds) and writes
the table. A run that stops before the failure (``--max-batches``, a stream that
ends early) or a stream without one is scored as far as it goes, and the scores
say why the columns after the failure are empty (``reason``).
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
from tideflow.pipelines.metrics.convergence import TimeToConvergence, convergence
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


#: the options of `build` (what ``--set key=value`` takes); the first four choose the pipeline's
#: own stream, so they cannot apply to a source given instead of it
STREAM_OPTIONS = ("topology", "scenario", "failures", "batch_steps")
OPTIONS = (*STREAM_OPTIONS, "seed", "set", "strategies", "normalisation")
NORMALISATIONS = ("global", "window")


def _integer(name: str, value: Any, minimum: int) -> int:
    """An integer option as the command line or Python gives it (``3`` or ``"3"``)."""
    text = str(value).strip()
    ok = not isinstance(value, bool) and isinstance(value, (int, str, np.integer))
    if not (ok and text.lstrip("-").isdigit() and int(text) >= minimum):
        raise ValueError(f"linkload option {name} is an integer >= {minimum}, got {value!r}")
    return int(text)


def strategy_names(set_name: str | None = None, strategies: Any = None) -> list[str]:
    """The strategies a run trains: ``strategies`` (a comma list or a list) chosen from the set
    ``set_name`` (the full set when none is named), else that set's (``"default"`` when none)."""
    if set_name is not None and set_name not in SETS:
        raise ValueError(f"unknown strategy set {set_name!r}; known: {sorted(SETS)}")
    if strategies is None:
        return list(SETS[set_name or "default"])
    if isinstance(strategies, str):
        names = [n.strip() for n in strategies.split(",") if n.strip()]
    elif isinstance(strategies, (list, tuple)):
        names = [str(n).strip() for n in strategies]
    else:
        raise ValueError(f"strategies is a comma list such as 'lnn_cfc,il_b96', got {strategies!r}")
    pool = SETS[set_name or "full"]
    unknown = [n for n in names if n not in pool]
    if not names or unknown or len(dict.fromkeys(names)) < len(names):
        problem = f"unknown: {', '.join(unknown)}" if unknown else "none" if not names else "a repeat"
        where = f"set {set_name!r}" if set_name else "the full set"
        raise ValueError(f"strategies names some of {where} ({', '.join(pool)}), each once; "
                         f"got {strategies!r} ({problem})")
    return names


def protocol_source(topology: str = "abilene", scenario: str = "drastic", seed: int = 0, *,
                    failures: Any = None, batch_steps: int = 1) -> LinkLoadSource:
    """The protocol's stream (`PROTOCOL`): 24 days of 15-minute steps, the target link only.

    A failure given here must fall where the protocol can score around it: after the first
    fit (day 14) and before the end (day 24).
    """
    source = LinkLoadSource(topology, scenario=scenario, seed=seed, days=PROTOCOL["days"],
                            step_minutes=PROTOCOL["step_minutes"], failure_day=PROTOCOL["failure_day"],
                            failures=failures, links="target", batch_steps=batch_steps)
    first = source.plan.split_step
    if failures is not None and first is not None and first <= PROTOCOL["pretrain_steps"]:
        day = first / PROTOCOL["steps_per_day"]
        start = PROTOCOL["pretrain_steps"] // PROTOCOL["steps_per_day"]
        raise ValueError(f"linkload: the first failure ({source.metadata()['failed']}) is at day {day:g}, "
                         f"but the protocol fits its models on the first {start} days and scores after "
                         f"them: fail at a day in ({start}, {PROTOCOL['days']}), e.g. @{PROTOCOL['failure_day']}")
    return source


def build(source: Source | None = None, *, topology: str | None = None, scenario: str | None = None,
          failures: Any = None, seed: int | None = None, set: str | None = None, strategies: Any = None,
          normalisation: str = "global", batch_steps: int | None = None, **unknown: Any) -> Pipeline:
    """The link-load pipeline: the protocol's stream (or ``source``), one learn step per strategy.

    Options:
        topology: abilene, geant, polska, ... (SNDlib) or a topohub key such as topozoo/Geant2012
            (default abilene)
        scenario: drastic, moderate or none: the shift the failure aims at on the target link
            (default drastic)
        failures: what fails instead of the scenario's choice, e.g. "link:7-9@18;node:ATLAng@18-20"
            (node ids or names; days since the start, within (14, 24); @day left out: 18)
        seed: seeds the stream and every strategy (default 0; with a source: the source's seed)
        set: default (lnn_cfc, il_b96, hybrid_cfc, persistence) or full (all nine strategies)
        strategies: a comma list instead of the set, e.g. lnn_cfc,il_b96 (from the full set)
        normalisation: global or window (default global)
        batch_steps: time steps per batch (default 1)

    ``topology``, ``scenario``, ``failures`` and ``batch_steps`` choose the pipeline's own stream:
    with a ``source`` (``--source``, a recording) they cannot apply and are refused; put them in
    the source spec instead (``linkload:topology=polska,failures=node:Warsaw@18``). An unknown
    option is refused with the list of known ones.
    """
    if unknown:
        import difflib

        close = {k: difflib.get_close_matches(k, OPTIONS, n=1) for k in sorted(unknown)}
        named = ", ".join(f"{k} (did you mean {c[0]}?)" if c else k for k, c in close.items())
        raise ValueError(f"unknown linkload option(s) {named}; known: {', '.join(OPTIONS)}")
    names = strategy_names(set, strategies)
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"linkload option normalisation is one of {NORMALISATIONS}, got {normalisation!r}")
    if seed is not None:
        seed = _integer("seed", seed, 0)
    if source is None:
        source = protocol_source(topology or "abilene", scenario or "drastic", 0 if seed is None else seed,
                                 failures=failures,
                                 batch_steps=1 if batch_steps is None else _integer("batch_steps", batch_steps, 1))
    else:
        given = {"topology": topology, "scenario": scenario, "failures": failures, "batch_steps": batch_steps}
        refused = [k for k, v in given.items() if v is not None]
        if refused:
            raise ValueError(f"linkload option(s) {', '.join(refused)} choose the pipeline's own stream, so "
                             f"with a source given they cannot apply: put them in the source spec "
                             f"(linkload:topology=...,failures=...) or leave the source out")
    meta = source.metadata()
    if seed is None:  # the strategies follow the stream's seed (`--source linkload:seed=3`)
        seed = meta.get("seed") if isinstance(meta.get("seed"), int) else 0
    if int(meta.get("rows_per_step") or 1) != 1:
        raise ValueError(f"the linkload pipeline forecasts one link's series, but the source emits "
                         f"{meta['rows_per_step']} links per step: give it links=target or one link id")
    p = Pipeline("linkload").source(source).validate()
    for name in names:
        strategy = make_strategy(name, seed=seed, normalisation=normalisation)
        if name.startswith("hybrid"):
            p.learn(strategy, name=name, detector=PROTOCOL["error_detector"])
        else:
            p.learn(strategy, name=name)
    p.observe(*observers(meta))
    p.report(lambda result: report(result, source))
    return p


# -- scoring ----------------------------------------------------------------------------
def observers(metadata: dict[str, Any]) -> list[Any]:
    """The protocol's metrics as run observers: RMSE/MAPE per segment and time to convergence.

    A stream without a failure has one segment that holds every scored step (``before``; the
    others stay empty) and no time to convergence.
    """
    eval_start = PROTOCOL["pretrain_steps"]
    if metadata.get("failure_offset") is None:
        return [SegmentErrors({"before": (eval_start, None), "day1": (0, 0), "after": (0, 0)})]
    failure = int(metadata["failure_offset"])
    day = PROTOCOL["steps_per_day"]
    return [SegmentErrors({"before": (eval_start, failure), "day1": (failure, failure + day),
                           "after": (failure + day, None)}),
            TimeToConvergence(failure, eval_start=eval_start, rolling=PROTOCOL["rolling"],
                              quantile=PROTOCOL["reference_quantile"], tolerance=PROTOCOL["tolerance"],
                              hold=PROTOCOL["hold_steps"])]


def time_to_convergence(ape: np.ndarray, failure: int, eval_start: int) -> int | None:
    """Steps after ``failure`` until the forecaster's error is back to its pre-failure level
    (the protocol's rule, `tideflow.pipelines.metrics.convergence`); None: not converged within
    the stream (`ttc_reason` says why)."""
    return ttc_reason(ape, failure, eval_start)[0]


def ttc_reason(ape: np.ndarray, failure: int, eval_start: int) -> tuple[int | None, str | None]:
    """The protocol's time to convergence and, when there is none, why (`convergence`)."""
    return convergence(ape, failure, eval_start, rolling=PROTOCOL["rolling"],
                       quantile=PROTOCOL["reference_quantile"], tolerance=PROTOCOL["tolerance"],
                       hold=PROTOCOL["hold_steps"])


def segments_reason(result: Any, metadata: dict[str, Any]) -> str | None:
    """Why the columns after the failure are empty or partial (None: they are complete)."""
    failure = metadata.get("failure_offset")
    scored = max((int(a["offset"][-1]) + 1 for a in result.predictions.values() if len(a["offset"])),
                 default=0)
    total = metadata.get("num_rows") or metadata.get("num_steps")
    of = f" of {total}" if total else ""
    # a stream read to its end "ended"; a run that left rows unread (--max-batches) "stopped"
    stopped = "the stream ended" if total and scored >= int(total) else "the run stopped"
    day = PROTOCOL["steps_per_day"]
    start = PROTOCOL["pretrain_steps"]
    if failure is None:
        return ("the stream has no failure (scenario none): every scored step counts as 'before', "
                "and there is nothing to converge from")
    failure = int(failure)
    if scored <= min(failure, start):
        return (f"{stopped} after step {scored}{of}, before scoring starts (step {start}, after the "
                f"first fit) and before the failure (step {failure}): nothing was scored")
    if scored <= failure:
        return (f"{stopped} after step {scored}{of}, before the failure at step {failure}: nothing "
                f"after the failure to score")
    why = []
    if failure < start:
        why.append(f"the failure (step {failure}) comes before scoring starts (step {start}, after the "
                   f"first fit): 'before' is empty and there is no reference for the time to converge")
    if scored <= failure + day:
        why.append(f"{stopped} {scored - failure} steps after the failure (step {failure}{of}): "
                   f"'day 1' covers {scored - failure} of its {day} steps and 'after' is empty")
    elif total and scored < int(total):
        why.append(f"{stopped} after step {scored}{of}: 'after' covers the steps up to there")
    return "; ".join(why) or None


def score_run(result: Any, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per strategy: RMSE/MAPE before, on the first day after and after the failure; TTC; compute.

    From the run's observers (`observers`), which `build` attaches; a run without them
    (a pipeline built by hand) is scored by the same observers here, from its predictions.
    ``ttc_steps`` is None when the strategy did not converge within the stream, and
    ``ttc_reason`` then says why (`tideflow.pipelines.metrics.convergence.REASONS`, or
    ``"no failure"``); ``reason`` says why columns after the failure are empty or partial
    (None: they are complete).
    """
    metrics = dict(getattr(result, "metrics", {}))
    if "segment_errors" not in metrics:
        for obs in observers(metadata):
            obs.on_start(None)
            obs.on_finish(result)
            metrics[obs.name] = obs.result()
    segments, ttc = metrics["segment_errors"], metrics.get("time_to_convergence", {})
    why = segments_reason(result, metadata)
    out: dict[str, dict[str, Any]] = {}
    for name in result.predictions:
        row: dict[str, Any] = dict(segments[name])
        t = ttc.get(name) or {"steps": None, "reason": "no failure"}
        row["ttc_steps"] = t["steps"]
        row["ttc_reason"] = t["reason"]
        row["reason"] = why
        s = result.summary[name]
        row["fits"] = s["fits"]
        row["refits"] = max(0, s["fits"] - 1)
        row["train_seconds"] = s["train_seconds"]
        row["drift_events"] = s["error_drift_events"]
        out[name] = row
    return out


#: how a time to convergence that is not a number reads in the table (`ttc_reason`)
TTC_WORDS = {"never": "never", "stream ended": "not within the stream", "no reference": "n/a",
             "event not reached": "n/a", "no failure": "n/a"}


def _fmt_ttc(steps: int | None, reason: str | None = None, step_minutes: float = 15.0) -> str:
    if steps is None:
        return TTC_WORDS.get(reason or "never", str(reason))
    return f"{steps} ({steps * step_minutes / 60:.1f} h)"


def notes(scores: dict[str, dict[str, Any]]) -> list[str]:
    """The lines under the table: why columns are empty, what "not within the stream" means."""
    lines = list(dict.fromkeys(part for r in scores.values() if r.get("reason")
                               for part in r["reason"].split("; ")))
    if any(r.get("ttc_reason") == "stream ended" for r in scores.values()):
        lines.append(f"time to converge 'not within the stream': the error was back in band when the "
                     f"stream ended, but for fewer than the rule's {PROTOCOL['hold_steps']} steps")
    return lines


def _rho(meta: dict[str, Any]) -> str:
    rho = meta.get("rho")
    return "n/a" if rho is None else f"{rho:.2f}"


def failed_label(meta: dict[str, Any]) -> str:
    """What failed, in words, from a source's metadata (recordings made before the ``failed``
    field say it from the first event)."""
    if meta.get("failed"):
        return str(meta["failed"])
    if meta.get("failed_link") is not None:
        return f"link {meta['failed_link']}"
    if meta.get("failed_node") is not None:
        return f"node {meta['failed_node']}"
    return "nothing"


def report(result: Any, source: Any, *, plot: bool = True) -> dict[str, dict[str, Any]]:
    """Print the per-segment table of one run and save (and log) the forecast plot."""
    from rich.console import Console
    from rich.table import Table

    meta = source.metadata()
    scores = score_run(result, meta)
    step_minutes = float(meta.get("step_minutes") or PROTOCOL["step_minutes"])
    target = meta.get("target_label") or meta.get("target_link")
    table = Table(title=f"linkload {meta.get('topology')} {meta.get('scenario')}: target {target}, "
                        f"failed {failed_label(meta)}, shift rho={_rho(meta)}")
    for col in ("strategy", "RMSE before", "MAPE before", "RMSE day 1", "MAPE day 1", "RMSE after", "MAPE after",
                "time to converge", "re-fits", "train s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, r in scores.items():
        table.add_row(name, f"{r['rmse_before']:.1f}", f"{r['mape_before']:.2f}%", f"{r['rmse_day1']:.1f}",
                      f"{r['mape_day1']:.2f}%", f"{r['rmse_after']:.1f}", f"{r['mape_after']:.2f}%",
                      _fmt_ttc(r["ttc_steps"], r["ttc_reason"], step_minutes), str(r["refits"]),
                      f"{r['train_seconds']:.1f}")
    import sys

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    for line in notes(scores) if scores else ["nothing was scored: the run read no rows"]:
        console.print(f"note: {line}", markup=False)
    (result.output_dir / "linkload_scores.json").write_text(json.dumps(scores, indent=2))
    if plot and result.predictions:
        path = plot_forecasts(result, meta, result.output_dir / "linkload.png")
        console.print(f"plot: {path}")
        log_run_artifacts(result, [path, result.output_dir / "linkload_scores.json"])
    return scores


def plot_forecasts(result: Any, meta: dict[str, Any], path: Path) -> Path:
    """Actual load vs each forecast from two days before to three days after the failure (the
    last five scored days when the stream has no failure or the run stopped before it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    day = PROTOCOL["steps_per_day"]
    step_hours = float(meta.get("step_minutes") or PROTOCOL["step_minutes"]) / 60
    first = next(iter(result.predictions.values()))
    steps = first["offset"]
    end = int(steps[-1]) + 1 if len(steps) else 0
    failure = meta.get("failure_offset")
    shown = failure is not None and int(failure) < end
    zero = int(failure) if shown else end
    lo, hi = (max(0, zero - 2 * day), zero + 3 * day) if shown else (max(0, end - 5 * day), end)
    fig, ax = plt.subplots(figsize=(13, 5))
    sel = (steps >= lo) & (steps < hi)
    hours = (steps[sel] - zero) * step_hours
    ax.plot(hours, first["truth"][sel], color="black", lw=1.6, label="actual load")
    for name, arrays in result.predictions.items():
        ax.plot(hours, arrays["prediction"][sel], lw=0.9, label=name)
    if shown:
        ax.axvline(0, color="red", ls="--", lw=1.2, label=f"failure of {failed_label(meta)}")
        # later events (another failure, a repair) change the network state again
        later = [int(st["start_step"]) * int(meta.get("rows_per_step") or 1)
                 for st in meta.get("failure_states") or [] if int(st["start_step"]) > 0]
        for i, offset in enumerate(o for o in later if zero < o and lo <= o < hi):
            ax.axvline((offset - zero) * step_hours, color="red", ls=":", lw=1.0,
                       label="another failure or a repair" if i == 0 else None)
    drawn = set()
    for e in result.drift_events:
        h = (e.offset - zero) * step_hours
        if lo <= e.offset < hi:
            ax.axvline(h, color="grey", ls=":", lw=0.8, label="drift detected" if "d" not in drawn else None)
            drawn.add("d")
    ax.set_xlabel("hours from the failure" if shown else "hours before the last scored step")
    ax.set_ylabel(f"load of link {meta.get('target_label') or meta.get('target_link')}")
    ax.set_title(f"{meta.get('topology')} {meta.get('scenario')}: failed {failed_label(meta)} "
                 f"(shift rho={_rho(meta)})")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the comparison -----------------------------------------------------------------------
def run_one(topology: str, scenario: str, seed: int, *, set: str | None = "full", strategies: Any = None,
            failures: Any = None, normalisation: str = "global", runner: str = "local", tracking: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """One configuration of the comparison: its scores per strategy."""
    source = protocol_source(topology, scenario, seed, failures=failures)
    pipeline = build(source, seed=seed, set=set, strategies=strategies, normalisation=normalisation)
    t0 = time.perf_counter()
    result = pipeline.run(runner=runner, tracking=tracking, progress=progress, keep_predictions=True)
    meta = source.metadata()
    return {"topology": topology, "scenario": scenario, "seed": seed, "target_link": meta.get("target_link"),
            "failed_link": meta.get("failed_link"), "failed": meta.get("failed"), "rho": meta.get("rho"),
            "seconds": time.perf_counter() - t0, "scores": score_run(result, meta)}


def _run_one_quietly(args: tuple[Any, ...]) -> dict[str, Any]:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    topology, scenario, seed, kwargs = args
    return run_one(topology, scenario, seed, **kwargs)


COMPARE_OPTIONS = ("topologies", "scenarios", "seeds", "set", "strategies", "failures", "normalisation",
                   "runner", "tracking", "out", "progress", "jobs")


def compare(*, topologies: list[str], scenarios: list[str], seeds: list[int], set: str | None = "full",
            strategies: Any = None, failures: Any = None, normalisation: str = "global", runner: str = "local",
            tracking: bool = False, out: Path = Path("results/linkload"), progress: bool = True, jobs: int = 1,
            **unknown: Any) -> dict[str, Any]:
    """Run the comparison and write ``<out>.json`` and ``<out>.md`` (the README table).

    Every (topology, scenario, seed) runs the protocol's stream (`protocol_source`) with the
    strategies of ``set`` (or ``strategies``, a comma list from it), seeded with the run's
    seed; ``failures`` (as `build` takes them) replace each scenario's chosen failure, the
    scenario then choosing only the target. Options are checked, and the failures parsed on
    every topology, before anything runs. ``jobs`` configurations run at once, each in its
    own process with one torch thread.
    """
    import concurrent.futures as cf
    import multiprocessing

    if unknown:
        import difflib

        hint = {"topology": "topologies", "scenario": "scenarios", "seed": "seeds"}
        close = {k: difflib.get_close_matches(k, [*COMPARE_OPTIONS, *hint], n=1) for k in sorted(unknown)}
        named = [f"{k} (say {hint[k]}=[...])" if k in hint else
                 f"{k} (did you mean {close[k][0]}?)" if close[k] else k for k in sorted(unknown)]
        raise ValueError(f"unknown linkload compare option(s) {', '.join(named)}; it takes set, strategies "
                         f"and failures besides the sweep (topologies, scenarios, seeds) and the run's "
                         f"settings (normalisation, runner, tracking, out, progress, jobs)")
    strategy_names(set, strategies)
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation is one of {NORMALISATIONS}, got {normalisation!r}")
    if not (topologies and scenarios and seeds):
        raise ValueError("compare needs at least one topology, scenario and seed")
    seeds = [_integer("seed", x, 0) for x in seeds]
    if failures is not None:  # a misspelt node fails here, not in a worker minutes later
        for t in topologies:
            protocol_source(t, scenarios[0], seeds[0], failures=failures)
    configs = [(t, sc, seed, {"set": set, "strategies": strategies, "failures": failures,
                              "normalisation": normalisation, "runner": runner, "tracking": tracking,
                              "progress": progress and jobs == 1})
               for t in topologies for sc in scenarios for seed in seeds]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []

    def done(run: dict[str, Any]) -> None:
        runs.append(run)
        rho = "n/a" if run["rho"] is None else f"{run['rho']:.2f}"
        print(f"[{len(runs)}/{len(configs)}] {run['topology']} {run['scenario']} seed {run['seed']}: "
              f"{run['seconds']:.0f} s (target {run['target_link']}, failed {run['failed']}, rho {rho})",
              flush=True)

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
    if strategies is not None:
        doc["strategies"] = strategy_names(set, strategies)
    if failures is not None:
        doc["failures"] = failures if isinstance(failures, str) else list(failures)
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
            rhos = [np.nan if g["rho"] is None else g["rho"] for g in group]
            row: dict[str, Any] = {"topology": topology, "scenario": scenario, "strategy": name,
                                   "seeds": len(vals), "rho": float(np.mean(rhos))}
            for m in ("rmse_before", "mape_before", "mape_day1", "mape_after", "rmse_day1", "rmse_after",
                      "train_seconds", "refits"):
                xs = np.array([v[m] for v in vals], dtype=float)
                row[m] = float(np.mean(xs))
                row[m + "_std"] = float(np.std(xs))
            ttc = [v["ttc_steps"] for v in vals]
            row["ttc_steps"] = ttc
            row["ttc_reasons"] = [v.get("ttc_reason") for v in vals]
            row["converged"] = sum(t is not None for t in ttc)
            rows.append(row)
    return rows


#: a time to convergence per seed in the comparison's table: steps, or why there is none
TTC_MARKS = {"never": "-", "stream ended": "end"}


def markdown_table(doc: dict[str, Any]) -> str:
    hold = doc["protocol"]["hold_steps"]
    chosen = ""
    if doc.get("failures") is not None:
        chosen += f", failures {doc['failures']}"
    if doc.get("strategies") is not None:
        chosen += f", strategies {', '.join(doc['strategies'])}"
    lines = [
        f"Seeds {doc['seeds']}, normalisation {doc['normalisation']}{chosen}; mean ± std over seeds; "
        f"time to convergence per seed in steps of 15 min ('-' = never; 'end' = back in band when the "
        f"stream ended, but for fewer than the rule's {hold} steps: not converged within the stream).",
        "",
        "| topology | shift (rho) | strategy | MAPE before | MAPE day 1 | MAPE after | RMSE day 1 | "
        "time to converge | re-fits | train s |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in doc["table"]:
        reasons = r.get("ttc_reasons") or [None] * len(r["ttc_steps"])
        ttc = ", ".join(str(t) if t is not None else TTC_MARKS.get(why or "never", "n/a")
                        for t, why in zip(r["ttc_steps"], reasons))
        lines.append(
            f"| {r['topology']} | {r['scenario']} ({r['rho']:.2f}) | {r['strategy']} | "
            f"{r['mape_before']:.2f} ± {r['mape_before_std']:.2f} | {r['mape_day1']:.2f} ± {r['mape_day1_std']:.2f} | "
            f"{r['mape_after']:.2f} ± {r['mape_after_std']:.2f} | {r['rmse_day1']:.0f} | {ttc} | "
            f"{r['refits']:.0f} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
