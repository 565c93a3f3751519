"""Registry of trainable methods: name -> a class satisfying training/method.py's
``Method`` (train, load, score). A new method is one module and one entry in METHODS."""

from __future__ import annotations

from harken.common.errors import UsageError
from harken.training.aegan import AeganMethod
from harken.training.autoencoder import (AeBatchUniformization, AeMahalanobis, AeNeymanPearson,
                                  AutoencoderMethod)
from harken.training.baselines import KnnBaseline
from harken.training.classifier import ClassifierMethod, ContrastiveMethod, DualInputMethod
from harken.training.fusion import Fusion
from harken.training.general import GeneralMethod
from harken.training.gmgan import GmganMethod
from harken.training.method import Configurable, Method
from harken.training.oevae import OevaeMethod
from harken.training.spectral_knn import SpectralKnn

METHODS = {cls.name: cls for cls in (SpectralKnn, KnnBaseline, AutoencoderMethod, AeMahalanobis,
                                     AeBatchUniformization, AeNeymanPearson,
                                     ClassifierMethod, DualInputMethod, ContrastiveMethod, AeganMethod,
                                     GmganMethod, OevaeMethod, Fusion, GeneralMethod)}

# what `harken-train train` trains when no --method is given (docs/results.md: why)
DEFAULT_METHOD = "spectral-knn"


def method_class(name: str):
    try:
        return METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method '{name}'; choose one of {sorted(METHODS)}") from None


def make_method(name: str, overrides: list[str] | None = None) -> Method:
    """A fresh, untrained method; ``overrides`` are ``key=value`` settings (``--set``)."""
    cls = method_class(name)
    if not issubclass(cls, Configurable):
        if overrides:
            raise UsageError(f"{name} has no settings to --set")
        return cls()
    return cls(overrides=overrides)


def settings(name: str) -> dict:
    """The method's settings and their defaults (what --set can change)."""
    cls = method_class(name)
    return cls.default_settings() if issubclass(cls, Configurable) else {}
