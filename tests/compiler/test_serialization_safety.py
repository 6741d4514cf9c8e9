"""Loading hostile files: crafted content with valid checksums is refused with a SerializationError, never run."""

import os
import pathlib
import re

import pytest
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

import fedcore
from fedcore import cli
from fedcore.compiler import graph_safety, serialization
from fedcore.compiler.serialization import SerializationError, deserialize, serialize
from fedcore.runtime.tensorflow import TensorFlowExecutor
from tests.compiler import serialization_attacks as attacks

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "serialization.md"


def _files(directory):
    return sorted(os.listdir(directory))


@pytest.mark.parametrize(
    "build, ops",
    [
        (attacks.writes_a_file, ["WriteFile"]),
        (attacks.reads_a_file, ["ReadFile"]),
        (attacks.lists_files, ["MatchingFiles"]),
        (attacks.prints, ["PrintV2", "StringFormat"]),
    ],
    ids=["write", "read", "list", "print"],
)
def test_file_and_print_ops_are_refused_on_load(tmp_path, build, ops):
    (tmp_path / "secret.txt").write_text("hidden")
    data = build(str(tmp_path))
    before = _files(tmp_path)
    with pytest.raises(SerializationError, match="innocent: its graph uses the op") as e:
        deserialize(data)
    for op in ops:
        assert repr(op) in str(e.value)
    assert "docs/serialization.md" in str(e.value)
    assert _files(tmp_path) == before


def test_printing_to_stderr_is_refused(capfd):
    with pytest.raises(SerializationError, match="'PrintV2'"):
        deserialize(attacks.prints_to_stderr())
    assert attacks.PRINT_MARKER not in capfd.readouterr().err


def test_saving_refuses_what_loading_would_refuse(tmp_path):
    @fedcore.tf_computation(tf.float32)
    def leaky(x):
        with tf.control_dependencies([tf.io.write_file(str(tmp_path / "x"), "x")]):
            return tf.identity(x)

    with pytest.raises(SerializationError, match="leaky: its graph uses the op 'WriteFile'"):
        serialize(leaky)


def _in_a_function(tmp_path, where):
    path = str(tmp_path / "from_a_function.txt")
    if where == "while body":
        @fedcore.tf_computation(tf.float32)
        def loop(x):
            def body(i, v):
                with tf.control_dependencies([tf.io.write_file(path, "x")]):
                    return i + 1, v + 1.0
            return tf.while_loop(lambda i, v: i < 3, body, (0, x))[1]
        return loop
    if where == "dataset map":
        @fedcore.tf_computation(tf.float32)
        def mapped(x):
            ds = tf.data.Dataset.range(2).map(lambda i: tf.strings.length(tf.io.read_file(path)))
            return ds.reduce(x, lambda acc, n: acc + tf.cast(n, tf.float32))
        return mapped
    @tf.function(autograph=False)
    def helper(v):
        with tf.control_dependencies([tf.io.write_file(path, "x")]):
            return v * 2.0

    @fedcore.tf_computation(tf.float32)
    def calls(x):
        return helper(x)
    return calls


@pytest.mark.parametrize("where", ["while body", "dataset map", "called function"])
def test_ops_inside_library_functions_are_checked(tmp_path, where):
    comp = _in_a_function(tmp_path, where)
    data = attacks.unchecked_serialize(comp)
    with pytest.raises(SerializationError, match=r"'(WriteFile|ReadFile)' \(in function '"):
        deserialize(data)
    assert _files(tmp_path) == []


def test_pure_control_flow_datasets_and_calls_load_and_run():
    @fedcore.tf_computation(tf.float32)
    def pure(x):
        looped = tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 2.0), (0, x))[1]
        ds = tf.data.Dataset.range(4).map(lambda i: tf.cast(i, tf.float32))
        summed = ds.reduce(looped, lambda acc, n: acc + n)
        return tf.cond(summed > 0.0, lambda: summed, lambda: -summed)

    assert float(deserialize(serialize(pure))(1.0)) == float(pure(1.0)) == 14.0
    assert float(deserialize(attacks.calls_a_function())(1.0)) == 3.0


@pytest.mark.parametrize("mutual", [False, True], ids=["direct", "mutual"])
def test_a_recursive_library_is_refused(mutual):
    with pytest.raises(SerializationError, match="library is recursive: '__inference_inner_\\d+' -> ") as e:
        deserialize(attacks.recursive_library(mutual))
    assert str(e.value).count("->") == (2 if mutual else 1)


def test_a_long_chain_of_calls_is_refused_and_a_short_one_runs():
    # TensorFlow recurses along such a chain: some thousands deep kill the process.
    limit = graph_safety.MAX_CALL_DEPTH
    with pytest.raises(SerializationError, match=f"call each other more than {limit} levels deep"):
        deserialize(attacks.call_chain(limit - 1))
    # double(1.0), then + 1.0 in the caller and in each of its limit - 2 copies.
    assert float(deserialize(attacks.call_chain(limit - 2))(1.0)) == 2.0 + (limit - 1)


