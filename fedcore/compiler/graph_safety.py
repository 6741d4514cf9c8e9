"""What a TensorFlow graph read from a file may hold: checked before TensorFlow sees it.

``check_graph_def(graph_def, label)`` raises ``SerializationError`` unless:

* every node, in the graph and in every function of its library, runs an op of
  ``ALLOWED_OPS`` (pure computation: no file, network, environment or
  printing ops, no variables or other state shared outside one call, no random
  ops other than the seeded stateless ones) or calls a function of the library;
* every function named anywhere (as a node's op, in a ``func`` attr such as
  ``PartitionedCall``'s ``f``, a ``While``'s ``body``, a dataset op's ``f``, or
  a gradient entry) is defined in the library, no library function shadows an
  op, and no function calls itself, directly or through others;
* every node's attrs are of the kinds its op declares, every dtype attr is a
  real, non-reference dtype, every shape is well formed, and every tensor attr
  (a ``Const``'s ``value``) holds as many values as its shape says, of the
  dtype its node declares;
* the graph stays within ``MAX_NODES`` nodes and ``MAX_FUNCTIONS`` functions, and
  its calls nest at most ``MAX_CALL_DEPTH`` deep.

The checks walk the graph with explicit stacks, never by recursion, so no graph
is too deep to check.  The list of ops is documented in docs/serialization.md.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import op_def_registry

from fedcore.compiler.serialization_values import SerializationError

__all__ = ["ALLOWED_OPS", "STATEFUL_ALLOWED_OPS", "MAX_NODES", "MAX_FUNCTIONS", "MAX_CALL_DEPTH", "MAX_TENSOR_ELEMENTS", "check_graph_def"]

# Ops fedcore's own computations produce (the conformance cases, federated averaging, SGD and
# evaluation with Keras models and fedcore's optimizers, the secure and DP aggregators, their
# deployment forms), and the common pure ops of the same families: arithmetic, array shaping,
# reductions, neural network layers and their gradients, control flow, function calls,
# in-memory datasets and seeded stateless random numbers.
_MATH = """
Abs Acos Acosh Add AddN AddV2 All Angle Any ArgMax ArgMin Asin Asinh Atan Atan2 Atanh BitwiseAnd BitwiseOr
BitwiseXor Invert LeftShift RightShift Ceil ClipByValue Complex ComplexAbs Conj Cos Cosh Cumprod Cumsum Digamma Div DivNoNan Equal Erf Erfc
EuclideanNorm Exp Expm1 Floor FloorDiv FloorMod Greater GreaterEqual Imag IsFinite IsInf IsNan L2Loss Less
LessEqual Lgamma Log Log1p LogicalAnd LogicalNot LogicalOr Max Maximum Mean Min Minimum Mod Mul MulNoNan Neg
NotEqual Pow Prod Real RealDiv Reciprocal ReciprocalGrad Round Rsqrt RsqrtGrad Sign Sin Sinh Sqrt SqrtGrad Square
SquaredDifference Sub Sum Tan Tanh TanhGrad TruncateDiv TruncateMod Xdivy Xlogy
MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum Cholesky MatrixBandPart MatrixDeterminant MatrixDiag
MatrixDiagPartV3 MatrixDiagV3 MatrixInverse MatrixSolve MatrixTriangularSolve Qr SelfAdjointEigV2 Svd
SegmentSum SparseSegmentSum UnsortedSegmentMax UnsortedSegmentSum Bucketize HistogramFixedWidth TopKV2
"""
_ARRAY = """
Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo Cast Concat ConcatOffset ConcatV2 Const EnsureShape
ExpandDims Fill Gather GatherNd GatherV2 Identity IdentityN InvertPermutation ListDiff MirrorPad NoOp OneHot
OnesLike Pack Pad PadV2 Placeholder PreventGradient Range Rank Reshape ReverseV2 ScatterNd Select SelectV2 Shape
ShapeN Size Slice Snapshot Split SplitV Squeeze StopGradient StridedSlice Tile Transpose Unique Unpack Where
ZerosLike
"""
_NN = """
AvgPool AvgPoolGrad BiasAdd BiasAddGrad Conv2D Conv2DBackpropFilter Conv2DBackpropInput DepthwiseConv2dNative
DepthwiseConv2dNativeBackpropFilter DepthwiseConv2dNativeBackpropInput Elu EluGrad FusedBatchNormV3
FusedBatchNormGradV3 LeakyRelu LeakyReluGrad LogSoftmax MaxPool MaxPoolGrad Relu Relu6 Relu6Grad ReluGrad Selu
SeluGrad Sigmoid SigmoidGrad Softmax SoftmaxCrossEntropyWithLogits Softplus SoftplusGrad Softsign
SparseSoftmaxCrossEntropyWithLogits
"""
_STRINGS = "AsString ReduceJoin StaticRegexReplace StringJoin StringLength StringToNumber Substr"
_RANDOM = """
StatelessMultinomial StatelessRandomGetKeyCounter StatelessRandomNormal StatelessRandomNormalV2
StatelessRandomUniform StatelessRandomUniformFullIntV2 StatelessRandomUniformInt StatelessRandomUniformIntV2
StatelessRandomUniformV2 StatelessTruncatedNormal StatelessTruncatedNormalV2
"""
_CONTROL = """
Assert Case CheckNumerics CheckNumericsV2 If PartitionedCall StatefulPartitionedCall StatelessCase StatelessIf
StatelessWhile While
TensorListElementShape TensorListFromTensor TensorListGetItem TensorListLength TensorListPopBack
TensorListPushBack TensorListReserve TensorListSetItem TensorListStack
"""
_DATASETS = """
BatchDatasetV2 ConcatenateDataset DatasetCardinality FilterDataset FlatMapDataset MapDataset ModelDataset
OptionsDataset PaddedBatchDatasetV2 ParallelMapDatasetV2 PrefetchDataset RangeDataset ReduceDataset
RepeatDataset ScanDataset SkipDataset TakeDataset TensorDataset TensorSliceDataset WindowDataset ZipDataset
"""
# Variables local to one call (a tf.Variable created inside a tf_computation): allowed only with
# TensorFlow's anonymous resource name, which gives every execution of the op a resource of its
# own, so they can never reach a variable, or state, outside the call (checked in check_nodes).
_LOCAL_VARIABLES = "VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp"
# TensorFlow's marker for an anonymous resource (tensorflow/core/framework/resource_mgr.h).
ANONYMOUS_NAME = "cd2c89b7-88b7-44c8-ad83-06c2a9158347"

ALLOWED_OPS = frozenset((_MATH + _ARRAY + _NN + _STRINGS + _RANDOM + _CONTROL + _DATASETS + " " + _LOCAL_VARIABLES).split())

# The allowed ops TensorFlow marks stateful, and why each is safe: control flow and calls
# (stateful only if their functions are, and those are checked), assertions (they fail the
# call, nothing more), and in-memory datasets (TensorFlow marks them stateful for
# historical reasons; they read only their inputs).
STATEFUL_ALLOWED_OPS = frozenset(
    "Assert Case CheckNumerics CheckNumericsV2 If While StatefulPartitionedCall "
    "RangeDataset ReduceDataset TensorDataset TensorSliceDataset ".split() + _LOCAL_VARIABLES.split()
)

MAX_NODES = 1_000_000
MAX_FUNCTIONS = 10_000
# The longest chain of function calls (TensorFlow recurses along it when it instantiates them).
MAX_CALL_DEPTH = 64
# The most elements a tensor attr (a constant) may declare: 2^28, 1 GiB of float32.
MAX_TENSOR_ELEMENTS = 1 << 28

# The AttrValue field each kind of attr in an OpDef is held in.
_ATTR_FIELDS = {
    "string": "s", "int": "i", "float": "f", "bool": "b", "type": "type", "shape": "shape", "tensor": "tensor",
    "func": "func",
}

_VALID_DTYPES = frozenset(v for v in types_pb2.DataType.values() if 0 < v < 100)
# Tensors a constant may not hold: handles to state, and variants (which can hold whole datasets).
_NO_CONSTANT_DTYPES = frozenset({types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT})

# dtype -> (the TensorProto field its values are listed in, numbers per element, bytes per element)
_VALUE_FIELDS: Dict[int, Tuple[str, int, int]] = {
    types_pb2.DT_FLOAT: ("float_val", 1, 4), types_pb2.DT_DOUBLE: ("double_val", 1, 8),
    types_pb2.DT_INT32: ("int_val", 1, 4), types_pb2.DT_UINT8: ("int_val", 1, 1), types_pb2.DT_INT16: ("int_val", 1, 2),
    types_pb2.DT_INT8: ("int_val", 1, 1), types_pb2.DT_UINT16: ("int_val", 1, 2), types_pb2.DT_QINT8: ("int_val", 1, 1),
    types_pb2.DT_QUINT8: ("int_val", 1, 1), types_pb2.DT_QINT16: ("int_val", 1, 2),
    types_pb2.DT_QUINT16: ("int_val", 1, 2), types_pb2.DT_QINT32: ("int_val", 1, 4),
    types_pb2.DT_INT64: ("int64_val", 1, 8), types_pb2.DT_UINT32: ("uint32_val", 1, 4),
    types_pb2.DT_UINT64: ("uint64_val", 1, 8), types_pb2.DT_BOOL: ("bool_val", 1, 1),
    types_pb2.DT_HALF: ("half_val", 1, 2), types_pb2.DT_BFLOAT16: ("half_val", 1, 2),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2, 8), types_pb2.DT_COMPLEX128: ("dcomplex_val", 2, 16),
    types_pb2.DT_STRING: ("string_val", 1, 0),
}
_ALL_VALUE_FIELDS = frozenset(f for f, _, _ in _VALUE_FIELDS.values()) | {"resource_handle_val", "variant_val"}


def _dtype_name(value: int) -> str:
    try:
        return types_pb2.DataType.Name(value)
    except ValueError:
        return str(value)


class _Checker:
    def __init__(self, graph_def: Any, label: str, check_ops: bool):
        self.label = label
        self.check_ops = check_ops
        self.graph_def = graph_def
        self.library: Dict[str, Any] = {}
        # function name (or None for the graph itself) -> the functions it names
        self.calls: Dict[Optional[str], Set[str]] = {}
        # ops not allowed -> where each is first used
        self.refused: Dict[str, str] = {}

    def fail(self, message: str) -> SerializationError:
        return SerializationError(f"TF computation {self.label}: {message}")

    def run(self) -> None:
        graph_def = self.graph_def
        library = graph_def.library
        if len(library.function) > MAX_FUNCTIONS:
            raise self.fail(f"its graph defines {len(library.function)} functions, more than {MAX_FUNCTIONS}")
        total = len(graph_def.node) + sum(len(f.node_def) for f in library.function)
        if total > MAX_NODES:
            raise self.fail(f"its graph has {total} nodes, more than {MAX_NODES}")
        for f in library.function:
            name = f.signature.name
            if not name:
                raise self.fail("its graph's library has a function without a name")
            if name in self.library:
                raise self.fail(f"its graph's library defines the function {name!r} twice")
            if op_def_registry.get(name) is not None:
                raise self.fail(f"its graph's library defines a function {name!r}, which is the name of an op")
            self.library[name] = f
            for arg in list(f.signature.input_arg) + list(f.signature.output_arg):
                if arg.type and arg.type not in _VALID_DTYPES:
                    raise self.fail(
                        f"its graph's function {name!r} has an argument {arg.name!r} of dtype {_dtype_name(arg.type)}, "
                        "which is not a dtype a graph may use"
                    )
        self.calls[None] = self.check_nodes(graph_def.node, "the graph")
        for name, f in self.library.items():
            self.calls[name] = self.check_nodes(f.node_def, f"function {name!r}")
        if self.refused:
            unknown = [op for op in self.refused if op_def_registry.get(op) is None]
            listed = ", ".join(f"{op!r} (in {where})" for op, where in sorted(self.refused.items()))
            raise self.fail(
                f"its graph uses the op{'s' if len(self.refused) > 1 else ''} {listed}, which fedcore does not load: "
                "loaded graphs may use only the pure ops listed in docs/serialization.md"
                + (f"; {', '.join(map(repr, sorted(unknown)))} {'is' if len(unknown) == 1 else 'are'} neither an op "
                   "nor a function of its library" if unknown else "")
            )
        for g in library.gradient:
            for name in (g.function_name, g.gradient_func):
                if name not in self.library:
                    raise self.fail(f"its graph's library names a gradient for {name!r}, a function it does not define")
            self.calls[g.function_name].add(g.gradient_func)
        self.check_no_recursion()

    def check_nodes(self, nodes: Any, where: str) -> Set[str]:
        called: Set[str] = set()
        for node in nodes:
            op = node.op
            if op in self.library:
                called.add(op)
                op_def = None
            elif op in ALLOWED_OPS or (not self.check_ops and op_def_registry.get(op) is not None):
                op_def = op_def_registry.get(op)
                if op_def is None:
                    raise self.fail(f"{where} uses the op {op!r}, which this TensorFlow does not have")
            else:
                self.refused.setdefault(op, where)
                continue
            declared = {a.name: a for a in op_def.attr} if op_def is not None else {}
            for attr_name, value in node.attr.items():
                if op_def is not None and not attr_name.startswith("_"):
                    if attr_name not in declared:
                        raise self.fail(f"{where}: node {node.name!r} ({op}) has an attr {attr_name!r} its op does not declare")
                    self.check_attr_kind(node, attr_name, value, declared[attr_name].type, where)
                called |= self.check_attr(node, attr_name, value, where)
            if op in ("Const", "HostConst"):
                self.check_const(node, where)
            if op == "VarHandleOp":
                self.check_local_variable(node, where)
        return called

    def check_local_variable(self, node: Any, where: str) -> None:
        shared = node.attr["shared_name"].s.decode("utf-8", "replace") if "shared_name" in node.attr else ""
        container = node.attr["container"].s.decode("utf-8", "replace") if "container" in node.attr else ""
        if shared != ANONYMOUS_NAME or container:
            raise self.fail(
                f"{where}: node {node.name!r} (VarHandleOp) names the variable resource "
                f"{(container + '/' if container else '') + shared!r}; a loaded graph may create only variables "
                "local to each call (TensorFlow's anonymous resource name), never a shared, named one"
            )

    def check_attr_kind(self, node: Any, attr_name: str, value: Any, kind: str, where: str) -> None:
        field = value.WhichOneof("value")
        if field == "placeholder":
            return
        is_list = kind.startswith("list(")
        inner = kind[5:-1] if is_list else kind
        expected = _ATTR_FIELDS.get(inner)
        ok = field == "list" if is_list else field == expected
        if is_list and ok:
            present = [f.name for f, _ in value.list.ListFields()]
            ok = all(p == expected for p in present)
        if not ok:
            raise self.fail(f"{where}: node {node.name!r} ({node.op}) has an attr {attr_name!r} that is not a {kind}")

    def check_attr(self, node: Any, attr_name: str, value: Any, where: str) -> Set[str]:
        """Checks an attr value (and the attrs nested in its function references); returns the functions it names."""
        called: Set[str] = set()
        stack = [value]
        while stack:
            v = stack.pop()
            field = v.WhichOneof("value")
            funcs: List[Any] = []
            if field == "type":
                self.check_dtype(v.type, node, attr_name, where)
            elif field == "shape":
                self.check_shape(v.shape, node, attr_name, where)
            elif field == "tensor":
                self.check_tensor(v.tensor, node, attr_name, where)
            elif field == "func":
                funcs = [v.func]
            elif field == "list":
                for t in v.list.type:
                    self.check_dtype(t, node, attr_name, where)
                for s in v.list.shape:
                    self.check_shape(s, node, attr_name, where)
                for t in v.list.tensor:
                    self.check_tensor(t, node, attr_name, where)
                funcs = list(v.list.func)
            for func in funcs:
                if func.name not in self.library:
                    raise self.fail(
                        f"{where}: node {node.name!r} ({node.op}) calls the function {func.name!r}, which its "
                        "graph's library does not define"
                    )
                called.add(func.name)
                stack.extend(func.attr.values())
        return called

    def check_dtype(self, dtype: int, node: Any, attr_name: str, where: str) -> None:
        if dtype not in _VALID_DTYPES:
            raise self.fail(
                f"{where}: node {node.name!r} ({node.op}) has the attr {attr_name!r} = {_dtype_name(dtype)}, "
                "which is not a dtype a graph may use"
            )

    def check_shape(self, shape: Any, node: Any, attr_name: str, where: str) -> None:
        if shape.unknown_rank and len(shape.dim):
            raise self.fail(f"{where}: node {node.name!r} ({node.op}): the shape {attr_name!r} is of unknown rank yet has dimensions")
        if len(shape.dim) > 254 or any(d.size < -1 for d in shape.dim):
            raise self.fail(f"{where}: node {node.name!r} ({node.op}): the shape {attr_name!r} is malformed")

    def check_tensor(self, tensor: Any, node: Any, attr_name: str, where: str) -> None:
        what = f"{where}: node {node.name!r} ({node.op}): the tensor {attr_name!r}"
        dtype = tensor.dtype
        if dtype not in _VALID_DTYPES or dtype in _NO_CONSTANT_DTYPES or dtype not in _VALUE_FIELDS:
            raise self.fail(f"{what} has dtype {_dtype_name(dtype)}, which a constant may not have")
        shape = tensor.tensor_shape
        if shape.unknown_rank or len(shape.dim) > 254 or any(d.size < 0 for d in shape.dim):
            raise self.fail(f"{what} has a malformed shape")
        elements = 1
        for d in shape.dim:
            elements *= d.size
            if elements > MAX_TENSOR_ELEMENTS:
                raise self.fail(f"{what} has more than {MAX_TENSOR_ELEMENTS} elements")
        field, per_element, itemsize = _VALUE_FIELDS[dtype]
        others = [f.name for f, _ in tensor.ListFields() if f.name in _ALL_VALUE_FIELDS and f.name != field]
        if others:
            raise self.fail(f"{what} is a {_dtype_name(dtype)} tensor but lists values in {', '.join(others)}")
        if tensor.tensor_content:
            if dtype == types_pb2.DT_STRING:
                raise self.fail(f"{what} is a string tensor with raw content")
            if getattr(tensor, field):
                raise self.fail(f"{what} holds both raw content and listed values")
            if len(tensor.tensor_content) != elements * itemsize:
                raise self.fail(
                    f"{what} holds {len(tensor.tensor_content)} bytes, but {elements} {_dtype_name(dtype)} elements "
                    f"take {elements * itemsize}"
                )
        else:
            count = len(getattr(tensor, field))
            if count % per_element or count > elements * per_element:
                raise self.fail(f"{what} lists {count} values for {elements} {_dtype_name(dtype)} elements")

    def check_const(self, node: Any, where: str) -> None:
        dtype, value = node.attr.get("dtype"), node.attr.get("value")
        if dtype is None or value is None or value.WhichOneof("value") != "tensor":
            raise self.fail(f"{where}: constant {node.name!r} lacks its dtype or value")
        if value.tensor.dtype != dtype.type:
            raise self.fail(
                f"{where}: constant {node.name!r} is declared {_dtype_name(dtype.type)} but holds a "
                f"{_dtype_name(value.tensor.dtype)} tensor"
            )

    def check_no_recursion(self) -> None:
        """Depth-first search with an explicit stack: a function reached again while still open is a cycle.

        Also bounds the longest chain of calls."""
        state: Dict[Optional[str], int] = {}  # 1: open, 2: done
        depth: Dict[Optional[str], int] = {}
        for root in self.calls:
            if root in state:
                continue
            path: List[Optional[str]] = [root]
            iters: List[Iterator[str]] = [iter(sorted(self.calls[root]))]
            state[root] = 1
            while iters:
                nxt = next(iters[-1], None)
                if nxt is None:
                    done = path.pop()
                    state[done] = 2
                    iters.pop()
                    # The longest chain of calls below ``done`` (its callees are all done by now).
                    depth[done] = 1 + max((depth[c] for c in self.calls.get(done, ())), default=0)
                    if depth[done] > MAX_CALL_DEPTH + 1:
                        raise self.fail(
                            f"its graph's functions call each other more than {MAX_CALL_DEPTH} levels deep"
                        )
                    continue
                seen = state.get(nxt)
                if seen == 1:
                    cycle = path[path.index(nxt):] + [nxt]
                    raise self.fail(
                        "its graph's library is recursive: " + " -> ".join(repr(c) for c in cycle)
                        + " (fedcore loads only functions that terminate in their structure)"
                    )
                if seen is None:
                    state[nxt] = 1
                    path.append(nxt)
                    iters.append(iter(sorted(self.calls.get(nxt, ()))))


def check_graph_def(graph_def: Any, label: str, check_ops: bool = True) -> None:
    """Raises SerializationError unless ``graph_def`` uses only allowed ops, defined functions and sound attrs.

    With ``check_ops=False`` (for graphs from a trusted source) any registered op is accepted;
    every other check still applies.
    """
    _Checker(graph_def, label, check_ops).run()
