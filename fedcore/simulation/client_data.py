"""``ClientData``: a federated data set, one ``tf.data.Dataset`` per client id.

A ClientData is a sorted list of client ids and a function that builds a
client's dataset.  Datasets are immutable, so each client's dataset is built
once and the same object is returned on every later request: building one may
read a file (see ``load_hdf5``).  Nothing else depends on that identity: the
TensorFlow executor keys what it reads from a dataset by the dataset's
content, so a client sampled again in a later round costs nothing to read
either way.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fedcore.types import Type, to_type

DatasetFn = Callable[[str], tf.data.Dataset]

# How many preprocessing functions a ClientData remembers (see ClientData.preprocess).
_PREPROCESS_CACHE_SIZE = 8


def _check_client_ids(client_ids: Iterable[Any], where: str) -> List[str]:
    if isinstance(client_ids, (str, bytes)):
        raise TypeError(f"{where}: client_ids must be a collection of strings, got the single string {client_ids!r}")
    try:
        ids = list(client_ids)
    except TypeError:
        raise TypeError(f"{where}: client_ids must be a collection of strings, got {client_ids!r}") from None
    for cid in ids:
        if not isinstance(cid, str):
            raise TypeError(
                f"{where}: client ids must be strings, got {cid!r} of Python type {type(cid).__name__}"
            )
    duplicates = sorted({cid for cid in ids if ids.count(cid) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise ValueError(f"{where}: client ids must be unique; repeated: {duplicates[:5]}")
    return sorted(ids)


def _some_ids(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"[{shown}{more}]"


class ClientData:
    """A federated data set: client ids and, for each, a ``tf.data.Dataset``.

    ``dataset_fn(client_id)`` builds a client's dataset; it is called at most
    once per client, and ``create_tf_dataset_for_client`` returns that same
    object afterwards.  ``element_spec`` (a nested ``tf.TensorSpec``
    structure) may be given, or a zero-argument function returning it; by
    default it is read from the first client's dataset when first asked for.
    """

    def __init__(
        self,
        client_ids: Iterable[str],
        dataset_fn: DatasetFn,
        element_spec: Any = None,
    ):
        if not callable(dataset_fn):
            raise TypeError(f"dataset_fn must be callable as dataset_fn(client_id), got {dataset_fn!r}")
        self._client_ids = _check_client_ids(client_ids, "ClientData")
        self._id_set = frozenset(self._client_ids)
        self._dataset_fn = dataset_fn
        self._spec_source = element_spec
        self._element_spec = None if callable(element_spec) else element_spec
        self._datasets: Dict[str, tf.data.Dataset] = {}
        self._preprocessed: "collections.OrderedDict[Any, ClientData]" = collections.OrderedDict()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------
    # Constructors.

    @classmethod
    def from_clients_and_fn(cls, client_ids: Iterable[str], dataset_fn: DatasetFn) -> "ClientData":
        """A ClientData whose datasets are ``dataset_fn(client_id)``, built on first request."""
        return cls(client_ids, dataset_fn)

    # The name TensorFlow Federated users know.
    from_clients_and_tf_fn = from_clients_and_fn

    @classmethod
    def from_tensor_slices(cls, tensor_slices: Mapping[str, Any]) -> "ClientData":
        """A ClientData from in-memory arrays: ``{client_id: arrays}``.

        Each client's value is an array or a (nested) dict, OrderedDict, tuple
        or list of arrays whose first dimension indexes its examples, as for
        ``tf.data.Dataset.from_tensor_slices``.  All clients must have the same
        structure, dtypes and per-example shapes.  numpy arrays keep their
        dtype; Python lists and scalars convert as TensorFlow converts them
        (``float`` -> float32, ``int`` -> int32).
        """
        if not isinstance(tensor_slices, Mapping):
            raise TypeError(
                "ClientData.from_tensor_slices expects a dict {client_id: arrays}, got "
                f"{type(tensor_slices).__name__}"
            )
        if not tensor_slices:
            raise ValueError("ClientData.from_tensor_slices needs at least one client; got an empty dict")
        ids = _check_client_ids(tensor_slices.keys(), "ClientData.from_tensor_slices")
        arrays = {cid: _client_arrays(cid, tensor_slices[cid]) for cid in ids}
        reference_id = ids[0]
        reference = arrays[reference_id]
        for cid in ids[1:]:
            _check_same_layout(reference_id, reference, cid, arrays[cid])
            # Same order of dict keys as the first client, so that every element_spec is the same.
            arrays[cid] = tf.nest.pack_sequence_as(reference, tf.nest.flatten(arrays[cid]))

        def dataset_fn(client_id: str) -> tf.data.Dataset:
            return tf.data.Dataset.from_tensor_slices(arrays[client_id])

        spec = tf.data.Dataset.from_tensor_slices(reference).element_spec
        return cls(ids, dataset_fn, element_spec=spec)

    # ------------------------------------------------------------------
    # Reading.

    @property
    def client_ids(self) -> List[str]:
        """The client ids, sorted (a new list each time)."""
        return list(self._client_ids)

    def __len__(self) -> int:
        return len(self._client_ids)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._id_set

    @property
    def element_spec(self) -> Any:
        """The nested ``tf.TensorSpec`` structure of one element of a client's dataset."""
        if self._element_spec is None:
            with self._lock:
                if self._element_spec is None:
                    if callable(self._spec_source):
                        self._element_spec = self._spec_source()
                    elif not self._client_ids:
                        raise ValueError("a ClientData with no clients has no element_spec")
                    else:
                        self._element_spec = self.create_tf_dataset_for_client(self._client_ids[0]).element_spec
        return self._element_spec

    @property
    def element_type_structure(self) -> Type:
        """The element type in fedcore's notation, e.g. ``<label=int32,pixels=float32[28,28]>``."""
        return to_type(self.element_spec)

    def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
        """The client's dataset; the same object on every call with the same id."""
        if not isinstance(client_id, str):
            raise TypeError(f"client ids are strings, got {client_id!r} of Python type {type(client_id).__name__}")
        dataset = self._datasets.get(client_id)
        if dataset is not None:
            return dataset
        if client_id not in self._id_set:
            raise KeyError(
                f"unknown client id {client_id!r}; this ClientData has {len(self._client_ids)} clients, "
                f"e.g. {_some_ids(self._client_ids)}"
            )
        with self._lock:
            dataset = self._datasets.get(client_id)
            if dataset is None:
                dataset = self._dataset_fn(client_id)
                if not isinstance(dataset, tf.data.Dataset):
                    raise TypeError(
                        f"the dataset function of this ClientData returned {type(dataset).__name__} for client "
                        f"{client_id!r}; expected a tf.data.Dataset"
                    )
                self._datasets[client_id] = dataset
        return dataset

    def datasets(self, limit_count: Optional[int] = None, seed: Optional[int] = None) -> Iterator[tf.data.Dataset]:
        """Yields client datasets: in client id order, or shuffled by ``seed``; at most ``limit_count``."""
        ids = self._ordered_ids(seed)
        if limit_count is not None:
            if isinstance(limit_count, bool) or not isinstance(limit_count, (int, np.integer)):
                raise TypeError(f"limit_count must be an int or None, got {limit_count!r}")
            if limit_count < 0:
                raise ValueError(f"limit_count must be non-negative, got {limit_count}")
            ids = ids[:limit_count]
        for cid in ids:
            yield self.create_tf_dataset_for_client(cid)

    def create_tf_dataset_from_all_clients(self, seed: Optional[int] = None) -> tf.data.Dataset:
        """Every client's examples in one dataset: clients in id order, or in an order shuffled by ``seed``.

        Examples keep their order within each client.
        """
        if not self._client_ids:
            raise ValueError("a ClientData with no clients has no examples to combine")
        datasets = [self.create_tf_dataset_for_client(cid) for cid in self._ordered_ids(seed)]
        # Concatenate as a balanced tree: a chain of thousands of concatenations is slow to iterate.
        while len(datasets) > 1:
            paired = [a.concatenate(b) for a, b in zip(datasets[0::2], datasets[1::2])]
            if len(datasets) % 2:
                paired.append(datasets[-1])
            datasets = paired
        return datasets[0]

    def _ordered_ids(self, seed: Optional[int]) -> List[str]:
        ids = list(self._client_ids)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(ids))
            ids = [ids[i] for i in order]
        return ids

    # ------------------------------------------------------------------
    # Derived ClientData.

    def preprocess(self, fn: Callable[[tf.data.Dataset], tf.data.Dataset]) -> "ClientData":
        """A ClientData whose datasets are ``fn(dataset)`` for this one's datasets.

        The result memoizes its datasets too.  Calling ``preprocess`` again with
        the same function object returns the same ClientData (the last few
        functions are remembered), so a preprocessed client dataset is built
        once however often it is asked for.  Pass a named function, not a new
        lambda each round, to save rebuilding it (the executor's cache hits
        either way: it is keyed by content).
        """
        if not callable(fn):
            raise TypeError(f"preprocess expects a function from tf.data.Dataset to tf.data.Dataset, got {fn!r}")
        with self._lock:
            try:
                cached = self._preprocessed.get(fn)
            except TypeError:  # unhashable callable: nothing to remember it by
                return self._build_preprocessed(fn)
            if cached is not None:
                self._preprocessed.move_to_end(fn)
                return cached
            result = self._build_preprocessed(fn)
            self._preprocessed[fn] = result
            while len(self._preprocessed) > _PREPROCESS_CACHE_SIZE:
                self._preprocessed.popitem(last=False)
            return result

    def _build_preprocessed(self, fn) -> "ClientData":
        parent = self
        name = getattr(fn, "__qualname__", None) or repr(fn)

        def dataset_fn(client_id: str) -> tf.data.Dataset:
            result = fn(parent.create_tf_dataset_for_client(client_id))
            if not isinstance(result, tf.data.Dataset):
                raise TypeError(
                    f"the preprocessing function {name} returned {type(result).__name__} for client "
                    f"{client_id!r}; it must return a tf.data.Dataset"
                )
            return result

        return ClientData(self._client_ids, dataset_fn)

    def subset(self, client_ids: Iterable[str]) -> "ClientData":
        """A ClientData of some of these clients; it shares this one's dataset objects."""
        ids = _check_client_ids(client_ids, "ClientData.subset")
        unknown = [cid for cid in ids if cid not in self._id_set]
        if unknown:
            raise KeyError(
                f"unknown client ids {_some_ids(unknown)}; this ClientData has {len(self._client_ids)} clients, "
                f"e.g. {_some_ids(self._client_ids)}"
            )
        return ClientData(ids, self.create_tf_dataset_for_client, element_spec=lambda: self.element_spec)

    def __repr__(self) -> str:
        if self._element_spec is not None or callable(self._spec_source):
            try:
                element = f", element type {self.element_type_structure}"
            except Exception:  # noqa: BLE001 - repr must not fail
                element = ""
        else:
            element = ""
        return f"<ClientData of {len(self._client_ids)} clients{element}>"


