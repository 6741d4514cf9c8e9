"""Deployment forms: each piece runs by hand and the round gives what the computation gives."""

import collections

import pytest

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import forms
from fedcore.runtime.tensorflow import TensorFlowExecutor
from fedcore.testing import conformance
from tests.compiler.form_drivers import run_distribute_aggregate_form, run_map_reduce_form

EXECUTORS = {"reference": fedcore.ReferenceExecutor, "tensorflow": TensorFlowExecutor}
ROUNDS = [c for c in conformance.select(tags=["rounds"]) if "two_rounds" not in c.tags]
DRIVERS = {
    "mapreduce": (forms.to_map_reduce_form, run_map_reduce_form),
    "distribute_aggregate": (forms.to_distribute_aggregate_form, run_distribute_aggregate_form),
}


def _eligible(case):
    comp = case.build()
    if not isinstance(comp, fedcore.Computation):
        return False  # polymorphic: specialized from plain Python values, which are never placed
    try:
        forms.check_shape(comp.type_signature, "form")
    except forms.FormError:
        return False
    return case.expect_error is None


def test_the_round_cases_are_all_the_eligible_conformance_cases():
    eligible = {c.name for c in conformance.CASES if _eligible(c)}
    assert eligible == {c.name for c in ROUNDS} | {"round_needing_two_dependent_rounds"}
    assert len(ROUNDS) >= 6


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
@pytest.mark.parametrize("form", sorted(DRIVERS))
@conformance.parametrize("case", ROUNDS)
def test_hand_driven_form_matches_the_computation(case, form, executor):
    compile_form, drive = DRIVERS[form]
    comp = case.build()
    args, _ = case.arguments()
    with fedcore.execution_context(EXECUTORS[executor]()):
        expected = comp(*args)
        actual = drive(compile_form(comp), *args)
    conformance.assert_values_equal(actual, expected, rtol=case.rtol, atol=case.atol)
    if case.expected is not None:
        conformance.assert_values_equal(actual, case.expected, rtol=case.rtol, atol=case.atol, strict=False)


# --------------------------------------------------------------------------
# FedAvg's round, compiled to both forms.


@pytest.fixture(scope="module")
def fedavg():
    from fedcore import learning
    from tests.learning import helpers

    process = learning.build_federated_averaging_process(helpers.keras_model_fn)
    return process, helpers.federated_train_data(num_clients=5)


def _assert_rounds_match(process, data, form_of, drive, executor):
    with fedcore.execution_context(executor):
        state = process.initialize()
        form = form_of(process.next)
        expected_state, actual_state = state, state
        for _ in range(2):
            expected_state, expected_metrics = process.next(expected_state, data)
            actual_state, actual_metrics = drive(form, actual_state, data)
    conformance.assert_values_equal(actual_state, expected_state, rtol=1e-5, atol=1e-6)
    conformance.assert_values_equal(actual_metrics, expected_metrics, rtol=1e-5, atol=1e-6)
    assert expected_metrics["num_examples"] > 0


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
@pytest.mark.parametrize("form", sorted(DRIVERS))
def test_fedavg_next_hand_driven_matches_two_rounds(fedavg, form, executor):
    process, data = fedavg
    compile_form, drive = DRIVERS[form]
    _assert_rounds_match(process, data, compile_form, drive, EXECUTORS[executor]())


def _intrinsics(comp):
    return {n.uri for n in bb.walk(comp.ir) if isinstance(n, bb.Intrinsic)}


def test_fedavg_distribute_aggregate_pieces_hold_one_kind_of_work(fedavg):
    daf = forms.to_distribute_aggregate_form(fedavg[0].next)
    assert _intrinsics(daf.server_to_client_broadcast) == {"federated_broadcast"}
    assert _intrinsics(daf.client_to_server_aggregation) == {"federated_weighted_mean", "federated_sum"}
    assert _intrinsics(daf.client_work) <= {"federated_map", "federated_zip_at_clients", "sequence_reduce"}
    for piece in (daf.server_prepare, daf.server_result):
        assert _intrinsics(piece) <= {"federated_apply", "federated_zip_at_server"}
    assert str(daf.client_work.type_signature.parameter[0]) == "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"


def test_fedavg_map_reduce_pieces_are_unplaced(fedavg):
    mrf = forms.to_map_reduce_form(fedavg[0].next)
    for name, piece in mrf.pieces().items():
        assert "@" not in str(piece.type_signature), name
        assert not {u for u in _intrinsics(piece) if u.startswith("federated_")}, name
    state = fedavg[0].next.type_signature.parameter[0].member
    assert mrf.prepare.type_signature.parameter == state
    assert str(mrf.work.type_signature.parameter[0]) == "<x=float32[?,784],y=int32[?]>*"
    assert mrf.update.type_signature.result[0] == state
    assert str(mrf.secure_sum_max_input.type_signature) == "( -> <>)"


# --------------------------------------------------------------------------
# What cannot be compiled, and why.


