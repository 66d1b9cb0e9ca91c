"""CUDA dispatch, host side. ``numba.cuda`` is imported only when a CUDA path is used, so
``import fastopt`` works without numba-cuda or a GPU.

Device arrays are numba device arrays or any object with ``__cuda_array_interface__`` (CuPy
arrays, torch CUDA tensors); they are used in place, zero-copy.
"""
import typing

import numpy as np

from . import config
from ._launch import Launcher
from ._rows import settled_step
from .kernels.record import DEVICE_FACTOR, LOW_GRAD_DTYPES, low_grad_name, param_copy_kind

_INSTALL_HINT = ('CUDA support needs numba-cuda: pip install "fastopt[cuda]" '
                 '(and an NVIDIA GPU with its driver, or NUMBA_ENABLE_CUDASIM=1 for the '
                 'simulator)')


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for but numba-cuda or a GPU is missing."""


def _cuda():
    try:
        from numba import cuda
    except ImportError as e:
        raise CudaUnavailableError(f"{_INSTALL_HINT} ({e})") from None
    if not hasattr(cuda, "to_device"):  # numba without numba-cuda: the stub module
        raise CudaUnavailableError(_INSTALL_HINT)
    return cuda


def as_device_array(a):
    """``a`` as a numba device array, zero-copy (numba device arrays pass through)."""
    if hasattr(a, "copy_to_host") and hasattr(a, "reshape"):
        return a
    return _cuda().as_cuda_array(a)


def _gpu():
    """numba.cuda, checked to have a usable GPU (or the simulator)."""
    cuda = _cuda()
    if not simulator_active() and not cuda.is_available():
        raise CudaUnavailableError("no CUDA GPU found (numba.cuda.is_available() is False); "
                                   "use backend='cpu', or NUMBA_ENABLE_CUDASIM=1 to run the "
                                   "CUDA kernels in Numba's simulator")
    return cuda


def _kernels():
    _gpu()
    from .kernels import cuda as kernels
    return kernels


def cuda_available():
    """True when numba.cuda is importable and a GPU (or the simulator) is usable."""
    try:
        return bool(_cuda().is_available())
    except Exception:
        return False


def simulator_active():
    try:
        from numba import config as nconfig
        return bool(nconfig.ENABLE_CUDASIM)
    except Exception:
        return False


# ------------------------------------------------------------------ validation
def interface(a):
    """The ``__cuda_array_interface__`` of ``a`` (synthesized for simulator arrays), or
    ``None`` for a host array."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None and hasattr(a, "__cuda_ndarray__") and hasattr(a, "_ary"):
        host = a._ary.__array_interface__     # Numba's CUDA simulator wraps a NumPy array
        cai = {"typestr": host["typestr"], "shape": host["shape"],
               "strides": host["strides"], "data": host["data"], "version": 3}
    return cai


def _interface(a, where):
    cai = interface(a) if not isinstance(a, np.ndarray) else None
    if cai is None:
        raise TypeError(f"{where} is a host array but other buffers are on a CUDA device; "
                        f"all arrays of one step must live on the same device (move them "
                        f"with fastopt.to_device / fastopt.to_host)")
    return cai


def _device_id(a):
    """The CUDA device ordinal holding ``a`` where the array type says (torch, CuPy, numba
    device arrays), else ``None``."""
    dev = getattr(a, "device", None)
    for attr in ("index", "id"):          # torch.device.index, cupy Device.id
        value = getattr(dev, attr, None)
        if isinstance(value, int):
            return value
    context = getattr(getattr(a, "gpu_data", None), "context", None)   # numba
    value = getattr(getattr(context, "device", None), "id", None)
    return value if isinstance(value, int) else None


def check_device_group(named, owner):
    """Validate device arrays like ``_core.check_group`` does host arrays."""
    items = list(named.items())
    infos = []
    for name, a in items:
        where = f"{owner}.{name}"
        cai = _interface(a, where)
        dtype = np.dtype(cai["typestr"])
        # bfloat16 state (uint16 bits) or 8-bit state (uint8 codes)
        bits = name not in ("param", "grad") and dtype in (np.uint16, np.uint8)
        bits = bits or (name == "param_copy" and dtype == np.float16)    # (checked before)
        if name == "grad" and dtype in LOW_GRAD_DTYPES:
            raise NotImplementedError(
                f"{where} is a {low_grad_name(dtype)} gradient; the steps read low-precision "
                f"gradients on the CPU only: on CUDA, widen it to a float32 gradient first")
        if dtype not in (np.float32, np.float64) and not bits:
            raise TypeError(f"{where} has dtype {dtype}; fastopt supports float32 and float64"
                            + (" (and uint16 for bfloat16 state, uint8 for 8-bit state)"
                               if name not in ("param", "grad") else ""))
        shape = tuple(cai["shape"])
        strides = cai.get("strides")
        if strides is not None:
            expected = tuple(int(np.prod(shape[i + 1:])) * dtype.itemsize
                             for i in range(len(shape)))
            if any(s != e for s, e, d in zip(strides, expected, shape) if d > 1):
                raise ValueError(f"{where} is not C-contiguous; fastopt updates buffers in "
                                 f"place and never copies them")
        ptr, readonly = cai["data"]
        if readonly and name != "grad":
            raise ValueError(f"{where} is read-only; fastopt updates it in place")
        infos.append((name, dtype, shape, ptr, int(np.prod(shape)) * dtype.itemsize,
                      _device_id(a)))
    _, dtype0, shape0, _, _, dev0 = infos[0]
    for name, dtype, shape, _, _, dev in infos[1:]:
        if dtype == np.uint16 and dtype0 != np.float32:
            raise TypeError(f"{owner}.{name} holds bfloat16 state (uint16 bits) but "
                            f"{owner}.param has dtype {dtype0}; bfloat16 state needs float32 "
                            f"parameters")
        if dtype != dtype0 and dtype not in (np.uint16, np.uint8) and not (
                name == "param_copy" and dtype == np.float16):
            raise TypeError(f"{owner}.{name} has dtype {dtype} but {owner}.param has dtype "
                            f"{dtype0}; all buffers must share one dtype")
        if shape != shape0:
            raise ValueError(f"{owner}.{name} has shape {shape} but {owner}.param has shape "
                             f"{shape0}")
        if dev is not None and dev0 is not None and dev != dev0:
            raise ValueError(f"{owner}.{name} is on CUDA device {dev} but {owner}.param is on "
                             f"device {dev0}; all buffers must be on one device")
    for i in range(len(infos)):
        for j in range(i + 1, len(infos)):
            ni, _, _, pi, bi, _ = infos[i]
            nj, _, _, pj, bj, _ = infos[j]
            if bi and bj and pi < pj + bj and pj < pi + bi:
                raise ValueError(f"{owner}.{ni} and {owner}.{nj} share memory; every buffer "
                                 f"must be a separate array")
    return dtype0


