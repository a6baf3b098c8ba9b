"""Helpers shared by the bench scripts: machine description, formatting, JSON output.

Every script puts ``bench/`` and the repository on ``sys.path`` itself, so it runs as
``.venv/bin/python bench/<script>.py`` from anywhere, without installing anything more.
"""

from __future__ import annotations

import datetime as _dt
import signal
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tideflow as tf  # noqa: E402


def machine_info() -> dict[str, Any]:
    import numpy
    import pyarrow
    import ray
    import river

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "river": river.__version__,
        "numpy": numpy.__version__,
        "tideflow": tf.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_at_start": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages: a busy machine (other jobs) makes every number here lower."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _fmt_eps(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or not b else f"{a / b:.2f}"


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int | None = None) -> float | None:
    """Current resident memory of a process (default this one), in MiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a result document (with ``machine`` filled in when missing) and return its path."""
    doc.setdefault("machine", machine_info())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return out


def end_children() -> list[int]:
    """End this process's child processes (what a Ray start that failed left), by pid: TERM, then KILL."""
    import psutil  # installed with ray[default]

    procs = psutil.Process().children(recursive=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def retry_ray_start(start: Any, console: Any, what: str, attempts: int = 3, before_retry: Any = None) -> Any:
    """``start()``, retried when Ray's node start times out: on a busy machine Ray's agents can miss
    the raylet's fixed start-up window (the raylet then aborts). The processes a failed attempt left
    are this process's children and are ended before the next try."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as e:  # noqa: BLE001 - only Ray's start-up time-out is retried
            if attempt == attempts or "timed out during startup" not in str(e):
                raise
            if before_retry is not None:
                before_retry()
            ended = end_children()
            console.print(f"[yellow]{what} did not start (attempt {attempt} of {attempts}: {e}); "
                          f"ended {len(ended)} processes, retrying")
    raise AssertionError("unreachable")
