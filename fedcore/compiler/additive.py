"""Which results of a TF graph are one of its inputs plus something else: ``out = in_i + g(...)``.

A reduction whose step only adds to its accumulator (an evaluation summing
loss, hits and counts, say) need not run its steps in order: every step's
increment can be computed at once, then summed.  This module finds the
results of that form by reading the graph, through ``Identity`` chains and
nested function calls, and says which inputs each increment depends on.

Every tensor gets an abstract value: the set of graph inputs it depends on,
and, where the tensor is ``input_i + (something)``, the index ``i`` with the
inputs that the something depends on.  Control inputs count as
dependencies, of the increment too: a result that waits for an assert on the
accumulator is the accumulator plus something that depends on it, which no
caller computes from zero.  A graph in which a stateful op (an assert, a print, a
variable read) depends on an input makes every result, and every increment,
depend on that input, so a caller that recomputes the increments with a zero
accumulator never skips a check on the real one; an assert on the batch alone
(Keras's losses check their inputs' shapes) leaves the increments as they are.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import attrs
from tensorflow.python.framework import function_def_to_graph, op_def_registry

_NONE: FrozenSet[int] = frozenset()
_ADDS = {"AddV2", "Add"}
_FORWARDS = {"Identity", "StopGradient", "Snapshot"}
_CALLS = {"PartitionedCall", "StatefulPartitionedCall"}
_NOT_NUMBERS = {7, 21}  # DT_STRING, DT_VARIANT: "+" on them is not a sum that may be reordered
_PURE_STATEFUL = {"Placeholder", "PlaceholderWithDefault", "NoOp"}


@attrs.frozen
class Value:
    """What a tensor depends on; ``plus`` is ``(i, deps)`` when it is ``input_i`` plus a value with ``deps``."""

    deps: FrozenSet[int] = _NONE
    plus: Optional[Tuple[int, FrozenSet[int]]] = None


def _input_value(i: int) -> Value:
    return Value(frozenset([i]), (i, _NONE))


def _also(v: Value, deps: FrozenSet[int]) -> Value:
    """``v``, also depending on ``deps`` (a control input, an op that runs with it): its increment too."""
    if not deps:
        return v
    return Value(v.deps | deps, None if v.plus is None else (v.plus[0], v.plus[1] | deps))


def _join(values: Sequence[Value]) -> Value:
    deps = frozenset().union(*(v.deps for v in values)) if values else _NONE
    return Value(deps)


def _stateful(op: str) -> bool:
    if op in _PURE_STATEFUL:
        return False
    definition = op_def_registry.get(op)
    return definition is None or definition.is_stateful


class _Analysis:
    def __init__(self, library: Dict[str, object]):
        self.library = library  # name -> FunctionDef
        self.memo: Dict[Tuple[str, Tuple[Value, ...]], List[Value]] = {}

    def function(self, name: str, args: Tuple[Value, ...], depth: int) -> Optional[List[Value]]:
        key = (name, args)
        if key in self.memo:
            return self.memo[key]
        fdef = self.library.get(name)
        if fdef is None or depth > 64:
            return None
        try:
            graph_def, names = function_def_to_graph.function_def_to_graph_def(fdef)
        except (ValueError, KeyError, TypeError):  # a body TF cannot rebuild alone: treat the call as opaque
            self.memo[key] = None
            return None
        bound = {arg.name + ":0": v for arg, v in zip(fdef.signature.input_arg, args)}
        rets = []
        for out in fdef.signature.output_arg:
            ret = fdef.ret[out.name]
            rets.append(names.get(ret, ret))
        out = self.graph(graph_def.node, bound, rets, depth)
        self.memo[key] = out
        return out

    def graph(self, nodes, bound: Dict[str, Value], outputs: List[str], depth: int) -> List[Value]:
        """The abstract values of ``outputs``; ``bound`` gives the inputs' (by tensor name)."""
        by_name = {node.name: node for node in nodes}
        values: Dict[str, List[Value]] = {}  # node name -> its outputs' values
        tainted = set()  # inputs that a stateful op depends on

        def tensor(name: str) -> Value:
            name = name if ":" in name else name + ":0"
            if name in bound:
                return bound[name]
            node, _, index = name.rpartition(":")
            outs = values.get(node, [])
            return outs[int(index)] if int(index) < len(outs) else _join(outs)

        # Kahn's order, so that a long chain needs no recursion.
        pending = {n.name: {i.lstrip("^").split(":")[0] for i in n.input} & by_name.keys() for n in nodes}
        users: Dict[str, List[str]] = {}
        for name, needs in pending.items():
            for need in needs:
                users.setdefault(need, []).append(name)
        ready = [name for name, needs in pending.items() if not needs]
        while ready:
            name = ready.pop()
            node = by_name[name]
            values[name] = self.node(node, tensor, depth)
            if _stateful(node.op) and node.op not in _CALLS:
                tainted |= _join([tensor(i.lstrip("^")) for i in node.input]).deps
            for user in users.get(name, ()):
                pending[user].discard(name)
                if not pending[user]:
                    ready.append(user)
        if any(pending.values()):  # a cycle: nothing is known
            everything = frozenset().union(*(v.deps for v in bound.values())) if bound else _NONE
            return [Value(everything) for _ in outputs]
        out = [tensor(o) for o in outputs]
        if tainted:
            # The stateful ops run with every result: each result's increment depends on their inputs too.
            # (One that reads the accumulator makes the increment depend on it, so no caller recomputes
            # that increment from zero.)
            out = [_also(v, frozenset(tainted)) for v in out]
        return out

    def node(self, node, tensor, depth: int) -> List[Value]:
        data = [tensor(i) for i in node.input if not i.startswith("^")]
        control = _join([tensor(i[1:]) for i in node.input if i.startswith("^")]).deps
        if node.op in _FORWARDS and len(data) == 1:
            return [_also(data[0], control)]
        if node.op in _ADDS and len(data) == 2 and node.attr["T"].type not in _NOT_NUMBERS:
            a, b = data
            for x, y in ((a, b), (b, a)):
                if x.plus is not None and x.plus[0] not in y.deps:
                    i, inc = x.plus
                    return [Value(a.deps | b.deps | control, (i, inc | y.deps | control))]
            return [Value(a.deps | b.deps | control)]
        if node.op in _CALLS:
            out = self.function(node.attr["f"].func.name, tuple(data), depth + 1)
            if out is not None:
                return [_also(v, control) for v in out]
        joined = Value(_join(data).deps | control)
        return [joined] * max(1, _num_outputs(node))


def _num_outputs(node) -> int:
    definition = op_def_registry.get(node.op)
    if definition is None:
        return 1
    count = 0
    for arg in definition.output_arg:
        if arg.number_attr:
            count += node.attr[arg.number_attr].i
        elif arg.type_list_attr:
            count += len(node.attr[arg.type_list_attr].list.type)
        else:
            count += 1
    return count


def increments(graph_def, inputs: Sequence[str], outputs: Sequence[str]) -> Tuple[Optional[Tuple[int, FrozenSet[int]]], ...]:
    """For each output: ``(i, deps)`` when it is input ``i`` plus a value that depends on inputs ``deps`` only."""
    library = {f.signature.name: f for f in graph_def.library.function}
    bound = {(name if ":" in name else name + ":0"): _input_value(i) for i, name in enumerate(inputs)}
    values = _Analysis(library).graph(graph_def.node, bound, list(outputs), 0)
    return tuple(v.plus for v in values)
