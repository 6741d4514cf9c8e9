"""The deployment forms as values: their pieces, and the check that the pieces fit together.

``fedcore.compiler.forms`` cuts a computation into these; serialization
stores and loads them.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import attrs

from fedcore.compiler.computation import Computation
from fedcore.types import FederatedType, FunctionType, StructType, Type
from fedcore.types.core import CLIENTS, SERVER


class FormError(TypeError):
    """A computation cannot be expressed in a deployment form; the message says why."""


SHAPE = "(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)"


@attrs.frozen
class MapReduceForm:
    """One round as unplaced pieces: prepare, work, zero, accumulate, merge, report, secure sum, update.

    ``type_signature`` is the signature of the computation it came from.
    ``secure_sum_max_input`` returns, for each value summed securely, the
    largest value one client may contribute.
    """

    type_signature: FunctionType
    prepare: Computation
    work: Computation
    zero: Computation
    accumulate: Computation
    merge: Computation
    report: Computation
    secure_sum_max_input: Computation
    update: Computation

    PIECES = ("prepare", "work", "zero", "accumulate", "merge", "report", "secure_sum_max_input", "update")

    def __attrs_post_init__(self):
        check = _Checker("MapReduceForm", self)
        check_shape(self.type_signature, "MapReduceForm")
        s, d = self.type_signature.parameter[0].member, self.type_signature.parameter[1].member
        c = check.function("prepare", s).result
        check.function("work", StructType([(None, d), (None, c)]))
        u, v = check.pair("work", "result")
        a = check.function("zero", None).result
        check.function("accumulate", pair_type(a, u), a)
        check.function("merge", pair_type(a, a), a)
        r = check.function("report", a).result
        bounds = check.function("secure_sum_max_input", None).result
        if not (isinstance(v, StructType) and isinstance(bounds, StructType) and len(v) == len(bounds)):
            check.fail(f"work sends {v} to secure sums, but secure_sum_max_input gives bounds {bounds}")
        check.function("update", StructType([(None, s), (None, pair_type(r, v))]), member_of(self.type_signature.result))

    def pieces(self) -> Dict[str, Computation]:
        return {name: getattr(self, name) for name in self.PIECES}

    def summary(self) -> str:
        return _summary("MapReduceForm", self)


@attrs.frozen
class DistributeAggregateForm:
    """One round as five federated pieces, each holding one kind of work (see the module doc)."""

    type_signature: FunctionType
    server_prepare: Computation
    server_to_client_broadcast: Computation
    client_work: Computation
    client_to_server_aggregation: Computation
    server_result: Computation

    PIECES = (
        "server_prepare", "server_to_client_broadcast", "client_work", "client_to_server_aggregation", "server_result",
    )

    def __attrs_post_init__(self):
        check = _Checker("DistributeAggregateForm", self)
        check_shape(self.type_signature, "DistributeAggregateForm")
        s, d = self.type_signature.parameter
        check.function("server_prepare", s)
        b, i = check.pair("server_prepare", "result")
        c = check.function("server_to_client_broadcast", b).result
        v = check.function("client_work", StructType([(None, d), (None, c)])).result
        a = check.function("client_to_server_aggregation", pair_type(i, v)).result
        check.function("server_result", pair_type(i, a), self.type_signature.result)
        check.placed("server_to_client_broadcast", "result", CLIENTS)
        check.placed("client_work", "result", CLIENTS)
        check.placed("client_to_server_aggregation", "result", SERVER)

    def pieces(self) -> Dict[str, Computation]:
        return {name: getattr(self, name) for name in self.PIECES}

    def summary(self) -> str:
        return _summary("DistributeAggregateForm", self)


class _Checker:
    """Checks that a form's pieces fit together; each failure names the piece and both types."""

    def __init__(self, kind: str, form: Any):
        self.kind, self.form = kind, form

    def fail(self, message: str):
        raise FormError(f"inconsistent {self.kind}: {message}")

    def function(self, name: str, parameter: Optional[Type], result: Optional[Type] = None) -> FunctionType:
        comp = getattr(self.form, name)
        if not isinstance(comp, Computation):
            self.fail(f"{name} must be a fedcore Computation, got {type(comp).__name__}")
        t = comp.type_signature
        if not isinstance(t, FunctionType):
            self.fail(f"{name} has type {t}, which is not a function")
        if parameter is None and t.parameter is not None or (
            parameter is not None and (t.parameter is None or not t.parameter.is_assignable_from(parameter))
        ):
            self.fail(f"{name} has type {t}, which cannot take {'no argument' if parameter is None else parameter}")
        if result is not None and not result.is_assignable_from(t.result):
            self.fail(f"{name} has type {t}, but must give {result}")
        return t

    def pair(self, name: str, where: str) -> Tuple[Type, Type]:
        t = getattr(getattr(self.form, name).type_signature, where)
        if not (isinstance(t, StructType) and len(t) == 2):
            self.fail(f"the {where} of {name}, {t}, is not a pair")
        return t[0], t[1]

    def placed(self, name: str, where: str, placement) -> None:
        t = getattr(getattr(self.form, name).type_signature, where)
        if not (isinstance(t, StructType) and all(isinstance(e, FederatedType) and e.placement is placement for e in t)):
            self.fail(f"the {where} of {name}, {t}, must be a struct of values placed at {placement.name}")


def _summary(kind: str, form: Any) -> str:
    lines = [f"{kind} of {form.type_signature}"]
    for name, comp in form.pieces().items():
        lines.append(f"  {name}: {comp.type_signature}")
    return "\n".join(lines)


def check_shape(comp_type: Any, form: str) -> None:
    """Raises FormError unless ``comp_type`` is ``(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)``."""
    problem = None
    if not isinstance(comp_type, FunctionType):
        problem = "it is not a function"
    else:
        p, r = comp_type.parameter, comp_type.result
        if not (isinstance(p, StructType) and len(p) == 2):
            problem = f"its parameter {p} is not a pair <S@SERVER,{{D}}@CLIENTS>"
        elif not (isinstance(p[0], FederatedType) and p[0].placement is SERVER):
            problem = f"the first parameter, {p[0]}, is not placed at SERVER"
        elif not (isinstance(p[1], FederatedType) and p[1].placement is CLIENTS and not p[1].all_equal):
            problem = f"the second parameter, {p[1]}, is not client data {{D}}@CLIENTS"
        elif not (isinstance(r, StructType) and len(r) == 2):
            problem = f"its result {r} is not a pair <S@SERVER,M@SERVER>"
        elif not (isinstance(r[0], FederatedType) and r[0].placement is SERVER):
            problem = f"its new state, {r[0]}, is not placed at SERVER"
        elif not _all_at_server(r[1]):
            problem = f"its second result, {r[1]}, is not made of values placed at SERVER"
        elif not p[0].member.is_assignable_from(r[0].member):
            problem = f"its new state {r[0]} does not match its state parameter {p[0]}"
    if problem:
        raise FormError(f"cannot compile a computation of type {comp_type} to a {form}: {problem}; "
                        f"a round must have the type {SHAPE}")


def _all_at_server(t: Type) -> bool:
    match t:
        case FederatedType(placement=p):
            return p is SERVER
        case StructType():
            return len(t) > 0 and all(_all_at_server(e) for e in t)
    return False


def member_of(t: Type) -> Type:
    match t:
        case FederatedType(member=m):
            return m
        case StructType():
            return StructType([(n, member_of(e)) for n, e in t.elements], container=t.container)
    return t


def pair_type(a: Type, b: Type) -> StructType:
    return StructType([(None, a), (None, b)])
