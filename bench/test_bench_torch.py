"""fastopt.torch vs torch.optim on a torch model (issue 14): the optimizer step alone and the
whole training iteration (zero_grad, forward, backward, step) of the torch MLP
784-100-100-100-100-10 at batch 128 (also with its first layer frozen: ``requires_grad=False``,
every parameter given to the optimizer, as in fine-tuning; and frozen after a first step,
``mlp-frozen-late``, where the layer keeps its state), and the step of a 1e7-parameter
model (one Linear layer 1000 -> 10000: 10,010,000 parameters in 2 tensors), Adam in every
torch mode and DeepSpeed's CPU Adam when ``deepspeed`` is installed (it compiles its C++
extension on first use: ~100 s here; not installed by CI), same thread count. Each case first
checks that the optimizer takes the same first step as torch's for-loop Adam.

``-bf16``: the MLP and the 1e7 model in bfloat16, fastopt with ``master_weights=True``
against torch's modes on the bfloat16 parameters and ``masters`` (torch's fused Adam on
float32 masters kept by hand, ``fastopt.benchmarks.TorchMasters``), whose first step is the
reference there (to a bfloat16 step: torch's modes without masters round their arithmetic to
bfloat16).
"""
import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from fastopt import _threads, benchmarks as B  # noqa: E402

MODES = list(B.TORCH_MODES)


def _model(size):
    return B._torch_model(size)


def _optimizer(mode, model):
    try:
        return B._torch_optimizer(mode, model)
    except B.Unavailable as e:
        pytest.skip(str(e))


def _first_step(mode, size):
    model, loss = _model(size)
    opt = _optimizer(mode, model)
    opt.zero_grad()
    loss().backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("what", ["step", "iteration"])
@pytest.mark.parametrize("size", [pytest.param(s, marks=pytest.mark.slow)
                                  if s.startswith("1e7") else s for s in B.TORCH_SIZES])
@pytest.mark.parametrize("mode", MODES)
def test_torch_model(benchmark, mode, size, what):
    if size.startswith("1e7") and what == "iteration":
        pytest.skip("1e7: the step alone (the iteration is a matmul benchmark)")
    low = size.endswith("-bf16")
    if mode == "masters" and not low:
        pytest.skip("masters: for a bfloat16 model")
    _threads.ensure_pool()
    torch.set_num_threads(numba.get_num_threads())
    ours, theirs = _first_step(mode, size), _first_step("masters" if low else "forloop", size)
    tol = dict(rtol=1e-2, atol=3e-5) if low else dict(rtol=1e-5, atol=1e-7)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.float().numpy(), b.float().numpy(), **tol)
    model, loss = _model(size)
    opt = _optimizer(mode, model)
    B._torch_ready(size, model, opt, loss)

    def iteration():
        opt.zero_grad()
        loss().backward()
        opt.step()
    benchmark.group = f"torch-adam|{size}|{what}"
    benchmark.name = mode
    benchmark(opt.step if what == "step" else iteration)
