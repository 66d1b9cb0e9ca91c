"""The wait policy of Numba's OpenMP thread pool, applied once, before fastopt's first
parallel kernel.

Why: a NumPy training loop alternates BLAS matmuls (OpenBLAS's own pthreads pool) and
fastopt's parallel steps (Numba's OpenMP pool). By default libgomp's threads spin for a long
while (``GOMP_SPINCOUNT=300000``) after each parallel region, so on a machine with few cores they
take the cores from the BLAS threads, and the other way round: measured on 2 cores, the README's
quickstart loop took 8.6 ms per iteration by default and 1.0 ms with a short spin.

What fastopt does, and only this: when its first parallel kernel is about to run, Numba's
thread pool has not started yet, and the environment sets neither ``OMP_WAIT_POLICY`` nor
``GOMP_SPINCOUNT``, it puts ``GOMP_SPINCOUNT=1000`` (``fastopt.config.OMP_SPINCOUNT``) into the
environment, starts Numba's pool (libgomp reads its settings once, when it loads), and takes the
variable out again, so child processes and libraries that bring their own OpenMP runtime see the
environment as the user left it. A library that is loaded later and links the *same* libgomp
(torch's wheel does when it is imported after fastopt's first parallel step) shares that pool
setting: a short spin, chosen because it does not slow such a torch loop (passive waiting made
a torch MLP loop 3x slower; README, "Threads"). ``FASTOPT_OMP_SPINCOUNT=keep`` (or
``fastopt.config.OMP_SPINCOUNT = "keep"`` before the first parallel step) turns this off.
``fastopt.config.thread_report()`` says what happened.
"""
import os
import threading

from . import config

_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_lock = threading.Lock()
READY = False                # the pool has been prepared (or found running); checked per call


def user_policy():
    """The wait-policy variables the environment sets (non-empty), as a dict."""
    return {v: os.environ[v] for v in _WAIT_VARS if os.environ.get(v)}


def ensure_pool():
    """Start Numba's thread pool under fastopt's wait policy (see the module docstring).
    Idempotent and cheap after the first call."""
    global READY
    if READY:
        return
    with _lock:
        if READY:
            return
        from numba.np.ufunc import parallel
        user = user_policy()
        _REPORT = config._THREAD_REPORT
        spin = config.check_spincount(config.OMP_SPINCOUNT, "fastopt.config.OMP_SPINCOUNT")
        if getattr(parallel, "_is_initialized", False):
            _REPORT.update(pool="started before fastopt's first parallel step",
                           set_by="left as it was", omp_wait_policy=user.get("OMP_WAIT_POLICY"),
                           gomp_spincount=user.get("GOMP_SPINCOUNT"))
        elif user:
            parallel._launch_threads()
            _REPORT.update(pool="started by fastopt", set_by="the environment",
                           omp_wait_policy=user.get("OMP_WAIT_POLICY"),
                           gomp_spincount=user.get("GOMP_SPINCOUNT"))
        elif spin == "keep":
            parallel._launch_threads()
            _REPORT.update(pool="started by fastopt", set_by="nobody (OMP_SPINCOUNT='keep')")
        else:
            os.environ["GOMP_SPINCOUNT"] = str(spin)
            try:
                parallel._launch_threads()
            finally:
                del os.environ["GOMP_SPINCOUNT"]
            _REPORT.update(pool="started by fastopt", gomp_spincount=str(spin),
                           set_by="fastopt (while Numba's pool started)")
        layer = getattr(parallel, "_threading_layer", None)
        _REPORT["layer"] = layer
        if layer not in (None, "omp"):
            # TBB and workqueue do not read the OpenMP variables
            _REPORT.update(omp_wait_policy=None, gomp_spincount=None)
        READY = True


