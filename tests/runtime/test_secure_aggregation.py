"""Pairwise-masking secure summation: exact sums, masked values independent of inputs, bounds errors."""

import collections
import hashlib
import pickle

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import fedcore
from fedcore.runtime import secure_aggregation as sa
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tensorflow import TensorFlowExecutor

EXECUTORS = [fedcore.ReferenceExecutor, TensorFlowExecutor]


def _secret(entropy, i):
    return hashlib.sha256(b"test %d %d" % (entropy, i)).digest()


def _protocol_sum(values, max_input, entropy=None):
    """The protocol on one leaf per client, by its roles: advertise, relay, mask, sum."""
    n = len(values)
    bits = sa.modulus_bits(n, max_input)
    clients = [
        sa.ClientSide(i, np.asarray(v, np.uint64).ravel(), bits, None if entropy is None else _secret(entropy, i))
        for i, v in enumerate(values)
    ]
    server = sa.ServerSide(n, bits)
    for c in clients:
        server.receive_keys({c.index: c.public_key})
    keys = server.relay()
    masked = [c.masked(keys) for c in clients]
    for c, y in zip(clients, masked):
        server.receive_masked([c.index], y)
    return masked, server.total()


class RecordingServer(sa.ServerSide):
    """The server side, remembering every instance: everything the server is given, for the tests."""

    made = []

    def __init__(self, *args):
        super().__init__(*args)
        RecordingServer.made.append(self)


@pytest.fixture
def servers(monkeypatch):
    RecordingServer.made = []
    monkeypatch.setattr(sa, "ServerSide", RecordingServer)
    return RecordingServer.made


# --------------------------------------------------------------------------
# The masked sum is the plain sum.


@pytest.mark.parametrize("n", [2, 3, 7])
def test_masked_sum_equals_the_plain_sum(n):
    rng = np.random.default_rng(n)
    values = [rng.integers(0, 1000, size=50) for _ in range(n)]
    masked, total = _protocol_sum(values, 999, entropy=n)
    np.testing.assert_array_equal(total, np.sum(values, axis=0))
    for v, y in zip(values, masked):  # and no client's masked vector is its value
        assert not np.array_equal(v, y)


def test_the_sum_is_exact_near_the_64_bit_limit():
    max_input = 2**61
    values = [[max_input, 0, 12345], [max_input, 1, 2**60], [max_input - 7, 2**61, 3]]
    assert sa.modulus_bits(3, max_input) == 63
    sums = sa.secure_sum(
        [[np.asarray(v, np.int64)] for v in values], [np.asarray(max_input, np.int64)], [np.dtype(np.uint64)]
    )
    assert [int(x) for x in sums[0]] == [3 * max_input - 7, 1 + 2**61, 12345 + 2**60 + 3]


def test_modulus_bits_is_the_smallest_that_holds_every_sum():
    assert sa.modulus_bits(3, 5) == 4  # sums up to 15 < 16
    assert sa.modulus_bits(4, 4) == 5  # 16 needs 5 bits
    assert sa.modulus_bits(1, 0) == 1
    assert sa.modulus_bits(2, 2**63 - 1) == 64
    with pytest.raises(sa.SecureSumError, match="needs 65 bits, more than the 64-bit"):
        sa.modulus_bits(2, 2**63)


