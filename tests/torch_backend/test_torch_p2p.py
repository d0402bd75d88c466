"""torch point-to-point on the "pccl" backend: send/recv/isend/irecv,
batch_isend_irecv, all_to_all(_single) with unequal splits, gather and scatter moving each byte once.

Three real rank processes (tests/helpers/torch_p2p_worker.py) check every received value bitwise against the
seeded value its sender generated; the test asserts on each check the ranks report.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch", reason="the pccl torch backend needs torch (pip install '.[torch]')")

import test_torch_backend as tb  # noqa: E402 - reuses its rank launcher
from support import HELPERS_DIR

WORKER = os.path.join(HELPERS_DIR, "torch_p2p_worker.py")
CHECKS = ["irecv_order", "batch_isend_irecv", "error_anysource", "error_self_send", "error_reserved_tag",
          "all_to_all_single_unequal", "all_to_all_single_equal", "all_to_all", "scatter", "all_reduce_after"]


def test_torch_p2p_ops_and_p2p_collectives(tmp_path, monkeypatch):
    """torch send/recv, isend/irecv, batch_isend_irecv, all_to_all and the other point-to-point based ops succeed
    with the right data on every rank."""
    monkeypatch.setattr(tb, "WORKER", WORKER)
    results = tb.run_ranks("p2p", 3, tmp_path, timeout=60.0)
    assert sorted(results) == [0, 1, 2], f"ranks did not all finish:\n{tb._logs(tmp_path, 'p2p')}"
    for rank, res in results.items():
        assert "error" not in res, (rank, res)
        for name in CHECKS + [k for k in res if k.startswith("send_recv_")]:
            assert res.get(name) == "ok", (rank, name, res.get(name))
        assert len([k for k in res if k.startswith("send_recv_")]) == 6
    assert results[1].get("gather") == "ok"
