"""The parts of the EAR learner (`tideflow.strategies.ear`) that are not the learner itself:
the networks, the adaptor search space under a parameter budget, the zero-shot proxies and their
check against short training runs.

* **Networks** are built-in torch modules only (``nn.Sequential``, ``nn.Linear``,
  ``nn.ModuleList``), so a trained learner pickles by value to and from Ray actors. An expert is
  ``nn.ModuleDict(adaptor=..., heads=[...])``: the adaptor is ``depth`` layers ``Linear + ReLU``
  of one ``width`` (or nothing, for the encoder's own head), each head a ``Linear`` to every
  class (only its own classes are read).
* **Search space** (`candidates`): every (width, depth) whose adaptor and one head fit in the
  budget; `adaptor_params` counts weights and biases.
* **Zero-shot proxies** (`proxy_score`), computed on the new rows at initialisation, no
  training. The paper's own spectral proxy could not be obtained; ours are reconstructions, and
  how well each ranks the candidates against short training runs (`short_training`,
  `spearman`) is measured, not assumed (docs/methods/ear.md):

  - ``"ridge"`` (the default): the adaptor's activations ``H`` at initialisation, their singular
    value decomposition, and the leave-one-out accuracy of the ridge read-out from ``H`` to the
    one-hot labels that the decomposition gives in closed form (the hat matrix's diagonal). It
    asks how much of the label signal the candidate's random features carry in their spectrum,
    out of sample, so a wider candidate wins only when its extra directions help;
  - ``"erank"``: the effective rank of ``H`` (the exponential of the entropy of its normalised
    singular values) per log-parameter, the label-free kind of spectral proxy the spec warns
    degenerates to "widest within budget";
  - ``"params"``: the parameter count itself (what a widest-within-budget rule picks).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from tideflow.strategies import torch_core

__all__ = ["FIRST_EXPERTS", "HDC_LAYERS", "HEAD_TEMPERATURE", "PROXIES", "ROUTINGS",
           "adaptor_params", "as_tensors", "build_expert", "candidates", "check_params",
           "choose_adaptor", "encode_rows", "encoder_network", "expert_optimiser", "expert_probs",
           "input_rows", "load_expert", "new_head", "plain_meta", "proxy_score", "routed_probs",
           "short_training", "spearman", "train_on_classes", "window_sizes"]

PROXIES = ("ridge", "erank", "params")
#: how rows are routed to experts (`tideflow.strategies.ear`)
ROUTINGS = ("max", "margin")
#: what the HDC memories see: the encoder's features, or the input and the features fused (HDFF)
HDC_LAYERS = ("features", "input+features")
#: what expert 0 is when an encoder is trained on the stream: its own head, or an adaptor grown at the freeze
FIRST_EXPERTS = ("head", "adaptor")
#: softmax temperature over a row's HDC similarity to each head's classes (cosines live in [-1, 1])
HEAD_TEMPERATURE = 0.01
#: ridge strength of the ``"ridge"`` proxy, relative to the mean squared singular value
RIDGE = 1e-2


def check_params(*, n_classes: int, proxy: str, routing: str, hdc_layers: str, encoder: Any, max_params: Any,
                 budget: float, freeze_after: Any, max_experts: int, first_expert: str, epochs: int, minibatch: int,
                 validate_proxy: int, vote: float, widths: Sequence[int], depths: Sequence[int]) -> None:
    """`tideflow.strategies.ear.EAR`'s arguments, each wrong one a ValueError that says what is wanted."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    for name, value, known in (("proxy", proxy, PROXIES), ("routing", routing, ROUTINGS),
                               ("hdc_layers", hdc_layers, HDC_LAYERS), ("first_expert", first_expert, FIRST_EXPERTS)):
        if value not in known:
            raise ValueError(f"{name}={value!r}: use one of {known}")
    if encoder is None and max_params is None:
        raise ValueError("encoder=None (features from a frozen encoder upstream) has no parameter count to take a "
                         "share of: give max_params, the most parameters a new expert may have")
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget is a share of the encoder's parameters, in (0, 1]; got {budget}")
    if freeze_after is not None and freeze_after < 1:
        raise ValueError(f"freeze_after must be at least 1 (or None), got {freeze_after}")
    if max_experts < 1 or epochs < 1 or minibatch < 1 or validate_proxy < 0:
        raise ValueError("max_experts, epochs and minibatch must be at least 1, validate_proxy at least 0")
    if not 0.0 <= vote < 1.0:
        raise ValueError(f"vote must be in [0, 1), got {vote}")
    if not widths or not depths or min(widths) < 1 or min(depths) < 1:
        raise ValueError("widths and depths must be non-empty lists of numbers >= 1")


