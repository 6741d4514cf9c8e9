"""Secure summation by pairwise additive masking (Bonawitz et al., 2017), simulated in one process.

Each client holds a vector of non-negative integers bounded by ``max_input``.
Every pair of clients ``i < j`` shares a seed ``s_ij`` (in a deployment, from
a Diffie-Hellman key agreement the server cannot see).  Client ``i`` sends

    y_i = x_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ji)   (mod 2^k)

so every mask appears once with each sign and the server's sum of the
``y_i`` is ``sum_i x_i mod 2^k``: the exact sum when ``k`` is chosen with
``n * max_input < 2^k``.  Each ``y_i`` on its own is uniform on
``[0, 2^k)`` whatever ``x_i`` is, as long as at least one other client
keeps its seed with ``i`` secret.

The three roles are separate functions: :func:`pairwise_seeds` (the key
agreement), :func:`mask` (client side: one client's vector and its own
seeds) and :func:`unmask_sum` (server side: masked vectors only).
:func:`secure_sum` runs the whole protocol; both executors'
``federated_secure_sum`` rules call it.

Limits, on purpose: the PRG is NumPy's Philox (not a cryptographic stream
cipher), the seeds come from the operating system's entropy in the same
process, and there is no recovery of the masks of clients that drop out
after masking (Bonawitz et al.'s secret sharing of seeds): the protocol
needs every client that was given seeds to send its masked vector.
"""

from __future__ import annotations

import secrets
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MAX_MODULUS_BITS",
    "SecureSumError",
    "mask",
    "modulus_bits",
    "pairwise_seeds",
    "secure_sum",
    "unmask_sum",
]

#: Arithmetic is done in uint64, so the modulus is at most 2^64.
MAX_MODULUS_BITS = 64


class SecureSumError(ValueError):
    """A secure sum cannot be computed: a value out of bounds, or bounds too large for 64-bit masking."""


def modulus_bits(num_clients: int, max_input: int) -> int:
    """The smallest ``k`` with ``num_clients * max_input < 2^k``; SecureSumError above 64 bits."""
    if num_clients < 0:
        raise SecureSumError(f"federated_secure_sum: the number of clients must be >= 0, got {num_clients}")
    max_input = int(max_input)
    if max_input < 0:
        raise SecureSumError(f"federated_secure_sum: max_input must be >= 0, got {max_input}")
    largest_sum = num_clients * max_input
    k = max(1, largest_sum.bit_length())  # largest_sum < 2^k
    if k > MAX_MODULUS_BITS:
        raise SecureSumError(
            f"federated_secure_sum: {num_clients} clients with max_input={max_input} can sum to {largest_sum}, "
            f"which needs {k} bits, more than the {MAX_MODULUS_BITS}-bit masking arithmetic; "
            "lower max_input or use fewer clients"
        )
    return k


def pairwise_seeds(num_clients: int, entropy: Optional[int] = None) -> Dict[Tuple[int, int], int]:
    """A 128-bit seed for every pair ``(i, j)`` with ``i < j``: the simulated key agreement.

    With ``entropy=None`` the seeds come from the operating system (``secrets``);
    an integer makes them reproducible (for tests only).
    """
    pairs = [(i, j) for i in range(num_clients) for j in range(i + 1, num_clients)]
    if entropy is None:
        return {pair: secrets.randbits(128) for pair in pairs}
    words = np.random.SeedSequence(entropy).generate_state(4 * len(pairs), np.uint32) if pairs else []
    return {
        pair: int.from_bytes(np.asarray(words[4 * p : 4 * p + 4], np.uint32).tobytes(), "little")
        for p, pair in enumerate(pairs)
    }


def client_seeds(index: int, seeds: Mapping[Tuple[int, int], int]) -> Dict[int, int]:
    """What client ``index`` knows after the key agreement: its seed with each other client."""
    mine = {}
    for (i, j), s in seeds.items():
        if i == index:
            mine[j] = s
        elif j == index:
            mine[i] = s
    return mine


def _modulus_mask(bits: int) -> np.uint64:
    if not 1 <= bits <= MAX_MODULUS_BITS:
        raise SecureSumError(f"the modulus must have 1 to {MAX_MODULUS_BITS} bits, got {bits}")
    return np.uint64((1 << bits) - 1)


def _prg(seed: int, size: int) -> np.ndarray:
    """``size`` pseudo-random uint64 words expanded from ``seed``."""
    return np.random.Philox(seed).random_raw(size).astype(np.uint64)


def mask(index: int, encoded: np.ndarray, peer_seeds: Mapping[int, int], bits: int) -> np.ndarray:
    """Client side: ``encoded`` (uint64 values < 2^bits) plus the pairwise masks, mod 2^bits.

    ``peer_seeds`` maps each other client's index to the seed shared with it;
    the mask is added for peers with a larger index and subtracted for the others.
    """
    m = _modulus_mask(bits)
    x = np.asarray(encoded)
    if x.dtype != np.uint64 or x.ndim != 1:
        raise SecureSumError(f"a client's encoded value must be a 1-D uint64 vector, got {x.dtype} of shape {x.shape}")
    if x.size and int(x.max()) > int(m):
        raise SecureSumError(f"client {index}'s encoded value {int(x.max())} does not fit in {bits} bits")
    y = x.copy()
    for peer, seed in peer_seeds.items():
        if peer == index:
            raise SecureSumError(f"client {index} cannot share a seed with itself")
        r = _prg(seed, y.size)
        y = y + r if peer > index else y - r  # uint64 wraps mod 2^64, and 2^bits divides 2^64
    return y & m


