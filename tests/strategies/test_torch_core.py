"""The torch training core: seeding, the seeded loop, state round trips, threads, devices.

The forecasters' bit-identity rests on these: a fit draws its weights and its
minibatch order from its own seed without touching the global generators, the loop
does the same arithmetic in the same order every time, and a snapshot of a module,
its optimiser and its generator continues exactly where the original would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from tideflow.stream.checks import assert_plain
from tideflow.strategies import torch_core
from tideflow.strategies.series import SeriesState, forward_fill, last_known, persistence

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))


def data(n: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(n, 5, generator=g), torch.randint(3, (n,), generator=g)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda idx: nn.functional.cross_entropy(model(x[idx]), y[idx])


# -- seeds ---------------------------------------------------------------------------------------


def test_build_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    a, b, c = torch_core.build(net, 7), torch_core.build(net, 7), torch_core.build(net, 8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert same(weights(a), weights(b)) and not same(weights(a), weights(c))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        assert same(weights(net()), weights(a))  # the same as seeding the global generator


def test_fit_seeds_follow_the_stride_and_the_series_fit_count():
    s = SeriesState()
    assert s.fit_seed(3) == torch_core.fit_seed(3, 0) == 3 * torch_core.SEED_STRIDE
    s.fits = 2
    assert s.fit_seed(3) == 3 * 1_000_003 + 2


def test_minibatches_cover_each_epoch_or_draw_fixed_steps():
    order = list(torch_core.minibatches(10, 4, torch_core.seeded_generator(5), epochs=2))
    assert [len(i) for i in order] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(order[:3]).tolist()) == list(range(10))
    again = list(torch_core.minibatches(10, 4, torch_core.seeded_generator(5), epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(order, again))
    steps = list(torch_core.minibatches(3, 4, torch_core.seeded_generator(5), steps=4))
    assert [len(i) for i in steps] == [3] * 4 and all(int(i.max()) < 3 for i in steps)
    with pytest.raises(ValueError, match="exactly one"):
        next(torch_core.minibatches(10, 4, torch_core.seeded_generator(5)))


# -- the loop --------------------------------------------------------------------------------------


def test_train_is_the_plain_seeded_adam_loop_and_repeats_bit_identically():
    x, y = data()

    def by_core(seed: int) -> nn.Module:
        model = torch_core.build(net, seed)
        done = torch_core.train(model, cross_entropy(model, x, y), len(x), optimiser=torch_core.adam(model, 1e-2),
                                generator=torch_core.seeded_generator(seed), minibatch=8, epochs=3,
                                dropout_seed=seed + 1)
        assert done == 3 * len(x) and not model.training
        return model

    def by_hand(seed: int) -> nn.Module:  # the loop the forecasters had before the core
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = net()
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            for _ in range(3):
                for idx in torch.randperm(len(x), generator=g).split(8):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
        return model

    before = torch.random.get_rng_state()
    a, b = by_core(4), by_core(4)
    assert torch.equal(torch.random.get_rng_state(), before)  # dropout drew from a fork
    assert same(weights(a), weights(b)) and same(weights(a), weights(by_hand(4)))


def test_train_steps_and_after_step_hook():
    x, y = data()
    model = torch_core.build(net, 0)
    calls = []
    done = torch_core.train(model, cross_entropy(model, x, y), len(x), optimiser=torch_core.adam(model, 1e-2),
                            generator=torch_core.seeded_generator(0), minibatch=64, steps=3,
                            after_step=lambda: calls.append(1), dropout_seed=1)
    assert done == 3 * len(x) and len(calls) == 3  # min(minibatch, n) indices per step


# -- state -------------------------------------------------------------------------------------------


def test_module_optimiser_and_generator_state_resume_bit_identically():
    x, y = data()

    def steps(model, opt, g, n):
        torch_core.train(model, cross_entropy(model, x, y), len(x), optimiser=opt, generator=g, minibatch=8,
                         steps=n, dropout_seed=int(torch.randint(1000, (1,), generator=g)))

    a = torch_core.build(net, 3)
    opt_a, g_a = torch_core.adam(a, 1e-2), torch_core.seeded_generator(3)
    steps(a, opt_a, g_a, 4)
    state = {"model": torch_core.module_state(a), "optimiser": torch_core.optimiser_state(opt_a),
             "generator": torch_core.generator_state(g_a)}
    assert_plain(state)
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert state["optimiser"]["state"], "Adam's moments are part of the state"
    steps(a, opt_a, g_a, 5)
    for _ in range(2):  # a snapshot restores twice: loading it does not change it
        b = torch_core.load_module_state(torch_core.build(net, 11), state["model"])
        opt_b = torch_core.adam(b, 1e-2)
        torch_core.load_optimiser_state(opt_b, state["optimiser"])
        g_b = torch_core.load_generator_state(state["generator"])
        steps(b, opt_b, g_b, 5)
        assert same(weights(a), weights(b))
        assert same(torch_core.optimiser_state(opt_a)["state"][0], torch_core.optimiser_state(opt_b)["state"][0])


def test_a_fresh_optimiser_does_not_resume():
    # the reason the optimiser belongs in the snapshot of a strategy that keeps it
    x, y = data()
    a = torch_core.build(net, 3)
    opt = torch_core.adam(a, 1e-2)
    loss = cross_entropy(a, x, y)
    torch_core.train(a, loss, len(x), optimiser=opt, generator=torch_core.seeded_generator(0), minibatch=8, epochs=1)
    b = torch_core.load_module_state(torch_core.build(net, 4), torch_core.module_state(a))
    torch_core.train(a, loss, len(x), optimiser=opt, generator=torch_core.seeded_generator(1), minibatch=8, epochs=1)
    torch_core.train(b, cross_entropy(b, x, y), len(x), optimiser=torch_core.adam(b, 1e-2),
                     generator=torch_core.seeded_generator(1), minibatch=8, epochs=1)
    assert not same(weights(a), weights(b))


# -- threads and devices ------------------------------------------------------------------------------


def test_set_threads_without_import_torch_never_imports_it():
    code = textwrap.dedent("""
        import os, sys
        import tideflow.strategies.forecasting, tideflow.strategies.liquid, tideflow.strategies.nowcast
        from tideflow.strategies.torch_core import set_threads
        assert "torch" not in sys.modules, "importing the strategies imported torch"
        set_threads(1, import_torch=False)
        assert "torch" not in sys.modules, "set_threads(import_torch=False) imported torch"
        assert os.environ["OMP_NUM_THREADS"] == "1"
        import torch
        assert torch.get_num_threads() == 1, torch.get_num_threads()  # a later torch starts with it
        set_threads(2, import_torch=False)  # torch imported now: applied to it as well
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        print("ok")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_set_threads_applies_to_an_imported_torch():
    before = torch.get_num_threads()
    try:
        torch_core.set_threads(2)
        assert torch.get_num_threads() == 2
        torch_core.set_threads(None)  # None leaves it alone
        assert torch.get_num_threads() == 2
        assert torch_core.use_torch(1) is torch and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="at least 1"):
        torch_core.set_threads(0)


