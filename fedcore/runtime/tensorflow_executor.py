"""The TensorFlow backend: a whole federated computation compiled into one tf.function.

The IR first goes through the compiler's pass pipeline.  Then each call is
lowered, once per (computation, number of clients, input signature), into
graph code where client values carry a leading clients axis.  federated_map
runs its function over clients in one of two ways:

* ``sequential``: a ``tf.map_fn`` loop inside the graph; works for any client
  work, including per-client datasets of any sizes;
* ``vectorized``: the client function is lowered once for all clients, with
  TF computations under ``tf.vectorized_map`` and ``sequence_reduce`` over
  padded client data stepping all clients together, masked where a client's
  data has ended.

``strategy='auto'`` tries vectorized lowering and falls back to sequential
where the client work does not allow it.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import tf_bridge
from fedcore.compiler.intrinsics import lookup, register_rule
from fedcore.compiler.transformations import fused_map_reduce, run_pipeline
from fedcore.runtime.datasets import from_tf_leaf, make_dataset, to_tf_leaves
from fedcore.runtime import secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.tf_values import (
    Batched,
    ClientSequences,
    ShuffledSequences,
    Stacked,
    materialize,
)
from fedcore.structure import Struct

flatten, unflatten, leaf_types = tf_bridge.flatten, tf_bridge.unflatten, tf_bridge.leaf_types
from fedcore.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)

NAME = "tensorflow"
STRATEGIES = ("auto", "sequential", "vectorized")


class NotVectorizable(Exception):
    """Raised while lowering client work that cannot run on a clients axis."""


# --------------------------------------------------------------------------
# Encoding canonical arguments into graph inputs.


class _Layout:
    """How flat graph inputs rebuild one value of a type inside the graph."""

    def __init__(self):
        self.specs: List[Any] = []
        self.key: List[Any] = []
        self.arrays: List[Any] = []

    def add(self, array: Any, spec: Any, key: Any) -> None:
        self.arrays.append(array)
        self.specs.append(spec)
        self.key.append(key)


def _tensor_input(value: Any, t: TensorType) -> Tuple[Any, tf.TensorSpec]:
    if t.dtype == "string":
        arr = np.asarray(value, dtype=object)
        return arr, tf.TensorSpec(arr.shape, tf.string)
    arr = np.asarray(value, dtype=t.np_dtype)
    return arr, tf.TensorSpec(arr.shape, t.tf_dtype)


def _encode(value: Any, t: Type, n: int, layout: _Layout) -> Callable[[List[Any]], Any]:
    """Adds the inputs for ``value`` to ``layout``; returns a builder of the in-graph value."""
    match t:
        case TensorType():
            arr, spec = _tensor_input(value, t)
            layout.add(arr, spec, ("t", spec.dtype.name, tuple(spec.shape)))
            return lambda it: next(it)
        case StructType():
            builders = [_encode(v, e, n, layout) for v, e in zip(value, t)]
            names = t.names()
            return lambda it: Struct([(name, b(it)) for name, b in zip(names, builders)])
        case SequenceType(element=e):
            ds = make_dataset(value, e)
            spec = tf.data.DatasetSpec(tf_bridge.element_spec(e))
            layout.add(ds, spec, ("d", str(t)))
            return lambda it: next(it)
        case FederatedType(member=member, all_equal=True):
            return _encode(value, member, n, layout)
        case FederatedType(member=member, placement=p) if p is CLIENTS:
            build = _encode_clients(list(value), member, n, layout)
            return lambda it: Stacked(build(it))
    raise ExecutionError(f"the TensorFlow executor cannot take an argument of type {t}")


def _encode_clients(values: List[Any], t: Type, n: int, layout: _Layout):
    match t:
        case TensorType():
            arrays = [_tensor_input(v, t)[0] for v in values]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise ExecutionError(
                    f"the TensorFlow executor needs equal shapes across clients for {{{t}}}@CLIENTS, got "
                    f"{sorted(shapes)}"
                )
            shape = shapes.pop() if shapes else tuple(0 if d is None else d for d in (t.shape or ()))
            dtype = object if t.dtype == "string" else t.np_dtype
            stacked = np.stack(arrays) if arrays else np.zeros((0,) + shape, dtype)
            spec = tf.TensorSpec(stacked.shape, tf.string if t.dtype == "string" else t.tf_dtype)
            layout.add(stacked, spec, ("t", spec.dtype.name, tuple(spec.shape)))
            return lambda it: next(it)
        case StructType():
            builders = [_encode_clients([v[i] for v in values], e, n, layout) for i, e in enumerate(t)]
            names = t.names()
            return lambda it: Struct([(name, b(it)) for name, b in zip(names, builders)])
        case SequenceType(element=e):
            data = materialize(values, e)
            specs = data.specs()
            layout.key.append(data.signature_key())
            for array, spec in zip(data.tensors(), specs):
                layout.add(array, spec, ("s", spec.dtype.name, tuple(spec.shape)))

            def build(it):
                return data.in_graph([next(it) for _ in specs])

            return build
    raise ExecutionError(f"the TensorFlow executor cannot take client values of type {t}")


# --------------------------------------------------------------------------
# In-graph helpers.


def _map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, Struct):
        return Struct([(n, _map_leaves(v, fn)) for n, v in value.items()])
    return fn(value)


def _flat(value: Any) -> List[Any]:
    if isinstance(value, Struct):
        return [leaf for v in value for leaf in _flat(v)]
    return [value]


def _client_view(value: Any, i: tf.Tensor) -> Any:
    """Client ``i``'s member of a stacked value."""
    if isinstance(value, Struct):
        return Struct([(n, _client_view(v, i)) for n, v in value.items()])
    if isinstance(value, (ClientSequences, ShuffledSequences)):
        return value.dataset(i)
    return value[i]


