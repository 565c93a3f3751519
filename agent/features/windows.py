"""Model inputs: windows of consecutive feature frames."""

from __future__ import annotations

import numpy as np

from harken.agent.features.spec import FeatureSpec

def n_windows(n_frames: int, spec: FeatureSpec) -> int:
    if n_frames < spec.window_frames:
        return 0
    return 1 + (n_frames - spec.window_frames) // spec.window_hop


def windows(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n_frames, n_features) -> (n_windows, window_frames, n_features), a strided view.

    Frame-major order, so ``reshape(n, -1)`` gives the DCASE baseline's 640-dim vectors
    (frame t's 128 mels contiguous).
    """
    if features.ndim != 2 or features.shape[1] != spec.n_features:
        raise ValueError(
            f"expected features of shape (frames, {spec.n_features}), got {features.shape}"
        )
    n = n_windows(features.shape[0], spec)
    if n == 0:
        return np.empty((0, spec.window_frames, spec.n_features), dtype=features.dtype)
    view = np.lib.stride_tricks.sliding_window_view(features, spec.window_frames, axis=0)
    # sliding_window_view puts the window axis last: (n, n_mels, frames) -> (n, frames, mels)
    return view[::spec.window_hop][:n].transpose(0, 2, 1)