def test_masks_cancel_and_hide_zeros():
    masked, total = _protocol_sum([np.zeros(16, np.int64)] * 4, 100, entropy=1)
    assert not total.any()
    assert all(y.any() for y in masked)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_federated_secure_sum_runs_the_protocol_on_both_executors(executor, servers):
    spec = collections.OrderedDict(a=tf.TensorSpec([8], tf.int32), b=tf.TensorSpec([], tf.int64))

    @fedcore.federated_computation(fedcore.type_at_clients(spec))
    def secure(x):
        return fedcore.federated_secure_sum(x, collections.OrderedDict(a=1000, b=np.int64(2**40)))

    rng = np.random.default_rng(0)
    clients = [
        collections.OrderedDict(a=rng.integers(0, 1001, 8).astype(np.int32), b=np.int64(rng.integers(0, 2**40)))
        for _ in range(5)
    ]
    with fedcore.execution_context(executor()):
        result = secure(clients)
    np.testing.assert_array_equal(result["a"], np.sum([c["a"] for c in clients], axis=0))
    assert result["b"] == sum(int(c["b"]) for c in clients)
    # The server side got one public key and one masked vector per client, none of them a client's encoded value.
    [server] = servers
    assert sorted(server.keys) == [0, 1, 2, 3, 4] and all(len(k) == sa.KEY_BYTES for k in server.keys.values())
    assert [clients for clients, _ in server.received] == [(0,), (1,), (2,), (3,), (4,)]
    for c, (_, y) in zip(clients, server.received):
        encoded = np.concatenate([c["a"].astype(np.uint64), [np.uint64(c["b"])]])
        assert y.dtype == np.uint64 and y.shape == encoded.shape
        assert not np.any(y == encoded)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_fresh_keys_and_masks_every_call(executor, servers):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.TensorSpec([4], tf.int32)))
    def secure(x):
        return fedcore.federated_secure_sum(x, 50)

    values = [np.arange(4, dtype=np.int32), np.full(4, 50, np.int32)]
    with fedcore.execution_context(executor()):
        first, second = secure(values), secure(values)
    np.testing.assert_array_equal(first, [50, 51, 52, 53])
    np.testing.assert_array_equal(second, first)
    assert len(servers) == 2
    assert not set(servers[0].keys.values()) & set(servers[1].keys.values())
    assert not np.array_equal(servers[0].received[0][1], servers[1].received[0][1])


# --------------------------------------------------------------------------
# Key agreement: both sides of a pair derive one seed; nobody else can.


def test_a_pair_agrees_on_a_seed_that_needs_one_of_its_private_keys():
    keys = [sa.new_private_key() for _ in range(3)]
    pub = [sa.public_bytes(k) for k in keys]
    s01 = sa.shared_seed(keys[0], 0, 1, pub[1])
    assert len(s01) == sa.KEY_BYTES
    assert sa.shared_seed(keys[1], 1, 0, pub[0]) == s01  # both sides compute it
    assert sa.shared_seed(keys[2], 0, 1, pub[1]) != s01  # a third key (the server's own, say) does not
    assert sa.shared_seed(keys[0], 0, 2, pub[2]) != s01  # one seed per pair
    assert sa.shared_seed(keys[0], 0, 3, pub[1]) != s01  # bound to the pair's indices
    # The mask stream is ChaCha20's: reproducible from the seed, different for another seed, uniform mod 2^k.
    np.testing.assert_array_equal(sa.expand(s01, 1000, 64), sa.expand(s01, 1000, 64))
    assert not np.array_equal(sa.expand(s01, 8, 64), sa.expand(sa.shared_seed(keys[0], 0, 2, pub[2]), 8, 64))
    words = sa.expand(s01, 40000, 4)
    assert int(words.max()) < 16
    assert stats.chisquare(np.bincount(words.astype(np.int64), minlength=16))[1] > 1e-3


# --------------------------------------------------------------------------
# What the server sees tells nothing about any one client's value.

DRAWS = 1000  # over 64 cells: about 16 per cell


def _views(values, max_input, first_entropy, masking=True):
    """The server's view (masked values of all clients but the last, which the total then fixes) over
    DRAWS independent key agreements, with reproducible keys."""
    n = len(values)
    bits = sa.modulus_bits(n, max_input)
    out = np.empty((DRAWS, n - 1), np.uint64)
    for d in range(DRAWS):
        if masking:
            masked, total = _protocol_sum(values, max_input, entropy=first_entropy + d)
            assert int(total[0]) == sum(values)
        else:
            masked = [np.asarray([v], np.uint64) for v in values]
        out[d] = [y[0] for y in masked[:-1]]
    return out, bits


def _two_sample_p(a, b, bins):
    table = np.stack([np.bincount(a.astype(np.int64), minlength=bins), np.bincount(b.astype(np.int64), minlength=bins)])
    table = table[:, table.sum(axis=0) > 0]
    return stats.chi2_contingency(table)[1]


def _joint(view, bits):
    """Each draw's whole view as one number: (y_0, y_1) as y_0 * 2^bits + y_1."""
    return view[:, 0] * np.uint64(2**bits) + view[:, 1]