def test_an_undefined_function_is_refused():
    with pytest.raises(SerializationError, match="calls the function 'no_such_function', which its graph's library"):
        deserialize(attacks.undefined_function())


def test_a_constant_contradicting_its_dtype_or_shape_is_refused():
    with pytest.raises(SerializationError, match="constant 'add/y' is declared DT_FLOAT but holds a DT_INT32 tensor"):
        deserialize(attacks.contradicting_const("dtype"))
    with pytest.raises(SerializationError, match="holds 12 bytes, but 4 DT_FLOAT elements take 16"):
        deserialize(attacks.contradicting_const("content"))


def test_bad_attr_kinds_dtypes_and_huge_constants_are_refused():
    def set_attr(name, **field):
        def change(graph_def):
            node = next(n for n in graph_def.node if n.op == "AddV2")
            node.attr[name].Clear()
            for k, v in field.items():
                setattr(node.attr[name], k, v)
        return change

    plain = attacks.plain()
    for change, pattern in (
        (set_attr("T", i=3), "attr 'T' that is not a type"),
        (set_attr("T", type=101), "'T' = DT_FLOAT_REF, which is not a dtype"),
        (set_attr("T", type=999), "'T' = 999, which is not a dtype"),
        (set_attr("bogus", i=1), "has an attr 'bogus' its op does not declare"),
    ):
        with pytest.raises(SerializationError, match=pattern):
            deserialize(attacks.rewrite(plain, change_graph=change))

    def huge(graph_def):
        tensor = next(n for n in graph_def.node if n.op == "Const").attr["value"].tensor
        tensor.tensor_shape.dim.add().size = 1 << 20
        tensor.tensor_shape.dim.add().size = 1 << 20

    with pytest.raises(SerializationError, match="more than 268435456 elements"):
        deserialize(attacks.rewrite(plain, change_graph=huge))


def test_a_deeply_nested_header_is_refused():
    for depth in (serialization.MAX_JSON_DEPTH + 1, 3000, 200_000):
        with pytest.raises(SerializationError, match=f"its header nests {depth + 1} levels deep, more than the 512"):
            deserialize(attacks.deep_header(depth))


