"""Tracking overhead: wall time of one pipeline run with MLflow tracking off, on SQLite, and on a server.

Pipeline (the same on every run, local runner)::

    RecordingSource(batch_size=--batch-size) -> Validate -> DetectDrift(on="x0")
        -> RiverStrategy(StandardScaler | LinearRegression)   # prequential: predict, score, learn

It is run three ways, one after the other, in the same process:

* **off**: ``run(runner="local", tracking=False)``, the reference;
* **sqlite**: ``tracking_uri="sqlite:///<tmp>/mlflow.db"``, MLflow's embedded store;
* **server**: a real ``mlflow server`` that this script starts from the venv on
  127.0.0.1 and a free port (SQLite backend and proxied artifacts in a temporary
  folder, one worker, MLflow's job runner off: the set-up of the tests' server
  fixture in ``tests/pipelines/conftest.py``, whose port and command helpers are
  imported). The script waits until ``/health`` answers (starting it again on
  another port if the free port was taken meanwhile) and stops the server's process
  group at the end, also on an error, Ctrl-C or SIGTERM; on Linux the server is
  also told to exit should the script die without cleaning up.

How the measurement works:

* A ``friedman-drift`` stream of ``--events`` rows is recorded once to a temporary
  Arrow file; every run replays it, so every run does the same work.
* Paid once and left out of the timings (reported): importing mlflow, creating
  the SQLite store (its schema migrations) and the experiment in both stores, the
  server's start-up, and one short untimed warm-up run per mode.
* **wall s** is the time around ``Pipeline.run``: run and child-run creation,
  parameters, the ``graph.json`` / ``summary.json`` artifacts, every metric flush
  and the final ``set_terminated`` are in it. **loop s** is ``RunResult.seconds``,
  the batch loop only (run start and end excluded), so ``wall - loop`` is mostly
  the fixed cost of a tracked run, and ``loop`` the per-batch cost.
* Each mode runs ``--repeats`` times (default 2), the order rotating between
  repeats; the table shows medians, the JSON keeps every run.
* **metric sends s** is the time the run waited in ``log_batch`` for its metric points
  (``MetricsLogger._send``, wrapped in this process; nothing in tideflow is changed),
  in the loop and in the final flush. It tells the store's per-point cost apart
  from the noise of a busy machine.
* After each tracked run the script asks MLflow (the same store) for the run's
  metric histories: the engine logs per-batch metrics summed over intervals
  (``metrics_every_s``, default 1 s), so the parent's ``rows`` points must add up to
  every row of the run and the learner's last ``cum_mae`` must equal the run's MAE;
  the total number of points is stored.

How to read it: ``wall/off`` is the slowdown a user sees from turning tracking on
(goal ``<= 1.05``). ``+ s per run`` is the same as seconds. A short stream makes the
fixed per-run cost weigh more, a longer one less; the metric sends grow with the
run's length in seconds (about 11 points per interval), not with the number of batches.
On a busy machine two runs of the same mode can differ by more than the overhead:
then trust ``metric sends s`` more than the ratio, and raise ``--repeats``. There
is no pass/fail.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python bench/tracking_overhead.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/tracking_overhead.py --events 10000 --repeats 1

Results go to the terminal and to ``--json`` (default ``bench/results/tracking_overhead.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no "View run at" line per HTTP run

import argparse  # noqa: E402
import http.client  # noqa: E402
import importlib.util  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file from anywhere, without installing
    sys.path.insert(0, str(REPO))

import tideflow as tf  # noqa: E402
import tideflow.pipelines.tracking as tracking_mod  # noqa: E402
from tideflow.connectors.recording import RecordingSource, record  # noqa: E402

from _common import _fmt_ratio, _loadavg, _median, machine_info, write_json  # noqa: E402

STREAM = "friedman-drift"
SEED = 0
EXPERIMENT = "tideflow-bench-tracking"
LEARNER = "linear"
MODES = ("off", "sqlite", "server")
GOAL = "<= 1.05"
LOCAL_HOSTS = "127.0.0.1,localhost"


# -- time spent sending metrics --------------------------------------------------------------
# Every metric point of a run goes through ``MetricsLogger._send`` (``log_batch`` calls of up
# to 1000 points, synchronous), during the loop and in the final flush. Wrapping it in this
# process gives the seconds the run waited for the store; nothing in tideflow is changed.
_SENT: dict[str, float] = {"seconds": 0.0, "calls": 0, "points": 0}
_original_send = tracking_mod.MetricsLogger._send


def _timed_send(self: Any, batches: dict[str, list[Any]]) -> Any:
    t = time.perf_counter()
    try:
        return _original_send(self, batches)  # whether everything went out (the logger relies on it)
    finally:
        _SENT["seconds"] += time.perf_counter() - t
        _SENT["calls"] += sum(-(-len(m) // tracking_mod.MAX_METRICS_PER_BATCH) for m in batches.values())
        _SENT["points"] += sum(len(m) for m in batches.values())


tracking_mod.MetricsLogger._send = _timed_send  # type: ignore[method-assign]


# -- the tests' server helpers ------------------------------------------------------------

def _test_helpers() -> Any:
    """``tests/pipelines/conftest.py`` as a module (for ``_free_port``, ``_mlflow_cmd``, ``_server_log``).

    It is loaded under a private name, so pytest's own import of it is not disturbed.
    """
    path = REPO / "tests" / "pipelines" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_tideflow_bench_pipelines_conftest", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when this script's process dies."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group, as the tests' fixture starts it.

    ``start`` returns at once (the server boots while the caller prepares), ``wait``
    blocks until ``/health`` answers, ``stop`` ends the whole process group; it is
    safe to call at any point, and more than once. A free port can be taken by another
    process before the server binds it (the tests' helper says so too): ``wait`` then
    starts the server again on another port, at most ``retries`` times.
    """

    def __init__(self, root: Path, helpers: Any, *, retries: int = 2) -> None:
        self.root = root
        self.helpers = helpers
        self.retries = retries
        self.port = 0
        self.uri = ""
        self.cmd: list[str] = []
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.started_at: float | None = None
        self.attempts = 0

    def start(self) -> None:
        self.port = self.helpers._free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            *self.helpers._mlflow_cmd(), "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
            "--serve-artifacts",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
            "--allowed-hosts", f"127.0.0.1:{self.port},127.0.0.1,localhost:{self.port},localhost",
        ]
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env["NO_PROXY"] = env["no_proxy"] = LOCAL_HOSTS
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job consumers (start-up time)
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")
        if self.started_at is None:
            self.started_at = time.perf_counter()
        self.attempts += 1
        # own process group (stop() ends uvicorn's worker with it); on Linux the server is also
        # told to stop should this process die without running stop() (SIGKILL, a crash)
        self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def wait(self, timeout: float) -> float:
        """Block until the server answers ``/health``; return seconds since the first ``start``."""
        assert self.proc is not None and self.started_at is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = self.helpers._server_log(self.log_path)
                if "address already in use" in log.lower() and self.attempts <= self.retries:
                    self.stop(close_log=False)
                    self.start()  # the port was taken under us: another one
                    continue
                raise RuntimeError(f"mlflow server exited with code {self.proc.returncode} before answering "
                                   f"/health\ncommand: {' '.join(self.cmd)}\n--- server log ---\n{log}")
            try:
                with opener.open(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started_at
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError):
                pass  # not up yet (or, until our server gives up, someone else on the port)
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer {self.uri}/health within {timeout:.0f} s\n"
                                   f"--- server log ---\n{self.helpers._server_log(self.log_path)}")
            time.sleep(0.2)

    def stop(self, *, close_log: bool = True) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                except ProcessLookupError:
                    pass
            try:  # workers may outlive the leader for a moment: end the whole group
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc = None
        if close_log and self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# -- the pipeline -------------------------------------------------------------------------

