"""Checkpoints: exact round trips, pruning, clear errors for bad files, and atomic writes under SIGKILL."""

import collections
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedcore import learning
from fedcore.learning import checkpoint as ckpt
from fedcore.learning.model import ModelWeights
from fedcore.learning.training import ServerState

ROOT = Path(__file__).resolve().parents[2]


def make_state(seed=0, size=(784, 10)):
    rng = np.random.default_rng(seed)
    trainable = collections.OrderedDict(
        [("dense/kernel", rng.normal(size=size).astype(np.float32)), ("dense/bias", rng.normal(size=10).astype(np.float32))]
    )
    non_trainable = collections.OrderedDict(step=np.int64(7), mean=np.float64(0.25))
    return ServerState(model=ModelWeights(trainable, non_trainable), optimizer_state=(np.int64(seed), np.float32(0.5)))


def assert_same_state(a, b):
    assert type(a) is type(b) and type(a.model) is type(b.model)
    assert list(a.model.trainable) == list(b.model.trainable)
    for x, y in zip(ckpt._nest.flatten(a), ckpt._nest.flatten(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


def test_round_trip_is_exact_and_keeps_containers(tmp_path):
    state = make_state(1)
    path = learning.save_checkpoint(tmp_path, state, 12, extra={"seed": 3, "rows": [{"loss": float("nan")}]})
    assert path.name == "checkpoint-00000012.fckpt"
    loaded = learning.load_checkpoint(path, template=make_state(0))
    assert loaded.round_num == 12 and loaded.path == path
    assert loaded.extra["seed"] == 3 and np.isnan(loaded.extra["rows"][0]["loss"])
    assert_same_state(loaded.state, state)
    # Without a template: plain data, named structs as dicts and unnamed ones as lists.
    raw = learning.load_checkpoint(tmp_path).state
    assert list(raw) == ["model", "optimizer_state"]
    assert np.array_equal(raw["model"]["trainable"]["dense/kernel"], state.model.trainable["dense/kernel"])
    assert raw["model"]["non_trainable"]["step"].dtype == np.int64 and len(raw["optimizer_state"]) == 2


def test_only_the_most_recent_are_kept_and_the_latest_is_loaded(tmp_path):
    for r in range(1, 8):
        learning.save_checkpoint(tmp_path, make_state(r), r, keep=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "checkpoint-00000005.fckpt", "checkpoint-00000006.fckpt", "checkpoint-00000007.fckpt"
    ]
    latest = learning.load_checkpoint(tmp_path, template=make_state())
    assert latest.round_num == 7
    assert_same_state(latest.state, make_state(7))


def test_manager_saves_every_n_rounds_and_at_the_end(tmp_path):
    manager = learning.CheckpointManager(tmp_path / "ckpts", every=3, keep=None)
    assert manager.restore() is None
    saved = [r for r in range(1, 9) if manager.maybe_save(make_state(r), r, final=r == 8) is not None]
    assert saved == [3, 6, 8]
    assert manager.restore(make_state()).round_num == 8
    with pytest.raises(ckpt.CheckpointError, match="every must be a whole number"):
        learning.CheckpointManager(tmp_path, every=-1)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "SHA-256 does not match"),
        (lambda p: p.write_bytes(p.read_bytes()[:50]), "truncated or empty"),
        (lambda p: p.write_bytes(b""), "only 0 bytes long"),
        (lambda p: _flip_byte(p, 5000), "SHA-256 does not match"),
        (lambda p: _flip_byte(p, 100), "SHA-256 does not match"),  # inside the JSON header
        (lambda p: p.write_bytes(b"PK\x03\x04" + p.read_bytes()), "does not start with the checkpoint marker"),
        (lambda p: p.write_bytes(b"FCCKPT02" + p.read_bytes()[8:]), "format version"),
    ],
)
def test_a_damaged_file_is_a_clear_error_naming_it(tmp_path, damage, message):
    path = learning.save_checkpoint(tmp_path, make_state(), 4)
    damage(path)
    with pytest.raises(learning.CheckpointError) as info:
        learning.load_checkpoint(path, template=make_state())
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_files_directories_and_other_structures_are_clear_errors(tmp_path):
    with pytest.raises(learning.CheckpointError, match="does not exist"):
        learning.load_checkpoint(tmp_path / "checkpoint-00000001.fckpt")
    with pytest.raises(learning.CheckpointError, match="holds no checkpoint"):
        learning.load_checkpoint(tmp_path)
    learning.save_checkpoint(tmp_path, make_state(), 1)
    with pytest.raises(learning.CheckpointError) as info:
        learning.load_checkpoint(tmp_path, template=make_state(size=(784, 5)))
    assert "state.model.trainable.dense/kernel is float32[784, 10] in the checkpoint but float32[784, 5]" in str(
        info.value
    )
    other = ServerState(model=ModelWeights(collections.OrderedDict(w=np.zeros(3, np.float32)), ()), optimizer_state=())
    with pytest.raises(learning.CheckpointError, match=r"has items \['dense/kernel', 'dense/bias'\] in the checkpoint"):
        learning.load_checkpoint(tmp_path, template=other)


