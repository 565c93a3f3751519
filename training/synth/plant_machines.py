"""Five more machine types whose physics differ from the six of machines.py (issue 39).

The six types of machines.py are where every setting of the detectors was chosen; these
five are the generalisation benchmark (docs/corpus.md): ``blower`` and ``gear_pump`` are
validation types (choices may be made on them), ``vfd_motor``, ``chain_drive`` and
``screw_feeder`` are test types that only report (roles.py states the protocol).

What is new here, compared with the six: a belt drive with its own slow rate and a
low-frequency duct (blower), a pressure ripple of many harmonics carried by a fluid line
(gear pump), electrical noise that follows an inverter's output frequency and a carrier
that does not follow the shaft (VFD motor), a slow train of engagement impacts with a
chordal speed ripple and a string-like span (chain drive), and dense random micro-impacts
of a granular flow whose level is the operating point (screw feeder). Each type has
faults of its own kinds, parametric (the machine changes) or additive (a sound of its
own, set by the corpus as an anomaly-to-normal ratio), built as in machines.py.
"""

from __future__ import annotations

import numpy as np

from harken.training.synth.acoustics import (
    SR, bandpass, colored_noise, drift, harmonics, highpass, impulse_train, lowpass, phase_of,
    resonances, rms,
)
from harken.training.synth.machine_type import MachineType, Rendered


def _pick(values: list, section: int):
    return values[section % len(values)]


def _hum(n: int, rng: np.random.Generator, level: float, mains: float = 50.0) -> np.ndarray:
    # Magnetostriction of a mains-fed motor: twice mains and its harmonics.
    f = 2 * mains * drift(n, rng, 0.0003)
    return level * harmonics(phase_of(f, n), np.array([1.0, 0.4, 0.25, 0.1]), rng, f)


def _bursts(n: int, rng: np.random.Generator, per_10s: float, length_s: tuple[float, float]) -> np.ndarray:
    """A 0..1 gate of a few randomly placed episodes with soft edges (slips, chatter,
    stalls): the fault is there only part of the time, as such faults are."""
    gate = np.zeros(n)
    count = max(1, int(rng.poisson(per_10s * n / SR / 10)))
    for _ in range(count):
        a = int(rng.integers(0, n))
        gate[a:a + int(rng.uniform(*length_s) * SR)] = 1.0
    return lowpass(gate, 40.0, order=1)


def _slow_hits(n: int, rate_hz, rng: np.random.Generator, jitter: float, amp_jitter: float) -> np.ndarray:
    """An impulse train of a slow event (once per revolution or per chain pass) that has at
    least one hit even in a clip shorter than its period: an additive fault must sound."""
    hits = impulse_train(n, rate_hz, rng, jitter, amp_jitter)
    if not np.any(hits):
        hits[int(rng.integers(0, n))] = 1.0
    return hits


def _flow(n: int, rng: np.random.Generator, slope: float, lo: float, hi: float) -> np.ndarray:
    x = bandpass(colored_noise(n, rng, slope), lo, hi)
    return x / rms(x)


# --- blower: belt-driven forward-curved centrifugal fan (HVAC) ---------------------------
def _blower_geometry(section: int) -> dict:
    return {"blades": _pick([36, 42, 30], section), "rpm": _pick([1100.0, 900.0, 1300.0], section),
            "ratio": _pick([1.6, 1.9, 1.4], section),       # motor pulley speed / wheel speed
            "belt": _pick([0.35, 0.28, 0.42], section),     # belt passes per wheel turn
            "duct": _pick([[180.0, 410.0, 950.0], [150.0, 360.0, 1100.0], [220.0, 480.0, 870.0]], section),
            "panel": _pick([[320.0, 780.0, 1500.0], [280.0, 690.0, 1700.0], [360.0, 850.0, 1350.0]], section)}


def _blower_points(section: int, domain: str) -> list[dict]:
    # damper opening (%): the blower's operating point
    return [{"dmp": d} for d in ((40, 60, 80) if domain == "source" else (100,))]


