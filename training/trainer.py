"""The one training loop: device choice, seeds, mixed precision on CUDA, progress with
loss and throughput, early stopping on the validation split, and the loss plot. Under
torch's launcher the same loop trains across processes (training/distributed.py)."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from harken.common.errors import HarkenError, UsageError
from harken.training import distributed
from harken.training.config import TrainConfig


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` asks for; under torch's launcher ``cuda`` is this process's GPU
    (cuda:LOCAL_RANK, training/distributed.py)."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for, but torch sees no CUDA GPU here")
    try:
        return distributed.local_device(torch.device(name))
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seeds python, numpy and torch; returns a torch generator for augmentations."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    samples_per_second: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    # across processes only: world size, backend, each rank's weight checksum
    distributed: dict | None = None

    def to_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss,
                "epoch_seconds": self.epoch_seconds,
                "samples_per_second": self.samples_per_second,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "device": self.device,
                **({"distributed": self.distributed} if self.distributed else {})}


Batch = tuple[torch.Tensor, ...]
Shard = Callable[[Batch, int, int], "Batch | None"]


def fit(model: nn.Module, batches: Callable[[int], Iterable[Batch]],
        loss_fn: Callable[[Batch], torch.Tensor], val_loss: Callable[[], float],
        cfg: TrainConfig, device: torch.device, progress: bool = True,
        desc: str = "train", parameters: Iterable[nn.Parameter] | None = None,
        shard: Shard | None = None) -> History:
    """Adam over ``model`` (or ``parameters``); keeps the weights of the best validation epoch.

    ``batches(epoch)`` yields tuples of tensors on ``device``; ``loss_fn`` returns the scalar
    loss of one batch; ``val_loss`` the validation loss (called under no_grad, eval mode).
    Across processes (training/distributed.py) ``model`` is trained through
    DistributedDataParallel, each rank on its slice of every batch: ``shard(batch, rank,
    world)`` cuts it (default: equal slices of rows, ``distributed.rows``).
    """
    opt = torch.optim.Adam(list(parameters) if parameters is not None else model.parameters(),
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    forward = loss_fn if distributed.current() is None else \
        distributed.data_parallel(model, loss_fn, device)

    def step(batch: Batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = forward(batch)
        check_finite(loss, desc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return fit_steps(model, batches, step, val_loss, cfg, device, progress, desc,
                     shard=shard or distributed.rows)


class TrainingDiverged(HarkenError, FloatingPointError):
    """The loss became NaN or infinite: a setting (most often the learning rate) the user
    can change, so one line, not a traceback (docs/reliability.md)."""


def check_finite(loss: torch.Tensor | float, desc: str) -> None:
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if not np.isfinite(value):
        raise TrainingDiverged(f"{desc}: training diverged (the loss became {value}); lower lr, the "
                               "learning rate (--set lr=..., a tenth of it, say) or check the "
                               "input features")


def fit_steps(model: nn.Module, batches: Callable[[int], Iterable[Batch]],
              step: Callable[[Batch], torch.Tensor], val_loss: Callable[[], float],
              cfg: TrainConfig, device: torch.device, progress: bool = True,
              desc: str = "train", shard: Shard | None = None) -> History:
    """The epoch loop around ``step`` (one batch's update, returning the loss it reports),
    for methods with their own optimisers (the GANs): progress, validation, early
    stopping, the best epoch's weights kept.

    Across processes (``shard`` given, by ``fit``): each rank steps on its slice of every
    batch; the training loss and throughput are the whole batch's, the validation loss is
    rank 0's on every rank (the same early stopping everywhere), and once done ranks other
    than 0 raise ``distributed.NotTheWriter`` (rank 0 writes the run)."""
    ranks = distributed.current()
    if ranks is not None and shard is None:
        raise UsageError(f"{desc}: this method trains with its own optimiser steps, which the "
                         "distributed loop does not cover; train it without --nproc/torchrun")
    if ranks is not None and ranks.rank > 0:
        # dropout and other draws from torch's global generator differ per rank, as they
        # would for one process over the whole batch (rank 0 keeps the plain path's)
        torch.manual_seed(torch.initial_seed() + ranks.rank)
    use_amp = device.type == "cuda"
    hist = History(device=str(device))
    best, best_state, waited = float("inf"), copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch",
               disable=not progress or (ranks is not None and not ranks.writer), leave=False)
    steps = 0       # a run that took none is never written as trained (docs/reliability.md)
    for epoch in bar:
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for batch in batches(epoch):
            size = batch[0].shape[0]
            if ranks is not None:
                batch = shard(batch, ranks.rank, ranks.world)
                if batch is None:
                    continue
            loss = step(batch)
            steps += 1
            total += loss.item() * size
            n += size
        if use_amp:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if ranks is not None:
            total = distributed.mean_over_ranks([total], device)[0]
            distributed.sync_buffers(model)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            v = float(val_loss())
        if ranks is not None:
            v = distributed.from_rank0(v, device)
        hist.train_loss.append(total / max(n, 1))
        hist.val_loss.append(v)
        hist.epoch_seconds.append(seconds)
        hist.samples_per_second.append(n / seconds if seconds > 0 else 0.0)
        bar.set_postfix(loss=f"{hist.train_loss[-1]:.4g}", val=f"{v:.4g}",
                        rate=f"{hist.samples_per_second[-1]:.0f}/s")
        if v < best:
            best, best_state, waited, hist.best_epoch = v, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            waited += 1
            if waited >= cfg.patience:
                hist.stopped_early = True
                break
    if steps == 0:          # every rank decides alike: the slices are cut alike everywhere
        why = (f"; across {ranks.world} processes each one's slice of a batch needs 2 rows, so "
               f"give batch_size {2 * ranks.world} or more" if ranks is not None else "")
        raise distributed.TrainingFailed(f"{desc}: no training step was taken in "
                                         f"{len(hist.train_loss)} epoch(s){why}; the run is not "
                                         "written")
    model.load_state_dict(best_state)
    model.eval()
    if ranks is not None:
        hist.distributed = distributed.finish(model, desc)
        if not ranks.writer:
            raise distributed.NotTheWriter(desc)
    return hist


def plot_history(hist: History, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = np.arange(1, len(hist.train_loss) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, hist.train_loss, label="training")
    ax.plot(epochs, hist.val_loss, label="validation (held-out normal training clips)")
    ax.axvline(hist.best_epoch + 1, color="grey", ls=":", label=f"kept: epoch {hist.best_epoch + 1}")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
