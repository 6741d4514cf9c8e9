"""The intrinsic registry: declarations, generic signatures, instantiation and executor rules."""

import pytest

import fedcore
from fedcore.compiler import intrinsics
from fedcore.compiler import algebra
from fedcore.compiler.intrinsics import INTRINSICS, Kind, NoRule, RuleTable, declare, lookup
from fedcore.runtime.reference import RULES as REFERENCE_RULES
from fedcore.types import AbstractType, FunctionType, Type, parse, unify

EXPECTED_INTRINSICS = {
    "federated_aggregate",
    "federated_apply",
    "federated_broadcast",
    "federated_eval_at_clients",
    "federated_eval_at_server",
    "federated_map",
    "federated_map_all_equal",
    "federated_max",
    "federated_mean",
    "federated_min",
    "federated_secure_sum",
    "federated_sum",
    "federated_value_at_clients",
    "federated_value_at_server",
    "federated_weighted_mean",
    "federated_zip_at_clients",
    "federated_zip_at_server",
    "generic_plus",
    "generic_zero",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
}
# Aggregations of a client map, declared from each aggregation (transformations.fuse_map_reduce makes them).
FUSED_INTRINSICS = {
    f"{uri}_of_map"
    for uri in ("federated_sum", "federated_mean", "federated_weighted_mean", "federated_min", "federated_max",
                "federated_aggregate")
}
ALL_INTRINSICS = EXPECTED_INTRINSICS | FUSED_INTRINSICS


def test_registry_holds_exactly_the_known_intrinsics():
    assert set(INTRINSICS) == ALL_INTRINSICS
    for uri, definition in INTRINSICS.items():
        assert definition.uri == uri
        assert definition.doc


def test_declaring_an_intrinsic_twice_is_refused():
    before = INTRINSICS["federated_sum"]
    with pytest.raises(ValueError, match="already declared"):
        declare("federated_sum", "({T}@CLIENTS -> T@SERVER)", "again")
    assert INTRINSICS["federated_sum"] is before


def test_declaring_a_bad_signature_is_refused():
    with pytest.raises(ValueError, match="cannot parse type"):
        declare("test_bad_signature", "(<T -> U)", "unparseable")
    assert "test_bad_signature" not in INTRINSICS


@pytest.mark.parametrize("uri", sorted(ALL_INTRINSICS))
def test_generic_signature_parses_and_prints_back(uri):
    definition = lookup(uri)
    generic = definition.generic_type
    assert isinstance(generic, Type)
    assert generic == parse(definition.signature)
    assert str(generic) == definition.signature
    if uri == "generic_zero":
        assert generic == AbstractType("T")
    else:
        assert isinstance(generic, FunctionType)


