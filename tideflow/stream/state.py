"""Turn library objects (River models and detectors) into plain data and back.

Operator snapshots must be plain data (dicts, lists, numbers, strings, arrays,
torch tensors) so that checkpoints survive code changes and load without
unpickling (docs/architecture.md, "Snapshots"). Our own operators write their state by hand;
for third-party objects whose state lives in private attributes (River's
estimators and drift detectors, including its Cython ones) `to_plain` walks the
object through the same `__reduce_ex__` protocol pickle uses, but writes a tree
of plain values, and `from_plain` rebuilds it calling only classes and functions
from an allow-list of module prefixes. Loading a snapshot therefore never runs
code from a module outside that list, unlike `pickle.load`.

>>> from river import linear_model
>>> m = linear_model.LinearRegression()
>>> m.learn_one({"a": 1.0}, 2.0)
>>> m2 = from_plain(to_plain(m))
>>> m2.predict_one({"a": 1.0}) == m.predict_one({"a": 1.0})
True
"""

from __future__ import annotations

import copyreg
import importlib
import io
import sys
import types
from typing import Any

import numpy as np

ALLOWED_PREFIXES: tuple[str, ...] = (
    "river.",
    "tideflow.",
    "numpy.",
    "collections.",
    "math.",
    "functools.partial",
    "operator.",
    "random.Random",
    "_random.Random",
    "copyreg._reconstructor",
    "copyreg.__newobj__",
    "builtins.float",
    "builtins.int",
    "builtins.dict",
    "builtins.list",
    "builtins.set",
    "builtins.frozenset",
    "builtins.tuple",
    "builtins.object",
    "builtins.str",
    "builtins.bool",
    "builtins.getattr",
    "builtins.complex",
    "sortedcontainers.",
    "scipy.stats.",
)

_PRIMITIVES = (type(None), bool, int, float, str, bytes)


class UnsafeStateError(ValueError):
    """A snapshot names a class or function outside the allow-list."""


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module is None or name is None:
        raise TypeError(f"cannot reference {obj!r} by name")
    return f"{module}.{name}"


def _resolve(path: str, allowed: tuple[str, ...]) -> Any:
    if not any(path == p or path.startswith(p) for p in allowed):
        raise UnsafeStateError(f"snapshot refers to {path!r}, which is not in the allowed modules")
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise UnsafeStateError(f"cannot import {path!r}")


