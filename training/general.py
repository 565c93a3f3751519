"""The general model (``mobilenetv2-dual-general``, docs/general-model.md): the dual-input
MobileNetV2 of training/classifier.py trained ONCE across many machines, exported as a
general bundle whose embedding a site enrolls (``harken enroll``: kNN + LDN on the device).

Classes: every (random machine instance, operating point) of the procedurally generated
family (training/synth/randomised.py: ``random_machines`` instances, three operating
points each), plus every (machine type, section, attributes) class of the real training
clips given with ``--data`` (up to ``real_clips`` clips per machine type and section).
``random_machines = 0`` trains on the real training types only.

Beside the two branches' own classification losses (as mobilenetv2-dual), two terms:

* outlier exposure (Hendrycks et al., 2019): windows of faulty random machines (their
  family's faults, randomised.py ``OUTLIER_FAULTS``) are trained towards the uniform
  distribution over the classes (``outlier_weight``; ``outlier_fraction`` of each batch);
* feature exchange, after the FeatEx self-supervision of Wilkinghoff (2024): a
  training-only joint head classifies the concatenated embedding of both branches into
  2 x classes; the pair (mel half of window i, spectrum half of window j) of a shuffled
  batch is labelled with the exchanged copy of the classes, (y_i + y_j) / 2, and the
  unexchanged pair with its own class. The halves must then agree on the machine, which
  is what makes a change in one of them stand out (``featex_weight``).

Training windows are cut at random offsets from crops of ``crop_frames`` frames (short
random clips, random crops of the real clips), stored as float16, so the whole set stays
a few hundred MB. The trained run has no reference bank: the site's is fitted by
agent/site/enroll_embedding.py from its own normal audio.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from harken.agent.site.enroll_embedding import fit_embedding_bank, held_out_scores
from harken.common.errors import UsageError
from harken.training.augment import frame_shift, spec_augment
from harken.training.classifier import ClassifierConfig, ClassifierNet, DualInputMethod
from harken.training.config import Count, Size, Weight, at_least, between
from harken.training.data.corpus import Clip
from harken.training.data.features import clip_logmels
from harken.training.data.windows import class_labels, validation_split
from harken.training.runs import RunInfo, normal_score_stats, write_run
from harken.training.synth.randomised import (MAX_MACHINES, POINTS_PER_MACHINE, random_machines,
                                             render)
from harken.training.torch_method import batched
from harken.training.trainer import fit

GENERAL_MACHINE = "general"        # run.json's machine: the run is not one machine type's


def check_memory(clips: int, values_per_crop: int) -> None:
    """Refuse, before hours of rendering, a training set whose crops (float16, and the copy
    that stacks them) would not fit in this machine's memory."""
    import os
    need = 2 * clips * values_per_crop * 2
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return
    if need > 0.8 * have:
        raise UsageError(f"random_machines: {clips} training clips would need about "
                         f"{need / 2**30:.1f} GiB for their crops, more than this machine's "
                         f"{have / 2**30:.1f} GiB of memory allows; give fewer random machines "
                         f"(or fewer clips_per_class)")


@dataclass(frozen=True)
class GeneralConfig(ClassifierConfig):
    epochs: int = 16        # 6 -> 16 on the validation types (docs/general-model.md)
    windows_per_epoch: Size = 2048      # normal windows per epoch (outliers on top)
    score: Literal["embedding-density"] = "embedding-density"
    random_machines: Annotated[int, between(0, MAX_MACHINES, "random machine instances")] = 150
    family_seed: Annotated[int, between(0, 2**32 - 1, "seed of the random family")] = 0
    clips_per_class: Count = 3          # rendered clips per (instance, operating point)
    clip_seconds: Annotated[float, between(2.2, 30.0, "seconds")] = 3.2
    crop_frames: Annotated[int, at_least(64, "frames")] = 96   # frames kept per clip
    real_clips: Size = 40               # per real (machine type, section); 0 = none
    outlier_clips: Size = 300           # faulty random-machine clips (outlier exposure)
    outlier_fraction: Annotated[float, between(0, 1, "of a batch")] = 0.25
    outlier_weight: Weight = 0.5        # 0 = no outlier exposure
    featex_weight: Weight = 0.5         # 0 = no feature exchange

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.random_machines == 0 and self.real_clips == 0:
            raise UsageError("random_machines = 0 and real_clips = 0: nothing to train on; "
                             "give random machines, real clips, or both")


