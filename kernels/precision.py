"""Compressed optimizer state inside the CPU kernels: bfloat16 (and the float16 bits of a
param copy, :func:`f32_to_f16`).

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
                             overload, overload_attribute, register_model, typeof_impl,
                             unbox)


class BF16Bits:
    """A bfloat16 array as the kernels see it: ``bits`` is the 1-D C-contiguous ``uint16``
    array of bit patterns (kept, not copied). With ``key`` (an int < 2**64) writes round
    stochastically: element ``i`` adds the top 16 bits of ``splitmix64(key + offset + i)`` to
    the float32 bits and truncates (``fastopt.precision``); the runner sets ``key`` per step."""
    __slots__ = ("bits", "key", "offset", "stochastic")

    def __init__(self, bits, key=None, offset=0):
        self.bits = bits
        self.stochastic = key is not None
        self.key = 0 if key is None else key
        self.offset = offset


class BF16ArrayType(types.Type):
    """The Numba type of :class:`BF16Bits` (its bits' array type; stochastic or nearest)."""

    def __init__(self, bits_type, stochastic=False):
        self.bits_type = bits_type
        self.stochastic = bool(stochastic)
        super().__init__(name=f"BF16Array({bits_type}, stochastic={self.stochastic})")


@typeof_impl.register(BF16Bits)
def _typeof(val, c):
    return BF16ArrayType(typeof(val.bits), val.stochastic)


@register_model(BF16ArrayType)
class _Model(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("bits", fe_type.bits_type), ("key", types.uint64),
                                        ("offset", types.int64)])


make_attribute_wrapper(BF16ArrayType, "bits", "bits")
make_attribute_wrapper(BF16ArrayType, "key", "key")
make_attribute_wrapper(BF16ArrayType, "offset", "offset")


def _unbox_view(typ, obj, c, fields=()):
    """Unbox a 16-bit view (:class:`BF16Bits`, :class:`F16Bits`): its ``bits`` array, then
    each ``(name, type)`` of ``fields`` (integers)."""
    bits_obj = c.pyapi.object_getattr_string(obj, "bits")
    native = c.unbox(typ.bits_type, bits_obj)
    c.pyapi.decref(bits_obj)
    s = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    s.bits = native.value
    for name, ty in fields:
        field_obj = c.pyapi.object_getattr_string(obj, name)
        setattr(s, name, c.unbox(ty, field_obj).value)
        c.pyapi.decref(field_obj)
    return NativeValue(s._getvalue(), is_error=native.is_error, cleanup=native.cleanup)


@unbox(BF16ArrayType)
def _unbox(typ, obj, c):
    return _unbox_view(typ, obj, c, (("key", types.uint64), ("offset", types.int64)))


@intrinsic
def _wrap(typingctx, bits):
    """A BF16Array over ``bits`` (a 1-D uint16 array) inside compiled code."""
    if not (isinstance(bits, types.Array) and bits.dtype == types.uint16 and bits.ndim == 1):
        return None
    ret = BF16ArrayType(bits)     # (a read-only view for the pre-pass: nearest rounding)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.bits = args[0]
        s.key = context.get_constant(types.uint64, 0)
        s.offset = context.get_constant(types.int64, 0)
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


def _bf16_bits(builder, x, bias):
    """The IR of the bfloat16 rounding shared by both modes: ``(bits(x) + bias(hi)) >> 16``
    (``hi`` is ``bits(x) >> 16``), or for NaN ``hi | 0x40`` (made quiet), in 32-bit integer
    arithmetic with a 32-bit select, truncated once to 16 bits. Numba's own integer arithmetic
    widens ``uint32`` to 64 bits, which the vectorizer then carries in 64-bit lanes and packs
    each branch separately. (No wraparound: a non-NaN float32's bits are at most 0xFF800000,
    and the bias is below 2**16.)"""
    i32 = ir.IntType(32)
    u = builder.bitcast(x, i32)
    hi = builder.lshr(u, ir.Constant(i32, 16))
    rounded = builder.lshr(builder.add(u, bias(hi)), ir.Constant(i32, 16))
    quiet = builder.or_(hi, ir.Constant(i32, 0x40))
    nan = builder.fcmp_unordered("uno", x, x)
    return builder.trunc(builder.select(nan, quiet, rounded), ir.IntType(16))


