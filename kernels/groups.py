"""A grouped step in one compiled call (CPU) or one launch (CUDA), for any kernel record.

A grouped step (``fastopt.Groups``) is a list of *segments*: element ranges, each with its row
of packed scalars (its group's hyperparameters) and its *kind*: the option combination its
hyperparameters select (``weight_decay=0`` in one group and ``0.01`` in another compile to two
kernels). Stepping each segment's slice with its own kernel gives, element for element, the
result the issue asks for ("bitwise equal to stepping each group's slice on its own"); the
drivers generated here do exactly that, without one Python call (or one launch) per segment:

* CPU (:func:`cpu_driver`): the work is cut on the host into *items* ``(lo, hi, row, kind)``
  (each segment cut at fixed chunk boundaries so that threads get equal shares), and a
  generated Numba function walks them, ``prange`` over chunks, calling the record's *serial*
  kernel of that kind on the slices, with row ``row`` of the scalar table. Elements are
  independent, so how the work is cut changes no bit.
* CUDA (:func:`python_cuda_driver`): one kernel whose thread blocks take *tiles*, the segments
  cut into pieces of about one block's share (:func:`cuda_tiles`, a small device array of
  ``(lo, hi, row, kind)``, uploaded once), and run the record's kernel body, compiled as a
  device function with a block-local loop, on each tile's slice; the rows of scalars travel
  by value with the launch as one flat tuple, or in a device array.

The drivers call kernels chosen at run time. The CPU driver (as ``kernels.quant8``'s block
driver) is compiled on first use and cached on disk through a generated source file named by
a hash of its source and of the kernels it calls (``kernels.decorators.compile_generated``).
"""
import threading

import numpy as np
from numba import prange

from .decorators import compile_generated


_drivers = {}
_lock = threading.Lock()


def _call_lines(n_arrays, n_kinds, indent, row, wrap=None):
    args = ", ".join((wrap[j] if wrap and wrap[j] else "{}").format(f"a{j}[lo:hi]")
                     for j in range(n_arrays))
    lines = []
    for k in range(n_kinds):
        if n_kinds == 1:
            lines.append(f"{indent}body0({args}, {row})")
            break
        lines.append(f"{indent}{'if' if k == 0 else 'elif'} kind == {k}:")
        lines.append(f"{indent}    body{k}({args}, {row})")
    return lines


def cpu_source(n_arrays, n_kinds, parallel):
    """The CPU driver's source: ``grouped(a0, .., table, items, starts)`` steps items
    ``starts[c] .. starts[c + 1] - 1`` of chunk ``c`` (``prange`` over chunks when
    ``parallel``); item ``i`` is ``items[i] = (lo, hi, row, kind)``."""
    params = ", ".join(f"a{j}" for j in range(n_arrays))
    lines = [f"def grouped({params}, table, items, starts):",
             f"    for c in {'prange' if parallel else 'range'}(starts.shape[0] - 1):",
             "        for it in range(starts[c], starts[c + 1]):",
             "            lo = items[it, 0]",
             "            hi = items[it, 1]",
             "            kind = items[it, 3]",
             *_call_lines(n_arrays, n_kinds, " " * 12, "table[items[it, 2]]")]
    return "\n".join(lines) + "\n"


def cpu_driver(bodies, n_arrays, parallel):
    """The compiled CPU driver around ``bodies`` (the record's serial kernels, one per kind)."""
    key = ("cpu", tuple(bodies), n_arrays, bool(parallel))
    fn = _drivers.get(key)
    if fn is None:
        with _lock:
            fn = _drivers.get(key)
            if fn is None:
                scope = dict(prange=prange, **{f"body{k}": b for k, b in enumerate(bodies)})
                src = cpu_source(n_arrays, len(bodies), parallel)
                fn = _drivers[key] = compile_generated(src, "grouped", scope, parallel,
                                                       bodies)
    return fn


ALIGN = 16      # chunk boundaries fall on multiples of 16 elements (64 bytes of float32)


