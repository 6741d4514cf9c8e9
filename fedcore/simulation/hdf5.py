"""ClientData read lazily from an HDF5 file: ``/examples/<client id>/<name>`` arrays.

The file is opened when the ClientData is made, which reads only its index:
client ids, array names, dtypes and shapes.  A client's arrays are read when
its dataset is first requested.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from fedcore._extras import require
from fedcore.simulation.client_data import ClientData
from fedcore.simulation.errors import DatasetFileError
from fedcore.types import to_type

if TYPE_CHECKING:
    import h5py

# name -> (dtype, shape of one example)
Layout = Mapping[str, Tuple[Any, Tuple[int, ...]]]


def _show(dtype: Any, shape: Tuple[int, ...]) -> str:
    try:
        return str(to_type((np.dtype(dtype), tuple(shape))))
    except TypeError:
        return f"{dtype}{list(shape)}"


def load_hdf5(path: Union[str, Path], group: str = "examples", layout: Optional[Layout] = None) -> ClientData:
    """A ClientData over the HDF5 file ``path``, one client per subgroup of ``group``.

    Each client's subgroup holds arrays whose first dimension indexes its
    examples; an element of its dataset is an OrderedDict of one example of
    each array.  ``layout`` (an ordered mapping of name to (dtype, shape of
    one example)) fixes the expected arrays and their order; without it, the
    first client's arrays define the layout, in name order.

    Raises FileNotFoundError for a missing file and DatasetFileError, naming
    the file, when it is not HDF5 or not laid out as described; a
    ModuleNotFoundError naming the ``datasets`` extra when h5py is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    h5py = require("h5py", "datasets", "reading client data from HDF5 files")
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise DatasetFileError(path, f"not a readable HDF5 file ({_reason(e)})") from None
    try:
        examples = handle.get(group)
        if not isinstance(examples, h5py.Group):
            found = ", ".join(repr(k) for k in handle.keys()) or "nothing"
            raise DatasetFileError(path, f"expected a top-level group {group!r} with one subgroup per client; found {found}")
        client_ids = list(examples.keys())
        if not client_ids:
            raise DatasetFileError(path, f"group {group!r} holds no clients")
        if layout is None:
            first = _client_arrays(path, examples, sorted(client_ids)[0], None)
            layout = collections.OrderedDict((name, (ds.dtype, ds.shape[1:])) for name, ds in first.items())
        else:
            layout = collections.OrderedDict((name, (np.dtype(d), tuple(s))) for name, (d, s) in layout.items())
            _client_arrays(path, examples, sorted(client_ids)[0], layout)
    except BaseException:
        handle.close()
        raise

    spec = collections.OrderedDict(
        (name, tf.TensorSpec(shape, tf.dtypes.as_dtype(dtype))) for name, (dtype, shape) in layout.items()
    )

    def dataset_fn(client_id: str) -> tf.data.Dataset:
        arrays = _client_arrays(path, examples, client_id, layout)
        values = collections.OrderedDict()
        for name, ds in arrays.items():
            try:
                values[name] = ds[()]
            except (OSError, ValueError, RuntimeError) as e:
                raise DatasetFileError(path, f"cannot read {group}/{client_id}/{name} ({_reason(e)})") from None
        return tf.data.Dataset.from_tensor_slices(values)

    data = ClientData(client_ids, dataset_fn, element_spec=spec)
    data._hdf5_file = handle  # keeps the file open as long as the ClientData lives
    return data


def _client_arrays(path: Path, examples: h5py.Group, client_id: str, layout: Optional[Layout]):
    """The h5py datasets of one client, checked against ``layout``; reads no array data."""
    import h5py  # imported by load_hdf5 already, which made ``examples``

    where = f"{examples.name.lstrip('/')}/{client_id}"
    try:
        group = examples[client_id]
    except (KeyError, OSError) as e:
        raise DatasetFileError(path, f"cannot open {where} ({_reason(e)})") from None
    if not isinstance(group, h5py.Group):
        raise DatasetFileError(path, f"{where} should be a group of arrays, but it is a single array")
    names = list(layout) if layout is not None else sorted(group.keys())
    arrays = collections.OrderedDict()
    for name in names:
        item = group.get(name)
        if not isinstance(item, h5py.Dataset):
            found = ", ".join(repr(k) for k in group.keys()) or "nothing"
            raise DatasetFileError(path, f"{where} has no array {name!r}; found {found}")
        arrays[name] = item
    if not arrays:
        raise DatasetFileError(path, f"{where} holds no arrays")
    if layout is not None:
        extra = sorted(set(group.keys()) - set(layout))
        if extra:
            raise DatasetFileError(path, f"{where} has unexpected arrays {extra}; expected only {list(layout)}")
        for name, (dtype, shape) in layout.items():
            ds = arrays[name]
            if len(ds.shape) == 0 or ds.dtype != dtype or tuple(ds.shape[1:]) != tuple(shape):
                raise DatasetFileError(
                    path,
                    f"{where}/{name} should hold examples of type {_show(dtype, shape)}, but holds "
                    f"{_show(ds.dtype, ds.shape[1:]) if ds.shape else _show(ds.dtype, ()) + ' (a scalar)'}",
                )
    counts = {name: (ds.shape[0] if ds.shape else None) for name, ds in arrays.items()}
    if len(set(counts.values())) > 1 or None in counts.values():
        listing = ", ".join(f"{n} has {c if c is not None else 'no'} examples" for n, c in counts.items())
        raise DatasetFileError(path, f"{where}: arrays must have the same number of examples; {listing}")
    return arrays


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
