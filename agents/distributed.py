"""Data parallelism on `torch.distributed`, for every agent on the core: the few collectives it needs.

Launch with ``torchrun --nproc_per_node=N experiments/run_ppo.py ...`` (or ``accelerate launch --multi_gpu``,
which sets the same environment variables). Each rank owns its env rows and generates and scores
its own batch; the core then makes every rank use the same numbers:

* gradients are summed across ranks after each minibatch's backward passes (`all_reduce_gradients`),
  with every loss normalised by *global* counts (tokens, micro-batches), so the result equals one
  process holding all the rows;
* batch statistics are reduced with `reduce_sum` (whitening moments, the KL fed to the adaptive
  controller, GRPO's batch std, REINFORCE's baselines, the minibatch approx-KL that decides
  ``target_kl``);
* rank 0 alone logs, evaluates and writes files; checkpoints gather every rank's RNG and env state.

Without an initialised process group every helper is the identity, so one process pays nothing.
Imports only torch and the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env() -> dict[str, Any] | None:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment
    (``WORLD_SIZE`` > 1): NCCL for CUDA tensors beside gloo for CPU ones when CUDA is present, else
    gloo. On CPU, each rank gets its share of the cores as torch threads, so N ranks on N cores do
    not oversubscribe them. Returns the layout, or ``None`` for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            # NCCL for CUDA tensors, gloo for any CPU tensor (a user's reward wrapper, say): the core
            # itself reduces tensors on the model's device only.
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    if not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // local_world))
    return {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "rank": dist.get_rank(),
        "local_rank": local_rank,
        "threads": torch.get_num_threads(),
    }


def local_device(device: str | torch.device) -> torch.device:
    """``"auto"``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is present, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cpu")
    return torch.device(device)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Σ over ranks (a new tensor; the identity in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Sum every gradient across ranks in one flat collective (losses are already globally normalised).
    Sharded (FSDP, `DTensor`) gradients are skipped: FSDP's reduce-scatter has summed them."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None and not isinstance(p.grad, DTensor)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights (as DDP does at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
