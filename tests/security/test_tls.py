"""encryption="tls" on every connection (docs/security.md, "Encryption").

Real processes and sockets. Under TLS an all-reduce (striped over two connections per peer pair),
point-to-point transfers of every size class (small, piece-sized, page-swapped) and a shared-state
sync give bitwise the results they give in clear. A plaintext peer cannot join a TLS master, nor a TLS
peer a plaintext one, and a TLS peer with another secret is refused: each at once, with an
AuthenticationError saying what to change, and a line in the master's log. TLS without a secret is
refused before any connection. Finally the bytes on the wire: a tap relay between the peers (and
between a peer and the master) records every byte; a known payload pattern and the protocol's magic
appear in the recording in clear text, and not under TLS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator

import numpy as np
import pytest

import pccl_py
from fault_helpers import read_text
from harness import Cluster, MasterProcess
from support import (admit_pending, assert_within, free_port, join, new_comm, run_concurrently, run_torch_ranks,
                     wait_until)

SECRET = "tls test secret, not a real one"
TLS = dict(heartbeat_timeout=3.0, timeout=30.0, secret=SECRET, encryption="tls")
PLAIN = dict(heartbeat_timeout=3.0, timeout=30.0, secret=SECRET)


def _cluster(tmp_path, encrypted: bool) -> Cluster:
    path = tmp_path / "job.secret"
    path.write_text(SECRET)
    args = ["--secret-file", str(path)] + (["--encryption", "tls"] if encrypted else [])
    return Cluster(log_dir=str(tmp_path), master_args=args)


def _sent_sha(dtype: str, count: int, seed: int) -> str:
    nbytes = count * np.dtype(dtype).itemsize
    return hashlib.sha256(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()).hexdigest()


def _workload(cluster: Cluster, comm: dict) -> dict:
    """The same all-reduces, p2p transfers and shared-state sync; returns every result's hash."""
    out: dict = {}
    members = join(cluster, 3, dict(comm, connections_per_peer=2))
    # Up to 12 MiB: several pieces per stripe. Integer sums are exact, so their results must match across
    # the two clusters too (a float sum depends on the ring order, which depends on the join order).
    for i, (dtype, count) in enumerate((("int32", 1), ("int32", 1000), ("float32", 300_000), ("int32", 3_000_000))):
        res = cluster.all_reduce(members, seed=10 + i, dtype=dtype, count=count, timeout=120)
        assert all(r["ok"] and r["correct"] and r["world_size"] == 3 for r in res), res
        assert len({r["sha"] for r in res}) == 1, "members disagree on the result"
        if dtype == "int32":
            out[f"all_reduce {count}"] = res[0]["sha"]
    a, _, c = members
    for i, (dtype, count) in enumerate((("uint8", 1), ("float64", 1000), ("uint8", 262_145),
                                        ("float32", 9 * (1 << 18) + 3))):
        ops = dict(peer=2, count=count, seed=200 + i, dtype=dtype, tag=i)
        a.send("p2p", ops=[dict(ops, op="send")])
        c.send("p2p", ops=[dict(ops, op="recv", peer=0)])
        ra, rc = a.recv(120), c.recv(120)
        assert ra["ok"] and rc["ok"] and ra["results"][0]["ok"] and rc["results"][0]["ok"], (ra, rc)
        assert rc["results"][0]["sha_after"] == _sent_sha(dtype, count, 200 + i), (dtype, count)
        out[f"p2p {dtype} {count}"] = rc["results"][0]["sha_after"]
    # Two members hold revision 4; the third is behind and receives the whole state over the mesh.
    keys = {"w": {"count": 1_500_000, "seed": 41}, "b": {"count": 333, "seed": 42, "dtype": "float64"}}
    for p in members[:2]:
        p.send("sync_state", keys=keys, revision=4, rebuild=True)
    members[2].send("sync_state", keys={k: dict(v, seed=0) for k, v in keys.items()}, revision=0, rebuild=True)
    replies = [p.recv(120) for p in members]
    assert all(r["ok"] for r in replies), replies
    assert len({tuple(sorted(r["hashes"].items())) for r in replies}) == 1, replies
    assert sorted(replies[2]["infos"][0]["received_keys"]) == ["b", "w"]
    out["state"] = tuple(sorted(replies[0]["hashes"].items()))
    return out


