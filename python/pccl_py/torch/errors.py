"""The errors a pccl Work raises: pccl's own classes that are also torch's ``DistBackendError``.

Why this exists: torch code handles a failed collective as ``torch.distributed.DistBackendError`` (a
``RuntimeError``) and recognises a timeout by torch's wording ("Timed out waiting <n>ms ..."), while
pccl code catches ``pccl_py.PeerLostError``, ``pccl_py.TimeoutError`` and the rest. Each class here
derives from both, so both kinds of caller keep working, and the pccl error that caused it stays
attached as ``__cause__``.

The trap: argument errors (``InvalidArgumentError``, a ``ValueError``) are raised before anything is
sent and are not backend failures: they pass through unchanged, as torch's own argument checks do.
"""

from __future__ import annotations

from typing import Optional, Type, cast

from torch.distributed import DistBackendError

from .. import errors

_PCCL_CLASSES = (errors.PeerLostError, errors.TimeoutError, errors.MasterLostError, errors.EvictedError,
                 errors.MismatchError, errors.SharedStateError, errors.ClosedError, errors.PCCLError)

# One class per pccl error class, defined at module level under the same name (so they pickle).
_TORCH_CLASSES: dict[Type[errors.PCCLError], Type[errors.PCCLError]] = {}
for _cls in _PCCL_CLASSES:
    _TORCH_CLASSES[_cls] = cast(Type[errors.PCCLError], type(_cls.__name__, (_cls, DistBackendError),
                                {"__module__": __name__, "__qualname__": _cls.__name__,
                                 "__doc__": f"pccl_py.{_cls.__name__} raised by a torch Work; also a "
                                            "torch.distributed.DistBackendError."}))
    globals()[_cls.__name__] = _TORCH_CLASSES[_cls]

TimeoutError = _TORCH_CLASSES[errors.TimeoutError]  # noqa: A001 - mirrors pccl_py.TimeoutError


def timed_out(what: str, seconds: Optional[float], detail: str) -> BaseException:
    """A timeout in torch's wording: "Timed out waiting <ms>ms for <what> ..." (torch's tests match it)."""
    waited = f" {round(seconds * 1000)}ms" if seconds is not None else ""
    return TimeoutError(f"pccl {what}: Timed out waiting{waited} for {what} to complete: {detail}")


def for_torch(exc: BaseException, what: str, timeout: Optional[float]) -> BaseException:
    """The exception a Work of op ``what`` raises for ``exc``; ``exc`` itself unless it is a pccl failure."""
    if not isinstance(exc, errors.PCCLError) or isinstance(exc, errors.InvalidArgumentError):
        return exc
    if isinstance(exc, DistBackendError):
        return exc  # already translated
    if isinstance(exc, errors.TimeoutError):
        new = timed_out(what, timeout, str(exc))
    else:
        cls = next(_TORCH_CLASSES[c] for c in _PCCL_CLASSES if isinstance(exc, c))
        new = cls(f"pccl {what}: {exc}")
    new.__cause__ = exc
    return new
