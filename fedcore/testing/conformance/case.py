"""Cases, the registry of cases (``CASES``) and selecting among them."""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

import attrs

ErrorSpec = Union[Type[BaseException], Tuple[Type[BaseException], ...]]

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6


class Lazy:
    """An argument made when the case runs (e.g. a tf.data.Dataset), not at import."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make

    def __repr__(self) -> str:
        return f"lazy({getattr(self.make, '__name__', self.make)!r})"


def lazy(make: Callable[[], Any]) -> Lazy:
    """Marks an argument to be made by calling ``make()`` each time the case runs."""
    return Lazy(make)


def _resolve(value: Any) -> Any:
    if isinstance(value, Lazy):
        return value.make()
    if type(value) in (list, tuple):
        return type(value)(_resolve(v) for v in value)
    if type(value) in (dict, collections.OrderedDict):
        return type(value)((k, _resolve(v)) for k, v in value.items())
    return value


def _check_error_spec(instance, attribute, value):
    if value is None:
        return
    classes = value if isinstance(value, tuple) else (value,)
    if not classes or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise TypeError(f"expect_error must be an exception class or a tuple of them, got {value!r}")


@attrs.frozen(eq=False)
class Case:
    """One conformance case.

    ``build()`` returns the computation to call (a ``Computation`` or a
    polymorphic one); it is called when the case runs.  The computation is
    called with ``args`` and ``kwargs``; an argument wrapped in ``lazy(fn)``
    is made by ``fn()`` at that time.  ``num_clients`` is the client count
    for computations whose arguments do not imply one.

    The case passes when the executor's result equals the reference's
    (within ``rtol``/``atol`` for floating-point values, NaN equal to NaN,
    containers of the same types), or, when ``expect_error`` is set, when
    both raise an instance of it.  ``expected``, when not None, is a value
    computed by hand that the reference's result must equal too; it is
    compared without requiring the same numpy dtypes (``69.5`` matches
    ``np.float32(69.5)``) but with the same containers.
    """

    name: str
    build: Callable[[], Any] = attrs.field(repr=False)
    args: Tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    kwargs: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    num_clients: Optional[int] = None
    expect_error: Optional[ErrorSpec] = attrs.field(default=None, validator=_check_error_spec)
    expected: Any = None
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    tags: frozenset = attrs.field(default=frozenset(), converter=frozenset)
    doc: str = ""

    def __attrs_post_init__(self):
        if self.expect_error is not None and self.expected is not None:
            raise ValueError(f"case {self.name}: give expected or expect_error, not both")

    def arguments(self) -> Tuple[tuple, dict]:
        """The positional and keyword arguments, with lazy ones made now."""
        return _resolve(tuple(self.args)), {k: _resolve(v) for k, v in self.kwargs.items()}


CASES: List[Case] = []
_NAMES: Dict[str, Case] = {}


def add_case(name: str, build: Callable[[], Any], *args: Any, **options: Any) -> Case:
    """Registers a case at the end of ``CASES``; ``build`` is traced once, on first use."""
    if name in _NAMES:
        raise ValueError(f"duplicate conformance case name {name!r}")
    case = Case(name, functools.lru_cache(maxsize=None)(build), args, **options)
    CASES.append(case)
    _NAMES[name] = case
    return case


def get_case(name: str) -> Case:
    try:
        return _NAMES[name]
    except KeyError:
        raise KeyError(f"no conformance case named {name!r}") from None


def _check_tags(argument: str, given: Iterable[str], cases: List[Case]) -> set:
    """The tags of ``given``, or ValueError naming those no case has."""
    if isinstance(given, str):
        raise TypeError(f"{argument} must be a collection of tags, not the string {given!r}")
    wanted = set(given)
    known = {t for c in CASES for t in c.tags} | {t for c in cases for t in c.tags}
    unknown = wanted - known
    if unknown:
        raise ValueError(
            f"unknown conformance tag{'s' if len(unknown) > 1 else ''} in {argument}: "
            f"{', '.join(repr(t) for t in sorted(unknown))}; known tags: {', '.join(sorted(known))}"
        )
    return wanted


def select(
    cases: Optional[Iterable[Case]] = None,
    *,
    tags: Optional[Iterable[str]] = None,
    exclude_tags: Optional[Iterable[str]] = None,
    names: Optional[Iterable[str]] = None,
) -> List[Case]:
    """The cases (of ``cases``, or all) named in ``names``, having any of ``tags`` and none of ``exclude_tags``.

    Tags in use: intrinsics, zero_clients, zeros, num_clients, lambdas, containers,
    datasets, polymorphism, strings, keywords, tutorial, rounds, two_rounds, errors.
    A tag no case has is a ValueError (a misspelt tag would otherwise select nothing
    or exclude nothing).
    """
    chosen = list(CASES if cases is None else cases)
    wanted = None if tags is None else _check_tags("tags", tags, chosen)
    unwanted = None if exclude_tags is None else _check_tags("exclude_tags", exclude_tags, chosen)
    if names is not None:
        wanted_names = set(names)
        unknown = wanted_names - {c.name for c in chosen}
        if unknown:
            raise KeyError(f"no conformance cases named {sorted(unknown)}")
        chosen = [c for c in chosen if c.name in wanted_names]
    if wanted is not None:
        chosen = [c for c in chosen if c.tags & wanted]
    if unwanted is not None:
        chosen = [c for c in chosen if not c.tags & unwanted]
    return chosen
