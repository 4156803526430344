"""torchrun / DDP plumbing: process group setup, rank checks, collectives that are no-ops alone."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_device(device: str) -> None:
    """A one-line VtpError (exit 2) naming what to do when `device` is not usable here; call before any write."""
    from ..errors import VtpError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VtpError(f"device: {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            fix = ("check the NVIDIA driver with nvidia-smi" if torch.version.cuda else
                   f"install a CUDA build of torch (this one, {torch.__version__}, is CPU-only)")
            raise VtpError(f"device: {device!r} but torch sees no CUDA GPU here; run with --set device=cpu, "
                           f"or {fix}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VtpError(f"device: {device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                           "use cuda:0..cuda:N-1 or --set device=cuda")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VtpError(f"device: {device!r} but MPS is not available here; run with --set device=cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise VtpError(f"device: {device!r} is not supported; use cpu, cuda or cuda:N")


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local, device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast(info: DistInfo, obj):
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    """Leave the process group and free it now, while the interpreter is whole."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
        # A reference cycle (the DDP wrapper) keeps the gloo group alive past destroy_process_group. Freed by
        # the GC at interpreter exit, its worker threads drop their last work objects, need the GIL that is
        # gone, and the process aborts (SIGABRT) after a successful run. Collecting here joins them cleanly.
        gc.collect()


def gather_objects(info: DistInfo, obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others); collective: all ranks must call it."""
    if not info.enabled:
        return [obj]
    box = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, box, dst=0)
    return box