def input_rows(batch: Any, features: list[str], *, images: bool) -> np.ndarray:
    """A batch's inputs as float32: ``(n, *shape)`` images when ``images`` (an encoder factory) and
    the one feature is a tensor column of ``(H, W)`` or ``(C, H, W)`` images, else ``(n, d)``."""
    if images and len(features) == 1:
        col = batch.numpy(features[0])
        if col.ndim in (3, 4):
            x = np.array(col, dtype=np.float32)
            return x[:, None] if x.ndim == 3 else x
    return np.array(batch.features(features, dtype=np.float32))


def routed_probs(each: np.ndarray, scores: np.ndarray, soft_share: float, temperature: float) -> np.ndarray:
    """Scores ``(n, classes)`` from every expert's probabilities ``each`` ``(experts, n, classes)``
    and the rows' routing scores ``(n, experts)``: the best-scoring expert's probabilities plus
    ``soft_share`` of all experts' weighed by a softmax of the routing scores at ``temperature``."""
    routed = each[scores.argmax(axis=1), np.arange(each.shape[1])]
    weights = np.exp((scores - scores.max(axis=1, keepdims=True)) / temperature)
    soft = np.einsum("kn,knc->nc", (weights / weights.sum(axis=1, keepdims=True)).T, each)
    return routed + soft_share * soft


def encode_rows(encoder: Any, x: np.ndarray, device: Any, chunk: int) -> np.ndarray:
    """A frozen ``encoder``'s features ``(n, d)`` (float32) of inputs ``x``, ``chunk`` rows a pass,
    in eval mode and without gradients (the encoder's mode is restored)."""
    import torch

    out = []
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            f = encoder(torch.from_numpy(np.ascontiguousarray(x[s:s + chunk])).to(device))
            out.append(f.reshape(len(f), -1).cpu().numpy())
    encoder.train(was)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


def window_sizes(sizes: list[int], window: int) -> list[int]:
    """The sizes of the batches whose rows the last ``window`` rows are, oldest first (the oldest
    cut to what of it is left), given every batch's size oldest first: they sum to
    ``min(window, sum(sizes))``."""
    out, left = [], int(window)
    for n in reversed(sizes):
        if left <= 0:
            break
        out.append(min(int(n), left))
        left -= int(n)
    return [n for n in reversed(out) if n > 0]


def adaptor_params(d: int, width: int, depth: int, n_classes: int) -> int:
    """Weights and biases of an adaptor of ``depth`` layers of ``width`` on ``d`` features, plus one
    head to ``n_classes`` classes (depth 0: the head alone, on the ``d`` features)."""
    if depth == 0:
        return d * n_classes + n_classes
    first = d * width + width
    rest = (depth - 1) * (width * width + width)
    return first + rest + width * n_classes + n_classes


def candidates(d: int, n_classes: int, widths: Sequence[int], depths: Sequence[int],
               budget: int) -> list[tuple[int, int, int]]:
    """(width, depth, parameters) of every adaptor that fits in ``budget`` parameters, smallest first."""
    out = [(int(w), int(k), adaptor_params(d, int(w), int(k), n_classes)) for w in widths for k in depths]
    return sorted([c for c in out if c[2] <= budget], key=lambda c: (c[2], c[0], c[1]))


