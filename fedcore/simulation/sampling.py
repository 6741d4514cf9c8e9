"""Choosing the clients of a round, and collecting their datasets."""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from fedcore.simulation.client_data import ClientData


def _id_list(client_ids: Union[ClientData, Iterable[str]]) -> List[str]:
    """The ids as a list, in their order; a set's ids sorted (a set's own order varies with the hash seed)."""
    if isinstance(client_ids, ClientData):
        return client_ids.client_ids
    if isinstance(client_ids, (str, bytes)):
        raise TypeError(f"client_ids must be a collection of client ids, got the single string {client_ids!r}")
    if isinstance(client_ids, (set, frozenset)):
        try:
            return sorted(client_ids)
        except TypeError:
            raise TypeError(
                "client_ids is a set of ids that cannot be sorted "
                f"({', '.join(sorted({type(c).__name__ for c in client_ids}))}); a set has no fixed order, so "
                "give the ids as a list"
            ) from None
    try:
        return list(client_ids)
    except TypeError:
        raise TypeError(f"client_ids must be a collection of client ids, got {client_ids!r}") from None


def _distinct_id_list(client_ids: Union[ClientData, Iterable[str]]) -> List[str]:
    """``_id_list``, refusing repeated ids: sampling promises distinct clients."""
    ids = _id_list(client_ids)
    counts = collections.Counter(ids)
    repeated = [(c, n) for c, n in counts.items() if n > 1]
    if repeated:
        listed = ", ".join(f"{c!r} ({n} times)" for c, n in repeated[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise ValueError(f"client_ids must not repeat an id, but it holds {listed}{more}")
    return ids


def _check_count(num_clients: Any, available: int) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise TypeError(f"num_clients must be an int, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > available:
        raise ValueError(
            f"cannot sample {num_clients} clients per round from only {available} available clients; "
            f"ask for at most {available}"
        )
    return int(num_clients)


def _round_rng(seed: int, round_num: int) -> np.random.Generator:
    for name, value in (("seed", seed), ("round_num", round_num)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    # One independent stream per (seed, round): the same pair always draws the same clients.
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(round_num)]))


def sample_clients(
    client_ids: Union[ClientData, Iterable[str]], num_clients: int, round_num: int, seed: int = 0
) -> List[str]:
    """``num_clients`` distinct ids drawn uniformly from ``client_ids`` for round ``round_num``.

    The draw depends only on (``seed``, ``round_num``) and the ids given, so a
    run can be repeated exactly, and any round can be recomputed on its own.
    ``client_ids`` may be a ClientData.  A set of ids is sorted first, so that
    the draw does not depend on the process's hash seed; an id given twice is
    a ValueError (the ids drawn are distinct).
    """
    ids = _distinct_id_list(client_ids)
    count = _check_count(num_clients, len(ids))
    chosen = _round_rng(seed, round_num).choice(len(ids), size=count, replace=False)
    return [ids[i] for i in chosen]


class ClientSampler:
    """Draws the clients of each round: ``sampler(round_num)`` -> list of client ids.

    A thin, validated wrapper around :func:`sample_clients` with the ids,
    the number per round and the seed fixed.
    """

    def __init__(self, client_ids: Union[ClientData, Iterable[str]], clients_per_round: int, seed: int = 0):
        self._ids = _distinct_id_list(client_ids)
        self.clients_per_round = _check_count(clients_per_round, len(self._ids))
        _round_rng(seed, 0)  # validates the seed now rather than in the first round
        self.seed = int(seed)

    @property
    def client_ids(self) -> List[str]:
        return list(self._ids)

    def sample(self, round_num: int) -> List[str]:
        return sample_clients(self._ids, self.clients_per_round, round_num, self.seed)

    __call__ = sample

    def __repr__(self) -> str:
        return (
            f"ClientSampler({len(self._ids)} clients, clients_per_round={self.clients_per_round}, "
            f"seed={self.seed})"
        )


def make_federated_data(
    client_data: ClientData,
    client_ids: Sequence[str],
    preprocess: Optional[Callable[[tf.data.Dataset], tf.data.Dataset]] = None,
) -> List[tf.data.Dataset]:
    """The datasets of ``client_ids``, in that order, ready to pass as ``{T*}@CLIENTS``.

    With ``preprocess``, each dataset is ``preprocess(dataset)``.  The datasets
    are memoized: asking again for a client (with the same ``preprocess``
    function object) returns the same dataset object, without building it
    again.  (The TensorFlow executor reuses what it read in an earlier round
    for any dataset of the same content.)
    """
    if not isinstance(client_data, ClientData):
        raise TypeError(f"make_federated_data expects a ClientData, got {type(client_data).__name__}")
    ids = _id_list(client_ids)
    source = client_data.preprocess(preprocess) if preprocess is not None else client_data
    return [source.create_tf_dataset_for_client(cid) for cid in ids]
