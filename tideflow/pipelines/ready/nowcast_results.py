"""The nowcast comparison's results page: bands, tables and pooled intervals.

What `tideflow.pipelines.ready.nowcast.compare` writes to ``results/nowcast.md`` from
its JSON document: the issue's band for each configuration (`BANDS`, `band_kind`,
`band_met`), one row per series and configuration with the MAE ratio to ``fixed``
and its paired day-block bootstrap interval, the contrasts of the adaptive window
with the fixed shorter ones, and the README's tables pooled over the stations
(`summary_table`). Everything here reads the document alone (its ``protocol`` says
which bootstrap and trigger settings the run used), so a results file can be
re-tabled without re-running it.

>>> band_kind("fixed480"), band_kind("vh_budget"), band_kind("both_budget"), band_kind("seasonal")
('vh', 'vh', 'both', None)
>>> band_met("vh", {"mae_rel": 1.10, "mae_rel_ci": [1.02, 1.19], "rows_rel": 0.4})
True
>>> band_met("vh", {"mae_rel": 1.10, "mae_rel_ci": [1.02, 1.19], "rows_rel": 0.4}, worst=True)
False
"""

from __future__ import annotations

import json
from typing import Any

from tideflow.pipelines.metrics.day_errors import pool_days, ratio_interval

REFERENCES = ["persistence", "seasonal"]
#: the issue's bands, our translation of the paper's claims, by kind (`band_kind`)
BAND_KINDS = {
    "vh": "training rows -50 % or more, MAE +15 % or less",
    "trigger": "fits -70 % or more, MAE within +-5 %",
    "both": "error x compute (rows) -95 % or more",
}
BANDS = {name: BAND_KINDS[kind] for name, kind in (
    ("vh", "vh"), ("vh_budget", "vh"), ("fixed480", "vh"), ("fixed600", "vh"), ("trigger", "trigger"),
    ("both", "both"), ("both_budget", "both"))}


def band_kind(name: str) -> str | None:
    """Which of the issue's bands a configuration is judged by: a shorter window by the data
    reduction band (``fixed<rows>`` included, whatever its row count), the trigger by its own."""
    if name in ("vh", "vh_budget") or (name.startswith("fixed") and name[5:].isdigit()):
        return "vh"
    if name == "trigger":
        return "trigger"
    if name in ("both", "both_budget"):
        return "both"
    return None


def contrasts(names: list[str]) -> list[tuple[str, str]]:
    """The paired comparisons besides ``x vs fixed``: does adapting the window beat a fixed shorter
    window (each of the run's ``fixed<rows>`` steps)?"""
    return [("vh_budget", n) for n in names if n.startswith("fixed") and n[5:].isdigit()]


def band_met(name: str, r: dict[str, Any], *, worst: bool = False) -> bool | None:
    """Whether a configuration meets its band; ``worst``: with the MAE ratio at the far end of its
    interval (the upper end, or for the trigger's two-sided band both ends)."""
    if r.get("mae_rel") is None:
        return None
    kind = band_kind(name)
    lo, hi = r["mae_rel_ci"] if worst else (r["mae_rel"], r["mae_rel"])
    if kind == "vh":
        return bool(r.get("rows_rel") is not None and r["rows_rel"] <= 0.5 and hi <= 1.15)
    if kind == "trigger":
        return bool(r.get("fits_rel") is not None and r["fits_rel"] <= 0.3 and abs(lo - 1) <= 0.05
                    and abs(hi - 1) <= 0.05)
    rows = r.get("rows_rel")
    return bool(rows is not None and hi * rows <= 0.05)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * (v - 1):+.0f} %"


def age_triggers(run: dict[str, Any], step: str, max_age: int) -> int | None:
    """How many of a single-station run's triggers came from the max-age fallback, not from the error.

    The trigger counts one error per row of the station, so in a one-station stream an age
    fire is exactly ``max_age`` offsets after the previous fire. The first fire has no
    previous one and is always counted as an error fire.
    """
    offsets = sorted(e["offset"] for e in run.get("drift_events", []) if e["step"] == step)
    if not offsets:
        return 0
    return sum(1 for a, b in zip(offsets, offsets[1:]) if b - a == max_age)


