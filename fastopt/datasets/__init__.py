"""Data sets for fastopt's demo workload."""
from .mnist import MNISTError, download_mnist, load_mnist

__all__ = ["load_mnist", "download_mnist", "MNISTError"]
