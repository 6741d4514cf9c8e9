"""The TF backend's two rule tables, keyed by intrinsic definition.

``RULES`` lowers an intrinsic call into graph code on stacked (clients-axis)
values; ``BATCHED`` lowers one inside client work that runs for all clients
at once (``strategy='vectorized'``), or refuses with ``NotVectorizable``.
"""

from fedcore.compiler.intrinsics import RuleTable

RULES = RuleTable("tensorflow")
BATCHED = RuleTable("tensorflow-vectorized")


class NotVectorizable(Exception):
    """Raised while lowering client work that cannot run on a clients axis."""


class NeedsAllClients(NotVectorizable):
    """The work vectorizes only on the whole, static clients axis (not on a changing subset of clients)."""
