"""The step driver and its one cache.

Every public ``*_step`` function calls :func:`run_step`, which

1. validates everything (the buffers' type and step counter, every hyperparameter, also as
   rounded to the buffer dtype, the state the options need, every array: dtype, shape,
   layout, writability, no overlap, one device), chooses the backend
   (``fastopt._backends``) and builds a runner: a :class:`Prepared` step;
2. runs it and increments ``buffers.step``.

Nothing is written before step 2, so a call that raises leaves every array and ``.step``
byte-identical.

The cache: a :class:`Prepared` step is remembered on its buffers object (one per buffers,
host or device) and reused only when :meth:`Prepared.matches` says that the next call is the
same call: same optimizer, backend, ``parallel``, hyperparameter values and types, and the
buffers still holding the very arrays that were validated, with the same shape, strides, dtype
and writeable flag (device arrays: the same pointer, shape, strides, type and read-only flag).
Anything else takes the full path. A training loop repeats the same call, so it pays for the
validation once.
"""
import math
import numbers
import threading

import numpy as np

from . import _backends, config, scaling
from ._core import (check_8bit_scales, check_flag, check_group, check_param_copy, check_real,
                    check_step, is_cuda_array)
from ._rows import Behind


def _device_key(a):
    from ._cuda_backend import interface
    cai = interface(a)
    return (cai["data"], tuple(cai["shape"]), cai.get("strides"), cai["typestr"])


_FIXED = {}


def _fixed(a):
    """Whether ``a`` is one of numba's own device arrays (``DeviceNDArray``), whose device
    pointer, shape, strides and dtype are set when it is made and never change: a prepared
    step checks such an array by identity alone, not by reading its
    ``__cuda_array_interface__`` again each step (~3-5 us an array; torch and CuPy arrays can
    be resized or re-pointed in place, and are checked each step)."""
    t = type(a)
    fixed = _FIXED.get(t)
    if fixed is None:
        fixed = _FIXED[t] = (t.__name__ == "DeviceNDArray"
                             and t.__module__.startswith("numba"))
    return fixed


NO_LOOP = (None, None, False)      # (max_grad_norm, grad_scale, skip_nonfinite)


def check_loop(loop):
    """The training-loop options of a step: ``max_grad_norm`` (None or > 0), ``grad_scale``
    (None or > 0, the gradient is divided by it) and ``skip_nonfinite`` (bool)."""
    max_norm, scale, skip = loop
    if max_norm is not None:
        max_norm = check_real("max_grad_norm", max_norm, low=0.0, low_open=True)
    if scale is not None:
        scale = check_real("grad_scale", scale, low=0.0, low_open=True)
    skip = check_flag("skip_nonfinite", skip)
    return max_norm, scale, skip


class Prepared:
    """One validated call of a step function on one buffers object."""
    __slots__ = ("spec", "backend", "parallel", "values", "types", "host", "device", "run",
                 "schedules", "template", "dtype", "checked_loop", "rows", "seed", "copy",
                 "q8", "norm", "behind", "frozen")

    def __init__(self, spec, backend, parallel, values, arrays, run, schedules=None,
                 template=None, dtype=None, checked_loop=None, rows=None):
        self.spec, self.backend, self.parallel, self.run = spec, backend, parallel, run
        self.schedules, self.template, self.dtype = schedules, template, dtype
        self.checked_loop = checked_loop
        self.rows = rows        # a grouped step: its _Rows
        self.behind = 0 if rows is None else rows.max_behind    # its groups' steps_behind
        self.seed = None        # the buffers' rounding_seed it was built for (set by _validate)
        self.copy = None        # and their param_copy
        self.q8 = None          # and their 8-bit state: (block_size, ((field, scales), ...))
        self.norm = None        # a device gradient's norm pass (_cuda_backend.DeviceNorm)
        self.frozen = None      # a host gradient's passes without frozen groups (FrozenPlan)
        self.values = values
        self.types = tuple(map(type, values))
        self.host, self.device = [], []
        for name, a in arrays.items():
            if isinstance(a, np.ndarray):
                # the gradient may be read-only: only the arrays a step writes keep their flag
                self.host.append((name, a, a.shape, a.strides, a.dtype, name != "grad"))
            else:                 # (the key of an array that cannot change: None)
                self.device.append((name, a, None if _fixed(a) else _device_key(a)))

    def matches(self, spec, buffers, backend, parallel, values):
        """Whether a call with these arguments on ``buffers`` is this very call (``values``:
        the hyperparameter values followed by the training-loop options)."""
        if (self.spec is not spec or self.values != values or self.backend != backend
                or self.parallel != parallel or self.types != tuple(map(type, values))
                or buffers.rounding_seed != self.seed or buffers.param_copy is not self.copy):
            return False
        if self.q8 is not None:
            block, scales = self.q8
            own = buffers.state_absmax
            if (buffers.block_size != block or not isinstance(own, dict)
                    or any(own.get(f) is not a or a.shape != shape for f, a, shape in scales)):
                return False
        for name, a, shape, strides, dtype, writable in self.host:
            if (getattr(buffers, name) is not a or a.shape != shape or a.strides != strides
                    or (a.dtype is not dtype and a.dtype != dtype)
                    or (writable and not a.flags.writeable)):
                return False
        for name, a, key in self.device:
            if getattr(buffers, name) is not a or (key is not None and _device_key(a) != key):
                return False
        return True


    def scheduled_hp(self, step):
        """The hyperparameters of this call at ``step``, its schedules evaluated, validated
        like any call (raises before anything is written); for a grouped step, the list of
        each group row's."""
        if self.rows is not None:
            return self.rows.at(self.spec, step, self.dtype)
        return _checked_hp(self.spec, _evaluate(self.template, self.schedules, step),
                           self.dtype, step + 1)