def test_two_dependent_rounds_are_refused_with_the_reason():
    @fedcore.tf_computation(fedcore.TensorType("float32"), fedcore.TensorType("float32"))
    def distance(x, center):
        return abs(x - center)

    @fedcore.federated_computation(fedcore.type_at_server("float32"), fedcore.type_at_clients("float32"))
    def two_rounds(state, data):
        center = fedcore.federated_mean(data)  # first aggregate
        at_clients = fedcore.federated_broadcast(center)  # second broadcast, needs the first aggregate
        return state, fedcore.federated_mean(fedcore.federated_map(distance, fedcore.federated_zip((data, at_clients))))

    lines = {n: i for i, n in enumerate(open(__file__).read().splitlines(), 1)}
    mean_line = next(i for text, i in lines.items() if "# first aggregate" in text)
    for compile_form in (forms.to_map_reduce_form, forms.to_distribute_aggregate_form):
        with pytest.raises(forms.FormError, match="two dependent broadcast-and-aggregate rounds") as info:
            compile_form(two_rounds)
        message = str(info.value)
        assert f"federated_broadcast (traced at {__file__}:{mean_line + 1}" in message
        assert f"federated_mean (traced at {__file__}:{mean_line}" in message
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        assert two_rounds(0.0, [1.0, 2.0, 6.0]) == (0.0, 2.0)  # it runs; it just is not one round


@pytest.mark.parametrize(
    "name, reason",
    [
        ("federated_mean", "parameter {float32}@CLIENTS is not a pair"),
        ("federated_value_at_server", "not a function"),
    ],
)
def test_computations_of_other_shapes_are_refused(name, reason):
    comp = conformance.get_case(name).build()
    with pytest.raises(forms.FormError) as info:
        forms.to_map_reduce_form(comp)
    message = str(info.value)
    assert "(<S@SERVER,{D}@CLIENTS> -> <S@SERVER,M@SERVER>)" in message
    assert str(comp.type_signature) in message


def test_result_must_be_placed_at_server():
    @fedcore.federated_computation(fedcore.type_at_server(fedcore.TensorType("int32")), fedcore.type_at_clients("int32"))
    def returns_client_values(state, data):
        return state, data

    with pytest.raises(forms.FormError, match=r"second result, \{int32\}@CLIENTS, is not made of values placed at SERVER"):
        forms.to_distribute_aggregate_form(returns_client_values)


def test_polymorphic_and_non_computations_are_refused():
    @fedcore.federated_computation
    def poly(x):
        return x

    with pytest.raises(forms.FormError, match="polymorphic"):
        forms.to_map_reduce_form(poly)
    with pytest.raises(forms.FormError, match="got int"):
        forms.to_distribute_aggregate_form(3)


# --------------------------------------------------------------------------
# Forms serialize like computations: data only, checked on load.


@pytest.mark.parametrize("form", sorted(DRIVERS))
def test_fedavg_forms_round_trip_through_serialization(fedavg, form):
    process, data = fedavg
    compile_form, drive = DRIVERS[form]
    original = compile_form(process.next)
    loaded = fedcore.deserialize(fedcore.serialize(original))
    assert type(loaded) is type(original)
    assert loaded.type_signature == original.type_signature
    for name, piece in original.pieces().items():
        assert getattr(loaded, name).type_signature == piece.type_signature, name
    for executor in EXECUTORS.values():
        with fedcore.execution_context(executor()):
            state = process.initialize()
            expected = drive(original, state, data)
            got = drive(loaded, state, data)
        conformance.assert_values_equal(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", sorted(DRIVERS))
@conformance.parametrize("case", ROUNDS)
def test_round_case_forms_round_trip_through_serialization(case, form):
    compile_form, drive = DRIVERS[form]
    loaded = fedcore.deserialize(fedcore.serialize(compile_form(case.build())))
    args, _ = case.arguments()
    with fedcore.execution_context(fedcore.ReferenceExecutor()):
        expected = case.build()(*args)
        got = drive(loaded, *args)
    conformance.assert_values_equal(got, expected, rtol=case.rtol, atol=case.atol)


def _tamper_header(data: bytes, edit) -> bytes:
    """Rewrites the JSON header of a serialized file and fixes up its length and checksum,
    as a deliberate forger would: only the structural checks can catch it."""
    import hashlib
    import json
    import struct

    from fedcore.compiler import serialization as ser

    body = data[: -32]
    start = len(ser.MAGIC) + 8
    (head_len,) = struct.unpack(">Q", body[len(ser.MAGIC):start])
    header = json.loads(body[start:start + head_len])
    edit(header)
    head = json.dumps(header).encode()
    new_body = ser.MAGIC + struct.pack(">Q", len(head)) + head + body[start + head_len:]
    return new_body + hashlib.sha256(new_body).digest()


def test_a_form_with_a_missing_or_mismatched_piece_is_refused():
    from fedcore.compiler.serialization import SerializationError

    comp = conformance.get_case("round_count_and_mean").build()
    data = fedcore.serialize(forms.to_map_reduce_form(comp))
    assert type(fedcore.deserialize(_tamper_header(data, lambda h: None))) is forms.MapReduceForm

    def drop_merge(h):
        del h["pieces"]["merge"]

    with pytest.raises(SerializationError, match="needs the pieces prepare, work, zero, accumulate, merge"):
        fedcore.deserialize(_tamper_header(data, drop_merge))

    def swap(h):
        h["pieces"]["merge"], h["pieces"]["report"] = h["pieces"]["report"], h["pieces"]["merge"]

    with pytest.raises(SerializationError, match="inconsistent MapReduceForm: merge has type"):
        fedcore.deserialize(_tamper_header(data, swap))

    def unknown(h):
        h["form"] = "three_phase"

    with pytest.raises(SerializationError, match="unknown form 'three_phase'"):
        fedcore.deserialize(_tamper_header(data, unknown))
    with pytest.raises(SerializationError):
        fedcore.deserialize(data[: len(data) // 2])
