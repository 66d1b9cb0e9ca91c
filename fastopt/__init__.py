"""fastopt: fused optimizer updates on flat buffers, with Numba (CPU and CUDA).

Public API::

    adam_step, rmsprop_step, sgd_step, lion_step, ...       one fused in-place step
    AdamBuffers, RMSpropBuffers, ...                         parameter, gradient and state
    FlatParams                                               one arena, named views
    Groups                                                   per-range hyperparameters
    grad_norm, LossScaler                                    clipping's norm, loss scaling
    fastopt.schedules                                        hyperparameter schedules
    save_checkpoint, load_checkpoint                         atomic, checksummed
    to_device, to_host                                       move buffers to/from a GPU
    to_bfloat16, from_bfloat16                               bfloat16 state bits (precision)
    fastopt.compat                                           the blog's classes, drop-in
    fastopt.torch                                            torch.optim-style front end
    fastopt.distributed                                      sharded state over MPI
    fastopt.config                                           tunables
    fastopt.registry.REGISTRY                                the optimizers, as data

Every registered optimizer's step function and buffers class is exported here from the
registry. Importing fastopt compiles nothing; kernels compile on first use and are cached on
disk.
"""
import importlib.util as _ilu
import os as _os
import sys as _sys


def _source_tree_kernels():
    # Installed, the kernels live in fastopt/kernels (setuptools maps the top-level kernels/
    # directory there). Run from a source checkout, kernels/ sits beside fastopt/: register
    # it as fastopt.kernels without making a top-level "kernels" package importable.
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.isdir(_os.path.join(here, "kernels")) or "fastopt.kernels" in _sys.modules:
        return
    src = _os.path.join(_os.path.dirname(here), "kernels", "__init__.py")
    if not _os.path.isfile(src):
        return
    spec = _ilu.spec_from_file_location("fastopt.kernels", src,
                                        submodule_search_locations=[_os.path.dirname(src)])
    module = _ilu.module_from_spec(spec)
    _sys.modules["fastopt.kernels"] = module
    spec.loader.exec_module(module)


_source_tree_kernels()

from . import config  # noqa: E402
from ._core import Buffers  # noqa: E402
from .flat import FlatParams  # noqa: E402
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from ._cuda_backend import cuda_available, to_device, to_host  # noqa: E402
from . import registry  # noqa: E402
from . import schedules  # noqa: E402
from .scaling import LossScaler, grad_norm  # noqa: E402
from .groups import Groups  # noqa: E402
from .precision import from_bfloat16, to_bfloat16  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Buffers", "FlatParams", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "to_device", "to_host", "cuda_available", "config", "registry", "schedules",
           "LossScaler", "grad_norm", "Groups", "to_bfloat16", "from_bfloat16"]

for _spec in registry.REGISTRY.values():
    globals()[_spec.step_name] = _spec.step_fn
    globals()[_spec.buffers_cls.__name__] = _spec.buffers_cls
    __all__ += [_spec.step_name, _spec.buffers_cls.__name__]
del _spec
