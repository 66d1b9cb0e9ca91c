"""Data-parallel steps with sharded optimizer state over MPI (ZeRO stage 1), through mpi4py.

Every rank holds the full parameter and gradient buffers (one flat arena each) and computes
its gradient on its own part of the batch. :class:`ShardedStep` then

1. reduce-scatters the gradient (a sum), so each rank receives the summed gradient of its own
   contiguous shard only (shard sizes differ by at most one element);
2. steps its shard with the optimizer's fused kernel, dividing by the number of ranks inside
   the kernel (``grad_scale=N``: the mean gradient without a pass of its own), with optimizer
   state allocated for the shard alone (state memory per rank: 1/N);
3. all-gathers the parameters, so every rank holds the same new parameters.

``max_grad_norm`` needs the norm of the whole mean gradient: each rank's sum of squares of its
shard (fastopt's fixed-order reduction) is all-gathered and added in rank order, the same on
every rank; the clip factor then goes into the same one scalar as the division by N.
``skip_nonfinite`` skips the step on every rank when any rank's shard holds a NaN or inf (an
all-reduce of one flag), so the ranks never diverge. Both leave the elements of frozen groups
(``fastopt.Groups``) out, as a single process does.

Determinism: with 2 ranks the summed gradient ``a + b`` is exact in either order and the
division by 2 is exact, so the parameters after any number of steps are **bitwise equal** to
one process stepping the mean gradient ``(a + b) / 2`` (tested under ``mpiexec -n 2``). With
more ranks MPI's reduction order is its own (not fixed by the standard), so a run is equal to
the single-process run to rounding (tested with 3 ranks); with clipping the norm's chunks follow the shard
boundaries, so it is equal to rounding as well.

Construction checks, on every rank, that all ranks agree on the size, dtype, optimizer and
state options, and the first step that they pass the same hyperparameters and loop options;
each raises the same ``ValueError`` on every rank when they do not.

Checkpoints (:meth:`ShardedStep.save` / :meth:`ShardedStep.load`): each rank writes its shard
(parameters and state, ``fastopt.save_checkpoint``'s atomic, checksummed format) under a name
that carries the step, then rank 0 writes ``manifest.json`` atomically; the files of older
saves are removed only after the new manifest is in place, so a rank that fails mid-save
leaves the previous checkpoint whole. Loading reads the manifest, checks every shard, and
reshards: any number of ranks can load what any number saved.

Faults: a rank that dies ends the job at once (mpiexec terminates the others). A rank that
raises would hang the others in their next collective (Python's exit runs ``MPI_Finalize``,
which waits for them): so ``ShardedStep`` installs, once per process, an exception hook that
prints the traceback and the rank, then calls ``MPI_Abort``, and every rank exits within
seconds with a clear error (``abort_on_error=False`` leaves ``sys.excepthook`` alone).

Parameter groups (:class:`fastopt.Groups` over the whole buffer) are cut to each rank's shard;
schedules work as in one process (they are evaluated at the shard's step, the same on every
rank). ``mpi4py`` is imported only here.
"""
import json
import os
import sys
import time

import numpy as np

from . import registry
from ._core import check_group
from .scaling import FrozenPlan, all_finite, sum_of_squares

_MPI_TYPES = {np.dtype(np.float32): "FLOAT", np.dtype(np.float64): "DOUBLE"}


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f'fastopt.distributed needs mpi4py and an MPI: pip install '
                          f'"fastopt[mpi]" ({e})') from None
    return MPI


