"""The worker actor: runs its clients' share of a stage, keeps functions, programs and datasets.

Client work runs on a local ``TensorFlowExecutor`` (each program compiled
once, kept across rounds).  Where that executor says it cannot run the work
(``fedcore.runtime.executor.Unsupported``), the reference interpreter runs
it; every other error is the client work's own, and goes back to the driver.
A function that only moves data (selections and structs, no TF work and no
intrinsic, such as FedAvg's ``s -> s.update``) is interpreted per client: a
fraction of a millisecond, where a TF program call costs about 9 ms.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Dict, List, Tuple

import tensorflow as tf

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import federated_api as api
from fedcore.compiler.computation import Computation, federated_computation
from fedcore.compiler.serialization import deserialize
from fedcore.runtime import reference
from fedcore.runtime.executor import ExecutionError, Unsupported
from fedcore.runtime.ray.wire import FunctionRef, Reply, Request, from_wire, to_wire
from fedcore.structure import Struct
from fedcore.types import StructType, type_at_clients, type_at_server

_NO_ARGUMENT = object()
_MAX_SESSIONS = 64
# The IR nodes of a function that only moves data around.
_DATA_MOVES = (bb.Lambda, bb.Reference, bb.Selection, bb.Struct, bb.Block, bb.Call)


class Worker:
    """One Ray actor's state; its remote methods are ``run(request)`` (a stage), ``follow_up(messages)``
    (the second round of a stage's secure sums) and ``pid``."""

    def __init__(self, threads: int):
        # Pin TF to this worker's share of cores, so several workers run side by side.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        from fedcore.runtime.tensorflow import TensorFlowExecutor

        self._tf = TensorFlowExecutor()
        self.functions: Dict[str, Computation] = {}
        self.programs: Dict[Tuple[str, bool], Computation] = {}
        self.moves_data_only: Dict[str, bool] = {}
        self.sources: Dict[str, Any] = {}
        self.datasets: Dict[str, Any] = {}
        self.clients: List[int] = []
        # Client sides of protocols waiting for their next round (secure sums), by token.
        self.sessions: Dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def run(self, request: Request) -> Reply:
        """The request's outputs; an error in the client work travels back as data."""
        start = time.perf_counter()
        try:
            outputs = self._run(request)
            return Reply(outputs, None, time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 -- reported to the driver, which raises ExecutionError
            return Reply(None, f"{type(e).__name__}: {e}", time.perf_counter() - start)

    def follow_up(self, messages: List[Tuple[Any, Any]]) -> Reply:
        """The next round of the stage's multi-round outputs: ``(output, message)`` pairs, answered in order."""
        start = time.perf_counter()
        try:
            outputs = [to_wire(out.respond(self, message)) for out, message in messages]
            return Reply(outputs, None, time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 -- reported to the driver, which raises ExecutionError
            return Reply(None, f"{type(e).__name__}: {e}", time.perf_counter() - start)

    def keep_session(self, token: str, state: Any) -> None:
        """Keeps a protocol's state until its next round; a few at most (an abandoned stage's are dropped)."""
        self.sessions.pop(token, None)
        while len(self.sessions) >= _MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        self.sessions[token] = state

    def take_session(self, token: str) -> Any:
        state = self.sessions.pop(token, None)
        if state is None:
            raise ExecutionError("this worker holds no state for the protocol round it was sent")
        return state

    def _run(self, request: Request) -> List[Any]:
        self._install(request)
        self.clients = list(request.clients)
        values: Dict[int, List[Any]] = {}
        for node in request.nodes:
            values[node.id] = node.run(self, values)
        return [to_wire(out.run(self, values[out.source])) for out in request.outputs]

    # -- what the worker holds ------------------------------------------------

    def _install(self, request: Request) -> None:
        for sha, data in request.functions.items():
            if sha not in self.functions:
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ExecutionError("a shipped function does not match its SHA-256")
                self.functions[sha] = deserialize(data, trusted=True)
        if request.sources:
            from ray import cloudpickle  # documented by Ray for pickling what plain pickle cannot

            for token, blob in request.sources.items():
                if token in self.sources:
                    continue
                factory, preprocess = cloudpickle.loads(blob)
                data = factory()
                if not is_client_data(data):
                    raise ExecutionError(f"the client_data factory returned {type(data).__name__}, not a ClientData")
                self.sources[token] = data.preprocess(preprocess) if preprocess is not None else data
        for token, payload in request.datasets.items():
            if token not in self.datasets:
                self.datasets[token] = payload.load(self)

    def resolve(self, ref) -> Any:
        """The dataset a ``wire.ClientDataRef`` or ``wire.ShippedDataRef`` stands for."""
        return ref.resolve(self)

    # -- running client work -------------------------------------------------------

    def map(self, fn: FunctionRef, members: List[Any]) -> List[Any]:
        """``fn`` applied to each client's value, over all of this worker's clients at once."""
        if self._moves_data_only(fn.sha):  # e.g. (s -> s.update): interpreted, no TF program
            return [self.call(fn, v) for v in members]
        comp = self._program(fn.sha, fn.has_env)
        argument = Struct([("env", from_wire(fn.env)), ("x", members)]) if fn.has_env else members
        return self.execute(comp, argument, len(members))

    def call(self, fn: FunctionRef, arg: Any = _NO_ARGUMENT) -> Any:
        """``fn`` on one value (or on none), with the reference interpreter."""
        env = from_wire(fn.env)
        if arg is _NO_ARGUMENT:
            argument = env if fn.has_env else None
        else:
            argument = Struct.unnamed(env, arg) if fn.has_env else arg
        return reference.ReferenceExecutor().execute(self.functions[fn.sha], argument)

    def execute(self, comp: Computation, argument: Any, n: int) -> Any:
        """On the local TF executor; on the reference interpreter only where TF cannot run the work."""
        try:
            return self._tf.execute(comp, argument, num_clients=n)
        except Unsupported:
            return reference.ReferenceExecutor().execute(comp, argument, num_clients=n)

    def _moves_data_only(self, sha: str) -> bool:
        """Whether a function only selects, builds structs and calls its own lambdas: no TF work, no
        intrinsic.  Interpreting it costs microseconds per client, a TF program milliseconds per call."""
        moves = self.moves_data_only.get(sha)
        if moves is None:
            moves = self.moves_data_only[sha] = all(isinstance(n, _DATA_MOVES) for n in bb.walk(self.functions[sha].ir))
        return moves

    def _program(self, sha: str, has_env: bool) -> Computation:
        key = (sha, has_env)
        comp = self.programs.get(key)
        if comp is None:
            comp = self.programs[key] = map_program(self.functions[sha], has_env)
        return comp


def is_client_data(value: Any) -> bool:
    """Whether ``value`` serves client datasets as ``fedcore.simulation.ClientData`` does (the runtime
    sits below the simulation layer, so it asks for the interface, not the class)."""
    return all(callable(getattr(value, m, None)) for m in ("create_tf_dataset_for_client", "preprocess")) and (
        hasattr(value, "client_ids"))


def map_program(fn: Computation, has_env: bool) -> Computation:
    """The federated computation mapping a shipped function over a worker's clients.

    With captured values, the program takes ``<env@SERVER, x@CLIENTS>`` and
    gives each client ``<env, its x>``.
    """
    t = fn.type_signature
    if has_env:
        env_type, member_type = t.parameter[0], t.parameter[1]
        parameter = StructType([("env", type_at_server(env_type)), ("x", type_at_clients(member_type))])
    else:
        parameter = type_at_clients(t.parameter)

    @federated_computation(parameter)
    def program(arg):
        data = api.federated_zip([api.federated_broadcast(arg.env), arg.x]) if has_env else arg
        return api.federated_map(fn, data)

    return program
