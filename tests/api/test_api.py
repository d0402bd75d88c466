"""The public Python API in one process: argument validation, state errors, Master, the CLI, async ops.

A pccl_py.Master runs in this process and communicators are driven from threads, so the tests hold the
caller's own objects (arrays, handles, exceptions) rather than a worker's summary of them.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pccl_py
from support import Background, connect_group, new_comm, run_concurrently, wait_until

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
# Seconds: an argument error comes back at once (microseconds). Anything sent first would block until the
# partner answered, which it never does, so the call would take the op timeout (3 s for `pair`) and
# raise TimeoutError; 2 s leaves room for a loaded CI machine.
FAST = 2.0


@pytest.fixture(scope="module")
def master():
    with pccl_py.Master() as m:
        yield m


_groups = itertools.count(1)


def group_kwargs() -> dict:
    """A peer group of its own, so a test's communicators never wait for admission by another test's."""
    return {"peer_group": next(_groups)}


@pytest.fixture(scope="module")
def pair(master):
    """Two members of one group. timeout=3 turns an accidental half-sent op into a quick failure."""
    comms = connect_group(master.address, 2, timeout=3.0, **group_kwargs())
    yield comms
    run_concurrently(*[c.close for c in comms])


_seeds = itertools.count()


def reduce_pair(comms) -> None:
    """Both members all-reduce different float32 inputs; each must hold the exact sum afterwards."""
    rng = np.random.default_rng(next(_seeds))
    xs = [rng.integers(-100, 100, 257).astype(np.float32) for _ in comms]
    expected = xs[0] + xs[1]
    infos = run_concurrently(*[lambda c=c, x=x: c.all_reduce(x) for c, x in zip(comms, xs)], timeout=20)
    assert [i.world_size for i in infos] == [2, 2]
    for x in xs:
        np.testing.assert_array_equal(x, expected)


# ---------------------------------------------------------------------------------------------
# bad arguments


def _x():
    return np.arange(8, dtype=np.float32)


def _read_only(a):
    a.flags.writeable = False
    return a


def _partial_overlap(buf):
    return buf[:8], {"out": buf[4:12]}


def _meta_tensor():
    import torch

    return torch.empty(8, device="meta")


def _strided_tensor():
    import torch

    return torch.zeros(8, 2)[:, 0]


BAD_CALLS = [
    pytest.param(lambda: (np.arange(16, dtype=np.float32)[::2], {}), id="non_contiguous"),
    pytest.param(lambda: (np.zeros(8, np.complex64), {}), id="complex64"),
    pytest.param(lambda: (np.zeros(8, bool), {}), id="bool"),
    pytest.param(lambda: (np.zeros(8, ">f4"), {}), id="non_native_byte_order"),
    pytest.param(lambda: ([1.0, 2.0], {}), id="list"),
    pytest.param(lambda: (None, {}), id="none"),
    pytest.param(lambda: (_read_only(_x()), {}), id="read_only_input_in_place"),
    pytest.param(lambda: (_x(), {"out": np.zeros(8, np.float64)}), id="out_wrong_dtype"),
    pytest.param(lambda: (_x(), {"out": np.zeros(7, np.float32)}), id="out_wrong_size"),
    pytest.param(lambda: (_x(), {"out": _read_only(np.zeros(8, np.float32))}), id="out_read_only"),
    pytest.param(lambda: _partial_overlap(np.zeros(16, np.float32)), id="out_partial_overlap"),
    pytest.param(lambda: (_x(), {"op": "XOR"}), id="bad_op"),
    pytest.param(lambda: (_x(), {"algorithm": "tree"}), id="bad_algorithm"),
    pytest.param(lambda: (_x(), {"tag": -1}), id="negative_tag"),
    pytest.param(lambda: (_x(), {"quantization": "q2"}), id="bad_quantization"),
    pytest.param(lambda: (_meta_tensor(), {}), id="torch_meta_device", marks=needs_torch),
    pytest.param(lambda: (_strided_tensor(), {}), id="torch_non_contiguous", marks=needs_torch),
]


@pytest.mark.parametrize("make", BAD_CALLS)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_bad_argument_fails_before_any_network_traffic(pair, make, asynchronous):
    """A bad argument raises InvalidArgumentError at once on one member of a 2-member group, while its
    partner does nothing: had anything been sent, the call would block until the partner answered (or
    time out). A normal all_reduce right after must then succeed on both: nothing was half-sent."""
    x, kwargs = make()
    call = pair[0].all_reduce_async if asynchronous else pair[0].all_reduce
    t0 = time.monotonic()
    with pytest.raises(pccl_py.InvalidArgumentError) as info:
        call(x, **kwargs)
    assert time.monotonic() - t0 < FAST
    assert isinstance(info.value, pccl_py.PCCLError) and isinstance(info.value, ValueError)
    assert str(info.value), "the error must say what was wrong"
    reduce_pair(pair)


def test_bad_argument_leaves_buffers_untouched(pair):
    """Validation must not write to the caller's arrays either (out with the wrong size stays as it was)."""
    x, out = _x(), np.full(7, 5.0, np.float32)
    with pytest.raises(pccl_py.InvalidArgumentError):
        pair[0].all_reduce(x, out=out)
    np.testing.assert_array_equal(x, _x())
    np.testing.assert_array_equal(out, np.full(7, 5.0, np.float32))


