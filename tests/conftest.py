import os
import sys

import pytest

# Shared helpers (harness, workers, reference results) live in tests/helpers; every test imports them by name.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

import pccl_py  # noqa: E402
from harness import Cluster  # noqa: E402
from support import connect_group  # noqa: E402
from pccl_py.tools.machine_stalls import monitor  # noqa: E402

# Started before any test module runs, so that every window a wall-clock bound asks about is watched
# (support.assert_within).
monitor()


@pytest.fixture
def cluster(tmp_path):
    """A master subprocess; peers are spawned by the test. Everything is killed afterwards."""
    with Cluster(log_dir=str(tmp_path)) as c:
        yield c


@pytest.fixture
def local_group():
    """Makes groups of in-process Communicators on a master thread: local_group(n, **Communicator kwargs).
    For tests about what happens inside one process (its memory, its descriptors); all closed afterwards."""
    made = []

    def make(n: int, **kwargs):
        master = pccl_py.Master("127.0.0.1", 0).start()
        peers: list = []
        made.append((master, peers))
        peers.extend(connect_group(master.address, n, timeout=30, **kwargs))
        return peers

    yield make
    for master, peers in made:
        for p in peers:
            p.close()
        master.stop()