def _batched_view(value: Any) -> Any:
    if isinstance(value, Struct):
        return Struct([(n, _batched_view(v)) for n, v in value.items()])
    if isinstance(value, (ClientSequences, ShuffledSequences)):
        steps = value.stepper()
        if steps is None:
            raise NotVectorizable("client datasets whose elements differ in shape")
        return BatchedSequence(value.element_type, steps)
    return Batched(value)


class BatchedSequence:
    """All clients' sequences inside a vectorized client function (see ``tf_values.Steps``)."""

    def __init__(self, element_type: Type, steps: Any):
        self.element_type = element_type
        self.steps = steps


def _tile(value: Any, n: int) -> Any:
    return _map_leaves(value, lambda x: tf.repeat(tf.expand_dims(tf.convert_to_tensor(x), 0), n, axis=0))


def _is_batched(value: Any) -> bool:
    if isinstance(value, (Batched, BatchedSequence)):
        return True
    if isinstance(value, Struct):
        return any(_is_batched(v) for v in value)
    return False


def _unwrap_batched(value: Any, n: int) -> Any:
    """A (partly) batched value as one value whose every leaf has the clients axis."""
    if isinstance(value, Batched):
        return value.value
    if isinstance(value, Struct):
        return Struct([(name, _unwrap_batched(v, n)) for name, v in value.items()])
    if isinstance(value, (BatchedSequence, tf.data.Dataset)):
        raise NotVectorizable("a dataset inside a vectorized value")
    return _tile(value, n)


def _with_clients_axis(x: Any, n: int) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape[0] == n:
        return x
    return tf.ensure_shape(x, [n] + x.shape.as_list()[1:])


def _cast_flat(value: Any, t: Type) -> List[tf.Tensor]:
    """The leaves of an in-graph value as tensors of ``t``'s dtypes."""
    return [tf.convert_to_tensor(v, dtype=lt.tf_dtype) for v, lt in zip(_flat(value), leaf_types(t))]


def _over_clients(n: int, body: Callable[[tf.Tensor], List[Any]], t: Type, parallel: bool = True) -> Any:
    """``body(i)`` for every client i in a graph loop, stacked into a value of member type ``t``."""
    specs = _spec_of(t)
    if n == 0:
        flat = [tf.zeros([0] + [0 if d is None else d for d in (s.shape.as_list() or [])], s.dtype) for s in specs]
    else:
        flat = tf.map_fn(
            lambda i: _cast_flat(body(i), t), tf.range(n), fn_output_signature=specs,
            parallel_iterations=None if parallel else 1,
        )
    return unflatten(list(flat), t)


def _spec_of(t: Type) -> List[tf.TensorSpec]:
    out = []
    for leaf in leaf_types(t):
        if not isinstance(leaf, TensorType):
            raise ExecutionError(f"client work returning {leaf} is not supported by the TensorFlow executor")
        out.append(tf.TensorSpec(None if leaf.shape is None else list(leaf.shape), leaf.tf_dtype))
    return out


