"""The direct CUDA launch (``fastopt._launch``) without a GPU: its argument lists against
numba-cuda's own ``_Kernel._prepare_args`` for the scalar and tuple types fastopt passes, and a
launcher driven through a stand-in dispatcher and kernel: the first call takes numba-cuda's
path, later calls the direct one with numba-cuda's argument list, and anything unexpected
falls back. (On a GPU the real-GPU suite, ``FASTOPT_TEST_GPU=1 pytest tests/cuda_sim``, runs
every step through it.)"""
import ctypes
import types as pytypes

import numpy as np
import pytest

from fastopt import _launch, config

numba_cuda = pytest.importorskip("numba.cuda")
try:
    from numba.cuda.dispatcher import _Kernel
    from numba.cuda import types
except ImportError:                                      # pragma: no cover
    pytest.skip("numba-cuda without _Kernel._prepare_args", allow_module_level=True)


def _numba_args(argtypes, args):
    """numba-cuda's argument list for ``args`` (its ``_prepare_args``, on a stand-in kernel)."""
    fake = pytypes.SimpleNamespace(extensions=[])
    fake._prepare_args = pytypes.MethodType(_Kernel._prepare_args, fake)    # (tuples recurse)
    out, retr = [], []
    for t, v in zip(argtypes, args):
        fake._prepare_args(t, v, 0, retr, out)
    return out


SCALAR_CASES = [
    ((types.float32,), (np.float32(1.5),)),
    ((types.float64,), (np.float64(-2.25e-300),)),
    ((types.int64, types.uint64), (np.int64(-7), np.uint64(2**64 - 3))),
    ((types.UniTuple(types.float32, 9),), (tuple(np.arange(9, dtype=np.float32) / 7),)),
    ((types.UniTuple(types.float64, 90),), (tuple(np.linspace(-1, 1, 90)),)),
    ((types.Tuple((types.float32, types.int64)),), ((np.float32(np.nan), np.int64(3)),)),
    ((types.UniTuple(types.float32, 2), types.uint64, types.int64),
     ((np.float32(np.inf), np.float32(-0.0)), np.uint64(12345), np.int64(0))),
]


@pytest.mark.parametrize("argtypes,args", SCALAR_CASES, ids=lambda v: str(v)[:40])
def test_scalar_arguments_are_numba_cudas(argtypes, args):
    converters = [_launch._converter(t, None) for t in argtypes]
    assert all(c is not None for c in converters)
    ours = []
    for c, v in zip(converters, args):
        c(v, ours)
    theirs = _numba_args(argtypes, args)
    assert _launch.same_arguments(ours, theirs)
    assert len(ours) == len(theirs) and all(type(a) is type(b) for a, b in zip(ours, theirs))


def test_same_arguments_tells_values_and_types_apart():
    assert _launch.same_arguments([ctypes.c_float(1.0), 3], [ctypes.c_float(1.0), 3])
    assert not _launch.same_arguments([ctypes.c_float(1.0)], [ctypes.c_float(2.0)])
    assert not _launch.same_arguments([ctypes.c_float(1.0)], [ctypes.c_double(1.0)])
    assert not _launch.same_arguments([ctypes.c_float(0.0)], [ctypes.c_float(-0.0)])
    assert not _launch.same_arguments([3], [4])
    assert not _launch.same_arguments([3], [3, 4])


def test_unknown_types_are_not_converted():
    assert _launch._converter(types.complex64, None) is None
    assert _launch._converter(types.Tuple((types.float32, types.complex128)), None) is None