def make_pipeline(path: Path, batch_size: int) -> tf.Pipeline:
    """A fresh pipeline (operators and the learner keep state, so one per run)."""
    from river import linear_model, preprocessing

    return (
        tf.Pipeline("tracking-overhead")
        .source(RecordingSource(path, batch_size=batch_size))
        .validate()
        .detect(tf.DetectDrift(on="x0"))
        .learn(tf.RiverStrategy(preprocessing.StandardScaler() | linear_model.LinearRegression()), name=LEARNER)
    )


def run_once(mode: str, path: Path, batch_size: int, uris: dict[str, str], out: Path,
             max_batches: int | None = None) -> dict[str, Any]:
    pipeline = make_pipeline(path, batch_size)
    kwargs: dict[str, Any] = {"tracking": False} if mode == "off" else {
        "tracking": True, "tracking_uri": uris[mode], "experiment": EXPERIMENT}
    _SENT.update(seconds=0.0, calls=0, points=0)
    t = time.perf_counter()
    result = pipeline.run(runner="local", progress=False, output_dir=out, max_batches=max_batches, **kwargs)
    wall = time.perf_counter() - t
    return {"mode": mode, "wall_seconds": wall, "loop_seconds": result.seconds, "rows": result.rows,
            "batches": result.batches, "eps": result.rows / wall if wall > 0 else None,
            "mae": result.summary.get(LEARNER, {}).get("mae"), "run_id": result.run_id,
            "metric_send_seconds": _SENT["seconds"], "metric_send_calls": int(_SENT["calls"]),
            "metric_points_sent": int(_SENT["points"])}


