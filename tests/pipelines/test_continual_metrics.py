"""The accuracy matrix's summary numbers against their definitions on hand-made records."""

from __future__ import annotations

import pytest

from tideflow.pipelines.metrics.continual import continual_metrics


def _records(matrix: list[list[float]], start: list[float]) -> list[dict]:
    recs = [{"point": "start", "task": t, "accuracy": a} for t, a in enumerate(start)]
    for i, row in enumerate(matrix):
        point = "end" if i == len(matrix) - 1 else "boundary"
        recs += [{"point": point, "task": t, "accuracy": a, "seq": i} for t, a in enumerate(row)]
    return recs


def test_forgetting_counts_only_rows_after_the_task_was_learned():
    # task 1 scores 0.9 by chance after task 0 (before it was learned), 0.6 once learned, 0.6 at
    # the end: nothing was forgotten of it; task 0 went 0.8 -> 0.5 -> 0.4: forgot 0.4
    m = continual_metrics(_records([[0.8, 0.9, 0.1], [0.5, 0.6, 0.2], [0.4, 0.6, 0.7]], [0.1, 0.1, 0.1]))
    assert m.forgetting == pytest.approx((0.4 + 0.0) / 2)
    assert m.bwt == pytest.approx(((0.4 - 0.8) + (0.6 - 0.6)) / 2)
    assert m.fwt == pytest.approx(((0.9 - 0.1) + (0.2 - 0.1)) / 2)
    assert m.average_accuracy == pytest.approx((0.4 + 0.6 + 0.7) / 3)
