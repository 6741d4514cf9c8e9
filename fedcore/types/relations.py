"""Relations between types: assignability, equivalence and unification."""

from __future__ import annotations

from typing import Dict, Optional

from fedcore.types.core import (
    AbstractType,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
)


def is_assignable_from(target: Type, source: Type) -> bool:
    """True if a value of type ``source`` may be used where ``target`` is expected."""
    match target, source:
        case TensorType(), TensorType():
            if target.dtype != source.dtype:
                return False
            if target.shape is None:
                return True
            if source.shape is None or len(target.shape) != len(source.shape):
                return False
            return all(t is None or t == s for t, s in zip(target.shape, source.shape))
        case StructType(), StructType():
            if len(target.elements) != len(source.elements):
                return False
            for (tn, tt), (sn, st) in zip(target.elements, source.elements):
                if sn is not None and sn != tn:
                    return False
                if not is_assignable_from(tt, st):
                    return False
            return True
        case SequenceType(), SequenceType():
            return is_assignable_from(target.element, source.element)
        case FunctionType(), FunctionType():
            if (target.parameter is None) != (source.parameter is None):
                return False
            if target.parameter is not None and not is_assignable_from(source.parameter, target.parameter):
                return False
            return is_assignable_from(target.result, source.result)
        case FederatedType(), FederatedType():
            if target.placement != source.placement:
                return False
            if target.all_equal and not source.all_equal:
                return False
            return is_assignable_from(target.member, source.member)
        case PlacementType(), PlacementType():
            return True
        case AbstractType(), AbstractType():
            return target.label == source.label
    return False


def is_equivalent_to(a: Type, b: Type) -> bool:
    """True if each type is assignable from the other."""
    return is_assignable_from(a, b) and is_assignable_from(b, a)


class UnificationError(TypeError):
    """Raised when a concrete type cannot match a generic pattern."""


def unify(pattern: Type, actual: Type, bindings: Optional[Dict[str, Type]] = None) -> Dict[str, Type]:
    """Matches ``actual`` against ``pattern`` and binds its abstract types.

    Returns the bindings (label -> type).  A label met twice must bind to
    compatible types; the more general of the two is kept.  A federated
    pattern that is not all-equal also accepts an all-equal value.
    Raises UnificationError naming both types on a mismatch.
    """
    bindings = {} if bindings is None else bindings
    _unify(pattern, actual, bindings, pattern, actual)
    return bindings


def _fail(pattern: Type, actual: Type, whole_pattern: Type, whole_actual: Type, why: str = "") -> None:
    detail = f" ({why})" if why else ""
    raise UnificationError(f"expected {whole_pattern}, got {whole_actual}: {actual} does not match {pattern}{detail}")


def _unify(pattern: Type, actual: Type, bindings: Dict[str, Type], wp: Type, wa: Type) -> None:
    match pattern:
        case AbstractType(label=label):
            bound = bindings.get(label)
            if bound is None:
                bindings[label] = actual
            elif is_assignable_from(bound, actual):
                pass
            elif is_assignable_from(actual, bound):
                bindings[label] = actual
            else:
                _fail(pattern, actual, wp, wa, f"{label} is already bound to {bound}")
        case StructType():
            if not isinstance(actual, StructType) or len(actual.elements) != len(pattern.elements):
                _fail(pattern, actual, wp, wa)
            for (pn, pt), (an, at) in zip(pattern.elements, actual.elements):
                if pn is not None and an is not None and pn != an:
                    _fail(pattern, actual, wp, wa, f"element name {an!r} is not {pn!r}")
                _unify(pt, at, bindings, wp, wa)
        case SequenceType(element=pe):
            if not isinstance(actual, SequenceType):
                _fail(pattern, actual, wp, wa)
            _unify(pe, actual.element, bindings, wp, wa)
        case FunctionType(parameter=pp, result=pr):
            if not isinstance(actual, FunctionType) or (pp is None) != (actual.parameter is None):
                _fail(pattern, actual, wp, wa)
            if pp is not None:
                _unify(pp, actual.parameter, bindings, wp, wa)
            _unify(pr, actual.result, bindings, wp, wa)
        case FederatedType(member=pm, placement=pl, all_equal=pae):
            if not isinstance(actual, FederatedType) or actual.placement != pl:
                _fail(pattern, actual, wp, wa)
            if pae and not actual.all_equal:
                _fail(pattern, actual, wp, wa, "an all-equal value is required")
            _unify(pm, actual.member, bindings, wp, wa)
        case _:
            if not is_assignable_from(pattern, actual):
                _fail(pattern, actual, wp, wa)


def substitute(pattern: Type, bindings: Dict[str, Type]) -> Type:
    """Replaces the abstract types in ``pattern`` by their bindings."""
    match pattern:
        case AbstractType(label=label):
            if label not in bindings:
                raise UnificationError(f"abstract type {label} is not bound")
            return bindings[label]
        case StructType():
            return StructType(
                [(n, substitute(t, bindings)) for n, t in pattern.elements], container=pattern.container
            )
        case SequenceType(element=e):
            return SequenceType(substitute(e, bindings))
        case FunctionType(parameter=p, result=r):
            return FunctionType(None if p is None else substitute(p, bindings), substitute(r, bindings))
        case FederatedType(member=m, placement=pl, all_equal=ae):
            return FederatedType(substitute(m, bindings), pl, ae)
    return pattern