def encoder_network(n_inputs: int, widths: Sequence[int] | Callable[..., Any], input_shape: tuple[int, ...]) -> Any:
    """The encoder: an MLP of ``widths`` (ReLU after every layer, the last one included, so the
    features are its last hidden layer) on the flattened input, or ``widths(input_shape)`` when a
    factory is given (a module mapping ``(B, *input_shape)`` to ``(B, d)``)."""
    from torch import nn

    if callable(widths):
        return widths(input_shape)
    layers: list[Any] = [nn.Flatten()]
    prev = n_inputs
    for w in widths:
        layers += [nn.Linear(prev, int(w)), nn.ReLU()]
        prev = int(w)
    return nn.Sequential(*layers)


def build_expert(d: int, width: int, depth: int, n_classes: int, seed: int) -> Any:
    """An expert (module docstring) with weights drawn from ``seed``: adaptor and one head."""
    from torch import nn

    def make() -> Any:
        layers: list[Any] = []
        prev = d
        for _ in range(depth):
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        return nn.ModuleDict({"adaptor": nn.Sequential(*layers), "heads": nn.ModuleList([nn.Linear(prev, n_classes)])})

    return torch_core.build(make, seed)


def expert_optimiser(expert: Any, lr: float) -> Any:
    """Adam over what ``expert`` trains: adaptor and head while it has one head, else the newest
    head only (the adaptor and older heads are frozen, so a reconfigurator leaves earlier classes'
    outputs exactly as they were)."""
    import torch

    single = len(expert["heads"]) == 1
    for name, p in expert.named_parameters():
        p.requires_grad_(single or name.startswith(f"heads.{len(expert['heads']) - 1}."))
    params = list(expert.parameters()) if single else list(expert["heads"][-1].parameters())
    return torch.optim.Adam(params, lr=lr)


def new_head(expert: Any, n_classes: int, seed: int) -> Any:
    """A head for ``expert``'s adaptor (a reconfigurator), weights drawn from ``seed``."""
    from torch import nn

    width = expert["heads"][0].in_features
    return torch_core.build(lambda: nn.Linear(width, n_classes), seed)


def train_on_classes(module: Any, forward: Callable[[Any], Any], x: np.ndarray, y: np.ndarray, classes: list[int],
                     n_classes: int, *, optimiser: Any, generator: Any, minibatch: int, epochs: int,
                     device: Any) -> int:
    """``epochs`` passes of cross-entropy over the logits of ``classes`` only (labels ``y`` among
    them; the other outputs of a head are neither trained nor pushed down); ``forward`` maps a
    minibatch of ``x`` to logits over every class, ``module`` is what trains. Returns the rows
    that went through a step."""
    import torch

    cls = torch.tensor(classes, dtype=torch.long, device=device)
    index = torch.full((n_classes,), -1, dtype=torch.long, device=device)
    index[cls] = torch.arange(len(classes), device=device)
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    yt = index[torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)]

    def loss(idx: Any) -> Any:
        idx = idx.to(device)
        return torch.nn.functional.cross_entropy(forward(xt[idx])[:, cls], yt[idx])

    return torch_core.train(module, loss, len(xt), optimiser=optimiser, generator=generator, minibatch=minibatch,
                            epochs=epochs)