def train_test_client_split(
    client_data: ClientData, num_test_clients: int, seed: Optional[int] = 0
) -> Tuple[ClientData, ClientData]:
    """Splits the clients (not their examples) into a train and a test ClientData.

    ``num_test_clients`` clients, drawn with ``seed``, go to the test set, the
    rest to the train set.  Both share ``client_data``'s dataset objects.
    """
    if not isinstance(client_data, ClientData):
        raise TypeError(f"train_test_client_split expects a ClientData, got {type(client_data).__name__}")
    total = len(client_data)
    if isinstance(num_test_clients, bool) or not isinstance(num_test_clients, (int, np.integer)):
        raise TypeError(f"num_test_clients must be an int, got {num_test_clients!r}")
    if not 1 <= num_test_clients < total:
        raise ValueError(
            f"num_test_clients must be at least 1 and leave at least 1 client for training; got "
            f"num_test_clients={num_test_clients} for a ClientData of {total} clients"
        )
    ids = client_data._ordered_ids(seed if seed is not None else 0)
    test_ids, train_ids = ids[:num_test_clients], ids[num_test_clients:]
    return client_data.subset(train_ids), client_data.subset(test_ids)


# --------------------------------------------------------------------------
# Validation for from_tensor_slices.


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.numpy()
    try:
        return tf.convert_to_tensor(value).numpy()
    except (TypeError, ValueError):
        return np.asarray(value)


