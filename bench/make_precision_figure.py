"""Draw ``bench/figures/bfloat16_error.png``: the relative error of rounding float32 values to
bfloat16 (fastopt's bfloat16 optimizer state), over six decades and as a histogram of Adam's
second moments; and ``bench/figures/int8_error.png``: the two dynamic maps of 8-bit state and
the error of Adam's state stored in 8 bits vs bfloat16. ``python bench/make_precision_figure.py``
(needs matplotlib)."""
import os

import matplotlib
import numpy as np

import fastopt
from fastopt.precision import from_bfloat16, to_bfloat16

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path=os.path.join(os.path.dirname(__file__), "figures", "bfloat16_error.png")):
    x = np.logspace(-3, 3, 200_001).astype(np.float32)
    rel = np.abs(from_bfloat16(to_bfloat16(x)).astype(np.float64) - x) / x
    # Adam's state after 200 steps on random gradients (float32 state), rounded to bfloat16
    rng = np.random.default_rng(0)
    b = fastopt.AdamBuffers.zeros(rng.standard_normal(100_000).astype(np.float32),
                                  np.zeros(100_000, np.float32))
    for _ in range(200):
        b.grad[...] = rng.standard_normal(100_000).astype(np.float32) * 1e-2
        fastopt.adam_step(b)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    # per bin of 100 neighbouring values: the largest and the mean error (a sawtooth: the
    # bound halves, relative to the value, across each binade)
    xb = x[:-1].reshape(-1, 100)[:, 50]
    a1.semilogx(xb, rel[:-1].reshape(-1, 100).max(axis=1), lw=0.8, color="C0",
                label="largest in each bin of 100 values")
    a1.semilogx(xb, rel[:-1].reshape(-1, 100).mean(axis=1), lw=0.8, color="C2",
                label="mean")
    a1.axhline(2.0 ** -8, color="C3", ls="--", lw=1,
               label="2^-8: the unit roundoff of an 8-bit significand")
    a1.set_xlabel("float32 value")
    a1.set_ylabel("relative rounding error")
    a1.set_title("float32 -> bfloat16, round to nearest even")
    a1.legend(fontsize=7, loc="lower right")
    for name, color in (("exp_avg", "C0"), ("exp_avg_sq", "C1")):
        v = getattr(b, name)
        v = v[v != 0]
        e = np.abs(from_bfloat16(to_bfloat16(v)).astype(np.float64) - v) / np.abs(v)
        a2.hist(e, bins=100, histtype="step", color=color,
                label=f"Adam {name}: median {np.median(e):.1e}, max {e.max():.1e}")
    a2.set_xlabel("relative error of the stored state")
    a2.set_ylabel("count")
    a2.set_title("Adam state after 200 steps (1e5 parameters)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}: max relative error {rel.max():.3e} (bound 2^-8 = {2.0 ** -8:.3e})")


def main_int8(path=os.path.join(os.path.dirname(__file__), "figures", "int8_error.png")):
    from fastopt import quantization as q
    rng = np.random.default_rng(0)
    n = 100_000
    b = fastopt.AdamBuffers.zeros(rng.standard_normal(n).astype(np.float32),
                                  np.zeros(n, np.float32))
    for _ in range(200):
        b.grad[...] = rng.standard_normal(n).astype(np.float32) * 1e-2
        fastopt.adam_step(b)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for qm, color, label in ((q.SIGNED, "C0", "signed map (first moments)"),
                             (q.UNSIGNED, "C1", "unsigned map (second moments)")):
        v = qm.values
        a1.semilogy(np.arange(256)[v > 0], v[v > 0], ".", ms=3, color=color, label=label)
    a1.set_xlabel("code")
    a1.set_ylabel("positive value (x block absmax)")
    a1.set_title("the dynamic maps: a decimal exponent, then a linear fraction")
    a1.legend(fontsize=8)
    for name, color in (("exp_avg", "C0"), ("exp_avg_sq", "C1")):
        v = getattr(b, name)
        qm = q.qmap_for(b.spec.kernel, name)
        codes, scales = q.quantize(v, q.DEFAULT_BLOCK, qm)
        back = q.dequantize(codes, scales, q.DEFAULT_BLOCK, qm)
        keep = v != 0
        e8 = np.abs(back[keep].astype(np.float64) - v[keep]) / np.abs(v[keep])
        eb = np.abs(from_bfloat16(to_bfloat16(v[keep])).astype(np.float64) - v[keep]) / \
            np.abs(v[keep])
        bins = np.logspace(-9, 1, 120)
        a2.hist(np.maximum(e8, 1e-9), bins=bins, histtype="step", color=color,
                label=f"{name}, 8-bit: median {np.median(e8):.1e}")
        a2.hist(np.maximum(eb, 1e-9), bins=bins, histtype="step", color=color, ls=":",
                label=f"{name}, bfloat16: median {np.median(eb):.1e}")
    a2.set_xscale("log")
    a2.set_xlabel("relative error of the stored state")
    a2.set_ylabel("count")
    a2.set_title("Adam state after 200 steps, blocks of 256")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
    main_int8()
