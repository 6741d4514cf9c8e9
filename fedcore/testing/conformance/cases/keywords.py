"""Cases: several Python parameters, keyword arguments."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import _clients, _server, _two_params_tf


def _federated_two_params():
    @fedcore.federated_computation(tf.int32, tf.float32)
    def two_params(a, b):
        return _two_params_tf()(b=b, a=a)

    return two_params


add_case(
    "keyword_arguments_out_of_order",
    _federated_two_params,
    kwargs=dict(b=2.0, a=1),
    expected=3.0,
    tags={"keywords"},
)
add_case("positional_and_keyword_arguments", _two_params_tf, 1, kwargs=dict(b=2.5), expected=3.5, tags={"keywords"})


def _client_keywords():
    @fedcore.federated_computation(_clients(tf.float32), _server(tf.float32))
    def scaled_sum(values, scale):
        @fedcore.tf_computation(tf.float32, tf.float32)
        def times(v, s):
            return v * s

        return fedcore.federated_sum(
            fedcore.federated_map(times, fedcore.federated_zip((values, fedcore.federated_broadcast(scale))))
        )

    return scaled_sum


add_case(
    "keyword_arguments_at_clients_and_server",
    _client_keywords,
    kwargs=dict(scale=2.0, values=[1.0, 2.0]),
    expected=6.0,
    tags={"keywords"},
)
