"""The process group of a training run started by ``torchrun`` (env:// init), or a single process.

torchrun (single machine: ``--nproc-per-node N``; several: ``--nnodes/--node-rank/--master-addr/
--master-port`` or ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``) sets RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in every process. Without them the run is
one plain process. A half-set environment, a rank outside the world, more processes on a machine than
it has GPUs or a backend that cannot work with the device are refused with one line before any
process waits on another.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Type

import torch
import torch.distributed as dist

from sacvit_deploy.core.errors import SacvitError

_REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH = "start several processes with torchrun, e.g. torchrun --nproc-per-node 2 --no-python sacvit-deploy train ..."
BACKENDS = ("auto", "nccl", "gloo")


class WorldError(SacvitError):
    """A distributed launch that cannot work (environment, devices, backend, rendezvous)."""


@dataclass(frozen=True)
class World:
    """This process's place in the run; ``size == 1`` is the plain single-process run."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1
    backend: Optional[str] = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise WorldError(f"{name}={env[name]!r} is not an integer; {_LAUNCH}") from None


def world_from_env(env: Optional[Mapping[str, str]] = None) -> World:
    """Read (and check) what torchrun set; no process group is created here."""
    env = os.environ if env is None else env
    present = [k for k in _REQUIRED if k in env]
    if not present:
        return World()
    missing = [k for k in _REQUIRED if k not in env]
    if missing:
        raise WorldError(
            f"a distributed launch needs {', '.join(_REQUIRED)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; {_LAUNCH}"
        )
    rank, size, local_rank = _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
    local_size = _int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else size
    if size < 1:
        raise WorldError(f"WORLD_SIZE={size} must be at least 1; {_LAUNCH}")
    if not 0 <= rank < size:
        raise WorldError(f"RANK={rank} is outside WORLD_SIZE={size} (ranks are 0..{size - 1}); {_LAUNCH}")
    if not 0 <= local_rank < local_size or local_size > size:
        raise WorldError(
            f"LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={local_size} and WORLD_SIZE={size} is not a "
            f"valid placement; {_LAUNCH}"
        )
    return World(rank, local_rank, size, local_size, backend=None)


def resolve_device(device: str, amp: Optional[str], world: World) -> torch.device:
    """cpu, cuda, cuda:N or auto; under torchrun each process takes cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise WorldError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WorldError(
            f"--device {device}: this torch build or machine has no CUDA; pass --device cpu "
            "or install a CUDA build of torch"
        )
    if amp == "fp16" and not device.startswith("cuda"):
        raise WorldError(
            "--amp needs --device cuda (float16 autocast); drop --amp to train in float32 on CPU, "
            "or pass --amp-dtype bf16"
        )
    if device.startswith("cuda") and world.size > 1:
        if device != "cuda":
            raise WorldError(
                f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
                "and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        count = torch.cuda.device_count()
        if world.local_rank >= count:
            raise WorldError(
                f"LOCAL_RANK={world.local_rank}: this machine has {count} visible GPU(s) for "
                f"{world.local_size} processes; pass torchrun --nproc-per-node {count} (or fewer)"
            )
        device = f"cuda:{world.local_rank}"
    return torch.device(device)


def init_world(device: torch.device, world: World, backend: str = "auto", timeout_s: float = 1800) -> World:
    """Join the process group (env://) when torchrun started several processes."""
    if backend not in BACKENDS:
        raise WorldError(f"--dist-backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if world.size == 1:
        return world
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise WorldError("--dist-backend nccl needs --device cuda; use gloo to train on CPUs")
    available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}
    if not available[backend]:
        raise WorldError(
            f"--dist-backend {backend}: this torch build has no {backend}; use the other backend"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        try:
            dist.init_process_group(
                backend,
                init_method="env://",
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        except (RuntimeError, ValueError, TimeoutError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise WorldError(
                f"rank {world.rank} could not join the process group at {where} ({first}); check torchrun's "
                "--nnodes, --node-rank, --master-addr/--master-port (or --rdzv-endpoint) and that the port is open"
            ) from None
    return World(world.rank, world.local_rank, world.size, world.local_size, backend)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives (each a no-op in a single process) -------------------------------------------------
def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, world: World) -> List[Any]:
    if not world.distributed:
        return [obj]
    out: List[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    if not world.distributed:
        return obj
    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def agree(error: Optional[str], world: World, cls: Type[SacvitError] = WorldError) -> None:
    """Raise the same one-line error on every process when any of them found one (nobody hangs)."""
    errors = all_gather_objects(error, world)
    for rank, message in enumerate(errors):
        if message:
            prefix = f"rank {rank}: " if world.size > 1 and rank != 0 else ""
            raise cls(prefix + message)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