def expert_probs(expert: Any, heads: list[dict[str, Any]], memory: Any, f: np.ndarray, h: np.ndarray | None,
                 n_classes: int, device: Any) -> np.ndarray:
    """Probabilities over all ``n_classes`` of rows with features ``f`` and hypervectors ``h`` in
    ``expert``: each head's softmax over its classes, weighed by a softmax (at
    `HEAD_TEMPERATURE`) over the heads of each row's best HDC similarity to their classes'
    prototypes in the expert's ``memory`` (one head: weight 1)."""
    import torch

    with torch.no_grad():
        z = expert["adaptor"](torch.from_numpy(np.ascontiguousarray(f)).to(device))
        parts = []
        for j, head in enumerate(heads):
            logits = expert["heads"][j](z)[:, head["classes"]] if head["classes"] else None
            parts.append(None if logits is None else torch.softmax(logits, dim=1).double().cpu().numpy())
    probs = np.zeros((len(f), n_classes))
    live = [j for j, p in enumerate(parts) if p is not None]
    if not live:
        return probs
    if len(live) == 1:
        weights = np.ones((len(f), 1))
    else:
        sims = memory.similarities(h) if memory.classes else np.zeros((len(h), 0))
        index = {c: i for i, c in enumerate(memory.classes)}
        best = np.stack([np.max(sims[:, [index[c] for c in heads[j]["classes"] if c in index]], axis=1)
                         if any(c in index for c in heads[j]["classes"]) else np.full(len(h), -1.0)
                         for j in live], axis=1)
        weights = np.exp((best - best.max(axis=1, keepdims=True)) / HEAD_TEMPERATURE)
        weights /= weights.sum(axis=1, keepdims=True)
    for col, j in enumerate(live):
        probs[:, heads[j]["classes"]] += weights[:, [col]] * parts[j]
    return probs


# -- snapshots -------------------------------------------------------------------------------
def as_tensors(obj: Any) -> Any:
    """``obj`` with every numpy array (in dicts and lists) replaced by a CPU tensor copy."""
    if isinstance(obj, np.ndarray):
        import torch

        return torch.from_numpy(np.array(obj))
    if isinstance(obj, dict):
        return {k: as_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_tensors(v) for v in obj]
    return obj


def plain_meta(meta: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of an expert list's description (width, depth, parameters, heads) sharing nothing."""
    return [{"width": int(m["width"]), "depth": int(m["depth"]), "params": int(m["params"]),
             "heads": [{"classes": [int(c) for c in h["classes"]], "open": bool(h["open"])} for h in m["heads"]]}
            for m in meta]


def load_expert(meta: dict[str, Any], part: dict[str, Any], d: int, n_classes: int,
                device: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    """An expert rebuilt from its description ``meta`` and its snapshot ``part`` (weights, HDC memory,
    training rows): the network on ``device``, the memory, the rows' features and labels."""
    from tideflow.stream.hdc import HDCMemory, stored_array

    expert = build_expert(d, meta["width"], meta["depth"], n_classes, 0)
    for _ in meta["heads"][1:]:
        expert["heads"].append(new_head(expert, n_classes, 0))
    expert = torch_core.load_module_state(expert, part["net"]).to(device)
    return (expert, HDCMemory.from_state(part["memory"]),
            stored_array(part["train_f"], np.float32).reshape(-1, d), stored_array(part["train_y"], np.int64))


# -- growth ----------------------------------------------------------------------------------
def choose_adaptor(f: np.ndarray, y: np.ndarray, *, n_classes: int, widths: Sequence[int], depths: Sequence[int],
                   budget: int, proxy: str, seed: Callable[[int], int], validate_steps: int = 0,
                   validate_seed: int = 0) -> tuple[Any, tuple[int, int, int], dict[str, Any], float]:
    """Build every candidate of the search space that fits ``budget`` (candidate i's weights from
    ``seed(i)``), score each untrained on rows ``f``, ``y`` with ``proxy``, and return the best
    network (ties: fewer parameters, then the earlier candidate), its (width, depth, parameters),
    the record of the choice and the flops of the candidates' forward passes. With
    ``validate_steps``, each candidate also gets a `short_training` and the record the Spearman
    correlation of the proxy's scores with those accuracies."""
    cands = candidates(f.shape[1], n_classes, widths, depths, budget)
    if not cands:
        raise ValueError(f"no adaptor of widths {list(widths)} and depths {list(depths)} fits in {budget} parameters")
    nets = [build_expert(f.shape[1], w, k, n_classes, seed(i)) for i, (w, k, _) in enumerate(cands)]
    scores = [proxy_score(proxy, net, f, y, p) for net, (_, _, p) in zip(nets, cands)]
    best = max(range(len(cands)), key=lambda i: (scores[i], -cands[i][2], -i))
    record: dict[str, Any] = {"rows": int(len(f)), "proxy": proxy, "chosen": list(cands[best]),
                              "candidates": [[w, k, p, float(s)] for (w, k, p), s in zip(cands, scores)]}
    if validate_steps:
        accuracy = [short_training(net, f, y, steps=validate_steps, seed=validate_seed) for net in nets]
        record["short_training"] = accuracy
        record["spearman"] = spearman(scores, accuracy)
    flops = sum(2.0 * p * len(f) for _, _, p in cands)
    return nets[best], cands[best], record, flops


# -- zero-shot proxies -------------------------------------------------------------------------
def _activations(expert: Any, f: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return expert["adaptor"](torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))).double().numpy()


def proxy_score(name: str, expert: Any, f: np.ndarray, y: np.ndarray, n_params: int) -> float:
    """The zero-shot proxy ``name`` (one of `PROXIES`, module docstring) of an untrained ``expert``
    on features ``f`` ``(n, d)`` with labels ``y``; higher is better."""
    if name == "params":
        return float(n_params)
    h = _activations(expert, f)
    h = h - h.mean(axis=0)
    s = np.linalg.svd(h, compute_uv=False) if name == "erank" else None
    if name == "erank":
        assert s is not None
        p = s / s.sum() if s.sum() > 0 else np.ones_like(s) / len(s)
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()) / np.log(n_params))
    if name != "ridge":
        raise ValueError(f"unknown proxy {name!r}; known: {PROXIES}")
    classes, yi = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2 or len(h) < 3:
        return 0.0
    onehot = np.eye(len(classes))[yi]
    onehot = onehot - onehot.mean(axis=0)
    u, s, _ = np.linalg.svd(h, full_matrices=False)
    if not (s > 0).any():
        return 0.0
    lam = RIDGE * float((s ** 2).mean())
    shrink = s ** 2 / (s ** 2 + lam)
    fitted = u @ (shrink[:, None] * (u.T @ onehot))
    leverage = (u ** 2 * shrink).sum(axis=1)
    loo = onehot - (onehot - fitted) / np.maximum(1.0 - leverage, 1e-6)[:, None]
    return float((loo.argmax(axis=1) == yi).mean())


