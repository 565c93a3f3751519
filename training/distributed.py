"""Training across processes with torch's own machinery (docs/training.md "Training on
several GPUs"): ``harken-train train --nproc N`` starts torch's elastic launcher
(``torch.distributed.run``, the code behind ``torchrun``), which runs ``python -m
harken.training train ...`` N times with RANK, WORLD_SIZE and LOCAL_RANK set; a user may
as well run ``torchrun --nproc_per_node N -m harken.training train ...`` themselves.

Each process joins one process group (NCCL on CUDA, one GPU per process, cuda:LOCAL_RANK;
gloo on CPU) and the shared loop (training/trainer.py ``fit``) wraps the network in
``DistributedDataParallel``. Sharding is done on the batches the method draws itself:
every process draws the same seeded batch (the methods draw their own epochs: random
windows, mixup partners, augmentations) and trains on its own equal slice of it, so the
global batch is the method's ``batch_size`` whatever N, the data order for a seed is the
one a single process sees, and N = 1 is the plain path exactly. Validation is decided on
rank 0 and broadcast, so early stopping is the same on every rank; only rank 0 writes the
run (and shows the progress bar). Why not ``DistributedSampler``: it would draw the
epoch's order itself, a different order from the one the methods' seeds have always given.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from harken.common.errors import HarkenError, UsageError

Batch = tuple[torch.Tensor, ...]
# How long a rank waits for the others (docs/training.md "Training on several GPUs"):
# WAIT where rank 0 legitimately works alone (it fits the score state and writes a run while
# the others go on to the next machine type and wait for it at the first collective there);
# STEP_WAIT at every other collective, where all ranks do the same work and one that is
# later than that is stuck; RENDEZVOUS for all processes to join at the start.
WAIT = timedelta(hours=2)
STEP_WAIT = timedelta(minutes=10)
RENDEZVOUS = timedelta(minutes=5)
# more CPU processes than this many per core is refused (docs/training.md): each one extracts
# the features and holds its own copy of torch
PER_CORE = 4
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class TrainingFailed(HarkenError):
    """A rank of a distributed run failed: named by rank in one line; the rank's own
    message is printed above it by that rank."""


class NotTheWriter(Exception):
    """Raised on ranks other than 0 once the network is trained: rank 0 alone fits the
    score state and writes the run; the command goes on to the next machine type."""


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def writer(self) -> bool:
        return self.rank == 0


_current: Ranks | None = None


def launched() -> bool:
    """Whether this process was started by torch's launcher (torchrun sets all three)."""
    return all(k in os.environ for k in LAUNCHER_ENV)


def current() -> Ranks | None:
    """The process group this process joined (``start``), or None: the plain path."""
    return _current


def _env_int(key: str) -> int:
    value = os.environ.get(key, "")
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {key}={value!r}: expected a whole number "
                         "(set by torchrun)") from None


def check_env() -> None:
    """A torchrun environment set by hand, refused in one line when it cannot work: some of
    RANK, WORLD_SIZE, LOCAL_RANK without the others (torchrun sets all three), a rank outside
    0..WORLD_SIZE-1 (it would wait for its peers forever), no MASTER_ADDR/MASTER_PORT."""
    given = [k for k in LAUNCHER_ENV if k in os.environ]
    if not given:
        return
    if len(given) < len(LAUNCHER_ENV):
        missing = [k for k in LAUNCHER_ENV if k not in os.environ]
        raise UsageError(f"environment variable {'/'.join(given)} set without "
                         f"{'/'.join(missing)}: torchrun sets all three; unset "
                         f"{'/'.join(given)} to train in one process, or use --nproc N")
    rank, world, local = (_env_int(k) for k in LAUNCHER_ENV)
    if world < 1:
        raise UsageError(f"environment variable WORLD_SIZE={world}: expected 1 or more processes")
    for key, value in (("RANK", rank), ("LOCAL_RANK", local)):
        if not 0 <= value < world:
            raise UsageError(f"environment variable {key}={value}: expected 0 to {world - 1} "
                             f"(WORLD_SIZE={world})")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(key):
            raise UsageError(f"environment variable {key} not set: RANK/WORLD_SIZE/LOCAL_RANK "
                             "need MASTER_ADDR and MASTER_PORT (torchrun sets them); or "
                             "start the processes with harken-train train --nproc N")
    port = _env_int("MASTER_PORT")
    if not 0 < port < 65536:
        raise UsageError(f"environment variable MASTER_PORT={port}: expected a port, 1 to 65535")


