"""Suite-wide fixtures."""

import pytest

from fedcore._quiet import import_tensorflow

import_tensorflow()  # before any test module imports it: its load-time notices are not the suite's output


@pytest.fixture(autouse=True)
def _no_global_tensorflow_seed_left_behind():
    """Each test starts without TensorFlow's global seed, whatever the test before it set.

    ``fedcore train`` (run in-process by the CLI tests) and the tutorials seed TensorFlow
    globally, as a user's script does; a later test of unseeded shuffles must not inherit it.
    """
    yield
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.random.set_seed(None)
