"""Draw ``bench/figures/bfloat16_error.png``: the relative error of rounding float32 values to
bfloat16 (fastopt's bfloat16 optimizer state), over six decades and as a histogram of Adam's
second moments. ``python bench/make_precision_figure.py`` (needs matplotlib)."""
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


if __name__ == "__main__":
    main()
