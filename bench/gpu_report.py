"""Real-GPU measurements for one session on a machine with a CUDA GPU and torch (CUDA build).

    python bench/gpu_report.py OUTDIR

Writes OUTDIR/gpu_report.json and prints tables. Every section is independent: one that fails
prints its traceback and the others still run. What it measures (float32 unless said):

1. the device: name, versions, theoretical peak bandwidth, and a measured device-to-device copy
   (torch ``copy_`` of 1 GiB; bytes read + written over time): the attainable bandwidth;
2. correctness on the device: every optimizer and option combination of the registry (the
   test grid), float32 and float64, 20 steps at 100,003 elements, fastopt CUDA vs the NumPy
   reference (which the CPU kernels equal bit for bit, tested in CI; the reference needs no
   compilation on a fresh machine): the largest difference in ulp per array (0 = bit for bit);
3. Adam: fastopt CUDA (one launch, one flat arena) vs ``torch.optim.Adam`` fused / foreach /
   for-loop on the same GPU, at the MLP's 10 tensors (109,810) and at 1e6, 1e7, 1e8 in one
   tensor; the same trajectory (10 steps) compared against torch's fused Adam;
4. step + global-norm clipping: fastopt ``adam_step(max_grad_norm=1)`` (its factor left on the
   device, and with ``config.CUDA_DEVICE_CLIP = 0`` from the host: both timed, bits compared) vs
   ``clip_grad_norm_`` + fused Adam;
5. every optimizer at 1e7 and 1e8: fastopt CUDA vs torch's best (fused where it has one, else
   foreach), GB/s of the optimizer's own traffic, fraction of the measured copy bandwidth;
6. ``pairs``: two elements per access against one (``config.CUDA_PAIRS``), every optimizer,
   float32 and bfloat16 state, with the bits of both compared; ``pairs_host``: the same where
   the host is the limit (Adam at the MLP's size and 1e6: timeline and host time per call);
7. (by name) the launch sweep, a host profile, groups, compressed state, compressed state with
   groups, LAMB, ``paths``: fastopt's direct launch vs numba-cuda's, and ``layouts``: the word
   layouts of bfloat16 and 8-bit state against the ones before them, and ``frozen``: frozen
   groups on the device, bits and time, and fastopt.torch with a resting layer (see each
   section's docstring).

Times: CUDA events around ``reps`` back-to-back steps after warm-up, the median of 5 such
repeats, per step; events measure the GPU's timeline, so host overhead between launches counts
(a step that the host cannot issue fast enough is timed as slow as it really is).
"""
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from numba import cuda  # noqa: E402

import fastopt  # noqa: E402
from fastopt import config  # noqa: E402
from fastopt import benchmarks as B  # noqa: E402
from fastopt import registry, testinfo  # noqa: E402

DEV = torch.device("cuda")
REPORT = {}


