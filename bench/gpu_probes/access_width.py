"""GPU probe: (a) why fastopt's Adam kernel took ~860 us at 1e8 while a hand kernel of nearly
the same PTX (``ilp.py``'s ``k1``) took ~780 us: the same kernels on the same two sets of
arrays, GPU time only (fastopt's kernel compiled exact and contracted); (b) wider accesses in
hand kernels: 2 float32 per thread (64-bit loads), bfloat16 state 2 or 4 per thread, with
their bits checked against one element per thread.

    python bench/gpu_probes/access_width.py     (from the repository root; a CUDA GPU, torch)

This probe led to ``config.CUDA_PAIRS``; output in bench/figures/gpu_pairs_h200.txt."""
import math
import os
import sys

import numpy as np
import torch
from numba import cuda
from numba.cuda import libdevice as ld

import fastopt
from fastopt import registry
from fastopt.kernels import cuda as ck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ilp import B1, B2, EPS, enc, ev, k1, kb1, upd  # noqa: E402

U32 = np.uint32


@cuda.jit(device=True, inline=True)
def lo32(x):
    return ld.int_as_float(np.int32(np.uint32(x & np.uint64(0xFFFFFFFF))))


@cuda.jit(device=True, inline=True)
def hi32(x):
    return ld.int_as_float(np.int32(np.uint32(x >> np.uint64(32))))


@cuda.jit(device=True, inline=True)
def pack2(a, b):
    return (np.uint64(np.uint32(ld.float_as_int(a)))
            | (np.uint64(np.uint32(ld.float_as_int(b))) << np.uint64(32)))


@cuda.jit(device=True, inline=True)
def dec_lo(x):
    return ld.int_as_float(np.int32((x & np.uint32(0xFFFF)) << np.uint32(16)))


@cuda.jit(device=True, inline=True)
def dec_hi(x):
    return ld.int_as_float(np.int32(x & np.uint32(0xFFFF0000)))


@cuda.jit(device=True, inline=True)
def enc2(a, b):
    return np.uint32(enc(a)) | (np.uint32(enc(b)) << np.uint32(16))


@cuda.jit
def f32v2(p, g, m, v, s):          # uint64 views: 2 float32 per load
    for j in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        P = p[j]; G = g[j]; M = m[j]; V = v[j]
        pa, ma, va = upd(lo32(P), lo32(G), lo32(M), lo32(V), s[0], s[1], s[2], s[3], s[4],
                         s[5], s[6])
        pb, mb, vb = upd(hi32(P), hi32(G), hi32(M), hi32(V), s[0], s[1], s[2], s[3], s[4],
                         s[5], s[6])
        p[j] = pack2(pa, pb); m[j] = pack2(ma, mb); v[j] = pack2(va, vb)


@cuda.jit
def bf16v2(p, g, m, v, s):         # p, g uint64 views; m, v uint32 views (2 bfloat16)
    for j in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        P = p[j]; G = g[j]; M = m[j]; V = v[j]
        pa, ma, va = upd(lo32(P), lo32(G), dec_lo(M), dec_lo(V), s[0], s[1], s[2], s[3], s[4],
                         s[5], s[6])
        pb, mb, vb = upd(hi32(P), hi32(G), dec_hi(M), dec_hi(V), s[0], s[1], s[2], s[3], s[4],
                         s[5], s[6])
        p[j] = pack2(pa, pb); m[j] = enc2(ma, mb); v[j] = enc2(va, vb)


