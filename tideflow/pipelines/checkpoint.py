"""Checkpoints on disk: one file per checkpoint, written atomically, loaded without pickle.

A checkpoint is what the Ray runner collects at one batch boundary (see
`tideflow.pipelines.runners.ray.run_on_ray`): the batch number, every actor's
snapshot (source position, data-path operators, learners with their models and
the rows still waiting for labels) and the driver's bookkeeping. On disk it is
``<dir>/ckpt-<batch>.json``: JSON of plain data only. The actors' snapshots arrive
sealed (`tideflow.stream.state.seal`: `to_plain` trees, with any torch tensors packed
by ``torch.save`` into bytes that only the actor reads back, with
``torch.load(weights_only=True)``); the rest goes through `to_plain` here; bytes are
written as base64. Reading is ``json.loads`` then `from_plain`, which imports only
allow-listed modules: opening a checkpoint cannot run code, and the driver never
needs torch for it.

Writing goes to ``ckpt-<batch>.json.tmp``, is flushed to disk, and is then renamed
over the final name, so a crash mid-write leaves the previous checkpoint intact
and no half-written file under a checkpoint's name. Each file carries the
graph's fingerprint; resuming a different pipeline from it is an error.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> store = CheckpointStore(d, fingerprint="abc")
>>> _ = store.save({"seq": 9, "actors": {"x": [1.5, None]}, "collector": {}})
>>> store.load()["actors"]
{'x': [1.5, None]}
>>> CheckpointStore(d, fingerprint="other").load()
Traceback (most recent call last):
...
tideflow.pipelines.checkpoint.CheckpointMismatch: ...
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

FORMAT = "tideflow-checkpoint"
VERSION = 3  # 2: actor snapshots sealed (tideflow.stream.state.seal); 3: JSON, not torch.save
_NAME = re.compile(r"^ckpt-(\d+)\.json$")


class CheckpointMismatch(ValueError):
    """The checkpoint was written by a different pipeline graph (or format)."""


class CheckpointStore:
    """Checkpoints of one run in a folder (local path).

    Args:
        directory: the folder (created on the first save).
        fingerprint: the graph's `Graph.fingerprint()`; saved and checked on load.
        keep: how many of the newest checkpoints to keep (older ones are deleted).
        meta: plain data saved beside the checkpoints as ``run.json`` (what
            ``tideflow resume`` needs to rebuild the pipeline).
    """

    def __init__(self, directory: str | os.PathLike[str], *, fingerprint: str, keep: int = 2,
                 meta: dict[str, Any] | None = None) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.keep = keep
        self.meta = meta
        self.saved = 0
        self.mirror: Any = None  # e.g. `MlflowMirror`: gets each checkpoint's files after the save
        self.durable = False  # the last save reached every copy (the mirror's too, when there is one)

    def files(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, checkpoint: dict[str, Any], history: dict[str, Any] | None = None) -> Path:
        """Write one checkpoint; ``history``, the run's records since the previous checkpoint
        (per-batch metrics, drift events, ...), is appended to ``history.jsonl`` first, so a
        checkpoint file never refers to records that are not on disk."""
        from tideflow.stream.state import to_plain

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.meta is not None and self.saved == 0:
            _atomic_write(self.dir / "run.json", json.dumps(self.meta, indent=2, default=str).encode())
        seq = int(checkpoint["seq"])
        line = None
        if history is not None:
            line = json.dumps({"seq": seq, **history}, default=str) + "\n"
            with open(self.dir / "history.jsonl", "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        final = self.dir / f"ckpt-{seq:012d}.json"
        tmp = final.with_name(final.name + ".tmp")
        doc = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "seq": seq,
               "state": to_plain(checkpoint)}
        with open(tmp, "wb") as fh:
            fh.write(_dumps(doc))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self.saved += 1
        self.durable = True
        if self.mirror is not None:
            self.durable = self.mirror.save(seq, final, line, self.dir / "history.jsonl",
                                            self.dir / "run.json" if self.saved == 1 else None)
        for old in self.files()[:-self.keep]:
            old.unlink(missing_ok=True)
        return final

    def load(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
        """The newest checkpoint (or ``path``), or None when there is none."""
        from tideflow.stream.state import from_plain

        if path is None:
            files = self.files()
            if not files:
                return None
            path = files[-1]
        doc = _load_doc(Path(path))
        if doc.get("format") != FORMAT:
            raise CheckpointMismatch(f"{path} is not a tideflow checkpoint")
        if doc.get("version") != VERSION:
            raise CheckpointMismatch(f"{path}: checkpoint format version {doc.get('version')}, "
                                     f"this tideflow reads {VERSION}")
        if doc.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatch(
                f"{path} was written by a different pipeline graph (fingerprint {doc.get('fingerprint')}, "
                f"this pipeline's is {self.fingerprint}); resume the pipeline that wrote it, or use a new "
                f"checkpoint folder")
        state = from_plain(doc["state"])
        state["history"] = self.history(int(doc["seq"]))
        return state

    def history(self, upto: int) -> list[dict[str, Any]]:
        """The history records of checkpoints up to batch ``upto``, oldest first."""
        path = self.dir / "history.jsonl"
        if not path.exists():
            return []
        out = []
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash: after every checkpoint
                    break
                if rec["seq"] > upto:
                    break
                out.append(rec)
        return out

    def truncate_history(self, upto: int) -> None:
        """Drop history records of checkpoints after batch ``upto`` (written, then the run died
        before that checkpoint file was complete): a resumed run writes them again."""
        path = self.dir / "history.jsonl"
        if path.exists():
            keep = self.history(upto)
            _atomic_write(path, "".join(json.dumps(r, default=str) + "\n" for r in keep).encode())


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` a run wrote beside its checkpoints."""
    path = Path(directory) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {directory} a checkpoint folder of a tideflow run?")
    return json.loads(path.read_text())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


