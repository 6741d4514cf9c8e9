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
where the client work does not allow it.  After each call,
``executor.strategy_report`` lists the choice made for each piece of client
work and why (``StrategyChoice``); it is also logged at INFO level to the
``fedcore.runtime.tensorflow`` logger.

``jit_compile`` compiles each program with XLA: ``True`` requires it (an
``ExecutionError`` says why a program cannot be compiled), ``'auto'`` uses it
where it is expected to pay and falls back to the plain program where XLA
cannot compile it, and ``False`` (the default) never does.  The decision is
made once per program; ``executor.jit_report`` holds the last call's
(``JitChoice``).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import re
import threading
import weakref
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import tf_bridge
from fedcore.compiler.intrinsics import lookup
from fedcore.compiler.transformations import pipeline, run_pipeline
from fedcore.runtime.datasets import from_tf_leaf, make_dataset
from fedcore.runtime.executor import ExecutionError, Unsupported
from fedcore.runtime.tensorflow import batched as _batched_rules  # noqa: F401  (registers the vectorized rules)
from fedcore.runtime.tensorflow import rules as _rules  # noqa: F401  (registers the rules)
from fedcore.runtime.tensorflow.lowering import STRATEGIES, Compiler, StrategyChoice, unshare
from fedcore.compiler.tf_function import onednn_on
from fedcore.runtime.tensorflow.values import DatasetCache, Stacked, has_gpu, materialize
from fedcore.structure import Struct
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


def _encode(value: Any, t: Type, n: int, layout: _Layout, cache: DatasetCache) -> Callable[[List[Any]], Any]:
    """Adds the inputs for ``value`` to ``layout``; returns a builder of the in-graph value."""
    match t:
        case TensorType():
            arr, spec = _tensor_input(value, t)
            layout.add(arr, spec, ("t", spec.dtype.name, tuple(spec.shape)))
            return lambda it: next(it)
        case StructType():
            builders = [_encode(v, e, n, layout, cache) for v, e in zip(value, t)]
            names = t.names()
            return lambda it: Struct([(name, b(it)) for name, b in zip(names, builders)])
        case SequenceType(element=e):
            ds = make_dataset(value, e)
            spec = tf.data.DatasetSpec(tf_bridge.element_spec(e))
            layout.add(ds, spec, ("d", str(t)))
            return lambda it: next(it)
        case FederatedType(member=member, all_equal=True):
            return _encode(value, member, n, layout, cache)
        case FederatedType(member=member, placement=p) if p is CLIENTS:
            build = _encode_clients(list(value), member, n, layout, cache)
            return lambda it: Stacked(build(it))
    raise Unsupported(f"the TensorFlow executor cannot take an argument of type {t}")


def _encode_clients(values: List[Any], t: Type, n: int, layout: _Layout, cache: DatasetCache):
    match t:
        case TensorType():
            arrays = [_tensor_input(v, t)[0] for v in values]
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise Unsupported(
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
            builders = [_encode_clients([v[i] for v in values], e, n, layout, cache) for i, e in enumerate(t)]
            names = t.names()
            return lambda it: Struct([(name, b(it)) for name, b in zip(names, builders)])
        case SequenceType(element=e):
            data = materialize(values, e, cache=cache)
            specs = data.specs()
            layout.key.append(data.signature_key())
            for array, spec in zip(data.tensors(), specs):
                layout.add(array, spec, ("s", spec.dtype.name, tuple(spec.shape)))

            def build(it):
                return data.in_graph([next(it) for _ in specs])

            return build
    raise Unsupported(f"the TensorFlow executor cannot take client values of type {t}")


# --------------------------------------------------------------------------
# XLA.

JIT_MODES = (False, True, "auto")

# Ops XLA compiles into no-ops: a program that checks something with them (an integer
# sum's overflow) would lose the check, so it never runs under XLA.
_XLA_DROPPED_OPS = frozenset({"Assert"})


class JitChoice(NamedTuple):
    """Whether one program runs compiled by XLA, and why."""

    computation: str
    xla: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.computation}: {'XLA' if self.xla else 'no XLA'}: {self.reason}"