def short_training(expert: Any, f: np.ndarray, y: np.ndarray, *, steps: int, seed: int, lr: float = 1e-2,
                   minibatch: int = 32, holdout: float = 0.5) -> float:
    """Accuracy on a held-out share of the rows after ``steps`` Adam steps on the rest (a copy of
    ``expert`` is trained; the rows are split by a generator of ``seed``): what a proxy's ranking is
    checked against."""
    import copy

    import torch

    rng = np.random.default_rng([int(seed), 0x5354])
    order = rng.permutation(len(f))
    cut = max(1, int(round(len(f) * (1.0 - holdout))))
    tr, te = order[:cut], order[cut:]
    if not len(te):
        raise ValueError("short_training needs rows to hold out")
    net = copy.deepcopy(expert)
    head = net["heads"][0]
    x = torch.from_numpy(np.ascontiguousarray(f[tr], dtype=np.float32))
    t = torch.from_numpy(np.asarray(y)[tr].astype(np.int64))
    opt = torch_core.adam(net, lr)
    generator = torch_core.seeded_generator(seed)

    def loss(idx: Any) -> Any:
        return torch.nn.functional.cross_entropy(head(net["adaptor"](x[idx])), t[idx])

    torch_core.train(net, loss, len(tr), optimiser=opt, generator=generator, minibatch=minibatch, steps=steps)
    with torch.no_grad():
        pred = head(net["adaptor"](torch.from_numpy(np.ascontiguousarray(f[te], dtype=np.float32)))).argmax(1)
    return float((pred.numpy() == np.asarray(y)[te]).mean())


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties get their mean rank); NaN
    when either is constant or shorter than 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"sequences of {len(a)} and {len(b)} values")
    if len(a) < 2:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = v.argsort(kind="mergesort")
        r = np.empty(len(v))
        _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
        r[order] = np.repeat(first + (counts - 1) / 2.0, counts)
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
