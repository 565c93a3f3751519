"""Six machine types, each a small physical model rather than noise with beeps: the tuning
types (roles.py). Five more, of other physics, live in plant_machines.py and are registered
into MACHINES at the end of this file (docs/corpus.md).

A machine renders its *normal* sound from its geometry (one geometry per section: a
different unit on the floor) and an operating point (the attributes in the file name),
and can render a fault of a given kind and severity. Faults come in two shapes:

* parametric: the fault changes the machine itself (imbalance raises the 1x shaft
  component and modulates everything at shaft rate; a worn gear raises mesh harmonics);
* additive: the fault adds a sound of its own (bearing defect impacts ringing the
  housing, cavitation crackle, a leak's hiss), returned separately so the corpus can set
  its level as an anomaly-to-normal ratio (ANR, dB).

``severity`` is in [0, 1]; the corpus draws it per clip so most anomalies are subtle.
"""

from __future__ import annotations

import numpy as np

from harken.training.synth.acoustics import (
    SR, bandpass, burst, colored_noise, drift, harmonics, highpass, impulse_train, lowpass,
    phase_of, resonances, rms,
)
from harken.training.synth.machine_type import MachineType, Rendered


def _pick(values: list, section: int):
    return values[section % len(values)]


def _motor_hum(n: int, rng: np.random.Generator, mains: float = 50.0, level: float = 0.15) -> np.ndarray:
    # Magnetostriction: twice mains and its harmonics.
    f = 2 * mains * drift(n, rng, 0.0003)
    return level * harmonics(phase_of(f, n), np.array([1.0, 0.4, 0.25, 0.1]), rng, f)


# --- fan -------------------------------------------------------------------------------
def _fan_geometry(section: int) -> dict:
    return {"blades": _pick([5, 7, 9], section), "rpm": _pick([1500.0, 1140.0, 1780.0], section),
            "modes": _pick([[820.0, 2300.0], [650.0, 1900.0], [980.0, 2650.0]], section)}


def _fan_points(section: int, domain: str) -> list[dict]:
    g = _fan_geometry(section)
    rel = [0.85, 1.0, 1.15] if domain == "source" else [1.32]
    return [{"spd": int(round(g["rpm"] * r))} for r in rel]


def _fan_render(rng, g, op, n, fault, sev) -> Rendered:
    f_shaft = op["spd"] / 60.0 * drift(n, rng, 0.004)
    ph = phase_of(f_shaft, n)
    B = g["blades"]
    bpf = harmonics(B * ph, np.array([1.0, 0.45, 0.25, 0.12, 0.08, 0.05]), rng, B * f_shaft)
    shaft = 0.06 * np.sin(ph) + 0.03 * np.sin(2 * ph + 1.0)
    turb = bandpass(colored_noise(n, rng, -2.0), 80.0, 7000.0)
    turb = turb / rms(turb) * 0.9 * (1.0 + 0.15 * np.sin(B * ph))
    turb += 0.25 * resonances(turb, g["modes"], q=6) / 6
    added = None
    if fault == "imbalance":
        shaft = shaft * (1.0 + 6.0 * sev)
        am = 1.0 + 0.12 * sev * np.sin(ph + 0.3)
        bpf, turb = bpf * am, turb * am
    elif fault == "blade_damage":
        # One blade pushes less air: a once-per-revolution dip in the blade-pass pulses.
        bpf = bpf * (1.0 - 0.5 * sev * np.cos(ph / 2) ** 16)
        shaft = shaft * (1.0 + 2.0 * sev)
    elif fault == "bearing":
        bpfo = 3.05 * f_shaft
        added = resonances(impulse_train(n, bpfo, rng, 0.01, 0.3), [2900.0, 3800.0], q=25)
    elif fault == "rubbing":
        contact = np.clip(np.sin(ph + rng.uniform(0, 6.3)), 0, 1) ** 6
        added = highpass(rng.standard_normal(n), 1800.0) * contact * drift(n, rng, 0.5, 2.0)
    return Rendered(bpf + shaft + turb + _motor_hum(n, rng), added)


# --- pump ------------------------------------------------------------------------------
def _pump_geometry(section: int) -> dict:
    return {"vanes": _pick([6, 5, 7], section), "rpm": _pick([2900.0, 1460.0, 2200.0], section),
            "pipe": _pick([[420.0, 1250.0, 2600.0], [380.0, 1100.0, 3100.0], [510.0, 1400.0]], section)}


def _pump_points(section: int, domain: str) -> list[dict]:
    flows = [40, 55, 70] if domain == "source" else [95]
    return [{"flow": f} for f in flows]


