"""Parameter groups on one flat buffer.

A :class:`Groups` names contiguous element ranges of a flat parameter buffer (by tensor name,
from a :class:`~fastopt.FlatParams`, or by index range) and gives each group its own values of
any real hyperparameter. Every step function takes ``groups=``; the step then runs in one
call for the whole buffer (on the CPU one compiled call, ``kernels/groups.py``), each element
with its group's values, and the result is bitwise the result of stepping each group's slice
on its own. Elements in no group use the call's values; a group with ``"frozen": True`` is
left out of the step (nothing of it written, no work).

Example:
    >>> import numpy as np, fastopt
    >>> fp = fastopt.FlatParams({"W": (2, 2), "b": (2,)})
    >>> groups = fastopt.Groups(fp, [{"params": ["W"], "weight_decay": 0.01},
    ...                              {"params": ["b"], "lr": 2e-3}])
    >>> groups
    Groups(size=6, groups=[{params=['W'], weight_decay=0.01}, {params=['b'], lr=0.002}])
    >>> b = fastopt.AdamBuffers.zeros(fp.param, fp.grad)
    >>> _ = fastopt.adam_step(b, lr=1e-3, groups=groups)
"""
import numbers
import types

import numpy as np

from .flat import FlatParams

_SELECTORS = ("params", "range", "ranges")
STEPS_BEHIND = "steps_behind"
FROZEN = "frozen"