def covered(cls: type) -> bool:
    """Whether method class ``cls`` trains through the shared loop with data parallelism
    (``TorchMethod.data_parallel``)."""
    return bool(getattr(cls, "data_parallel", False))


def covered_names() -> list[str]:
    from harken.training.methods import METHODS
    return sorted(name for name, cls in METHODS.items() if covered(cls))


def check_method(name: str) -> None:
    """Refuse, in one line, a method the distributed loop does not train."""
    from harken.training.methods import method_class
    cls = method_class(name)
    if covered(cls):
        return
    why = getattr(cls, "serial_reason", "") or "trains no network (nothing for several processes to share)"
    raise UsageError(f"--nproc: {name} {why}; methods trained across processes: "
                     f"{', '.join(covered_names())}")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                  # not Linux
        return os.cpu_count() or 1


def check_batch(batch_size: int | None, world: int, flag: str) -> None:
    """Each rank trains on its slice of every batch (``rows``), which needs 2 rows (batch
    norm): a ``batch_size`` under 2 per process would take no step at all, so it is refused
    before any process starts."""
    if batch_size is not None and world > 1 and batch_size // world < 2:
        raise UsageError(f"{flag}: batch_size {batch_size} gives each of the {world} processes "
                         f"under 2 rows of a batch (batch norm needs 2), so nothing would train; "
                         f"give --set batch_size={2 * world} or more, or at most "
                         f"{max(1, batch_size // 2)} processes")


def check_nproc(nproc: int, device: torch.device) -> None:
    """``--nproc`` against the machine: at least 1; on CUDA at most one process per GPU
    (NCCL); on CPU more processes than cores is allowed, with a warning, up to ``PER_CORE``
    per core (each process extracts the features and holds torch itself)."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: expected 1 or more processes")
    if device.type != "cuda" and nproc > PER_CORE * cpu_cores():
        raise UsageError(f"--nproc {nproc}: this machine has {cpu_cores()} CPU cores; give at "
                         f"most {PER_CORE * cpu_cores()} processes ({PER_CORE} per core)")
    if device.type == "cuda":
        if device.index is not None and nproc > 1:
            raise UsageError(f"--device {device}: with --nproc {nproc} each process takes its "
                             "own GPU (cuda:LOCAL_RANK); give --device cuda or auto")
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise UsageError(f"--nproc {nproc}: this machine has {gpus} CUDA GPU(s) and NCCL "
                             "runs one process per GPU; give --nproc at most "
                             f"{gpus}, or --device cpu to train on CPU processes (gloo)")
    elif nproc > cpu_cores():
        print(f"harken-train: warning: --nproc {nproc} on {cpu_cores()} CPU cores: the "
              "processes share cores and train slower than fewer would", file=sys.stderr)


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m harken.training ARGV`` on ``nproc`` processes through torch's elastic
    launcher (``torch.distributed.run``, one machine, a free port). A rank that fails stops
    the others (the launcher's own rule); it is named here in one line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}",
                                         "--max-restarts=0", "-m", "harken.training"])
    # set here, not parsed: the launcher's parser would read an option of ours that starts
    # like one of its own (argparse takes prefixes)
    args.training_script_args = list(argv)
    given = os.environ.get("OMP_NUM_THREADS")
    # torchrun gives each process 1 thread when unset; on CPU a fair share of the cores
    os.environ["OMP_NUM_THREADS"] = given or str(max(1, cpu_cores() // nproc))
    # the launcher's own log lines (closing signals, its failure table) would be mixed into
    # the one line below; its errors are said there
    # (torch gives each of its loggers a level of its own: each one is quietened)
    quiet = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
             if name.startswith(("torch.distributed.elastic", "torch.distributed.run"))]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException:
        # Ctrl-C or SIGTERM to the launcher: it has stopped the processes; the plain path's
        # ending (harken/common/clitools.py: "interrupted", 130)
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = (f"exit status {failure.exitcode}; its own message is above" if failure.exitcode >= 0
               else f"killed by signal {-failure.exitcode}, no message of its own"
               if -failure.exitcode == signal.SIGKILL
               else f"signal {-failure.exitcode}; its own message is above")
        raise TrainingFailed(f"training on {nproc} processes stopped: rank {rank} failed first "
                             f"({how})") from None
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        if given is None:
            del os.environ["OMP_NUM_THREADS"]
    return 0


def watch_parent(parent: int, on_loss: Callable[[], None], every: float = 1.0) -> threading.Thread:
    """A daemon thread that calls ``on_loss`` once this process's parent is no longer
    ``parent`` (it died: the process was handed to init). torch's launcher starts each rank in
    a session of its own with no parent-death signal, so a launcher killed with SIGKILL (the
    OOM killer, a scheduler) would leave its ranks training on as orphans."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        on_loss()
    thread = threading.Thread(target=watch, name="harken-parent-watch", daemon=True)
    thread.start()
    return thread