def test_openmp_threads_limits_inside_the_block_only():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with torch_core.openmp_threads(1):
        limits = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"]
        assert all(n == 1 for n in limits)
    with torch_core.openmp_threads(None):
        pass


def test_choose_device():
    assert torch_core.choose_device("cpu") == torch.device("cpu")
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_core.choose_device().type == expect
    assert torch_core.choose_device("auto").type == expect
    assert torch_core.choose_device("cuda").type == expect  # falls back to the CPU


@CUDA
def test_cuda_training_is_seeded_and_resumes():
    device = torch_core.choose_device("cuda")
    x, y = (t.to(device) for t in data())
    cuda_before = torch.cuda.get_rng_state(device)
    cpu_before = torch.random.get_rng_state()

    def fit(seed: int) -> nn.Module:
        model = torch_core.build(net, seed).to(device)
        torch_core.train(model, cross_entropy(model, x, y), len(x), optimiser=torch_core.adam(model, 1e-2),
                         generator=torch_core.seeded_generator(seed), minibatch=8, epochs=2, dropout_seed=seed)
        return model

    a, b = fit(5), fit(5)
    assert same(weights(a), weights(b))
    assert torch.equal(torch.cuda.get_rng_state(device), cuda_before)
    assert torch.equal(torch.random.get_rng_state(), cpu_before)
    opt = torch_core.adam(a, 1e-2)
    torch_core.train(a, cross_entropy(a, x, y), len(x), optimiser=opt, generator=torch_core.seeded_generator(1),
                     minibatch=8, steps=2)
    state = torch_core.optimiser_state(opt)
    assert all(t.device.type == "cpu" for s in state["state"].values() for t in s.values())
    restored = torch_core.adam(b, 1e-2)
    torch_core.load_optimiser_state(restored, state)
    assert restored.state_dict()["state"][0]["exp_avg"].device == device


# -- the series helpers ----------------------------------------------------------------------------


def test_forward_fill_and_last_known():
    v = np.array([np.nan, 1.0, np.inf, np.nan, 3.0])
    assert np.array_equal(forward_fill(v), [np.nan, 1.0, np.inf, np.inf, 3.0], equal_nan=True)
    assert forward_fill(v, before=0.0, finite=True).tolist() == [0.0, 1.0, 1.0, 1.0, 3.0]
    clean = np.array([1.0, 2.0])
    assert forward_fill(clean) is clean
    assert last_known(np.array([1.0, np.inf])) == np.inf
    assert last_known(np.array([1.0, np.inf]), finite=True) == 1.0
    assert last_known(np.array([np.nan])) is None


def test_persistence_repeats_the_last_value_for_every_step():
    assert persistence(np.array([1.0, 2.0]), 2).tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert persistence(np.array([4.0]), 3)[0].tolist() == [4.0, 4.0, 4.0]
