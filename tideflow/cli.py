"""The ``tideflow`` command: run ready pipelines, record streams, replay recordings.

    tideflow run [PIPELINE] [--runner ray|local]       run a ready pipeline (default: linkload on local Ray)
    tideflow record SOURCE -o stream.arrow             write a source to a recording
    tideflow replay stream.arrow --pipeline NAME|FILE  replay a recording through a pipeline
    tideflow compare linkload [--seeds 0,1,2]           run a comparison and write its table
    tideflow compare nowcast [--jobs 2]                 weather nowcasting: fixed / VH / trigger / both
    tideflow resume CHECKPOINT_DIR | mlflow:RUN_ID      continue a run that died, from its newest checkpoint
    tideflow submit [--address URL] -- run ...         run a tideflow command as a Ray Job on a cluster
    tideflow show PIPELINE                             print a pipeline's graph
    tideflow list                                      list ready pipelines and sources
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from tideflow.pipelines.options import add_cli_arguments

    p.add_argument("--runner", choices=("local", "ray"), default="ray",
                   help="ray: one actor per step on local Ray or RAY_ADDRESS (default); local: one process")
    add_cli_arguments(p)  # every run option's flag, from tideflow.pipelines.options
    p.add_argument("--json", default=None, help="also write the summary as JSON to this path")
    p.add_argument("--predictions", default=None, metavar="PATH",
                   help="write every scored row with each strategy's prediction to PATH (.parquet or .csv)")


def _run(pipeline: Any, args: argparse.Namespace) -> int:
    from tideflow.pipelines.options import from_cli_args

    if getattr(args, "predictions", None):
        from tideflow.pipelines.prediction_sink import PredictionSink

        pipeline.observe(PredictionSink(args.predictions))
    print(pipeline)
    result = pipeline.run(
        runner=args.runner,
        **from_cli_args(args),
        print_summary=True,
        keep_predictions=bool(pipeline.reporters),
        resume=getattr(args, "resume", False),
        # what `tideflow resume` needs to rebuild this very pipeline
        checkpoint_meta={"argv": getattr(args, "argv", None), "cwd": os.getcwd()},
    )
    for reporter in pipeline.reporters:
        reporter(result)
    if args.json:
        doc = json.loads((result.output_dir / "summary.json").read_text())
        doc["per_batch"] = result.per_batch
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=2, default=str)
    return 0


def _value(text: str) -> Any:
    """A ``--set`` value: int, float, true/false, null, else the text itself (lists stay 'a,b')."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "null":  # "none" stays a word: it is a value of some options (scenario=none)
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _settings(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` options (repeatable) as keyword arguments."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set takes key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = _value(value)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from tideflow.connectors.synthetic import source_from_spec
    from tideflow.pipelines.ready import load_pipeline

    source = source_from_spec(args.source) if args.source else None
    return _run(load_pipeline(args.pipeline, source=source, **_settings(args.set)), args)


def cmd_replay(args: argparse.Namespace) -> int:
    from tideflow.connectors.recording import RecordingSource
    from tideflow.pipelines.ready import load_pipeline

    source = RecordingSource(args.recording, batch_size=args.batch_size, speed=args.speed)
    if args.start_offset:
        source.seek(args.start_offset)
    return _run(load_pipeline(args.pipeline, source=source, **_settings(args.set)), args)


_FILE_OPTIONS = ("target", "key", "time", "task", "features", "batch_size", "time_format", "nullable")


def cmd_record(args: argparse.Namespace) -> int:
    from tideflow.connectors.recording import record
    from tideflow.connectors.synthetic import source_from_spec
    from tideflow.connectors.table import file_kind, source_from_file

    roles = {k: getattr(args, k) for k in _FILE_OPTIONS if getattr(args, k, None) is not None}
    if file_kind(args.source) is not None:  # a table of the user's: CSV, Parquet, ...
        source = source_from_file(args.source, **roles)
    elif roles:
        raise ValueError(f"--{', --'.join(k.replace('_', '-') for k in roles)} describe a file's columns "
                         f"(CSV, Parquet); {args.source!r} is a source spec: put options after its ':'")
    else:
        source = source_from_spec(args.source)
    info = record(source, args.output, max_batches=args.max_batches, progress=not args.no_progress)
    parts = []
    if info.get("marks"):
        parts.append(f"{info['marks']} end-of-task marks")
    if info.get("held_out_rows"):
        parts.append(f"held-out rows of {len(info['held_out_rows'])} tasks")
    if info.get("unlabeled_rows"):
        parts.append(f"{info['unlabeled_rows']} unlabeled rows")
    print(f"recorded {info['rows']} events in {info['batches']} batches "
          f"(offsets {info['first_offset']}..{info['last_offset']}) to {info['path']}"
          + (f"; with {', '.join(parts)}" if parts else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # noqa: E731
    # `--set full` / `--set default` (a linkload strategy set, before --set took key=value)
    legacy = [v for v in (args.set or []) if "=" not in v]
    settings = _settings([v for v in (args.set or []) if "=" in v])
    if legacy:
        if args.experiment_name != "linkload" or len(legacy) > 1:
            raise ValueError(f"--set takes key=value, got {legacy[0]!r}")
        settings["set"] = legacy[0]
    if args.experiment_name == "images":
        from tideflow.pipelines.ready.images_compare import compare as compare_images

        out = Path(args.out or "results/images")
        doc = compare_images(**settings, jobs=args.jobs, out=out, runner=args.runner)
        print(out.with_suffix(".md").read_text())
        print(f"wrote {out.with_suffix('.json')} and .md in {doc['invocations'][-1]['seconds']:.0f} s"
              + (f" (the comparison's invocations: {doc['seconds']:.0f} s)" if len(doc["invocations"]) > 1 else ""))
        return 0
    if args.experiment_name == "nowcast":
        from tideflow.pipelines.ready.nowcast import compare as compare_nowcast

        out = Path(args.out or "results/nowcast")
        doc = compare_nowcast(stations=split(args.stations) if args.stations else None,
                              targets=split(args.targets) if args.targets else None,
                              models=split(args.models) if args.models else None, runner=args.runner,
                              tracking=args.tracking, out=out, jobs=args.jobs, hours=args.hours,
                              source=args.source, **settings)
        print(out.with_suffix(".md").read_text())
        print(f"wrote {out.with_suffix('.json')} and .md in {doc['seconds']:.0f} s")
        return 0
    from tideflow.pipelines.ready.linkload import compare

    args.out = args.out or "results/linkload"
    if args.source:
        raise ValueError("compare linkload runs the protocol's simulated streams: choose them with --topologies, "
                         "--scenarios and --set (e.g. --set failures=...), not --source")
    topologies = [settings.pop("topology")] if "topology" in settings else split(args.topologies)
    scenarios = [settings.pop("scenario")] if "scenario" in settings else split(args.scenarios)
    seeds = [int(settings.pop("seed"))] if "seed" in settings else [int(x) for x in split(args.seeds)]
    settings.setdefault("set", "full")
    doc = compare(topologies=topologies, scenarios=scenarios, seeds=seeds, normalisation=args.normalisation,
                  runner=args.runner, tracking=args.tracking, out=Path(args.out), progress=not args.no_progress,
                  jobs=args.jobs, **settings)
    print(Path(args.out).with_suffix(".md").read_text())
    print(f"wrote {Path(args.out).with_suffix('.json')} and .md in {doc['seconds']:.0f} s")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from tideflow.pipelines.checkpoint import download, read_meta

    if args.checkpoint_dir.startswith("mlflow:"):
        # a run with --checkpoint-mlflow: rebuild its checkpoint folder from the run's artifacts
        run_id = args.checkpoint_dir.split(":", 1)[1]
        import time

        folder = Path("runs") / f"resume-{run_id}-{time.strftime('%Y%m%d-%H%M%S')}" / "checkpoints"
        local = download(run_id, folder, tracking_uri=args.tracking_uri)
        print(f"checkpoints of MLflow run {run_id} downloaded to {local}")
        args.checkpoint_dir = str(local)
    args.checkpoint_dir = os.path.abspath(args.checkpoint_dir)  # before the chdir below
    meta = read_meta(args.checkpoint_dir)
    argv = meta.get("argv")
    if not argv:
        raise ValueError(f"{args.checkpoint_dir}/run.json does not say how the run was started "
                         f"(it was not started by the tideflow command): resume it with "
                         f"pipeline.run(runner='ray', checkpoint_dir=..., resume=True)")
    if meta.get("cwd") and os.path.isdir(meta["cwd"]):
        os.chdir(meta["cwd"])  # the run's relative paths (recordings, output) are relative to it
    again = build_parser().parse_args(argv)
    again.argv = argv
    again.resume = True
    again.checkpoint_dir = args.checkpoint_dir  # a run that kept its checkpoints under its output folder
    print(f"resuming `tideflow {' '.join(argv)}` from {args.checkpoint_dir}")
    return int(again.func(again) or 0)


def cmd_submit(args: argparse.Namespace) -> int:
    """A tideflow command as a Ray Job on a cluster (its job server: the dashboard's port)."""
    import shlex
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    command = list(args.job_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("nothing to submit: give the tideflow command after --, e.g. "
                         "tideflow submit -- run linkload --runner ray")
    address = (args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265")
    entrypoint = f"{shlex.quote(args.python)} -m tideflow.cli {shlex.join(command)}"
    runtime_env: dict[str, Any] = {}  # the engine sets its workers' thread counts itself
    if args.working_dir:
        runtime_env["working_dir"] = args.working_dir
    client = JobSubmissionClient(address)
    # a head that has just started answers "No available agent to submit job, please try
    # again later" until its job agent is up: retried for up to a minute and a half
    give_up = time.monotonic() + 90
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "try again later" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(2.0)
    print(f"submitted {job_id} to {address}: {entrypoint}", flush=True)
    if args.no_wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            print(f"tideflow: {job_id} did not finish within {args.timeout:.0f} s; stopped it", file=sys.stderr)
            return 1
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    print(client.get_job_logs(job_id), end="")
    print(f"{job_id}: {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def cmd_show(args: argparse.Namespace) -> int:
    from tideflow.connectors.synthetic import source_from_spec
    from tideflow.pipelines.ready import describe_options, load_pipeline

    name = args.pipeline
    if ":" in name and not name.endswith(".py"):  # `show linkload:topology=polska`: a ready pipeline with options
        name, _, rest = name.partition(":")
        args.set = [*(p for p in rest.split(",") if p), *(args.set or [])]
    source = source_from_spec(args.source) if args.source else None
    pipeline = load_pipeline(name, source=source, **_settings(args.set))
    graph = pipeline.build()
    print(graph)
    print(f"graph hash: {graph.fingerprint()}")
    options = describe_options(name)
    if options:
        print(f"\noptions (--set key=value):\n{options}\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tideflow.connectors.synthetic import STREAMS
    from tideflow.pipelines.ready import DEFAULT, PIPELINES

    print("ready pipelines:")
    for name, build in PIPELINES.items():
        doc = (sys.modules[build.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"  {name}{' (default)' if name == DEFAULT else ''}: {doc}")
    print("sources (tideflow record NAME[:key=value,...]):")
    for name in STREAMS:
        print(f"  {name}  options: n, batch_size, seed, position, width")
    print("  linkload  options: topology (abilene, geant, polska, topozoo/...), scenario (drastic, moderate, none), "
          "seed, days, failures (link:7-9@18;node:ATLAng@18-20: ids or node names, @day[-repair_day]), failed_node, "
          "links (target, all), batch_steps, ... (tideflow.connectors.linkload)")
    print("  weather  options: stations (EWR;JFK;LGA), target, neighbours, batch_hours (tideflow.connectors.weather)")
    print("  images  options: dataset (digits, fashion-mnist), split (class-incremental, task-incremental, "
          "domain-incremental, blurry, task-free), tasks, seed, encoder (efficientnet-lite0), batch_size, "
          "image_size, class_order (3;1;...), blur, domain (tideflow.connectors.images)")
    print("  PATH.arrow  a recording")
    print("  PATH.csv, PATH.parquet  a table of yours (tideflow record data.csv --target y --time ts -o d.arrow; "
          "or data.csv:target=y,time=ts as a source spec)")
    print("pipeline options: tideflow show PIPELINE; set them with --set key=value")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tideflow.pipelines.ready import DEFAULT

    parser = argparse.ArgumentParser(prog="tideflow", description=__doc__,
                                     epilog="--debug (anywhere): show the Python traceback of an error",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a ready pipeline (or a pipeline file)")
    p.add_argument("pipeline", nargs="?", default=DEFAULT, help=f"ready pipeline name or file.py (default {DEFAULT})")
    p.add_argument("--source", default=None,
                   help="replace the pipeline's source: NAME[:key=value,...] or a recording.arrow")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a pipeline option (repeatable; `tideflow show PIPELINE` lists them)")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help="replay a recording through a pipeline")
    p.add_argument("recording", help="an Arrow IPC recording written by `tideflow record`")
    p.add_argument("--pipeline", required=True, help="ready pipeline name or file.py defining build(source=None)")
    p.add_argument("--batch-size", type=int, default=None, help="re-chunk the recording into batches of this size")
    p.add_argument("--speed", type=float, default=None,
                   help="replay at k x real time (needs a time column); default: as fast as possible")
    p.add_argument("--start-offset", type=int, default=0, help="seek to this offset first")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a pipeline option (repeatable; `tideflow show PIPELINE` lists them)")
    _add_run_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("record", help="write a source to an Arrow IPC recording")
    p.add_argument("source", help="NAME[:key=value,...], e.g. sea-drift:n=20000,seed=1 (see `tideflow list`), "
                                  "or a table of yours: data.csv, data.parquet")
    p.add_argument("-o", "--output", required=True, help="recording file to write (.arrow)")
    p.add_argument("--target", default=None, help="a file's column to learn to predict")
    p.add_argument("--time", default=None, help="a file's event-time column")
    p.add_argument("--key", default=None, help="a file's key column (one series per value: station, sensor)")
    p.add_argument("--task", default=None, help="a file's task-id column (task streams)")
    p.add_argument("--features", default=None, help="a file's input columns, comma-separated (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch of a file (default 1024)")
    p.add_argument("--time-format", default=None, help="a file's time format, e.g. %%d/%%m/%%Y %%H:%%M "
                                                         "(default: ISO 8601)")
    p.add_argument("--nullable", default=None, help="a file's columns that may hold nulls, comma-separated "
                                                    "(default: the inputs; role columns never)")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("compare", help="run a ready comparison (several streams and seeds) and write its table")
    p.add_argument("experiment_name", choices=("linkload", "nowcast", "images"), help="which comparison")
    p.add_argument("--topologies", default="abilene,geant")
    p.add_argument("--scenarios", default="drastic,moderate")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a comparison option (repeatable): linkload: topology, scenario, seed, set (full or "
                        "default), strategies, failures, ...; nowcast: window, features, seed, configs (a;b), "
                        "resume (yes: reuse a stopped comparison's finished runs); images: methods, seeds, "
                        "inputs, scenarios, epochs, ..., merge (true: run only these methods and add their runs to "
                        "the --out comparison's file)")
    p.add_argument("--source", default=None,
                   help="nowcast: run on this recording or source spec instead of the weather feed")
    p.add_argument("--normalisation", default="global", choices=("global", "window"))
    p.add_argument("--runner", default="local", choices=("local", "ray"))
    p.add_argument("--tracking", action="store_true", help="log every run to MLflow (off: many points)")
    p.add_argument("--stations", default=None, help="nowcast: stations (default JFK,LGA)")
    p.add_argument("--targets", default=None, help="nowcast: variables (default temp,wind_speed)")
    p.add_argument("--models", default=None, help="nowcast: gbm,mlp,lstm (default all)")
    p.add_argument("--hours", type=int, default=None, help="nowcast: grid hours replayed (default: the protocol's)")
    p.add_argument("--out", default=None, help="writes OUT.json and OUT.md (default results/<comparison>)")
    p.add_argument("--jobs", type=int, default=1, help="configurations run at once (one process each)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("resume", help="continue a run that died, from the newest checkpoint in its folder")
    p.add_argument("checkpoint_dir", help="the --checkpoint-dir the run was started with, or mlflow:RUN_ID "
                                          "for a run started with --checkpoint-mlflow")
    p.add_argument("--tracking-uri", default=None, help="mlflow:RUN_ID: the MLflow store that holds the run")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("submit", help="submit a tideflow command to a Ray cluster as a Ray Job")
    p.add_argument("--address", default=None,
                   help="the cluster's job server (default RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--python", default="python",
                   help="the cluster's Python with tideflow installed (default: python on its PATH)")
    p.add_argument("--working-dir", default=None, help="a folder to upload with the job (runtime_env working_dir)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--timeout", type=float, default=None, help="stop the job after this many seconds")
    p.add_argument("job_command", nargs=argparse.REMAINDER,
                   help="the tideflow command, after --: e.g. -- run linkload --runner ray")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("show", help="print a pipeline's graph after validating it, and its options")
    p.add_argument("pipeline", nargs="?", default=DEFAULT)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a pipeline option (repeatable)")
    p.add_argument("--source", default=None, help="the source to show the pipeline with (spec or recording)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list ready pipelines and sources")
    p.set_defaults(func=cmd_list)
    return parser


#: what a user's mistake raises (a bad option, file, recording, pipeline file or graph, a cluster
#: that cannot be reached): one line on stderr and exit status 2; ``--debug`` shows the traceback
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, SyntaxError, ImportError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    generic = (TypeError, KeyError, OSError, ImportError)
    return f"{type(exc).__name__}: {first}" if isinstance(exc, generic) and not isinstance(
        exc, (FileNotFoundError, FileExistsError)) else first


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`tideflow show x | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("tideflow: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"tideflow: error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
