"""Assignability, equivalence, unification and substitution."""

import collections

import pytest

from fedcore.types import (
    AbstractType,
    FederatedType,
    StructType,
    TensorType,
    UnificationError,
    is_assignable_from,
    is_equivalent_to,
    parse,
    substitute,
    unify,
)

# (target, source, assignable?) in the notation.
ASSIGNABILITY = [
    # tensors: same dtype, '?' accepts any size, [*] accepts any rank
    ("int32", "int32", True),
    ("float32", "int32", False),
    ("int32", "int64", False),
    ("float32[3]", "float32[3]", True),
    ("float32[3]", "float32[4]", False),
    ("float32[?]", "float32[3]", True),
    ("float32[3]", "float32[?]", False),
    ("float32[?,784]", "float32[32,784]", True),
    ("float32[?,784]", "float32[32,783]", False),
    ("float32[?]", "float32[?,?]", False),
    ("float32[?]", "float32", False),
    ("float32", "float32[1]", False),
    ("float32[*]", "float32[2,3]", True),
    ("float32[*]", "float32", True),
    ("float32[*]", "float32[*]", True),
    ("float32[*]", "int32[*]", False),
    ("float32[?]", "float32[*]", False),
    ("float32", "float32[*]", False),
    # structs: same length, a named source element must keep its name, an unnamed one fits any
    ("<>", "<>", True),
    ("<int32>", "<int32,int32>", False),
    ("<int32,int32>", "<int32>", False),
    ("<a=int32>", "<a=int32>", True),
    ("<a=int32>", "<b=int32>", False),
    ("<a=int32>", "<int32>", True),
    ("<int32>", "<a=int32>", False),
    ("<a=int32,b=bool>", "<b=bool,a=int32>", False),
    ("<a=float32[?]>", "<a=float32[3]>", True),
    ("<a=float32[3]>", "<a=float32[?]>", False),
    ("<a=<b=int32[?]>>", "<a=<int32[5]>>", True),
    ("<a=<b=int32[?]>>", "<a=<c=int32[5]>>", False),
    ("<int32>", "int32", False),
    # sequences are covariant
    ("float32[?]*", "float32[3]*", True),
    ("float32[3]*", "float32[?]*", False),
    ("<x=float32[?,784]>*", "<float32[10,784]>*", True),
    ("int32*", "int32", False),
    ("int32", "int32*", False),
    # functions: parameter contravariant, result covariant
    ("(float32[3] -> float32[?])", "(float32[?] -> float32[3])", True),
    ("(float32[?] -> float32[3])", "(float32[3] -> float32[?])", False),
    ("(float32[?] -> int32)", "(float32[?] -> int32)", True),
    ("(float32[?] -> int32)", "(float32[3] -> int32)", False),
    ("(int32 -> float32[?])", "(int32 -> float32[3])", True),
    ("(int32 -> float32[3])", "(int32 -> float32[?])", False),
    ("( -> int32)", "( -> int32)", True),
    ("( -> int32)", "(int32 -> int32)", False),
    ("(int32 -> int32)", "( -> int32)", False),
    ("(<> -> int32)", "( -> int32)", False),
    # federated: same placement, assignable member; all-equal fits non-all-equal, not the reverse
    ("{float32[?]}@CLIENTS", "{float32[3]}@CLIENTS", True),
    ("{float32[3]}@CLIENTS", "{float32[?]}@CLIENTS", False),
    ("{int32}@CLIENTS", "int32@CLIENTS", True),
    ("int32@CLIENTS", "{int32}@CLIENTS", False),
    ("{int32}@SERVER", "int32@SERVER", True),
    ("int32@SERVER", "{int32}@SERVER", False),
    ("int32@SERVER", "int32@CLIENTS", False),
    ("{int32}@CLIENTS", "{int32}@SERVER", False),
    ("{int32}@CLIENTS", "int32", False),
    ("int32", "int32@SERVER", False),
    ("{<x=float32[?]>*}@CLIENTS", "{<float32[2]>*}@CLIENTS", True),
    # abstract and placement types
    ("T", "T", True),
    ("T", "U", False),
    ("T", "int32", False),
    ("int32", "T", False),
    ("placement", "placement", True),
    ("placement", "int32", False),
]


