"""Simulation: federated data sets, client sampling and per-round client data."""

from fedcore.simulation.client_data import ClientData, train_test_client_split
from fedcore.simulation.errors import DatasetDownloadError, DatasetFileError
from fedcore.simulation.hdf5 import load_hdf5
from fedcore.simulation.sampling import ClientSampler, make_federated_data, sample_clients
from fedcore.simulation import datasets  # noqa: E402  (after ClientData, which it uses)

__all__ = [
    "ClientData",
    "ClientSampler",
    "DatasetDownloadError",
    "DatasetFileError",
    "datasets",
    "load_hdf5",
    "make_federated_data",
    "sample_clients",
    "train_test_client_split",
]
