"""RayExecutor checks its arguments, and that a cluster address answers, before it starts or joins Ray."""

import socket
import time

import pytest
import ray

from fedcore.runtime.ray import RayExecutor
from fedcore.runtime.ray import executor as ray_executor


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Ray looks uninitialized, and starting it fails the test (no Ray process is started here)."""

    def init(*args, **kwargs):
        raise AssertionError(f"ray.init was called with {args} {kwargs}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)


@pytest.mark.parametrize("num_workers", [0, -1, 1.5, True, "2"])
def test_bad_num_workers_is_refused_before_ray_starts(ray_must_not_start, num_workers):
    with pytest.raises(ValueError, match=rf"num_workers must be a positive int or None .*got {num_workers!r}"):
        RayExecutor(num_workers=num_workers)


@pytest.mark.parametrize("name, value", [("cpus_per_worker", 0), ("cpus_per_worker", float("nan")),
                                         ("connect_timeout_s", 0), ("connect_timeout_s", float("inf"))])
def test_bad_cpus_and_connect_timeout_are_refused_before_ray_starts(ray_must_not_start, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive number"):
        RayExecutor(**{name: value})


def test_an_address_that_is_not_a_string_is_refused_before_ray_starts(ray_must_not_start):
    with pytest.raises(TypeError, match="address must be a string such as 'auto' or 'host:port', or None, got 6379"):
        RayExecutor(address=6379)


def _closed_port():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_fails_at_once(ray_must_not_start):
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"cannot reach a Ray cluster at 127.0.0.1:{port}: .*within 2 s"):
        RayExecutor(address=f"127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(ConnectionError, match="cannot reach a Ray cluster at ray://127.0.0.1"):
        RayExecutor(address=f"ray://127.0.0.1:{port}", connect_timeout_s=2)
    assert time.monotonic() - start < 5


def test_an_address_that_answers_goes_on_to_ray_init(ray_must_not_start):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        ray_executor.check_reachable(address, 2)  # no error
        with pytest.raises(AssertionError, match=f"ray.init was called with .*'address': '{address}'"):
            RayExecutor(address=address, connect_timeout_s=2)
    for other in ("auto", "local"):
        with pytest.raises(AssertionError, match="ray.init was called"):
            RayExecutor(address=other)