def section(name):
    def wrap(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            print(f"\n=== {name}", flush=True)
            try:
                REPORT[name] = fn(*a, **k)
            except Exception:
                REPORT[name] = {"error": traceback.format_exc()}
                print(REPORT[name]["error"], flush=True)
            print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
        return run
    return wrap


def event_time(fn, reps, warm=3, repeats=5, ahead=False):
    """Seconds per call of ``fn`` on the GPU's timeline: CUDA events around ``reps`` calls after
    ``warm``, the median of ``repeats`` (host time between launches counts). ``ahead``: a ~20
    ms sleep kernel goes first, so the host has queued every launch before the first event:
    the kernels' own time."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        if ahead:
            torch.cuda._sleep(40_000_000)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / reps)
    return float(np.median(times))


def gpu_time(fn, reps):
    """The GPU's time per call alone (:func:`event_time` with ``ahead``)."""
    return event_time(fn, reps, ahead=True)


def reps_for(n):
    return 200 if n <= 1_000_000 else (50 if n <= 10_000_000 else 10)


def us(s):
    return f"{s * 1e6:9.1f} us"


@section("device")
def device_info():
    props = torch.cuda.get_device_properties(0)
    from fastopt.profile import peak_bandwidth_gbs
    from fastopt.kernels.cuda import NVVM_CONTRACTION
    import numba
    x = torch.empty(1 << 28, dtype=torch.float32, device=DEV).normal_()
    y = torch.empty_like(x)
    t = event_time(lambda: y.copy_(x), reps=20)
    copy_gbs = 2 * x.numel() * 4 / t / 1e9
    x = y = None
    info = {"gpu": props.name, "sms": props.multi_processor_count,
            "memory_gib": props.total_memory / 2**30, "torch": torch.__version__,
            "numba": numba.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "peak_gbs": peak_bandwidth_gbs(),
            "copy_gbs": copy_gbs, "nvvm_contraction": NVVM_CONTRACTION,
            "cpu_count": os.cpu_count()}
    try:
        from importlib.metadata import version
        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        pass
    for k, v in info.items():
        print(f"  {k}: {v}")
    REPORT["copy_gbs"] = copy_gbs
    return info


def _ulp(a, b):
    it = np.int32 if a.dtype == np.float32 else np.int64
    ai, bi = a.view(it).astype(np.int64), b.view(it).astype(np.int64)
    ai = np.where(ai < 0, np.iinfo(it).min - ai, ai)
    bi = np.where(bi < 0, np.iinfo(it).min - bi, bi)
    return int(np.abs(ai - bi).max()) if a.size else 0


def _bitwise_cases():
    return [(spec.name, combo, dtype) for spec in registry.REGISTRY.values()
            for combo in testinfo.option_combinations(spec) for dtype in ("float32", "float64")]


def _bitwise_worker(job):
    """Cases ``job[0]::job[1]`` of :func:`_bitwise_cases` (one process: its own CUDA context,
    so the kernels compile in parallel)."""
    first, stride, n, steps = job
    rows = []
    for name, combo, dtype in _bitwise_cases()[first::stride]:
        spec = registry.get(name)
        dtype = np.dtype(dtype).type
        fn = registry.step_function(spec)
        kw = dict(spec.defaults, **combo)
        hp = spec.validate(kw)
        rng = np.random.default_rng(1)
        host = spec.buffers_cls.zeros(rng.standard_normal(n).astype(dtype),
                                      np.zeros(n, dtype), **spec.state_options(hp))
        dev = fastopt.to_device(host)
        extra = dict(layout=[n // 3, n - n // 3]) if spec.kernel.norm_names else {}
        for _ in range(steps):
            g = rng.standard_normal(n).astype(dtype)
            host.grad[...] = g
            dev.grad.copy_to_device(g)
            fn(host, backend="numpy", **kw, **extra)   # == the CPU kernel (tested in CI)
            fn(dev, **kw, **extra)
        back = fastopt.to_host(dev)
        worst = {k: _ulp(a, back.arrays()[k]) for k, a in host.arrays().items()}
        rows.append({"optimizer": spec.name, "combo": combo, "dtype": np.dtype(dtype).name,
                     "max_ulp": max(worst.values()), "per_array": worst})
    return rows


@section("gpu vs the NumPy reference, every optimizer and option (ulp)")
def bitwise(n=100_003, steps=20, workers=8):
    if workers > 1:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            parts = list(ex.map(_bitwise_worker, [(i, workers, n, steps)
                                                  for i in range(workers)]))
    else:
        parts = [_bitwise_worker((0, 1, n, steps))]
    rows = [r for part in parts for r in part]
    bad = [r for r in rows if r["max_ulp"]]
    print(f"  {len(rows)} cases, {len(rows) - len(bad)} bit for bit")
    for r in bad:
        print(f"  {r['optimizer']} {r['combo']} {r['dtype']}: {r['per_array']}")
    return rows


def _fastopt_adam(ps, gs, **kw):
    """fastopt Adam over one flat arena holding ``ps`` (torch CUDA tensors): the tensors become
    views of the arena, as a torch front end would make them."""
    n = sum(p.numel() for p in ps)
    flat_p = torch.empty(n, device=DEV, dtype=ps[0].dtype)
    flat_g = torch.empty_like(flat_p)
    off = 0
    for p, g in zip(ps, gs):
        k = p.numel()
        flat_p[off:off + k].copy_(p.reshape(-1))
        flat_g[off:off + k].copy_(g.reshape(-1))
        off += k
    b = fastopt.AdamBuffers.zeros(cuda.as_cuda_array(flat_p), cuda.as_cuda_array(flat_g))
    return b, flat_p, flat_g


def _torch_adam(ps0, gs, mode, **kw):
    ps = [torch.nn.Parameter(p.clone()) for p in ps0]
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    flag = {"fused": dict(fused=True), "foreach": dict(foreach=True),
            "forloop": dict(foreach=False)}[mode]
    return torch.optim.Adam(ps, **kw, **flag), ps


@section("adam: fastopt cuda vs torch cuda")
def adam_vs_torch():
    rows = []
    copy_gbs = REPORT.get("copy_gbs")
    cases = [("MLP (10 tensors)", B.MLP_SHAPES)] + [(f"{n:.0e}", [(n,)])
                                                     for n in (10**6, 10**7, 10**8)]
    for label, shapes in cases:
        gen = torch.Generator(device=DEV).manual_seed(0)
        ps = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
        gs = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
        n = sum(p.numel() for p in ps)
        kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        b, flat_p, _ = _fastopt_adam(ps, gs)
        row = {"case": label, "n": n}
        row["fastopt_s"] = event_time(lambda: fastopt.adam_step(b, lr=1e-3), reps_for(n))
        for mode in ("fused", "foreach", "forloop"):
            if mode == "forloop" and len(shapes) == 1 and n > 10**6:
                continue
            opt, _ = _torch_adam(ps, gs, mode, **kw)
            row[f"torch_{mode}_s"] = event_time(opt.step, reps_for(n))
            del opt
        # the same trajectory: 10 steps from the same start against torch's fused Adam
        b2, flat_p2, _ = _fastopt_adam(ps, gs)
        opt, tps = _torch_adam(ps, gs, "fused", **kw)
        for _ in range(10):
            fastopt.adam_step(b2, lr=1e-3)
            opt.step()
        ours = flat_p2.double()
        theirs = torch.cat([p.detach().reshape(-1) for p in tps]).double()
        row["max_abs_diff_vs_torch_fused_10_steps"] = float((ours - theirs).abs().max())
        row["bytes_per_element"] = 28
        row["fastopt_gbs"] = 28 * n / row["fastopt_s"] / 1e9
        if copy_gbs:
            row["fastopt_of_copy_bw"] = row["fastopt_gbs"] / copy_gbs
        row["speedup_vs_torch_fused"] = row["torch_fused_s"] / row["fastopt_s"]
        rows.append(row)
        print(f"  {label:>16}: fastopt {us(row['fastopt_s'])}  torch fused "
              f"{us(row['torch_fused_s'])}  foreach {us(row['torch_foreach_s'])}"
              + (f"  for-loop {us(row['torch_forloop_s'])}" if "torch_forloop_s" in row
                 else "")
              + f"  | {row['fastopt_gbs']:.0f} GB/s"
              + (f" ({row['fastopt_of_copy_bw']:.2f} of copy)" if copy_gbs else "")
              + f"  | x{row['speedup_vs_torch_fused']:.2f} vs fused"
              + f"  | diff {row['max_abs_diff_vs_torch_fused_10_steps']:.1e}", flush=True)
        b = b2 = opt = ps = gs = None
        torch.cuda.empty_cache()
    return rows


@section("adam + clipping: fastopt fused vs torch clip_grad_norm_ + fused Adam")
def clip_vs_torch():
    rows = []
    for label, shapes in [("MLP (10 tensors)", B.MLP_SHAPES), ("1e7", [(10**7,)])]:
        gen = torch.Generator(device=DEV).manual_seed(0)
        ps = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
        gs = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
        n = sum(p.numel() for p in ps)
        b, _, _ = _fastopt_adam(ps, gs)
        row = {"case": label, "n": n}
        row["fastopt_plain_s"] = event_time(lambda: fastopt.adam_step(b, lr=1e-3),
                                            reps_for(n))
        row["fastopt_clip_s"] = event_time(
            lambda: fastopt.adam_step(b, lr=1e-3, max_grad_norm=1.0), reps_for(n))
        # the GPU's own time of both (the host ahead): what the norm pass costs the device
        row["fastopt_plain_gpu_s"] = gpu_time(lambda: fastopt.adam_step(b, lr=1e-3),
                                              reps_for(n))
        row["fastopt_clip_gpu_s"] = gpu_time(
            lambda: fastopt.adam_step(b, lr=1e-3, max_grad_norm=1.0), reps_for(n))
        row["fastopt_clip_host_s"] = host_time(
            lambda: fastopt.adam_step(b, lr=1e-3, max_grad_norm=1.0), reps_for(n))
        # the same with the factor passed from the host (it waits for the norm each step),
        # and both settings' bits after 5 steps from one start
        saved = config.CUDA_DEVICE_CLIP
        try:
            config.CUDA_DEVICE_CLIP = 0
            row["fastopt_clip_host_factor_s"] = event_time(
                lambda: fastopt.adam_step(b, lr=1e-3, max_grad_norm=1.0), reps_for(n))
            finals = []
            for device_clip in (1, 0):
                config.CUDA_DEVICE_CLIP = device_clip
                bb, _, _ = _fastopt_adam(ps, gs)
                for _ in range(5):
                    fastopt.adam_step(bb, lr=1e-3, max_grad_norm=1.0)
                finals.append((bb.param.copy_to_host(), bb.grad_norm))
            row["device_factor_bitwise"] = bool(
                np.array_equal(finals[0][0].view(np.uint32), finals[1][0].view(np.uint32))
                and finals[0][1] == finals[1][1])
        finally:
            config.CUDA_DEVICE_CLIP = saved
        opt, tps = _torch_adam(ps, gs, "fused", lr=1e-3)

        def torch_step():
            torch.nn.utils.clip_grad_norm_(tps, 1.0)
            opt.step()
        # (clip_grad_norm_ scales the gradients in place: after the first step their norm
        # is 1 and the factor ~1; the work per step is the same)
        row["torch_clip_fused_s"] = event_time(torch_step, reps_for(n))
        row["speedup"] = row["torch_clip_fused_s"] / row["fastopt_clip_s"]
        row["clip_over_plain"] = row["fastopt_clip_s"] / row["fastopt_plain_s"]
        rows.append(row)
        print(f"  {label:>16}: fastopt plain {us(row['fastopt_plain_s'])}  clip "
              f"{us(row['fastopt_clip_s'])} (x{row['clip_over_plain']:.2f}; host factor "
              f"{us(row['fastopt_clip_host_factor_s'])}, same bits: "
              f"{row['device_factor_bitwise']})  torch clip+fused "
              f"{us(row['torch_clip_fused_s'])}  | x{row['speedup']:.2f}\n"
              f"{'':>18}GPU time alone: plain {us(row['fastopt_plain_gpu_s'])}  clip "
              f"{us(row['fastopt_clip_gpu_s'])}; host per clipped call "
              f"{us(row['fastopt_clip_host_s'])}", flush=True)
    return rows


def _torch_peer(spec, hp, ps0, gs):
    torch_of = testinfo.info(spec).torch
    peer = None if torch_of is None else torch_of(hp)
    if peer is None:
        return None, "no torch peer with this formula"
    cls_name, kw, attrs = (peer + ({},))[:3]
    try:
        cls = testinfo.peer_class(cls_name)
    except ImportError as e:
        return None, str(e)
    ps = [torch.nn.Parameter(p.clone()) for p in ps0]
    for p, g in zip(ps, gs):
        p.grad = g.clone()
    for mode, flag in (("fused", dict(fused=True)), ("foreach", dict(foreach=True)),
                       ("default", {})):
        if "." in cls_name and mode != "default":
            continue
        try:
            opt = cls(ps, **kw, **flag)
            for k, v in attrs.items():
                setattr(opt, k, v)
            opt.step()
            return opt, f"{cls_name}({mode})"
        except (RuntimeError, TypeError, ValueError):
            continue
    return None, "torch peer did not run"


@section("every optimizer: fastopt cuda vs torch's best")
def every_optimizer():
    rows = []
    copy_gbs = REPORT.get("copy_gbs")
    for n in (10**7, 10**8):
        for spec in registry.REGISTRY.values():
            w = B.Workload(spec, 10, np.float32)       # settings only; arrays made below
            hp = w.hp
            gen = torch.Generator(device=DEV).manual_seed(0)
            p = torch.randn(n, device=DEV, generator=gen)
            g = torch.randn(n, device=DEV, generator=gen)
            host_state = spec.state_options(hp)
            b = spec.buffers_cls.zeros(cuda.as_cuda_array(p), cuda.as_cuda_array(g),
                                       **host_state)
            fn = registry.step_function(spec)
            kw = dict(w.kwargs)
            if spec.kernel.norm_names:
                kw["layout"] = [n]
            row = {"optimizer": spec.name, "n": n}
            row["fastopt_s"] = event_time(lambda: fn(b, **kw), reps_for(n))
            w.n = n
            bpe = w.bytes_per_element()
            row["bytes_per_element"] = bpe
            row["fastopt_gbs"] = bpe * n / row["fastopt_s"] / 1e9
            if copy_gbs:
                row["fastopt_of_copy_bw"] = row["fastopt_gbs"] / copy_gbs
            opt, how = _torch_peer(spec, hp, [p], [g])
            row["torch"] = how
            if opt is not None:
                row["torch_s"] = event_time(opt.step, reps_for(n))
                row["speedup_vs_torch"] = row["torch_s"] / row["fastopt_s"]
            rows.append(row)
            print(f"  {spec.name:>9} {n:.0e}: fastopt {us(row['fastopt_s'])} "
                  f"{row['fastopt_gbs']:6.0f} GB/s"
                  + (f" ({row['fastopt_of_copy_bw']:.2f} of copy)" if copy_gbs else "")
                  + (f" | {how} {us(row['torch_s'])} x{row['speedup_vs_torch']:.2f}"
                     if opt is not None else f" | {how}"), flush=True)
            b = p = g = opt = None
            torch.cuda.empty_cache()
    return rows


@section("pairs")
def pairs_vs_single():
    """Two elements per access (``config.CUDA_PAIRS``: 64-bit words of float32, 32-bit words of
    bfloat16 state) against one, every optimizer at 1e7 and 1e8, float32 state and (where the
    optimizer has state) bfloat16 state: GPU time per step (:func:`gpu_time`), the two
    settings interleaved over three rounds (medians), each setting's timeline once
    (:func:`event_time`), torch's best on float32; then 5 steps of each setting from one start,
    every array compared bit for bit."""
    rows = []
    saved = config.CUDA_PAIRS
    try:
        for n in (10**7, 10**8):
            for spec in registry.REGISTRY.values():
                for state in (None, "bfloat16"):
                    w = B.Workload(spec, 10, np.float32)
                    if state and not spec.required_state(w.hp):
                        continue
                    rows.append(_pairs_case(spec, w, n, state))
                    torch.cuda.empty_cache()
    finally:
        config.CUDA_PAIRS = saved
    return rows


@section("pairs_host")
def pairs_host_bound():
    """Where the host is the limit (Adam, float32, the MLP's 10 tensors in one arena and 1e6
    elements): the timeline per step (:func:`event_time`) and the host's time per call
    (:func:`host_time`) with two elements per access and with one, interleaved over three
    rounds (medians), and torch's fused Adam."""
    rows = []
    saved = config.CUDA_PAIRS
    try:
        for label, shapes in [("MLP (10 tensors)", B.MLP_SHAPES), ("1e6", [(10**6,)])]:
            gen = torch.Generator(device=DEV).manual_seed(0)
            ps = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
            gs = [torch.randn(s, device=DEV, generator=gen) for s in shapes]
            n = sum(p.numel() for p in ps)
            row = {"case": label, "n": n}
            made = {}
            for pairs in (1, 0):
                config.CUDA_PAIRS = pairs
                made[pairs] = _fastopt_adam(ps, gs)[0]
                fastopt.adam_step(made[pairs], lr=1e-3)
            times = {(k, pairs): [] for k in ("event", "host") for pairs in (1, 0)}
            for _ in range(3):
                for pairs in (1, 0):
                    b = made[pairs]
                    config.CUDA_PAIRS = pairs
                    times[("event", pairs)].append(
                        event_time(lambda: fastopt.adam_step(b, lr=1e-3), reps_for(n)))
                    times[("host", pairs)].append(
                        host_time(lambda: fastopt.adam_step(b, lr=1e-3), reps_for(n)))
            for (k, pairs), v in times.items():
                row[f"{k}_{'pairs' if pairs else 'single'}_s"] = float(np.median(v))
            opt, _ = _torch_adam(ps, gs, "fused", lr=1e-3)
            row["torch_fused_s"] = event_time(opt.step, reps_for(n))
            rows.append(row)
            print(f"  {label:>16}: timeline pairs {us(row['event_pairs_s'])} single "
                  f"{us(row['event_single_s'])}; host per call pairs {us(row['host_pairs_s'])}"
                  f" single {us(row['host_single_s'])}; torch fused "
                  f"{us(row['torch_fused_s'])}", flush=True)
    finally:
        config.CUDA_PAIRS = saved
    return rows


def _pairs_case(spec, w, n, state):
    gen = torch.Generator(device=DEV).manual_seed(0)
    p = torch.randn(n, device=DEV, generator=gen)
    g = torch.randn(n, device=DEV, generator=gen)
    fn = registry.step_function(spec)
    kw = dict(w.kwargs)
    zeros = dict(spec.state_options(w.hp), **({"state_dtype": state} if state else {}))

    keep = []                              # the torch tensors under the numba views

    def make(pairs, steps=1):
        config.CUDA_PAIRS = pairs          # (read at every step)
        keep.append(p.clone())
        b = spec.buffers_cls.zeros(cuda.as_cuda_array(keep[-1]), cuda.as_cuda_array(g),
                                   **zeros)
        for _ in range(steps):
            fn(b, **kw)
        return b
    row = {"optimizer": spec.name, "n": n, "state": state or "float32"}
    reps = reps_for(n)
    on, off = make(1), make(0)
    t_on, t_off = [], []
    for _ in range(3):
        config.CUDA_PAIRS = 1
        t_on.append(gpu_time(lambda: fn(on, **kw), reps))
        config.CUDA_PAIRS = 0
        t_off.append(gpu_time(lambda: fn(off, **kw), reps))
    row["pairs_s"], row["single_s"] = float(np.median(t_on)), float(np.median(t_off))
    config.CUDA_PAIRS = 1
    row["pairs_timeline_s"] = event_time(lambda: fn(on, **kw), reps)
    row["speedup"] = row["single_s"] / row["pairs_s"]
    on = off = None
    a, b = make(1, 5), make(0, 5)
    row["same_bits"] = all(
        np.array_equal(np.asarray(x.copy_to_host()).view(np.uint8),
                       np.asarray(b.arrays()[k].copy_to_host()).view(np.uint8))
        for k, x in a.arrays().items())
    del a, b
    keep.clear()
    how = ""
    if state is None:
        opt, how = _torch_peer(spec, w.hp, [p], [g])
        if opt is not None:
            row["torch"] = how
            row["torch_s"] = event_time(opt.step, reps)
            how = f" | {how} {us(row['torch_s'])} (x{row['torch_s'] / row['pairs_s']:.2f})"
        else:
            how = f" | {how}"
    print(f"  {spec.name:>9} {n:.0e} {row['state']:>8}: pairs {us(row['pairs_s'])} single "
          f"{us(row['single_s'])} x{row['speedup']:.2f}  timeline {us(row['pairs_timeline_s'])}"
          f"  same bits: {row['same_bits']}{how}", flush=True)
    return row


@section("launch configuration sweep (Adam, 1e8)")
def launch_sweep(n=10**8):
    from fastopt import config
    gen = torch.Generator(device=DEV).manual_seed(0)
    p = torch.randn(n, device=DEV, generator=gen)
    g = torch.randn(n, device=DEV, generator=gen)
    b = fastopt.AdamBuffers.zeros(cuda.as_cuda_array(p), cuda.as_cuda_array(g))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    saved = config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS
    try:
        for tpb in (128, 256, 512, 1024):
            for blocks in (0, sms * 4, sms * 16, sms * 64):
                config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS = tpb, blocks
                t = event_time(lambda: fastopt.adam_step(b, lr=1e-3), reps=10)
                gbs = 28 * n / t / 1e9
                rows.append({"threads_per_block": tpb, "max_blocks": blocks, "s": t,
                             "gbs": gbs})
                print(f"  tpb {tpb:5d} max_blocks {blocks:6d}: {us(t)} {gbs:6.0f} GB/s",
                      flush=True)
    finally:
        config.CUDA_THREADS_PER_BLOCK, config.CUDA_MAX_BLOCKS = saved
    return rows


@section("host time of one small step (cProfile, Adam, 1e5, 300 steps)")
def host_profile(n=100_000, steps=300):
    import cProfile
    import io
    import pstats
    p = torch.randn(n, device=DEV)
    g = torch.randn(n, device=DEV)
    b = fastopt.AdamBuffers.zeros(cuda.as_cuda_array(p), cuda.as_cuda_array(g))
    for _ in range(5):
        fastopt.adam_step(b, lr=1e-3)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fastopt.adam_step(b, lr=1e-3)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fastopt.adam_step(b, lr=1e-3)
    prof.disable()
    torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    text = out.getvalue()
    print(f"  wall per step (no profiler): {us(wall)}")
    print("\n".join(text.splitlines()[:40]))
    return {"wall_s": wall, "profile": text}


def host_time(fn, reps):
    """The host's time per call: ``reps`` calls issued back to back, the clock read before the
    final synchronization (above the event time, the host is the limit)."""
    for _ in range(3):
        fn()
    cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) / reps
    cuda.synchronize()
    return host


def distinct_lr_groups(n, k):
    """``k`` equal ranges of ``n`` elements, each with its own learning rate (``k`` distinct
    rows of scalars)."""
    from fastopt.groups import Groups
    edges = np.linspace(0, n, k + 1).astype(int)
    return Groups(n, [{"range": (int(a), int(c)), "lr": 1e-3 * (1 + i / k)}
                      for i, (a, c) in enumerate(zip(edges[:-1], edges[1:]))])


def rows_in_array(step):
    """``step`` run with the grouped kernels' rows of scalars in a device array (as past
    ``GROUPED_MAX_ROWS`` distinct rows) instead of with the launch."""
    from fastopt import _cuda_backend

    def fn():
        saved = _cuda_backend.GROUPED_MAX_ROWS
        _cuda_backend.GROUPED_MAX_ROWS = 0
        try:
            step()
        finally:
            _cuda_backend.GROUPED_MAX_ROWS = saved
    return fn


@section("paths")
def launch_paths():
    """fastopt's direct launch (``fastopt._launch``) vs numba-cuda's, one process, per step:
    Adam plain, with 10 groups of distinct learning rates (90 scalars with the launch) and
    with them in a device array, LAMB over 10 tensors, and 8-bit Adam, at the MLP's size and
    1e7; GPU timeline (events) and host time per call; after 20 steps each way from the same
    start, the arrays compared bit for bit. Then the number of distinct rows of scalars up to
    which passing them with the launch beats the device array (Adam, 1e7, direct launch)."""
    from fastopt import _launch, config
    out = {}
    for n in (B.MLP_SIZE, 10_000_000):
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        g10 = distinct_lr_groups(n, 10)
        layout = [n // 10] * 9 + [n - 9 * (n // 10)]
        cases = {
            "adam": (lambda: fastopt.AdamBuffers.zeros(p.copy(), g.copy()),
                     lambda b: fastopt.adam_step(b)),
            "adam, 10 groups, rows with the launch": (
                lambda: fastopt.AdamBuffers.zeros(p.copy(), g.copy()),
                lambda b: fastopt.adam_step(b, groups=g10)),
            "adam, 10 groups, rows in an array": (
                lambda: fastopt.AdamBuffers.zeros(p.copy(), g.copy()),
                lambda b: rows_in_array(lambda: fastopt.adam_step(b, groups=g10))()),
            "lamb, 10 tensors": (lambda: fastopt.LAMBBuffers.zeros(p.copy(), g.copy()),
                                 lambda b: fastopt.lamb_step(b, layout=layout,
                                                             weight_decay=0.01)),
            "adam, 8-bit state": (
                lambda: fastopt.AdamBuffers.zeros(p.copy(), g.copy(), state_dtype="int8"),
                lambda b: fastopt.adam_step(b)),
        }
        for name, (make, step) in cases.items():
            row, final = {}, {}
            saved = config.CUDA_FAST_LAUNCH
            try:
                for path in (1, 0):
                    config.CUDA_FAST_LAUNCH = path
                    before = dict(_launch.STATS)
                    b = fastopt.to_device(make())
                    fn = (lambda b=b: step(b))
                    for _ in range(20):
                        fn()
                    final[path] = {k: a.copy_to_host() for k, a in b.arrays().items()
                                   if hasattr(a, "copy_to_host")}
                    label = "direct" if path else "numba-cuda"
                    row[label] = {"event_s": event_time(fn, reps_for(n)),
                                  "host_s": host_time(fn, reps_for(n)),
                                  "launches": {k: _launch.STATS[k] - before[k]
                                               for k in before}}
            finally:
                config.CUDA_FAST_LAUNCH = saved
            same = all(np.array_equal(final[1][k].view(np.uint8), final[0][k].view(np.uint8))
                       for k in final[1])
            out[f"{name}, n={n}"] = dict(row, bitwise_equal=same)
            print(f"n={n:>9} {name:40s} direct: GPU {us(row['direct']['event_s'])}, host "
                  f"{us(row['direct']['host_s'])} | numba-cuda: GPU "
                  f"{us(row['numba-cuda']['event_s'])}, host {us(row['numba-cuda']['host_s'])}"
                  f" | bitwise {same} | launches {row['direct']['launches']}", flush=True)
    n = 10_000_000
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    sweep = {}
    for k in (1, 2, 3, 4, 6, 8, 12, 16):
        gk = distinct_lr_groups(n, k)
        b1 = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
        b2 = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
        with_launch = event_time(lambda: fastopt.adam_step(b1, groups=gk), reps_for(n))
        in_array = event_time(rows_in_array(lambda: fastopt.adam_step(b2, groups=gk)),
                              reps_for(n))
        sweep[k] = {"with_launch_s": with_launch, "in_array_s": in_array}
        print(f"  {k:2d} distinct rows, 1e7: with the launch {us(with_launch)}, "
              f"in an array {us(in_array)}", flush=True)
    out["rows_sweep_1e7"] = sweep
    return out


@section("groups")
def groups_on_device():
    """Adam(W) float32 with parameter groups on the device: plain step vs 10 groups (one per
    MLP tensor / 10 equal ranges; two kernels: with and without weight decay) in one launch,
    with the rows of scalars passed with the launch and in a device array (as past
    ``GROUPED_MAX_ROWS`` rows), and torch AdamW(fused) with the same two groups
    (decay / no decay) over the same tensors; per step, CUDA events."""
    from fastopt import _cuda_backend
    from fastopt.loopbench import _even_groups, _mlp_groups
    out = {}
    for n in (B.MLP_SIZE, 10_000_000):
        groups = _mlp_groups(n) if n == B.MLP_SIZE else _even_groups(n)
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)

        def buffers():
            return fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
        plain, one, arr = buffers(), buffers(), buffers()
        kw = dict(decoupled_weight_decay=True)
        row = {"plain": event_time(lambda: fastopt.adam_step(plain, **kw), reps_for(n)),
               "groups, one launch": event_time(
                   lambda: fastopt.adam_step(one, groups=groups, **kw), reps_for(n))}
        saved = _cuda_backend.GROUPED_MAX_ROWS
        _cuda_backend.GROUPED_MAX_ROWS = 0
        try:
            row["groups, rows in a device array"] = event_time(
                lambda: fastopt.adam_step(arr, groups=groups, **kw), reps_for(n))
        finally:
            _cuda_backend.GROUPED_MAX_ROWS = saved
        same = all(np.array_equal(a.copy_to_host(), b.copy_to_host())
                   for a, b in zip(one.arrays().values(), arr.arrays().values()))
        tensors = []
        for seg_lo, seg_hi, _ in groups.segments:
            tensors.append(torch.nn.Parameter(torch.tensor(p[seg_lo:seg_hi], device=DEV)))
            tensors[-1].grad = torch.tensor(g[seg_lo:seg_hi], device=DEV)
        decay = [t for i, t in enumerate(tensors) if i % 2 == 0]
        rest = [t for i, t in enumerate(tensors) if i % 2 == 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                 {"params": rest, "weight_decay": 0.0}], lr=1e-3, fused=True)
        row["torch AdamW(fused), 2 groups"] = event_time(opt.step, reps_for(n))
        out[n] = dict(row, rows_in_array_equal=same)
        print(f"n={n}: " + ", ".join(f"{k} {us(v)}" for k, v in row.items())
              + f"; rows in an array == rows with the launch, bitwise: {same}", flush=True)
    return out


@section("bf16")
def bf16_state_on_device():
    """Adam float32 parameters with float32 vs bfloat16 state (nearest, stochastic) vs 8-bit
    state on the device, 1e7 and 1e8, per step (CUDA events); bfloat16 state moves 20 bytes per
    element, 8-bit ~16, float32 state 28."""
    out = {}
    for n in (10_000_000, 100_000_000):
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        row = {}
        for label, opts in (("float32 state", {}),
                            ("bfloat16 state", dict(state_dtype="bfloat16")),
                            ("bfloat16 state, stochastic",
                             dict(state_dtype="bfloat16", stochastic_rounding=True)),
                            ("8-bit state", dict(state_dtype="int8"))):
            b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy(), **opts))
            row[label] = event_time(lambda: fastopt.adam_step(b), reps_for(n))
        base = row["float32 state"]
        out[n] = row
        print(f"n={n}: " + ", ".join(f"{k} {us(v)} ({base / v:.2f}x)" for k, v in row.items()),
              flush=True)
    return out


