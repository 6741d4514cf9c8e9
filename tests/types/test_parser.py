"""parse(): the notation read back, the multi-line form, and error messages."""

import re

import pytest

from fedcore.types import (
    CLIENTS,
    SERVER,
    AbstractType,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    format_type,
    parse,
)

I32 = TensorType("int32")
F32 = TensorType("float32")
BOOL = TensorType("bool")
XY = StructType([("x", TensorType("float32", [None, 784])), ("y", TensorType("int32", [None]))])

# The notation, character for character, and the type it must parse to.
GOLDEN = {
    "int32": I32,
    "bool": BOOL,
    "float32[?,784]": TensorType("float32", (None, 784)),
    "float32[10]": TensorType("float32", (10,)),
    "float32[*]": TensorType("float32", None),
    "float32[?]": TensorType("float32", (None,)),
    "uint8[0,1]": TensorType("uint8", (0, 1)),
    "bfloat16[3]": TensorType("bfloat16", (3,)),
    "string": TensorType("string"),
    "<a=int32,b=float32[?]>": StructType([("a", I32), ("b", TensorType("float32", [None]))]),
    "<>": StructType([]),
    "<<>>": StructType([StructType([])]),
    "<int32,b=bool>": StructType([I32, ("b", BOOL)]),
    "<a=<int32,bool>,b=<c=float32[2]>>": StructType(
        [("a", StructType([I32, BOOL])), ("b", StructType([("c", TensorType("float32", [2]))]))]
    ),
    "int32*": SequenceType(I32),
    "int32**": SequenceType(SequenceType(I32)),
    "float32[*]*": SequenceType(TensorType("float32", None)),
    "<x=float32[?,784],y=int32[?]>*": SequenceType(XY),
    "int32@SERVER": FederatedType(I32, SERVER, all_equal=True),
    "{int32}@SERVER": FederatedType(I32, SERVER, all_equal=False),
    "{float32}@CLIENTS": FederatedType(F32, CLIENTS, all_equal=False),
    "float32@CLIENTS": FederatedType(F32, CLIENTS, all_equal=True),
    "{<x=float32[?,784],y=int32[?]>*}@CLIENTS": FederatedType(SequenceType(XY), CLIENTS),
    "<x=float32[?,784],y=int32[?]>*@CLIENTS": FederatedType(SequenceType(XY), CLIENTS, all_equal=True),
    "(int32 -> float32)": FunctionType(I32, F32),
    "( -> int32@SERVER)": FunctionType(None, FederatedType(I32, SERVER)),
    "({float32}@CLIENTS -> float32@SERVER)": FunctionType(
        FederatedType(F32, CLIENTS), FederatedType(F32, SERVER)
    ),
    "((int32 -> bool) -> ( -> <>))": FunctionType(FunctionType(I32, BOOL), FunctionType(None, StructType([]))),
    "<a=int32@SERVER,b={bool}@CLIENTS>": StructType(
        [("a", FederatedType(I32, SERVER)), ("b", FederatedType(BOOL, CLIENTS))]
    ),
    "placement": PlacementType(),
    "<placement,p=placement>": StructType([PlacementType(), ("p", PlacementType())]),
    "T": AbstractType("T"),
    "Model_2": AbstractType("Model_2"),
    "<(T -> U),{T}@CLIENTS>": StructType(
        [FunctionType(AbstractType("T"), AbstractType("U")), FederatedType(AbstractType("T"), CLIENTS)]
    ),
    "T*": SequenceType(AbstractType("T")),
    # Element names may look like other tokens, and may hold '.', '/' and '-'.
    "<int32=bool>": StructType([("int32", BOOL)]),
    "<T=int32>": StructType([("T", I32)]),
    "<placement=int32>": StructType([("placement", I32)]),
    "<SERVER=int32>": StructType([("SERVER", I32)]),
    "<a.b=int32,c/d=bool,e-f=float32,_=int32>": StructType(
        [("a.b", I32), ("c/d", BOOL), ("e-f", F32), ("_", I32)]
    ),
}


