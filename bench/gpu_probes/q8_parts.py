"""GPU probe: which part of the CUDA 8-bit kernel costs the time (Adam, 1e8, 8-bit state,
blocks of 256, 4 elements per thread). The kernel's generated source is edited per variant
(timing only; the edited kernels are not the step's arithmetic): no block absmax (each thread's
own maximum, no shared memory, no barrier), no table reads when quantizing (code = low bits of
the cell), no table read when dequantizing (value = code), all three, and the kernel as is.
Written for the generator of commit bec63ff (warp shuffles, two halves of the shared array);
its output then is in bench/figures/gpu_q8_h200.txt. The generator has changed since (one
atomic max per thread): the probe stops when an edit no longer changes the source.

    python bench/gpu_probes/q8_parts.py      (from the repository root; a CUDA GPU, torch)
"""
import os
import re
import sys

import numpy as np
import torch

import fastopt
from fastopt.kernels import cuda as ck
from fastopt.kernels import quant8

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gpu_report import gpu_time  # noqa: E402

SOURCE = quant8.cuda_source


def no_absmax(src):
    out, skip = [], False
    for line in src.splitlines():
        if line.startswith("        half = "):
            skip = True
        if line.startswith("        scale") and "sh[half" in line:
            skip = False
            j = re.match(r"\s+scale(\d+)", line).group(1)
            line = f"        scale{j} = float32(from_uint(uint32(v{j}m), float32(0)))"
        if not skip:
            out.append(line)
    return "\n".join(out) + "\n"


def no_quantize_tables(src):
    src = re.sub(r"base = int64\(f(\d+)\[cell\]\)", r"base = int64(cell & 255)", src)
    return re.sub(r"\(1 if d\d+\[base\] < x else 0\)", "0", src)


def no_dequantize_table(src):
    return re.sub(r"v(\d+)\[c(\d+)\[i\]\]", r"float32(c\2[i])", src)


def every_edit(src):
    return no_dequantize_table(no_quantize_tables(no_absmax(src)))


def step_time(host_buffers):
    b = fastopt.to_device(host_buffers)
    return gpu_time(lambda: fastopt.adam_step(b), 20)


def main():
    print(torch.cuda.get_device_name(), flush=True)
    n = 100_000_000
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    base = step_time(fastopt.AdamBuffers.zeros(p.copy(), g.copy()))
    print(f"float32 state {base * 1e6:9.1f} us", flush=True)
    edits = (("as is", None), ("no block absmax", no_absmax),
             ("no quantize tables", no_quantize_tables),
             ("no dequantize table", no_dequantize_table), ("all three edits", every_edit))
    sample = SOURCE(5, (False, False, True, True, False), "float32", True, 0, 4, False)
    for label, edit in edits[1:]:
        if edit(sample) == sample:
            raise SystemExit(f"the edit '{label}' does not apply to this generator "
                             "(written for bec63ff's)")
    for label, edit in edits:
        quant8.cuda_source = (SOURCE if edit is None
                              else lambda *a, _e=edit, **k: _e(SOURCE(*a, **k)))
        ck._compiled.clear()
        t = step_time(fastopt.AdamBuffers.zeros(p.copy(), g.copy(), state_dtype="int8"))
        print(f"8-bit, {label:22s} {t * 1e6:9.1f} us ({base / t:.2f}x float32 state)",
              flush=True)
    quant8.cuda_source = SOURCE


if __name__ == "__main__":
    main()
