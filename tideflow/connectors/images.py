"""Image streams for continual learning: a data set, a split, held-out test sets per task.

`ImageStream` turns an image data set (`tideflow.connectors.image_data`: scikit-learn's
digits, Fashion-MNIST from Debian's package, or a user's arrays through
`ImageStream.from_arrays`) into a seekable `Source` by one of five splits
(`tideflow.connectors.image_splits`: class-, task- and domain-incremental, blurry,
task-free). What it yields and what it keeps aside:

* **the stream**: batches of ``batch_size`` rows with offsets ``0 .. rows - 1``; columns
  ``image`` (a fixed-shape float32 tensor column: the image, or with an encoder the
  ``features`` column of the frozen network's feature vector), ``label`` (int64, the
  schema's target) and, on task-incremental and task-free streams, ``task`` (int64, the
  schema's task role). Batches end at task ends wherever the learner is told of them, and
  class-incremental, domain-incremental and blurry streams mark each task's last batch
  (``Batch.end_of_task``);
* ``held_out()``: each task's test rows (same columns), never part of the stream: what the
  engine evaluates before the first batch, at every task boundary and at the end;
* ``unlabeled()``: the training rows' images without labels (optionally a seeded subset
  of ``unlabeled_rows``), with their stream offsets: what a strategy's ``prepare`` sees
  (the key initialisation of a discrete key-value bottleneck).

Pixels (or features) are standardised per value with the mean and standard deviation of
the stream's training rows (a value that never varies keeps scale 1), as a data set's
normalisation constants would be; ``standardize=False`` keeps them as they are.

With ``encoder="efficientnet-lite0"`` every image is replaced by the 1280 features of the
frozen network (`tideflow.stream.encoder`: input ``image_size`` px, default 64; computed
once and cached on disk by content, so every split and seed of a data set reuses them).

The stream's data are computed on first use (the first batch, held-out set or unlabeled
set), not when the source is built: building one checks the data and the split only.

>>> src = ImageStream("digits", split="task-incremental", tasks=5, seed=0, batch_size=100)
>>> src.schema().task, src.schema().fields["image"].type.shape, src.num_rows
('task', [8, 8], 1347)
>>> first = next(iter(src)); len(first), sorted(set(first.column("task").to_pylist()))
(100, [0])
>>> sorted(src.held_out()), len(src.held_out()[0])
([0, 1, 2, 3, 4], 90)
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import RowIndexedSource, as_bool
from tideflow.connectors.image_data import ImageData, cap_per_class, from_arrays, load, permute, rotate
from tideflow.connectors.image_splits import SPLITS, SplitPlan, parse_views, plan_split, view_names
from tideflow.stream.batch import OFFSET, Batch, tensor_array
from tideflow.stream.encoder import DEFAULT_INPUT_SIZE, FrozenEncoder
from tideflow.stream.schema import Schema, Tensor

__all__ = ["ImageStream", "SPLITS"]

DEFAULT_BOUNDARIES = ("task_column", "end_of_task")


class ImageStream(RowIndexedSource):
    """A continual-learning image stream (see module docstring).

    Args:
        dataset: ``"digits"``, ``"fashion-mnist"``, or an `ImageData` (what `from_arrays` passes).
        split: one of `SPLITS`.
        tasks: number of tasks.
        seed: class order, the shuffles, the digits' test rows, the caps' choice.
        encoder: None (pixels) or ``"efficientnet-lite0"`` (or a `FrozenEncoder`).
        batch_size: rows per batch (a batch may be shorter where a task ends).
        image_size: with an encoder, its input side (default 64); without one, resize the
            images to this side (bilinear) before they travel.
        class_order: the classes in task order (default: a seeded permutation); ``"3;1;..."`` in a spec.
        blur: the blurry / task-free mixing window, a fraction of a task's rows (0 .. 0.5).
        domain: domain-incremental views: ``"rotation"``, ``"permutation"``, or one named view per task
            (``"clean;rot90;invert;flip+noise"``: `transform_view`).
        rows_per_task: domain-incremental only: ``"share"`` (a stratified 1/tasks of the training rows
            per task) or ``"all"`` (every training row in every task's view, reshuffled per task: the
            standard permuted-MNIST protocol; the stream is ``tasks`` times the training set).
        test_fraction: digits only: each class's share held out for testing.
        train_per_class / test_per_class: keep at most that many rows per class (seeded).
        standardize: standardise each value with the training rows' mean and deviation.
        unlabeled_rows: how many training rows ``unlabeled()`` holds (None: all).
        data_dir: where Fashion-MNIST's idx files are (default: Debian's folder).
        cache_dir: the feature cache's folder (encoder only).
        device: the encoder's device (None: CUDA when present).
    """

    kind = "images"

    def __init__(self, dataset: str | ImageData = "digits", split: str = "class-incremental", tasks: int = 5,
                 seed: int = 0, encoder: str | FrozenEncoder | None = None, batch_size: int = 64,
                 image_size: int | None = None, *, class_order: Any = None, blur: float | None = None,
                 domain: str = "rotation", test_fraction: float = 0.25, train_per_class: int | None = None,
                 test_per_class: int | None = None, standardize: bool = True, unlabeled_rows: int | None = None,
                 data_dir: str | None = None, cache_dir: str | None = None, device: str | None = None,
                 rows_per_task: str = "share") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if image_size is not None and (int(image_size) != image_size or image_size < 1):
            raise ValueError(f"image_size must be a whole number of pixels, got {image_size!r}")
        if unlabeled_rows is not None and unlabeled_rows < 1:
            raise ValueError(f"unlabeled_rows must be at least 1, got {unlabeled_rows}")
        data = dataset if isinstance(dataset, ImageData) else load(
            str(dataset), seed=seed, test_fraction=test_fraction, data_dir=data_dir)
        data = cap_per_class(data, train_per_class, test_per_class, seed)
        self.data = data
        self.dataset = data.name
        self.split = split
        self.tasks = int(tasks) if not isinstance(tasks, bool) and isinstance(tasks, (int, np.integer)) else tasks
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.image_size = None if image_size is None else int(image_size)
        named = parse_views(domain) if split == "domain-incremental" else None
        self.domain = ";".join(view_names(domain)) if named is not None else domain
        self.blur = blur
        self.standardize = as_bool(standardize)
        self.unlabeled_rows = unlabeled_rows
        self.options = {k: v for k, v in (("class_order", class_order), ("blur", blur),
                                          ("train_per_class", train_per_class), ("test_per_class", test_per_class),
                                          ("unlabeled_rows", unlabeled_rows)) if v is not None}
        if dataset == "digits":
            self.options["test_fraction"] = test_fraction
        if split == "domain-incremental":
            self.options["domain"] = self.domain
        if rows_per_task != "share":  # named only when not the default: existing streams' params stay as they were
            self.options["rows_per_task"] = rows_per_task
        if isinstance(encoder, FrozenEncoder):
            if self.image_size is not None and self.image_size != encoder.input_size:
                raise ValueError(f"image_size={self.image_size} differs from the given encoder's input_size "
                                 f"{encoder.input_size}: give one of them")
            self.encoder: FrozenEncoder | None = encoder
        elif encoder is not None:
            self.encoder = FrozenEncoder(str(encoder), input_size=self.image_size or DEFAULT_INPUT_SIZE,
                                         cache_dir=cache_dir, device=device)
        else:
            self.encoder = None
        geometric = named is not None and any(t in ("rot", "flip", "vflip") for view in named for t, _ in view)
        if (self.encoder is not None or self.image_size is not None or geometric or
                (split == "domain-incremental" and domain == "rotation")) and data.layout is None:
            raise ValueError(f"rows of shape {data.shape} are not (H, W), (C, H, W) or (H, W, C) images: they cannot be "
                             f"resized, rotated or encoded (pass layout= to from_arrays)")
        self.plan: SplitPlan = plan_split(split, data.y, data.train, data.test, tasks=self.tasks, seed=self.seed,
                                          class_order=class_order, blur=blur, domain=domain,
                                          pixels=int(np.prod(data.shape)), rows_per_task=rows_per_task)
        if class_order is not None:  # as plain data (a range or a "3;1;..." text becomes the list)
            self.options["class_order"] = list(self.plan.class_order)
        self.stream_id = (f"images-{data.name}-{split}-t{self.tasks}-s{self.seed}"
                          + ("" if rows_per_task == "share" else f"-{rows_per_task}"))
        # batches end where a task ends whenever the learner is told of task ends, so an
        # end-of-task mark always sits on the task's last row
        self._cuts = sorted(self.plan.ends) if self.plan.cut else []
        self._arrays: dict[str, Any] | None = None
        self._next = 0

    @classmethod
    def from_arrays(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, split: str = "class-incremental",
                    tasks: int = 5, classes: Any = None, value_range: tuple[float, float] | None = None,
                    layout: str | None = "auto", name: str = "arrays", **kwargs: Any) -> ImageStream:
        """A stream of a user's arrays (numpy, or torch tensors; any fixed shape per row) by the same
        splits; ``classes``, ``value_range``, ``layout`` as in `tideflow.connectors.image_data.from_arrays`,
        the other keywords as in `ImageStream`."""
        data = from_arrays(x_train, y_train, x_test, y_test, classes=classes, value_range=value_range,
                           layout=layout, name=name)
        return cls(data, split=split, tasks=tasks, **kwargs)

    # -- what the stream is -------------------------------------------------------------------
    @property
    def column(self) -> str:
        """The name of the image (or feature) column."""
        return "image" if self.encoder is None else "features"

    @property
    def row_shape(self) -> tuple[int, ...]:
        """One row's shape in the image (or feature) column."""
        if self.encoder is not None:
            return (self.encoder.dim,)
        if self.image_size is None:
            return self.data.shape
        s = self.image_size
        return {"hw": (s, s), "chw": (self.data.shape[0], s, s), "hwc": (s, s, self.data.shape[-1])}[self.data.layout]

    @property
    def boundaries(self) -> tuple[str, ...]:
        """What a learn step on this stream passes as ``boundaries=``: none on a task-free stream
        (its task column is for evaluation only), the engine's default otherwise."""
        return () if self.split == "task-free" else DEFAULT_BOUNDARIES

    @property
    def num_rows(self) -> int:
        return self.plan.rows

    def schema(self) -> Schema:
        spec: dict[str, Any] = {self.column: Tensor(self.row_shape, "float32"), "label": "int64"}
        if self.plan.task_column:
            spec["task"] = "int64"
        return Schema(spec, target="label", task="task" if self.plan.task_column else None)

    def params(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "tasks": self.tasks, "seed": self.seed,
                "encoder": self.encoder.name if self.encoder is not None else None, "batch_size": self.batch_size,
                "image_size": self.image_size, **self.options}

    def metadata(self) -> dict[str, Any]:
        plan = self.plan
        return {
            **super().metadata(), **self.params(),
            "origin": self.data.origin,
            "rows": plan.rows,
            "task_rows": [int((plan.task == t).sum()) for t in range(len(plan.task_classes))],
            "task_ends": list(plan.ends),
            "task_classes": plan.task_classes,
            "class_order": plan.class_order,
            "held_out_rows": {str(t): int(len(rows)) for t, (rows, _) in plan.held_out.items()},
            "task_column": plan.task_column,
            "end_of_task_marks": plan.marks,
            "boundaries": list(self.boundaries),
            "row_shape": list(self.row_shape),
            "encoder_input_size": self.encoder.input_size if self.encoder is not None else None,
            "value_range": list(self.data.value_range),
            "standardized": self.standardize,
            "views": {str(t): (v if v is None or isinstance(v, (float, str)) else "permutation")
                      for t, v in plan.views.items()},
        }

    # -- the data ---------------------------------------------------------------------------------
    def _view(self, rows: np.ndarray, view: int) -> np.ndarray:
        """The images of data-set ``rows`` in ``view`` (domain tasks), as pixels."""
        images = self.data.x[rows]
        if self.split != "domain-incremental":
            return images
        spec = self.plan.views[view]
        if isinstance(spec, str):
            return transform_view(images, spec, self.data.layout, self.data.value_range, seed=self.seed, rows=rows,
                                  view=view)
        if self.domain == "rotation":
            return rotate(images, spec, self.data.layout, self.data.value_range[0])
        return permute(images, spec)

    def _values(self, images: np.ndarray) -> np.ndarray:
        """What travels for ``images``: encoder features, resized pixels or the pixels, float32."""
        if self.encoder is not None:
            return self.encoder.encode(images, value_range=self.data.value_range, layout=self.data.layout)
        if self.image_size is None:
            return images.astype(np.float32)
        from tideflow.stream.encoder import resize, to_nchw

        layout = self.data.layout
        lo, hi = self.data.value_range
        x = resize(to_nchw(images, layout, (0.0, 1.0)), self.image_size)  # value scale kept
        if layout == "hw":
            x = x[:, 0]
        elif layout == "hwc":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def _materialise(self) -> dict[str, Any]:
        if self._arrays is not None:
            return self._arrays
        plan = self.plan
        # every view's images are prepared (and encoded) once, in data-set order: the same images
        # give the same array whatever the split, which is what the feature cache is keyed on
        wanted: dict[int, list[np.ndarray]] = {}
        for v in np.unique(plan.view).tolist():
            wanted.setdefault(int(v), []).append(plan.order[plan.view == v])
        for rows, v in plan.held_out.values():
            wanted.setdefault(int(v), []).append(rows)
        table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for v, parts in sorted(wanted.items()):
            rows = np.unique(np.concatenate(parts))
            table[v] = (rows, self._values(self._view(rows, v)))

        def gather(rows: np.ndarray, views: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows), *self.row_shape), dtype=np.float32)
            for v in np.unique(views).tolist():
                sel = views == v
                known, values = table[int(v)]
                out[sel] = values[np.searchsorted(known, rows[sel])]
            return out

        x = gather(plan.order, plan.view)
        held = {t: gather(rows, np.full(len(rows), v)) for t, (rows, v) in plan.held_out.items()}
        del table
        if self.standardize:  # in place: the stream's arrays are the largest thing a source holds
            flat = x.reshape(len(x), -1)
            mean = flat.mean(axis=0, dtype=np.float64)
            std = flat.std(axis=0, dtype=np.float64)
            std[~(std > 1e-12)] = 1.0  # a value that never varies: centred, not scaled
            mean, scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
            for arr in (x, *held.values()):
                view = arr.reshape(len(arr), -1)
                view -= mean
                view *= scale
        self._arrays = {"x": x, "held": held}
        return self._arrays

    def _columns(self, x: np.ndarray, labels: np.ndarray, tasks: np.ndarray | None, offsets: np.ndarray,
                 schema: pa.Schema) -> pa.RecordBatch:
        arrays = [pa.array(offsets.astype(np.int64)), tensor_array(x), pa.array(labels.astype(np.int64))]
        if tasks is not None:
            arrays.append(pa.array(tasks.astype(np.int64)))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    # -- Source contract ------------------------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        arrays = self._materialise()
        plan, labels = self.plan, self.data.y
        schema = self.schema().arrow_schema()
        while self._next < plan.rows:
            start = self._next
            cut = next((e for e in self._cuts if e > start), plan.rows)
            stop = min(start + self.batch_size, cut)
            sl = slice(start, stop)
            data = self._columns(arrays["x"][sl], labels[plan.order[sl]],
                                 plan.task[sl] if plan.task_column else None, np.arange(start, stop), schema)
            self._next = stop
            yield Batch(data, self.stream_id, plan.marks and stop in self._cuts)

    def held_out(self) -> dict[Any, Batch]:
        arrays = self._materialise()
        schema = self.schema().arrow_schema()
        out = {}
        for t, (rows, _) in self.plan.held_out.items():
            tasks = np.full(len(rows), t) if self.plan.task_column else None
            out[t] = Batch(self._columns(arrays["held"][t], self.data.y[rows], tasks, np.arange(len(rows)), schema),
                           f"{self.stream_id}:held-out")
        return out

    def unlabeled(self) -> Batch:
        x = self._materialise()["x"]
        offsets = np.arange(len(x))
        if self.unlabeled_rows is not None and self.unlabeled_rows < len(x):
            rng = np.random.default_rng([self.seed, 11])
            offsets = np.sort(rng.choice(len(x), self.unlabeled_rows, replace=False))
            x = x[offsets]
        return Batch.from_pydict({OFFSET: offsets.astype(np.int64), self.column: tensor_array(x)},
                                 stream_id=self.stream_id)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if v is not None)
        return f"ImageStream({args})"


