"""``audio.source = "mic"``: live capture through PortAudio. One stream per device, however
many machines listen to its channels: the callback only de-interleaves into one ring buffer
per tap; a device that vanishes is reported, closed and reopened, never fatal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np

from harken.common.errors import ConfigError
from harken.common.settings import Seconds
from harken.agent.sources.ringbuffer import RingBuffer
from harken.agent.sources.base import Report, Source, SourceError, SourceSettings, Tap, register
from harken.agent.sources.resample import StreamResampler


def find_device(device: str | int | None) -> int | None:
    """PortAudio input device index from an index or a (stable) name substring."""
    import sounddevice as sd
    if device is None or device == "":
        return None
    if isinstance(device, int) or str(device).isdigit():
        return int(device)
    inputs = [(i, d["name"]) for i, d in enumerate(sd.query_devices())
              if d["max_input_channels"] > 0]
    exact = [i for i, name in inputs if name == device]
    partial = [i for i, name in inputs if str(device).lower() in name.lower()]
    if exact or len(partial) == 1:
        return (exact or partial)[0]
    names = ", ".join(repr(n) for _, n in inputs) or "none"
    if not partial:
        raise SourceError(f"audio.device {device!r}: no such input device (inputs: {names})")
    raise SourceError(f"audio.device {device!r} matches several inputs "
                      f"({', '.join(repr(n) for i, n in inputs if i in partial)}); be exact")


class Microphone:
    """Live capture: the PortAudio callback only copies each tap's channel into its ring
    buffer; ``read`` takes them from the processing thread. If the device refuses the
    model's rate, capture runs at the device's default rate and is resampled here."""

    def __init__(self, device: str | int | None, rate: int, block_s: float = 0.1,
                 ring_s: float = 30.0, taps: Sequence[Tap] = (None,)) -> None:
        self.device, self.rate, self.block_s = device, rate, block_s
        # the mono view of a microphone is its first channel
        self.columns = [(t or 1) - 1 for t in taps]
        self.channels = max(self.columns) + 1
        self.rings = [RingBuffer(int(ring_s * rate * 4)) for _ in self.columns]
        self.stream = None
        self.capture_rate = rate
        self.resamplers: list[StreamResampler] | None = None
        self.status_flags = 0

    def open(self) -> None:
        import sounddevice as sd
        index = find_device(self.device)
        try:
            have = int(sd.query_devices(index, "input")["max_input_channels"])
        except (sd.PortAudioError, ValueError) as exc:
            raise SourceError(f"audio.device {self.device!r}: cannot open for capture "
                              f"({exc})") from None
        if have < self.channels:
            raise SourceError(f"audio.device {self.device!r} has {have} input channel(s); "
                              f"audio.channel {self.channels} does not exist")
        pairs = list(zip(self.rings, self.columns))

        def callback(indata, frames, time_info, status):    # PortAudio thread: copy only
            if status:
                self.status_flags += 1
            for ring, column in pairs:
                ring.write(indata[:, column])

        for rate in (self.rate, None):
            try:
                capture = rate or int(sd.query_devices(index, "input")["default_samplerate"])
                stream = sd.InputStream(device=index, channels=self.channels, samplerate=capture,
                                        dtype="float32", blocksize=int(self.block_s * capture),
                                        callback=callback)
                stream.start()
            except (sd.PortAudioError, ValueError) as exc:
                if rate is None:
                    raise SourceError(f"audio.device {self.device!r}: cannot open for capture "
                                      f"({exc})") from None
                continue
            self.stream, self.capture_rate = stream, capture
            self.resamplers = None if capture == self.rate else \
                [StreamResampler(capture, self.rate) for _ in self.rings]
            return

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:     # noqa: BLE001 - a vanished device may fail to close
                pass
            self.stream = None

    @property
    def active(self) -> bool:
        return self.stream is not None and bool(self.stream.active)

    def read(self, timeout: float = 0.5) -> np.ndarray:
        """What has arrived (at the model's rate), waiting up to ``timeout`` for data:
        mono for one tap, else (samples, taps)."""
        if len(self.rings) == 1:
            x = self.rings[0].read(timeout=timeout)
            return self.resamplers[0].push(x) if self.resamplers and x.size else x
        self.rings[0].wait(timeout)
        # one callback fills every ring, but it may be between two of them right now:
        # take what all of them have, and align on the newest end (a read that lost its
        # oldest samples to an overflow is shorter)
        n = min(r.available for r in self.rings)
        cols = [r.read(n) for r in self.rings]
        m = min(c.size for c in cols)
        cols = [c[c.size - m:] for c in cols]
        if self.resamplers and m:
            cols = [rs.push(c) for rs, c in zip(self.resamplers, cols)]
        return np.stack(cols, axis=1) if cols[0].size else np.zeros((0, len(cols)), np.float32)


class MicrophoneSettings(SourceSettings):
    source: Literal["mic"] = "mic"
    device: str | int | None = None   # PortAudio input: index or (part of) its name
    ring_s: Seconds(1, 600) = 30.0
    reopen_s: Seconds(0, 3600, lo_open=True) = 5.0  # retry a lost microphone this often

    def describe(self) -> str:
        return f"microphone {self.device!r}"


@register
class MicrophoneSource(Source):
    name = "mic"
    Settings = MicrophoneSettings

    def __init__(self, device: str | int | None, rate: int, block_s: float = 0.1,
                 ring_s: float = 30.0, reopen_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep,
                 taps: Sequence[Tap] = (None,)) -> None:
        self.mic = Microphone(device, rate, block_s, ring_s, taps)
        self.reopen_s, self.sleep = reopen_s, sleep
        # no callback for this long: the device is gone
        self.silent_for = max(2.0, 5 * block_s)

    @classmethod
    def preflight(cls, config) -> None:
        """A channel the device does not have is refused now, naming the key. A device
        that is not there now (unplugged, PortAudio missing) is not: ``run`` reports it
        lost and opens it when it comes."""
        a = config.audio
        if a.channel is None:
            return
        try:
            import sounddevice as sd
            have = int(sd.query_devices(find_device(a.device), "input")["max_input_channels"])
        except Exception:      # noqa: BLE001 - no PortAudio, no such device: run says so
            return
        if a.channel > have:
            raise ConfigError(f"{config.source_file}: key 'audio.channel' = {a.channel}: "
                              f"audio.device {a.device!r} has {have} input channel(s)")

    @classmethod
    def from_config(cls, config, rate: int, taps: Sequence[Tap] = (None,)) -> MicrophoneSource:
        a = config.audio
        return cls(a.device, rate, a.block_s, a.ring_s, a.reopen_s, taps=taps)

    def chunks(self, done: Callable[[], bool], report: Report) -> Iterator[np.ndarray]:
        mic, lost_reported = self.mic, False
        last_data = time.monotonic()
        while not done():
            if mic.stream is not None and time.monotonic() - last_data > self.silent_for:
                mic.close()
            if not mic.active:
                mic.close()
                try:
                    mic.open()
                    last_data = time.monotonic()
                    if lost_reported:
                        report({"status": "audio_restored", "device": str(mic.device)})
                    lost_reported = False
                except SourceError as exc:
                    mic.close()
                    if not lost_reported:
                        report({"status": "audio_lost", "error": str(exc)})
                        lost_reported = True
                    self.sleep(self.reopen_s)
                    yield np.zeros(0, np.float32)     # the runner sees this input alive
                    continue
            x = mic.read(timeout=0.5)
            if x.size:
                last_data = time.monotonic()
            yield x

    def health(self) -> dict:
        return {"overflow_samples": max(r.overflowed for r in self.mic.rings),
                "xruns": self.mic.status_flags}

    def close(self) -> None:
        self.mic.close()
