"""EAR and its HDC out-of-distribution detector, measured (not a test: it passes or fails nothing).

Three parts, on Fashion-MNIST (`tf.ImageStream("fashion-mnist", split="domain-incremental",
domain="clean;rot90;invert;flip+noise")`: the training rows cut into 4 stratified parts, part d
shown in view d; the same test rows held out in every view; values standardised on the stream):

* **OOD detection on the same features.** The in-distribution model sees the clean view's training
  rows only; it scores the held-out rows of the clean view (in distribution) and of each other
  view (out), and AUROC says how well the score separates them. HDC: `HDCSpace` centred on those
  rows, one prototype per class (`HDCMemory`), score = max cosine. Max-softmax (Hendrycks & Gimpel
  2017): a logistic regression on the standardised features, score = the top probability.
  Mahalanobis (Lee et al. 2018): class means and one shared covariance (Ledoit-Wolf shrinkage),
  score = minus the distance to the nearest class mean. A near-OOD row as well: the classes 0-4 in
  distribution, 5-9 out, on the clean view. HDC also with each value standardised on those rows
  (``hdc_standardized``). Feature sets: the frozen EfficientNet-Lite0's 1280
  features (64 px input, `tideflow.stream.encoder`, cached on disk) and the raw pixels.
* **EAR against sequential fine-tuning** through the engine (held-out evaluation at every task
  boundary, `RunResult.cl_metrics`): on pixels with EAR's own MLP encoder (784-256-128, trained on
  the clean view and frozen), and on the EfficientNet features (``encoder=None``, adaptors of widths
  16-128 within 5 % of the EfficientNet-Lite0 feature extractor's 3.37 M parameters). Two
  controls without growth: one adaptor of EAR's search space fine-tuned on every view in turn
  (``max_experts=1, first_expert="adaptor"``, the issue's "sequential fine-tuning of one
  adaptor"), and expert 0 as the learner has it by default (``max_experts=1``: the encoder's head
  on pixels; on the features, with no encoder, expert 0 is an adaptor already, so both controls
  are the same learner there). Columns: final accuracy per view and mean, routing accuracy (held-out rows of view d going to the expert grown in view d; n/a when no
  expert was grown there: its shift was not detected), parameters per expert.
* **The zero-shot proxies against short training runs.** For every view after the first, every
  adaptor that fits the budget is scored by each proxy (`tideflow.strategies.ear_core.PROXIES`) at
  initialisation on the view's first batch, and trained from that same initialisation for
  ``--steps`` Adam steps on all the view's training rows (through the frozen encoder); its held-out
  accuracy is the reference. Spearman's rho between a proxy's scores and those accuracies, per
  view and seed (digits with the test suite's stream, and both Fashion-MNIST feature sets).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/ear.py              # seeds 0 and 1 (CPU: about 10 min)
    OMP_NUM_THREADS=1 .venv/bin/python bench/ear.py --quick      # a smoke run (fewer rows, one seed)

It writes ``results/ear.json`` (every number, the protocol, the machine) and ``results/ear.md``
(the tables), or ``ear_quick.*`` with ``--quick``; ``--out`` names another folder.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_info, write_json  # noqa: E402

import tideflow as tf  # noqa: E402
from tideflow.stream.hdc import HDCMemory, HDCSpace, auroc  # noqa: E402
from tideflow.strategies import torch_core  # noqa: E402
from tideflow.strategies.ear_core import PROXIES, build_expert, candidates, proxy_score, spearman  # noqa: E402

DOMAINS = "clean;rot90;invert;flip+noise"
NAMES = DOMAINS.split(";")
#: the EfficientNet-Lite0 feature extractor's parameters (without its classifier head)
EFFNET_PARAMS = 3_371_008
FEATURE_EAR = {"encoder": None, "max_params": int(0.05 * EFFNET_PARAMS), "widths": (16, 32, 64, 128)}


def stream(dataset: str, features: str, seed: int, args: argparse.Namespace) -> tf.ImageStream:
    kw: dict[str, Any] = {}
    if dataset == "fashion-mnist":
        kw = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class}
    return tf.ImageStream(dataset, split="domain-incremental", tasks=4, domain=DOMAINS, seed=seed, batch_size=64,
                          encoder=None if features == "pixels" else features, **kw)


def domain_rows(src: tf.ImageStream) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], list[tf.Batch]]:
    """Training rows (flattened) and labels per view, in stream order, and the stream's batches."""
    xs: dict[int, list[np.ndarray]] = {d: [] for d in range(4)}
    ys: dict[int, list[np.ndarray]] = {d: [] for d in range(4)}
    batches, d = [], 0
    for b in src:
        batches.append(b)
        xs[d].append(b.features([src.column], dtype=np.float32))
        ys[d].append(b.numpy("label"))
        d += bool(b.end_of_task)
    return ({k: np.concatenate(v) for k, v in xs.items()}, {k: np.concatenate(v) for k, v in ys.items()}, batches)