@intrinsic
def _bf16_nearest(typingctx, x):
    """float32 -> bfloat16 bits, nearest, ties to even (bias ``0x7FFF + (hi & 1)``)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        return _bf16_bits(builder, args[0], lambda hi: builder.add(
            ir.Constant(i32, 0x7FFF), builder.and_(hi, ir.Constant(i32, 1))))
    return types.uint16(x), codegen


@njit(inline="always", error_model="numpy")
def f32_to_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16, ties to even, as bits (NaN: quiet)."""
    return _bf16_nearest(x)


@intrinsic
def _f16_nearest(typingctx, x):
    """float32 -> IEEE half-precision (float16) bits, nearest, ties to even, in 32-bit integer
    arithmetic and selects (F. Giesen's ``float_to_half_fast3_rtne``): below 2**-14 the
    magnitude plus 0.5 leaves its rounded subnormal bits at the bottom (one IEEE addition);
    in the normal range the exponent is rebiased and ``0xFFF + odd`` rounds the 13 dropped
    bits (from 65520 up the rounding carries into inf; from 2**16 up inf directly); NaN stays
    NaN, made quiet (the top 10 payload bits kept)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        c = lambda v: ir.Constant(i32, v)                        # noqa: E731
        u = builder.bitcast(args[0], i32)
        sign = builder.and_(builder.lshr(u, c(16)), c(0x8000))
        a = builder.and_(u, c(0x7FFFFFFF))
        half = builder.fadd(builder.bitcast(a, ir.FloatType()), ir.Constant(ir.FloatType(), 0.5))
        sub = builder.sub(builder.bitcast(half, i32), c(0x3F000000))
        odd = builder.and_(builder.lshr(a, c(13)), c(1))
        normal = builder.lshr(builder.add(builder.add(a, c(0xC8000FFF)), odd), c(13))
        nan = builder.or_(c(0x7E00), builder.and_(builder.lshr(a, c(13)), c(0x3FF)))
        big = builder.select(builder.icmp_unsigned(">", a, c(0x7F800000)), nan, c(0x7C00))
        small = builder.select(builder.icmp_unsigned("<", a, c(0x38800000)), sub, normal)
        out = builder.select(builder.icmp_unsigned(">=", a, c(0x47800000)), big, small)
        return builder.trunc(builder.or_(out, sign), ir.IntType(16))
    return types.uint16(x), codegen


@njit(inline="always", error_model="numpy")
def f32_to_f16(x):
    """float32 ``x`` rounded to the nearest float16, ties to even, as bits (overflow: inf; NaN:
    quiet). NumPy's ``astype(np.float16)`` is the reference."""
    return _f16_nearest(x)


def word_lo(w):
    """The first element of a word of two (inside a kernel): a ``uint64`` word's first float32,
    a ``uint32`` word's first bfloat16 as float32 (exact). Elements are little-endian: element
    ``2j`` is the low half of word ``j``."""
    raise NotImplementedError("word_lo runs inside kernels only")


def word_hi(w):
    """The second element of a word of two, as :func:`word_lo`."""
    raise NotImplementedError("word_hi runs inside kernels only")


@overload(word_lo)
def _word_lo(w):
    if w == types.uint64:
        return lambda w: _u32_as_f32(w)                      # the low 32 bits
    if w == types.uint32:
        return lambda w: _u32_as_f32((w & np.uint32(0xFFFF)) << np.uint32(16))


@overload(word_hi)
def _word_hi(w):
    if w == types.uint64:
        return lambda w: _u32_as_f32(w >> np.uint64(32))
    if w == types.uint32:
        return lambda w: _u32_as_f32(w & np.uint32(0xFFFF0000))


@njit(inline="always", error_model="numpy")
def splitmix64(x):
    """SplitMix64's output function of the uint64 ``x`` (wrapping arithmetic)."""
    z = np.uint64(x) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@intrinsic