@pytest.mark.parametrize(
    "target,source,expected", ASSIGNABILITY, ids=[f"{t}<-{s}" for t, s, _ in ASSIGNABILITY]
)
def test_is_assignable_from(target, source, expected):
    t, s = parse(target), parse(source)
    assert is_assignable_from(t, s) is expected
    assert t.is_assignable_from(s) is expected


@pytest.mark.parametrize(
    "target,source,expected", ASSIGNABILITY, ids=[f"{t}<-{s}" for t, s, _ in ASSIGNABILITY]
)
def test_check_assignable_from(target, source, expected):
    t, s = parse(target), parse(source)
    if expected:
        assert t.check_assignable_from(s) is None
    else:
        with pytest.raises(TypeError) as info:
            t.check_assignable_from(s)
        assert str(info.value) == f"expected a value of type {target}, got {source}"


EQUIVALENCE = [
    ("int32", "int32", True),
    ("float32[?]", "float32[?]", True),
    ("float32[?]", "float32[3]", False),
    ("float32[*]", "float32[2]", False),
    ("<a=int32>", "<int32>", False),
    ("<a=int32,b=<c=bool>>", "<a=int32,b=<c=bool>>", True),
    ("{int32}@CLIENTS", "int32@CLIENTS", False),
    ("{int32}@CLIENTS", "{int32}@CLIENTS", True),
    ("(int32 -> int32)", "(int32 -> int32)", True),
    ("(int32[?] -> int32)", "(int32[2] -> int32)", False),
    ("T", "T", True),
    ("T", "U", False),
]


@pytest.mark.parametrize("a,b,expected", EQUIVALENCE)
def test_is_equivalent_to(a, b, expected):
    ta, tb = parse(a), parse(b)
    assert is_equivalent_to(ta, tb) is expected
    assert is_equivalent_to(tb, ta) is expected
    assert ta.is_equivalent_to(tb) is expected


def test_equivalence_ignores_container():
    a = StructType([("x", TensorType("int32"))], container=dict)
    b = StructType([("x", TensorType("int32"))], container=collections.OrderedDict)
    assert is_equivalent_to(a, b)


# --- unify ---------------------------------------------------------------------------------------


def test_unify_binds_abstract_types_consistently():
    bindings = unify(parse("<(T -> U),{T}@CLIENTS>"), parse("<(int32 -> float32),{int32}@CLIENTS>"))
    assert bindings == {"T": parse("int32"), "U": parse("float32")}


def test_unify_conflicting_bindings_raise():
    pattern = parse("<(T -> U),{T}@CLIENTS>")
    actual = parse("<(int32 -> float32),{float32}@CLIENTS>")
    with pytest.raises(UnificationError) as info:
        unify(pattern, actual)
    message = str(info.value)
    assert message.startswith(f"expected {pattern}, got {actual}:")
    assert "T is already bound to int32" in message
    assert "float32 does not match T" in message


def test_unification_error_is_a_type_error():
    assert issubclass(UnificationError, TypeError)
    with pytest.raises(TypeError):
        unify(parse("<T,T>"), parse("<int32,bool>"))