def cpu_items(segments, kinds, n, chunks):
    """``(items, starts)`` for :func:`cpu_source`: ``segments`` ``((lo, hi, row), ...)`` in
    order covering ``[0, n)`` but for frozen elements (no item), ``kinds[s]`` segment ``s``'s
    kind, cut into ``chunks`` equal shares of the stepped elements at aligned boundaries (with
    no frozen elements: ``chunks`` equal aligned element ranges); ``starts[c]`` the first item
    of chunk ``c``."""
    total = sum(hi - lo for lo, hi, _ in segments)
    chunks = max(1, min(int(chunks), -(-total // ALIGN)))
    per = -(-(-(-total // chunks)) // ALIGN) * ALIGN
    # chunk c starts where the stepped elements before it reach c * per, rounded up to an
    # aligned element (within its segment)
    cuts, s, before = [0], 0, 0
    for c in range(1, chunks):
        want = c * per
        while s < len(segments) and before + segments[s][1] - segments[s][0] <= want:
            before += segments[s][1] - segments[s][0]
            s += 1
        if s == len(segments):
            cuts.append(n)
            continue
        lo, hi, _ = segments[s]
        cuts.append(min(hi, -(-(lo + want - before) // ALIGN) * ALIGN))
    cuts.append(n)
    items, starts = [], [0]
    s = 0
    for c in range(chunks):
        a, b = cuts[c], max(cuts[c], cuts[c + 1])
        while s < len(segments) and segments[s][1] <= a:
            s += 1
        j = s
        while j < len(segments) and segments[j][0] < b:
            lo, hi, row = segments[j]
            if min(hi, b) > max(lo, a):
                items.append((max(lo, a), min(hi, b), row, kinds[j]))
            j += 1
        starts.append(len(items))
    return (np.array(items, np.int64).reshape(-1, 4), np.array(starts, np.int64))


def cuda_source(n_arrays, n_kinds, bits=None, stochastic=False, copy=False):
    """The CUDA driver's source: ``grouped(a0, .., tiles, rows)``; each thread block takes
    tiles (``tiles``, a device array of rows ``(lo, hi, row, kind)``: the segments cut into
    pieces of about one block's share of the arena, :func:`cuda_tiles`) in a grid-stride loop
    over tiles, and runs the body of the tile's kind on the tile's slice, whose block-local
    loop gives each thread its elements, with the scalars ``(rows, row)``: ``rows`` is every
    row's scalars in one flat tuple passed by value with the launch, or a device array
    (:func:`row_unpack_source` takes the row out of it). (Before: every thread walked every
    segment with a grid-stride loop over it; a grid sized for the arena then mostly found no
    work in a small segment: 40 segments of 1e7 elements took 8.6x a plain step on an H100.)
    ``bits[j]``: array ``j`` holds bfloat16 state, passed to the body as a bfloat16 view
    (``view``, rounding from ``key`` and the element's index in the arena, ``offset + lo +
    i``); ``copy``: the parameter wrapped with its copy ``pc`` (``pcopy``: bfloat16 bits, or
    float16 bits with ``copy="float16"``); both then
    come before ``tiles``: ``grouped(a0, .., [pc,] key, offset, tiles, rows)``."""
    params = ", ".join(f"a{j}" for j in range(n_arrays))
    wrap = None
    if bits is not None or copy:
        wrap = [f"view({{}}, key, offset + lo, {bool(stochastic)!r})" if bits and bits[j]
                else None for j in range(n_arrays)]
        if copy:
            wrap[0] = f"pcopy({{}}, pc[lo:hi], {copy == 'float16'!r})"
        params += (", pc" if copy else "") + ", key, offset"
    lines = [f"def grouped({params}, tiles, rows):",
             "    for s in range(cuda.blockIdx.x, tiles.shape[0], cuda.gridDim.x):",
             "        lo = tiles[s, 0]",
             "        hi = tiles[s, 1]",
             "        kind = tiles[s, 3]",
             *_call_lines(n_arrays, n_kinds, " " * 8, "(rows, tiles[s, 2])", wrap)]
    return "\n".join(lines) + "\n"


def cuda_tiles(segments, n, blocks, threads):
    """The tiles of :func:`cuda_source` for ``segments`` ``((lo, hi, row, kind), ...)``
    covering ``[0, n)`` but for frozen elements (no tile): each segment cut from its start
    into tiles of one size, a multiple of ``threads``, about ``stepped / blocks`` elements (at
    least ``threads``; ``stepped`` the elements of the segments, ``n`` without frozen ones), so
    that ``blocks`` blocks get about one tile each. Elements are independent: how they are cut
    changes no bit."""
    stepped = sum(int(s[1]) - int(s[0]) for s in segments)
    tile = max(1, -(-(-(-stepped // max(1, blocks))) // threads)) * threads
    out = []
    for lo, hi, row, kind in segments:
        starts = np.arange(lo, hi, tile, dtype=np.int64)
        piece = np.empty((starts.size, 4), np.int64)
        piece[:, 0] = starts
        piece[:, 1] = np.minimum(starts + tile, hi)
        piece[:, 2] = row
        piece[:, 3] = kind
        out.append(piece)
    return np.concatenate(out) if out else np.empty((0, 4), np.int64)


def row_unpack_source(k, n_rows, array=False, factor=False):
    """``unpack(s)`` for the CUDA driver's bodies: ``s = (rows, r)``, the scalars of row ``r``
    (``k`` per row, ``n_rows`` rows) as a tuple. Each row is read with constant indices under
    a branch on ``r`` (indices computed at run time compiled, for Adam with two rows, to ~4x
    the PTX: a chain of selects per scalar). ``array``: ``rows`` is a 1-D device array (any
    number of rows, read at ``r * k + j``) instead of a tuple passed with the launch.
    ``factor``: ``s = ((rows, fac), r)``, and every row's scalars are followed by ``fac[0]``
    (a clipped step's gradient factor, left on the device)."""
    get = "s[0][0]" if factor else "s[0]"
    tail = "s[0][1][0], " if factor else ""
    if array:
        items = "".join(f"rows[base + {j}], " for j in range(k)) + tail
        return (f"def unpack(s):\n    rows = {get}\n    base = s[1] * {k}\n"
                f"    return ({items})\n")
    lines = ["def unpack(s):", f"    rows = {get}", "    r = s[1]"]
    for q in range(n_rows):
        items = "".join(f"rows[{q * k + j}], " for j in range(k)) + tail
        if q == n_rows - 1:
            lines.append(f"    return ({items})")
        else:
            lines.append(f"    if r == {q}:")
            lines.append(f"        return ({items})")
    return "\n".join(lines) + "\n"


def python_cuda_driver(device_bodies, n_arrays, bits=None, stochastic=False, copy=False,
                       **names):
    """The uncompiled CUDA driver around ``device_bodies`` (the record's kernel bodies
    compiled as CUDA device functions, one per kind); ``bits``, ``stochastic``, ``copy``: see
    :func:`cuda_source` (``names``: its ``view`` and ``pcopy``)."""
    from numba import cuda
    scope = dict(cuda=cuda, **names, **{f"body{k}": b for k, b in enumerate(device_bodies)})
    exec(compile(cuda_source(n_arrays, len(device_bodies), bits, stochastic, copy),
                 "<fastopt.kernels.groups cuda driver>", "exec"), scope)
    return scope["grouped"]