class _Dispatcher:
    """A stand-in for a numba-cuda dispatcher and its one compiled kernel; launches through
    either path are recorded."""

    def __init__(self, argtypes, calls):
        self._launch_config_sensitive = False
        self.calls = calls
        kernel = pytypes.SimpleNamespace(debug=False, cooperative=False, extensions=[],
                                         argument_types=list(argtypes))
        kernel._prepare_args = pytypes.MethodType(_Kernel._prepare_args, kernel)
        cufunc = pytypes.SimpleNamespace(kernel="cufunc")
        kernel._codelibrary = pytypes.SimpleNamespace(get_cufunc=lambda: cufunc)
        self.overloads = {tuple(argtypes): kernel}

    def typeof_pyval(self, value):
        from numba.cuda.typing.typeof import Purpose, typeof
        return typeof(value, Purpose.argument)

    def __getitem__(self, dims):
        def call(*args):
            self.calls.append(("numba", dims, args))
        return call


@pytest.fixture
def recorded(monkeypatch):
    """The direct path's launches recorded instead of made, outside the simulator."""
    from numba import config as numba_config
    calls = []
    api = _launch._api()
    if api is None:
        pytest.skip("this numba-cuda lacks the launch internals fastopt._launch uses")

    def fake_launch(stream, lc, kernel, *kernelargs):
        calls.append(("direct", lc, kernel, kernelargs))
    monkeypatch.setattr(_launch, "_api", lambda: (fake_launch, lambda **kw: kw) + api[2:])
    monkeypatch.setattr(numba_config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(config, "CUDA_FAST_LAUNCH", 1)
    return calls


def test_launcher_goes_direct_after_checking_against_numba_cuda(recorded):
    argtypes = (types.UniTuple(types.float32, 3), types.uint64)
    d = _Dispatcher(argtypes, recorded)
    launch = _launch.Launcher()
    before = dict(_launch.STATS)
    first = (tuple(np.float32([1, 2, 3])), np.uint64(5))
    launch(d, 4, 32, *first)
    assert [c[0] for c in recorded] == ["numba"] and recorded[0][1] == (4, 32)
    second = (tuple(np.float32([4, 5, 6])), np.uint64(6))
    launch(d, 7, 32, *second)
    kind, lc, kernel, kernelargs = recorded[1]
    assert kind == "direct" and kernel == "cufunc"
    assert lc["grid"] == (7, 1, 1) and lc["block"] == (32, 1, 1)
    assert _launch.same_arguments(list(kernelargs), _numba_args(argtypes, second))
    assert {k: _launch.STATS[k] - before[k] for k in before} == dict(direct=1, numba=1,
                                                                   declined=0)


def test_launcher_falls_back_on_a_changed_argument(recorded):
    argtypes = (types.UniTuple(types.float32, 3),)
    d = _Dispatcher(argtypes, recorded)
    launch = _launch.Launcher()
    launch(d, 1, 32, tuple(np.float32([1, 2, 3])))
    launch(d, 1, 32, tuple(np.float32([1, 2])))          # another length: numba-cuda's path
    assert [c[0] for c in recorded] == ["numba", "numba"]
    config.CUDA_FAST_LAUNCH = 0
    launch(d, 1, 32, tuple(np.float32([1, 2, 3])))
    assert [c[0] for c in recorded] == ["numba"] * 3


def test_launcher_keeps_numba_cudas_path_when_the_lists_differ(recorded, monkeypatch):
    argtypes = (types.float32,)
    d = _Dispatcher(argtypes, recorded)
    monkeypatch.setitem(_launch._CTYPES, "float32", ctypes.c_double)   # a wrong conversion
    launch = _launch.Launcher()
    for v in (1.0, 2.0):
        launch(d, 1, 32, np.float32(v))
    assert [c[0] for c in recorded] == ["numba", "numba"]
    assert launch.entries[id(d)][1] is None


def test_switched_off_launches_take_numba_cudas_path(monkeypatch):
    monkeypatch.setattr(config, "CUDA_FAST_LAUNCH", 0)      # switched off: never learned
    calls = []
    d = _Dispatcher((types.float32,), calls)
    launch = _launch.Launcher()
    launch(d, 1, 32, np.float32(1))
    launch(d, 1, 32, np.float32(1))
    assert [c[0] for c in calls] == ["numba", "numba"]
    assert launch.entries[id(d)][1] is None