@pytest.mark.parametrize(
    "pattern,actual,expected",
    [
        ("T", "int32", {"T": "int32"}),
        ("T", "{int32}@CLIENTS", {"T": "{int32}@CLIENTS"}),
        ("T*", "<x=float32[?]>*", {"T": "<x=float32[?]>"}),
        ("<T,T>", "<int32,int32>", {"T": "int32"}),
        # the more general binding of the two is kept, whichever comes first
        ("<T,T>", "<float32[3],float32[?]>", {"T": "float32[?]"}),
        ("<T,T>", "<float32[?],float32[3]>", {"T": "float32[?]"}),
        ("{T}@CLIENTS", "int32@CLIENTS", {"T": "int32"}),
        ("{T}@CLIENTS", "{int32}@CLIENTS", {"T": "int32"}),
        ("T@SERVER", "int32@SERVER", {"T": "int32"}),
        ("<a=T,b=U>", "<a=int32,b=bool>", {"T": "int32", "U": "bool"}),
        ("<a=T>", "<int32>", {"T": "int32"}),
        ("(T -> T)", "(int32 -> int32)", {"T": "int32"}),
        ("( -> T)", "( -> bool)", {"T": "bool"}),
        ("<T,int32>", "<bool,int32>", {"T": "bool"}),
        ("<float32[?],T>", "<float32[7],bool>", {"T": "bool"}),
        ("int32", "int32", {}),
        (
            "<{T}@CLIENTS,(<T,T> -> T)>",
            "<{<w=float32[2]>}@CLIENTS,(<<w=float32[2]>,<w=float32[2]>> -> <w=float32[2]>)>",
            {"T": "<w=float32[2]>"},
        ),
    ],
)
def test_unify_cases(pattern, actual, expected):
    bindings = unify(parse(pattern), parse(actual))
    assert bindings == {k: parse(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    "pattern,actual,fragment",
    [
        ("<T,T>", "<int32,bool>", "T is already bound to int32"),
        ("T@CLIENTS", "{int32}@CLIENTS", "an all-equal value is required"),
        ("{T}@CLIENTS", "int32@SERVER", "int32@SERVER does not match {T}@CLIENTS"),
        ("{T}@CLIENTS", "int32", "int32 does not match {T}@CLIENTS"),
        ("<a=T>", "<b=int32>", "element name 'b' is not 'a'"),
        ("<T,U>", "<int32>", "<int32> does not match <T,U>"),
        ("<T>", "int32", "int32 does not match <T>"),
        ("T*", "int32", "int32 does not match T*"),
        ("(T -> U)", "( -> int32)", "( -> int32) does not match (T -> U)"),
        ("(T -> U)", "int32", "int32 does not match (T -> U)"),
        ("float32[3]", "float32[?]", "float32[?] does not match float32[3]"),
        ("<T,int32>", "<bool,bool>", "bool does not match int32"),
    ],
)
def test_unify_failures(pattern, actual, fragment):
    with pytest.raises(UnificationError) as info:
        unify(parse(pattern), parse(actual))
    assert fragment in str(info.value)
    assert f"expected {pattern}, got {actual}" in str(info.value)


def test_unify_extends_given_bindings():
    bindings = {"T": parse("int32")}
    result = unify(parse("(T -> U)"), parse("(int32 -> bool)"), bindings)
    assert result is bindings
    assert bindings == {"T": parse("int32"), "U": parse("bool")}
    with pytest.raises(UnificationError, match="T is already bound to int32"):
        unify(parse("T"), parse("float32"), {"T": parse("int32")})


def test_unify_default_bindings_are_fresh():
    first = unify(parse("T"), parse("int32"))
    second = unify(parse("T"), parse("bool"))
    assert first == {"T": parse("int32")}
    assert second == {"T": parse("bool")}


# --- substitute ----------------------------------------------------------------------------------


def test_substitute_replaces_abstract_types():
    bindings = {"T": parse("float32[?]"), "U": parse("<a=int32>")}
    result = substitute(parse("({T}@CLIENTS -> <U,T*>@SERVER)"), bindings)
    assert str(result) == "({float32[?]}@CLIENTS -> <<a=int32>,float32[?]*>@SERVER)"
    assert result.parameter.all_equal is False and result.result.all_equal is True


def test_substitute_after_unify_gives_concrete_result():
    pattern = parse("(<(T -> U),{T}@CLIENTS> -> {U}@CLIENTS)")
    bindings = unify(pattern.parameter, parse("<(int32 -> float32),{int32}@CLIENTS>"))
    assert str(substitute(pattern.result, bindings)) == "{float32}@CLIENTS"


def test_substitute_leaves_concrete_types_alone():
    t = parse("<a=int32,b={float32[?]}@CLIENTS,c=( -> bool)>")
    assert substitute(t, {"T": parse("bool")}) == t


def test_substitute_unbound_label_raises():
    with pytest.raises(UnificationError, match="abstract type U is not bound"):
        substitute(parse("(T -> U)"), {"T": parse("int32")})


def test_substitute_keeps_struct_container():
    pattern = StructType([("x", AbstractType("T"))], container=collections.OrderedDict)
    result = substitute(pattern, {"T": parse("int32")})
    assert result.container is collections.OrderedDict
    assert str(result) == "<x=int32>"


def test_substitute_validates_the_result():
    # A federated member may not become federated by substitution.
    with pytest.raises(TypeError, match="cannot hold a federated type"):
        substitute(parse("{T}@CLIENTS"), {"T": parse("int32@SERVER")})


def test_substitute_keeps_all_equal_flag():
    result = substitute(parse("T@CLIENTS"), {"T": parse("int32")})
    assert result == FederatedType(TensorType("int32"), "CLIENTS", all_equal=True)
