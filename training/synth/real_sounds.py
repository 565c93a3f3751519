"""Real recorded backgrounds and events for the synthetic corpus (``synth --real-sounds``).

A synthetic background is a model too, and a detector tuned on synthetic corpora may
learn its regularities. This variant mixes real recordings into every clip: a continuous
background (looped from a random offset) takes a random share of the background power,
and transient events (impacts, tools, speech, a camera shutter) are dropped at random
times and levels, in normal and anomalous clips of both domains alike, so they are never
a cue. The recordings come from Debian packages (scripts/fetch-sounds; docs/corpus.md
lists them and their licences).

Folder layout (what scripts/fetch-sounds writes; any WAVs of your own work too)::

    DIR/backgrounds/*.wav   continuous sound, at least one
    DIR/events/*.wav        short sounds, at least one
    DIR/SOURCES.txt         where each came from (file, package, path, licence)

    python -m harken.training.synth.real_sounds EXTRACTED_ROOT OUT   (scripts/fetch-sounds)
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harken.common.errors import HarkenError, UsageError
from harken.training.synth.acoustics import SR, db, rms

# What scripts/fetch-sounds takes from each package: (kind, package, path in the package,
# licence as its copyright file states it).
_WESNOTH = "usr/share/games/wesnoth/1.16/data/core/sounds"
_FREEDESKTOP = "usr/share/sounds/freedesktop/stereo"
SELECTION: tuple[tuple[str, str, str, str], ...] = (
    ("backgrounds", "wesnoth-1.16-data", f"{_WESNOTH}/ambient/campfire.ogg", "GPL-2+"),
    ("backgrounds", "wesnoth-1.16-data", f"{_WESNOTH}/ambient/ship.ogg", "GPL-2+"),
    ("backgrounds", "wesnoth-1.16-data", f"{_WESNOTH}/ambient/night.ogg", "GPL-2+"),
    ("backgrounds", "wesnoth-1.16-data", f"{_WESNOTH}/ambient/morning.ogg", "GPL-2+"),
    ("backgrounds", "wesnoth-1.16-data", f"{_WESNOTH}/rumble.ogg", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/axe.ogg", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/club.ogg", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/mace.ogg", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/hatchet.wav", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/open-chest.wav", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/gold.ogg", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/horse-canter.wav", "GPL-2+"),
    ("events", "wesnoth-1.16-data", f"{_WESNOTH}/fire.wav", "GPL-2+"),
    ("events", "alsa-utils", "usr/share/sounds/alsa/Front_Center.wav", "GPL-2"),
    ("events", "alsa-utils", "usr/share/sounds/alsa/Rear_Left.wav", "GPL-2"),
    ("events", "alsa-utils", "usr/share/sounds/alsa/Side_Right.wav", "GPL-2"),
    ("events", "sound-theme-freedesktop", f"{_FREEDESKTOP}/camera-shutter.oga", "CC-BY-SA-3.0"),
    ("events", "sound-theme-freedesktop", f"{_FREEDESKTOP}/trash-empty.oga", "CC-BY-3.0"),
)
PACKAGES = {"wesnoth-1.16-data": "wesnoth", "alsa-utils": "alsa", "sound-theme-freedesktop": "freedesktop"}

EVENTS_PER_10S = 3.0          # mean number of events in a 10-s clip (Poisson)
EVENT_LEVEL_DB = (-14.0, 2.0)   # an event's RMS over its own length, relative to the machine
REAL_SHARE = (0.3, 0.7)       # share of the background power that is the real recording


@dataclass(frozen=True)
class RealSounds:
    """The recordings of one folder, read once per process, 16 kHz mono float32."""
    folder: Path
    backgrounds: tuple[tuple[str, np.ndarray], ...]
    events: tuple[tuple[str, np.ndarray], ...]
    digests: dict

    def describe(self) -> dict:
        """What corpus.json records: the folder and each file with its sha256 and length."""
        def files(items):
            return [{"file": name, "seconds": round(x.size / SR, 3), "sha256": self.digests[name]}
                    for name, x in items]
        return {"folder": str(self.folder.resolve()), "backgrounds": files(self.backgrounds),
                "events": files(self.events)}

    def render(self, n: int, rng: np.random.Generator, factory: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, dict]:
        """-> (background of unit RMS with a real share, events at machine-relative level
        (a machine of unit RMS), what was used). ``factory`` is the synthetic background."""
        name, loop = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        start = int(rng.integers(loop.size))
        real = np.take(loop, np.arange(start, start + n), mode="wrap").astype(np.float64)
        share = float(rng.uniform(*REAL_SHARE))
        bg = np.sqrt(1.0 - share) * factory / rms(factory) + np.sqrt(share) * real / rms(real)
        events = np.zeros(n)
        used = []
        for _ in range(int(rng.poisson(EVENTS_PER_10S * n / SR / 10.0))):
            ev_name, ev = self.events[int(rng.integers(len(self.events)))]
            at = int(rng.integers(-ev.size // 2, n))
            level = float(rng.uniform(*EVENT_LEVEL_DB))
            a, b = max(0, at), min(n, at + ev.size)
            if b > a:
                events[a:b] += ev[a - at:b - at] / rms(ev) * db(level)
                used.append([ev_name, round(at / SR, 3), round(level, 1)])
        return bg / rms(bg), events, {"real_background": name, "real_share": round(share, 3),
                                      "real_events": used}


_LOADED: dict[str, RealSounds] = {}


def load(folder: str | Path) -> RealSounds:
    """Read ``folder`` (see the module docstring), or refuse it in one line naming it and
    what was expected."""
    from harken.agent.sources.wavio import read_wav
    root = Path(folder)
    key = str(root.resolve())
    if key in _LOADED:
        return _LOADED[key]
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise UsageError(f"--real-sounds {folder}: {what}; expected a folder with "
                         "backgrounds/*.wav and events/*.wav (scripts/fetch-sounds writes one)")
    parts = {}
    digests = {}
    for kind in ("backgrounds", "events"):
        files = sorted(p for p in (root / kind).iterdir() if p.suffix.lower() == ".wav") \
            if (root / kind).is_dir() else []          # .wav and .WAV alike
        if not files:
            raise UsageError(f"--real-sounds {folder}: no {kind}/*.wav in it; expected a folder "
                             "with backgrounds/*.wav and events/*.wav (scripts/fetch-sounds writes one)")
        items = []
        for path in files:
            try:
                x, _ = read_wav(path, SR)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except (HarkenError, OSError, ValueError) as e:
                raise UsageError(f"--real-sounds {folder}: {kind}/{path.name} is not a readable "
                                 f"WAV file ({str(e).splitlines()[0][:160]})") from None
            if x.size < SR // 20 or rms(x) < 1e-6:
                raise UsageError(f"--real-sounds {folder}: {kind}/{path.name} is silent or shorter "
                                 "than 50 ms; expected a recording")
            name = f"{kind}/{path.name}"
            items.append((name, x))
            digests[name] = digest
        parts[kind] = tuple(items)
    sounds = RealSounds(root, parts["backgrounds"], parts["events"], digests)
    _LOADED[key] = sounds
    return sounds


# --- preparing the folder from extracted packages (scripts/fetch-sounds) ---------------------
def _decode(path: Path) -> np.ndarray:
    """Any file soundfile reads (WAV, Ogg Vorbis) -> 16 kHz mono float64."""
    import scipy.signal
    import soundfile
    x, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if rate != SR:
        g = np.gcd(int(rate), SR)
        x = scipy.signal.resample_poly(x, SR // g, int(rate) // g)
    return x


def _seamless(x: np.ndarray, fade_s: float = 0.1) -> np.ndarray:
    # Crossfade the end into the start, so the loop has no click where it wraps.
    k = min(int(fade_s * SR), x.size // 4)
    if k < 2:
        return x
    ramp = np.linspace(0.0, 1.0, k)
    out = x[:-k].copy()
    out[:k] = x[:k] * ramp + x[-k:] * (1.0 - ramp)
    return out


def _trim(x: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    # Leading and trailing near-silence off an event, so its level is the sound's own.
    env = np.abs(x)
    loud = np.nonzero(env > env.max() * db(floor_db))[0]
    return x[loud[0]:loud[-1] + 1] if loud.size else x


def prepare(extracted: str | Path, out: str | Path) -> int:
    """Write the chosen recordings under ``out`` as 16-kHz mono 16-bit WAVs, with
    SOURCES.txt; ``extracted`` holds each package unpacked in a folder of its name."""
    from harken.agent.sources.wavio import write_wav
    src, dst = Path(extracted), Path(out)
    lines = ["# file\tpackage\tpath in the package\tlicence (the package's copyright file, "
             "copyright/PACKAGE.copyright)"]
    for kind, package, inner, licence in SELECTION:
        path = src / package / inner
        if not path.is_file():
            raise UsageError(f"{path}: not in the extracted package {package}; expected {inner}")
        x = _decode(path)
        x = _seamless(x) if kind == "backgrounds" else _trim(x)
        x = x / max(float(np.max(np.abs(x))), 1e-9) * 0.5
        name = f"{PACKAGES[package]}-{Path(inner).stem}.wav"
        (dst / kind).mkdir(parents=True, exist_ok=True)
        write_wav(dst / kind / name, x, SR)
        lines.append(f"{kind}/{name}\t{package}\t/{inner}\t{licence}")
    (dst / "SOURCES.txt").write_text("\n".join(lines) + "\n")
    return len(SELECTION)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m harken.training.synth.real_sounds EXTRACTED_ROOT OUT", file=sys.stderr)
        return 2
    try:
        count = prepare(argv[0], argv[1])
    except HarkenError as e:
        print(f"fetch-sounds: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count} recordings to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
