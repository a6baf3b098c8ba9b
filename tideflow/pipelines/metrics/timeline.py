"""A run's timeline: each learn step's per-batch score over the stream, with every drift event
and task boundary drawn where it happened.

The ready pipelines draw plots of their own (link load, nowcast); this one is for every other
run that has something to mark (drift events of detect steps or of learners, HDC out-of-
distribution events, evaluated task boundaries), so that an event is always drawn somewhere.
The x axis is the stream position: each batch is placed at the rows scored up to its end,
which equals the stream offset when nothing was quarantined (quarantined rows shift later
batches left by their count, never reorder them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the per-batch score drawn for each kind of learner (higher is better for accuracy only)
SCORES = ("accuracy", "mae")


def has_marks(result: Any) -> bool:
    """Whether the run has anything a timeline would mark (a drift event or a task boundary)."""
    return bool(result.drift_events) or any(
        r.get("point") == "boundary" for records in result.evaluations.values() for r in records)


def timeline(result: Any, path: Path | str, *, title: str = "") -> dict[str, Any]:
    """Draw ``result`` (a `RunResult`) to ``path`` (PNG); returns what was drawn: ``path``,
    ``events`` (step -> the offsets of its drift events) and ``boundaries`` (offsets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 3.6))
    label = ""
    for name, records in result.per_batch.items():
        score = next((s for s in SCORES if any(s in r for r in records)), None)
        if score is None:
            continue
        label = label or score
        ends = np.cumsum([r.get("rows_scored", 0) for r in records])
        ys = [r.get(score, np.nan) for r in records]
        ax.plot(ends, ys, lw=1, label=name)
    ax.set_xlabel("stream position (rows)")
    ax.set_ylabel(f"per-batch {label or 'score'}")
    colours = plt.get_cmap("tab10")
    steps = sorted({e.step or e.detector for e in result.drift_events})
    drawn: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        offsets = [e.offset for e in result.drift_events if (e.step or e.detector) == step]
        drawn[step] = offsets
        detector = next(e.detector for e in result.drift_events if (e.step or e.detector) == step)
        for j, off in enumerate(offsets):
            ax.axvline(off, color=colours((i + 3) % 10), lw=0.9, alpha=0.8,
                       label=f"{step}: {detector} ({len(offsets)})" if j == 0 else None)
    boundaries = sorted({r["offset"] for records in result.evaluations.values() for r in records
                         if r.get("point") == "boundary" and r.get("offset") is not None})
    for j, off in enumerate(boundaries):
        ax.axvline(off, color="black", ls="--", lw=0.8, label="task boundary" if j == 0 else None)
    ax.set_title(title or f"{result.pipeline}: scores, drift events and task boundaries", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"path": Path(path), "events": drawn, "boundaries": boundaries}


__all__ = ["has_marks", "timeline"]
