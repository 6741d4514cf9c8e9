"""Ray's plan of client work: typed records, each with its encoding and its run on a worker.

A value placed at CLIENTS is, on the driver, a ``Node``: an *op* over other
nodes (``Arg``, ``Const``, ``Select``, ``Zip``, ``Map``, ``Eval``).  What the
driver needs from client work is an *output* over one node (``Values``, or a
partial aggregate: ``MonoidPartial``, ``AggregatePartial``,
``SecureSumPartial``).  Each record has

* ``encode(shipment)``: the record as sent to one worker, restricted to that
  worker's clients and in wire form (``shipping.Shipment``);
* ``run(worker, ...)``: what the worker computes from it (``worker.Worker``);
* for outputs, ``gather`` (the workers' parts, on the driver) and, where the
  record says everything, ``finish`` (the driver's result from the parts).

So the driver and the workers read the same record and cannot drift apart.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
import numpy as np

from fedcore.compiler import algebra
from fedcore.compiler import tf_bridge
from fedcore.runtime import reference, secure_aggregation
from fedcore.runtime.executor import ExecutionError
from fedcore.runtime.ray.wire import FunctionRef, datasets_to_lists, from_wire
from fedcore.structure import Struct
from fedcore.types import Type

_ids = itertools.count()


def _same(self, shipment):
    return self


# --------------------------------------------------------------------------
# Client nodes.


@attrs.frozen(eq=False)
class Node:
    """A value at CLIENTS: ``op`` applied to the nodes ``inputs`` (by id)."""

    op: Any
    inputs: Tuple[int, ...] = ()
    id: int = attrs.field(factory=lambda: next(_ids))

    def encode(self, shipment) -> "Node":
        return attrs.evolve(self, op=self.op.encode(shipment))

    def run(self, worker, values: Dict[int, List[Any]]) -> List[Any]:
        return self.op.run(worker, [values[i] for i in self.inputs])


@attrs.frozen
class Arg:
    """Client values given to the computation: all clients' on the driver, the worker's as sent."""

    values: List[Any]

    def encode(self, shipment) -> "Arg":
        return Arg(shipment.value([self.values[i] for i in shipment.clients]))

    def run(self, worker, inputs) -> List[Any]:
        return from_wire(self.values, worker.resolve)


@attrs.frozen
class Const:
    """A value equal at all clients."""

    value: Any

    def encode(self, shipment) -> "Const":
        return Const(shipment.value(self.value))

    def run(self, worker, inputs) -> List[Any]:
        return [from_wire(self.value, worker.resolve)] * len(worker.clients)


@attrs.frozen
class Select:
    """Element ``index`` of each client's struct."""

    index: int
    encode = _same

    def run(self, worker, inputs) -> List[Any]:
        return [v[self.index] for v in inputs[0]]


@attrs.frozen
class Zip:
    """Each client's values of the inputs, as one struct with ``names``."""

    names: Tuple[Optional[str], ...]
    encode = _same

    def run(self, worker, inputs) -> List[Any]:
        return [Struct(zip(self.names, row)) for row in zip(*inputs)]


@attrs.frozen
class Map:
    """A shipped function applied to each client's value, on the worker's TF executor."""

    fn: FunctionRef

    def encode(self, shipment) -> "Map":
        return Map(shipment.function(self.fn))

    def run(self, worker, inputs) -> List[Any]:
        return worker.map(self.fn, inputs[0])


@attrs.frozen
class Eval:
    """A shipped function of no argument, run at each client."""

    fn: FunctionRef

    def encode(self, shipment) -> "Eval":
        return Eval(shipment.function(self.fn))

    def run(self, worker, inputs) -> List[Any]:
        return [worker.call(self.fn) for _ in worker.clients]


# --------------------------------------------------------------------------
# Outputs: what the driver needs from a node.


class Output:
    """What the driver needs from node ``source``; by default one part per worker."""

    source: int
    encode = _same

    def gather(self, shards: Sequence[List[int]], parts: Sequence[Any], num_clients: int) -> List[Any]:
        return [from_wire(p) for p in parts]


@attrs.frozen
class Values(Output):
    """The node's per-client values themselves, in client order."""

    source: int

    def run(self, worker, members: List[Any]) -> List[Any]:
        return datasets_to_lists(members)

    def gather(self, shards, parts, num_clients):
        values: List[Any] = [None] * num_clients
        for shard, part in zip(shards, parts):
            for i, v in zip(shard, from_wire(part)):
                values[i] = v
        return values


