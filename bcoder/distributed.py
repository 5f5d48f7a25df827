"""torch.distributed for bcoder.train: the process group, devices, sharding and rank-0 I/O.

`torchrun --nproc_per_node N -m bcoder.train ...` sets WORLD_SIZE, RANK, LOCAL_RANK and
LOCAL_WORLD_SIZE; `init()` then joins the process group (NCCL on GPUs, Gloo on CPUs). Without
WORLD_SIZE (or with WORLD_SIZE=1) nothing is initialised and every helper here is the identity
of a single process: rank 0 of 1, sums of one term, gathers of one object.
"""
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from bcoder.files import replace_directory
from bcoder.sandbox import Sandbox, SandboxConfig


def active():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if active() else 1


def rank():
    return dist.get_rank() if active() else 0


def is_main():
    return rank() == 0


def local_rank():
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def local_world_size():
    """Processes of this run on this machine (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if active() else 1


def device():
    """cuda:LOCAL_RANK where CUDA is available, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def init():
    """Joins the process group when launched with WORLD_SIZE > 1; returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not active():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return device()


def shutdown():
    if active():
        dist.destroy_process_group()


def barrier():
    if active():
        dist.barrier()


def all_sum(values):
    """Element-wise sums over ranks of a list of numbers, as float64 (one all-reduce)."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(obj):
    """[rank 0's obj, rank 1's, ...] on rank 0; None on the other ranks (a picklable obj)."""
    if not active():
        return [obj]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast(obj):
    """Rank 0's obj, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """fn() run by rank 0 alone, its result (or its exception, re-raised) given to every rank."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            error = exc
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


def shard(items):
    """This rank's items: every world_size-th one from its rank on (deterministic, any length)."""
    return list(items)[rank()::world_size()]


def batch_slice(global_batch):
    """This rank's global_batch / world_size rows of a global batch: every world_size-th row from its
    rank on (strided, so that each rank gets its share of a batch's kinds: ground truth first,
    generated programs after, in a replay batch)."""
    n = world_size()
    if global_batch % n:
        raise ValueError(f"the global batch of {global_batch} does not split over {n} processes: "
                         f"use a batch size that {n} divides")
    return slice(rank(), global_batch, n)


def contiguous_part(length):
    """This rank's contiguous block of range(length) (the first ranks get one more when uneven)."""
    n, r = world_size(), rank()
    base, extra = divmod(length, n)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def sandbox(timeout, workers=0, answers="strict"):
    """A Sandbox on this machine's cores: `workers` slots (0: the cores over the local processes), its
    uids (as root) apart from those of the other ranks on the machine, answers compared under `answers`."""
    workers = workers or max(1, (os.cpu_count() or 1) // local_world_size())
    uid_base = SandboxConfig.uid_base + local_rank() * 65536
    return Sandbox(SandboxConfig(timeout=timeout, uid_base=uid_base, answers=answers), workers=workers)


# ----- wrapping the trained model -----

def wrap(model, fsdp=False):
    """The model to train: itself in one process, DistributedDataParallel or (fsdp) FSDP2's
    `fully_shard` over every transformer block and the root across several."""
    if not active():
        return model
    if fsdp:
        block_types = {name for m in model.modules() for name in getattr(m, "_no_split_modules", None) or ()}
        blocks = [m for m in model.modules() if type(m).__name__ in block_types]
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [device().index] if device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def fsdp_units(model):
    """The modules that FSDP2 shards in `model` (none outside a process group)."""
    if not active():
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


# ----- full checkpoints of a model that may be sharded -----
# A checkpoint always holds the full (unsharded) model and optimiser state, so that any number of
# processes, with or without FSDP, resumes it.

def load_full_state(model, state, sharded, make_optimizer):
    """Before wrapping: loads a checkpoint's full model state into `model`; returns its optimiser
    state as the optimiser made after wrapping must load it (`load_optimizer_state`). An optimiser
    state saved without FSDP is keyed by parameter index; a sharded run needs it keyed by name, so
    it goes through an unsharded optimiser (`make_optimizer()`) first."""
    model.load_state_dict(state["model"])
    if sharded and not state.get("sharded", False):
        plain = make_optimizer()
        plain.load_state_dict(state["optimizer"])
        return get_optimizer_state_dict(model, plain, options=StateDictOptions(full_state_dict=True)), True
    return state["optimizer"], state.get("sharded", False)


def load_optimizer_state(model, optimizer, optimizer_state, keyed_by_name):
    if keyed_by_name:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optimizer_state)


def full_state(model, optimizer, sharded):
    """(model state, optimiser state), full, on the CPU for a sharded model (gathered from every rank:
    all ranks call this)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def unsharded_on_main(model, build):
    """The model whole on rank 0 (None on the others): itself, or under FSDP a fresh model from build()
    with the full state that every rank gathers to rank 0 (all ranks call this)."""
    if fsdp_units(model):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not is_main():
            return None
        model = build().to(device())
        model.load_state_dict(state)
    return model if is_main() else None


def save_pretrained_on_main(model, directory, build, also=()):
    """model.save_pretrained(directory) by rank 0, the full model also under FSDP (unsharded_on_main),
    with `also` (a tokenizer) saved beside it; the directory is replaced whole (bcoder.files)."""
    model = unsharded_on_main(model, build)
    if model is not None:
        def save(temporary):
            for item in (model, *also):
                item.save_pretrained(temporary)

        replace_directory(directory, save)
    barrier()
