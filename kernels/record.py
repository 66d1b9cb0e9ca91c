"""The kernel record: everything the compile machinery needs to know about one optimizer.

A :class:`KernelRecord` names the optimizer's per-element function (``elem``), its kernel body
factory (``body``), the arrays the kernel takes (``arrays``, in the body's order) and the
*names* of its scalars (``scalars``). ``kernels.cpu`` and ``kernels.cuda`` build every kernel
from records; nothing else in ``kernels/`` names an optimizer.

Conventions (checked by :meth:`KernelRecord.check`, once, when the first kernel of the record
is built, so that a mismatch is an error, never a silent reordering):

* ``elem(<one value per array>, <the scalars, by name, in any order>, <the options>)`` returns
  the new values; its option parameters are exactly the body factory's parameters, in order;
* ``body(**options)`` returns ``kernel(<arrays...>, s)``; the kernel unpacks ``s`` with
  ``sc = unpack(s)`` before its loop and calls ``elem(<values>, sc, <options>)``. ``elem``,
  ``loop`` and ``unpack`` are bound per target by ``kernels.decorators.bind``: ``elem`` is an
  *adapter* generated here that takes the scalars as one tuple ``sc`` (in the record's order,
  which is also the order the host packs them in) and passes each to the per-element function
  under its parameter name;
* the body writes ``elem``'s values, in order, to its arrays other than the gradient (values
  past those are written nowhere) and passes array values to ``elem`` unchanged: the CUDA
  kernels on words of two elements (``kernels.cuda.pair_source``) run the same body on words
  and pack each value for the array it goes to (``tests/cuda_sim`` checks every record);
* every scalar already has the buffer dtype (the host computes derived scalars in float64 and
  rounds them once), so no float64 literal enters a float32 kernel;
* optionally, ``norm_arrays`` (array names) and ``norms`` (the positions of some of
  ``elem``'s return values): the arrays and values whose squares a read-only *pre-pass* sums
  per segment (in float64, in a fixed order: ``kernels.reductions``)
  before the update pass, and ``norm_names`` what they are; the optimizer's spec turns the
  sums into the update's scalars (``OptimizerSpec.segment_scalars``: LAMB's per-tensor trust
  ratio). The pre-pass runs the same ``elem`` (so the update and the norms see the same
  values), keeps those values and writes nothing. Its adapter takes ``(arrays, i, sc)``: the
  tuple of the kernel's arrays, the element index and the packed scalars;
* ``nonnegative``: the state arrays whose values are never negative (second moments, sums of
  squares); 8-bit state stores them with the unsigned dynamic map, twice the resolution
  (``fastopt.quantization``).
"""
import dataclasses
import inspect

import numpy as np


# ``scaled`` of a kernel whose gradient factor stays on the device (a clipped CUDA step's, read
# from a one-element array after the scalars, ``kernels.cuda``), where ``True`` passes it as the
# last packed scalar and ``False`` has none
DEVICE_FACTOR = "device"


def copy_kind(copy):
    """A kernel's param copy, normalized (part of its cache key): False (none), True (bfloat16
    bits) or ``"float16"`` (float16 bits)."""
    return "float16" if copy == "float16" else bool(copy)


# a float32 parameter's gradient may also come in low precision, read widened (exactly) to
# float32 by every step (the CPU kernels through a 16-bit view, ``kernels.precision``):
# bfloat16 (uint16 bit patterns, as bfloat16 state) or float16
LOW_GRAD_DTYPES = (np.dtype(np.uint16), np.dtype(np.float16))


def low_grad_name(dtype):
    """``"bfloat16"`` or ``"float16"``: what a gradient of :data:`LOW_GRAD_DTYPES` holds."""
    return "bfloat16" if np.dtype(dtype) == np.uint16 else "float16"


def param_copy_kind(copy):
    """The :func:`copy_kind` of a param copy array (host or device): False (no copy), True
    (bfloat16 bits, ``uint16``) or ``"float16"`` (passed to the kernels as its ``uint16``
    bits)."""
    if copy is None:
        return False
    return "float16" if np.dtype(copy.dtype) == np.float16 else True


