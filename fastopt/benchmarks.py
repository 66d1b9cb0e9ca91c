"""Benchmark workloads shared by the pytest-benchmark suites (``bench/``) and
``python -m fastopt bench``.

A :class:`Workload` is one optimizer x size x dtype: an initial parameter vector, a few fixed
gradients, and the tensor shapes (the MNIST MLP's ten tensors at its size, one tensor
otherwise). :func:`make_runner` builds one implementation of it (the blog's classes on a dict
of arrays, fastopt's NumPy reference, fastopt CPU serial / parallel, CUDA, torch.optim
for-loop / foreach / fused); every runner can ``step()`` and report its ``params()`` so that
each benchmark first checks its own result against the reference, then times.
"""
import dataclasses
import time
import types

import numpy as np

from . import _step, _threads, config, registry, testinfo
from .kernels import cpu as _cpu_kernels
from .mlp import BLOG_SIZES

MLP_SHAPES = []
for _i in range(len(BLOG_SIZES) - 1):
    MLP_SHAPES += [(BLOG_SIZES[_i], BLOG_SIZES[_i + 1]), (BLOG_SIZES[_i + 1],)]
MLP_SIZE = int(sum(np.prod(s) for s in MLP_SHAPES))          # 109,810

SIZES = (1_000, 100_000, MLP_SIZE, 1_000_000, 10_000_000)
IMPLEMENTATIONS = ("blog", "numpy", "cpu-serial", "cpu-parallel", "cuda",
                   "torch-forloop", "torch-foreach", "torch-fused", "optax")
CHECK_STEPS = 3


class Unavailable(Exception):
    """This implementation cannot run this workload here (the reason says why)."""


@dataclasses.dataclass
class Workload:
    spec: object
    n: int
    dtype: type
    seed: int = 0
    state_dtype: str = None      # None: the parameter's dtype; "bfloat16": compressed state

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self.dtype = np.dtype(self.dtype).type
        self.param0 = rng.standard_normal(self.n).astype(self.dtype)
        self.grads = [rng.standard_normal(self.n).astype(self.dtype) for _ in range(2)]
        self.shapes = MLP_SHAPES if self.n == MLP_SIZE else [(self.n,)]
        # fastopt / torch settings: the spec's defaults with the blog's learning rate (the
        # spec's default where the blog has no such class)
        # (and the values under which the torch-side peer has the same formula)
        self.kwargs = dict(self.spec.defaults, **testinfo.info(self.spec).peer_settings,
                           lr=testinfo.blog_lr(self.spec))
        self.hp = self.spec.validate(self.kwargs)
        # an optimizer with per-tensor norms (LAMB) is given the tensors
        self.layout = ([int(np.prod(s)) for s in self.shapes]
                       if self.spec.segment_scalars is not None else None)

    @property
    def name(self):
        return f"{self.spec.name}|{self.n}" + (f"|{self.state_dtype}" if self.state_dtype
                                               else "")

    def arrays_used(self):
        return 2 + len(self.spec.required_state(self.hp))

    def bytes_per_element(self):
        """Memory traffic of one step per element: every array read once, every array but
        the gradient written once; an optimizer with a per-tensor pre-pass (LAMB) reads every
        array once more."""
        reads = self.arrays_used() if self.spec.kernel.norm_names else 0
        size = np.dtype(self.dtype).itemsize
        state = self.arrays_used() - 2
        per_state = {"bfloat16": 2, "int8": 1 + 4 / 256}.get(self.state_dtype, size)
        # param read + written, grad read; each state array read + written (+ pre-pass reads)
        return (3 * size + 2 * state * per_state
                + (2 * size + state * per_state if reads else 0))

    def split(self, flat):
        out, off = [], 0
        for s in self.shapes:
            k = int(np.prod(s))
            out.append(flat[off:off + k].reshape(s))
            off += k
        return out


class Runner:
    """One implementation of a workload. ``set_grad(g)`` puts a flat gradient in place
    (outside the timed call), ``step()`` runs one optimizer step (the timed call; the
    gradient stays fixed between timed steps, the state evolves), ``params()`` returns the
    current parameters as one flat NumPy array."""

    exact = False       # bitwise equal to the reference

    def __init__(self, w):
        self.w = w


class _FastoptRunner(Runner):
    def __init__(self, w, backend, parallel=None, kwargs=None):
        super().__init__(w)
        self.kwargs = dict(w.kwargs if kwargs is None else kwargs, backend=backend)
        self.parallel = parallel
        p = w.param0.copy()
        self.g = np.empty_like(p)
        hp = w.spec.validate({k: v for k, v in self.kwargs.items() if k != "backend"})
        self.b = w.spec.buffers_cls.zeros(p, self.g, state_dtype=w.state_dtype,
                                          **w.spec.state_options(hp))
        self.exact = True
        self.set_grad(w.grads[0])

    def set_grad(self, g):
        self.g[...] = g

    def step(self):
        _step.step(self.w.spec, self.b, parallel=self.parallel, layout=self.w.layout,
                   **self.kwargs)

    def params(self):
        return np.asarray(self.b.param).copy()


