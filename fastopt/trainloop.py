"""The training-loop benchmark: whole iterations (matmul forward/backward + optimizer step) of
a NumPy MLP, each configuration in a fresh process, as a user's program runs.

Why fresh processes: the thread pools' wait policies are fixed when the pools start, so the
configurations (nothing set, the tuned environments, the blog's classes) cannot share one
process. :func:`measure` runs ``python -m fastopt.trainloop`` once per configuration and
repeat, interleaved (so that the VM's drifting speed hits every configuration alike), and keeps
the median of each.

Models: ``mlp`` is the blog's 784-100-100-100-100-10 network (109,810 parameters: the step runs
serially by default), ``large`` a 784-2048-2048-2048-2048-10 one (14,209,034 parameters: the
step runs in parallel). Batch 128 of synthetic MNIST-shaped data (the loop's speed does not
depend on the pixel values), float32, Adam with lr 1e-3 on the flat arena.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MODELS = {"mlp": (784, 100, 100, 100, 100, 10), "large": (784, 2048, 2048, 2048, 2048, 10)}
ITERS = {"mlp": (300, 50), "large": (20, 5)}            # timed, warm-up
_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FASTOPT_OMP_SPINCOUNT",
                "FASTOPT_PARALLEL_THRESHOLD", "NUMBA_THREADING_LAYER")

# name -> (implementation, environment additions, kind)
CONFIGS = {
    "default": ("fastopt", {}, "default"),
    "libgomp defaults (before)": ("fastopt", {"FASTOPT_OMP_SPINCOUNT": "keep"}, "reference"),
    "OMP_WAIT_POLICY=PASSIVE": ("fastopt", {"OMP_WAIT_POLICY": "PASSIVE"}, "tuned"),
    "serial step": ("fastopt", {"FASTOPT_PARALLEL_THRESHOLD": str(1 << 62)}, "tuned"),
    "parallel step": ("fastopt", {"FASTOPT_PARALLEL_THRESHOLD": "0"}, "tuned"),
    "NUMBA_THREADING_LAYER=workqueue": ("fastopt", {"NUMBA_THREADING_LAYER": "workqueue"},
                                        "tuned"),
    "blog's Adam": ("blog", {}, "blog"),
    "no step": ("none", {}, "reference"),
}


def run_loop(model="mlp", impl="fastopt", iters=None, warmup=None, batch=128, seed=0):
    """Time ``iters`` iterations after ``warmup`` in this process; returns milliseconds per
    iteration: ``model_ms`` (forward + backward), ``step_ms`` and ``iter_ms``."""
    import fastopt
    from fastopt.mlp import MLP
    from fastopt.blog import Adam as BlogAdam
    default_iters, default_warmup = ITERS[model]
    iters = default_iters if iters is None else iters
    warmup = default_warmup if warmup is None else warmup
    net = MLP(MODELS[model], dtype=np.float32, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.random((1024, MODELS[model][0]), dtype=np.float32)
    t = rng.integers(0, 10, 1024)
    if impl == "fastopt":
        buffers = fastopt.AdamBuffers.zeros(net.flat.param, net.flat.grad)

        def step():
            fastopt.adam_step(buffers, lr=1e-3)
    elif impl == "blog":
        blog = BlogAdam(lr=1e-3)

        def step():
            blog.update(net.flat.params, net.flat.grads)
    elif impl == "none":
        def step():
            pass
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    model_s = step_s = 0.0
    for it in range(iters + warmup):
        batch_idx = rng.integers(0, len(x), batch)
        t0 = time.perf_counter()
        net.gradient(x[batch_idx], t[batch_idx])
        t1 = time.perf_counter()
        step()
        t2 = time.perf_counter()
        if it >= warmup:
            model_s += t1 - t0
            step_s += t2 - t1
    out = {"model_ms": model_s / iters * 1e3, "step_ms": step_s / iters * 1e3,
           "iter_ms": (model_s + step_s) / iters * 1e3, "iters": iters,
           "parameters": int(net.flat.size)}
    from . import config
    out["parallel_threshold"] = config.PARALLEL_THRESHOLD
    out["thread_report"] = config.thread_report()
    return out


def clean_environment(extra=None):
    """The current environment without any thread-policy variable, plus ``extra``: a user who
    set nothing."""
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    env.update(extra or {})
    return env


def run_fresh(model, config_name, iters=None, warmup=None):
    """One configuration in a fresh interpreter; returns its :func:`run_loop` result."""
    impl, extra, _ = CONFIGS[config_name]
    cmd = [sys.executable, "-m", "fastopt.trainloop", "--model", model, "--impl", impl]
    if iters is not None:
        cmd += ["--iters", str(iters)]
    if warmup is not None:
        cmd += ["--warmup", str(warmup)]
    res = subprocess.run(cmd, env=clean_environment(extra), capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"training loop {model}/{config_name} failed: "
                           f"{res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(models=("mlp", "large"), configs=None, repeats=3, iters=None, show_progress=None):
    """Run every configuration of every model ``repeats`` times, interleaved; returns rows
    with the median of each time and the ratios to the best tuned configuration and to the
    blog's classes."""
    from ._progress import progress
    configs = list(CONFIGS) if configs is None else list(configs)
    samples = {(m, c): [] for m in models for c in configs}
    bar = progress(len(samples) * repeats, desc="training loops", unit="run",
                   enabled=show_progress)
    try:
        for _ in range(repeats):
            for m in models:
                for c in configs:
                    bar.set_postfix_str(f"{m} {c}")
                    samples[(m, c)].append(run_fresh(m, c, iters=iters))
                    bar.update(1)
    finally:
        bar.close()
    rows = []
    for (m, c), runs in samples.items():
        row = {"model": m, "config": c, "impl": CONFIGS[c][0], "kind": CONFIGS[c][2],
               "environment": CONFIGS[c][1], "parameters": runs[0]["parameters"],
               "repeats": len(runs), "thread_report": runs[0]["thread_report"],
               "parallel_threshold": runs[0]["parallel_threshold"]}
        for key in ("model_ms", "step_ms", "iter_ms"):
            row[key] = statistics.median(r[key] for r in runs)
            row[key + "_all"] = [r[key] for r in runs]
        rows.append(row)
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        tuned = [r for r in mine if r["kind"] == "tuned"]
        best = min(tuned, key=lambda r: r["iter_ms"]) if tuned else None
        blog = next((r for r in mine if r["kind"] == "blog"), None)
        for r in mine:
            if best is not None:
                r["vs_best_tuned"] = r["iter_ms"] / best["iter_ms"]
                r["best_tuned"] = best["config"]
            if blog is not None:
                r["vs_blog"] = r["iter_ms"] / blog["iter_ms"]
    return rows