@pytest.mark.parametrize("kwargs", [
    {"connections_per_peer": 0},
    {"connections_per_peer": 65},
    {"connections_per_peer": 1.5},
    {"timeout": -1.0},
    {"timeout": 0},
    {"heartbeat_timeout": -5},
    {"join_timeout": -1},
    {"peer_group": -1},
    {"peer_group": 2**32},
    {"listen_port": -1},
    {"listen_port": 65536},
    {"advertise_address": "10.0.0.1:notaport"},
    {"advertise_address": "10.0.0.1:99999"},
], ids=repr)
def test_bad_constructor_arguments(master, kwargs):
    """Out-of-range settings are refused when the Communicator is created, not later on the network."""
    with pytest.raises(pccl_py.InvalidArgumentError):
        pccl_py.Communicator(master.address, **kwargs)


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:", ":", "127.0.0.1:notaport", "127.0.0.1:99999",
                                     "127.0.0.1:0", "", 48148, None])
def test_bad_master_address(address):
    """A malformed master address is an InvalidArgumentError at construction, not a connection error later."""
    with pytest.raises(pccl_py.InvalidArgumentError):
        pccl_py.Communicator(address)


def test_use_before_connect_is_an_invalid_argument(master):
    """Collectives and membership calls on a communicator that never connected fail at once and say why."""
    c = new_comm(master.address, **group_kwargs())
    for fn in (lambda: c.all_reduce(_x()), c.update_topology, c.are_peers_pending):
        t0 = time.monotonic()
        with pytest.raises(pccl_py.InvalidArgumentError, match="connect"):
            fn()
        assert time.monotonic() - t0 < FAST
    assert (c.world_size, c.rank, c.peer_id) == (0, -1, 0)
    c.close()


def test_use_after_close_raises_closed_error(master):
    """After close(), every call raises ClosedError (a PCCLError); close() itself may be repeated."""
    c = new_comm(master.address, **group_kwargs()).connect()
    c.all_reduce(_x())
    c.close()
    c.close()
    for fn in (lambda: c.all_reduce(_x()), lambda: c.all_reduce_async(_x()), c.update_topology,
               c.are_peers_pending, c.connect):
        with pytest.raises(pccl_py.ClosedError) as info:
            fn()
        assert isinstance(info.value, pccl_py.PCCLError)
    assert c.world_size == 0


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_close_interrupts_an_all_reduce_blocked_in_another_thread(master, asynchronous):
    """close() from one thread must end an all_reduce that another thread is blocked in (its partner
    never contributes): the op raises ClosedError promptly, not when its own timeout expires, and
    close() itself returns promptly without raising.
    """
    op_timeout = 6.0
    a, b = connect_group(master.address, 2, timeout=op_timeout, **group_kwargs())
    x = _x()
    op = Background(a.all_reduce_async(x).wait if asynchronous else lambda: a.all_reduce(x))
    try:
        time.sleep(0.3)
        run_concurrently(a.close, timeout=3)
        with pytest.raises(pccl_py.ClosedError):
            op.result(timeout=2)
        np.testing.assert_array_equal(x, _x())
    finally:
        op.join(op_timeout + 20)  # a thread left inside the library would abort the interpreter at exit
        run_concurrently(a.close, b.close)