def _structure_to_internal(value: Any, t: Type) -> Any:
    """Values the user's TF code returns (containers) -> Struct-based internal values."""
    return tf_bridge.from_dataset_structure(value, t)


# --------------------------------------------------------------------------
# Lowered functions.


class Lowered:
    """A function value inside the graph."""

    def __init__(self, fn_type: FunctionType, call: Callable[[Any], Any], call_batched: Optional[Callable[[Any], Any]]):
        self.type_signature = fn_type
        self._call = call
        self._call_batched = call_batched

    def __call__(self, arg: Any = None) -> Any:
        return self._call(arg)

    def batched(self, arg: Any) -> Any:
        if self._call_batched is None:
            raise NotVectorizable(f"a function of type {self.type_signature}")
        return self._call_batched(arg)


_FUSABLE = ("federated_sum", "federated_mean", "federated_weighted_mean", "federated_aggregate")


def _fully_known(t: Type) -> bool:
    return all(isinstance(lt, TensorType) and lt.shape is not None and None not in lt.shape for lt in leaf_types(t))


class Compiler:
    """Lowers IR to graph code for one call signature."""

    def __init__(self, num_clients: int, strategy: str, ir: Optional[bb.BuildingBlock] = None):
        self.n = num_clients
        self.strategy = strategy
        # Client work that assigns tf.Variables must run one client at a time.
        self.parallel_clients = ir is None or not any(
            isinstance(node, bb.TensorFlowComputation) and getattr(node.function, "writes_variables", False)
            for node in bb.walk(ir)
        )

    # -- function values --------------------------------------------------

    def tf_function(self, node: bb.TensorFlowComputation) -> Lowered:
        fn = node.function
        t = node.type_signature

        def call(arg):
            leaves_in = [] if t.parameter is None else to_tf_leaves(arg, t.parameter)
            out = fn._tf_function(*leaves_in)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            return unflatten(out, t.result)

        def call_batched(arg):
            if t.parameter is None:
                raise NotVectorizable("a computation with no parameter")
            if getattr(fn, "writes_variables", False):
                raise NotVectorizable(f"{node.name or 'a TF computation'} assigns tf.Variables")
            if any(isinstance(leaf, SequenceType) for leaf in leaf_types(t.parameter)):
                raise NotVectorizable(f"{node.name or 'a TF computation'} takes a dataset")
            if not _is_batched(arg):
                return call(arg)
            flat_types = leaf_types(t.parameter)
            arg_leaves = flatten(arg, t.parameter)
            batched_idx = [i for i, a in enumerate(arg_leaves) if isinstance(a, Batched)]

            def per_client(batched_leaves):
                full = list(arg_leaves)
                for i, v in zip(batched_idx, batched_leaves):
                    full[i] = v
                full = [tf.convert_to_tensor(v, dtype=lt.tf_dtype) for v, lt in zip(full, flat_types)]
                out = fn._tf_function(*full)
                return list(out) if isinstance(out, (list, tuple)) else [out]

            # A static clients axis lets pfor read each client's slice without copying the inputs.
            inputs = [_with_clients_axis(arg_leaves[i].value, self.n) for i in batched_idx]
            out = tf.vectorized_map(per_client, inputs)
            out = [Batched(o) for o in out]
            return unflatten(out, t.result)

        return Lowered(t, call, call_batched)

    def lambda_(self, node: bb.Lambda, env: Dict[str, Any]) -> Lowered:
        p, body = node.parameter_name, node.result

        def call(arg):
            return self.lower(body, env if p is None else {**env, p: arg})

        return Lowered(node.type_signature, call, call)

    # -- expressions ------------------------------------------------------

    def lower(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        match node:
            case bb.Reference(name=name):
                return env[name]
            case bb.Selection(source=source, index=index):
                value = self.lower(source, env)
                if isinstance(value, Batched):
                    return Batched(value.value[index])
                if isinstance(value, Stacked):
                    return Stacked(value.value[index])
                return value[index]
            case bb.Struct(elements=elements):
                return Struct([(n, self.lower(e, env)) for n, e in elements])
            case bb.Call(function=bb.Intrinsic(uri=uri)) if uri in _FUSABLE and (parts := fused_map_reduce(node)):
                return self.fused_reduce(node, parts, env)
            case bb.Call(function=fn_node, argument=arg_node):
                fn = self.lower(fn_node, env)
                if arg_node is None:
                    return fn(None)
                arg = self.lower(arg_node, env)
                if _is_batched(arg):
                    return fn.batched(arg)
                return fn(arg)
            case bb.Lambda():
                return self.lambda_(node, env)
            case bb.Block(locals=locals_, result=result):
                scope = dict(env)
                for name, value in locals_:
                    scope[name] = self.lower(value, scope)
                return self.lower(result, scope)
            case bb.Intrinsic(uri=uri, type_signature=t):
                rule = lookup(uri).rules.get(NAME)
                if rule is None:
                    raise ExecutionError(f"the TensorFlow executor has no rule for {uri}")
                if isinstance(t, FunctionType):
                    batched_rule = BATCHED_RULES.get(uri)
                    return Lowered(
                        t,
                        lambda arg: rule(self, arg, t),
                        None if batched_rule is None else (lambda arg: batched_rule(self, arg, t)),
                    )
                return rule(self, None, t)
            case bb.Literal(value=value, type_signature=t):
                return tf.constant(value, dtype=t.tf_dtype)
            case bb.Placement(placement=p):
                return p
            case bb.TensorFlowComputation():
                return self.tf_function(node)
        raise ExecutionError(f"the TensorFlow executor cannot lower {bb.to_string(node)}")

    # -- clients ----------------------------------------------------------

    def stacked(self, value: Any, t: FederatedType) -> Any:
        """The stacked (clients-axis) form of a CLIENTS value, tiling all-equal ones."""
        if isinstance(value, Stacked):
            return value.value
        if t.all_equal:
            return _tile(value, self.n)
        return value

    def map_clients(self, fn: Lowered, value: Any, value_type: FederatedType, result_member: Type) -> Stacked:
        members = self.stacked(value, value_type)
        vectorized = self._try_vectorized(fn, members)
        if vectorized is not None:
            return vectorized
        return Stacked(self._map_sequential(fn, members, result_member))

    def _try_vectorized(self, fn: Lowered, members: Any) -> Optional[Stacked]:
        """The client work on a clients axis, or None where the sequential loop must run it."""
        if self.strategy in ("auto", "vectorized") and self.n > 0:
            try:
                return Stacked(self._map_vectorized(fn, members))
            except NotVectorizable as e:
                if self.strategy == "vectorized":
                    raise ExecutionError(f"strategy='vectorized' cannot run this client work: {e}") from None
        return None

    # -- a reduce of a map: one pass over clients ---------------------------

    def fused_reduce(self, node: bb.Call, parts: Dict[str, Any], env: Dict[str, Any]) -> Any:
        """``reduce(federated_map(f, x))``: vectorized, the map's stacked result is reduced; in the
        sequential loop each client's result is folded into the reduce as soon as it is computed,
        so results are never held for all clients at once."""
        fn_node, clients_node = parts["fn"], parts["clients"]
        fn = self.lower(fn_node, env)
        members = self.stacked(self.lower(clients_node, env), clients_node.type_signature)
        uri, t = node.function.uri, node.function.type_signature
        others = [] if uri in ("federated_sum", "federated_mean") else [self.lower(e, env) for _, e in node.argument.elements[1:]]
        mapped = self._try_vectorized(fn, members)
        member_type = fn_node.type_signature.result
        if mapped is None and (uri == "federated_aggregate" or _fully_known(member_type)):
            return self._fold_clients(uri, t, fn, members, member_type, others)
        if mapped is None:
            mapped = Stacked(self._map_sequential(fn, members, member_type))
        arg = mapped if not others else Struct.unnamed(mapped, *others)
        return lookup(uri).rules[NAME](self, arg, t)

    def _fold_clients(self, uri: str, t: FunctionType, fn: Lowered, members: Any, member_type: Type, others: list) -> Any:
        def view(i):
            return fn(_client_view(members, i))

        if uri == "federated_aggregate":
            zero, accumulate, _, report = others
            acc_type = t.parameter[1]
            return report(self._fold(acc_type, _cast_flat(zero, acc_type),
                                     lambda acc, i: accumulate(Struct.unnamed(acc, view(i)))))
        if uri == "federated_mean" and not all(lt.tf_dtype.is_floating for lt in leaf_types(member_type)):
            raise ExecutionError("federated_mean needs floating-point values")
        if uri in ("federated_sum", "federated_mean"):
            total = self._fold(member_type, _cast_flat(_zeros(member_type), member_type),
                               lambda acc, i: _add(acc, view(i)))
            if uri == "federated_sum":
                return total
            return _map_leaves(total, lambda x: x / tf.cast(self.n, x.dtype))
        # federated_weighted_mean: the weighted sum and the total weight, then their ratio.
        weights = tf.cast(self.stacked(others[0], t.parameter[1]), tf.float64)
        acc_type = StructType([(None, member_type), (None, TensorType(tf.float64))])

        def step(acc, i):
            w = weights[i]
            scaled = _map_leaves(view(i), lambda x: tf.convert_to_tensor(x) * tf.cast(w, tf.convert_to_tensor(x).dtype))
            return Struct.unnamed(_add(acc[0], scaled), acc[1] + w)

        zero = Struct.unnamed(_zeros(member_type), tf.constant(0.0, tf.float64))
        total, weight = self._fold(acc_type, _cast_flat(zero, acc_type), step)
        return _map_leaves(total, lambda x: x / tf.cast(weight, x.dtype))

    def _fold(self, acc_type: Type, zero_flat: List[tf.Tensor], step: Callable[[Any, tf.Tensor], Any]) -> Any:
        """Folds ``step(acc, client)`` over the clients in a graph loop."""

        def body(i, *acc_flat):
            return [i + 1] + _cast_flat(step(unflatten(list(acc_flat), acc_type), i), acc_type)

        invariants = [tf.TensorShape([])] + [
            tf.TensorShape(None if lt.shape is None else list(lt.shape)) for lt in leaf_types(acc_type)
        ]
        out = tf.while_loop(lambda i, *_: i < self.n, body, [tf.constant(0)] + zero_flat, shape_invariants=invariants,
                            parallel_iterations=10 if self.parallel_clients else 1)
        return unflatten(list(out[1:]), acc_type)

    def _map_vectorized(self, fn: Lowered, members: Any) -> Any:
        out = fn.batched(_batched_view(members))
        return _unwrap_batched(out, self.n)

    def _map_sequential(self, fn: Lowered, members: Any, result_member: Type) -> Any:
        return _over_clients(self.n, lambda i: fn(_client_view(members, i)), result_member, self.parallel_clients)


# --------------------------------------------------------------------------
# The executor.


class TensorFlowExecutor:
    """Compiles each computation into one tf.function and runs it.

    ``strategy`` is 'auto' (vectorized where the client work allows it,
    sequential elsewhere), 'sequential' or 'vectorized' (an error where it
    can't apply).  ``num_clients`` is used when no argument is placed at CLIENTS.
    """

    name = NAME

    def __init__(self, num_clients: Optional[int] = None, strategy: str = "auto"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        self.num_clients = num_clients
        self.strategy = strategy
        self._programs: "weakref.WeakKeyDictionary[bb.BuildingBlock, Dict[Any, Any]]" = weakref.WeakKeyDictionary()
        self.trace_count = 0

    def __repr__(self) -> str:
        return f"TensorFlowExecutor(num_clients={self.num_clients}, strategy={self.strategy!r})"

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        n = num_clients if num_clients is not None else self.num_clients
        t = comp.type_signature
        layout = _Layout()
        builder = None
        if t.parameter is not None:
            if n is None and _needs_clients(t.parameter):
                raise ExecutionError("the number of clients is unknown; set TensorFlowExecutor(num_clients=N)")
            builder = _encode(argument, t.parameter, n or 0, layout)
        if n is None:
            if _needs_clients(t.result) or _uses_client_count(comp.ir):
                raise ExecutionError(
                    "the number of clients cannot be inferred, since no argument is placed at CLIENTS; "
                    "set it with TensorFlowExecutor(num_clients=N)"
                )
            n = 0
        programs = self._programs.setdefault(comp.ir, {})
        key = (n, tuple(layout.key))
        program = programs.get(key)
        if program is None:
            program = self._compile(comp, builder, layout.specs, n)
            programs[key] = program
        try:
            out = program(*layout.arrays)
        except tf.errors.InvalidArgumentError as e:
            raise ExecutionError(f"{comp.name} failed in the TensorFlow executor: {e.message}") from None
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return _decode(out, t.result, n)

    def _compile(self, comp, builder, specs, n: int):
        ir = run_pipeline(comp.ir)
        compiler = Compiler(n, self.strategy, ir)
        result_type = comp.type_signature.result

        def program(*inputs):
            self.trace_count += 1
            fn = compiler.lower(ir, {})
            if builder is None:
                value = fn(None)
            else:
                value = fn(builder(iter(inputs)))
            return _graph_outputs(value, result_type)

        return tf.function(program, input_signature=specs, autograph=False)


def _needs_clients(t: Type) -> bool:
    match t:
        case FederatedType(placement=p, all_equal=False):
            return p is CLIENTS
        case StructType():
            return any(_needs_clients(e) for e in t)
    return False


def _uses_client_count(ir: bb.BuildingBlock) -> bool:
    for node in bb.walk(ir):
        if isinstance(node, bb.Intrinsic) and isinstance(node.type_signature, FunctionType):
            if _needs_clients(node.type_signature.result) or _needs_clients(node.type_signature.parameter or StructType([])):
                return True
            if node.uri in ("federated_sum", "federated_mean", "federated_weighted_mean", "federated_aggregate",
                            "federated_min", "federated_max", "federated_secure_sum"):
                return True
    return False


def _graph_outputs(value: Any, t: Type) -> List[Any]:
    match t:
        case StructType():
            return [leaf for v, e in zip(value, t) for leaf in _graph_outputs(v, e)]
        case FederatedType(member=m, all_equal=False, placement=p) if p is CLIENTS:
            stacked = value.value if isinstance(value, Stacked) else value
            out = _graph_outputs(stacked, m)
            return out
        case FederatedType(member=m):
            return _graph_outputs(value, m)
        case SequenceType():
            return [value]
        case TensorType():
            return [tf.convert_to_tensor(value, dtype=t.tf_dtype)]
    raise ExecutionError(f"the TensorFlow executor cannot return a value of type {t}")


def _decode(out: List[Any], t: Type, n: int) -> Any:
    it = iter(out)

    def build(t, clients: bool):
        match t:
            case StructType():
                parts = [(name, build(e, clients)) for name, e in t.elements]
                if clients:
                    return [Struct([(name, p[i]) for name, p in parts]) for i in range(n)]
                return Struct(parts)
            case FederatedType(member=m, all_equal=False, placement=p) if p is CLIENTS:
                return build(m, True)
            case FederatedType(member=m):
                return build(m, clients)
            case _:
                leaf = from_tf_leaf(next(it), t)
                if clients:
                    return [leaf[i] for i in range(n)]
                return leaf

    return build(t, False)


# --------------------------------------------------------------------------
# Intrinsic rules.

rule = functools.partial(register_rule, NAME)
BATCHED_RULES: Dict[str, Callable] = {}


def batched_rule(uri: str):
    def decorator(fn):
        BATCHED_RULES[uri] = fn
        return fn

    return decorator


@rule("federated_value_at_server")
@rule("federated_value_at_clients")
@rule("federated_broadcast")
def _identity(c: Compiler, arg, t):
    return arg


@rule("federated_eval_at_server")
def _eval_at_server(c: Compiler, fn, t):
    return fn(None)


@rule("federated_eval_at_clients")
def _eval_at_clients(c: Compiler, fn, t):
    return Stacked(_over_clients(c.n, lambda i: fn(None), t.result.member, c.parallel_clients))


@rule("federated_map")
def _federated_map(c: Compiler, arg, t):
    fn, value = arg
    return c.map_clients(fn, value, t.parameter[1], t.result.member)


@rule("federated_map_all_equal")
@rule("federated_apply")
def _apply(c: Compiler, arg, t):
    fn, value = arg
    return fn(value)


@rule("federated_zip_at_clients")
def _zip_at_clients(c: Compiler, arg, t):
    return Stacked(Struct([(n, c.stacked(v, e)) for (n, e), v in zip(t.parameter.elements, arg)]))


@rule("federated_zip_at_server")
def _zip_at_server(c: Compiler, arg, t):
    return arg


def _reduce(fn: Callable[[tf.Tensor], tf.Tensor]):
    def apply(c: Compiler, arg, t):
        return _map_leaves(c.stacked(arg, t.parameter), fn)

    return apply


def _sum(x):
    return tf.reduce_sum(x, axis=0)


def _mean(x):
    if not x.dtype.is_floating:
        raise ExecutionError("federated_mean needs floating-point values")
    return tf.reduce_mean(x, axis=0)


rule("federated_sum")(_reduce(_sum))
rule("federated_mean")(_reduce(_mean))
rule("federated_min")(_reduce(lambda x: tf.reduce_min(x, axis=0)))
rule("federated_max")(_reduce(lambda x: tf.reduce_max(x, axis=0)))


@rule("federated_weighted_mean")
def _weighted_mean(c: Compiler, arg, t):
    values = c.stacked(arg[0], t.parameter[0])
    weights = c.stacked(arg[1], t.parameter[1])

    def weighted(x):
        if c.n == 0:  # no weight at all: NaN, as for an unweighted mean of nothing
            return tf.fill(tf.shape(x)[1:], tf.constant(float("nan"), x.dtype))
        w = tf.cast(weights, x.dtype)
        for _ in range(x.shape.rank - 1):
            w = tf.expand_dims(w, -1)
        return tf.reduce_sum(x * w, axis=0) / tf.reduce_sum(w)

    return _map_leaves(values, weighted)


@rule("federated_aggregate")
def _aggregate(c: Compiler, arg, t):
    values, zero, accumulate, merge, report = arg
    members = c.stacked(values, t.parameter[0])
    acc_type = t.parameter[1]
    return report(c._fold(acc_type, _cast_flat(zero, acc_type),
                          lambda acc, i: accumulate(Struct.unnamed(acc, _client_view(members, i)))))


@rule("federated_secure_sum")
def _secure_sum(c: Compiler, arg, t):
    values, bound = arg
    stacked = c.stacked(values, t.parameter[0])
    value_leaves = _flat(stacked)
    bound_leaves = [tf.convert_to_tensor(b) for b in secure_aggregation.leaf_bounds(bound, t.result.member)]
    if c.n == 0:
        return _map_leaves(stacked, lambda x: tf.reduce_sum(x, axis=0))
    n = c.n

    def protocol(*arrays):
        # The masking protocol of fedcore.runtime.secure_aggregation, on the clients' stacked leaves.
        leaves, bounds = arrays[: len(value_leaves)], arrays[len(value_leaves) :]
        try:
            sums = secure_aggregation.secure_sum(
                [[leaf[i] for leaf in leaves] for i in range(n)], list(bounds), [leaf.dtype for leaf in leaves]
            )
        except secure_aggregation.SecureSumError as e:
            return [np.zeros(leaf.shape[1:], leaf.dtype) for leaf in leaves] + [np.array(str(e).encode())]
        return list(sums) + [np.array(b"")]

    # Bounds are checked, and errors reported, by the protocol: its message names the client.
    outputs = tf.numpy_function(
        protocol, value_leaves + bound_leaves, [v.dtype for v in value_leaves] + [tf.string], stateful=True
    )
    error = outputs[-1]
    sums = []
    for v, s in zip(value_leaves, outputs[:-1]):
        s.set_shape(v.shape[1:])
        sums.append(s)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(error, ""), [error], summarize=1)]):
        sums = iter([tf.identity(s) for s in sums])
    return _map_leaves(stacked, lambda _: next(sums))



