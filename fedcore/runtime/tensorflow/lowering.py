"""Lowering IR to graph code: values carry a leading clients axis.

``Compiler.lower`` walks the (already optimized) IR once per call signature
and emits TF ops.  Intrinsic calls go to the rule tables in ``tables``;
client work runs over the clients axis with ``tf.vectorized_map`` where it
can (``Lowered.batched``) and in a graph loop otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import tensorflow as tf

from fedcore.compiler import algebra
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import tf_bridge, tf_function
from fedcore.compiler import intrinsics as defs
from fedcore.compiler.intrinsics import Kind, lookup
from fedcore.runtime.datasets import to_tf_leaves
from fedcore.runtime.executor import ExecutionError, Unsupported
from fedcore.runtime.tensorflow import per_client
from fedcore.runtime.tensorflow import pfor_rules
from fedcore.runtime.tensorflow.tables import BATCHED, RULES, NeedsAllClients, NotVectorizable
from fedcore.runtime.tensorflow.values import Batched, ClientSequences, Shared, ShuffledSequences, Stacked
from fedcore.structure import Struct
from fedcore.types import FederatedType, FunctionType, SequenceType, StructType, TensorType, Type

flatten, unflatten, leaf_types = tf_bridge.flatten, tf_bridge.unflatten, tf_bridge.leaf_types

STRATEGIES = ("auto", "sequential", "vectorized")


class StrategyChoice(NamedTuple):
    """How one piece of client work runs: ``strategy`` is 'vectorized' or 'sequential', and ``reason`` says why."""

    intrinsic: str  # e.g. 'federated_map'
    function: str  # the client function's name, or 'a lambda'
    strategy: str
    reason: str

    def __str__(self) -> str:
        return f"{self.intrinsic}({self.function}): {self.strategy}: {self.reason}"


# --------------------------------------------------------------------------
# In-graph helpers.


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, Struct):
        return Struct([(n, map_leaves(v, fn)) for n, v in value.items()])
    return fn(value)


def flat(value: Any) -> List[Any]:
    if isinstance(value, Struct):
        return [leaf for v in value for leaf in flat(v)]
    return [value]


def client_view(value: Any, i: tf.Tensor) -> Any:
    """Client ``i``'s member of a stacked value (its sequences: a ``per_client.ClientSequence``)."""
    if isinstance(value, Shared):
        return value.value
    if isinstance(value, Struct):
        return Struct([(n, client_view(v, i)) for n, v in value.items()])
    if isinstance(value, (ClientSequences, ShuffledSequences)):
        return per_client.view(value, i)
    return value[i]


def with_datasets(value: Any) -> Any:
    """``value`` with every client sequence view as a tf.data.Dataset, for TF code that takes datasets."""
    if isinstance(value, Struct):
        return Struct([(n, with_datasets(v)) for n, v in value.items()])
    return per_client.as_dataset(value)


def batched_view(value: Any) -> Any:
    if isinstance(value, Shared):  # the same for all clients: no clients axis
        return value.value
    if isinstance(value, Struct):
        return Struct([(n, batched_view(v)) for n, v in value.items()])
    if isinstance(value, (ClientSequences, ShuffledSequences)):
        steps = value.stepper()
        if steps is None:
            raise NotVectorizable("client datasets whose elements differ in shape")
        return BatchedSequence(value.element_type, steps)
    return Batched(value)


class BatchedSequence:
    """All clients' sequences inside a vectorized client function (see ``values.Steps``)."""

    def __init__(self, element_type: Type, steps: Any):
        self.element_type = element_type
        self.steps = steps


def tile(value: Any, n: int) -> Any:
    return map_leaves(value, lambda x: tf.repeat(tf.expand_dims(tf.convert_to_tensor(x), 0), n, axis=0))


def unshare(value: Any, n: int) -> Any:
    """A stacked value with its ``Shared`` members tiled to the clients axis."""
    if isinstance(value, Shared):
        return tile(value.value, n)
    if isinstance(value, Struct):
        return Struct([(name, unshare(v, n)) for name, v in value.items()])
    return value


def is_batched(value: Any) -> bool:
    if isinstance(value, (Batched, BatchedSequence)):
        return True
    if isinstance(value, Struct):
        return any(is_batched(v) for v in value)
    return False