@cuda.jit
def bf16v4(p, g, m, v, s):         # p, g uint64 views (2 loads each); m, v uint64 (4 bfloat16)
    for j in range(cuda.grid(1), m.shape[0], cuda.gridsize(1)):
        P0 = p[2 * j]; P1 = p[2 * j + 1]; G0 = g[2 * j]; G1 = g[2 * j + 1]
        M = m[j]; V = v[j]
        M0 = np.uint32(M & np.uint64(0xFFFFFFFF)); M1 = np.uint32(M >> np.uint64(32))
        V0 = np.uint32(V & np.uint64(0xFFFFFFFF)); V1 = np.uint32(V >> np.uint64(32))
        pa, ma, va = upd(lo32(P0), lo32(G0), dec_lo(M0), dec_lo(V0), s[0], s[1], s[2], s[3],
                         s[4], s[5], s[6])
        pb, mb, vb = upd(hi32(P0), hi32(G0), dec_hi(M0), dec_hi(V0), s[0], s[1], s[2], s[3],
                         s[4], s[5], s[6])
        pc, mc, vc = upd(lo32(P1), lo32(G1), dec_lo(M1), dec_lo(V1), s[0], s[1], s[2], s[3],
                         s[4], s[5], s[6])
        pd, md, vd = upd(hi32(P1), hi32(G1), dec_hi(M1), dec_hi(V1), s[0], s[1], s[2], s[3],
                         s[4], s[5], s[6])
        p[2 * j] = pack2(pa, pb); p[2 * j + 1] = pack2(pc, pd)
        m[j] = np.uint64(enc2(ma, mb)) | (np.uint64(enc2(mc, md)) << np.uint64(32))
        v[j] = np.uint64(enc2(va, vb)) | (np.uint64(enc2(vc, vd)) << np.uint64(32))


def section(title):
    print(f"\n--- {title}", flush=True)


