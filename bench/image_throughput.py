"""Learn throughput of the image learners on the CPU and, where torch sees one, on CUDA.

Step 4 of bench/gpu_check.sh (which calls this file with its share of the check's time), and
runnable on its own. Every case learns seeded synthetic rows of 10 classes (a Gaussian around each
class's own random mean, standardised), so no data set has to be on the machine:

* PRD (`tf.PrototypeDistillation`): 28x28 images through its MLP encoder, and 1280-value feature
  rows (EfficientNet-Lite0's width);
* DKVB (`tf.KeyValueBottleneck`) on 1280-value rows: the toy codebooks and the paper's
  256 x 4096 x 14 (the key fit on 512 rows is reported apart);
* DST (`tf.SparseTraining`, MLP 784-200-200) on 28x28 images at density 0.2 and dense (density 1,
  nothing frozen), minibatches of 64 and a mask update every 50 steps as in bench/dst.py: the
  masks are applied on dense kernels, so the sparse learner is expected to be no faster than the
  dense one on either device;
* EAR (`tf.EAR`) on 28x28 images with its MLP encoder frozen after 2 batches (the timed batches are
  its steady state: HDC scoring and routing, the adaptor's passes over its window), and on
  1280-value feature rows without an encoder.

What is timed: ``learn`` per batch after ``warm`` untimed batches (model construction, the CUDA
context, a key fit, an encoder's training phase), with ``torch.cuda.synchronize`` after each
batch on CUDA. Each (case, device) gets an equal share of the time left and stops its timed
batches when that is spent; a case that finds less than `MIN_SHARE_S` left is skipped and says
so. DKVB at the paper's sizes comes first: its key fit is the longest set-up and no share bounds
it, so the other cases' shares are cut from what it leaves rather than it running past the end. The JSON is
rewritten after every case, so a step cut off by its caller's timeout keeps what it measured. Output: a line per (case, device), the cuda/cpu ratio
per case, and a JSON file.

Usage::

    .venv/bin/python bench/image_throughput.py bench/results/image_learners.json --budget 60
    .venv/bin/python bench/image_throughput.py out.json --cuda --budget 90 --cases dst,ear
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

#: the least time a case is given (a case that would get less is skipped and said so)
MIN_SHARE_S = 3.0
#: the paper's DKVB sizes
PAPER = {"codebooks": 256, "keys": 4096, "key_dim": 14, "init_epochs": 1}
#: EAR on EfficientNet-Lite0 features, as bench/ear.py runs it: adaptors within 5 % of that
#: encoder's 3 371 008 parameters
FEATURE_EAR = {"encoder": None, "max_params": int(0.05 * 3_371_008), "widths": (16, 32, 64, 128)}


def rows(shape: tuple[int, ...], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 10 classes (a Gaussian around each class's own random mean), standardised, float32."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    y = rng.integers(0, 10, n)
    x = rng.normal(size=(10, d))[y] + rng.normal(size=(n, d))
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32).reshape(n, *shape)
    return x, y.astype(np.int64)


def stream(shape: tuple[int, ...], n: int, batch: int) -> tuple[Any, list[Any], Any]:
    """Schema, batches and 512 unlabeled rows (what a key fit sees: its cost is reported apart)."""
    import tideflow as tf

    x, y = rows(shape, n)
    schema = tf.Schema({"x": tf.Tensor(shape, "float32"), "y": "int64"}, target="y")
    batches = [tf.Batch.from_pydict({"x": tf.tensor_array(x[i:i + batch]), "y": y[i:i + batch]}, stream_id="s",
                                    first_offset=i) for i in range(0, n, batch)]
    return schema, batches, tf.Batch.from_pydict({"x": tf.tensor_array(x[:512])}, stream_id="s")


def cases() -> list[tuple[str, str, tuple[int, ...], int, int, Callable[[str], Any], int]]:
    """(family, name, input shape, rows, batch, factory(device), untimed batches)."""
    import tideflow as tf

    def dst(density: float) -> Callable[[str], Any]:
        # bench/dst.py's minibatch and mask-update interval (64 rows, every 50 steps: every 25th
        # batch of 128 rows here); steps_per_task beyond the stream, so every timed batch is
        # inside the drop schedule
        return lambda d: tf.SparseTraining(10, density=density, isolate=density < 1.0, minibatch=64, epochs=1,
                                           update_every=50, steps_per_task=10_000, device=d)

    return [
        ("dkvb", "dkvb paper sizes, 1280 features", (1280,), 4096, 256,
         lambda d: tf.KeyValueBottleneck(10, device=d, **PAPER), 1),
        ("prd", "prd, image 28x28", (28, 28), 2048, 128,
         lambda d: tf.PrototypeDistillation(10, minibatch=128, device=d), 1),
        ("prd", "prd, 1280 features", (1280,), 2048, 128,
         lambda d: tf.PrototypeDistillation(10, minibatch=128, device=d), 1),
        ("dst", "dst d=0.2, image 28x28", (28, 28), 4096, 128, dst(0.2), 1),
        ("dst", "dst dense (d=1), image 28x28", (28, 28), 4096, 128, dst(1.0), 1),
        ("ear", "ear, image 28x28, encoder frozen", (28, 28), 2048, 128,
         lambda d: tf.EAR(10, freeze_after=2, device=d), 3),
        ("ear", "ear, 1280 features, no encoder", (1280,), 2048, 128, lambda d: tf.EAR(10, device=d, **FEATURE_EAR), 1),
        ("dkvb", "dkvb toy, 1280 features", (1280,), 4096, 256, lambda d: tf.KeyValueBottleneck(10, device=d), 1),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the JSON file to write")
    parser.add_argument("--cuda", action="store_true", help="time on CUDA too, when torch sees it")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds for every case and device together, counted after the imports")
    parser.add_argument("--cases", default="prd,dkvb,dst,ear", help="learner families, comma-separated")
    args = parser.parse_args(argv)
    import torch

    import tideflow as tf

    torch.set_num_threads(1)
    warm_up = tf.SparseTraining(2, hidden=(4,))  # torch's lazy set-up, paid before any case is timed
    warm_up.bind(tf.Schema({"x": tf.Tensor((4,), "float32"), "y": "int64"}, target="y"))
    warm_up.learn(tf.Batch.from_pydict({"x": tf.tensor_array(np.zeros((8, 4), np.float32)), "y": np.arange(8) % 2},
                                       stream_id="warm-up"))
    start = time.perf_counter()  # the budget is the cases' time: imports are the caller's margin
    families = set(args.cases.split(","))
    chosen = [c for c in cases() if c[0] in families]
    devices = ["cpu"] + (["cuda"] if args.cuda and torch.cuda.is_available() else [])
    todo = [(c, d) for c in chosen for d in devices]
    results: list[dict[str, Any]] = []

    def save() -> None:  # after every case: a step cut off by its timeout keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"devices": devices, "torch": torch.__version__, "budget_s": args.budget,
                                        "results": results}, indent=2))

    for i, ((_, name, shape, n, batch, make, warm), device) in enumerate(todo):
        left = args.budget - (time.perf_counter() - start)
        if left < MIN_SHARE_S:  # no time to set a case up and time a batch: said, not attempted
            results.append({"case": name, "device": device, "skipped": f"budget spent ({args.budget:.0f} s)"})
            print(f"{name:34s} {device:4s} skipped: the budget of {args.budget:.0f} s is spent", flush=True)
            save()
            continue
        share = max(MIN_SHARE_S, left / (len(todo) - i))
        schema, batches, unlabeled = stream(shape, n, batch)
        learner = make(device)
        learner.bind(schema)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        learner.prepare(unlabeled)  # DKVB fits its keys here (the others: nothing)
        for b in batches[:warm]:  # set-up apart: construction, CUDA context, key fit, encoder phase
            learner.learn(b)
        sync()
        first = time.perf_counter() - t0
        learned = seconds = 0.0
        for b in batches[warm:]:
            t = time.perf_counter()
            learner.learn(b)
            sync()
            seconds += time.perf_counter() - t
            learned += len(b)
            # the share is for timed batches; a long set-up shortens the later cases' shares instead
            if seconds > share or time.perf_counter() - start > args.budget:
                break
        rate = learned / seconds if seconds else None
        results.append({"case": name, "device": device, "rows_timed": int(learned), "learn_s": seconds,
                        "samples_per_s": rate, "warm_batches": warm, "first_batch_s": first})
        print(f"{name:34s} {device:4s} {'-' if rate is None else f'{rate:10.0f}'} samples/s over {int(learned)} "
              f"rows (set-up: {warm} batch(es){', key fit' if 'dkvb' in name else ''}, {first:.2f} s)", flush=True)
        save()
    by = {(r["case"], r["device"]): r.get("samples_per_s") for r in results}
    for _, name, *_ in chosen:
        cpu, gpu = by.get((name, "cpu")), by.get((name, "cuda"))
        if cpu and gpu:
            print(f"{name:34s} cuda/cpu {gpu / cpu:.1f}x")
    sparse, dense = by.get(("dst d=0.2, image 28x28", "cpu")), by.get(("dst dense (d=1), image 28x28", "cpu"))
    if sparse and dense:
        print(f"dst d=0.2 / dense samples/s on the CPU: {sparse / dense:.2f} (dense kernels: no speed-up expected)")
    if "cuda" not in devices:
        print("no CUDA: the image learners were timed on the CPU only")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