# (uri, argument type, instantiated function type).
INSTANTIATIONS = [
    ("federated_value_at_server", "int32", "(int32 -> int32@SERVER)"),
    ("federated_value_at_clients", "<a=int32>", "(<a=int32> -> <a=int32>@CLIENTS)"),
    ("federated_broadcast", "float32@SERVER", "(float32@SERVER -> float32@CLIENTS)"),
    ("federated_eval_at_server", "( -> int32)", "(( -> int32) -> int32@SERVER)"),
    ("federated_eval_at_clients", "( -> int32)", "(( -> int32) -> {int32}@CLIENTS)"),
    (
        "federated_map",
        "<(int32 -> float32),{int32}@CLIENTS>",
        "(<(int32 -> float32),{int32}@CLIENTS> -> {float32}@CLIENTS)",
    ),
    (
        "federated_map",
        "<(int32 -> float32),int32@CLIENTS>",  # an all-equal value is also a {T}@CLIENTS value
        "(<(int32 -> float32),int32@CLIENTS> -> {float32}@CLIENTS)",
    ),
    (
        "federated_map_all_equal",
        "<(int32 -> float32),int32@CLIENTS>",
        "(<(int32 -> float32),int32@CLIENTS> -> float32@CLIENTS)",
    ),
    (
        "federated_apply",
        "<(<a=int32> -> string),<a=int32>@SERVER>",
        "(<(<a=int32> -> string),<a=int32>@SERVER> -> string@SERVER)",
    ),
    (
        "federated_zip_at_clients",
        "<a={int32}@CLIENTS,b={float32}@CLIENTS,c=string@CLIENTS>",
        "(<a={int32}@CLIENTS,b={float32}@CLIENTS,c=string@CLIENTS> -> {<a=int32,b=float32,c=string>}@CLIENTS)",
    ),
    (
        "federated_zip_at_server",
        "<int32@SERVER,float32@SERVER>",
        "(<int32@SERVER,float32@SERVER> -> <int32,float32>@SERVER)",
    ),
    ("federated_sum", "{int32[2]}@CLIENTS", "({int32[2]}@CLIENTS -> int32[2]@SERVER)"),
    ("federated_mean", "{<float32,x=float64>}@CLIENTS", "({<float32,x=float64>}@CLIENTS -> <float32,x=float64>@SERVER)"),
    (
        "federated_weighted_mean",
        "<{float32}@CLIENTS,{int32}@CLIENTS>",
        "(<{float32}@CLIENTS,{int32}@CLIENTS> -> float32@SERVER)",
    ),
    ("federated_min", "{int32}@CLIENTS", "({int32}@CLIENTS -> int32@SERVER)"),
    ("federated_max", "{float32[?]}@CLIENTS", "({float32[?]}@CLIENTS -> float32[?]@SERVER)"),
    (
        "federated_aggregate",
        "<{int32}@CLIENTS,float32,(<float32,int32> -> float32),(<float32,float32> -> float32),(float32 -> string)>",
        "(<{int32}@CLIENTS,float32,(<float32,int32> -> float32),(<float32,float32> -> float32),"
        "(float32 -> string)> -> string@SERVER)",
    ),
    ("federated_secure_sum", "<{int32}@CLIENTS,int32>", "(<{int32}@CLIENTS,int32> -> int32@SERVER)"),
    ("sequence_map", "<(int32 -> float32),int32*>", "(<(int32 -> float32),int32*> -> float32*)"),
    (
        "sequence_reduce",
        "<int32*,float32,(<float32,int32> -> float32)>",
        "(<int32*,float32,(<float32,int32> -> float32)> -> float32)",
    ),
    ("sequence_sum", "<x=int32,y=float32>*", "(<x=int32,y=float32>* -> <x=int32,y=float32>)"),
    ("generic_plus", "<int32[3],int32[3]>", "(<int32[3],int32[3]> -> int32[3])"),
    ("federated_sum_of_map", "<(int32 -> float32),{int32}@CLIENTS>", "(<(int32 -> float32),{int32}@CLIENTS> -> float32@SERVER)"),
    ("federated_mean_of_map", "<(int32 -> float32),{int32}@CLIENTS>", "(<(int32 -> float32),{int32}@CLIENTS> -> float32@SERVER)"),
    (
        "federated_weighted_mean_of_map",
        "<(int32 -> float32[2]),{int32}@CLIENTS,{float32}@CLIENTS>",
        "(<(int32 -> float32[2]),{int32}@CLIENTS,{float32}@CLIENTS> -> float32[2]@SERVER)",
    ),
    ("federated_min_of_map", "<(int32 -> int32),{int32}@CLIENTS>", "(<(int32 -> int32),{int32}@CLIENTS> -> int32@SERVER)"),
    ("federated_max_of_map", "<(int32 -> int32),{int32}@CLIENTS>", "(<(int32 -> int32),{int32}@CLIENTS> -> int32@SERVER)"),
    (
        "federated_aggregate_of_map",
        "<(string -> int32),{string}@CLIENTS,float32,(<float32,int32> -> float32),(<float32,float32> -> float32),"
        "(float32 -> string)>",
        "(<(string -> int32),{string}@CLIENTS,float32,(<float32,int32> -> float32),(<float32,float32> -> float32),"
        "(float32 -> string)> -> string@SERVER)",
    ),
]


