"""Benchmarks of the training-loop options inside the step (README "Training-loop options"):
clipping, non-finite skipping, loss-scale unscaling and parameter groups fused into one step,
against fastopt's plain step and the unfused ways (``np.linalg.norm`` + a scaling pass + the
step; torch's ``clip_grad_norm_`` + ``AdamW(fused=True)`` and its ``GradScaler`` driving
``AdamW(fused=True)``; optax's ``clip_by_global_norm`` chained before ``adamw`` and
``apply_if_finite(adamw)``, jitted), Adam float32, timed interleaved in one run. Each peer row
is also compared with the fused fastopt row that computes the same thing (``FUSED``).
``python -m fastopt bench`` prints these rows; ``bench/test_bench_loop.py`` checks them."""
import numpy as np

from .benchmarks import (JAX_SETTLE_S, MLP_SIZE, format_seconds, interleaved_rounds,
                         optax_stepper, round_ratio)

MAX_NORM = 1.0
LOSS_SCALE = 2.0 ** 16                 # the rows' gradients are taken as scaled by this
CLIP = "fastopt step + clip (fused)"
SKIP = "fastopt step + skip_nonfinite (fused)"
AMP = "fastopt step + unscale + skip, LossScaler"
TORCH_CLIP = "torch clip_grad_norm_ + AdamW(fused)"
TORCH_AMP = "torch GradScaler + AdamW(fused)"
OPTAX_CLIP = "optax clip_by_global_norm + adamw (jit)"
OPTAX_SKIP = "optax apply_if_finite(adamw) (jit)"
FUSED = {TORCH_CLIP: CLIP, OPTAX_CLIP: CLIP, TORCH_AMP: AMP, OPTAX_SKIP: SKIP}
SHORT = {CLIP: "our fused clip", SKIP: "our fused skip", AMP: "our fused unscale + skip"}
PARALLEL = ", parallel"                # rows of parallel steps, compared with PARALLEL_PLAIN
PARALLEL_PLAIN = "fastopt step" + PARALLEL


def _mlp_groups(n):
    from .groups import Groups
    from .mlp import BLOG_SIZES
    from .flat import FlatParams
    shapes = {}
    for i in range(len(BLOG_SIZES) - 1):
        shapes[f"W{i + 1}"] = (BLOG_SIZES[i], BLOG_SIZES[i + 1])
        shapes[f"b{i + 1}"] = (BLOG_SIZES[i + 1],)
    fp = FlatParams(shapes)
    assert fp.size == n
    return Groups(fp, [{"params": [k], **({"weight_decay": 0.01} if k[0] == "W" else
                                          {"weight_decay": 0.0, "lr": 2e-3})}
                       for k in fp.layout])


def _even_groups(n, k=10):
    from .groups import Groups
    edges = np.linspace(0, n, k + 1).astype(int)
    return Groups(n, [{"range": (int(a), int(b)), "weight_decay": 0.01 if i % 2 else 0.0}
                      for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))])


def cases(n, seed=0):
    """``{name: step callable}`` for Adam float32 at ``n`` parameters (each on its own copy
    of the same data)."""
    import fastopt
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)

    def buffers():
        return fastopt.AdamBuffers.zeros(p.copy(), g.copy())

    b = {k: buffers() for k in ("plain", "clip", "skip", "amp", "groups", "unfused")}
    groups = _mlp_groups(n) if n == MLP_SIZE else _even_groups(n)
    scaled = np.empty_like(g)
    unfused = fastopt.AdamBuffers(b["unfused"].param, scaled, exp_avg=b["unfused"].exp_avg,
                                  exp_avg_sq=b["unfused"].exp_avg_sq)
    scaler = fastopt.LossScaler(init_scale=LOSS_SCALE)

    def amp():
        fastopt.adam_step(b["amp"], decoupled_weight_decay=True, grad_scale=scaler.scale,
                          skip_nonfinite=True)
        scaler.update(b["amp"].found_inf)
    amp.buffers, amp.scaler = b["amp"], scaler            # for the tests' check
    out = {
        "fastopt step": lambda: fastopt.adam_step(b["plain"], decoupled_weight_decay=True),
        CLIP: lambda: fastopt.adam_step(
            b["clip"], decoupled_weight_decay=True, max_grad_norm=MAX_NORM),
        SKIP: lambda: fastopt.adam_step(
            b["skip"], decoupled_weight_decay=True, skip_nonfinite=True),
        AMP: amp,
        f"fastopt step, {len(groups.groups)} groups": lambda: fastopt.adam_step(
            b["groups"], decoupled_weight_decay=True, groups=groups),
    }
    if n == MLP_SIZE:
        # the MLP's size steps serially by default, under the benchmarks' short spin too
        # (fastopt.config.SHORT_SPIN); the parallel steps for comparison, each against the other
        from . import _step, registry
        spec = registry.get("adam")
        bs = {k: buffers() for k in ("plain parallel", "groups parallel")}
        out[PARALLEL_PLAIN] = lambda: _step.step(spec, bs["plain parallel"], parallel=True,
                                                 decoupled_weight_decay=True)
        out[f"fastopt step, {len(groups.groups)} groups{PARALLEL}"] = lambda: _step.step(
            spec, bs["groups parallel"], parallel=True, decoupled_weight_decay=True,
            groups=groups)

    def numpy_clip():
        norm = float(np.linalg.norm(g))
        np.multiply(g, np.float32(min(1.0, MAX_NORM / (norm + 1e-6))), out=scaled)
        fastopt.adam_step(unfused, decoupled_weight_decay=True)
    out["np.linalg.norm + scale + fastopt step"] = numpy_clip
    _torch_cases(p, g, out)
    _optax_cases(p, g, out)
    return out


