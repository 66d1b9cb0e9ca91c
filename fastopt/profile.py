"""``python -m fastopt profile``: GPU-vs-CPU profile of every optimizer across sizes.

For each optimizer and size: the NumPy reference, the Numba CPU kernel, the CPU traffic-equal
kernel (the CPU's attainable speed for that traffic) and, when a real CUDA GPU is present, the
CUDA kernel alone (timed with CUDA events) and end to end (host -> device copies of parameter,
gradient and state, the step, and the copies back). Bandwidths are the optimizer's own traffic
(bytes per element x size / time); the GPU fraction is of the device's theoretical peak
bandwidth (from its memory clock and bus width attributes).
"""
import json
import os
import platform
import sys

import numpy as np

from . import benchmarks as B
from . import registry
from ._cuda_backend import cuda_available, simulator_active
from ._progress import progress

DEFAULT_SIZES = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)


def _available_memory():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def main(args):
    if simulator_active():
        print("fastopt profile: error: the CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1); "
              "its timings mean nothing, so profile refuses to time", file=sys.stderr)
        return 2
    names = (args.optimizers.split(",") if args.optimizers else list(registry.REGISTRY))
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        print(f"fastopt profile: error: unknown optimizer(s) {unknown}; choose from "
              f"{','.join(registry.REGISTRY)}", file=sys.stderr)
        return 2
    dtype = np.dtype(args.dtype).type
    sizes = args.sizes or list(DEFAULT_SIZES)
    budget = _available_memory() * 0.5
    # parameter, gradient, up to 3 state arrays, the reference's temporaries: ~10 arrays
    fits = [n for n in sizes if n * np.dtype(dtype).itemsize * 10 < budget]
    skipped = sorted(set(sizes) - set(fits))
    gpu = cuda_available()
    device, peak = None, None
    if gpu:
        from numba import cuda
        device = cuda.get_current_device().name
        device = device.decode() if isinstance(device, bytes) else device
        peak = peak_bandwidth_gbs()
        print(f"CUDA GPU: {device}, theoretical peak bandwidth {peak:.0f} GB/s")
    else:
        print("no CUDA GPU found: profiling the CPU only (GPU numbers are not measured)")
    if skipped:
        print(f"skipping sizes {skipped}: not enough free memory for them here")
    rows = []
    bar = progress(len(names) * len(fits), desc="profile", unit="case")
    try:
        for name in names:
            spec = registry.get(name)
            for n in fits:
                w = B.Workload(spec, n, dtype)
                bpe = w.bytes_per_element()
                row = {"optimizer": name, "size": n, "dtype": np.dtype(dtype).name,
                       "bytes_per_element": bpe}
                min_time = 0.1 if n < 10_000_000 else 0.3
                runners = [B.make_runner(impl, w) for impl in ("numpy", "cpu")]
                for runner in runners:
                    B.check_runner(runner)
                row["numpy_s"], row["cpu_s"], te_serial, te_parallel = B.time_interleaved(
                    [r.step for r in runners] + [B.traffic_runner(w, parallel=False),
                                                 B.traffic_runner(w, parallel=True)],
                    min_time=min_time, min_rounds=3)
                row["cpu_traffic_equal_s"] = min(te_serial, te_parallel)
                if gpu:
                    cu = profile_workload(w)
                    row["cuda_kernel_s"] = cu["kernel_s"]
                    row["cuda_end_to_end_s"] = cu["end_to_end_s"]
                for k in [k for k in row if k.endswith("_s")]:
                    row[k[:-2] + "_gbs"] = bpe * n / row[k] / 1e9
                row["cpu_fraction_of_traffic_equal"] = row["cpu_traffic_equal_s"] / row["cpu_s"]
                if gpu:
                    row["cuda_fraction_of_peak"] = row["cuda_kernel_gbs"] / peak
                    row["cuda_speedup_vs_cpu"] = row["cpu_s"] / row["cuda_kernel_s"]
                rows.append(row)
                bar.update(1)
    finally:
        bar.close()
    print(format_table(rows, gpu))
    os.makedirs(args.out, exist_ok=True)
    meta = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "gpu": device, "gpu_peak_gbs": peak, "skipped_sizes": skipped,
            "note": None if gpu else "no CUDA GPU found: GPU numbers not measured"}
    path = os.path.join(args.out, "profile.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {path}")
    png = plot(rows, os.path.join(args.out, "profile.png"), gpu)
    if png:
        print(f"wrote {png}")
    return 0