def test_results_are_bitwise_identical_with_and_without_tls(tmp_path):
    """The same workload gives bitwise the same results with and without TLS, and nothing is refused under TLS."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "tls").mkdir()
    with _cluster(tmp_path / "plain", encrypted=False) as plain:
        clear = _workload(plain, PLAIN)
    with _cluster(tmp_path / "tls", encrypted=True) as tls:
        encrypted = _workload(tls, TLS)
        log = read_text(tls.master.log_path)
        assert "refused" not in log, log
    assert encrypted == clear


def test_plaintext_peer_cannot_join_a_tls_master(tmp_path):
    """A plaintext peer is refused by a TLS master within 1 s with an AuthenticationError saying to use
    encryption='tls'; the master logs it and the members keep working."""
    with _cluster(tmp_path, encrypted=True) as cluster:
        members = join(cluster, 2, TLS)
        intruder = cluster.spawn()
        assert intruder.call("resources", timeout=60)["ok"]
        t0 = time.time()
        r = intruder.call("connect", master=cluster.master.address, kwargs=PLAIN, timeout=30)
        assert_within(t0, time.time(), 1.0, "refusing a plaintext peer")
        assert not r["ok"] and r["error"] == "AuthenticationError", r
        assert "encrypts every connection" in r["message"] and "encryption='tls'" in r["message"], r
        wait_until(lambda: "encrypts every connection" in read_text(cluster.master.log_path), 3.0, what="log line")
        res = cluster.all_reduce(members, seed=1, dtype="float32", count=10_000)
        assert all(x["ok"] and x["correct"] for x in res), res


def test_tls_peer_cannot_join_a_plaintext_master(tmp_path):
    """A TLS peer is refused by a plaintext master within 1 s with an AuthenticationError saying the master does
    not use encryption, and the master logs it."""
    with _cluster(tmp_path, encrypted=False) as cluster:
        p = cluster.spawn()
        assert p.call("resources", timeout=60)["ok"]
        t0 = time.time()
        r = p.call("connect", master=cluster.master.address, kwargs=TLS, timeout=30)
        assert_within(t0, time.time(), 1.0, "refusing a TLS peer at a plaintext master")
        assert not r["ok"] and r["error"] == "AuthenticationError", r
        assert "does not use encryption" in r["message"], r
        wait_until(lambda: "it speaks TLS" in read_text(cluster.master.log_path), 3.0, what="log line")


def test_wrong_secret_under_tls_is_refused_at_once(tmp_path):
    """Under TLS a wrong secret is refused within 1 s with AuthenticationError saying the secret differs; the
    members keep working."""
    with _cluster(tmp_path, encrypted=True) as cluster:
        members = join(cluster, 2, TLS)
        p = cluster.spawn()
        assert p.call("resources", timeout=60)["ok"]
        t0 = time.time()
        r = p.call("connect", master=cluster.master.address, kwargs=dict(TLS, secret="another secret"), timeout=30)
        assert_within(t0, time.time(), 1.0, "refusing a wrong secret under TLS")
        assert not r["ok"] and r["error"] == "AuthenticationError", r
        assert "job secret differs" in r["message"], r
        wait_until(lambda: "wrong job secret" in read_text(cluster.master.log_path), 3.0, what="log line")
        res = cluster.all_reduce(members, seed=2, dtype="float32", count=10_000)
        assert all(x["ok"] and x["correct"] for x in res), res


def test_members_rejoin_a_restarted_tls_master(tmp_path):
    """The rejoin after a master restart runs over TLS too: members keep all-reducing while the master
    is away and are taken back by a TLS master restarted at the same address."""
    with _cluster(tmp_path, encrypted=True) as c:
        members = join(c, 2, dict(TLS, master_grace=8.0, heartbeat_timeout=2.0))
        ids = sorted(m.peer_id for m in members)
        port = c.master.port
        c.master.kill()
        time.sleep(0.3)
        c.master = MasterProcess(port=port, log_path=c._log("master2.log"),
                                 args=["--secret-file", str(tmp_path / "job.secret"), "--encryption", "tls"])
        wait_until(lambda: read_text(c.master.log_path).count("rejoined group") >= 2, 10.0, what="both rejoins")
        res = c.all_reduce(members, seed=21, dtype="float32", count=50_000)
        assert all(r["ok"] and r["correct"] and r["world_size"] == 2 for r in res), res
        assert sorted(m.call("state")["peer_id"] for m in members) == ids
        assert "refused" not in read_text(c.master.log_path)


def test_a_closed_tls_connection_is_noticed_at_once_not_after_the_heartbeat_timeout(tmp_path):
    """A TLS connection that the other end closes reads as closed, as a plaintext one does, not as "no data
    yet": a kill -9 is noticed by the master and the survivors from the dead peer's closed connections, so
    their next all_reduce completes between the two of them within seconds although heartbeat_timeout
    (silence) is 30 s; and close() sees its leave confirmed when the master closes the connection, instead
    of waiting out its 2 s leave deadline. (OpenSSL learns of EOF only by asking the socket BIO, which must
    answer; otherwise every closed connection looked like a would-block read, and the reader spun on it.)"""
    with _cluster(tmp_path, encrypted=True) as c:
        members = join(c, 3, dict(TLS, heartbeat_timeout=30.0, timeout=60.0))
        t_kill = members[2].kill()
        survivors = members[:2]
        for attempt in range(3):  # a reduce that met the dead peer's links fails on both, then runs again
            res = c.all_reduce(survivors, seed=30 + attempt, dtype="float32", count=10_000, timeout=60)
            if all(r["ok"] for r in res):
                break
            assert all(not r["ok"] and r["error"] == "PeerLostError" for r in res), res
        assert all(r["ok"] and r["correct"] and r["world_size"] == 2 for r in res), res
        assert_within(t_kill, time.time(), 8.0, "the survivors' first all_reduce after a kill -9 under TLS")
        comm = new_comm(c.master.address, peer_group=7, **dict(TLS, heartbeat_timeout=30.0)).connect()  # founds group 7
        t0 = time.monotonic()
        comm.close()
        elapsed = time.monotonic() - t0
        assert elapsed < 1.8, f"close() took {elapsed:.2f} s: the master's closing of the connection went unnoticed"


def test_tls_without_a_secret_is_refused_before_connecting(monkeypatch):
    """encryption='tls' (argument or PCCL_ENCRYPTION) without a job secret, or an unknown encryption name, raises
    InvalidArgumentError before connecting, in the Communicator, Master() and pccl-master."""
    monkeypatch.delenv("PCCL_SECRET", raising=False)
    monkeypatch.delenv("PCCL_ENCRYPTION", raising=False)
    with pytest.raises(pccl_py.InvalidArgumentError, match="needs the job secret"):
        pccl_py.Communicator("127.0.0.1:9", encryption="tls")
    with pytest.raises(pccl_py.InvalidArgumentError, match="needs the job secret"):
        pccl_py.Master(encryption="tls")
    with pytest.raises(pccl_py.InvalidArgumentError, match="'tls' or 'none'"):
        pccl_py.Communicator("127.0.0.1:9", secret="x", encryption="ssl")
    monkeypatch.setenv("PCCL_ENCRYPTION", "tls")
    with pytest.raises(pccl_py.InvalidArgumentError, match="PCCL_ENCRYPTION='tls' needs the job secret"):
        pccl_py.Communicator("127.0.0.1:9")
    monkeypatch.setenv("PCCL_SECRET", "s")
    assert pccl_py.Communicator("127.0.0.1:9").encrypted
    assert not pccl_py.Communicator("127.0.0.1:9", encryption="none").encrypted
    # Our environment without the secret (a sanitizer build needs its LD_PRELOAD and options kept).
    env = {k: v for k, v in os.environ.items() if k not in ("PCCL_SECRET", "PCCL_ENCRYPTION")}
    r = subprocess.run([sys.executable, "-m", "pccl_py.master", "--port", "0", "--encryption", "tls"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs the job secret" in r.stderr, r


# ---------------------------------------------------------------------------------------------
# bytes on the wire


class Tap:
    """A relay on loopback that forwards every connection to `target` and records every byte both
    ways. Threads are daemons; stop() closes every socket, which ends them."""

    def __init__(self, target: tuple) -> None:
        self.target = target
        self.corrupt_at = -1  # when >= 0: flip one bit of the byte at this offset of the recording
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.recorded = bytearray()
        self.lock = threading.Lock()
        self.socks: list = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                a, _ = self.server.accept()
                b = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            b.settimeout(None)
            self.socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    start = len(self.recorded)
                    self.recorded += data
                    if start <= self.corrupt_at < start + len(data):
                        data = bytearray(data)
                        data[self.corrupt_at - start] ^= 0x10
                        self.corrupt_at = -1
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def data(self) -> bytes:
        with self.lock:
            return bytes(self.recorded)

    def stop(self) -> None:
        self.stopped = True
        self.server.close()
        for s in self.socks:
            s.close()


PATTERN = b"pccl-tls-wiretap-pattern!"  # 25 bytes: not a divisor of any piece size
MAGIC = 0x4C434350  # kProtocolMagic (csrc/protocol/messages.hpp)


@contextlib.contextmanager
def _pair_behind_taps(master: pccl_py.Master, address: str, encryption: str, taps: list) -> Iterator[list]:
    """Two in-process peers of the master at `address`, whose mesh listeners are reached through taps
    (appended to `taps`); the second is admitted by the first. Yields [a, b]; afterwards closes them, stops
    every tap in `taps` and the master, even if the set-up failed halfway."""
    comms: list = []
    try:
        for _ in range(2):
            port = free_port()
            taps.append(Tap(("127.0.0.1", port)))
            comms.append(new_comm(address, secret=SECRET, encryption=encryption, listen_port=port,
                                  advertise_address=f"127.0.0.1:{taps[-1].port}", heartbeat_timeout=3.0,
                                  timeout=30.0))
        a, b = comms
        a.connect()
        run_concurrently(b.connect, lambda: admit_pending([a], 30), timeout=60)
        yield comms
    finally:
        for c in comms:
            c.close()
        for t in taps:
            t.stop()
        master.stop()


def _capture(encryption: str) -> tuple:
    """Two in-process peers whose master connections and mesh connections all cross taps; rank 0
    sends rank 1 a message made of PATTERN. Returns (master tap bytes, mesh tap bytes)."""
    master = pccl_py.Master(secret=SECRET, encryption=encryption).start()
    master_tap = Tap(("127.0.0.1", master.port))
    taps = [master_tap]
    with _pair_behind_taps(master, f"127.0.0.1:{master_tap.port}", encryption, taps) as (a, b):
        msg = np.frombuffer(PATTERN * 40_000, dtype=np.uint8).copy()  # ~1 MiB: pieces, and once lendable
        small = np.frombuffer(PATTERN * 4, dtype=np.uint8).copy()
        got, got_small = np.zeros_like(msg), np.zeros_like(small)
        sender, receiver = (a, b) if a.rank == 0 else (b, a)
        run_concurrently(lambda: (sender.send(msg, 1), sender.send(small, 1)),
                         lambda: (receiver.recv(got, 0), receiver.recv(got_small, 0)), timeout=60)
        assert got.tobytes() == msg.tobytes() and got_small.tobytes() == small.tobytes()
        return master_tap.data(), b"".join(t.data() for t in taps[1:])


def test_a_tampered_record_fails_the_op_never_delivers_wrong_bytes():
    """One bit flipped in flight on a mesh connection: TLS refuses the record and the link breaks. The
    transfer either fails on both sides with the receive buffer untouched, or (nobody evicted) runs again
    in the next epoch and delivers exactly the message; never other bytes. The group goes on."""
    master = pccl_py.Master(secret=SECRET, encryption="tls").start()
    taps: list = []
    with _pair_behind_taps(master, master.address, "tls", taps) as comms:
        a, b = comms
        sender, receiver = (a, b) if a.rank == 0 else (b, a)
        msg = np.random.default_rng(5).integers(0, 256, 4 << 20, dtype=np.uint8)
        for t in taps:  # the mesh connection crosses the tap of the member that accepted it
            with t.lock:
                t.corrupt_at = len(t.recorded) + 1_000_000
        got = np.zeros_like(msg)
        outcomes = run_concurrently(lambda: sender.send(msg, 1), lambda: receiver.recv(got, 0), timeout=60,
                                    return_exceptions=True)
        if all(isinstance(o, pccl_py.PCCLError) for o in outcomes):
            assert not got.any(), "a failed receive wrote into the buffer"
        else:
            # Nobody was evicted for one report of a broken link (docs/security.md, "Hostile members"):
            # the epoch ended and the transfer ran again on the next epoch's connections.
            assert not any(isinstance(o, BaseException) for o in outcomes), outcomes
            assert all(o.retries >= 1 for o in outcomes), outcomes
            assert np.array_equal(got, msg), "the re-run delivered other bytes"
        # Which side the master keeps is its failure policy's business; whoever is still a member
        # goes on, on the next epoch's connections (which no tap corrupts).
        for t in taps:
            t.corrupt_at = -1
        members = [c for c in comms if c.world_size >= 1]
        assert members, "the tampered link took every peer out"
        for c in members:
            if c.world_size == 1:
                x = np.arange(8, dtype=np.float32)
                c.all_reduce(x)
                assert np.array_equal(x, np.arange(8, dtype=np.float32))


def test_bytes_on_the_wire_are_not_the_plaintext():
    """Tapped on the wire, plaintext runs show the payload and the protocol magic; TLS runs show neither (no
    8-byte run of the payload) and the control connection opens with a TLS handshake record."""
    magic = struct.pack("<I", MAGIC)  # the control protocol's magic, as AUTH_HELLO carries it
    master_bytes, mesh_bytes = _capture("none")
    # The control experiment: without encryption the taps see the payload and the protocol in clear.
    assert PATTERN * 4 in mesh_bytes and magic in master_bytes
    master_bytes_tls, mesh_bytes_tls = _capture("tls")
    # Under TLS no 8-byte run of the payload (large or small message) and no protocol magic crosses
    # the wire; the control connection opens with a TLS handshake record.
    assert len(mesh_bytes_tls) > 1_000_000, "the mesh bytes did not cross the tap"
    doubled = PATTERN * 2
    for i in range(len(PATTERN)):
        assert doubled[i:i + 8] not in mesh_bytes_tls, doubled[i:i + 8]
    assert master_bytes_tls[:1] == b"\x16"
    assert magic not in master_bytes_tls


# ---------------------------------------------------------------------------------------------
# torch.distributed: pg_options={"encryption": "tls"}

_TORCH_RANK = r"""
import json, os, sys
from datetime import timedelta
import torch, torch.distributed as dist
import pccl_py, pccl_py.torch
from pccl_py.torch import rendezvous
rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("pccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                        timeout=timedelta(seconds=60), pg_options={"encryption": "tls"})
x = torch.arange(100_000, dtype=torch.float32) * (rank + 1)
dist.all_reduce(x)
res = {"ok": bool(torch.equal(x, torch.arange(100_000, dtype=torch.float32) * 3))}
if rank == 0:
    # The master rank 0 hosts encrypts: a plaintext peer with the right secret is refused.
    addr = rendezvous._default_master
    c = pccl_py.Communicator(addr, secret=rendezvous.secret_for(addr), encryption="none", listen_host="127.0.0.1",
                             timeout=10, join_timeout=10)
    try:
        c.connect()
        res["plaintext"] = "admitted"
    except pccl_py.PCCLError as exc:
        res["plaintext"] = type(exc).__name__ + ": " + str(exc)
    finally:
        c.close()
dist.barrier()
json.dump(res, open(out, "w"))
dist.destroy_process_group()
os._exit(0)
"""


def test_torch_group_with_tls_pg_option(tmp_path):
    """pg_options={"encryption": "tls"} gives a torch group with correct all-reduces whose hosted master refuses
    a plaintext peer that has the right secret."""
    pytest.importorskip("torch")
    env = {**os.environ, "PCCL_LOG_LEVEL": "error", "OMP_NUM_THREADS": "1", "PCCL_MASTER_BIND": "127.0.0.1"}
    env.pop("PCCL_SECRET", None)
    env.pop("PCCL_ENCRYPTION", None)
    res = run_torch_ranks(_TORCH_RANK, 2, str(tmp_path), env, timeout=120)
    assert all(r["ok"] for r in res), res
    assert res[0]["plaintext"].startswith("AuthenticationError") and "encrypts every connection" in res[0]["plaintext"], res