def _normalize(value: Any) -> Any:
    """Arrays at the leaves; as in tf.data, a list is one array while dicts and tuples are structures."""
    if isinstance(value, Mapping):
        items = [(k, _normalize(v)) for k, v in value.items()]
        return collections.OrderedDict(items) if isinstance(value, collections.OrderedDict) else dict(items)
    if isinstance(value, tuple):
        items = [_normalize(v) for v in value]
        return type(value)(*items) if hasattr(type(value), "_fields") else tuple(items)
    return _to_array(value)


def _client_arrays(client_id: str, value: Any) -> Any:
    """The client's structure with numpy arrays at the leaves; checks one leading dimension."""
    if value is None:
        raise TypeError(f"client {client_id!r} has no data (None); give an array or a dict of arrays")
    try:
        converted = _normalize(value)
    except ValueError as e:  # e.g. ragged nested lists: numpy's message names no client
        raise ValueError(f"client {client_id!r}: its data cannot be made into arrays: {e}") from None
    paths_and_leaves = _leaves_with_paths(converted)
    sizes = {}
    for path, leaf in paths_and_leaves:
        if leaf.ndim == 0:
            raise ValueError(
                f"client {client_id!r}: {path} is a scalar; each value needs a first dimension indexing the "
                "client's examples"
            )
        if leaf.dtype == object:
            raise TypeError(f"client {client_id!r}: {path} has no single numeric or string dtype")
        sizes[path] = leaf.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{p} has {n}" for p, n in sizes.items())
        raise ValueError(f"client {client_id!r}: all values must have the same number of examples; {listing}")
    return converted


