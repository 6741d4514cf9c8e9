"""The reference interpreter: simple and obviously correct, the golden standard.

It walks the IR node by node.  Every intrinsic has a rule in
``fedcore.runtime.reference.rules`` that spells out its meaning on canonical
values (see ``fedcore.runtime.values``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fedcore.compiler import building_blocks as bb
from fedcore.compiler.intrinsics import lookup
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.reference.rules import RULES, call_tf
from fedcore.structure import Struct
from fedcore.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    StructType,
    Type,
)

NAME = "reference"


class ReferenceExecutor:
    """Interprets the IR directly.

    ``num_clients`` is used when no argument placed at CLIENTS says how many
    clients there are (e.g. for ``federated_eval`` at CLIENTS).  ``data``
    maps the uris of Data nodes to canonical values.
    """

    name = NAME

    def __init__(self, num_clients: Optional[int] = None, data: Optional[Dict[str, Any]] = None):
        if num_clients is not None and (not isinstance(num_clients, int) or num_clients < 0):
            raise ValueError(f"num_clients must be a non-negative int, got {num_clients!r}")
        self.num_clients = num_clients
        self.data = dict(data or {})

    def __repr__(self) -> str:
        return f"ReferenceExecutor(num_clients={self.num_clients})"

    def execute(self, comp, argument, num_clients: Optional[int] = None):
        interpreter = Interpreter(num_clients if num_clients is not None else self.num_clients, self.data)
        fn = interpreter.evaluate(comp.ir, {})
        if comp.type_signature.parameter is None:
            return fn()
        return fn(argument)


class Interpreter:
    def __init__(self, num_clients: Optional[int], data: Dict[str, Any]):
        self._num_clients = num_clients
        self.data = data

    @property
    def num_clients(self) -> int:
        if self._num_clients is None:
            raise ExecutionError(
                "the number of clients cannot be inferred, since no argument is placed at CLIENTS; "
                "set it with ReferenceExecutor(num_clients=N)"
            )
        return self._num_clients

    def evaluate(self, node: bb.BuildingBlock, env: Dict[str, Any]) -> Any:
        match node:
            case bb.Reference(name=name):
                return env[name]
            case bb.Selection(source=source, index=index):
                return self.evaluate(source, env)[index]
            case bb.Struct(elements=elements):
                return Struct([(n, self.evaluate(e, env)) for n, e in elements])
            case bb.Call(function=fn_node, argument=arg_node):
                fn = self.evaluate(fn_node, env)
                if arg_node is None:
                    return fn()
                arg = self.evaluate(arg_node, env)
                arg = self.coerce(arg, arg_node.type_signature, fn_node.type_signature.parameter)
                return fn(arg)
            case bb.Lambda(parameter_name=p, result=result):
                if p is None:
                    return lambda: self.evaluate(result, env)
                return lambda arg: self.evaluate(result, {**env, p: arg})
            case bb.Block(locals=locals_, result=result):
                scope = dict(env)
                for name, value in locals_:
                    scope[name] = self.evaluate(value, scope)
                return self.evaluate(result, scope)
            case bb.Intrinsic(uri=uri, type_signature=t):
                rule = RULES[lookup(uri)]
                if isinstance(t, FunctionType):
                    return lambda arg=None: rule(self, arg, t)
                return rule(self, None, t)
            case bb.Literal(value=value):
                return value
            case bb.Placement(placement=p):
                return p
            case bb.Data(uri=uri):
                if uri not in self.data:
                    raise ExecutionError(f"no value was supplied for data#{uri}")
                return self.data[uri]
            case bb.TensorFlowComputation():
                return lambda arg=None: call_tf(node, arg)
        raise ExecutionError(f"the reference interpreter cannot evaluate {node!r}")

    def coerce(self, value: Any, source: Type, target: Optional[Type]) -> Any:
        """Converts between representations of assignable types (all-equal to per-client)."""
        if target is None or source == target:
            return value
        match source, target:
            case FederatedType(all_equal=True), FederatedType(all_equal=False, placement=p) if p is CLIENTS:
                return [value] * self.num_clients
            case StructType(), StructType():
                return Struct([(n, self.coerce(v, s, t)) for (n, t), v, s in zip(target.elements, value, source)])
        return value

    def client_values(self, value: Any, t: FederatedType) -> List[Any]:
        """The per-client list of a CLIENTS value, replicating an all-equal one."""
        return [value] * self.num_clients if t.all_equal else list(value)
