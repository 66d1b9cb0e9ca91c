"""Compressed optimizer state inside the CPU kernels: bfloat16.

A bfloat16 state array is stored as ``uint16`` bit patterns (the upper half of a float32;
NumPy has no bfloat16). The kernels receive it wrapped in :class:`BF16Bits`, a Numba type
whose item read decodes to float32 (exact) and whose item write rounds a float32 to the
nearest bfloat16, ties to even (NaN stays NaN, made quiet; overflow rounds to inf, as IEEE
rounding does). So every kernel body (``m[i] = mn``) and per-element function works unchanged:
the state is dequantized, updated and requantized in the same single pass, and the values a
step computes from the new state (the parameter update) use the unrounded float32 values,
exactly as the NumPy reference (``fastopt.precision``) does with whole arrays.

Registering the type compiles nothing; fastopt imports this module only when a step uses
bfloat16 state.
"""
import operator

import numpy as np
from llvmlite import ir
from numba import njit, types, typeof
from numba.core import cgutils
from numba.extending import (NativeValue, intrinsic, make_attribute_wrapper, models,
                             overload, register_model, typeof_impl, unbox)


class BF16Bits:
    """A bfloat16 array as the kernels see it: ``bits`` is the 1-D C-contiguous ``uint16``
    array of bit patterns (kept, not copied)."""
    __slots__ = ("bits",)

    def __init__(self, bits):
        self.bits = bits


class BF16ArrayType(types.Type):
    """The Numba type of :class:`BF16Bits` (parametrized by its bits' array type)."""

    def __init__(self, bits_type):
        self.bits_type = bits_type
        super().__init__(name=f"BF16Array({bits_type})")


@typeof_impl.register(BF16Bits)
def _typeof(val, c):
    return BF16ArrayType(typeof(val.bits))


@register_model(BF16ArrayType)
class _Model(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("bits", fe_type.bits_type)])


make_attribute_wrapper(BF16ArrayType, "bits", "bits")


@unbox(BF16ArrayType)
def _unbox(typ, obj, c):
    bits_obj = c.pyapi.object_getattr_string(obj, "bits")
    native = c.unbox(typ.bits_type, bits_obj)
    c.pyapi.decref(bits_obj)
    s = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    s.bits = native.value
    return NativeValue(s._getvalue(), is_error=native.is_error, cleanup=native.cleanup)


@intrinsic
def _wrap(typingctx, bits):
    """A BF16Array over ``bits`` (a 1-D uint16 array) inside compiled code."""
    if not (isinstance(bits, types.Array) and bits.dtype == types.uint16 and bits.ndim == 1):
        return None
    ret = BF16ArrayType(bits)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.bits = args[0]
        context.nrt.incref(builder, bits, args[0])
        return s._getvalue()
    return ret(bits), codegen


@intrinsic
def _u32_as_f32(typingctx, u):
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(u), codegen


@intrinsic
def _f32_as_u32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(x), codegen


@njit(inline="always", error_model="numpy")
def bf16_to_f32(b):
    """The float32 value of bfloat16 bits ``b`` (exact)."""
    return _u32_as_f32(np.uint32(b) << np.uint32(16))


@njit(inline="always", error_model="numpy")
def f32_to_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16, ties to even, as bits (NaN: quiet)."""
    u = _f32_as_u32(x)
    if x != x:
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))))
                     >> np.uint32(16))


@overload(operator.getitem)
def _getitem(a, i):
    if isinstance(a, BF16ArrayType):
        if isinstance(i, types.Integer):
            def impl(a, i):
                return bf16_to_f32(a.bits[i])
            return impl
        if isinstance(i, types.SliceType):
            def impl_slice(a, i):
                return _wrap(a.bits[i])
            return impl_slice


@overload(operator.setitem)
def _setitem(a, i, v):
    if isinstance(a, BF16ArrayType) and isinstance(i, types.Integer):
        def impl(a, i, v):
            a.bits[i] = f32_to_bf16(np.float32(v))
        return impl