def _paths(structure: Any, prefix: str) -> List[str]:
    """Leaf paths like ``pixels`` or ``0/x``, in tf.nest.flatten's order (dict keys sorted)."""
    join = (lambda key: f"{prefix}/{key}") if prefix else str
    if isinstance(structure, Mapping):
        return [p for key in sorted(structure) for p in _paths(structure[key], join(key))]
    if isinstance(structure, (list, tuple)):
        return [p for i, item in enumerate(structure) for p in _paths(item, join(i))]
    return [prefix]


def _leaves_with_paths(structure: Any) -> List[Tuple[str, np.ndarray]]:
    paths = _paths(structure, "")
    leaves = tf.nest.flatten(structure)
    if len(paths) != len(leaves):  # a container tf.nest knows and we do not: fall back to positions
        paths = [str(i) for i in range(len(leaves))]
    return [(f"'{p}'" if p else "the data", leaf) for p, leaf in zip(paths, leaves)]


def _describe(structure: Any) -> str:
    leaves = _leaves_with_paths(structure)
    return "; ".join(f"{p}: {to_type((leaf.dtype, leaf.shape[1:]))}" for p, leaf in leaves)


def _check_same_layout(ref_id: str, ref: Any, cid: str, arrays: Any) -> None:
    try:
        tf.nest.assert_same_structure(ref, arrays, check_types=True)
    except (ValueError, TypeError):
        raise ValueError(
            f"all clients must have the same structure of arrays; client {ref_id!r} has "
            f"{_describe(ref)} ({type(ref).__name__}), but client {cid!r} has {_describe(arrays)} "
            f"({type(arrays).__name__})"
        ) from None
    for (path, a), (_, b) in zip(_leaves_with_paths(ref), _leaves_with_paths(arrays)):
        if a.dtype != b.dtype or a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"all clients must agree on dtypes and per-example shapes; {path} is "
                f"{to_type((a.dtype, a.shape[1:]))} for client {ref_id!r} but {to_type((b.dtype, b.shape[1:]))} "
                f"for client {cid!r}"
            )