def _schedules(spec, hyper):
    """The hyperparameters given as schedules (callables); flags cannot be."""
    found = {k: v for k, v in hyper.items() if callable(v)}
    if found:
        kinds = {h.name: h.kind for h in spec.hypers}
        flags = sorted(k for k in found if kinds.get(k) != "real")
        if flags:
            raise TypeError(f"{spec.step_name}(): {', '.join(flags)} cannot follow a schedule "
                            f"(only real hyperparameters can; flags are compile-time options)")
        fixed = sorted(h.name for h in spec.hypers if h.name in found and not h.schedulable)
        if fixed:
            raise TypeError(f"{spec.step_name}(): {', '.join(fixed)} cannot follow a schedule "
                            f"in {spec.name} (its host-side state assumes a constant value)")
    return found


def _evaluate(hyper, schedules, step):
    return {k: (schedules[k](step) if k in schedules else v) for k, v in hyper.items()}


def _checked_hp(spec, hyper, dtype, t):
    hp = spec.validate(hyper)
    spec.check_rounded(hp, dtype)
    scalars = spec.kernel_scalars(hp, t, np.dtype(dtype).type)
    if not np.isfinite(scalars).all():
        named = dict(zip(spec.kernel.scalars, scalars.tolist()))
        raise ValueError(f"{spec.step_name}(): these hyperparameters give a non-finite kernel "
                         f"scalar in {np.dtype(dtype).name} ({named})")
    return hp