def _layout_buffers(spec, n, opts, setting, steps=0):
    """Device buffers of ``spec`` (float32 parameters, ``opts`` for ``zeros``) whose first step
    ran under the config ``setting`` (the 8-bit layout is chosen when a step's launcher is
    made; the others are read at every step), then ``steps`` more steps."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    hp = spec.validate(dict(spec.defaults))
    b = fastopt.to_device(spec.buffers_cls.zeros(p, g, **spec.state_options(hp), **opts))
    for k, v in setting.items():
        setattr(config, k, v)
    fn = registry.step_function(spec)
    for _ in range(1 + steps):
        fn(b)
    return b


@section("layouts")
def wide_layouts(sizes=(10**7, 10**8), every=10**7):
    """The word layouts of compressed state, GPU time per step (:func:`gpu_time`): bfloat16
    state on words of four elements (``config.CUDA_QUADS``) against words of two, and 8-bit
    state with four neighbouring elements per thread as words (``config.CUDA_8BIT_WORDS``)
    against four strided ones, with float32 state as the base: Adam at 1e7 and 1e8 (settings
    interleaved over three rounds, medians) and every optimizer with state at 1e7 (one round);
    then 3 steps of each setting from one start, every array and scale compared bit for bit."""
    saved = {k: getattr(config, k) for k in ("CUDA_QUADS", "CUDA_8BIT_WORDS", "CUDA_PAIRS")}
    cases = [("float32", {}, {}),
             ("bf16 quads", dict(state_dtype="bfloat16"), {"CUDA_QUADS": 1}),
             ("bf16 pairs", dict(state_dtype="bfloat16"), {"CUDA_QUADS": 0}),
             ("int8 words", dict(state_dtype="int8"), {"CUDA_8BIT_WORDS": 1}),
             ("int8 strided", dict(state_dtype="int8"), {"CUDA_8BIT_WORDS": 0})]
    out = []
    try:
        jobs = [(registry.get("adam"), n, 3) for n in sizes]
        jobs += [(spec, every, 1) for spec in registry.REGISTRY.values()
                 if spec.name != "adam" and spec.required_state(
                     spec.validate(dict(spec.defaults)))]
        for spec, n, rounds in jobs:
            fn = registry.step_function(spec)
            made = {label: _layout_buffers(spec, n, opts, setting)
                    for label, opts, setting in cases}
            times = {label: [] for label in made}
            for _ in range(rounds):
                for label, opts, setting in cases:
                    for k, v in setting.items():
                        setattr(config, k, v)
                    b = made[label]
                    times[label].append(gpu_time(lambda: fn(b), reps_for(n)))
            made = None
            row = {"optimizer": spec.name, "n": n}
            row.update({f"{k}_s": float(np.median(v)) for k, v in times.items()})
            same = {}
            for x, y in (("bf16 quads", "bf16 pairs"), ("int8 words", "int8 strided")):
                bx, by = (_layout_buffers(spec, n, o, st, 2)
                          for label, o, st in cases if label in (x, y))
                arrs = [(bx.arrays()[k], by.arrays()[k]) for k in bx.arrays()]
                arrs += [(v, by.state_absmax[k])
                         for k, v in (getattr(bx, "state_absmax", None) or {}).items()]
                same[x] = all(np.array_equal(np.asarray(u.copy_to_host()).view(np.uint8),
                                             np.asarray(w.copy_to_host()).view(np.uint8))
                              for u, w in arrs)
                bx = by = arrs = None
            row["same_bits"] = same
            base = row["float32_s"]
            out.append(row)
            print(f"  {spec.name:>9} {n:.0e}: " + ", ".join(
                f"{k} {us(float(np.median(v)))} ({base / float(np.median(v)):.2f}x)"
                for k, v in times.items()) + f"; same bits {same}", flush=True)
            torch.cuda.empty_cache()
    finally:
        for k, v in saved.items():
            setattr(config, k, v)
    return out


@section("state_groups")
def state_with_groups_on_device():
    """Compressed state with groups and LAMB on the device, 1e7 and 1e8, per step (CUDA
    events): AdamW on 8-bit state plain vs 10 groups (two kernels: with and without weight
    decay) in one launch, and float32 state with the same groups; LAMB over 10 equal tensors
    with float32, bfloat16 and 8-bit state."""
    from fastopt.loopbench import _even_groups
    out = {}
    for n in (10_000_000, 100_000_000):
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        groups = _even_groups(n)
        kw = dict(decoupled_weight_decay=True)
        row = {}
        for label, opts, grp in (("AdamW 8-bit", dict(state_dtype="int8"), None),
                                 ("AdamW 8-bit, 10 groups", dict(state_dtype="int8"), groups),
                                 ("AdamW float32, 10 groups", {}, groups)):
            b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy(), **opts))
            row[label] = event_time(lambda: fastopt.adam_step(b, groups=grp, **kw),
                                    reps_for(n))
        layout = [n // 10] * 9 + [n - 9 * (n // 10)]
        for label, opts in (("LAMB float32 state, 10 tensors", {}),
                            ("LAMB bfloat16 state, 10 tensors", dict(state_dtype="bfloat16")),
                            ("LAMB 8-bit state, 10 tensors", dict(state_dtype="int8"))):
            b = fastopt.to_device(fastopt.LAMBBuffers.zeros(p.copy(), g.copy(), **opts))
            row[label] = event_time(lambda: fastopt.lamb_step(b, layout=layout,
                                                              weight_decay=0.01), reps_for(n))
        out[n] = row
        print(f"n={n}: " + ", ".join(f"{k} {us(v)}" for k, v in row.items()), flush=True)
    return out


@section("lamb")
def lamb_on_device(n=10_000_000):
    """Steps over many tensors or groups on the device, at 1e7 elements: LAMB float32 in 1, 10
    and 100 equal tensors (its per-tensor pre-pass), Adam plain and with 10 and 40 groups of
    distinct learning rates (40: rows of scalars in a device array), and with 10 groups on
    bfloat16 state; per step on the GPU's
    timeline (CUDA events) and the host's time per call (calls issued back to back, the clock
    read before the final synchronization: above the event time, the host is the limit), and
    a host profile of LAMB over 10 tensors and of Adam with 40 groups."""
    import cProfile
    import io
    import pstats
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    out = {}

    def profile(fn, steps=20):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            fn()
        cuda.synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
        return text.getvalue()

    cases = {}
    b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
    cases["adam"] = (lambda b=b: fastopt.adam_step(b))
    for k in (10, 40):
        groups = distinct_lr_groups(n, k)
        b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
        cases[f"adam, {k} groups of distinct lr"] = (
            lambda b=b, groups=groups: fastopt.adam_step(b, groups=groups))
    b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy(),
                                                    state_dtype="bfloat16"))
    groups10 = cases["adam, 10 groups of distinct lr"].__defaults__[1]
    cases["adam, bfloat16 state, 10 groups"] = (
        lambda b=b: fastopt.adam_step(b, groups=groups10))
    for tensors in (1, 10, 100):
        layout = [n // tensors] * (tensors - 1) + [n - (tensors - 1) * (n // tensors)]
        b = fastopt.to_device(fastopt.LAMBBuffers.zeros(p.copy(), g.copy()))
        cases[f"lamb, {tensors} tensors"] = (
            lambda b=b, layout=layout: fastopt.lamb_step(b, layout=layout, weight_decay=0.01))
    for name in ("adam, 10 groups of distinct lr", "lamb, 10 tensors"):
        step = cases[name].__defaults__      # (fresh buffers: a runner keeps its row mode)
        if name.startswith("adam"):
            b = fastopt.to_device(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
            cases[name + ", rows in array"] = rows_in_array(
                lambda b=b, groups=step[1]: fastopt.adam_step(b, groups=groups))
        else:
            b = fastopt.to_device(fastopt.LAMBBuffers.zeros(p.copy(), g.copy()))
            cases[name + ", rows in array"] = rows_in_array(
                lambda b=b, layout=step[1]: fastopt.lamb_step(b, layout=layout,
                                                              weight_decay=0.01))
    for name, fn in cases.items():
        reps = reps_for(n)
        ev = event_time(fn, reps)
        host = host_time(fn, reps)
        out[name] = {"event_s": ev, "host_s": host}
        print(f"{name:48s} GPU timeline {us(ev)}, host per call {us(host)}", flush=True)
    for name in ("lamb, 10 tensors", "adam, 40 groups of distinct lr"):
        text = profile(cases[name])
        out[f"profile: {name}"] = text
        print(f"-- profile, 20 steps: {name}")
        print("\n".join(line[:150] for line in text.splitlines()[:20]), flush=True)
    return out


def _all_bits(b):
    """Device buffers ``b``'s arrays and 8-bit scales on the host (name -> array)."""
    out = {k: np.asarray(v.copy_to_host()) for k, v in b.arrays().items() if v.size}
    out.update({"scale " + k: np.asarray(v.copy_to_host())
                for k, v in (getattr(b, "state_absmax", None) or {}).items()})
    return out


