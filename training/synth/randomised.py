"""A procedurally generated family of machines (domain randomisation) for the general model
(docs/general-model.md).

Six machine types are too few for an embedding to learn what "a machine changed" sounds
like in general. This module draws any number of random machine *instances*, each one of
the six TUNING families of machines.py (fan, pump, gearbox, bearing, slider, valve) with a
random geometry: blade, vane, tooth and ball counts, shaft speeds, structural modes,
stroke lengths, hiss bands. Each instance has three random operating points; each
(instance, operating point) is one class of the general model. On top of the family's own
physics every instance gets a random amplitude modulation (depth and rate), a random flow
noise (slope, band, level), and every clip a random room, microphone, factory background
and SNR, so that the embedding learns the machine and not the recording.

How the randomiser is kept inside the tuning types' families (issue 39's protocol: the
TEST types vfd_motor, chain_drive and screw_feeder must not be reachable):

* every clip is rendered by one of the six tuning types' own render functions
  (machines.py), only with other geometry values and operating points; no new sound
  source is written here. The geometry ranges (``RANGES``) bracket the tuning types'
  own values by a small margin, never beyond;
* no carrier whine: a gearbox's mesh fundamental is held at or below 800 Hz (the tuning
  gearboxes reach 760 Hz), so no kHz tone with shaft sidebands (a VFD's PWM carrier with
  +-2f sidebands) appears; the added modulation is broadband AM at 0.5-30 Hz, not a tone;
* no fast impact trains in normal sound: the only normal impacts are the slider's
  end-stop knocks and the valve's clicks, at the tuning types' stroke and pattern rates
  (a few per second), never a link-engagement rate with speed ripple (chain drive);
* no granular micro-impact flow: the pump's cavitation fault (dense random pops, the
  closest tuning physics to a screw feeder's granular flow) is left out of the outlier
  exposure, which otherwise renders the family's own faults.

``bench/bench_general.py --reach`` checks this without labels or detection scores: each
test-type clip's clip statistics (per-band mean and spread of the log-mel) against the
nearest randomised clip, beside the randomised clips' own nearest-neighbour distances.

Everything is deterministic per (seed, instance, operating point, clip): the same seed
gives the same machines and the same audio on any machine and in any order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from harken.common.errors import UsageError
from harken.training.synth.acoustics import (SR, bandpass, colored_noise, db, factory_background,
                                             microphone, rms, room)
from harken.training.synth.machines import MACHINES

FAMILIES = ("fan", "pump", "gearbox", "bearing", "slider", "valve")
POINTS_PER_MACHINE = 3
MAX_MACHINES = 100_000
MAX_MESH_HZ = 800.0           # gearbox mesh fundamental cap (tuning gearboxes: <= 760 Hz)
MACHINE_RMS = 0.06            # as training/synth/corpus.py
# the family's faults used as outliers (outlier exposure); pump cavitation is left out
# (see the module docstring)
OUTLIER_FAULTS = {f: tuple(x for x in MACHINES[f].faults if (f, x) != ("pump", "cavitation"))
                  for f in FAMILIES}

# Geometry ranges per family: each brackets the tuning types' three sections' values
# (machines.py) by about 10 %, never further.
RANGES = {
    "fan": {"blades": (5, 9), "rpm": (1050.0, 1900.0), "mode1": (600.0, 1050.0),
            "mode2": (1800.0, 2750.0), "rel": (0.8, 1.35)},
    "pump": {"vanes": (5, 7), "rpm": (1400.0, 3000.0), "pipe1": (350.0, 550.0),
             "pipe2": (1050.0, 1450.0), "pipe3": (2500.0, 3200.0), "flow": (35, 100)},
    "gearbox": {"z1": (19, 31), "z2": (49, 64), "rpm_per_volt": (40.0, 78.0),
                "housing1": (1400.0, 2200.0), "housing2": (2700.0, 4000.0), "vol": (18, 34),
                "wt": (90, 260)},
    "bearing": {"balls": (8, 12), "ratio": (0.17, 0.27), "rpm": (1150.0, 2500.0),
                "mode1": (2250.0, 3100.0), "mode2": (3450.0, 4500.0), "mode3": (5000.0, 5300.0),
                "rel": (0.55, 1.25)},
    "slider": {"stroke_s": (0.65, 1.35), "pitch_hz": (140.0, 250.0), "stop1": (950.0, 1550.0),
               "stop2": (2650.0, 3700.0), "vel": (450, 1150), "ac": (3, 7)},
    "valve": {"open1": (1850.0, 2650.0), "open2": (3000.0, 4150.0), "close1": (1450.0, 2150.0),
              "close2": (2450.0, 3650.0), "hiss_lo": (380.0, 720.0), "hiss_hi": (3700.0, 5600.0)},
}
VALVE_PATTERNS = ("00", "01", "02", "03")        # machines.py's four open/close patterns

# per instance, on top of the family's physics
AM_DEPTH = (0.0, 0.15)
AM_RATE_HZ = (0.5, 30.0)
FLOW_LEVEL = (0.0, 0.5)            # relative to the machine's RMS
FLOW_SLOPE = (-5.0, -1.0)          # dB per octave
FLOW_LO_HZ, FLOW_HI_HZ = (80.0, 800.0), (2500.0, 7000.0)
# per clip: the recording
RT60_S, WET = (0.25, 0.9), (0.15, 0.5)
BACKGROUNDS = ("hall", "hall60", "workshop", "hvac")
SNR_DB = (-1.0, 10.0)
MIC_HP_HZ, MIC_LP_HZ, MIC_TILT = (30.0, 120.0), (5500.0, 7800.0), (-2.0, 1.0)
OUTLIER_ANR_DB = (-10.0, 0.0)
OUTLIER_SEVERITY = (0.5, 1.0)


@dataclass(frozen=True)
class RandomMachine:
    """One random machine instance: a family, its geometry (as machines.py's render reads
    it), its operating points (one class each) and its own modulation and flow noise."""
    index: int
    family: str
    geometry: dict
    points: tuple[dict, ...]
    am_depth: float
    am_rate_hz: float
    flow_level: float
    flow_slope: float
    flow_band: tuple[float, float]

    def class_name(self, point: int) -> str:
        return f"random/{self.index:05d}_{self.family}_op{point}"


def _rng(seed: int, *key: object) -> np.random.Generator:
    words = [seed % 2**32] + [zlib.crc32(str(k).encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def _u(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(*lohi))


def _i(rng: np.random.Generator, lohi: tuple[int, int]) -> int:
    return int(rng.integers(lohi[0], lohi[1] + 1))


def _geometry_and_points(family: str, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    r = RANGES[family]
    n = POINTS_PER_MACHINE
    if family == "fan":
        g = {"blades": _i(rng, r["blades"]), "rpm": _u(rng, r["rpm"]),
             "modes": [_u(rng, r["mode1"]), _u(rng, r["mode2"])]}
        return g, [{"spd": int(round(g["rpm"] * x))} for x in np.sort(rng.uniform(*r["rel"], n))]
    if family == "pump":
        g = {"vanes": _i(rng, r["vanes"]), "rpm": _u(rng, r["rpm"]),
             "pipe": [_u(rng, r["pipe1"]), _u(rng, r["pipe2"]), _u(rng, r["pipe3"])]}
        return g, [{"flow": int(f)} for f in np.sort(rng.integers(r["flow"][0], r["flow"][1] + 1, n))]
    if family == "gearbox":
        g = {"z1": _i(rng, r["z1"]), "z2": _i(rng, r["z2"]),
             "rpm_per_volt": _u(rng, r["rpm_per_volt"]),
             "housing": [_u(rng, r["housing1"]), _u(rng, r["housing2"])]}
        points = [{"vol": _i(rng, r["vol"]), "wt": _i(rng, r["wt"])} for _ in range(n)]
        # the mesh fundamental z1 * f1 stays at or below MAX_MESH_HZ at every point
        top = max(p["vol"] for p in points) * g["z1"] / 60.0
        g["rpm_per_volt"] = min(g["rpm_per_volt"], MAX_MESH_HZ / top)
        return g, points
    if family == "bearing":
        g = {"balls": _i(rng, r["balls"]), "ratio": _u(rng, r["ratio"]), "rpm": _u(rng, r["rpm"]),
             "modes": [_u(rng, r["mode1"]), _u(rng, r["mode2"]), _u(rng, r["mode3"])]}
        return g, [{"vel": int(round(g["rpm"] * x)), "loc": "A"}
                   for x in np.sort(rng.uniform(*r["rel"], n))]
    if family == "slider":
        g = {"stroke_s": _u(rng, r["stroke_s"]), "pitch_hz": _u(rng, r["pitch_hz"]),
             "stop_modes": [_u(rng, r["stop1"]), _u(rng, r["stop2"])]}
        return g, [{"vel": _i(rng, r["vel"]), "ac": _i(rng, r["ac"])} for _ in range(n)]
    g = {"open_modes": [_u(rng, r["open1"]), _u(rng, r["open2"])],
         "close_modes": [_u(rng, r["close1"]), _u(rng, r["close2"])],
         "hiss_band": (_u(rng, r["hiss_lo"]), _u(rng, r["hiss_hi"]))}
    pats = rng.choice(len(VALVE_PATTERNS), n, replace=False)
    return g, [{"pat": VALVE_PATTERNS[p]} for p in sorted(pats)]


def random_machine(seed: int, index: int) -> RandomMachine:
    """Instance ``index`` of the family drawn with ``seed`` (the same on every call)."""
    if not 0 <= index < MAX_MACHINES:
        raise UsageError(f"random machine index must be in [0, {MAX_MACHINES}), got {index}")
    rng = _rng(seed, "machine", index)
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    geometry, points = _geometry_and_points(family, rng)
    return RandomMachine(index, family, geometry, tuple(points), _u(rng, AM_DEPTH),
                         _u(rng, AM_RATE_HZ), _u(rng, FLOW_LEVEL), _u(rng, FLOW_SLOPE),
                         (_u(rng, FLOW_LO_HZ), _u(rng, FLOW_HI_HZ)))


def random_machines(count: int, seed: int = 0) -> list[RandomMachine]:
    """The first ``count`` instances of the family drawn with ``seed``."""
    if not 0 <= count <= MAX_MACHINES:
        raise UsageError(f"random_machines must be in [0, {MAX_MACHINES}], got {count}")
    return [random_machine(seed, i) for i in range(count)]


def render(machine: RandomMachine, point: int, clip: int, seconds: float, seed: int = 0,
           outlier: bool = False) -> np.ndarray:
    """One clip (float32, 16 kHz) of ``machine`` at operating point ``point``: its family's
    physics, its modulation and flow noise, then a random room, background, SNR and
    microphone. ``outlier``: with one of its family's faults (``OUTLIER_FAULTS``), for the
    outlier exposure."""
    if not 0 <= point < len(machine.points):
        raise UsageError(f"operating point must be in [0, {len(machine.points)}), got {point}")
    rng = _rng(seed, "clip", machine.index, point, clip, outlier)
    n = int(round(seconds * SR))
    family = MACHINES[machine.family]
    fault, severity = None, 0.0
    if outlier:
        faults = OUTLIER_FAULTS[machine.family]
        fault = faults[int(rng.integers(len(faults)))]
        severity = _u(rng, OUTLIER_SEVERITY)
    out = family.render(rng, machine.geometry, machine.points[point], n, fault, severity)
    x = out.normal / rms(out.normal) * MACHINE_RMS
    if machine.flow_level > 0:
        flow = bandpass(colored_noise(n, rng, machine.flow_slope), *machine.flow_band)
        x = x + flow / rms(flow) * MACHINE_RMS * machine.flow_level
    t = np.arange(n) / SR
    x = x * (1.0 + machine.am_depth * np.sin(2 * np.pi * machine.am_rate_hz * t
                                             + rng.uniform(0, 2 * np.pi)))
    if out.added is not None:
        x = x + out.added / rms(out.added) * rms(x) * db(_u(rng, OUTLIER_ANR_DB)
                                                         + family.anr_offset_db.get(fault, 0.0))
    x = room(x, rng, _u(rng, RT60_S), _u(rng, WET))
    bg = factory_background(n, rng, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    x = x + bg / rms(bg) * MACHINE_RMS * db(-_u(rng, SNR_DB))
    x = microphone(x, _u(rng, MIC_HP_HZ), _u(rng, MIC_LP_HZ), _u(rng, MIC_TILT))
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32)