def test_connect_twice_is_an_invalid_argument(master):
    """A second connect() is a programming error, reported as such, and leaves the membership intact."""
    c = new_comm(master.address, **group_kwargs()).connect()
    try:
        with pytest.raises(pccl_py.InvalidArgumentError):
            c.connect()
        assert c.world_size == 1
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# accepted inputs


def test_out_may_be_the_input(pair):
    """out=x is the in-place case spelled explicitly; it is not a (partial) overlap."""
    xs = [np.full(33, 1.0 + i, np.float32) for i in range(2)]
    run_concurrently(*[lambda c=c, x=x: c.all_reduce(x, out=x) for c, x in zip(pair, xs)])
    for x in xs:
        np.testing.assert_array_equal(x, np.full(33, 3.0, np.float32))


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32",
                                   "int64"])
def test_torch_cpu_tensors(pair, dtype):
    """CPU torch tensors are reduced in place, without copies, for every dtype torch and pccl_py share."""
    import torch

    tensors = [torch.arange(-5, 6).to(getattr(torch, dtype)) * (i + 1) for i in range(2)]
    expected = torch.arange(-5, 6).to(getattr(torch, dtype)) * 3
    ptrs = [t.data_ptr() for t in tensors]
    infos = run_concurrently(*[lambda c=c, t=t: c.all_reduce(t) for c, t in zip(pair, tensors)])
    assert all(i.world_size == 2 for i in infos)
    for t, p in zip(tensors, ptrs):
        assert t.data_ptr() == p
        assert torch.equal(t, expected), t


# ---------------------------------------------------------------------------------------------
# mismatched collectives

MISMATCHES = {  # what each of the two members passes, on top of 8 float32 elements, SUM, auto
    "count": ({}, {"count": 9}),
    "dtype": ({}, {"dtype": np.float64}),
    "op": ({}, {"op": pccl_py.ReduceOp.MAX}),
    "algorithm": ({"algorithm": "ring"}, {"algorithm": "star"}),
}


@pytest.mark.parametrize("kind", MISMATCHES)
def test_mismatched_collectives_fail_on_every_peer(pair, kind):
    """Peers that issue different collectives under one tag all get MismatchError (never a silently wrong
    result), their buffers stay unchanged, and the next matching all_reduce works."""
    calls = []
    for comm, side in zip(pair, MISMATCHES[kind]):
        kwargs = dict(side)
        x = np.ones(kwargs.pop("count", 8), kwargs.pop("dtype", np.float32))
        calls.append((comm, x, kwargs))
    outcomes = run_concurrently(*[lambda c=c, x=x, k=k: c.all_reduce(x, **k) for c, x, k in calls],
                                return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, pccl_py.MismatchError), outcome
    for _, x, _ in calls:
        np.testing.assert_array_equal(x, np.ones_like(x))
    reduce_pair(pair)


# ---------------------------------------------------------------------------------------------
# numpy users never import torch

NO_TORCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import pccl_py
    assert "torch" not in sys.modules, "import pccl_py imported torch"
    with pccl_py.Master() as m:
        c = pccl_py.Communicator(m.address, listen_host="127.0.0.1").connect()
        x = np.arange(10, dtype=np.float32)
        info = c.all_reduce(x, op=pccl_py.ReduceOp.AVG)
        assert info.world_size == 1 and x.tolist() == list(range(10)), (info, x)
        c.close()
    assert "torch" not in sys.modules, "all_reduce on numpy imported torch"
    print("OK")
""")


def test_numpy_only_use_never_imports_torch():
    """import pccl_py and a numpy all_reduce must work without importing torch (it is optional and slow
    to import), even when torch is installed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"


# ---------------------------------------------------------------------------------------------
# the master


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_master_context_manager():
    """`with Master() as m` serves on a real port (port=0 picks one, .address reports it) and stops on exit."""
    with pccl_py.Master(port=0) as m:
        assert m.port > 0
        assert m.address == f"127.0.0.1:{m.port}"
        assert _port_open(m.port)
        c = new_comm(m.address).connect()
        assert c.world_size == 1
        c.close()
    assert not _port_open(m.port)