def _xla_pays_here() -> bool:
    """Whether ``jit_compile='auto'`` chooses XLA: with a GPU, or on a CPU whose TF kernels are Eigen's.

    Measured on the seed FedAvg round (docs/benchmarks.md): where TensorFlow's
    CPU kernels are oneDNN's, XLA was slower than TensorFlow's own kernels at
    most cohort sizes; where oneDNN is off, XLA's compiled round took 0.5x to
    0.8x the time of the hand-vectorized floor on TensorFlow's kernels.
    """
    return has_gpu() or not onednn_on()


def _dropped_ops(graph_def: Any) -> List[str]:
    nodes = list(graph_def.node)
    for fn in graph_def.library.function:
        nodes.extend(fn.node_def)
    return sorted({n.op for n in nodes if n.op in _XLA_DROPPED_OPS})


def _xla_error(message: str) -> str:
    """XLA's refusal in a line: the operations it has no kernel for, or its first line without graph attributes."""
    ops = sorted(set(re.findall(r"(\w+) \(No registered '", message)) - {"_Arg", "_Retval"})
    if ops:
        return f"it uses operations XLA cannot compile: {', '.join(ops)}"
    if "No registered '_Arg'" in message or "No registered '_Retval'" in message:
        return "it takes or returns values XLA cannot hold (strings or datasets)"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return re.sub(r"\[_XlaMustCompile[^\]]*\]", "", lines[0] if lines else message)


class _Program:
    """A compiled program: the plain concrete function and, where chosen, its XLA-compiled form.

    XLA compiles on the first call; if it cannot, the program falls back to
    the plain function for good (``jit_compile='auto'``) or raises an
    ``ExecutionError`` (``jit_compile=True``).
    """

    def __init__(self, name: str, plain: Any, compiler: Any, specs: List[Any], jit_compile: Union[bool, str]):
        self.name = name
        self.plain = plain
        self.specs = list(specs)
        # Every input an array (no dataset): the program can be called flat (see ``_call``).
        self._flat = all(isinstance(s, tf.TensorSpec) for s in self.specs)
        self.fedcore_compiler = compiler
        self.required = jit_compile is True
        self.xla = None
        self._xla_ran = False
        if jit_compile is False:
            self.choice = JitChoice(name, False, "jit_compile=False")
            return
        if jit_compile == "auto" and not _xla_pays_here():
            self.choice = JitChoice(name, False, "jit_compile='auto' uses XLA on a GPU, or on a CPU where TensorFlow's "
                                                 "oneDNN kernels are off; here no GPU is visible and oneDNN is on")
            return
        dropped = _dropped_ops(plain.graph.as_graph_def())
        if dropped:
            reason = (f"the program checks its values with {', '.join(dropped)} ops (e.g. an integer sum's "
                      "overflow check), which XLA compiles into no-ops")
            if self.required:
                raise ExecutionError(f"{name} cannot run with jit_compile=True: {reason}")
            self.choice = JitChoice(name, False, reason)
            return
        self.xla = tf.function(lambda *inputs: plain(*inputs), input_signature=specs, autograph=False,
                               jit_compile=True).get_concrete_function()
        self.choice = JitChoice(name, True, f"jit_compile={jit_compile!r}")

    @property
    def graph(self) -> Any:
        """The program's graph (the plain concrete function's; XLA compiles the same one)."""
        return self.plain.graph

    def _call(self, fn: Any, inputs: Tuple[Any, ...]) -> Any:
        """``fn(*inputs)``; where every input is an array, called flat, without TensorFlow's binding of them.

        The inputs are exactly the program's signature, in its order (``_Layout``), so the binding
        (matching each to its spec, a conversion and a subtype check each) would only repeat work.
        """
        flat = getattr(fn, "_call_flat", None)  # ConcreteFunction's own call of already flat tensors
        if flat is None or not self._flat or len(inputs) != len(self.specs):
            return fn(*inputs)
        return flat([tf.convert_to_tensor(x, s.dtype) for x, s in zip(inputs, self.specs)], fn.captured_inputs)

    def __call__(self, *inputs):
        if self.xla is None:
            return self._call(self.plain, inputs)
        if self._xla_ran:
            return self._call(self.xla, inputs)
        try:
            out = self.xla(*inputs)
        except tf.errors.OpError as e:  # XLA compiles on the first call
            reason = f"XLA cannot compile it: {_xla_error(e.message)}"
            if self.required:
                raise ExecutionError(f"{self.name} cannot run with jit_compile=True: {reason}") from None
            self.xla = None
            self.choice = JitChoice(self.name, False, reason)
            return self.plain(*inputs)
        self._xla_ran = True
        return out