def unmask_sum(masked: Sequence[np.ndarray], bits: int, size: Optional[int] = None) -> np.ndarray:
    """Server side: the sum mod 2^bits of all clients' masked vectors (the masks cancel)."""
    m = _modulus_mask(bits)
    if not masked:
        return np.zeros(size or 0, np.uint64)
    total = np.zeros_like(np.asarray(masked[0], np.uint64))
    for y in masked:
        y = np.asarray(y)
        if y.dtype != np.uint64 or y.shape != total.shape:
            raise SecureSumError(
                f"masked vectors must all be uint64 of shape {total.shape}, got {y.dtype} of shape {y.shape}"
            )
        total = total + y
    return total & m


def _check_leaf(client: int, leaf: int, value: np.ndarray, bound: np.ndarray) -> None:
    if not (np.issubdtype(value.dtype, np.integer) and np.issubdtype(bound.dtype, np.integer)):
        raise SecureSumError(
            f"federated_secure_sum needs integer values and bounds, got {value.dtype} values and {bound.dtype} bounds"
        )
    try:
        np.broadcast_to(bound, value.shape)
    except ValueError:
        raise SecureSumError(
            f"federated_secure_sum: max_input of shape {bound.shape} does not fit values of shape {value.shape}"
        ) from None
    if np.any(bound < 0):
        raise SecureSumError(f"federated_secure_sum: max_input must be >= 0, got {bound.tolist()}")
    if np.any(value < 0) or np.any(value > bound):
        where = "" if leaf is None else f" (element {leaf})"
        raise SecureSumError(
            f"federated_secure_sum: client {client} gave {value.tolist()}{where}, "
            f"outside the allowed range [0, {bound.tolist()}]"
        )


def leaf_bounds(bound: Any, t: Any) -> List[Any]:
    """One max_input per tensor leaf of the value type ``t``: a struct bound element by element, a tensor
    bound for every leaf below it.  The bounds are returned as given (numbers, arrays or tensors)."""
    from fedcore.structure import Struct
    from fedcore.types import StructType

    if isinstance(t, StructType):
        bounds = list(bound) if isinstance(bound, Struct) else [bound] * len(t)
        return [leaf for b, e in zip(bounds, t) for leaf in leaf_bounds(b, e)]
    return [bound]


def encode(
    client: int, leaves: Sequence[Any], bounds: Sequence[np.ndarray], shapes: Optional[Sequence[Tuple[int, ...]]] = None
) -> np.ndarray:
    """Client side, before masking: checks each leaf against its bound and returns them as one uint64 vector.

    ``shapes``, when given, are the shapes every client's leaves must have.
    """
    if len(leaves) != len(bounds):
        raise SecureSumError(f"client {client} has {len(leaves)} values, expected {len(bounds)}")
    parts = []
    for leaf, (v, b) in enumerate(zip(leaves, bounds)):
        v = np.asarray(v)
        if shapes is not None and v.shape != tuple(shapes[leaf]):
            raise SecureSumError(f"client {client}'s value {leaf} has shape {v.shape}, expected {tuple(shapes[leaf])}")
        _check_leaf(client, leaf if len(bounds) > 1 else None, v, b)
        parts.append(v.astype(np.uint64).ravel())  # exact: 0 <= v
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def bits_for(num_clients: int, bounds: Sequence[np.ndarray]) -> int:
    """The modulus bits for summing ``num_clients`` values under these per-leaf bounds."""
    return modulus_bits(num_clients, max((int(b.max()) for b in bounds if b.size), default=0))


def decode(total: np.ndarray, shapes: Sequence[Tuple[int, ...]], dtypes: Sequence[np.dtype]) -> List[np.ndarray]:
    """Server side, after unmasking: splits the summed vector into leaves; SecureSumError if one overflows its dtype."""
    out, start = [], 0
    for leaf, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        size = int(np.prod(shape, dtype=np.int64))
        part = total[start : start + size]
        start += size
        limit = np.iinfo(dtype).max
        if part.size and int(part.max()) > limit:
            raise SecureSumError(
                f"federated_secure_sum: the sum {int(part.max())} (element {leaf}) overflows {np.dtype(dtype).name}; "
                "use a wider integer type"
            )
        out.append(part.astype(dtype).reshape(shape))
    return out


def secure_sum(
    client_values: Sequence[Sequence[np.ndarray]],
    bounds: Sequence[np.ndarray],
    dtypes: Sequence[np.dtype],
    shapes: Optional[Sequence[Tuple[int, ...]]] = None,
    entropy: Optional[int] = None,
) -> List[np.ndarray]:
    """The whole protocol: bounds check, masking on each client, unmasked sum at the server.

    ``client_values[i]`` is client i's list of integer leaves; ``bounds`` the
    max_input of each leaf (broadcast against it); ``dtypes`` and ``shapes``
    those of the result's leaves (``shapes=None``: client 0's); ``entropy``
    seeds the pairwise seeds (None: fresh OS entropy each call).  Returns the per-leaf sums; SecureSumError
    for a value outside ``[0, max_input]``, for bounds too large to mask in
    64 bits, or for a sum that does not fit the result's dtype.
    """
    n = len(client_values)
    bounds = [np.asarray(b) for b in bounds]
    if n == 0:
        if shapes is None:
            raise SecureSumError("federated_secure_sum over no clients needs the shapes of the result")
        return [np.zeros(s, d) for s, d in zip(shapes, dtypes)]
    if shapes is None:
        shapes = [np.shape(v) for v in client_values[0]]
    encoded = [encode(i, leaves, bounds, shapes) for i, leaves in enumerate(client_values)]
    bits = bits_for(n, bounds)
    seeds = pairwise_seeds(n, entropy)
    masked = [mask(i, x, client_seeds(i, seeds), bits) for i, x in enumerate(encoded)]
    return decode(unmask_sum(masked, bits), shapes, dtypes)