def test_the_server_view_is_the_same_for_any_inputs_with_the_same_total():
    # 3 clients, max_input 2: k = 3.  The server sees (y_0, y_1, y_2), and y_2 = total - y_0 - y_1.
    a, bits = _views([0, 2, 1], 2, 0)
    b, _ = _views([2, 0, 1], 2, DRAWS)  # other key agreements
    assert bits == 3
    ja, jb = _joint(a, bits), _joint(b, bits)
    p_same = _two_sample_p(ja, jb, 64)
    p_uniform = stats.chisquare(np.bincount(ja.astype(np.int64), minlength=64))[1]
    # Measured with these fixed entropies: p = 0.055 (same distribution) and 0.093 (uniform).
    assert p_same > 1e-3 and p_uniform > 1e-3, (p_same, p_uniform)


def test_the_distribution_test_detects_an_unmasked_value():
    # The same test has the power to tell the inputs apart without masking.
    a, bits = _views([0, 2, 1], 2, 0, masking=False)
    b, _ = _views([2, 0, 1], 2, 0, masking=False)
    assert _two_sample_p(_joint(a, bits), _joint(b, bits), 64) < 1e-100


def test_a_masked_vector_is_uniform_in_every_coordinate():
    masked, _ = _protocol_sum([np.full(20000, 3)] * 4, 3, entropy=99)  # 4 clients, max_input 3: k = 4
    p = stats.chisquare(np.bincount(masked[2].astype(np.int64), minlength=16))[1]
    assert p > 1e-3, p


def _attack(view_keys, received, bits, private_keys):
    """Client 0's value from the server's view, by removing client 0's masks, computed with the private
    keys given (the old attack on driver-generated seeds, now that the seeds come from key agreement)."""
    index, y = received[0]
    seeds = {}
    for j, pk in view_keys.items():
        if j == 0:
            continue
        key = private_keys.get(0) or sa.new_private_key(hashlib.sha256(b"attacker").digest())
        seeds[j] = sa.shared_seed(key, 0, j, pk)
    unmasked = np.asarray(y, np.uint64).copy()
    for j, s in seeds.items():
        r = sa.expand(s, unmasked.size, bits)
        unmasked = unmasked - r if j > 0 else unmasked + r
    return unmasked & np.uint64(2**bits - 1)


def test_removing_masks_needs_a_private_key_the_server_never_holds(servers):
    values = [np.arange(6) * 10, np.full(6, 7), np.arange(6)]
    n, max_input = 3, 50
    sums = sa.secure_sum([[v] for v in values], [np.asarray(max_input)], [np.dtype(np.int64)], entropy=5)
    np.testing.assert_array_equal(sums[0], np.sum(values, axis=0))
    [server] = servers
    bits = sa.modulus_bits(n, max_input)
    # With client 0's private key the attack works (so it is a real attack) ...
    key0 = sa.new_private_key(sa._test_secret(5, 0))
    np.testing.assert_array_equal(_attack(server.keys, server.received, bits, {0: key0}), values[0])
    # ... with what the server holds (public keys, masked values, and a key pair of its own) it does not.
    assert not np.array_equal(_attack(server.keys, server.received, bits, {}), values[0])
    # Everything the server side holds: public keys and masked values, no private key or seed.
    assert set(vars(server)) == {"num_clients", "bits", "keys", "received"}


# --------------------------------------------------------------------------
# Dropouts: a client that advertised a key but sent no masked value.


def test_a_dropped_client_is_a_clear_error_not_a_wrong_sum():
    bits = sa.modulus_bits(4, 10)
    clients = [sa.ClientSide(i, np.asarray([i + 1], np.uint64), bits) for i in range(4)]
    server = sa.ServerSide(4, bits)
    for c in clients:
        server.receive_keys({c.index: c.public_key})
    keys = server.relay()
    for c in clients[:3]:  # client 3 drops out after the key advertisement
        server.receive_masked([c.index], c.masked(keys))
    with pytest.raises(sa.SecureSumError, match=r"clients \[3\] advertised a key but sent no masked value.*"
                       r"dropout recovery .* is not implemented"):
        server.total()
    server.receive_masked([0], clients[0].masked(keys))
    server.receive_masked([3], clients[3].masked(keys))
    with pytest.raises(sa.SecureSumError, match=r"clients \[0\] arrived twice"):
        server.total()
    # A client that sent no key stops the protocol before any masking.
    late = sa.ServerSide(3, bits)
    late.receive_keys({0: clients[0].public_key, 2: clients[2].public_key})
    with pytest.raises(sa.SecureSumError, match=r"clients \[1\] sent no public key"):
        late.relay()


