"""Log-mel extraction: one kernel for batch and streaming, so their frames are
bit-identical (the hot path of the device)."""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.sparse

from harken.common.errors import DataError
from harken.agent.features.mel import mel_filterbank
from harken.agent.features.spec import FeatureSpec

# Frames per FFT block: 64 frames x 1024 samples stay in cache, which is ~2x faster
# than one big block (measured with bench/bench_features.py) and bounds memory.
_BLOCK_FRAMES = 64
# Rows per FFT call are always a whole number of these. pocketfft (scipy.fft) transforms
# rows in SIMD groups (at most 16 lanes) and the rows left over one by one, and on some
# CPUs the two paths round differently (seen on aarch64: 1e-6 relative). Padding every
# call to whole groups with zero rows gives every frame the same arithmetic, whether it
# comes from a 10-s clip or a 10-ms streaming chunk, so streaming equals batch bit for
# bit on every CPU by construction.
_ROW_GROUP = 16
assert _BLOCK_FRAMES % _ROW_GROUP == 0

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
        """frames: (n, n_fft) samples of self.dtype (a strided view is fine) -> (n, n_mels),
        or (n, n_mels + n_freqs) with the log power spectrum appended (``spec.spectrum``)."""
        with np.errstate(over="ignore", invalid="ignore"):
            # a wild sample (1e30 from a float WAV) overflows to inf: the caller's health
            # check marks its interval invalid (agent/pipeline.py), no warning per frame
            return self._frames(frames)

    def _frames(self, frames: np.ndarray) -> np.ndarray:
        n = frames.shape[0]
        n_mels = self.spec.n_mels
        out = np.empty((n, self.spec.n_features), dtype=np.float32)
        for start in range(0, n, _BLOCK_FRAMES):
            block = frames[start:start + _BLOCK_FRAMES]
            rows = block.shape[0]
            whole = -(-rows // _ROW_GROUP) * _ROW_GROUP
            windowed = self._windowed[:whole]
            np.multiply(block, self.window, out=windowed[:rows])
            windowed[rows:] = 0.0
            spectrum = scipy.fft.rfft(windowed, axis=-1, workers=1)[:rows]
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
            out[start:start + block.shape[0], :n_mels] = mel.T
            if self.spec.spectrum:
                if self.spec.log_rule == "dcase":
                    mag += self.log_eps
                    np.log10(mag, out=mag)
                    mag *= self.log_scale
                out[start:start + block.shape[0], n_mels:] = mag
        return out


def periodic_window(name: str, n: int) -> np.ndarray:
    """The periodic ("DFT-even") Hann or Hamming window, as scipy.signal.get_window(name,
    n, fftbins=True) and librosa give it. Written out because importing scipy.signal
    costs the agent about a second and 50 MB of memory at start-up (it pulls in
    scipy.stats, scipy.interpolate and scipy.optimize) for two one-line formulas."""
    a = {"hann": 0.5, "hamming": 0.54}[name]
    return a - (1.0 - a) * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMelExtractor:
    """Batch extractor: a whole signal in, (n_frames, spec.n_features) float32 log-mel
    (and log spectrum) out."""

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
            return np.empty((0, spec.n_features), dtype=np.float32)
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
        self._empty = np.empty((0, spec.n_features), dtype=np.float32)
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