def _pump_render(rng, g, op, n, fault, sev) -> Rendered:
    flow = op["flow"] / 55.0
    f_shaft = g["rpm"] / 60.0 * (1.0 - 0.03 * (flow - 1.0)) * drift(n, rng, 0.002)
    ph = phase_of(f_shaft, n)
    V = g["vanes"]
    vpf = harmonics(V * ph, np.array([1.0, 0.5, 0.2, 0.1]), rng, V * f_shaft)
    fluid = lowpass(colored_noise(n, rng, -4.0), 3500.0)
    fluid = fluid / rms(fluid) * (0.6 + 0.6 * flow) * drift(n, rng, 0.05, 1.0)
    fluid += resonances(fluid, g["pipe"], q=10) / 8
    shaft = 0.05 * np.sin(ph)
    added = None
    if fault == "cavitation":
        rate = 300 + 600 * sev
        pops = impulse_train(n, rate, rng, 0.45, 1.0) * rng.lognormal(0, 0.8, n)
        added = highpass(resonances(pops, [2500.0, 4200.0, 6100.0], q=3), 1500.0)
    elif fault == "leak":
        added = bandpass(rng.standard_normal(n), 2500.0, 7500.0) * drift(n, rng, 0.2, 0.3)
    elif fault == "impeller":
        vpf = vpf * (1.0 + 0.35 * sev * np.cos(ph))
        shaft = shaft * (1.0 + 3.0 * sev)
    elif fault == "clogging":
        # A partial blockage: fluid noise rises in a higher band, pulsing at vane pass.
        added = bandpass(rng.standard_normal(n), 900.0, 2800.0) * (1.0 + 0.5 * np.sin(V * ph))
    return Rendered(vpf + fluid + shaft + _motor_hum(n, rng, level=0.2), added)


# --- gearbox ---------------------------------------------------------------------------
def _gearbox_geometry(section: int) -> dict:
    return {"z1": _pick([23, 31, 19], section), "z2": _pick([57, 64, 49], section),
            "rpm_per_volt": _pick([60.0, 42.0, 75.0], section),
            "housing": _pick([[1700.0, 3300.0], [1450.0, 2800.0], [2100.0, 3900.0]], section)}


def _gearbox_points(section: int, domain: str) -> list[dict]:
    if domain == "source":
        return [{"vol": v, "wt": w} for v in (20, 26) for w in (100, 150)]
    return [{"vol": 32, "wt": 250}]


def _gearbox_render(rng, g, op, n, fault, sev) -> Rendered:
    load = op["wt"] / 150.0
    f1 = op["vol"] * g["rpm_per_volt"] / 60.0 * (1.0 - 0.02 * load) * drift(n, rng, 0.003)
    f2 = f1 * g["z1"] / g["z2"]
    ph1, ph2 = phase_of(f1, n), phase_of(f2, n)
    amps = np.array([1.0, 0.55, 0.3, 0.15]) * (0.7 + 0.3 * load)
    am = 1.0 + 0.08 * np.cos(ph1) + 0.05 * np.cos(ph2)
    noise_level = 0.35 * (0.8 + 0.2 * load)
    added = None
    if fault == "wear":
        amps = amps * np.array([1.0, 1.0 + 1.5 * sev, 1.0 + 2.5 * sev, 1.0 + 3.0 * sev])
        noise_level *= 1.0 + 0.6 * sev
    elif fault == "misalignment":
        am = am + 0.25 * sev * np.cos(2 * ph1)
    elif fault == "tooth":
        # A cracked tooth: a once-per-revolution impact and a stiffness dip.
        am = am * (1.0 - 0.3 * sev * np.cos(ph1 / 2) ** 30)
        added = resonances(impulse_train(n, f1, rng, 0.002, 0.2), g["housing"], q=20)
    elif fault == "looseness":
        added = resonances(impulse_train(n, f1 / 2, rng, 0.08, 0.7), g["housing"] + [900.0], q=10)
    mesh = harmonics(g["z1"] * ph1, amps, rng, g["z1"] * f1) * am
    housing = resonances(rng.standard_normal(n), g["housing"], q=15) * 0.05
    floor = lowpass(colored_noise(n, rng, -3.0), 6000.0)
    floor = floor / rms(floor) * noise_level
    return Rendered(mesh + housing + floor + 0.08 * np.sin(ph1) + _motor_hum(n, rng), added)


# --- bearing ---------------------------------------------------------------------------
def _bearing_geometry(section: int) -> dict:
    return {"balls": _pick([9, 8, 12], section), "ratio": _pick([0.22, 0.26, 0.18], section),
            "rpm": _pick([1800.0, 1200.0, 2400.0], section),
            "modes": _pick([[2600.0, 3900.0, 5200.0], [2300.0, 3500.0], [3000.0, 4400.0]], section)}