def _split_bits(bits, cut, block):
    """``bits`` (:func:`_all_bits`) cut at element ``cut``: (frozen part, stepped part); a
    scale array is cut at block ``cut // block``."""
    def at(k):
        return cut // block if k.startswith("scale ") else cut
    return ({k: v[:at(k)] for k, v in bits.items()}, {k: v[at(k):] for k, v in bits.items()})


def _same(a, b):
    return a.keys() == b.keys() and all(
        np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)) for k in a)


def _frontend_run(device, steps=4):
    """fastopt.torch.Adam over the MLP's parameters on ``device`` with gradients set from a
    NumPy generator (the same on every device); the first layer (weight, bias) has no
    gradient after the first step, so it rests in a frozen group. Returns the parameters
    after the first step and at the end (NumPy)."""
    import fastopt.torch as ft
    model = B.torch_mlp(torch.float32, device)
    opt = ft.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(1)
    first = None
    for s in range(steps):
        for i, q in enumerate(model.parameters()):
            draw = rng.standard_normal(tuple(q.shape)).astype(np.float32)
            q.grad = None if s and i < 2 else torch.tensor(draw, device=device)
        opt.step()
        if first is None:
            first = [q.detach().cpu().numpy().copy() for q in model.parameters()]
    return first, [q.detach().cpu().numpy() for q in model.parameters()]


