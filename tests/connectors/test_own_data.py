"""The README's "Your own data" examples, as written: a CSV through `tideflow record` and `tideflow
replay` with a pipeline file, a DataFrame through the Python API, and a source of one's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tideflow.cli import main as tideflow

# -- the README's pipeline file, my_pipeline.py ----------------------------------------------
MY_PIPELINE = '''\
from river import linear_model, preprocessing

import tideflow as tf


def build(source=None):
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    return (tf.Pipeline("my-data").source(source).validate()
            .learn(tf.RiverStrategy(model), name="lr", route=tf.Keyed("station")))
'''

# -- the README's custom source ----------------------------------------------------------------
import itertools  # noqa: E402
import json as json_  # noqa: E402

import tideflow as tf  # noqa: E402


class JsonLinesSource(tf.Source):
    """Readings that arrive as JSON lines: {"sensor": "s1", "t": 12.5, "value": 20.1}."""

    def __init__(self, open_lines, batch_size=100):
        self.open_lines = open_lines  # a function that starts the lines again from the first
        self.batch_size = batch_size
        self.stream_id = "sensors"
        self._next = 0  # the offset of the next row: its line number

    def schema(self):
        return tf.Schema({"sensor": "string", "t": "float64", "value": "float64"},
                         target="value", key="sensor", time="t")

    def batches(self):
        lines = itertools.islice(self.open_lines(), self._next, None)  # a generator cannot jump: skip
        while chunk := list(itertools.islice(lines, self.batch_size)):
            rows = [json_.loads(line) for line in chunk]
            batch = tf.Batch.from_pydict({c: [r.get(c) for r in rows] for c in ("sensor", "t", "value")},
                                         stream_id=self.stream_id, first_offset=self._next)
            self._next += len(rows)  # before the yield: a checkpoint taken now resumes after it
            yield batch

    def seek(self, offset):
        self._next = offset

    @property
    def position(self):
        return self._next


def _my_csv(path: Path) -> pd.DataFrame:
    hours = pd.date_range("2023-05-01", periods=120, freq="h")
    rng = np.random.default_rng(7)
    df = pd.DataFrame({"station": np.repeat(["harbour", "hill"], len(hours)),
                       "time": np.tile(hours.strftime("%Y-%m-%d %H:%M"), 2),
                       "humidity": rng.uniform(40, 90, 2 * len(hours))})
    df["temp"] = 15 + 5 * np.sin(np.arange(len(df)) / 24 * 2 * np.pi) - 0.05 * df["humidity"]
    df = df.sort_values(["time", "station"], kind="stable")
    df.to_csv(path, index=False)
    return df


def test_a_csv_recorded_and_replayed_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _my_csv(tmp_path / "my.csv")
    (tmp_path / "my_pipeline.py").write_text(MY_PIPELINE)
    assert tideflow(["record", "my.csv:target=temp,key=station,time=time", "-o", "my.arrow", "--no-progress"]) == 0
    assert "recorded 240 events" in capsys.readouterr().out
    assert tideflow(["replay", "my.arrow", "--pipeline", "my_pipeline.py", "--runner", "local", "--no-tracking",
                     "--no-progress", "--output-dir", "run"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == 240 and summary["quarantined_rows"] == 0
    assert summary["strategies"]["lr"]["rows_scored"] == 240


def test_a_dataframe_through_the_python_api(tmp_path):
    from river import linear_model, preprocessing

    df = _my_csv(tmp_path / "my.csv")
    df.loc[df.index[5], "temp"] = None  # a reading without its target
    # the README's lines
    source = tf.TableSource.from_pandas(df, target="temp", key="station", time="time")
    pipeline = (tf.Pipeline("my-data").source(source).validate()
                .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()),
                       name="lr", route=tf.Keyed("station")))
    result = pipeline.run(tracking=False, progress=False, output_dir=str(tmp_path / "run"))
    assert result.quarantine == {"null": 1} and result.rows == 240


def test_a_source_of_ones_own(tmp_path):
    from river import linear_model

    path = tmp_path / "readings.jsonl"
    with open(path, "w") as fh:
        for i in range(250):
            t = 3.0 if i == 100 else i / 2  # reading 100 comes late: its sensor has reached t=49.5
            fh.write(json.dumps({"sensor": f"s{i % 2}", "t": t, "value": 20 + (i % 7)}) + "\n")
    source = JsonLinesSource(lambda: open(path))
    pipeline = (tf.Pipeline("sensors").source(source).validate()
                .learn(tf.RiverStrategy(linear_model.LinearRegression()), name="lr"))
    result = pipeline.run(tracking=False, progress=False, output_dir=str(tmp_path / "run"))
    assert result.rows == 250 and result.quarantine == {"time_out_of_order": 1}
    # the contract: seek and position make a resume start where the checkpoint was
    source.seek(120)
    assert [b.offsets[0] for b in source] == [120, 220] and source.position == 250