def test_deep_ir_is_refused_and_ir_within_the_limit_loads_and_runs():
    # deep_ir(n) nests 2n + 2 IR nodes.
    with pytest.raises(SerializationError, match="nests"):
        deserialize(attacks.deep_ir(3000))
    with pytest.raises(SerializationError, match=f"its IR nests more than {serialization.MAX_IR_DEPTH} levels"):
        deserialize(attacks.deep_ir(serialization.MAX_IR_DEPTH // 2))
    loaded = deserialize(attacks.deep_ir(serialization.MAX_IR_DEPTH // 2 - 1))
    assert loaded(5) == 5
    with fedcore.execution_context(TensorFlowExecutor()):
        assert loaded(6) == 6
    assert cli.describe(loaded).startswith("computation deep: (int32 -> int32)")


class _Counting:
    """Counts graphs imported into TF and ImportedTFFunctions built while loading."""

    def __init__(self, monkeypatch):
        self.graphs = self.functions = 0
        graph_init, function_init = serialization._ImportedGraph.__init__, serialization.ImportedTFFunction.__init__

        def count_graph(inner, *args, **kwargs):
            self.graphs += 1
            graph_init(inner, *args, **kwargs)

        def count_function(inner, *args, **kwargs):
            self.functions += 1
            function_init(inner, *args, **kwargs)

        monkeypatch.setattr(serialization._ImportedGraph, "__init__", count_graph)
        monkeypatch.setattr(serialization.ImportedTFFunction, "__init__", count_function)


def test_entries_sharing_a_graph_import_it_once(monkeypatch):
    counting = _Counting(monkeypatch)
    loaded = deserialize(attacks.shared_entries(1000))
    assert (counting.graphs, counting.functions) == (1, 1)
    assert list(loaded(1.0)) == [1.5] * 1000

    def rename(header):
        for i, meta in enumerate(header["functions"]):
            meta["name"] = f"copy_{i}"

    renamed = attacks.rewrite(attacks.shared_entries(300), change_header=rename)
    counting.graphs = counting.functions = 0
    loaded = deserialize(renamed)
    assert (counting.graphs, counting.functions) == (1, 1)
    names = {node.function.name for node in fedcore.compiler.building_blocks.walk(loaded.ir)
             if isinstance(node, fedcore.compiler.building_blocks.TensorFlowComputation)}
    assert names == {f"copy_{i}" for i in range(300)}
    assert list(loaded(2.0)) == [2.5] * 300


def test_too_many_or_unused_function_entries_are_refused():
    header, sections = attacks.split(attacks.plain())
    many = dict(header, functions=[header["functions"][0]] * (serialization.MAX_FUNCTION_ENTRIES + 1))
    with pytest.raises(SerializationError, match="4097 TF computations, more than the 4096"):
        deserialize(attacks.pack(many, sections, fix_offsets=False))
    unused = dict(header, functions=[header["functions"][0]] * 2)
    with pytest.raises(SerializationError, match="TF computation number 1 \\(add_half\\) is not used"):
        deserialize(attacks.pack(unused, sections, fix_offsets=False))


# --------------------------------------------------------------------------
# The allowlist.

_NEVER = {
    "WriteFile", "ReadFile", "MatchingFiles", "PrintV2", "Print", "Save", "SaveV2", "Restore", "RestoreV2",
    "ImmutableConst", "VarHandleOpV2", "VariableV2", "TFRecordDataset", "TextLineDataset",
    "FixedLengthRecordDataset", "SaveDataset", "LoadDataset", "CacheDatasetV2", "SnapshotDatasetV2",
    "PyFunc", "EagerPyFunc", "RandomUniform", "RandomStandardNormal", "RandomShuffle", "ShuffleDatasetV3",
    "InitializeTableFromTextFileV2", "WriteSummary", "CreateSummaryFileWriter", "DebugIdentityV2", "RemoteCall",
    "_Send", "_Recv",
}


def test_the_allowlist_holds_registered_pure_ops_only():
    assert not _NEVER & graph_safety.ALLOWED_OPS
    for op in sorted(graph_safety.ALLOWED_OPS):
        op_def = op_def_registry.get(op)
        assert op_def is not None, op
        if op_def.is_stateful:
            assert op in graph_safety.STATEFUL_ALLOWED_OPS, op
    assert graph_safety.STATEFUL_ALLOWED_OPS <= graph_safety.ALLOWED_OPS


def test_the_docs_list_exactly_the_allowed_ops():
    text = DOCS.read_text()
    section = text[text.index("<!-- allowed ops -->"):text.index("<!-- end of allowed ops -->")]
    assert set(re.findall(r"`(\w+)`", section)) == graph_safety.ALLOWED_OPS


# --------------------------------------------------------------------------
# `fedcore inspect` on bad files.


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda d: attacks.recursive_library(), "library is recursive"),
        (lambda d: attacks.recursive_library(True), "library is recursive"),
        (lambda d: attacks.contradicting_const(), "is declared DT_FLOAT"),
        (lambda d: attacks.deep_header(3000), "its header nests"),
        (lambda d: attacks.deep_ir(3000), "nests"),
        (attacks.writes_a_file, "'WriteFile'"),
        (lambda d: b"junk", "missing the FEDCORE-COMPUTATION signature"),
        (lambda d: attacks.plain()[:-1], "tampered"),
    ],
    ids=["recursive", "mutually-recursive", "const", "deep-header", "deep-ir", "writes", "junk", "truncated"],
)
def test_inspect_exits_2_with_one_line_on_a_bad_file(tmp_path, monkeypatch, capsys, build, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.fedcore").write_bytes(build(str(tmp_path)))
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "bad.fedcore"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n")
    assert captured.err.startswith("fedcore inspect: error: argument FILE: bad.fedcore is not a fedcore file: ")
    assert message in captured.err
    assert _files(tmp_path) == before


def test_trusted_bytes_may_use_any_registered_op_but_keep_every_other_check():
    @fedcore.tf_computation(tf.float32)
    def noisy(x):
        return x + tf.random.uniform([], seed=1) * 0.0

    with pytest.raises(SerializationError, match="'RandomUniform'"):
        serialize(noisy)
    data = serialize(noisy, trusted=True)
    with pytest.raises(SerializationError, match="'RandomUniform' \\(in the graph\\)"):
        deserialize(data)
    assert float(deserialize(data, trusted=True)(2.0)) == 2.0
    with pytest.raises(SerializationError, match="library is recursive"):
        deserialize(attacks.recursive_library(), trusted=True)
    with pytest.raises(SerializationError, match="is declared DT_FLOAT"):
        deserialize(attacks.contradicting_const(), trusted=True)


def test_a_named_variable_resource_is_refused_but_call_local_variables_load():
    @fedcore.tf_computation(tf.float32)
    def scaled(x):
        v = tf.Variable(x)  # local to each call
        v.assign_add(1.0)
        return v.read_value() * 2.0

    blob = serialization.serialize(scaled)
    assert serialization.deserialize(blob)(3.0) == pytest.approx(8.0)

    # The same file, with its variable renamed to a shared resource that would outlive the call.
    assert graph_safety.ANONYMOUS_NAME.encode() in blob
    tampered = attacks.rewrite(blob, change_graph=lambda g: _rename_variables(g, b"shared_state"))
    with pytest.raises(serialization.SerializationError, match=r"VarHandleOp\) names the variable resource 'shared_state'"):
        serialization.deserialize(tampered)


def _rename_variables(graph_def, name):
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op == "VarHandleOp":
            node.attr["shared_name"].s = name
