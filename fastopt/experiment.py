"""The blog's experiment: four optimizers training the same MLP on MNIST.

Each optimizer trains its own copy of one identically initialized network on the same
sequence of minibatches (drawn with replacement, as the blog's ``np.random.choice``). As in
the blog, the recorded loss of an iteration is the minibatch loss *after* that iteration's
update. The optimizers are :mod:`fastopt.compat`'s drop-ins for the blog's classes, stepping
each network's flat arena with one fused call.
"""
import csv
import json
import os
import sys
import time

import numpy as np

from . import compat, registry
from ._progress import progress
from .mlp import MLP, BLOG_SIZES

def _registered(name, spec_name, default_lr):
    """A registered optimizer behind the blog's interface (``update(params, grads)`` over the
    network's arena, one fused call): its own defaults, ``lr`` as given."""
    class Registered(compat._BlogOptimizer):
        _spec_name = spec_name

        def __init__(self, lr=default_lr, *, backend=None):
            super().__init__(backend)
            self.lr = lr

        def _hyper(self):
            return dict(self._spec.defaults, lr=self.lr)
    Registered.__name__ = Registered.__qualname__ = name
    return Registered


# the blog's four (the default set), the textbook's other two, then every other registered
# optimizer at its own default learning rate (used unless --lr is given)
BLOG_OPTIMIZERS = ("SGD", "Momentum", "RMSprop", "Adam")
OPTIMIZERS = {"SGD": compat.mini_SGD, "Momentum": compat.Momentum,
              "RMSprop": compat.RMSprop, "Adam": compat.Adam,
              "Nesterov": compat.Nesterov, "AdaGrad": compat.AdaGrad}
_COVERED = {"sgd", "momentum", "rmsprop", "adam", "nesterov", "adagrad"}
for _spec in registry.REGISTRY.values():        # every other registered optimizer, by name
    if _spec.name not in _COVERED:
        _name = _spec.buffers_cls.__name__[:-len("Buffers")] or _spec.name
        OPTIMIZERS[_name] = _registered(_name, _spec.name, _spec.defaults["lr"])
del _spec
MARKERS = {"SGD": "v", "Momentum": "p", "RMSprop": "o", "Adam": "s", "Nesterov": "^",
           "AdaGrad": "D", "Adadelta": "x", "Adamax": "*", "NAdam": "<", "RAdam": ">",
           "Lion": "h", "LAMB": "d"}


def _make(name, lr, backend):
    """The optimizer ``name`` at ``lr`` (``None``: its default in :data:`OPTIMIZERS`)."""
    return OPTIMIZERS[name](**({} if lr is None else {"lr": lr}), backend=backend)


def smooth_curve(x):
    """The blog's smoothing (deep-learning-from-scratch ``common.util.smooth_curve``):
    a Kaiser window of length 11, beta 2, with mirrored ends."""
    x = np.asarray(x, dtype=np.float64)
    window_len = 11
    if len(x) < window_len:
        return x.copy()
    s = np.r_[x[window_len - 1:0:-1], x, x[-1:-window_len:-1]]
    w = np.kaiser(window_len, 2)
    y = np.convolve(w / w.sum(), s, mode="valid")
    return y[5:len(y) - 5]


SCHEDULES = ("constant", "cosine", "linear", "wsd")


