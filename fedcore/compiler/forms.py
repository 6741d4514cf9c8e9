"""Deployment forms: a round of federated work cut into the pieces that real platforms run.

A federated platform does not run one program: the server runs some code,
ships values to clients, clients run their own code on their data, and an
aggregation service combines what they send back.  The two forms here say
which code runs where, for computations shaped like one training round,
``(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)``.

``MapReduceForm`` (all pieces unplaced, one client at a time)::

    c = prepare(s)                                  # server:  (S -> C)
    u, v = work(d, c)  for each client              # client:  (<D,C> -> <U,V>)
    a = zero(); a = accumulate(a, u) ...            # aggregation, in any grouping:
    a = merge(a1, a2); r = report(a)                #   zero, accumulate, merge, report
    t = secure sum of v, each bounded by secure_sum_max_input()
    s2, m = update(s, <r, t>)                       # server:  (<S,<R,T>> -> <S,M>)

``DistributeAggregateForm`` (federated pieces, all clients at once)::

    b, i = server_prepare(s)                        # (S@SERVER -> <<B..>,<I..>>)
    c = server_to_client_broadcast(b)               # broadcasts only
    v = client_work(data, c)                        # client maps only
    a = client_to_server_aggregation(i, v)          # aggregations only
    s2, m = server_result(i, a)                     # server work only

Both are cut from the call-dominant form (``transformations.to_call_dominant``):
each bound call gets a phase from its intrinsic and its dependencies.  A
computation whose clients need a value that depends on an aggregation (two
dependent broadcast-and-aggregate rounds) cannot be cut, and says so.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.tf_bridge import leaf_types
from fedcore.compiler import transformations as tr
from fedcore.compiler.computation import Computation
from fedcore.compiler import algebra
from fedcore.compiler.intrinsics import IntrinsicDef, Kind, lookup
from fedcore.types import FederatedType, FunctionType, StructType, Type
from fedcore.types.core import CLIENTS, SERVER


from fedcore.compiler.form_types import (  # noqa: F401  (the forms are part of this module's API)
    SHAPE,
    DistributeAggregateForm,
    FormError,
    MapReduceForm,
    member_of,
    pair_type,
    check_shape,
)

__all__ = ["DistributeAggregateForm", "FormError", "MapReduceForm", "SHAPE", "check_shape",
           "to_distribute_aggregate_form", "to_map_reduce_form"]


# --------------------------------------------------------------------------
# Splitting a round into phases.

STATE, DATA = "server_state", "client_data"


def _placements(t: Optional[Type]) -> set:
    match t:
        case FederatedType(placement=p):
            return {p}
        case StructType():
            found: set = set()
            for e in t:
                found |= _placements(e)
            return found
    return set()


@attrs.frozen
class _Split:
    """A round in call-dominant form, its calls sorted by phase (each list keeps program order)."""

    state_type: Type
    data_type: Type
    consts: List[Tuple[str, bb.Call]]
    before: List[Tuple[str, bb.Call]]       # server work on the state, before anything is broadcast
    broadcasts: List[Tuple[str, bb.Call]]
    clients: List[Tuple[str, bb.Call]]
    aggregations: List[Tuple[str, bb.Call]]
    after: List[Tuple[str, bb.Call]]        # server work that needs an aggregate
    result: bb.BuildingBlock

    def types(self) -> Dict[str, Type]:
        found = {STATE: self.state_type, DATA: self.data_type}
        for group in (self.consts, self.before, self.broadcasts, self.clients, self.aggregations, self.after):
            found.update((n, v.type_signature) for n, v in group)
        return found


def _split(comp_ir: bb.BuildingBlock, form: str) -> _Split:
    check_shape(comp_ir.type_signature, form)
    cdf = tr.to_call_dominant(tr.normalize_all_equal(comp_ir))
    if not isinstance(cdf, bb.Lambda):
        raise FormError(f"cannot compile a {type(comp_ir).__name__} to a {form}: only federated computations have forms")
    state_type, data_type = cdf.parameter_type[0], cdf.parameter_type[1]
    # Name the two halves of the parameter, so each call's dependencies say which half it reads.
    halves = bb.Struct([(n, bb.Reference(v, t)) for (n, t), v in zip(cdf.parameter_type.elements, (STATE, DATA))])
    body = tr.reduce_calls(tr.substitute(cdf.result, cdf.parameter_name, halves))
    calls = list(body.locals) if isinstance(body, bb.Block) else []
    result = body.result if isinstance(body, bb.Block) else body
    phase: Dict[str, str] = {STATE: "before", DATA: "clients"}
    groups: Dict[str, List[Tuple[str, bb.Call]]] = {
        k: [] for k in ("consts", "before", "broadcasts", "clients", "aggregations", "after")
    }
    origin: Dict[str, bb.Call] = {}  # for values that need an aggregate: the first aggregation they need
    for name, call in calls:
        names = [d for d in tr.free_names(call) if d in phase]
        deps = {phase[d] for d in names}
        needed = next((origin[d] for d in names if d in origin), None)
        places = _placements(call.type_signature)
        definition = _definition(call)
        uri = None if definition is None else definition.uri
        where = _where(call)
        if not places:
            kind = "consts"
            if deps - {"consts"}:
                raise FormError(f"cannot compile to a {form}: the unplaced value {bb.to_string(call)} "
                                f"depends on placed values{where}")
        elif definition is not None and definition.is_aggregation:
            kind = "aggregations"
            if needed is not None:
                raise _two_rounds(form, call, needed)
            needed = call
        elif CLIENTS in places:
            kind = "broadcasts" if definition is not None and definition.broadcast else "clients"
            if needed is not None:
                raise _two_rounds(form, call, needed)
        else:
            kind = "after" if deps & {"after", "aggregations"} else "before"
            if not _runs_at(definition, SERVER):
                raise FormError(f"cannot compile to a {form}: {uri or bb.to_string(call.function)} "
                                f"is not server work{where}")
        if kind == "clients" and not _runs_at(definition, CLIENTS):
            raise FormError(f"cannot compile to a {form}: {uri or bb.to_string(call.function)} "
                            f"is not client work{where}")
        phase[name] = kind
        if needed is not None:
            origin[name] = needed
        groups[kind].append((name, call))
    return _Split(state_type, data_type, result=result, **groups)


def _definition(call: bb.Call) -> Optional[IntrinsicDef]:
    return lookup(call.function.uri) if isinstance(call.function, bb.Intrinsic) else None


# What one party can run on its own, once the intrinsic's placement is stripped (see _Unplacer).
_LOCAL_KINDS = (Kind.VALUE, Kind.EVAL, Kind.MAP, Kind.ZIP)


def _runs_at(definition: Optional[IntrinsicDef], placement) -> bool:
    """Whether a call of ``definition`` is work done at ``placement`` alone."""
    return (definition is not None and definition.placement is placement and definition.kind in _LOCAL_KINDS
            and not definition.broadcast)


def _where(call: bb.Call) -> str:
    return f" (traced at {call.source})" if call.source is not None else ""


def _two_rounds(form: str, call: bb.Call, aggregate: bb.Call) -> FormError:
    what = call.function.uri if isinstance(call.function, bb.Intrinsic) else bb.to_string(call.function)
    return FormError(
        f"cannot compile to a {form}: {what}{_where(call)} sends clients a value that depends on "
        f"{aggregate.function.uri}{_where(aggregate)}, an aggregate of this same round; that is two dependent "
        f"broadcast-and-aggregate rounds, and a form holds one. Split the computation into one round per aggregation."
    )


# --------------------------------------------------------------------------
# Building pieces.

Spec = Any  # a (name, type) pair, or a list of specs: the parameter's nesting


def _spec_type(spec: Spec) -> Type:
    if isinstance(spec, tuple):
        return spec[1]
    return StructType([(None, _spec_type(s)) for s in spec])


def _spec_bindings(spec: Spec, source: bb.BuildingBlock) -> List[Tuple[str, bb.BuildingBlock]]:
    if isinstance(spec, tuple):
        return [(spec[0], source)]
    found = []
    for i, s in enumerate(spec):
        found.extend(_spec_bindings(s, bb.Selection(source, i)))
    return found


def _piece(name: str, spec: Optional[Spec], locals_: Sequence[Tuple[str, bb.BuildingBlock]],
           result: bb.BuildingBlock) -> Computation:
    """``(arg -> (let <names from arg>, locals in result))``, cleaned up; a Computation named ``name``."""
    if spec is None:
        lam = bb.Lambda(None, None, bb.Block(list(locals_), result))
    else:
        param = "arg"
        taken = {n for n, _ in locals_} | tr.free_names(result)
        while param in taken:
            param += "_"
        t = _spec_type(spec)
        bindings = _spec_bindings(spec, bb.Reference(param, t))
        lam = bb.Lambda(param, t, bb.Block(bindings + list(locals_), result))
    lam = tr.run_pipeline(lam, [tr.remove_unused_locals, tr.reduce_calls, tr.inline_blocks, tr.reduce_calls])
    leftover = tr.free_names(lam)
    if leftover:
        raise AssertionError(f"piece {name} refers to names it does not bind: {sorted(leftover)}")
    return Computation(lam, name)


def _refs(names: Sequence[str], types: Dict[str, Type]) -> bb.Struct:
    return bb.Struct([(None, bb.Reference(n, types[n])) for n in names])


def _used_by(names: Sequence[str], users: Sequence[bb.BuildingBlock]) -> List[str]:
    """Those of ``names`` that some node of ``users`` refers to, in order."""
    wanted: set = set()
    for u in users:
        wanted |= tr.free_names(u)
    return [n for n in names if n in wanted]


def to_distribute_aggregate_form(comp: Any) -> DistributeAggregateForm:
    """Cuts a round ``(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)`` into a DistributeAggregateForm."""
    comp = _as_computation(comp, "DistributeAggregateForm")
    split = _split(comp.ir, "DistributeAggregateForm")
    types = split.types()
    consts = split.consts
    server_names = [STATE] + [n for n, _ in split.before]
    to_broadcast = _used_by(server_names, [v for _, v in split.broadcasts])
    kept = _used_by(server_names, [v for _, v in split.aggregations + split.after] + [split.result])
    broadcast_names = [n for n, _ in split.broadcasts]
    client_names = [DATA] + broadcast_names + [n for n, _ in split.clients]
    received = _used_by(broadcast_names, [v for _, v in split.clients + split.aggregations])
    sent = _used_by(client_names, [v for _, v in split.aggregations])
    aggregates = _used_by([n for n, _ in split.aggregations], [v for _, v in split.after] + [split.result])

    def spec(names):
        return [(n, types[n]) for n in names]

    pieces = dict(
        server_prepare=_piece(
            "server_prepare", (STATE, types[STATE]), consts + split.before,
            bb.Struct([(None, _refs(to_broadcast, types)), (None, _refs(kept, types))])),
        server_to_client_broadcast=_piece(
            "server_to_client_broadcast", spec(to_broadcast), consts + split.broadcasts, _refs(received, types)),
        client_work=_piece(
            "client_work", [(DATA, types[DATA]), spec(received)], consts + split.clients, _refs(sent, types)),
        client_to_server_aggregation=_piece(
            "client_to_server_aggregation", [spec(kept), spec(sent)], consts + split.aggregations,
            _refs(aggregates, types)),
        server_result=_piece(
            "server_result", [spec(kept), spec(aggregates)], consts + split.after, split.result),
    )
    return DistributeAggregateForm(comp.type_signature, **pieces)


def _as_computation(comp: Any, form: str) -> Computation:
    if isinstance(comp, Computation):
        return comp
    if hasattr(comp, "_fedcore_specialize"):
        raise FormError(f"{getattr(comp, 'name', comp)} is polymorphic; give its decorator parameter types "
                        f"to compile it to a {form}")
    raise FormError(f"only a fedcore Computation can be compiled to a {form}, got {type(comp).__name__}")


# --------------------------------------------------------------------------
# MapReduceForm: the same phases, unplaced.


class _Unplacer:
    """Rewrites calls of one phase as unplaced code, as one client (or the server) runs it."""

    def __init__(self, types: Dict[str, Type], form: str):
        self.types = {n: member_of(t) for n, t in types.items()}
        self.form = form

    def atom(self, n: bb.BuildingBlock) -> bb.BuildingBlock:
        match n:
            case bb.Reference(name=name) if name in self.types:
                return bb.Reference(name, self.types[name])
            case bb.Selection(source=s, index=i, name=name):
                source = self.atom(s)
                return source.elements[i][1] if isinstance(source, bb.Struct) else bb.Selection(source, i, name)
            case bb.Struct(elements=elements, container=container):
                return bb.Struct([(name, self.atom(e)) for name, e in elements], container=container)
        return n

    def call(self, name: str, call: bb.Call) -> bb.BuildingBlock:
        if not isinstance(call.function, bb.Intrinsic) or not _placements(call.type_signature):
            return call
        definition, arg = _definition(call), None if call.argument is None else self.atom(call.argument)
        match definition.kind:
            case Kind.MAP:
                new = bb.Call(_element(arg, 0), _element(arg, 1))
            case Kind.ZIP:
                new = bb.Struct(list(arg.elements) if isinstance(arg, bb.Struct) else
                                [(n, bb.Selection(arg, i)) for i, (n, _) in enumerate(arg.type_signature.elements)],
                                container=call.argument.type_signature.container)
            case Kind.VALUE | Kind.BROADCAST:
                new = arg
            case Kind.EVAL:
                new = bb.Call(arg)
            case _:
                raise FormError(f"cannot compile {definition.uri} into a {self.form} piece{_where(call)}")
        self.types[name] = new.type_signature
        return new


def _element(node: bb.BuildingBlock, i: int) -> bb.BuildingBlock:
    return node.elements[i][1] if isinstance(node, bb.Struct) else bb.Selection(node, i)


@attrs.frozen
class _Monoid:
    """One aggregation as zero / accumulate / merge / report (IR nodes) over an accumulator."""

    zero: bb.BuildingBlock        # a value of the accumulator type
    accumulate: bb.BuildingBlock  # (<A,U> -> A)
    merge: bb.BuildingBlock       # (<A,A> -> A)
    report: bb.BuildingBlock      # (A -> R)


def _leafwise(name: str, parameter: Type, fn: Callable[[List[tf.Tensor]], List[tf.Tensor]],
              result: Type) -> bb.TensorFlowComputation:
    """A TF computation from ``parameter`` to ``result`` given as a function of flat leaf lists."""
    from fedcore.compiler import tf_bridge
    from fedcore.compiler.tf_function import TFFunction, _leaves_of_user_value

    @tf.autograph.experimental.do_not_convert
    def python_fn(value=None):
        leaves = _leaves_of_user_value(value, parameter, name)
        return tf_bridge.to_user_structure(tf_bridge.unflatten(fn(leaves), result), result)

    function = TFFunction(python_fn, parameter, False, name)
    if function.result_type != result:
        raise AssertionError(f"{name} traced to {function.result_type}, expected {result}")
    return bb.TensorFlowComputation(function, FunctionType(parameter, result), name)


def _monoid(definition: IntrinsicDef, parameter: Type, arg: bb.BuildingBlock) -> _Monoid:
    """The zero/accumulate/merge/report of one aggregation, given its (unplaced) argument atom.

    For ``federated_aggregate`` they are its arguments; otherwise they are the
    definition's monoid, traced as TF computations.
    """
    if definition.monoid is None:
        zero, accumulate, merge, report = (_element(arg, i) for i in range(1, 5))
        return _Monoid(zero, accumulate, merge, report)
    m, xp, name = definition.monoid, algebra.TENSORFLOW, definition.uri
    u = definition.client_input_type(parameter)
    acc = m.accumulator_type(u)
    k = len(leaf_types(acc))
    zero = _leafwise(f"{name}_zero", None, lambda xs: m.zero(xp, u), acc)
    accumulate = _leafwise(f"{name}_accumulate", pair_type(acc, u), lambda xs: m.accumulate(xp, u, xs[:k], xs[k:]), acc)
    merge = _leafwise(f"{name}_merge", pair_type(acc, acc), lambda xs: m.merge(xp, u, xs[:k], xs[k:]), acc)
    report = _leafwise(f"{name}_report", acc, lambda xs: m.report(xp, u, xs), m.result_type(u))
    return _Monoid(bb.Call(zero), accumulate, merge, report)


def to_map_reduce_form(comp: Any) -> MapReduceForm:
    """Cuts a round ``(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)`` into a MapReduceForm."""
    comp = _as_computation(comp, "MapReduceForm")
    form = "MapReduceForm"
    split = _split(comp.ir, form)
    placed_types = split.types()
    un = _Unplacer(placed_types, form)
    consts = split.consts
    before = [(n, un.call(n, v)) for n, v in split.before]
    server_names = [STATE] + [n for n, _ in split.before]
    to_broadcast = _used_by(server_names, [v for _, v in split.broadcasts])
    client_side = [(n, un.call(n, v)) for n, v in split.broadcasts + split.clients]

    plain, secure = [], []
    for name, call in split.aggregations:
        (secure if _definition(call).kind is Kind.SECURE else plain).append((name, call))
    client_values, monoids = [], []
    for name, call in plain:
        definition, arg = _definition(call), un.atom(call.argument)
        k = definition.client_operands
        if k is None:
            client_values.append(arg)
        elif k == 1:
            client_values.append(_element(arg, 0))
        else:
            client_values.append(bb.Struct([(None, _element(arg, i)) for i in range(k)]))
        monoids.append(_monoid(definition, call.argument.type_signature, arg))
    secure_values = [_element(un.atom(call.argument), 0) for _, call in secure]
    secure_bounds = [_element(un.atom(call.argument), 1) for _, call in secure]

    types = dict(un.types)
    c_spec = [(n, types[n]) for n in to_broadcast]
    work = _piece("work", [(DATA, types[DATA]), c_spec], consts + client_side,
                  bb.Struct([(None, bb.Struct([(None, v) for v in client_values])),
                             (None, bb.Struct([(None, v) for v in secure_values]))]))
    prepare = _piece("prepare", (STATE, types[STATE]), consts + before, _refs(to_broadcast, types))

    zero = _piece("zero", None, consts, bb.Struct([(None, m.zero) for m in monoids]))
    acc_type = zero.type_signature.result
    u_type = work.type_signature.result[0]

    def pairwise(name: str, fn_of, second: Type) -> Computation:
        p = bb.Reference("arg", pair_type(acc_type, second))
        elements = []
        for k, m in enumerate(monoids):
            fn = fn_of(m)
            elements.append((None, bb.Call(fn, _argument_for(fn, bb.Selection(bb.Selection(p, 0), k),
                                                             bb.Selection(bb.Selection(p, 1), k)))))
        return _piece(name, ("arg", p.type_signature), consts, bb.Struct(elements))

    accumulate = pairwise("accumulate", lambda m: m.accumulate, u_type)
    merge = pairwise("merge", lambda m: m.merge, acc_type)
    a = bb.Reference("arg", acc_type)
    report = _piece("report", ("arg", acc_type), consts,
                    bb.Struct([(None, bb.Call(m.report, bb.Selection(a, k))) for k, m in enumerate(monoids)]))
    bounds = _piece("secure_sum_max_input", None, consts, bb.Struct([(None, b) for b in secure_bounds]))

    # update: the server's work before broadcasting is done again from the state (it is pure),
    # then the aggregates are bound by name and the server's remaining work runs.
    report_type, secure_type = report.type_signature.result, work.type_signature.result[1]
    for (name, _), t in zip(plain, report_type):
        types[name] = t
    for (name, _), t in zip(secure, secure_type):
        types[name] = t
    un.types.update(types)
    after = [(n, un.call(n, v)) for n, v in split.after]
    update = _piece(
        "update",
        [(STATE, types[STATE]), [[(n, types[n]) for n, _ in plain], [(n, types[n]) for n, _ in secure]]],
        consts + before + after, un.atom(split.result))
    return MapReduceForm(comp.type_signature, prepare, work, zero, accumulate, merge, report, bounds, update)


def _argument_for(fn: bb.BuildingBlock, first: bb.BuildingBlock, second: bb.BuildingBlock) -> bb.Struct:
    """``<first,second>``, named as ``fn``'s parameter names them."""
    parameter = fn.type_signature.parameter
    names = [n for n, _ in parameter.elements] if isinstance(parameter, StructType) else [None, None]
    return bb.Struct([(names[0], first), (names[1], second)], container=getattr(parameter, "container", None))
