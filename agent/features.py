"""The one log-mel front end, shared by the device and by training.

Training imports this module, so a model is trained on exactly the features the device
computes. Written with numpy/scipy only (no librosa on a Raspberry Pi), and checked
against librosa's ``melspectrogram`` in the tests.

STFT parameters of the presets (16 kHz audio):

==================  ======  ======  ======  =====  ===============  ============
preset              n_fft   hop     mels    power  window (frames)  window hop
==================  ======  ======  ======  =====  ===============  ============
dcase2020-ae        1024    512     128     2      5  (x128 = 640)  1
mobilenetv2         1024    512     128     2      64 (~2.0 s)      8 (~256 ms)
aegan-ad            2048    512     128     2      128 (~4.1 s)     32
gmgan               1024    512     64      2      64 (~2.0 s)      32
oevae               1024    256     64      2      125 (2.0 s)      62 (~1 s)
==================  ======  ======  ======  =====  ===============  ============

A frame is 64 ms of audio (n_fft 1024) advanced by 32 ms (hop 512; oevae: 16 ms, hop 256).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft
import scipy.sparse

from harken.agent.errors import DataError, HarkenError

MelScale = Literal["slaney", "htk"]
PadMode = Literal["constant", "reflect"]
LogRule = Literal["dcase", "none"]

FEATURE_SPEC_VERSION = 1
# Frames per FFT block: 64 frames x 1024 samples stay in cache, which is ~2x faster
# than one big block (measured with bench/bench_features.py) and bounds memory.
_BLOCK_FRAMES = 64


class FeatureSpecError(HarkenError, ValueError):
    """A feature spec that is invalid or that this front end cannot reproduce."""


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines the model input: DESIGN contract 1.

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
        if self.win_length > self.n_fft:
            raise bad("win_length", f"<= n_fft ({self.n_fft})")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"<= n_fft ({self.n_fft})")
        if self.window not in ("hann", "hamming"):
            raise bad("window", "'hann' or 'hamming'")
        if not isinstance(self.center, bool):
            raise bad("center", "true or false")
        if self.pad_mode not in ("constant", "reflect"):
            raise bad("pad_mode", "'constant' or 'reflect'")
        if not 0.0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise FeatureSpecError(
                f"feature spec fields 'fmin' = {self.fmin!r}, 'fmax' = {self.fmax!r}: "
                f"expected 0 <= fmin < fmax <= sample_rate/2 ({self.sample_rate / 2})"
            )
        if self.power not in (1.0, 2.0):
            raise bad("power", "1.0 (magnitude) or 2.0 (power)")
        if self.mel_scale not in ("slaney", "htk"):
            raise bad("mel_scale", "'slaney' or 'htk'")
        if self.mel_norm not in ("slaney", "none"):
            raise bad("mel_norm", "'slaney' or 'none'")
        if self.log_rule not in ("dcase", "none"):
            raise bad("log_rule", "'dcase' (20/power * log10(mel + eps)) or 'none'")
        if not (isinstance(self.log_eps, float) and self.log_eps > 0):
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


PRESETS: dict[str, FeatureSpec] = {
    # DCASE 2020-2024 autoencoder baseline: 5 consecutive frames -> 640-dim vectors.
    "dcase2020-ae": FeatureSpec(name="dcase2020-ae", window_frames=5, window_hop=1),
    # MobileNetV2 section classifier and contrastive AE+MobileNetV2: 1 x 128 x 64 windows.
    "mobilenetv2": FeatureSpec(name="mobilenetv2", window_frames=64, window_hop=8),
    # AEGAN-AD: n_fft 2048, 128 x 128 patches.
    "aegan-ad": FeatureSpec(name="aegan-ad", n_fft=2048, win_length=2048,
                            window_frames=128, window_hop=32),
    # GMGAN: 64 mels, 64 x 64 patches (about 2 s), hop 32 frames.
    "gmgan": FeatureSpec(name="gmgan", n_mels=64, window_frames=64, window_hop=32),
    # OEVAE: 64 ms frames, 16 ms hop, 64 mels, 2-second segments (125 frames), hop 1 s.
    "oevae": FeatureSpec(name="oevae", n_fft=1024, win_length=1024, hop_length=256, n_mels=64,
                         window_frames=125, window_hop=62),
}


def preset(name: str) -> FeatureSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise FeatureSpecError(
            f"unknown feature preset '{name}'; choose one of {sorted(PRESETS)}"
        ) from None


# --- mel filter bank ------------------------------------------------------------------
def hz_to_mel(freqs: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    f = np.asarray(freqs, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, logstep = 200.0 / 3.0, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    mels = f / f_sp
    log_region = f >= min_log_hz
    return np.where(log_region, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz)
                    / logstep, mels)


def mel_to_hz(mels: np.ndarray | float, scale: MelScale = "slaney") -> np.ndarray:
    m = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3.0, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), as librosa.filters.mel."""
    fft_freqs = np.fft.rfftfreq(spec.n_fft, d=1.0 / spec.sample_rate)
    mel_edges = np.linspace(hz_to_mel(spec.fmin, spec.mel_scale),
                            hz_to_mel(spec.fmax, spec.mel_scale), spec.n_mels + 2)
    hz_edges = mel_to_hz(mel_edges, spec.mel_scale)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if spec.mel_norm == "slaney":  # equal area per filter
        weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return weights