# --------------------------------------------------------------------------
# Bounds and bad input.


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_value_above_max_input_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 5)

    with fedcore.execution_context(executor()):
        assert secure([1, 5, 0]) == 6
        with pytest.raises(ExecutionError, match=r"client 1 gave 7, outside the allowed range \[0, 5\]"):
            secure([1, 7])
        with pytest.raises(ExecutionError, match=r"client 0 gave -1, outside the allowed range"):
            secure([-1, 2])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_max_input_too_large_for_64_bit_masking_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int64))
    def secure(x):
        return fedcore.federated_secure_sum(x, np.int64(2**62))

    with fedcore.execution_context(executor()):
        assert secure([1, 2, 3]) == 6  # 3 * 2^62 < 2^64
        with pytest.raises(ExecutionError, match="4 clients with max_input=4611686018427387904 .* more than the 64-bit"):
            secure([1, 2, 3, 4])


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_sum_that_overflows_its_dtype_is_a_clear_error(executor):
    @fedcore.federated_computation(fedcore.type_at_clients(tf.int32))
    def secure(x):
        return fedcore.federated_secure_sum(x, 2**31 - 1)

    with fedcore.execution_context(executor()):
        with pytest.raises(ExecutionError, match="the sum 4294967294 .* overflows int32"):
            secure([2**31 - 1, 2**31 - 1])


def test_bad_protocol_inputs_are_clear_errors():
    with pytest.raises(sa.SecureSumError, match="1-D uint64 vector, got int64"):
        sa.mask(0, np.zeros(3, np.int64), {}, 8)
    with pytest.raises(sa.SecureSumError, match="does not fit in 4 bits"):
        sa.mask(0, np.asarray([16], np.uint64), {}, 4)
    with pytest.raises(sa.SecureSumError, match="cannot share a seed with itself"):
        sa.mask(1, np.asarray([1], np.uint64), {1: bytes(32)}, 4)
    with pytest.raises(sa.SecureSumError, match="a pairwise seed must be 32 bytes"):
        sa.mask(0, np.asarray([1], np.uint64), {1: 5}, 4)
    with pytest.raises(sa.SecureSumError, match="1 to 64 bits, got 65"):
        sa.unmask_sum([np.zeros(2, np.uint64)], 65)
    with pytest.raises(sa.SecureSumError, match="must all be uint64 of shape"):
        sa.unmask_sum([np.zeros(2, np.uint64), np.zeros(3, np.uint64)], 8)
    with pytest.raises(sa.SecureSumError, match="max_input must be >= 0"):
        sa.modulus_bits(2, -1)
    with pytest.raises(sa.SecureSumError, match="needs integer values"):
        sa.secure_sum([[np.float32(1.0)]], [np.asarray(2)], [np.dtype(np.float32)])
    with pytest.raises(sa.SecureSumError, match="has shape"):
        sa.secure_sum([[np.zeros(2, np.int32)], [np.zeros(3, np.int32)]], [np.asarray(2)], [np.dtype(np.int32)])
    client = sa.ClientSide(0, np.asarray([1], np.uint64), 4)
    with pytest.raises(sa.SecureSumError, match="do not hold client 0's own key"):
        client.masked({0: bytes(32), 1: bytes(32)})
    with pytest.raises(sa.SecureSumError, match="client 1's public key must be 32 bytes"):
        client.masked({0: client.public_key, 1: b"short"})
    server = sa.ServerSide(2, 4)
    with pytest.raises(sa.SecureSumError, match="not one of the 2 clients"):
        server.receive_keys({2: bytes(32)})
    server.receive_keys({0: client.public_key})
    with pytest.raises(sa.SecureSumError, match="client 0 advertised two public keys"):
        server.receive_keys({0: client.public_key})
    with pytest.raises(TypeError, match="never sent anywhere"):
        pickle.dumps(client)


# --------------------------------------------------------------------------
# The Ray executor's two rounds (fedcore.runtime.ray.plan.SecureSumPartial), in this process.


class _Worker:
    """What SecureSumPartial needs of a Ray worker: its clients and its sessions."""

    def __init__(self, clients):
        self.clients, self.sessions = clients, {}

    def keep_session(self, token, state):
        self.sessions[token] = state

    def take_session(self, token):
        return self.sessions.pop(token)


