"""Federated data sets: Federated EMNIST (HDF5 files) and an embedded digits default."""

from fedcore.simulation.datasets import digits, download, emnist

__all__ = ["digits", "download", "emnist"]
