"""The feature spec (docs/architecture.md "The front end") and its presets: every
parameter of the front end in one frozen, validated value, serialised into run.json and
manifest.json and compared on load."""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass
from typing import Any, Literal

from harken.common.errors import HarkenError

MelScale = Literal["slaney", "htk"]
PadMode = Literal["constant", "reflect"]
LogRule = Literal["dcase", "none"]

FEATURE_SPEC_VERSION = 1

# The range of each size a spec may state: wide enough for any audio model (ultrasound
# leak detection records at 192 kHz), narrow enough that a damaged or hostile manifest
# cannot make the front end ask for hundreds of GiB (a sample_rate of 2^31 would size every
# buffer from it: docs/reliability.md "Numbers, banks and bundles").
LIMITS: dict[str, tuple[int, int]] = {
    "sample_rate": (4000, 192000),
    "n_fft": (16, 1 << 16),
    "win_length": (16, 1 << 16),
    "hop_length": (1, 1 << 16),
    "n_mels": (1, 1024),
    "window_frames": (1, 8192),
    "window_hop": (1, 8192),
}
MAX_WINDOW_VALUES = 1 << 22      # values in one model input window (64 frames x 641: 41 024)


class FeatureSpecError(HarkenError, ValueError):
    """A feature spec that is invalid or that this front end cannot reproduce."""


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines the model input (docs/architecture.md "The front end").

    It travels in run.json and manifest.json and is compared on load, so a bundle
    trained on other features is refused instead of silently mis-scored.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 512
    window: Literal["hann", "hamming"] = "hann"
    center: bool = True
    pad_mode: PadMode = "constant"
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    power: float = 2.0
    mel_scale: MelScale = "slaney"
    mel_norm: Literal["slaney", "none"] = "slaney"
    log_rule: LogRule = "dcase"
    log_eps: float = sys.float_info.epsilon
    window_frames: int = 5
    window_hop: int = 1
    # Append the log power spectrum (n_fft/2 + 1 linear bins, same STFT and log rule) to
    # each frame after the mels: the fine spectral detail (tonal lines, narrow resonances)
    # that mel pooling averages away. Costs no extra FFT.
    spectrum: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> FeatureSpecError:
            return FeatureSpecError(
                f"feature spec field '{field}' = {getattr(self, field)!r}: expected {expected}"
            )

        for field in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels",
                      "window_frames", "window_hop"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise bad(field, "a positive integer")
            low, high = LIMITS.get(field, (1, None))
            if not low <= value <= high:
                raise bad(field, f"a whole number from {low} to {high}")
        window = self.window_frames * (self.n_mels + (self.n_fft // 2 + 1 if self.spectrum
                                                      else 0))
        if window > MAX_WINDOW_VALUES:
            raise FeatureSpecError(
                f"feature spec fields 'window_frames' = {self.window_frames}, 'n_mels' = "
                f"{self.n_mels}, 'n_fft' = {self.n_fft}, 'spectrum' = {self.spectrum}: a model "
                f"window of {window} values; at most {MAX_WINDOW_VALUES}")
        if self.win_length > self.n_fft:
            raise bad("win_length", f"<= n_fft ({self.n_fft})")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"<= n_fft ({self.n_fft})")
        # the allowed words are the fields' Literal types, written once (above)
        for field in ("window", "pad_mode", "mel_scale", "mel_norm"):
            allowed = _LITERALS[field]
            if getattr(self, field) not in allowed:
                raise bad(field, " or ".join(repr(a) for a in allowed))
        for field in ("center", "spectrum"):
            if not isinstance(getattr(self, field), bool):
                raise bad(field, "true or false")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise FeatureSpecError(
                f"feature spec fields 'fmin' = {self.fmin!r}, 'fmax' = {self.fmax!r}: "
                f"expected 0 <= fmin < fmax <= sample_rate/2 ({self.sample_rate / 2})"
            )
        if self.power not in (1.0, 2.0):
            raise bad("power", "1.0 (magnitude) or 2.0 (power)")
        if self.log_rule not in _LITERALS["log_rule"]:
            raise bad("log_rule", "'dcase' (20/power * log10(mel + eps)) or 'none'")
        if not (isinstance(self.log_eps, float) and math.isfinite(self.log_eps)
                and self.log_eps > 0):
            raise bad("log_eps", "a positive float")

    # --- serialisation (run.json / manifest.json) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": FEATURE_SPEC_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "feature spec") -> FeatureSpec:
        """Build a spec from JSON, refusing anything this front end cannot reproduce."""
        if not isinstance(data, dict):
            raise FeatureSpecError(f"{source}: expected an object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", FEATURE_SPEC_VERSION)
        if version != FEATURE_SPEC_VERSION:
            raise FeatureSpecError(
                f"{source}: feature spec version {version!r} is not supported by this "
                f"agent (supports {FEATURE_SPEC_VERSION}); upgrade harken"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatureSpecError(
                f"{source}: unknown feature spec field(s) {unknown}; this front end cannot "
                f"reproduce them (known: {sorted(known)})"
            )
        for key in ("fmin", "fmax", "power", "log_eps"):
            if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
                data[key] = float(data[key])
        try:
            return cls(**data)
        except FeatureSpecError as exc:
            raise FeatureSpecError(f"{source}: {exc}") from None

    def replace(self, **changes: Any) -> FeatureSpec:
        return dataclasses.replace(self, **changes)

    # --- derived quantities ----------------------------------------------------------
    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def n_features(self) -> int:
        """Values per frame: the mels, then the spectrum bins when ``spectrum`` is on."""
        return self.n_mels + (self.n_freqs if self.spectrum else 0)

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    @property
    def window_seconds(self) -> float:
        return ((self.window_frames - 1) * self.hop_length + self.n_fft) / self.sample_rate

    def n_frames(self, n_samples: int) -> int:
        """Number of frames the batch extractor gives for ``n_samples`` samples."""
        if self.center:
            return 1 + n_samples // self.hop_length
        if n_samples < self.n_fft:
            return 0
        return 1 + (n_samples - self.n_fft) // self.hop_length


_LITERALS = {f: typing.get_args(t) for f, t in typing.get_type_hints(FeatureSpec).items()
             if typing.get_origin(t) is Literal}


PRESETS: dict[str, FeatureSpec] = {
    # DCASE 2020-2024 autoencoder baseline: 5 consecutive frames -> 640-dim vectors.
    "dcase2020-ae": FeatureSpec(name="dcase2020-ae", window_frames=5, window_hop=1),
    # MobileNetV2 section classifier and contrastive AE+MobileNetV2: 1 x 128 x 64 windows.
    "mobilenetv2": FeatureSpec(name="mobilenetv2", window_frames=64, window_hop=8),
    # mobilenetv2-dual: the same windows with the 513-bin log power spectrum after the
    # mels (the spectrum branch reads the window's mean spectrum).
    "mobilenetv2-dual": FeatureSpec(name="mobilenetv2-dual", spectrum=True, window_frames=64,
                                    window_hop=8),
    # AEGAN-AD: n_fft 2048, 128 x 128 patches.
    "aegan-ad": FeatureSpec(name="aegan-ad", n_fft=2048, win_length=2048,
                            window_frames=128, window_hop=32),
    # GMGAN: 64 mels, 64 x 64 patches (about 2 s), hop 32 frames.
    "gmgan": FeatureSpec(name="gmgan", n_mels=64, window_frames=64, window_hop=32),
    # spectral-knn: the mels plus the 513-bin log power spectrum per frame, in
    # non-overlapping 1-second windows (32 frames) whose moments the device pools.
    "spectral-knn": FeatureSpec(name="spectral-knn", spectrum=True, window_frames=32,
                                window_hop=32),
    # OEVAE: 64 ms frames, 16 ms hop, 64 mels, 2-second segments (125 frames), hop 1 s.
    "oevae": FeatureSpec(name="oevae", n_fft=1024, win_length=1024, hop_length=256, n_mels=64,
                         window_frames=125, window_hop=62),
}


# what only decides how frames are cut into model inputs, not the frames themselves
_WINDOWING = ("window_frames", "window_hop", "spectrum", "name")


def shared_front_end(specs: list[FeatureSpec]) -> FeatureSpec:
    """One streaming front end for several models (a fused bundle): their specs must give
    the same frames, differing only in windowing and in whether the spectrum is appended
    after the mels. The shared spec appends it if any model reads it; each model takes its
    first ``n_features`` columns, exactly the frames its own spec would give."""
    if not specs:
        raise FeatureSpecError("no feature specs to share a front end between")
    first = specs[0]
    for other in specs[1:]:
        for f in dataclasses.fields(FeatureSpec):
            if f.name not in _WINDOWING and getattr(other, f.name) != getattr(first, f.name):
                raise FeatureSpecError(
                    f"feature specs '{first.name}' and '{other.name}' differ in '{f.name}' "
                    f"({getattr(first, f.name)!r} vs {getattr(other, f.name)!r}); models "
                    f"fused in one bundle must compute the same frames")
    return first.replace(spectrum=any(s.spectrum for s in specs),
                         window_frames=max(s.window_frames for s in specs),
                         window_hop=max(s.window_hop for s in specs), name="shared")


def preset(name: str) -> FeatureSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise FeatureSpecError(
            f"unknown feature preset '{name}'; choose one of {sorted(PRESETS)}"
        ) from None
