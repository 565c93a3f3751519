"""Augmentations of log-mel window batches shaped (batch, 1, mels, frames)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harken.common.errors import UsageError


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a (batch, 1, mels, frames) batch, got shape {tuple(x.shape)}")


def spec_augment(x: torch.Tensor, generator: torch.Generator, time_masks: int = 2,
                 max_time: int = 8, freq_masks: int = 2, max_freq: int = 16,
                 fill: float | None = None) -> torch.Tensor:
    """SpecAugment (Park et al., 2019) time and frequency masking, fresh masks per sample.

    Masked cells take ``fill`` (default: each sample's mean), so masking does not add a
    level change the model could learn to spot.
    """
    _check(x)
    b, _, n_mels, n_frames = x.shape
    out = x.clone()
    values = x.mean(dim=(1, 2, 3), keepdim=True) if fill is None else torch.full(
        (b, 1, 1, 1), float(fill), dtype=x.dtype, device=x.device)
    mels = torch.arange(n_mels, device=x.device).view(1, 1, n_mels, 1)
    frames = torch.arange(n_frames, device=x.device).view(1, 1, 1, n_frames)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for count, width, axis, size in ((freq_masks, max_freq, mels, n_mels),
                                     (time_masks, max_time, frames, n_frames)):
        for _ in range(count):
            w = torch.randint(0, width + 1, (b, 1, 1, 1), generator=generator).to(x.device)
            start = (torch.rand((b, 1, 1, 1), generator=generator).to(x.device)
                     * (size - w + 1)).long()
            mask |= (axis >= start) & (axis < start + w)
    return torch.where(mask, values.expand_as(x), out)


def frame_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 8) -> torch.Tensor:
    """Circular shift along time by a per-sample offset in [-max_shift, max_shift]."""
    _check(x)
    b, _, _, n_frames = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator).to(x.device)
    idx = (torch.arange(n_frames, device=x.device).view(1, -1) - shifts.view(-1, 1)) % n_frames
    return torch.gather(x, 3, idx.view(b, 1, 1, n_frames).expand_as(x))


def median_filter_time(x: torch.Tensor, size: int = 31) -> torch.Tensor:
    """Median over ``size`` frames along time, reflect padding (numpy's 'reflect', i.e.
    scipy.ndimage's 'mirror'): keeps the stationary part of a spectrogram, drops transients."""
    _check(x)
    if size % 2 == 0 or size < 1:
        raise UsageError(f"median filter size must be odd and positive, got {size}")
    half = size // 2
    if half >= x.shape[-1]:
        raise UsageError(f"median filter of {size} frames needs windows longer than {half} frames")
    padded = F.pad(x, (half, half, 0, 0), mode="reflect")
    return padded.unfold(3, size, 1).median(dim=-1).values