class _BlogRunner(Runner):
    def __init__(self, w):
        super().__init__(w)
        from .blog import BLOG_CLASSES
        blog = testinfo.info(w.spec).blog
        if blog is None:
            raise Unavailable("the blog has no such class")
        name, self.equivalent = blog
        self.opt = BLOG_CLASSES[name]()
        flat = w.param0.copy()
        self.keys = [f"t{i}" for i in range(len(w.shapes))]
        self.p = {k: a.copy() for k, a in zip(self.keys, w.split(flat))}
        self.exact = np.dtype(w.dtype) == np.float64
        self.set_grad(w.grads[0])

    def set_grad(self, g):
        self.grads = {k: a.copy() for k, a in zip(self.keys, self.w.split(g))}

    def step(self):
        self.opt.update(self.p, self.grads)

    def params(self):
        return np.concatenate([self.p[k].ravel() for k in self.keys])


class _TorchRunner(Runner):
    def __init__(self, w, mode):
        super().__init__(w)
        try:
            import torch
        except ImportError:
            raise Unavailable("torch is not installed") from None
        torch_of = testinfo.info(w.spec).torch
        peer = None if torch_of is None else torch_of(w.hp)
        if peer is None:
            raise Unavailable(f"torch.optim has no {w.spec.name} with this formula")
        cls_name, kw, attrs = (peer + ({},))[:3]
        import numba
        _threads.ensure_pool()      # start Numba's pool as a user's first parallel step would
        torch.set_num_threads(numba.get_num_threads())
        self.torch = torch
        self.ps = [torch.nn.Parameter(torch.from_numpy(a.copy()))
                   for a in w.split(w.param0.copy())]
        flag = {"forloop": dict(foreach=False), "foreach": dict(foreach=True),
                "fused": dict(fused=True)}[mode]
        try:
            cls = testinfo.peer_class(cls_name)
        except ImportError as e:
            raise Unavailable(f"{cls_name}: {e}") from None
        if "." in cls_name and mode == "fused":     # e.g. pytorch-optimizer: no fused kernels
            raise Unavailable(f"{cls_name} has no fused kernel")
        where = cls_name if "." in cls_name else f"torch.optim.{cls_name}"
        try:
            self.opt = cls(self.ps, **kw, **flag)
        except (RuntimeError, TypeError, ValueError) as e:
            raise Unavailable(f"{where}({mode}): {e}") from None
        for name, value in attrs.items():
            setattr(self.opt, name, value)
        self.tg = [torch.from_numpy(np.empty(s, w.dtype)) for s in w.shapes]
        for p, g in zip(self.ps, self.tg):
            p.grad = g
        self.set_grad(w.grads[0])

    def set_grad(self, g):
        for t, a in zip(self.tg, self.w.split(g)):
            t.numpy()[...] = a

    def step(self):
        self.opt.step()

    def params(self):
        return np.concatenate([p.detach().numpy().ravel() for p in self.ps])


# The case timed right after an optax batch ran slower: at 1e7 fastopt's plain Adam step took
# 6.65-7.06 ms there against 5.2-6.1 ms after other cases or a pause (three runs, 2026-11-29),
# which made the ratios against it wrong (skip 1.06-1.15x instead of 1.21-1.27x). A 5 or 20 ms
# pause, untimed, after the optax batch removed it in the same runs (``settle_s``,
# :func:`interleaved_rounds`). Why (XLA's runtime still at work after the call returned, or its
# memory) was not profiled.
JAX_SETTLE_S = 0.01


def optax_stepper(tx, params):
    """``(step, box)`` for the optax peers: ``step(grads)`` runs one update of the optax
    transformation ``tx`` and ``optax.apply_updates`` in one ``jax.jit`` with the parameters
    and the state donated (XLA may update them in place) and waits for the result; ``box``
    holds the current ``[params, state]``. Callers that time it give their callable
    ``settle_s = JAX_SETTLE_S``."""
    import jax
    import optax

    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    jitted = jax.jit(update, donate_argnums=(0, 1))
    box = [params, tx.init(params)]

    def step(grads):
        box[0], box[1] = jitted(box[0], box[1], grads)
        jax.block_until_ready(box[0])
    return step, box