# --- extraction -----------------------------------------------------------------------
class _Kernel:
    """Window, FFT, power, mel and log for whole frames: the hot path, shared by the
    batch and the streaming extractor so both compute bit-identical frames.

    Hand-written rather than librosa because the device cannot carry librosa (numba),
    and because working in cache-sized blocks makes it faster than librosa here
    (bench/bench_features.py).

    Precision follows the audio, as in librosa: float32 samples (what the WAV reader and
    the ring buffer give, so training and device alike) are transformed in float32,
    float64 samples in float64 (deep spectral valleys of synthetic tones survive).
    """

    def __init__(self, spec: FeatureSpec, dtype: type = np.float32) -> None:
        self.spec = spec
        self.dtype = np.dtype(dtype)
        win = periodic_window(spec.window, spec.win_length)
        left = (spec.n_fft - spec.win_length) // 2
        self.window = np.zeros(spec.n_fft, dtype=self.dtype)
        self.window[left:left + spec.win_length] = win
        # The mel matrix is ~98 % zeros (each FFT bin feeds at most two filters), so a
        # sparse product is faster than a dense one.
        self.mel = scipy.sparse.csr_matrix(mel_filterbank(spec).astype(self.dtype))
        self.log_scale = 20.0 / spec.power
        self.log_eps = self.dtype.type(spec.log_eps)
        self._windowed = np.empty((_BLOCK_FRAMES, spec.n_fft), dtype=self.dtype)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames: (n, n_fft) samples of self.dtype (a strided view is fine) -> (n, n_mels)."""
        n = frames.shape[0]
        out = np.empty((n, self.spec.n_mels), dtype=np.float32)
        for start in range(0, n, _BLOCK_FRAMES):
            block = frames[start:start + _BLOCK_FRAMES]
            windowed = np.multiply(block, self.window, out=self._windowed[:block.shape[0]])
            spectrum = scipy.fft.rfft(windowed, axis=-1, workers=1)
            if self.spec.power == 2.0:
                mag = spectrum.real ** 2
                mag += spectrum.imag ** 2
            else:
                mag = np.abs(spectrum)
            mel = self.mel @ mag.T  # (n_mels, block)
            if self.spec.log_rule == "dcase":
                mel += self.log_eps
                np.log10(mel, out=mel)
                mel *= self.log_scale
            out[start:start + block.shape[0]] = mel.T
        return out


def periodic_window(name: str, n: int) -> np.ndarray:
    """The periodic ("DFT-even") Hann or Hamming window, as scipy.signal.get_window(name,
    n, fftbins=True) and librosa give it. Written out because importing scipy.signal
    costs the agent about a second and 50 MB of memory at start-up (it pulls in
    scipy.stats, scipy.interpolate and scipy.optimize) for two one-line formulas."""
    a = {"hann": 0.5, "hamming": 0.54}[name]
    return a - (1.0 - a) * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMelExtractor:
    """Batch extractor: a whole signal in, (n_frames, n_mels) float32 log-mel out."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._kernels: dict[type, _Kernel] = {}  # by sample dtype, built on first use

    def __call__(self, signal: np.ndarray) -> np.ndarray:
        x = _as_mono_float(signal)
        spec = self.spec
        if spec.center:
            half = spec.n_fft // 2
            if spec.pad_mode == "reflect" and x.size <= half:
                raise DataError(
                    f"signal of {x.size} samples is too short for reflect padding "
                    f"(needs more than {half})"
                )
            # By hand: np.pad is generic and costs a quarter of the whole extraction.
            padded = np.zeros(x.size + 2 * half, dtype=x.dtype)
            padded[half:half + x.size] = x
            if spec.pad_mode == "reflect":
                padded[:half] = x[half:0:-1]
                padded[half + x.size:] = x[-2:-half - 2:-1]
            x = padded
        if x.size < spec.n_fft:
            return np.empty((0, spec.n_mels), dtype=np.float32)
        kernel = self._kernels.get(x.dtype.type)
        if kernel is None:
            kernel = self._kernels[x.dtype.type] = _Kernel(spec, x.dtype.type)
        n = 1 + (x.size - spec.n_fft) // spec.hop_length
        return kernel(_frame_view(x, n, spec.n_fft, spec.hop_length))