def _bearing_points(section: int, domain: str) -> list[dict]:
    g = _bearing_geometry(section)
    rel = [0.8, 1.0, 1.2] if domain == "source" else [0.6]
    return [{"vel": int(round(g["rpm"] * r)), "loc": "A" if domain == "source" else "B"}
            for r in rel]


def _bearing_render(rng, g, op, n, fault, sev) -> Rendered:
    fr = op["vel"] / 60.0 * drift(n, rng, 0.003)
    ph = phase_of(fr, n)
    nb, d = g["balls"], g["ratio"]
    ftf = fr / 2 * (1 - d)
    rolling = colored_noise(n, rng, -1.5)
    rolling = rolling / rms(rolling) * 0.4 * (1.0 + 0.05 * np.sin(phase_of(ftf, n)))
    rolling += resonances(rolling, g["modes"], q=12) / 10
    rotor = harmonics(ph, np.array([0.25, 0.12, 0.05]), rng, fr)
    added = None
    if fault == "outer_race":
        added = resonances(impulse_train(n, nb / 2 * fr * (1 - d), rng, 0.005, 0.2), g["modes"], q=30)
    elif fault == "inner_race":
        hits = impulse_train(n, nb / 2 * fr * (1 + d), rng, 0.005, 0.2) * (1 + 0.7 * np.cos(ph))
        added = resonances(hits, g["modes"], q=30)
    elif fault == "ball":
        bsf = fr / (2 * d) * (1 - d * d)
        hits = impulse_train(n, 2 * bsf, rng, 0.01, 0.3) * (1 + 0.8 * np.cos(phase_of(ftf, n)))
        added = resonances(hits, g["modes"], q=30)
    elif fault == "lubrication":
        added = bandpass(rng.standard_normal(n), 3000.0, 7500.0) * drift(n, rng, 0.3, 1.0)
    return Rendered(rolling + rotor + _motor_hum(n, rng, level=0.1), added)


# --- slider ----------------------------------------------------------------------------
def _slider_geometry(section: int) -> dict:
    return {"stroke_s": _pick([0.9, 1.3, 0.7], section), "pitch_hz": _pick([180.0, 240.0, 150.0], section),
            "stop_modes": _pick([[1200.0, 3100.0], [1500.0, 2700.0], [1000.0, 3600.0]], section)}


def _slider_points(section: int, domain: str) -> list[dict]:
    if domain == "source":
        return [{"vel": v, "ac": a} for v in (500, 800) for a in (3, 5)]
    return [{"vel": 1100, "ac": 7}]