def test_master_cli_serves_logs_joins_and_stops_on_sigterm(tmp_path):
    """`python -m pccl_py.master` prints its address, logs joins at info level to stderr, and exits
    cleanly on SIGTERM."""
    log = tmp_path / "master.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pccl_py.master", "--port", "0", "--host", "127.0.0.1"],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        line = run_concurrently(proc.stdout.readline, timeout=30)[0]
        assert "listening on" in line
        address = line.split()[-1]
        c = new_comm(address).connect()
        try:
            wait_until(lambda: "joined" in log.read_text(), 10, "the master to log the join")
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# all_reduce_async


def test_async_wait_returns_reduce_info(pair):
    """wait() returns the op's ReduceInfo; done() is False while the partner has not joined the op and
    True once it finished; wait() may be called again."""
    a, b = np.full(100, 1.0, np.float32), np.full(100, 2.0, np.float32)
    ha = pair[0].all_reduce_async(a)
    time.sleep(0.2)
    assert not ha.done(), "the op cannot be done before the partner contributes"
    hb = pair[1].all_reduce_async(b)
    info = ha.wait()
    assert isinstance(info, pccl_py.ReduceInfo)
    assert info.world_size == 2 and info.algorithm == "star" and info.retries == 0
    assert hb.wait().world_size == 2
    assert ha.done() and hb.done()
    assert ha.wait() is info
    np.testing.assert_array_equal(a, np.full(100, 3.0, np.float32))
    np.testing.assert_array_equal(b, a)


def test_async_ops_on_different_tags_in_flight_together(pair):
    """Several async ops on different tags, submitted by the two members in opposite orders, are all in
    flight at once and each finishes with its own correct sum (no mixing between tags)."""
    n_ops, count = 6, 70000  # above 64 KiB: ring ops with several frames each
    xs = [[np.full(count, 10.0 * k + m, np.float32) for k in range(n_ops)] for m in range(2)]
    tags = list(range(1, n_ops + 1))
    handles = [pair[0].all_reduce_async(xs[0][k], tag=tags[k]) for k in range(n_ops)]
    handles += [pair[1].all_reduce_async(xs[1][k], tag=tags[k]) for k in reversed(range(n_ops))]
    infos = run_concurrently(*[h.wait for h in handles], timeout=30)
    assert all(i.world_size == 2 and i.algorithm == "ring" for i in infos)
    for m in range(2):
        for k in range(n_ops):
            np.testing.assert_array_equal(xs[m][k], np.full(count, 20.0 * k + 1, np.float32))


def test_async_ops_on_one_tag_run_in_submission_order(pair):
    """Async ops on the same tag are matched across peers in the order each peer submitted them."""
    xs = [[np.full(10, 10.0 * k + m, np.float32) for k in range(4)] for m in range(2)]
    handles = [pair[m].all_reduce_async(xs[m][k], tag=7) for k in range(4) for m in range(2)]
    run_concurrently(*[h.wait for h in handles])
    for m in range(2):
        for k in range(4):
            np.testing.assert_array_equal(xs[m][k], np.full(10, 20.0 * k + 1, np.float32))


def test_async_error_is_raised_by_wait(master):
    """An op that fails in the background raises its PCCLError from wait() (here: the partner never
    contributes, so it times out), and done() is True afterwards."""
    a, b = connect_group(master.address, 2, timeout=1.0, **group_kwargs())
    try:
        x = _x()
        h = a.all_reduce_async(x)
        with pytest.raises(pccl_py.TimeoutError):
            run_concurrently(h.wait, timeout=20)
        assert h.done()
        np.testing.assert_array_equal(x, _x())
    finally:
        run_concurrently(a.close, b.close)


# -- the typed boundary to the core (csrc/bindings/module.cpp, pccl_py/_core.pyi) ------------------