def _index(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


class Groups:
    """Parameter groups: element ranges of one flat buffer with their own hyperparameters.

    Args:
        layout: a :class:`~fastopt.FlatParams` (groups then name tensors, ``"params"``) or the
            buffer's size (an int; groups then give ``"range": (start, stop)`` or
            ``"ranges": [(start, stop), ...]``).
        groups: a list of dicts, each with one selector (``"params"``, ``"range"`` or
            ``"ranges"``) and any real hyperparameters (``lr``, ``weight_decay``, betas...):
            numbers or schedules (callables ``schedule(step) -> float``). Boolean options
            (``amsgrad``, ``nesterov``...) cannot differ between groups: they choose the
            compiled kernel and apply to the whole step. ``"steps_behind": k`` (an int >= 0)
            gives the group its own step count, the buffers' less ``k``: its elements are
            stepped as their slice alone would be at that count (bias corrections, first-step
            options; schedules and stochastic rounding still follow the buffers' step).
            ``"frozen": True`` leaves the group's elements out of the step: nothing of them is
            written (parameters, state, 8-bit codes and scales, a param copy), whatever their
            gradient; it takes no other value. The gradient's norm and finiteness check of
            ``max_grad_norm``/``skip_nonfinite`` leave it out too (not read; the norm is the
            one of the gradient with the frozen elements zero, bit for bit). With 8-bit state
            a frozen range must start and end on block boundaries (or at the buffer's end): a
            block's codes share one scale.

    Raises ``TypeError``/``ValueError`` for unknown tensor names, ranges outside the buffer,
    groups that overlap, boolean values. Whether each name is a real hyperparameter of the
    optimizer and each value is valid for it is checked by its step function, before anything
    is written.
    """

    __slots__ = ("size", "groups", "ranges", "segments", "_repr")

    def __init__(self, layout, groups):
        if isinstance(layout, FlatParams):
            size, names = layout.size, layout.layout
        elif isinstance(layout, numbers.Integral) and not isinstance(layout, (bool, np.bool_)):
            size, names = int(layout), None
            if size < 0:
                raise ValueError(f"Groups: the buffer size must be >= 0, got {size}")
        else:
            raise TypeError(f"Groups needs a FlatParams or the buffer's size (an int) first, "
                            f"got {type(layout).__name__}")
        if isinstance(groups, dict) or not isinstance(groups, (list, tuple)):
            raise TypeError(f"Groups needs a list of dicts, got {type(groups).__name__}")
        values, ranges, labels = [], [], []
        for i, group in enumerate(groups):
            if not isinstance(group, dict):
                raise TypeError(f"Groups: group {i} must be a dict, got "
                                f"{type(group).__name__}")
            chosen = [k for k in _SELECTORS if k in group]
            if len(chosen) != 1:
                raise ValueError(f"Groups: group {i} needs exactly one of {_SELECTORS}, has "
                                 f"{chosen or 'none'}")
            sel = chosen[0]
            ranges.append(self._ranges(i, sel, group[sel], size, names))
            labels.append(f"{sel}={group[sel]!r}")
            hyper = {}
            for key, value in group.items():
                if key == sel:
                    continue
                if not isinstance(key, str) or not key.isidentifier():
                    raise TypeError(f"Groups: group {i} sets {key!r}, which is not a "
                                    f"hyperparameter name")
                if key == FROZEN:
                    if not isinstance(value, (bool, np.bool_)):
                        raise TypeError(f"Groups: group {i}: frozen must be True or False, got "
                                        f"{value!r}")
                    if value:
                        hyper[key] = True
                    continue
                if key == STEPS_BEHIND:
                    value = _index(value, f"group {i}: steps_behind")
                    if value < 0:
                        raise ValueError(f"Groups: group {i}: steps_behind must be >= 0, got "
                                         f"{value}")
                    if value:
                        hyper[key] = value
                    continue
                if isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"Groups: group {i} sets the boolean option {key!r}; "
                                    f"options choose the compiled kernel and apply to the "
                                    f"whole step: pass {key}= to the step function instead")
                if not (callable(value) or (isinstance(value, numbers.Real))):
                    raise TypeError(f"Groups: group {i} sets {key}={value!r}; a group value "
                                    f"must be a real number or a schedule (a callable)")
                hyper[key] = value
            if hyper.get(FROZEN) and len(hyper) > 1:
                others = sorted(k for k in hyper if k != FROZEN)
                raise ValueError(f"Groups: group {i} is frozen (not stepped) and also sets "
                                 f"{', '.join(others)}; a frozen group takes no other value")
            values.append(types.MappingProxyType(hyper))
        segments = []
        for i, rs in enumerate(ranges):
            for lo, hi in rs:
                segments.append((lo, hi, i))
        segments.sort()
        for (lo1, hi1, g1), (lo2, hi2, g2) in zip(segments, segments[1:]):
            if lo2 < hi1:
                what = (f"group {g1} selects an element twice" if g1 == g2 else
                        f"groups {g1} and {g2} overlap")
                raise ValueError(f"Groups: {what} (elements [{lo2}, {min(hi1, hi2)}))")
        merged = []
        for lo, hi, g in segments:
            if merged and merged[-1][2] == g and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi, g)
            else:
                merged.append((lo, hi, g))
        self.size = size
        self.groups = tuple(values)
        self.ranges = tuple(tuple(r) for r in ranges)
        self.segments = tuple(merged)
        self._repr = [f"{{{lab}" + "".join(f", {k}={v!r}" for k, v in vals.items()) + "}"
                      for lab, vals in zip(labels, values)]

    def __reduce__(self):
        # pickle and deepcopy (a saved config, another process): the read-only group values
        # (MappingProxyType, which does not pickle) travel as dicts
        return (_rebuild, (self.size, [dict(g) for g in self.groups], self.ranges,
                           self.segments, self._repr))

    @staticmethod
    def _ranges(i, sel, value, size, names):
        if sel == "params":
            if names is None:
                raise TypeError(f"Groups: group {i} names tensors ('params') but the layout "
                                f"is a size; pass the FlatParams, or use 'range'")
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError(f"Groups: group {i}: 'params' must be a list of tensor "
                                f"names, got {value!r}")
            out = []
            for name in value:
                if name not in names:
                    raise ValueError(f"Groups: group {i} names {name!r}, which is not a "
                                     f"tensor of the FlatParams (its tensors: {list(names)})")
                off, shape = names[name]
                out.append((off, off + int(np.prod(shape, dtype=np.int64))))
            return out
        pairs = [value] if sel == "range" else value
        if sel == "ranges" and not isinstance(value, (list, tuple)):
            raise TypeError(f"Groups: group {i}: 'ranges' must be a list of (start, stop)")
        out = []
        for pair in pairs:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TypeError(f"Groups: group {i}: a range must be (start, stop), got "
                                f"{pair!r}")
            lo = _index(pair[0], f"group {i}: start")
            hi = _index(pair[1], f"group {i}: stop")
            if not 0 <= lo <= hi <= size:
                raise ValueError(f"Groups: group {i}: range ({lo}, {hi}) is not within the "
                                 f"buffer's [0, {size}] (or stop < start)")
            out.append((lo, hi))
        return out

    def __repr__(self):
        return f"Groups(size={self.size}, groups=[{', '.join(self._repr)}])"


def _rebuild(size, groups, ranges, segments, rep):
    out = Groups.__new__(Groups)
    out.size, out.ranges, out.segments, out._repr = size, ranges, segments, rep
    out.groups = tuple(types.MappingProxyType(g) for g in groups)
    return out