def _bf16_add_truncate(typingctx, x, r):
    """float32 -> bfloat16 bits with ``r`` (a uint64 below 2**16) as the bias: stochastic
    rounding."""
    if x != types.float32 or r != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        add = builder.trunc(args[1], ir.IntType(32))
        return _bf16_bits(builder, args[0], lambda hi: add)
    return types.uint16(x, r), codegen


@njit(inline="always", error_model="numpy")
def f32_to_bf16_stochastic(x, key, index):
    """float32 ``x`` rounded to bfloat16 stochastically: the top 16 bits of
    ``splitmix64(key + index)`` added to its bits, then truncated (NaN: quiet)."""
    return _bf16_add_truncate(x, splitmix64(key + np.uint64(index)) >> np.uint64(48))


@overload(operator.getitem)
def _getitem(a, i):
    """An element of a 16-bit view decoded to float32; a slice, a view of the same kind over
    the slice of its bits (bfloat16: rounding to nearest on write)."""
    if isinstance(a, BF16ArrayType):
        decode, wrap = bf16_to_f32, _wrap
    elif isinstance(a, F16ArrayType):       # (a float16 gradient, below)
        decode, wrap = f16_to_f32, _wrap_f16
    else:
        return None
    if isinstance(i, types.Integer):
        def impl(a, i):
            return decode(a.bits[i])
        return impl
    if isinstance(i, types.SliceType):
        def impl_slice(a, i):
            return wrap(a.bits[i])
        return impl_slice


@overload(operator.setitem)
def _setitem(a, i, v):
    if isinstance(a, BF16ArrayType) and isinstance(i, types.Integer):
        if a.stochastic:
            def impl_stochastic(a, i, v):
                a.bits[i] = f32_to_bf16_stochastic(np.float32(v), a.key, a.offset + i)
            return impl_stochastic

        def impl(a, i, v):
            a.bits[i] = f32_to_bf16(np.float32(v))
        return impl


# ---------------------------------------------------------------- a float16 gradient
def f16_widen_ir(builder, h):
    """The IR of float16 bits ``h`` (an ``i16`` or a vector of them) widened to float32
    (exact), in 32-bit integer arithmetic and selects (no half-precision instruction, so no
    library call on a CPU without F16C): normal numbers rebiased, inf and NaN to exponent 255
    (payload kept, as NumPy's ``astype(np.float32)``), zeros and subnormals as their
    magnitude ``m * 2**-24`` (one exact conversion and product); the sign put back."""
    vec = isinstance(h.type, ir.VectorType)
    n = h.type.count if vec else None
    i32 = ir.VectorType(ir.IntType(32), n) if vec else ir.IntType(32)
    f32 = ir.VectorType(ir.FloatType(), n) if vec else ir.FloatType()

    def c(v, ty=i32):
        return ir.Constant(ty, [v] * n if vec else v)
    u = builder.zext(h, i32)
    sign = builder.shl(builder.and_(u, c(0x8000)), c(16))
    em = builder.and_(u, c(0x7FFF))
    shifted = builder.shl(em, c(13))
    normal = builder.add(shifted, c(0x38000000))         # exponent + (127 - 15)
    special = builder.add(shifted, c(0x70000000))        # 31 -> 255: inf, NaN
    bits = builder.select(builder.icmp_unsigned(">=", em, c(0x7C00)), special, normal)
    tiny = builder.fmul(builder.uitofp(em, f32), c(2.0 ** -24, f32))
    small = builder.icmp_unsigned("<", em, c(0x400))
    out = builder.select(small, builder.bitcast(tiny, i32), bits)
    return builder.bitcast(builder.or_(out, sign), f32)


@intrinsic
def _f16_to_f32(typingctx, h):
    if not (isinstance(h, types.Integer) and h.bitwidth == 16):
        return None

    def codegen(context, builder, sig, args):
        return f16_widen_ir(builder, args[0])
    return types.float32(h), codegen


@njit(inline="always", error_model="numpy")
def f16_to_f32(h):
    """The float32 value of float16 bits ``h`` (exact; NumPy's ``astype(np.float32)``)."""
    return _f16_to_f32(h)