def _torch_cases(p, g, out):
    """torch's fused AdamW alone, after ``clip_grad_norm_``, and driven by
    ``torch.amp.GradScaler`` (its ``step`` checks the gradient for inf/NaN in a pass of its
    own, then the fused kernel unscales and skips on ``found_inf``; then ``update``), when
    torch is installed."""
    try:
        import torch
    except ImportError:
        return
    import numba
    torch.set_num_threads(numba.get_num_threads())
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    tp.grad = torch.from_numpy(g.copy())
    plain = torch.nn.Parameter(torch.from_numpy(p.copy()))
    plain.grad = torch.from_numpy(g.copy())
    opt = torch.optim.AdamW([tp], lr=1e-3, weight_decay=0.0, fused=True)
    opt_plain = torch.optim.AdamW([plain], lr=1e-3, weight_decay=0.0, fused=True)

    def torch_clip():
        torch.nn.utils.clip_grad_norm_([tp], MAX_NORM)
        opt.step()
    amp_p = torch.nn.Parameter(torch.from_numpy(p.copy()))
    amp_p.grad = torch.from_numpy(g.copy())
    opt_amp = torch.optim.AdamW([amp_p], lr=1e-3, weight_decay=0.0, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=LOSS_SCALE)
    scaler.scale(torch.ones(()))                          # torch's scaler starts on first use

    def torch_amp():
        scaler.step(opt_amp)
        scaler.update()
    torch_amp.param, torch_amp.scaler = amp_p, scaler      # for the tests' check
    out["torch AdamW(fused)"] = opt_plain.step
    out[TORCH_CLIP] = torch_clip
    out[TORCH_AMP] = torch_amp


def _optax_cases(p, g, out):
    """optax's adamw alone, chained after ``clip_by_global_norm``, and wrapped in
    ``apply_if_finite`` (the update is dropped when a gradient element is not finite), when
    optax is installed, each a :func:`fastopt.benchmarks.optax_stepper` on the same
    gradient."""
    try:
        import jax
        import optax
    except ImportError:
        return
    grads = jax.numpy.asarray(g)

    def runner(tx):
        step, _ = optax_stepper(tx, jax.numpy.asarray(p.copy()))

        def run():
            step(grads)
        run.tx = tx                                       # for the tests' check
        run.settle_s = JAX_SETTLE_S
        return run
    adamw = optax.adamw(1e-3, weight_decay=0.0)
    out["optax adamw (jit)"] = runner(adamw)
    out[OPTAX_CLIP] = runner(optax.chain(optax.clip_by_global_norm(MAX_NORM), adamw))
    out[OPTAX_SKIP] = runner(optax.apply_if_finite(adamw, max_consecutive_errors=10 ** 9))


def measure(sizes=(MLP_SIZE, 10_000_000), min_time=0.25):
    """One row per (size, case): median seconds and the ratio to fastopt's plain step (the
    median of the per-round ratios: :func:`fastopt.benchmarks.round_ratio`)."""
    rows = []
    for n in sizes:
        named = cases(n)
        rounds = dict(zip(named, interleaved_rounds(list(named.values()), min_time=min_time)))
        base = list(rounds.values())[0]
        for name, r in rounds.items():
            plain = rounds[PARALLEL_PLAIN] if name.endswith(PARALLEL) else base
            row = dict(size=n, case=name, seconds=float(np.median(r)),
                       vs_plain_step=round_ratio(r, plain))
            if name in FUSED:
                row["fused_case"] = FUSED[name]
                row["vs_fused"] = round_ratio(r, rounds[FUSED[name]])
            rows.append(row)
    return rows


def format_table(rows):
    lines = ["training-loop options, Adam(W) float32 (max_grad_norm=1.0; loss scale 2^16; "
             "groups: one per MLP tensor / 10 equal ranges, 2 value sets; parallel rows against "
             "the parallel step; a peer's last column: its time over fastopt's fused row "
             "that computes the same)",
             f"{'size':>10}  {'case':<42} {'time':>10} {'vs plain step':>14}"]
    for r in rows:
        extra = (f"  ({r['vs_fused']:.2f}x {SHORT[r['fused_case']]})" if "vs_fused" in r
                 else "")
        lines.append(f"{r['size']:>10}  {r['case']:<42} {format_seconds(r['seconds']):>10} "
                     f"{r['vs_plain_step']:13.2f}x{extra}")
    return "\n".join(lines)