# ------------------------------------------------------------------ allocation / moves
def full_like(a, value=0.0):
    """An array on the same device and of the same kind as ``a``, filled with ``value``."""
    mod = type(a).__module__.split(".")[0]
    if mod in ("torch", "cupy"):
        import importlib
        return importlib.import_module(mod).full_like(a, value)
    cuda = _cuda()
    out = cuda.device_array(a.shape, dtype=np.dtype(a.dtype))
    flat = out.reshape(-1)
    if flat.shape[0]:
        kernels = _kernels()
        blocks, threads = _grid(kernels, flat.shape[0])
        kernels.fill[blocks, threads](flat, np.dtype(a.dtype).type(value))
    return out


def _copy_buffers(buffers, move):
    arrays = {n: move(a) for n, a in buffers.arrays().items()}
    p, g = arrays.pop("param"), arrays.pop("grad")
    out = type(buffers)(p, g, step=buffers.step, **arrays)
    if buffers.param_copy is not None:        # the bfloat16 or float16 copy of the weights
        out.param_copy = move(buffers.param_copy)
    out.rounding_seed = buffers.rounding_seed          # bfloat16 state's stochastic rounding
    if getattr(buffers, "state_absmax", None) is not None:       # 8-bit state: its scales
        out.state_absmax = {f: move(a) for f, a in buffers.state_absmax.items()}
        out.block_size = buffers.block_size
    return out


def to_device(buffers):
    """New buffers whose arrays are numba device copies of ``buffers``' (host) arrays."""
    cuda = _gpu()
    return _copy_buffers(buffers, lambda a: cuda.to_device(np.ascontiguousarray(a)))


def to_host(buffers):
    """New buffers whose arrays are NumPy copies of ``buffers``' (device) arrays."""
    def move(a):
        if isinstance(a, np.ndarray):
            return a.copy()
        if hasattr(a, "copy_to_host"):
            return a.copy_to_host()
        return as_device_array(a).copy_to_host()
    return _copy_buffers(buffers, move)


# ------------------------------------------------------------------ execution
_PLACEHOLDERS = {}


_SM_COUNT = {}


def _grid(kernels, n):
    """(blocks, threads per block) for ``n`` elements: ``fastopt.config``'s CUDA settings, the
    blocks capped at ``CUDA_BLOCKS_PER_SM`` x the current GPU's multiprocessor count."""
    cap = config.CUDA_MAX_BLOCKS
    per_sm = config.CUDA_BLOCKS_PER_SM
    if per_sm:
        cuda = _cuda()
        dev = cuda.get_current_device()
        key = getattr(dev, "id", None)       # (the simulator's device has no id, no SMs)
        sms = _SM_COUNT.get(key)
        if sms is None:
            sms = _SM_COUNT[key] = int(getattr(dev, "MULTIPROCESSOR_COUNT", 0) or 0)
        if sms:
            cap = min(cap, per_sm * sms) if cap else per_sm * sms
    return kernels.launch_config(n, config.CUDA_THREADS_PER_BLOCK, cap)


def _placeholder(cuda, dtype):
    key = np.dtype(dtype)
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = cuda.device_array(0, dtype=key)
    return _PLACEHOLDERS[key]


def _device_copy(arrays):
    """``(copy, kind)``: the param copy as a flat ``uint16`` device view (a float16 copy's bits)
    or None, and its kind (``kernels.record.copy_kind``: False, True for bfloat16 bits,
    ``"float16"``)."""
    copy = arrays.get("param_copy")
    if copy is None:
        return None, False
    d = as_device_array(copy).reshape(-1)
    kind = param_copy_kind(d)
    return (d.view(np.uint16) if kind == "float16" else d), kind