def unwrap_batched(value: Any, n: int) -> Any:
    """A (partly) batched value as one value whose every leaf has the clients axis."""
    if isinstance(value, Batched):
        return value.value
    if isinstance(value, Struct):
        return Struct([(name, unwrap_batched(v, n)) for name, v in value.items()])
    if isinstance(value, (BatchedSequence, tf.data.Dataset)):
        raise NotVectorizable("a dataset inside a vectorized value")
    return tile(value, n)


def with_clients_axis(x: Any, n: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not isinstance(n, int) or x.shape.rank is None or x.shape[0] == n:  # a tensor n: a subset of the clients
        return x
    return tf.ensure_shape(x, [n] + x.shape.as_list()[1:])


def cast_flat(value: Any, t: Type) -> List[tf.Tensor]:
    """The leaves of an in-graph value as tensors of ``t``'s dtypes."""
    return [tf.convert_to_tensor(v, dtype=lt.tf_dtype) for v, lt in zip(flat(value), leaf_types(t))]


def over_clients(n: int, body: Callable[[tf.Tensor], List[Any]], t: Type, parallel: bool = True,
                 unordered: bool = False) -> Any:
    """``body(i)`` for every client i in a graph loop, stacked into a value of member type ``t``."""
    specs = spec_of(t)
    if n == 0:
        flat = [tf.zeros([0] + [0 if d is None else d for d in (s.shape.as_list() or [])], s.dtype) for s in specs]
    else:
        with unordered_iterations(unordered):
            flat = tf.map_fn(
                lambda i: cast_flat(body(i), t), tf.range(n), fn_output_signature=specs,
                parallel_iterations=None if parallel else 1,
            )
    return unflatten(list(flat), t)


@contextlib.contextmanager
def unordered_iterations(enabled: bool):
    """Loops built inside leave their bodies' stateful ops unordered, so that iterations can overlap.

    Inside a tf.function, TensorFlow makes every stateful op of a loop body a
    control output of the body, and the next iteration waits for them: one
    ``Assert`` in client work (TensorFlow's sparse cross-entropy adds one
    where the batch size is unknown) runs the clients one after another,
    whatever ``parallel_iterations`` allows, and a 2-core machine runs a small
    recurrent model's clients at the speed of one core.  Without those
    control outputs the ops that must run still do: a call of client work runs
    because its results are used (its own stateful ops stay ordered within
    it, and gate its results), and fedcore's checks gate the values they
    check.  Only for client work whose stateful ops may run in any order
    across clients (``Compiler.unordered_clients``).
    """
    graph = tf.compat.v1.get_default_graph()
    if not enabled or not hasattr(graph, "_add_control_dependencies"):
        yield
        return
    before = graph._add_control_dependencies
    graph._add_control_dependencies = False
    try:
        yield
    finally:
        graph._add_control_dependencies = before


def spec_of(t: Type) -> List[tf.TensorSpec]:
    out = []
    for leaf in leaf_types(t):
        if not isinstance(leaf, TensorType):
            raise Unsupported(f"client work returning {leaf} is not supported by the TensorFlow executor")
        out.append(tf.TensorSpec(None if leaf.shape is None else list(leaf.shape), leaf.tf_dtype))
    return out


def structure_to_internal(value: Any, t: Type) -> Any:
    """Values the user's TF code returns (containers) -> Struct-based internal values."""
    return tf_bridge.from_dataset_structure(value, t)


# --------------------------------------------------------------------------
# tf.vectorized_map, and what its conversion says.

# pfor's own words when it runs an op once per client in a loop instead of on the clients axis.
_CLIENT_LOOP = re.compile(r"^(\w+) uses a while_loop|^Using a while_loop for converting (\w+)")
# What pfor logs, before raising, about an op it failed to convert (the error itself is raised).
_CONVERSION_ERROR = ("Got error while pfor was converting op", "created at:")


class _PforLog(logging.Filter):
    """Records the ops pfor runs as loops over clients; drops its messages where fedcore decides."""

    def __init__(self, decides: bool, floor: int):
        super().__init__()
        self.decides = decides
        self.floor = floor  # the level the user set: what is below it is not shown
        self.loops: List[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        m = _CLIENT_LOOP.match(message)
        if m:
            self.loops.append(m.group(1) or m.group(2))
            return not self.decides and record.levelno >= self.floor
        if self.decides and record.levelno >= logging.ERROR and any(k in message for k in _CONVERSION_ERROR):
            return False  # the conversion's failure becomes the strategy report's reason
        return record.levelno >= self.floor


def vectorize(fn: Callable[..., Any], inputs: List[tf.Tensor], label: str, forced: bool,
              subset: bool = False) -> List[tf.Tensor]:
    """``tf.vectorized_map(fn, inputs)``, or ``NotVectorizable`` saying why it does not pay or cannot run.

    Any failure of pfor's conversion is ``NotVectorizable``: the sequential
    loop runs the same client work (and raises the user's own errors there).
    Where pfor would run an op of the client work in a loop over clients
    inside every vectorized step (it has no batched form of the op, e.g. the
    filter gradient of a per-client convolution), the step costs a per-client
    loop plus the vectorized rest: unless vectorization is ``forced``, that is
    refused too, and the sequential loop runs the whole client work.
    """
    logger = logging.getLogger("tensorflow")
    level = logger.level
    log = _PforLog(decides=not forced, floor=logger.getEffectiveLevel())
    # pfor's notes must reach the filter even where the user raised the logger's level
    # (tf.get_logger().setLevel("ERROR")), and before any filter of theirs; what the user's level hides
    # stays hidden.  Inside a function call (a tf_computation, Keras code) pfor notes its loops over
    # clients only at debug level.
    logger.filters.insert(0, log)
    if log.floor > logging.DEBUG:
        logger.setLevel(logging.DEBUG)
    try:
        out = pfor_rules.vectorized_map(fn, inputs)
    except NotVectorizable:
        raise
    except Exception as e:  # noqa: BLE001 - pfor's failures are of every kind (TypeError, ValueError, ...)
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first if line.strip() and "in user code" not in line), "")
        if not detail.startswith(f"{type(e).__name__}:"):
            detail = f"{type(e).__name__}: {detail}"
        raise NotVectorizable(f"tf.vectorized_map cannot convert {label}: {detail}"[:400]) from None
    finally:
        logger.removeFilter(log)
        logger.setLevel(level)
    if log.loops and subset:
        # pfor's loops over clients need a static count of them: run on all clients, masked.
        raise NeedsAllClients(f"tf.vectorized_map would run {', '.join(sorted(set(log.loops)))} of {label} "
                              "in a loop over clients")
    if log.loops and not forced:
        ops = ", ".join(sorted(set(log.loops)))
        raise NotVectorizable(f"tf.vectorized_map would run {ops} of {label} in a loop over clients")
    return list(out) if isinstance(out, (list, tuple)) else [out]