@pytest.mark.parametrize("uri, argument, expected", INSTANTIATIONS, ids=[f"{c[0]}:{c[1]}" for c in INSTANTIATIONS])
def test_instantiate(uri, argument, expected):
    fn_type = lookup(uri).instantiate(parse(argument))
    assert isinstance(fn_type, FunctionType)
    assert str(fn_type) == expected
    assert fn_type == parse(expected)


def test_every_function_intrinsic_has_an_instantiation_test():
    covered = {uri for uri, _, _ in INSTANTIATIONS}
    assert covered == ALL_INTRINSICS - {"generic_zero"}


def test_generic_zero_is_a_value_at_any_type():
    definition = lookup("generic_zero")
    assert unify(definition.generic_type, parse("<int32,float32[2]>")) == {"T": parse("<int32,float32[2]>")}
    with pytest.raises(TypeError, match="generic_zero"):
        definition.instantiate(parse("int32"))


# (uri, argument type, fragments the error must contain).
REFUSALS = [
    ("federated_map", "<(int32 -> int32),{float32}@CLIENTS>", ["<(T -> U),{T}@CLIENTS>", "{float32}@CLIENTS"]),
    ("federated_map", "<(int32 -> int32),int32@SERVER>", ["int32@SERVER"]),
    ("federated_map_all_equal", "<(int32 -> int32),{int32}@CLIENTS>", ["T@CLIENTS", "{int32}@CLIENTS"]),
    ("federated_mean", "int32@SERVER", ["{T}@CLIENTS", "int32@SERVER"]),
    ("federated_mean", "{int32}@CLIENTS", ["floating-point", "{int32}@CLIENTS"]),
    ("federated_sum", "{string}@CLIENTS", ["numeric", "{T}@CLIENTS", "{string}@CLIENTS"]),
    ("federated_sum", "{<a=int32,b=bool>}@CLIENTS", ["numeric", "{<a=int32,b=bool>}@CLIENTS"]),
    ("federated_min", "{string}@CLIENTS", ["numeric", "{string}@CLIENTS"]),
    ("federated_weighted_mean", "<{float32}@CLIENTS,{string}@CLIENTS>", ["weight", "{string}@CLIENTS"]),
    ("federated_weighted_mean", "<{float32}@CLIENTS,{float32[2]}@CLIENTS>", ["scalar weight", "float32[2]"]),
    ("federated_secure_sum", "<{float32}@CLIENTS,int32>", ["integer", "{float32}@CLIENTS"]),
    ("federated_broadcast", "{int32}@CLIENTS", ["T@SERVER", "{int32}@CLIENTS"]),
    ("federated_zip_at_clients", "<int32@SERVER>", ["CLIENTS", "int32@SERVER"]),
    ("federated_zip_at_server", "<>", ["non-empty"]),
    ("federated_value_at_server", "{int32}@CLIENTS", ["unplaced", "{int32}@CLIENTS"]),
    ("sequence_sum", "string*", ["numeric", "string*"]),
    ("sequence_map", "<(int32 -> int32),float32*>", ["<(T -> U),T*>", "float32*"]),
    ("generic_plus", "<int32,float32>", ["<T,T>", "<int32,float32>"]),
    ("federated_mean_of_map", "<(int32 -> int32),{int32}@CLIENTS>", ["floating-point", "{int32}@CLIENTS"]),
    ("federated_sum_of_map", "<(int32 -> int32),{float32}@CLIENTS>", ["{float32}@CLIENTS"]),
    ("federated_sum_of_map", "<{int32}@CLIENTS>", ["<(X -> T),{X}@CLIENTS>"]),
    (
        "federated_aggregate",
        "<{int32}@CLIENTS,float32,(<float32,float32> -> float32),(<float32,float32> -> float32),(float32 -> float32)>",
        ["federated_aggregate"],
    ),
]