def _dataset_fn(fn: Lowered, element_type: Type):
    def apply(*element):
        e = element[0] if len(element) == 1 else element
        out = fn(tf_bridge.from_dataset_structure(e, element_type))
        return tf_bridge.to_dataset_structure(out, fn.type_signature.result)

    return apply


@rule("sequence_map")
def _sequence_map(c: Compiler, arg, t):
    fn, ds = arg
    return ds.map(_dataset_fn(fn, t.parameter[1].element))


def _to_nest(value: Any) -> Any:
    if isinstance(value, Struct):
        return tuple(_to_nest(v) for v in value)
    return value


def _from_nest(nest: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _from_nest(v, e)) for (n, e), v in zip(t.elements, nest)])
    return nest


@rule("sequence_reduce")
def _sequence_reduce(c: Compiler, arg, t):
    ds, zero, op = arg
    element_type, acc_type = t.parameter[0].element, t.parameter[1]

    def step(acc, *element):
        e = element[0] if len(element) == 1 else element
        new = op(Struct.unnamed(_from_nest(acc, acc_type), tf_bridge.from_dataset_structure(e, element_type)))
        return _to_nest(_cast_like(new, acc_type))

    return _from_nest(ds.reduce(_to_nest(_cast_like(zero, acc_type)), step), acc_type)