# --------------------------------------------------------------------------
# Lowered functions.


class Lowered:
    """A function value inside the graph."""

    def __init__(self, fn_type: FunctionType, call: Callable[[Any], Any], call_batched: Optional[Callable[[Any], Any]],
                 name: str = "a lambda", captures_batched: bool = False):
        self.type_signature = fn_type
        self._call = call
        self._call_batched = call_batched
        self.name = name  # for the strategy report
        # True when the function reads values with a clients axis from around it (a lambda's captures):
        # then it must be called on all clients, in their order, not on a subset of them.
        self.captures_batched = captures_batched
        self.passthrough: Optional[tuple] = None  # see TensorFlowFunction.passthrough
        self.increments: Optional[tuple] = None  # see TensorFlowFunction.increments
        self.masked: Optional["Lowered"] = None  # the step's masked form (see computation.with_masked_form)
        self.stateful = True  # whether it may run stateful ops (an assert, say): False only where known

    def __call__(self, arg: Any = None) -> Any:
        return self._call(arg)

    def batched(self, arg: Any) -> Any:
        if self._call_batched is None:
            raise NotVectorizable(f"a function of type {self.type_signature}")
        return self._call_batched(arg)




def fully_known(t: Type) -> bool:
    return all(isinstance(lt, TensorType) and lt.shape is not None and None not in lt.shape for lt in leaf_types(t))