class _Rows:
    """The hyperparameter rows of a grouped step: one per distinct set of values (the groups',
    and the call's own for elements in no group), and the segments ``(lo, hi, row)``."""
    __slots__ = ("templates", "labels", "schedules", "static", "segments", "behind", "frozen")

    def __init__(self, spec, groups, hyper, n, split=()):
        from .groups import FROZEN, STEPS_BEHIND, Groups
        if groups is None:
            groups = Groups(n, [])
        elif not isinstance(groups, Groups):
            raise TypeError(f"{spec.step_name}(): groups must be a fastopt.Groups, got "
                            f"{type(groups).__name__}")
        if groups.size != n:
            raise ValueError(f"{spec.step_name}(): the groups cover a buffer of {groups.size} "
                             f"elements but the parameter has {n}")
        kinds = {h.name: h.kind for h in spec.hypers}
        self.templates, self.labels, self.behind, index = [], [], [], {}

        def row(template, label, behind=0):
            key = (behind,) + tuple((k, type(v), id(v) if callable(v) else v)
                                    for k, v in template.items())
            r = index.get(key)
            if r is None:
                r = index[key] = len(self.templates)
                self.templates.append(template)
                self.labels.append(label)
                self.behind.append(behind)
            return r

        group_rows = []
        for g, values in enumerate(groups.groups):
            if values.get(FROZEN):
                group_rows.append(None)     # not stepped: no row, no segment
                continue
            behind = values.get(STEPS_BEHIND, 0)
            values = {k: v for k, v in values.items() if k != STEPS_BEHIND}
            for k in values:
                if k not in kinds:
                    raise TypeError(f"{spec.step_name}(): group {g} sets {k!r}, which is not "
                                    f"a hyperparameter of {spec.name} (its hyperparameters: "
                                    f"{', '.join(kinds)})")
                if kinds[k] != "real":
                    raise TypeError(f"{spec.step_name}(): group {g} sets the boolean option "
                                    f"{k!r}; options apply to the whole step")
            group_rows.append(row(dict(hyper, **values), f"group {g}", behind))
        segments, pos, frozen = [], 0, []
        for lo, hi, g in groups.segments + ((n, n, None),):
            if lo > pos:
                segments.append((pos, lo, row(dict(hyper), "the call's values")))
            if hi > lo:
                if g is not None and group_rows[g] is None:
                    if frozen and frozen[-1][1] == lo:
                        frozen[-1] = (frozen[-1][0], hi)
                    else:
                        frozen.append((lo, hi))
                else:
                    segments.append((lo, hi, group_rows[g]))
            pos = hi
        self.frozen = tuple(frozen)         # the elements left out, merged ranges in order
        merged = []
        for seg in segments:
            if merged and merged[-1][2] == seg[2] and merged[-1][1] == seg[0]:
                merged[-1] = (merged[-1][0], seg[1], seg[2])
            else:
                merged.append(seg)
        if spec.segment_scalars is not None:
            # a per-segment pre-pass (LAMB's trust ratio): segments also end at every tensor
            # of the layout and every range (or tensor) a group selects
            points = set(split)
            for rs in groups.ranges:
                for lo, hi in rs:
                    points.update((lo, hi))
            cut = []
            for lo, hi, r in merged:
                inner = sorted(x for x in points if lo < x < hi)
                for a, b in zip([lo] + inner, inner + [hi]):
                    cut.append((a, b, r))
            merged = cut
        self.segments = tuple(merged)
        self.schedules = [_schedules(spec, t) for t in self.templates]
        self.static = None

    def at(self, spec, step, dtype):
        """Each row's hyperparameters at ``step``, validated (errors name the group); a row of
        a group with ``steps_behind`` as a :class:`fastopt._rows.Behind` (its own count)."""
        out = []
        for r, (template, schedules) in enumerate(zip(self.templates, self.schedules)):
            if not schedules and self.static is not None:
                out.append(self.static[r])
                continue
            behind = self.behind[r]
            try:
                hp = _checked_hp(spec, _evaluate(template, schedules, step), dtype,
                                 step + 1 - behind)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{spec.step_name}(): {self.labels[r]}: {e}") from None
            out.append(Behind(hp, behind) if behind else hp)
        if self.static is None:
            self.static = out
        return out

    @property
    def max_behind(self):
        return max(self.behind, default=0)

    def check_step(self, spec, step):
        """A group with ``steps_behind=k`` has its own count ``step - k`` (> 0 at the buffers'
        ``step``, the steps taken before this one); raises ValueError before any write."""
        for r, k in enumerate(self.behind):
            if k > step:
                raise ValueError(f"{spec.step_name}(): {self.labels[r]} has steps_behind={k} "
                                 f"but the buffers have taken {step} step(s); a group's own "
                                 f"count (the buffers' step - steps_behind) cannot be "
                                 f"negative")

    @property
    def scheduled(self):
        return any(self.schedules)


def layout_points(spec, layout, n):
    """The element offsets where the tensors of ``layout`` (a :class:`fastopt.FlatParams` or
    a sequence of tensor sizes) start and end, checked against the buffer size ``n``."""
    from .flat import FlatParams
    if isinstance(layout, FlatParams):
        size = layout.size
        sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in layout.layout.values()]
    elif isinstance(layout, (list, tuple)):
        sizes = []
        for i, x in enumerate(layout):
            if (isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral)
                    or x < 0):
                raise TypeError(f"{spec.step_name}(): layout[{i}] must be a tensor size "
                                f"(an int >= 0), got {x!r}")
            sizes.append(int(x))
        size = sum(sizes)
    else:
        raise TypeError(f"{spec.step_name}(): layout must be a fastopt.FlatParams or a list "
                        f"of tensor sizes, got {type(layout).__name__}")
    if size != n:
        raise ValueError(f"{spec.step_name}(): the layout covers {size} elements but the "
                         f"parameter has {n}")
    points, pos = [], 0
    for x in sizes:
        pos += x
        points.append(pos)
    return tuple(points)