def _cast_like(value: Any, t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _cast_like(v, e)) for (n, e), v in zip(t.elements, value)])
    return tf.convert_to_tensor(value, dtype=t.tf_dtype)


@rule("sequence_sum")
def _sequence_sum(c: Compiler, ds, t):
    element_type = t.parameter.element
    zero = _zeros(element_type)
    return _from_nest(
        ds.reduce(
            _to_nest(zero),
            lambda acc, *e: _to_nest(
                _add(_from_nest(acc, element_type), tf_bridge.from_dataset_structure(e[0] if len(e) == 1 else e, element_type))
            ),
        ),
        element_type,
    )


def _zeros(t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, _zeros(e)) for n, e in t.elements])
    if t.shape is None or any(d is None for d in t.shape):
        raise ExecutionError(f"cannot build a zero of type {t}, whose shape is not fully known")
    return tf.zeros(t.shape, t.tf_dtype)


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, Struct):
        return Struct([(n, _add(x, y)) for (n, x), y in zip(a.items(), b)])
    return a + b


@rule("generic_plus")
def _generic_plus(c: Compiler, arg, t):
    return _add(arg[0], arg[1])


@rule("generic_zero")
def _generic_zero(c: Compiler, arg, t):
    return _zeros(t)


# -- vectorized (clients-axis) rules for client-local intrinsics ------------