def test_what_cannot_be_saved_is_refused_before_writing(tmp_path):
    with pytest.raises(learning.CheckpointError, match="only numbers are saved"):
        learning.save_checkpoint(tmp_path, {"name": "text"}, 1)
    with pytest.raises(learning.CheckpointError, match="plain JSON data"):
        learning.save_checkpoint(tmp_path, make_state(), 1, extra={"f": object()})
    with pytest.raises(learning.CheckpointError, match="round_num must be"):
        learning.save_checkpoint(tmp_path, make_state(), -1)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_before_the_rename_leaves_the_old_checkpoints(tmp_path, monkeypatch):
    learning.save_checkpoint(tmp_path, make_state(1), 1)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(learning.CheckpointError, match="checkpoint-00000002.fckpt: disk full; the previous checkpoint"):
        learning.save_checkpoint(tmp_path, make_state(2), 2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001.fckpt"]
    assert learning.load_checkpoint(tmp_path, template=make_state()).round_num == 1


def test_stale_temporary_files_are_ignored_and_cleaned_up(tmp_path):
    learning.save_checkpoint(tmp_path, make_state(1), 1)
    # What a writer killed mid-write leaves: a partial temporary file, from a process that no longer exists.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".tmp-checkpoint-00000002-{int(dead.stdout)}"
    stale.write_bytes(b"FCCKPT01" + b"0" * 10)
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000001.fckpt"
    learning.save_checkpoint(tmp_path, make_state(3), 3)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001.fckpt", "checkpoint-00000003.fckpt"]


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from fedcore.learning import checkpoint
    directory = sys.argv[1]
    latest = checkpoint.latest_checkpoint(directory)  # go on from what the last (killed) writer left
    r = checkpoint.load_checkpoint(latest).round_num if latest else 0
    while True:
        r += 1
        state = {"w": np.full((1024, 1024), r, np.float32), "step": np.int64(r)}
        checkpoint.save_checkpoint(directory, state, r, extra={"round": r}, keep=2)
        print(r, flush=True)
    """
)


def test_sigkill_during_writes_never_leaves_a_partial_checkpoint(tmp_path):
    """A writer saving 4 MiB checkpoints in a loop is killed at random moments; what it left always loads."""
    rng = random.Random(int(os.environ.get("FEDCORE_TEST_SEED", "0")))
    directory = tmp_path / "ckpts"
    last = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip().isdigit()  # this writer has saved at least once
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        found = ckpt.list_checkpoints(directory)
        assert found, "the writer saved checkpoints, but none is listed"
        for path in found:
            loaded = learning.load_checkpoint(path)
            r = loaded.round_num
            assert loaded.extra == {"round": r} and int(loaded.state["step"]) == r
            assert np.all(loaded.state["w"] == r)
        assert all(p.name.startswith((".tmp-checkpoint-", "checkpoint-")) for p in directory.iterdir())
        assert loaded.round_num > last  # each writer went on from where the previous one was killed
        last = loaded.round_num


def _file_with(header: bytes, payload: bytes) -> bytes:
    """A checkpoint file with a valid hash around an arbitrary header and payload (a crafted file)."""
    import hashlib

    body = ckpt._LEN.pack(len(header)) + header + payload
    return ckpt.MAGIC + hashlib.sha256(body).hexdigest().encode("ascii") + body


def test_crafted_files_with_a_valid_hash_are_still_checked(tmp_path):
    import io
    import json

    path = tmp_path / "checkpoint-00000001.fckpt"
    path.write_bytes(_file_with(b"{}", b""))
    with pytest.raises(learning.CheckpointError, match=r"header field the header: 'format' is a required property"):
        learning.load_checkpoint(path)
    header = {"format": "fedcore-checkpoint", "version": 1, "round": 1, "num_leaves": 1, "extra": {},
              "structure": {"leaf": 0, "dtype": "<f8", "shape": [1]}}
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)  # an object array needs pickle
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("leaf0.npy", pickled.getvalue())
    path.write_bytes(_file_with(json.dumps(header).encode(), archive.getvalue()))
    with pytest.raises(learning.CheckpointError) as info:
        learning.load_checkpoint(path)
    assert str(path) in str(info.value) and "its arrays cannot be read" in str(info.value)
    assert "allow_pickle" in str(info.value)


def _rewritten(path, change_header=None, payload=None):
    """``path`` rewritten with its header changed by ``change_header`` (and another payload), under a valid hash."""
    import json

    body = path.read_bytes()[len(ckpt.MAGIC) + 64 :]
    (length,) = ckpt._LEN.unpack_from(body)
    header = json.loads(body[ckpt._LEN.size : ckpt._LEN.size + length])
    if change_header is not None:
        header = change_header(header)
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(_file_with(header_bytes, body[ckpt._LEN.size + length :] if payload is None else payload))
    return path


def _set(keys, value):
    def change(header):
        node = header
        for key in keys[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        return header

    return change


_DELETE = object()


def _nested(depth):
    def change(header):
        node = {"leaf": 0, "dtype": "<f4", "shape": []}
        for _ in range(depth):
            node = {"container": "list", "names": [None], "items": [node]}
        return dict(header, structure=node, num_leaves=1)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_nested(400), "is nested more than 64 levels deep"),
        (lambda h: b'{"structure": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply to be read"),
        (_set(["num_leaves"], 0), "header field structure.items[0].items[0].items[0].leaf: leaf 0, but num_leaves is 0"),
        (_set(["num_leaves"], 9), "header field num_leaves: 9 leaves, but the structure has no leaf"),
        (_set(["structure", "items", 0, "items", 0, "items", 0, "dtype"], _DELETE),
         "header field structure.items[0].items[0].items[0]: 'dtype' is a required property"),
        (_set(["structure", "items", 0, "items", 0, "items", 0, "dtype"], "<U4"), "<U4 is not a number type"),
        (_set(["structure", "items", 0, "items", 0, "items", 0, "dtype"], "nonsense"),
         "'nonsense' is not a numpy dtype"),
        (_set(["structure", "items", 0, "items", 0, "items", 0, "shape"], [784, -10]),
         "header field structure.items[0].items[0].items[0].shape[1]: -10 is less than the minimum of 0"),
        (_set(["structure", "items", 0, "names"], ["trainable"]), "header field structure.items[0]: 1 names for 2"),
        (_set(["round"], "twelve"), "header field round: 'twelve' is not of type 'integer'"),
        (_set(["round"], 2.75), "header field round: 2.75 is not of type 'integer'"),
        (_set(["round"], 2.0), "header field round: 2.0 is not of type 'integer'"),
        (_set(["round"], -1), "header field round: -1 is less than the minimum of 0"),
        (_set(["extra"], [1, 2]), "header field extra: [1, 2] is not of type 'object'"),
        (_set(["version"], 2), "format 'fedcore-checkpoint' version 2, expected"),
        (lambda h: [h], "header field the header: [{"),
    ],
)
def test_crafted_headers_are_clear_errors_naming_the_file_and_field(tmp_path, change, message):
    path = _rewritten(learning.save_checkpoint(tmp_path, make_state(), 4), change)
    with pytest.raises(learning.CheckpointError) as info:
        learning.load_checkpoint(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_arrays_that_do_not_match_the_header_are_refused(tmp_path):
    import io

    path = learning.save_checkpoint(tmp_path, make_state(), 4)
    with np.load(io.BytesIO(_payload(path)), allow_pickle=False) as arrays:
        leaves = {name: arrays[name] for name in arrays.files}
    for name, value in leaves.items():
        if value.shape == (784, 10):
            kernel = name
    swapped = io.BytesIO()
    np.savez(swapped, **dict(leaves, **{kernel: np.arange(7, dtype=np.int64)}))
    _rewritten(path, payload=swapped.getvalue())
    with pytest.raises(learning.CheckpointError) as info:
        learning.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert f"(state.model.trainable.dense/kernel) says float32[784, 10], but the array stored for it ({kernel}) is int64[7]" in str(info.value)
    extra = io.BytesIO()
    np.savez(extra, **dict(leaves, leaf99=np.zeros(1)))
    _rewritten(path, payload=extra.getvalue())
    with pytest.raises(learning.CheckpointError, match="its arrays are .*'leaf99'.* but its header describes"):
        learning.load_checkpoint(path)


def _payload(path):
    body = path.read_bytes()[len(ckpt.MAGIC) + 64 :]
    (length,) = ckpt._LEN.unpack_from(body)
    return body[ckpt._LEN.size + length :]


def test_extra_is_checked_against_the_callers_schema(tmp_path):
    schema = {"type": "object", "required": ["seed"], "properties": {"seed": {"type": "integer"},
                                                                    "lr": {"type": "finite"}}}
    path = learning.save_checkpoint(tmp_path, make_state(), 1, extra={"seed": 3, "lr": 0.5})
    assert learning.load_checkpoint(path, extra_schema=schema).extra == {"seed": 3, "lr": 0.5}
    for extra, message in [({"seed": "3"}, "its metadata field extra.seed: '3' is not of type 'integer'"),
                           ({"seed": 3.0}, "extra.seed: 3.0 is not of type 'integer'"),
                           ({"seed": 1, "lr": float("nan")}, "extra.lr: nan is not of type 'finite'"),
                           ({}, "extra: 'seed' is a required property")]:
        path = learning.save_checkpoint(tmp_path, make_state(), 1, extra=extra)
        with pytest.raises(learning.CheckpointError) as info:
            learning.load_checkpoint(path, extra_schema=schema)
        assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import errno

    import fedcore._files

    learning.save_checkpoint(tmp_path, make_state(1), 1)
    real_open = open

    class FullDisk:
        """A file that takes the first 1000 bytes, then fails as a full disk does."""

        def __init__(self, path, mode):
            self.file = real_open(path, mode)

        def write(self, data):
            self.file.write(data[:1000])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(fedcore._files, "open", FullDisk, raising=False)
    with pytest.raises(learning.CheckpointError) as info:
        learning.save_checkpoint(tmp_path, make_state(2), 2)
    message = str(info.value)
    assert f"cannot write the checkpoint {tmp_path / 'checkpoint-00000002.fckpt'}: No space left on device" in message
    assert f"the previous checkpoint {tmp_path / 'checkpoint-00000001.fckpt'} is intact" in message
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001.fckpt"]  # no temporary file left
    assert_same_state(learning.load_checkpoint(tmp_path, template=make_state()).state, make_state(1))
    with pytest.raises(learning.CheckpointError, match="nested more than 64 levels"):
        deep = np.float32(1)
        for _ in range(40):
            deep = [deep]
        learning.save_checkpoint(tmp_path, deep, 3)
