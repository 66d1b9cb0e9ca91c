"""Drop-in replacements for the blog's optimizer classes.

``mini_SGD``, ``Momentum``, ``RMSprop`` and ``Adam`` take exactly the blog's constructor
arguments (plus a keyword-only ``backend``) and offer ``update(params, grads)`` over dicts of
arrays. They update the caller's arrays **in place**, as the blog's do (its network layers
hold references to them), and in float64 with the blog's settings the results are bitwise
equal to the blog's classes.

When the dict values are views that exactly tile one flat parameter arena and one flat
gradient arena in the same layout (a :class:`fastopt.FlatParams`), the update is one fused
call over the arenas; otherwise it is one fused call per array. In both cases every array is
validated before the first one is written.
"""
import numpy as np

from ._step import prepare_step, run_step
from . import registry

__all__ = ["mini_SGD", "Momentum", "RMSprop", "Adam", "Nesterov", "AdaGrad"]


def _arena_of(views):
    """If ``views`` (name -> array) tile one 1-D C-contiguous base array exactly and without
    gaps, return ``(base, {name: offset})``; else ``None``."""
    base = None
    spans = []
    for name, a in views.items():
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            return None
        b = a.base
        if b is None or not isinstance(b, np.ndarray) or b.ndim != 1 \
                or not b.flags.c_contiguous:
            return None
        if base is None:
            base = b
        elif b is not base:
            return None
        off = (a.__array_interface__["data"][0] - b.__array_interface__["data"][0])
        if off % b.itemsize:
            return None
        spans.append((off // b.itemsize, a.size, name))
    spans.sort()
    pos = 0
    for start, size, _ in spans:
        if start != pos:
            return None
        pos += size
    if pos != base.size:
        return None
    return base, {name: start for start, _, name in spans}


class _BlogOptimizer:
    _spec_name = ""

    def __init__(self, backend=None):
        self.backend = backend
        self._spec = registry.get(self._spec_name)
        self._flat = None      # Buffers over the arenas (fused mode)
        self._per_key = None   # name -> Buffers (per-array mode, or views of the flat state)
        self._layout = None
        self._fused_key = None

    def __getstate__(self):
        """``copy.deepcopy`` / pickle. In fused mode the per-array buffers are views of the
        flat ones, which a copy would turn into separate arrays (and the remembered array ids
        would name the original's arrays): they are made again from the copied flat buffers.
        Copy the optimizer together with the network (``copy.deepcopy((net, opt))``) so that
        the copy's arenas are the network's."""
        state = dict(self.__dict__, _fused_key=None)
        if self._flat is not None:
            state["_per_key"] = {k: b.param.shape for k, b in self._per_key.items()}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._flat is not None:
            self._per_key = self._views_of(self._flat, self._layout, self._per_key)

    # hyperparameters for the fastopt step, from the blog's attributes
    def _hyper(self):
        raise NotImplementedError

    def _zeros(self, param, grad):
        return self._spec.buffers_cls.zeros(param, grad, **self._spec.state_options(
            self._spec.validate(self._hyper())))

    def _build(self, params, grads):
        """``(flat, per_key, layout)`` for these dicts; assigned only after a first update
        succeeds, so that a rejected first call leaves the optimizer as it was."""
        if set(params) != set(grads):
            raise KeyError(f"params and grads have different keys: "
                           f"{sorted(set(params) ^ set(grads))}")
        p_arena, g_arena = _arena_of(params), _arena_of(grads)
        if p_arena and g_arena and p_arena[1] == g_arena[1]:
            flat = self._zeros(p_arena[0], g_arena[0])
            layout = p_arena[1]
            return flat, self._views_of(flat, layout, params, grads), layout
        return None, {k: self._zeros(params[k], grads[k]) for k in params}, None

    def _views_of(self, flat, layout, params, grads=None):
        """``{name: Buffers}`` over the flat state, each holding ``params[name]`` and
        ``grads[name]`` (the caller's views of the arenas), or, with ``grads`` None, views of
        ``flat``'s own arenas in the shapes of ``params`` (name -> shape)."""
        state = {f: getattr(flat, f) for f in flat.state_fields if getattr(flat, f) is not None}
        if grads is None:
            state.update(param=flat.param, grad=flat.grad)
        per_key = {}
        for name, p in params.items():
            shape = p if grads is None else p.shape
            off, size = layout[name], int(np.prod(shape, dtype=np.int64))
            views = {f: a[off:off + size].reshape(shape) for f, a in state.items()}
            if grads is not None:
                views.update(param=p, grad=grads[name])
            per_key[name] = self._spec.buffers_cls(**views)
            per_key[name].step = flat.step
        return per_key

    def update(self, params, grads):
        """Update every array in ``params`` in place from ``grads`` (dicts of arrays).
        Everything is validated before the first array is written; a rejected call changes
        neither the arrays nor the optimizer."""
        if not isinstance(params, dict) or not isinstance(grads, dict):
            raise TypeError("update(params, grads) takes two dicts of arrays")
        if not params and not grads:
            return
        built = self._per_key is not None
        flat, per_key, layout = ((self._flat, self._per_key, self._layout) if built
                                 else self._build(params, grads))
        if set(params) != set(per_key) or set(grads) != set(per_key):
            raise KeyError(f"update() got keys {sorted(params)} / {sorted(grads)} but the "
                           f"optimizer state was built for {sorted(per_key)}")
        hyper = self._hyper()
        if flat is not None and self._arena_matches(flat, layout, params, grads):
            # an optimizer with per-tensor norms (LAMB) is given the arena's tensors
            tensors = (None if self._spec.segment_scalars is None else
                       [params[k].size for k in sorted(layout, key=layout.get)])
            run_step(self._spec, flat, self.backend, hyper, layout=tensors)
            for b in per_key.values():
                b.step = flat.step
        else:
            runs = []
            for name, b in per_key.items():
                if params[name] is not b.param:
                    raise ValueError(f"params[{name!r}] is not the array this optimizer was "
                                     f"built for; the blog's optimizers update the same "
                                     f"arrays in place every step")
                runs.append((b, grads[name]))
            steps = []
            for b, g in runs:
                saved, b.grad = b.grad, g
                try:
                    steps.append(prepare_step(self._spec, b, self.backend, hyper))
                except BaseException:
                    b.grad = saved
                    raise
            for run in steps:
                run()
            if flat is not None:
                flat.step = next(iter(per_key.values())).step
        if not built:
            self._flat, self._per_key, self._layout = flat, per_key, layout

    def _arena_matches(self, flat, layout, params, grads):
        """Whether ``params``/``grads`` still tile the flat arenas ``flat`` was built on, and
        every parameter view is writable (a view made read-only is never written). The
        layout analysis is remembered for the exact same array objects (a training loop passes
        the same views every step), the writability is checked at every call."""
        for name, v in params.items():
            if isinstance(v, np.ndarray) and not v.flags.writeable:
                raise ValueError(f"params[{name!r}] is read-only; the update writes it in "
                                 f"place")
        key = tuple(map(id, params.values())) + tuple(map(id, grads.values()))
        if self._fused_key is not None and self._fused_key[0] == key:
            return True
        p_arena, g_arena = _arena_of(params), _arena_of(grads)
        if not (p_arena and g_arena and p_arena[0] is flat.param and g_arena[1] == layout):
            return False
        flat.grad = g_arena[0]
        # keep the arrays alive so that their ids cannot be reused by other objects
        self._fused_key = (key, tuple(params.values()), tuple(grads.values()))
        return True

    def _state_dict(self, field):
        if self._per_key is None:
            return None
        return {k: getattr(b, field) for k, b in self._per_key.items()}


class mini_SGD(_BlogOptimizer):
    """The blog's mini-batch SGD: ``p -= lr * g`` (:func:`fastopt.sgd_step`)."""
    _spec_name = "sgd"

    def __init__(self, lr=0.01, *, backend=None):
        super().__init__(backend)
        self.lr = lr

    def _hyper(self):
        return dict(self._spec.defaults, lr=self.lr)


class _Velocity(_BlogOptimizer):
    """The textbook's classes with ``lr``, ``momentum`` and a velocity ``self.v``."""

    def __init__(self, lr=0.01, momentum=0.9, *, backend=None):
        super().__init__(backend)
        self.lr = lr
        self.momentum = momentum

    def _hyper(self):
        return dict(lr=self.lr, momentum=self.momentum)

    @property
    def v(self):
        return self._state_dict("velocity")


class Momentum(_Velocity):
    """The blog's Momentum: ``v = momentum * v - lr * g; p += v``
    (:func:`fastopt.momentum_step`). ``self.v`` is a dict of the velocity arrays."""
    _spec_name = "momentum"


class RMSprop(_BlogOptimizer):
    """The blog's RMSprop: ``h = decay_rate * h + (1 - decay_rate) * g**2;
    p -= lr * g / (sqrt(h) + epsilon)`` (:func:`fastopt.rmsprop_step`). ``self.h`` is a dict
    of the squared-gradient averages."""
    _spec_name = "rmsprop"

    def __init__(self, lr=0.01, decay_rate=0.99, epsilon=1e-8, *, backend=None):
        super().__init__(backend)
        self.lr = lr
        self.decay_rate = decay_rate
        self.epsilon = epsilon

    def _hyper(self):
        return dict(self._spec.defaults, lr=self.lr, alpha=self.decay_rate, eps=self.epsilon)

    @property
    def h(self):
        return self._state_dict("square_avg") or {}


class Adam(_BlogOptimizer):
    """The blog's Adam, including its epsilon-hat form with eps = 1e-7
    (:func:`fastopt.adam_step` with ``eps_hat=True``). ``self.iter`` counts steps;
    ``self.m`` and ``self.v`` are dicts of the moment arrays."""
    _spec_name = "adam"

    def __init__(self, lr=0.01, beta1=0.9, beta2=0.999, *, backend=None):
        super().__init__(backend)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2

    def _hyper(self):
        return dict(self._spec.defaults, lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                    eps=1e-7, eps_hat=True)

    @property
    def iter(self):
        if self._per_key is None:
            return 0
        return next(iter(self._per_key.values())).step

    @property
    def m(self):
        return self._state_dict("exp_avg")

    @property
    def v(self):
        return self._state_dict("exp_avg_sq")


class Nesterov(_Velocity):
    """The textbook's Nesterov: ``v *= momentum; v -= lr * g; p += momentum * momentum * v;
    p -= (1 + momentum) * lr * g`` (:func:`fastopt.nesterov_step`). ``self.v`` is a dict of
    the velocity arrays."""
    _spec_name = "nesterov"



class AdaGrad(_BlogOptimizer):
    """The textbook's AdaGrad: ``h += g * g; p -= lr * g / (sqrt(h) + 1e-7)``
    (:func:`fastopt.adagrad_step` with ``eps=1e-7``). ``self.h`` is a dict of the sums."""
    _spec_name = "adagrad"

    def __init__(self, lr=0.01, *, backend=None):
        super().__init__(backend)
        self.lr = lr

    def _hyper(self):
        return dict(self._spec.defaults, lr=self.lr, eps=1e-7)

    @property
    def h(self):
        return self._state_dict("sum")
