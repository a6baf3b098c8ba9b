"""Per-event learning for the link-load forecasters (``WindowForecaster(per_event=True)``).

Transport size is not learning size: the engine moves batches of many rows, while a
forecaster of `tideflow.strategies.window_forecaster` learns at exact sample counts
(the first fit at ``pretrain_steps``, `IncrementalRefit
<tideflow.strategies.forecasting.IncrementalRefit>`'s re-fit every ``refit_every``
samples, `LiquidForecaster <tideflow.strategies.liquid.LiquidForecaster>`'s fine-tune
every ``finetune_every`` samples and its drift re-fit ``min_refit_samples`` after a
drift event). The fitted weights already never depend on how the stream is cut, and with
``within_batch="observed"`` neither do the inputs of a forecast; what does by default is
which model forecasts a row: the batch is predicted before it is learned, so rows after
a fit that falls inside the batch are forecast by the model from before that fit (a
batch of 4 rows re-fits up to 3 rows late for its predictions, compared with batches of
one row).

With ``per_event=True``, ``predict`` makes one pass over the batch: it cuts each series'
rows at every sample count where a fit is due (``_next_event``) and after each row of a
series that has no value yet, forecasts each piece with the model that has learned
every row before it and then learns the piece, on copies of the series. Every row is
so predicted as with transport batches of one row; the first row of a series never
seen is forecast by the mean of every target before it, the rows of other series
earlier in the batch included, as one-row batches would have it. Cutting where no fit is
due changes no forecast (``within_batch="observed"``), so the cuts need only to be at
least where fits are due. The pass leaves the instance as it was (copies, counters
restored): ``predict`` changes nothing the strategy holds, and predicting the same rows
again returns the same forecasts. ``learn`` of the same rows (same stream, same offsets)
adopts the copies and the pass's fit counts instead of fitting again, and counts the
pass's time as training time; a ``learn`` whose rows were not so predicted, or that
follows another ``learn`` since they were, learns as in the default mode, which reaches
the same state because fits happen at exact counts.

What it needs, and what stays at batch ends: the rows' targets while the batch is
predicted (``within_batch="observed"``, required at construction) and no label delay:
with one, the next rows are predicted before the rows before them are learned, so their
forecasts lack those rows (as in the default mode; learning is not affected). A batch
without its target column is predicted by the model as it is. A drift *event*
comes from the engine's detector between batches (it reads a whole batch's errors), so
it is noticed at a batch end; the re-fit it schedules is due at an exact count after
that, and only that re-fit is placed per event. An ``on_drift`` between ``predict`` and
``learn`` drops the pass (its copies did not know the re-fit).

Which semantics ran: ``StepReport.extra["per_event_rows"]`` (present only with
``per_event=True``) counts the rows learned after per-event predictions, so a run's
summary says it; ``params()`` and ``describe()`` name the switch only when it is on, so
a default graph keeps its description and fingerprint.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np

from tideflow.stream.batch import Batch
from tideflow.strategies.series import forward_fill

__all__ = ["COUNTERS", "Pass", "per_event_pass"]

# ``f`` below is a `WindowForecaster` and a series a `Series` of
# `tideflow.strategies.window_forecaster`, which imports this module: they are typed ``Any`` here
# so that the two modules do not import each other

# the instance totals a fit moves: a pass restores them and hands their increments to ``learn``
COUNTERS = ("fits", "fit_windows", "examples")


class Pass:
    """A per-event pass over one batch, waiting for ``learn`` of the same rows.

    ``preds``: every row's forecast. ``series``: each series the pass cut, after learning
    all of its rows (None: it had only missing values, so nothing is kept); series that
    were not cut were only forecast, and ``learn`` learns them as usual. ``leading``:
    leading missing values the pass left out, ``counts``: increments of `COUNTERS`,
    ``seconds``: the pass's wall time.
    """

    __slots__ = ("stream_id", "offsets", "learned", "preds", "series", "leading", "counts",
                 "seconds")

    def __init__(self, batch: Batch, learned: int) -> None:
        self.stream_id = batch.stream_id
        self.offsets = batch.offsets
        self.learned = learned  # the instance's rows learned when the pass was made
        self.preds = np.empty(len(batch), dtype=np.float64)
        self.series: dict[Any, Any] = {}
        self.leading = 0
        self.counts: tuple[int, ...] = (0,) * len(COUNTERS)
        self.seconds = 0.0

    def covers(self, batch: Batch, learned: int) -> bool:
        """Whether ``batch`` holds the rows this pass was made for, and nothing was learned since
        (with a label delay the next rows are predicted before these are learned: the copies
        would then lack the rows learned in between)."""
        return (self.learned == learned and self.stream_id == batch.stream_id
                and np.array_equal(self.offsets, batch.offsets))


def running_fallback(f: Any, values: np.ndarray) -> np.ndarray:
    """The forecast of a series never seen, row by row: the mean of every finite target the
    instance learned before the batch and of the batch's rows before the row (0.0 before any)."""
    finite = np.isfinite(values)
    sums = f._target_sum + np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))[:-1]])
    nums = f._target_count + np.concatenate([[0], np.cumsum(finite)[:-1]])
    return np.divide(sums, nums, out=np.zeros(len(values)), where=nums > 0)


def per_event_pass(f: Any, batch: Batch, values: np.ndarray) -> Pass:
    """Each row of ``batch`` forecast by the model that has learned the rows before it (module
    docstring); ``values``: the batch's target column as float64."""
    start = time.perf_counter()
    counts = tuple(getattr(f, name) for name in COUNTERS)
    fallback = running_fallback(f, values)
    done = Pass(batch, f.n_learned)
    try:
        for k, rows in f._groups(batch):
            s = f._series.get(k)
            store: dict[Any, Any] = {}
            cut, pos = False, 0
            while pos < len(rows):
                # a piece ends where the next fit is due, or after one row while the series has
                # no value (its forecast is the running fallback, its learning may skip the row)
                if s is None or s.last is None:
                    m = 1
                else:
                    due = f._next_event(s)
                    m = len(rows) - pos if due is None else max(1, min(len(rows) - pos, due - s.n))
                part = rows[pos:pos + m]
                seen = forward_fill(values[part][:-1], None if s is None else s.last)
                done.preds[part] = f._forecast(s, m, seen, float(fallback[part[0]]))
                pos += m
                if pos < len(rows) and not cut:  # learning starts: on a copy of the series
                    cut = True
                    if s is not None:
                        store[k] = copy.deepcopy(s)
                if cut:
                    done.leading += f._learn_group(store, k, values[part])
                    s = store.get(k)
            if cut:
                done.series[k] = store.get(k)
        done.counts = tuple(getattr(f, name) - c for name, c in zip(COUNTERS, counts))
    finally:
        # the fits of the pass moved the instance's totals: ``learn`` adds them when it adopts
        for name, value in zip(COUNTERS, counts):
            setattr(f, name, value)
    done.seconds = time.perf_counter() - start
    return done
