"""Image data sets as checked arrays: scikit-learn's digits, Fashion-MNIST, a user's arrays.

What `tideflow.connectors.images.ImageStream` streams. Every data set becomes one
`ImageData`: all its images in the data set's own order, integer labels, which rows
are for training and which are held out for testing, the pixels' value range and the
images' layout. Keeping the data set's order (rather than a split's) is what lets the
feature cache (`tideflow.stream.encoder`) recognise the same images under every split.

* ``digits``: scikit-learn's 1797 8x8 digits (values 0..16, shipped with scikit-learn);
  the test rows are a seeded ``test_fraction`` of each class.
* ``fashion-mnist``: the 70 000 28x28 Fashion-MNIST images (values 0..255) from Debian's
  ``dataset-fashion-mnist`` package (idx files under ``/usr/share/datasets/fashion-mnist``),
  with their own 60 000 / 10 000 train/test split. Nothing is ever downloaded: a missing
  file is an error that says which package to install.
* `from_arrays`: a user's train and test arrays (numpy, or anything with ``.numpy()``
  such as a torch tensor), any fixed image shape.

Bad input is refused with a message that names the column (``image``, ``label``), the
row and the value: images of differing shapes, NaN or infinite pixels, labels that are not
integers or lie outside the given classes, a class with no training rows.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tideflow.stream.encoder import infer_layout

#: where Debian's dataset-fashion-mnist package puts the idx files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
DATASETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class ImageData:
    """A data set's images, labels and train/test rows (module docstring).

    Attributes:
        name: what the data set is called in stream ids and metadata.
        x: ``(n, *shape)`` images in the data set's order.
        y: ``(n,)`` int64 labels.
        train / test: ascending indices into ``x`` of the training and the test rows.
        value_range: the pixels' (low, high): what the encoder scales to [0, 1] and the
            background a rotation fills in.
        layout: ``"hw"``, ``"chw"`` or ``"hwc"``; None when the rows are not images of a known
            layout (they can still be streamed, but not resized, rotated or encoded).
        origin: where the data came from, for metadata.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray
    value_range: tuple[float, float]
    layout: str | None
    origin: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def classes(self) -> list[int]:
        return sorted({int(v) for v in self.y[self.train]})


# -- the project's data sets --------------------------------------------------------------------
def load(name: str, *, seed: int = 0, test_fraction: float = 0.25, data_dir: str | Path | None = None) -> ImageData:
    """One of `DATASETS` by name."""
    if name == "digits":
        return digits(seed=seed, test_fraction=test_fraction)
    if name == "fashion-mnist":
        return fashion_mnist(data_dir)
    raise ValueError(f"unknown image data set {name!r}; known: {list(DATASETS)}, or ImageStream.from_arrays(...)")