def _values(hyper, loop, groups, layout):
    values = tuple(hyper.values()) + loop
    if groups is not None:
        values += (groups,)
    if layout is not None:
        # (a list of sizes by value: changed in place, it must not match the cached step)
        values += ("layout", tuple(layout) if isinstance(layout, list) else layout)
    return values


def prepare(spec, buffers, backend, hyper, parallel=None, loop=NO_LOOP, groups=None,
            layout=None):
    """The :class:`Prepared` step for this call: the one cached on ``buffers`` when it
    matches, else a newly validated one (which replaces it). Raises before any write."""
    values = _values(hyper, loop, groups, layout)
    prep = getattr(buffers, "_prepared", None)
    if type(prep) is Prepared and prep.matches(spec, buffers, backend, parallel, values):
        return prep
    prep = _validate(spec, buffers, backend, hyper, parallel, values, loop, groups, layout)
    buffers.__dict__["_prepared"] = prep
    return prep


def _validate(spec, buffers, backend, hyper, parallel, values, loop=NO_LOOP, groups=None,
              layout=None):
    if not isinstance(buffers, spec.buffers_cls):
        raise TypeError(f"{spec.step_name}() needs {spec.buffers_cls.__name__}, got "
                        f"{type(buffers).__name__}; create them with "
                        f"fastopt.{spec.buffers_cls.__name__}.zeros(param, grad)")
    owner = type(buffers).__name__
    step = check_step(buffers.step, owner)
    schedules = _schedules(spec, hyper)
    template = dict(hyper)
    if schedules:
        hyper = _evaluate(hyper, schedules, step)
    hp = spec.validate(hyper)
    parallel = _backends.check_parallel(parallel)
    rows = row_hps = None
    split = ()
    if layout is not None:
        if spec.segment_scalars is None:
            raise TypeError(f"{spec.step_name}(): layout= gives the tensors of a per-tensor "
                            f"pre-pass, which {spec.name} does not have")
        split = layout_points(spec, layout, buffers.size)
    if groups is not None or split:
        rows = _Rows(spec, groups, template, buffers.size, split)
        row_hps = []
        for label, t, sc in zip(rows.labels, rows.templates, rows.schedules):
            try:
                row_hps.append(spec.validate(_evaluate(t, sc, step)))
            except (TypeError, ValueError) as e:
                raise type(e)(f"{spec.step_name}(): {label}: {e}") from None
    needed = [hp] + (row_hps or [])
    fields = tuple(f.name for f in spec.state if any(f.needed(h) for h in needed))
    for f in fields:
        if getattr(buffers, f) is None:
            h = next(h for h in needed if f in spec.required_state(h))
            raise ValueError(spec.missing_state_message(f, h))
    arrays = buffers.arrays(fields)
    dtype = check_group(arrays, owner)
    copy = buffers.param_copy
    if copy is not None:
        arrays = dict(arrays, param_copy=check_param_copy(copy, arrays, owner))
    hp = _checked_hp(spec, hyper, dtype, step + 1)
    if rows is not None:
        rows.check_step(spec, step)
        row_hps = rows.at(spec, step, dtype)
    on_device = is_cuda_array(arrays["param"])
    name = _backends.choose(backend, on_device)
    checked = check_loop(loop)
    seed = buffers.rounding_seed
    if seed is not None and (isinstance(seed, (bool, np.bool_))
                             or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2 ** 64):
        raise ValueError(f"{owner}.rounding_seed must be None or an int in [0, 2**64), got "
                         f"{seed!r}")
    q8 = _check_8bit(spec, buffers, arrays, owner, rows, seed, name)
    if q8 is not None and rows is None:
        run = _backends.runner(spec, name, arrays, dtype, hp, parallel, q8=q8)
    elif rows is None:
        run = _backends.runner(spec, name, arrays, dtype, hp, parallel, seed)
    else:
        run = _backends.grouped_runner(spec, name, arrays, dtype, row_hps, rows.segments,
                                       parallel, seed, q8=q8, frozen=rows.frozen)
        schedules = rows.schedules if rows.scheduled else None      # the rows' own
    prep = Prepared(spec, backend, parallel, values, arrays, run, schedules or None, template,
                    dtype, None if checked == NO_LOOP else checked, rows)
    prep.seed = seed
    prep.copy = copy
    if q8 is not None:
        prep.q8 = (q8[0], tuple((f, a, a.shape) for f, a in q8[1].items()))
    return prep