def _blower_render(rng, g, op, n, fault, sev) -> Rendered:
    q = op["dmp"] / 100.0
    # A forward-curved wheel unloads as the flow drops: it speeds up when throttled.
    speed = 1.0 + 0.02 * (0.6 - q)
    if fault == "filter_clog":
        speed += 0.03 * sev          # less flow through a clogged filter: less load, faster
        q = q * (1.0 - 0.3 * sev)
    wobble = 1.0
    slip = None
    if fault == "belt_slip":
        slip = _bursts(n, rng, 3.0, (0.15, 0.5))
        wobble = 1.0 - 0.015 * sev * slip * (1.0 + np.sin(phase_of(7.0, n)))
    f_wheel = g["rpm"] / 60.0 * speed * drift(n, rng, 0.003) * wobble
    ph = phase_of(f_wheel, n)
    B = g["blades"]
    bpf = 0.35 * harmonics(B * ph, np.array([1.0, 0.3, 0.1]), rng, B * f_wheel)
    f_motor = f_wheel * g["ratio"]
    shaft = 0.05 * np.sin(ph) + 0.03 * np.sin(phase_of(f_motor, n))
    # Flow noise: rises with the flow and leans to low frequencies; a throttled damper
    # whistles in a band of its own.
    belt_am = 1.0 + 0.04 * np.sin(phase_of(f_wheel * g["belt"], n))
    flow = _flow(n, rng, -4.0, 50.0, 6500.0) * (0.4 + 0.8 * q) * belt_am * drift(n, rng, 0.04, 0.7)
    flow += resonances(flow, g["duct"], q=8) / 5
    whistle = _flow(n, rng, 0.0, 1800.0, 3200.0) * 0.25 * (1.0 - q) ** 1.5
    added = None
    if fault == "belt_slip":
        f_sq = rng.uniform(1600.0, 2600.0) * drift(n, rng, 0.03, 4.0)
        p_sq = phase_of(f_sq, n)
        added = (np.sin(p_sq) + 0.3 * np.sin(2 * p_sq)) * slip
    elif fault == "bearing":
        bpfo = 3.57 * f_wheel
        added = resonances(impulse_train(n, bpfo, rng, 0.01, 0.3), [2400.0, 3700.0], q=25)
    elif fault == "loose_panel":
        # The panel rattles only when the wheel's 1x pushes it past its play.
        loose = drift(n, rng, 0.8, 1.5) > 1.0
        hits = impulse_train(n, f_wheel, rng, 0.05, 0.5) * (loose if loose.any() else 1.0)
        added = resonances(hits, g["panel"], q=15)
    return Rendered(bpf + shaft + flow + whistle + _hum(n, rng, 0.1), added)


# --- gear_pump: hydraulic external gear pump ----------------------------------------------
def _gear_pump_geometry(section: int) -> dict:
    teeth = _pick([9, 11, 13], section)
    # The ripple's harmonic pattern is set by the tooth profile and relief grooves: fixed
    # per unit, drawn once from the section.
    pattern = np.random.default_rng(1000 + section).uniform(0.5, 1.0, 16) / np.arange(1, 17) ** 0.7
    return {"teeth": teeth, "rpm": _pick([1500.0, 1800.0, 1200.0], section), "pattern": pattern,
            "hose": _pick([[230.0, 690.0, 1150.0], [260.0, 780.0, 1300.0], [200.0, 600.0, 1000.0]], section),
            "case": _pick([[1800.0, 3400.0], [2100.0, 3900.0], [1600.0, 3000.0]], section)}


def _gear_pump_points(section: int, domain: str) -> list[dict]:
    return [{"bar": p} for p in ((60, 100, 140) if domain == "source" else (210,))]


