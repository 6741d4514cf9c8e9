import hashlib
import io
import tarfile
import urllib.error

import h5py
import numpy as np
import pytest

from fedcore.simulation import DatasetDownloadError, DatasetFileError, load_hdf5
from fedcore.simulation.datasets import download, emnist

from tests.simulation.conftest import write_emnist_like

TRAIN, TEST = "fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5"


@pytest.fixture
def emnist_dir(tmp_path):
    train = write_emnist_like(tmp_path / TRAIN, {"f0001_14": 5, "f0000_07": 3, "f0002_33": 4}, seed=1)
    test = write_emnist_like(tmp_path / TEST, {"f0001_14": 2, "f0000_07": 1, "f0002_33": 2}, seed=2)
    return tmp_path, train, test


def test_load_from_path_reads_the_layout(emnist_dir):
    directory, written, _ = emnist_dir
    train, test = emnist.load_data(path=directory)
    assert train.client_ids == ["f0000_07", "f0001_14", "f0002_33"] == test.client_ids
    assert str(train.element_type_structure) == "<label=int32,pixels=float32[28,28]>"
    assert list(train.element_spec) == ["label", "pixels"]
    elements = list(train.create_tf_dataset_for_client("f0001_14").as_numpy_iterator())
    assert len(elements) == 5
    np.testing.assert_array_equal([e["label"] for e in elements], written["f0001_14"]["label"])
    np.testing.assert_array_equal(elements[4]["pixels"], written["f0001_14"]["pixels"][4])
    assert train.create_tf_dataset_for_client("f0001_14") is train.create_tf_dataset_for_client("f0001_14")
    assert len(list(test.create_tf_dataset_for_client("f0002_33"))) == 2
    with pytest.raises(KeyError, match="'f9999_99'.*'f0000_07'"):
        train.create_tf_dataset_for_client("f9999_99")


class ReadCounter:
    """Counts reads of array data through h5py's Dataset API, by array name."""

    def __init__(self, monkeypatch):
        self.reads = []
        for method in ("__getitem__", "read_direct", "__array__"):
            original = getattr(h5py.Dataset, method)
            monkeypatch.setattr(h5py.Dataset, method, self._wrap(original))

    def _wrap(self, original):
        counter = self

        def counted(dataset, *args, **kwargs):
            counter.reads.append(dataset.name)
            return original(dataset, *args, **kwargs)

        return counted


def test_loading_reads_no_array_data_and_a_client_reads_only_its_own(emnist_dir, monkeypatch):
    directory, _, _ = emnist_dir
    counter = ReadCounter(monkeypatch)
    train, test = emnist.load_data(path=directory)
    assert str(train.element_type_structure) == "<label=int32,pixels=float32[28,28]>"
    assert counter.reads == []
    train.create_tf_dataset_for_client("f0002_33")
    assert sorted(counter.reads) == ["/examples/f0002_33/label", "/examples/f0002_33/pixels"]
    train.create_tf_dataset_for_client("f0002_33")
    assert len(counter.reads) == 2  # memoized: not read again


def test_a_client_is_read_when_requested_not_when_loaded(emnist_dir):
    directory, written, _ = emnist_dir
    train, _ = emnist.load_data(path=directory)
    # Change one client's pixels on disk after loading, in place, through a second handle.
    with h5py.File(directory / TRAIN, "r") as f:
        offset = f["examples/f0000_07/pixels"].id.get_offset()
    assert offset is not None  # contiguous storage: the bytes lie at one place in the file
    changed = np.full((3, 28, 28), 0.25, np.float32)
    with open(directory / TRAIN, "r+b") as raw:
        raw.seek(offset)
        raw.write(changed.tobytes())
    pixels = np.stack([e["pixels"] for e in train.create_tf_dataset_for_client("f0000_07").as_numpy_iterator()])
    np.testing.assert_array_equal(pixels, changed)