def digits(*, seed: int = 0, test_fraction: float = 0.25) -> ImageData:
    """scikit-learn's digits with a seeded per-class train/test split."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    raw = load_digits()
    x = raw.images.astype(np.float32)
    y = raw.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in sorted(set(y.tolist())):
        rows = rng.permutation(np.flatnonzero(y == c))
        test.append(rows[: max(1, int(round(test_fraction * len(rows))))])
    test_rows = np.sort(np.concatenate(test))
    train_rows = np.setdiff1d(np.arange(len(y)), test_rows)
    return ImageData("digits", x, y, train_rows, test_rows, (0.0, 16.0), "hw",
                     f"sklearn.datasets.load_digits, {test_fraction:g} of each class held out (seed {seed})")


def fashion_mnist(data_dir: str | Path | None = None) -> ImageData:
    """Fashion-MNIST from its idx files (Debian's ``dataset-fashion-mnist`` by default)."""
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    missing = [f for f in FASHION_MNIST_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: {folder} lacks {', '.join(missing)}. Install Debian's package "
            f"(as root: apt-get update && apt-get install -y dataset-fashion-mnist), or pass data_dir= a folder "
            f"holding the four idx files {sorted(FASHION_MNIST_FILES.values())}; nothing is downloaded")
    parts = {k: read_idx(folder / f) for k, f in FASHION_MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(parts[f"x_{split}"]) != len(parts[f"y_{split}"]) or parts[f"x_{split}"].ndim != 3:
            raise ValueError(f"{folder}: the {split} images {parts[f'x_{split}'].shape} and labels "
                             f"{parts[f'y_{split}'].shape} do not fit together")
    n_train = len(parts["y_train"])
    x = np.concatenate([parts["x_train"], parts["x_test"]])
    y = np.concatenate([parts["y_train"], parts["y_test"]]).astype(np.int64)
    return ImageData("fashion-mnist", x, y, np.arange(n_train), np.arange(n_train, len(y)), (0.0, 255.0), "hw",
                     f"{folder} (Debian dataset-fashion-mnist)")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip-compressed): big-endian header ``0 0 type ndim``, the sizes, the values."""
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc}); reinstall dataset-fashion-mnist") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in types:
        raise ValueError(f"{path}: not an idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(types[raw[2]])
    if len(raw) != head + int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: {len(raw)} bytes do not hold {dims} values of {dtype} (truncated?)")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)


# -- a user's arrays ----------------------------------------------------------------------------
def _as_numpy(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    elif hasattr(values, "numpy") and not isinstance(values, np.ndarray):
        values = values.numpy()
    if isinstance(values, (list, tuple)) and values and hasattr(values[0], "shape"):
        first = np.asarray(values[0]).shape
        for i, v in enumerate(values):
            if np.asarray(v).shape != first:
                raise ValueError(f"{what} row {i}: column 'image' has shape {np.asarray(v).shape}, row 0 has "
                                 f"{first}: every image of a stream needs one fixed shape")
    try:
        return np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{what}: column 'image' needs one fixed shape for every row ({exc})") from None


def check_images(values: Any, what: str) -> np.ndarray:
    """``(n, *shape)`` numeric images, or a ValueError naming the column, row and value."""
    x = _as_numpy(values, what)
    if x.dtype == object or x.ndim < 2:
        raise ValueError(f"{what}: column 'image' needs an (n, *shape) array of numbers with one fixed shape, "
                         f"got {x.dtype} of shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what}: column 'image' holds {x.dtype} values; pixels must be numbers")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1))
        if bad.any():
            row, pixel = (int(v) for v in np.argwhere(bad)[0])
            where = np.unravel_index(pixel, x.shape[1:])
            value = x.reshape(len(x), -1)[row, pixel]
            raise ValueError(f"{what} row {row}: column 'image' holds {value} at pixel {tuple(int(i) for i in where)} "
                             f"({int(bad.any(axis=1).sum())} rows have NaN or infinite pixels): clean or drop them")
    return x


def check_labels(values: Any, what: str, rows: int) -> np.ndarray:
    """``(rows,)`` int64 class ids, or a ValueError naming the column, row and value."""
    y = _as_numpy(values, what)
    if y.ndim != 1 or len(y) != rows:
        raise ValueError(f"{what}: column 'label' needs one label per image ({rows}), got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what} row {i}: column 'label' holds {y[i]}, not an integer class id")
        return y.astype(np.int64)
    i = 0
    for i, v in enumerate(y.tolist()):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            break
    raise ValueError(f"{what} row {i}: column 'label' holds {y.tolist()[i]!r}, not an integer class id "
                     f"(map class names to 0..k-1 first)")


def from_arrays(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, classes: Any = None,
                value_range: tuple[float, float] | None = None, layout: str | None = "auto",
                name: str = "arrays") -> ImageData:
    """Check a user's arrays and make them one `ImageData` (train rows first, then test rows).

    ``classes``: the class ids the stream is about (default: the training labels'); a label
    outside them is refused. ``value_range``: the pixels' range (default: 0..255 for uint8,
    else the training images' min..max). ``layout``: ``"auto"`` (from the shape), ``"hw"``,
    ``"chw"``, ``"hwc"`` or None (not images: no resize, rotation or encoder).
    """
    xtr = check_images(x_train, "x_train")
    xte = check_images(x_test, "x_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"x_test images are {xte.shape[1:]}, x_train's {xtr.shape[1:]}: column 'image' needs one "
                         f"fixed shape")
    ytr = check_labels(y_train, "y_train", len(xtr))
    yte = check_labels(y_test, "y_test", len(xte))
    if not len(xtr):
        raise ValueError("x_train holds no images: there is nothing to stream")
    known = sorted({int(v) for v in ytr}) if classes is None else sorted({int(c) for c in classes})
    for what, y in (("y_train", ytr), ("y_test", yte)):
        outside = ~np.isin(y, known)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(f"{what} row {i}: column 'label' holds {int(y[i])}, which is not one of the classes "
                             f"{known}" + (" (the training labels)" if classes is None else ""))
    empty = [c for c in known if not (ytr == c).any()]
    if empty:
        raise ValueError(f"classes {empty} have no training rows (column 'label'): their task would be empty")
    if layout == "auto":
        try:
            layout = infer_layout(xtr.shape[1:])
        except ValueError:
            layout = None
    elif layout is not None:
        if layout not in ("hw", "chw", "hwc"):
            raise ValueError(f"layout must be 'auto', 'hw', 'chw', 'hwc' or None, got {layout!r}")
        want = {"hw": 2, "chw": 3, "hwc": 3}[layout]
        if len(xtr.shape[1:]) != want:
            raise ValueError(f"layout {layout!r} needs {want}-d images, got images of shape {xtr.shape[1:]}")
    if value_range is None:
        if xtr.dtype == np.uint8:
            value_range = (0.0, 255.0)
        else:
            lo, hi = float(xtr.min()), float(xtr.max())
            value_range = (lo, hi if hi > lo else lo + 1.0)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    dtype = np.result_type(xtr.dtype, xte.dtype)
    x = np.concatenate([xtr.astype(dtype, copy=False), xte.astype(dtype, copy=False)])
    y = np.concatenate([ytr, yte])
    return ImageData(name, x, y, np.arange(len(xtr)), np.arange(len(xtr), len(y)), (lo, hi), layout,
                     f"arrays: {len(xtr)} train, {len(xte)} test images of shape {xtr.shape[1:]}")


def cap_per_class(data: ImageData, train_per_class: int | None, test_per_class: int | None, seed: int) -> ImageData:
    """At most that many train / test rows of each class, a seeded choice (kept in data-set order)."""
    if train_per_class is None and test_per_class is None:
        return data
    rng = np.random.default_rng([seed, 7])
    rows = {}
    for part, cap in (("train", train_per_class), ("test", test_per_class)):
        idx = getattr(data, part)
        if cap is None:
            rows[part] = idx
            continue
        if cap < 1:
            raise ValueError(f"{part}_per_class must be at least 1, got {cap}")
        keep = [rng.permutation(idx[data.y[idx] == c])[:cap] for c in sorted(set(data.y[idx].tolist()))]
        rows[part] = np.sort(np.concatenate(keep)) if keep else idx[:0]
    return replace(data, train=rows["train"], test=rows["test"],
                   origin=f"{data.origin}; at most {train_per_class} train / {test_per_class} test rows per class")


# -- domain views -------------------------------------------------------------------------------
def rotate(images: np.ndarray, angle: float, layout: str | None, background: float) -> np.ndarray:
    """Every image turned by ``angle`` degrees about its centre (bilinear; corners filled with
    ``background``), same shape, float32."""
    if layout is None:
        raise ValueError(f"images of shape {images.shape[1:]} have no known (H, W) axes to rotate: pass layout= "
                         f"to from_arrays, or use domain='permutation'")
    out = images.astype(np.float32)
    if angle % 360 == 0:
        return out
    from scipy.ndimage import rotate as nd_rotate

    axes = {"hw": (1, 2), "chw": (2, 3), "hwc": (1, 2)}[layout]
    return nd_rotate(out, angle, axes=axes, reshape=False, order=1, mode="constant", cval=background).astype(
        np.float32, copy=False)


def permute(images: np.ndarray, permutation: np.ndarray | None) -> np.ndarray:
    """Every image's values reordered by one fixed ``permutation`` of its flattened pixels
    (None: unchanged), same shape, float32."""
    out = images.astype(np.float32)
    if permutation is None:
        return out
    n = len(out)
    return np.ascontiguousarray(out.reshape(n, -1)[:, permutation].reshape(out.shape))