def _gear_pump_render(rng, g, op, n, fault, sev) -> Rendered:
    p = op["bar"] / 100.0
    f_shaft = g["rpm"] / 60.0 * (1.0 - 0.01 * p) * drift(n, rng, 0.002)
    ph = phase_of(f_shaft, n)
    z = g["teeth"]
    amps = g["pattern"].copy()
    ripple_ph = z * ph
    am = 1.0 + 0.03 * np.cos(ph)
    if fault == "worn_teeth":
        # Worn flanks: the odd harmonics rise, the fundamental falls, and each tooth pair
        # differs, which puts shaft-rate sidebands on the ripple.
        k = np.arange(1, amps.size + 1)
        amps = amps * np.where(k % 2 == 1, 1.0 + 0.8 * sev, 1.0) * np.where(k == 1, 1.0 - 0.4 * sev, 1.0)
        am = am + 0.12 * sev * np.cos(ph + 0.7)
    elif fault == "aeration":
        # Air in the oil: the ripple's timing wanders (the fluid is compressible now).
        ripple_ph = ripple_ph + 0.12 * sev * lowpass(rng.standard_normal(n), 60.0) * 8
    ripple = harmonics(ripple_ph, amps, rng, z * f_shaft) * am * (0.3 + 0.5 * p)
    fluid = _flow(n, rng, -2.0, 80.0, 7000.0) * 0.3 * (0.5 + 0.5 * p)
    fluid_line = resonances(fluid + 0.3 * ripple, g["hose"], q=15) / 6
    case = resonances(ripple, g["case"], q=10) / 8
    shaft = 0.04 * np.sin(ph)
    added = None
    if fault == "aeration":
        rate = 80.0 + 220.0 * sev
        pops = impulse_train(n, rate, rng, 0.45, 1.0) * rng.lognormal(0, 0.9, n)
        added = highpass(resonances(pops, [2200.0, 4800.0, 6400.0], q=3), 1800.0)
    elif fault == "relief_chatter":
        gate = _bursts(n, rng, 2.0, (0.05, 0.3))
        f_pop = rng.uniform(380.0, 900.0) * drift(n, rng, 0.02, 5.0)
        poppet = harmonics(phase_of(f_pop, n), np.array([1.0, 0.6, 0.4, 0.2]), rng, f_pop)
        added = (poppet + 0.5 * bandpass(rng.standard_normal(n), 1500.0, 6000.0)) * gate
    elif fault == "seal_squeal":
        f_sq = rng.uniform(3000.0, 5500.0) * drift(n, rng, 0.01, 1.0)
        stick = 1.0 + 0.6 * np.clip(np.sin(ph + rng.uniform(0, 6.3)), 0, 1)
        added = np.sin(phase_of(f_sq, n)) * stick * drift(n, rng, 0.3, 1.0)
    return Rendered(ripple + fluid + fluid_line + case + shaft + _hum(n, rng, 0.15), added)


# --- vfd_motor: inverter-fed induction motor -----------------------------------------------
def _vfd_geometry(section: int) -> dict:
    return {"poles": _pick([4, 2, 6], section), "slots": _pick([28, 36, 44], section),
            "carrier": _pick([4000.0, 2500.0, 5000.0], section), "fan_blades": _pick([7, 9, 11], section),
            "stator": _pick([[1100.0, 2600.0], [1350.0, 3100.0], [900.0, 2200.0]], section),
            "bearing_modes": _pick([[2800.0, 4100.0], [3200.0, 4600.0], [2500.0, 3800.0]], section)}


def _vfd_points(section: int, domain: str) -> list[dict]:
    # the inverter's output frequency (Hz)
    return [{"hz": f} for f in ((30, 40, 50) if domain == "source" else (65,))]