def transform_view(images: np.ndarray, name: str, layout: str | None, value_range: tuple[float, float], *,
                   seed: int, rows: np.ndarray, view: int) -> np.ndarray:
    """``images`` (data-set ``rows``) in the named view ``name`` (``"flip+noise"``: its transforms in
    order, `tideflow.connectors.image_splits.parse_views`), float32, same shape.

    ``rot<d>`` turns by d degrees (background: the range's low end), ``invert`` maps v to
    ``low + high - v``, ``flip`` / ``vflip`` mirror left-right / top-bottom, ``noise<f>`` adds
    Gaussian noise of standard deviation f times the range and clips to it. The noise of an image
    is drawn from a generator seeded by (seed, view, data-set row): an image gets the same noise
    whichever other rows are asked for with it, so its cached encoder features stay valid.
    """
    (steps,) = parse_views([name])
    lo, hi = (float(v) for v in value_range)
    out = images.astype(np.float32)
    width_axis = {"hw": 2, "chw": 3, "hwc": 2}.get(layout or "", None)
    for kind, value in steps:
        if kind in ("rot", "flip", "vflip") and layout is None:
            raise ValueError(f"view {name!r}: images of shape {images.shape[1:]} have no known (H, W) axes")
        if kind == "rot":
            out = rotate(out, value, layout, lo)
        elif kind == "invert":
            out = (lo + hi) - out
        elif kind in ("flip", "vflip"):
            assert width_axis is not None
            out = np.ascontiguousarray(np.flip(out, axis=width_axis if kind == "flip" else width_axis - 1))
        elif kind == "noise":
            sd = value * (hi - lo)
            noise = np.stack([np.random.default_rng([seed, view, int(r)]).standard_normal(out.shape[1:])
                              for r in np.asarray(rows).tolist()]) if len(out) else np.zeros_like(out)
            out = np.clip(out + sd * noise.astype(np.float32), lo, hi)
    return out.astype(np.float32, copy=False)
