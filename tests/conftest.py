"""Shared fixtures: one real local Ray per test session (``ray.init`` costs ~10 s here)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (token authentication as Ray sets it), shut down at the end."""
    import ray

    from tideflow.pipelines.runners.ray_session import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_user_tracking_uri(monkeypatch):
    # tests choose their own MLflow store; a developer's MLFLOW_TRACKING_URI must not leak in
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
