"""CUDA dispatch (host side). Imports numba.cuda only when a CUDA path is asked for."""
import numpy as np

_INSTALL_HINT = ('CUDA support needs numba-cuda: pip install "fastopt[cuda]" '
                 '(and an NVIDIA GPU with a driver, or NUMBA_ENABLE_CUDASIM=1 for the simulator)')


class CudaUnavailableError(RuntimeError):
    pass


def _cuda():
    try:
        from numba import cuda
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CudaUnavailableError(f"{_INSTALL_HINT} ({e})") from None
    return cuda


def cuda_available():
    """True when numba.cuda is importable and a GPU (or the simulator) is usable."""
    try:
        return bool(_cuda().is_available())
    except Exception:
        return False


def check_device_group(named, owner):
    raise CudaUnavailableError(f"{owner}: CUDA buffers are not supported yet. {_INSTALL_HINT}")


def zeros_like(a):
    raise CudaUnavailableError(_INSTALL_HINT)


def cuda_implementation(spec):
    raise CudaUnavailableError(_INSTALL_HINT)


def to_device(buffers):
    raise CudaUnavailableError(_INSTALL_HINT)


def to_host(buffers):
    return buffers


def make_cuda_runner(workload, fastopt_runner):
    from .benchmarks import Unavailable
    raise Unavailable("no CUDA backend in this build")
