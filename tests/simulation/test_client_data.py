import collections

import numpy as np
import pytest
import tensorflow as tf

from fedcore.simulation import ClientData, train_test_client_split


def small_data(num_clients=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"c{i}": collections.OrderedDict(
            label=np.arange(i + 1, dtype=np.int32),
            pixels=rng.random((i + 1, 28, 28)).astype(np.float32),
        )
        for i in range(num_clients)
    }


def labels_of(ds):
    return [int(e["label"]) for e in ds.as_numpy_iterator()]


# --------------------------------------------------------------------------
# from_tensor_slices


def test_from_tensor_slices_ids_types_and_contents():
    arrays = small_data()
    data = ClientData.from_tensor_slices({cid: arrays[cid] for cid in ["c3", "c1", "c0", "c2"]})
    assert data.client_ids == ["c0", "c1", "c2", "c3"]
    assert len(data) == 4 and "c2" in data and "c9" not in data
    assert str(data.element_type_structure) == "<label=int32,pixels=float32[28,28]>"
    assert data.element_spec == collections.OrderedDict(
        label=tf.TensorSpec([], tf.int32), pixels=tf.TensorSpec([28, 28], tf.float32)
    )
    elements = list(data.create_tf_dataset_for_client("c2").as_numpy_iterator())
    assert len(elements) == 3
    np.testing.assert_array_equal(elements[1]["pixels"], arrays["c2"]["pixels"][1])
    assert "ClientData of 4 clients" in repr(data) and "<label=int32,pixels=float32[28,28]>" in repr(data)


def test_client_ids_is_a_copy():
    data = ClientData.from_tensor_slices(small_data())
    data.client_ids.append("intruder")
    assert data.client_ids == ["c0", "c1", "c2", "c3"]


def test_datasets_are_memoized_per_client():
    data = ClientData.from_tensor_slices(small_data())
    first = data.create_tf_dataset_for_client("c1")
    assert data.create_tf_dataset_for_client("c1") is first
    assert data.create_tf_dataset_for_client("c2") is not first


def test_unknown_client_id_names_it_and_some_valid_ids():
    data = ClientData.from_tensor_slices(small_data())
    with pytest.raises(KeyError) as info:
        data.create_tf_dataset_for_client("nobody")
    message = str(info.value)
    assert "'nobody'" in message and "'c0'" in message and "4 clients" in message


def test_plain_dicts_keep_their_key_order_and_later_clients_follow_the_first():
    data = ClientData.from_tensor_slices(
        {
            "a": {"y": np.zeros(2, np.int32), "x": np.ones((2, 3), np.float32)},
            "b": {"x": np.ones((1, 3), np.float32), "y": np.zeros(1, np.int32)},
        }
    )
    assert str(data.element_type_structure) == "<y=int32,x=float32[3]>"
    assert list(data.create_tf_dataset_for_client("b").element_spec) == ["y", "x"]


def test_python_lists_convert_like_tensorflow_and_arrays_keep_their_dtype():
    data = ClientData.from_tensor_slices({"a": [1.0, 2.0], "b": [3.0]})
    assert str(data.element_type_structure) == "float32"
    data = ClientData.from_tensor_slices({"a": (np.zeros(2, np.float64), [1, 2])})
    assert str(data.element_type_structure) == "<float64,int32>"


def test_disagreeing_structures_name_both_clients():
    with pytest.raises(ValueError, match=r"same structure.*'a'.*'b'"):
        ClientData.from_tensor_slices(
            {"a": {"x": np.zeros(2), "y": np.zeros(2)}, "b": {"x": np.zeros(2)}}
        )


def test_disagreeing_dtypes_are_shown_in_the_notation():
    with pytest.raises(ValueError) as info:
        ClientData.from_tensor_slices(
            {"a": {"x": np.zeros((2, 3), np.float32)}, "b": {"x": np.zeros((2, 3), np.float64)}}
        )
    message = str(info.value)
    assert "'x'" in message and "float32[3]" in message and "float64[3]" in message
    assert "'a'" in message and "'b'" in message


def test_disagreeing_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"float32\[28,28\].*float32\[27,28\]"):
        ClientData.from_tensor_slices(
            {"a": {"p": np.zeros((2, 28, 28), np.float32)}, "b": {"p": np.zeros((2, 27, 28), np.float32)}}
        )


def test_a_clients_arrays_must_have_the_same_number_of_examples():
    with pytest.raises(ValueError, match=r"client 'a'.*'label' has 3.*'pixels' has 2"):
        ClientData.from_tensor_slices({"a": {"label": np.zeros(3), "pixels": np.zeros((2, 4))}})


def test_bad_inputs_to_from_tensor_slices():
    with pytest.raises(ValueError, match="at least one client"):
        ClientData.from_tensor_slices({})
    with pytest.raises(TypeError, match="client ids must be strings.*got 7"):
        ClientData.from_tensor_slices({7: np.zeros(2)})
    with pytest.raises(ValueError, match="scalar"):
        ClientData.from_tensor_slices({"a": {"x": np.float32(1.0)}})
    with pytest.raises(TypeError, match="expects a dict"):
        ClientData.from_tensor_slices([np.zeros(2)])


# --------------------------------------------------------------------------
# Iteration


