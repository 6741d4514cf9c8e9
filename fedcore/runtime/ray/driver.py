"""The driver: the reference walker, with values at CLIENTS as plan nodes run on the workers.

Server values (and all-equal client values) are ordinary values on the
driver.  A value at CLIENTS is a ``plan.Node``.  An aggregation queues an
output (``queue``) and gives a ``Lazy`` result; nothing runs on the workers
until a lazy value is needed.  Then every queued output, with the nodes it
needs, goes out in one stage (``flush``): one request per worker.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.intrinsics import lookup
from fedcore.runtime import reference
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray import plan
from fedcore.runtime.ray.lazy import Lazy, force, has_lazy
from fedcore.runtime.ray.rules import RULES
from fedcore.structure import Struct
from fedcore.types import CLIENTS, FederatedType, FunctionType, StructType, Type


class Closure:
    """A function value on the driver: its IR node and the environment it was made in."""

    def __init__(self, interp: "DriverInterpreter", node: bb.BuildingBlock, env: Dict[str, Any]):
        self.interp, self.node, self.env = interp, node, env

    def __call__(self, arg: Any = None) -> Any:
        node = self.node
        if isinstance(node, bb.TensorFlowComputation):
            if has_lazy(arg):
                return Lazy(lambda: reference.call_tf(node, force(arg)))
            return reference.call_tf(node, arg)
        if node.parameter_name is None:
            return self.interp.evaluate(node.result, self.env)
        return self.interp.evaluate(node.result, {**self.env, node.parameter_name: arg})


class DriverInterpreter(reference.Interpreter):
    """Evaluates a computation on the driver; client work becomes plan nodes (see ``rules``)."""

    def __init__(self, executor, num_clients: Optional[int]):
        super().__init__(num_clients, {})
        self.executor = executor
        self.nodes: Dict[int, plan.Node] = {}
        self.pending: List[Tuple[plan.Output, Dict[str, Any], Callable[[List[Any]], Any]]] = []
        self._fetched: Dict[int, List[Any]] = {}

    # -- evaluation ------------------------------------------------------------

    def evaluate(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        match node:
            case bb.Lambda() | bb.TensorFlowComputation():
                return Closure(self, node, env)
            case bb.Selection(source=source, index=index):
                value = self.evaluate(source, env)
                if isinstance(value, plan.Node):
                    return self.node(plan.Select(index), value)
                if isinstance(value, Lazy) and not value.done:
                    return Lazy(lambda: force(value)[index])
                return value[index]
            case bb.Intrinsic(uri=uri, type_signature=t):
                rule = RULES.get(lookup(uri))
                if rule is None:
                    raise ExecutionError(f"the Ray executor has no rule for {uri}")
                if isinstance(t, FunctionType):
                    return lambda arg=None: rule(self, arg, t)
                return rule(self, None, t)
        return super().evaluate(node, env)

    def coerce(self, value: Any, source: Type, target: Optional[Type]) -> Any:
        if target is None or source == target:
            return value
        match source, target:
            case FederatedType(all_equal=True), FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                return self.client_node(value, source)
            case StructType(), StructType():
                return Struct([(n, self.coerce(v, s, t)) for (n, t), v, s in zip(target.elements, value, source)])
        return value

    # -- client nodes ------------------------------------------------------------

    def node(self, op: Any, *inputs: plan.Node) -> plan.Node:
        """A new node: ``op`` over ``inputs``."""
        n = plan.Node(op, tuple(i.id for i in inputs))
        self.nodes[n.id] = n
        return n

    def client_node(self, value: Any, t: FederatedType) -> plan.Node:
        """The node of a CLIENTS value; an all-equal value becomes a constant node."""
        if isinstance(value, plan.Node):
            return value
        if t.all_equal:
            return self.node(plan.Const(force(value)))
        return self.node(plan.Arg(list(value)))

    def wrap_clients(self, value: Any, t: Type) -> Any:
        """An argument with each per-client part as an ``Arg`` node."""
        match t:
            case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                return self.node(plan.Arg(list(value)))
            case StructType():
                return Struct(zip(t.names(), [self.wrap_clients(v, e) for v, e in zip(value, t)]))
        return value

    def needed(self, outputs: Sequence[plan.Output]) -> List[plan.Node]:
        """The nodes the outputs need, inputs before the nodes that use them."""
        order: List[plan.Node] = []
        seen = set()

        def visit(i: int):
            if i in seen:
                return
            seen.add(i)
            node = self.nodes[i]
            for j in node.inputs:
                visit(j)
            order.append(node)

        for out in outputs:
            visit(out.source)
        return order

    # -- stages ------------------------------------------------------------------

    def queue(self, output: plan.Output, finish: Optional[Callable[[List[Any]], Any]] = None) -> Lazy:
        """An output the next stage computes; the result of ``finish`` (default ``output.finish``) on
        the workers' parts, lazily."""
        holder: Dict[str, Any] = {}

        def result():
            if "value" not in holder and "error" not in holder:
                self.flush()
            if "error" in holder:
                raise ExecutionError(f"the client work this value needs failed: {holder['error']}")
            return holder["value"]

        self.pending.append((output, holder, finish or output.finish))
        return Lazy(result)

    def flush(self, fetch: Sequence[plan.Node] = ()) -> None:
        """Runs every queued output, and fetches the values of ``fetch``: one stage."""
        pending, self.pending = self.pending, []
        if not pending and not fetch:
            return
        outputs = [out for out, _, _ in pending] + [plan.Values(node.id) for node in fetch]
        try:
            results = self.executor.dispatch(self.num_clients, self.needed(outputs), outputs)
        except Exception as e:
            for _, holder, _ in pending:
                holder["error"] = e
            raise
        for (_, holder, finish), parts in zip(pending, results):
            holder["value"] = finish(parts)
        for node, values in zip(fetch, results[len(pending):]):
            self._fetched[node.id] = values

    def materialize(self, node: plan.Node) -> List[Any]:
        if isinstance(node.op, plan.Arg):
            return list(node.op.values)
        if isinstance(node.op, plan.Const):
            return [node.op.value] * self.num_clients
        if node.id not in self._fetched:
            self.flush([node])
        return self._fetched[node.id]

    def result(self, value: Any, t: Type) -> Any:
        """The final result: client values fetched together with the outputs still queued."""
        to_fetch = {n.id: n for n in _client_nodes(value, t) if not isinstance(n.op, (plan.Arg, plan.Const))}
        self.flush(list(to_fetch.values()))
        return self._output(value, t)

    def _output(self, value: Any, t: Type) -> Any:
        match t:
            case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                if isinstance(value, plan.Node):
                    return self.materialize(value)
                return force(value)
            case StructType():
                value = force(value) if isinstance(value, Lazy) else value
                return Struct(zip(t.names(), [self._output(v, e) for v, e in zip(value, t)]))
        return force(value)


def _client_nodes(value: Any, t: Type) -> List[plan.Node]:
    """The client nodes in a result of type ``t``."""
    match t:
        case FederatedType(all_equal=False, placement=p) if p is CLIENTS:
            return [value] if isinstance(value, plan.Node) else []
        case StructType():
            if isinstance(value, Lazy):
                return []
            return [n for v, e in zip(value, t) for n in _client_nodes(v, e)]
    return []