@attrs.frozen
class MonoidPartial(Output):
    """An aggregation by ``monoid`` of each client's input ``u`` (flat leaves of the node's values).

    A worker folds its clients into the monoid's zero (``accumulate_all`` over
    its clients' stacked leaves); the driver merges the workers' accumulators
    and reports once.  Over no clients the result is ``report(zero)``.
    """

    source: int
    monoid: algebra.Monoid
    u: Type
    what: str  # for messages: the aggregation's name

    def run(self, worker, members: List[Any]) -> List[Any]:
        rows = [tf_bridge.flatten(v, self.u) for v in members]
        xp = algebra.NUMPY
        if not rows:
            return self._zero(None)
        shapes = [np.shape(x) for x in rows[0]]
        stacked = [np.stack([np.asarray(r[i]) for r in rows]) for i in range(len(shapes))]
        return self.monoid.accumulate_all(xp, self.u, self._zero(shapes), stacked)

    def finish(self, parts: List[List[Any]]) -> Any:
        xp = algebra.NUMPY
        acc = self._zero(None) if not parts else parts[0]
        try:
            for p in parts[1:]:
                acc = self.monoid.merge(xp, self.u, acc, p)
            leaves = self.monoid.report(xp, self.u, acc)
        except algebra.IntegerOverflow as e:
            raise ExecutionError(f"{self.what}: {e}") from None
        return tf_bridge.unflatten(leaves, self.monoid.result_type(self.u))

    def _zero(self, shapes):
        try:
            return self.monoid.zero(algebra.NUMPY, self.u, shapes)
        except algebra.ShapeNotKnown as e:
            raise ExecutionError(f"{self.what} over no clients: {e}") from None


@attrs.frozen
class AggregatePartial(Output):
    """The user's accumulator: a worker folds its clients into ``zero`` with the shipped
    ``accumulate``; the driver merges the workers' accumulators with the user's ``merge``
    and reports (the rule gives that finish, since it calls driver functions)."""

    source: int
    zero: Any
    accumulate: FunctionRef

    def encode(self, shipment) -> "AggregatePartial":
        return AggregatePartial(self.source, shipment.value(self.zero), shipment.function(self.accumulate))

    def run(self, worker, members: List[Any]) -> Any:
        acc = from_wire(self.zero, worker.resolve)
        for v in members:
            acc = worker.call(self.accumulate, Struct.unnamed(acc, v))
        return acc


@attrs.frozen
class SecureSumPartial(Output):
    """``fedcore.runtime.secure_aggregation`` across workers, in two rounds.

    1. ``run`` (worker): each of the worker's clients' values is bound-checked
       and encoded, and each client gets its own ``ClientSide`` with a fresh
       X25519 key pair, kept on the worker under ``token``; only the public
       keys (and the value's leaf shapes) go back.
    2. ``relay`` (driver): a ``ServerSide`` checks that every client sent one
       key, and the same table of public keys goes to every worker.
    3. ``respond`` (worker): each client masks its value with its pairwise
       masks against every other client (those on the same worker too); the
       worker adds its clients' masked values mod 2^bits and sends that sum.
    4. ``finish`` (driver): the ``ServerSide`` adds the workers' masked sums;
       every mask cancels in the total only.

    The driver never holds a private key or a pairwise seed.
    """

    source: int
    member: Type
    bounds: List[np.ndarray]
    bits: int
    token: str  # names this sum's client sides on the workers

    def run(self, worker, members: List[Any]) -> Tuple[Dict[int, bytes], List[Tuple[int, ...]]]:
        leaves = [tf_bridge.flatten(v, self.member) for v in members]
        shapes = [np.shape(leaf) for leaf in leaves[0]] if leaves else []
        sides = [
            secure_aggregation.ClientSide(i, secure_aggregation.encode(i, v, self.bounds, shapes), self.bits)
            for i, v in zip(worker.clients, leaves)
        ]
        worker.keep_session(self.token, sides)
        return ({s.index: s.public_key for s in sides}, shapes)

    def relay(self, shards: Sequence[List[int]], parts: Sequence[Any], num_clients: int):
        """The driver's side after round 1: its ``ServerSide`` and the message for every worker."""
        server = secure_aggregation.ServerSide(num_clients, self.bits)
        shapes = None
        for shard, (keys, part_shapes) in zip(shards, parts):
            if sorted(keys) != sorted(shard):
                raise secure_aggregation.SecureSumError(
                    f"a worker holding clients {shard} sent public keys for clients {sorted(keys)}"
                )
            if shapes is not None and [tuple(s) for s in part_shapes] != [tuple(s) for s in shapes]:
                raise secure_aggregation.SecureSumError(
                    f"federated_secure_sum: client values have leaves of shapes {shapes} and {part_shapes}"
                )
            shapes = part_shapes
            server.receive_keys(keys)
        return server, shapes, server.relay()

    def respond(self, worker, public_keys: Dict[int, bytes]) -> np.ndarray:
        sides = worker.take_session(self.token)
        return secure_aggregation.unmask_sum([s.masked(public_keys) for s in sides], self.bits)

    def conclude(self, relayed, shards: Sequence[List[int]], parts: Sequence[np.ndarray]) -> List[Any]:
        """The driver's side after round 2: the server holds every worker's masked sum."""
        server, shapes, _ = relayed
        for shard, partial in zip(shards, parts):
            server.receive_masked(shard, partial)
        return [(server, shapes)]

    def gather(self, shards, parts, num_clients):
        return list(parts)

    def finish(self, parts: List[Tuple[Any, Any]]) -> Any:
        if not parts:
            return reference.zero(self.member)
        server, shapes = parts[0]
        dtypes = [leaf.np_dtype for leaf in tf_bridge.leaf_types(self.member)]
        try:
            return tf_bridge.unflatten(secure_aggregation.decode(server.total(), shapes, dtypes), self.member)
        except secure_aggregation.SecureSumError as e:
            raise ExecutionError(str(e)) from None