def check_tracked(uri: str, run_id: str, batches: int, rows: int, mae: float | None) -> dict[str, Any]:
    """What MLflow holds for the run: histories of ``rows`` (parent) and ``mae`` (learner), all points.

    The engine logs per-batch metrics summed over intervals (``metrics_every_s``), so "complete"
    means: the parent's ``rows`` points add up to every row of the run, the learner has ``mae``
    points, and its last ``cum_mae`` equals the run's final MAE.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    child = next((c for c in children if c.info.run_name == LEARNER), None)
    points = 0
    keys = 0
    for run in [parent, *children]:
        for key in run.data.metrics:
            keys += 1
            points += len(client.get_metric_history(run.info.run_id, key))
    rows_hist = client.get_metric_history(run_id, "rows")
    rows_points = len(rows_hist)
    rows_sum = int(sum(m.value for m in rows_hist))
    mae_points = len(client.get_metric_history(child.info.run_id, "mae")) if child is not None else 0
    cum = sorted(client.get_metric_history(child.info.run_id, "cum_mae"), key=lambda m: m.step) if child else []
    last_cum = cum[-1].value if cum else None
    cum_ok = mae is not None and last_cum is not None and abs(last_cum - mae) <= 1e-9 * max(1.0, abs(mae))
    return {"status": parent.info.status, "children": len(children), "batches": batches,
            "parent_rows_points": rows_points, "parent_rows_sum": rows_sum, "learner_mae_points": mae_points,
            "last_cum_mae": last_cum, "metric_keys": keys, "points_total": points,
            "complete": parent.info.status == "FINISHED" and rows_sum == rows and mae_points >= 1 and cum_ok}


# -- main ---------------------------------------------------------------------------------

def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    ap.add_argument("--batch-size", type=int, default=500, help="rows per batch (default 500)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode; medians are shown (default 2)")
    ap.add_argument("--modes", default=",".join(MODES), help="subset of off,sqlite,server (default all)")
    ap.add_argument("--server-timeout", type=float, default=180.0,
                    help="seconds to wait for the mlflow server to answer (default 180)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "tracking_overhead.json"),
                    help="where to write the results (default bench/results/tracking_overhead.json)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error("--modes takes off, sqlite, server")
    if "off" not in modes:
        modes.insert(0, "off")  # the reference of every ratio
    if args.events < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("--events, --batch-size and --repeats must be >= 1")

    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    wall0 = time.perf_counter()
    info = machine_info()
    console.print(f"[bold]tracking overhead[/]: {STREAM} seed={SEED}, {args.events:,} events, "
                  f"batch {args.batch_size}, "
                  f"modes {modes}, repeats {args.repeats}, {info['cpu_affinity'] or info['cpu_count']} CPUs, "
                  f"python {info['python']}, load average {info['loadavg_at_start']}")
    # local requests must not go through a proxy meant for the outside world (urllib, requests)
    for var in ("NO_PROXY", "no_proxy"):
        os.environ[var] = ",".join(filter(None, [os.environ.get(var), LOCAL_HOSTS]))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the SQLite store's migration chatter

    previous_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    setup: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    server: MlflowServer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="tideflow-bench-tracking-") as tmp:
            tmpdir = Path(tmp)
            try:
                if "server" in modes:
                    root = tmpdir / "server"
                    root.mkdir()
                    server = MlflowServer(root, _test_helpers())
                    server.start()  # boots while the stream is recorded and mlflow imported
                    console.print(f"mlflow server starting (log {server.log_path})")

                path = tmpdir / "stream.arrows"
                t = time.perf_counter()
                rec = record(tf.SyntheticSource(STREAM, n=args.events, batch_size=4096, seed=SEED), path,
                             progress=False)
                setup["record_seconds"] = time.perf_counter() - t
                console.print(f"recorded {rec['rows']:,} events in {setup['record_seconds']:.1f} s")

                uris: dict[str, str] = {}
                t = time.perf_counter()
                from mlflow.tracking import MlflowClient

                setup["mlflow_import_seconds"] = time.perf_counter() - t
                if "sqlite" in modes:
                    uris["sqlite"] = f"sqlite:///{tmpdir / 'mlflow.db'}"
                    t = time.perf_counter()
                    # the experiment's artifacts go to the temp folder (not ./mlartifacts of the cwd)
                    MlflowClient(tracking_uri=uris["sqlite"]).create_experiment(
                        EXPERIMENT, artifact_location=(tmpdir / "mlartifacts").as_uri())
                    setup["sqlite_store_seconds"] = time.perf_counter() - t
                if server is not None:
                    setup["server_start_seconds"] = server.wait(args.server_timeout)
                    uris["server"] = server.uri
                    console.print(f"mlflow server answers on {server.uri}"
                                  + (f" (start {server.attempts}: the first port was taken)" if server.attempts > 1
                                     else ""))
                    t = time.perf_counter()
                    MlflowClient(tracking_uri=server.uri).create_experiment(EXPERIMENT)
                    setup["server_experiment_seconds"] = time.perf_counter() - t
                console.print("set-up (not timed): " + ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s"
                                                                  for k, v in setup.items()))

                t = time.perf_counter()
                for mode in modes:  # first-use costs (imports, code paths, connections) out of the timings
                    run_once(mode, path, args.batch_size, uris, tmpdir / f"warmup-{mode}", max_batches=3)
                setup["warmup_seconds"] = time.perf_counter() - t

                n = 0
                for rep in range(args.repeats):
                    order = modes[rep % len(modes):] + modes[:rep % len(modes)]
                    for mode in order:
                        n += 1
                        rec_run = run_once(mode, path, args.batch_size, uris, tmpdir / f"run{n}")
                        rec_run["repeat"] = rep
                        if rec_run["rows"] != rec["rows"]:
                            raise RuntimeError(f"{mode} read {rec_run['rows']} events, expected {rec['rows']}")
                        line = (f"  {mode:<6} repeat {rep}: wall {rec_run['wall_seconds']:6.2f} s, "
                                f"loop {rec_run['loop_seconds']:6.2f} s")
                        if mode != "off":
                            rec_run["mlflow"] = check_tracked(uris[mode], rec_run["run_id"], rec_run["batches"],
                                                              rec_run["rows"], rec_run["mae"])
                            m = rec_run["mlflow"]
                            line += (f", metric sends {rec_run['metric_send_seconds']:.2f} s "
                                     f"({rec_run['metric_send_calls']} log_batch)")
                            line += (f", MLflow: {m['points_total']:,} points, rows/mae points "
                                     f"{m['parent_rows_points']}/{m['learner_mae_points']} for {m['batches']} batches, "
                                     f"rows summed {m['parent_rows_sum']:,}")
                            if not m["complete"]:
                                console.print(f"[yellow]  {mode}: MLflow does not account for every row: {m}")
                        console.print(line)
                        runs.append(rec_run)
            finally:
                if server is not None:
                    server.stop()
                    console.print("mlflow server stopped")
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    total_s = time.perf_counter() - wall0
    summary: dict[str, dict[str, Any]] = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {"wall_seconds": _median([r["wall_seconds"] for r in mine]),
                         "loop_seconds": _median([r["loop_seconds"] for r in mine]),
                         "metric_send_seconds": _median([r["metric_send_seconds"] for r in mine]),
                         "points_total": (_median([r["mlflow"]["points_total"] for r in mine])
                                          if mode != "off" else None),
                         "complete": all(r["mlflow"]["complete"] for r in mine) if mode != "off" else None}
    off = summary["off"]
    for mode, s in summary.items():
        s["wall_over_off"] = s["wall_seconds"] / off["wall_seconds"] if off["wall_seconds"] else None
        s["loop_over_off"] = s["loop_seconds"] / off["loop_seconds"] if off["loop_seconds"] else None
        s["extra_seconds"] = s["wall_seconds"] - off["wall_seconds"]
        s["mae"] = next(r["mae"] for r in runs if r["mode"] == mode)
    maes = {m: s["mae"] for m, s in summary.items()}
    same_mae = len({round(v, 12) for v in maes.values() if v is not None}) == 1

    store = {"off": "-", "sqlite": "SQLite file", "server": "mlflow server (HTTP)"}
    table = Table(title=f"one pipeline run, {rec['rows']:,} events in batches of {args.batch_size} "
                        f"(median of {args.repeats}); ratio = time / time with tracking off")
    for col in ("tracking", "store", "wall s", "loop s", "wall/off", "goal", "loop/off", "+ s per run",
                "metric sends s", "MLflow points", "complete"):
        table.add_column(col, justify="left" if col in ("tracking", "store", "goal") else "right")
    for mode, s in summary.items():
        table.add_row(mode, store[mode], f"{s['wall_seconds']:.2f}", f"{s['loop_seconds']:.2f}",
                      _fmt_ratio(s["wall_seconds"], off["wall_seconds"]), GOAL if mode != "off" else "",
                      _fmt_ratio(s["loop_seconds"], off["loop_seconds"]),
                      f"{s['extra_seconds']:+.2f}" if mode != "off" else "",
                      f"{s['metric_send_seconds']:.2f}" if mode != "off" else "",
                      f"{s['points_total']:,.0f}" if s["points_total"] is not None else "-",
                      "-" if s["complete"] is None else ("yes" if s["complete"] else "[red]NO"))
    console.print(table)
    console.print("wall = time around Pipeline.run (run creation, params, artifacts, flushes included); "
                  "loop = RunResult.seconds (the batch loop only); metric sends = time waiting in log_batch "
                  "for metric points (in the loop and the final flush).")
    if not same_mae:
        console.print(f"[yellow]the prequential MAE differs between modes: {maes}")
    info["loadavg_at_end"] = _loadavg()
    console.print(f"total wall time {total_s:.1f} s; load average at start {info['loadavg_at_start']}, "
                  f"at end {info['loadavg_at_end']} (other processes on the machine skew the numbers)")

    doc = {
        "benchmark": "tracking_overhead",
        "description": "wall time of one local pipeline run (RecordingSource -> Validate -> DetectDrift(x0) -> "
                       "RiverStrategy(StandardScaler|LinearRegression)) with MLflow tracking off, on a SQLite "
                       "store, and on a local mlflow server started by the script",
        "protocol": {
            "stream": STREAM, "seed": SEED, "events": args.events, "batch_size": args.batch_size,
            "repeats": args.repeats, "statistic": "median", "modes": modes, "runner": "local",
            "goal": f"wall/off {GOAL}",
            "excluded_from_timings": "mlflow import, store and experiment creation, server start-up, "
                                     "one 3-batch warm-up run per mode",
            "wall_seconds": "time around Pipeline.run", "loop_seconds": "RunResult.seconds (batch loop only)",
            "metric_send_seconds": "time in MetricsLogger._send (synchronous log_batch of metric points), "
                                   "wrapped in this process",
            "server": {"command": server.cmd if server is not None else None,
                       "env": {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                       "starts": server.attempts if server is not None else None},
        },
        "machine": info,
        "setup_seconds": setup,
        "total_seconds": total_s,
        "mae_identical": same_mae,
        "summary": summary,
        "runs": runs,
    }
    out = write_json(doc, args.json)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