def _vfd_render(rng, g, op, n, fault, sev) -> Rendered:
    f_out = op["hz"] * drift(n, rng, 0.0005)
    s = 0.03
    pairs = g["poles"] // 2
    f_rot = f_out / pairs * (1.0 - s) * drift(n, rng, 0.0005)
    ph_out, ph_rot = phase_of(f_out, n), phase_of(f_rot, n)
    # Magnetic noise: the radial force of the air-gap field at twice the output frequency.
    mag_amps = np.array([1.0, 0.45, 0.3, 0.15, 0.1]) * 0.35
    mag_am = np.ones(n)
    carrier_am = 1.0 + 0.5 * np.cos(2 * ph_out)          # lines at fc +- 2 f_out
    if fault == "phase_unbalance":
        mag_amps = mag_amps * np.array([1.0 + 0.5 * sev, 1.0, 1.0 + 0.3 * sev, 1.0, 1.0])
        carrier_am = carrier_am + 0.25 * sev * np.cos(ph_out + 0.4)   # odd lines appear
    elif fault == "broken_rotor_bar":
        # Torque pulsing at twice the slip frequency: a slow beat of the magnetic noise.
        mag_am = mag_am + 0.25 * sev * np.cos(phase_of(2 * s * f_out, n))
    elif fault == "eccentricity":
        mag_am = mag_am + 0.2 * sev * np.cos(ph_rot)
    magnetic = harmonics(2 * ph_out, mag_amps, rng, 2 * f_out) * mag_am
    magnetic += resonances(magnetic, g["stator"], q=20) / 10
    pc = phase_of(g["carrier"], n)     # the carrier does not follow the shaft
    carrier = 0.12 * np.sin(pc) * carrier_am
    if 2 * g["carrier"] < 0.95 * SR / 2:
        carrier += 0.05 * np.sin(2 * pc + np.cos(ph_out)) * (1.0 + 0.4 * np.cos(ph_out))
    # Rotor slot harmonics: f_out (R (1 - s) / p +- 1).
    rsh_base = g["slots"] * f_rot
    rsh = 0.06 * (np.sin(phase_of(rsh_base + f_out, n)) + np.sin(phase_of(rsh_base - f_out, n)))
    if fault == "eccentricity":
        rsh = rsh + 0.04 * sev * (np.sin(phase_of(rsh_base + f_out + f_rot, n))
                                  + np.sin(phase_of(rsh_base - f_out - f_rot, n)))
    B = g["fan_blades"]
    fan = 0.2 * harmonics(B * ph_rot, np.array([1.0, 0.4, 0.15]), rng, B * f_rot)
    air = _flow(n, rng, -3.0, 100.0, 6000.0) * 0.25 * (f_rot / 25.0) ** 1.5 * (1.0 + 0.1 * np.sin(B * ph_rot))
    added = None
    if fault == "bearing_fluting":
        # Electrical discharge through the bearing leaves a washboard pattern: a whine at a
        # fixed number of flutes per race, locked to the cage and ball passes.
        bpfo = 3.1 * f_rot
        flutes = max(1.0, np.round(rng.uniform(1500.0, 2600.0) / np.mean(bpfo)))
        pf = phase_of(flutes * bpfo, n)
        tone = (np.sin(pf) + 0.4 * np.sin(2 * pf)) * (1.0 + 0.3 * np.cos(phase_of(0.4 * f_rot, n)))
        added = tone + 0.3 * resonances(rng.standard_normal(n) * 0.1, g["bearing_modes"], q=30)
    return Rendered(magnetic + carrier + rsh + fan + air, added)


# --- chain_drive: roller chain on sprockets -------------------------------------------------
def _chain_geometry(section: int) -> dict:
    return {"teeth": _pick([17, 21, 13], section), "links": _pick([96, 120, 80], section),
            "span_hz": _pick([38.0, 31.0, 46.0], section), "ratio": _pick([20.0, 15.0, 25.0], section),
            "sprocket": _pick([[1400.0, 2900.0], [1200.0, 3300.0], [1650.0, 2600.0]], section),
            "roller": _pick([[4200.0], [4700.0], [3900.0]], section)}


def _chain_points(section: int, domain: str) -> list[dict]:
    return [{"rpm": r} for r in ((150, 200, 250) if domain == "source" else (330,))]