def _orphaned() -> None:
    print(f"harken-train [rank {os.environ.get('RANK')}]: the launcher is gone; stopping",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)   # the usual stop first (a signal handler may clean up)
    time.sleep(30)
    os._exit(143)                          # stuck in a collective: leave without it


def start(device: torch.device) -> Ranks:
    """Join the process group the launcher set up: NCCL and cuda:LOCAL_RANK on CUDA,
    gloo on CPU. Once per process."""
    global _current
    if _current is not None:
        return _current
    import torch.distributed as dist
    check_env()
    rank, world, local = (_env_int(k) for k in LAUNCHER_ENV)
    if "TORCHELASTIC_RUN_ID" in os.environ:      # started by torch's launcher: die with it
        watch_parent(os.getppid(), _orphaned)
    if device.type == "cuda":
        if device.index is not None and world > 1:
            raise UsageError(f"--device {device}: under torchrun each process takes its own "
                             "GPU (cuda:LOCAL_RANK); give --device cuda or auto")
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s); NCCL runs one process per GPU")
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        # the rendezvous gets a short timeout of its own: a process that never comes (a
        # hand-set WORLD_SIZE too large) ends the run in minutes, not after WAIT
        dist.init_process_group(backend, timeout=RENDEZVOUS, rank=rank, world_size=world)
    except dist.DistNetworkError as exc:
        if "EADDRINUSE" in str(exc) or "address already in use" in str(exc).lower():
            raise UsageError(f"environment variable MASTER_PORT={os.environ['MASTER_PORT']}: the "
                             f"port is in use on {os.environ['MASTER_ADDR']}; choose another "
                             "(or use --nproc N, which picks a free one)") from None
        raise UsageError(f"cannot reach the processes' meeting point MASTER_ADDR:MASTER_PORT = "
                         f"{where} ({_first_line(exc)})") from None
    except (dist.DistStoreError, dist.DistError) as exc:
        raise TrainingFailed(f"waited {_span(RENDEZVOUS)} at {where} for the "
                             f"{world} processes of WORLD_SIZE={world}; not all came "
                             f"({_first_line(exc)})") from None
    except ValueError as exc:           # torch's own check of the environment
        raise UsageError(f"torchrun environment: {_first_line(exc)}") from None
    _set_timeout(STEP_WAIT)
    _current = Ranks(rank, world, local, backend)
    return _current


def _span(wait: timedelta) -> str:
    seconds = int(wait.total_seconds())
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def _first_line(exc: BaseException) -> str:
    return re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [""])[0])[:120]


def _set_timeout(wait: timedelta) -> None:
    """The default process group's timeout for the collectives that follow."""
    from torch.distributed.distributed_c10d import _set_pg_timeout
    _set_pg_timeout(wait)


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank is gone (it crashed or
    was refused): that rank names its own error; this one only says it lost it."""
    import torch.distributed as dist
    text = str(exc)
    return _current is not None and (isinstance(exc, getattr(dist, "DistBackendError", ()))
                                     or "closed by peer" in text or "remote worker" in text
                                     or "Connection reset" in text or timed_out(exc))


def timed_out(exc: BaseException) -> bool:
    """Whether a collective gave up waiting (STEP_WAIT, or WAIT) for a rank that is alive but
    not coming: stuck or stopped, not crashed."""
    return "timed out" in str(exc).lower()


def lost_line(exc: BaseException) -> str:
    """The one line a rank says when a collective fails for want of the others."""
    if timed_out(exc):
        return (f"the other processes did not come to the same step within "
                f"{_span(STEP_WAIT)} (one is stuck or stopped; "
                f"{_first_line(exc)[:80]}); stopping")
    return (f"lost the other processes ({_first_line(exc)[:100]}); the rank that failed "
            "first is named below")


def stop() -> None:
    global _current
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


def local_device(device: torch.device) -> torch.device:
    """``cuda`` becomes this process's GPU (cuda:LOCAL_RANK) under the launcher."""
    if _current is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", _current.local_rank)
    return device