def _slider_velocity(n: int, g: dict, op: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoidal back-and-forth motion: |velocity| profile and stop instants."""
    v = op["vel"] / 800.0
    ramp = max(0.03, 0.25 / op["ac"])
    move = g["stroke_s"] / v
    dwell = 0.25
    speed = np.zeros(n)
    stops, t = [], rng.uniform(0, 0.5)
    while t * SR < n:
        seg = np.arange(int(t * SR), min(n, int((t + move) * SR)))
        tt = seg / SR - t
        speed[seg] = v * np.clip(np.minimum(tt, move - tt) / ramp, 0, 1)
        t += move
        stops.append(int(t * SR))
        t += dwell * (1 + 0.05 * rng.standard_normal())
    return speed, np.array([s for s in stops if s < n], dtype=int)


def _slider_render(rng, g, op, n, fault, sev) -> Rendered:
    speed, stops = _slider_velocity(n, g, op, rng)
    f_screw = g["pitch_hz"] * speed
    whine = harmonics(phase_of(f_screw, n), np.array([0.6, 0.3, 0.15, 0.1, 0.05]), rng,
                      g["pitch_hz"] * 1.6) * np.minimum(1.0, speed * 3)
    friction = bandpass(rng.standard_normal(n), 200.0, 5000.0) * speed * 0.3
    clicks = np.zeros(n)
    for s in stops:
        clicks += burst(n, s, int(0.05 * SR), rng, 0.006) * rng.uniform(0.8, 1.2)
    added = None
    if fault == "backlash":
        for s in stops:  # a second, later knock at each reversal
            clicks += burst(n, s + int((0.02 + 0.03 * sev) * SR), int(0.04 * SR), rng, 0.005) * 0.6 * sev
    knock = resonances(clicks, g["stop_modes"], q=10) * 0.4
    if fault == "rail_damage":
        mid = np.nonzero(np.diff((np.cumsum(speed) / SR * 2.0) % g["stroke_s"] > g["stroke_s"] / 2))[0]
        hits = np.zeros(n)
        hits[mid] = 1.0
        added = resonances(hits, [2200.0, 4800.0], q=15)
    elif fault == "no_grease":
        f_sq = rng.uniform(3000, 5200) * drift(n, rng, 0.02, 3.0)
        added = np.sin(phase_of(f_sq, n)) * speed * drift(n, rng, 0.4, 2.0)
    return Rendered(whine + friction + knock + _motor_hum(n, rng, level=0.05), added)


# --- valve -----------------------------------------------------------------------------
def _valve_geometry(section: int) -> dict:
    return {"open_modes": _pick([[2200.0, 3400.0], [1900.0, 4100.0], [2600.0, 3000.0]], section),
            "close_modes": _pick([[1800.0, 2900.0], [1500.0, 3600.0], [2100.0, 2500.0]], section),
            "hiss_band": _pick([(500.0, 4500.0), (700.0, 3800.0), (400.0, 5500.0)], section)}


_VALVE_PATTERNS = {  # (open duration s, closed duration s)
    "00": (0.30, 0.70), "01": (0.15, 0.35), "02": (0.50, 0.50), "03": (0.08, 0.25),
}


def _valve_points(section: int, domain: str) -> list[dict]:
    pats = ["00", "01", "02"] if domain == "source" else ["03"]
    return [{"pat": p} for p in pats]


def _valve_render(rng, g, op, n, fault, sev) -> Rendered:
    t_open, t_closed = _VALVE_PATTERNS[op["pat"]]
    gate = np.zeros(n)
    opens, closes = [], []
    t = rng.uniform(0, t_closed)
    delay = 0.0
    while t * SR < n:
        if fault == "sticking":
            delay = rng.uniform(0.3, 1.0) * sev * t_open * 0.5
        a, b = int((t + delay) * SR), int((t + t_open) * SR)
        opens.append(a)
        closes.append(b)
        gate[a:min(b, n)] = 1.0
        t += (t_open + t_closed) * (1 + 0.02 * rng.standard_normal())
    env = lowpass(gate, 30.0, order=1)
    hiss = bandpass(rng.standard_normal(n), *g["hiss_band"]) * env * 0.5
    clicks_o, clicks_c = np.zeros(n), np.zeros(n)
    for s in opens:
        clicks_o += burst(n, s, int(0.03 * SR), rng, 0.003)
    for s in closes:
        clicks_c += burst(n, s, int(0.03 * SR), rng, 0.004) * 0.8
    open_modes, close_modes = list(g["open_modes"]), list(g["close_modes"])
    added = None
    if fault == "contamination":
        # Debris on the seat: a damped, detuned closing knock and a little chatter.
        close_modes = [f * (1 - 0.12 * sev) for f in close_modes]
        for s in closes:
            clicks_c += burst(n, s + int(0.015 * SR), int(0.02 * SR), rng, 0.002) * 0.5 * sev
    elif fault == "leak":
        added = bandpass(rng.standard_normal(n), 3000.0, 7000.0) * (1.0 - env)
    clicks = resonances(clicks_o, open_modes, q=14) + resonances(clicks_c, close_modes, q=14)
    background_pump = lowpass(colored_noise(n, rng, -6.0), 800.0)
    background_pump = background_pump / rms(background_pump) * 0.05
    return Rendered(hiss + clicks * 0.35 + background_pump, added)


MACHINES: dict[str, MachineType] = {
    m.name: m for m in (
        MachineType("fan", ("imbalance", "blade_damage", "bearing", "rubbing"),
                    _fan_geometry, _fan_points, _fan_render,
                    "blade-pass harmonics, shaft 1x, modulated turbulence, motor hum",
                    {"rubbing": -12.0}),
        MachineType("pump", ("cavitation", "leak", "impeller", "clogging"),
                    _pump_geometry, _pump_points, _pump_render,
                    "vane-pass harmonics, flow noise exciting pipe modes",
                    {"leak": -8.0, "cavitation": -4.0}),
        MachineType("gearbox", ("wear", "misalignment", "tooth", "looseness"),
                    _gearbox_geometry, _gearbox_points, _gearbox_render,
                    "gear-mesh harmonics with shaft sidebands, housing modes",
                    {"looseness": -12.0, "tooth": -10.0}),
        MachineType("bearing", ("outer_race", "inner_race", "ball", "lubrication"),
                    _bearing_geometry, _bearing_points, _bearing_render,
                    "rolling noise through structural modes, rotor harmonics"),
        MachineType("slider", ("rail_damage", "no_grease", "backlash"),
                    _slider_geometry, _slider_points, _slider_render,
                    "trapezoidal strokes: screw whine, friction, end-stop knocks"),
        MachineType("valve", ("leak", "contamination", "sticking"),
                    _valve_geometry, _valve_points, _valve_render,
                    "solenoid open/close clicks, flow hiss while open",
                    {"leak": -12.0}),
    )
}

# The five types of issue 39 (docs/corpus.md): other physics, set apart for validation and test.
from harken.training.synth.plant_machines import PLANT_MACHINES  # noqa: E402

MACHINES.update({m.name: m for m in PLANT_MACHINES})