@pytest.mark.parametrize("uri, argument, fragments", REFUSALS, ids=[f"{c[0]}:{c[1]}" for c in REFUSALS])
def test_instantiate_refuses_mismatches(uri, argument, fragments):
    with pytest.raises(TypeError) as info:
        lookup(uri).instantiate(parse(argument))
    message = str(info.value)
    assert uri in message
    for fragment in fragments:
        assert fragment in message


def test_instantiate_checks_argument_presence():
    with pytest.raises(TypeError, match=r"federated_broadcast expects an argument of type T@SERVER, got none"):
        lookup("federated_broadcast").instantiate(None)


def test_lookup_of_unknown_intrinsic_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown intrinsic 'federated_median'.*federated_mean"):
        lookup("federated_median")


# --------------------------------------------------------------------------
# Executor rules.


def test_reference_executor_has_a_rule_for_every_intrinsic():
    assert REFERENCE_RULES.missing() == []
    assert fedcore.ReferenceExecutor.name == "reference"


def test_an_empty_table_lists_every_intrinsic_as_missing():
    assert RuleTable("empty").missing() == sorted(ALL_INTRINSICS)


def test_register_a_rule_in_a_new_table():
    table = RuleTable("test")

    @table.register(intrinsics.FEDERATED_SUM)
    def my_sum(interp, arg, t):
        return "summed"

    assert table[intrinsics.FEDERATED_SUM] is my_sum
    assert "federated_sum" not in table.missing()
    assert len(table.missing()) == len(ALL_INTRINSICS) - 1
    # Another table is not touched.
    assert REFERENCE_RULES[intrinsics.FEDERATED_SUM] is not my_sum
    with pytest.raises(NoRule, match="the test rules have no rule for federated_mean"):
        table[intrinsics.FEDERATED_MEAN]


def test_register_refuses_what_is_not_a_definition():
    with pytest.raises(TypeError, match="intrinsic definitions"):
        RuleTable("test").register("federated_sum")


def test_a_kind_rule_serves_every_definition_of_the_kind_that_it_selects():
    table = RuleTable("test")
    table.register_kind(Kind.AGGREGATE, lambda d: (lambda *a: d.uri), when=lambda d: d.monoid is not None)
    assert table[intrinsics.FEDERATED_MIN]() == "federated_min"
    assert table.get(intrinsics.FEDERATED_AGGREGATE) is None  # no monoid: not selected
    explicit = table.register(intrinsics.FEDERATED_SUM)(lambda *a: "explicit")
    assert table[intrinsics.FEDERATED_SUM] is explicit


def test_each_aggregation_has_its_metadata():
    aggregations = {d.uri for d in intrinsics.definitions() if d.kind is Kind.AGGREGATE}
    assert aggregations == {"federated_sum", "federated_mean", "federated_weighted_mean", "federated_min",
                            "federated_max", "federated_aggregate"}
    for d in intrinsics.definitions():
        if d.kind is Kind.AGGREGATE and d is not intrinsics.FEDERATED_AGGREGATE:
            assert isinstance(d.monoid, algebra.Monoid), d
        if d.kind is Kind.FUSED:
            assert intrinsics.fused_of(d.base) is d
    assert intrinsics.FEDERATED_BROADCAST.broadcast and intrinsics.FEDERATED_VALUE_AT_CLIENTS.broadcast
    assert not intrinsics.FEDERATED_MAP.broadcast


def test_registry_module_exposes_the_declarations():
    assert intrinsics.FEDERATED_MAP is INTRINSICS["federated_map"]
    assert intrinsics.FEDERATED_MAP.signature == "(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)"
