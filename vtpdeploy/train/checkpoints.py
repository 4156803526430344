"""Seeds, RNG states and resume checkpoints of the training loop (what makes a killed run resume exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError
from ..fileio import atomic_path
from .distributed import DistInfo


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random` (timm's crop augmentation draws from the latter)."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)


def rng_state() -> dict:
    """torch, CUDA, numpy and Python RNG states, as tensors and plain types (weights_only-loadable)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2])},
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype("uint32"), state["numpy"]["pos"], 0, 0.0))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU of the saving run; a resume with fewer GPUs restores those that exist
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def resume_rng(state: dict, dist: DistInfo, log: Callable[[str], None] | None = None) -> dict | None:
    """This rank's RNG state from a checkpoint, or None (with a warning) when the world size changed.

    Checkpoints hold every rank's state (`rng_per_rank`); older ones only rank 0's (`rng`), which is
    right for a single process only.
    """
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == dist.world_size:
        return per_rank[dist.rank]
    if per_rank is None and dist.world_size == 1:
        return state.get("rng")
    saved = len(per_rank) if per_rank is not None else "unknown"
    if log:
        log(f"warning: checkpoint RNG states are from world size {saved}, this run has {dist.world_size}: "
            f"the resumed epoch's augmentation draws differ from an uninterrupted run")
    return None


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


_CHECKPOINTS_WRITTEN: dict[str, int] = {}


def crash_after_checkpoint_if_asked(stage: str) -> None:
    """Test hook: VTPDEPLOY_CRASH_AFTER_CHECKPOINT=<stage>:<n> SIGKILLs this process right after the n-th
    checkpoint of `stage` is written, so kill -9 resume tests need no polling and no sleeps."""
    import os
    import signal

    spec = os.environ.get("VTPDEPLOY_CRASH_AFTER_CHECKPOINT")
    if not spec:
        return
    _CHECKPOINTS_WRITTEN[stage] = _CHECKPOINTS_WRITTEN.get(stage, 0) + 1
    if spec == f"{stage}:{_CHECKPOINTS_WRITTEN[stage]}":
        os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable resume checkpoint ({str(exc).splitlines()[0][:120]}); delete it to restart the stage") from None