class _OptaxRunner(Runner):
    """optax's transformation of the same formula (``testinfo``'s ``optax`` entry), its
    update and ``apply_updates`` in one ``jax.jit`` with the parameters and the state donated
    (XLA may update them in place), on JAX's CPU device with XLA's own threads; parameters
    as the workload's tensors (the MLP's ten, or one array). Each step waits for its result."""

    def __init__(self, w):
        super().__init__(w)
        peer = testinfo.info(w.spec).optax
        got = None if peer is None else peer(w.hp)
        if got is None:
            raise Unavailable(f"optax has no {w.spec.name} here")
        if isinstance(got, str):
            raise Unavailable(got)
        try:
            import jax
            import optax
        except ImportError as e:
            raise Unavailable(f"optax is not installed ({e})") from None
        if np.dtype(w.dtype) != np.float32 and not jax.config.jax_enable_x64:
            raise Unavailable("JAX computes in float32 unless jax_enable_x64 is set")
        name, kw = got
        try:
            tx = getattr(optax, name)(**kw)
        except (AttributeError, TypeError) as e:
            raise Unavailable(f"optax {optax.__version__}: optax.{name}: {e}") from None
        self.asarray = jax.numpy.asarray
        self.optax_step, self.box = optax_stepper(
            tx, [self.asarray(a) for a in w.split(w.param0.copy())])
        self.set_grad(w.grads[0])

    def set_grad(self, g):
        self.g = [self.asarray(a) for a in self.w.split(np.ascontiguousarray(g))]

    settle_s = JAX_SETTLE_S                             # interleaved_rounds' pause after it

    def step(self):
        self.optax_step(self.g)

    def params(self):
        return np.concatenate([np.asarray(a).ravel() for a in self.box[0]])


def make_runner(impl, w):
    """Build ``impl`` for workload ``w``; raises :class:`Unavailable` with a reason."""
    if impl == "blog":
        return _BlogRunner(w)
    if impl == "numpy":
        return _FastoptRunner(w, "numpy")
    if impl == "cpu":
        return _FastoptRunner(w, "cpu")       # serial or parallel as config decides
    if impl == "cpu-serial":
        return _FastoptRunner(w, "cpu", parallel=False)
    if impl == "cpu-parallel":
        return _FastoptRunner(w, "cpu", parallel=True)
    if impl == "cuda":
        return _cuda_runner(w)
    if impl.startswith("torch-"):
        return _TorchRunner(w, impl.split("-", 1)[1])
    if impl == "optax":
        return _OptaxRunner(w)
    raise ValueError(f"unknown implementation {impl!r}")


def _cuda_runner(w):
    """A fastopt runner on device copies of ``w``'s arrays, synchronized after each step."""
    from ._cuda_backend import _cuda, cuda_available, simulator_active, to_device
    if simulator_active():
        raise Unavailable("the CUDA simulator is active: its timings mean nothing")
    if not cuda_available():
        raise Unavailable("no CUDA GPU found")
    cuda = _cuda()
    runner = _FastoptRunner(w, "cuda")
    runner.b = to_device(runner.b)

    def set_grad(g):
        runner.b.grad.copy_to_device(np.ascontiguousarray(g))
    runner.set_grad = set_grad
    runner.params = lambda: runner.b.param.copy_to_host()
    runner.exact = False

    def synced_step():
        _step.step(w.spec, runner.b, backend="cuda", layout=w.layout, **w.kwargs)
        cuda.synchronize()
    runner.step = synced_step
    return runner


def check_runner(runner, steps=CHECK_STEPS):
    """Run ``steps`` steps of ``runner`` and of the NumPy reference (with the settings
    the runner claims to implement) from the same start; raise AssertionError on mismatch.
    Bitwise for fastopt's kernels (and the blog's classes in float64), a tolerance otherwise."""
    w = runner.w
    if isinstance(runner, _BlogRunner):
        kwargs = runner.equivalent
    else:   # a fastopt runner may have been built with other settings than the workload's
        kwargs = {k: v for k, v in getattr(runner, "kwargs", w.kwargs).items()
                  if k != "backend"}
    ref = _FastoptRunner(w, "numpy", kwargs=dict(w.spec.defaults, **kwargs))
    for i in range(steps):
        g = w.grads[i % len(w.grads)]
        runner.set_grad(g)
        ref.set_grad(g)
        runner.step()
        ref.step()
    got, want = runner.params(), ref.params()
    if runner.exact:
        if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
            raise AssertionError(f"{w.name} {type(runner).__name__}: not bitwise equal to "
                                 f"the reference")
    else:
        tol = dict(rtol=1e-4, atol=1e-6) if w.dtype == np.float32 else dict(rtol=1e-10,
                                                                              atol=1e-12)
        np.testing.assert_allclose(got, want, **tol,
                                   err_msg=f"{w.name} {type(runner).__name__}")


