"""fastopt.torch on a CUDA device (issue 14): the torch MLP on the GPU trained with
fastopt.torch.X and with torch.optim.X (float64, 100 steps, two parameter groups and a
scheduler): the largest parameter difference; then the step time of fastopt.torch.Adam vs
torch.optim.Adam(fused=True) on the GPU at the MLP's size and at 1e7 (CUDA events, median of 5).

    python bench/gpu_torch_check.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastopt.torch as ft  # noqa: E402
from fastopt.benchmarks import torch_mlp  # noqa: E402
from gpu_report import event_time  # noqa: E402  (bench/, the script's own directory)

DEV = torch.device("cuda")


def mlp(dtype):
    return torch_mlp(dtype, DEV)


def train(cls, kw, dtype, steps=100):
    model = mlp(dtype)
    w = [p for n, p in model.named_parameters() if n.endswith("weight")]
    b = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = cls([{"params": w}, {"params": b, "lr": kw["lr"] * 0.5}], **kw)
    sched = torch.optim.lr_scheduler.StepLR(opt, 30, gamma=0.5)
    gen = torch.Generator(device=DEV).manual_seed(0)
    for _ in range(steps):
        x = torch.randn(128, 784, device=DEV, dtype=dtype, generator=gen)
        y = torch.randint(0, 10, (128,), device=DEV, generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model


def main():
    print("device:", torch.cuda.get_device_name(0))
    for name, kw in [("Adam", dict(lr=1e-3)), ("AdamW", dict(lr=1e-3, weight_decay=0.01)),
                     ("SGD", dict(lr=1e-2, momentum=0.9)), ("RMSprop", dict(lr=1e-3)),
                     ("Adagrad", dict(lr=1e-2)), ("NAdam", dict(lr=2e-3)),
                     ("RAdam", dict(lr=1e-3)), ("Adamax", dict(lr=2e-3)),
                     ("Adadelta", dict(lr=1.0))]:
        a = train(getattr(torch.optim, name), kw, torch.float64)
        b = train(getattr(ft, name), kw, torch.float64)
        d = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        print(f"  parity {name:8s} float64, 100 steps on the GPU: max |diff| {d:.1e}",
              flush=True)
    for label, model in (("MLP", mlp(torch.float32)),
                         ("1e7", torch.nn.Linear(1000, 10000).to(DEV))):
        times = {}
        for mode in ("fastopt", "fused", "foreach"):
            for p in model.parameters():
                p.grad = torch.randn_like(p)          # (fastopt: copied into its arena once)
            opt = (ft.Adam(model.parameters(), lr=1e-3) if mode == "fastopt" else
                   torch.optim.Adam(model.parameters(), lr=1e-3, **{mode: True}))
            times[mode] = event_time(opt.step, reps=100)
        print(f"  step {label}: " + "  ".join(f"{k} {v * 1e6:.1f} us" for k, v in
                                              times.items())
              + f"  | fastopt vs fused x{times['fused'] / times['fastopt']:.2f}", flush=True)


if __name__ == "__main__":
    main()
