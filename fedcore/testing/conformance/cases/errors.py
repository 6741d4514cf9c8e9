"""Cases: bad arguments, which raise TypeError subclasses, never AttributeError, KeyError or IndexError."""

import collections

from fedcore.compiler.context import FederatedTypeError
from fedcore.runtime.values import ArgumentError
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.aggregation import _mean, _sum_int, _weighted_mean
from fedcore.testing.conformance.cases.common import Pair, Point, _float_dataset, _two_params_tf, _weighted_xy
from fedcore.testing.conformance.cases.containers import _attrs_identity, _namedtuple_identity
from fedcore.testing.conformance.cases.datasets import _clients_sequence_sum
from fedcore.testing.conformance.cases.keywords import _federated_two_params
from fedcore.testing.conformance.cases.lambdas import _federated_selection_clients
from fedcore.testing.conformance.cases.polymorphism import _poly_double, _poly_swap
from fedcore.testing.conformance.cases.sequences import _generic_plus
from fedcore.testing.conformance.cases.strings import _hello


_bad = {"errors"}
add_case(
    "error_client_counts_disagree",
    _weighted_mean,
    [1.0, 2.0],
    [1.0],
    expect_error=ArgumentError,
    tags=_bad,
)
add_case("error_float_for_int32", _sum_int, [1, 2.5], expect_error=ArgumentError, tags=_bad)
add_case("error_bool_for_int32", _two_params_tf, True, 2.0, expect_error=ArgumentError, tags=_bad)
add_case("error_int32_overflow", _two_params_tf, 2**40, 1.0, expect_error=ArgumentError, tags=_bad)
add_case("error_string_for_float", _mean, [1.0, "2.0"], expect_error=ArgumentError, tags=_bad)
add_case("error_wrong_struct_names", _namedtuple_identity, dict(x=1, z=2.0), expect_error=ArgumentError, tags=_bad)
add_case(
    "error_wrong_namedtuple_fields",
    _namedtuple_identity,
    collections.namedtuple("Other", ["x", "z"])(1, 2.0),
    expect_error=ArgumentError,
    tags=_bad,
)
add_case("error_struct_too_long", _attrs_identity, Pair(1, [2.0, 3.0, 4.0]), expect_error=ArgumentError, tags=_bad)
add_case("error_scalar_for_client_values", _sum_int, 3, expect_error=ArgumentError, tags=_bad)
add_case(
    "error_namedtuple_for_client_values",
    _federated_selection_clients,
    Point(1, 2.0),
    expect_error=ArgumentError,
    tags=_bad,
)
add_case(
    "error_dataset_for_client_values",
    _mean,
    _float_dataset(1.0, 2.0),
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
add_case(
    "error_dataset_of_wrong_elements",
    _weighted_xy,
    _float_dataset(1.0),
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
add_case(
    "error_bad_element_in_client_sequence",
    _clients_sequence_sum,
    [[1.0, "x"]],
    expect_error=ArgumentError,
    tags=_bad | {"datasets"},
)
add_case("error_wrong_shape", _generic_plus, [1.0, 2.0], [1.0, 2.0, 3.0], expect_error=ArgumentError, tags=_bad)
add_case(
    "error_missing_argument",
    _federated_two_params,
    kwargs=dict(a=1),
    expect_error=FederatedTypeError,
    tags=_bad | {"keywords"},
)
add_case("error_no_arguments", _mean, expect_error=ArgumentError, tags=_bad)
add_case("error_too_many_arguments", _federated_two_params, 1, 2.0, 3, expect_error=FederatedTypeError, tags=_bad)
add_case(
    "error_unexpected_keyword",
    _federated_two_params,
    1,
    kwargs=dict(c=2.0),
    expect_error=FederatedTypeError,
    tags=_bad | {"keywords"},
)
add_case("error_argument_for_no_parameter", _hello, 1, expect_error=ArgumentError, tags=_bad)
add_case("error_polymorphic_uninferable", _poly_double, object(), expect_error=ArgumentError, tags=_bad | {"polymorphism"})
add_case(
    "error_polymorphic_dict_with_non_string_keys",
    _poly_double,
    {1: 2},
    expect_error=ArgumentError,
    tags=_bad | {"polymorphism"},
)
add_case(
    "error_polymorphic_missing_argument",
    _poly_swap,
    1,
    expect_error=FederatedTypeError,
    tags=_bad | {"polymorphism"},
)
