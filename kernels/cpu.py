"""Fused CPU kernels built from kernel records (``kernels.record``): the record's body bound
to the CPU target (its per-element function and scalar adapter compiled with ``numba.njit``,
loops over ``prange``), compiled lazily per option combination by
``kernels.decorators.KernelFamily``. Nothing here names an optimizer.
"""
import threading

from numba import prange

from .decorators import KernelFamily, cpu_device, kernel_family, source_files

_families = {}
_lock = threading.Lock()


def family(record, scaled=False):
    """The :class:`KernelFamily` of ``record`` (checked and built on first use); ``scaled``:
    the gradient is multiplied by one extra packed scalar first (``KernelRecord.adapter``)."""
    key = (record, bool(scaled))
    fam = _families.get(key)
    if fam is None:
        with _lock:
            fam = _families.get(key)
            if fam is None:
                record.check()
                elem = cpu_device(record.adapter(cpu_device(record.elem), scaled))
                fam = _families[key] = KernelFamily(
                    record.body, suffix="_scaled" if scaled else "",
                    sources=source_files(record.elem, record.body), elem=elem, loop=prange,
                    unpack=cpu_device(record.unpack(scaled)))
    return fam


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