def format_table(rows, gpu):
    head = (f"{'optimizer':<9} {'size':>10} {'numpy':>10} {'cpu':>10} {'cpu GB/s':>9} "
            f"{'of traffic-eq':>13}")
    if gpu:
        head += f" {'cuda kernel':>11} {'GB/s':>7} {'of peak':>7} {'end-to-end':>10}"
    lines = [head]
    t = B.format_seconds
    for r in rows:
        line = (f"{r['optimizer']:<9} {r['size']:>10} {t(r['numpy_s']):>10} {t(r['cpu_s']):>10}"
                f" {r['cpu_gbs']:9.1f} {r['cpu_fraction_of_traffic_equal']:13.2f}")
        if gpu:
            line += (f" {t(r['cuda_kernel_s']):>11} {r['cuda_kernel_gbs']:7.0f} "
                     f"{r['cuda_fraction_of_peak']:7.2f} {t(r['cuda_end_to_end_s']):>10}")
        lines.append(line)
    return "\n".join(lines)


def plot(rows, path, gpu):
    panels = B.optimizer_panels(rows)
    if panels is None:
        return None
    plt, fig, axes, names = panels
    series = [("numpy_gbs", "NumPy reference"), ("cpu_gbs", "CPU (Numba)"),
              ("cpu_traffic_equal_gbs", "CPU traffic-equal")]
    if gpu:
        series += [("cuda_kernel_gbs", "CUDA kernel"), ("cuda_end_to_end_gbs",
                                                        "CUDA end-to-end")]
    for ax, name in zip(axes, names):
        sel = sorted((r for r in rows if r["optimizer"] == name), key=lambda r: r["size"])
        for key, label in series:
            ax.plot([r["size"] for r in sel], [r[key] for r in sel], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_title(name)
    if not gpu:
        fig.suptitle("no CUDA GPU found: CPU only", fontsize=9)
    return B.save_panels(plt, fig, axes, path)


def peak_bandwidth_gbs():
    """Theoretical peak memory bandwidth of the current device from its attributes
    (2 transfers per memory clock x bus width), in GB/s."""
    from ._cuda_backend import _gpu
    dev = _gpu().get_current_device()
    return 2 * dev.MEMORY_CLOCK_RATE * 1e3 * dev.GLOBAL_MEMORY_BUS_WIDTH / 8 / 1e9


def profile_workload(workload, repeats=20):
    """Kernel-only (CUDA events) and end-to-end (host -> device, step, device -> host)
    seconds of one step of ``workload`` on the current GPU."""
    from ._cuda_backend import _gpu, to_device
    cuda = _gpu()
    if simulator_active():
        raise RuntimeError("refusing to time under the CUDA simulator")
    host = B._FastoptRunner(workload, "cuda").b
    dev = to_device(host)
    fn = workload.spec.step_fn
    kw = dict(workload.kwargs)
    fn(dev, **kw)
    cuda.synchronize()
    start, stop = cuda.event(), cuda.event()
    start.record()
    for _ in range(repeats):
        fn(dev, **kw)
    stop.record()
    stop.synchronize()
    kernel_s = cuda.event_elapsed_time(start, stop) / 1e3 / repeats
    names = list(host.arrays())
    t0 = cuda.event()
    t1 = cuda.event()
    t0.record()
    for _ in range(max(1, repeats // 4)):
        for n in names:
            getattr(dev, n).copy_to_device(getattr(host, n))
        fn(dev, **kw)
        for n in names:
            if n != "grad":
                getattr(dev, n).copy_to_host(getattr(host, n))
    t1.record()
    t1.synchronize()
    e2e_s = cuda.event_elapsed_time(t0, t1) / 1e3 / max(1, repeats // 4)
    return {"kernel_s": kernel_s, "end_to_end_s": e2e_s}
