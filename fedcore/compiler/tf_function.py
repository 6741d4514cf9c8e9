"""``TFFunction``: a user's TensorFlow code, traced once at a fedcore parameter type.

The traced tf.function takes and returns flat lists of leaves (tensors and
datasets) in fedcore's leaf order; the user's code sees and returns its own
structures.  The result type is inferred when the function is traced.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import tensorflow as tf

from fedcore.compiler import context
from fedcore.compiler import tf_bridge
from fedcore.structure import items_by_names, nests_deeper_than
from fedcore.types import MAX_DEPTH, SequenceType, StructType, TensorType, Type, TypeNestingError


class TFCalls:
    """The ``TensorFlowFunction`` protocol (see ``building_blocks``), shared by traced and imported functions.

    A subclass sets ``name``, ``parameter_type``, ``result_type``,
    ``concrete_function`` (the traced graph, taking and returning flat leaves)
    and ``_tf_function`` (the tf.function to call from other graphs), and
    implements ``_graph_parts()``.
    """

    _fingerprint: Optional[str] = None
    # The tf.Variables the function captured; they enter the fingerprint only by position.
    variables: Tuple[Any, ...] = ()

    def call_leaves(self, leaves: List[Any]) -> List[Any]:
        """Runs the traced function eagerly on flat leaves; returns flat result leaves."""
        out = self.concrete_function(*leaves)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def graph_call(self, leaves: List[Any]) -> List[Any]:
        """Calls the function from inside another graph being traced, on flat leaves."""
        out = self._tf_function(*leaves)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def call_structured(self, value: Any) -> Any:
        """Calls from inside other TF code being traced: takes and returns user structures."""
        leaves = leaves_of_user_value(value, self.parameter_type, self.name)
        out = self._tf_function(*leaves)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return tf_bridge.to_user_structure(tf_bridge.unflatten(out, self.result_type), self.result_type)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the function's content: its canonical GraphDef, inputs, outputs and types.

        Equal for two traces of the same code at the same types, in any
        process.  Captured tensors enter by their values; captured
        ``tf.Variable`` s, being mutable, only by their place in the graph:
        two functions of the same code over different variables share a
        fingerprint (``variables`` tells them apart).
        """
        if self._fingerprint is None:
            graph_def, inputs, outputs = self._graph_parts()
            self._fingerprint = tf_bridge.graph_fingerprint(
                graph_def, self.parameter_type, self.result_type, inputs, outputs,
                tf_bridge.captured_value_bytes(self._captured()),
            )
        return self._fingerprint

    def _graph_parts(self) -> Tuple[Any, List[str], List[str]]:
        """(GraphDef, names of the input tensors, names of the output tensors)."""
        raise NotImplementedError

    def _captured(self) -> List[Any]:
        """The tensors the graph captured from outside it (none for an imported graph)."""
        return []


class TFFunction(TFCalls):
    def __init__(self, python_fn: Callable, parameter_type: Optional[Type], unpack: bool, name: str):
        self.python_fn = python_fn
        self.parameter_type = parameter_type
        self.unpack = unpack
        self.name = name
        self.result_type: Optional[Type] = None
        self._writes_variables: Optional[bool] = None
        self._tf_function = tf.function(
            self._flat_call, input_signature=tf_bridge.flat_specs(parameter_type), autograph=True
        )
        location = context.user_location()
        self._too_deep: Optional[TypeNestingError] = None
        try:
            self.concrete_function = self._tf_function.get_concrete_function()
        except Exception as e:
            if self._too_deep is None and not isinstance(e, (TypeError, ValueError)):
                raise
            where = f"\n  at {location}" if location else ""
            if self._too_deep is not None:
                raise TypeNestingError(f"tf_computation {name}: {self._too_deep}{where}") from None
            raise TypeError(f"tf_computation {name} failed to trace at parameter type {parameter_type}: {e}{where}") from e

    @property
    def variables(self) -> Tuple[Any, ...]:
        """The variables the traced code captured (read or written), e.g. a model's ``tf.Variable`` s."""
        return tuple(self.concrete_function.variables)

    @property
    def writes_variables(self) -> bool:
        """Whether the traced code (or a function it calls) assigns to a variable.

        Such a computation is not a pure function of its inputs: its calls
        must run one at a time, in order; they cannot be vectorized (e.g. with
        ``tf.vectorized_map``) or run as parallel loop iterations.
        """
        if self._writes_variables is None:
            self._writes_variables = bool(self.variables) and _graph_writes_variables(
                self.concrete_function.graph.as_graph_def()
            )
        return self._writes_variables

    def _graph_parts(self) -> Tuple[Any, List[str], List[str]]:
        cf = self.concrete_function
        n_in = len(tf_bridge.flat_specs(self.parameter_type))
        return cf.graph.as_graph_def(), [t.name for t in cf.inputs[:n_in]], [t.name for t in cf.outputs]

    def _captured(self) -> List[Any]:
        return list(self.concrete_function.captured_inputs)

    def __repr__(self) -> str:
        return f"<TFFunction {self.name}: {self.parameter_type} -> {self.result_type}>"

    def _call_user(self, value: Any):
        user_value = None if value is None else tf_bridge.to_user_structure(value, self.parameter_type)
        with context.pushed(context.TFTracingContext(self.name)):
            if self.parameter_type is None:
                return self.python_fn()
            if self.unpack:
                return self.python_fn(*[v for v in user_value] if not isinstance(user_value, dict) else user_value.values())
            return self.python_fn(user_value)

    def _flat_call(self, *leaves):
        value = tf_bridge.unflatten(list(leaves), self.parameter_type)
        result = self._call_user(value)
        if nests_deeper_than(result, MAX_DEPTH):
            # Kept for __init__ to raise: AutoGraph would turn it into a StagingError.
            self._too_deep = TypeNestingError(
                f"its result nests more than MAX_DEPTH={MAX_DEPTH} levels deep (fedcore.types.MAX_DEPTH), "
                "the deepest a fedcore type may be"
            )
            raise self._too_deep
        result_type, result_leaves = tf_bridge.infer_tf_result(result)
        self.result_type = result_type
        return result_leaves


_WRITE_OP_PREFIXES = (
    "Assign",  # AssignVariableOp, AssignAddVariableOp, AssignSubVariableOp
    "ResourceApply",
    "ResourceSparseApply",
    "ResourceScatter",
    "ResourceStridedSliceAssign",
    "DestroyResourceOp",
)


def _graph_writes_variables(graph_def: Any) -> bool:
    """Whether any node of a GraphDef, or of a function in its library, writes a resource variable."""
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return any(node.op.startswith(_WRITE_OP_PREFIXES) for node in nodes)


def leaves_of_user_value(value: Any, t: Optional[Type], name: str) -> List[Any]:
    """The flat leaves (tensors, datasets) of a user's value of type ``t``, for calls from TF code."""
    if t is None:
        return []
    match t:
        case StructType():
            items = items_by_names(value, t.names())
            if items is None or len(items) != len(t):
                raise context.type_error(f"{name} expects a value of type {t}, got {value!r}")
            return [leaf for (_, v), e in zip(items, t) for leaf in leaves_of_user_value(v, e, name)]
        case SequenceType(element=e):
            if not isinstance(value, tf.data.Dataset):
                raise context.type_error(f"{name} expects a dataset of type {t}, got {value!r}")
            return [tf_bridge.conform_dataset(value, e)]
        case TensorType():
            return [tf.convert_to_tensor(value, dtype=t.tf_dtype)]
    raise context.type_error(f"{name} cannot take a value of type {t}")


_leaves_of_user_value = leaves_of_user_value  # the old private name, still used by forms
