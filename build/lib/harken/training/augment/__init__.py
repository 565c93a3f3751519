"""Training-time augmentations, each a switch in a method's config.

spectral: SpecAugment masks, frame shift, median filter over time (batches of log-mel
windows, torch). mixing: mixup (inputs and soft labels), SMOTE (feature vectors or
embeddings, to fill the thin target domain).
"""

from harken.training.augment.mixing import mixup, smote, smote_target
from harken.training.augment.spectral import frame_shift, median_filter_time, spec_augment

__all__ = ["frame_shift", "median_filter_time", "mixup", "smote", "smote_target", "spec_augment"]
