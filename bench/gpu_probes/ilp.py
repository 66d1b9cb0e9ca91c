"""GPU probe (hand-written kernels, not fastopt's): does more memory-level parallelism per
thread speed up Adam? float32 state and bfloat16 state (uint16 bits), one element per
grid-stride iteration vs ILP elements per thread (strided by the grid) whose loads are all
issued before any store, at 8, 16 and 64 blocks per SM; torch's fused Adam beside them.

    python bench/gpu_probes/ilp.py          (a CUDA GPU, torch; output in
                                            bench/figures/gpu_pairs_h200.txt)

Times are the GPU's alone: a ~20 ms sleep kernel first, so the host has queued every launch
before the first event."""
import math
import numpy as np
import torch
from numba import cuda
from numba.cuda import libdevice as ld

DEV = torch.device("cuda")
B1, B2, LR, EPS = 0.9, 0.999, 1e-3, 1e-8


def ev(fn, reps, warm=3, repeats=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(int(4e7))     # ~20 ms of GPU time: the launches queue behind it
        s.record()
        for _ in range(reps):
            fn()
        e.record(); torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / 1e3 / reps)
    return float(np.median(out))


@cuda.jit(device=True, inline=True)
def upd(p, g, m, v, ss, b1, omb1, b2, omb2, rb, eps):
    m = b1 * m + omb1 * g
    v = b2 * v + omb2 * (g * g)
    p = p - ss * (m / (math.sqrt(v) * rb + eps))
    return p, m, v


@cuda.jit(device=True, inline=True)
def dec(b):
    return ld.int_as_float(np.int32(np.uint32(b) << np.uint32(16)))


@cuda.jit(device=True, inline=True)
def enc(x):
    u = np.uint32(ld.float_as_int(x))
    u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return np.uint16(u >> np.uint32(16))


@cuda.jit
def k1(p, g, m, v, s):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        pn, mn, vn = upd(p[i], g[i], m[i], v[i], s[0], s[1], s[2], s[3], s[4], s[5], s[6])
        p[i] = pn; m[i] = mn; v[i] = vn


def make_ilp(K, bf16):
    src = ["def k(p, g, m, v, s):",
           "    st = cuda.gridsize(1)",
           "    n = p.shape[0]",
           f"    for base in range(cuda.grid(1), n, st * {K}):"]
    for k in range(K):
        src.append(f"        i{k} = base + {k} * st")
    # loads, guarded (a missing element reads index base, harmless: not stored)
    for k in range(K):
        src.append(f"        j{k} = i{k} if i{k} < n else base")
        src.append(f"        p{k} = p[j{k}]; g{k} = g[j{k}]")
        if bf16:
            src.append(f"        m{k} = dec(m[j{k}]); v{k} = dec(v[j{k}])")
        else:
            src.append(f"        m{k} = m[j{k}]; v{k} = v[j{k}]")
    for k in range(K):
        src.append(f"        p{k}, m{k}, v{k} = upd(p{k}, g{k}, m{k}, v{k}, s[0], s[1], s[2], "
                   "s[3], s[4], s[5], s[6])")
    for k in range(K):
        src.append(f"        if i{k} < n:")
        if bf16:
            src.append(f"            p[i{k}] = p{k}; m[i{k}] = enc(m{k}); v[i{k}] = enc(v{k})")
        else:
            src.append(f"            p[i{k}] = p{k}; m[i{k}] = m{k}; v[i{k}] = v{k}")
    ns = {"cuda": cuda, "upd": upd, "dec": dec, "enc": enc, "np": np}
    exec("\n".join(src), ns)
    return cuda.jit(ns["k"])


@cuda.jit
def kb1(p, g, m, v, s):
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        pn, mn, vn = upd(p[i], g[i], dec(m[i]), dec(v[i]), s[0], s[1], s[2], s[3], s[4], s[5],
                         s[6])
        p[i] = pn; m[i] = enc(mn); v[i] = enc(vn)


def main():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(0), sms, "SMs", flush=True)
    s = cuda.to_device(np.array([LR / (1 - B1), B1, 1 - B1, B2, 1 - B2,
                                 1 / math.sqrt(1 - B2), EPS], np.float32))
    res = {}
    for n in (10**7, 10**8):
        reps = 60 if n == 10**7 else 20
        p = cuda.to_device(np.random.default_rng(0).standard_normal(n).astype(np.float32))
        g = cuda.to_device(np.random.default_rng(1).standard_normal(n).astype(np.float32))
        m = cuda.to_device(np.zeros(n, np.float32)); v = cuda.to_device(np.zeros(n, np.float32))
        mb = cuda.to_device(np.zeros(n, np.uint16)); vb = cuda.to_device(np.zeros(n, np.uint16))
        cases = {}
        for bpsm in (8, 16, 64):
            blocks = min(math.ceil(n / 256), sms * bpsm)
            cases[f"f32 ILP1 bpsm{bpsm}"] = (k1, blocks, (p, g, m, v))
            cases[f"bf16 ILP1 bpsm{bpsm}"] = (kb1, blocks, (p, g, mb, vb))
            for K in (2, 4, 8):
                cases[f"f32 ILP{K} bpsm{bpsm}"] = (make_ilp(K, False), blocks, (p, g, m, v))
                cases[f"bf16 ILP{K} bpsm{bpsm}"] = (make_ilp(K, True), blocks, (p, g, mb, vb))
        for name, (k, blocks, arrs) in cases.items():
            # launch through a prepared closure (numba's launch overhead is the same for all)
            kk = k[blocks, 256]
            t = ev(lambda: kk(*arrs, s), reps)
            byt = n * (28 if name.startswith("f32") else 20)
            res[(n, name)] = t
            print(f"n={n:.0e} {name:22s} {t*1e6:8.1f} us  {byt/t/1e9:7.0f} GB/s", flush=True)
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        tp = torch.from_numpy(x).to(DEV)
        tp = torch.nn.Parameter(tp); tp.grad = torch.randn(n, device=DEV)
        opt = torch.optim.Adam([tp], lr=LR, fused=True)
        t = ev(opt.step, reps)
        print(f"n={n:.0e} torch fused Adam        {t*1e6:8.1f} us  {n*28/t/1e9:7.0f} GB/s",
              flush=True)
        del p, g, m, v, mb, vb


if __name__ == "__main__":
    main()
