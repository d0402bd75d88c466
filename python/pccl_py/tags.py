"""The tags pccl_py's own collectives use, allocated in one place.

Why this exists: ops on one tag run one at a time in submission order, and peers match ops by
(epoch, tag, sequence). Two of the library's own protocols sharing a tag would interleave their ops
and match one protocol's op against the other's (a MismatchError at best). User tags stop below
``MAX_USER_TAG``; everything from there up is handed out here and nowhere else, and only the
communicator's package-internal interface (``pccl_py.communicator.internals``) accepts such tags.
The one allocation in the user range is the torch backend's default window, also listed here.
"""

from __future__ import annotations

# User ops take tags in [0, MAX_USER_TAG); the rest is reserved for the library.
MAX_USER_TAG = 0xFFFF0000

# DiLoCo's pseudo-gradient all-reduce and its control op (contributor count, pending flag). They run
# concurrently, so they need tags of their own.
DILOCO_DATA_TAG = 0xFFFF0100
DILOCO_CONTROL_TAG = 0xFFFF0101

# Shared-state sync: a sequence of gathers and one exchange, all on this tag.
STATE_TAG = 0xFFFFFFFF

# The torch backend's collectives: operation n of a process group runs on TORCH_TAG_BASE + n % TORCH_TAGS
# (pccl_py.torch.backend). User-range tags, since a process group may be given another tag_base; its
# send/recv take the tags below its base.
TORCH_TAG_BASE = 1 << 20
TORCH_TAGS = 8

__all__ = ["MAX_USER_TAG", "DILOCO_DATA_TAG", "DILOCO_CONTROL_TAG", "STATE_TAG", "TORCH_TAG_BASE", "TORCH_TAGS"]