def _check_8bit(spec, buffers, arrays, owner, rows, seed, backend):
    """``(block_size, {field: scales})`` when the step's state is 8-bit codes, else None;
    every check before anything is written."""
    fields = [f for f, a in arrays.items() if getattr(a, "dtype", None) == np.uint8]
    if not fields:
        return None
    if backend == "cuda" and buffers.block_size > 1024:
        raise NotImplementedError(f"{owner}: 8-bit state on CUDA takes blocks of at most 1024 "
                                  f"elements, got block_size={buffers.block_size}")
    if seed is not None:
        raise ValueError(f"{owner}.rounding_seed is set but the state is 8-bit; stochastic "
                         f"rounding is for bfloat16 state")
    out = check_8bit_scales(buffers, arrays, owner)
    if rows is not None and rows.frozen:
        block, n = buffers.block_size, buffers.size
        for lo, hi in rows.frozen:
            if lo % block or (hi % block and hi != n):
                raise ValueError(f"{spec.step_name}(): a frozen group's elements [{lo}, {hi}) "
                                 f"do not start and end on the 8-bit state's block boundaries "
                                 f"(block_size={block}); a block's codes share one scale, so "
                                 f"a block cannot be partly stepped and partly frozen")
    return out


def _loop_factor(buffers, checked, prep=None):
    """The reduction pass of a step with training-loop options: the gradient's norm (of the
    unscaled gradient), whether it is finite, and the one factor (1 / grad_scale times the
    clip coefficient) the kernel multiplies the gradient by. ``None``: skip this step.
    ``prep``: the step's :class:`Prepared` (a device gradient's norm pass is kept in it)."""
    max_norm, scale, skip = checked
    inv = 1.0 if scale is None else 1.0 / scale
    if max_norm is None and not skip:
        return inv
    g = buffers.grad
    host = type(g) is np.ndarray or isinstance(g, np.ndarray)     # (np.memmap: a host array)
    plan = None
    if host and prep is not None and prep.rows is not None and prep.rows.frozen:
        plan = prep.frozen          # frozen groups: their gradient is neither read nor counted
        if plan is None:
            plan = prep.frozen = scaling.FrozenPlan(buffers.size, prep.rows.frozen)
    if max_norm is None and inv <= 1.0 and host:
        # skip_nonfinite alone: only whether every element is finite (g / grad_scale cannot
        # overflow when grad_scale >= 1), a cheaper pass than the norm, which is not computed
        buffers.grad_norm = None
        buffers.found_inf = not scaling.all_finite(g, plan)
        if buffers.found_inf:
            buffers.skipped_steps += 1
            return None
        return inv
    if host:                                # validated by the step: no second check
        norm = math.sqrt(scaling.sum_of_squares(g, plan)) * inv
    elif prep is not None:                  # a device gradient (validated by the step)
        if prep.norm is None:               # its flat view and buffers, made once per call
            from ._cuda_backend import DeviceNorm
            frozen = None if prep.rows is None or not prep.rows.frozen else \
                scaling.FrozenPlan(buffers.size, prep.rows.frozen, config.CUDA_NORM_CHUNK)
            prep.norm = DeviceNorm(g, config.CUDA_NORM_CHUNK, prep.dtype, frozen=frozen)
        if (not skip and prep.norm.chunks and config.CUDA_DEVICE_CLIP
                and getattr(prep.run, "device_factor", False)):
            # clipping without skipping: the factor is computed and read on the device, the
            # host waits for nothing; the norm is read when the buffers' grad_norm is
            buffers._norm_pending(prep.norm, inv)
            return prep.norm.factor(inv, max_norm)
        norm = math.sqrt(prep.norm()) * inv
    else:
        norm = scaling.grad_norm(g) * inv
    buffers.grad_norm = norm
    buffers.found_inf = not math.isfinite(norm)
    if skip and buffers.found_inf:
        buffers.skipped_steps += 1
        return None
    clip = 1.0
    if max_norm is not None:
        coef = max_norm / (norm + 1e-6)       # torch.nn.utils.clip_grad_norm_
        clip = coef if coef < 1.0 or coef != coef else 1.0
    return inv * clip