class F16Bits:
    """A float16 gradient as the kernels see it (Numba has no CPU float16 arrays): ``bits``,
    the 1-D C-contiguous ``uint16`` view of its values (kept, not copied). Reading element
    ``i`` gives its float32 value (exact); nothing writes it."""
    __slots__ = ("bits",)

    def __init__(self, bits):
        self.bits = bits


class F16ArrayType(types.Type):
    def __init__(self, bits_type):
        self.bits_type = bits_type
        super().__init__(name=f"F16Array({bits_type})")


@typeof_impl.register(F16Bits)
def _typeof_f16(val, c):
    return F16ArrayType(typeof(val.bits))


@register_model(F16ArrayType)
class _F16Model(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("bits", fe_type.bits_type)])


make_attribute_wrapper(F16ArrayType, "bits", "bits")


@unbox(F16ArrayType)
def _unbox_f16(typ, obj, c):
    return _unbox_view(typ, obj, c)


@intrinsic
def _wrap_f16(typingctx, bits):
    """An F16Array over ``bits`` (a 1-D uint16 array) inside compiled code."""
    if not (isinstance(bits, types.Array) and bits.dtype == types.uint16 and bits.ndim == 1):
        return None
    ret = F16ArrayType(bits)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.bits = args[0]
        context.nrt.incref(builder, bits, args[0])
        return s._getvalue()
    return ret(bits), codegen


# ---------------------------------------------------------------- a low-precision param copy
class ParamWithCopy:
    """The parameter as the kernels see it when the buffers have a ``param_copy``: ``param``
    (float32, 1-D) and ``copy`` (``uint16``, 1-D: bfloat16 bits, or with ``half`` float16
    bits). Writing element ``i`` writes ``param[i]`` and ``copy[i]`` (rounded to nearest
    even), in the same pass."""
    __slots__ = ("param", "copy", "half")

    def __init__(self, param, copy, half=False):
        self.param = param
        self.copy = copy
        self.half = bool(half)


class ParamCopyType(types.Type):
    def __init__(self, param_type, copy_type, half=False):
        self.param_type = param_type
        self.copy_type = copy_type
        self.half = bool(half)
        kind = "float16" if half else "bfloat16"
        super().__init__(name=f"ParamWithCopy({param_type}, {copy_type}, {kind})")


@typeof_impl.register(ParamWithCopy)
def _typeof_copy(val, c):
    return ParamCopyType(typeof(val.param), typeof(val.copy), val.half)


@register_model(ParamCopyType)
class _CopyModel(models.StructModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, [("param", fe_type.param_type),
                                        ("copy", fe_type.copy_type)])


make_attribute_wrapper(ParamCopyType, "param", "param")
make_attribute_wrapper(ParamCopyType, "copy", "copy")


@unbox(ParamCopyType)
def _unbox_copy(typ, obj, c):
    s = cgutils.create_struct_proxy(typ)(c.context, c.builder)
    p_obj = c.pyapi.object_getattr_string(obj, "param")
    p = c.unbox(typ.param_type, p_obj)
    c.pyapi.decref(p_obj)
    q_obj = c.pyapi.object_getattr_string(obj, "copy")
    q = c.unbox(typ.copy_type, q_obj)
    c.pyapi.decref(q_obj)
    s.param = p.value
    s.copy = q.value
    is_error = c.builder.or_(p.is_error, q.is_error)

    def cleanup():
        if p.cleanup is not None:
            p.cleanup()
        if q.cleanup is not None:
            q.cleanup()
    return NativeValue(s._getvalue(), is_error=is_error, cleanup=cleanup)


@overload_attribute(ParamCopyType, "shape")
def _copy_shape(a):
    def get(a):
        return a.param.shape
    return get


@overload_attribute(ParamCopyType, "dtype")
def _copy_dtype(a):
    def get(a):
        return a.param.dtype
    return get


@overload(operator.getitem)
def _copy_getitem(a, i):
    if isinstance(a, ParamCopyType):
        def impl(a, i):
            return a.param[i]       # an element, or (the pre-pass, reading) a slice
        return impl