@pytest.mark.parametrize("text", list(GOLDEN))
def test_parse_golden(text):
    t = parse(text)
    assert t == GOLDEN[text]
    assert type(t) is type(GOLDEN[text])
    assert str(t) == text


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_types_print_their_text(text):
    assert str(GOLDEN[text]) == text


def test_parse_keeps_all_equal_flags():
    assert parse("float32@CLIENTS").all_equal is True
    assert parse("{float32}@CLIENTS").all_equal is False
    assert parse("int32@SERVER").all_equal is True
    assert parse("{int32}@SERVER").all_equal is False


def test_parse_resolves_placement_singletons():
    assert parse("int32@SERVER").placement is SERVER
    assert parse("{int32}@CLIENTS").placement is CLIENTS
    assert parse("int32@server") == parse("int32@SERVER")
    assert str(parse("{int32}@clients")) == "{int32}@CLIENTS"


def test_parsed_structs_have_no_container():
    assert parse("<a=int32>").container is None


@pytest.mark.parametrize(
    "spaced,compact",
    [
        ("  int32  ", "int32"),
        ("float32 [ ? , 784 ]", "float32[?,784]"),
        ("< a = int32 , b = float32[?] >", "<a=int32,b=float32[?]>"),
        ("< >", "<>"),
        ("int32 *", "int32*"),
        ("{ float32 } @ CLIENTS", "{float32}@CLIENTS"),
        ("(int32->float32)", "(int32 -> float32)"),
        ("(->int32@SERVER)", "( -> int32@SERVER)"),
        ("\t<\n  x = float32[ * ],\n  y=int32\n>\n", "<x=float32[*],y=int32>"),
    ],
)
def test_whitespace_is_insignificant(spaced, compact):
    assert parse(spaced) == parse(compact)
    assert str(parse(spaced)) == compact


# --- the multi-line form ------------------------------------------------------------------------

FORMATTED = {
    "int32": "int32",
    "<>": "<>",
    "<a=int32,b=<c=float32[?],d=<>>>": ("<\n  a=int32,\n  b=<\n    c=float32[?],\n    d=<>\n  >\n>"),
    "{<x=float32[?,784],y=int32[?]>*}@CLIENTS": (
        "{<\n  x=float32[?,784],\n  y=int32[?]\n>*}@CLIENTS"
    ),
    "(<a=int32,b=bool> -> <c=float32>@SERVER)": (
        "(<\n  a=int32,\n  b=bool\n> -> <\n  c=float32\n>@SERVER)"
    ),
    "<int32,<bool>>*": "<\n  int32,\n  <\n    bool\n  >\n>*",
    "<f=(<b=int32> -> bool)>": "<\n  f=(<\n    b=int32\n  > -> bool)\n>",
    "( -> int32@SERVER)": "( -> int32@SERVER)",
}


@pytest.mark.parametrize("text", list(FORMATTED))
def test_formatted_golden(text):
    t = parse(text)
    assert t.formatted() == FORMATTED[text]
    assert format_type(t) == FORMATTED[text]


@pytest.mark.parametrize("text", list(FORMATTED) + list(GOLDEN))
def test_formatted_parses_back(text):
    t = parse(text)
    assert parse(t.formatted()) == t


def test_formatted_puts_one_element_per_line_with_two_space_indent():
    t = parse("<a=<b=int32,c=bool>,d=float32>")
    lines = t.formatted().split("\n")
    assert lines == ["<", "  a=<", "    b=int32,", "    c=bool", "  >,", "  d=float32", ">"]


# --- errors ---------------------------------------------------------------------------------------

