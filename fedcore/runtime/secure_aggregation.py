"""Secure summation by pairwise additive masking (Bonawitz et al., 2017).

Each client holds a vector of non-negative integers bounded by ``max_input``,
summed in the ring of integers mod ``2^k``, with ``k`` the smallest such that
``n * max_input < 2^k`` (:func:`modulus_bits`), so the ring's sum is the exact sum.

The protocol, by role:

1. **Key advertisement** (client side, :class:`ClientSide`). Each client
   generates a fresh X25519 key pair and sends its public key to the server.
2. **Relay** (server side, :class:`ServerSide`). The server checks that every
   client sent one key and sends all public keys to every client. It never
   holds a private key, so it cannot compute any pairwise secret.
3. **Masked input** (client side). Clients ``i`` and ``j`` both derive the same
   32-byte seed ``s_ij = HKDF-SHA256(X25519(sk_i, pk_j))`` (:func:`shared_seed`),
   expanded by ChaCha20 into uniform integers mod ``2^k`` (:func:`expand`).
   Client ``i`` sends

       y_i = x_i + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^k)

   (:func:`mask`). Several clients held by one party (a Ray worker) are each
   masked like this, and that party may add their ``y_i`` before sending.
4. **Sum** (server side). Every mask is added once and subtracted once, so the
   sum of what the server receives is ``sum_i x_i mod 2^k``
   (:meth:`ServerSide.total`).

Whatever ``x_i`` is, ``y_i`` is uniform on ``[0, 2^k)`` to anyone without a
private key of a client it shares a seed with; the server's view is a function
of the public keys, masks it cannot compute, and the total.

No dropout recovery: a client that advertised a key but sent no masked value
leaves its masks in the sum, and :meth:`ServerSide.total` refuses with a
:class:`SecureSumError` naming the missing clients (Bonawitz et al.'s secret
sharing of the mask keys, which would let the server remove them, is not
implemented). Callers run the whole protocol again, with fresh keys.

:func:`secure_sum` runs the whole protocol in one process (the reference and
TF executors' simulation); the Ray executor runs the client side on the
workers and the server side on the driver, with the same functions.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "KEY_BYTES",
    "MAX_MODULUS_BITS",
    "ClientSide",
    "SecureSumError",
    "ServerSide",
    "expand",
    "mask",
    "modulus_bits",
    "secure_sum",
    "shared_seed",
    "unmask_sum",
]

#: Arithmetic is done in uint64, so the modulus is at most 2^64.
MAX_MODULUS_BITS = 64
#: Bytes of an X25519 public key, and of a pairwise seed.
KEY_BYTES = 32
_HKDF_INFO = b"fedcore secure sum pairwise mask v1"
_NONCE = bytes(16)  # each seed keys one stream only, so a fixed nonce is safe


class SecureSumError(ValueError):
    """A secure sum cannot be computed: a value out of bounds, bounds too large for 64-bit masking,
    or a protocol message that is missing or malformed."""


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


def _modulus_mask(bits: int) -> np.uint64:
    if not 1 <= bits <= MAX_MODULUS_BITS:
        raise SecureSumError(f"the modulus must have 1 to {MAX_MODULUS_BITS} bits, got {bits}")
    return np.uint64((1 << bits) - 1)


# --------------------------------------------------------------------------
# Key agreement and mask expansion.


def new_private_key(secret: Optional[bytes] = None) -> X25519PrivateKey:
    """A fresh X25519 private key from the operating system's entropy; from ``secret`` (32 bytes) to
    make a run reproducible (tests only)."""
    if secret is None:
        return X25519PrivateKey.generate()
    return X25519PrivateKey.from_private_bytes(secret)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key's public key: what a client advertises."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def shared_seed(key: X25519PrivateKey, index: int, peer: int, peer_public: bytes) -> bytes:
    """The 32-byte seed clients ``index`` and ``peer`` share: HKDF-SHA256 of their X25519 secret,
    bound to the pair.  Both sides compute the same seed; nobody without one of the two private keys can."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise SecureSumError(f"client {peer}'s public key must be {KEY_BYTES} bytes, got {peer_public!r:.60}")
    if peer == index:
        raise SecureSumError(f"client {index} cannot share a seed with itself")
    secret = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    low, high = sorted((int(index), int(peer)))
    info = _HKDF_INFO + low.to_bytes(8, "little") + high.to_bytes(8, "little")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def expand(seed: bytes, size: int, bits: int) -> np.ndarray:
    """``size`` integers uniform on ``[0, 2^bits)``, from the ChaCha20 key stream of ``seed``.

    Each is the low ``bits`` bits of a 64-bit word of the stream: uniform, since ``2^bits`` divides ``2^64``.
    """
    m = _modulus_mask(bits)
    if not isinstance(seed, bytes) or len(seed) != KEY_BYTES:
        raise SecureSumError(f"a pairwise seed must be {KEY_BYTES} bytes, got {type(seed).__name__}")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(bytes(8 * size))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64) & m