ARTIFACT_DIR = "checkpoints"


class MlflowMirror:
    """Copies each checkpoint into the MLflow run's artifacts, under ``checkpoints/``.

    Artifact stores cannot rename or delete, so the checkpoint goes to one of two slots
    (``slot-0.json``, ``slot-1.json``, in turn): an upload cut short spoils at most one slot,
    and the other still holds the previous checkpoint (`download` takes the newest slot
    that loads). Each checkpoint's history records go as their own small file
    (``history/<batch>.jsonl``), so an upload costs the same late in a long run as early.
    A failed upload (the tracking server down) is retried with the next checkpoint: the
    history files first, in order, then the slot, so the artifacts never hold a
    checkpoint whose history is missing. The local folder stays the primary copy.

    Args:
        tracker: the run's `tideflow.pipelines.tracking.Tracker` (its parent run).
        staging: a local folder for the files being uploaded.
    """

    def __init__(self, tracker: Any, staging: str | os.PathLike[str]) -> None:
        self.tracker = tracker
        self.staging = Path(staging)
        self.slot = 0
        self.queued: list[Path] = []  # history files not uploaded yet, oldest first
        self.started = False  # the first history file (every record so far) is queued
        self.uploaded = 0
        self.failures = 0

    def save(self, seq: int, checkpoint: Path, history_line: str | None, history_file: Path,
             run_json: Path | None) -> bool:
        """Upload one checkpoint (its history records, and ``run.json`` the first time);
        False when the upload failed (it is retried with the next checkpoint)."""
        import logging
        import shutil

        (self.staging / "history").mkdir(parents=True, exist_ok=True)
        if run_json is not None and run_json.exists():
            shutil.copyfile(run_json, self.staging / "run.json")
            self.queued.insert(0, self.staging / "run.json")
        if not self.started and history_file.exists():
            # the first file carries every record so far (a resumed run's earlier ones too)
            history_line = history_file.read_text()
        self.started = True
        if history_line:
            chunk = self.staging / "history" / f"{seq:012d}.jsonl"
            chunk.write_text(history_line)
            self.queued.append(chunk)
        try:
            while self.queued:
                path = self.queued[0]
                sub = ARTIFACT_DIR if path.name == "run.json" else f"{ARTIFACT_DIR}/history"
                self.tracker.log_artifact(path, artifact_path=sub)
                self.queued.pop(0)
                if path.parent.name == "history":
                    path.unlink(missing_ok=True)
            slot = self.staging / f"slot-{self.slot}.json"
            shutil.copyfile(checkpoint, slot)
            self.tracker.log_artifact(slot, artifact_path=ARTIFACT_DIR)
            slot.unlink(missing_ok=True)
        except Exception as exc:  # noqa: BLE001 - the tracking store is down: retried next time
            self.failures += 1
            logging.getLogger("tideflow").warning(
                "checkpoint after batch %d not copied to MLflow (%s); the local copy is kept and "
                "the upload is retried with the next checkpoint", seq, exc)
            return False
        self.slot = 1 - self.slot
        self.uploaded += 1
        return True


