"""The conformance cases, one module per theme.

Importing this package registers every case in ``CASES``, module by module in
the order below; that order is the order of ``CASES``.
"""

from fedcore.testing.conformance.cases import (  # noqa: F401 -- imported to register their cases, in this order
    placement,
    maps,
    aggregation,
    sequences,
    zero_clients,
    lambdas,
    scoping,
    containers,
    datasets,
    polymorphism,
    strings,
    keywords,
    tutorial,
    rounds,
    variables,
    errors,
)
