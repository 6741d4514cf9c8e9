"""Property tests: every type prints to notation that parses back to the same type."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcore.types import (
    CLIENTS,
    DTYPE_NAMES,
    SERVER,
    AbstractType,
    FederatedType,
    FunctionType,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    is_assignable_from,
    is_equivalent_to,
    parse,
    substitute,
    unify,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.one_of(st.none(), st.integers(min_value=0, max_value=10_000))
shapes = st.one_of(st.none(), st.lists(dims, max_size=4).map(tuple))
tensors = st.builds(TensorType, st.sampled_from(DTYPE_NAMES), shapes)
labels = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,4}", fullmatch=True)
abstracts = st.builds(AbstractType, labels)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_./\-]{0,5}", fullmatch=True)
placements = st.sampled_from([SERVER, CLIENTS])


def structs(children):
    elements = st.lists(st.tuples(st.one_of(st.none(), names), children), max_size=4)

    def unique(items):
        seen, result = set(), []
        for name, t in items:
            if name in seen:
                name = None
            if name is not None:
                seen.add(name)
            result.append((name, t))
        return StructType(result)

    return elements.map(unique)


# Types that may sit in a sequence or a federated member: no federated, function or placement.
data = st.recursive(
    st.one_of(tensors, abstracts),
    lambda children: st.one_of(structs(children), st.builds(SequenceType, children)),
    max_leaves=8,
)
federated = st.builds(FederatedType, data, placements, st.booleans())

# Any type: structs and functions over all of the above.
types = st.recursive(
    st.one_of(tensors, abstracts, st.just(PlacementType()), data, federated),
    lambda children: st.one_of(
        structs(children),
        st.builds(FunctionType, st.one_of(st.none(), children), children),
    ),
    max_leaves=10,
)


def abstract_labels(t: Type) -> set:
    match t:
        case AbstractType(label=label):
            return {label}
        case StructType():
            return set().union(*(abstract_labels(e) for e in t))
        case SequenceType(element=e):
            return abstract_labels(e)
        case FederatedType(member=m):
            return abstract_labels(m)
        case FunctionType(parameter=p, result=r):
            return (set() if p is None else abstract_labels(p)) | abstract_labels(r)
    return set()


@SETTINGS
@given(types)
def test_compact_notation_round_trips(t):
    text = str(t)
    back = parse(text)
    assert back == t
    assert hash(back) == hash(t)
    assert str(back) == text
    # Compact: no whitespace apart from the function arrow.
    assert not any(c.isspace() for c in text.replace(" -> ", ""))


@SETTINGS
@given(types)
def test_formatted_notation_round_trips(t):
    formatted = t.formatted()
    assert parse(formatted) == t
    # Removing the layout gives the compact form back.
    assert "".join(line.strip() for line in formatted.split("\n")) == str(t)


@SETTINGS
@given(types)
def test_assignability_is_reflexive(t):
    assert is_assignable_from(t, t)
    assert is_equivalent_to(t, parse(str(t)))


@SETTINGS
@given(types, st.data())
def test_unify_recovers_substituted_bindings(pattern, draw):
    chosen = {label: draw.draw(tensors, label=label) for label in sorted(abstract_labels(pattern))}
    actual = substitute(pattern, chosen)
    assert not abstract_labels(actual)
    assert unify(pattern, actual) == chosen
    assert substitute(pattern, unify(pattern, actual)) == actual


@SETTINGS
@given(types)
def test_unify_with_itself_binds_labels_to_themselves(t):
    bindings = unify(t, t)
    assert bindings == {label: AbstractType(label) for label in abstract_labels(t)}
