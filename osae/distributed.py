"""The process group that `accelerate launch` or torchrun describe, and the few collectives osae needs."""

from __future__ import annotations

import os

import torch


def init_distributed() -> tuple[int, int]:
    """(rank, world): joins the process group described by the environment (gloo on CPU, nccl on GPU),
    or (0, 1) for a single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def gather(obj, world: int) -> list:
    """Every rank's `obj`, on every rank."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, world: int):
    """Rank 0's `obj`, on every rank."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Collective:
    """The reductions an SAE step needs across the processes that share one batch, each holding an equal,
    contiguous slice of it (rank r holds rows r*b .. (r+1)*b). With one process every call is the identity,
    so architectures call them unconditionally and a 1-process run pays nothing."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | str | None = None):
        """`device`: where this process computes; nccl reduces only tensors on it, so the small CPU flags
        and counters of the trainer travel there and back (gloo takes them where they are)."""
        self.rank, self.world = rank, world
        self.device = torch.device(device) if device is not None else None

    def _work(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of `t` that the backend can reduce: int32 for bool (gloo reduces bool poorly), on the
        backend's device."""
        import torch.distributed as dist

        dtype = torch.int32 if t.dtype == torch.bool else t.dtype
        needs_cuda = dist.get_backend() == "nccl" and t.device.type != "cuda"
        device = (
            (self.device if self.device is not None and self.device.type == "cuda" else "cuda")
            if needs_cuda
            else t.device
        )
        return t.to(device=device, dtype=dtype, copy=True)

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        work = self._work(t)
        dist.all_reduce(work, op=ops[op])
        return work.to(device=t.device, dtype=t.dtype)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over processes (a new tensor when world > 1)."""
        return self._reduce(t, "sum")

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, "max")

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, "min")

    def reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        """`op` is sum, max, min, or global (the value is already the same on every process)."""
        if op == "global":
            return t
        if op not in ("sum", "max", "min"):
            raise ValueError(f"unknown reduction {op!r}")
        return self._reduce(t, op)

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's `t` (equal shapes), concatenated along dim 0 in rank order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        work = self._work(t)
        parts = [torch.empty_like(work) for _ in range(self.world)]
        dist.all_gather(parts, work)
        return torch.cat(parts).to(device=t.device, dtype=t.dtype)

    def mean_grads_(self, params) -> None:
        """Average the gradients of `params` over processes (equal slices: the gradient of the whole batch)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world


SINGLE = Collective()