def test_missing_files_in_path_name_the_files_and_the_directory(tmp_path):
    write_emnist_like(tmp_path / TRAIN, {"a": 1})
    with pytest.raises(FileNotFoundError) as info:
        emnist.load_data(path=tmp_path)
    message = str(info.value)
    assert TEST in message and str(tmp_path) in message and TRAIN in message
    with pytest.raises(NotADirectoryError, match="directory that holds"):
        emnist.load_data(path=tmp_path / TRAIN)


def test_full_emnist_uses_its_own_file_names(tmp_path):
    write_emnist_like(tmp_path / "fed_emnist_train.h5", {"w1": 2}, num_classes=62)
    write_emnist_like(tmp_path / "fed_emnist_test.h5", {"w1": 1}, num_classes=62)
    train, test = emnist.load_data(only_digits=False, path=tmp_path)
    assert train.client_ids == ["w1"] and len(list(test.create_tf_dataset_for_client("w1"))) == 1


def test_a_corrupt_file_is_named_with_its_problem(emnist_dir):
    directory, _, _ = emnist_dir
    (directory / TEST).write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(DatasetFileError) as info:
        emnist.load_data(path=directory)
    assert str(directory / TEST) in str(info.value)
    assert "not a readable HDF5 file" in str(info.value)
    assert info.value.path == str(directory / TEST)


def test_a_truncated_file_is_named(emnist_dir):
    directory, _, _ = emnist_dir
    data = (directory / TRAIN).read_bytes()
    (directory / TRAIN).write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetFileError, match=f"{TRAIN}"):
        train, _ = emnist.load_data(path=directory)
        for cid in train.client_ids:
            train.create_tf_dataset_for_client(cid)


def _write(path, build):
    with h5py.File(path, "w") as f:
        build(f)


@pytest.mark.parametrize(
    "build, problem",
    [
        (lambda f: f.create_group("clients"), "expected a top-level group 'examples'.*found 'clients'"),
        (lambda f: f.create_group("examples"), "holds no clients"),
        (
            lambda f: f.create_dataset("examples/a/label", data=np.zeros(2, np.int32)),
            "examples/a has no array 'pixels'; found 'label'",
        ),
        (
            lambda f: (
                f.create_dataset("examples/a/label", data=np.zeros(2, np.int32)),
                f.create_dataset("examples/a/pixels", data=np.zeros((2, 28, 28), np.float64)),
            ),
            r"examples/a/pixels should hold examples of type float32\[28,28\], but holds float64\[28,28\]",
        ),
        (
            lambda f: (
                f.create_dataset("examples/a/label", data=np.zeros(2, np.int32)),
                f.create_dataset("examples/a/pixels", data=np.zeros((2, 784), np.float32)),
            ),
            r"should hold examples of type float32\[28,28\], but holds float32\[784\]",
        ),
        (
            lambda f: (
                f.create_dataset("examples/a/label", data=np.zeros(3, np.int32)),
                f.create_dataset("examples/a/pixels", data=np.zeros((2, 28, 28), np.float32)),
            ),
            "label has 3 examples, pixels has 2 examples",
        ),
    ],
)
def test_wrong_layouts_are_named(tmp_path, build, problem):
    _write(tmp_path / TRAIN, build)
    write_emnist_like(tmp_path / TEST, {"a": 1})
    with pytest.raises(DatasetFileError, match=problem) as info:
        emnist.load_data(path=tmp_path)
    assert str(tmp_path / TRAIN) in str(info.value)


def test_a_later_client_with_a_wrong_layout_is_named_when_requested(emnist_dir):
    directory, _, _ = emnist_dir
    with h5py.File(directory / TRAIN, "r+") as f:
        del f["examples/f0002_33/label"]
    train, _ = emnist.load_data(path=directory)
    train.create_tf_dataset_for_client("f0000_07")
    with pytest.raises(DatasetFileError, match="examples/f0002_33 has no array 'label'"):
        train.create_tf_dataset_for_client("f0002_33")


