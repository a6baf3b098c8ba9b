"""Split digits: a small image stream of tasks for the image strategies' tests (not a test file).

scikit-learn's digits (1797 images of 8x8 pixels, ten classes, shipped with the library, so
no download) cut into 5 tasks of 2 classes: task t holds classes 2t and 2t + 1. What the
builder keeps, and why:

* **Split.** Per class, a seeded permutation puts ``test_fraction`` of its rows in the
  held-out set of its task and the rest in the stream; the held-out rows are never learned,
  so ``RunResult.cl_metrics`` measures accuracy on rows no strategy has seen.
* **Pixels.** Standardised with the per-pixel mean and standard deviation of the stream's
  (training) rows of every task; a pixel that never varies there (the digits' always-blank
  corners) is only centred. One fixed preprocessing for every method, decided before any
  learning, so no method sees statistics of rows the others do not.
* **Scenarios.** ``"class"``: tasks one after the other, no task id (class-incremental); each
  task's last batch carries the source's end-of-task mark, so the engine evaluates the
  held-out sets at every task boundary. ``"task"``: the same batches with a ``task`` column
  (schema role ``task``), so the engine also reports task-incremental metrics (``*_til``:
  predictions masked to the task's classes). ``"iid"``: the very same training rows shuffled
  over all tasks, no marks and no task column: the joint-training reference a continual
  learner is compared with (held-out sets evaluated before the first and after the last batch).
* **Batches.** A task's rows are shuffled (seeded) and cut into ``batch_size`` rows; no batch
  spans two tasks (a task's last batch may be shorter). Offsets run on over the whole stream.
* **Unlabeled rows.** ``unlabeled()`` gives every stream row's image without its label: what a
  strategy that initialises on unlabeled data (a discrete key-value bottleneck's keys) gets
  through ``prepare``; ``unlabeled=False`` leaves it out.

`split_classes` does the same for any labelled array (another image set, a table's rows), so a
strategy can be tried on data other than the digits.

>>> src = split_digits("task", seed=0)
>>> src.schema().task, sorted(src.held_out()), len(src.unlabeled()) == src.num_rows
('task', [0, 1, 2, 3, 4], True)
>>> sorted(set(src.held_out()[2].column("label").to_pylist()))
[4, 5]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

import tideflow as tf

#: what the ``scenario`` argument takes
SCENARIOS = ("class", "task", "iid")
#: split digits' shape: 5 tasks of 2 classes
DIGITS_TASKS, DIGITS_CLASSES = 5, 10


def split_digits(scenario: str = "class", *, seed: int = 0, batch_size: int = 50, test_fraction: float = 0.3,
                 unlabeled: bool = True) -> tf.MemorySource:
    """Split digits (5 tasks x 2 classes) as a `tf.MemorySource` with held-out rows per task and
    unlabeled rows (module docstring). Columns: ``image`` (8x8 float32, standardised), ``label``
    (int64, the target) and, for ``scenario="task"``, ``task`` (int64, role ``task``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return split_classes(digits.images, digits.target, tasks=DIGITS_TASKS, scenario=scenario, seed=seed,
                         batch_size=batch_size, test_fraction=test_fraction, unlabeled=unlabeled,
                         stream_id="split-digits")


def split_classes(images: np.ndarray, labels: np.ndarray, *, tasks: int, scenario: str = "class", seed: int = 0,
                  batch_size: int = 50, test_fraction: float = 0.3, unlabeled: bool = True,
                  stream_id: str = "split") -> tf.MemorySource:
    """Any labelled array ``images`` of shape (n, *shape), ``labels`` integers, as a split stream.

    The sorted classes are cut into ``tasks`` groups of equal size in order (task t: the t-th
    group); everything else as in the module docstring. ``images`` of shape (n, d) become a
    ``d``-long vector column.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r}: use one of {SCENARIOS}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x = np.asarray(images, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if len(x) != len(y) or x.ndim < 2:
        raise ValueError(f"images {x.shape} and labels {y.shape}: need (n, ...) images and n labels")
    classes = np.unique(y)
    if len(classes) % tasks:
        raise ValueError(f"{len(classes)} classes do not split into {tasks} tasks of equal size")
    per_task = len(classes) // tasks
    task_of = {int(c): i // per_task for i, c in enumerate(classes)}

    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(tasks)]
    test_idx: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(tasks)]
    for c in classes:
        rows = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(test_fraction * len(rows))))
        t = task_of[int(c)]
        test_idx[t] = np.concatenate([test_idx[t], rows[:n_test]])
        train_idx[t] = np.concatenate([train_idx[t], rows[n_test:]])

    # standardise with the stream rows' statistics (all tasks), fixed before any learning
    stream_rows = np.concatenate(train_idx)
    mean = x[stream_rows].mean(axis=0)
    std = x[stream_rows].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)

    with_task = scenario == "task"
    fields: dict[str, Any] = {"image": tf.Tensor(tuple(x.shape[1:]))} if x.ndim > 2 else {
        "image": tf.Tensor((x.shape[1],))}
    fields["label"] = "int64"
    if with_task:
        fields["task"] = "int64"
    schema = tf.Schema(fields, target="label", task="task" if with_task else None)

    def columns(idx: np.ndarray, t: np.ndarray | None) -> dict[str, Any]:
        cols: dict[str, Any] = {"image": tf.tensor_array(x[idx]), "label": y[idx]}
        if with_task:
            cols["task"] = np.asarray(t, dtype=np.int64)
        return cols

    # the stream: per task, its shuffled rows in batches (iid: all rows shuffled together)
    chunks: list[tuple[np.ndarray, np.ndarray, bool]] = []
    if scenario == "iid":
        order = rng.permutation(stream_rows)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            chunks.append((idx, np.array([task_of[int(c)] for c in y[idx]]), False))
    else:
        for t in range(tasks):
            order = rng.permutation(train_idx[t])
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                chunks.append((idx, np.full(len(idx), t), s + batch_size >= len(order)))
    batches = []
    offset = 0
    for idx, t, ends in chunks:
        b = tf.Batch.from_pydict(columns(idx, t), stream_id=stream_id, first_offset=offset)
        batches.append(tf.Batch(b.data, stream_id, ends))
        offset += len(idx)

    held_out = {t: tf.Batch.from_pydict(columns(np.sort(test_idx[t]), np.full(len(test_idx[t]), t)),
                                        stream_id=f"{stream_id}-held-out", first_offset=0)
                for t in range(tasks)}
    free = None
    if unlabeled:
        free = tf.Batch.from_pydict({"image": tf.tensor_array(x[np.sort(stream_rows)])},
                                    stream_id=f"{stream_id}-unlabeled", first_offset=0)
    return tf.MemorySource(batches, schema, stream_id=stream_id, held_out=held_out, unlabeled=free)


def with_bad_labels(src: tf.MemorySource, bad: dict[int, dict[int, int | None]]) -> tuple[list, list]:
    """The source's batches with the labels ``bad[batch][row]`` put in, and the same batches with
    those rows removed instead (a batch whose every row is bad becomes empty): a stream with bad
    labels and the stream a strategy that skips them should learn exactly as."""
    dirty, clean = [], []
    for i, b in enumerate(src.batches_):
        rows = bad.get(i, {})
        labels = b.column("label").to_pylist()
        for r, v in rows.items():
            labels[r] = v
        dirty.append(b.with_column("label", pa.array(labels, type=pa.int64())))
        clean.append(b.filter([r not in rows for r in range(len(b))]))
    return dirty, clean
