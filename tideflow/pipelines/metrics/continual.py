"""Continual-learning metrics from held-out evaluations: the accuracy matrix and what it gives.

A learn step evaluates every task's held-out rows before the first batch, at every task
boundary and at the end of the stream (`tideflow.pipelines.learn_step`). With T tasks in
stream order, ``R[i, j]`` is the accuracy on task j's held-out rows after learning task i
(the evaluation at the boundary that ends task i; the last row is the end of the stream),
and ``b[j]`` the accuracy on task j before any learning (the untrained model). Then:

* average accuracy: ``ACC = 1/T sum_j R[T-1, j]``;
* backward transfer (Lopez-Paz & Ranzato, 2017): ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``
  (negative: forgetting);
* forward transfer (the same paper): ``FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])``, against the
  strategy's own untrained accuracy;
* average forgetting (Chaudhry et al., 2018): ``F = 1/(T-1) sum_{j<T-1} max_{j<=l<T-1} (R[l, j]) - R[T-1, j]``:
  the best accuracy on task j once it was learned, less the final one. Rows before task j are
  left out (their definition's max runs over every earlier row): a model that never saw task
  j's classes cannot forget them, and under task-IL masking a guess can score well there.

On a stream with task ids the same is computed with each prediction masked to the task's
classes (task-incremental, ``*_til``) beside the unmasked one (class-incremental). When the
evaluation points are not one per task (boundaries from drift events, say), only the matrix
and the average accuracy of its last row are given.

>>> recs = [{"point": "start", "task": t, "accuracy": 0.5} for t in (0, 1)]
>>> recs += [{"point": "boundary", "task": 0, "accuracy": 0.9}, {"point": "boundary", "task": 1, "accuracy": 0.6}]
>>> recs += [{"point": "end", "task": 0, "accuracy": 0.7}, {"point": "end", "task": 1, "accuracy": 0.95}]
>>> m = continual_metrics(recs)
>>> m.matrix, round(m.average_accuracy, 3), round(m.bwt, 3), round(m.fwt, 3), round(m.forgetting, 3)
([[0.9, 0.6], [0.7, 0.95]], 0.825, -0.2, 0.1, 0.2)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tideflow.pipelines.evaluation import key_order


@dataclass
class ContinualMetrics:
    """The accuracy matrix of one learn step and the metrics made from it (module docstring)."""

    tasks: list[Any]
    matrix: list[list[float | None]]  # R[i][j]: after the i-th evaluation point, on task j
    start: list[float | None]  # b[j]: before any learning
    average_accuracy: float | None
    bwt: float | None
    fwt: float | None
    forgetting: float | None
    matrix_til: list[list[float | None]] | None = None
    average_accuracy_til: float | None = None
    bwt_til: float | None = None
    fwt_til: float | None = None
    forgetting_til: float | None = None

    def scalars(self) -> dict[str, float]:
        """The single numbers (for the summary and MLflow), those that are defined."""
        names = ("average_accuracy", "bwt", "fwt", "forgetting", "average_accuracy_til", "bwt_til", "fwt_til",
                 "forgetting_til")
        return {n: float(getattr(self, n)) for n in names if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known and len(known) == len(values) else None


def _metrics(rows: list[list[float | None]], start: list[float | None]) -> dict[str, float | None]:
    T = len(start)
    out: dict[str, float | None] = {"average_accuracy": _mean(rows[-1]) if rows else None,
                                    "bwt": None, "fwt": None, "forgetting": None}
    if len(rows) != T or T < 2:
        return out
    R = rows
    out["bwt"] = _mean([None if R[-1][j] is None or R[j][j] is None else R[-1][j] - R[j][j] for j in range(T - 1)])
    out["fwt"] = _mean([None if R[j - 1][j] is None or start[j] is None else R[j - 1][j] - start[j]
                        for j in range(1, T)])
    forgetting = []
    for j in range(T - 1):
        before = [R[i][j] for i in range(j, T - 1)]  # from the row that learned task j on
        forgetting.append(None if None in before or R[-1][j] is None else max(before) - R[-1][j])  # type: ignore[type-var]
    out["forgetting"] = _mean(forgetting)
    return out


def continual_metrics(records: list[dict[str, Any]]) -> ContinualMetrics:
    """The metrics of one learn step from its evaluation records (``RunResult.evaluations[step]``)."""
    tasks = sorted({r["task"] for r in records}, key=key_order)
    col = {t: j for j, t in enumerate(tasks)}

    def rows_of(field: str) -> tuple[list[list[float | None]], list[float | None]]:
        start: list[float | None] = [None] * len(tasks)
        rows: list[list[float | None]] = []
        current: list[float | None] | None = None
        last_key: Any = object()
        for r in records:
            if r["point"] == "start":
                start[col[r["task"]]] = r.get(field)
                continue
            key = (r["point"], r.get("after_task"), r.get("offset"), r.get("seq"))
            if key != last_key:
                current = [None] * len(tasks)
                rows.append(current)
                last_key = key
            assert current is not None
            current[col[r["task"]]] = r.get(field)
        return rows, start

    rows, start = rows_of("accuracy")
    cil = _metrics(rows, start)
    out = ContinualMetrics(tasks=tasks, matrix=rows, start=start, **cil)  # type: ignore[arg-type]
    if any("accuracy_til" in r for r in records):
        rows_til, start_til = rows_of("accuracy_til")
        til = _metrics(rows_til, start_til)
        out.matrix_til = rows_til
        out.average_accuracy_til = til["average_accuracy"]
        out.bwt_til, out.fwt_til, out.forgetting_til = til["bwt"], til["fwt"], til["forgetting"]
    return out


def heatmap(metrics: ContinualMetrics, path: Any, *, title: str = "") -> Any:
    """The accuracy matrix as a PNG (rows: after task i; columns: task j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    R = np.array([[np.nan if v is None else v for v in row] for row in metrics.matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(metrics.tasks), 1.0 + 0.6 * max(1, len(R))))
    im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            if not np.isnan(R[i, j]):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if R[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(metrics.tasks)), [str(t) for t in metrics.tasks])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after task")
    ax.set_title(title or "accuracy matrix", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