def mask(index: int, encoded: np.ndarray, peer_seeds: Mapping[int, bytes], bits: int) -> np.ndarray:
    """Client side: ``encoded`` (uint64 values < 2^bits) plus the pairwise masks, mod 2^bits.

    ``peer_seeds`` maps each other client's index to the seed shared with it
    (:func:`shared_seed`); the mask is added for peers with a larger index and
    subtracted for the others.
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
        r = expand(seed, y.size, bits)
        y = y + r if peer > index else y - r  # uint64 wraps mod 2^64, and 2^bits divides 2^64
    return y & m


class ClientSide:
    """One client's side of the protocol: its encoded value and its X25519 private key, which never leave it.

    ``public_key`` is what it advertises; ``masked(public_keys)`` its masked
    value, given every client's public key as relayed by the server.
    """

    def __init__(self, index: int, encoded: np.ndarray, bits: int, secret: Optional[bytes] = None):
        self.index, self.bits = int(index), bits
        self._encoded = encoded
        self._key = new_private_key(secret)
        self.public_key = public_bytes(self._key)

    def __reduce__(self):
        raise TypeError("a client's side of a secure sum holds its private key and is never sent anywhere")

    def masked(self, public_keys: Mapping[int, bytes]) -> np.ndarray:
        if public_keys.get(self.index) != self.public_key:
            raise SecureSumError(f"the relayed public keys do not hold client {self.index}'s own key")
        seeds = {j: shared_seed(self._key, self.index, j, pk) for j, pk in public_keys.items() if j != self.index}
        return mask(self.index, self._encoded, seeds, self.bits)


class ServerSide:
    """The server's side: relays public keys, adds masked values.  Holds nothing secret.

    ``keys`` and ``received`` are everything it is given: the public keys, by
    client, and each masked value (one client's, or the sum of several
    clients' held by one party) with the clients it covers.
    """

    def __init__(self, num_clients: int, bits: int):
        _modulus_mask(bits)
        self.num_clients, self.bits = num_clients, bits
        self.keys: Dict[int, bytes] = {}
        self.received: List[Tuple[Tuple[int, ...], np.ndarray]] = []

    def receive_keys(self, keys: Mapping[int, bytes]) -> None:
        for i, pk in keys.items():
            if not (isinstance(i, int) and 0 <= i < self.num_clients):
                raise SecureSumError(f"a public key for client {i!r}, not one of the {self.num_clients} clients")
            if i in self.keys:
                raise SecureSumError(f"client {i} advertised two public keys")
            if not isinstance(pk, bytes) or len(pk) != KEY_BYTES:
                raise SecureSumError(f"client {i}'s public key must be {KEY_BYTES} bytes, got {pk!r:.60}")
            self.keys[i] = pk

    def relay(self) -> Dict[int, bytes]:
        """Every client's public key, for every client; SecureSumError if some client sent none."""
        missing = sorted(set(range(self.num_clients)) - set(self.keys))
        if missing:
            raise SecureSumError(f"federated_secure_sum: clients {missing} sent no public key")
        return dict(sorted(self.keys.items()))

    def receive_masked(self, clients: Iterable[int], masked: np.ndarray) -> None:
        self.received.append((tuple(int(i) for i in clients), np.asarray(masked)))

    def total(self) -> np.ndarray:
        """The sum mod 2^bits of the masked values received, once every client's is in.

        SecureSumError when a client's value came twice or not at all: the
        masks of a client that dropped out after advertising its key do not
        cancel, and there is no recovery of them (no secret sharing of keys).
        """
        covered = [i for clients, _ in self.received for i in clients]
        twice = sorted({i for i in covered if covered.count(i) > 1})
        if twice:
            raise SecureSumError(f"federated_secure_sum: masked values of clients {twice} arrived twice")
        missing = sorted(set(self.keys) - set(covered))
        if missing or set(covered) - set(self.keys):
            raise SecureSumError(
                f"federated_secure_sum: clients {missing or sorted(set(covered) - set(self.keys))} advertised a key "
                "but sent no masked value (or the reverse); their masks do not cancel, and dropout recovery "
                "(secret sharing of the mask keys) is not implemented: run the sum again with the clients that remain"
            )
        return unmask_sum([y for _, y in self.received], self.bits)


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


def _test_secret(entropy: int, index: int) -> bytes:
    return hashlib.sha256(b"fedcore secure sum test key %d %d" % (entropy, index)).digest()


def secure_sum(
    client_values: Sequence[Sequence[np.ndarray]],
    bounds: Sequence[np.ndarray],
    dtypes: Sequence[np.dtype],
    shapes: Optional[Sequence[Tuple[int, ...]]] = None,
    entropy: Optional[int] = None,
) -> List[np.ndarray]:
    """The whole protocol in one process: bounds check, key agreement, masking on each client, sum.

    ``client_values[i]`` is client i's list of integer leaves; ``bounds`` the
    max_input of each leaf (broadcast against it); ``dtypes`` and ``shapes``
    those of the result's leaves (``shapes=None``: client 0's); ``entropy``
    derives the clients' private keys (tests only; None: fresh keys from the
    operating system each call).  Returns the per-leaf sums; SecureSumError
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
    clients = [
        ClientSide(i, x, bits, None if entropy is None else _test_secret(entropy, i)) for i, x in enumerate(encoded)
    ]
    server = ServerSide(n, bits)
    for c in clients:
        server.receive_keys({c.index: c.public_key})
    public_keys = server.relay()
    for c in clients:
        server.receive_masked([c.index], c.masked(public_keys))
    return decode(server.total(), shapes, dtypes)