def test_load_hdf5_without_a_layout_takes_the_first_clients(tmp_path):
    with h5py.File(tmp_path / "any.h5", "w") as f:
        for cid, n in (("b", 2), ("a", 3)):
            f.create_dataset(f"examples/{cid}/y", data=np.arange(n, dtype=np.int64))
            f.create_dataset(f"examples/{cid}/x", data=np.ones((n, 2), np.float32))
    data = load_hdf5(tmp_path / "any.h5")
    assert str(data.element_type_structure) == "<x=float32[2],y=int64>"
    assert len(list(data.create_tf_dataset_for_client("a"))) == 3
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_hdf5(tmp_path / "missing.h5")


# --------------------------------------------------------------------------
# The cache and the download, with the network replaced.


def _archive_bytes(directory, names, folder="fed_emnist_digitsonly"):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        for name in names:
            tar.add(directory / name, arcname=f"{folder}/{name}")
    return buffer.getvalue()


def test_files_already_in_the_cache_are_used_without_downloading(emnist_dir, monkeypatch):
    directory, _, _ = emnist_dir
    monkeypatch.setattr(download, "fetch", lambda url, destination: pytest.fail("downloaded"))
    train, _ = emnist.load_data(cache_dir=directory)
    assert len(train.client_ids) == 3


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCORE_DATA_DIR", str(tmp_path / "data"))
    assert download.default_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("FEDCORE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == tmp_path / "xdg" / "fedcore" / "datasets"


def test_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, destination):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download, "fetch", offline)
    cache = tmp_path / "cache"
    with pytest.raises(DatasetDownloadError) as info:
        emnist.load_data(cache_dir=cache)
    message = str(info.value)
    assert "https://storage.googleapis.com/tff-datasets-public/fed_emnist_digitsonly.tar.bz2" in message
    assert "no network" in message
    assert f"copy the two files into {cache}" in message and TRAIN in message and TEST in message
    assert "path=DIR" in message and "--emnist DIR" in message
    assert not any(cache.iterdir())  # no partial download left behind


def test_a_corrupt_download_fails_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", lambda url, destination: destination.write_bytes(b"garbage"))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetFileError) as info:
        emnist.load_data(cache_dir=cache)
    message = str(info.value)
    assert "fed_emnist_digitsonly.tar.bz2" in message and "sha256" in message
    assert hashlib.sha256(b"garbage").hexdigest() in message and emnist.ARCHIVES[True][1] in message
    assert not any(cache.iterdir())


def test_a_verified_download_is_unpacked_into_the_cache(emnist_dir, tmp_path, monkeypatch):
    source, written, _ = emnist_dir
    payload = _archive_bytes(source, [TRAIN, TEST])
    monkeypatch.setitem(emnist.ARCHIVES, True, ("fed_emnist_digitsonly", hashlib.sha256(payload).hexdigest()))
    fetched = []

    def fake_fetch(url, destination):
        fetched.append(url)
        destination.write_bytes(payload)

    monkeypatch.setattr(download, "fetch", fake_fetch)
    cache = tmp_path / "cache"
    train, test = emnist.load_data(cache_dir=cache)
    assert fetched == [emnist.URL_BASE + "fed_emnist_digitsonly.tar.bz2"]
    assert (cache / TRAIN).is_file() and (cache / TEST).is_file()
    labels = [e["label"] for e in train.create_tf_dataset_for_client("f0000_07").as_numpy_iterator()]
    np.testing.assert_array_equal(labels, written["f0000_07"]["label"])
    emnist.load_data(cache_dir=cache)
    assert len(fetched) == 1  # the second load uses the cache


def test_an_archive_without_the_files_is_named(emnist_dir, tmp_path, monkeypatch):
    source, _, _ = emnist_dir
    payload = _archive_bytes(source, [TRAIN])
    monkeypatch.setitem(emnist.ARCHIVES, True, ("fed_emnist_digitsonly", hashlib.sha256(payload).hexdigest()))
    monkeypatch.setattr(download, "fetch", lambda url, destination: destination.write_bytes(payload))
    with pytest.raises(DatasetFileError, match=f"does not contain \\['{TEST}'\\]") as info:
        emnist.load_data(cache_dir=tmp_path / "cache")
    assert "fed_emnist_digitsonly.tar.bz2" in str(info.value)
