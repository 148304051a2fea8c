"""Which data-parallel rank this process is, as accelerate (or torchrun) set it up."""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size): from an initialised torch.distributed group, else the RANK / WORLD_SIZE
    environment variables that `accelerate launch` and `torchrun` export, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