# --------------------------------------------------------------------------
# The executor.

_log = logging.getLogger("fedcore.runtime.tensorflow")


class TensorFlowExecutor:
    """Compiles each computation into one tf.function and runs it.

    ``strategy`` is 'auto' (vectorized where the client work allows it,
    sequential elsewhere), 'sequential' or 'vectorized' (an error where it
    can't apply).  ``num_clients`` is used when no argument is placed at CLIENTS.
    ``jit_compile`` is False, True or 'auto' (see the module's documentation).
    """

    name = NAME
    max_programs = 64  # compiled programs kept per executor

    def __init__(self, num_clients: Optional[int] = None, strategy: str = "auto",
                 jit_compile: Union[bool, str] = False):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not any(jit_compile is m if isinstance(m, bool) else jit_compile == m for m in JIT_MODES):
            raise ValueError(f"jit_compile must be False, True or 'auto', got {jit_compile!r}")
        self.jit_compile = jit_compile
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        self.num_clients = num_clients
        self.strategy = strategy
        # Compiled programs, keyed by the program's content (see ``program_key``), least recently used first.
        self._programs: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
        self.trace_count = 0
        # Client datasets read once and kept, keyed by their tf.data graph's content.
        self._datasets = DatasetCache()
        self.strategy_report: List[StrategyChoice] = []
        self.jit_report: Optional[JitChoice] = None

    def __repr__(self) -> str:
        jit = f", jit_compile={self.jit_compile!r}" if self.jit_compile is not False else ""
        return f"TensorFlowExecutor(num_clients={self.num_clients}, strategy={self.strategy!r}{jit})"

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        return self.prepare(comp, argument, num_clients)()

    def prepare(self, comp, argument, num_clients: Optional[int] = None) -> Callable[[], Any]:
        """Encodes the argument and compiles (or finds) the program; returns the call that runs it.

        Nothing of the computation runs here: every ``Unsupported`` (an argument
        or a piece of IR this executor cannot handle) is raised by ``prepare``,
        before the program starts, never by the call it returns.
        """
        n = num_clients if num_clients is not None else self.num_clients
        t = comp.type_signature
        layout = _Layout()
        builder = None
        if t.parameter is not None:
            if n is None and _needs_clients(t.parameter):
                raise ExecutionError("the number of clients is unknown; set TensorFlowExecutor(num_clients=N)")
            builder = _encode(argument, t.parameter, n or 0, layout, self._datasets)
        if n is None:
            if _needs_clients(t.result) or _uses_client_count(comp.ir):
                raise ExecutionError(
                    "the number of clients cannot be inferred, since no argument is placed at CLIENTS; "
                    "set it with TensorFlowExecutor(num_clients=N)"
                )
            n = 0
        key = (program_key(comp.ir), n, tuple(layout.key))
        program = self._programs.get(key)
        if program is None:
            program = self._compile(comp, builder, layout.specs, n)
            self._programs[key] = program
            while len(self._programs) > self.max_programs:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(key)
        compiler = program.fedcore_compiler

        def run():
            try:
                out = program(*layout.arrays)
            except tf.errors.InvalidArgumentError as e:
                raise ExecutionError(f"{comp.name} failed in the TensorFlow executor: {_op_message(e.message)}") from None
            self.strategy_report = list(compiler.choices)
            self.jit_report = program.choice
            if compiler.choices and _log.isEnabledFor(logging.INFO):
                _log.info("%s: %s", comp.name, "; ".join(str(c) for c in compiler.choices))
            if self.jit_compile is not False and _log.isEnabledFor(logging.INFO):
                _log.info("%s", program.choice)
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            return _decode(out, t.result, n)

        return run

    def _compile(self, comp, builder, specs, n: int):
        ir = run_pipeline(comp.ir, pipeline("execution"))
        compiler = Compiler(n, self.strategy, ir)
        # XLA compiles only static shapes: client work then steps all clients, masked, not a shrinking subset.
        compiler.static_shapes = self.jit_compile is True or (self.jit_compile == "auto" and _xla_pays_here())
        result_type = comp.type_signature.result

        def program(*inputs):
            self.trace_count += 1
            compiler.choices = []
            fn = compiler.lower(ir, {})
            if builder is None:
                value = fn(None)
            else:
                value = fn(builder(iter(inputs)))
            return _graph_outputs(value, result_type, n)

        # Traced here, once, into a concrete function that is called directly. A tf.function
        # called for its first time counts as a retracing of ``program``'s code, which every
        # compiled program shares; TF would warn about "retracing" after a few distinct programs.
        compiled = tf.function(program, input_signature=specs, autograph=False).get_concrete_function()
        return _Program(comp.name, compiled, compiler, specs, self.jit_compile)  # its compiler's ``choices``: the strategy report


