"""The README's "Your own data" commands, as written, on a small CSV of a user's own: record it,
replay it through the nowcast pipeline, and run the nowcast comparison on it."""

from __future__ import annotations

import json

import numpy as np


def write_csv(path) -> None:
    """Two sites, 240 hours, a daily cycle and a random walk: a table the project never saw."""
    import pandas as pd

    rng = np.random.default_rng(0)
    hours = 240
    t = pd.date_range("2024-03-01", periods=hours, freq="h")
    rows = []
    for site in ("north", "south"):
        temp = 10 + 6 * np.sin(2 * np.pi * np.arange(hours) / 24) + np.cumsum(rng.normal(0, 0.2, hours))
        hum = 60 + 10 * np.cos(2 * np.pi * np.arange(hours) / 24) + rng.normal(0, 2, hours)
        rows += [{"time": t[i].isoformat(), "site": site, "temp": round(temp[i], 2), "humidity": round(hum[i], 1)}
                 for i in range(hours)]
    pd.DataFrame(rows).sort_values(["time", "site"]).to_csv(path, index=False)


def test_a_users_csv_through_record_replay_and_compare(tmp_path, monkeypatch, capsys):
    from tideflow.cli import main

    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "my_weather.csv")
    # the README's commands (without .venv/bin/tideflow), in this process
    assert main(["record", "my_weather.csv", "--target", "temp", "--time", "time", "--key", "site",
                 "--batch-size", "12", "-o", "my_weather.arrow", "--no-progress"]) == 0
    assert "recorded 480 events in 40 batches" in capsys.readouterr().out
    assert main(["replay", "my_weather.arrow", "--pipeline", "nowcast", "--set", "window=72", "--runner", "local",
                 "--no-tracking", "--no-progress", "--json", "replay.json"]) == 0
    doc = json.loads((tmp_path / "replay.json").read_text())
    assert doc["rows"] == 480 and doc["quarantined_rows"] == 0
    fixed = doc["strategies"]["fixed"]
    assert fixed["rows_scored"] == 480 and fixed["fits"] > 0
    # the nowcasters forecast temp from humidity and the lags, one model per site
    assert "temp" in fixed["strategy"]
    assert main(["compare", "nowcast", "--source", "my_weather.arrow", "--set", "window=72", "--models", "gbm",
                 "--out", "my_nowcast"]) == 0
    result = json.loads((tmp_path / "my_nowcast.json").read_text())
    (run,) = result["runs"]
    assert run["target"] == "temp" and run["scores"]["fixed"]["scored"] > 0
    # the header says what was scored on this stream, not the weather protocol's 504 h
    header = (tmp_path / "my_nowcast.md").read_text().splitlines()[0]
    assert "first fit to the stream's end scored" in header and "504" not in header, header
    # the models beat persistence on a series with a daily cycle
    assert run["scores"]["fixed"]["mae"] < run["scores"]["persistence"]["mae"]
