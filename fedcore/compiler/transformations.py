"""Compiler passes: each a pure function from IR to IR.

Every pass preserves the type signature and the meaning of the program; the
tests run the conformance cases on the reference interpreter before and
after each one.  A pipeline is a list of passes (see ``PIPELINE``).
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Optional, Sequence

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import intrinsics
from fedcore.compiler.intrinsics import Kind, lookup
from fedcore.types import StructType, Type

Pass = Callable[[bb.BuildingBlock], bb.BuildingBlock]


def transform_postorder(node: bb.BuildingBlock, fn: Callable[[bb.BuildingBlock], bb.BuildingBlock]) -> bb.BuildingBlock:
    """Rebuilds ``node`` bottom-up, applying ``fn`` to every rebuilt node."""
    match node:
        case bb.Selection(source=source, index=index, name=name):
            new = bb.Selection(transform_postorder(source, fn), index, name)
        case bb.Struct(elements=elements, container=container):
            new = bb.Struct([(n, transform_postorder(e, fn)) for n, e in elements], container=container)
        case bb.Call(function=f, argument=a):
            new = bb.Call(transform_postorder(f, fn), None if a is None else transform_postorder(a, fn), source=node.source)
        case bb.Lambda(parameter_name=p, parameter_type=t, result=r):
            new = bb.Lambda(p, t, transform_postorder(r, fn))
        case bb.Block(locals=locs, result=r):
            new = bb.Block([(n, transform_postorder(v, fn)) for n, v in locs], transform_postorder(r, fn))
        case _:
            new = node
    return fn(new)


def free_names(node: bb.BuildingBlock) -> set:
    """Names referenced in ``node`` and not bound inside it."""
    match node:
        case bb.Reference(name=name):
            return {name}
        case bb.Lambda(parameter_name=p, result=r):
            return free_names(r) - {p}
        case bb.Block(locals=locs, result=r):
            names: set = set()
            bound: set = set()
            for n, v in locs:
                names |= free_names(v) - bound
                bound.add(n)
            return names | (free_names(r) - bound)
    result: set = set()
    for child in node.children():
        result |= free_names(child)
    return result


def count_references(node: bb.BuildingBlock, name: str) -> int:
    """How many free references to ``name`` occur in ``node``."""
    match node:
        case bb.Reference(name=n):
            return 1 if n == name else 0
        case bb.Lambda(parameter_name=p, result=r):
            return 0 if p == name else count_references(r, name)
        case bb.Block(locals=locs, result=r):
            total = 0
            for n, v in locs:
                total += count_references(v, name)
                if n == name:
                    return total
            return total + count_references(r, name)
    return sum(count_references(c, name) for c in node.children())


def substitute(node: bb.BuildingBlock, name: str, value: bb.BuildingBlock) -> bb.BuildingBlock:
    """Replaces free references to ``name`` by ``value``; renames binders that would capture it."""
    match node:
        case bb.Reference(name=n):
            return value if n == name else node
        case bb.Lambda(parameter_name=p, parameter_type=t, result=r):
            if p == name:
                return node
            if p is not None and p in free_names(value):
                fresh = _fresh(p, free_names(r) | free_names(value))
                r = substitute(r, p, bb.Reference(fresh, t))
                p = fresh
            return bb.Lambda(p, t, substitute(r, name, value))
        case bb.Block(locals=locs, result=r):
            new_locals = []
            captured = free_names(value)
            rest_locals = list(locs)
            shadowed = False
            while rest_locals:
                n, v = rest_locals.pop(0)
                v = v if shadowed else substitute(v, name, value)
                if not shadowed and n in captured:
                    fresh = _fresh(n, captured | {x for x, _ in locs} | free_names(r))
                    rest_locals = [(m, substitute(w, n, bb.Reference(fresh, v.type_signature))) for m, w in rest_locals]
                    r = substitute(r, n, bb.Reference(fresh, v.type_signature))
                    n = fresh
                new_locals.append((n, v))
                if n == name:
                    shadowed = True
            return bb.Block(new_locals, r if shadowed else substitute(r, name, value))
        case bb.Selection(source=s, index=i, name=n):
            return bb.Selection(substitute(s, name, value), i, n)
        case bb.Struct(elements=elements, container=container):
            return bb.Struct([(n, substitute(e, name, value)) for n, e in elements], container=container)
        case bb.Call(function=f, argument=a):
            return bb.Call(substitute(f, name, value), None if a is None else substitute(a, name, value), source=node.source)
    return node


def _fresh(base: str, taken: set) -> str:
    for i in itertools.count(1):
        candidate = f"{base}_{i}"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# The passes.


def _is_trivial(node: bb.BuildingBlock) -> bool:
    """Nodes that cost nothing to duplicate."""
    match node:
        case bb.Reference() | bb.Intrinsic() | bb.Placement() | bb.TensorFlowComputation() | bb.Data():
            return True
        case bb.Selection(source=s):
            return _is_trivial(s)
        case bb.Lambda():
            return True
    return False


def inline_blocks(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Inlines let-bindings that are trivial or used at most once, then drops empty blocks.

    Bindings used several times and costing work stay bound, so nothing is
    computed twice.
    """

    def visit(n: bb.BuildingBlock) -> bb.BuildingBlock:
        if not isinstance(n, bb.Block):
            return n
        locs = list(n.locals)
        result = n.result
        kept: List[tuple] = []
        while locs:
            name, value = locs.pop(0)
            uses = sum(count_references(v, name) for _, v in locs) + count_references(result, name)
            if _is_trivial(value) or uses <= 1:
                # Substitute in what follows as one block, so later rebindings shadow correctly.
                rest = substitute(bb.Block(locs, result), name, value)
                locs, result = list(rest.locals), rest.result
            else:
                kept.append((name, value))
        return bb.Block(kept, result) if kept else result

    return transform_postorder(node, visit)