def _op_message(message: str) -> str:
    """A failed check's own message (such as an integer sum's overflow), without TF's graph trace."""
    start = message.find("assertion failed: ")
    if start < 0:
        return message
    return message[start:].split("\n\t [[")[0].strip()


_program_keys: "weakref.WeakKeyDictionary[bb.BuildingBlock, str]" = weakref.WeakKeyDictionary()


def program_key(ir: bb.BuildingBlock) -> str:
    """A fingerprint of a program's content: its text with types, and each intrinsic's type.

    TF computations appear by their own content fingerprint; one that captures
    variables is also keyed by those variables, since its meaning depends on them.
    Remembered per IR object (IR is immutable), since every call asks for it.
    """
    key = _program_keys.get(ir)
    if key is None:
        key = _program_keys[ir] = _program_key(ir)
    return key


def _program_key(ir: bb.BuildingBlock) -> str:
    h = hashlib.sha256(bb.to_string(ir, annotated=True).encode())
    for node in bb.walk(ir):
        if isinstance(node, bb.Intrinsic):
            h.update(f"|{node.uri}:{node.type_signature}".encode())
        elif isinstance(node, bb.TensorFlowComputation):
            h.update(f"|{node.type_signature}|{node.function.fingerprint}".encode())
            for v in node.function.variables:  # the same code over other variables is another program
                h.update(f"|v{_variable_token(v)}".encode())
            # A step with a masked form compiles to another program than the same step without one.
            masked = getattr(node.function, "masked_form", None)
            if masked is not None:
                h.update(f"|m{masked.fingerprint}".encode())
                for v in masked.variables:
                    h.update(f"|v{_variable_token(v)}".encode())
    return h.hexdigest()


_tokens: Dict[int, Tuple[Any, int]] = {}
_token_counter = itertools.count()
_token_lock = threading.Lock()


def _variable_token(variable: Any) -> int:
    """A number for ``variable`` that no other variable of this process ever gets.

    ``id()`` is not enough: a variable that dies frees its address for a new one,
    and a cached program keeps the old variable's resource alive, so keying by
    ``id`` ran a new computation on an old computation's variables.
    """
    with _token_lock:
        entry = _tokens.get(id(variable))
        if entry is not None and entry[0]() is variable:
            return entry[1]
        token = next(_token_counter)
        _tokens[id(variable)] = (weakref.ref(variable, lambda _, key=id(variable): _forget(key, token)), token)
        return token


def _forget(key: int, token: int) -> None:
    with _token_lock:
        entry = _tokens.get(key)
        if entry is not None and entry[1] == token:
            del _tokens[key]


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
            if lookup(node.uri).is_aggregation:
                return True
    return False


def _graph_outputs(value: Any, t: Type, n: int) -> List[Any]:
    match t:
        case StructType():
            return [leaf for v, e in zip(value, t) for leaf in _graph_outputs(v, e, n)]
        case FederatedType(member=m, all_equal=False, placement=p) if p is CLIENTS:
            stacked = unshare(value.value, n) if isinstance(value, Stacked) else value
            return _graph_outputs(stacked, m, n)
        case FederatedType(member=m):
            return _graph_outputs(value, m, n)
        case SequenceType():
            return [value]
        case TensorType():
            return [tf.convert_to_tensor(value, dtype=t.tf_dtype)]
    raise Unsupported(f"the TensorFlow executor cannot return a value of type {t}")


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


