"""Running ``camlib explain`` as several processes under ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts one process per
device and tells each its place through environment variables: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
:func:`init_distributed` reads them, joins the process group (NCCL when the
device is a GPU, gloo on the CPU), and returns a :class:`DistContext` whose
few collective operations the pipeline needs: broadcast one object from rank 0,
gather objects on rank 0, and a barrier. They all run over gloo (a gloo
sub-group when the main backend is NCCL), with a timeout, so that a process
that died makes the others fail after ``timeout`` seconds instead of waiting
forever (torchrun normally stops them at once anyway).

Without those variables, or with ``WORLD_SIZE=1``, nothing is initialised and
the operations are trivial.

Example:
    >>> ctx = DistContext()
    >>> ctx.is_main, ctx.broadcast({"a": 1}), ctx.gather(3)
    (True, {'a': 1}, [3])
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["DistContext", "env_rank", "init_distributed"]


def env_rank() -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables; ``(0, 1, 0)`` without them.

    Raises:
        ValueError: If the variables are not integers or are inconsistent.
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    values = []
    for name, default in zip(names, ("0", "1", None)):
        text = os.environ.get(name, default)
        if text is None:
            text = os.environ.get("RANK", "0")
        try:
            values.append(int(text))
        except ValueError as err:
            raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from err
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


@dataclass
class DistContext:
    """This process's place in the run, and the collectives the pipeline uses.

    Attributes:
        rank: This process's rank, 0 to ``world_size - 1``.
        world_size: The number of processes.
        local_rank: The rank on this machine (which GPU to use).
        backend: ``"gloo"``, ``"nccl"`` or None (one process).
        group: The gloo group the collectives run over (None: the default group).
        owns_group: Whether :func:`init_distributed` created the process group
            (and :meth:`close` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    group: Any = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which plans the run and merges the manifests."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.backend is not None

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank (pickled)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj``, in rank order, on rank 0; None on the others."""
        if not self.distributed:
            return [obj]
        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.distributed:
            dist.barrier(group=self.group)

    def close(self) -> None:
        """Leave the process group (harmless twice)."""
        if self.distributed and dist.is_initialized():
            if self.owns_group:
                dist.destroy_process_group()
            elif self.group is not None:
                dist.destroy_process_group(self.group)
        self.backend = None
        self.group = None


def init_distributed(device: torch.device, timeout_s: float) -> DistContext:
    """Join torchrun's process group, if this process was started by torchrun.

    Args:
        device: The device this process computes on: NCCL is used for CUDA
            devices, gloo otherwise.
        timeout_s: How long a collective (and joining the group) may wait for
            the other processes before failing.

    Returns:
        The :class:`DistContext`; a single-process one when ``WORLD_SIZE`` is
        unset or 1.
    """
    rank, world, local = env_rank()
    if world == 1:
        return DistContext(rank, world, local)
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run a single process")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    else:
        backend = dist.get_backend()
    group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return DistContext(rank, world, local, backend, group, owns)
