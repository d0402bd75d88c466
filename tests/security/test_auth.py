"""Authentication on every connection (docs/security.md).

Real processes and sockets. A master started with a job secret admits only peers that prove they know
it; a wrong or missing secret is refused at once (AuthenticationError from connect(), a log line at the
master naming the remote address) while the members keep running ops; a recorded handshake replayed on
a new connection is refused; a raw mesh connection without its slot's mesh key (wrong, or for a stale
epoch) is refused by the member's listener. The secret comes from secret=, PCCL_SECRET or
pccl-master --secret-file, and --require-secret refuses to start without one.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import pccl_py
from control_frames import (AUTH_CHALLENGE, AUTH_REFUSED, auth_socket, hello, recv_control,
                            recv_frames)
from fault_helpers import listen_port_from_master_log, read_text
from harness import Cluster, MasterProcess
from support import admit, assert_within, join, run_torch_ranks, wait_until

SECRET = "correct horse battery staple"
COMM = dict(heartbeat_timeout=3.0, timeout=10.0, secret=SECRET)
SPEC = dict(dtype="float32", count=50_000)


@pytest.fixture
def secret_cluster(tmp_path):
    path = tmp_path / "job.secret"
    path.write_text(SECRET + "\n")  # the trailing newline an editor adds is not part of the secret
    with Cluster(log_dir=str(tmp_path), master_args=["--secret-file", str(path)]) as c:
        yield c


def _ready(peer):
    """Waits until the worker process has started and imported pccl_py, so a timed call measures the call."""
    assert peer.call("resources", timeout=60)["ok"]
    return peer


def _ops_in_background(cluster: Cluster, members, repeat: int = 40):
    """Starts `repeat` all-reduces on every member; the caller collects the replies with _collect."""
    for p in members:
        p.send("all_reduce", repeat=repeat, use_out=True, seed=5, expect_from=[m.index for m in members], **SPEC)


def _collect(members, timeout: float = 120.0):
    replies = [p.recv(timeout) for p in members]
    assert all(r["ok"] and r["correct"] for r in replies), replies
    return replies


def test_right_secret_all_reduce_and_shared_state(secret_cluster):
    """Peers with the master's job secret join, all-reduce correctly, and a member behind on shared state
    receives it over the authenticated mesh."""
    members = join(secret_cluster, 3, COMM)
    res = secret_cluster.all_reduce(members, seed=3, **SPEC)
    assert all(r["ok"] and r["correct"] and r["world_size"] == 3 for r in res), res
    # Two members hold revision 4; the third is behind and receives the state over the mesh.
    for p in members[:2]:
        p.send("sync_state", keys={"w": {"count": 20_000, "seed": 41}}, revision=4, rebuild=True)
    members[2].send("sync_state", keys={"w": {"count": 20_000, "seed": 0}}, revision=0, rebuild=True)
    replies = [p.recv(60) for p in members]
    assert all(r["ok"] for r in replies), replies
    assert len({r["hashes"]["w"] for r in replies}) == 1, replies
    assert replies[2]["infos"][0]["received_keys"] == ["w"]


@pytest.mark.parametrize("secret, needle", [
    ("not the secret", "wrong job secret"),
    ("", "this master requires the job secret"),
])
def test_wrong_or_missing_secret_is_refused_at_once_while_members_run(secret_cluster, secret, needle):
    """A peer with a wrong or no secret is refused with AuthenticationError within 1 s, saying why, while the
    members keep running ops; the master logs the refusal and the group is unchanged, with nobody pending."""
    members = join(secret_cluster, 2, COMM)
    _ops_in_background(secret_cluster, members)
    intruder = _ready(secret_cluster.spawn())
    t0 = time.time()
    r = intruder.call("connect", master=secret_cluster.master.address, kwargs=dict(COMM, secret=secret), timeout=30)
    t1 = time.time()
    assert not r["ok"] and r["error"] == "AuthenticationError", r
    assert needle in r["message"] and "refused this peer" in r["message"], r
    assert_within(t0, t1, 1.0, "refusing a peer with a wrong secret")
    wait_until(lambda: f"from 127.0.0.1: {needle}" in read_text(secret_cluster.master.log_path), 3.0,
               what="the master's log line for the refusal")
    _collect(members)
    # Nobody was admitted or became pending: the members still form the same group.
    assert [m.call("state")["world_size"] for m in members] == [2, 2]
    assert not members[0].call("pending")["pending"]


def test_secret_on_one_side_only(cluster, tmp_path):
    """A master without a secret refuses a peer that has one (and says which side lacks it)."""
    members = join(cluster, 2, dict(heartbeat_timeout=3.0, timeout=10.0))
    p = _ready(cluster.spawn())
    t0 = time.time()
    r = p.call("connect", master=cluster.master.address, kwargs=dict(COMM), timeout=30)
    assert_within(t0, time.time(), 1.0, "refusing a peer with a secret the master lacks")
    assert not r["ok"] and r["error"] == "AuthenticationError" and "runs without one" in r["message"], r
    wait_until(lambda: "peer has a job secret but this master runs without one" in read_text(cluster.master.log_path),
               3.0, what="the master's log line")
    res = cluster.all_reduce(members, seed=2, **SPEC)
    assert all(r["ok"] and r["correct"] for r in res), res


def test_replayed_handshake_is_refused(secret_cluster):
    """A recorded, valid authentication replayed on a new connection is refused (the master's nonce is fresh),
    the connection is closed and the refusal is logged."""
    port = secret_cluster.master.port
    recorded: list[bytes] = []
    join_frame = hello(group=91, hb_ms=10_000, port=9)
    s = auth_socket(port, join_frame, SECRET.encode(), record=recorded)
    try:
        assert [t for t, _ in recv_control(s, 2)] == [2, 10]  # admitted: WELCOME, EPOCH (first member of 91)
    finally:
        s.close()
    # The same bytes on a new connection: the master's nonce is new, so the recorded proof fails.
    r = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        r.sendall(recorded[0])
        got = recv_frames(r, 1)
        assert got and got[0][0] == AUTH_CHALLENGE, got
        r.sendall(recorded[1])
        got = recv_frames(r, 1)
        assert got and got[0][0] == AUTH_REFUSED and b"wrong job secret" in got[0][1], got
        r.settimeout(5)
        assert r.recv(100) == b"", "the master kept a replayed connection open"
    finally:
        r.close()
    wait_until(lambda: read_text(secret_cluster.master.log_path).count("wrong job secret") >= 1, 3.0, what="log line")
    # The master's own proof reflected back as the peer's proof fails too (direction labels differ).
    r = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        r.sendall(recorded[0])
        assert recv_frames(r, 1)[0][0] == AUTH_CHALLENGE
        r.sendall(struct.pack("<IB", 33, 17) + b"\x00" * 32 + join_frame)
        got = recv_frames(r, 1)
        assert got and got[0][0] == AUTH_REFUSED, got
    finally:
        r.close()


def test_rejoin_after_master_restart_is_authenticated(tmp_path):
    """REJOIN runs under the same exchange: a master restarted with the same secret takes the members
    back (the group continues); one restarted with another secret refuses them, and they raise
    MasterLostError naming the refusal instead of rejoining."""
    good, other = tmp_path / "job.secret", tmp_path / "other.secret"
    good.write_text(SECRET)
    other.write_text("another job")
    comm = dict(COMM, master_grace=8.0, heartbeat_timeout=2.0)
    with Cluster(log_dir=str(tmp_path), master_args=["--secret-file", str(good)]) as c:
        members = join(c, 2, comm)
        ids = sorted(m.peer_id for m in members)
        port = c.master.port
        for n, secret_file in enumerate((good, other)):
            c.master.kill()
            time.sleep(0.3)
            c.master = MasterProcess(port=port, log_path=c._log(f"master{n + 2}.log"), args=["--secret-file", str(secret_file)])
            if secret_file is good:
                wait_until(lambda: read_text(c.master.log_path).count("rejoined group") >= 2, 10.0, what="both rejoins")
                res = c.all_reduce(members, seed=21, **SPEC)
                assert all(r["ok"] and r["correct"] and r["world_size"] == 2 for r in res), res
                assert sorted(m.call("state")["peer_id"] for m in members) == ids
            else:
                wait_until(lambda: read_text(c.master.log_path).count("wrong job secret") >= 2, 10.0,
                           what="the restarted master's refusals")
                assert "rejoined group" not in read_text(c.master.log_path)
                for m in members:
                    m.send("update_topology")
                replies = [m.recv(30) for m in members]
                assert all(not r["ok"] and r["error"] == "MasterLostError" and "refused this peer" in r["message"]
                           for r in replies), replies


def test_secret_from_environment(tmp_path):
    """Without secret=, peers and master take the job secret from PCCL_SECRET; a peer whose PCCL_SECRET is empty
    is refused with AuthenticationError."""
    env = {"PCCL_SECRET": SECRET}
    with Cluster(log_dir=str(tmp_path), master_env=env) as c:
        a, b = c.spawn(env=env), c.spawn(env=env)
        comm = dict(heartbeat_timeout=3.0, timeout=10.0)  # no secret= : PCCL_SECRET is used
        members = admit(c, [], [a, b], comm)
        res = c.all_reduce(members, seed=9, **SPEC)
        assert all(r["ok"] and r["correct"] for r in res), res
        bare = c.spawn(env={"PCCL_SECRET": ""})
        r = bare.call("connect", master=c.master.address, kwargs=comm, timeout=30)
        assert not r["ok"] and r["error"] == "AuthenticationError", r


def test_in_process_secret_as_bytes_and_str():
    """The secret may be str or bytes (the same secret either way); a different secret is refused with
    AuthenticationError, and a secret of another type is an InvalidArgumentError."""
    with pccl_py.Master(secret=SECRET.encode()) as m:
        c = pccl_py.Communicator(m.address, secret=SECRET, listen_host="127.0.0.1", join_timeout=10).connect()
        try:
            assert c.world_size == 1
        finally:
            c.close()
        with pytest.raises(pccl_py.AuthenticationError, match="wrong job secret"):
            pccl_py.Communicator(m.address, secret=b"\x00" + SECRET.encode(), listen_host="127.0.0.1",
                                 join_timeout=10).connect()
    with pytest.raises(pccl_py.InvalidArgumentError, match="secret must be str or bytes"):
        pccl_py.Communicator("127.0.0.1:1", secret=42)


def _run_master(args, env=None, timeout=10.0):
    """Starts pccl-master; returns (process, first stdout line, stderr so far) once it printed a line or exited."""
    proc = subprocess.Popen([sys.executable, "-m", "pccl_py.master", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PCCL_SECRET": "", **(env or {})})
    try:
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.wait(timeout=timeout)
            return proc, line, proc.stderr.read()
        return proc, line, ""
    except BaseException:
        proc.kill()
        raise


def test_pccl_master_require_secret_and_secret_file(tmp_path):
    """pccl-master --require-secret without a secret, an empty or unreadable --secret-file exit with status 2 and
    say why; with a secret from a file or PCCL_SECRET the master admits that secret only."""
    proc, line, err = _run_master(["--host", "0.0.0.0", "--require-secret"])
    assert proc.returncode == 2 and "--require-secret: no job secret given" in err, (line, err)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    proc, line, err = _run_master(["--secret-file", str(empty)])
    assert proc.returncode == 2 and "is empty" in err, (line, err)
    proc, line, err = _run_master(["--secret-file", str(tmp_path / "missing")])
    assert proc.returncode == 2 and "cannot read the secret file" in err, (line, err)

    good = tmp_path / "job.secret"
    good.write_text(SECRET + "\n")
    for args, env in ((["--secret-file", str(good), "--require-secret"], None), (["--require-secret"], {"PCCL_SECRET": SECRET})):
        proc, line, err = _run_master(["--host", "127.0.0.1", *args], env=env)
        try:
            assert "listening on" in line, (line, err)
            address = line.strip().rsplit(" ", 1)[-1]
            c = pccl_py.Communicator(address, secret=SECRET, listen_host="127.0.0.1", join_timeout=10).connect()
            c.close()
            with pytest.raises(pccl_py.AuthenticationError):
                pccl_py.Communicator(address, secret="other", listen_host="127.0.0.1", join_timeout=10).connect()
        finally:
            proc.kill()
            proc.wait(10)


def test_master_warns_when_exposed_without_a_secret():
    """pccl-master listening on all interfaces without a job secret prints a SECURITY WARNING saying so."""
    proc, line, _ = _run_master(["--host", "0.0.0.0"])
    try:
        assert "listening on" in line
        chunks: list[str] = []
        os.set_blocking(proc.stderr.fileno(), False)
        err = wait_until(lambda: chunks.append(proc.stderr.read() or "") or "".join(chunks), 5,
                         "the master's security warning on stderr", until=lambda e: "SECURITY WARNING" in e,
                         interval=0.05)
        assert "SECURITY WARNING" in err and "without a job secret" in err, err
    finally:
        proc.kill()
        proc.wait(10)


def _mesh_handshake(group, epoch, from_peer, to_peer, conn_index=0) -> bytes:
    return struct.pack("<IHHIIQQQ", 0x48434350, 2, conn_index, group, 0, epoch, from_peer, to_peer)


def test_raw_mesh_connection_without_the_token_is_refused(secret_cluster):
    """A raw connection to a member's mesh listener with a wrong token or a stale epoch is closed and logged with
    the reason, and a legitimate newcomer still joins and all-reduces correctly."""
    members = join(secret_cluster, 2, COMM)
    target = members[1]
    st = target.call("state")
    port = listen_port_from_master_log(read_text(secret_cluster.master.log_path), st["peer_id"])
    assert port
    log = secret_cluster._log(f"peer{target.index}.log")
    _ops_in_background(secret_cluster, members)
    for epoch, reason in ((st["epoch"], "mesh handshake without the key of its slot"), (st["epoch"] - 1, "stale epoch")):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.settimeout(5)
            nonce = b""
            while len(nonce) < 32:
                chunk = s.recv(32 - len(nonce))
                assert chunk, "the listener closed before sending its nonce"
                nonce += chunk
            s.sendall(_mesh_handshake(0, epoch, members[0].peer_id, st["peer_id"]) + os.urandom(64))
            t0 = time.time()
            rest = b""
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                rest += chunk
            assert rest == b"", "the listener answered a handshake without the key"
            assert_within(t0, time.time(), 1.0, "refusing a mesh handshake")
        finally:
            s.close()
        wait_until(lambda: reason in read_text(log), 3.0, what=f"the listener's log line '{reason}'")
    _collect(members)
    # A legitimate newcomer still gets a mesh, built with the new epoch's keys.
    newcomer = secret_cluster.spawn()
    everyone = admit(secret_cluster, members, [newcomer], COMM)
    res = secret_cluster.all_reduce(everyone, seed=12, **SPEC)
    assert all(r["ok"] and r["correct"] and r["world_size"] == 3 for r in res), res


_TORCH_RANK = r"""
import json, os, sys, threading, time
from datetime import timedelta
import torch, torch.distributed as dist
import pccl_py, pccl_py.torch
from pccl_py.torch import rendezvous
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
threading.Timer(40, lambda: os._exit(3)).start()
dist.init_process_group("pccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                        timeout=timedelta(seconds=20))
x = torch.full((1000,), float(rank + 1))
dist.all_reduce(x)
store = dist.distributed_c10d._get_default_store()
address = rendezvous._default_master
import hashlib
secret = rendezvous.secret_for(address)
res = {"sum": float(x[0]), "secret_len": len(secret), "secret_sha": hashlib.sha256(secret).hexdigest()}
if rank == 0:
    try:
        pccl_py.Communicator(address, secret="", listen_host="127.0.0.1", join_timeout=5).connect()
        res["stranger"] = "admitted"
    except pccl_py.AuthenticationError as e:
        res["stranger"] = "AuthenticationError"
with open(out, "w") as f:
    json.dump(res, f)
store.add("reported", 1)
while rank == 0 and store.add("reported", 0) < world:
    time.sleep(0.02)
os._exit(0)
"""


@pytest.mark.parametrize("env_secret", ["", SECRET])
def test_torch_group_is_authenticated(tmp_path, env_secret):
    """init_process_group("pccl") without configuration: rank 0 generates a secret and shares it through
    the store; with PCCL_SECRET on every rank, that one is used and never written to the store."""
    pytest.importorskip("torch")
    env = {**os.environ, "PCCL_SECRET": env_secret, "PCCL_LOG_LEVEL": "error", "OMP_NUM_THREADS": "1",
           "PCCL_MASTER_BIND": "127.0.0.1"}
    res = run_torch_ranks(_TORCH_RANK, 2, str(tmp_path), env, timeout=60)
    assert all(r["sum"] == 3.0 for r in res), res
    assert res[0]["stranger"] == "AuthenticationError", res
    assert res[0]["secret_sha"] == res[1]["secret_sha"], res  # rank 1 got rank 0's secret
    if env_secret:
        assert all(r["secret_len"] == len(SECRET) for r in res), res
    else:
        assert all(r["secret_len"] == 64 for r in res), res  # generated: 256 bits in hex