def test_enums_are_the_cores_int_enums():
    """ReduceOp and Algorithm are the core's own IntEnums (one definition, in C++), with the names and
    values users had; the dtype, quantization and log level tables are derived from the core's enums."""
    import enum

    from pccl_py import _core
    from pccl_py.buffers import DTYPE_CODES
    from pccl_py.master import _LEVELS

    assert pccl_py.ReduceOp is _core.ReduceOp and issubclass(pccl_py.ReduceOp, enum.IntEnum)
    assert {m.name: int(m) for m in pccl_py.ReduceOp} == {"SUM": 0, "AVG": 1, "PROD": 2, "MIN": 3, "MAX": 4}
    assert pccl_py.ReduceOp["MAX"] == 4 and pccl_py.ReduceOp(1) is pccl_py.ReduceOp.AVG
    with pytest.raises(ValueError):
        pccl_py.ReduceOp(5)
    assert pccl_py.Algorithm is _core.Algorithm
    assert {m.name: int(m) for m in pccl_py.Algorithm} == {"AUTO": 0, "RING": 1, "STAR": 2}
    assert list(DTYPE_CODES) == ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                 "float16", "bfloat16", "float32", "float64"]
    assert [int(c) for c in DTYPE_CODES.values()] == list(range(12))
    assert list(_LEVELS) == ["debug", "info", "warn", "error", "off"]
    # The core takes members of its enums only: a bare code is refused before anything happens.
    with pytest.raises(TypeError):
        _core.set_log_level(2)


def test_every_core_error_code_has_an_exception_class():
    """The bindings raise the class ERROR_CLASSES names for an error's code; every code has one."""
    from pccl_py import _core
    from pccl_py.errors import ERROR_CLASSES

    assert set(ERROR_CLASSES) == set(_core.ErrorCode)
    assert all(issubclass(cls, pccl_py.PCCLError) for cls in ERROR_CLASSES.values())
    assert ERROR_CLASSES[_core.ErrorCode.PEER_LOST] is pccl_py.PeerLostError
    assert ERROR_CLASSES[_core.ErrorCode.AUTH] is pccl_py.AuthenticationError
    # Through the translator: a code the core raises arrives as its class.
    x = np.ones(8, dtype=np.float32)
    with pytest.raises(pccl_py.InvalidArgumentError, match="float32 and float64"):
        _core.quantize_roundtrip(_core.Quantization.Q8, _core.DataType.INT32, x.ctypes.data, x.ctypes.data, 8)


def test_core_options_defaults_match_the_python_api():
    """The core's option structs and the Python signatures promise the same defaults."""
    import inspect

    from pccl_py import _core
    from pccl_py.master import DEFAULT_LIMITS

    opts = _core.CommunicatorOptions(master_address="127.0.0.1:1")
    params = inspect.signature(pccl_py.Communicator).parameters
    for py_name, core_name in (("peer_group", "group"), ("connections_per_peer", "connections"),
                               ("timeout", "timeout"), ("heartbeat_timeout", "heartbeat_timeout"),
                               ("join_timeout", "join_timeout"), ("listen_host", "listen_host"),
                               ("listen_port", "listen_port"), ("master_grace", "master_grace"),
                               ("swap_result_pages", "swap_result_pages")):
        assert params[py_name].default == getattr(opts, core_name), py_name
    assert DEFAULT_LIMITS == {"handshake_timeout": 5.0, "max_unauthenticated": 512,
                              "max_unauthenticated_per_source": 64, "max_preauth_bytes": 16 << 20,
                              "max_pending_per_group": 1024, "max_group_size": 4096}
    with pytest.raises(TypeError):
        _core.CommunicatorOptions("127.0.0.1:1")  # keywords only


def test_installed_stub_names_every_core_enum_member_with_its_value():
    """The shipped _core.pyi (installed beside py.typed) gives every enum exactly the core's members and
    values (mypy.stubtest in CI catches missing names, not a wrong or extra enum value)."""
    import ast
    import enum
    from pathlib import Path

    from pccl_py import _core

    pkg = Path(pccl_py.__file__).parent
    assert (pkg / "py.typed").is_file()
    stub = ast.parse((pkg / "_core.pyi").read_text())
    declared = {}
    for node in stub.body:
        if isinstance(node, ast.ClassDef) and any(getattr(b, "attr", None) == "IntEnum" for b in node.bases):
            declared[node.name] = {s.targets[0].id: s.value.value for s in node.body
                                   if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)}
    runtime = {name: {m.name: int(m) for m in cls} for name, cls in vars(_core).items()
               if isinstance(cls, type) and issubclass(cls, enum.IntEnum)}
    assert runtime and declared == runtime