# -- what the training loop calls ---------------------------------------------------------

class _LossModule(nn.Module):
    """The network with the method's loss as its forward: DistributedDataParallel hooks the
    gradients of what its forward ran, and a method's loss reads the network its own way
    (its branches, several heads), not through ``model(x)``."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Batch], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Batch) -> torch.Tensor:
        return self._loss_fn(batch)


def data_parallel(model: nn.Module, loss_fn: Callable[[Batch], torch.Tensor],
                  device: torch.device) -> Callable[[Batch], torch.Tensor]:
    """``loss_fn`` through DistributedDataParallel over ``model``: gradients averaged across
    ranks in backward, rank 0's buffers (batch-norm statistics) sent to the others at
    each step (DDP's default), rank 0's weights to all at the start."""
    from torch.nn.parallel import DistributedDataParallel
    # building it is the first collective of a machine type: the others may wait here while
    # rank 0 fits the previous type's score state and writes its run (WAIT); the training
    # steps after it are in step on every rank (STEP_WAIT)
    _set_timeout(WAIT)
    try:
        ddp = DistributedDataParallel(_LossModule(model, loss_fn),
                                      device_ids=[device.index] if device.type == "cuda" else None)
    finally:
        _set_timeout(STEP_WAIT)
    return ddp


def rows(batch: Batch, rank: int, world: int) -> Batch | None:
    """This rank's equal slice of a batch whose tensors are all rows of one batch
    (the default sharding); None when a slice would be under 2 rows (batch norm needs two),
    which every rank decides alike. Up to world - 1 rows of a batch are left out so that the
    slices are equal: the average of the slices' mean losses is then the batch's."""
    n = batch[0].shape[0]
    if any(t.dim() == 0 or t.shape[0] != n for t in batch):
        raise TypeError("this method's batches are not rows of one batch; give fit() a shard")
    per = n // world
    if per < 2:
        return None
    return tuple(t[rank * per:(rank + 1) * per] for t in batch)


def on_device(values: Sequence[float], device: torch.device) -> torch.Tensor:
    # NCCL reduces CUDA tensors only; gloo CPU ones
    where = device if _current is not None and _current.backend == "nccl" else torch.device("cpu")
    return torch.tensor(list(values), dtype=torch.float64, device=where)


def mean_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    import torch.distributed as dist
    t = on_device(values, device)
    dist.all_reduce(t)
    return (t / _current.world).tolist()


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank: the validation loss that early stopping decides on."""
    import torch.distributed as dist
    t = on_device([value], device)
    dist.broadcast(t, 0)
    return float(t.item())


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics, which each rank updated with its
    own slice) on every rank, before validation: the same network validates everywhere
    and the kept weights are the same on every rank."""
    import torch.distributed as dist
    for b in model.buffers():
        dist.broadcast(b.data, 0)


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """One checksum of a network's state (its values, not their memory layout): what each
    rank reports and what a run's model.pt gives back."""
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def finish(model: nn.Module, desc: str) -> dict:
    """After training on every rank: each rank's weight checksum gathered; ranks that
    ended apart are an error (they would mean the gradients were not shared). Returns the
    record run.json keeps (history.distributed)."""
    import torch.distributed as dist
    sums: list[str | None] = [None] * _current.world
    dist.all_gather_object(sums, state_sha256(model.state_dict()))
    if len(set(sums)) != 1:
        raise TrainingFailed(f"{desc}: the {_current.world} processes ended with different "
                             f"weights ({', '.join(s[:12] for s in sums)}); the run is not "
                             "written")
    return {"world_size": _current.world, "backend": _current.backend,
            "weights_sha256": sums}