# ---------------------------------------------------------------- roofline
def traffic_runner(w, parallel=True):
    """A traffic-equal kernel call for ``w``: the same number of arrays read and written
    as the optimizer (see :meth:`Workload.bytes_per_element`), trivial arithmetic."""
    n_arrays = w.arrays_used()
    arrays = [w.param0.copy(), w.grads[0].copy()] + [np.zeros(w.n, w.dtype)
                                                     for _ in range(max(0, n_arrays - 2))]
    placeholder = np.empty(0, w.dtype)
    while len(arrays) < 5:
        arrays.append(placeholder)
    if parallel:
        _threads.ensure_pool()
    kernel = _cpu_kernels.traffic_kernel.get(parallel, with_c=n_arrays > 2,
                                             with_d=n_arrays > 3, with_e=n_arrays > 4)
    s = w.dtype(0.0)
    if w.spec.kernel.norm_names:       # the pre-pass: one more read of every array
        from .kernels.reductions import chunked_sum_of_squares, n_tasks
        read = chunked_sum_of_squares(parallel)
        used = arrays[:n_arrays]

        def run():
            tasks = n_tasks(parallel)
            for a in used:
                read(a, config.NORM_CHUNK, tasks)
            kernel(*arrays, s)
    else:
        def run():
            kernel(*arrays, s)
    run()
    return run


def time_call(fn, min_time=0.2, min_rounds=5, max_rounds=10_000):
    """Median seconds per call over batches lasting >= ~min_time / 5 each."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / 5 / once))
    samples = []
    start = time.perf_counter()
    while len(samples) < min_rounds or (time.perf_counter() - start < min_time
                                        and len(samples) * inner < max_rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.median(samples))


# ---------------------------------------------------------------- python -m fastopt bench
def _plan(quick):
    """(spec, size, dtype) cases of the curated run."""
    sizes = (1_000, MLP_SIZE, 1_000_000) if quick else SIZES
    cases = [(spec, n, np.float32) for spec in registry.REGISTRY.values() for n in sizes]
    cases += [(spec, MLP_SIZE, np.float64) for spec in registry.REGISTRY.values()]
    return cases


def time_interleaved(fns, min_time=0.2, min_rounds=5):
    """Median seconds per call of each of ``fns``, timed in round-robin batches (each batch
    ~``min_time / 20``: many short rounds), so that every function is measured in the same
    moments: the VM's memory bandwidth drifts by ~10 %, and a reference timed at another
    moment gave ratios that meant nothing (a "roofline fraction" of 2.99). With batches of
    ``min_time / 5`` a 1e7 Adam step ran 7 calls per batch and the training-loop table got
    5-7 rounds, whose ratios scattered (10 groups 0.85-1.03x the plain step)."""
    return [float(np.median(x)) for x in interleaved_rounds(fns, min_time, min_rounds)]


def round_ratio(a, b):
    """The median over rounds of ``a[r] / b[r]`` (per-round seconds of two functions timed
    in the same rounds, :func:`interleaved_rounds`): steadier than the ratio of the medians
    where the machine's speed drifts between rounds, since both sides of a round's ratio
    share its moment."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def settle_time(fn):
    """Seconds to pause, untimed, after a batch of ``fn`` before the next function's batch:
    ``fn.settle_s`` (or its instance's, for a bound method), else 0. The optax peers set
    :data:`JAX_SETTLE_S`."""
    got = getattr(fn, "settle_s", None)
    if got is None:
        got = getattr(getattr(fn, "__self__", None), "settle_s", None)
    return float(got or 0.0)


def interleaved_rounds(fns, min_time=0.2, min_rounds=5):
    """Seconds per call of each of ``fns`` in each round of :func:`time_interleaved` (a list
    per function, one entry per round). After a function with a :func:`settle_time` the next
    batch waits that long (not counted in anyone's time)."""
    inner = []
    settle = [settle_time(fn) for fn in fns]
    for fn in fns:
        fn()
        t0 = time.perf_counter()
        fn()
        inner.append(max(1, int(min_time / 20 / max(time.perf_counter() - t0, 1e-7))))
    samples = [[] for _ in fns]
    start = time.perf_counter()
    while (len(samples[0]) < min_rounds
           or time.perf_counter() - start < min_time * len(fns)):
        for fn, k, out, pause in zip(fns, inner, samples, settle):
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            out.append((time.perf_counter() - t0) / k)
            if pause:
                time.sleep(pause)
    return samples