def cuda_runner(spec, arrays, dtype, hp, seed=None):
    """``run(t)`` for one validated step on device arrays. The flat device views are made
    once: the step driver re-validates when an array's pointer, shape or strides change.
    bfloat16 state (``uint16`` arrays): the record's body with those arrays as bfloat16 views
    (``kernels.cuda.get_bf16``), rounding to nearest, or stochastically when ``seed`` is set
    (from each element's index); a ``param_copy`` (uint16) is written by the same kernel
    (the parameter wrapped with it, ``kernels.precision.param_with_copy``)."""
    kernels = _kernels()
    cuda = _cuda()
    ph = _placeholder(cuda, dtype)
    args = tuple(as_device_array(arrays[n]).reshape(-1) if n in arrays else ph
                 for n in spec.kernel.arrays)
    n = args[0].shape[0]
    st = np.dtype(dtype).type
    compiled = {}
    bits = tuple(np.dtype(a.dtype) == np.uint16 for a in args)
    bf16 = any(bits)
    copy, kind = _device_copy(arrays)
    copy = () if copy is None else (copy,)
    views = bf16 or bool(copy)       # the kernel of bfloat16 views and/or a param copy
    if views:
        from .precision import rounding_key

    def make(scaled, options, pairs=None):
        if scaled == DEVICE_FACTOR:
            if pairs:
                return kernels.get_factor(spec.kernel, options, pairs=pairs)
            return kernels.get_factor(spec.kernel, options, bits if views else None,
                                      seed is not None, kind)
        if pairs:
            return kernels.get_pairs(spec.kernel, scaled, pairs, **options)
        if views:
            return kernels.get_bf16(spec.kernel, scaled, options, bits, seed is not None,
                                    kind)
        return kernels.get(spec.kernel, scaled, **options)

    pre = None
    if spec.kernel.norm_names:
        pre = _PrePass(spec, args, [(0, n)], dtype, bits if bf16 else None)
    launch = Launcher()
    wide = []                      # the word layouts that apply, preferred first
    quads = _quad_words(cuda, spec, args, ph, dtype, copy)
    if quads is not None:
        qviews, qtail, qkinds, qcopy, qcopy_tail = quads
        stochastic = seed is not None

        def quad_more(t):
            return qcopy + ((np.uint64(rounding_key(seed, t)),) if stochastic else ())
        wide.append(_Wide(lambda: config.CUDA_PAIRS and config.CUDA_QUADS, qviews, n // 4,
                          qtail, n - n % 4, qcopy_tail, {},
                          lambda scaled, options: kernels.get_quads(
                              spec.kernel, scaled, qkinds, options, stochastic, kind),
                          quad_more))
    if seed is None and not copy:
        words = _pair_words(cuda, kernels, spec, args, ph, dtype)
        if words is not None:        # two elements per access
            paired, tail, kinds = words
            wide.append(_Wide(lambda: config.CUDA_PAIRS, paired, n // 2, tail, n - n % 2, (),
                              {}, lambda scaled, options: make(scaled, options, kinds),
                              lambda t: ()))

    def run(t, hp_now=None, factor=None):
        if n == 0:
            return
        hp_now = hp if hp_now is None else hp_now
        use = next((w for w in wide if w.on()), None)
        options, scaled, kernel, packed = _launch_parts(
            spec, hp_now, t, factor, st, *((use.compiled, use.make) if use
                                           else (compiled, make)))
        if pre is not None:
            packed = tuple(pre(np.array([packed], st), [hp_now], t, scaled)[0])
        fac = (factor,) if scaled == DEVICE_FACTOR else ()
        start, pc = 0, copy
        if use is not None:
            blocks, threads = _grid(kernels, use.words)
            launch(kernel, blocks, threads, *use.views, *use.more(t), *fac, packed)
            if use.tail is None:
                return
            start, pc = use.start, use.tail_copy
            kernel = _kernel_for(compiled, make, scaled, options)   # one element per access
        extra = ()
        if views:             # the rounding key of this step and the first element's index
            extra = pc + (np.uint64(0 if seed is None else rounding_key(seed, t)),
                          np.int64(start))
        if use is None:
            blocks, threads = _grid(kernels, n)
            launch(kernel, blocks, threads, *args, *extra, *fac, packed)
        else:
            launch(kernel, 1, 32, *use.tail, *extra, *fac, packed)
    # a clipped step may leave its gradient factor on the device (``_step._loop_factor``) for
    # this runner's kernels to read there; a pre-pass (LAMB's trust ratios) takes it as a
    # scalar from the host
    run.device_factor = pre is None
    return run


class _Wide(typing.NamedTuple):
    """A word layout of :func:`cuda_runner`'s step: whether it is on now (``config``), the
    arrays' word views and how many words (threads' items) they hold, the elements it leaves
    (``tail``, views, or ``None``) from ``start`` with the param copy's tail, the kernels made
    for it and ``make(scaled, options)``, and ``more(t)``: the arguments between the views and
    the factor (the copy's words, the rounding key). The tail steps in a second, one-element
    launch."""
    on: object
    views: tuple
    words: int
    tail: object
    start: int
    tail_copy: tuple
    compiled: dict
    make: object
    more: object


def _quad_words(cuda, spec, args, ph, dtype, copy=()):
    """``(quads, tail, kinds, pc, pc_tail)`` when a float32 step on bfloat16 state can run on
    words of four elements (``kernels.cuda.quad_source``; it does while ``config.CUDA_PAIRS``
    and ``config.CUDA_QUADS``): each array's first ``4k`` elements as ``uint64`` words (two per
    four float32, one per four bfloat16; a placeholder an empty one), its last ``n % 4``
    elements as views (``tail``, ``None`` when there are none) and each array's kind; with a
    param copy (``copy``: ``(pc,)``) its words and its tail the same way (else ``()`` twice);
    ``None`` without bfloat16 state, for float64, fewer than four elements, or an array that
    does not start on a 64-bit boundary."""
    from .kernels import cuda as kernels
    n = args[0].shape[0]
    real = [a for a in args if a is not ph]
    kind = {np.dtype(np.float32): kernels.F32, np.dtype(np.uint16): kernels.BF16}
    if (np.dtype(dtype) != np.float32 or n < 4
            or not any(np.dtype(a.dtype) == np.uint16 for a in real)
            or any(np.dtype(a.dtype) not in kind or not _on_boundary(a, 8)
                   for a in real + list(copy))):
        return None
    n4 = n - n % 4
    wph = _placeholder(cuda, np.uint64)
    quads = tuple(wph if a is ph else a[:n4].view(np.uint64) for a in args)
    # (a placeholder's kind only shapes code its kernel never runs: the array is empty)
    kinds = tuple(kernels.BF16 if a is ph else kind[np.dtype(a.dtype)] for a in args)
    tail = tuple(ph if a is ph else a[n4:] for a in args) if n % 4 else None
    pc = tuple(c[:n4].view(np.uint64) for c in copy)
    return quads, tail, kinds, pc, tuple(c[n4:] for c in copy)


