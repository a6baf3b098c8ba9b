"""The torch training core every torch strategy uses: threads, seeds, the seeded loop, state.

The link-load forecasters (`tideflow.strategies.window_forecaster`, after arXiv
2404.05304), the liquid forecaster (`tideflow.strategies.liquid`) and the neural
nowcasters (`tideflow.strategies.nowcast`, after arXiv 2309.15207) train through the
functions here, and so will the image classifiers (minibatches of feature vectors or
images, cross-entropy, possibly on CUDA). What they share, and the invariant each
part keeps:

* **No torch at import.** This module, like every strategies module, imports torch
  inside functions only: the pipeline driver imports the strategies and must not
  pay for torch's memory when no torch strategy runs.
* **Threads** (`set_threads`, `use_torch`, `openmp_threads`). ``torch.set_num_threads``
  is process-wide; a strategy applies its ``torch_threads`` (default 1) the first
  time it touches torch. One thread per worker keeps workers that share cores from
  oversubscribing them (the benchmarks in ``bench/`` run one thread per process for
  the same reason).
* **Seeds** (`SEED_STRIDE`, `fit_seed`, `seeded`, `build`, `seeded_generator`). Fit
  number k of an instance seeded s uses ``s * SEED_STRIDE + k`` (the stride exceeds
  any fit count, so instances with different seeds never share a fit's seed; the
  value is part of every stored result and must not change). Initial weights are drawn
  inside `seeded`: the global generators are forked, so they are neither read nor
  moved, and a strategy's results do not depend on what else ran in the process.
  Minibatch order comes from a `torch.Generator` of its own.
* **The loop** (`minibatches`, `train`, `adam`). Either ``epochs`` passes over a
  fresh ``torch.randperm(n, generator=g)`` cut into minibatches, or ``steps``
  minibatches of ``torch.randint`` indices; each step is ``zero_grad``, the
  caller's loss on the minibatch's indices, ``backward``, ``step`` and an optional
  after-step hook (LTC weight clipping). The loss callback receives indices, so
  sample weights, masks and models that return more than one output stay with the
  caller. Random layers (dropout) can draw from a seeded fork of the global
  generator (``dropout_seed``). The order of generator draws and of floating-point
  operations is fixed, so the same seed gives bit-identical weights on a CPU.
* **State** (`module_state`, `optimiser_state`, `generator_state` and their loaders).
  Snapshots hold plain CPU tensors (state dicts), never modules, so a checkpoint
  is plain data and restores on any device; an optimiser's moments and a
  generator's position can be kept across batches and restored exactly.
* **Device** (`choose_device`): CUDA when asked for and present, else the CPU.
  Weights are drawn on the CPU and moved, so a seed gives the same initial weights
  on every device.

>>> import torch
>>> before = torch.random.get_rng_state()
>>> net = build(lambda: torch.nn.Linear(3, 1), seed=7)
>>> bool((torch.random.get_rng_state() == before).all())  # the global generator did not move
True
>>> x, y = torch.ones(10, 3), torch.zeros(10)
>>> train(net, lambda idx: ((net(x[idx]).squeeze(-1) - y[idx]) ** 2).mean(), 10,
...       optimiser=adam(net, 1e-2), generator=seeded_generator(7), minibatch=4, epochs=2)
20
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch
    from types import ModuleType

__all__ = [
    "SEED_STRIDE",
    "adam",
    "build",
    "choose_device",
    "fit_seed",
    "generator_state",
    "load_generator_state",
    "load_module_state",
    "load_optimiser_state",
    "minibatches",
    "module_state",
    "openmp_threads",
    "optimiser_state",
    "plain_tensor",
    "seeded",
    "seeded_generator",
    "set_threads",
    "train",
    "use_torch",
]

#: a prime: fit k of seed s uses s * SEED_STRIDE + k, so neighbouring seeds share no fit
SEED_STRIDE = 1_000_003

M = TypeVar("M")


# -- threads ---------------------------------------------------------------------------------
def set_threads(n: int | None, *, import_torch: bool = True) -> None:
    """Use ``n`` intra-op threads in torch (process-wide); None leaves everything alone.

    ``import_torch=True`` imports torch and applies ``torch.set_num_threads(n)``
    (only when it differs, a cheap check). ``import_torch=False`` is for a process
    that may never use torch (a Ray worker): it sets ``OMP_NUM_THREADS`` so that a
    torch imported later starts with ``n`` threads, and calls
    ``torch.set_num_threads(n)`` only if torch is already imported; torch is never
    imported by this call.
    """
    if n is None:
        return
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    if import_torch:
        import torch
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
        torch = sys.modules.get("torch")  # type: ignore[assignment]
        if torch is None:
            return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def use_torch(threads: int | None) -> ModuleType:
    """torch, with `set_threads` applied (what a strategy calls before touching a model)."""
    import torch

    set_threads(threads)
    return torch


@contextmanager
def openmp_threads(n: int | None) -> Iterator[None]:
    """At most ``n`` OpenMP threads (scikit-learn's trees) inside the block; None: no limit.

    The counterpart of `set_threads` for libraries that thread through OpenMP
    rather than torch; a no-op where ``threadpoolctl`` is missing.
    """
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        yield
        return
    ctl = threadpool_limits(limits=n, user_api="openmp")
    try:
        yield
    finally:
        ctl.restore_original_limits()


# -- devices ---------------------------------------------------------------------------------
def choose_device(requested: str | None = None) -> torch.device:
    """Where to train: CUDA when asked for and present, else the CPU.

    ``None`` and ``"auto"`` ask for the default CUDA device, ``"cuda:i"`` for device
    i, ``"cpu"`` for the CPU. A CUDA request on a machine without CUDA falls back to
    the CPU rather than failing, so a configuration runs anywhere.
    """
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def _cuda_index(device: Any) -> int | None:
    """Index of a CUDA ``device`` (None for any other device, or None itself)."""
    if device is None:
        return None
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


# -- seeds -----------------------------------------------------------------------------------
def fit_seed(seed: int, fits: int) -> int:
    """Seed of fit number ``fits`` (0 for the first) of an instance seeded ``seed``."""
    return seed * SEED_STRIDE + fits


@contextmanager
def seeded(seed: int, device: Any = None) -> Iterator[None]:
    """Inside the block the global CPU generator (and, for a CUDA ``device``, that
    device's) starts from ``seed``; on leaving, they are back where they were.

    Generators of other devices are neither read nor reseeded, so code running
    beside this (another strategy on a GPU) is not disturbed: that is why the CPU
    generator is seeded directly rather than with ``torch.manual_seed``, which would
    also reseed every CUDA device (or queue that until CUDA starts) outside the fork.
    """
    import torch

    cuda = _cuda_index(device)
    with torch.random.fork_rng(devices=[] if cuda is None else [cuda]):
        torch.random.default_generator.manual_seed(seed)
        if cuda is not None:
            torch.cuda.default_generators[cuda].manual_seed(seed)
        yield


def build(factory: Callable[[], M], seed: int) -> M:
    """``factory()`` (a module) with its initial weights drawn from ``seed`` (`seeded`).

    Build on the CPU and move the module afterwards: the weights are then the same
    on every device.
    """
    with seeded(seed):
        return factory()


def seeded_generator(seed: int, device: Any = None) -> torch.Generator:
    """A generator of its own (minibatch order), seeded ``seed``, on ``device`` (default CPU)."""
    import torch

    generator = torch.Generator() if device is None else torch.Generator(device=device)
    return generator.manual_seed(seed)


# -- the training loop -----------------------------------------------------------------------
def adam(model: Any, lr: float) -> torch.optim.Adam:
    """A fresh Adam optimiser over every parameter of ``model``."""
    import torch

    return torch.optim.Adam(model.parameters(), lr=lr)


def minibatches(n: int, size: int, generator: torch.Generator, *, epochs: int | None = None,
                steps: int | None = None) -> Iterator[torch.Tensor]:
    """Index tensors of the minibatches, drawn from ``generator`` as they are consumed.

    ``epochs``: that many passes, each a ``torch.randperm(n)`` split into runs of
    ``size`` (the last one shorter). ``steps``: that many draws of
    ``torch.randint(n, (min(size, n),))`` (with replacement). Exactly one of the two.
    Indices are on the generator's device.
    """
    import torch

    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    on = {} if generator.device.type == "cpu" else {"device": generator.device}
    if epochs is not None:
        for _ in range(epochs):
            yield from torch.randperm(n, generator=generator, **on).split(size)
    else:
        assert steps is not None
        for _ in range(steps):
            yield torch.randint(n, (min(size, n),), generator=generator, **on)


def train(model: Any, loss: Callable[[torch.Tensor], torch.Tensor], n: int, *,
          optimiser: torch.optim.Optimizer, generator: torch.Generator, minibatch: int,
          epochs: int | None = None, steps: int | None = None,
          after_step: Callable[[], None] | None = None, dropout_seed: int | None = None) -> int:
    """Train ``model`` on ``n`` examples; returns the examples that went through a step.

    Each minibatch of `minibatches` is one step: ``optimiser.zero_grad()``,
    ``loss(indices).backward()``, ``optimiser.step()``, then ``after_step()``.
    ``loss`` maps a minibatch's indices to a scalar loss; the caller indexes its
    own inputs, targets, masks and weights with them. The model is in train mode
    during the loop and in eval mode after it. ``dropout_seed``: the loop runs
    inside `seeded` with that seed (on the model's device), so random layers draw
    reproducibly without moving the global generators; None: no fork (for models
    without random layers). The optimiser and the generator are the caller's, so
    either can be fresh for every fit or kept (and snapshotted) across batches.
    """
    examples = 0
    model.train()
    fork = nullcontext() if dropout_seed is None else seeded(dropout_seed, _device_of(model))
    with fork:
        for idx in minibatches(n, minibatch, generator, epochs=epochs, steps=steps):
            optimiser.zero_grad()
            loss(idx).backward()
            optimiser.step()
            if after_step is not None:
                after_step()
            examples += len(idx)
    model.eval()
    return examples


def _device_of(model: Any) -> Any:
    for p in model.parameters():
        return p.device
    return None


# -- state -----------------------------------------------------------------------------------
def plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy of ``t`` (what a snapshot holds)."""
    return t.detach().cpu().clone()


def module_state(module: Any) -> dict[str, torch.Tensor]:
    """The module's state dict as plain CPU tensors (parameters and buffers)."""
    return {k: plain_tensor(v) for k, v in module.state_dict().items()}


def load_module_state(module: M, state: dict[str, Any]) -> M:
    """Load `module_state` output into ``module`` (copied onto its device); returns the module."""
    module.load_state_dict(state)  # type: ignore[attr-defined]
    return module


def _plain(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return plain_tensor(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def optimiser_state(optimiser: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's state dict (moments, step counts, hyper-parameters) as plain data.

    Tensors become CPU copies; the rest (ints, floats, tuples, None) is already plain.
    """
    return _plain(optimiser.state_dict())


def load_optimiser_state(optimiser: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load `optimiser_state` output into an optimiser built over the same parameters.

    torch moves the moments onto the parameters' device; the state passed in is not
    modified (a snapshot can be restored twice).
    """
    optimiser.load_state_dict(_plain(state))


def generator_state(generator: torch.Generator) -> torch.Tensor:
    """Where ``generator`` is in its stream, as a CPU byte tensor."""
    return plain_tensor(generator.get_state())


def load_generator_state(state: torch.Tensor, device: Any = None) -> torch.Generator:
    """A generator (on ``device``, default CPU) that resumes where `generator_state` left off."""
    import torch

    generator = torch.Generator() if device is None else torch.Generator(device=device)
    generator.set_state(state.cpu())
    return generator
