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
from tideflow.pipelines.ready.images import build as build_images
from tideflow.pipelines.ready.linkload import build as build_linkload
from tideflow.pipelines.ready.nowcast import build as build_nowcast

PIPELINES: dict[str, Callable[..., Pipeline]] = {
    "linkload": build_linkload,
    "drift": build_drift,
    "nowcast": build_nowcast,
    "images": build_images,
}

DEFAULT = "linkload"


def _check_options(name: str, build: Callable[..., Pipeline], options: dict[str, Any]) -> None:
    import inspect

    params = inspect.signature(build).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for pipeline {name!r}; it takes: {', '.join(known)} "
                         f"(tideflow show {name} describes them)")


def describe_options(name: str) -> str:
    """The ``Options:`` block of a ready pipeline's ``build`` docstring (what ``--set`` takes)."""
    import inspect

    build = PIPELINES.get(name)
    if build is None:
        return ""
    doc = inspect.getdoc(build) or ""
    lines = doc.splitlines()
    if "Options:" not in lines:
        params = [p for p in inspect.signature(build).parameters.values()
                  if p.kind is p.KEYWORD_ONLY]
        return "\n".join(f"  {p.name} (default {p.default!r})" for p in params)
    block = []
    for line in lines[lines.index("Options:") + 1:]:
        if line and not line.startswith(" "):
            break
        if line.strip():
            block.append("  " + line.strip() if not line.startswith("        ") else "      " + line.strip())
    return "\n".join(block)


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
        build = PIPELINES[name_or_file]
        _check_options(name_or_file, build, options)
        pipeline = build(source=source, **options)
    else:
        raise ValueError(f"unknown pipeline {name_or_file!r}; ready pipelines: {sorted(PIPELINES)} (or a file.py)")
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"{name_or_file}: build() returned {type(pipeline).__name__}, not a Pipeline")
    return pipeline