@section("frozen")
def frozen_on_device(n=100_000_000, share=0.7, steps=3):
    """Frozen groups on the device (``{"frozen": True}``): Adam with float32 and 8-bit state at
    ``n`` elements whose first ``share`` (cut on a quantization block's boundary) is frozen,
    against the rest stepped alone and the whole buffer stepped: GPU time per step (the
    kernels' own, :func:`gpu_time`) and, after ``steps`` steps, the bits (the stepped part
    equals the rest stepped alone, parameters, state, codes and scales; the frozen part is
    unchanged). Then fastopt.torch.Adam on the GPU with a resting layer: its bits kept and the
    others against the same run on the CPU (ulp), and ``mlp-frozen-late`` (the MLP's first
    layer frozen after a first step) vs the whole MLP and torch's fused Adam, per step (CUDA
    events, host included: at this size the host is the limit)."""
    out = {}
    block = 256
    cut = int(n * share) // block * block
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    frozen = fastopt.Groups(n, [{"range": (0, cut), "frozen": True}])
    for label, opts in (("float32 state", {}),
                        ("8-bit state", dict(state_dtype="int8", block_size=block,
                                             min_8bit_size=0))):
        def make(lo=0):
            return fastopt.to_device(fastopt.AdamBuffers.zeros(p[lo:].copy(), g[lo:].copy(),
                                                               **opts))
        part, alone = make(), make(cut)
        before = _split_bits(_all_bits(part), cut, block)[0]
        for _ in range(steps):
            fastopt.adam_step(part, groups=frozen)
            fastopt.adam_step(alone)
        kept, stepped = _split_bits(_all_bits(part), cut, block)
        row = {"frozen part unchanged": _same(kept, before),
               "stepped part == rest alone, bitwise": _same(stepped, _all_bits(alone))}
        whole, part = make(), make()
        reps = reps_for(n)
        row["whole buffer"] = gpu_time(lambda: fastopt.adam_step(whole), reps)
        row[f"first {share:.0%} frozen"] = gpu_time(
            lambda: fastopt.adam_step(part, groups=frozen), reps)
        row["the rest alone"] = gpu_time(lambda: fastopt.adam_step(alone), reps)
        out[label] = row
        print(f"n={n}, {label}: " + ", ".join(
            f"{k} {us(v) if isinstance(v, float) else v}" for k, v in row.items()), flush=True)

    gpu_first, gpu_last = _frontend_run(DEV)
    cpu_first, cpu_last = _frontend_run(torch.device("cpu"))
    row = {"resting layer kept (GPU)": all(np.array_equal(a, b) for a, b in
                                           zip(gpu_first[:2], gpu_last[:2])),
           "largest ulp, GPU vs CPU": max(_ulp(a, b) for a, b in zip(gpu_last, cpu_last))}
    for size in ("mlp", "mlp-frozen-late"):
        for mode in ("fastopt", "fused"):
            model = B.torch_mlp(torch.float32, DEV)
            x = torch.randn(128, B.BLOG_SIZES[0], device=DEV)
            y = torch.randint(0, B.BLOG_SIZES[-1], (128,), device=DEV)
            opt = B._torch_optimizer(mode, model)
            B._torch_ready(size, model, opt,
                           lambda: torch.nn.functional.cross_entropy(model(x), y))
            row[f"{size}, {mode}"] = event_time(opt.step, 200)
    out["fastopt.torch"] = row
    print("fastopt.torch on the GPU: " + ", ".join(
        f"{k} {us(v) if isinstance(v, float) else v}" for k, v in row.items()), flush=True)
    return out


SECTIONS = {"device": device_info, "adam": adam_vs_torch, "clip": clip_vs_torch,
            "every": every_optimizer, "pairs": pairs_vs_single, "pairs_host": pairs_host_bound,
            "bitwise": bitwise,
            "launch": launch_sweep,
            "host": host_profile, "groups": groups_on_device, "bf16": bf16_state_on_device,
            "state_groups": state_with_groups_on_device, "lamb": lamb_on_device,
            "layouts": wide_layouts,
            "paths": launch_paths, "frozen": frozen_on_device}


def main(out, names=tuple(SECTIONS)):
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    for name in names:
        SECTIONS[name]()
    REPORT["seconds"] = time.perf_counter() - t0
    path = os.path.join(out, "gpu_report.json")
    with open(path, "w") as f:
        json.dump(REPORT, f, indent=1, default=str)
    print(f"\nwrote {path} ({REPORT['seconds']:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/gpu",
         sys.argv[2].split(",") if len(sys.argv) > 2 else tuple(SECTIONS))