def main():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(0), sms, "SMs", flush=True)
    spec = registry.get("adam")
    hp = spec.validate(dict(spec.defaults, lr=1e-3))
    opts = spec.options(hp, 2)
    sarr = cuda.to_device(np.array([1e-3 / (1 - B1), B1, 1 - B1, B2, 1 - B2,
                                    1 / math.sqrt(1 - B2), EPS], np.float32))
    packed = tuple(spec.kernel_scalars(hp, 2, np.float32))
    with ck.exact():
        kx = ck._kernel_jit(ck.python_kernel(spec.kernel, False, **opts))
    kc = ck._kernel_jit(ck.python_kernel(spec.kernel, False, **opts))   # contracted (FMA)
    ph = cuda.device_array(0, np.float32)
    for n in (10**8, 10**7):
        reps = 20 if n == 10**8 else 60
        blocks = min(math.ceil(n / 256), sms * 64)
        section(f"n = {n:.0e}: the same kernels on two sets of arrays (GPU time, us)")
        rng = np.random.default_rng(0)
        own = [cuda.to_device(rng.standard_normal(n).astype(np.float32)),
               cuda.to_device(rng.standard_normal(n).astype(np.float32)),
               cuda.to_device(np.zeros(n, np.float32)), cuda.to_device(np.zeros(n, np.float32))]
        gen = torch.Generator(device="cuda").manual_seed(0)
        tp = torch.randn(n, device="cuda", generator=gen)
        tg = torch.randn(n, device="cuda", generator=gen)
        b = fastopt.AdamBuffers.zeros(cuda.as_cuda_array(tp), cuda.as_cuda_array(tg))
        rep = [b.param, b.grad, b.exp_avg, b.exp_avg_sq]
        bo = fastopt.AdamBuffers(own[0], own[1], exp_avg=own[2], exp_avg_sq=own[3])
        for name, arrs in (("own arrays (cuda.to_device)", own),
                           ("report's buffers (torch p, g; zeros() state)", rep)):
            print("  ", name, [hex(a.__cuda_array_interface__["data"][0] % (1 << 21))
                               for a in arrs], flush=True)
            cases = {"hand kernel k1 (contracted, scalars in an array)":
                     lambda a=arrs: k1[blocks, 256](*a, sarr),
                     "fastopt kernel, exact, numba launch":
                     lambda a=arrs: kx[blocks, 256](a[0], a[1], a[2], a[3], ph, packed),
                     "fastopt kernel, contracted, numba launch":
                     lambda a=arrs: kc[blocks, 256](a[0], a[1], a[2], a[3], ph, packed)}
            bb = bo if arrs is own else b
            cases["fastopt.adam_step"] = lambda bb=bb: fastopt.adam_step(bb, lr=1e-3)
            for cname, fn in cases.items():
                try:
                    t = ev(fn, reps)
                    print(f"    {cname:48s} {t * 1e6:8.1f} us  {28 * n / t / 1e9:6.0f} GB/s",
                          flush=True)
                except Exception as e:
                    print(f"    {cname}: {type(e).__name__}: {e}", flush=True)
        section(f"n = {n:.0e}: wider accesses (own arrays; GPU time, us)")
        p64, g64 = own[0].view(np.uint64), own[1].view(np.uint64)
        m64, v64 = own[2].view(np.uint64), own[3].view(np.uint64)
        mb = cuda.to_device(np.zeros(n, np.uint16)); vb = cuda.to_device(np.zeros(n, np.uint16))
        b2 = min(math.ceil(n / 512), sms * 64)
        b4 = min(math.ceil(n / 1024), sms * 64)
        wide = {"f32, 1 per thread (k1)": (lambda: k1[blocks, 256](*own, sarr), 28),
                "f32, 2 per thread (64-bit loads)":
                (lambda: f32v2[b2, 256](p64, g64, m64, v64, sarr), 28),
                "bf16 state, 1 per thread (kb1)":
                (lambda: kb1[blocks, 256](own[0], own[1], mb, vb, sarr), 20),
                "bf16 state, 2 per thread (32-bit state loads)":
                (lambda: bf16v2[b2, 256](p64, g64, mb.view(np.uint32), vb.view(np.uint32),
                                         sarr), 20),
                "bf16 state, 4 per thread (64-bit loads)":
                (lambda: bf16v4[b4, 256](p64, g64, mb.view(np.uint64), vb.view(np.uint64),
                                         sarr), 20)}
        for cname, (fn, bpe) in wide.items():
            try:
                t = ev(fn, reps)
                print(f"    {cname:48s} {t * 1e6:8.1f} us  {bpe * n / t / 1e9:6.0f} GB/s",
                      flush=True)
            except Exception as e:
                print(f"    {cname}: {type(e).__name__}: {e}", flush=True)
        # the wide kernels compute what the narrow ones do: one step from one start, bits
        try:
            st0 = [a.copy_to_host() for a in own]
            outs = []
            for fn in (lambda: k1[blocks, 256](*own, sarr),
                       lambda: f32v2[b2, 256](p64, g64, m64, v64, sarr)):
                for a, h in zip(own, st0):
                    a.copy_to_device(h)
                fn(); cuda.synchronize()
                outs.append([a.copy_to_host() for a in own])
            print("    f32 2 per thread == 1 per thread:",
                  all(np.array_equal(x, y) for x, y in zip(*outs)), flush=True)
            outs = []
            for fn in (lambda: kb1[blocks, 256](own[0], own[1], mb, vb, sarr),
                       lambda: bf16v4[b4, 256](p64, g64, mb.view(np.uint64),
                                               vb.view(np.uint64), sarr)):
                own[0].copy_to_device(st0[0])
                mb.copy_to_device(np.full(n, 0x3F80, np.uint16))
                vb.copy_to_device(np.full(n, 0x3F00, np.uint16))
                fn(); cuda.synchronize()
                outs.append([own[0].copy_to_host(), mb.copy_to_host(), vb.copy_to_host()])
            print("    bf16 4 per thread == 1 per thread:",
                  all(np.array_equal(x, y) for x, y in zip(*outs)), flush=True)
        except Exception as e:
            print(f"    check: {type(e).__name__}: {e}", flush=True)
        own = rep = b = bo = tp = tg = mb = vb = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
