"""The intrinsic registry: declarations, generic signatures, instantiation and executor rules."""

import pytest

import fedcore
from fedcore.compiler import intrinsics
from fedcore.compiler.intrinsics import INTRINSICS, declare, lookup, missing_rules, register_rule
from fedcore.runtime import reference  # noqa: F401  (registers the reference rules)
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


def test_registry_holds_exactly_the_known_intrinsics():
    assert set(INTRINSICS) == EXPECTED_INTRINSICS
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


@pytest.mark.parametrize("uri", sorted(EXPECTED_INTRINSICS))
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
]


@pytest.mark.parametrize("uri, argument, expected", INSTANTIATIONS, ids=[f"{c[0]}:{c[1]}" for c in INSTANTIATIONS])
def test_instantiate(uri, argument, expected):
    fn_type = lookup(uri).instantiate(parse(argument))
    assert isinstance(fn_type, FunctionType)
    assert str(fn_type) == expected
    assert fn_type == parse(expected)


def test_every_function_intrinsic_has_an_instantiation_test():
    covered = {uri for uri, _, _ in INSTANTIATIONS}
    assert covered == EXPECTED_INTRINSICS - {"generic_zero"}


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
    assert missing_rules("reference") == []
    assert fedcore.ReferenceExecutor.name == "reference"


def test_missing_rules_for_an_unknown_executor_lists_everything():
    assert missing_rules("no-such-executor") == sorted(EXPECTED_INTRINSICS)


@pytest.fixture
def test_executor_rules():
    name = "test-executor-rules"
    yield name
    for definition in INTRINSICS.values():
        definition.rules.pop(name, None)


def test_register_rule_for_a_new_executor(test_executor_rules):
    name = test_executor_rules

    @register_rule(name, "federated_sum")
    def my_sum(interp, arg, t):
        return "summed"

    assert lookup("federated_sum").rules[name] is my_sum
    missing = missing_rules(name)
    assert "federated_sum" not in missing
    assert len(missing) == len(EXPECTED_INTRINSICS) - 1
    # Registering a rule for one executor leaves the others alone.
    assert lookup("federated_sum").rules["reference"] is not my_sum
    assert missing_rules("reference") == []


def test_register_rule_decorator_returns_the_function(test_executor_rules):
    def rule(interp, arg, t):
        return None

    assert register_rule(test_executor_rules, "federated_mean")(rule) is rule


def test_register_rule_for_unknown_intrinsic(test_executor_rules):
    with pytest.raises(ValueError, match="unknown intrinsic"):
        register_rule(test_executor_rules, "federated_median")(lambda *a: None)
    assert missing_rules(test_executor_rules) == sorted(EXPECTED_INTRINSICS)


def test_registry_module_exposes_the_declarations():
    assert intrinsics.FEDERATED_MAP is INTRINSICS["federated_map"]
    assert intrinsics.FEDERATED_MAP.signature == "(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)"