def test_each_client_on_a_worker_is_masked_against_every_other_client(servers):
    from fedcore.runtime.ray import plan

    member = fedcore.TensorType(tf.int32, [3])
    values = [np.array([i, 2 * i, 40 - i], np.int32) for i in range(5)]
    bounds = [np.asarray(40)]
    bits = sa.bits_for(5, bounds)
    record = plan.SecureSumPartial(0, member, bounds, bits, "t")
    shards = [[0, 2, 4], [1, 3]]
    workers = [_Worker(s) for s in shards]
    round1 = [record.run(w, [values[i] for i in w.clients]) for w in workers]
    sides = {s.index: s for w in workers for s in w.sessions["t"]}
    relayed = record.relay(shards, round1, 5)
    round2 = [record.respond(w, relayed[-1]) for w in workers]
    assert all("t" not in w.sessions for w in workers)  # the client sides are gone after their round
    result = record.finish(record.conclude(relayed, shards, round2))
    np.testing.assert_array_equal(result, np.sum(values, axis=0))
    # The driver got one public key per client and one masked sum per worker.
    [server] = servers
    assert server.keys == {i: sides[i].public_key for i in range(5)}
    assert [c for c, _ in server.received] == [(0, 2, 4), (1, 3)]
    for shard, (_, partial) in zip(shards, server.received):
        # Masks are uniform mod 2^bits: one coordinate matches the plain sum by chance with probability
        # 2^-bits, so only the whole vector is compared (a chance match of all: 2^-(3 bits)).
        assert not np.array_equal(partial, np.sum([values[i] for i in shard], axis=0).astype(np.uint64))
    # Each client's masked value carries its masks with every other client, its worker's clients included:
    # the worker's sum is what the clients' own masked values add up to.
    for i, side in sides.items():
        seeds = {j: sa.shared_seed(side._key, i, j, server.keys[j]) for j in range(5) if j != i}
        np.testing.assert_array_equal(side.masked(server.keys), sa.mask(i, values[i].astype(np.uint64), seeds, bits))
    np.testing.assert_array_equal(
        server.received[0][1], sa.unmask_sum([sides[i].masked(server.keys) for i in (0, 2, 4)], bits)
    )
    # A worker's masked sum that never arrives (its clients dropped out) is a clear error, not a wrong sum.
    record.run(workers[0], [values[i] for i in shards[0]])
    record.run(workers[1], [values[i] for i in shards[1]])
    relayed = record.relay(shards, [({0: b"k" * 32, 2: b"l" * 32, 4: b"m" * 32}, [(3,)]), ({1: b"n" * 32, 3: b"o" * 32}, [(3,)])], 5)
    with pytest.raises(ExecutionError, match=r"clients \[1, 3\] advertised a key but sent no masked value"):
        record.finish(record.conclude(relayed, shards[:1], [np.zeros(3, np.uint64)]))
    with pytest.raises(sa.SecureSumError, match=r"holding clients \[1, 3\] sent public keys for clients \[1\]"):
        record.relay(shards, [round1[0], ({1: b"n" * 32}, [(3,)])], 5)


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(st.lists(st.integers(0, 2**20), min_size=3, max_size=3), min_size=1, max_size=6),
    workers=st.lists(st.integers(0, 2), min_size=6, max_size=6),
)
def test_any_split_over_workers_gives_the_simulations_exact_sum(data, workers):
    # The Ray record's two rounds, for any assignment of clients to workers, against the one-process protocol.
    from fedcore.runtime.ray import plan

    n, member, bounds = len(data), fedcore.TensorType(tf.int64, [3]), [np.asarray(2**20)]
    values = [np.asarray(v, np.int64) for v in data]
    record = plan.SecureSumPartial(0, member, bounds, sa.bits_for(n, bounds), "t")
    shards = [s for s in ([i for i in range(n) if workers[i] == w] for w in range(3)) if s]
    held = [_Worker(s) for s in shards]
    relayed = record.relay(shards, [record.run(w, [values[i] for i in w.clients]) for w in held], n)
    result = record.finish(record.conclude(relayed, shards, [record.respond(w, relayed[-1]) for w in held]))
    simulated = sa.secure_sum([[v] for v in values], bounds, [np.dtype(np.int64)])[0]
    np.testing.assert_array_equal(result, np.sum(values, axis=0))
    np.testing.assert_array_equal(result, simulated)