class FeatExHead(nn.Module):
    """Training-only: the joint classifier over both branches' embeddings side by side,
    2 x classes wide (the classes, then their exchanged copies)."""

    def __init__(self, embedding_dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * embedding_dim, 2 * n_classes)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.linear(e)


@dataclass
class TrainingSet:
    """Crops (n, crop_frames, n_features) float16, their class (-1: an outlier) and which
    are held out for the validation loss."""
    crops: np.ndarray
    label: np.ndarray
    val: np.ndarray
    class_names: list[str]
    real: list[Clip]            # the real clips behind the real crops (first rows), in order
    real_rows: np.ndarray


def _crop(feat: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    if len(feat) < frames:
        feat = np.pad(feat, ((0, frames - len(feat)), (0, 0)), mode="wrap")
    start = int(rng.integers(0, len(feat) - frames + 1))
    return feat[start:start + frames]


def pick_real_clips(clips: Sequence[Clip], per_section: int, seed: int) -> list[Clip]:
    """Up to ``per_section`` training clips per (machine type, section), drawn with
    ``seed``, both domains in proportion; in file order."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault((c.machine, c.section), []).append(i)
    keep: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        keep += list(rng.choice(members, min(per_section, len(members)), replace=False))
    return [clips[i] for i in sorted(keep)]


class GeneralMethod(DualInputMethod):
    """mobilenetv2-dual trained across many machines (module docstring)."""
    name = "mobilenetv2-dual-general"
    data_parallel = False
    serial_reason = "is trained by 'harken-train general', which runs in one process"
    preset_name = "mobilenetv2-dual"
    config_cls = GeneralConfig
    score_rules = ("embedding-density",)
    summary = ("mobilenetv2-dual trained once across random machines + the corpus's types; "
               "enrolled on site ('harken-train general')")
    refit = None            # no bank of its own to refit: the site's is enrolled (not Refittable)

    def train(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True) -> RunInfo:
        raise UsageError(f"{self.name} is trained once across all machine types: "
                         f"'harken-train general --data CORPUS --out RUN', not 'train'")

    def score(self, clips: Sequence[Clip], progress: bool = True, rule: str | None = None
              ) -> np.ndarray:
        raise UsageError(f"{self.name} scores after a site's enrollment: export it "
                         f"('harken-export general --run RUN') and 'harken enroll', or "
                         f"bench/bench_general.py")

    # -- data ------------------------------------------------------------------------------
    def training_set(self, clips: Sequence[Clip], progress: bool = True) -> TrainingSet:
        cfg, spec = self.config, self.spec
        rng = np.random.default_rng(cfg.seed)
        real = pick_real_clips(clips, cfg.real_clips, cfg.seed) if cfg.real_clips else []
        check_memory(cfg.random_machines * POINTS_PER_MACHINE * (cfg.clips_per_class + 1)
                     + cfg.outlier_clips + len(real), cfg.crop_frames * spec.n_features)
        names, real_class = class_labels(real) if real else ([], np.zeros(0, int))
        crops, labels, val = [], [], []
        if real:
            _, real_val = validation_split(real, cfg.val_fraction, cfg.seed)
            held = set(real_val)
            for i, f in enumerate(clip_logmels(real, spec, progress, desc="real clips")):
                crops.append(_crop(f, cfg.crop_frames, rng).astype(np.float16))
                labels.append(int(real_class[i]))
                val.append(i in held)
        machines = random_machines(cfg.random_machines, cfg.family_seed)
        from harken.agent.features import LogMelExtractor
        extract = LogMelExtractor(spec)
        jobs = [(m, p, c) for m in machines for p in range(len(m.points))
                for c in range(cfg.clips_per_class + (m.index % 4 == 0))]
        outliers = [(machines[int(rng.integers(len(machines)))],
                     int(rng.integers(POINTS_PER_MACHINE)), j)
                    for j in range(cfg.outlier_clips)] if machines and cfg.outlier_weight > 0 \
            and cfg.outlier_fraction > 0 else []
        first = len(names)
        names += [m.class_name(p) for m in machines for p in range(len(m.points))]
        for m, p, c in tqdm(jobs + [(m, p, -1 - j) for m, p, j in outliers],
                            desc="random machines", unit="clip", disable=not progress, leave=False):
            x = render(m, p, c if c >= 0 else -1 - c, cfg.clip_seconds, cfg.family_seed,
                       outlier=c < 0)
            crops.append(_crop(extract(x), cfg.crop_frames, rng).astype(np.float16))
            labels.append(first + m.index * POINTS_PER_MACHINE + p if c >= 0 else -1)
            val.append(c == cfg.clips_per_class)
        if not crops:
            raise UsageError("no training clips: give --data with training clips, or "
                             "random_machines above 0")
        return TrainingSet(np.stack(crops), np.asarray(labels), np.asarray(val, bool), names,
                           real, np.arange(len(real)))

    # -- training ----------------------------------------------------------------------------
    def train_general(self, clips: Sequence[Clip], run_dir: Path, progress: bool = True
                      ) -> RunInfo:
        """Train across the machine types of ``clips`` (all of ``--data``'s training clips)
        and the random family; write the run folder."""
        cfg, spec = self.config, self.spec
        device = self.setup()
        t0 = time.monotonic()
        data = self.training_set(clips, progress)
        prepared_s = time.monotonic() - t0
        self.class_names = data.class_names
        self.class_section = np.full(len(self.class_names), -1)
        n_classes, frames = len(self.class_names), spec.window_frames
        normal_fit = np.nonzero((data.label >= 0) & ~data.val)[0]
        normal_val = np.nonzero((data.label >= 0) & data.val)[0]
        if len(normal_val) == 0:
            normal_val = normal_fit[:max(1, len(normal_fit) // 10)]
        outlier_rows = np.nonzero(data.label < 0)[0]
        sample = data.crops[normal_fit[:2000]].astype(np.float32)
        mels = sample[:, :, :spec.n_mels]
        net = ClassifierNet(mean=float(mels.mean()), std=float(mels.std()) + 1e-6,
                            **self.architecture())
        net.spectrum.set_statistics(torch.from_numpy(sample[:, :, spec.n_mels:].mean(axis=1)))
        self.model = net.to(device).to(memory_format=torch.channels_last)
        featex = FeatExHead(cfg.embedding_dim, n_classes).to(device)
        crops, labels = data.crops, data.label
        rng = np.random.default_rng(cfg.seed + 1)
        n_out = int(round(cfg.batch_size * cfg.outlier_fraction)) if len(outlier_rows) else 0

        def cut(rows: np.ndarray) -> torch.Tensor:
            offs = rng.integers(0, cfg.crop_frames - frames + 1, len(rows))
            w = np.stack([crops[r, o:o + frames] for r, o in zip(rows, offs)]).astype(np.float32)
            return torch.from_numpy(w).transpose(1, 2).unsqueeze(1)       # (B, 1, feats, frames)

        def batches(epoch: int):
            n = cfg.windows_per_epoch or len(normal_fit)
            for _ in range(max(1, n // cfg.batch_size)):
                rows = rng.choice(normal_fit, cfg.batch_size)
                x, y = self._augment(cut(rows), F.one_hot(torch.from_numpy(labels[rows]),
                                                          n_classes).float())
                if n_out:
                    xo = self._augment_outliers(cut(rng.choice(outlier_rows, n_out)))
                    x = torch.cat([x, xo])
                    y = torch.cat([y, torch.full((n_out, n_classes), 1.0 / n_classes)])
                yield (x.to(device).contiguous(memory_format=torch.channels_last), y.to(device),
                       torch.tensor(n_out))

        def soft_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -(y * F.log_softmax(logits.float(), dim=1)).sum(dim=1)

        def loss_fn(batch) -> torch.Tensor:
            x, y, n_o = batch
            n_o = int(n_o)
            parts = net.branches(x)
            weight = torch.ones(len(x), device=x.device)
            if n_o:
                weight[-n_o:] = cfg.outlier_weight
            loss = sum((soft_ce(logits, y) * weight).sum() for logits, _ in parts) / len(x)
            if cfg.featex_weight > 0:
                e1, e2 = parts[0][1], parts[1][1]
                keep = len(x) - n_o
                e1, e2, yn = e1[:keep], e2[:keep], y[:keep]
                perm = torch.randperm(keep, generator=self.generator).to(x.device)
                zeros = torch.zeros_like(yn)
                own = featex(torch.cat([e1, e2], dim=1))
                swapped = featex(torch.cat([e1, e2[perm]], dim=1))
                loss = loss + cfg.featex_weight * 0.5 * (
                    soft_ce(own, torch.cat([yn, zeros], dim=1)).mean()
                    + soft_ce(swapped, torch.cat([zeros, 0.5 * (yn + yn[perm])], dim=1)).mean())
            return loss

        val_x = torch.cat([cut(normal_val) for _ in range(2)])
        val_y = torch.from_numpy(np.concatenate([labels[normal_val]] * 2)).long()

        def val_loss() -> float:
            total = 0.0
            for idx in batched(len(val_x), 256):
                x = val_x[idx].to(device).contiguous(memory_format=torch.channels_last)
                total += float(sum(F.cross_entropy(lg.float(), val_y[idx].to(device),
                                                   reduction="sum") for lg, _ in net.branches(x)))
            return total / len(val_x)

        hist = fit(nn.ModuleList([net, featex]), batches, loss_fn, val_loss, cfg, device, progress,
                   desc=f"{self.name} ({n_classes} classes)",
                   parameters=list(net.parameters()) + list(featex.parameters()))
        self.model = net.cpu().to(memory_format=torch.contiguous_format).eval()
        held_clips, normal = self._held_out(data, progress)
        self.emb_mean = np.zeros(2 * cfg.embedding_dim)
        self.emb_std = np.ones(2 * cfg.embedding_dim)
        run_dir.mkdir(parents=True, exist_ok=True)
        info = self._save_general(run_dir, clips, hist, normal, held_clips, data, prepared_s)
        return info

    def _augment_outliers(self, x: torch.Tensor) -> torch.Tensor:
        """The outliers get the normal windows' frame shift and masks but no mixup (their
        target is already the uniform distribution)."""
        cfg, g, n_mels = self.config, self.generator, self.spec.n_mels
        if cfg.frame_shift > 0:
            x = frame_shift(x, g, cfg.frame_shift)
        if cfg.spec_augment:
            x = torch.cat([spec_augment(x[:, :, :n_mels], g), x[:, :, n_mels:]], dim=2)
        return x

    def embed_windows(self, windows: np.ndarray, batch: int = 256) -> np.ndarray:
        """(n, frames, feats) windows -> (n, embedding) with the float network."""
        xt = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).transpose(1, 2).unsqueeze(1)
        out = []
        with torch.no_grad():
            for idx in batched(len(xt), batch):
                out.append(self.model(xt[idx].contiguous())[1].numpy())
        return np.concatenate(out).astype(np.float64)

    def _held_out(self, data: TrainingSet, progress: bool) -> tuple[list[Clip], np.ndarray]:
        """Normal scores of the real validation crops against a bank enrolled (as a site
        would: agent/site/enroll_embedding.py) on the other crops of their machine type and
        section: what run.json's normal statistics describe."""
        spec = self.spec
        if not data.real:
            return [], np.zeros(0)
        emb = np.stack([self.embed_windows(np.lib.stride_tricks.sliding_window_view(
            data.crops[r].astype(np.float32), spec.window_frames, axis=0)[::spec.window_hop]
            .transpose(0, 2, 1)).mean(axis=0) for r in data.real_rows])
        held, scores = [], []
        for key in sorted({(c.machine, c.section) for c in data.real}):
            rows = [i for i, c in enumerate(data.real) if (c.machine, c.section) == key]
            fit_rows = [i for i in rows if not data.val[i]]
            val_rows = [i for i in rows if data.val[i]]
            if len(rows) < 3:
                continue
            if len(fit_rows) < 2 or not val_rows:      # leave-one-out instead
                _, loo = fit_embedding_bank(emb[rows], self.config.density_k)
                scores.append(loo)
                held += [data.real[i] for i in rows]
                continue
            arrays, _ = fit_embedding_bank(emb[fit_rows], self.config.density_k)
            scores.append(held_out_scores(arrays, emb[val_rows]))
            held += [data.real[i] for i in val_rows]
        return held, (np.concatenate(scores) if scores else np.zeros(0))

    def _save_general(self, run_dir: Path, clips: Sequence[Clip], hist, normal: np.ndarray,
                      held: list[Clip], data: TrainingSet, prepared_s: float) -> RunInfo:
        from harken.training.config import config_dict
        from harken.training.torch_method import WEIGHTS
        from harken.training.trainer import plot_history
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                   run_dir / WEIGHTS)
        plot_history(hist, run_dir / "loss.png", f"{self.name}")
        np.save(run_dir / "embedding_mean.npy", self.emb_mean)
        np.save(run_dir / "embedding_std.npy", self.emb_std)
        if len(normal) < 3:            # no real clips: nothing site-like to describe
            normal, held = np.array([1.0, 1.5, 2.0]), []
        cfg = self.config
        return write_run(
            run_dir, method=self.name, machine=GENERAL_MACHINE, spec=self.spec,
            params={**config_dict(cfg), "score_rules": list(self.score_rules)},
            train_clips=list(clips), normal_scores=normal_score_stats(normal),
            held_out=(held, normal) if held else None,
            extra={"architecture": self.architecture(), "history": hist.to_dict(),
                   "weights": WEIGHTS, "classes": self.class_names,
                   "general": {"random_machines": cfg.random_machines,
                               "random_classes": 3 * cfg.random_machines,
                               "real_classes": len(self.class_names) - 3 * cfg.random_machines,
                               "real_clips": len(data.real),
                               "training_crops": int((data.label >= 0).sum()),
                               "outlier_crops": int((data.label < 0).sum()),
                               "machine_types": sorted({c.machine for c in clips}),
                               "data_seconds": round(prepared_s, 1)},
                   "inference": "ClassifierNet only (the FeatEx head is training-only)"})

    def load_extra(self, run_dir: Path, info: RunInfo) -> None:
        """A general run has no bank: only its classes (the network's head width)."""
        from harken.training.runs import RunError
        if info.classes is None:
            raise RunError(f"{run_dir / 'run.json'}: missing field 'classes'")
        self.class_names = list(info.classes)
        self.class_section = np.full(len(self.class_names), -1)

    def device_rule(self) -> str:
        return "embedding-density"

    def rule_arrays(self, section: int, rule: str | None = None) -> dict[str, np.ndarray]:
        raise UsageError(f"{self.name} has no bank of its own: 'harken enroll' fits it on "
                         f"site ('harken-export general --run RUN' writes its bundle)")