def lr_schedule(name, lr, iters, warmup=0):
    """The learning rate of ``compare --schedule``: ``constant`` (after an optional linear
    warmup), ``cosine`` (to 0 at ``iters``), ``linear`` (to 0 at ``iters``) or ``wsd``
    (warmup, stable, then a linear decay over the last 20 % of the steps). ``warmup``: linear
    warmup steps from ``lr / 3``. Returns a number (no schedule) or a schedule."""
    from . import schedules
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    rest = max(1, iters - warmup)
    if name == "cosine":
        return schedules.cosine(lr, rest, warmup=warmup)
    if name == "wsd":
        decay = max(1, rest // 5)
        return schedules.warmup_stable_decay(lr, warmup, rest - decay, decay)
    if name == "linear":
        poly = schedules.polynomial(lr, rest)
        if not warmup:
            return poly
        ramp = schedules.linear_warmup(lr, warmup)
        return schedules.Schedule("linear", lambda t: ramp(t) if t < warmup
                                  else poly(t - warmup), value=lr, warmup=warmup, total=rest)
    return schedules.linear_warmup(lr, warmup) if warmup else lr


class LoopOptimizer:
    """One of the blog's optimizers (its exact hyperparameters, from :mod:`fastopt.compat`)
    stepped with the training-loop options: a learning-rate schedule, global-norm clipping
    (``clip``) and weight decay with or without the biases (parameter groups), all inside
    the one fused step over the network's arena. ``update(params, grads)`` as the blog's."""

    def __init__(self, name, net, lr, *, clip=None, schedule="constant", warmup=0, iters=1,
                 weight_decay=0.0, decay_bias=True, backend=None, state_dtype=None):
        from . import Groups
        blog = _make(name, lr, backend)
        self.spec = blog._spec
        self.hyper = blog._hyper()
        self.hyper["lr"] = lr_schedule(schedule, self.hyper["lr"], iters, warmup)
        names = {h.name for h in self.spec.hypers}
        self.groups = None
        self.note = None
        if weight_decay:
            if "weight_decay" not in names:
                self.note = f"{name} has no weight decay: trained without"
            else:
                self.hyper["weight_decay"] = weight_decay
                if "decoupled_weight_decay" in names:        # Adam -> AdamW
                    self.hyper["decoupled_weight_decay"] = True
                if not decay_bias:
                    biases = [k for k in net.flat.layout if k.startswith("b")]
                    self.groups = Groups(net.flat, [{"params": biases, "weight_decay": 0.0}])
        self.clip = clip
        self.backend = backend
        # an optimizer with per-tensor norms (LAMB) is given the network's tensors
        self.layout = {} if self.spec.segment_scalars is None else {"layout": net.flat}
        self.buffers = self.spec.buffers_cls.zeros(
            net.flat.param, net.flat.grad, state_dtype=state_dtype,
            **self.spec.state_options(self.spec.validate(
                {k: (v(0) if callable(v) else v) for k, v in
                 dict(self.spec.defaults, **self.hyper).items()})))

    def update(self, params=None, grads=None):
        self.spec.step_fn(self.buffers, **self.hyper, max_grad_norm=self.clip,
                          groups=self.groups, backend=self.backend, **self.layout)


class DistributedOptimizer:
    """One of the blog's optimizers stepped data-parallel over MPI with sharded state
    (:class:`fastopt.distributed.ShardedStep`), optionally clipped. Each rank computes the
    gradient of its part of the batch; the step averages them."""

    def __init__(self, name, net, lr, *, clip=None, backend=None):
        from .distributed import ShardedStep
        blog = _make(name, lr, backend)
        self.spec = blog._spec
        self.hyper = blog._hyper()
        self.clip = clip
        hp = self.spec.validate(dict(self.spec.defaults, **self.hyper))
        self.sharded = ShardedStep(self.spec.step_fn, net.flat.param, net.flat.grad,
                                   **self.spec.state_options(hp))

    def update(self, params=None, grads=None):
        self.sharded.step(**self.hyper, max_grad_norm=self.clip)


def run_compare(data, iters=2000, batch_size=128, lr=None, optimizers=BLOG_OPTIMIZERS,
                backend=None, dtype=np.float32, seed=0, report_every=100, out=None,
                show_progress=None, clip=None, schedule="constant", warmup=0,
                weight_decay=0.0, decay_bias=True, state_dtypes=None, distributed=False):
    """Train one network per optimizer; return a dict of losses, accuracies and timings.
    ``lr``: every optimizer's learning rate (``None``: each one's default, 0.01 for the
    blog's four).
    ``clip``, ``schedule``, ``warmup``, ``weight_decay``, ``decay_bias``: the training-loop
    options (:class:`LoopOptimizer`); with their defaults the blog's classes are used.
    ``state_dtypes``: a list of state precisions (``"float32"``, ``"bfloat16"``...): every
    optimizer then trains once per precision, under the name ``"Adam (bfloat16)"`` etc.
    ``distributed``: data-parallel over MPI (run under ``mpiexec``): every rank draws the same
    batches, computes the gradient of its contiguous part of each batch, and the sharded step
    averages them (:class:`DistributedOptimizer`); ``clip`` is the only loop option then."""
    out = sys.stdout if out is None else out
    part = weight = comm = None
    if distributed:
        if schedule != "constant" or warmup or weight_decay or state_dtypes:
            raise ValueError("distributed training takes --clip as its only loop option for "
                             "now (no schedule, warmup, weight decay or state precisions)")
        from mpi4py import MPI

        from .distributed import shard_bounds
        comm = MPI.COMM_WORLD
        counts, offsets = shard_bounds(batch_size, comm.Get_size())
        if min(counts) == 0:
            raise ValueError(f"a batch of {batch_size} cannot be split over "
                             f"{comm.Get_size()} ranks")
        lo = offsets[comm.Get_rank()]
        part = (lo, lo + counts[comm.Get_rank()])
        # a rank's gradient is the mean over its part; the step averages the ranks', so a
        # part of another size is weighted by its share first (1 when the parts are equal)
        weight = counts[comm.Get_rank()] * comm.Get_size() / batch_size
    loop = dict(clip=clip, schedule=schedule, warmup=warmup, iters=iters,
                weight_decay=weight_decay, decay_bias=decay_bias, backend=backend)
    plain = (clip is None and schedule == "constant" and not warmup and not weight_decay
             and not state_dtypes)
    names = {k: k for k in optimizers}          # run name -> optimizer name
    precision = {k: None for k in optimizers}
    if state_dtypes:
        names = {f"{k} ({sd})": k for k in optimizers for sd in state_dtypes}
        precision = {f"{k} ({sd})": sd for k in optimizers for sd in state_dtypes}
    chosen = list(optimizers)
    optimizers = list(names)

    def optimizer(k, net):
        if distributed:
            return DistributedOptimizer(names[k], net, lr, clip=clip, backend=backend)
        if plain:
            return _make(names[k], lr, backend)
        sd = precision[k]
        return LoopOptimizer(names[k], net, lr, **loop,
                             state_dtype=None if sd == np.dtype(dtype).name else sd)
    (x_train, t_train), (x_test, t_test) = data
    dtype = np.dtype(dtype)
    x_train = np.ascontiguousarray(x_train, dtype=dtype)
    x_test = np.ascontiguousarray(x_test, dtype=dtype)
    base = MLP(BLOG_SIZES, dtype=dtype, seed=seed)
    nets = {k: base.copy() for k in optimizers}
    opts = {k: optimizer(k, nets[k]) for k in optimizers}
    for o in opts.values():
        if getattr(o, "note", None):
            print(f"note: {o.note}", file=out)
    losses = {k: np.empty(iters) for k in optimizers}
    t_model = {k: 0.0 for k in optimizers}
    t_opt = {k: 0.0 for k in optimizers}
    batch_rng = np.random.default_rng(seed + 1)
    # first calls load (or compile) the kernels: do them on throwaway copies, outside the
    # timed loop, and report that time separately
    t0 = time.perf_counter()
    for k in optimizers:
        scratch = base.copy()
        scratch.gradient(x_train[:batch_size], t_train[:batch_size])
        optimizer(k, scratch).update(scratch.params, scratch.grads)
    warmup = time.perf_counter() - t0
    bar = progress(iters, desc="compare", unit="it", enabled=show_progress)
    wall0 = time.perf_counter()
    done, interrupted = 0, False
    try:
        for it in range(iters):
            mask = batch_rng.choice(len(x_train), batch_size)
            x, t = x_train[mask], t_train[mask]
            for k in optimizers:
                net = nets[k]
                t0 = time.perf_counter()
                if part is None:
                    net.gradient(x, t)
                else:
                    net.gradient(x[part[0]:part[1]], t[part[0]:part[1]])
                    if weight != 1:
                        net.flat.grad *= net.flat.grad.dtype.type(weight)
                t1 = time.perf_counter()
                opts[k].update(net.params, net.grads)
                t2 = time.perf_counter()
                losses[k][it] = net.loss(x, t)
                t3 = time.perf_counter()
                t_model[k] += (t1 - t0) + (t3 - t2)
                t_opt[k] += t2 - t1
            done = it + 1
            if report_every and it % report_every == 0:
                if hasattr(bar, "clear"):
                    bar.clear()
                print(f"========== iteration: {it} ==========", file=out)
                for k in optimizers:
                    print(f"{k}:{float(losses[k][it])!r}", file=out)
                out.flush()
            bar.update(1)
    except KeyboardInterrupt:
        # keep what was trained: the caller writes the losses of the completed iterations
        interrupted = True
    finally:
        bar.close()
    wall = time.perf_counter() - wall0
    losses = {k: v[:done] for k, v in losses.items()}
    accuracy = {k: nets[k].accuracy(x_test, t_test) for k in optimizers}
    return {
        "interrupted": interrupted,
        "completed_iters": done,
        "losses": {k: v.tolist() for k, v in losses.items()},
        "final_smoothed_loss": {k: float(smooth_curve(v)[-1]) if len(v) else float("nan")
                                for k, v in losses.items()},
        "test_accuracy": accuracy,
        "timing_s": {"wall": wall, "warmup": warmup, "model": t_model, "optimizer": t_opt,
                     "model_total": sum(t_model.values()),
                     "optimizer_total": sum(t_opt.values())},
        "settings": {"iters": iters, "batch_size": batch_size,
                     "lr": {k: _make(names[k], lr, backend).lr for k in optimizers},
                     "optimizers": chosen, "backend": backend or "auto",
                     "state_dtypes": list(state_dtypes or []),
                     "dtype": dtype.name, "seed": seed, "sizes": list(BLOG_SIZES),
                     "clip": clip, "schedule": schedule, "warmup": warmup,
                     "weight_decay": weight_decay, "decay_bias": decay_bias,
                     "distributed_ranks": comm.Get_size() if comm is not None else None,
                     "train_size": len(x_train), "test_size": len(x_test)},
    }


def write_outputs(result, out_dir):
    """Write ``losses.json``, ``losses.csv`` and ``loss.png`` (if matplotlib is installed)
    into ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    jp = os.path.join(out_dir, "losses.json")
    with open(jp + ".tmp", "w") as f:
        # strict JSON (RFC 8259): a diverged run's NaN / inf losses are written as null
        json.dump(_finite_or_null(result), f, indent=1, allow_nan=False)
    os.replace(jp + ".tmp", jp)
    paths.append(jp)
    cp = os.path.join(out_dir, "losses.csv")
    names = list(result["losses"])
    with open(cp + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration"] + names)
        for i, row in enumerate(zip(*(result["losses"][k] for k in names))):
            w.writerow([i] + [repr(v) for v in row])
    os.replace(cp + ".tmp", cp)
    paths.append(cp)
    png = plot_losses(result, os.path.join(out_dir, "loss.png"))
    if png:
        paths.append(png)
    return paths


def _finite_or_null(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_null(v) for v in x]
    return x


def plot_losses(result, path):
    """The blog's figure: smoothed loss per optimizer, markers every 100 iterations."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'fastopt[plot]')",
              file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    many = len(result["losses"]) > 10
    for i, (k, v) in enumerate(result["losses"].items()):
        x = np.arange(len(v))
        ax.plot(x, smooth_curve(v), marker=MARKERS.get(k.split(" (")[0], "."), markevery=100,
                label=k,
                color=plt.cm.tab20.colors[i % 20] if many else None)
    s = result["settings"]
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Loss")
    ax.set_ylim(0, 1)
    ax.legend(ncol=2 if len(result["losses"]) > 4 else 1, fontsize=8 if many else None)
    ax.set_title("Comparison of Optimizers on MNIST")
    lrs = sorted(set(s["lr"].values())) if isinstance(s["lr"], dict) else [s["lr"]]
    lr_text = f"lr {lrs[0]}" if len(lrs) == 1 else "lr per optimizer"
    ax.text(0.99, 0.02, f"{s['dtype']}, batch {s['batch_size']}, {lr_text}, "
            f"{s['train_size']:,} training images", transform=ax.transAxes, ha="right",
            fontsize=8, color="gray")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path