def _pair_words(cuda, kernels, spec, args, ph, dtype):
    """``(paired, tail, kinds)`` when a float32 step can run on words of two elements
    (``kernels.cuda.python_pair_kernel``; it does while ``config.CUDA_PAIRS``): each array's
    first ``2k`` elements as ``k`` words (``uint64`` for float32 arrays, ``uint32`` for bfloat16
    state; a placeholder stays one, of the state's kind), its odd last element as a
    one-element view (``tail``, ``None`` when the length is even) and each array's kind;
    ``None`` for float64, fewer than two elements, an array that does not start on a word
    boundary, or a record whose per-element function returns no tuple. (The caller asks only
    without stochastic rounding and without a param copy, whose kernels take element
    indices.)"""
    n = args[0].shape[0]
    if np.dtype(dtype) != np.float32 or n < 2 or not kernels.pairs_supported(spec.kernel):
        return None
    half = {np.dtype(np.float32): (np.uint64, kernels.F32),
            np.dtype(np.uint16): (np.uint32, kernels.BF16)}
    real = [a for a in args if a is not ph]
    if any(np.dtype(a.dtype) not in half
           or not _on_boundary(a, 2 * np.dtype(a.dtype).itemsize) for a in real):
        return None
    state = [np.dtype(a.dtype) for a, name in zip(args, spec.kernel.arrays)
             if a is not ph and name not in ("param", "grad")]
    word, kind = half[state[0] if state else np.dtype(np.float32)]
    wph = _placeholder(cuda, word)
    even = n - n % 2
    paired = tuple(wph if a is ph else a[:even].view(half[np.dtype(a.dtype)][0])
                   for a in args)
    kinds = tuple(kind if a is ph else half[np.dtype(a.dtype)][1] for a in args)
    tail = tuple(ph if a is ph else a[even:] for a in args) if n % 2 else None
    return paired, tail, kinds


def _kernel_for(compiled, make, scaled, options):
    """The kernel for ``scaled`` and these option values: ``make(scaled, options)`` on first
    use, kept in ``compiled``."""
    key = (scaled,) + tuple(options.items())
    kernel = compiled.get(key)
    if kernel is None:
        kernel = compiled[key] = make(scaled, options)
    return kernel


def _launch_parts(spec, hp, t, factor, st, compiled, make):
    """``(options, scaled, kernel, scalars)`` of step ``t``: the kernel for these options
    (``make(scaled, options)`` on first use, kept in ``compiled``) and the scalars as a tuple of
    the buffer dtype (a tuple travels with the launch; an array would be copied to the device),
    with the gradient factor last when there is one (a float; a device array: ``scaled`` is
    :data:`DEVICE_FACTOR` and the kernel takes the array before the scalars)."""
    options = spec.step_options(hp, t)
    scaled = factor is not None
    if scaled and not isinstance(factor, (float, np.floating)):
        scaled = DEVICE_FACTOR            # a device array: the kernel reads the factor there
    kernel = _kernel_for(compiled, make, scaled, options)
    packed = tuple(spec.kernel_scalars(hp, t, st))
    if scaled is True:
        packed += (st(factor),)
    return options, scaled, kernel, packed


def _q8_device_args(spec, arrays, dtype, scales):
    """``(args, quantized)`` of an 8-bit kernel (``kernels.quant8.cuda_source``): each 8-bit
    array as codes, scales and the map's tables (copied to the device once); then the param
    copy when there is one."""
    from . import quantization
    cuda = _cuda()
    st = np.dtype(dtype).type
    ph = _placeholder(cuda, dtype)
    args, quantized = [], []
    for name in spec.kernel.arrays:
        a = arrays.get(name)
        quantized.append(name in scales)
        if name in scales:
            qm = quantization.qmap_for(spec.kernel, name)
            args += [as_device_array(a).reshape(-1), as_device_array(scales[name]),
                     cuda.to_device(qm.values.astype(st)), cuda.to_device(qm.first),
                     cuda.to_device(qm.mid.astype(st))]
        else:
            args.append(ph if a is None else as_device_array(a).reshape(-1))
    copy = _device_copy(arrays)[0]
    if copy is not None:
        args.append(copy)
    return args, tuple(quantized)


def _q8_words(args, quantized, dtype, per, copy):
    """The word views of an 8-bit kernel's arrays (``kernels.quant8.cuda_source`` with
    ``words``), after ``args`` (:func:`_q8_device_args`): each float32 array's first ``4 * (n
    // 4)`` elements as ``uint64`` words (a placeholder: an empty ``uint64`` one), each 8-bit
    array's codes as ``uint32`` words, the param copy as ``uint64`` words; ``None`` (the
    strided layout, element by element) unless ``config.CUDA_8BIT_WORDS`` is set, the
    parameters are float32, a thread takes ``quant8.WORD`` elements, the buffer has a whole
    word and every array starts on a word boundary."""
    from .kernels import quant8
    n = args[0].shape[0]
    n4 = n - n % quant8.WORD
    if (not config.CUDA_8BIT_WORDS or np.dtype(dtype) != np.float32 or per != quant8.WORD
            or n4 == 0):
        return None
    views, k = [], 0                  # (array, word type, or None: a placeholder)
    for q in quantized:
        views.append((args[k], np.uint32) if q else
                     (args[k], np.uint64 if args[k].shape[0] == n else None))
        k += 5 if q else 1
    if copy:
        views.append((args[k], np.uint64))
    if not all(w is None or _on_boundary(a, np.dtype(w).itemsize) for a, w in views):
        return None
    return tuple(_placeholder(_cuda(), np.uint64) if w is None else a[:n4].view(w)
                 for a, w in views)


