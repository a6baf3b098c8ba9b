"""MLflow tracking for pipeline runs: one parent run per pipeline run, one nested run per strategy.

Why batching: every synchronous MLflow call is a round trip to the store. On the
embedded SQLite store that is one transaction and one fsync per call, and on a tracking
server an HTTP request (bench/tracking_overhead.py measures what batching saves). A streaming pipeline emits several metrics per
step for every strategy, so logging them one by one would cost more wall time than the
learning itself. :class:`MetricsLogger` therefore buffers points and sends them with
``MlflowClient.log_batch`` in chunks of up to 1000 metrics (MLflow's per-call limit), and
:class:`Tracker` routes every metric through one such logger. Parameters and tags go
through ``log_batch`` as well (up to 100 per call).

We use :class:`mlflow.tracking.MlflowClient` directly rather than the fluent
``mlflow.start_run`` API: the fluent API keeps one global "active run" per process/thread,
so several trackers (or threads logging for different strategies) would fight over it.
With the client every call names its run id explicitly.

The default store is SQLite in the working folder (``./mlflow.db``, artifacts in
``./mlartifacts``); ``MLFLOW_TRACKING_URI`` (or ``tracking_uri=``) points it at a real
tracking server instead.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mlflow is slow to import; keep `import tideflow.pipelines.tracking` cheap.
    from mlflow.tracking import MlflowClient

__all__ = ["MetricsLogger", "Tracker", "flatten_params"]

_log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation). Mirrored here so that importing this module does
# not import mlflow (seconds) when tracking is disabled; test_tracking checks they match.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250

# Characters MLflow accepts in metric/param/tag names (POSIX rule of
# mlflow.utils.validation.validate_param_and_metric_name).
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _safe_key(key: Any) -> str:
    """Make `key` a name MLflow accepts, instead of letting one odd operator name
    (``acc@1``, ``a//b``) fail a whole batch of otherwise fine points."""
    s = _BAD_KEY_CHARS.sub("_", str(key))
    # MLflow also rejects names that normalise to another path ("a//b", "./a", "/a", "..").
    if posixpath.normpath(s) != s or s.startswith("/") or s in ("", ".") or s.startswith(".."):
        parts = [p for p in s.split("/") if p not in ("", ".", "..")]
        s = "/".join(parts) or "_"
    return s[:MAX_ENTITY_KEY_LENGTH]


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into dotted keys with ``str()``-ed values.

    >>> flatten_params({"graph": {"source": "mnist", "ops": [1, 2]}, "seed": 0})
    {'graph.source': 'mnist', 'graph.ops': '[1, 2]', 'seed': '0'}
    >>> flatten_params({"a": {}}, prefix="p")
    {'p.a': '{}'}
    """
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key))
        else:
            # An empty mapping is kept as "{}" so the key is not silently lost.
            out[key] = str(v)
    return out


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def default_tracking_uri(cwd: str | os.PathLike[str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else SQLite ``mlflow.db`` in the working folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(cwd or Path.cwd()) / 'mlflow.db'}"


def log_run_artifacts(result: Any, paths: list[str | os.PathLike[str]]) -> None:
    """Add files to a finished run's MLflow run, in the store the run was logged to
    (``RunResult.tracking_uri``); nothing for a run that was not tracked."""
    if not getattr(result, "run_id", None):
        return
    from mlflow import MlflowClient

    client = MlflowClient(result.tracking_uri or default_tracking_uri())
    for p in paths:
        client.log_artifact(result.run_id, os.fspath(p))


class MetricsLogger:
    """Batches metric points and sends them with ``MlflowClient.log_batch``, never one call
    per metric.

    A run's buffer is sent as soon as it holds ``flush_every`` points (so calls are full
    batches); everything buffered is sent once the oldest unsent point is older than
    ``flush_seconds`` (checked on each ``log``, there is no background thread) and on
    :meth:`flush`. Thread-safe: actors/threads may log concurrently; sending is serialised
    and happens outside the buffer lock so loggers are not blocked by a slow store.

    Non-finite or non-numeric values are skipped and counted in ``skipped_points``: MLflow
    would store NaN, but a NaN accuracy is a bug signal, not a data point, and it must never
    crash the pipeline.

    Outages: when a send fails (tracking server down, store locked), the points are kept,
    in order, in a backlog and the job goes on; the backlog is sent again after
    ``retry_seconds`` (doubling up to a minute while the store stays down) and before any
    newer point. Up to ``max_backlog`` points stay in memory; older ones are spilled to
    ``spill_path`` (JSON lines, one point per line) and read back when the store returns.
    ``flush(wait_s)`` at the end keeps retrying for up to ``wait_s`` seconds; points still
    unsent then stay in the spill file (its path is logged), so none is lost.
    """

    def __init__(
        self, client: MlflowClient, *, flush_every: int = 1000, flush_seconds: float = 5.0,
        retry_seconds: float = 2.0, max_backlog: int = 100_000, spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self._client = client
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.max_backlog = max_backlog
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self._backlog: list[tuple[str, Any]] = []  # (run_id, Metric), oldest first, after the spill file
        self._spilled = 0  # points in the spill file
        self._down_since: float | None = None
        self._next_try = 0.0
        self._delay = retry_seconds
        self.outages = 0
        self.failed_sends = 0
        self._buffers: dict[str, list[Any]] = {}  # run_id -> [mlflow.entities.Metric]
        self._buffered = 0
        self._oldest: float | None = None  # monotonic time of the oldest unsent point
        self._lock = threading.Lock()  # guards the buffers and counters
        self._send_lock = threading.Lock()  # keeps sends in order, one at a time
        self._points_logged = 0
        self.skipped_points = 0
        from mlflow.entities import Metric  # deferred: see module imports

        self._metric_cls = Metric

    @property
    def points_logged(self) -> int:
        """Points actually sent to the store."""
        return self._points_logged

    @property
    def pending(self) -> int:
        """Points buffered and not yet sent (including an outage's backlog)."""
        return self._buffered + len(self._backlog) + self._spilled

    @property
    def down(self) -> bool:
        """Whether the last send failed (the store is taken to be unreachable)."""
        return self._down_since is not None

    def log(
        self, run_id: str, key: str, value: float, step: int, timestamp_ms: int | None = None
    ) -> None:
        self._add(run_id, {key: value}, step, timestamp_ms)

    def log_many(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        self._add(run_id, values, step, None)

    def _add(
        self, run_id: str, values: Mapping[str, Any], step: int, timestamp_ms: int | None
    ) -> None:
        ts = _now_ms() if timestamp_ms is None else int(timestamp_ms)
        points = []
        skipped = 0
        for key, value in values.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                skipped += 1
                continue
            points.append(self._metric_cls(_safe_key(key), v, ts, int(step)))
        send: dict[str, list[Any]] = {}
        with self._lock:
            if skipped:
                if self.skipped_points == 0:
                    _log.warning("skipping non-finite metric value(s) in %s at step %s",
                                 list(values), step)
                self.skipped_points += skipped
            if points:
                buf = self._buffers.setdefault(run_id, [])
                buf.extend(points)
                self._buffered += len(points)
                if self._oldest is None:
                    self._oldest = time.monotonic()
                if time.monotonic() - self._oldest >= self.flush_seconds:
                    send = self._take_all()
                elif len(buf) >= self.flush_every:
                    send = {run_id: self._take(run_id)}
        if send:
            self._send(send)
        elif self.down and time.monotonic() >= self._next_try:
            self._send({})  # the store may be back: try the backlog

    def _take(self, run_id: str) -> list[Any]:
        buf = self._buffers.pop(run_id, [])
        self._buffered -= len(buf)
        if self._buffered == 0:
            self._oldest = None
        return buf

    def _take_all(self) -> dict[str, list[Any]]:
        taken, self._buffers = self._buffers, {}
        self._buffered = 0
        self._oldest = None
        return taken

    def _send(self, batches: dict[str, list[Any]]) -> bool:
        """Send the backlog (oldest first), then ``batches``; on failure keep what is unsent.

        Returns whether everything went out."""
        with self._send_lock:
            for run_id, metrics in batches.items():
                self._backlog.extend((run_id, m) for m in metrics)
            if self.down and time.monotonic() < self._next_try:
                self._bound_backlog()
                return False
            try:
                self._drain()
            except Exception as exc:  # noqa: BLE001 - any store failure: keep the points, go on
                self._failed(exc)
                self._bound_backlog()
                return False
            if self._down_since is not None:
                _log.warning("MLflow store %s is reachable again after %.0f s: backlog sent",
                             getattr(self._client, "tracking_uri", ""), time.monotonic() - self._down_since)
                self._down_since = None
                self._delay = self.retry_seconds
            return True

    def _drain(self) -> None:
        """Send the spilled points, then the in-memory backlog, oldest first: each call takes
        the longest run of points of one MLflow run (<= 1000) from the head of the backlog and
        removes exactly those once the store has them, so a failure part-way re-sends nothing."""
        if self._spilled:
            spilled = self._read_spill()
            assert self.spill_path is not None
            self._backlog[:0] = spilled
            self.spill_path.unlink(missing_ok=True)
            self._spilled = 0
        backlog = self._backlog
        while backlog:
            run_id = backlog[0][0]
            n = 1
            while n < len(backlog) and n < MAX_METRICS_PER_BATCH and backlog[n][0] == run_id:
                n += 1
            # synchronous=True: with MLflow's async logging enabled by env, the
            # count below would otherwise claim points that may still fail.
            self._client.log_batch(run_id, metrics=[m for _, m in backlog[:n]], synchronous=True)
            del backlog[:n]
            with self._lock:
                self._points_logged += n

    def _failed(self, exc: Exception) -> None:
        self.failed_sends += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self.outages += 1
            _log.warning("MLflow store %s unreachable (%s: %s); buffering metrics and retrying",
                         getattr(self._client, "tracking_uri", ""), type(exc).__name__,
                         str(exc).splitlines()[0][:200] if str(exc) else "")
        else:
            self._delay = min(60.0, self._delay * 2)
        self._next_try = now + self._delay

    def _bound_backlog(self) -> None:
        """Past ``max_backlog`` points in memory, append the oldest to the spill file."""
        if len(self._backlog) <= self.max_backlog:
            return
        if self.spill_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="tideflow-metrics-", suffix=".jsonl")
            os.close(fd)
            self.spill_path = Path(name)
        import json

        n = len(self._backlog) - self.max_backlog // 2
        with open(self.spill_path, "a") as fh:
            for run_id, m in self._backlog[:n]:
                fh.write(json.dumps([run_id, m.key, m.value, m.timestamp, m.step]) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        del self._backlog[:n]
        self._spilled += n

    def _read_spill(self) -> list[tuple[str, Any]]:
        import json

        assert self.spill_path is not None
        out = []
        with open(self.spill_path) as fh:
            for line in fh:
                run_id, key, value, ts, step = json.loads(line)
                out.append((run_id, self._metric_cls(key, value, ts, step)))
        return out

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send everything buffered; with a backlog from an outage, retry for up to ``wait_s``
        seconds. Returns whether nothing is left unsent."""
        with self._lock:
            send = self._take_all()
        deadline = time.monotonic() + wait_s
        ok = self._send(send) if (send or self._backlog or self._spilled) else True
        while not ok and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._next_try, deadline) - time.monotonic()))
            self._next_try = 0.0
            ok = self._send({})
        if not ok:
            self._bound_backlog_all()
        return ok

    def _bound_backlog_all(self) -> None:
        """Put every unsent point into the spill file (at the end, so none is lost)."""
        keep, self.max_backlog = self.max_backlog, 0
        try:
            self._bound_backlog()
        finally:
            self.max_backlog = keep
        _log.error("MLflow store still unreachable: %d metric points kept in %s", self._spilled, self.spill_path)


class Tracker:
    """One MLflow run per pipeline run, one nested run per strategy.

    With ``enabled=False`` every method is a cheap no-op (``run_id`` stays None, mlflow is
    not even imported) so the engine can run with tracking off.
    """

    def __init__(
        self,
        *,
        experiment: str = "tideflow",
        tracking_uri: str | None = None,
        run_name: str | None = None,
        enabled: bool = True,
        flush_every: int = 1000,
        flush_seconds: float = 5.0,
        end_wait_s: float = 120.0,
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.end_wait_s = end_wait_s
        self.spill_path = spill_path
        self.experiment = experiment
        self.run_name = run_name
        self._cwd = Path.cwd()
        self.tracking_uri: str = tracking_uri or default_tracking_uri(self._cwd)
        self.run_id: str | None = None
        self.child_ids: dict[str, str] = {}
        self.experiment_id: str | None = None
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._client: MlflowClient | None = None
        self._metrics: MetricsLogger | None = None
        self._lock = threading.Lock()
        self._ended = False

    # -- plumbing ---------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient | None:
        """The MlflowClient (created on first use; None when disabled)."""
        if not self.enabled:
            return None
        if self._client is None:
            # MLflow retries a failed HTTP request 7 times with backoff (minutes in all): the
            # driver would stall that long per send during an outage. Two quick retries, then
            # the points go to the backlog (MetricsLogger); the user's settings win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def metrics(self) -> MetricsLogger | None:
        return self._metrics

    @property
    def skipped_points(self) -> int:
        """Metric points dropped because their value was NaN/inf/non-numeric."""
        return self._metrics.skipped_points if self._metrics is not None else 0

    @property
    def points_logged(self) -> int:
        return self._metrics.points_logged if self._metrics is not None else 0

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client
        assert client is not None
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            # A SQLite store would otherwise put artifacts under a "./mlruns" resolved
            # against whatever cwd the store was first opened in; pin them next to the db.
            location = None
            if self.tracking_uri.startswith("sqlite:///"):
                db = Path(self.tracking_uri[len("sqlite:///"):].split("?", 1)[0])
                location = ((self._cwd / db).parent / "mlartifacts").as_uri()
            try:
                return client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException:
                # Another tracker created it between our lookup and create: use theirs.
                exp = client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage != "active":
            raise RuntimeError(
                f"MLflow experiment {self.experiment!r} is deleted in {self.tracking_uri}; "
                "restore it (mlflow experiments restore) or pick another experiment name"
            )
        return exp.experiment_id

    def _run_for(self, name: str | None) -> str:
        if self.run_id is None:
            raise RuntimeError("Tracker.start() has not been called")
        if self._ended:
            raise RuntimeError("Tracker.end() was already called")
        if name is None:
            return self.run_id
        try:
            return self.child_ids[name]
        except KeyError:
            raise KeyError(
                f"no child run named {name!r}; started: {sorted(self.child_ids)}"
            ) from None

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {_safe_key(k): v[:MAX_PARAM_VAL_LENGTH] for k, v in flatten_params(params).items()}
        client = self.client
        assert client is not None
        for chunk in _chunks([Param(k, v) for k, v in flat.items()], MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=chunk, synchronous=True)

    # -- API ----------------------------------------------------------------------------

    def start(self, params: Mapping[str, Any]) -> str:
        """Create the parent run and log `params` (flattened, dotted keys); return its id."""
        if not self.enabled:
            return ""
        with self._lock:
            if self.run_id is not None:
                raise RuntimeError(f"Tracker already started (run {self.run_id})")
            client = self.client
            assert client is not None
            self.experiment_id = self._experiment_id()
            run = client.create_run(self.experiment_id, run_name=self.run_name)
            self.run_id = run.info.run_id
            self._metrics = MetricsLogger(
                client, flush_every=self._flush_every, flush_seconds=self._flush_seconds,
                spill_path=self.spill_path,
            )
        self._log_params(self.run_id, params)
        return self.run_id

    def start_child(self, name: str, params: Mapping[str, Any]) -> str:
        """Create a nested run called `name` under the parent run; return its id."""
        if not self.enabled:
            return ""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        with self._lock:
            parent = self._run_for(None)
            if name in self.child_ids:
                raise ValueError(f"child run {name!r} already started")
            client = self.client
            assert client is not None and self.experiment_id is not None
            run = client.create_run(
                self.experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent}
            )
            run_id = run.info.run_id
            self.child_ids[name] = run_id
        self._log_params(run_id, params)
        return run_id

    def log_metrics(self, name: str | None, values: Mapping[str, float], step: int) -> None:
        """Buffer `values` at `step` for the parent (name None) or the child `name`."""
        if not self.enabled:
            return
        run_id = self._run_for(name)
        assert self._metrics is not None
        self._metrics.log_many(run_id, values, step)

    def log_dict(self, obj: Mapping[str, Any], artifact_file: str, name: str | None = None) -> None:
        """Store `obj` as a JSON (or YAML, by suffix) artifact of the parent or child run."""
        if not self.enabled:
            return
        client = self.client
        assert client is not None
        client.log_dict(self._run_for(name), dict(obj), artifact_file)

    def log_artifact(
        self, local_path: str | os.PathLike[str], name: str | None = None,
        *, artifact_path: str | None = None,
    ) -> None:
        """Upload a local file or folder as an artifact of the parent or child run."""
        if not self.enabled:
            return
        client = self.client
        assert client is not None
        client.log_artifact(self._run_for(name), os.fspath(local_path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any], name: str | None = None) -> None:
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag

        run_id = self._run_for(name)
        client = self.client
        assert client is not None
        items = [RunTag(_safe_key(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=chunk, synchronous=True)

    def stats(self) -> dict[str, Any]:
        """Points sent, outages seen, sends that failed, points still unsent and where they are."""
        m = self._metrics
        if m is None:
            return {"points_logged": 0, "outages": 0, "failed_sends": 0, "pending": 0}
        return {"points_logged": m.points_logged, "outages": m.outages, "failed_sends": m.failed_sends,
                "pending": m.pending, "skipped_points": m.skipped_points,
                "spill_path": str(m.spill_path) if m.pending and m.spill_path else None}

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send buffered metrics; after an outage, retry for up to ``wait_s`` seconds."""
        if self._metrics is not None:
            return self._metrics.flush(wait_s)
        return True

    def end(self, status: str = "FINISHED") -> None:
        """Flush metrics, then terminate child runs and the parent run with `status`.

        Runs are terminated even when the flush fails (the error is re-raised after), so a
        dead store never leaves runs shown as RUNNING forever. Calling it twice is a no-op.
        """
        if not self.enabled or self.run_id is None or self._ended:
            return
        from mlflow.entities import RunStatus

        RunStatus.from_string(status)  # fail early on a typo, before touching any run
        self._ended = True
        client = self.client
        assert client is not None
        try:
            # a store that went down mid-run gets `end_wait_s` to come back before the
            # points left are kept in the spill file (the run is not failed for it)
            self.flush(self.end_wait_s)
        finally:
            for run_id in [*self.child_ids.values(), self.run_id]:
                try:
                    client.set_terminated(run_id, status)
                except Exception as exc:  # noqa: BLE001 - the store is down; the job's result stands
                    _log.error("could not mark MLflow run %s %s: %s", run_id, status, exc)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")
