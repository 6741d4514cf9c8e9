"""Cases: strings."""

import tensorflow as tf

import fedcore
from fedcore.testing.conformance.case import add_case
from fedcore.testing.conformance.cases.common import _clients


def _hello():
    return fedcore.federated_computation(lambda: "Hello, World!")


add_case("hello_world", _hello, expected="Hello, World!", tags={"strings"})


def _client_strings():
    @fedcore.tf_computation(tf.string)
    def exclaim(s):
        return tf.strings.join([s, "!"])

    @fedcore.federated_computation(_clients(tf.string))
    def shout(names):
        return fedcore.federated_map(exclaim, names)

    return shout


add_case("strings_at_clients", _client_strings, ["a", "bc"], expected=["a!", "bc!"], tags={"strings"})
