"""Lexical scoping of nested computations.

A federated computation defined inside another one may use the enclosing
computation's parameters and locals (Python closures over traced values).
The property test generates random programs of nested computations with such
captures, runs them on every executor, and compares each result with a plain
Python evaluation of the same program.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.runtime.tensorflow import TensorFlowExecutor

# --------------------------------------------------------------------------
# The reproduction and its relatives.


@fedcore.tf_computation(tf.float32, tf.float32)
def add(a, b):
    return a + b


@fedcore.tf_computation(tf.float32)
def double(a):
    return a * 2.0


EXECUTORS = {
    "reference": fedcore.ReferenceExecutor,
    "tensorflow": TensorFlowExecutor,
    "tensorflow-sequential": lambda: TensorFlowExecutor(strategy="sequential"),
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request):
    return EXECUTORS[request.param]()


def test_a_nested_computation_reads_the_outer_parameter(executor):
    @fedcore.federated_computation(tf.float32, tf.float32)
    def outer(p, q):
        @fedcore.federated_computation(tf.float32, tf.float32)
        def inner(a, b):
            return add(a, p)  # p belongs to outer

        return inner(q, q)

    with fedcore.execution_context(executor):
        assert outer(1.0, 10.0) == pytest.approx(11.0)


def test_a_nested_computation_with_the_same_parameter_names(executor):
    @fedcore.federated_computation(tf.float32, tf.float32)
    def outer(a, b):
        outer_b = b  # traced when inner is defined, below

        @fedcore.federated_computation(tf.float32, tf.float32)
        def inner(a, b):  # the same Python names, and both bind `arg` before this fix
            return add(a, outer_b)

        return inner(a, a)

    with fedcore.execution_context(executor):
        assert outer(1.0, 10.0) == pytest.approx(11.0)


def test_binder_names_are_unique_in_a_trace():
    @fedcore.federated_computation(tf.float32, tf.float32)
    def outer(p, q):
        s = add(p, q)

        @fedcore.federated_computation(tf.float32)
        def inner(x):
            return add(double(x), s)

        return inner(p)

    binders = []
    for node in bb.walk(outer.ir):
        if isinstance(node, bb.Lambda) and node.parameter_name is not None:
            binders.append(node.parameter_name)
        if isinstance(node, bb.Block):
            binders.extend(name for name, _ in node.locals)
    assert len(binders) == len(set(binders)), binders


def test_a_top_level_trace_keeps_its_names():
    @fedcore.federated_computation(tf.float32, tf.float32)
    def top(p, q):
        return add(add(p, q), q)

    assert top.to_ir_string() == "(arg -> (let fc1=comp#{0}(<a=arg.p,b=arg.q>),fc2=comp#{0}(<a=fc1,b=arg.q>) in fc2))".format(
        top.to_ir_string().split("comp#")[1][:8]
    )


def test_a_captured_local_called_after_the_outer_trace_is_an_error():
    kept = []

    @fedcore.federated_computation(tf.float32)
    def outer(p):
        s = double(p)

        @fedcore.federated_computation(tf.float32)
        def inner(x):
            return add(x, s)

        kept.append(inner)
        return inner(p)

    assert outer(1.0) == pytest.approx(3.0)
    with pytest.raises(fedcore.FederatedTypeError, match=r"inner uses values of the federated computation it was defined in"):
        kept[0](1.0)

    with pytest.raises(fedcore.FederatedTypeError, match=r"it can be called only inside that computation, not in other"):

        @fedcore.federated_computation(tf.float32)
        def other(x):
            return kept[0](x)


def test_a_traced_value_leaked_into_another_computation_is_an_error():
    leaked = []

    @fedcore.federated_computation(tf.float32)
    def first(p):
        leaked.append(p)
        return double(p)

    with pytest.raises(fedcore.FederatedTypeError, match=r"second uses a traced value \(p of type float32\) that belongs to another"):

        @fedcore.federated_computation(tf.float32)
        def second(x):
            return add(x, leaked[0])


def test_the_type_checker_rejects_a_selection_typed_against_another_binder():
    # `arg.p` typed against <p=float32,q=float32>, but `arg` is bound to <a=float32,b=float32>.
    wrong_source = bb.Reference("arg", fedcore.StructType([("p", fedcore.TensorType("float32")), ("q", fedcore.TensorType("float32"))]))
    body = bb.Selection(wrong_source, name="p")
    ill_typed = bb.Lambda("arg", fedcore.StructType([("a", fedcore.TensorType("float32")), ("b", fedcore.TensorType("float32"))]), body)
    with pytest.raises(fedcore.FederatedTypeError, match=r"reads arg as a value of type <p=float32,q=float32>, but arg is bound to a value of type <a=float32,b=float32>"):
        fedcore.Computation(ill_typed, "ill_typed")


def test_references_out_of_scope_finds_unbound_and_mistyped_names():
    f32 = fedcore.to_type(tf.float32)
    i32 = fedcore.to_type(tf.int32)
    node = bb.Block([("x", bb.Reference("y", f32))], bb.Struct([(None, bb.Reference("x", i32)), (None, bb.Reference("z", f32))]))
    found = {(ref.name, None if bound is None else str(bound)) for ref, bound in bb.references_out_of_scope(node, {"y": f32})}
    assert found == {("x", "float32"), ("z", None)}


# --------------------------------------------------------------------------
# The property: random nested programs with captures, every executor against plain Python.
#
# A program is an expression over a scope of float32 values:
#   ("var", i)              the scope's i-th value (parameters, locals, captures alike)
#   ("add", e1, e2)         e1 + e2
#   ("double", e)           2 e
#   ("let", e, body)        body in the scope extended by the value of e
#   ("call", k, body, args) defines a computation of k parameters whose body sees the
#                           current scope (captures) followed by its parameters, and calls
#                           it with args; ("call2", ...) calls the same computation twice.


def _programs(depth: int):
    def expr(d, scope_size):
        leaves = st.tuples(st.just("var"), st.integers(0, scope_size - 1))
        if d == 0:
            return leaves
        sub = lambda size=scope_size: expr(d - 1, size)  # noqa: E731
        return st.one_of(
            leaves,
            st.tuples(st.just("add"), sub(), sub()),
            st.tuples(st.just("double"), sub()),
            st.tuples(st.just("let"), sub(), sub(scope_size + 1)),
            st.integers(1, 2).flatmap(
                lambda k: st.tuples(
                    st.sampled_from(["call", "call2"]), st.just(k), expr(d - 1, scope_size + k), st.lists(sub(), min_size=k, max_size=k)
                )
            ),
        )

    return expr(depth, 2)


def evaluate(program, scope):
    """The plain Python meaning of a program."""
    match program:
        case ("var", i):
            return scope[i]
        case ("add", a, b):
            return evaluate(a, scope) + evaluate(b, scope)
        case ("double", a):
            return 2.0 * evaluate(a, scope)
        case ("let", value, body):
            return evaluate(body, scope + [evaluate(value, scope)])
        case (kind, k, body, args):
            values = [evaluate(a, scope) for a in args]
            first = evaluate(body, scope + values)
            if kind == "call":
                return first
            return first + evaluate(body, scope + [first] * k)
    raise AssertionError(program)


def trace(program, scope):
    """The same program, traced: every inner computation is a federated_computation closing over ``scope``."""
    match program:
        case ("var", i):
            return scope[i]
        case ("add", a, b):
            return add(trace(a, scope), trace(b, scope))
        case ("double", a):
            return double(trace(a, scope))
        case ("let", value, body):
            return trace(body, scope + [trace(value, scope)])
        case (kind, k, body, args):
            # The parameter names repeat the outer ones on purpose (a, b): only scoping tells them apart.
            if k == 1:

                @fedcore.federated_computation(tf.float32)
                def inner(a):
                    return trace(body, scope + [a])

            else:

                @fedcore.federated_computation(tf.float32, tf.float32)
                def inner(a, b):
                    return trace(body, scope + [a, b])

            values = [trace(a, scope) for a in args]
            first = inner(*values)
            if kind == "call":
                return first
            return add(first, inner(*([first] * k)))
    raise AssertionError(program)


def build(program):
    @fedcore.federated_computation(tf.float32, tf.float32)
    def program_fn(a, b):
        return trace(program, [a, b])

    return program_fn


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=_programs(3), p=st.sampled_from([1.0, -2.5, 3.0]), q=st.sampled_from([10.0, 0.5, -7.0]))
def test_random_nested_programs_agree_with_python_on_every_executor(program, p, q):
    expected = evaluate(program, [p, q])
    comp = build(program)
    for name, make in EXECUTORS.items():
        with fedcore.execution_context(make()):
            got = float(np.asarray(comp(p, q)))
        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-4), (name, program, got, expected)
