"""torch's own distributed test suite (``distributed_test``) as a TestCase class, for any backend.

Why this exists: torch ships ``torch.testing._internal.distributed.distributed_test`` in its wheel and
drives it with a small file (torch's test/distributed/test_distributed_spawn.py, not shipped) that reads
``BACKEND``/``WORLD_SIZE``/``TEMP_DIR``/``INIT_METHOD`` from the environment and mixes ``TestDistBackend``
with ``DistributedTest._DistTestBase``. This module is that file for us, and it is imported again by
every rank the suite spawns, so it must do the same thing in every process and nothing else.

The trap: the suite decides most of its gates while it is *imported*. Tests gated on the
``DistTestCases.backend_feature`` sets read those sets at import time, so "pccl" has to be added to them
*before* ``distributed_test`` is imported (here, in this process, never by editing the installed torch).
Tests gated on the literal name "gloo" are lifted separately by :func:`lift_name_gates` (run.py calls it
in the parent process, where unittest honours the skip marks; the spawned ranks call test methods
directly and never look at them).
"""

from __future__ import annotations

import importlib.util
import os

BACKEND = os.environ["BACKEND"]

import torch  # noqa: E402
from torch.testing._internal.common_distributed import DistTestCases  # noqa: E402

# The features the pccl backend has, in the suite's own vocabulary (common_distributed.DistTestCases):
# "plugin" makes require_backend_is_available() accept a backend torch does not know; "ddp" and
# "subgroup" are supported on CPU; "gpu"/"cuda" because CUDA tensors are staged through host memory
# (docs/torch.md). The suite's CUDA tests still skip on a machine without GPUs, for gloo and pccl alike.
PCCL_FEATURES = ("plugin", "ddp", "subgroup", "gpu", "cuda")

if BACKEND == "pccl":
    import pccl_py.torch  # noqa: F401,E402 - registers the backend in every rank

    for _feature in PCCL_FEATURES:
        DistTestCases.backend_feature[_feature].add("pccl")

import torch.testing._internal.distributed.distributed_test as _suite_module  # noqa: E402
from torch.testing._internal.distributed.distributed_test import (  # noqa: E402
    DistributedTest,
    TestDistBackend,
)

_SUITE_MODULE = "torch.testing._internal.distributed.distributed_test"

# "spawn" is what torch's CI uses: every rank imports torch and this module again (about 3.5 s of CPU per
# rank). "fork" starts the ranks from the parent, already imported (the parent has started no threads
# and made no process group, which is what makes forking it safe), and cuts a test from about 11 s to
# about 0.5 s on a 2-core machine.
START_METHOD = os.environ.get("TORCH_SUITE_START_METHOD", "spawn")


# Tests whose *body* builds its model only when the module's BACKEND string is "gloo" (or "mpi"/"nccl")
# and otherwise fails before any collective (UnboundLocalError): with this name gate lifted they run
# gloo's CPU path on the pccl group. Only the string is changed, after the default group was created
# with pccl, and run_test checks that it was.
GLOO_PATH_TESTS = frozenset({
    "test_accumulate_gradients_no_sync",  # _test_accumulate_gradients_no_sync: `if BACKEND == "gloo"`
    "test_accumulate_gradients_no_sync_grad_is_view",
    "test_accumulate_gradients_no_sync_allreduce_hook",
    "test_accumulate_gradients_no_sync_allreduce_with_then_hook",
})


class TorchDistributedSuite(TestDistBackend, DistributedTest._DistTestBase):
    """What torch's test_distributed_spawn.py builds: one process per rank for every test."""

    def run_test(self, test_name: str, parent_pipe) -> None:  # runs in each rank, after init_process_group
        if BACKEND != "gloo" and test_name in GLOO_PATH_TESTS:
            import torch.distributed as dist

            if dist.get_backend() != BACKEND:
                raise AssertionError(f"{test_name}: the default group runs {dist.get_backend()}, not {BACKEND}")
            _suite_module.BACKEND = "gloo"
        try:
            super().run_test(test_name, parent_pipe)
        finally:
            _suite_module.BACKEND = BACKEND

    def setUp(self) -> None:
        super().setUp()
        if START_METHOD == "fork":
            # A forked rank keeps the module globals of the parent's import: INIT_METHOD must name this
            # test's fresh directory (setUp just made it), as a spawned rank's import would read it.
            _suite_module.INIT_METHOD = os.environ["INIT_METHOD"]
            self._start_processes(torch.multiprocessing.get_context("fork").Process)
        else:
            self._spawn_processes()
        torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()


def test_names() -> list[str]:
    return sorted(n for n in dir(TorchDistributedSuite) if n.startswith("test_"))


def _import_time_skips(module: object) -> dict[str, str]:
    base = module.DistributedTest._DistTestBase  # type: ignore[attr-defined]
    skips = {}
    for name in dir(base):
        fn = getattr(base, name)
        if name.startswith("test_") and getattr(fn, "__unittest_skip__", False):
            skips[name] = str(getattr(fn, "__unittest_skip_why__", ""))
    return skips


def gloo_import_time_skips() -> dict[str, str]:
    """The skips distributed_test decides at import time when BACKEND is "gloo": a private copy of the
    module is executed with that name (torch's installed file is read, not changed)."""
    spec = importlib.util.find_spec(_SUITE_MODULE)
    assert spec is not None and spec.loader is not None
    saved = os.environ["BACKEND"]
    os.environ["BACKEND"] = "gloo"
    try:
        copy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy)
    finally:
        os.environ["BACKEND"] = saved
    return _import_time_skips(copy)


def lift_name_gates() -> dict[str, str]:
    """Lets every test that gloo's import-time gates run also run here; returns {test: lifted reason}.

    A test skipped for this backend at import time but not for gloo is gated on the backend's name
    (``BACKEND != "gloo"``, ``require_backend_is_available({"gloo"})``): its skip mark is cleared, so
    it runs and passes or fails on its merits (failures we accept are listed in exclusions.json with
    their reason). Only unittest's mark is cleared; the test's code is untouched."""
    if BACKEND == "gloo":
        return {}
    ours = _import_time_skips(_suite_module)
    gloo = gloo_import_time_skips()
    lifted = {}
    for name, reason in sorted(ours.items()):
        if name not in gloo:
            fn = getattr(DistributedTest._DistTestBase, name)
            fn.__unittest_skip__ = False
            lifted[name] = reason
    return lifted