def run_bench(quick=False, impls=IMPLEMENTATIONS, show_progress=None, min_time=None):
    """Check every implementation on the curated cases, then time them all, interleaved with
    the traffic-equal kernels (serial and parallel; the faster is the machine's attainable
    speed at that size); returns a list of rows."""
    from ._progress import progress
    min_time = (0.05 if quick else 0.25) if min_time is None else min_time
    cases = _plan(quick)
    rows = []
    bar = progress(len(cases), desc="bench", unit="case", enabled=show_progress)
    try:
        for spec, n, dtype in cases:
            bar.set_postfix_str(f"{spec.name} {n} {np.dtype(dtype).name}")
            w = Workload(spec, n, dtype)
            case_rows, runners = [], []
            for impl in impls:
                row = dict(optimizer=spec.name, size=n, dtype=np.dtype(dtype).name,
                           bytes_per_element=w.bytes_per_element(), impl=impl)
                try:
                    runner = make_runner(impl, w)
                    check_runner(runner)
                    runners.append((row, runner))
                    row["status"] = "ok"
                except Unavailable as e:
                    row.update(status="unavailable", reason=str(e))
                case_rows.append(row)
            probes = [traffic_runner(w, parallel=False), traffic_runner(w, parallel=True)]
            times = time_interleaved(probes + [r.step for _, r in runners], min_time=min_time)
            roof = min(times[:2])
            for (row, _), t in zip(runners, times[2:]):
                row.update(seconds=t, gb_per_s=w.bytes_per_element() * n / t / 1e9,
                           traffic_equal_s=roof, roofline_fraction=roof / t)
            rows += case_rows
            bar.update(1)
    finally:
        bar.close()
    _add_speedups(rows)
    return rows