def step_rows(cases, impls=("cpu", "torch-fused"), min_time=0.25):
    """Step-only benchmark rows for ``cases`` ((optimizer, size) pairs, float32) timed in this
    process, each with the traffic-equal kernel; see :func:`default_policy_step_rows`."""
    from . import benchmarks as B, config, registry
    rows = []
    for name, n in cases:
        w = B.Workload(registry.get(name), n, np.float32)
        roof = B.time_call(B.traffic_runner(w, parallel=n >= config.PARALLEL_THRESHOLD),
                           min_time=min_time)
        for impl in impls:
            row = dict(optimizer=name, size=n, dtype="float32", impl=impl, policy="default",
                       traffic_equal_s=roof, bytes_per_element=w.bytes_per_element())
            try:
                runner = B.make_runner(impl, w)
                B.check_runner(runner)
                t = B.time_call(runner.step, min_time=min_time)
                row.update(status="ok", seconds=t, roofline_fraction=roof / t,
                           gb_per_s=w.bytes_per_element() * n / t / 1e9)
            except B.Unavailable as e:
                row.update(status="unavailable", reason=str(e))
            rows.append(row)
    for r in rows:
        peer = next((p for p in rows if p["optimizer"] == r["optimizer"] and
                     p["size"] == r["size"] and p["impl"] == "torch-fused" and
                     p["status"] == "ok"), None)
        if r["status"] == "ok" and peer is not None:
            r["speedup_vs_torch_fused"] = peer["seconds"] / r["seconds"]
    return rows


def default_policy_step_rows(cases=(("adam", 109_810), ("adam", 10_000_000)), min_time=0.25):
    """Step-only rows under the default thread policy (a fresh process with no policy
    variables), for comparison with the benchmark's own brief-spin rows."""
    cmd = [sys.executable, "-m", "fastopt.trainloop", "--step-rows",
           ",".join(f"{o}:{n}" for o, n in cases), "--min-time", str(min_time)]
    res = subprocess.run(cmd, env=clean_environment(), capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"default-policy step rows failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def format_table(rows):
    lines = [f"{'model':<6} {'configuration':<32} {'fwd+bwd':>9} {'step':>9} {'iteration':>10} "
             f"{'vs best tuned':>13} {'vs blog':>8}"]
    for r in rows:
        vb = r.get("vs_best_tuned")
        vl = r.get("vs_blog")
        lines.append(f"{r['model']:<6} {r['config']:<32} {r['model_ms']:7.3f}ms "
                     f"{r['step_ms']:7.3f}ms {r['iter_ms']:8.3f}ms "
                     f"{(f'{vb:12.2f}x' if vb else '-'):>13} "
                     f"{(f'{vl:7.2f}x' if vl else '-'):>8}")
    lines.append("medians over fresh processes; 'vs' columns: this iteration time / theirs "
                 "(< 1 is faster)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastopt.trainloop",
                                 description="time one training-loop configuration in this "
                                             "process and print JSON (used by fastopt bench)")
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp")
    ap.add_argument("--impl", choices=["fastopt", "blog", "none"], default="fastopt")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--step-rows", default=None,
                    help="instead: step-only rows, e.g. adam:109810,adam:10000000")
    ap.add_argument("--min-time", type=float, default=0.25)
    args = ap.parse_args(argv)
    if args.step_rows:
        cases = [(c.split(":")[0], int(float(c.split(":")[1])))
                 for c in args.step_rows.split(",")]
        print(json.dumps(step_rows(cases, min_time=args.min_time)))
        return 0
    print(json.dumps(run_loop(args.model, args.impl, args.iters, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