def remove_unused_locals(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Drops let-bindings that nothing refers to."""

    def visit(n: bb.BuildingBlock) -> bb.BuildingBlock:
        if not isinstance(n, bb.Block):
            return n
        kept: List[tuple] = []
        needed = free_names(n.result)
        for name, value in reversed(n.locals):
            if name in needed:
                kept.append((name, value))
                needed = (needed - {name}) | free_names(value)
        kept.reverse()
        return bb.Block(kept, n.result) if kept else n.result

    return transform_postorder(node, visit)


def _beta_reduce(n: bb.BuildingBlock) -> bb.BuildingBlock:
    """``(x -> body)(arg)`` becomes ``body[x := arg]`` when arg is trivial, else a block."""
    if isinstance(n, bb.Call) and isinstance(n.function, bb.Lambda) and n.argument is not None:
        fn = n.function
        if n.argument.type_signature != fn.parameter_type:
            return n
        if _is_trivial(n.argument):
            return substitute(fn.result, fn.parameter_name, n.argument)
        return bb.Block([(fn.parameter_name, n.argument)], fn.result)
    if isinstance(n, bb.Call) and isinstance(n.function, bb.Lambda) and n.argument is None:
        return n.function.result
    if isinstance(n, bb.Selection) and isinstance(n.source, bb.Struct):
        return n.source.elements[n.index][1]
    return n


def reduce_calls(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Applies lambdas to their arguments and selections to literal structs."""
    return transform_postorder(node, _beta_reduce)


def _intrinsic_def(n: bb.BuildingBlock) -> Optional[intrinsics.IntrinsicDef]:
    """The definition of the intrinsic ``n`` calls, if ``n`` is a call of an intrinsic."""
    if isinstance(n, bb.Call) and isinstance(n.function, bb.Intrinsic):
        return intrinsics.lookup(n.function.uri)
    return None


def merge_chained_maps(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """``federated_map(f, federated_map(g, x))`` becomes ``federated_map((a -> f(g(a))), x)``."""

    def visit(n: bb.BuildingBlock) -> bb.BuildingBlock:
        outer = _intrinsic_def(n)
        if outer is None or outer.kind is not Kind.MAP or not isinstance(n.argument, bb.Struct):
            return n
        f, inner_call = n.argument.elements[0][1], n.argument.elements[1][1]
        inner = _intrinsic_def(inner_call)
        if inner is not outer or not isinstance(inner_call.argument, bb.Struct):
            return n
        g, x = inner_call.argument.elements[0][1], inner_call.argument.elements[1][1]
        g_type, f_type = g.type_signature, f.type_signature
        if not f_type.parameter.is_assignable_from(g_type.result):
            return n
        param = _fresh("m", free_names(f) | free_names(g))
        composed = bb.Lambda(param, g_type.parameter, bb.Call(f, bb.Call(g, bb.Reference(param, g_type.parameter))))
        fn_type = inner.instantiate(StructType([(None, composed.type_signature), (None, x.type_signature)]))
        return bb.Call(bb.Intrinsic(inner.uri, fn_type), bb.Struct([(None, composed), (None, x)]), source=n.source)

    return transform_postorder(node, visit)


def _client_operand(definition: intrinsics.IntrinsicDef, argument: bb.BuildingBlock):
    """An aggregation's (first) client value, and the rest of its argument: (node, [rest]) or None."""
    if definition.client_operands is None:
        return argument, []
    if not isinstance(argument, bb.Struct):
        return None
    return argument.elements[0][1], [e for _, e in argument.elements[1:]]


def fuse_map_reduce(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """``A(<federated_map(<f, x>), rest...>)`` becomes ``A_of_map(<f, x, rest...>)`` for every aggregation A.

    The fused intrinsic means the same; executors run it as one pass over
    clients, so client results need never be held for all clients at once
    (see ``intrinsics.declare_fused``).
    """

    def visit(n: bb.BuildingBlock) -> bb.BuildingBlock:
        definition = _intrinsic_def(n)
        fused = None if definition is None else intrinsics.fused_of(definition)
        if fused is None:
            return n
        parts = _client_operand(definition, n.argument)
        if parts is None:
            return n
        mapped, rest = parts
        if _intrinsic_def(mapped) is not intrinsics.FEDERATED_MAP or not isinstance(mapped.argument, bb.Struct):
            return n
        fn, clients = mapped.argument.elements[0][1], mapped.argument.elements[1][1]
        argument = bb.Struct([(None, fn), (None, clients)] + [(None, r) for r in rest])
        fn_type = fused.instantiate(argument.type_signature)
        if fn_type.result != n.type_signature:
            return n
        return bb.Call(bb.Intrinsic(fused.uri, fn_type), argument, source=n.source)

    return transform_postorder(node, visit)


def bound_names(node: bb.BuildingBlock) -> set:
    """Every name bound (by a Lambda parameter or a Block local) anywhere in ``node``."""
    names: set = set()
    for n in bb.walk(node):
        match n:
            case bb.Lambda(parameter_name=p) if p is not None:
                names.add(p)
            case bb.Block(locals=locs):
                names.update(name for name, _ in locs)
    return names


def uniquify_names(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Renames binders so that no name is bound twice in the program and none shadows a free name.

    Tracing reuses local names (``fc1`` in every block); after this pass every
    Lambda parameter and Block local has its own name, so bindings can be
    hoisted or moved between scopes without capture.  Free names are kept.
    """
    taken = set(free_names(node))

    def claim(name: str) -> str:
        new = name if name not in taken else _fresh(name, taken)
        taken.add(new)
        return new

    def visit(n: bb.BuildingBlock, env: Dict[str, bb.BuildingBlock]) -> bb.BuildingBlock:
        match n:
            case bb.Reference(name=name):
                return env.get(name, n)
            case bb.Lambda(parameter_name=p, parameter_type=t, result=r):
                if p is None:
                    return bb.Lambda(None, None, visit(r, env))
                new = claim(p)
                return bb.Lambda(new, t, visit(r, {**env, p: bb.Reference(new, t)}))
            case bb.Block(locals=locs, result=r):
                inner = dict(env)
                new_locals = []
                for name, value in locs:
                    value = visit(value, inner)
                    new = claim(name)
                    inner[name] = bb.Reference(new, value.type_signature)
                    new_locals.append((new, value))
                return bb.Block(new_locals, visit(r, inner))
            case bb.Selection(source=s, index=i, name=name):
                return bb.Selection(visit(s, env), i, name)
            case bb.Struct(elements=elements, container=container):
                return bb.Struct([(name, visit(e, env)) for name, e in elements], container=container)
            case bb.Call(function=f, argument=a):
                return bb.Call(visit(f, env), None if a is None else visit(a, env), source=n.source)
        return n

    return visit(node, {})


def _retype(node: bb.BuildingBlock, env: Dict[str, Type], rename: Optional[Dict[str, str]] = None) -> bb.BuildingBlock:
    """Rebuilds ``node`` with references typed by ``env``; intrinsics are instantiated again at their new argument types.

    ``rename`` maps intrinsics to replacements taking the same argument (outside lambdas' bodies too).
    """
    rename = rename or {}
    match node:
        case bb.Reference(name=name) if name in env and env[name] != node.type_signature:
            return bb.Reference(name, env[name])
        case bb.Lambda(parameter_name=p, parameter_type=t, result=r):
            inner = {k: v for k, v in env.items() if k != p}
            return bb.Lambda(p, t, _retype(r, inner, rename))
        case bb.Block(locals=locs, result=r):
            inner = dict(env)
            new_locals = []
            for name, value in locs:
                value = _retype(value, inner, rename)
                inner[name] = value.type_signature
                new_locals.append((name, value))
            return bb.Block(new_locals, _retype(r, inner, rename))
        case bb.Selection(source=s, index=i, name=name):
            return bb.Selection(_retype(s, env, rename), i, name)
        case bb.Struct(elements=elements, container=container):
            return bb.Struct([(name, _retype(e, env, rename)) for name, e in elements], container=container)
        case bb.Call(function=f, argument=a):
            a = None if a is None else _retype(a, env, rename)
            f = _retype(f, env, rename)
            if isinstance(f, bb.Intrinsic) and a is not None and (
                f.uri in rename or a.type_signature != f.type_signature.parameter
            ):
                uri = rename.get(f.uri, f.uri)
                f = bb.Intrinsic(uri, lookup(uri).instantiate(a.type_signature))
            return bb.Call(f, a, source=node.source)
    return node


def normalize_all_equal(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Turns ``federated_map_all_equal`` into ``federated_map``: one kind of client map.

    A map over an all-equal client value (``T@CLIENTS``) then gives an ordinary
    client value (``{U}@CLIENTS``), which is what a deployed client computes;
    later passes (merging chained maps, the deployment forms) see one map
    intrinsic.  Types downstream are derived again.  The computation's own
    signature never changes: where a result would become ``{U}@CLIENTS``
    instead of ``U@CLIENTS``, the computation is returned unchanged.
    """

    try:
        new = _retype(node, {}, rename={intrinsics.FEDERATED_MAP_ALL_EQUAL.uri: intrinsics.FEDERATED_MAP.uri})
    except TypeError:
        return node  # a federated-level lambda insists on an all-equal argument: keep the program as it is
    return new if new.type_signature == node.type_signature else node


def to_call_dominant(node: bb.BuildingBlock) -> bb.BuildingBlock:
    """Call-dominant form: ``(arg -> (let x1=c1,...,xn=cn in result))`` with every federated-level call bound once.

    Each local is a call whose function and argument are *atoms*: references,
    selections and structs of them, literals, and the functions passed to
    intrinsics (lambdas and TF computations, left as they are).  Nested blocks
    and federated-level lambda applications are flattened into the one top
    block, in evaluation order.  This is the shape from which the deployment
    forms are cut: each call can be given a phase (server, broadcast, client,
    aggregation) by looking at its intrinsic and its dependencies.
    """
    if not isinstance(node, bb.Lambda):
        return node
    node = reduce_calls(inline_blocks(reduce_calls(node)))
    if not isinstance(node, bb.Lambda):
        return node
    node = uniquify_names(node)
    taken = bound_names(node) | free_names(node)
    if node.parameter_name is not None:
        taken.add(node.parameter_name)
    bindings: List[tuple] = []

    def bind(value: bb.BuildingBlock) -> bb.Reference:
        name = _fresh("c", taken)
        taken.add(name)
        bindings.append((name, value))
        return bb.Reference(name, value.type_signature)

    def atom(n: bb.BuildingBlock) -> bb.BuildingBlock:
        match n:
            case bb.Block(locals=locs, result=r):
                for name, value in locs:
                    bindings.append((name, atom(value)))
                return atom(r)
            case bb.Call(function=bb.Lambda(parameter_name=p, result=r), argument=a):
                if p is not None:
                    bindings.append((p, atom(a)))
                return atom(r)
            case bb.Call(function=f, argument=a):
                f = f if isinstance(f, (bb.Intrinsic, bb.TensorFlowComputation, bb.Lambda, bb.Reference)) else atom(f)
                return bind(bb.Call(f, None if a is None else atom(a), source=n.source))
            case bb.Struct(elements=elements, container=container):
                return bb.Struct([(name, atom(e)) for name, e in elements], container=container)
            case bb.Selection(source=s, index=i, name=name):
                source = atom(s)
                if isinstance(source, bb.Struct):
                    return source.elements[i][1]
                return bb.Selection(source, i, name)
        return n

    result = atom(node.result)
    # Aliases (a local bound to an atom) are substituted away: every remaining local is a call.
    calls: List[tuple] = []
    body: bb.BuildingBlock = bb.Block(bindings, result)
    while isinstance(body, bb.Block) and body.locals:
        (name, value), rest = body.locals[0], body.locals[1:]
        if isinstance(value, bb.Call):
            calls.append((name, value))
            body = bb.Block(rest, body.result)
        else:
            body = reduce_calls(substitute(bb.Block(rest, body.result), name, value))
    result = body.result if isinstance(body, bb.Block) else body
    return bb.Lambda(node.parameter_name, node.parameter_type, bb.Block(calls, result) if calls else result)


PIPELINE: List[Pass] = [reduce_calls, inline_blocks, remove_unused_locals, merge_chained_maps, reduce_calls]

# The pipelines by name.  ``execution`` is what the TF and Ray executors run:
# the standard passes, then map+aggregate fusion.
PIPELINES: Dict[str, List[Pass]] = {
    "standard": PIPELINE,
    "execution": PIPELINE + [fuse_map_reduce],
}


def pipeline(name: str) -> List[Pass]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ValueError(f"unknown pipeline {name!r}; known pipelines are {', '.join(sorted(PIPELINES))}") from None


def run_pipeline(node: bb.BuildingBlock, passes: Sequence[Pass] = tuple(PIPELINE)) -> bb.BuildingBlock:
    """Applies ``passes`` in order; checks each keeps the type signature."""
    for p in passes:
        new = p(node)
        if new.type_signature != node.type_signature:
            raise AssertionError(
                f"pass {p.__name__} changed the type signature from {node.type_signature} to {new.type_signature}"
            )
        node = new
    return node