def run_step(spec, buffers, backend, hyper, parallel=None, loop=NO_LOOP, groups=None,
             layout=None):
    """Validate (or reuse the validation of the same call), then run one fused step of
    ``spec`` on ``buffers``; returns ``buffers``. ``loop``: ``(max_grad_norm, grad_scale,
    skip_nonfinite)``; ``groups``: a :class:`fastopt.Groups` or None; ``layout``: the tensors
    of a per-tensor pre-pass (LAMB), a :class:`fastopt.FlatParams` or tensor sizes."""
    values = tuple(hyper.values()) + loop
    if groups is not None:
        values += (groups,)
    if layout is not None:
        values = _values(hyper, loop, groups, layout)
    lock = getattr(buffers, "_lock", None)
    if lock is None:                      # not buffers: the validation says what is wrong
        _validate(spec, buffers, backend, hyper, parallel, values, loop, groups, layout)
        lock = buffers.__dict__.setdefault("_lock", threading.Lock())   # made without __init__
    lock.acquire()         # (cheaper than a with-statement on the hot path)
    try:
        prep = getattr(buffers, "_prepared", None)
        if (type(prep) is not Prepared
                or not prep.matches(spec, buffers, backend, parallel, values)):
            prep = prepare(spec, buffers, backend, hyper, parallel, loop, groups, layout)
        step = buffers.step
        t = (step if type(step) is int and step >= 0
             else check_step(step, type(buffers).__name__)) + 1
        if t <= prep.behind:             # a group's own count would be 0
            prep.rows.check_step(spec, t - 1)
        if prep.checked_loop is None and prep.schedules is None:
            prep.run(t)
        elif prep.checked_loop is None:
            prep.run(t, prep.scheduled_hp(t - 1))
        else:
            hp_now = None if prep.schedules is None else prep.scheduled_hp(t - 1)
            factor = _loop_factor(buffers, prep.checked_loop, prep)
            if factor is None:            # non-finite gradient, skip_nonfinite: no write
                return buffers
            # a factor of exactly 1 (skip_nonfinite alone, or a norm under max_grad_norm)
            # changes no bit: the plain kernel runs, without the multiplication (a factor
            # left on the device is read there: the kernel multiplies, by 1 too)
            prep.run(t, hp_now, None if isinstance(factor, (float, np.floating))
                     and factor == 1.0 else factor)
        buffers.step = t
    finally:
        lock.release()
    return buffers


def prepare_step(spec, buffers, backend, hyper, parallel=None):
    """Validate everything for one step; return a no-argument callable that performs it
    (nothing is written until it runs). Used to validate several buffers before stepping
    any of them."""
    prep = prepare(spec, buffers, backend, hyper, parallel)
    t = check_step(buffers.step, type(buffers).__name__) + 1
    if t <= prep.behind:
        prep.rows.check_step(spec, t - 1)
    hp = None if prep.schedules is None else prep.scheduled_hp(t - 1)

    def run():
        with buffers._lock:
            if buffers.step != t - 1:
                raise RuntimeError(f"{type(buffers).__name__} were stepped between this "
                                   f"step's validation and its run")
            if hp is None:
                prep.run(t)
            else:
                prep.run(t, hp)
            buffers.step = t
        return buffers
    return run


def step(spec, buffers, *, backend=None, parallel=None, max_grad_norm=None, grad_scale=None,
         skip_nonfinite=False, groups=None, layout=None, **hyper):
    """One step of ``spec`` with ``hyper`` on top of its defaults; ``parallel`` forces the
    CPU kernel's parallel (True) or serial (False) twin, for benchmarks."""
    kw = dict(spec.defaults)
    kw.update(hyper)
    return run_step(spec, buffers, backend, kw, parallel,
                    (max_grad_norm, grad_scale, skip_nonfinite), groups, layout)