def download(run_id: str, directory: str | os.PathLike[str], *, tracking_uri: str | None = None) -> Path:
    """A checkpoint folder rebuilt from an MLflow run's ``checkpoints/`` artifacts (see
    `MlflowMirror`): ``run.json``, ``history.jsonl`` and the newest slot that loads, as
    ``ckpt-<batch>.json``. Returns the folder, ready for ``resume``."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    from tideflow.pipelines.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    out = Path(directory)
    if out.is_dir() and any(out.glob("ckpt-*.json")):
        raise FileExistsError(f"{out} already holds checkpoints (of a resumed run?): download into an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = Path(client.download_artifacts(run_id, ARTIFACT_DIR, tmp))
        except Exception as exc:  # noqa: BLE001 - say what is missing, whatever the store
            raise FileNotFoundError(f"MLflow run {run_id} has no {ARTIFACT_DIR}/ artifacts "
                                    f"(was it run with checkpoints to MLflow?): {exc}") from exc
        best: tuple[int, Path] | None = None
        for slot in sorted(got.glob("slot-*.json")):
            try:
                doc = _load_doc(slot)
                seq = int(doc["seq"]) if doc.get("format") == FORMAT else None
            except Exception:  # noqa: BLE001 - an upload cut short: the other slot holds the previous one
                seq = None
            if seq is not None and (best is None or seq > best[0]):
                best = (seq, slot)
        if best is None:
            raise FileNotFoundError(f"MLflow run {run_id}: no loadable checkpoint in {ARTIFACT_DIR}/")
        shutil.copyfile(best[1], out / f"ckpt-{best[0]:012d}.json")
        if (got / "run.json").exists():
            shutil.copyfile(got / "run.json", out / "run.json")
        lines = []
        for chunk in sorted((got / "history").glob("*.jsonl")) if (got / "history").is_dir() else []:
            if int(chunk.stem) <= best[0]:
                lines.append(chunk.read_text())
        _atomic_write(out / "history.jsonl", "".join(lines).encode())
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return {"__b64__": base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"a checkpoint holds plain data only, not {type(obj).__name__} (tensors travel sealed)")


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, default=_json_default, separators=(",", ":")).encode()


def _load_doc(path: Path) -> dict[str, Any]:
    """A checkpoint file's document; anything but a JSON object is not a tideflow checkpoint."""
    def hook(d: dict[str, Any]) -> Any:
        return base64.b64decode(d["__b64__"]) if len(d) == 1 and "__b64__" in d else d

    try:
        doc = json.loads(path.read_bytes(), object_hook=hook)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointMismatch(f"{path} is not a tideflow checkpoint (not a JSON document: {exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointMismatch(f"{path} is not a tideflow checkpoint")
    return doc