def _chain_render(rng, g, op, n, fault, sev) -> Rendered:
    f_s = op["rpm"] / 60.0 * drift(n, rng, 0.004)
    ph = phase_of(f_s, n)
    z = g["teeth"]
    f_e = z * f_s
    # Chordal (polygon) action: the chain speed dips once per tooth by 1 - cos(pi / z).
    chordal = 1.0 - (1.0 - np.cos(np.pi / z)) * 0.5 * (1.0 - np.cos(z * ph))
    jitter, gain = 0.01, np.ones(n)
    modes = list(g["sprocket"])
    span = g["span_hz"]
    if fault == "stretched_chain":
        # A longer pitch: rollers meet the teeth late and unevenly, the span is slacker.
        jitter = 0.01 + 0.06 * sev
        gain = gain * (1.0 + 0.4 * sev)
        span = span * (1.0 - 0.12 * sev)
    elif fault == "worn_sprocket":
        # Hooked teeth: engagement changes around the sprocket and the contact rings lower.
        gain = gain * (1.0 + 0.5 * sev * (0.5 + 0.5 * np.cos(ph + 1.3)))
        modes = [f * (1.0 - 0.06 * sev) for f in modes]
    speed_sq = (op["rpm"] / 200.0) ** 2
    hits = impulse_train(n, f_e, rng, jitter, 0.15) * gain * speed_sq
    impacts = resonances(hits, modes, q=12) * 0.6 + resonances(hits, g["roller"], q=20) * 0.3
    f_span = span * drift(n, rng, 0.01, 0.5)
    span_tone = harmonics(phase_of(f_span, n), np.array([1.0, 0.5, 0.3, 0.2]), rng, f_span)
    span_tone = span_tone * 0.15 * (1.0 + 0.5 * np.cos(z * ph)) * drift(n, rng, 0.3, 0.8)
    f_motor = f_s * g["ratio"]
    mesh = 0.1 * harmonics(17 * phase_of(f_motor, n), np.array([1.0, 0.4, 0.2]), rng, 17 * f_motor)
    rolling = _flow(n, rng, -2.0, 150.0, 6000.0) * 0.15 * chordal
    added = None
    if fault == "dry_chain":
        # Metal on metal at each engagement, and sometimes a squeal.
        rasp = bandpass(rng.standard_normal(n), 3000.0, 7000.0)
        pulses = lowpass(impulse_train(n, f_e, rng, 0.02, 0.3), 200.0, order=1)
        squeal = np.sin(phase_of(rng.uniform(2500.0, 4000.0) * drift(n, rng, 0.02, 2.0), n))
        added = rasp * np.abs(pulses) * 20 + 0.3 * squeal * _bursts(n, rng, 2.0, (0.2, 0.6))
    elif fault == "stiff_link":
        # One link that does not bend: a knock each time it passes a sprocket.
        f_pass = f_s * z / g["links"]
        knocks = _slow_hits(n, f_pass, rng, 0.01, 0.1) + impulse_train(n, f_pass, rng, 0.01, 0.1)
        added = resonances(knocks, [600.0, 1800.0] + modes, q=10)
    return Rendered(impacts + span_tone + mesh + rolling + _hum(n, rng, 0.1), added)


# --- screw_feeder: an auger conveying granular material ------------------------------------
def _screw_geometry(section: int) -> dict:
    return {"rpm": _pick([60.0, 45.0, 80.0], section), "ratio": _pick([24.0, 32.0, 18.0], section),
            "z": _pick([17, 19, 23], section), "grain_rate": _pick([3000.0, 4500.0, 2200.0], section),
            "trough": _pick([[700.0, 1600.0, 3100.0], [820.0, 1900.0, 3500.0], [600.0, 1450.0, 2800.0]],
                            section),
            "ring": _pick([[1900.0, 4300.0], [2200.0, 4800.0], [1700.0, 3900.0]], section)}


def _screw_points(section: int, domain: str) -> list[dict]:
    # fill level of the trough (%)
    return [{"fill": f} for f in ((30, 45, 60) if domain == "source" else (85,))]


