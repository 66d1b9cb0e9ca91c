"""fastopt's Numba kernels (installed as ``fastopt.kernels``).

``elementwise`` holds the per-element math, ``cpu`` the fused CPU kernels, ``cuda`` the GPU
kernels (imported only on demand). Importing this package compiles nothing.
"""
