"""``fastopt.torch``: ``torch.optim``-compatible optimizers that step on fastopt's kernels.

    import fastopt.torch
    opt = fastopt.torch.Adam(model.parameters(), lr=1e-3)      # torch's arguments and defaults
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()                                              # one fused launch, whole model

On construction every parameter that requires a gradient (or has one) is moved into one flat
arena (``param.data`` becomes a view of it: ``model.state_dict()``, ``named_parameters()`` and
hooks keep working; a frozen parameter stays outside, with no state and no cost, until it has
a gradient: then it comes in, as with ``add_param_group``) and each gradient is
made a view of one flat gradient arena (a gradient that appears later, at the first ``step()``
that finds it), so autograd accumulates into it in place. A step is
then one call of the fastopt step function over the arena, with the parameter groups as
:class:`fastopt.Groups` ranges (per-group real hyperparameters; ``lr_scheduler`` writes
``group["lr"]`` and the next step reads it).

``zero_grad(set_to_none=True)`` (torch's default) drops the gradient views, as torch does; the
next backward allocates fresh gradients, and ``step()`` copies them into the arena and attaches
the views again (one copy of the gradients per step; ``zero_grad(set_to_none=False)`` zeroes
the arena in place and needs no copy; both measured in the README, "For torch users"). A
parameter whose gradient is ``None`` at ``step()`` is left untouched, state included (it sits
the step out as a frozen group of ``fastopt.Groups``, at no cost), and adds
nothing to the norm of ``max_grad_norm``, as torch does; its gradient stays ``None`` (neither
construction nor ``zero_grad(set_to_none=False)`` gives it one). Each parameter counts its
own steps, as in torch: one that sat steps out (or came with ``add_param_group``) is stepped in
a group with ``steps_behind`` (``fastopt.Groups``), at its own count, in the same call.

``state_dtype="bfloat16"`` (float32 parameters on the CPU) keeps the state in bfloat16, half
the bytes, rounded to nearest even or, with ``stochastic_rounding=True``, from a hash of
(``seed``, step, element index) (README, "Compressed optimizer state"); ``self.state[p]`` and
``state_dict()`` hold it as ``torch.bfloat16`` tensors (views of the arena's bits), and
``load_state_dict`` copies those bits as they are and refuses state of another precision.
``state_dtype="int8"`` (float32 or float64 parameters on the CPU; ``block_size``,
``min_8bit_size`` as for ``Buffers.zeros``) keeps block-wise 8-bit state: each parameter starts
on a block boundary of the arena (zeros between parameters), so its codes and its blocks'
scales are its own; ``self.state[p]`` holds the codes (``torch.uint8``, the parameter's shape),
``<name>_absmax`` (the float32 scales of its blocks) and ``block_size``, and state dicts
round-trip them bit for bit.

``master_weights=True`` (bfloat16 or float16 parameters on the CPU) keeps float32 master
weights in the arena the step works on; the parameters are views of a bfloat16 (float16)
arena that the step writes, each element its new master rounded to nearest even (the flat
API's ``param_copy``), and the step reads the gradients, views of a bfloat16 (float16)
arena, widened to float32 (exactly) as it goes: no float32 copy of them is made, as for any
low-precision gradient of the flat API. ``self.state[p]["master_param"]`` is a float32 view of
``p``'s masters; state dicts carry them. A parameter changed in place (its version counter
moved) enters the masters at the next step or ``state_dict()``, element by element
(:meth:`_FastoptOptimizer._catch_up`).

``state_dict()`` is torch's format (``state[i]`` with the parameter's own ``"step"`` and torch's
state names; no entry for a parameter not stepped yet), and
``load_state_dict`` accepts a state dict saved from the torch optimizer of the same name (and
the other way round): the state is copied into the arena. ``torch.amp.GradScaler`` works: the
optimizer declares ``_step_supports_amp_scaling``, so the scaler hands over ``grad_scale`` and
``found_inf`` and the step unscales inside the kernel (and skips when ``found_inf``).
``max_grad_norm=`` (fastopt's) clips inside the step. ``foreach`` and ``fused`` are accepted and
ignored (every step is fused); ``capturable`` / ``differentiable`` are refused.

Parameters on a CUDA device step through the CUDA kernels on ``__cuda_array_interface__``
views of the arenas (not testable without a GPU; the simulator cannot take torch tensors).
"""
import numbers
from collections import defaultdict
from itertools import chain

import numpy as np

try:
    import torch
    from torch.optim import optimizer as _torch_optimizer
except ImportError as e:            # fastopt itself never needs torch
    raise ImportError(f'fastopt.torch needs torch: pip install "fastopt[torch]" ({e})') from None

from . import registry
from .groups import Groups

__all__ = ["Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam",
           "Lion", "LAMB"]

_BETAS = ("beta1", "beta2")
_LOW = (torch.bfloat16, torch.float16)      # parameters that take master_weights=True


def _real(value, name):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    return value