def logmel(signal: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Convenience: batch log-mel of one signal."""
    return LogMelExtractor(spec)(signal)


class StreamingLogMel:
    """Push audio in chunks of any size; get the frames the batch extractor would give.

    ``push`` returns the frames that became complete, in order; ``finish`` returns the
    trailing frames that only exist once the end of the signal is known (centre padding)
    and resets. Concatenating every output equals ``LogMelExtractor(spec)(signal)`` for
    a signal of ``dtype`` (float32 by default: what audio devices and WAV files give).

    Frames are computed in groups of up to ``max_delay_frames`` (default 16, i.e. 512 ms
    at hop 512): one vectorised call per group instead of one per frame keeps a
    10 ms-chunk stream within a small factor of batch speed. ``flush`` computes whatever
    complete frames are waiting, for callers that need them now.
    """

    def __init__(self, spec: FeatureSpec, max_delay_frames: int = 16,
                 dtype: type = np.float32) -> None:
        if max_delay_frames < 1:
            raise ValueError("max_delay_frames must be >= 1")
        self.spec = spec
        self.max_delay_frames = max_delay_frames
        self._kernel = _Kernel(spec, dtype)
        self._dtype = self._kernel.dtype
        self._half = spec.n_fft // 2 if spec.center else 0
        self._reflect = spec.center and spec.pad_mode == "reflect"
        # Samples needed before a group of frames is computed.
        self._group_span = spec.n_fft + (max_delay_frames - 1) * spec.hop_length
        self._empty = np.empty((0, spec.n_mels), dtype=np.float32)
        self._buf = np.zeros(4 * self._group_span + 4096, dtype=self._kernel.dtype)
        self.reset()

    def reset(self) -> None:
        self._chunks: list[np.ndarray] = []  # pushed, not yet copied into _buf
        self._queued = 0  # samples in _chunks
        self._fill = 0    # valid samples in _buf
        self._start = 0   # index in _buf where the next frame starts
        self._appended = 0  # signal samples moved into _buf since reset
        self._started = not self._reflect
        if self.spec.center and not self._reflect:
            self._buf[:self._half] = 0.0
            self._fill = self._half

    @property
    def samples_seen(self) -> int:
        return self._appended + self._queued

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Queue ``chunk``; return the frames completed (often none).

        The chunk is referenced, not copied, until its group of frames is computed (a
        slice copy per 10 ms chunk would cost more than the FFTs): do not write into an
        array after pushing it. Arrays from ``RingBuffer.read`` are always fresh.
        """
        if chunk.__class__ is np.ndarray and chunk.dtype is self._dtype and chunk.ndim == 1 \
                and self._started:
            self._chunks.append(chunk)
            self._queued += chunk.shape[0]
        else:
            x = _as_mono_float(chunk)
            if x.shape[0] == 0:
                return self._empty
            self._gather()
            self._append(x)
            self._appended += x.shape[0]
            if not self._started:
                if self._fill <= self._half:
                    return self._empty
                self._start_reflected()
        if self._fill - self._start + self._queued < self._group_span:
            return self._empty
        self._gather()
        return self._compute()

    def flush(self) -> np.ndarray:
        """Compute the complete frames waiting now (the stream goes on)."""
        if not self._started:
            return self._empty
        self._gather()
        return self._compute()

    def finish(self) -> np.ndarray:
        """End of signal: emit every remaining frame, including the end padding; reset."""
        self._gather()
        if self.spec.center:
            if not self._started:
                if self.samples_seen:
                    raise DataError(
                        f"signal of {self.samples_seen} samples is too short for reflect "
                        f"padding (needs more than {self._half})"
                    )
                self.reset()
                return self._empty
            if self._reflect:
                pad = self._buf[self._fill - self._half - 1:self._fill - 1][::-1].copy()
            else:
                pad = np.zeros(self._half, dtype=self._buf.dtype)
            self._append(pad)
        out = self._compute()
        self.reset()
        return out

    # -- internals ---------------------------------------------------------------------
    def _gather(self) -> None:
        if self._chunks:
            chunks = self._chunks
            self._appended += self._queued
            self._chunks, self._queued = [], 0
            self._append(chunks[0] if len(chunks) == 1 else np.concatenate(chunks))

    def _append(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if self._fill + n > self._buf.shape[0]:
            # Keep the next frame's samples and, for reflect padding at the end, the
            # last n_fft/2 + 1 samples; drop the rest.
            keep_from = min(self._start, max(0, self._fill - self._half - 1))
            kept = self._fill - keep_from
            if kept + n > self._buf.shape[0]:
                grown = np.zeros(max(2 * self._buf.shape[0], kept + n + self._group_span),
                                 dtype=self._buf.dtype)
                grown[:kept] = self._buf[keep_from:self._fill]
                self._buf = grown
            else:
                self._buf[:kept] = self._buf[keep_from:self._fill]
            self._start -= keep_from
            self._fill = kept
        self._buf[self._fill:self._fill + n] = x
        self._fill += n

    def _start_reflected(self) -> None:
        # Reflection needs the first n_fft/2 + 1 samples before anything is framed.
        head = self._buf[:self._fill].copy()
        self._fill = 0
        self._append(np.concatenate((head[1:self._half + 1][::-1], head)))
        self._started = True

    def _compute(self) -> np.ndarray:
        n_fft, hop = self.spec.n_fft, self.spec.hop_length
        available = self._fill - self._start
        if available < n_fft:
            return self._empty
        n = 1 + (available - n_fft) // hop
        frames = _frame_view(self._buf[self._start:], n, n_fft, hop)
        self._start += n * hop
        return self._kernel(frames)


def _frame_view(x: np.ndarray, n: int, n_fft: int, hop: int) -> np.ndarray:
    """(n, n_fft) read-only view of overlapping frames of contiguous ``x``, no copy.

    as_strided rather than sliding_window_view: the latter's checks cost ~60 us a call,
    more than the FFT of a streaming group."""
    assert x.flags.c_contiguous and x.size >= (n - 1) * hop + n_fft
    step = x.strides[0]
    return np.lib.stride_tricks.as_strided(x, (n, n_fft), (hop * step, step), writeable=False)


def _as_mono_float(signal: np.ndarray) -> np.ndarray:
    """1-D float32 or float64 samples (other float types are widened to float64)."""
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D samples), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {x.dtype}")
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


# --- windows (model inputs) ------------------------------------------------------------
def n_windows(n_frames: int, spec: FeatureSpec) -> int:
    if n_frames < spec.window_frames:
        return 0
    return 1 + (n_frames - spec.window_frames) // spec.window_hop


def windows(features: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n_frames, n_mels) -> (n_windows, window_frames, n_mels), a strided view.

    Frame-major order, so ``reshape(n, -1)`` gives the DCASE baseline's 640-dim vectors
    (frame t's 128 mels contiguous).
    """
    if features.ndim != 2 or features.shape[1] != spec.n_mels:
        raise ValueError(
            f"expected features of shape (frames, {spec.n_mels}), got {features.shape}"
        )
    n = n_windows(features.shape[0], spec)
    if n == 0:
        return np.empty((0, spec.window_frames, spec.n_mels), dtype=features.dtype)
    view = np.lib.stride_tricks.sliding_window_view(features, spec.window_frames, axis=0)
    # sliding_window_view puts the window axis last: (n, n_mels, frames) -> (n, frames, mels)
    return view[::spec.window_hop][:n].transpose(0, 2, 1)
