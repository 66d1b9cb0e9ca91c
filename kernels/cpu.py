"""Fused CPU kernels: the shared bodies of ``kernels.loops`` bound to the CPU target
(per-element math from ``kernels.elementwise`` compiled with ``numba.njit``, loops over
``prange``), compiled lazily per option combination by ``kernels.decorators.KernelFamily``.
"""
from numba import prange

from . import elementwise as ew
from . import loops
from .decorators import KernelFamily, cpu_device, kernel_family

adam_kernel = KernelFamily(loops.adam, elem=cpu_device(ew.adam_elem), loop=prange)
rmsprop_kernel = KernelFamily(loops.rmsprop, elem=cpu_device(ew.rmsprop_elem), loop=prange)
momentum_kernel = KernelFamily(loops.momentum, elem=cpu_device(ew.momentum_elem), loop=prange)
sgd_kernel = KernelFamily(loops.sgd, elem=cpu_device(ew.sgd_elem), loop=prange)


@kernel_family
def traffic_kernel(with_c, with_d, with_e):
    def traffic(a, b, c, d, e, s):
        """Roofline probe: reads ``a``, ``b`` and the enabled ``c, d, e``, writes ``a`` and the
        enabled ``c, d, e`` (an optimizer's traffic: the gradient is only read), with trivial
        arithmetic. The benchmarks use it as the machine's attainable speed."""
        for i in prange(a.shape[0]):
            x = b[i]
            a[i] = a[i] + x * s
            if with_c:
                c[i] = c[i] + x
            if with_d:
                d[i] = d[i] + x
            if with_e:
                e[i] = e[i] + x
    return traffic