class _FastoptOptimizer(torch.optim.Optimizer):
    """Base: subclasses set ``_name`` (registry name), ``_defaults`` (torch's constructor
    arguments and defaults) and ``_fixed`` (fastopt values implied by the class, e.g. AdamW's
    decoupled weight decay)."""
    _name = None
    _defaults = {}
    _fixed = {}
    _step_supports_amp_scaling = True

    def __init__(self, params, max_grad_norm=None, state_dtype=None, stochastic_rounding=False,
                 seed=0, block_size=256, min_8bit_size=4096, master_weights=False, **kwargs):
        where = f"fastopt.torch.{type(self).__name__}"
        if not isinstance(master_weights, (bool, np.bool_)):
            raise TypeError(f"{where}: master_weights must be True or False, got "
                            f"{master_weights!r}")
        self._master = bool(master_weights)
        if state_dtype not in (None, "bfloat16", "int8"):
            raise ValueError(f"{where}: state_dtype must be None (the parameters' dtype), "
                             f"'bfloat16' or 'int8', got {state_dtype!r}")
        if max_grad_norm is not None:       # (checked now, as torch checks its arguments)
            from ._step import check_loop
            try:
                max_grad_norm = check_loop((max_grad_norm, None, False))[0]
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}: {e}") from None
        if stochastic_rounding and state_dtype != "bfloat16":
            raise ValueError(f"{where}: stochastic_rounding needs state_dtype='bfloat16'")
        for name, value, low, default in (("block_size", block_size, 1, 256),
                                          ("min_8bit_size", min_8bit_size, 0, 4096)):
            if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
                    or value < low):
                raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")
            if state_dtype != "int8" and value != default:
                raise ValueError(f"{where}: {name} needs state_dtype='int8'")
        if state_dtype == "bfloat16":
            self._state_kw = dict(state_dtype=state_dtype,
                                  stochastic_rounding=bool(stochastic_rounding), seed=seed)
        elif state_dtype == "int8":
            self._state_kw = dict(state_dtype=state_dtype, block_size=int(block_size),
                                  min_8bit_size=int(min_8bit_size))
        else:
            self._state_kw = {}
        for flag in ("foreach", "fused"):       # every fastopt step is one fused pass
            kwargs.pop(flag, None)
        for flag in ("capturable", "differentiable"):
            if kwargs.pop(flag, False):
                raise NotImplementedError(f"fastopt.torch.{type(self).__name__}: {flag}=True "
                                          f"is not supported")
        unknown = set(kwargs) - set(self._defaults)
        if unknown:
            raise TypeError(f"fastopt.torch.{type(self).__name__}() got unexpected keyword "
                            f"argument(s) {sorted(unknown)}; it takes "
                            f"{sorted(self._defaults)}")
        defaults = dict(self._defaults, **kwargs)
        self._spec = registry.get(self._name)
        self._buffers = None
        self._max_grad_norm = max_grad_norm
        # torch counts each parameter's steps (those in which it has a gradient), the arena
        # its own: _lag holds how many steps behind the arena a parameter stepped now is, and
        # _rest the count of each parameter that sat the last step out (fixed while it rests;
        # its lag grows by one a step, at no cost); _rest_key: the ids of those parameters
        self._lag, self._rest, self._rest_key = {}, {}, ()
        super().__init__(params, defaults)
        for group in self.param_groups:
            self._hyper(group)              # every group's values checked now, as torch does
        self._build()

    # ------------------------------------------------------------------ copy, pickle
    def __getstate__(self):
        """``copy.deepcopy`` and pickling: the groups (with their parameters), the fastopt
        options of the constructor and a state dict; :meth:`__setstate__` builds a new arena
        around the parameters the copy holds (the model's copies when both are copied
        together, ``copy.deepcopy((model, opt))``), so the copy steps on its own."""
        return {"defaults": self.defaults, "param_groups": self.param_groups,
                "_fastopt": dict(state_dict=self.state_dict(), state_kw=dict(self._state_kw),
                                 max_grad_norm=self._max_grad_norm,
                                 master_weights=self._master)}

    def __setstate__(self, state):
        if "_fastopt" not in state:         # torch's load_state_dict sets state and groups
            return super().__setstate__(state)
        state = dict(state)
        fastopt_state = state.pop("_fastopt")
        had_flag = "differentiable" in state["defaults"]
        super().__setstate__(state)
        if not had_flag:                    # (torch's __setstate__ adds it; we refuse it)
            self.defaults.pop("differentiable", None)
        self.state = defaultdict(dict)
        self._spec = registry.get(self._name)
        self._state_kw = fastopt_state["state_kw"]
        self._max_grad_norm = fastopt_state["max_grad_norm"]
        self._master = fastopt_state.get("master_weights", False)
        self._buffers = None
        self._lag, self._rest, self._rest_key = {}, {}, ()    # (the state dict sets them)
        self._build()
        self.load_state_dict(fastopt_state["state_dict"])

    # ------------------------------------------------------------------ arenas
    def add_param_group(self, param_group):
        """torch's ``add_param_group``; a group refused (a value out of range, a parameter of
        another dtype or device, a sparse gradient) leaves the optimizer as it was."""
        n = len(self.param_groups)
        super().add_param_group(param_group)
        if self._buffers is None:           # (torch's __init__ adds the first groups)
            return
        try:
            self._hyper(self.param_groups[-1])
            self._check_params(self._params())
        except BaseException:
            del self.param_groups[n:]
            raise
        self._build()                       # (torch counts the new parameters' steps from 0)

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _check_params(self, params):
        where = f"fastopt.torch.{type(self).__name__}"
        if not params:
            raise ValueError(f"{where}: no parameters")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        for p in params:
            if p.is_complex():
                raise TypeError(f"{where}: complex parameters are not supported (view them "
                                f"as real with torch.view_as_real)")
            if self._master:
                if p.dtype not in _LOW:
                    raise TypeError(f"{where}: master_weights=True keeps float32 master "
                                    f"weights of bfloat16 or float16 parameters, got "
                                    f"{p.dtype} (float32 and float64 parameters are their "
                                    f"own master weights)")
            elif p.dtype not in (torch.float32, torch.float64):
                hint = ("; for bfloat16 or float16 parameters pass master_weights=True (the "
                        "optimizer then keeps float32 master weights and writes the "
                        "parameters rounded from them)" if p.dtype in _LOW else "")
                raise TypeError(f"{where}: parameters must be float32 or float64, got "
                                f"{p.dtype}{hint}")
            if p.is_sparse:
                raise TypeError(f"{where}: sparse parameters are not supported")
            if p.grad is not None and p.grad.is_sparse:
                raise TypeError(f"{where}: sparse gradients are not supported")
        if len(dtypes) > 1:
            raise TypeError(f"{where}: all parameters must share one dtype (one flat "
                            f"arena), got {sorted(map(str, dtypes))}")
        if len(devices) > 1:
            raise ValueError(f"{where}: all parameters must be on one device, got "
                             f"{sorted(map(str, devices))}")
        dtype, device = dtypes.pop(), devices.pop()
        if self._master and device.type != "cpu":
            raise NotImplementedError(f"{where}: master_weights on {device.type} parameters "
                                      f"is not in the torch front end yet (not run on a "
                                      f"GPU); fastopt's step functions take a param_copy on "
                                      f"CUDA arrays")
        kind = self._state_kw.get("state_dtype")
        if kind is not None:
            if kind == "bfloat16" and dtype != torch.float32 and not self._master:
                raise TypeError(f"{where}: bfloat16 state needs float32 parameters, got "
                                f"{dtype}")
            if device.type != "cpu":
                raise NotImplementedError(f"{where}: {kind} state on {device.type} "
                                          f"parameters is not in the torch front end yet (not "
                                          f"run on a GPU); fastopt's step functions take it "
                                          f"on CUDA arrays")
        return dtype, device

    def _build(self, include=()):
        """(Re)build the arenas and the fastopt buffers from ``param_groups``; the values of
        parameters, gradients and state already held are carried over. With 8-bit state every
        parameter starts on a block boundary (zeros between them), so no block spans two
        parameters: each parameter's codes and scales are its own. A parameter that does not
        require a gradient and has none (frozen) stays outside the arena, with no state and
        no cost, until it has a gradient (``_outside``; those in ``include``, with loaded
        state, come in); one that was in stays in."""
        params = self._params()
        dtype, device = self._check_params(params)
        old = self._buffers
        if old is not None:
            self._catch_up()                # (the masters carried over are the latest)
        old_slices = getattr(self, "_slices", {})
        inside = {id(p) for p in params if p.requires_grad or p.grad is not None
                  or p in old_slices or p in include}
        self._outside = [p for p in params if id(p) not in inside]
        params = [p for p in params if id(p) in inside]
        align = self._state_kw.get("block_size", 1)
        slices, ranges, layout, off = {}, [], [], 0
        for g in self.param_groups:
            start = off
            for p in g["params"]:
                if id(p) not in inside:
                    continue
                lo = -(-off // align) * align
                if lo > off:
                    layout.append(lo - off)         # padding: a "tensor" of zeros for LAMB
                slices[p] = (lo, lo + p.numel())
                layout.append(p.numel())
                off = lo + p.numel()
            ranges.append((start, off))
        n = off
        # the parameter arena the step works on (float32 master weights with master_weights)
        # and the one the model sees (the same one without); one gradient arena, in the
        # parameters' dtype (with master_weights the step reads it widened, exactly)
        work = torch.float32 if self._master else dtype
        flat_p = torch.zeros(n, dtype=work, device=device)
        flat_g = torch.zeros(n, dtype=dtype, device=device)
        flat_lp = torch.zeros(n, dtype=dtype, device=device) if self._master else flat_p
        masters = self._flat_p if self._master and old is not None else None
        for p in params:
            lo, hi = slices[p]
            flat_lp[lo:hi].copy_(p.detach().reshape(-1))
            if masters is not None and p in old_slices:         # the master as it was
                olo, ohi = old_slices[p]
                flat_p[lo:hi].copy_(masters[olo:ohi])
            elif self._master:                                  # (widened: exact)
                flat_p[lo:hi].copy_(flat_lp[lo:hi])
            if p.grad is not None:          # (not sparse: _check_params)
                flat_g[lo:hi].copy_(p.grad.detach().reshape(-1))
        views = []
        with torch.no_grad():
            for p in params:
                lo, hi = slices[p]
                p.data = flat_lp[lo:hi].view_as(p)
                view = flat_g[lo:hi].view_as(p)
                if p.grad is not None:      # a None gradient stays None, as in torch
                    p.grad = view
                views.append((p, view, p.data_ptr()))
        self._flat_p, self._flat_g, self._slices = flat_p, flat_g, slices
        self._flat_lp = flat_lp
        self._versions = [p._version for p in params]      # (master_weights: _catch_up)
        self._views = views          # (param, its gradient view, where its values live);
        #                              p.grad is the view when not None
        self._order = {id(p): i for i, (p, _, _) in enumerate(views)}
        self._resting_cache = None
        self._frozen_cache = (None, None, None)
        self._quiet = None
        self._ranges = ranges
        hps = [self._hyper(g) for g in self.param_groups]
        options = dict(self._state_options(hps), **self._state_kw)
        b = self._spec.buffers_cls.zeros(self._host(flat_p), self._host_low(flat_g),
                                         **options)
        if self._master:        # the step writes the parameters rounded from the masters
            b.param_copy = self._host_low(flat_lp)
        self._buffers = b
        if old is not None:
            b.step = old.step
            self._carry_state(old, old_slices)
        self._groups_cache = (None, None)
        self._kw_cache = (None, None, False)
        self._step_tensor = torch.tensor(float(b.step))
        # the step tensors of parameters behind the arena's count (state[p]["step"]): one per
        # lag shared by the parameters stepped with it, and a fixed one each while a
        # parameter sits steps out; and the stepped lagging parameters, kept while no lag
        # changes (_stepping)
        self._counters, self._resting, self._joined = {}, {}, None
        for p, count in self._rest.items():                   # resting: a lag again
            if b.step - count:
                self._lag[p] = b.step - count
        self._rest, self._rest_key = {}, ()
        if old is not None and b.step:      # new in the arena: torch counts from 0
            for p in params:
                if p not in old_slices:
                    self._lag.setdefault(p, b.step)
        self._lag = {p: k for p, k in self._lag.items() if p in slices}
        self._stepping_cache = (None, None)
        self._lag_version = getattr(self, "_lag_version", 0) + 1
        self._lag_cache = (None, None, None, None)
        self._layout = layout if self._spec.kernel.norm_names else None
        self.state.clear()
        # parameters not stepped yet: no self.state[p], as in torch; nor any parameter when
        # the optimizer keeps no state (SGD without momentum: torch's keeps none)
        self._stateless = not self._master and all(getattr(b, f) is None
                                                   for f in b.state_fields)
        self._unshown = set() if self._stateless else set(slices)
        if b.step:
            self._expose_state()

    def _blocks(self, p):
        """The 8-bit blocks of parameter ``p`` (a range of block indices)."""
        lo, hi = self._slices[p]
        block = self._buffers.block_size
        return lo // block, -(-hi // block)

    def _carry_state(self, old, old_slices):
        """Copy the state of the parameters ``old`` held into the new buffers: as it is when
        both keep the same precision (8-bit codes with their blocks' scales: parameters start
        on block boundaries in both arenas), else through its values (an arena that grew past
        ``min_8bit_size`` quantizes the full-precision state it had)."""
        from . import quantization as q
        b = self._buffers
        same = b.state_dtype == old.state_dtype
        for f in b.state_fields:
            new, prev = getattr(b, f), getattr(old, f)
            if new is None or prev is None:
                continue
            pairs = [(old_slices[p], self._slices[p]) for p in old_slices if p in self._slices]
            if same:
                dst, src = self._tensor(f), self._as_tensor(prev)
                for (lo, hi), (nlo, nhi) in pairs:
                    dst[nlo:nhi].copy_(src[lo:hi])
                if b.state_absmax is not None:
                    block = b.block_size
                    for (lo, hi), (nlo, nhi) in pairs:
                        b.state_absmax[f][nlo // block:-(-nhi // block)] = \
                            old.state_absmax[f][lo // block:-(-hi // block)]
                continue
            qmap = q.qmap_for(self._spec.kernel, f)

            def values(buffers, a):
                if buffers.state_absmax is None:
                    return np.array(a, dtype=buffers.dtype)
                return q.dequantize(a, buffers.state_absmax[f], buffers.block_size, qmap,
                                    buffers.dtype)
            work = values(b, new)
            was = values(old, prev)
            for (lo, hi), (nlo, nhi) in pairs:
                work[nlo:nhi] = was[lo:hi]
            if b.state_absmax is None:
                new[...] = work
            else:
                codes, scales = q.quantize(work, b.block_size, qmap)
                new[...] = codes
                b.state_absmax[f][...] = scales

    @staticmethod
    def _host(t):
        if t.device.type == "cuda":
            from numba import cuda
            return cuda.as_cuda_array(t)
        return t.numpy()

    @classmethod
    def _host_low(cls, t):
        """:meth:`_host`, a bfloat16 host tensor as its ``uint16`` bits (NumPy has no
        bfloat16; fastopt reads such a gradient and writes such a param copy as bits)."""
        if t.dtype == torch.bfloat16 and t.device.type == "cpu":
            return t.view(torch.int16).numpy().view(np.uint16)
        return cls._host(t)

    def _state_options(self, hps):
        """``Buffers.zeros`` options covering every group (a state array any group needs)."""
        out = {}
        for name in getattr(self._spec, "zeros_options", ()):
            values = {h[name] for h in hps}
            hyper = next(h for h in self._spec.hypers if h.name == name)
            if hyper.kind == "flag":
                out[name] = any(values)
            elif name == "initial_accumulator_value":
                if len(values) > 1:
                    raise NotImplementedError("parameter groups with different "
                                              "initial_accumulator_value")
                out[name] = values.pop()
            else:
                out[name] = max(values)          # e.g. momentum > 0 in any group
        return out

    # ------------------------------------------------------------------ hyperparameters
    def _hyper(self, group, full=False):
        """fastopt's hyperparameters for a torch parameter group (validated): those the group
        sets, or with ``full`` all of them (the defaults filled in, as the step sees them)."""
        hp = dict(self._fixed)
        for key, value in group.items():
            if key == "betas":
                b1, b2 = value
                hp["beta1"], hp["beta2"] = _real(b1, "beta1"), _real(b2, "beta2")
            elif key in self._defaults and key not in ("params",):
                hp[key] = _real(value, key)
        hp = {k: v for k, v in hp.items() if k in {h.name for h in self._spec.hypers}}
        validated = self._spec.validate(dict(self._spec.defaults, **hp))
        return validated if full else hp

    def _step_kwargs(self):
        """The step function's keywords from ``param_groups``, recomputed when any group value
        changed (a scheduler writes ``group["lr"]``): the groups' values are compared with
        the last call's (identical objects compare at once); tensor values always recompute."""
        key = [tuple(g.values()) for g in self.param_groups]
        cached_key, kwargs, live = self._kw_cache
        if live or key != cached_key:
            live = any(isinstance(v, torch.Tensor) for t in key for v in t)
            kwargs = self._make_step_kwargs()
            self._kw_cache = (key, kwargs, live)
        return kwargs

    def _make_step_kwargs(self):
        hps = [self._hyper(g) for g in self.param_groups]
        flags = {h.name for h in self._spec.hypers if h.kind == "flag"}
        first = hps[0]
        for h in hps[1:]:
            for f in flags:
                if h.get(f) != first.get(f):
                    raise ValueError(f"fastopt.torch.{type(self).__name__}: parameter groups "
                                     f"differ in {f!r}, a compile-time option of the kernel; "
                                     f"give every group the same value")
        kwargs = dict(first)
        reals = self._reals = [{k: v for k, v in h.items() if k not in flags} for h in hps]
        if len(hps) > 1:
            key = tuple(tuple(sorted(r.items())) for r in reals)
            cached_key, groups = self._groups_cache
            if cached_key != key:
                groups = self._groups({})
                self._groups_cache = (key, groups)
            kwargs["groups"] = groups
        if self._layout is not None:
            kwargs["layout"] = self._layout
        if self._max_grad_norm is not None:
            kwargs["max_grad_norm"] = self._max_grad_norm
        return kwargs

    # ------------------------------------------------------------------ step
    def _sync_grads(self):
        """Gradients into the arena (those autograd allocated after ``zero_grad(set_to_none=
        True)``, or any a caller assigned), views attached again. Returns the parameters
        without a gradient. The common case (``p.grad`` is still the view) costs one identity
        test per parameter, and one pointer comparison: a parameter whose values were moved out
        of the arena (``p.data = ...``, ``model.double()``, ``model.to(...)`` after building the
        optimizer) is refused before any parameter or state is written (the step would update
        the arena while the model reads other memory). (With ``master_weights`` the gradient
        arena holds the parameters' dtype too: the step reads it widened.)"""
        missing = None
        for p, view, ptr in self._views:
            if p.data_ptr() != ptr:
                self._moved(p)
            g = p.grad
            if g is view:
                continue
            if g is None:
                if missing is None:
                    missing = []
                missing.append(p)
                continue
            if g.is_sparse:
                raise TypeError(f"fastopt.torch.{type(self).__name__}: sparse gradients "
                                f"are not supported")
            if g.shape != p.shape:
                raise ValueError(f"fastopt.torch.{type(self).__name__}: a gradient of shape "
                                 f"{tuple(g.shape)} for a parameter of shape {tuple(p.shape)}")
            if g.data_ptr() != view.data_ptr():
                view.copy_(g.detach())
            p.grad = view
        return missing or ()

    def _catch_up(self):
        """``master_weights``: a parameter the caller changed in place since the optimizer
        last wrote it (its version counter moved: ``p.copy_``, ``model.load_state_dict``,
        ``torch.nn.init``, ``p[i] = x`` ...) brings its new values into the master weights:
        each element that is no longer its master rounded to the parameter's dtype takes the
        parameter's value (widened, exact); the others keep their master's lower bits. One
        version read per parameter; nothing more unless one moved. (``p.data`` writes move no
        counter: they are not seen.)"""
        if not self._master:
            return
        seen = self._versions
        for i, (p, _, _) in enumerate(self._views):
            if p._version != seen[i]:
                lo, hi = self._slices[p]
                low, master = self._flat_lp[lo:hi], self._flat_p[lo:hi]
                moved = low != master.to(low.dtype)
                master[moved] = low[moved].to(master.dtype)
                seen[i] = p._version

    def _moved(self, p):
        where = f"fastopt.torch.{type(self).__name__}"
        i = next(i for i, q in enumerate(self._params()) if q is p)
        arena = self._flat_lp
        now = (f"{p.dtype} on {p.device}" if (p.dtype, p.device) != (arena.dtype, arena.device)
               else "another tensor")
        raise RuntimeError(
            f"{where}: parameter {i} (shape {tuple(p.shape)}) no longer lives in the "
            f"optimizer's arena ({arena.dtype} on {arena.device}); its values are now {now} "
            f"(p.data = ..., or the model moved or converted after the optimizer was built). "
            f"Nothing was stepped. Build the optimizer after model.to(...) / .double(), and "
            f"set values in place (with torch.no_grad(): p.copy_(new)).")

    def zero_grad(self, set_to_none=True):
        for p in self._outside:             # (outside the arena: torch's way)
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()
        if set_to_none:
            for p, _, _ in self._views:
                p.grad = None
        else:
            self._flat_g.zero_()           # one fill of the arena
            for p, view, _ in self._views:
                if p.grad is not None and p.grad is not view:
                    p.grad = view           # (a None gradient stays None, as in torch)

    def step(self, closure=None):
        """One fused step over the arena. (torch wraps ``step`` for the profiler and its step
        hooks at ~15 us a call; fastopt's is marked as already wrapped and calls the hooks
        itself when any are registered.)"""
        hooks = (_torch_optimizer._global_optimizer_pre_hooks
                 or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                 or _torch_optimizer._global_optimizer_post_hooks)
        if hooks:
            return self._step_with_hooks(closure)
        return self._step(closure)

    step.hooked = True

    def _step_with_hooks(self, closure):
        opt = _torch_optimizer
        args, kwargs = (self,), {"closure": closure}
        for hook in chain(opt._global_optimizer_pre_hooks.values(),
                          self._optimizer_step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        out = self._step(kwargs.get("closure"))
        for hook in chain(self._optimizer_step_post_hooks.values(),
                          opt._global_optimizer_post_hooks.values()):
            hook(self, args, kwargs)
        return out

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._outside and any(p.grad is not None for p in self._outside):
            self._build()                   # a frozen parameter has a gradient: it comes in
        missing = self._sync_grads()
        self._catch_up()
        if len(missing) == len(self._views):
            return loss
        found_inf = getattr(self, "found_inf", None)
        scale = getattr(self, "grad_scale", None)
        if found_inf is not None and float(found_inf) != 0:
            return loss                         # GradScaler: a step with infs is skipped
        kwargs = self._step_kwargs()
        where = self._resting_elements(missing) if missing else None
        key = where[0] if missing else ()
        if key != self._rest_key:
            self._settle(missing, key)
        stepping = None
        if self._lag:                       # (before grad_scale: kwargs cached as they are)
            stepping = self._stepping()
            kwargs = self._behind(kwargs, stepping[0])
        if missing:
            # they sit the step out: a frozen group, whose gradient (an earlier one may be
            # left in the arena) neither max_grad_norm's norm nor the finiteness check reads
            kwargs = self._frozen(kwargs, where)
        if scale is not None:
            kwargs = dict(kwargs, grad_scale=float(scale))
        self._spec.step_fn(self._buffers, **kwargs)
        if stepping:
            self._count_steps(stepping)
        self._expose_state(key)
        return loss

    def _settle(self, missing, key):
        """The parameters without a gradient now (``missing``, ids ``key``) rest: each keeps
        its count (and a step tensor of its own with it, in ``state[p]["step"]``); those back
        from a rest are behind the arena's count by the steps they sat out. Only when the set
        changes: a parameter without a gradient step after step costs no bookkeeping. (Counts
        are unchanged by this, so a step that raises after it leaves them right.)"""
        t, rest, lag = self._buffers.step, self._rest, self._lag
        off = set(key)
        for p in [p for p in rest if id(p) not in off]:
            k = t - rest.pop(p)
            if k:
                lag[p] = k
            else:                           # (a rest without a step: a step that raised)
                self._resting.pop(p, None)
                self._set_step(p, self._step_tensor)
        for p in missing:
            if p not in rest:
                rest[p] = count = t - lag.pop(p, 0)
                self._resting[p] = own = torch.tensor(float(count))
                self._set_step(p, own)
        self._rest_key = key
        self._lag_version += 1

    def _count_of(self, p):
        """Parameter ``p``'s own step count (0 outside the arena)."""
        if p not in self._slices:
            return 0
        count = self._rest.get(p)
        return count if count is not None else self._buffers.step - self._lag.get(p, 0)

    def _resting_elements(self, missing):
        """The arena's elements of the parameters without a gradient, ``(key, runs)``:
        ``runs`` the ranges of neighbouring such parameters merged (padding between them
        included: it is zeros and stays so). Made again only when the set changes."""
        key = tuple(map(id, missing))
        made = self._resting_cache
        if made is not None and made[0] == key:
            return made
        order, runs, last = self._order, [], None
        for p in missing:
            i = order[id(p)]
            lo, hi = self._slices[p]
            if runs and i == last + 1:
                runs[-1][1] = hi
            else:
                runs.append([lo, hi])
            last = i
        made = self._resting_cache = (key, [tuple(r) for r in runs])
        return made

    def _frozen(self, kwargs, where):
        """``kwargs`` with the resting parameters' elements (``where``'s runs, each run taken
        to the next block boundary, padding only) as a frozen group (``fastopt.Groups``):
        the step leaves them out, parameters and state; cut out of the groups ``kwargs``
        already has. Made again only when the set or ``kwargs`` change."""
        made = self._frozen_cache
        if made[0] is kwargs and made[1] == where[0]:
            return made[2]
        n, align = self._buffers.size, self._state_kw.get("block_size", 1)
        runs = [(lo, min(n, -(-hi // align) * align)) for lo, hi in where[1]]
        groups = kwargs.get("groups")
        out = []
        if groups is not None:
            for ranges, values in zip(groups.ranges, groups.groups):
                left = _without(ranges, runs)
                if left:
                    out.append(dict(values, ranges=left))
        out.append({"ranges": runs, "frozen": True})
        frozen = dict(kwargs, groups=Groups(n, out))
        self._frozen_cache = (kwargs, where[0], frozen)
        return frozen

    def _stepping(self):
        """``(key, by_lag)``: the parameters behind the arena's count that have a gradient now
        (those in ``_lag``: the resting ones are in ``_rest``), ``key`` a tuple ``((lo, id(p),
        lag), ...)`` and ``by_lag`` ``{lag: [p, ...]}``; reused while no lag changed."""
        version, made = self._stepping_cache
        if version == self._lag_version:
            return made
        on = sorted(((self._slices[p][0], id(p), k), p) for p, k in self._lag.items())
        by_lag = {}
        for (_, _, k), p in on:
            by_lag.setdefault(k, []).append(p)
        made = (tuple(key for key, _ in on), by_lag)
        self._stepping_cache = (self._lag_version, made)
        return made

    def _behind(self, kwargs, stepping):
        """``kwargs`` with each stepped parameter's own step count: torch counts the steps of
        each parameter (those in which it has a gradient), the arena counts its own. The
        parameters that sat out steps (no gradient, or added with ``add_param_group``) form
        groups of their own with ``steps_behind`` (``fastopt.Groups``): their bias corrections,
        first-step options and ``lr_decay`` are those of their own count, as in torch. Only
        where the optimizer's scalars or options depend on the count at all (not RMSprop, SGD
        without momentum, Lion, Adadelta, Adagrad without ``lr_decay``); the groups are made
        again only when the set of such parameters or their counts change."""
        cache = self._lag_cache
        if cache[0] is not kwargs:          # the groups' values changed (or the first time)
            cache = self._lag_cache = (kwargs, self._count_matters(), None, None)
        if not cache[1] or not stepping:
            return kwargs
        if cache[2] == stepping:
            return cache[3]
        lagged = dict(kwargs, groups=self._groups({i: k for _, i, k in stepping}))
        self._lag_cache = (kwargs, True, stepping, lagged)
        return lagged

    def _groups(self, k_of):
        """The ``fastopt.Groups`` of the torch parameter groups (their ranges of the arena,
        their real hyperparameters), each parameter ``id(p)`` in ``k_of`` cut out into a group
        with ``steps_behind=k_of[id(p)]``."""
        groups = []
        for g, (start, end), reals in zip(self.param_groups, self._ranges, self._reals):
            rest, by_lag, pos = [], {}, start
            for p in g["params"]:
                k = k_of.get(id(p))
                if k is None:
                    continue
                lo, hi = self._slices[p]
                if hi == lo:
                    continue
                if lo > pos:
                    rest.append((pos, lo))
                by_lag.setdefault(k, []).append((lo, hi))
                pos = hi
            if end > pos:
                rest.append((pos, end))
            if rest:
                groups.append(dict(reals, ranges=rest))
            groups += [dict(reals, ranges=r, steps_behind=k) for k, r in by_lag.items()]
        return Groups(self._buffers.size, groups)

    def _count_matters(self):
        """Whether any group's scalars or options depend on the step count (then parameters
        behind the arena's count step with their own)."""
        spec = self._spec
        for g in self.param_groups:
            hp = self._hyper(g, full=True)
            if (spec.scalars(hp, 1) != spec.scalars(hp, 2)
                    or spec.scalars(hp, 2) != spec.scalars(hp, 1000)
                    or spec.options(hp, 1) != spec.options(hp, 2)):
                return True
        return False

    def _count_steps(self, stepping):
        """After a step: the parameters stepped behind the arena's count share one step tensor
        per lag, set to their count (one ``fill_`` per lag and step, not per parameter); the
        resting ones keep theirs (:meth:`_settle`)."""
        if not stepping[0]:
            return
        key, by_lag = stepping
        for k in by_lag:
            self._counter(k)
        if key != self._joined:             # parameters back from a rest join their lag's
            for k, ps in by_lag.items():
                for p in ps:
                    self._resting.pop(p, None)
                    self._set_step(p, self._counters[k])
            self._joined = key

    def _counter(self, k):
        """The step tensor shared by the parameters ``k`` steps behind that are not resting,
        set to their count (every parameter that holds it has lag ``k``)."""
        c = self._counters.get(k)
        if c is None:
            c = self._counters[k] = torch.tensor(0.0)
        c.fill_(float(self._buffers.step - k))
        return c

    def _own_step(self, p):
        """The step tensor of parameter ``p``, behind the arena's count."""
        own = self._resting.get(p) if p in self._rest else None
        return own if own is not None else self._counter(self._lag[p])

    def _set_step(self, p, tensor):
        if p not in self._unshown and not self._stateless:
            self.state[p]["step"] = tensor

    def _tensor(self, name):
        """A torch view of the buffers' array ``name`` (host or device), zero-copy; bfloat16
        state (``uint16`` bits) as a ``torch.bfloat16`` tensor over the same bytes."""
        return self._as_tensor(getattr(self._buffers, name))

    def _as_tensor(self, a):
        if isinstance(a, np.ndarray):
            t = torch.from_numpy(a)
            return t.view(torch.bfloat16) if a.dtype == np.uint16 else t
        return torch.as_tensor(a, device=self._flat_p.device)

    # ------------------------------------------------------------------ state
    def _state_tensor(self, name, p):
        lo, hi = self._slices[p]
        return self._tensor(name)[lo:hi].view_as(p)

    def _expose_state(self, missing=None):
        """``self.state[p]`` of each parameter stepped at least once: views of the arena's
        state under torch's names, made once per parameter (a parameter not stepped yet has
        none, as in torch); the step count, one tensor shared by every parameter, updated in
        place (a parameter behind the arena's count: its own, :meth:`_own_step`). ``missing``:
        the ids of the parameters the step just left out (None: not called after a step)."""
        b = self._buffers
        self._step_tensor.fill_(float(b.step))
        if not self._unshown or (missing is not None and missing == self._quiet):
            return
        new = [p for p in self._unshown if self._count_of(p)]
        if not new:
            self._quiet = missing   # the same parameters missing again: none stepped
            return
        fields = [f for f in b.state_fields if getattr(b, f) is not None]
        for p in new:
            self._unshown.discard(p)
            st = self.state[p]
            for f in fields:
                st[f] = self._state_tensor(f, p)
            if b.state_absmax is not None:         # 8-bit: the scales of p's own blocks
                blo, bhi = self._blocks(p)
                for f in fields:
                    st[f + "_absmax"] = torch.from_numpy(b.state_absmax[f][blo:bhi])
                st["block_size"] = b.block_size
            if self._master:
                lo, hi = self._slices[p]
                st["master_param"] = self._flat_p[lo:hi].view_as(p)
            st["step"] = (self._own_step(p) if p in self._lag or p in self._rest
                          else self._step_tensor)

    def state_dict(self):
        """torch's format: each parameter's state with its own step count (one step tensor
        per parameter, as torch keeps them: torch increments each in place); a parameter
        that has not been stepped yet has no state, as in torch."""
        b = self._buffers
        self._catch_up()
        if b.step:
            self._expose_state()
        sd = super().state_dict()
        if not b.step:
            return sd
        state, counts = {}, {}
        for i, (g, p) in enumerate((g, p) for g in self.param_groups for p in g["params"]):
            st = sd["state"].get(i)
            count = self._count_of(p)
            if st is None or not count:
                continue
            # (a copy: torch's state_dict holds self.state's own dicts, whose step tensors
            # must stay the ones the steps update)
            st = state[i] = dict(st, step=torch.tensor(float(count)))
            if self._name == "nadam":
                from .reference import mu_product
                key = (id(g), count)
                if key not in counts:
                    counts[key] = mu_product(self._hyper(g, full=True), count)[2]
                st["mu_product"] = torch.tensor(float(counts[key]))
        return dict(sd, state=state)

    def _given_state(self, state_dict):
        """``{param: its state as given}``, before torch's ``load_state_dict`` casts floating
        state to the parameter's dtype (torch's own mapping: saved ids to parameters in group
        order); empty where the groups do not match (torch's checks then say so)."""
        try:
            saved = [i for g in state_dict["param_groups"] for i in g["params"]]
            given = state_dict["state"]
        except (KeyError, TypeError):
            return {}
        params = [p for g in self.param_groups for p in g["params"]]
        if not isinstance(given, dict) or len(saved) != len(params):
            return {}
        return {p: given[i] for i, p in zip(saved, params) if isinstance(given.get(i), dict)}

    def _check_state_precision(self, given):
        """A state dict's state must have this optimizer's state precision: bfloat16 and 8-bit
        state are not rounded from float state on load, nor widened from it, and 8-bit state
        must come with its scales in blocks of this optimizer's size (refused before any
        write, as fastopt's checkpoints do)."""
        b = self._buffers
        where = f"fastopt.torch.{type(self).__name__}.load_state_dict"
        held = b.state_dtype if b.state_dtype in ("bfloat16", "int8") else "full-precision"
        fields = b.state_fields      # (all: the loaded groups may ask for more, e.g. amsgrad)

        def kind(t):
            if not isinstance(t, torch.Tensor):
                return None
            if t.dtype == torch.bfloat16:
                return "bfloat16"
            if t.dtype == torch.uint8:
                return "int8"
            return "full-precision" if t.is_floating_point() else None

        for p, st in given.items():
            self._check_master(p, st.get("master_param"), where)
            for f in fields:
                got = kind(st.get(f))
                if got is None:
                    continue
                if got != held or (held != "int8" and f + "_absmax" in st):
                    hint = {"full-precision": "None", "bfloat16": "'bfloat16'",
                            "int8": "'int8'"}[got]
                    note = ("; an arena of fewer than min_8bit_size elements keeps "
                            "full-precision state" if "int8" in (got, held) else "")
                    raise ValueError(
                        f"{where}: the state dict holds {f!r} as {got} state but this "
                        f"optimizer keeps {held} state; fastopt does not convert state "
                        f"precision on load (construct the optimizer with state_dtype={hint}"
                        f"{note})")
                if held != "int8":
                    continue
                blocks = -(-p.numel() // b.block_size)  # (each parameter starts a block)
                scales = st.get(f + "_absmax")
                problem = None
                if st.get("block_size") != b.block_size:
                    problem = (f"blocks of {st.get('block_size')!r} elements, this optimizer "
                               f"{b.block_size}")
                elif st[f].numel() != p.numel():
                    problem = f"{st[f].numel()} codes for a parameter of {p.numel()} elements"
                elif (not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32
                      or scales.numel() != blocks):
                    problem = (f"{f + '_absmax'!r} must be {blocks} float32 scales, got "
                               f"{_describe(scales)}")
                if problem:
                    raise ValueError(f"{where}: 8-bit state {f!r}: {problem}")

    def _check_master(self, p, master, where):
        """A state dict's ``master_param`` (saved with ``master_weights=True``): float32
        values of the parameter's shape, and only for an optimizer that keeps master weights
        (elsewhere it would be dropped, and with it the bits the rounded parameter lacks)."""
        if master is None:
            return
        if not self._master:
            raise ValueError(f"{where}: the state dict holds float32 master weights "
                             f"('master_param', saved with master_weights=True) but this "
                             f"optimizer keeps none; load it into one built with "
                             f"master_weights=True")
        if (not isinstance(master, torch.Tensor) or master.dtype != torch.float32
                or master.shape != p.shape):
            raise ValueError(f"{where}: 'master_param' must be float32 of the parameter's "
                             f"shape {tuple(p.shape)}, got {_describe(master)}")

    def load_state_dict(self, state_dict):
        given = self._given_state(state_dict)
        self._check_state_precision(given)
        for st in given.values():                    # (checked before anything is loaded)
            if "step" in st:
                _count(st["step"], type(self).__name__)
        super().load_state_dict(state_dict)          # torch's checks, groups, casts
        loaded = {p: dict(self.state[p]) for p in self._params() if self.state.get(p)}
        # each parameter's own count: its "step" (torch's SGD keeps none: 1 where it has
        # state), 0 without state; the arena counts the most, the others are behind it
        counts = {p: (_count(s["step"], type(self).__name__) if "step" in s else 1)
                  for p, s in loaded.items()}
        self.state.clear()
        self._buffers = None
        self._build(include=loaded)                  # state options of the loaded groups
        b = self._buffers
        b.step = max(counts.values(), default=0)
        self._lag = {p: b.step - counts.get(p, 0) for p in self._slices
                     if b.step - counts.get(p, 0)}
        for p, st in loaded.items():
            lo, hi = self._slices[p]
            for f in b.state_fields:
                if getattr(b, f) is None or f not in st or st[f] is None:
                    continue
                src = st[f]
                if (self._state_kw or self._master) and p in given and f in given[p]:
                    src = given[p][f]            # the bits as given, not torch's cast
                self._tensor(f)[lo:hi].copy_(src.detach().reshape(-1))
                if b.state_absmax is not None:
                    blo, bhi = self._blocks(p)
                    b.state_absmax[f][blo:bhi] = given[p][f + "_absmax"].detach().numpy()
            master = given.get(p, {}).get("master_param")
            if master is not None:           # (else the parameter's values, widened)
                self._flat_p[lo:hi].copy_(master.detach().reshape(-1))
        if b.step:
            self._expose_state()


def _without(ranges, runs):
    """The element ranges ``ranges`` less the sorted, disjoint ``runs``."""
    out = []
    for lo, hi in ranges:
        for a, b in runs:
            if b <= lo or a >= hi:
                continue
            if a > lo:
                out.append((lo, a))
            lo = max(lo, b)
            if lo >= hi:
                break
        if hi > lo:
            out.append((lo, hi))
    return out


def _count(step, name):
    """A state dict's step count (a tensor or a number) as an int >= 0."""
    value = float(step.item() if isinstance(step, torch.Tensor) else step)
    if not (value >= 0 and value == int(value)):
        raise ValueError(f"fastopt.torch.{name}.load_state_dict: a step count must be a "
                         f"whole number >= 0, got {value!r}")
    return int(value)


def _describe(t):
    if isinstance(t, torch.Tensor):
        return f"{t.numel()} {str(t.dtype).replace('torch.', '')}"
    return "nothing" if t is None else type(t).__name__


def _optimizer(name, fastopt_name, defaults, fixed=None, doc=""):
    cls = type(name, (_FastoptOptimizer,), {
        "_name": fastopt_name, "_defaults": defaults, "_fixed": fixed or {},
        "__doc__": f"``torch.optim.{name}``'s arguments and defaults on fastopt's "
                   f"``{fastopt_name}_step``. {doc}"})
    cls.__module__ = __name__
    return cls


_ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             maximize=False)
Adam = _optimizer("Adam", "adam", _ADAM)
AdamW = _optimizer("AdamW", "adam", dict(_ADAM, weight_decay=1e-2),
                   dict(decoupled_weight_decay=True))
SGD = _optimizer("SGD", "sgd", dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                                    nesterov=False, maximize=False))
RMSprop = _optimizer("RMSprop", "rmsprop", dict(lr=1e-2, alpha=0.99, eps=1e-8,
                                                weight_decay=0.0, momentum=0.0,
                                                centered=False, maximize=False))
Adagrad = _optimizer("Adagrad", "adagrad", dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                                                initial_accumulator_value=0.0, eps=1e-10,
                                                maximize=False))
Adadelta = _optimizer("Adadelta", "adadelta", dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                                                   maximize=False))
Adamax = _optimizer("Adamax", "adamax", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                                             weight_decay=0.0, maximize=False))
NAdam = _optimizer("NAdam", "nadam", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=0.0, momentum_decay=4e-3,
                                          decoupled_weight_decay=False, maximize=False))
RAdam = _optimizer("RAdam", "radam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=0.0, decoupled_weight_decay=False,
                                          maximize=False))
Lion = _optimizer("Lion", "lion", dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                                       maximize=False),
                  doc="(torch has no Lion: the arguments of pytorch-optimizer's.)")
LAMB = _optimizer("LAMB", "lamb", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                                       weight_decay=0.0, maximize=False),
                  doc="(torch has no LAMB; the trust ratio is per parameter tensor.)")