def _batch_bytes(batch: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    rb = batch.data
    with pa.ipc.new_stream(sink, rb.schema) as writer:
        writer.write_batch(rb)
    return sink.getvalue().to_pybytes()


def to_plain(obj: Any) -> Any:
    """Encode ``obj`` as a tree of plain values (see module docstring)."""
    memo: dict[int, int] = {}
    keep: list[Any] = []  # keeps encoded objects alive so their ids stay unique
    return _encode(obj, memo, keep)


def _encode(obj: Any, memo: dict[int, int], keep: list[Any]) -> Any:
    if isinstance(obj, _PRIMITIVES):
        if isinstance(obj, float) and type(obj) is not float:
            return float(obj)
        if isinstance(obj, int) and type(obj) not in (int, bool):
            return int(obj)
        return obj
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.dtype.str, "v": obj.item()}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {"__ndobj__": [_encode(v, memo, keep) for v in obj.ravel()], "shape": list(obj.shape)}
        return {"__ndarray__": np.ascontiguousarray(obj).tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return {"__ref__": _qualname(obj)}
    if isinstance(obj, np.dtype):
        return {"__dtype__": obj.str}
    key = id(obj)
    if key in memo:
        return {"__alias__": memo[key]}
    if type(obj) is list:
        memo[key] = len(memo)
        keep.append(obj)
        return {"__list__": [_encode(v, memo, keep) for v in obj], "id": memo[key]}
    if type(obj) is tuple:
        return {"__tuple__": [_encode(v, memo, keep) for v in obj]}
    if type(obj) is dict:
        memo[key] = len(memo)
        keep.append(obj)
        return {"__dict__": [[_encode(k, memo, keep), _encode(v, memo, keep)] for k, v in obj.items()], "id": memo[key]}
    if type(obj) in (set, frozenset):
        return {"__set__": [_encode(v, memo, keep) for v in obj], "frozen": type(obj) is frozenset}
    torch = sys.modules.get("torch")  # not imported: obj cannot be a tensor (and torch stays out)
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    from tideflow.stream.batch import Batch

    if isinstance(obj, Batch):  # rows waiting for labels in a checkpoint: Arrow IPC bytes
        out = {"__batch__": _batch_bytes(obj), "stream_id": obj.stream_id}
        if obj.end_of_task:  # only when set: snapshots of ordinary batches keep their form
            out["end_of_task"] = True
        return out
    reducer = getattr(obj, "__reduce_ex__", None)
    if reducer is None:
        raise TypeError(f"cannot snapshot {type(obj).__name__}")
    reduced = reducer(4)
    if isinstance(reduced, str):  # a module-level singleton
        return {"__ref__": f"{type(obj).__module__}.{reduced}"}
    func, args, *rest = list(reduced) + [None] * (5 - len(reduced))
    state, listitems, dictitems = rest[:3]
    memo[key] = len(memo)
    keep.append(obj)
    out: dict[str, Any] = {
        "__reduce__": _qualname(func),
        "args": [_encode(a, memo, keep) for a in args],
        "id": memo[key],
    }
    if state is not None:
        out["state"] = _encode(state, memo, keep)
    if listitems is not None:
        out["listitems"] = [_encode(v, memo, keep) for v in listitems]
    if dictitems is not None:
        out["dictitems"] = [[_encode(k, memo, keep), _encode(v, memo, keep)] for k, v in dictitems]
    return out


def _has_tensor(plain: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    stack = [plain]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            return True
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def seal(state: Any) -> dict[str, Any]:
    """A snapshot as it travels from an actor to the driver: `to_plain` data, with any torch
    tensors packed into bytes by ``torch.save`` (read back by `unseal` with
    ``torch.load(weights_only=True)``). The driver only keeps and forwards it, so it never
    has to import torch (hundreds of MiB resident: bench/results/memory.json) for a
    checkpoint of a pipeline whose learners use it.

    >>> unseal(seal({"w": [1.5, 2.5]}))
    {'w': [1.5, 2.5]}
    """
    plain = to_plain(state)
    if _has_tensor(plain):
        import torch

        buf = io.BytesIO()
        torch.save(plain, buf)
        return {"__sealed__": buf.getvalue()}
    return {"__plain__": plain}


def unseal(sealed: dict[str, Any], allowed: tuple[str, ...] = ALLOWED_PREFIXES) -> Any:
    """The state `seal` packed (no pickle: tensors through ``torch.load(weights_only=True)``)."""
    if "__sealed__" in sealed:
        import torch

        plain = torch.load(io.BytesIO(sealed["__sealed__"]), weights_only=True, map_location="cpu")
    else:
        plain = sealed["__plain__"]
    return from_plain(plain, allowed)


def from_plain(data: Any, allowed: tuple[str, ...] = ALLOWED_PREFIXES) -> Any:
    """Rebuild an object tree written by `to_plain`, importing only allowed names."""
    return _decode(data, {}, allowed)


def _decode(data: Any, memo: dict[int, Any], allowed: tuple[str, ...]) -> Any:
    if isinstance(data, _PRIMITIVES):
        return data
    if not isinstance(data, dict):
        return data  # a tensor
    if "__npscalar__" in data:
        return np.dtype(data["__npscalar__"]).type(data["v"])
    if "__ndarray__" in data:
        return np.frombuffer(data["__ndarray__"], dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if "__ndobj__" in data:
        arr = np.empty(len(data["__ndobj__"]), dtype=object)
        for i, v in enumerate(data["__ndobj__"]):
            arr[i] = _decode(v, memo, allowed)
        return arr.reshape(data["shape"])
    if "__dtype__" in data:
        return np.dtype(data["__dtype__"])
    if "__batch__" in data:
        import pyarrow as pa

        from tideflow.stream.batch import Batch

        with pa.ipc.open_stream(data["__batch__"]) as reader:
            return Batch(reader.read_next_batch(), data["stream_id"], bool(data.get("end_of_task", False)))
    if "__ref__" in data:
        return _resolve(data["__ref__"], allowed)
    if "__alias__" in data:
        return memo[data["__alias__"]]
    if "__list__" in data:
        out: list[Any] = []
        memo[data["id"]] = out
        out.extend(_decode(v, memo, allowed) for v in data["__list__"])
        return out
    if "__tuple__" in data:
        return tuple(_decode(v, memo, allowed) for v in data["__tuple__"])
    if "__dict__" in data:
        d: dict[Any, Any] = {}
        memo[data["id"]] = d
        for k, v in data["__dict__"]:
            d[_decode(k, memo, allowed)] = _decode(v, memo, allowed)
        return d
    if "__set__" in data:
        items = [_decode(v, memo, allowed) for v in data["__set__"]]
        return frozenset(items) if data["frozen"] else set(items)
    if "__reduce__" in data:
        func = _resolve(data["__reduce__"], allowed)
        args = [_decode(a, memo, allowed) for a in data["args"]]
        if func is copyreg.__newobj__ and args:
            cls = args[0]
            if not isinstance(cls, type):
                raise UnsafeStateError("__newobj__ needs a class")
        obj = func(*args)
        memo[data["id"]] = obj
        if "state" in data:
            state = _decode(data["state"], memo, allowed)
            setstate = getattr(obj, "__setstate__", None)
            if setstate is not None:
                setstate(state)
            elif isinstance(state, tuple) and len(state) == 2:
                inst, slots = state
                if inst:
                    obj.__dict__.update(inst)
                for k, v in (slots or {}).items():
                    setattr(obj, k, v)
            else:
                obj.__dict__.update(state)
        for v in data.get("listitems", []):
            obj.append(_decode(v, memo, allowed))
        for k, v in data.get("dictitems", []):
            obj[_decode(k, memo, allowed)] = _decode(v, memo, allowed)
        return obj
    raise ValueError(f"not a snapshot node: keys {sorted(data)}")
