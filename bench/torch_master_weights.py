"""fastopt.torch with ``master_weights=True``: what the float32 masters keep, and what the step
costs, on bfloat16 parameters (2 threads).

    python bench/torch_master_weights.py [n] [rounds]      (defaults 1e7, 15)
    python bench/torch_master_weights.py curves [iters] [lr]  (defaults 1500, 1e-4)

1. *Accuracy*: 100 AdamW steps (lr 1e-4, weight decay 0.01) of 100,000 bfloat16 parameters
   drawn from N(0, 1), with random gradients rounded to bfloat16: the share of elements that
   moved from their start, and the share equal to a float32 run of torch's AdamW from the same
   start on the same gradients, rounded to bfloat16 (what exact float32 training would
   give a bfloat16 model). torch's fused AdamW on the bfloat16 parameters (no masters: every
   step rounds the parameters, so updates below half a bfloat16 step are lost) against
   fastopt.torch.AdamW with masters.
2. *Cost*: one ``opt.step()`` over ``n`` parameters in two tensors (gradients set once), every
   case timed in interleaved rounds: fastopt on a float32 model (the base of the ratios),
   fastopt on a bfloat16 model with float32 masters (float32, bfloat16 and 8-bit state),
   torch's fused AdamW on the bfloat16 parameters (no masters), and torch's fused AdamW on
   float32 masters kept by hand (the gradients copied in, the parameters copied out).
3. *Training* (``curves``): the torch MLP 784-100-100-100-100-10 on the embedded MNIST sample
   (10,000 training images, batch 128, the same batches for all), AdamW at a fine-tuning
   learning rate, as a float32 model (fastopt.torch), a bfloat16 model with torch's fused
   AdamW (no masters) and a bfloat16 model with fastopt's masters: the training loss (every
   iteration, smoothed over 50 in the figure) and the test accuracy on the sample's 2,000 test
   images; writes ``bench/figures/torch_master_weights.png``.
"""
import sys

import numpy as np
import torch

import fastopt.torch as ft
from fastopt.benchmarks import TorchMasters, interleaved_rounds


def accuracy(n=100_000, steps=100):
    torch.manual_seed(0)
    start = torch.randn(n).bfloat16().float()
    grads = [torch.randn(n).bfloat16() for _ in range(steps)]
    runs = {}
    for kind in ("float32", "torch fused AdamW, bfloat16", "fastopt AdamW, masters"):
        if kind == "float32":
            p = torch.nn.Parameter(start.clone())
            opt = torch.optim.AdamW([p], lr=1e-4)
        elif kind.startswith("torch"):
            p = torch.nn.Parameter(start.bfloat16())
            opt = torch.optim.AdamW([p], lr=1e-4, fused=True)
        else:
            p = torch.nn.Parameter(start.bfloat16())
            opt = ft.AdamW([p], lr=1e-4, master_weights=True)
        for g in grads:
            opt.zero_grad()
            p.grad = g.to(p.dtype)
            opt.step()
        runs[kind] = p.detach().float()
    exact = runs.pop("float32").bfloat16().float()
    print(f"{steps} AdamW steps, lr 1e-4, {n} bfloat16 parameters; the float32 run rounded "
          f"to bfloat16 moved {float((exact != start).float().mean()):.1%} of them")
    for kind, q in runs.items():
        print(f"  {kind:28s} moved {float((q != start).float().mean()):6.1%}, equal to the "
              f"float32 run rounded: {float((q == exact).float().mean()):7.3%}")


def cost(n=10_000_000, rounds=15):
    torch.set_num_threads(2)
    sizes = (n * 3 // 5, n - n * 3 // 5)
    torch.manual_seed(0)

    def params(dtype):
        ps = [torch.nn.Parameter(torch.randn(k).to(dtype)) for k in sizes]
        for p in ps:
            p.grad = (torch.randn(p.shape) * 1e-3).to(dtype)
        return ps

    low = torch.bfloat16
    cases = {
        "fastopt, float32 model": ft.AdamW(params(torch.float32), lr=1e-4).step,
        "fastopt, masters": ft.AdamW(params(low), lr=1e-4, master_weights=True).step,
        "fastopt, masters, bfloat16 state": ft.AdamW(params(low), lr=1e-4, master_weights=True,
                                                     state_dtype="bfloat16").step,
        "fastopt, masters, 8-bit state": ft.AdamW(params(low), lr=1e-4, master_weights=True,
                                                  state_dtype="int8").step,
        "torch fused, bfloat16 (no masters)": torch.optim.AdamW(params(low), lr=1e-4,
                                                                fused=True).step,
    }
    cases["torch fused, masters by hand"] = TorchMasters(params(low), torch.optim.AdamW,
                                                         lr=1e-4, fused=True).step
    times = interleaved_rounds(list(cases.values()), 0, rounds)
    base = np.array(times[0])
    print(f"opt.step(), {n} parameters in two tensors, 2 threads, {rounds} interleaved rounds "
          f"(medians; ratio: median of per-round ratios to the first row)")
    for name, t in zip(cases, times):
        print(f"  {name:36s} {np.median(t) * 1e3:8.3f} ms  "
              f"{np.median(np.array(t) / base):.2f}x")


def curves(iters=1500, lr=1e-4):
    import os

    from fastopt.benchmarks import torch_mlp
    from fastopt.datasets.mnist import load_sample
    torch.set_num_threads(2)
    data = load_sample()
    x = torch.from_numpy(data["train_images"].reshape(-1, 784).astype(np.float32) / 255.0)
    t = torch.from_numpy(data["train_labels"].astype(np.int64))
    xt = torch.from_numpy(data["test_images"].reshape(-1, 784).astype(np.float32) / 255.0)
    tt = torch.from_numpy(data["test_labels"].astype(np.int64))
    order = np.random.default_rng(0).integers(0, x.shape[0], size=(iters, 128))
    runs = {}
    for name, dtype, make in (
            ("float32 model, fastopt AdamW", torch.float32,
             lambda ps: ft.AdamW(ps, lr=lr)),
            ("bfloat16 model, torch fused AdamW (no masters)", torch.bfloat16,
             lambda ps: torch.optim.AdamW(ps, lr=lr, fused=True)),
            ("bfloat16 model, fastopt AdamW with masters", torch.bfloat16,
             lambda ps: ft.AdamW(ps, lr=lr, master_weights=True))):
        model = torch_mlp(dtype)
        opt = make(model.parameters())
        losses = []
        for i in range(iters):
            idx = torch.from_numpy(order[i])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx].to(dtype)).float(), t[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            acc = float((model(xt.to(dtype)).argmax(1) == tt).float().mean())
        runs[name] = (losses, acc)
        print(f"{name:48s} loss over the last 100 iterations {np.mean(losses[-100:]):.4f}, "
              f"test accuracy {acc:.2%}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    w = 50
    for name, (losses, acc) in runs.items():
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        style = dict(color="black", linestyle="--", zorder=3) if "float32" in name else {}
        ax.plot(np.arange(w, len(losses) + 1), smooth, label=f"{name} (test {acc:.1%})",
                **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"training loss (mean of {w})")
    ax.set_title(f"torch MLP on the MNIST sample, AdamW lr {lr:g}, batch 128")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = os.path.join(os.path.dirname(__file__), "figures", "torch_master_weights.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["curves"]:
        curves(int(args[1]) if len(args) > 1 else 1500, float(args[2]) if len(args) > 2
               else 1e-4)
        sys.exit(0)
    accuracy()
    cost(int(float(args[0])) if args else 10_000_000, int(args[1]) if len(args) > 1 else 15)
