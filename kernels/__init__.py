"""fastopt's Numba kernels (installed as ``fastopt.kernels``).

``elementwise`` holds the per-element math and ``loops`` the kernel bodies, each written once;
``cpu`` binds them to the CPU (``njit``, ``prange``), ``cuda`` to the GPU (``cuda.jit``,
grid-stride loops; imported only on demand). ``decorators`` holds the compile machinery.
Importing this package compiles nothing.
"""
