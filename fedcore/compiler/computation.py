"""Computations and the decorators that make them.

``@federated_computation`` traces a Python function into a Lambda of typed IR.
``@tf_computation`` wraps TensorFlow code into a TensorFlowComputation node.
Either one, called outside tracing, goes to the innermost invoking context on
the context stack (see ``context``): an execution context, which runs it on
the current executor.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import context
from fedcore.compiler.tf_bridge import infer_tf_result, leaf_types
from fedcore.compiler.tf_function import TFFunction
from fedcore.compiler.tracing import (  # noqa: F401  (arrange_arguments, call_traced: re-exported)
    Value,
    arrange_arguments,
    call_traced,
    infer_type,
    pack_arguments_as_node,
    to_node,
)
from fedcore.types import MAX_DEPTH, FunctionType, StructType, TensorType, Type, TypeNestingError, to_type
from fedcore.types.core import nesting_depth


class Computation:
    """A typed computation: its IR, its ``type_signature``, and a way to call it."""

    def __init__(self, ir: bb.BuildingBlock, name: str, parameter_names: Optional[Tuple[str, ...]] = None):
        out_of_scope = bb.references_out_of_scope(ir)
        mistyped = [(ref, bound) for ref, bound in out_of_scope if bound is not None]
        if mistyped:
            ref, bound = mistyped[0]
            raise context.type_error(
                f"computation {name} is ill-typed: it reads {ref.name} as a value of type {ref.type_signature}, "
                f"but {ref.name} is bound to a value of type {bound}"
            )
        self._ir = ir
        self.name = name
        # The enclosing computation's values this one uses (a nested federated_computation's captures).
        self._captured = sorted({ref.name for ref, _ in out_of_scope})
        # Set when several Python parameters were packed into one struct parameter.
        self._parameter_names = parameter_names

    @property
    def type_signature(self) -> FunctionType:
        return self._ir.type_signature

    @property
    def parameter_names(self) -> Optional[Tuple[str, ...]]:
        """The names of the Python parameters packed into the struct parameter, or None if it is one."""
        return self._parameter_names

    def _fedcore_ir(self) -> bb.BuildingBlock:
        return self._ir

    @property
    def ir(self) -> bb.BuildingBlock:
        return self._ir

    def to_ir_string(self, formatted: bool = False) -> str:
        """The IR as text: compact one-line form, or multi-line when ``formatted``."""
        return bb.to_formatted_string(self._ir) if formatted else bb.to_string(self._ir)

    def __repr__(self) -> str:
        return f"<fedcore.Computation {self.name}: {self.type_signature}>"

    # Called from a tf_computation's body, a computation must run as plain Python:
    # AutoGraph would otherwise try to convert fedcore's own code (and warn that it can't).
    @tf.autograph.experimental.do_not_convert
    def __call__(self, *args, **kwargs):
        top = context.current()
        if isinstance(top, context.TracingContext):
            return call_traced(self._ir, self.name, self.type_signature, args, kwargs, self._parameter_names)
        if isinstance(top, context.TFTracingContext):
            return call_inside_tf(self, args, kwargs)
        self.check_closed()
        return context.invoking_context().invoke(self, args, kwargs)

    def check_closed(self) -> None:
        """A FederatedTypeError if this computation uses values of a computation it was defined in.

        Such a computation (a nested federated_computation that reads its
        enclosing computation's parameters or locals) can only be called while
        the enclosing one is traced.
        """
        if self._captured:
            raise context.captured_values_error(self.name, self._captured)


#: How deeply a polymorphic computation may call itself (at other parameter types) while traced.
MAX_SELF_CALLS = 8


class PolymorphicComputation:
    """A computation without declared types: traced per argument type on first call."""

    def __init__(self, fn: Callable, kind: str, name: str):
        self._fn = fn
        self._kind = kind
        self.name = name
        self._cache: Dict[Tuple[Optional[Type], bool], Computation] = {}
        self._tracing: List[Tuple[Optional[Type], bool]] = []  # the specializations being traced now

    @property
    def type_signature(self):
        raise TypeError(
            f"{self.name} is polymorphic: it has no type signature until it is called or given "
            "parameter types in its decorator"
        )

    def _fedcore_specialize(self, parameter_type: Optional[Type], packed: bool = False) -> Computation:
        """The computation traced at ``parameter_type``.

        ``packed``: the type is a struct of a call's arguments (as ``__call__`` packs them), each
        element to be passed to the Python function as the call passed it, positionally or by
        keyword; parameters the call left out keep their Python defaults.
        """
        key = (parameter_type, packed)
        comp = self._cache.get(key)
        if comp is None:
            if key in self._tracing or len(self._tracing) >= MAX_SELF_CALLS:
                why = (
                    f"at the same parameter type {parameter_type}, which would never end"
                    if key in self._tracing
                    else f"more than MAX_SELF_CALLS={MAX_SELF_CALLS} levels deep"
                )
                raise context.type_error(
                    f"{self.name} calls itself while it is being traced, {why}; a computation is traced once "
                    "into a fixed program, so it cannot recurse without end: write the repetition as a loop "
                    "(tf.while_loop in a tf_computation, or a Python loop of a fixed length)"
                )
            self._tracing.append(key)
            try:
                if packed:
                    fn = _bind_elements(self._fn, parameter_type)
                    comp = _build(fn, self._kind, parameter_type, self.name, unpack=True)
                else:
                    comp = _build(self._fn, self._kind, parameter_type, self.name, unpack=None)
            finally:
                self._tracing.pop()
            self._cache[key] = comp
        return comp

    def __repr__(self) -> str:
        return f"<fedcore.PolymorphicComputation {self.name} ({self._kind})>"

    @tf.autograph.experimental.do_not_convert
    def __call__(self, *args, **kwargs):
        top = context.current()
        if isinstance(top, context.TFTracingContext):
            type_of = lambda v: infer_tf_result(v)[0]  # noqa: E731
        elif isinstance(top, context.TracingContext):
            type_of = lambda v: to_node(v).type_signature  # noqa: E731
        else:
            type_of = infer_type
        _check_binds(self._fn, self.name, args, kwargs)
        names = _python_parameter_names(self._fn)
        parameter_type, packed = _packed_type(
            [type_of(a) for a in args], [(k, type_of(v)) for k, v in kwargs.items()], names, _has_varargs(self._fn)
        )
        return self._fedcore_specialize(parameter_type, packed)(*args, **kwargs)


def _check_binds(fn: Callable, name: str, args, kwargs) -> None:
    """A FederatedTypeError, before any tracing, when the arguments don't fit ``fn``'s parameters."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise context.type_error(f"{name}: {e}") from None


def _packed_type(
    arg_types: List[Type], kw_types: List[Tuple[str, Type]], names: List[str], varargs: bool = False
) -> Tuple[Optional[Type], bool]:
    """The parameter type for a call, and whether it packs the call's arguments into a struct.

    One positional argument for a function of one parameter is the whole parameter; otherwise
    the parameter is a struct of the arguments given, named after the Python parameters they
    fill (keywords by their names), in the Python signature's order.
    """
    if not arg_types and not kw_types:
        return None, False
    if len(arg_types) == 1 and not kw_types and len(names) <= 1 and not varargs:
        return arg_types[0], False
    elements = [(names[i] if i < len(names) else None, t) for i, t in enumerate(arg_types)]
    order = {n: i for i, n in enumerate(names)}
    elements.extend(sorted(kw_types, key=lambda item: order.get(item[0], len(names))))
    return StructType(elements), True


def _bind_elements(fn: Callable, parameter_type: StructType) -> Callable:
    """``fn`` taking a packed call's elements positionally, as a traced computation passes them.

    An element that fills the Python parameter at its own position (or an extra ``*args``
    element) is passed positionally; the others (keywords after a skipped parameter with a
    default, keyword-only parameters) by name.  Parameters without an element keep their
    defaults.
    """
    names = _python_parameter_names(fn)
    elements = parameter_type.elements
    by_position = 0
    while by_position < len(elements) and (
        elements[by_position][0] is None
        or (by_position < len(names) and elements[by_position][0] == names[by_position])
    ):
        by_position += 1
    keywords = [n for n, _ in elements[by_position:]]

    def bound(*values):
        return fn(*values[:by_position], **dict(zip(keywords, values[by_position:])))

    bound.__name__ = getattr(fn, "__name__", "function")
    bound.__qualname__ = getattr(fn, "__qualname__", bound.__name__)
    bound.__signature__ = inspect.Signature(
        [inspect.Parameter(f"element_{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(len(elements))]
    )
    return bound


def _python_parameter_names(fn: Callable) -> List[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _required_keyword_only(fn: Callable) -> List[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty]


def _has_varargs(fn: Callable) -> bool:
    try:
        return any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def _parameter_type_from_decorator(fn: Callable, types: Tuple[Any, ...]) -> Tuple[Optional[Type], bool]:
    """Returns (parameter type, whether to unpack it into several Python arguments)."""
    names = _python_parameter_names(fn)
    keyword_only = _required_keyword_only(fn)
    if types and keyword_only:
        raise TypeError(
            f"{getattr(fn, '__name__', 'function')} has keyword-only parameters {keyword_only} without defaults, "
            "which declared parameter types cannot fill (they fill the positional parameters in order); make "
            "them positional, give them defaults, or leave the types out for a polymorphic computation"
        )
    if not types:
        if names and not _has_varargs(fn):
            raise TypeError(
                f"{getattr(fn, '__name__', 'function')} takes parameters {names} but the decorator gives "
                "no types; give their types, or leave the decorator without parentheses arguments for a "
                "polymorphic computation"
            )
        return None, False
    converted = []
    for spec in types:
        try:
            converted.append(to_type(spec))
        except (TypeError, ValueError) as e:
            raise type(e)(f"bad parameter type for {getattr(fn, '__name__', 'function')}: {e}") from None
        if nesting_depth(converted[-1]) > MAX_DEPTH:
            raise TypeNestingError(
                f"bad parameter type for {getattr(fn, '__name__', 'function')}: it nests more than "
                f"MAX_DEPTH={MAX_DEPTH} levels deep (fedcore.types.MAX_DEPTH)"
            )
    if len(converted) == 1:
        t = converted[0]
        unpack = len(names) > 1 and isinstance(t, StructType) and len(t) == len(names)
        return t, unpack
    if len(names) != len(converted) and not _has_varargs(fn):
        raise TypeError(
            f"{getattr(fn, '__name__', 'function')} takes {len(names)} parameters {names} but the decorator "
            f"gives {len(converted)} types"
        )
    elements = [(names[i] if i < len(names) else None, t) for i, t in enumerate(converted)]
    return StructType(elements), True


def _build(fn: Callable, kind: str, parameter_type: Optional[Type], name: str, unpack: Optional[bool]) -> Computation:
    names = _python_parameter_names(fn)
    if unpack is None:
        unpack = (
            parameter_type is not None
            and isinstance(parameter_type, StructType)
            and (len(names) > 1 or _has_varargs(fn))
            and (len(parameter_type) == len(names) or _has_varargs(fn))
        )
    packed_names = tuple(n for n, _ in parameter_type.elements) if unpack else None
    if kind == "federated":
        ir = trace_federated(fn, parameter_type, unpack, name)
    else:
        function = TFFunction(fn, parameter_type, unpack, name)
        ir = bb.TensorFlowComputation(function, FunctionType(parameter_type, function.result_type), name)
    return Computation(ir, name, packed_names)


def trace_federated(fn: Callable, parameter_type: Optional[Type], unpack: bool, name: str) -> bb.Lambda:
    """Runs ``fn`` on proxy values and returns the traced Lambda.

    Traced inside another federated computation, the result may use that
    computation's parameter and locals (Python closures over traced values):
    binder names are unique across the whole trace, so those references stay
    the enclosing computation's.
    """
    names = _python_parameter_names(fn)
    base = names[0] if len(names) == 1 and not unpack else "arg"
    if base.startswith("fc") and base[2:].isdigit():
        base = "arg"
    ctx = context.TracingContext(name, parent=context.current_tracing())
    with context.pushed(ctx):
        if parameter_type is None:
            pname = None
            result = fn()
        else:
            pname = ctx.bind_parameter(base, parameter_type)
            ref = bb.Reference(pname, parameter_type)
            if unpack:
                args = [Value(bb.Selection(ref, i, n)) for i, (n, _) in enumerate(parameter_type.elements)]
                result = fn(*args)
            else:
                result = fn(Value(ref))
        if result is None:
            raise context.type_error(f"federated computation {name} returned None; it must return a value")
        result_node = to_node(result, f"result of {name}")
        ctx.check_in_scope(result_node)
    body = bb.Block(ctx.locals, result_node) if ctx.locals else result_node
    if parameter_type is None:
        return bb.Lambda(None, None, body)
    return bb.Lambda(pname, parameter_type, body)


def call_inside_tf(comp: Computation, args, kwargs):
    """A tf_computation called from TF code being traced: inline its TF function."""
    ir = comp.ir
    if not isinstance(ir, bb.TensorFlowComputation):
        raise context.type_error(f"{comp.name} is a federated computation; it cannot be called from TensorFlow code")
    value, _ = arrange_arguments(comp.name, comp.type_signature.parameter, args, kwargs, comp.parameter_names)
    return ir.function.call_structured(value)


def _decorator(kind: str, args: Tuple[Any, ...]):
    def wrap(fn: Callable, types: Tuple[Any, ...]):
        if not callable(fn):
            raise TypeError(f"{kind}_computation decorates a function, got {fn!r}")
        name = getattr(fn, "__name__", kind)
        if name == "<lambda>":
            name = "lambda"
        if not types and (_python_parameter_names(fn) or _required_keyword_only(fn)):
            return PolymorphicComputation(fn, kind, name)
        if not types and _has_varargs(fn):
            return PolymorphicComputation(fn, kind, name)
        parameter_type, unpack = _parameter_type_from_decorator(fn, types)
        return _build(fn, kind, parameter_type, name, unpack)

    if len(args) == 1 and inspect.isroutine(args[0]):
        return wrap(args[0], ())
    if len(args) >= 2 and inspect.isroutine(args[0]):
        # federated_computation(fn, T): the function and its parameter types.
        return wrap(args[0], args[1:])
    return lambda fn: wrap(fn, args)


def federated_computation(*args: Any) -> Union["Computation", "PolymorphicComputation", Callable[[Callable], Any]]:
    """Decorates a Python function as a federated computation, traced into typed IR.

    Forms: ``@federated_computation``, ``@federated_computation(T, ...)`` with the
    parameter types (type values, or strings in the notation: ``"{float32}@CLIENTS"``),
    and ``federated_computation(fn)`` or ``federated_computation(fn, T, ...)``.

    Args:
        *args: the function, its parameter types, or both (see the forms above).

    Returns:
        A ``Computation`` with a type signature when the parameter types are given (or
        the function takes none); a ``PolymorphicComputation``, traced at the types of
        each call, when they are not; with only types, a decorator returning one of these.

    Raises:
        TypeError: when what is decorated is not a function, or a parameter type is not a type.
        ValueError: when a type string does not parse.
        FederatedTypeError: when the function's body is ill-typed (traced at once when
            the types are given, else at the first call).
    """
    return _decorator("federated", args)


def tf_computation(*args: Any) -> Union["Computation", "PolymorphicComputation", Callable[[Callable], Any]]:
    """Decorates TensorFlow code as an unplaced computation, traced into a TensorFlow graph.

    Same forms as :func:`federated_computation`: ``@tf_computation``,
    ``@tf_computation(T, ...)``, ``tf_computation(fn)``, ``tf_computation(fn, T, ...)``.
    The parameter types must be unplaced (tensors, structs and sequences).

    Args:
        *args: the function, its parameter types, or both.

    Returns:
        A ``Computation`` (types given, or no parameters), a ``PolymorphicComputation``
        (types taken from each call), or, with only types, a decorator returning one.

    Raises:
        TypeError: when what is decorated is not a function, a parameter type is not a
            type or is placed, or the body fails to trace at its parameter types.
        ValueError: when a type string does not parse.
    """
    return _decorator("tf", args)


# The mask beside a padded batch in a masked form's element (``with_masked_form``): True on the real rows.
MASK_TYPE = TensorType("bool", (None,))


def masked_element_type(element: Type) -> StructType:
    """The element type of a masked form whose step takes ``element``: ``<element,bool[?]>``."""
    return StructType([element, MASK_TYPE])


def with_masked_form(step: Computation, masked: Computation) -> Computation:
    """Records ``masked`` as the masked form of ``step``, a ``sequence_reduce`` step; returns ``step``.

    ``step`` has type ``(<A,E> -> A)``, where every tensor of the element type
    ``E`` has a leading axis of examples (a batch); ``masked`` has type
    ``(<A,<E,bool[?]>> -> A)``.  The promise is that for a batch ``b`` of ``r``
    rows, padded to ``p >= r`` rows by repeating some of its own rows, with a
    mask whose first ``r`` entries are True and the rest False,
    ``masked(a, <padded, mask>)`` equals ``step(a, b)`` (within float
    rounding).  An executor may then pad the partial last batches of clients'
    datasets to the full batch size and run them as one batch size, instead
    of one call per distinct size.  Nothing checks the promise: a masked form
    that breaks it gives wrong results.  The masked form is an optimisation
    hint only; it is not serialized, and executors are free to ignore it.
    Attach it before the step is first used: an executor keys the programs it
    has compiled by the computations they were built from, masked forms
    included, as they were when it first ran them.

    Raises:
        FederatedTypeError: when either is not a tf_computation with its types
            given, or their types do not fit as above.
    """
    for comp, what in ((step, "the step"), (masked, "its masked form")):
        if not isinstance(comp, Computation) or not isinstance(comp.ir, bb.TensorFlowComputation):
            raise context.type_error(f"with_masked_form: {what} must be a tf_computation with its parameter "
                                     f"types given, got {comp!r}")
    st, mt = step.type_signature, masked.type_signature
    p = st.parameter
    if not isinstance(p, StructType) or len(p) != 2 or not st.result.is_equivalent_to(p[0]):
        raise context.type_error(f"with_masked_form: the step must have a type (<A,E> -> A), as a sequence_reduce "
                                 f"step does; {step.name} has type {st}")
    batch_leaves = leaf_types(p[1])
    if not batch_leaves or any(not isinstance(leaf, TensorType) or not leaf.shape or leaf.shape[0] is not None
                               for leaf in batch_leaves):
        raise context.type_error(f"with_masked_form: every tensor of the step's element type must have a leading "
                                 f"axis of examples of unknown size (a batch); {step.name}'s element type is {p[1]}")
    mask = MASK_TYPE
    expected = FunctionType(StructType([p[0], masked_element_type(p[1])]), st.result)
    mp = mt.parameter
    if not (isinstance(mp, StructType) and len(mp) == 2 and mp[0].is_equivalent_to(p[0])
            and isinstance(mp[1], StructType) and len(mp[1]) == 2 and mp[1][0].is_equivalent_to(p[1])
            and mp[1][1].is_equivalent_to(mask) and mt.result.is_equivalent_to(st.result)):
        raise context.type_error(f"with_masked_form: the masked form of {step.name} must have the type {expected}; "
                                 f"{masked.name} has type {mt}")
    step.ir.function.masked_form = masked.ir.function
    return step
