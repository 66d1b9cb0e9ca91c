"""Put on PYTHONPATH on a machine whose numba-cuda predates its NumPy (numba-cuda's array
module registers ``np.row_stack``, which NumPy 2.5 removed): an alias, nothing else."""
import numpy as np

if "row_stack" not in dir(np):
    np.row_stack = np.vstack
