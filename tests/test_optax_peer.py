"""The optax peer of the benchmarks (``fastopt.benchmarks``, implementation ``"optax"``):
which optimizers it maps and why the others are not, and, where optax is installed (it is
optional: ``pip install ".[optax]"``; CI does not install it), that each mapped
transformation computes fastopt's formula (the benchmarks' tolerance)."""
import sys

import numpy as np
import pytest

from fastopt import benchmarks as B
from fastopt import registry, testinfo

SPECS = list(registry.REGISTRY.values())


def _mapping(spec):
    peer = testinfo.info(spec).optax
    return None if peer is None else peer(B.Workload(spec, 1000, np.float32).hp)


MAPPED = [s for s in SPECS if isinstance(_mapping(s), tuple)]
UNMAPPED = [s for s in SPECS if not isinstance(_mapping(s), tuple)]


def test_the_optimizers_optax_has_are_mapped():
    names = {s.name for s in MAPPED}
    assert {"adam", "rmsprop", "momentum", "sgd", "adadelta", "adamax", "lion",
            "radam"} <= names, names


@pytest.mark.parametrize("spec", UNMAPPED, ids=lambda s: s.name)
def test_an_optimizer_optax_computes_otherwise_says_why(spec):
    with pytest.raises(B.Unavailable) as e:
        B.make_runner("optax", B.Workload(spec, 1000, np.float32))
    assert str(e.value) == (_mapping(spec) or f"optax has no {spec.name} here")


def test_options_outside_the_mapping_say_so():
    spec = registry.get("adam")
    w = B.Workload(spec, 1000, np.float32)
    w.hp = spec.validate(dict(w.kwargs, amsgrad=True, maximize=True))
    with pytest.raises(B.Unavailable, match="no optax mapping here with amsgrad, maximize"):
        B.make_runner("optax", w)
    w.hp = spec.validate(dict(w.kwargs, weight_decay=0.01))        # L2: not mapped
    with pytest.raises(B.Unavailable, match="weight_decay"):
        B.make_runner("optax", w)


def test_without_optax_the_runner_says_it_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "optax", None)         # import optax raises ImportError
    with pytest.raises(B.Unavailable, match="optax is not installed"):
        B.make_runner("optax", B.Workload(registry.get("adam"), 1000, np.float32))


@pytest.mark.parametrize("n", [1000, B.MLP_SIZE])
@pytest.mark.parametrize("spec", MAPPED, ids=lambda s: s.name)
def test_the_optax_peer_computes_fastopts_formula(spec, n):
    pytest.importorskip("optax")
    runner = B.make_runner("optax", B.Workload(spec, n, np.float32))
    B.check_runner(runner, steps=5)
    assert not np.array_equal(runner.params(), runner.w.param0)        # it moved


OPTION_CASES = [("adam", dict(decoupled_weight_decay=True, weight_decay=0.01)),
                ("sgd", dict(momentum=0.9)),
                ("sgd", dict(momentum=0.9, nesterov=True)),
                ("lion", dict(weight_decay=0.1, lr=0.01))]     # lr: a decay the check sees


@pytest.mark.parametrize("name,options", OPTION_CASES,
                         ids=[f"{n}-" + "-".join(f"{k}={v}" for k, v in o.items())
                              for n, o in OPTION_CASES])
def test_the_optax_peer_maps_options_too(name, options):
    """The mappings beyond the workloads' settings: AdamW's decay, SGD's momentum and
    Nesterov momentum, Lion's decay."""
    pytest.importorskip("optax")
    spec = registry.get(name)
    w = B.Workload(spec, B.MLP_SIZE, np.float32)
    w.kwargs = dict(w.kwargs, **options)
    w.hp = spec.validate(w.kwargs)
    B.check_runner(B.make_runner("optax", w), steps=5)


@pytest.mark.parametrize("n", [1000, B.MLP_SIZE])
def test_optax_lamb_is_fastopts_with_bias_correction_and_no_trust_eps(n):
    pytest.importorskip("optax")
    spec = registry.get("lamb")
    w = B.Workload(spec, n, np.float32)
    w.kwargs = dict(w.kwargs, bias_correction=True, trust_eps=0.0)
    w.hp = spec.validate(w.kwargs)
    B.check_runner(B.make_runner("optax", w), steps=5)


def test_the_check_catches_an_optax_peer_with_another_formula():
    pytest.importorskip("optax")
    w = B.Workload(registry.get("adam"), B.MLP_SIZE, np.float32)
    w.hp = dict(w.hp, beta2=0.99)            # the peer steps with beta2 0.99, fastopt 0.999
    with pytest.raises(AssertionError):
        B.check_runner(B.make_runner("optax", w))


