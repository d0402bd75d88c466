import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import Cluster  # noqa: E402


@pytest.fixture
def cluster(tmp_path):
    """A master subprocess; peers are spawned by the test. Everything is killed afterwards."""
    with Cluster(log_dir=str(tmp_path)) as c:
        yield c