def _screw_render(rng, g, op, n, fault, sev) -> Rendered:
    fill = op["fill"] / 100.0
    load = fill
    speed = np.ones(n) * (1.0 - 0.05 * fill)
    if fault == "jam":
        # Overload: the drive slows, and now and then nearly stalls.
        load = fill * (1.0 + 0.6 * sev)
        speed = speed * (1.0 - 0.06 * sev) * (1.0 - 0.4 * sev * _bursts(n, rng, 1.5, (0.2, 0.5)))
    elif fault == "empty_running":
        fill = fill * (1.0 - 0.6 * sev)
        load = fill
        speed = speed * (1.0 + 0.02 * sev)
    f_screw = g["rpm"] / 60.0 * speed * drift(n, rng, 0.005)
    ph = phase_of(f_screw, n)
    f_m = f_screw * g["ratio"]
    mesh = harmonics(g["z"] * phase_of(f_m, n), np.array([1.0, 0.5, 0.25]), rng, g["z"] * f_m)
    mesh = mesh * 0.15 * (0.6 + 0.8 * load)
    motor = 0.05 * np.sin(phase_of(f_m, n)) + _hum(n, rng, 0.1 * (0.7 + 0.6 * load))
    # Granular flow: many tiny random impacts of grains on the flights and the trough,
    # denser with more material, surging as each flight pushes its heap along.
    surge = 1.0 + 0.3 * np.clip(np.sin(ph), 0, 1) ** 2
    density = g["grain_rate"] * (0.3 + fill) * surge * (speed ** 1.5) / SR
    grains = (rng.random(n) < density) * rng.lognormal(0, 0.7, n)
    flow = highpass(resonances(grains, g["trough"], q=5) + 0.3 * grains, 250.0)
    flow = flow / rms(flow) * 0.5 * np.sqrt(0.3 + fill)
    added = None
    if fault == "foreign_object":
        # A bolt or stone carried along: a hard knock when a flight drives it into the trough.
        hits = np.abs(_slow_hits(n, f_screw, rng, 0.05, 0.5))
        added = resonances(hits, g["ring"], q=30)
    elif fault == "flight_wear":
        contact = np.clip(np.sin(ph + rng.uniform(0, 6.3)), 0, 1) ** 4
        added = bandpass(rng.standard_normal(n), 1500.0, 5000.0) * contact * drift(n, rng, 0.3, 1.0)
    return Rendered(mesh + motor + flow, added)


PLANT_MACHINES: tuple[MachineType, ...] = (
    MachineType("blower", ("belt_slip", "bearing", "filter_clog", "loose_panel"),
                _blower_geometry, _blower_points, _blower_render,
                "belt-driven forward-curved wheel: weak blade pass, belt rate, duct modes, "
                "flow noise set by the damper", {"loose_panel": -10.0, "belt_slip": -12.0, "bearing": -10.0}),
    MachineType("gear_pump", ("aeration", "worn_teeth", "relief_chatter", "seal_squeal"),
                _gear_pump_geometry, _gear_pump_points, _gear_pump_render,
                "pressure ripple of many harmonics at teeth x shaft rate, hose resonances, "
                "pressure as operating point",
                {"seal_squeal": -10.0, "aeration": -12.0, "relief_chatter": -8.0}),
    MachineType("vfd_motor", ("broken_rotor_bar", "bearing_fluting", "eccentricity", "phase_unbalance"),
                _vfd_geometry, _vfd_points, _vfd_render,
                "inverter-fed motor: PWM carrier with +-2f sidebands, magnetic 2f noise, rotor "
                "slot harmonics, cooling fan", {"bearing_fluting": -12.0}),
    MachineType("chain_drive", ("stretched_chain", "dry_chain", "stiff_link", "worn_sprocket"),
                _chain_geometry, _chain_points, _chain_render,
                "roller chain: engagement impacts with chordal speed ripple, span vibration, "
                "sprocket modes", {"dry_chain": -12.0, "stiff_link": -10.0}),
    MachineType("screw_feeder", ("foreign_object", "flight_wear", "jam", "empty_running"),
                _screw_geometry, _screw_points, _screw_render,
                "auger in granular material: dense micro-impacts, drive gear tone, fill "
                "level as operating point", {"foreign_object": -10.0, "flight_wear": -12.0}),
)