@overload(operator.setitem)
def _copy_setitem(a, i, v):
    if isinstance(a, ParamCopyType) and isinstance(i, types.Integer):
        if a.half:
            def impl_half(a, i, v):
                x = np.float32(v)
                a.param[i] = x
                a.copy[i] = f32_to_f16(x)
            return impl_half

        def impl(a, i, v):
            x = np.float32(v)
            a.param[i] = x
            a.copy[i] = f32_to_bf16(x)
        return impl


# ---------------------------------------------------------------- on CUDA
@intrinsic
def bf16_view(typingctx, bits, key, offset, stochastic):
    """A BF16Array over the device array ``bits`` inside a CUDA kernel, rounding to nearest or
    (``stochastic``, a compile-time boolean) from ``key`` and element indices from ``offset``.
    No reference counting (CUDA kernels run without NRT)."""
    if not (isinstance(bits, types.Array) and bits.dtype == types.uint16 and bits.ndim == 1
            and isinstance(stochastic, types.BooleanLiteral)):
        return None
    ret = BF16ArrayType(bits, stochastic.literal_value)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.bits = args[0]
        s.key = context.cast(builder, args[1], sig.args[1], types.uint64)
        s.offset = context.cast(builder, args[2], sig.args[2], types.int64)
        return s._getvalue()
    return ret(bits, key, offset, stochastic), codegen


@intrinsic
def param_with_copy(typingctx, param, copy, half):
    """The parameter with its copy (:class:`ParamWithCopy`'s type) inside a CUDA kernel:
    writing element ``i`` writes ``param[i]`` and ``copy[i]`` (rounded to nearest even, to
    bfloat16 bits, or with ``half``, a compile-time boolean, to float16 bits). No reference
    counting (CUDA kernels run without NRT)."""
    if not (isinstance(param, types.Array) and param.dtype == types.float32
            and isinstance(copy, types.Array) and copy.dtype == types.uint16
            and isinstance(half, types.BooleanLiteral)):
        return None
    ret = ParamCopyType(param, copy, half.literal_value)

    def codegen(context, builder, sig, args):
        s = cgutils.create_struct_proxy(ret)(context, builder)
        s.param = args[0]
        s.copy = args[1]
        return s._getvalue()
    return ret(param, copy, half), codegen


class SimParamCopy:
    """What :func:`param_with_copy` gives a kernel under Numba's CUDA simulator (a float16
    copy through the CPU kernels' :func:`f32_to_f16`)."""

    def __init__(self, param, copy, half=False):
        self.param, self.copy, self.half = param, copy, half
        self.shape = param.shape
        self.dtype = param.dtype

    def __getitem__(self, i):
        return self.param[i]

    def __setitem__(self, i, v):
        x = np.float32(v)
        self.param[i] = x
        if self.half:
            self.copy[i] = f32_to_f16(x)
        else:
            SimBF16(self.copy, 0, 0, False)[i] = x


class SimBF16:
    """What :func:`bf16_view` gives a kernel under Numba's CUDA simulator (which runs kernels
    as Python): the same decoding and rounding, in NumPy integer arithmetic."""

    def __init__(self, bits, key, offset, stochastic):
        self.bits, self.key, self.offset, self.stochastic = (bits, int(key), int(offset),
                                                             stochastic)

    def __getitem__(self, i):
        return (np.array([self.bits[i]], np.uint32) << np.uint32(16)).view(np.float32)[0]

    def __setitem__(self, i, v):
        u = np.array([v], np.float32).view(np.uint32)
        with np.errstate(over="ignore"):
            if v != v:
                out = (u >> np.uint32(16)) | np.uint32(0x40)
            elif self.stochastic:
                z = np.array([(self.key + self.offset + int(i)) % 2 ** 64], np.uint64) \
                    + np.uint64(0x9E3779B97F4A7C15)
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                r = (z ^ (z >> np.uint64(31))) >> np.uint64(48)
                out = (u.astype(np.uint64) + r) >> np.uint64(16)
            else:
                out = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) \
                    >> np.uint32(16)
        self.bits[i] = np.uint16(out[0])
