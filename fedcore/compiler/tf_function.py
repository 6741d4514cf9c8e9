"""``TFFunction``: a user's TensorFlow code, traced once at a fedcore parameter type.

The traced tf.function takes and returns flat lists of leaves (tensors and
datasets) in fedcore's leaf order; the user's code sees and returns its own
structures.  The result type is inferred when the function is traced.

A ``tf.Variable`` created while the function is traced (by the user's code, a
Keras model or layer, a Keras optimizer's slots, a nested ``tf.function``) is
local to the function, as in TFF: every call creates it anew and initialises
it from its initial value, which may depend on the function's parameters.  So
the function stays a pure function of its arguments, and no state passes from
one call to the next.  Variables created outside and captured keep TF's
meaning: they persist, and a function that assigns them is stateful
(``writes_variables``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, List, Optional, Tuple

import tensorflow as tf
from tensorflow.python.autograph.core import ag_ctx
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import converter as autograph_converter
from tensorflow.python.autograph.impl import api as autograph_api
from tensorflow.python.autograph.core import config_lib as autograph_rules
from tensorflow.python.eager import lift_to_graph
from tensorflow.python.framework import op_def_registry
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import gen_resource_variable_ops, resource_variable_ops
from tensorflow.python.util import _pywrap_util_port

from fedcore.compiler import additive, context
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
    _creates_variables: Optional[bool] = None
    _stateful_ops: Optional[frozenset] = None
    _pools_gradients: Optional[bool] = None
    _separate: Optional[dict] = None  # ``_separate_call``'s wrappers, by the wrapped tf.function's id
    # The tf.Variables the function captured; they enter the fingerprint only by position.
    variables: Tuple[Any, ...] = ()
    # A reduction step's masked form (``computation.with_masked_form``), or None.  It does not enter the
    # fingerprint: it computes what the step computes, and only lets an executor pad partial batches.
    masked_form: Optional["TFCalls"] = None

    @property
    def creates_variables(self) -> bool:
        """Whether the function (or one it calls) creates ``tf.Variable`` s: each call makes its own.

        Such a function stays pure, but ``tf.vectorized_map`` cannot run it
        for all clients at once: executors run it client by client.
        """
        if self._creates_variables is None:
            self._creates_variables = graph_creates_variables(self._graph_parts()[0])
        return self._creates_variables

    @property
    def stateful_ops(self) -> frozenset:
        """The types of the stateful ops in the traced graph and in the functions it calls."""
        if self._stateful_ops is None:
            self._stateful_ops = stateful_op_types(self._graph_parts()[0])
        return self._stateful_ops

    def call_leaves(self, leaves: List[Any]) -> List[Any]:
        """Runs the traced function eagerly on flat leaves; returns flat result leaves."""
        out = self.concrete_function(*leaves)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def graph_call(self, leaves: List[Any]) -> List[Any]:
        """Calls the function from inside another graph being traced, on flat leaves.

        Inside ``static_shapes()``, leaves whose shapes are more static than the
        parameter type's call a trace at those shapes where the function can
        be traced again (``_at_shapes``).
        """
        fn = self._tf_function
        if _STATIC.active:
            fn = self._at_shapes(leaves) or fn
            if self.pools_gradients:
                fn = self._separate_call(fn)
        out = fn(*leaves)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    @property
    def pools_gradients(self) -> bool:
        """Whether the traced graph takes the gradient of a max-pool (or of a local response normalization).

        Where oneDNN rewrites the graph (TensorFlow's x86 builds), the gradient
        gets oneDNN's kernel only if the rewrite meets the forward op first;
        in a loop's graph, which is cyclic, the order it walks the ops varies
        from process to process, and Eigen's kernel, several times slower,
        runs where it did not.  Inside ``static_shapes()`` such a function is
        called as a function of its own (``_separate_call``).
        """
        if self._pools_gradients is None:
            nodes = _graph_nodes(self._graph_parts()[0])
            self._pools_gradients = _ONEDNN and any(n.op in _PAIRED_GRADIENTS for n in nodes)
        return self._pools_gradients

    def _separate_call(self, fn: Any) -> Any:
        """``fn`` (one of this function's tf.functions, with an input signature) called as a function
        of its own, not inlined: its graph is rewritten without the loop around it, and the rewrite
        meets a forward op before its gradient.  A call per batch costs microseconds, against
        milliseconds for a convolutional step.  Kept as long as the function is."""
        if self._separate is None:
            self._separate = {}
        key = id(fn)
        if key not in self._separate:
            self._separate[key] = tf.function(lambda *leaves: fn(*leaves), input_signature=fn.input_signature,
                                              autograph=False, experimental_attributes={"_noinline": True})
        return self._separate[key]

    def _at_shapes(self, leaves: List[Any]) -> Optional[Callable[..., Any]]:
        return None

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

    _passthrough: Optional[Tuple[Optional[int], ...]] = None

    @property
    def passthrough(self) -> Tuple[Optional[int], ...]:
        """For each result leaf, the parameter leaf it returns unchanged (through Identity ops only), or None.

        An executor may keep such a value out of a loop that calls the function
        again and again: it never changes.  An Identity that waits for other
        ops (TensorFlow makes a function's results wait for its stateful ops:
        an assert, say) still returns its input unchanged; an executor that
        leaves out every call of a function whose results all pass through
        must check that it has no stateful ops (``stateful_ops``) to run.
        """
        if self._passthrough is None:
            graph_def, inputs, outputs = self._graph_parts()
            nodes = {node.name: node for node in graph_def.node}
            position = {name if ":" in name else name + ":0": i for i, name in enumerate(inputs)}

            def source(tensor: str) -> Optional[int]:
                for _ in range(len(nodes) + 1):  # an Identity chain is at most the graph long
                    name = tensor if ":" in tensor else tensor + ":0"
                    if name in position:
                        return position[name]
                    node = nodes.get(name.split(":")[0])
                    if node is None or node.op != "Identity" or not node.input or node.input[0].startswith("^"):
                        return None
                    tensor = node.input[0]
                return None

            self._passthrough = tuple(source(name) for name in outputs)
        return self._passthrough

    _increments: Optional[tuple] = None

    @property
    def increments(self) -> tuple:
        """For each result leaf: ``(i, deps)`` when it is parameter leaf ``i`` plus a value computed from
        parameter leaves ``deps`` only (see ``fedcore.compiler.additive``), else None."""
        if self._increments is None:
            graph_def, inputs, outputs = self._graph_parts()
            self._increments = additive.increments(graph_def, inputs, outputs)
        return self._increments

    def _graph_parts(self) -> Tuple[Any, List[str], List[str]]:
        """(GraphDef, names of the input tensors, names of the output tensors)."""
        raise NotImplementedError

    def _captured(self) -> List[Any]:
        """The tensors the graph captured from outside it (none for an imported graph)."""
        return []


class _Static(threading.local):
    active = False


_STATIC = _Static()


# Gradients whose oneDNN kernel needs the workspace of the forward op (``TFCalls.pools_gradients``).
_PAIRED_GRADIENTS = frozenset({"MaxPoolGrad", "MaxPool3DGrad", "LRNGrad"})
_ONEDNN = bool(_pywrap_util_port.IsMklEnabled())


def onednn_on() -> bool:
    """Whether TensorFlow's CPU kernels are oneDNN's in this process.

    TensorFlow turns oneDNN on by default only on CPUs with AVX-512 and the
    like (``TF_ENABLE_ONEDNN_OPTS`` overrides it); elsewhere its CPU kernels are
    Eigen's.  No public API says which: this is TensorFlow's own switch.
    """
    return _ONEDNN


@contextlib.contextmanager
def static_shapes():
    """Within it, ``graph_call`` uses traces at the leaves' static shapes (see ``TFFunction._at_shapes``)."""
    before, _STATIC.active = _STATIC.active, True
    try:
        yield
    finally:
        _STATIC.active = before


class TFFunction(TFCalls):
    def __init__(self, python_fn: Callable, parameter_type: Optional[Type], unpack: bool, name: str):
        self.python_fn = python_fn
        self.parameter_type = parameter_type
        self.unpack = unpack
        self.name = name
        self.result_type: Optional[Type] = None
        self._writes_variables: Optional[bool] = None
        self._local_variables: List[Any] = []  # created by the traced code: local to each call
        self._variable_errors: List[VariableCreationError] = []
        self._traces_at: dict = {}  # traces at static leaf shapes (``_at_shapes``)
        self._tf_function = tf.function(
            # Only the user's code goes through AutoGraph (``call_user_code``), not fedcore's own.
            self._flat_call, input_signature=tf_bridge.flat_specs(parameter_type), autograph=False
        )
        location = context.user_location()
        self._too_deep: Optional[TypeNestingError] = None
        try:
            self.concrete_function = self._tf_function.get_concrete_function()
        except Exception as e:  # noqa: BLE001 -- every tracing failure gets the computation's name and the user's line
            where = f"\n  at {location}" if location else ""
            if self._too_deep is not None:
                raise TypeNestingError(f"tf_computation {name}: {self._too_deep}{where}") from None
            if self._variable_errors:  # AutoGraph may have wrapped it (a StagingError from a loop body)
                raise TypeError(f"{self._variable_errors[0]}{where}") from None
            if not isinstance(e, (TypeError, ValueError, lift_to_graph.UnliftableError)):
                raise
            raise TypeError(f"tf_computation {name} failed to trace at parameter type {parameter_type}: "
                            f"{_plain_trace_error(e)}{where}") from e
        stale = _foreign_captures(self.concrete_function)
        if stale:
            where = f"\n  at {location}" if location else ""
            raise TypeError(
                f"tf_computation {name} calls a tf.function that created tf.Variables while another tf_computation "
                "was traced, and TensorFlow reuses that trace, whose variables belong to the other computation; "
                "define the tf.function inside the tf_computation, or create the variables in the tf_computation "
                f"and pass them in (e.g. the Keras model and optimizer){where}"
            )

    @property
    def variables(self) -> Tuple[Any, ...]:
        """The variables the traced code captured (read or written), e.g. a model's ``tf.Variable`` s.

        Variables the code created itself are local to each call and are not among them.
        """
        return tuple(v for v in self.concrete_function.variables if not isinstance(v, LocalVariable))

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

    def _at_shapes(self, leaves: List[Any]) -> Optional[Callable[..., Any]]:
        """The function traced again at the leaves' static shapes, or None where that does not apply.

        TensorFlow code traced with a dimension unknown (a batch of any size)
        computes at run time what a static shape gives at trace time: the
        gradient of a recurrent layer's loop over time, for one, reduces its
        broadcasts in every step.  The trace is kept per shapes; it must give
        a result of the declared result type, else (or if it fails) the
        declared trace runs.  Functions that assign captured variables keep
        their one trace.
        """
        specs = tf_bridge.flat_specs(self.parameter_type)
        if self.result_type is None or len(specs) != len(leaves) or self.writes_variables:
            return None
        refined, changed = [], False
        for leaf, spec in zip(leaves, specs):
            shape = getattr(leaf, "shape", None)
            if (isinstance(spec, tf.TensorSpec) and isinstance(leaf, tf.Tensor) and shape.is_fully_defined()
                    and not spec.shape.is_fully_defined() and spec.shape.is_compatible_with(shape)):
                refined.append(tf.TensorSpec(shape, spec.dtype, spec.name))
                changed = True
            else:
                refined.append(spec)
        if not changed:
            return None
        key = tuple(tuple(r.shape.as_list()) if isinstance(r, tf.TensorSpec) else None for r in refined)
        if key not in self._traces_at:
            self._traces_at[key] = self._trace_at(refined)
        return self._traces_at[key]

    def _trace_at(self, specs: List[Any]) -> Optional[Callable[..., Any]]:
        declared = self.result_type

        def flat_call(*leaves):
            try:
                out = self._flat_call(*leaves)
                traced = self.result_type
            finally:
                self.result_type = declared
            if not declared.is_assignable_from(traced):
                raise TypeError(f"result {traced} at static shapes, not assignable to {declared}")
            return out

        fn = tf.function(flat_call, input_signature=specs, autograph=False)
        errors = list(self._variable_errors)
        try:
            concrete = fn.get_concrete_function()
        except Exception:  # noqa: BLE001 - any failure: the declared trace serves, as it always did
            self._variable_errors[:] = errors
            return None
        if _foreign_captures(concrete) or not stateful_op_types(concrete.graph.as_graph_def()) <= self.stateful_ops:
            return None  # stateful ops the declared trace lacks: lowering decided how to loop from that one's
        return fn

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
                return call_user_code(self.python_fn)
            if self.unpack:
                args = [v for v in user_value] if not isinstance(user_value, dict) else user_value.values()
                return call_user_code(self.python_fn, *args)
            return call_user_code(self.python_fn, user_value)

    def _flat_call(self, *leaves):
        value = tf_bridge.unflatten(list(leaves), self.parameter_type)
        graph = tf_ops.get_default_graph()
        creator = _local_creator(graph, self.name, self._local_variables, self._variable_errors)
        with graph._variable_creator_scope(creator, priority=_CREATOR_PRIORITY):  # noqa: SLF001
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


# --------------------------------------------------------------------------
# AutoGraph: the user's code only.
#
# A tf_computation's body may use Python control flow over tensors (``for batch
# in dataset``, ``if`` on a tensor), so it is traced as ``tf.function`` with
# AutoGraph would trace it, and so is every function it calls, recursively.
# fedcore's own modules need no conversion: they are written for graph mode.
# Converting them (and the ``attr`` and structure helpers they call) cost a
# source transformation of every library function a model's training step
# passes through, seconds for one FedAvg process.  So AutoGraph leaves the
# fedcore package alone, except ``fedcore.testing``, which holds user-style
# computations; user code that fedcore's library calls back (a custom Model's
# forward_pass, a loss function) goes through ``call_user_code``.

_LIBRARY_RULES = (autograph_rules.Convert("fedcore.testing"), autograph_rules.DoNotConvert("fedcore"))


def _install_autograph_rules() -> None:
    rules = tuple(autograph_config.CONVERSION_RULES)
    if rules[: len(_LIBRARY_RULES)] != _LIBRARY_RULES:
        autograph_config.CONVERSION_RULES = _LIBRARY_RULES + rules


_install_autograph_rules()

# tf.function's defaults: recursive, and no optional features (``optional_features=None``; the
# class's own default, all features, would turn the user's Python lists into TensorLists).
_USER_CODE_OPTIONS = autograph_converter.ConversionOptions(recursive=True, user_requested=False, optional_features=None)


def call_user_code(fn: Callable, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` as ``tf.function`` with AutoGraph runs it while tracing.

    User code is converted (and what it calls, recursively); library code
    (TensorFlow, Keras, fedcore) runs as written.  Errors come out as
    AutoGraph reports them, pointing at the user's source line.
    """
    if tf.executing_eagerly():  # nothing to convert outside a trace
        return fn(*args, **kwargs)
    try:
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.ENABLED):
            return autograph_api.converted_call(fn, args, kwargs, options=_USER_CODE_OPTIONS)
    except Exception as e:  # noqa: BLE001 -- re-raised, as AutoGraph's own tf.function wrapper does
        metadata = getattr(e, "ag_error_metadata", None)
        if metadata is not None:
            raise metadata.to_exception(e)
        raise


_WRITE_OP_PREFIXES = (
    "Assign",  # AssignVariableOp, AssignAddVariableOp, AssignSubVariableOp
    "ResourceApply",
    "ResourceSparseApply",
    "ResourceScatter",
    "ResourceStridedSliceAssign",
    "DestroyResourceOp",
)


# Stateful ops whose order between two calls of client work does not change either call's result,
# where no call assigns a captured variable (``writes_variables``): checks, reads of variables, the
# handles and assignments of variables local to a call (anonymous: each call has its own), and calls
# and control flow (the ops of their functions are looked at too).
ORDER_FREE_STATEFUL_OPS = frozenset({
    "Assert", "StatefulPartitionedCall", "While", "If", "Case", "ReadVariableOp", "VarHandleOp",
    "VarIsInitializedOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "DestroyResourceOp",
})


def stateful_op_types(graph_def: Any) -> frozenset:
    """The types of a GraphDef's stateful ops, in its nodes and its library's functions."""
    functions = {fn.signature.name for fn in graph_def.library.function}  # called by name: their nodes count

    def stateful(op: str) -> bool:
        op_def = op_def_registry.get(op)
        return op_def is None or op_def.is_stateful  # an op TensorFlow does not know: assume the worst

    return frozenset(n.op for n in _graph_nodes(graph_def) if n.op not in functions and stateful(n.op))


def _graph_writes_variables(graph_def: Any) -> bool:
    """Whether any node of a GraphDef, or of a function in its library, writes a resource variable.

    A write in the graph itself to a variable the graph creates (a ``VarHandleOp``
    node: a ``LocalVariable``) does not count.  Writes inside library functions
    (nested tf.functions, loop bodies) count whatever they write: a conservative answer.
    """
    local = {node.name for node in graph_def.node if node.op == "VarHandleOp"}

    def writes_captured(node: Any) -> bool:
        if not node.op.startswith(_WRITE_OP_PREFIXES):
            return False
        return not node.input or node.input[0].split(":")[0].lstrip("^") not in local

    return any(writes_captured(n) for n in graph_def.node) or any(
        node.op.startswith(_WRITE_OP_PREFIXES) for fn in graph_def.library.function for node in fn.node_def
    )


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


# --------------------------------------------------------------------------
# Variables created inside a tf_computation: local to each call.


class LocalVariable(resource_variable_ops.BaseResourceVariable):
    """A ``tf.Variable`` created while a tf_computation was traced.

    Its handle is made inside the function's graph with TensorFlow's anonymous
    resource name, so every call of the function (and every client of a
    ``federated_map``, even in parallel loop iterations) gets a fresh variable,
    initialised at the start of the call.
    """


# Above every other variable creator (tf.function's, Keras's), so that a nested
# tf.function or a Keras optimizer building its slots inside a loop also makes local variables.
_CREATOR_PRIORITY = 1000


class VariableCreationError(ValueError):
    """A ``tf.Variable`` created inside a tf_computation in a way fedcore cannot make local to each call."""


def _is_eager(value: Any) -> bool:
    return isinstance(value, tf_ops.EagerTensor)


@tf.autograph.experimental.do_not_convert  # made and called from code AutoGraph converts; it stays plain Python
def _local_creator(graph: Any, name: str, created: List[Any], errors: List["VariableCreationError"]):
    """A variable creator that makes ``LocalVariable`` s in ``graph``, the tf_computation's own graph.

    It appends each to ``created``: the function keeps them, since TensorFlow's
    graphs hold only weak references to the variables they use.  The errors it
    raises also go to ``errors``, since TensorFlow may wrap them on their way out.
    """

    def creator(next_creator, **kwargs):
        try:
            return make(**kwargs)
        except VariableCreationError as e:
            errors.append(e)
            raise

    def make(**kwargs):  # never calls the next creator: any other kind of variable would outlive the call
        if kwargs.get("variable_def") is not None:
            raise VariableCreationError(f"tf_computation {name} restores a tf.Variable from a VariableDef; "
                                        "create it from an initial value instead")
        initial_value = kwargs.get("initial_value")
        if initial_value is None:
            raise VariableCreationError(f"tf_computation {name} creates a tf.Variable without an initial value")
        dtype = kwargs.get("dtype")
        shape = kwargs.get("shape")
        validate_shape = kwargs.get("validate_shape", True)
        var_name = kwargs.get("name") or "Variable"
        if isinstance(var_name, str):
            var_name = var_name.replace(":", "_")
        current = tf_ops.get_default_graph()
        if not callable(initial_value) and isinstance(initial_value, tf.Tensor) and not _is_eager(initial_value) \
                and initial_value.graph is not graph:
            where = "a tf.function, loop, tf.cond or tf.data function" if current is not graph else "another graph"
            raise VariableCreationError(
                f"tf_computation {name} creates tf.Variable {var_name!r} inside {where} from a value computed "
                "there; its initial value must be computable when the computation starts: create the variable "
                "before the loop (or outside the nested tf.function), or give a callable as its initial value"
            )
        with graph.as_default(), tf_ops.name_scope(None), tf_ops.name_scope(var_name) as scope:
            handle_name = tf_ops.name_from_scope_name(scope)
            with tf_ops.name_scope("Initializer"):
                try:
                    value = initial_value() if callable(initial_value) else initial_value
                    if isinstance(value, resource_variable_ops.BaseResourceVariable):
                        value = value.read_value()
                    value = tf.convert_to_tensor(value, dtype=dtype, name="initial_value")
                except ValueError as e:
                    if "graph" not in str(e).lower() and "scope" not in str(e).lower():
                        raise
                    raise VariableCreationError(
                        f"tf_computation {name} creates tf.Variable {var_name!r} from a callable initial value "
                        f"that uses tensors computed inside a nested function or loop: {e}"
                    ) from None
            if shape is not None:
                shape = tf.TensorShape(shape)
                if not value.shape.is_compatible_with(shape):
                    raise VariableCreationError(
                        f"tf_computation {name} creates tf.Variable {var_name!r} of shape {shape} from an "
                        f"initial value of shape {value.shape}"
                    )
            else:
                shape = value.shape if validate_shape else tf.TensorShape(None)
            handle = resource_variable_ops.eager_safe_variable_handle(
                initial_value=value, shape=shape, shared_name=None, name=handle_name, graph_mode=False
            )
            gen_resource_variable_ops.assign_variable_op(handle, value)
        variable = LocalVariable(
            trainable=kwargs.get("trainable"),
            shape=shape,
            dtype=value.dtype,
            handle=handle,
            constraint=kwargs.get("constraint"),
            synchronization=kwargs.get("synchronization") or tf.VariableSynchronization.AUTO,
            aggregation=kwargs.get("aggregation") or tf.VariableAggregation.NONE,
            name=handle_name,
            unique_id=f"{handle_name}_{tf_ops.uid()}",
            handle_name=handle_name,
            initial_value=value,
            in_graph_mode=False,
            validate_shape=validate_shape,
        )
        created.append(variable)
        return variable

    return creator


def _foreign_captures(concrete_function: Any) -> List[Any]:
    """Captured graph tensors that come from no graph enclosing this one: another computation's, unusable here."""
    enclosing = []
    g = getattr(concrete_function.graph, "outer_graph", None)
    while g is not None:
        enclosing.append(g)
        g = getattr(g, "outer_graph", None)
    return [t for t in concrete_function.captured_inputs
            if not _is_eager(t) and hasattr(t, "graph") and not any(t.graph is o for o in enclosing)]


def _plain_trace_error(e: BaseException) -> str:
    """A tracing error in plain words: TensorFlow's messages about lifting variables name no cause a user can act on."""
    text = str(e)
    if "dtype=resource> is out of scope and cannot be used here" in text:
        return ("it calls a tf.function that created tf.Variables while another tf_computation was traced, and "
                "TensorFlow reuses that trace, whose variables belong to the other computation; define the "
                "tf.function inside the tf_computation, or create the variables in the tf_computation and pass "
                f"them in (e.g. the Keras model and optimizer). (TensorFlow: {text.splitlines()[0]})")
    if isinstance(e, lift_to_graph.UnliftableError) or "singleton tf.Variables" in text:
        return ("a tf.Variable is created where fedcore cannot make it local to each call (for example in a "
                "tf.function first traced outside this computation); create it in the tf_computation's code, "
                f"or in a Keras model or optimizer made there. (TensorFlow: {text.splitlines()[0]})")
    return text


def _graph_nodes(graph_def: Any) -> List[Any]:
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return nodes


def graph_creates_variables(graph_def: Any) -> bool:
    """Whether a GraphDef (or a function in its library) creates a variable: a ``VarHandleOp`` node."""
    return any(node.op == "VarHandleOp" for node in _graph_nodes(graph_def))