# -- part 1: OOD detection ---------------------------------------------------------------------
def ood_scores(x_in: np.ndarray, y_in: np.ndarray, test: list[np.ndarray], seed: int) -> dict[str, list[np.ndarray]]:
    """Each method's out-of-distribution score (higher: more out) of every array in ``test``."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out: dict[str, list[np.ndarray]] = {}
    for name, standardize in (("hdc", False), ("hdc_standardized", True)):
        space = HDCSpace.fit(x_in, seed=seed, standardize=standardize)
        memory = HDCMemory(space.dim)
        memory.add(space.encode(x_in), y_in)
        out[name] = [-memory.scores(space.encode(t)) for t in test]
    scaler = StandardScaler().fit(x_in)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_in), y_in)
    out["max_softmax"] = [-clf.predict_proba(scaler.transform(t)).max(axis=1) for t in test]
    classes = np.unique(y_in)
    means = np.stack([x_in[y_in == c].mean(axis=0) for c in classes])
    centred = np.concatenate([x_in[y_in == c] - means[i] for i, c in enumerate(classes)])
    precision = LedoitWolf().fit(centred).precision_
    out["mahalanobis"] = []
    for t in test:
        d = np.stack([np.einsum("ij,jk,ik->i", t - m, precision, t - m) for m in means], axis=1)
        out["mahalanobis"].append(d.min(axis=1))
    return out


def part_ood(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for features in args.features:
        for seed in args.seeds:
            src = stream("fashion-mnist", features, seed, args)
            x, y, _ = domain_rows(src)
            held = src.held_out()
            hx = {d: held[d].features([src.column], dtype=np.float32) for d in range(4)}
            hy = held[0].numpy("label")
            start = time.process_time()
            scores = ood_scores(x[0], y[0], [hx[d] for d in range(4)], seed)
            for method, s in scores.items():
                rows.append({"features": features, "seed": seed, "method": method, "ood": "domain",
                             **{NAMES[d]: auroc(s[0], s[d]) for d in (1, 2, 3)}})
            near_in, near_out = hy < 5, hy >= 5
            near = ood_scores(x[0][y[0] < 5], y[0][y[0] < 5], [hx[0][near_in], hx[0][near_out]], seed)
            for method, s in near.items():
                rows.append({"features": features, "seed": seed, "method": method, "ood": "classes 5-9",
                             "classes": auroc(s[0], s[1])})
            print(f"ood {features} seed {seed}: {time.process_time() - start:.1f} s CPU", flush=True)
    return rows


# -- part 2: EAR -------------------------------------------------------------------------------
def run_ear(dataset: str, features: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    params = dict(FEATURE_EAR) if features != "pixels" else {}
    src = stream(dataset, features, seed, args)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = (tf.Pipeline("ear-bench").source(src)
                  .learn(tf.EAR(10, seed=seed, **params), name="ear")
                  .learn(tf.EAR(10, seed=seed, max_experts=1, **params), name="seq")
                  .learn(tf.EAR(10, seed=seed, max_experts=1, first_expert="adaptor", **params), name="one_adaptor")
                  .run(tracking=False, progress=False))
    cpu = time.process_time() - start
    ear = result.strategies["ear"]
    held = src.held_out()
    # the expert grown for each view: expert 0 for the first, then one per event in the view it fell in
    events = [e.offset for e in result.drift_events if e.step == "ear"]
    owner: dict[int, int] = {0: 0}
    for k, offset in enumerate(events, start=1):
        owner.setdefault(int(np.searchsorted(src.plan.ends, offset, side="right")), k)
    routing = [float((ear.route(held[d]) == owner[d]).mean()) if d in owner else None for d in range(4)]
    return {"dataset": dataset, "features": features, "seed": seed,
            "final": result.cl_metrics["ear"].matrix[-1], "seq_final": result.cl_metrics["seq"].matrix[-1],
            "mean": result.cl_metrics["ear"].average_accuracy, "seq_mean": result.cl_metrics["seq"].average_accuracy,
            "forgetting": result.cl_metrics["ear"].forgetting, "seq_forgetting": result.cl_metrics["seq"].forgetting,
            "one_adaptor_final": result.cl_metrics["one_adaptor"].matrix[-1],
            "one_adaptor_mean": result.cl_metrics["one_adaptor"].average_accuracy,
            "one_adaptor": [[m["width"], m["depth"], m["params"]] for m in result.strategies["one_adaptor"].meta],
            "routing": routing, "experts": [[m["width"], m["depth"], m["params"]] for m in ear.meta],
            "encoder_params": ear.encoder_params or (EFFNET_PARAMS if features != "pixels" else 0),
            "events": events, "task_ends": list(src.plan.ends),
            "growth": ear.growth_log, "cpu_s_learners": cpu, "_strategy": ear, "_source": src}


# -- part 3: proxies against short training ---------------------------------------------------
def part_proxies(run: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Spearman of each proxy against short training, for every view after the first of one run."""
    import torch

    ear, src = run["_strategy"], run["_source"]
    x, y, batches = domain_rows(stream(run["dataset"], run["features"], run["seed"], args))
    held = src.held_out()
    shape = ear.input_shape

    def feats(rows: np.ndarray) -> np.ndarray:
        return ear.encoded(rows.reshape((len(rows), *shape)))

    out = []
    budget = ear.expert_budget
    widths, depths = ear.widths, ear.depths
    starts = [0, *src.plan.ends]
    for d in (1, 2, 3):
        f_train, y_train = feats(x[d]), y[d]
        first = next(b for b in batches if b.first_offset == starts[d])
        f_first, y_first = feats(first.features([src.column], dtype=np.float32)), first.numpy("label")
        f_test, y_test = feats(held[d].features([src.column], dtype=np.float32)), held[d].numpy("label")
        cands = candidates(f_train.shape[1], 10, widths, depths, budget)
        accuracy = []
        nets = [build_expert(f_train.shape[1], w, k, 10, torch_core.fit_seed(run["seed"], 7000 + i))
                for i, (w, k, _) in enumerate(cands)]
        for i, net in enumerate(nets):
            trained = _short_train(net, f_train, y_train, args.steps, run["seed"] + i)
            with torch.no_grad():
                pred = trained["heads"][0](trained["adaptor"](torch.from_numpy(f_test))).argmax(1).numpy()
            accuracy.append(float((pred == y_test).mean()))
        row: dict[str, Any] = {"dataset": run["dataset"], "features": run["features"], "seed": run["seed"],
                               "view": NAMES[d], "candidates": [list(c) for c in cands], "short_training": accuracy}
        for proxy in PROXIES:
            scores = [proxy_score(proxy, net, f_first, y_first, c[2]) for net, c in zip(nets, cands)]
            row[proxy] = spearman(scores, accuracy)
            row[f"{proxy}_pick"] = list(cands[int(np.argmax(scores))])
        row["best"] = list(cands[int(np.argmax(accuracy))])
        out.append(row)
    return out