# (text, where, unexpected, fragments that must be in the "expected" part)
SYNTAX_ERRORS = [
    ("float32[?,784", "column 14", "end of input", ["','", "']'"]),
    ("<a=int32,>", "column 10", "'>'", ["an element name", "a dtype", "'<'"]),
    ("{float32}@", "column 11", "end of input", ["a placement"]),
    ("int32 -> float32", "column 7", "'->'", ["end of input"]),
    ("float32[-1]", "column 9", "character '-'", ["a dimension", "'?'", "'*'"]),
    ("", "column 1", "end of input", ["a dtype", "'<'", "'('", "'{'", "'placement'", "an abstract type"]),
    ("(int32)", "column 7", "')'", ["'->'"]),
    ("int32@SERVER*", "column 13", "'*'", ["end of input"]),
    ("<x=int32 y=bool>", "column 10", "'y'", ["','", "'>'"]),
    ("float32[*,3]", "column 10", "','", ["']'"]),
    ("int32[1.5]", "column 8", "character '.'", ["','", "']'"]),
    ("{int32}", "column 8", "end of input", ["'@'"]),
    ("<a=int32>>", "column 10", "'>'", ["end of input"]),
    ("(int32 -> )", "column 11", "')'", ["a dtype"]),
    ("<a=>", "column 4", "'>'", ["a dtype", "'placement'"]),
    ("<\n  a=int32,\n  b=@\n>", "line 3, column 5", "'@'", ["a dtype"]),
    ("<\n  a=int32,\n", "line 3, column 1", "end of input", ["an element name"]),
]


@pytest.mark.parametrize("text,where,unexpected,expected", SYNTAX_ERRORS, ids=[repr(e[0]) for e in SYNTAX_ERRORS])
def test_syntax_errors_name_column_and_expectation(text, where, unexpected, expected):
    with pytest.raises(ValueError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"cannot parse type {text!r}")
    assert f"unexpected {unexpected} at {where};" in message
    tail = message.split("; expected ", 1)[1].split("\n")[0]
    for fragment in expected:
        assert fragment in tail, (fragment, tail)


def test_expected_list_is_exact_for_a_simple_case():
    with pytest.raises(ValueError) as info:
        parse("float32[?,784")
    assert str(info.value).endswith("expected ',', ']'")


def test_single_line_errors_do_not_mention_a_line():
    with pytest.raises(ValueError) as info:
        parse("<a=int32,>")
    assert "line" not in str(info.value)


def test_unexpected_character_shows_context_with_caret():
    with pytest.raises(ValueError) as info:
        parse("float32[-1]")
    lines = str(info.value).split("\n")
    assert "float32[-1]" in lines[1]
    assert lines[2].index("^") == lines[1].index("-")


@pytest.mark.parametrize(
    "text,error,fragment",
    [
        ("float33", TypeError, "unknown dtype 'float33'"),
        ("placements", TypeError, "unknown dtype 'placements'"),
        ("t", TypeError, "unknown dtype 't'"),
        ("<a=int32,a=bool>", ValueError, "duplicate struct element name 'a'"),
        ("int32@EDGE", ValueError, "unknown placement 'EDGE'"),
        ("{int32@SERVER}@CLIENTS", TypeError, "cannot hold a federated type, got int32@SERVER"),
        ("(int32 -> int32)@SERVER", TypeError, "cannot hold a function type, got (int32 -> int32)"),
        ("{<a=int32,f=( -> bool)>}@CLIENTS", TypeError, "got ( -> bool)"),
        ("{placement}@CLIENTS", TypeError, "cannot hold a placement type"),
        ("<{int32}@CLIENTS>*", TypeError, "sequence cannot hold {int32}@CLIENTS"),
        ("(int32 -> int32)*", TypeError, "sequence cannot hold (int32 -> int32)"),
        ("placement*", TypeError, "sequence cannot hold placement"),
    ],
)
def test_well_formed_but_invalid_types(text, error, fragment):
    with pytest.raises(error) as info:
        parse(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", [42, None, ["int32"], b"int32", I32])
def test_parse_requires_a_string(value):
    with pytest.raises(TypeError) as info:
        parse(value)
    assert "expects a string" in str(info.value)
    assert repr(value) in str(info.value)


def test_repeated_bad_input_raises_every_time():
    for _ in range(2):
        with pytest.raises(ValueError, match=re.escape("at column 7; expected")):
            parse("int32[")