def _add_speedups(rows):
    index = {(r["optimizer"], r["size"], r["dtype"], r["impl"]): r for r in rows
             if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for peer in ("blog", "torch-fused", "optax", "numpy"):
            other = index.get((r["optimizer"], r["size"], r["dtype"], peer))
            if other is not None:
                r[f"speedup_vs_{peer.replace('-', '_')}"] = other["seconds"] / r["seconds"]
        blog = index.get((r["optimizer"], r["size"], r["dtype"], "blog"))
        if blog is not None:
            # the speedup over the blog's class that moving the same bytes with no arithmetic
            # reaches
            r["blog_over_traffic_equal"] = blog["seconds"] / r["traffic_equal_s"]


def format_table(rows):
    lines = [f"{'optimizer':<9} {'size':>10} {'dtype':<7} {'implementation':<14} "
             f"{'time':>10} {'GB/s':>7} {'roofline':>8} {'vs blog':>8} {'vs torch':>8} "
             f"{'vs optax':>8} {'ceiling':>8}"]
    for r in rows:
        if r["status"] != "ok":
            continue
        ts = format_seconds(r["seconds"])
        vs_blog = r.get("speedup_vs_blog")
        vs_torch = r.get("speedup_vs_torch_fused")
        vs_optax = r.get("speedup_vs_optax")
        ceiling = r.get("blog_over_traffic_equal")
        lines.append(
            f"{r['optimizer']:<9} {r['size']:>10} {r['dtype']:<7} {r['impl']:<14} {ts:>10} "
            f"{r['gb_per_s']:7.2f} {r['roofline_fraction']:8.2f} "
            f"{(f'{vs_blog:7.1f}x' if vs_blog else '-'):>8} "
            f"{(f'{vs_torch:7.2f}x' if vs_torch else '-'):>8} "
            f"{(f'{vs_optax:7.2f}x' if vs_optax else '-'):>8} "
            f"{(f'{ceiling:7.1f}x' if ceiling else '-'):>8}")
    lines.append("roofline: traffic-equal kernel time / this time; vs torch: torch.optim "
                 "fused; vs optax: optax jitted, parameters and state donated; ceiling: blog "
                 "class time / traffic-equal kernel time, the 'vs blog' that a kernel moving "
                 "the same bytes with no arithmetic would reach")
    return "\n".join(lines)


def format_seconds(s):
    return f"{s * 1e6:8.1f}us" if s < 1e-2 else f"{s * 1e3:8.2f}ms"


def optimizer_panels(rows):
    """``(plt, fig, axes, names)``: one log-x panel per optimizer in ``rows``, or ``None``
    when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("GB/s (optimizer traffic)")
    return plt, fig, axes, names


def save_panels(plt, fig, axes, path):
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bench(rows, path):
    """GB/s vs size per implementation (log x), one panel per optimizer, float32 (``None``
    when there is nothing to plot or no matplotlib)."""
    rows = [r for r in rows if r["dtype"] == "float32"]
    if not any(r["status"] == "ok" for r in rows):
        return None
    panels = optimizer_panels(rows)
    if panels is None:
        return None
    plt, fig, axes, names = panels
    for ax, name in zip(axes, names):
        sel = [r for r in rows if r["optimizer"] == name]
        for impl in dict.fromkeys(r["impl"] for r in sel):
            pts = sorted((r["size"], r["gb_per_s"]) for r in sel
                         if r["impl"] == impl and r["status"] == "ok")
            if pts:
                ax.plot(*zip(*pts), marker="o", label=impl)
        roof = sorted({(r["size"], r["bytes_per_element"] * r["size"] / r["traffic_equal_s"]
                        / 1e9) for r in sel if r["status"] == "ok"})
        ax.plot(*zip(*roof), "k--", label="traffic-equal kernel")
        ax.set_title(f"{name} (float32)")
    return save_panels(plt, fig, axes, path)


# ---------------------------------------------------------------- state precision
def state_precision_rows(names=("adam", "rmsprop", "momentum"), sizes=(MLP_SIZE, 10_000_000),
                         min_time=0.25):
    """float32 vs bfloat16 vs 8-bit optimizer state, per optimizer and size: the serial and the
    parallel CPU kernels with each state precision, all timed interleaved (each checked
    against the reference with the same precision first). Rows: optimizer, size, state,
    parallel, seconds (median), speedup over float32 state (median of the per-round ratios,
    :func:`round_ratio`), state bytes. Adam's rows also time the peers that run here (the
    8-bit peers, and optax's Adam with a bfloat16 first moment), or say why they did not."""
    rows = []
    for name in names:
        spec = registry.get(name)
        for n in sizes:
            runners = []
            for state in ("float32", "bfloat16", "int8"):
                w = Workload(spec, n, np.float32,
                             state_dtype=None if state == "float32" else state)
                for parallel in (False, True):
                    r = make_runner("cpu-parallel" if parallel else "cpu-serial", w)
                    check_runner(r)
                    state_bytes = sum(a.nbytes for k, a in r.b.arrays().items()
                                      if k not in ("param", "grad"))
                    state_bytes += sum(a.nbytes for a in (r.b.state_absmax or {}).values())
                    runners.append((dict(optimizer=name, size=n, state=state,
                                         parallel=parallel, state_bytes=int(state_bytes)), r))
            skipped = []
            if name == "adam":
                for label, step, nbytes, peer_n in (_adam8bit_peers(n, skipped)
                                                    + _optax_bf16_peer(n, skipped)):
                    runners.append((dict(optimizer=name, size=peer_n, state=label,
                                         parallel=True, state_bytes=nbytes),
                                    types.SimpleNamespace(step=step)))
            rounds = interleaved_rounds([r.step for _, r in runners], min_time=min_time)
            base = {row["parallel"]: t for (row, _), t in zip(runners, rounds)
                    if row["state"] == "float32"}
            for (row, _), t in zip(runners, rounds):
                row.update(seconds=float(np.median(t)),
                           speedup_vs_float32_state=round_ratio(base[row["parallel"]], t))
                rows.append(row)
            for label, why in skipped:
                rows.append(dict(optimizer=name, size=n, state=label, parallel=True,
                                 skipped=why))
    return rows


PEERS_8BIT = (("bitsandbytes Adam8bit", "bitsandbytes", "optim.Adam8bit"),
              ("torchao AdamW8bit", "torchao.optim", "AdamW8bit"))


def _adam8bit_peers(n, skipped, seed=0):
    """``(label, step, state bytes, size)`` for each 8-bit Adam peer that imports and steps
    here (torch threads set to Numba's); the others go to ``skipped`` as ``(label, why)``.
    torchao quantizes a tensor only when its size is a multiple of its block (256), so it gets
    ``n`` rounded down to one; bitsandbytes gets ``n``."""
    import importlib
    out = []
    try:
        import torch
    except ImportError as e:
        skipped.extend((label, f"torch: {e}") for label, _, _ in PEERS_8BIT)
        return out
    import numba
    torch.set_num_threads(numba.get_num_threads())
    rng = np.random.default_rng(seed)
    for label, module, attr in PEERS_8BIT:
        size = n - n % 256 if module.startswith("torchao") else n
        try:
            cls = importlib.import_module(module)
            for part in attr.split("."):
                cls = getattr(cls, part)
            p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(size).astype(np.float32)))
            p.grad = torch.from_numpy(rng.standard_normal(size).astype(np.float32))
            kw = dict(weight_decay=0.0) if "AdamW" in attr else {}
            opt = cls([p], lr=1e-3, **kw)
            opt.step()
            state_bytes = 0
            for v in opt.state[p].values():
                parts = [getattr(v, k) for k in ("codes", "scale") if hasattr(v, k)] or [v]
                state_bytes += sum(int(t.numel()) * t.element_size() for t in parts
                                   if isinstance(t, torch.Tensor) and t.dim() > 0)
        except Exception as e:           # not installed, or no CPU path in this version
            skipped.append((label, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
            continue
        out.append((label, opt.step, state_bytes, size))
    return out


OPTAX_BF16 = "optax Adam, bf16 mu"


def _optax_bf16_peer(n, skipped, seed=0):
    """``[(label, step, state bytes, size)]``: optax's Adam with its first moment in bfloat16
    (``optax.adam(mu_dtype=jnp.bfloat16)``; the second stays float32: optax has no option for
    it), jitted with the parameters and the state donated, as :class:`_OptaxRunner`; or ``[]``
    with ``(label, why)`` in ``skipped`` when optax does not import."""
    try:
        import jax
        import optax
    except ImportError as e:
        skipped.append((OPTAX_BF16, f"optax is not installed ({e})"))
        return []
    rng = np.random.default_rng(seed)
    tx = optax.adam(1e-3, mu_dtype=jax.numpy.bfloat16)
    grads = jax.numpy.asarray(rng.standard_normal(n).astype(np.float32))
    optax_step, box = optax_stepper(tx, jax.numpy.asarray(
        rng.standard_normal(n).astype(np.float32)))

    def step():
        optax_step(grads)
    step()
    step.box = box                                      # for the tests
    step.settle_s = JAX_SETTLE_S
    nbytes = sum(int(a.nbytes) for a in jax.tree_util.tree_leaves(box[1]) if a.ndim > 0)
    return [(OPTAX_BF16, step, nbytes, n)]


def format_state_table(rows):
    lines = [f"{'optimizer':<10} {'size':>10} {'state':>21} {'kernel':>8} {'time':>10} "
             f"{'vs float32 state':>17} {'state MB':>9}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['optimizer']:<10} {r['size']:>10} {r['state']:>21} skipped: "
                         f"{r['skipped']}")
            continue
        lines.append(f"{r['optimizer']:<10} {r['size']:>10} {r['state']:>21} "
                     f"{'parallel' if r['parallel'] else 'serial':>8} "
                     f"{r['seconds'] * 1e3:8.3f}ms {r['speedup_vs_float32_state']:16.2f}x "
                     f"{r['state_bytes'] / 1e6:9.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- torch front end
TORCH_MODES = ("fastopt", "forloop", "foreach", "fused", "deepspeed", "masters")
TORCH_SIZES = ("mlp", "mlp-frozen", "mlp-frozen-late", "mlp-bf16", "1e7", "1e7-bf16")
TORCH_QUICK = tuple(s for s in TORCH_SIZES if not s.startswith("1e7"))   # (bench --quick)


def torch_mlp(dtype=None, device=None):
    """The blog's MLP 784-100-100-100-100-10 as a torch module (ReLU between the layers),
    initialized from torch seed 0."""
    import torch
    torch.manual_seed(0)
    layers = []
    for a, b in zip(BLOG_SIZES[:-1], BLOG_SIZES[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype=dtype, device=device)


def _torch_model(size):
    """``(model, loss)`` of a torch bench size; ``<size>-bf16``: the model in bfloat16 (the
    loss taken in float32)."""
    import torch
    torch.manual_seed(0)
    base = size[:-len("-bf16")] if size.endswith("-bf16") else size
    dtype = torch.bfloat16 if base != size else torch.float32
    if base in ("mlp", "mlp-frozen", "mlp-frozen-late"):
        model = torch_mlp(dtype)
        if base == "mlp-frozen":            # fine-tuning: the first layer (71% of it) frozen
            model[0].requires_grad_(False)
        x, y = torch.randn(128, BLOG_SIZES[0]).to(dtype), torch.randint(0, BLOG_SIZES[-1],
                                                                         (128,))
        return model, lambda: torch.nn.functional.cross_entropy(model(x).float(), y)
    model = torch.nn.Linear(1000, 10000).to(dtype)   # 10,010,000 parameters in 2 tensors
    x, y = torch.randn(8, 1000).to(dtype), torch.randn(8, 10000)
    return model, lambda: ((model(x).float() - y) ** 2).mean()


class TorchMasters:
    """A torch optimizer on float32 master weights kept by hand for low-precision
    parameters (the bench's ``masters`` mode, torch's fused Adam by default: what
    ``master_weights=True`` does, the way torch users write it): each step copies the
    gradients into the masters' (widened), steps the masters and copies them back into the
    parameters (rounded). ``kwargs`` go to ``optimizer``."""

    def __init__(self, params, optimizer=None, **kwargs):
        import torch
        self.params = [p for p in params if p.requires_grad]
        self.masters = [torch.nn.Parameter(p.detach().float()) for p in self.params]
        for m in self.masters:
            m.grad = torch.zeros_like(m)
        self.opt = (optimizer or torch.optim.Adam)(self.masters,
                                                   **(kwargs or dict(lr=1e-3, fused=True)))

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        import torch
        for m, p in zip(self.masters, self.params):
            m.grad.copy_(p.grad)
        self.opt.step()
        with torch.no_grad():
            for m, p in zip(self.masters, self.params):
                p.copy_(m)


def _torch_ready(size, model, opt, loss):
    """Gradients in place for timing ``opt.step``; ``mlp-frozen-late``: one step of the whole
    MLP first, then its first layer frozen (``requires_grad_(False)``: fine-tuning that freezes
    a layer after the optimizer was built, which keeps the layer's state)."""
    opt.zero_grad()
    loss().backward()
    if size == "mlp-frozen-late":
        opt.step()
        model[0].requires_grad_(False)
        opt.zero_grad()
        loss().backward()


def _torch_optimizer(mode, model):
    """The optimizer of bench mode ``mode`` for ``model``; a bfloat16 model's ``fastopt`` is
    ``master_weights=True``, and only a bfloat16 model has the ``masters`` mode."""
    import torch
    low = next(model.parameters()).dtype == torch.bfloat16
    if mode == "masters":
        if not low:
            raise Unavailable("masters: for a bfloat16 model")
        return TorchMasters(model.parameters())
    if mode == "fastopt":
        from .torch import Adam
        return Adam(model.parameters(), lr=1e-3, master_weights=low)
    if mode == "deepspeed":
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam
        except Exception as e:              # not installed, or its C++ build failed
            raise Unavailable(f"deepspeed: {e}") from None
        return DeepSpeedCPUAdam(model.parameters(), lr=1e-3, adamw_mode=False)
    flag = {"forloop": dict(foreach=False), "foreach": dict(foreach=True),
            "fused": dict(fused=True)}[mode]
    return torch.optim.Adam(model.parameters(), lr=1e-3, **flag)


def torch_model_rows(sizes=TORCH_SIZES, modes=TORCH_MODES, min_time=0.25):
    """A torch model trained with ``fastopt.torch.Adam`` vs ``torch.optim.Adam`` (for-loop,
    foreach, fused) and DeepSpeed's CPU Adam when it is installed: the optimizer step alone and
    the whole iteration (zero_grad, forward, backward, step), all modes timed interleaved, same
    thread count. ``mlp``: the 784-100-100-100-100-10 MLP at batch 128; ``mlp-frozen``: the
    same with its first layer frozen (``requires_grad=False``, all parameters given to the
    optimizer, as in fine-tuning); ``mlp-frozen-late``: frozen after a first step of the whole
    MLP (:func:`_torch_ready`); ``1e7``: one Linear 1000 -> 10000; ``-bf16``: those models in
    bfloat16, fastopt with ``master_weights=True``, torch's modes on the bfloat16 parameters
    (no masters) and ``masters`` (:class:`TorchMasters`, only there). Rows: size, what, mode,
    seconds, speedup over torch's fused Adam."""
    try:
        import torch
    except ImportError:
        return []
    import numba
    _threads.ensure_pool()
    torch.set_num_threads(numba.get_num_threads())
    rows = []
    for size in sizes:
        built = {}
        for mode in modes:
            if mode == "masters" and not size.endswith("-bf16"):
                continue
            try:
                model, loss = _torch_model(size)
                opt = _torch_optimizer(mode, model)
            except Unavailable as e:
                rows.append(dict(size=size, what="step", mode=mode, seconds=None,
                                 speedup_vs_fused=None, note=str(e)))
                continue
            _torch_ready(size, model, opt, loss)
            built[mode] = (opt, loss)

        def iteration(opt, loss):
            def run():
                opt.zero_grad()
                loss().backward()
                opt.step()
            return run
        for what in ("step", "iteration"):
            names = list(built)
            fns = [built[m][0].step if what == "step" else iteration(*built[m]) for m in names]
            times = time_interleaved(fns, min_time=min_time, min_rounds=5)
            fused = dict(zip(names, times)).get("fused")
            for m, t in zip(names, times):
                rows.append(dict(size=size, what=what, mode=m, seconds=t,
                                 speedup_vs_fused=None if fused is None else fused / t))
    return rows


def format_torch_table(rows):
    lines = [f"{'model':<15} {'what':<10} {'optimizer':<10} {'time':>11} "
             f"{'vs torch fused':>15}"]
    for r in rows:
        if r["seconds"] is None:
            lines.append(f"{r['size']:<15} {r['what']:<10} {r['mode']:<10} "
                         f"unavailable: {r['note']}")
            continue
        lines.append(f"{r['size']:<15} {r['what']:<10} {r['mode']:<10} "
                     f"{r['seconds'] * 1e6:9.1f}us {r['speedup_vs_fused']:14.2f}x")
    return "\n".join(lines)
