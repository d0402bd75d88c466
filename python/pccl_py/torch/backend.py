"""``ProcessGroupPCCL``: torch.distributed collectives on a pccl Communicator.

Why this exists: it translates torch's collective calls (tensor lists, option structs, torch ReduceOps,
devices, dtypes) into pccl all-reduces and the exact derived collectives of :mod:`pccl_py.collectives`,
and returns :class:`~pccl_py.torch.work.PcclWork` objects. It is a Python subclass of
``torch.distributed.ProcessGroup`` (torch routes both Python calls and C++ callers such as
DistributedDataParallel's reducer to its methods).

Ordering: every rank of a group issues torch collectives in the same order, so an operation's position
in that order names it. Operation ``n`` runs on pccl tag ``tag_base + n % TAGS``: consecutive async
operations may overlap on different tags, and any pccl ops one torch op needs are issued on its tag at
once, in the caller's thread, so their order is the same on every rank.

Rank numbering: results follow torch's group ranks (``slot i`` of an all_gather is group rank i), never
pccl's ring order, because the derived collectives take the caller's torch rank explicitly.

Typing: torch's stubs give ``ProcessGroup``'s collectives as overloads of the Python-level call forms
(``allreduce(tensor, op=...)`` and so on); torch's dispatcher calls a Python subclass with the list and
options form only, which is what the methods here implement. Each override therefore carries a
``# type: ignore[override]`` (or ``[assignment]`` for aliases), and nothing else in this module does.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Sequence, cast

import torch
import torch.distributed as dist

from .. import collectives
from ..buffers import DTYPE_CODES
from ..communicator import Communicator, P2PHandle, internals
from ..errors import ClosedError, InvalidArgumentError, PeerLostError
from ..master import Master
from ..ops import ReduceOp
from ..tags import TORCH_TAG_BASE, TORCH_TAGS
from . import objects
from .errors import for_torch
from .staging import Staged, empty_cpu, stage, stage_all
from .work import Completer, PcclWork

TAGS = TORCH_TAGS  # operation n of a group runs on tag_base + n % TAGS
DEFAULT_TAG_BASE = TORCH_TAG_BASE

_OPS = {
    dist.ReduceOp.SUM: ReduceOp.SUM,
    dist.ReduceOp.AVG: ReduceOp.AVG,
    dist.ReduceOp.PRODUCT: ReduceOp.PROD,
    dist.ReduceOp.MIN: ReduceOp.MIN,
    dist.ReduceOp.MAX: ReduceOp.MAX,
}
# bool has no pccl dtype: as uint8 0/1, "or" is MAX and "and" is MIN (what gloo computes for bool).
_BOOL_OPS = {ReduceOp.SUM: ReduceOp.MAX, ReduceOp.MAX: ReduceOp.MAX, ReduceOp.PROD: ReduceOp.MIN,
             ReduceOp.MIN: ReduceOp.MIN}


def _pccl_op(op: Any) -> ReduceOp:
    for torch_op, pccl_op in _OPS.items():
        if op == torch_op:
            return pccl_op
    name = getattr(op, "op", op)  # a ReduceOp object names its type in .op (RedOpType.BAND, ...)
    raise InvalidArgumentError(
        f"the pccl backend supports ReduceOp SUM, AVG, PRODUCT, MIN, MAX and PREMUL_SUM, not {name}")


class _Reduction:
    """A torch reduction as pccl runs it: a pccl op, and for PREMUL_SUM the factor each rank applies
    to its own input first (torch's ``_make_nccl_premul_sum(factor)``: the result is
    ``sum_i factor_i * x_i``, with ``factor_i`` the factor given on rank i)."""

    def __init__(self, opts: Any) -> None:
        op = opts.reduceOp if opts is not None else dist.ReduceOp.SUM
        self.factor: Optional[float] = None
        if op == dist.ReduceOp.PREMUL_SUM:
            factor = cast(Any, op).factor  # torch's stubs omit the factor a PREMUL_SUM op carries
            if isinstance(factor, torch.Tensor):
                if factor.numel() != 1:
                    raise InvalidArgumentError(
                        f"PREMUL_SUM needs a scalar factor (a number or a one-element tensor), got a tensor of "
                        f"shape {tuple(factor.shape)}")
                factor = factor.item()
            self.factor = float(factor)
            self.op = ReduceOp.SUM
        else:
            self.op = _pccl_op(op)

    def check(self, tensors: Sequence[torch.Tensor]) -> None:
        """Raises InvalidArgumentError for a tensor this reduction cannot take (call it before _begin)."""
        for t in tensors:
            if self.factor is not None and not (t.dtype.is_floating_point or t.dtype.is_complex):
                raise InvalidArgumentError(
                    f"PREMUL_SUM is defined for floating-point and complex tensors, not {t.dtype}")
            _check_reducible(t.dtype, self.op)

    def input(self, flat: torch.Tensor) -> torch.Tensor:
        """What this rank contributes: ``flat`` itself, or for PREMUL_SUM a scaled copy (the caller's
        tensor stays as it was until the result is written, so a failed op leaves it unchanged)."""
        if self.factor is None:
            return flat
        self.check([flat])
        return flat * self.factor


def _check_reducible(dtype: torch.dtype, op: ReduceOp) -> None:
    if dtype.is_complex:
        if op not in (ReduceOp.SUM, ReduceOp.AVG):
            raise InvalidArgumentError(f"complex tensors support SUM and AVG only, not {op.name}")
    elif dtype == torch.bool:
        if op not in _BOOL_OPS:
            raise InvalidArgumentError(f"bool tensors support SUM, PRODUCT, MIN and MAX, not {op.name}")
    elif str(dtype).replace("torch.", "") not in DTYPE_CODES:
        raise InvalidArgumentError(
            f"the pccl backend cannot reduce {dtype}; supported: {', '.join(DTYPE_CODES)}, complex "
            "(SUM/AVG) and bool")


def _reducible(flat: torch.Tensor, op: ReduceOp) -> tuple[torch.Tensor, ReduceOp]:
    """A view of flat that pccl can reduce with op, and the op to use (complex and bool need one)."""
    _check_reducible(flat.dtype, op)
    if flat.dtype.is_complex:
        return torch.view_as_real(flat).view(-1), op
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8), _BOOL_OPS[op]
    return flat, op


def _unstage_all(staged: Sequence[Staged]) -> None:
    for s in staged:
        s.unstage()


class ProcessGroupPCCL(dist.ProcessGroup):
    """A torch ProcessGroup whose collectives run on a pccl :class:`~pccl_py.Communicator`.

    Created by ``dist.init_process_group("pccl")`` / ``dist.new_group(backend="pccl")`` (static: the
    group's size is fixed, and once a member is lost every later op raises PeerLostError), or by
    :func:`pccl_py.torch.wrap_communicator` (dynamic: ``rank()`` and ``size()`` follow the live pccl
    membership).
    """

    def __init__(self, comm: Communicator, rank: int, size: int, *, dynamic: bool = False, owns_comm: bool = True,
                 master: Optional[Master] = None, tag_base: int = DEFAULT_TAG_BASE, name: str = "pccl",
                 timeout: Optional[float] = None, allow_object_collectives: bool = False) -> None:
        # A Python ProcessGroup is built from (rank, size); torch's stubs list only the constructor
        # that takes a store.
        super().__init__(rank, size)  # type: ignore[call-arg]
        self._comm = comm
        self._allow_objects = allow_object_collectives
        self._rank = rank
        self._size = size
        self._dynamic = dynamic
        self._owns_comm = owns_comm
        self._master = master
        self._tag_base = tag_base
        self._seq = itertools.count()
        self._completer = Completer(f"pccl-completer-{name}")
        self._closed = False
        self._on_shutdown: list[Callable[[], None]] = []
        self._timeout = timeout  # pccl's op timeout in seconds, for torch's timeout wording (None: unknown)
        self._group_name = name
        self._group_desc = name

    def object_collectives_allowed(self) -> bool:
        """Whether torch's object collectives (which unpickle what members send) may run on this group:
        its members are authenticated by a job secret, or the user opted in (see objects.py)."""
        return bool(getattr(self._comm, "authenticated", False)) or self._allow_objects or objects.env_allows()

    # -- identity ----------------------------------------------------------------------------------
    def getBackendName(self) -> str:  # noqa: N802 - torch's trampoline name
        return "pccl"

    def getRank(self) -> int:  # noqa: N802
        return self._comm.rank if self._dynamic else self._rank

    def getSize(self) -> int:  # noqa: N802
        return self._comm.world_size if self._dynamic else self._size

    def rank(self) -> int:
        return self.getRank()

    def size(self) -> int:
        return self.getSize()

    # torch names every group (dist.new_group, destroy_process_group look it up by name). torch's
    # ProcessGroup keeps the name in its registered C++ backends, and a Python ProcessGroup has none,
    # so the name and description live here.
    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    @property
    def group_name(self) -> str:  # type: ignore[override]
        return self._group_name

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_desc(self) -> str:
        return self._group_desc

    @property
    def communicator(self) -> Communicator:
        """The underlying pccl Communicator."""
        return self._comm

    def __repr__(self) -> str:
        return f"ProcessGroupPCCL(rank={self.getRank()}, size={self.getSize()}, dynamic={self._dynamic})"

    # -- plumbing ----------------------------------------------------------------------------------
    def _begin(self) -> tuple[int, int, int]:
        """(tag, rank, size) for the next operation; fails fast when the group is unusable.

        It numbers the operation, so every argument error must be raised *before* it: a call that
        fails its checks after taking a number on one rank only shifts that rank's later operations
        onto other tags than its peers' (they then time out)."""
        if self._closed:
            raise ClosedError("this pccl process group was shut down")
        if self._dynamic:
            rank, size = self._comm.rank, self._comm.world_size
        else:
            rank, size = self._rank, self._size
            live = self._comm.world_size
            if live != size:
                # Ranks of a static group are fixed; with a member gone every result would be wrong.
                raise PeerLostError(f"the pccl group has {live} of its {size} members; a member was lost. "
                                    "Create a new group (or use wrap_communicator for dynamic membership)")
        return self._tag_base + next(self._seq) % TAGS, rank, size

    def _submit(self, pending: Sequence[collectives.Pending], result: list[torch.Tensor],
                after: Callable[[], None] = lambda: None, what: str = "collective") -> PcclWork:
        def finish() -> None:
            error: Optional[BaseException] = None
            for p in pending:  # wait for all, so no buffer is still in use when the Work fails
                try:
                    p.wait()
                except BaseException as exc:  # noqa: BLE001 - the first error fails the Work
                    error = error or exc
            if error is not None:
                # torch's convention: a DistBackendError, timeouts worded "Timed out waiting <n>ms".
                raise for_torch(error, what, self._timeout) from error
            after()
        return self._completer.submit(PcclWork(result), finish)

    def _all_reduce(self, flat: torch.Tensor, red: "_Reduction", tag: int, out: Optional[torch.Tensor] = None
                    ) -> collectives.Pending:
        src = red.input(flat)
        if src is not flat and out is None:
            out = flat  # PREMUL_SUM reduces a scaled copy into the caller's tensor
        x, pop = _reducible(src, red.op)
        if x.numel() == 0:
            return collectives.Pending([])
        o = None if out is None else _reducible(out, red.op)[0]
        return collectives.Pending([self._comm.all_reduce_async(x, op=pop, out=o, tag=tag)])

    # -- all_reduce --------------------------------------------------------------------------------
    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> PcclWork:  # type: ignore[override]
        red = _Reduction(opts)
        staged = stage_all(tensors)
        red.check([s.flat for s in staged])
        tag, _, _ = self._begin()
        pending = [self._all_reduce(s.flat, red, tag) for s in staged]
        return self._submit(pending, list(tensors), lambda: _unstage_all(staged), "all_reduce")

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> PcclWork:
        return self.allreduce(tensors, opts)

    # -- broadcast ---------------------------------------------------------------------------------
    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> PcclWork:  # type: ignore[override]
        root = opts.rootRank if opts is not None else 0
        staged = stage_all(tensors, read=True)
        tag, rank, _ = self._begin()
        pending = [collectives.broadcast_async(self._comm, s.flat, root, tag=tag, rank=rank) for s in staged]
        after = (lambda: None) if rank == root else (lambda: _unstage_all(staged))
        return self._submit(pending, list(tensors), after, "broadcast")

    # -- all_gather --------------------------------------------------------------------------------
    @staticmethod
    def _check_gather(src_flat: torch.Tensor, out_flat: torch.Tensor, size: int) -> None:
        if out_flat.dtype != src_flat.dtype or out_flat.numel() != src_flat.numel() * size:
            raise InvalidArgumentError(
                f"all_gather output must hold {size} x {src_flat.numel()} elements of {src_flat.dtype}, got "
                f"{out_flat.numel()} of {out_flat.dtype}")

    def _gather_into(self, inp: torch.Tensor, out_flat: torch.Tensor, tag: int, rank: int,
                     size: int) -> collectives.Pending:
        src = stage(inp)
        self._check_gather(src.flat, out_flat, size)
        return collectives.all_gather_async(self._comm, src.flat, out_flat, tag=tag, rank=rank, world_size=size)

    def allgather(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor],  # type: ignore[override]
                  opts: Any = None, what: str = "all_gather") -> PcclWork:
        size = self.getSize()
        if len(output_lists) != len(inputs):
            raise InvalidArgumentError(f"{what} needs one output list per input tensor, got {len(output_lists)} "
                                       f"lists for {len(inputs)} inputs")
        srcs, copies = [], []
        for outs, inp in zip(output_lists, inputs):
            if len(outs) != size:
                raise InvalidArgumentError(f"all_gather needs {size} output tensors, got {len(outs)}")
            if any(o.numel() != inp.numel() for o in outs):
                raise InvalidArgumentError("all_gather output tensors must have as many elements as the input")
            src = stage(inp)
            scratch = empty_cpu(inp.numel() * size, inp.dtype, inp)
            self._check_gather(src.flat, scratch, size)
            srcs.append(src)
            copies.append((outs, scratch, inp.numel()))
        tag, rank, size = self._begin()
        pending = [collectives.all_gather_async(self._comm, src.flat, scratch, tag=tag, rank=rank, world_size=size)
                   for src, (_, scratch, _) in zip(srcs, copies)]

        def after() -> None:
            for outs, scratch, n in copies:
                for i, o in enumerate(outs):
                    o.copy_(scratch[i * n:(i + 1) * n].view(o.shape))
        return self._submit(pending, [t for outs in output_lists for t in outs], after, what)

    def all_gather_single(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> PcclWork:
        return self.all_gather_single_coalesced([output], [inp], opts)

    _allgather_base = all_gather_single  # type: ignore[assignment]

    def all_gather_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                    opts: Any = None) -> PcclWork:
        size = self.getSize()
        staged = [stage(out, read=False) for out in outputs]
        srcs = [stage(inp) for inp in inputs]
        for out, src in zip(staged, srcs):
            self._check_gather(src.flat, out.flat, size)
        tag, rank, size = self._begin()
        pending = [collectives.all_gather_async(self._comm, src.flat, out.flat, tag=tag, rank=rank, world_size=size)
                   for out, src in zip(staged, srcs)]
        return self._submit(pending, list(outputs), lambda: _unstage_all(staged), "all_gather_into_tensor")

    allgather_into_tensor_coalesced = all_gather_single_coalesced  # type: ignore[assignment]

    def allgather_coalesced(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor],
                            opts: Any = None) -> PcclWork:
        """``dist.all_gather_coalesced``: ``output_lists[r][j]`` receives rank r's ``inputs[j]``.

        The nesting is the transpose of :meth:`allgather`'s (``output_lists[j][r]``), and the inputs may
        differ in shape and dtype from each other (not across ranks)."""
        size = self.getSize()
        if len(output_lists) != size:
            raise InvalidArgumentError(
                f"all_gather_coalesced needs one output list per rank ({size}), got {len(output_lists)}")
        for r, outs in enumerate(output_lists):
            if len(outs) != len(inputs):
                raise InvalidArgumentError(
                    f"all_gather_coalesced: output list {r} has {len(outs)} tensors for {len(inputs)} inputs")
            for j, (o, i) in enumerate(zip(outs, inputs)):
                if o.dtype != i.dtype:
                    raise InvalidArgumentError(
                        f"all_gather_coalesced: output [{r}][{j}] is {o.dtype}, input {j} is {i.dtype}")
        per_input = [[output_lists[r][j] for r in range(size)] for j in range(len(inputs))]
        return self.allgather(per_input, inputs, opts, "all_gather_coalesced")

    # -- reduce_scatter ----------------------------------------------------------------------------
    def _reduce_scatter(self, staged_outputs: Sequence[Staged], input_flats: Sequence[torch.Tensor],
                        red: "_Reduction", what: str, result: list[torch.Tensor]) -> PcclWork:
        """Checks every pair first, then numbers the operation and issues one pccl reduce_scatter each."""
        size = self.getSize()
        red.check(input_flats)
        for out, flat in zip(staged_outputs, input_flats):
            if out.flat.dtype != flat.dtype or flat.numel() != out.flat.numel() * size:
                raise InvalidArgumentError(
                    f"{what} input must hold {size} x {out.flat.numel()} elements of {out.flat.dtype}, got "
                    f"{flat.numel()} of {flat.dtype}")
        tag, rank, size = self._begin()
        pending = []
        for out, flat in zip(staged_outputs, input_flats):
            x, pop = _reducible(red.input(flat), red.op)
            o, _ = _reducible(out.flat, red.op)
            pending.append(collectives.reduce_scatter_async(self._comm, x, o, op=pop, tag=tag, rank=rank,
                                                            world_size=size))
        return self._submit(pending, result, lambda: _unstage_all(staged_outputs), what)

    def reduce_scatter_single_coalesced(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor],
                                        opts: Any = None) -> PcclWork:
        red = _Reduction(opts)
        staged = [stage(o, read=False) for o in outputs]
        flats = [stage(i).flat for i in inputs]
        return self._reduce_scatter(staged, flats, red, "reduce_scatter_tensor", list(outputs))

    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced  # type: ignore[assignment]

    def reduce_scatter_single(self, output: torch.Tensor, inp: torch.Tensor, opts: Any = None) -> PcclWork:
        return self.reduce_scatter_single_coalesced([output], [inp], opts)

    _reduce_scatter_base = reduce_scatter_single  # type: ignore[assignment]

    def reduce_scatter(self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]],  # type: ignore[override]
                       opts: Any = None) -> PcclWork:
        red = _Reduction(opts)
        size = self.getSize()
        for ins in input_lists:
            if len(ins) != size:
                raise InvalidArgumentError(f"reduce_scatter needs {size} input tensors, got {len(ins)}")
        staged = [stage(o, read=False) for o in outputs]
        flats = [torch.cat([i.reshape(-1).cpu() for i in ins]) for ins in input_lists]
        return self._reduce_scatter(staged, flats, red, "reduce_scatter", list(outputs))

    # -- rooted collectives, built on the above ------------------------------------------------------
    def reduce(self, tensors: list[torch.Tensor], opts: Any = None) -> PcclWork:  # type: ignore[override]
        red = _Reduction(opts)
        root = opts.rootRank if opts is not None else 0
        staged = stage_all(tensors)
        red.check([s.flat for s in staged])
        tag, rank, _ = self._begin()
        if rank == root:
            pending = [self._all_reduce(s.flat, red, tag) for s in staged]
            return self._submit(pending, list(tensors), lambda: _unstage_all(staged), "reduce")
        # Non-root ranks contribute and keep their input as it was.
        pending = [self._all_reduce(s.flat, red, tag, out=torch.empty_like(s.flat)) for s in staged]
        return self._submit(pending, list(tensors), what="reduce")

    # gather, scatter and all_to_all are collectives (every rank issues them in the same order, so their
    # tag from _begin() names them), but each of their bytes travels once, sender to receiver, as a pccl
    # send/recv on that tag (see "point-to-point" below).
    def gather(self, output_lists: list[list[torch.Tensor]], inputs: list[torch.Tensor],  # type: ignore[override]
               opts: Any = None) -> PcclWork:
        root = opts.rootRank if opts is not None else 0
        tag, rank, size = self._begin()
        inp = inputs[0]
        src = stage(inp)
        if rank != root:
            handle = self._p2p(True, src.flat, self._peer(root, size, "gather"), tag)
            return self._submit([collectives.Pending([handle])], [])
        outs = output_lists[0]
        if len(outs) != size:
            raise InvalidArgumentError(f"gather needs {size} output tensors at the root, got {len(outs)}")
        if any(o.numel() != inp.numel() or o.dtype != inp.dtype for o in outs):
            raise InvalidArgumentError("gather output tensors must have the input's dtype and element count")
        staged = [stage(o, read=False) for o in outs]
        handles = [self._p2p(False, s.flat, self._peer(r, size, "gather"), tag)
                   for r, s in enumerate(staged) if r != rank]

        def after() -> None:
            staged[rank].flat.copy_(src.flat)
            _unstage_all(staged)
        return self._submit([collectives.Pending(handles)], list(outs), after)

    def scatter(self, outputs: list[torch.Tensor], input_lists: list[list[torch.Tensor]],  # type: ignore[override]
                opts: Any = None) -> PcclWork:
        root = opts.rootRank if opts is not None else 0
        tag, rank, size = self._begin()
        out = outputs[0]
        dst = stage(out, read=False)
        if rank != root:
            handle = self._p2p(False, dst.flat, self._peer(root, size, "scatter"), tag)
            return self._submit([collectives.Pending([handle])], [out], dst.unstage)
        ins = input_lists[0]
        if len(ins) != size:
            raise InvalidArgumentError(f"scatter needs {size} input tensors at the root, got {len(ins)}")
        if any(i.numel() != out.numel() or i.dtype != out.dtype for i in ins):
            raise InvalidArgumentError("scatter input tensors must have the output's dtype and element count")
        staged = [stage(i) for i in ins]
        handles = [self._p2p(True, s.flat, self._peer(r, size, "scatter"), tag)
                   for r, s in enumerate(staged) if r != rank]

        def after() -> None:
            dst.flat.copy_(staged[rank].flat)
            dst.unstage()
        return self._submit([collectives.Pending(handles)], [out], after)

    def _exchange_all(self, sends: list[torch.Tensor], recvs: list[torch.Tensor], tag: int, rank: int,
                      size: int) -> collectives.Pending:
        """Flat chunk j of sends goes to rank j and chunk i of recvs comes from rank i, as concurrent
        send/recvs; this rank's own chunk is copied by the returned Pending once they all succeeded.
        Each received chunk is published when it arrived whole, so after a failure every chunk of the
        output is either complete or unchanged."""
        if recvs[rank].numel() != sends[rank].numel():
            raise InvalidArgumentError(f"all_to_all: this rank sends itself {sends[rank].numel()} elements but "
                                       f"expects {recvs[rank].numel()}")
        handles = []
        for j in range(size):
            if j != rank:
                peer = self._peer(j, size, "all_to_all")
                handles.append(self._p2p(True, sends[j], peer, tag))
                handles.append(self._p2p(False, recvs[j], peer, tag))
        return collectives.Pending(handles, lambda: recvs[rank].copy_(sends[rank]))

    def alltoall_base(self, output: torch.Tensor, inp: torch.Tensor, output_split_sizes: list[int],
                      input_split_sizes: list[int], opts: Any = None) -> PcclWork:
        """all_to_all_single with equal or unequal splits along dim 0; each byte travels once."""
        tag, rank, size = self._begin()
        if output.dtype != inp.dtype:
            raise InvalidArgumentError(f"all_to_all_single: output is {output.dtype} but input is {inp.dtype}")

        def splits(t: torch.Tensor, given: list[int], name: str) -> list[int]:
            rows = t.shape[0] if t.dim() else 1
            if not given:
                if rows % size:
                    raise InvalidArgumentError(f"all_to_all_single: {name} has {rows} rows, not divisible by the "
                                               f"group size {size}; pass {name}_split_sizes")
                return [rows // size] * size
            if len(given) != size or any(int(n) < 0 for n in given) or sum(int(n) for n in given) != rows:
                raise InvalidArgumentError(f"all_to_all_single: {name}_split_sizes {list(given)} must be {size} "
                                           f"non-negative row counts summing to {rows}")
            return [int(n) for n in given]

        def chunks(flat: torch.Tensor, counts: list[int], t: torch.Tensor) -> list[torch.Tensor]:
            row = t.numel() // t.shape[0] if t.dim() and t.shape[0] else 1
            bounds = [0]
            for n in counts:
                bounds.append(bounds[-1] + n * row)
            return [flat[bounds[i]:bounds[i + 1]] for i in range(size)]

        ins, outs = splits(inp, input_split_sizes, "input"), splits(output, output_split_sizes, "output")
        src, dst = stage(inp), stage(output, read=False)
        pending = self._exchange_all(chunks(src.flat, ins, inp), chunks(dst.flat, outs, output), tag, rank, size)
        return self._submit([pending], [output], dst.unstage)

    all_to_all_single = alltoall_base  # type: ignore[assignment]

    def alltoall(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None) -> PcclWork:
        """all_to_all: inputs[j] goes to rank j and outputs[i] comes from rank i; each byte travels once."""
        tag, rank, size = self._begin()
        if len(inputs) != size or len(outputs) != size:
            raise InvalidArgumentError(f"all_to_all needs {size} input and {size} output tensors, got "
                                       f"{len(inputs)} and {len(outputs)}")
        src = [stage(t) for t in inputs]
        dst = [stage(t, read=False) for t in outputs]
        pending = self._exchange_all([s.flat for s in src], [d.flat for d in dst], tag, rank, size)
        return self._submit([pending], list(outputs), lambda: _unstage_all(dst))

    # -- barrier and point-to-point -----------------------------------------------------------------
    def barrier(self, opts: Any = None) -> PcclWork:
        tag, _, _ = self._begin()
        return self._submit([collectives.barrier_async(self._comm, tag=tag)], [], what="barrier")

    # send/recv/isend/irecv (and batch_isend_irecv, which torch runs as isend/irecv calls) are not
    # collectives: their ranks call them in different orders, so they never take a tag from _begin().
    # They use the caller's torch tag, which must lie below this group's collective tags, and match by
    # (sender, receiver, tag) in issue order.
    _pccl_ranks: Optional[list[int]] = None  # pccl rank of each torch rank (static groups; set at creation)

    def _peer(self, rank: Any, size: int, what: str) -> int:
        """The pccl rank of torch group rank `rank` (checked)."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
            raise InvalidArgumentError(f"{what}: rank {rank!r} is not a rank of this group of {size}")
        if self._dynamic or self._pccl_ranks is None:
            return rank
        return self._pccl_ranks[rank]

    def _p2p_begin(self, what: str) -> tuple[int, int]:
        """(rank, size) for a send/recv, without taking a collective tag; fails fast when unusable."""
        if self._closed:
            raise ClosedError("this pccl process group was shut down")
        if self._dynamic:
            return self._comm.rank, self._comm.world_size
        live = self._comm.world_size
        if live != self._size:
            raise PeerLostError(f"{what}: the pccl group has {live} of its {self._size} members; a member was lost. "
                                "Create a new group (or use wrap_communicator for dynamic membership)")
        return self._rank, self._size

    def _p2p(self, send: bool, flat: torch.Tensor, peer: int, tag: int) -> P2PHandle:
        """A pccl send/recv of flat: in its own dtype where pccl has it (so a dtype mismatch is
        detected), else as its bytes (bool, complex and other dtypes travel unchanged)."""
        if str(flat.dtype).replace("torch.", "") not in DTYPE_CODES:
            flat = flat.view(torch.uint8)
        return internals(self._comm).p2p_async(send, flat, peer, tag=tag)

    def _user_p2p(self, send: bool, tensors: list[torch.Tensor], peer_rank: Any, tag: Any) -> PcclWork:
        what, role = ("send", "dst") if send else ("recv", "src")
        rank, size = self._p2p_begin(what)
        if len(tensors) != 1:
            raise InvalidArgumentError(f"{what} takes exactly one tensor, got {len(tensors)}")
        peer = self._peer(peer_rank, size, what)
        if peer_rank == rank:
            raise InvalidArgumentError(f"{what}: {role}={peer_rank} is this rank; the pccl backend cannot {what} "
                                       f"{'to' if send else 'from'} itself")
        if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < self._tag_base:
            raise InvalidArgumentError(f"{what}: tag must be an int in [0, {self._tag_base}) with the pccl backend "
                                       f"(higher tags belong to this group's collectives), not {tag!r}")
        staged = stage(tensors[0], read=send)
        handle = self._p2p(send, staged.flat, peer, tag)
        return self._submit([collectives.Pending([handle])], list(tensors), (lambda: None) if send else staged.unstage)

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int = 0) -> PcclWork:
        """One tensor to group rank dst; the Work completes once dst holds all of it (do not modify the
        tensor before). Raises PeerLostError on both sides if either dies or leaves first."""
        return self._user_p2p(True, tensors, dst, tag)

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int = 0) -> PcclWork:
        """One tensor from group rank src; written only once all of it arrived (unchanged on failure)."""
        return self._user_p2p(False, tensors, src, tag)

    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> PcclWork:
        raise InvalidArgumentError(
            "recv/irecv without src (from any source) is not supported by the pccl backend: pccl matches each "
            "message by (sender, receiver, tag) so that both sides of a failed transfer agree on its fate. "
            "Pass src= (the sender's rank)")

    # -- lifetime ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Leaves the pccl group gracefully (if this group created its Communicator) and stops a master
        this group hosted. Called by ``dist.destroy_process_group()``."""
        if self._closed:
            return
        self._closed = True
        self._completer.stop()
        if self._owns_comm:
            try:
                self._comm.close()
            except Exception:  # noqa: BLE001 - leaving a broken group is not an error
                pass
        for fn in self._on_shutdown:
            fn()
        if self._master is not None:
            self._master.stop()

    def abort(self) -> None:
        self.shutdown()
