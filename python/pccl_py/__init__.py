"""pccl_py: fault-tolerant all-reduce over TCP among peers that come and go.

Start a :class:`Master`, create a :class:`Communicator` per peer, ``connect()``, and call
``all_reduce``. See README.md for a tour and docs/architecture.md for how it stays correct.
"""

from .communicator import AllReduceHandle, Communicator, P2PHandle
from .errors import (
    AuthenticationError,
    ClosedError,
    EvictedError,
    InvalidArgumentError,
    MasterLostError,
    MismatchError,
    PCCLError,
    PeerLostError,
    SharedStateError,
    TimeoutError,
)
from .master import Master, set_log_level
from .ops import Algorithm, ReduceInfo, ReduceOp
from .quantization import quantize_roundtrip
from .shared_state import SharedState, StateEntry, SyncInfo, SyncStrategy

__version__ = "0.1.0"

__all__ = [
    "Master", "Communicator", "AllReduceHandle", "P2PHandle", "ReduceOp", "ReduceInfo", "Algorithm", "set_log_level",
    "PCCLError", "InvalidArgumentError", "PeerLostError", "TimeoutError", "MasterLostError", "EvictedError",
    "MismatchError", "AuthenticationError", "ClosedError", "SharedStateError", "SharedState", "StateEntry", "SyncInfo", "SyncStrategy",
    "quantize_roundtrip",
]