def test_float64_needs_jax_x64():
    jax = pytest.importorskip("jax")
    if jax.config.jax_enable_x64:
        pytest.skip("jax_enable_x64 is set in this process")
    with pytest.raises(B.Unavailable, match="jax_enable_x64"):
        B.make_runner("optax", B.Workload(registry.get("adam"), 1000, np.float64))


@pytest.mark.parametrize("clip", [False, True])
def test_the_loop_tables_optax_rows_step_as_fastopt(clip):
    """``python -m fastopt bench``'s training-loop rows for optax (``fastopt.loopbench``):
    their transformations (adamw, and adamw after ``clip_by_global_norm``) compute fastopt's
    AdamW step and fused clip, on gradients of norms ~70 and ~0.07 in turn (Adam's update
    hardly changes when every gradient is scaled alike: the clip shows only when the factor
    changes between steps)."""
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
    import fastopt
    from fastopt import loopbench
    name = "optax clip_by_global_norm + adamw (jit)" if clip else "optax adamw (jit)"
    tx = loopbench.cases(10)[name].tx
    rng = np.random.default_rng(1)
    n = 5000
    p = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * s).astype(np.float32) for s in (1.0, 1e-3) * 3]
    b = fastopt.AdamBuffers.zeros(p.copy(), np.empty_like(p))
    unclipped = fastopt.AdamBuffers.zeros(p.copy(), np.empty_like(p))
    params = jnp.asarray(p)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        b.grad[...] = unclipped.grad[...] = g
        fastopt.adam_step(b, decoupled_weight_decay=True,
                          max_grad_norm=loopbench.MAX_NORM if clip else None)
        fastopt.adam_step(unclipped, decoupled_weight_decay=True)
    np.testing.assert_allclose(np.asarray(params), b.param, rtol=1e-5, atol=1e-7)
    if clip:        # the clip changed the result: this check can tell
        assert not np.allclose(unclipped.param, b.param, rtol=1e-4, atol=1e-6)


def test_the_loop_tables_apply_if_finite_row_skips_as_fastopt():
    """The training-loop table's ``apply_if_finite(adamw)`` row drops the steps whose gradient
    holds an inf or a NaN, leaving the parameters and Adam's state (its step count too) as
    they were, as fastopt's ``skip_nonfinite`` does: the same parameters after six steps, two
    of them skipped (a step taken on such a gradient would make them NaN)."""
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
    import fastopt
    from fastopt import loopbench
    tx = loopbench.cases(10)[loopbench.OPTAX_SKIP].tx
    rng = np.random.default_rng(2)
    n = 5000
    p = rng.standard_normal(n).astype(np.float32)
    b = fastopt.AdamBuffers.zeros(p.copy(), np.empty_like(p))
    params = jnp.asarray(p)
    state = tx.init(params)
    for i in range(6):
        g = rng.standard_normal(n).astype(np.float32)
        if i in (1, 4):
            g[i] = np.nan if i == 1 else -np.inf
        updates, state = tx.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        b.grad[...] = g
        fastopt.adam_step(b, decoupled_weight_decay=True, skip_nonfinite=True)
    assert b.skipped_steps == 2 and int(state.total_notfinite) == 2
    np.testing.assert_allclose(np.asarray(params), b.param, rtol=1e-5, atol=1e-7)


def test_without_optax_the_bfloat16_state_peer_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "optax", None)
    skipped = []
    assert B._optax_bf16_peer(1000, skipped) == []
    assert skipped and skipped[0][0] == B.OPTAX_BF16 and "not installed" in skipped[0][1]


def test_the_bfloat16_state_peer_is_adam_with_a_bfloat16_first_moment():
    """The state-precision table's optax row (``benchmarks._optax_bf16_peer``): optax's Adam
    with mu in bfloat16 and nu in float32, its first step (taken when it is built) within
    bfloat16 rounding of fastopt's float32 Adam step on the same data."""
    pytest.importorskip("optax")
    import fastopt
    n = 1000
    skipped = []
    [(label, step, nbytes, size)] = B._optax_bf16_peer(n, skipped)
    assert not skipped and label == B.OPTAX_BF16 and size == n
    params, (adam, _) = step.box
    assert (str(adam.mu.dtype), str(adam.nu.dtype)) == ("bfloat16", "float32")
    assert nbytes == n * (2 + 4)
    rng = np.random.default_rng(0)          # the peer's data: the gradient, then the params
    g = rng.standard_normal(n).astype(np.float32)
    p = rng.standard_normal(n).astype(np.float32)
    b = fastopt.AdamBuffers.zeros(p.copy(), g.copy())
    fastopt.adam_step(b, lr=1e-3)
    # first step: m_hat = g (bfloat16 in optax: 2**-8 relative), update ~ lr * sign(g)
    np.testing.assert_allclose(np.asarray(params), b.param, rtol=0, atol=1e-5)
    assert np.abs(b.param - p).max() > 5e-4
