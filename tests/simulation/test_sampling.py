import collections

import numpy as np
import pytest
import tensorflow as tf

import fedcore
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.simulation import ClientData, ClientSampler, make_federated_data, sample_clients

IDS = [f"c{i:02d}" for i in range(20)]


def test_sample_clients_is_distinct_and_deterministic_per_seed_and_round():
    chosen = sample_clients(IDS, 5, round_num=3, seed=7)
    assert len(chosen) == 5 and len(set(chosen)) == 5 and set(chosen) <= set(IDS)
    assert sample_clients(IDS, 5, round_num=3, seed=7) == chosen
    assert any(sample_clients(IDS, 5, round_num=r, seed=7) != chosen for r in range(4, 8))
    assert any(sample_clients(IDS, 5, round_num=3, seed=s) != chosen for s in range(8, 12))


def test_sample_clients_is_uniform():
    counts = collections.Counter(c for r in range(2000) for c in sample_clients(IDS, 5, r, seed=0))
    expected = 2000 * 5 / len(IDS)  # 500 each
    assert set(counts) == set(IDS)
    assert all(abs(n - expected) < 0.15 * expected for n in counts.values())


def test_too_many_clients_names_both_numbers():
    with pytest.raises(ValueError) as info:
        sample_clients(IDS, 30, round_num=0, seed=0)
    assert "30" in str(info.value) and "20" in str(info.value)
    with pytest.raises(ValueError, match="at least 1"):
        sample_clients(IDS, 0, round_num=0)
    with pytest.raises(ValueError, match="round_num must be a non-negative int"):
        sample_clients(IDS, 2, round_num=-1)
    with pytest.raises(TypeError, match="single string"):
        sample_clients("c01", 1, round_num=0)


def test_client_sampler_matches_sample_clients_and_accepts_client_data():
    data = ClientData.from_tensor_slices({cid: np.zeros(1, np.int32) for cid in IDS})
    sampler = ClientSampler(data, clients_per_round=4, seed=2)
    assert sampler(5) == sampler.sample(5) == sample_clients(IDS, 4, 5, seed=2)
    assert sampler.client_ids == IDS and "clients_per_round=4" in repr(sampler)
    with pytest.raises(ValueError, match="cannot sample 21 clients per round from only 20"):
        ClientSampler(IDS, clients_per_round=21)


def test_make_federated_data_reuses_dataset_objects():
    data = ClientData.from_tensor_slices({cid: np.arange(3, dtype=np.float32) for cid in IDS})

    def batch(ds):
        return ds.batch(2)

    first = make_federated_data(data, ["c03", "c01"])
    assert first[0] is data.create_tf_dataset_for_client("c03")
    assert make_federated_data(data, ["c01"])[0] is first[1]
    batched = make_federated_data(data, ["c03", "c01"], preprocess=batch)
    again = make_federated_data(data, ["c01", "c03"], preprocess=batch)
    assert batched[0] is again[1] and batched[1] is again[0]
    assert [b.tolist() for b in batched[0].as_numpy_iterator()] == [[0.0, 1.0], [2.0]]
    with pytest.raises(KeyError, match="'nope'"):
        make_federated_data(data, ["nope"])


def test_federated_data_runs_on_the_tensorflow_executor_over_rounds():
    data = ClientData.from_tensor_slices(
        {cid: collections.OrderedDict(x=np.full(i + 1, float(i), np.float32)) for i, cid in enumerate(IDS)}
    )

    def batch(ds):
        return ds.batch(4)

    element = fedcore.to_type("<x=float32[?]>")

    @fedcore.tf_computation(fedcore.SequenceType(element))
    def client_sum(ds):
        return ds.reduce(0.0, lambda total, b: total + tf.reduce_sum(b["x"]))

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(element)))
    def total(client_datasets):
        return fedcore.federated_sum(fedcore.federated_map(client_sum, client_datasets))

    executor = TensorFlowExecutor()
    sampler = ClientSampler(data, clients_per_round=5, seed=0)
    with fedcore.execution_context(executor):
        for round_num in range(3):
            ids = sampler(round_num)
            expected = sum(int(cid[1:]) * (int(cid[1:]) + 1) for cid in ids)
            assert total(make_federated_data(data, ids, preprocess=batch)) == pytest.approx(expected)


def test_a_set_of_ids_is_sorted_so_the_draw_does_not_depend_on_the_hash_seed():
    ids = {f"client-{i}" for i in range(40)}
    # The set's own iteration order (which varies with PYTHONHASHSEED) is not the sorted one here.
    assert list(ids) != sorted(ids)
    chosen = sample_clients(ids, 40, round_num=1, seed=3)
    assert chosen == sample_clients(sorted(ids), 40, round_num=1, seed=3)
    assert ClientSampler(frozenset(ids), 5, seed=3)(2) == sample_clients(sorted(ids), 5, 2, seed=3)
    with pytest.raises(TypeError, match="cannot be sorted .*give the ids as a list"):
        sample_clients({"a", 1}, 1, round_num=0)


def test_repeated_ids_are_refused_since_the_draw_promises_distinct_clients():
    with pytest.raises(ValueError, match=r"must not repeat an id, but it holds 'c01' \(2 times\)"):
        sample_clients(["c00", "c01", "c01", "c02"], 2, round_num=0)
    with pytest.raises(ValueError, match=r"'a' \(3 times\)"):
        ClientSampler(["a", "a", "a", "b"], 1)