def test_datasets_in_id_order_or_shuffled_by_seed():
    data = ClientData.from_tensor_slices(small_data(6))
    sizes = [len(labels_of(ds)) for ds in data.datasets()]
    assert sizes == [1, 2, 3, 4, 5, 6]
    assert [len(labels_of(ds)) for ds in data.datasets(limit_count=2)] == [1, 2]
    shuffled = [len(labels_of(ds)) for ds in data.datasets(seed=3)]
    assert sorted(shuffled) == sizes
    assert shuffled == [len(labels_of(ds)) for ds in data.datasets(seed=3)]
    assert any(
        [len(labels_of(ds)) for ds in data.datasets(seed=s)] != sizes for s in range(5)
    )


def test_dataset_from_all_clients_has_every_example_in_client_order():
    data = ClientData.from_tensor_slices(small_data(5))
    combined = data.create_tf_dataset_from_all_clients()
    assert labels_of(combined) == [0] + [0, 1] + [0, 1, 2] + [0, 1, 2, 3] + [0, 1, 2, 3, 4]
    shuffled = labels_of(data.create_tf_dataset_from_all_clients(seed=1))
    assert sorted(shuffled) == sorted(labels_of(combined))


def test_dataset_from_many_clients():
    data = ClientData.from_tensor_slices({f"c{i:03d}": np.full(2, i, np.int32) for i in range(300)})
    values = list(data.create_tf_dataset_from_all_clients().as_numpy_iterator())
    assert values == [i for i in range(300) for _ in range(2)]


# --------------------------------------------------------------------------
# from_clients_and_fn and preprocess


def test_from_clients_and_fn_builds_each_dataset_once_and_only_on_request():
    calls = []

    def make(cid):
        calls.append(cid)
        return tf.data.Dataset.range(int(cid[1:]))

    data = ClientData.from_clients_and_fn(["n3", "n1", "n2"], make)
    assert calls == [] and data.client_ids == ["n1", "n2", "n3"]
    assert ClientData.from_clients_and_tf_fn.__func__ is ClientData.from_clients_and_fn.__func__
    assert data.create_tf_dataset_for_client("n3") is data.create_tf_dataset_for_client("n3")
    assert calls == ["n3"]
    assert str(data.element_type_structure) == "int64"
    assert calls == ["n3", "n1"]  # the element spec comes from the first client


def test_dataset_fn_must_return_a_dataset():
    data = ClientData.from_clients_and_fn(["a"], lambda cid: [1, 2])
    with pytest.raises(TypeError, match="returned list for client 'a'"):
        data.create_tf_dataset_for_client("a")


def test_preprocess_memoizes_and_is_remembered_per_function():
    data = ClientData.from_tensor_slices(small_data())

    def batch(ds):
        return ds.batch(2)

    processed = data.preprocess(batch)
    assert data.preprocess(batch) is processed
    assert processed.create_tf_dataset_for_client("c3") is processed.create_tf_dataset_for_client("c3")
    assert str(processed.element_type_structure) == "<label=int32[?],pixels=float32[?,28,28]>"
    assert [len(b["label"]) for b in processed.create_tf_dataset_for_client("c2").as_numpy_iterator()] == [2, 1]
    assert processed.client_ids == data.client_ids
    # A different function gets its own ClientData.
    assert data.preprocess(lambda ds: ds.batch(2)) is not processed


def test_preprocess_must_return_a_dataset():
    data = ClientData.from_tensor_slices(small_data())

    def broken(ds):
        return 3

    with pytest.raises(TypeError, match="broken returned int for client 'c0'"):
        data.preprocess(broken).create_tf_dataset_for_client("c0")
    with pytest.raises(TypeError, match="preprocess expects a function"):
        data.preprocess("batch")


# --------------------------------------------------------------------------
# Splitting clients


def test_train_test_client_split_partitions_clients_and_shares_datasets():
    data = ClientData.from_tensor_slices(small_data(10))
    train, test = train_test_client_split(data, 3, seed=1)
    assert len(test) == 3 and len(train) == 7
    assert set(train.client_ids) | set(test.client_ids) == set(data.client_ids)
    assert not set(train.client_ids) & set(test.client_ids)
    cid = test.client_ids[0]
    assert test.create_tf_dataset_for_client(cid) is data.create_tf_dataset_for_client(cid)
    assert test.element_type_structure == data.element_type_structure
    again = train_test_client_split(data, 3, seed=1)[1]
    assert again.client_ids == test.client_ids
    assert any(train_test_client_split(data, 3, seed=s)[1].client_ids != test.client_ids for s in range(2, 6))
    with pytest.raises(KeyError, match="'c0'"):
        test.create_tf_dataset_for_client("c0") if "c0" not in test else train.create_tf_dataset_for_client("c0")


def test_train_test_client_split_checks_the_count():
    data = ClientData.from_tensor_slices(small_data(4))
    with pytest.raises(ValueError, match="num_test_clients=4 for a ClientData of 4 clients"):
        train_test_client_split(data, 4)
    with pytest.raises(ValueError, match="num_test_clients=0"):
        train_test_client_split(data, 0)


def test_subset_rejects_unknown_ids():
    data = ClientData.from_tensor_slices(small_data(4))
    with pytest.raises(KeyError, match="'zz'"):
        data.subset(["c1", "zz"])
