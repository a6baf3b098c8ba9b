"""Ready-made pipelines, by name (``tideflow run <name>``, ``tideflow replay --pipeline <name>``).

Each entry is a function ``build(source=None, **options) -> Pipeline``; with a
``source`` (a recording, for replay) it replaces the pipeline's own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

from tideflow.connectors.base import Source
from tideflow.pipelines.dsl import Pipeline
from tideflow.pipelines.ready.drift import build as build_drift
from tideflow.pipelines.ready.linkload import build as build_linkload
from tideflow.pipelines.ready.nowcast import build as build_nowcast

PIPELINES: dict[str, Callable[..., Pipeline]] = {
    "linkload": build_linkload,
    "drift": build_drift,
    "nowcast": build_nowcast,
}

DEFAULT = "linkload"


def load_pipeline(name_or_file: str, source: Source | None = None, **options: Any) -> Pipeline:
    """A ready pipeline by name, or from a Python file defining ``build(source=None, **options)``."""
    if name_or_file.endswith(".py"):
        path = Path(name_or_file)
        if not path.exists():
            raise FileNotFoundError(f"pipeline file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"tideflow_user_pipeline_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        build = getattr(module, "build", None)
        if not callable(build):
            raise ValueError(f"{path} must define build(source=None, **options) returning a tideflow Pipeline")
        pipeline = build(source=source, **options)
    elif name_or_file in PIPELINES:
        pipeline = PIPELINES[name_or_file](source=source, **options)
    else:
        raise ValueError(f"unknown pipeline {name_or_file!r}; ready pipelines: {sorted(PIPELINES)} (or a file.py)")
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"{name_or_file}: build() returned {type(pipeline).__name__}, not a Pipeline")
    return pipeline