def shard_bounds(n, size):
    """(counts, offsets) of ``n`` elements over ``size`` ranks: contiguous, the first
    ``n % size`` ranks one element more."""
    counts = [n // size + (1 if r < n % size else 0) for r in range(size)]
    offsets = [sum(counts[:r]) for r in range(size)]
    return counts, offsets


def install_abort_hook(comm):
    """On an uncaught exception in this process: the usual traceback, a line naming the rank,
    then ``comm.Abort(1)``, which ends every rank (instead of leaving them blocked in a
    collective). Installed once per process."""
    previous = sys.excepthook
    if getattr(previous, "_fastopt_abort", False):
        return

    def hook(etype, value, tb):
        previous(etype, value, tb)
        try:
            sys.stderr.write(f"fastopt.distributed: rank {comm.Get_rank()} of "
                             f"{comm.Get_size()} raised {etype.__name__}: {value}; aborting "
                             f"every rank\n")
            sys.stderr.flush()
        finally:
            comm.Abort(1)
    hook._fastopt_abort = True
    sys.excepthook = hook


def _spec_of(step_fn):
    for spec in registry.REGISTRY.values():
        if spec.step_fn is step_fn or registry.step_function(spec) is step_fn:
            return spec
    raise TypeError(f"{step_fn!r} is not a registered fastopt step function")


class ShardedStep:
    """A data-parallel, state-sharded optimizer step (see the module doc).

    ``param`` and ``grad`` are this rank's full flat buffers (1-D, float32 or float64, the
    same size on every rank); ``step_fn`` a fastopt step function (``fastopt.adam_step``...);
    ``zeros_options`` go to the optimizer's ``Buffers.zeros`` for the shard (``amsgrad=True``,
    ``state_dtype="bfloat16"``...). ``self.buffers`` holds the shard's state;
    ``self.buffers.param`` is a view of this rank's shard of ``param``.
    """

    def __init__(self, step_fn, param, grad, comm=None, abort_on_error=True, **zeros_options):
        check_group({"param": param, "grad": grad}, "ShardedStep")
        if np.dtype(grad.dtype) != np.dtype(param.dtype):
            raise TypeError(f"ShardedStep sums the gradients over the ranks (MPI reduce-"
                            f"scatter) in the parameters' dtype; got a {grad.dtype} gradient "
                            f"for {param.dtype} parameters: pass a {param.dtype} gradient "
                            f"(the flat step functions read a bfloat16 or float16 gradient "
                            f"on one process)")
        MPI = _mpi()
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        if abort_on_error:
            install_abort_hook(self.comm)
        self.spec = _spec_of(step_fn)
        self.step_fn = step_fn
        if param.ndim != 1:
            raise ValueError(f"ShardedStep takes flat 1-D buffers (a FlatParams arena), got "
                             f"shape {param.shape}")
        mine = (int(param.size), np.dtype(param.dtype).str, self.spec.name,
                sorted((k, repr(v)) for k, v in zeros_options.items()))
        every = self.comm.allgather(mine)
        if any(other != mine for other in every):
            raise ValueError("ShardedStep: the ranks disagree on (size, dtype, optimizer, "
                             "state options): " + "; ".join(
                                 f"rank {r}: {o}" for r, o in enumerate(every)))
        self.param, self.grad = param, grad
        self.size, self.rank = self.comm.Get_size(), self.comm.Get_rank()
        self.counts, self.offsets = shard_bounds(param.size, self.size)
        lo = self.offsets[self.rank]
        hi = lo + self.counts[self.rank]
        self.lo, self.hi = lo, hi
        # one rank: the shard is the whole buffer, nothing to scatter or gather
        self._shard_grad = grad if self.size == 1 else np.empty(hi - lo, param.dtype)
        self.buffers = self.spec.buffers_cls.zeros(param[lo:hi], self._shard_grad,
                                                   **zeros_options)
        self._mpi_type = getattr(MPI, _MPI_TYPES[np.dtype(param.dtype)])
        self.comm_seconds = 0.0         # time in reduce-scatter + all-gather (+ norm, flag)
        self._agreed = False            # the first step checks that the ranks agree
        self.steps = 0

    def _reduce_scatter(self):
        if self.size == 1:
            return
        MPI = _mpi()
        self.comm.Reduce_scatter([self.grad, self._mpi_type], [self._shard_grad, self._mpi_type],
                                 self.counts, op=MPI.SUM)

    def _all_gather(self):
        if self.size == 1:
            return
        MPI = _mpi()
        self.comm.Allgatherv(MPI.IN_PLACE, [self.param, self.counts, self.offsets,
                                            self._mpi_type])

    def step(self, max_grad_norm=None, skip_nonfinite=False, **hyper):
        """One data-parallel step with ``hyper`` (the step function's hyperparameters).
        Returns True when the step was taken (False: skipped for a non-finite gradient)."""
        MPI = _mpi()
        if "grad_scale" in hyper or "layout" in hyper:
            raise NotImplementedError("ShardedStep: grad_scale= and layout= are not "
                                      "implemented yet")
        if not self._agreed:
            self._check_agreement(hyper, max_grad_norm, skip_nonfinite)
        frozen = None               # frozen groups: their gradient is neither read nor counted
        if hyper.get("groups") is not None:
            hyper["groups"], frozen = self._shard_groups(hyper["groups"])
        t0 = time.perf_counter()
        self._reduce_scatter()
        n = self.size
        factor_scale = float(n)               # divide the summed gradient by N in the kernel
        comm = time.perf_counter() - t0
        if skip_nonfinite:
            bad = int(not all_finite(self._shard_grad, frozen)) if self._shard_grad.size else 0
            t1 = time.perf_counter()
            bad = self.comm.allreduce(bad, op=MPI.MAX)
            comm += time.perf_counter() - t1
            if bad:
                self.buffers.found_inf = True
                self.buffers.skipped_steps += 1
                self.comm_seconds += comm
                return False
            self.buffers.found_inf = False
        if max_grad_norm is not None:
            part = sum_of_squares(self._shard_grad, frozen) if self._shard_grad.size else 0.0
            t1 = time.perf_counter()
            parts = self.comm.allgather(float(part))
            comm += time.perf_counter() - t1
            total = 0.0
            for p in parts:                    # rank order: the same sum on every rank
                total += p
            norm = float(np.sqrt(total)) / n
            clip = min(1.0, float(max_grad_norm) / (norm + 1e-6))
            factor_scale = n / clip
            self.buffers.grad_norm = norm
        self.step_fn(self.buffers, grad_scale=factor_scale, **hyper)
        t1 = time.perf_counter()
        self._all_gather()
        comm += time.perf_counter() - t1
        self.comm_seconds += comm
        self.steps += 1
        return True

    def _check_agreement(self, hyper, max_grad_norm, skip_nonfinite):
        """On the first step: every rank must pass the same settings (values; a schedule
        counts as "a schedule"; groups by their ranges and values), or every rank raises."""
        def describe(v):
            if callable(v):
                return "schedule"
            ranges = getattr(v, "ranges", None)
            if ranges is not None:
                return repr((ranges, [sorted((k, describe(x)) for k, x in g.items())
                                      for g in v.groups]))
            return repr(v)
        mine = sorted((k, describe(v)) for k, v in hyper.items())
        mine += [("max_grad_norm", repr(max_grad_norm)), ("skip_nonfinite", skip_nonfinite)]
        every = self.comm.allgather(mine)
        if any(other != mine for other in every):
            raise ValueError("ShardedStep.step: the ranks passed different settings on their "
                             "first step: " + "; ".join(f"rank {r}: {dict(o)}"
                                                        for r, o in enumerate(every)))
        self._agreed = True

    def _shard_groups(self, groups):
        """``groups`` (over the whole buffer) cut to this rank's shard, and the
        :class:`fastopt.scaling.FrozenPlan` of its frozen ranges (None: none), cached per
        object."""
        from .groups import Groups
        cached = getattr(self, "_groups_cache", None)
        if cached is not None and cached[0] is groups:
            return cached[1:]
        if not isinstance(groups, Groups) or groups.size != self.param.size:
            raise ValueError(f"ShardedStep: groups must be a fastopt.Groups over the whole "
                             f"buffer ({self.param.size} elements)")
        mine = []
        for ranges, values in zip(groups.ranges, groups.groups):
            cut = [(max(a, self.lo) - self.lo, min(b, self.hi) - self.lo) for a, b in ranges
                   if max(a, self.lo) < min(b, self.hi)]
            if cut:
                mine.append(dict(values, ranges=cut))
        shard = Groups(self.hi - self.lo, mine)
        frozen = sorted(r for values in mine if values.get("frozen") for r in values["ranges"])
        plan = FrozenPlan(shard.size, frozen) if frozen else None
        self._groups_cache = (groups, shard, plan)
        return shard, plan

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory):
        """Write this step's shards and manifest to ``directory`` (collective: every rank
        calls it). Returns the manifest's path."""
        from .checkpoint import save_checkpoint
        os.makedirs(directory, exist_ok=True)
        b = self.buffers
        name = f"step{b.step:09d}-shard{self.rank:05d}-of-{self.size:05d}.ckpt"
        error = None
        try:
            save_checkpoint(os.path.join(directory, name), b)
        except Exception as e:              # every rank must learn that the save failed
            error = f"rank {self.rank}: {type(e).__name__}: {e}"
        errors = [e for e in self.comm.allgather(error) if e]
        if errors:
            raise RuntimeError("ShardedStep.save: a shard could not be written (the previous "
                               "checkpoint is kept): " + "; ".join(errors))
        names = self.comm.gather(name, root=0)
        path = os.path.join(directory, "manifest.json")
        if self.rank == 0:
            manifest = {"format": "fastopt-sharded-1", "optimizer": self.spec.name,
                        "size": int(self.param.size), "dtype": np.dtype(self.param.dtype).str,
                        "step": int(b.step), "ranks": self.size, "counts": self.counts,
                        "offsets": self.offsets, "shards": names}
            tmp = path + f".tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            for old in os.listdir(directory):     # older saves' shards, now unreferenced
                if old.endswith(".ckpt") and old.startswith("step") and old not in names:
                    os.unlink(os.path.join(directory, old))
        self.comm.Barrier()
        return path

    def load(self, directory):
        """Load the checkpoint in ``directory`` saved with any number of ranks into this step
        (collective). Everything is read and checked before anything is written."""
        from .checkpoint import CheckpointError, load_checkpoint
        path = os.path.join(directory, "manifest.json")
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path!r}: cannot read the manifest ({e})") from None
        want = (self.spec.name, int(self.param.size), np.dtype(self.param.dtype).str)
        got = (manifest.get("optimizer"), manifest.get("size"), manifest.get("dtype"))
        if got != want or manifest.get("format") != "fastopt-sharded-1":
            raise CheckpointError(f"{path!r} holds (optimizer, size, dtype) {got}, this step "
                                  f"is {want}")
        shards = [load_checkpoint(os.path.join(directory, n)) for n in manifest["shards"]]
        offsets = manifest["offsets"]
        if any(s.size != c for s, c in zip(shards, manifest["counts"])) or \
                any(s.step != manifest["step"] for s in shards):
            raise CheckpointError(f"{path!r}: the shards do not match the manifest")
        b = self.buffers
        fields = [f for f in b.state_fields if getattr(b, f) is not None]
        for s in shards:
            if [f for f in s.state_fields if getattr(s, f) is not None] != fields:
                raise CheckpointError(f"{path!r}: its state arrays differ from this step's "
                                      f"{fields}")
        eight_bit = any(s.state_absmax for s in shards)
        if eight_bit and (manifest["ranks"] != self.size or not b.state_absmax):
            raise CheckpointError(f"{path!r}: 8-bit state (block scales per shard) loads only "
                                  f"into 8-bit state on the same number of ranks "
                                  f"({manifest['ranks']})")
        for s, off in zip(shards, offsets):        # the whole parameter, on every rank
            self.param[off:off + s.size] = s.param
        for s, off in zip(shards, offsets):        # this rank's part of every saved shard
            lo, hi = max(off, self.lo), min(off + s.size, self.hi)
            if lo < hi:
                for f in fields:
                    getattr(b, f)[lo - self.lo:hi - self.lo] = getattr(s, f)[lo - off:hi - off]
        if eight_bit:
            for f, scales in shards[self.rank].state_absmax.items():
                b.state_absmax[f][...] = scales
        b.step = manifest["step"]

    @property
    def state_bytes(self):
        """Bytes of optimizer state on this rank."""
        return sum(a.nbytes for k, a in self.buffers.arrays().items()
                   if k not in ("param", "grad"))
