"""The real clients the end-to-end modules share, each with a private root."""

import pytest

from tests.support.clients import Containerd, Podman


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    daemon = Containerd(tmp_path_factory.mktemp("containerd")).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def podman(tmp_path):
    client = Podman(tmp_path)
    yield client
    client.cleanup()
