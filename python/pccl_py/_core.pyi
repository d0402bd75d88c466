"""Types of pccl_py._core, the compiled C++ core (csrc/bindings/module.cpp).

Written by hand from the bindings and kept beside them: a change to module.cpp changes this file in
the same commit (mypy --strict checks every caller against it; the tests check the behaviour). The
enums are the core's own (csrc/kernels/dtype.hpp, codec.hpp, collectives/collective.hpp,
common/log.hpp, common/error.hpp), exported as enum.IntEnum; their values are the core's codes.
Addresses are raw pointers as ints (numpy ``ctypes.data``, torch ``data_ptr()``).
"""

import enum

class ReduceOp(enum.IntEnum):
    SUM = 0
    AVG = 1
    PROD = 2
    MIN = 3
    MAX = 4

class Algorithm(enum.IntEnum):
    AUTO = 0
    RING = 1
    STAR = 2

class DataType(enum.IntEnum):
    INT8 = 0
    UINT8 = 1
    INT16 = 2
    UINT16 = 3
    INT32 = 4
    UINT32 = 5
    INT64 = 6
    UINT64 = 7
    FLOAT16 = 8
    BFLOAT16 = 9
    FLOAT32 = 10
    FLOAT64 = 11

class Quantization(enum.IntEnum):
    NONE = 0
    FP16 = 1
    BF16 = 2
    Q8 = 3
    Q4 = 4

class LogLevel(enum.IntEnum):
    DEBUG = 0
    INFO = 1
    WARN = 2
    ERROR = 3
    OFF = 4

class ErrorCode(enum.IntEnum):
    INVALID_ARGUMENT = 1
    PEER_LOST = 2
    TIMEOUT = 3
    MASTER_LOST = 4
    EVICTED = 5
    MISMATCH = 6
    CLOSED = 7
    PROTOCOL = 8
    IO = 9
    AUTH = 10

class ReduceResult:
    """What one op did on this peer (read-only)."""

    @property
    def world_size(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def rx_bytes(self) -> int: ...
    @property
    def swapped_bytes(self) -> int: ...
    @property
    def algorithm(self) -> str:
        """"star", "ring" or "p2p"."""
    @property
    def epoch(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def peers_pending(self) -> bool: ...

class CommunicatorOptions:
    def __init__(
        self,
        *,
        master_address: str,
        group: int = 0,
        connections: int = 1,
        timeout: float = 60.0,
        heartbeat_timeout: float = 5.0,
        join_timeout: float = 600.0,
        listen_host: str = "0.0.0.0",
        listen_port: int = 0,
        advertise_host: str = "",
        advertise_port: int = 0,
        master_grace: float = 0.0,
        swap_result_pages: bool = True,
        secret: bytes = b"",
        encrypt: bool = False,
    ) -> None: ...
    @property
    def master_address(self) -> str: ...
    @property
    def group(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def timeout(self) -> float: ...
    @property
    def heartbeat_timeout(self) -> float: ...
    @property
    def join_timeout(self) -> float: ...
    @property
    def listen_host(self) -> str: ...
    @property
    def listen_port(self) -> int: ...
    @property
    def advertise_host(self) -> str: ...
    @property
    def advertise_port(self) -> int: ...
    @property
    def master_grace(self) -> float: ...
    @property
    def swap_result_pages(self) -> bool: ...
    @property
    def encrypt(self) -> bool: ...

class MasterLimits:
    def __init__(
        self,
        *,
        handshake_timeout: float = 5.0,
        max_unauthenticated: int = 512,
        max_unauthenticated_per_source: int = 64,
        max_preauth_bytes: int = 16777216,
        max_pending_per_group: int = 1024,
        max_group_size: int = 4096,
    ) -> None: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def max_unauthenticated(self) -> int: ...
    @property
    def max_unauthenticated_per_source(self) -> int: ...
    @property
    def max_preauth_bytes(self) -> int: ...
    @property
    def max_pending_per_group(self) -> int: ...
    @property
    def max_group_size(self) -> int: ...

def set_log_level(level: LogLevel) -> None: ...
def _router_hold_probe(frames: int, length: int) -> tuple[int, str]: ...
def content_hash(addr: int, nbytes: int) -> int: ...
def copy_bytes(dst: int, src: int, nbytes: int) -> None: ...
def quantize_roundtrip(quantization: Quantization, dtype: DataType, src_ptr: int, dst_ptr: int, count: int) -> None: ...

class Master:
    def __init__(self, host: str, port: int, *, secret: bytes = b"", encrypt: bool = False,
                 limits: MasterLimits = ...) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def host(self) -> str: ...

class AsyncOp:
    def done(self) -> bool: ...
    def wait(self) -> ReduceResult: ...

class Communicator:
    def __init__(self, options: CommunicatorOptions) -> None: ...
    def connect(self) -> None: ...
    def update_topology(self) -> None: ...
    def are_peers_pending(self) -> bool: ...
    def close(self) -> None: ...
    @property
    def world_size(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def peer_id(self) -> int: ...
    def check_usable(self, what: str) -> None: ...
    def _send_failure_report(self, epoch: int, kind: int, suspect: int) -> None: ...
    def all_reduce(self, src: int, dst: int, count: int, dtype: DataType, op: ReduceOp, tag: int,
                   algorithm: Algorithm, quantization: Quantization) -> ReduceResult: ...
    def all_reduce_async(self, src: int, dst: int, count: int, dtype: DataType, op: ReduceOp, tag: int,
                         algorithm: Algorithm, quantization: Quantization) -> AsyncOp: ...
    def p2p(self, send: bool, peer: int, addr: int, count: int, dtype: DataType, tag: int,
            planned_epoch: int = 0) -> ReduceResult: ...
    def p2p_async(self, send: bool, peer: int, addr: int, count: int, dtype: DataType, tag: int,
                  planned_epoch: int = 0) -> AsyncOp: ...