def _on_boundary(a, nbytes):
    """Whether device array ``a`` starts on an ``nbytes`` boundary (a word view of it is
    aligned)."""
    return interface(a)["data"][0] % nbytes == 0


def cuda_q8_runner(spec, arrays, dtype, hp, block, scales):
    """``run(t)`` for a step on 8-bit state on the device (``kernels.quant8.cuda_source``):
    one thread block per quantization block, the map's tables copied to the device once; a
    thread's four neighbouring elements as words where :func:`_q8_words` allows (decided when
    the runner is made)."""
    kernels = _kernels()
    st = np.dtype(dtype).type
    args, quantized = _q8_device_args(spec, arrays, dtype, scales)
    n = int(np.prod(arrays["param"].shape))
    nb = -(-n // block)
    compiled = {}

    per, nt = q8_threads(block)
    copy = _device_copy(arrays)[1]
    words = _q8_words(args, quantized, dtype, per, copy)

    def make(scaled, options):
        return kernels.get_q8(spec.kernel, scaled, options, quantized,
                              np.dtype(dtype).name, per, copy, nt,
                              config.CUDA_8BIT_THREADS_PER_SM, words is not None)

    pre = None
    if spec.kernel.norm_names:
        pre = _PrePass(spec, _q8_state_args(args, arrays), [(0, n)], dtype,
                       q8=(quantized, block))
    launch = Launcher()

    def run(t, hp_now=None, factor=None):
        if n == 0:
            return
        hp_now = hp if hp_now is None else hp_now
        options, scaled, kernel, packed = _launch_parts(spec, hp_now, t, factor, st,
                                                        compiled, make)
        if pre is not None:
            packed = tuple(pre(np.array([packed], st), [hp_now], t, scaled)[0])
        blocks = _grid(kernels, nb * block)[0]
        launch(kernel, min(blocks, nb), nt, *args, *(words or ()), packed)
    return run


def q8_threads(block):
    """``(per_thread, threads)`` of the 8-bit kernels for quantization blocks of ``block``
    elements: the most elements per thread up to ``config.CUDA_8BIT_PER_THREAD`` that divides
    the block, and the threads per block that leaves."""
    per = max(1, int(config.CUDA_8BIT_PER_THREAD))
    while block % per:
        per -= 1
    return per, block // per


def cuda_q8_grouped_runner(spec, arrays, dtype, rows, segments, block, scales):
    """A grouped step on 8-bit device state: one launch, one thread block per quantization
    block as :func:`cuda_q8_runner`, each thread stepping its element with the kernel and the
    row of scalars of its segment (the segments a device array made once; the rows by value
    with the launch, or, more than ``GROUPED_MAX_ROWS`` of them, in a device array copied
    before each launch; a quantization block may hold pieces of several segments). A record
    with a pre-pass: a row per segment, after one pre-pass launch for all of them
    (:class:`_PrePass`)."""
    kernels = _kernels()
    args, quantized = _q8_device_args(spec, arrays, dtype, scales)
    nb = -(-int(np.prod(arrays["param"].shape)) // block)
    per, nt = q8_threads(block)
    copy = _device_copy(arrays)[1]
    words = _q8_words(args, quantized, dtype, per, copy)

    def make_run(rows, segments, prepass=None):
        launch = _grouped_launch(kernels, list(args) + list(words or ()), dtype, len(rows),
                                 lambda segs: (min(_grid(kernels, nb * block)[0], nb), nt))

        def get_kernel(scaled, option_sets):
            return kernels.get_q8_grouped(spec.kernel, scaled, option_sets,
                                          None if len(rows) > GROUPED_MAX_ROWS else len(rows),
                                          quantized, np.dtype(dtype).name, per, copy, nt,
                                          config.CUDA_8BIT_THREADS_PER_SM, words is not None)
        return _one_launch(spec, dtype, rows, segments, nb, get_kernel, launch, prepass)

    if not spec.kernel.norm_names:
        return make_run(rows, segments)
    return _row_per_segment(rows, segments, lambda rows, segments: make_run(
        rows, segments, _PrePass(spec, _q8_state_args(args, arrays),
                                 [(lo, hi) for lo, hi, _ in segments], dtype,
                                 q8=(quantized, block))))


def _q8_state_args(args, arrays):
    """An 8-bit kernel's arguments without its param copy (what the pre-pass reads)."""
    return args[:-1] if arrays.get("param_copy") is not None else args


class _PrePass:
    """The read-only pre-pass of a spec whose kernel record has ``norms`` (LAMB's per-tensor
    norms), on the device, over every segment of one arena in one launch per option combination
    (in practice one launch, whatever the number of segments): chunks of ``config.NORM_CHUNK``
    elements from each segment's start (a table of ``(start, end, row)`` made once), each
    chunk's sums of squares in a fixed order (``kernels.cuda.get_norms``), each segment's chunk
    sums added on the host in order, so a segment gets the bits it gets when stepped alone. One
    host synchronization per launch. ``segments``: ``[(lo, hi), ...]``, segment ``i`` with row
    ``i``; ``args``: the record's arrays over the arena. ``bits``: which arrays hold bfloat16
    state (read through bfloat16 views); ``q8``: ``(quantized, block)``, the arrays are an
    8-bit kernel's (:func:`_q8_device_args`, no param copy), the 8-bit ones read through
    dequantizing views."""

    def __init__(self, spec, args, segments, dtype, bits=None, q8=None):
        self.spec, self.args, self.bits, self.q8 = spec, args, bits, q8
        self.k = len(spec.kernel.norm_names)
        chunk = config.NORM_CHUNK
        table, self.spans = [], []
        for i, (lo, hi) in enumerate(segments):
            first = len(table)
            table += [(a, min(hi, a + chunk), i) for a in range(lo, hi, chunk)]
            self.spans.append((first, len(table)))
        self.table = np.array(table, np.int64).reshape(-1, 3)
        self.tables = {}            # a tuple of segments: their chunks' table, sums' array
        self.upload = _DeviceRows(dtype)
        self.launch = Launcher()

    def _launch(self, kernels, members, options, scaled, rows):
        """The chunk sums of segments ``members`` (one option combination), on the host."""
        spec, k = self.spec, self.k
        made = self.tables.get(members)
        if made is None:           # the chunks' table and their sums' array, made once
            picked = np.concatenate([self.table[a:b] for a, b in
                                     (self.spans[i] for i in members)])
            made = self.tables[members] = (_cuda().to_device(picked), len(picked),
                                           _cuda().device_array((len(picked), k), np.float64))
        table, chunks, out = made
        n_rows = rows.shape[0]
        if n_rows > GROUPED_MAX_ROWS:
            rows, n_rows = self.upload(rows.ravel()), None
        else:
            rows = tuple(rows.ravel())
        grid = (min(chunks, 8192), kernels.NORM_THREADS)
        if self.q8 is not None:
            quantized, block = self.q8
            self.launch(kernels.get_norms_q8(spec.kernel, scaled, options, k, quantized, n_rows),
                        *grid, *self.args, np.int64(block), table, rows, out)
        elif self.bits is None:
            self.launch(kernels.get_norms(spec.kernel, scaled, options, k, n_rows), *grid,
                        self.args, table, rows, out)
        else:
            self.launch(kernels.get_norms_bf16(spec.kernel, scaled, options, k, self.bits,
                                               n_rows), *grid,
                        *self.args, np.uint64(0), np.int64(0), table, rows, out)
        return out.copy_to_host()

    def __call__(self, rows, hps, t, scaled):
        """``rows`` (a 2-D array of the buffer dtype: row ``i`` segment ``i``'s scalars, the
        gradient factor last when ``scaled``; ``hps[i]`` its hyperparameters) with what
        ``spec.segment_scalars`` sets from each segment's sums replaced (in place)."""
        kernels = _kernels()
        spec = self.spec
        sums = np.zeros((len(rows), self.k))
        for options, members in spec.option_kinds(hps, t).items():
            members = [i for i in members if self.spans[i][1] > self.spans[i][0]]
            if not members:                 # (empty segments: no chunks, sums of 0)
                continue
            host = self._launch(kernels, tuple(members), dict(options), scaled, rows)
            sums[members] = sums_in_order(host, [self.spans[i][1] - self.spans[i][0]
                                                 for i in members])
        spec.fill_segment_rows(hps, t, sums, rows)
        return rows


def sums_in_order(parts, counts, padded_max=128):
    """Row ``s``: the next ``counts[s]`` (> 0) rows of ``parts`` (float64, one after the
    other) added in order, as ``np.cumsum`` adds them: each tensor's chunk sums, the order the
    tensor's sums have when it is stepped alone. Tensors of at most ``padded_max`` chunks in
    one ``np.cumsum``, padded with zeros to the longest of them (adding +0.0 to a sum of
    squares changes no bit; a call per tensor cost ~2.5 us each), longer ones (and all of
    eight or fewer tensors) one by one."""
    counts = np.asarray(counts, np.int64)
    starts = np.cumsum(counts) - counts
    out = np.empty((len(counts),) + parts.shape[1:])
    long = counts > (padded_max if len(counts) > 8 else 0)      # a few: one by one
    for s in np.flatnonzero(long):
        out[s] = np.cumsum(parts[starts[s]:starts[s] + counts[s]], axis=0)[-1]
    short = np.flatnonzero(~long)
    if short.size:
        cols = np.arange(counts[short].max())
        index = np.where(cols < counts[short, None], starts[short, None] + cols, len(parts))
        padded = np.concatenate([parts, np.zeros((1,) + parts.shape[1:])])
        out[short] = np.cumsum(padded[index], axis=1)[:, -1]
    return out


def _row_per_segment(rows, segments, make_run):
    """A grouped step of a record with a pre-pass, which sets a value per segment (LAMB's
    trust ratio): ``make_run(rows, segments)`` gets one row per segment (segment ``i`` with row
    ``i``), and the ``run(t, rows_now=None, factor=None)`` returned takes the groups' rows."""
    of_row = [r for _, _, r in segments]
    run = make_run([rows[r] for r in of_row],
                   [(lo, hi, i) for i, (lo, hi, _) in enumerate(segments)])

    def run_by_segment(t, rows_now=None, factor=None):
        run(t, None if rows_now is None else [rows_now[r] for r in of_row], factor)
    return run_by_segment


GROUPED_MAX_ROWS = 16    # more distinct rows of scalars: in a device array copied before the
                         # launch (they travel with the launch, whose arguments are limited to
                         # 4 KiB)


def cuda_grouped_runner(spec, arrays, dtype, rows, segments, seed=None):
    """A grouped step on device arrays: one launch for all segments (``kernels.groups``: the
    segments cut into tiles, a small device array made once; the rows of scalars by value with
    the launch, or, more than ``GROUPED_MAX_ROWS`` of them, in a device array). A record with a
    pre-pass (a norm per segment): a row per segment, after one pre-pass launch for all of them
    (:class:`_PrePass`). bfloat16 state and/or a param copy: the same kernel with those arrays
    wrapped as in :func:`cuda_runner` (stochastic rounding from each element's index in the
    arena, as when a segment is stepped alone)."""
    flat = {k: as_device_array(a).reshape(-1) for k, a in arrays.items()}
    kernels = _kernels()
    ph = _placeholder(_cuda(), dtype)
    args = tuple(flat.get(n, ph) for n in spec.kernel.arrays)
    n = args[0].shape[0]
    bits = tuple(np.dtype(a.dtype) == np.uint16 for a in args)
    copy, kind = _device_copy(arrays)
    views = any(bits) or copy is not None
    pc = () if copy is None else (copy,)

    def more(t):            # before the tiles: the param copy, the rounding key, the offset
        from .precision import rounding_key
        return pc + (np.uint64(0 if seed is None else rounding_key(seed, t)), np.int64(0))
    extra = more if views else None

    def make_run(rows, segments, prepass=None):
        from .kernels.groups import cuda_tiles
        blocks, threads = _grid(kernels, n)
        launch = _grouped_launch(kernels, args, dtype, len(rows),
                                 lambda tiles: (min(blocks, tiles.shape[0]), threads), extra)

        def get_kernel(scaled, option_sets):
            return kernels.get_grouped(spec.kernel, scaled, option_sets,
                                       None if len(rows) > GROUPED_MAX_ROWS else len(rows),
                                       bits if views else None, seed is not None, kind)
        return _one_launch(spec, dtype, rows, segments, n, get_kernel, launch, prepass,
                           lambda segs: cuda_tiles(segs, n, blocks, threads))

    if not spec.kernel.norm_names:
        run = make_run(rows, segments)
        run.device_factor = True       # (a clipped step's factor may stay on the device)
        return run
    return _row_per_segment(rows, segments, lambda rows, segments: make_run(
        rows, segments, _PrePass(spec, args, [(lo, hi) for lo, hi, _ in segments], dtype,
                                 bits if any(bits) else None)))


class _DeviceRows:
    """Rows of scalars in a device array, for one launch site, uploaded without a host
    synchronization: a device array made once is filled by an asynchronous copy on the default
    stream (ordered with the launches) from one of ``RING`` page-locked host buffers, each
    reused only after the copy that read it has run (an event each). (``cuda.to_device`` per
    launch allocated device memory and made a blocking copy, which waits for the GPU: the
    host's launch work then no longer overlaps the previous kernel.) Under the simulator:
    ``to_device``."""
    RING = 4

    def __init__(self, dtype):
        self.st = np.dtype(dtype).type
        self.size = -1

    def __call__(self, values):
        cuda = _cuda()
        if simulator_active():
            return cuda.to_device(np.array(values, self.st))
        n = len(values)
        if n != self.size:
            self.dev = cuda.device_array(n, self.st)
            self.host = [cuda.pinned_array(n, self.st) for _ in range(self.RING)]
            self.done = [cuda.event(timing=False) for _ in range(self.RING)]
            self.used = [False] * self.RING
            self.size, self.next = n, 0
        j = self.next
        self.next = (j + 1) % self.RING
        if self.used[j]:
            self.done[j].synchronize()
        self.host[j][:] = values
        stream = cuda.default_stream()
        self.dev.copy_to_device(self.host[j], stream=stream)
        self.done[j].record(stream)
        self.used[j] = True
        return self.dev


def _grouped_launch(kernels, args, dtype, n_rows, grid, extra=None):
    """``launch(kernel, segs, rows, t)`` of a one-launch grouped kernel over ``args``: the
    rows of scalars (a flat tuple) go with the launch, or, more than ``GROUPED_MAX_ROWS`` of
    them, in a 1-D device array copied first (:class:`_DeviceRows`; the kernel then built for
    array rows). ``grid(segs)``: the launch's ``(blocks, threads)``; ``extra(t)``: arguments
    between the arrays and ``segs``."""
    upload = _DeviceRows(dtype) if n_rows > GROUPED_MAX_ROWS else None
    launcher = Launcher()

    def launch(kernel, segs, packed, t, factor=None):
        packed = upload(packed.ravel()) if upload is not None else tuple(packed.ravel())
        if factor is not None:          # a gradient factor left on the device: read there
            packed = (packed, factor)
        more = () if extra is None else extra(t)
        launcher(kernel, *grid(segs), *args, *more, segs, packed)
    return launch


def _one_launch(spec, dtype, rows, segments, n, get_kernel, launch, prepass=None, cut=None):
    """``run(t, rows_now=None, factor=None)`` of a grouped step in one launch:
    ``get_kernel(scaled, option_sets)`` (one kind per distinct option combination of the rows),
    the segments ``(lo, hi, row, kind)`` as a device array made once per set of kinds, and
    ``launch(kernel, segs, rows, t)`` with every row's scalars in a 2-D array of the buffer
    dtype (the gradient factor last in each row when there is one; :func:`_rows`). ``n == 0``:
    nothing to launch. ``prepass(rows, hps, t, scaled)``: ``rows`` with what the pre-pass sets
    (a record with norms: one row per segment, :class:`_PrePass`). ``cut(segs)``: the
    table the kernel takes instead of the segments' (the float kernel's tiles). A ``factor``
    that is a device array (a clipped step's, left on the device) is not written in the rows:
    the kernel reads it after each row (``launch(..., factor)``)."""
    cuda = _cuda()
    st = np.dtype(dtype).type
    plans = {}
    settled = settled_step(rows)

    def plan(rows_now, t, scaled):
        option_sets, kinds = [], []
        for _, _, r in segments:
            options = spec.step_options(rows_now[r], t)
            if options not in option_sets:
                option_sets.append(options)
            kinds.append(option_sets.index(options))
        key = (scaled,) + tuple(tuple(o.items()) for o in option_sets) + tuple(kinds)
        work = plans.get(key)
        if work is None:
            segs = np.array([(lo, hi, r, k) for (lo, hi, r), k in zip(segments, kinds)],
                            np.int64)
            if cut is not None:
                segs = cut(segs)
            work = plans[key] = (get_kernel(scaled, option_sets), cuda.to_device(segs))
        return work

    def run(t, rows_now=None, factor=None):
        if n == 0:
            return
        scaled = factor is not None
        on_device = scaled and not isinstance(factor, (float, np.floating))
        if on_device:                # the kernel reads it after each row's scalars
            scaled = DEVICE_FACTOR
        if rows_now is None:         # no schedules: the options depend on t only via t == 1
            rows_now = rows          # (each row's own t: _spec.settled_step)
            key = (min(t, settled), scaled)
            work = plans.get(key)
            if work is None:
                work = plans[key] = plan(rows, t, scaled)
        else:
            work = plan(rows_now, t, scaled)
        kernel, segs = work
        packed = _rows(spec, rows_now, t, st, None if on_device else factor, settled > 2)
        if prepass is not None:
            packed = prepass(packed, rows_now, t, scaled)
        if on_device:
            launch(kernel, segs, packed, t, factor)
        else:
            launch(kernel, segs, packed, t)
    return run


def _rows(spec, hps, t, st, factor=None, lagging=True):
    """The rows of packed scalars of ``hps`` at step ``t`` as a 2-D array of ``st`` (the
    gradient factor last in each row when given; ``spec.fill_scalar_rows`` computes each
    distinct row once: a row per tensor repeats its group's, :func:`_row_per_segment`)."""
    k = len(spec.kernel.scalars)
    out = np.empty((len(hps), k + (factor is not None)), st)
    spec.fill_scalar_rows(hps, t, out[:, :k], lagging=lagging)
    if factor is not None:
        out[:, k] = factor
    return out


def device_sum_of_squares(g, chunk):
    """The sum of squares (float64) of a device array, deterministic: chunks of ``chunk``
    elements (``fastopt.config.CUDA_NORM_CHUNK``) reduced on the device in a fixed order
    (``kernels.cuda.chunk_sum_of_squares``), the chunk sums combined on the device in a fixed
    order too (``kernels.cuda.finish_sum_of_squares``), both in one launch
    (``kernels.cuda.sum_of_squares``: the last block to finish adds). Not the CPU's lane
    order, so it equals the CPU's norm to rounding, not bit for bit; a clipped CUDA step's
    norm is this one."""
    check_device_group({"grad": g}, "grad_norm()")
    x = as_device_array(g).reshape(-1)
    if x.shape[0] == 0:
        return 0.0
    return DeviceNorm(x, chunk, launch=_NORM_LAUNCH, pinned=False)()


_NORM_LAUNCH = Launcher(keep_arrays=False)   # (a gradient's view is made per call)


class DeviceNorm:
    """The reduction pass of one validated device gradient (:func:`device_sum_of_squares`:
    the same kernels, order and bits) for its steps: ``norm()`` returns the sum of squares
    (one 8-byte copy to the host); ``factor(inv, max_norm)`` leaves the clipped step's
    gradient factor on the device and returns its one-element array, the host waiting for
    nothing (the norm stays on the device until ``total()`` is read: the buffers'
    ``grad_norm``). The flat view and the device arrays are made once, the kernels launched
    directly (``fastopt._launch``). Kept with the step's validation (``_step.Prepared``), so
    one buffers object's steps, which hold its lock, are its only users. ``dtype``: the
    buffers' (the factor's); ``pinned``: the host's copy of the sum in page-locked memory
    (made once per gradient; a one-off norm takes ordinary memory); ``frozen``: a
    ``fastopt.scaling.FrozenPlan`` of ``chunk`` (``kernels.cuda.sum_of_squares_frozen``)."""

    def __init__(self, g, chunk, dtype=np.float64, launch=None, pinned=True, frozen=None):
        cuda = _cuda()
        self.kernels = _kernels()
        self.x = as_device_array(g).reshape(-1)
        self.chunk = np.int64(chunk)
        self.chunks = -(-self.x.shape[0] // chunk)
        self.frozen = ()        # frozen groups' elements: not read, counted as zeros
        if frozen is not None:
            n = self.x.shape[0]     # (a last run [n, n): the array is never empty)
            runs = np.concatenate((frozen.runs, np.array([[n, n]], np.int64)))
            self.frozen = tuple(cuda.to_device(np.ascontiguousarray(a))
                                for a in (frozen.kind, runs, frozen.first.astype(np.int64)))
        self.partial = cuda.device_array(max(1, self.chunks), np.float64)
        self.sum = cuda.device_array(1, np.float64)
        self.fac = cuda.device_array(1, dtype)
        self.done = cuda.to_device(np.zeros(1, np.int32))   # (the last block resets it)
        self.no_factor = self.fac[:0]         # (a norm alone: no factor written)
        self.host = (cuda.pinned_array(1, np.float64) if pinned and not simulator_active()
                     else np.empty(1))
        self.launch = Launcher() if launch is None else launch

    def _reduce(self, inv, max_norm, fac):
        k = self.kernels
        if self.frozen:
            self.launch(k.sum_of_squares_frozen, min(self.chunks, 8192), k.NORM_THREADS,
                        self.x, self.chunk, self.partial, self.done, np.float64(inv),
                        np.float64(max_norm), self.sum, fac, *self.frozen)
            return
        self.launch(k.sum_of_squares, min(self.chunks, 8192), k.NORM_THREADS, self.x,
                    self.chunk, self.partial, self.done, np.float64(inv),
                    np.float64(max_norm), self.sum, fac)

    def __call__(self):
        if self.chunks == 0:
            return 0.0
        self._reduce(1.0, 0.0, self.no_factor)
        return self.total()

    def total(self):
        """The sum of squares the last launch left on the device (waits for it)."""
        self.sum.copy_to_host(self.host)
        return float(self.host[0])

    def factor(self, inv, max_norm):
        """Launch the reduction pass of a clipped step (``chunks > 0``): the gradient factor
        ``inv * min(1, max_norm / (sqrt(sum) * inv + 1e-6))`` in :attr:`fac`, returned."""
        self._reduce(inv, max_norm, self.fac)
        return self.fac