@batched_rule("sequence_reduce")
def _sequence_reduce_batched(c: Compiler, arg, t):
    seq, zero, op = arg
    if not isinstance(seq, BatchedSequence):
        raise NotVectorizable("sequence_reduce over a dataset that is not client data")
    element_type, acc_type = t.parameter[0].element, t.parameter[1]
    acc0 = _cast_flat(_unwrap_batched(zero, c.n), acc_type)
    data = seq.steps
    steps, lengths = tf.cast(data.num_steps, tf.int32), data.lengths

    def body(s, *acc_flat):
        element = unflatten([Batched(x) for x in data.step(s)], element_type)
        acc = unflatten([Batched(a) for a in acc_flat], acc_type)
        new = op.batched(Struct.unnamed(acc, element))
        new_flat = _cast_flat(_unwrap_batched(new, c.n), acc_type)
        active = tf.cast(s, lengths.dtype) < lengths

        def masked():
            out = []
            for old, updated in zip(acc_flat, new_flat):
                mask = tf.reshape(active, [-1] + [1] * (updated.shape.rank - 1))
                # Broadcasting against the mask's unknown first dimension would lose the static clients
                # axis, which the loop needs to keep when there is one client.
                out.append(tf.ensure_shape(tf.where(mask, updated, old), old.shape))
            return out

        # Clients whose data has ended keep their state; while all are active, no mask is needed.
        return [s + 1] + list(tf.cond(tf.reduce_all(active), lambda: new_flat, masked))

    result = list(tf.while_loop(lambda s, *_: s < steps, body, [tf.constant(0)] + acc0)[1:])
    if data.tail_sizes is not None:
        result = _partial_batches(c, op, data, element_type, acc_type, result)
    return unflatten([Batched(a) for a in result], acc_type)


def _partial_batches(c: Compiler, op: Lowered, data: Any, element_type: Type, acc_type: Type, acc_flat: List[Any]):
    """Each client's last, partial batch, one client at a time: their sizes differ."""
    sizes = data.tail_sizes

    def body(i, *acc):
        def run():
            own = unflatten([a[i] for a in acc], acc_type)
            element = unflatten(data.tail(i), element_type)
            new = _cast_flat(op(Struct.unnamed(own, element)), acc_type)
            return [tf.tensor_scatter_nd_update(a, [[i]], tf.expand_dims(v, 0)) for a, v in zip(acc, new)]

        return [i + 1] + list(tf.cond(sizes[i] > 0, run, lambda: list(acc)))

    try:
        out = tf.while_loop(lambda i, *_: i < c.n, body, [tf.constant(0)] + list(acc_flat),
                            parallel_iterations=1)
    except (TypeError, ValueError) as e:  # the step needs values that only exist on the clients axis
        raise NotVectorizable(f"the last, partial batches: {e}") from None
    return list(out[1:])