def _short_train(net: Any, f: np.ndarray, y: np.ndarray, steps: int, seed: int) -> Any:
    import copy

    import torch

    net = copy.deepcopy(net)
    head = net["heads"][0]
    xt, yt = torch.from_numpy(np.ascontiguousarray(f)), torch.from_numpy(y.astype(np.int64))
    torch_core.train(net, lambda idx: torch.nn.functional.cross_entropy(head(net["adaptor"](xt[idx])), yt[idx]),
                     len(f), optimiser=torch_core.adam(net, 1e-2), generator=torch_core.seeded_generator(seed),
                     minibatch=32, steps=steps)
    return net


# -- the report --------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f}" + (f" ({v.std():.3f})" if len(v) > 1 else "")


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# EAR and the HDC detector", "",
             f"Written by `bench/ear.py` ({doc['protocol']['seeds_note']}); numbers are means over seeds, the "
             "standard deviation in brackets. What each part measures: the script's docstring and "
             "docs/methods/ear.md.", ""]
    lines += ["## Out-of-distribution AUROC on Fashion-MNIST (in distribution: the clean view's training rows)", "",
              "| features | method | rot90 | invert | flip+noise | classes 5-9 (near OOD) |", "|---|---|---|---|---|---|"]
    for features in doc["protocol"]["features"]:
        for method in ("hdc", "hdc_standardized", "max_softmax", "mahalanobis"):
            dom = [r for r in doc["ood"] if r["features"] == features and r["method"] == method and r["ood"] == "domain"]
            near = [r["classes"] for r in doc["ood"] if r["features"] == features and r["method"] == method
                    and r["ood"] != "domain"]
            cells = [_mean_sd([r[n] for r in dom]) for n in NAMES[1:]]
            lines.append(f"| {features} | {method} | " + " | ".join(cells) + f" | {_mean_sd(near)} |")
    lines += ["", "## EAR against sequential fine-tuning (final accuracy on each view's held-out rows)", "",
              "Two controls without growth: one adaptor of EAR's search space fine-tuned on every view in turn "
              "(the issue's control), and expert 0 as the learner has it by default (`max_experts=1`: on pixels "
              "the encoder's head; on the features the same adaptor control).", "",
              "| data | features | EAR clean | rot90 | invert | flip+noise | EAR mean | one adaptor (per view; mean) "
              "| ratio | head / expert 0 mean | ratio | routing (per view) | parameters per expert / encoder "
              "| CPU s (all three) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted({(r["dataset"], r["features"]) for r in doc["ear"]}):
        runs = [r for r in doc["ear"] if (r["dataset"], r["features"]) == key]
        final = np.mean([r["final"] for r in runs], axis=0)
        routing = [_mean_sd([r["routing"][d] for r in runs if r["routing"][d] is not None]).split(" ")[0]
                   for d in range(4)]
        ear, seq = np.mean([r["mean"] for r in runs]), np.mean([r["seq_mean"] for r in runs])
        one = np.mean([r["one_adaptor_mean"] for r in runs])
        one_final = " / ".join(f"{v:.3f}" for v in np.mean([r["one_adaptor_final"] for r in runs], axis=0))
        experts = max((max(p for _, _, p in r["experts"]) for r in runs), default=0)
        enc = runs[0]["encoder_params"]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{v:.3f}" for v in final) +
                     f" | {_mean_sd([r['mean'] for r in runs])} | {one_final}; "
                     f"{_mean_sd([r['one_adaptor_mean'] for r in runs])} | {ear / one:.2f} | "
                     f"{_mean_sd([r['seq_mean'] for r in runs])} | {ear / seq:.2f} | {' / '.join(routing)} | "
                     f"<= {experts} / {enc} ({100 * experts / max(enc, 1):.1f} %) | "
                     f"{np.mean([r['cpu_s_learners'] for r in runs]):.0f} |")
    lines += ["", "## Zero-shot proxies against short training runs (Spearman's rho over the candidates)", "",
              "| data | features | view | candidates | " + " | ".join(PROXIES) + " | best after training | "
              "ridge picks |", "|---|---|---|---|" + "---|" * len(PROXIES) + "---|---|"]
    for r in doc["proxies"]:
        lines.append(f"| {r['dataset']} (seed {r['seed']}) | {r['features']} | {r['view']} | {len(r['candidates'])} | "
                     + " | ".join(f"{r[p]:.2f}" if r[p] == r[p] else "n/a" for p in PROXIES)
                     + f" | {tuple(r['best'][:2])} | {tuple(r['ridge_pick'][:2])} |")
    means = {p: _mean_sd([r[p] for r in doc["proxies"]]) for p in PROXIES}
    lines += ["", "Mean rho over every row: " + ", ".join(f"{p} {m}" for p, m in means.items()) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--train-per-class", type=int, default=400)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--steps", type=int, default=200, help="Adam steps of each short training run")
    p.add_argument("--features", default="efficientnet-lite0,pixels")
    p.add_argument("--quick", action="store_true", help="one seed, 100 training rows per class, 50 steps")
    p.add_argument("--out", default=str(REPO / "results"))
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.features = [f for f in args.features.split(",") if f]
    if args.quick:
        args.seeds, args.train_per_class, args.test_per_class, args.steps = [0], 100, 50, 50
    torch_core.set_threads(1)
    start = time.process_time()
    doc: dict[str, Any] = {"protocol": {"domains": NAMES, "seeds": args.seeds, "train_per_class": args.train_per_class,
                                        "test_per_class": args.test_per_class, "steps": args.steps,
                                        "features": args.features, "feature_ear": {**FEATURE_EAR, "encoder": None},
                                        "seeds_note": f"seeds {', '.join(map(str, args.seeds))}; Fashion-MNIST "
                                                      f"{args.train_per_class} training and {args.test_per_class} test "
                                                      f"rows per class"},
                           "machine": machine_info()}
    doc["ood"] = part_ood(args)
    runs = [run_ear("digits", "pixels", s, args) for s in args.seeds]
    runs += [run_ear("fashion-mnist", f, s, args) for f in args.features for s in args.seeds]
    doc["proxies"] = [row for r in runs for row in part_proxies(r, args)]
    doc["ear"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    doc["cpu_s"] = time.process_time() - start
    name = "ear_quick" if args.quick else "ear"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(doc, out / f"{name}.json")
    (out / f"{name}.md").write_text(markdown(doc))
    print(markdown(doc))
    print(f"wrote {out / name}.json and .md ({doc['cpu_s']:.0f} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
