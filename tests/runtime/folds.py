"""Shared by tests: a ``sequence_reduce`` of each client's data, mapped over the clients."""

import fedcore


def per_client_reduction(step, zero, element_type):
    """``{element_type*}@CLIENTS -> {type of zero}@CLIENTS``: each client's data reduced by ``step`` from ``zero``."""

    @fedcore.federated_computation(fedcore.SequenceType(element_type))
    def client(batches):
        return fedcore.sequence_reduce(batches, zero, step)

    @fedcore.federated_computation(fedcore.type_at_clients(fedcore.SequenceType(element_type)))
    def everyone(data):
        return fedcore.federated_map(client, data)

    return everyone