__all__ = ["GENERAL_MACHINE", "GeneralConfig", "GeneralMethod", "pick_real_clips"]


def train_general_run(data: Path, out: Path, overrides: list[str] | None = None,
                      machines: list[str] | None = None, force: bool = False,
                      progress: bool = True, skip_bad: bool = False) -> tuple[RunInfo, float]:
    """``harken-train general``: one run folder ``out`` trained on the training clips of
    every machine type of ``data`` (or ``machines``) and the random family; built beside
    its place and renamed in when done, as ``train`` does. Returns (run info, seconds)."""
    from harken.common.atomic import building, check_target
    from harken.training.data.corpus import machine_types, scan_corpus
    from harken.training.runs import record_training_time
    method = GeneralMethod(overrides=overrides)          # bad settings fail before any work
    from harken.training.trainer import pick_device
    pick_device(method.config.device)
    types = machines or machine_types(data)
    keep = (data, *(Path(data) / m for m in types))
    target = check_target(Path(out), force, "--out folder", keep=keep)
    found = scan_corpus(data, types, split="train", skip_bad=skip_bad)
    found.log()
    t0 = time.monotonic()
    with building(target, force=force, what="--out folder", keep=keep) as new:
        info = method.train_general(found.clips, new, progress)
        info.corpus.scan = found.summary()
        record_training_time(new, info, time.monotonic() - t0)
    return info, time.monotonic() - t0


def cmd_general(args) -> int:
    """The ``harken-train general`` command (training/cli.py registers it)."""
    overrides = list(args.set or [])
    if args.random_machines is not None:
        overrides.append(f"random_machines={args.random_machines}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f"device={args.device}")
    machines = [m.strip() for m in args.machines.split(",") if m.strip()] if args.machines else None
    info, seconds = train_general_run(Path(args.data), Path(args.out), overrides, machines,
                                      args.force, not args.quiet, args.skip_bad_clips)
    hist = info.history or {}
    g = getattr(info, "general", None) or {}
    print(f"{GeneralMethod.name}: {len(info.classes or [])} classes "
          f"({g.get('random_machines', '?')} random machines) trained in {seconds:.0f} s, "
          f"{len(hist.get('train_loss', []))} epochs on {hist.get('device', '?')} -> {args.out} "
          f"(export: 'harken-export general --run {args.out} --out BUNDLE')")
    return 0