def dumps(doc: dict[str, Any]) -> str:
    """JSON with two-space indents, except that a list of plain numbers stays on one line (the
    per-horizon and per-day error sums would otherwise take one line per number)."""
    import re

    text = json.dumps(doc, indent=2)
    return re.sub(r"\[\s+([-+0-9.eE]+(?:,\s+[-+0-9.eE]+)*)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def _ci(r: dict[str, Any] | None, key: str = "mae_rel_ci") -> str:
    ci = None if r is None else r.get(key)
    return "" if ci is None else f" [{100 * (ci[0] - 1):+.0f}, {100 * (ci[1] - 1):+.0f}]"


def _band_text(r: dict[str, Any]) -> str:
    band = r.get("band_met")
    if band is None:
        return "-"
    if not band:
        return "no"
    return "yes" if r.get("band_met_ci") in (None, True) else "yes, not at the CI's end"


def _fitting(scores: dict[str, Any]) -> list[str]:
    """A run's configurations that fit, in the order the pipeline lists them."""
    return [n for n in scores if n not in REFERENCES]


def _cpu_text(doc: dict[str, Any]) -> str:
    """The runs' own CPU time, where the document records it: the minutes in the header are wall
    time, which other jobs on a shared machine stretch; CPU time is what the comparison cost."""
    cpu = [r["cpu_seconds"] for r in doc.get("runs", []) if r.get("cpu_seconds") is not None]
    if not cpu or len(cpu) != len(doc["runs"]):
        return ""
    return (f" CPU time of the {len(cpu)} runs' processes: {sum(cpu) / 60:.0f} min in all "
            f"({min(cpu) / 60:.0f}-{max(cpu) / 60:.0f} min per run).")


def _feed_text(protocol: dict[str, Any]) -> str:
    """How the weather feed emitted values outside their physical range, said in the header (a
    page must say what data its numbers come from; the protocol records it, the JSON keeps it).
    A protocol without the key is a source of one's own (no such handling)."""
    if protocol.get("implausible") == "missing":
        return (" Weather feed: values outside their physical range emitted as missing (the default; "
                "`--set implausible=keep` emits them as they are).")
    if protocol.get("implausible") == "keep":
        return " Weather feed: values outside their physical range emitted as they are (`--set implausible=keep`)."
    return ""


def markdown_table(doc: dict[str, Any]) -> str:
    """The results page: one row per series and configuration (ratios to ``fixed`` with their
    day-block bootstrap intervals), the paired adaptive-vs-shorter-window contrasts, and the
    tables pooled over the stations (`summary_table`)."""
    p = doc["protocol"]
    boot = p.get("bootstrap", {"level": 0.95, "draws": 2000, "seed": 0})
    max_age = p.get("trigger", {}).get("max_age", 168)
    scored = ("every forecast from each series' first fit to the stream's end scored" if p.get("eval_hours") is None
              else f"{p['eval_hours']} h scored per series")
    lines = [
        f"Nowcast comparison (`tideflow compare nowcast`, {doc['seconds'] / 60:.0f} min): stations "
        f"{', '.join(p['stations'])}, horizons 1-{p['horizons']} h, re-fit cadence {p['batch_hours']} h, "
        f"window {p['window']} rows, {scored}. MAE = mean over horizons of the "
        "matured forecasts' MAE (deg F for temp, mph for wind); other columns relative to `fixed` "
        "(E x C = MAE ratio x compute ratio). In brackets: the paired day-block bootstrap interval "
        f"({100 * boot['level']:.0f} %, {boot['draws']} draws; the days scored are resampled, the same days for "
        "both configurations). Band: the issue's target for that configuration, at the MAE ratio and at the "
        "interval's far end." + _cpu_text(doc) + _feed_text(p),
        "",
        "| model | series | config | MAE | MAE at 1/2/3/4/5/6 h | MAE vs fixed [CI] | train rows vs fixed | "
        "fits (vs fixed) | of which max-age | train s vs fixed | E x C rows | E x C seconds | band met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pairs: list[str] = []
    for run in doc["runs"]:
        series = f"{run['station']} {run['target']}"
        fitting = _fitting(run["scores"])
        for name in fitting + REFERENCES:
            r = run["scores"].get(name)
            if r is None or r["mae"] is None:
                continue
            fits = name in fitting
            lines.append(
                f"| {run['model']} | {series} | {name} | {r['mae']:.3f} | "
                f"{'/'.join('-' if m is None else format(m, '.2f') for m in r['mae_h'])} | "
                f"{pct(r.get('mae_rel'))}{_ci(r)} | "
                f"{pct(r.get('rows_rel')) if fits else '-'} | "
                f"{r['fits']} ({pct(r.get('fits_rel')) if fits else '-'}) | "
                f"{age_triggers(run, name, max_age) if name in ('trigger', 'both', 'both_budget') else '-'} | "
                f"{pct(r.get('seconds_rel')) if fits else '-'} | "
                f"{'-' if r.get('ec_rows_rel') is None or not fits else format(r['ec_rows_rel'], '.3f')} | "
                f"{'-' if r.get('ec_seconds_rel') is None or not fits else format(r['ec_seconds_rel'], '.3f')} | "
                f"{_band_text(r)} |")
        for a, r in run["scores"].items():
            for b, v in r.get("vs", {}).items():
                pairs.append(f"| {run['model']} | {series} | `{a}` vs `{b}` | {pct(v['mae_rel'])}{_ci(v, 'ci')} | "
                                 f"{pct(r['train_rows'] / run['scores'][b]['train_rows'] if run['scores'][b]['train_rows'] else None)} |")
    names = list(dict.fromkeys(n for run in doc["runs"] for n in _fitting(run["scores"]) if band_kind(n)))
    lines += ["", "Bands: " + "; ".join(f"`{n}`: {BAND_KINDS[band_kind(n)]}" for n in names)  # type: ignore[index]
              + "."]
    if pairs:
        lines += ["", "Adapting the window against a fixed shorter window, paired on the same days (MAE ratio "
                  "[bootstrap interval]; training rows ratio):", "",
                  "| model | series | contrast | MAE ratio [CI] | train rows ratio |", "|---|---|---|---|---|",
                  *pairs]
    lines += ["", "Pooled over the stations (the README's tables):", "", summary_table(doc)]
    return "\n".join(lines) + "\n"


def _span(values: list[float], fmt: Any) -> str:
    if not values:
        return "-"
    texts = sorted({fmt(v) for v in values}, key=lambda t: float(t.split()[0]))
    return texts[0] if len(texts) == 1 else f"{texts[0].split()[0]}..{texts[-1]}"


def pooled(runs: list[dict[str, Any]], name: str, ref: str = "fixed", *,
           boot: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``name`` against ``ref`` over several runs (the stations of one model and variable): the
    MAE ratio of the pooled forecasts with its paired day-block interval (the same days of every
    station resampled together), and the pooled training rows and fits ratios."""
    boot = dict(boot or {})
    days = [r.get("day_errors") for r in runs]
    if any(d is None for d in days) or any(name not in r["scores"] or ref not in r["scores"] for r in runs):
        return None
    a, b = pool_days(days, name), pool_days(days, ref)  # type: ignore[arg-type]
    if a is None or b is None:
        return None
    ci = ratio_interval(a, b, **boot)
    if ci is None:
        return None
    rows = [sum(r["scores"][n]["train_rows"] for r in runs) for n in (name, ref)]
    fits = [sum(r["scores"][n]["fits"] for r in runs) for n in (name, ref)]
    out: dict[str, Any] = {"mae_rel": ci[0], "mae_rel_ci": [ci[1], ci[2]],
                           "rows_rel": rows[0] / rows[1] if rows[1] else None,
                           "fits_rel": fits[0] / fits[1] if fits[1] else None}
    out["ec_rows_rel"] = None if out["rows_rel"] is None else out["mae_rel"] * out["rows_rel"]
    if ref == "fixed" and band_kind(name) is not None:
        out["band_met"] = band_met(name, out)
        out["band_met_ci"] = band_met(name, out, worst=True)
    return out


def summary_table(doc: dict[str, Any]) -> str:
    """Per model and variable, pooled over the stations: each configuration's MAE ratio to
    ``fixed`` with its interval, its compute ratio and whether its band holds; then the paired
    contrasts of the adaptive window with the fixed shorter ones. Runs without day errors (older
    result files) show the range over the stations of the point ratios instead."""
    boot = doc.get("protocol", {}).get("bootstrap")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in doc["runs"]:
        groups.setdefault((run["model"], run["target"]), []).append(run)
    names = _fitting(doc["runs"][0]["scores"]) if doc["runs"] else []
    window_rules = [n for n in names if band_kind(n) == "vh"]
    retrain = [n for n in names if band_kind(n) in ("trigger", "both")]
    versus = contrasts(names)

    def cell(runs: list[dict[str, Any]], name: str, compute: str) -> str:
        if name not in runs[0]["scores"]:
            return "-"
        pool = pooled(runs, name, boot=boot)
        if pool is None:  # no day errors: the range of the stations' point ratios
            col = lambda key: [r["scores"][name][key] for r in runs if r["scores"][name].get(key) is not None]  # noqa: E731
            fmt = (lambda v: f"{v:.3f}") if compute == "ec_rows_rel" else pct  # noqa: E731
            return f"{_span(col('mae_rel'), pct)} / {_span(col(compute), fmt)}"
        comp = pool.get(compute)
        comp_text = "-" if comp is None else (f"{comp:.3f}" if compute == "ec_rows_rel" else pct(comp))
        return f"{pct(pool['mae_rel'])}{_ci(pool)} / {comp_text} / {_band_text(pool)}"

    def contrast(runs: list[dict[str, Any]], a: str, b: str) -> str:
        pool = pooled(runs, a, b, boot=boot)
        return "-" if pool is None else f"{pct(pool['mae_rel'])}{_ci(pool)}"

    lines = ["| model | variable | " + " | ".join(f"`{n}`: MAE [CI] / rows / band" for n in window_rules)
             + "".join(f" | `{a}` vs `{b}`: MAE [CI]" for a, b in versus) + " |",
             "|---|---|" + "---|" * (len(window_rules) + len(versus))]
    for (model, target), runs in sorted(groups.items()):
        lines.append(f"| {model} | {target} | " + " | ".join(cell(runs, n, "rows_rel") for n in window_rules)
                     + "".join(f" | {contrast(runs, a, b)}" for a, b in versus) + " |")
    lines += ["", "| model | variable | " + " | ".join(
        f"`{n}`: MAE [CI] / {'fits' if n == 'trigger' else 'E x C rows'} / band" for n in retrain) + " |",
        "|---|---|" + "---|" * len(retrain)]
    for (model, target), runs in sorted(groups.items()):
        lines.append(f"| {model} | {target} | " + " | ".join(
            cell(runs, n, "fits_rel" if n == "trigger" else "ec_rows_rel") for n in retrain) + " |")
    return "\n".join(lines)
