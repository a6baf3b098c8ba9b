"""How a run is run: three small option objects, documented once, used by the API, the CLI and both runners.

* `RunOptions`: what every runner honours (tracking, progress, label delay, ...);
* `RayOptions`: what only the Ray runner reads (cluster address, batches in flight,
  fused data path, the coalescing delay bound); the local runner ignores them, so that
  one set of options can be handed to either runner (a comparison runs the same call on
  both);
* `CheckpointOptions`: checkpoints and recovery, taken by the Ray runner; asking the
  local runner for them is an error, since it would silently not checkpoint.

``Pipeline.run(runner, **kwargs)`` and `tideflow.pipelines.run.run_graph` still take
the flat keyword arguments users already pass (``max_in_flight=2``,
``checkpoint_dir=...``): `split_options` maps each one to its field, by the
``kw`` name in the field's metadata. The ``tideflow`` command builds its flags from
the same metadata (`add_cli_arguments` / `from_cli_args`), so a new option is added
in one place.

>>> run, ray, ckpt = split_options({"max_in_flight": 2, "label_delay": 1, "checkpoint_every": 5})
>>> run.label_delay, ray.max_in_flight, ckpt.every
(1, 2, 5)
>>> split_options({"max_inflight": 2})
Traceback (most recent call last):
...
TypeError: unknown run option 'max_inflight'; known: ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

def _opt(default: Any, help: str, *, kw: str | None = None, cli: str | None = None, negate: bool = False,
         type: Any = None, api_only: bool = False, cli_help: str | None = None) -> Any:
    """A dataclass field with the metadata `split_options` and the CLI read.

    ``kw``: the flat keyword of ``run()`` (default: the field's name); ``cli``: the flag
    (default: ``--`` + kw with dashes); ``negate``: a boolean whose flag turns it off
    (``--no-tracking``, whose help is ``cli_help``); ``api_only``: not a command-line flag.
    """
    return field(default=default, metadata={"help": help, "kw": kw, "cli": cli, "negate": negate,
                                            "type": type, "api_only": api_only, "cli_help": cli_help})


@dataclass(frozen=True)
class RunOptions:
    """Options every runner honours."""

    tracking: bool = _opt(True, "log to MLflow (one run, a nested run per strategy)", negate=True,
                          cli="--no-tracking", cli_help="do not log to MLflow")
    tracking_uri: str | None = _opt(None, "MLflow store (default: MLFLOW_TRACKING_URI, else sqlite mlflow.db "
                                          "in this folder)", type=str)
    experiment: str = _opt("tideflow", "MLflow experiment name", type=str)
    progress: bool = _opt(True, "show a progress bar", negate=True, cli="--no-progress",
                          cli_help="no progress bar")
    label_delay: int = _opt(0, "batches between a prediction and its labels reaching the learner", type=int)
    max_batches: int | None = _opt(None, "stop after this many batches", type=int)
    output_dir: Any = _opt(None, "folder for summary.json and quarantine.arrow (default runs/<pipeline>/<time>)",
                           type=str)
    print_summary: bool = _opt(False, "print the summary table at the end", api_only=True)
    keep_predictions: bool = _opt(False, "return every prediction with its offset and truth (memory grows "
                                         "with the stream)", api_only=True)
    metrics_every_s: float = _opt(1.0, "MLflow gets per-batch metrics summed over intervals of this many "
                                       "seconds (0: a point per batch); every batch's record stays in "
                                       "RunResult.per_batch", api_only=True)
    event_lag: int = _opt(4, "events a strategy emits while learning batch k reach the other learn steps "
                             "before batch k + event_lag (the same batch on both runners)", type=int)
    observers: tuple[Any, ...] = _opt((), "metric observers (tideflow.pipelines.metrics) fed every batch; "
                                          "their results are in RunResult.metrics", api_only=True)

    def __post_init__(self) -> None:
        if self.label_delay < 0:
            raise ValueError(f"label_delay must be >= 0, got {self.label_delay}")
        if self.max_batches is not None and self.max_batches < 0:
            raise ValueError(f"max_batches must be >= 0, got {self.max_batches}")
        if self.event_lag < 1:
            raise ValueError(f"event_lag must be >= 1 (an event reaches a later batch), got {self.event_lag}")
        if self.metrics_every_s < 0:
            raise ValueError(f"metrics_every_s must be >= 0, got {self.metrics_every_s}")
        object.__setattr__(self, "observers", tuple(self.observers))


@dataclass(frozen=True)
class RayOptions:
    """Options of the Ray runner (the local runner ignores them)."""

    address: str | None = _opt(None, "ray runner: cluster to join (default RAY_ADDRESS, else a local Ray)",
                               kw="ray_address", api_only=True)
    max_in_flight: int = _opt(4, "ray runner: batches in flight at once (backpressure)", type=int)
    fuse_chain: bool = _opt(True, "ray runner: run the data path inside the source actor rather than one "
                                  "actor per data-path step", kw="ray_fuse_chain", api_only=True)
    max_delay_ms: float = _opt(5.0, "ray runner: when every learner runs in the source actor, a group of "
                                    "batches sent to the driver may grow past max_in_flight for this long "
                                    "after its first batch was read (transport only: each batch is still "
                                    "learned on its own; 0 = groups of max_in_flight)", type=float)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not self.max_delay_ms >= 0:  # also refuses NaN, which no comparison would stop
            raise ValueError(f"max_delay_ms must be >= 0 (0: no coalescing beyond max_in_flight), "
                             f"got {self.max_delay_ms}")


@dataclass(frozen=True)
class CheckpointOptions:
    """Checkpoints and recovery (Ray runner)."""

    every: int = _opt(100, "ray runner: batches between checkpoints (0 = none; a lost actor then restarts "
                           "the run from its start)", kw="checkpoint_every", type=int)
    every_s: float | None = _opt(None, "ray runner: also checkpoint when this many seconds have passed since "
                                       "the last one", kw="checkpoint_every_s", type=float)
    dir: Any = _opt(None, "ray runner: write checkpoints here (resume a run that died with "
                          "`tideflow resume DIR`)", kw="checkpoint_dir", type=str)
    mlflow: bool = _opt(False, "ray runner: also copy each checkpoint into the MLflow run's artifacts "
                               "(resume with `tideflow resume mlflow:RUN_ID`)", kw="checkpoint_mlflow")
    max_restarts: int = _opt(3, "ray runner: recoveries from a lost actor or node before the run fails",
                             type=int)
    resume: bool = _opt(False, "continue from the newest checkpoint in dir (same pipeline graph)",
                        api_only=True)
    meta: dict[str, Any] | None = _opt(None, "plain data written as run.json beside the checkpoints "
                                             "(what `tideflow resume` needs)", kw="checkpoint_meta",
                                       api_only=True)

    def __post_init__(self) -> None:
        if self.every < 0 or self.max_restarts < 0:
            raise ValueError("checkpoint_every and max_restarts must be >= 0")
        if self.every_s is not None and self.every_s <= 0:
            raise ValueError("checkpoint_every_s must be > 0 (or None)")
        if self.resume and self.dir is None:
            raise ValueError("resume=True needs checkpoint_dir")

    @property
    def wanted(self) -> bool:
        """Whether anything here asks for checkpoints kept beyond the run's own recovery."""
        return self.dir is not None or self.resume or self.mlflow


GROUPS: tuple[type, ...] = (RunOptions, RayOptions, CheckpointOptions)


def _keyword(f: dataclasses.Field) -> str:
    return f.metadata.get("kw") or f.name


def keywords() -> dict[str, tuple[type, str]]:
    """Flat keyword -> (option class, field name), for every option."""
    return {_keyword(f): (cls, f.name) for cls in GROUPS for f in dataclasses.fields(cls)}


def split_options(kwargs: dict[str, Any], *, run: RunOptions | None = None, ray: RayOptions | None = None,
                  checkpoints: CheckpointOptions | None = None) -> tuple[RunOptions, RayOptions, CheckpointOptions]:
    """Flat keyword arguments (``run()``'s) onto the three option objects.

    Given objects are the starting point; a keyword that sets a field of a given object
    as well is an error (which one should win is not obvious).
    """
    known = keywords()
    given = {RunOptions: run, RayOptions: ray, CheckpointOptions: checkpoints}
    changes: dict[type, dict[str, Any]] = {cls: {} for cls in GROUPS}
    for key, value in kwargs.items():
        if key not in known:
            raise TypeError(f"unknown run option {key!r}; known: {', '.join(sorted(known))}")
        cls, name = known[key]
        if given[cls] is not None:
            raise TypeError(f"{key!r} given both as a keyword and in the {cls.__name__} object: give it once")
        changes[cls][name] = value
    out = []
    for cls in GROUPS:
        base = given[cls]
        out.append(base if base is not None else cls(**changes[cls]))
    return out[0], out[1], out[2]  # type: ignore[return-value]


def add_cli_arguments(parser: Any) -> None:
    """The options' command-line flags (every field not marked ``api_only``)."""
    for cls in GROUPS:
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if meta.get("api_only"):
                continue
            flag = meta.get("cli") or "--" + _keyword(f).replace("_", "-")
            if meta.get("negate"):
                parser.add_argument(flag, dest=_keyword(f), action="store_false", default=f.default,
                                    help=meta["cli_help"] or meta["help"])
            elif f.default is False:
                parser.add_argument(flag, dest=_keyword(f), action="store_true", help=meta["help"])
            else:
                parser.add_argument(flag, dest=_keyword(f), type=meta.get("type"), default=f.default,
                                    help=f"{meta['help']} (default {f.default})" if f.default is not None
                                    else meta["help"])


def from_cli_args(args: Any) -> dict[str, Any]:
    """The flat keywords the parsed flags of `add_cli_arguments` stand for."""
    out = {}
    for cls in GROUPS:
        for f in dataclasses.fields(cls):
            if not f.metadata.get("api_only") and hasattr(args, _keyword(f)):
                out[_keyword(f)] = getattr(args, _keyword(f))
    return out


__all__ = ["CheckpointOptions", "RayOptions", "RunOptions", "add_cli_arguments", "from_cli_args", "split_options"]
