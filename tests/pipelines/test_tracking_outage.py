"""A real MLflow server stopped mid-run and started again: the run goes on and loses no point."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from river import linear_model, preprocessing

import tideflow as tf

from conftest import MlflowServer  # type: ignore[import-not-found]

BATCHES = 60


class _Slow(tf.RiverStrategy):
    """Takes ~0.25 s per batch, so that the run outlasts the outage; marks batch 8."""

    def __init__(self, estimator, *, marker: str, **kw):
        super().__init__(estimator, **kw)
        self.marker = marker

    def clone(self):
        return _Slow(self.estimator, marker=self.marker, target=self.target, features=self.features)

    def learn(self, batch):
        if batch.first_offset == 8 * 50:
            Path(self.marker).write_text("8")
        time.sleep(0.25)
        return super().learn(batch)


def test_mlflow_server_outage_mid_run_loses_no_metric_point(tmp_path, no_proxy_local):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    uri = server.start()
    marker = tmp_path / "batch8"
    down: dict[str, float] = {}

    def outage():
        while not marker.exists():
            time.sleep(0.05)
        server.stop()
        down["stopped"] = time.monotonic()
        time.sleep(4.0)  # down for the sleep plus the server's start-up (~10 s here)
        server.start()
        down["up"] = time.monotonic()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        model = preprocessing.StandardScaler() | linear_model.LinearRegression()
        src = tf.SyntheticSource("friedman-drift", n=BATCHES * 50, batch_size=50, seed=2)
        result = (tf.Pipeline("outage").source(src).validate()
                  .learn(_Slow(model, marker=str(marker)), name="lin")
                  .run(runner="local", tracking_uri=uri, experiment="outage", progress=False,
                       metrics_every_s=0, output_dir=tmp_path / "out"))
        thread.join(timeout=120)
        assert "up" in down, "the server never came back"
        tracking = result.extra["tracking"]
        # the outage was real: sends failed while the server was down, and the run went on
        assert tracking["outages"] >= 1 and tracking["failed_sends"] >= 1
        assert tracking["pending"] == 0

        client = MlflowClient(tracking_uri=uri)
        child = client.search_runs([client.get_experiment_by_name("outage").experiment_id],
                                   filter_string="tags.mlflow.runName = 'lin'")[0]
        hist = client.get_metric_history(child.info.run_id, "mae")
        # one point per batch (metrics_every_s=0), each exactly once
        assert sorted(m.step for m in hist) == list(range(BATCHES))
        assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
            [r["mae"] for r in result.per_batch["lin"]])
        rows = client.get_metric_history(result.run_id, "rows")
        assert sorted(m.step for m in rows) == list(range(BATCHES))
        assert sum(m.value for m in rows) == BATCHES * 50
        assert client.get_run(result.run_id).info.status == "FINISHED"
        assert not (tmp_path / "out" / "mlflow-backlog.jsonl").exists()
    finally:
        thread.join(timeout=120)
        server.stop()