class KernelRecordError(TypeError):
    """A kernel record whose names do not match its per-element function or body."""


@dataclasses.dataclass(frozen=True)
class KernelRecord:
    name: str
    elem: object           # per-element function (plain Python, compiled per target)
    body: object           # factory(**options) -> kernel(<arrays...>, s)
    arrays: tuple          # kernel array names: ("param", "grad", <state...>)
    scalars: tuple         # scalar names, in the order the host packs them
    norms: tuple = ()      # positions of elem's values summed by the pre-pass (see above)
    norm_arrays: tuple = ()  # arrays (names) whose own values the pre-pass sums, first
    norm_names: tuple = ()  # what each sum is: norm_arrays' then norms', e.g. ("param", "r")
    nonnegative: tuple = ()  # state arrays that are never negative (8-bit state: unsigned map)

    @property
    def options(self):
        """The boolean options: the body factory's parameters."""
        return tuple(inspect.signature(self.body).parameters)

    def check(self):
        """Raise :class:`KernelRecordError` unless ``elem`` takes one value per array, then
        exactly the record's scalar names, then exactly the body's options (in order)."""
        params = list(inspect.signature(self.elem).parameters)
        n = len(self.arrays)
        if not set(self.nonnegative) <= set(self.arrays[2:]):
            raise KernelRecordError(f"kernel record {self.name!r}: nonnegative names "
                                    f"{sorted(set(self.nonnegative) - set(self.arrays[2:]))}, "
                                    f"which are not its state arrays")
        if len(set(self.scalars)) != len(self.scalars):
            raise KernelRecordError(f"kernel record {self.name!r}: duplicate scalar names "
                                    f"in {self.scalars}")
        scalars = params[n:n + len(self.scalars)]
        options = params[n + len(self.scalars):]
        if set(scalars) != set(self.scalars):
            raise KernelRecordError(
                f"kernel record {self.name!r}: the per-element function "
                f"{self.elem.__name__}{inspect.signature(self.elem)} takes the scalars "
                f"{scalars} after its {n} array values, but the record names "
                f"{list(self.scalars)} (missing: {sorted(set(self.scalars) - set(scalars))}, "
                f"unknown: {sorted(set(scalars) - set(self.scalars))})")
        if tuple(options) != self.options:
            raise KernelRecordError(
                f"kernel record {self.name!r}: the per-element function's options "
                f"{options} differ from the body's {list(self.options)}")

    def adapter_source(self, scaled=False):
        """Source of ``elem_packed(<values>, sc, <options>)``, which calls the per-element
        function with each scalar under its parameter name. ``scaled``: the gradient value
        is first multiplied by one more packed scalar, ``sc[len(scalars)]`` (the step
        driver's unscale x clip factor, see ``fastopt._step``), so that unscaling and
        clipping happen inside the same pass for every optimizer, with no body changed."""
        self.check()
        params = list(inspect.signature(self.elem).parameters)
        n = len(self.arrays)
        values = [f"x{i}" for i in range(n)]
        index = {name: i for i, name in enumerate(self.scalars)}
        scalar_args = [f"sc[{index[name]}]" for name in params[n:n + len(self.scalars)]]
        options = list(self.options)
        sig = ", ".join(values + ["sc"] + options)
        args = list(values)
        if scaled:
            g = self.arrays.index("grad")
            args[g] = f"{values[g]} * sc[{len(self.scalars)}]"
        call = ", ".join(args + scalar_args + options)
        return f"def elem_packed({sig}):\n    return _elem({call})\n"

    def adapter(self, compiled_elem, scaled=False):
        """The adapter as a plain Python function calling ``compiled_elem`` (the per-element
        function compiled for a target); the caller compiles the adapter for that target."""
        return _define(self.adapter_source(scaled), "elem_packed",
                       f"adapter_{self.name}{'_scaled' if scaled else ''}",
                       _elem=compiled_elem)

    def norms_adapter_source(self, options, scaled=False, chunked=False):
        """Source of ``norms_packed(arrs, i, sc)``: element ``i`` of each of ``norm_arrays``,
        then ``elem`` on element ``i`` of each array with the option values ``options`` (a
        dict, compile-time constants) and its values at the positions ``norms``.
        ``chunked``: ``norms_chunk(arrs, start, size, sc, out)`` instead, for elements
        ``start .. start + size - 1``: it writes, in the order of ``norm_names``, the
        ``norm_arrays``' elements and then the ``norms`` values to ``out[0, :size], out[1,
        :size], ...`` (one loop over 1-D slices and rows, the form LLVM vectorizes: indexing
        the arrays' tuple and a 2-D table in the loop made the loop 3-4x slower in isolation),
        so that the caller sums every row's squares in one loop whose independent lane
        chains overlap (``kernels.reductions``)."""
        self.check()
        if (len(self.norm_names) != len(self.norm_arrays) + len(self.norms)
                or not self.norm_names):
            raise KernelRecordError(f"kernel record {self.name!r}: norm_names "
                                    f"{self.norm_names} must name the norm_arrays "
                                    f"{self.norm_arrays} and then the norms {self.norms}")
        if "grad" in self.norm_arrays or set(self.norm_arrays) - set(self.arrays):
            raise KernelRecordError(f"kernel record {self.name!r}: norm_arrays "
                                    f"{self.norm_arrays} must be arrays of the record other "
                                    f"than the gradient (which the step may scale)")
        raw = [self.arrays.index(a) for a in self.norm_arrays]
        params = list(inspect.signature(self.elem).parameters)
        n = len(self.arrays)
        index = {name: i for i, name in enumerate(self.scalars)}
        where = "[j]" if chunked else "[i]"
        args = [(f"x{q}" if chunked else f"arrs[{q}]") + where for q in range(n)]
        if scaled:
            g = self.arrays.index("grad")
            args[g] = f"{args[g]} * sc[{len(self.scalars)}]"
        args += [f"sc[{index[name]}]" for name in params[n:n + len(self.scalars)]]
        args += [repr(bool(options[name])) for name in self.options]
        call = f"_elem({', '.join(args)})"
        if not chunked:
            picked = "".join(f"arrs[{q}][i], " for q in raw)
            picked += "".join(f"v[{j}], " for j in self.norms)
            return f"def norms_packed(arrs, i, sc):\n    v = {call}\n    return ({picked})\n"
        lines = ["def norms_chunk(arrs, start, size, sc, out):"]
        lines += [f"    x{q} = arrs[{q}][start:start + size]" for q in range(n)]
        lines += [f"    o{k} = out[{k}]" for k in range(len(self.norm_names))]
        lines.append("    for j in range(size):")
        if self.norms:
            lines.append(f"        v = {call}")
        lines += [f"        o{r}[j] = x{q}[j]" for r, q in enumerate(raw)]
        lines += [f"        o{len(raw) + k}[j] = v[{j}]" for k, j in enumerate(self.norms)]
        return "\n".join(lines) + "\n"

    def norms_adapter(self, compiled_elem, options, scaled=False, chunked=False):
        """The pre-pass adapter as a plain Python function calling ``compiled_elem``."""
        name = "norms_chunk" if chunked else "norms_packed"
        return _define(self.norms_adapter_source(options, scaled, chunked), name,
                       f"{name}_{self.name}{'_scaled' if scaled else ''}", _elem=compiled_elem)

    def unpack(self, scaled=False):
        """``unpack(s)`` as a plain Python function: the packed scalars as a tuple (one more
        when ``scaled``)."""
        items = "".join(f"s[{i}], " for i in range(len(self.scalars) + bool(scaled)))
        return _define(f"def unpack(s):\n    return ({items})\n", "unpack",
                       f"unpack_{self.name}")


def _define(source, name, tag, **scope):
    exec(compile(source, f"<fastopt.kernels {tag}>", "exec"), scope)
    return scope[name]


def _unbound(*args):
    raise RuntimeError("kernel bodies run only after kernels.decorators.bind gives them a "
                       "target's elem, loop and unpack")


# the names every kernel body uses; kernels.decorators.bind replaces them per target
elem = loop = unpack = _unbound