def zeros(t: Type) -> Any:
    if isinstance(t, StructType):
        return Struct([(n, zeros(e)) for n, e in t.elements])
    if t.shape is None or any(d is None for d in t.shape):
        raise ExecutionError(f"cannot build a zero of type {t}, whose shape is not fully known")
    return tf.zeros(t.shape, t.tf_dtype)


def add(a: Any, b: Any) -> Any:
    """``a + b`` leaf by leaf; an integer sum that wraps around fails, as in the reference."""
    if isinstance(a, Struct):
        return Struct([(n, add(x, y)) for (n, x), y in zip(a.items(), b)])
    a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    r = a + b
    if not a.dtype.is_integer:
        return r
    if a.dtype.is_unsigned:
        ok = r >= a
    else:  # a signed sum wraps around exactly when its sign differs from both operands'
        ok = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(a, r), tf.bitwise.bitwise_xor(b, r)) >= 0
    exact = lambda: tf.cast(a, tf.float64) + tf.cast(b, tf.float64)  # noqa: E731
    return algebra.TENSORFLOW.check(ok, exact, a.dtype.name, r)


class Compiler:
    """Lowers IR to graph code for one call signature."""

    def __init__(self, num_clients: int, strategy: str, ir: Optional[bb.BuildingBlock] = None):
        self.n = num_clients
        self.strategy = strategy
        # Client work that assigns tf.Variables it captured must run one client at a time.
        # (Variables a TF computation creates itself are its own, anew in each call: they don't count.)
        functions = [] if ir is None else [n.function for n in bb.walk(ir) if isinstance(n, bb.TensorFlowComputation)]
        self.parallel_clients = not any(f.writes_variables for f in functions)
        # Clients' loop iterations overlap only where TensorFlow does not order the stateful ops of
        # their bodies; they may go unordered where client work has none whose order matters
        # (``unordered_iterations``).
        self.unordered_clients = ir is not None and self.parallel_clients and all(
            f.stateful_ops <= tf_function.ORDER_FREE_STATEFUL_OPS for f in functions
        )
        # Whether the program must keep static shapes (for XLA): no work on a changing subset of clients.
        self.static_shapes = False
        # How each piece of client work runs, in lowering order (see ``StrategyChoice``).
        self.choices: List[StrategyChoice] = []
        # Reductions computed ahead, in the loop of the map they reduce (``_fold_shared_map``): IR node -> value.
        self._folded: Dict[bb.BuildingBlock, Any] = {}
        self._ir = ir
        self._occurrences: Optional[Dict[bb.BuildingBlock, int]] = None

    # -- function values --------------------------------------------------

    def tf_function(self, node: bb.TensorFlowComputation) -> Lowered:
        fn = node.function
        t = node.type_signature

        def call(arg):
            leaves_in = [] if t.parameter is None else to_tf_leaves(with_datasets(arg), t.parameter)
            return unflatten(fn.graph_call(leaves_in), t.result)

        label = node.name or "a TF computation"

        def call_batched(arg):
            if t.parameter is None:
                raise NotVectorizable(f"{label} has no parameter")
            why = []
            if fn.writes_variables:
                why.append("assigns tf.Variables it captured")
            if getattr(fn, "creates_variables", False):
                why.append("creates tf.Variables")  # pfor cannot run variable creation per client
            if any(isinstance(leaf, SequenceType) for leaf in leaf_types(t.parameter)):
                why.append("takes a dataset")
            if any(isinstance(leaf, SequenceType) for leaf in leaf_types(t.result)):
                # pfor has no rule for dataset ops; the sequential path says what it supports.
                why.append("returns a dataset")
            if why:
                raise NotVectorizable(f"{label} {' and '.join(why)}")
            if not is_batched(arg):
                return call(arg)
            flat_types = leaf_types(t.parameter)
            arg_leaves = flatten(arg, t.parameter)
            batched_idx = [i for i, a in enumerate(arg_leaves) if isinstance(a, Batched)]
            # A result leaf that is a parameter leaf unchanged is that argument, as it is: pfor would
            # otherwise copy a value without a clients axis (a broadcast model) once per client.
            same = dict(enumerate(getattr(fn, "passthrough", None) or ()))
            same = {j: i for j, i in same.items() if i is not None}
            computed = [j for j in range(len(leaf_types(t.result))) if j not in same]
            if not computed:  # still run the function: its ops (asserts, say) must run
                same, computed = {}, list(range(len(leaf_types(t.result))))

            def one_client(batched_leaves):
                full = list(arg_leaves)
                for i, v in zip(batched_idx, batched_leaves):
                    full[i] = arg_leaves[i].read(v)  # a gathered leaf is read here: pfor gathers it once
                full = [tf.convert_to_tensor(v, dtype=lt.tf_dtype) for v, lt in zip(full, flat_types)]
                out = fn.graph_call(full)
                return [out[j] for j in computed] if same else out

            # A static clients axis lets pfor read each client's slice without copying the inputs.
            inputs = [with_clients_axis(arg_leaves[i].vectorized_input(), self.n) for i in batched_idx]
            out = vectorize(one_client, inputs, label, self.strategy == "vectorized", not isinstance(self.n, int))
            if not same:
                return unflatten([Batched(o) for o in out], t.result)
            out = dict(zip(computed, (Batched(o) for o in out)))
            return unflatten([out[j] if j in out else arg_leaves[same[j]] for j in range(len(leaf_types(t.result)))],
                             t.result)

        lowered = Lowered(t, call, call_batched, name=label)
        lowered.passthrough = getattr(fn, "passthrough", None)  # result leaves that are parameter leaves unchanged
        lowered.increments = getattr(fn, "increments", None)  # result leaves that are a parameter leaf plus more
        lowered.stateful = bool(getattr(fn, "stateful_ops", True))
        masked = getattr(fn, "masked_form", None)
        if masked is not None:
            masked_type = FunctionType(masked.parameter_type, masked.result_type)
            lowered.masked = self.tf_function(bb.TensorFlowComputation(masked, masked_type, f"{label}, masked"))
        return lowered

    def lambda_(self, node: bb.Lambda, env: Dict[str, Any]) -> Lowered:
        p, body = node.parameter_name, node.result

        def call(arg):
            return self.lower(body, env if p is None else {**env, p: arg})

        free = {ref.name for ref, _ in bb.references_out_of_scope(node)}
        captures = any(is_batched(env[name]) or isinstance(env[name], Lowered) and env[name].captures_batched
                       for name in free if name in env)
        return Lowered(node.type_signature, call, call, captures_batched=captures)

    # -- expressions ------------------------------------------------------

    def lower(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        if node in self._folded:
            return self._folded[node]
        match node:
            case bb.Reference(name=name):
                return env[name]
            case bb.Selection(source=source, index=index):
                value = self.lower(source, env)
                if isinstance(value, Batched):
                    return Batched(value.value[index])
                if isinstance(value, Stacked):
                    inner = value.value
                    return Stacked(Shared(inner.value[index]) if isinstance(inner, Shared) else inner[index])
                return value[index]
            case bb.Struct(elements=elements):
                return Struct([(n, self.lower(e, env)) for n, e in elements])
            case bb.Call(function=fn_node, argument=arg_node):
                fn = self.lower(fn_node, env)
                if arg_node is None:
                    return fn(None)
                arg = self.lower(arg_node, env)
                if is_batched(arg):
                    return fn.batched(arg)
                parameter = fn_node.type_signature.parameter
                if arg_node.type_signature != parameter:
                    arg = self.widen(arg, arg_node.type_signature, parameter)
                return fn(arg)
            case bb.Lambda():
                return self.lambda_(node, env)
            case bb.Block(locals=locals_, result=result):
                scope = dict(env)
                for k, (name, value) in enumerate(locals_):
                    if not self._fold_shared_map(name, value, locals_[k + 1:], result, scope):
                        scope[name] = self.lower(value, scope)
                return self.lower(result, scope)
            case bb.Intrinsic(uri=uri, type_signature=t):
                definition = lookup(uri)
                rule = RULES.get(definition)
                if rule is None:
                    raise Unsupported(f"the TensorFlow executor has no rule for {uri}")
                if isinstance(t, FunctionType):
                    batched = BATCHED[definition]
                    return Lowered(t, lambda arg: rule(self, arg, t), lambda arg: batched(self, arg, t))
                return rule(self, None, t)
            case bb.Literal(value=value, type_signature=t):
                return tf.constant(value, dtype=t.tf_dtype)
            case bb.Placement(placement=p):
                return p
            case bb.TensorFlowComputation():
                return self.tf_function(node)
        raise Unsupported(f"the TensorFlow executor cannot lower {bb.to_string(node)}")

    # -- clients ----------------------------------------------------------

    def stacked(self, value: Any, t: FederatedType) -> Any:
        """The stacked (clients-axis) form of a CLIENTS value, tiling all-equal ones."""
        if isinstance(value, Stacked):
            return unshare(value.value, self.n)
        if t.all_equal:
            return tile(value, self.n)
        return value

    def members(self, value: Any, t: FederatedType) -> Any:
        """A CLIENTS value for client work to read member by member: like ``stacked``, but members
        equal on all clients stay ``Shared`` (once, without a clients axis)."""
        if isinstance(value, Stacked):
            return value.value
        if t.all_equal:
            return Shared(value)
        return value

    def widen(self, value: Any, given: Type, parameter: Type) -> Any:
        """A value of type ``given`` in the form of the (assignable) ``parameter`` type.

        An all-equal CLIENTS value (one member) passed where a function takes
        ``{T}@CLIENTS`` (one member per client) is tiled to the clients axis:
        the function's body treats it as stacked.
        """
        if isinstance(given, FederatedType) and isinstance(parameter, FederatedType):
            if given.all_equal and not parameter.all_equal and given.placement == parameter.placement:
                return self.stacked(value, given)
            return value
        if isinstance(given, StructType) and isinstance(parameter, StructType) and isinstance(value, Struct):
            return Struct([
                (name, self.widen(v, g, q))
                for (name, v), (_, g), (_, q) in zip(value.items(), given.elements, parameter.elements)
            ])
        return value

    def map_clients(self, fn: Lowered, value: Any, value_type: FederatedType, result_member: Type,
                    intrinsic: str = "federated_map") -> Stacked:
        members = self.members(value, value_type)
        vectorized = self._try_vectorized(fn, members, intrinsic)
        if vectorized is not None:
            return vectorized
        return Stacked(self._map_sequential(fn, members, result_member))

    def _try_vectorized(self, fn: Lowered, members: Any, intrinsic: str = "federated_map") -> Optional[Stacked]:
        """The client work on a clients axis, or None where the sequential loop must run it.

        Either way, the choice and its reason go to ``choices``.
        """
        name = getattr(fn, "name", "a lambda")

        def choose(strategy: str, reason: str) -> None:
            self.choices.append(StrategyChoice(intrinsic, name, strategy, reason))

        if self.strategy == "sequential":
            choose("sequential", "strategy='sequential'")
            return None
        if self.n == 0:
            choose("sequential", "no clients")
            return None
        try:
            result = Stacked(self._map_vectorized(fn, members))
        except NotVectorizable as e:
            if self.strategy == "vectorized":
                raise Unsupported(f"strategy='vectorized' cannot run this client work: {e}") from None
            choose("sequential", str(e))
            return None
        choose("vectorized", "all clients at once on the clients axis")
        return result

    def _fold(self, acc_type: Type, zero_flat: List[tf.Tensor], step: Callable[[Any, tf.Tensor], Any]) -> Any:
        """Folds ``step(acc, client)`` over the clients in a graph loop."""

        def body(i, *acc_flat):
            return [i + 1] + cast_flat(step(unflatten(list(acc_flat), acc_type), i), acc_type)

        invariants = [tf.TensorShape([])] + [
            tf.TensorShape(None if lt.shape is None else list(lt.shape)) for lt in leaf_types(acc_type)
        ]
        with unordered_iterations(self.unordered_clients):
            out = tf.while_loop(lambda i, *_: i < self.n, body, [tf.constant(0)] + zero_flat,
                                shape_invariants=invariants, parallel_iterations=10 if self.parallel_clients else 1)
        return unflatten(list(out[1:]), acc_type)

    def _map_vectorized(self, fn: Lowered, members: Any) -> Any:
        out = fn.batched(batched_view(members))
        return unwrap_batched(out, self.n)

    def _map_sequential(self, fn: Lowered, members: Any, result_member: Type) -> Any:
        return over_clients(self.n, lambda i: fn(client_view(members, i)), result_member, self.parallel_clients,
                            self.unordered_clients)



    # -- all the reductions of one map, in one pass ------------------------

    def fold_reductions(self, fn: Lowered, members: Any, reductions: List["Reduction"]) -> List[Any]:
        """Each reduction's result, from one graph loop that runs ``fn`` once per client and folds
        its result into every reduction's accumulator at once: no client's result is kept."""
        xp = algebra.TENSORFLOW
        acc_types = [r.monoid.accumulator_type(r.u) for r in reductions]

        def step(acc, i):
            y = fn(client_view(members, i))
            return Struct.unnamed(*[
                unflatten(r.monoid.accumulate(xp, r.u, flatten(a, at), r.inputs(y, i)), at)
                for r, a, at in zip(reductions, acc, acc_types)
            ])

        zero = [leaf for r in reductions for leaf in r.monoid.zero(xp, r.u)]
        acc = self._fold(StructType([(None, at) for at in acc_types]), zero, step)
        return [unflatten(r.monoid.report(xp, r.u, flatten(a, at)), r.result)
                for r, a, at in zip(reductions, acc, acc_types)]

    def _fold_shared_map(self, name: str, value: bb.BuildingBlock, later: tuple, result: bb.BuildingBlock,
                         scope: Dict[str, Any]) -> bool:
        """``let name=federated_map(<f, v>)`` whose every use is a reduction of it (FedAvg's client
        update feeds a weighted mean and a sum): where ``f`` runs in the sequential loop, one loop
        runs ``f`` and folds every reduction; their values are kept for when the lowering reaches
        them, and ``name`` is never stacked.  True when it handled the local (bound or folded)."""
        if self.strategy == "vectorized" or not _is_call_of(value, defs.FEDERATED_MAP):
            return False
        if not isinstance(value.argument, bb.Struct) or len(value.argument.elements) != 2:
            return False
        uses = _reductions_of(name, later, result)
        if not uses or any(self._occurrence_count(u.node) != 1 for u in uses):
            return False
        if not all(fully_known(u.u) for u in uses):
            return False
        fn, clients = self.lower(value.argument, scope)
        map_type = value.function.type_signature
        members = self.members(clients, map_type.parameter[1])
        mapped = self._try_vectorized(fn, members)
        if mapped is not None:
            scope[name] = mapped
            return True
        reductions = [self._reduction(u, scope) for u in uses]
        for u in uses:
            self.choices.append(StrategyChoice(u.base.uri, fn.name, "sequential",
                                               f"in the loop of {fn.name}, with the other reductions of its results"))
        for u, out in zip(uses, self.fold_reductions(fn, members, reductions)):
            self._folded[u.node] = out
        return True

    def _reduction(self, use: "_Use", scope: Dict[str, Any]) -> "Reduction":
        """How one client's inputs to ``use`` come from its mapped value ``y``."""
        select = None if use.select is None else self.lower(use.select, scope)
        parts = []  # per client operand after the first: ('map', h) or ('stacked', leaves)
        for operand in use.operands:
            if _is_call_of(operand, defs.FEDERATED_MAP):
                parts.append(("map", self.lower(operand.argument.elements[0][1], scope)))
            else:
                parts.append(("stacked", flat(self.stacked(self.lower(operand, scope), operand.type_signature))))

        def inputs(y, i):
            first = y if select is None else select(y)
            x = cast_flat(first, use.base_type.parameter.member if use.base.client_operands is None
                          else use.base_type.parameter[0].member)
            for kind, part in parts:
                if kind == "map":
                    x += cast_flat(part(y), part.type_signature.result)
                else:
                    x += [leaf[i] for leaf in part]
            return x

        return Reduction(use.base.monoid, use.u, inputs, use.node.type_signature.member)

    def _occurrence_count(self, node: bb.BuildingBlock) -> int:
        if self._ir is None:
            return 0
        if self._occurrences is None:
            counts: Dict[bb.BuildingBlock, int] = {}
            for n in bb.walk(self._ir):
                counts[n] = counts.get(n, 0) + 1
            self._occurrences = counts
        return self._occurrences.get(node, 0)


class Reduction(NamedTuple):
    """One aggregation folded over the clients (``Compiler.fold_reductions``)."""

    monoid: algebra.Monoid
    u: Type  # one client's input
    inputs: Callable[[Any, tf.Tensor], List[tf.Tensor]]  # (a client's mapped value, its index) -> u's leaves
    result: Type  # the result's member type


class _Use(NamedTuple):
    """A reduction of a let-bound map ``x``: ``base(<federated_map(<select, x>), operands...>)``."""

    node: bb.Call
    base: defs.IntrinsicDef
    base_type: FunctionType
    select: Optional[bb.BuildingBlock]  # None: x itself
    operands: List[bb.BuildingBlock]  # the other client operands: maps of x, or free of x

    @property
    def u(self) -> Type:
        """One client's input to the reduction."""
        return self.base.client_input_type(self.base_type.parameter)


def _is_call_of(node: bb.BuildingBlock, definition: defs.IntrinsicDef) -> bool:
    return (isinstance(node, bb.Call) and isinstance(node.function, bb.Intrinsic)
            and node.function.uri == definition.uri)


def _mentions(node: bb.BuildingBlock, name: str) -> bool:
    return any(ref.name == name for ref, _ in bb.references_out_of_scope(node))


def _is_ref(node: bb.BuildingBlock, name: str) -> bool:
    return isinstance(node, bb.Reference) and node.name == name


def _as_use(node: bb.BuildingBlock, name: str) -> Optional[_Use]:
    """``node`` as a monoid reduction of the map bound to ``name``, or None."""
    if not (isinstance(node, bb.Call) and isinstance(node.function, bb.Intrinsic)):
        return None
    definition = lookup(node.function.uri)
    arg = node.argument
    if definition.kind is Kind.FUSED and definition.base.monoid is not None:
        if not (isinstance(arg, bb.Struct) and len(arg.elements) >= 2 and _is_ref(arg.elements[1][1], name)):
            return None
        select, operands = arg.elements[0][1], [e for _, e in arg.elements[2:]]
        base = definition.base
        base_type = base.instantiate(defs.unfused_argument_type(definition, arg.type_signature))
        if _mentions(select, name):
            return None
    elif definition.kind is Kind.AGGREGATE and definition.monoid is not None:
        base, base_type, select = definition, node.function.type_signature, None
        if definition.client_operands is None:
            if not _is_ref(arg, name):
                return None
            operands = []
        elif isinstance(arg, bb.Struct) and arg.elements and _is_ref(arg.elements[0][1], name):
            operands = [e for _, e in arg.elements[1:]]
        else:
            return None
    else:
        return None
    if len(operands) != (base.client_operands or 1) - 1:
        return None  # operands that are not clients' inputs: not a plain reduction
    for operand in operands:
        if _is_call_of(operand, defs.FEDERATED_MAP):
            inner = operand.argument
            if not (isinstance(inner, bb.Struct) and len(inner.elements) == 2 and _is_ref(inner.elements[1][1], name)
                    and not _mentions(inner.elements[0][1], name)):
                return None
        elif _mentions(operand, name):
            return None
    return _Use(node, base, base_type, select, operands)


def _reductions_of(name: str, later: tuple, result: bb.BuildingBlock) -> Optional[List[_Use]]:
    """The reductions in ``let ...later in result`` that read ``name``, where they are its only uses
    and can be computed where ``name`` is bound (nothing they read is bound in between); else None."""
    uses: List[_Use] = []
    # Work items: (node, names bound since `name`'s let).
    stack: List[tuple] = [(bb.Block(later, result) if later else result, frozenset())]
    while stack:
        node, bound = stack.pop()
        use = _as_use(node, name)
        if use is not None:
            if any(ref.name in bound for ref, _ in bb.references_out_of_scope(node)):
                return None
            uses.append(use)
            continue
        match node:
            case bb.Reference(name=n) if n == name:
                return None  # another use
            case bb.Lambda(parameter_name=p, result=r):
                if p == name:
                    continue  # shadowed below
                stack.append((r, bound if p is None else bound | {p}))
            case bb.Block(locals=locs, result=r):
                inner = bound
                for n, v in locs:
                    stack.append((v, inner))
                    if n == name:
                        break  # shadowed from here on
                    inner = inner | {n}
                else:
                    stack.append((r, inner))
            case _:
                stack.extend((child, bound) for child in node.children())
    return uses
