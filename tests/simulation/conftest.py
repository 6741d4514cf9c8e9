"""Helpers for the simulation tests: small HDF5 files in the Federated EMNIST layout."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import h5py
import numpy as np
import pytest


def write_emnist_like(path: Path, sizes: Dict[str, int], seed: int = 0, num_classes: int = 10) -> Dict[str, dict]:
    """Writes /examples/<id>/{label int32 [N], pixels float32 [N,28,28]}; returns the arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, "w") as f:
        examples = f.create_group("examples")
        for cid, n in sizes.items():
            group = examples.create_group(cid)
            label = rng.integers(0, num_classes, size=n).astype(np.int32)
            pixels = rng.random((n, 28, 28)).astype(np.float32)
            group.create_dataset("label", data=label)
            group.create_dataset("pixels", data=pixels)
            written[cid] = {"label": label, "pixels": pixels}
    return written


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""
    import socket
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("a simulation test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
