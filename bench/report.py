"""Writes docs/benchmarks.md from bench/results/*.json (never from typed numbers)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from harken.training.markdown import table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def features_section(r: dict) -> list[str]:
    rt, ratios, diff = r["realtime_factor"], r["ratios"], r["max_abs_diff_db"]
    lines = [
        "## Log-mel front end",
        "",
        f"`{r['command']}` — {r['audio_seconds']:g} s of 16 kHz audio, one thread, median "
        f"CPU time of {r['repeats']} repeats, all extractors in the same run "
        f"({r['when']}).",
        "",
        "| extractor | x real time (audio s per CPU s) |",
        "|---|---|",
        f"| harken batch (`LogMelExtractor`) | {rt['batch']:.0f} |",
        f"| harken streaming, 10 ms chunks (`StreamingLogMel`) | {rt['streaming_10ms']:.0f} |",
        f"| librosa `melspectrogram`, float32 input | {rt['librosa_float32_input']:.0f} |",
        f"| librosa `melspectrogram`, float64 input | {rt['librosa_float64_input']:.0f} |",
        "",
        f"Ratios: batch / librosa (float32 input) = **{ratios['batch_over_librosa_float32']:.2f}**, "
        f"batch / librosa (float64 input) = {ratios['batch_over_librosa_float64']:.2f}, "
        f"streaming / batch = **{ratios['streaming_over_batch']:.2f}**.",
        "",
        f"Largest difference from librosa (float64): batch {diff['batch_vs_librosa_db']:.2g} dB, "
        f"streaming {diff['streaming_vs_librosa_db']:.2g} dB; streaming vs batch "
        f"{diff['streaming_vs_batch_db']:.2g} dB.",
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if ok else '**missed**'}"
                                for k, ok in r["targets_met"].items()) + ".",
    ]
    b = r.get("spectral_knn_front_end")
    if b:
        lines += [
            "",
            "spectral-knn's front end (log-mel + 513-bin spectrum) and each branch's per-interval "
            "statistics (10-s intervals: window rows and pooling, as the agent's rule computes "
            "them; `moments` is what the model graph computes, here in numpy) in CPU time "
            "over a bare `scipy.fft.rfft` of the same frames (float32, framed and windowed "
            "beforehand), same run, the parts interleaved (one call of each per round, median "
            "of 3 x repeats rounds: a shared machine's load falls on all of them alike). "
            "Before the branches' rewrite (2026-12-05, the same interleaved timing, main's "
            "code): log-mel + spectrum + frame branches 4.15x, whole front end 5.30x.",
            "",
            "| part | x bare rfft |",
            "|---|---|",
            f"| log-mel + spectrum | {b['logmel_spectrum_over_rfft']:.2f} |",
            f"| moments + pooling (mel, spectrum) | {b['moments_pooling_over_rfft']:.2f} |",
            *(f"| moments + {k} | {b[f'{k}_over_rfft']:.2f} |"
              for k in ("modulation", "temporal", "cepstrum")),
            f"| moments + all five branches | {b['all_branches_over_rfft']:.2f} |",
            f"| log-mel + spectrum + the three frame branches (moments left to the model) | "
            f"{b.get('front_end_frame_branches_over_rfft', float('nan')):.2f} |",
            f"| **whole front end, every branch** | **{b['front_end_all_branches_over_rfft']:.2f}** |",
        ]
    return lines


def training_section(r: dict) -> list[str]:
    gpu = r.get("gpu")
    m = r["machine"]
    lines = [f"## Training throughput{' on a GPU machine' if gpu else ''}", "",
             f"`{r['command']}` ({r['when']}) on {m['cores']} cores of {m['cpu']}, "
             f"torch {r['torch']}, {r['cpu_threads']} CPU threads"
             + (f", GPU {gpu}" if gpu else ", no CUDA GPU in this run") + ". Default settings "
             "of each method; one epoch = the AE's vectors of one standard-corpus machine type, "
             "or the classifiers' windows_per_epoch.", "",
             "| method | samples per epoch | CPU samples/s | CPU s/epoch |"
             + (" GPU samples/s | GPU s/epoch | CPU/GPU |" if gpu else ""),
             "|---|---|---|---|" + ("---|---|---|" if gpu else "")]
    for name, row in r["methods"].items():
        line = (f"| {name} | {row['samples_per_epoch']} | {row['cpu']['samples_per_second']:.0f} | "
                f"{row['cpu']['seconds_per_epoch']:.1f} |")
        if gpu and "cuda" in row:
            line += (f" {row['cuda']['samples_per_second']:.0f} | "
                     f"{row['cuda']['seconds_per_epoch']:.2f} | {row['cpu_over_gpu']:.1f} |")
        lines.append(line)
    return lines


def distributed_training_section(r: dict) -> list[str]:
    """bench_training.py --nproc: one process against N, side by side (docs/training.md
    "Training on several GPUs")."""
    n, gpu, med, cores = r["nproc"], r.get("gpu"), r["median"], r["cores"]
    per = r["threads_per_process"]
    where = (f"{n} GPUs ({gpu}), NCCL" if gpu else f"{cores} CPU cores, gloo")
    lines = [f"## Training across processes ({n} against 1)", "",
             f"`{r['command']}` ({r['when']}), torch {r['torch']}, on {where}. `harken-train "
             f"train` of {r['method']} on the {r['machine_type']} clips of the {r['corpus']} "
             f"corpus ({', '.join(r['settings'])}; otherwise the defaults), the three rows "
             f"alternated, {r['repeats']} runs each, medians (the cores are shared with other "
             "work: the runs of a row show how much that moved them). Samples/s is the training loop's "
             "(the whole batch's samples per second, validation and feature extraction left "
             "out); wall is the whole command, each process extracting the features itself.", "",
             "| processes | samples/s | each run's samples/s | training loop s | wall s |",
             "|---|---|---|---|---|"]
    for label, key in ((f"1, {cores} threads (as a user runs it)", "one"),
                       ("1, 1 thread", "one_thread"),
                       (f"{n}, {per} thread(s) each (`--nproc {n}`)", "many")):
        m, each = med[key], ", ".join(f"{x['samples_per_second']:.0f}" for x in r["runs"][key])
        lines.append(f"| {label} | {m['samples_per_second']:.0f} | {each} | {m['loop_s']:.1f} | "
                     f"{m['wall_s']:.1f} |")
    lines += ["", f"{n} processes over 1 process: {r['samples_per_second_ratio']:.2f} x the "
              f"samples per second, {r['wall_ratio']:.2f} x the wall time. Scaling efficiency "
              f"(the {n} processes' samples/s over {n} times a lone 1-thread process's; 1.00 = "
              f"the distributed path costs nothing): {r['scaling_efficiency']:.2f}."]
    if not gpu:
        lines += ["", f"On {cores} cores this is not the speed-up the feature is for: the "
                  "processes share the cores that one process already uses with its threads. "
                  "The first ratio is what processes instead of threads give on these cores; "
                  "the scaling efficiency is the distributed path's own cost "
                  "(DistributedDataParallel's gradient all-reduce over gloo, half batches). "
                  "The speed-up is for a machine with a GPU per process; there:"]
    lines += ["", f"    {r['multi_gpu_command']}"]
    return lines


def scorers_section(r: dict) -> list[str]:
    lines = ["## Scorers: latency per window", "",
             f"`{r['command']}` ({r['when']}): median and p99 wall time of one model call on one "
             f"window, {r['threads']} thread, {r['repeats']} calls after a warm-up, every "
             "artifact through the agent's own backend (agent/model/backends.py); torch fp32 is the "
             "BN-folded module the export starts from. CPU share = median x windows per second "
             "of audio at the model's default hop (AE: every frame, MobileNetV2: every 8th; the "
             "generative detectors at their presets' own hops, the column windows / audio s). "
             "A generative bundle's row is its graph's call; the numpy rule after it (the one "
             "its end-to-end section below names) is not in it, and is in that section's CPU. "
             "aegan-ad, gmgan and oevae are trained for seconds with the tests' settings "
             "(harken/testkit/data.py GENERATIVE; aegan-ad's score pinned to d-lof; oevae "
             "against a tiny valve corpus as outliers); latency does not depend on how well "
             "they are trained.",
             ""] + table(
        ["model", "artifact", "median ms", "p99 ms", "file bytes", "windows / audio s",
         "CPU % of one core"],
        [[row["model"], row["artifact"], f"{row['median_ms']:.3f}", f"{row['p99_ms']:.3f}",
          "-" if row["size_bytes"] is None else f"{row['size_bytes']:,}",
          f"{row['windows_per_audio_s']:.2f}", f"{100 * row['cpu_s_per_audio_s']:.2f}"]
         for row in r["rows"]])
    ms = {(row["model"], row["artifact"]): row["median_ms"] for row in r["rows"]}
    speedups = [f"{model}: ONNX {ms[(model, 'onnx-fp32')] / ms[(model, 'onnx-int8')]:.2f}x, "
                f"TFLite {ms[(model, 'tflite-fp32')] / ms[(model, 'tflite-int8')]:.2f}x"
                for model in dict.fromkeys(m for m, _ in ms)
                if all((model, k) in ms for k in ("onnx-fp32", "onnx-int8", "tflite-fp32",
                                                   "tflite-int8"))]
    lines += ["", "int8 speed-up over fp32 of the same runtime (median; below 1 = int8 is "
              "slower on this CPU): " + "; ".join(speedups) + ". int8's gain on a device is "
              "memory and file size first; its speed depends on the CPU's int8 instructions.", "",
              "No Raspberry Pi 4 figure: emulated arm64 timing (scripts/arm64-check) says nothing "
              "about a real Pi's speed, and an estimate from counted instructions would still need "
              "the Cortex-A72's instructions per cycle for these kernels, which nobody here has "
              "measured; a factor from this CPU would be invented, so none is given."]
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _unscored_intervals(r: dict) -> list[str]:
    """A sentence where the real-time run scored fewer intervals than its pace gives: a
    bundle whose window is longer than the report interval (AEGAN-AD's patch)."""
    rt = r["realtime"]
    stats = rt["stats_example"]
    paced = stats["uptime_s"] / rt["interval_s"]
    if "window_s" not in r or stats["intervals"] >= 0.9 * paced:
        return []
    return [f"The last stats record's {stats['uptime_s']:g} s held {stats['intervals']} scored "
            f"intervals, not {paced:.0f}: this bundle's window is {r['window_s']:.2f} s of "
            f"audio, longer than a {rt['interval_s']:g}-s interval.", ""]


def agent_section(r: dict) -> list[str]:
    f, rt, t, ok = r["fast"], r["realtime"], r["targets"], r["met"]
    heading = "## Agent end to end" + ("" if r["model"] == "spectral-knn"
                                       else f": the {r.get('label') or r['model']} bundle")
    return [
        heading, "",
        f"`{r['command']}` ({r['when']}): `harken run` with the {r['model']} bundle as "
        f"{r['artifact']}" + (f" (score rule `{r['rule']}`)" if "rule" in r else "")
        + f", {r['threads']} thread, on the bench corpus's fan audio.", "",
        f"As fast as possible, {f['audio_s'] / 3600:g} h WAV file, no MQTT: "
        f"**{f['x_real_time']:.0f}x real time** ({f['wall_s']:.1f} s wall including start-up, "
        f"{f['intervals']} report intervals), peak RSS {f['peak_rss_mb']:.0f} MB (the file is "
        "memory-mapped; its pages count as resident while they are read).", "",
        f"At real-time pacing for {rt['audio_s']} s, publishing to a real Mosquitto on "
        f"loopback with {rt['interval_s']:g}-s report intervals (five times the default rate: "
        f"the CPU figure is an upper bound for the default, and the latency rests on "
        f"{rt['published']} scores). CPU and RSS from the agent's own stats records "
        f"(every {rt['stats_s']} s), peak RSS as VmHWM; publish latency from the arrival of "
        "the audio that completes an interval to the broker's PUBACK of its score, as the "
        "agent measures it (the p99 is the largest of the per-record p99s, an upper bound).", "",
        *_unscored_intervals(r),
        "| figure | measured | target | |", "|---|---|---|---|",
        f"| CPU, % of one core (median of records) | {rt['cpu_percent_median']:.2f} "
        f"(max {rt['cpu_percent_max']:.2f}) | < {t['cpu_percent']:g} | {met(ok['cpu_percent'])} |",
        f"| peak RSS, MB | {rt['peak_rss_mb']:.0f} | < {t['rss_mb']:g} | {met(ok['rss_mb'])} |",
        f"| publish latency p99, ms | {rt['publish_ms_p99_max']:.1f} (median "
        f"{rt['publish_ms_median']:.1f}) | < {t['publish_ms_p99']:g} | "
        f"{met(ok['publish_ms_p99'])} |", "",
        "The last stats record of the run, as the agent wrote it (JSON lines; the MQTT stats "
        "topic carries the same figures):", "",
        "```json", json.dumps(rt["stats_example"]), "```",
    ]


def detection_section(r: dict) -> list[str]:
    rows, machines = r["rows"], r["corpus"]["machines"]
    knn = next((x["official"] for x in rows if x["name"] == "baseline-knn"), None)
    lines = [
        "## Detection quality", "",
        f"`{r['command']}` ({r['when']}): official DCASE score (harmonic mean of AUC source, "
        f"AUC target and pAUC over every section) on the {r['corpus']['size']} synthetic corpus "
        f"(`{r['corpus']['root']}`, seed {r['corpus']['seed']}). Methods and int8 bundles are "
        "the runs of `scripts/make-results` (docs/results.md); `audio-anomaly` "
        f"{r['audio_anomaly_version']} (PyPI) is run here: `audio_anomaly.Monitor` with the "
        "section's training clips as the healthy reference, clip score = highest frame score.",
        ""] + table(
        ["detector", "kind", "official", "vs baseline-knn", "mean AUC source", "mean AUC target",
         *machines],
        [[x["name"], x["kind"], f"{x['official']:.4f}",
          "" if knn is None else f"{x['official'] - knn:+.4f}", f"{x['auc_source']:.3f}",
          f"{x['auc_target']:.3f}",
          *(f"{x['machines'][m]:.4f}" if m in x["machines"] else "-" for m in machines)]
         for x in rows])
    if r["missing"]:
        lines += ["", f"Not evaluated yet: {', '.join(r['missing'])} — run "
                  f"`METHODS=\"{' '.join(r['missing'])}\" scripts/make-results` first."]
    aa = next(x for x in rows if x["kind"] == "peer")
    lines += ["", f"audio-anomaly: AUC source {aa['auc_source']:.3f}, target "
              f"{aa['auc_target']:.3f}. It flags robust spectral change against one reference "
              "spectrum, built for knocks, new tones and level changes over a steady hum. Here "
              "the target domain's normal clips (shifted operating conditions the reference "
              "barely covers) differ from that spectrum more than the subtle faults do, so "
              + ("they score above the faults (target AUC below 0.5)"
                 if aa["auc_target"] < 0.5 else "target-domain separation is weak")
              + ". The learned detectors model the spread of normal sound instead."]
    return lines


def detector_table(rows: list[dict], knn: dict, machines: list[str]) -> list[str]:
    """Detectors' official score, its change over baseline-knn, mean AUCs and the score per
    machine type; baseline-knn last."""
    return table(
        ["detector", "official", "vs baseline-knn", "mean AUC source", "mean AUC target",
         *machines],
        [[x["name"], f"{x['official']:.4f}", f"{x['official'] - knn['official']:+.4f}",
          f"{x['auc_source']:.3f}", f"{x['auc_target']:.3f}",
          *(f"{x['machines'][m]:.4f}" for m in machines)]
         for x in [*rows, knn]])


def detection_targets(device: dict, knn: dict, machines: list[str], t: dict, ok: dict
                      ) -> list[str]:
    """The target table's head and the three detection targets, judged through the bundle
    the agent runs (``device``)."""
    return ["", "| target | figure | |", "|---|---|---|",
            f"| official score through the bundle ({device['artifact']}) | "
            f"{device['official']:.4f} >= {t['official']} | {met(ok['official'])} |",
            f"| mean target-domain AUC through the bundle | {device['auc_target']:.3f} >= "
            f"{t['auc_target']} | {met(ok['auc_target'])} |",
            "| no machine type below baseline-knn | " + ", ".join(
                f"{m} {device['machines'][m]:.3f} vs {knn['machines'][m]:.3f}"
                for m in machines) + f" | {met(ok['no_machine_below_baseline'])} |"]


def default_detector_section(r: dict) -> list[str]:
    machines, t, ok = r["machines"], r["targets"], r["met"]
    knn = r["baseline"]
    device = next(b for b in r["bundles"] if b["default_artifact"])
    default = next(x for x in r["rows"] if x["rule"] == r["default_rule"])
    lines = [
        "## The default detector: spectral-knn", "",
        f"`{r['command']}` ({r['when']}) on `{r['corpus']['root']}`: {r['method']} trained per "
        f"machine type with its default settings (density k {r['settings']['density_k']}, "
        f"rule `{r['default_rule']}`; nothing chosen on test clips), every test clip scored "
        "by the training code with each score rule, then through the exported bundle and the "
        "agent's own scorer (`harken-export verify`), baseline-knn beside it.", ""] + \
        detector_table([*r["rows"], *r["bundles"]], knn, machines)
    by_rule = {x["rule"]: x for x in r["rows"]}

    def did(other: str, what: str, base: str = "fused") -> str:
        # each part is switched off from the fixed mel + spectrum fusion, whatever the default
        b, o = by_rule[base], by_rule[other]
        change = b["official"] - o["official"]
        verdict = "helped" if change > 0.005 else "did not help" if change < -0.005 else \
            "made no clear difference"
        return (f"- {what}: {verdict} (`{other}` {o['official']:.4f} -> `{base}` "
                f"{b['official']:.4f}, {change:+.4f}; target AUC {o['auc_target']:.3f} -> "
                f"{b['auc_target']:.3f})")
    lines += ["", "Did it help? Each part switched off in turn (the same banks, other fusion "
              "weights):", ""]
    if r["default_rule"] != "fused" and "fused" in by_rule:
        lines.append(did("fused", "the branch weights chosen per machine type on training "
                                  "data (the default) instead of the fixed fusion",
                         r["default_rule"]))
    lines += [did("plain", "local density normalisation"),
              did("mel", "the spectrum branch (the new features)"),
              did("spectrum", "the mel branch"),
              did("density", "fusing the plain distances with the normalised ones")]
    lines += detection_targets(device, knn, machines, t, ok) + [
              "| every bundle artifact within 0.01 official of the training code | " + ", ".join(
                  f"{b['artifact']} {b['official'] - default['official']:+.4f}"
                  for b in r["bundles"]) + f" | {met(ok['bundle_vs_float'])} |",
              "| training per machine type, 2 cores | " + ", ".join(
                  f"{m} {s:.1f} s" for m, s in r["train_s"].items())
              + f" <= {t['train_s']:g} s | {met(ok['train_s'])} |"]
    lines += ["", "The bundle's graph only takes each 1-s window's moments (mean and standard "
              "deviation of every mel band and spectrum bin); it has no weights, so it ships "
              "as float ONNX and TFLite: int8 would only round the statistics, whose small "
              "differences are the signal, and save nothing. "
              "Median backend time per window: "
              + ", ".join(f"{b['artifact']} {b['ms_per_window']:.3f} ms" for b in r["bundles"])
              + "."]
    return lines


def fusion_section(r: dict) -> list[str]:
    machines, t, ok, knn = r["machines"], r["targets"], r["met"], r["baseline"]
    fused = r["rows"][0]
    device = next(b for b in r["bundles"] if b["artifact"] == r["device_artifact"])
    members = " and ".join(f"`{m}`" for m in r["members"])
    lines = [
        "## Score fusion: several models in one bundle", "",
        f"`{r['command']}` ({r['when']}) on `{r['corpus']['root']}`: the fusion of {members}, "
        "each member's score standardised per section on its own held-out normal training "
        "clips, equal weights (nothing tuned, nothing chosen on test clips). Each member alone "
        "is the fusion switched off; the fused bundle is scored through the agent's own "
        "scorer (`harken-export verify`), int8 wherever a member has weights.", ""] + \
        detector_table([*r["rows"], *r["bundles"]], knn, machines)
    best = max(r["rows"][1:], key=lambda x: x["official"])
    change = fused["official"] - best["official"]
    verdict = "Helped" if change > 0.005 else "Did not help" if change < -0.005 else \
        "Made no clear difference"
    lines += ["", f"Did fusion help? {verdict}: the better member alone ({best['name']}) "
              f"{best['official']:.4f} -> fused {fused['official']:.4f} ({change:+.4f}); target "
              f"AUC {best['auc_target']:.3f} -> {fused['auc_target']:.3f}. Per machine type, "
              "fused vs the better member there: " + ", ".join(
                  f"{m} {fused['machines'][m] - max(x['machines'][m] for x in r['rows'][1:]):+.4f}"
                  for m in machines) + "."]
    seconds = [(m, w, s) for m, by in r["train_s"].items() for w, s in by.items()]
    lines += detection_targets(device, knn, machines, t, ok) + [
              "| fused int8 within 0.01 official of fused float | " + ", ".join(
                  f"{b['artifact']} {b['official'] - fused['official']:+.4f}"
                  for b in r["bundles"] if b["int8"]) + f" | {met(ok['int8_vs_float'])} |"]
    lines += ["", f"Training time per machine type (from {r['train_s_from']}; seconds on "
              f"{r['machine']['cores']} cores, shared with whatever else ran then): " + ", ".join(
                  f"{m} {w} {s:.0f} s" for m, w, s in seconds if s is not None) + "."]
    return lines


def enroll_section(r: dict) -> list[str]:
    machines, rows, t, ok, tm = r["machines"], r["rows"], r["targets"], r["met"], r["timing"]
    names = {"enrolled": "enrolled on site (general bundle + `harken enroll --files`)",
             "per-machine": "spectral-knn trained per machine type (workstation)",
             "baseline-knn": "baseline-knn"}
    e, p, b = rows["enrolled"], rows["per-machine"], rows["baseline-knn"]
    return [
        "## On-site enrollment: machine types never seen", "",
        f"`{r['command']}` ({r['when']}) on `{r['corpus']['root']}`: every machine type in turn "
        "is treated as never seen. The general bundle (`harken-export general`) holds no "
        "data of any type (spectral-knn learns nothing across types), each section of the "
        "held-out type is enrolled from its training clips with `harken enroll --files`, and "
        "its test clips are scored through the agent's pipeline with the enrolled bank.", ""]\
        + table(["detector", "official", "mean AUC source", "mean AUC target", *machines],
                [[names[k], f"{x['official']:.4f}", f"{x['auc_source']:.3f}",
                  f"{x['auc_target']:.3f}", *(f"{x['machines'][m]:.4f}" for m in machines)]
                 for k, x in rows.items()]) + [
        "", "| target | figure | |", "|---|---|---|",
        f"| enrolled >= baseline-knn + {t['vs_baseline']} | {e['official']:.4f} vs "
        f"{b['official']:.4f} | {met(ok['vs_baseline'])} |",
        f"| enrolled within {t['vs_per_machine']} of the per-machine detector | "
        f"{e['official'] - p['official']:+.4f} | {met(ok['vs_per_machine'])} |",
        f"| enrolling {tm['audio_s'] / 60:g} min of audio, CPU s of one core | "
        f"{tm['cpu_s']:.1f} < {t['enroll_cpu_s']:g} | {met(ok['enroll_cpu_s'])} |",
        f"| bank of {tm['audio_s'] / 60:g} min, MB | {tm['bank_bytes'] / 2 ** 20:.2f} < "
        f"{t['bank_mb']:g} | {met(ok['bank_mb'])} |",
        "", "The enrolled bank differs from the per-machine one only in its standardisation "
        "(each section's own statistics instead of the machine type's)."]


def generative_probe_section(r: dict) -> list[str]:
    rules, clips = r["rules"], r["clips"]
    recon = [k for k in rules if k[0] in "xz"]
    domain_col = all("auc_target_vs_source_normals" in v for v in rules.values())
    lines = [
        f"## Why {r['method']}'s " + ("reconstruction rules score" if recon else
                                     "rules score") + f" below random ({r['machine']})", "",
        f"`{r['command']} {r['run']}` ({r['when']}): one trained run, every test clip scored "
        "with every rule; AUC per domain (averaged over sections), the rank correlation of "
        "each score with the clip's spectral contrast and level over the normal test clips, "
        "and the median score of target-domain normal clips over source-domain ones"
        + ("; the last column is the AUC with which the score alone tells target-domain "
           "normal clips from source-domain ones (0.5: blind to the domain)" if domain_col
           else "") + ".", ""]
    header = ["rule", "AUC source", "AUC target", "rho(score, contrast)", "rho(score, level)",
              "normal target / source"] + (["target vs source normals"] if domain_col else [])
    lines += table(header, [
        [k, f"{v['auc_source']:.3f}", f"{v['auc_target']:.3f}",
         f"{v['rho_contrast_normals']:+.2f}", f"{v['rho_level_normals']:+.2f}",
         f"{v['normal_target_over_source']:.3g}"]
        + ([f"{v['auc_target_vs_source_normals']:.3f}"] if domain_col else [])
        for k, v in rules.items()])
    lines += ["", _reconstruction_reading(rules, clips, recon) if recon else
              _domain_reading(r["method"], rules, clips)]
    return lines


def _reconstruction_reading(rules: dict, clips: dict, recon: list[str]) -> str:
    worst = max(recon, key=lambda k: rules[k]["normal_target_over_source"])
    lo = min(rules[k]["normal_target_over_source"] for k in recon)
    src = min(rules[k]["auc_source"] for k in recon)
    tgt = max(rules[k]["auc_target"] for k in recon)
    return (f"Reading: the reconstruction rules ({', '.join(recon)}) are not reversed "
            f"and not broken: on the source domain they separate faults well (AUC >= "
            f"{src:.2f}). On the target domain they fail (AUC <= {tgt:.2f}) because the "
            f"target domain's *normal* clips reconstruct {lo:.3g} to "
            f"{rules[worst]['normal_target_over_source']:.3g} times worse than the source "
            "domain's: the generator learnt the source operating points (90 % of the "
            "training clips) and a target clip is further from them than a subtle fault "
            "is. The official score's harmonic mean is dominated by those target AUCs. "
            "The error also follows the clip's level (rank correlation "
            f"{min(v['rho_level_normals'] for k, v in rules.items() if k in recon):+.2f} to "
            f"{max(v['rho_level_normals'] for k, v in rules.items() if k in recon):+.2f}), "
            "while faults barely move level or contrast (AUC of anomalous vs normal clips: "
            f"contrast {clips['contrast_auc_anomaly_vs_normal']:.2f}, level "
            f"{clips['level_auc_anomaly_vs_normal']:.2f}). The critic-embedding rules, "
            "which compare a clip with its nearest training clips, hold up on the target "
            "domain. A fix would score reconstruction errors against the nearest normal "
            "clips' errors (as LDN does for distances), not against one global scale.")


def _domain_reading(method: str, rules: dict, clips: dict) -> str:
    """The reading for rules that are not reconstruction errors, from the figures alone."""
    src = {k: v["auc_source"] for k, v in rules.items()}
    tgt = {k: v["auc_target"] for k, v in rules.items()}
    dom = {k: v["auc_target_vs_source_normals"] for k, v in rules.items()}
    level = [v["rho_level_normals"] for v in rules.values()]
    best = max(src, key=src.get)
    parts = [f"Reading: no rule of {method} is reversed (AUC on the source domain "
             f"{min(src.values()):.2f} to {max(src.values()):.2f}, all above 0.5)"
             if min(src.values()) > 0.5 else
             f"Reading: on the source domain the rules reach AUC {min(src.values()):.2f} to "
             f"{max(src.values()):.2f}"]
    if src[best] >= 0.8:
        parts.append(f"at this size the network does learn the source domain's normal "
                     f"sound ({best}: AUC {src[best]:.2f} there), so its size is not what "
                     "fails")
    weak = [k for k, v in src.items() if v < 0.6]
    if weak:
        parts.append(", ".join(weak) + " barely separates faults even there (AUC "
                     + ", ".join(f"{src[k]:.2f}" for k in weak) + ")")
    parts = ["; ".join(parts) + "."]
    failing = [k for k in rules if tgt[k] < 0.5]
    holding = [k for k in rules if tgt[k] >= 0.5]
    if failing:
        parts.append(f"On the target domain {', '.join(failing)} fall"
                     + ("s" if len(failing) == 1 else "") + " to AUC "
                     + ", ".join(f"{tgt[k]:.2f}" for k in failing) + ", and the score alone "
                     "tells target-domain *normal* clips from source-domain ones (AUC "
                     + ", ".join(f"{k} {dom[k]:.2f}" for k in failing) + "; 0.5 would be "
                     "blind to the domain): it measures the operating point more than the "
                     "machine's health, which is domain shift (90 % of the training clips are "
                     "source), not a sign error or a defect.")
    if holding:
        ldn = all(k.endswith("-ldn") for k in holding)
        parts.append(", ".join(holding) + (" (a clip against its nearest training clips in "
                                           "units of their local density)" if ldn else "")
                     + " hold" + ("s" if len(holding) == 1 else "")
                     + " on the target domain (AUC " + ", ".join(f"{tgt[k]:.2f}" for k in holding)
                     + "; domain AUC of normal clips " + ", ".join(f"{dom[k]:.2f}" for k in holding)
                     + ")" + ("" if all(dom[k] >= 0.35 for k in holding) else
                              ", but over-corrects: target-domain normal clips score below "
                              "source-domain ones, and anomalies of the target domain with "
                              "them, which costs it on the source domain's AUC") + ".")
    level = [rules[k]["rho_level_normals"] for k in failing] or level
    parts.append(("The failing scores also follow" if failing else "The scores follow")
                 + f" the clip's level (rank correlation "
                 f"{min(level):+.2f} to {max(level):+.2f} over normal clips), while faults "
                 "barely move level or "
                 f"contrast (AUC of anomalous vs normal clips: contrast "
                 f"{clips['contrast_auc_anomaly_vs_normal']:.2f}, level "
                 f"{clips['level_auc_anomaly_vs_normal']:.2f})."
                 + ("" if holding else " A fix is what worked for distances: score a clip "
                    "against its nearest normal training clips in units of their local "
                    "density (LDN), not against one global mixture or scale."))
    return " ".join(parts)


def normalisation_section(r: dict) -> list[str]:
    rows, machines = r["rows"], r["machines"]
    plain = next(x for x in rows if x["name"] == "knn")
    default = next(x for x in rows if x["name"] == "knn-density")
    change = default["official"] - plain["official"]
    lines = [
        "## Domain-robust scoring: local density normalisation", "",
        f"`{r['command']}` ({r['when']}) on `{r['corpus']['root']}`: baseline-knn's clip "
        "vectors scored by the plain nearest-clip distance and by the same distance in units "
        "of each training clip's local density (mean distance to its k nearest training "
        "clips; agent/model/rules/density.py). No domain label is used at test time. "
        "`knn-density` uses the k that training chose per machine type from training clips "
        "alone (held-out normal clips against pseudo-anomalous copies, AUC per domain): "
        + ", ".join(f"{m} {k}" for m, k in r["chosen_k"].items())
        + ". The fixed-k rows show the sensitivity; they are not used to choose.", ""] + table(
        ["rule", "official", "mean AUC source", "mean AUC target", "mean pAUC", *machines],
        [[f"**{x['name']}**" if x["default"] else x["name"], f"{x['official']:.4f}",
          f"{x['auc_source']:.3f}", f"{x['auc_target']:.3f}", f"{x['pauc']:.3f}",
          *(f"{x['machines'][m]:.4f}" for m in machines)] for x in rows])
    verdict = "helped" if change > 0.005 else "did not help" if change < -0.005 else \
        "made no clear difference"
    fused = next((x for x in rows if x["name"] == "knn-fused"), None)
    aucs = [v for by_k in r["choice_auc"].values() for v in by_k.values()]
    spread = max(max(by_k.values()) - min(by_k.values()) for by_k in r["choice_auc"].values())
    lines += ["", f"The choice of k on training data is weakly informed here: the pseudo-anomaly "
              f"AUCs it compares lie between {min(aucs):.3f} and {max(aucs):.3f} (the mixed-in "
              f"sounds are easy to tell apart), and the k of one machine type differ by at most "
              f"{spread:.3f}. A harder proxy (quieter mixtures) is the next step."]
    lines += ["", f"Did it help? Density normalisation {verdict} baseline-knn: official "
              f"{plain['official']:.4f} -> {default['official']:.4f} ({change:+.4f}); mean "
              f"AUC target {plain['auc_target']:.3f} -> {default['auc_target']:.3f}, source "
              f"{plain['auc_source']:.3f} -> {default['auc_source']:.3f}."]
    clf = r.get("classifier", {})
    if {"embedding", "embedding-density"} <= set(clf):
        old, new = clf["embedding"], clf["embedding-density"]
        lines += ["", "The classifier's bank rules on the same corpus (mobilenetv2, one run "
                  "scored both ways; `embedding` divides by each domain's typical distance, "
                  "`embedding-density` by each training clip's local density):", ""] + table(
            ["rule", "official", "mean AUC source", "mean AUC target", "mean pAUC", *machines],
            [[f"mobilenetv2 [{name}]", f"{x['official']:.4f}", f"{x['auc_source']:.3f}",
              f"{x['auc_target']:.3f}", f"{x['pauc']:.3f}",
              *(f"{x['machines'][m]:.4f}" for m in machines)]
             for name, x in (("embedding", old), ("embedding-density", new))])
        lines += ["", f"Did it help the classifier? official {old['official']:.4f} -> "
                  f"{new['official']:.4f} ({new['official'] - old['official']:+.4f})."]
    if fused:
        best = max(("knn", "knn-density"), key=lambda n: next(
            x["official"] for x in rows if x["name"] == n))
        lines += ["", f"Did fusion help? `knn-fused` (each rule standardised on its section's "
                  f"leave-one-out training scores, equal weights, nothing chosen on test clips): "
                  f"official {fused['official']:.4f}, "
                  f"{fused['official'] - next(x['official'] for x in rows if x['name'] == best):+.4f}"
                  f" against the better of the two ({best}); mean AUC source "
                  f"{fused['auc_source']:.3f}, target {fused['auc_target']:.3f}."]
    return lines


KNN_ROW = "baseline-knn clip vector"
LDN_ROW = "deployed, embedding-density rule"


def probe_section(r: dict) -> list[str]:
    first = next(iter(next(iter(r["results"].values())).values()))
    dual = any("halves" in row for row in next(iter(first.values())))
    title = "What the dual-input embedding can see" if dual else \
        "What the classifiers' embeddings can see"
    lines = [
        f"## {title}", "",
        f"`{r['command']}` ({r['when']}), training clips only: AUC of the deployed embedding "
        "rule (k-means source bank + target clips, cross-fitted over 5 folds) between normal "
        "training clips and the same clips with another machine type or pink noise mixed in, "
        + ("with the embedding taken whole or by half (the CNN's projected GAMP vector, the "
           "spectrum branch's vector), or replaced by baseline-knn's clip vector (mean and std "
           "of the log-mel frames). The last row scores the deployed embedding with the "
           "domain-agnostic rule (LDN) instead: the training-data evidence a run's default "
           "score rule is chosen by." if dual else
           "with the embedding taken from each stage of the trained network (GAMP of its "
           "output), or replaced by baseline-knn's clip vector (mean and std of the log-mel "
           "frames). If a stage before the last saw the mixtures clearly better, the rule would "
           "be reading the wrong layer; if the knn vector does better than every stage, the "
           "network itself does not carry what the classification task never needed."), ""]
    for method, machines in r["results"].items():
        for anr in r["anr_ranges"]:
            names = list(machines)
            rows = list(machines[names[0]][anr])
            lines += [f"{method}, mixed at {anr}:", "",
                      "| embedding | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for row in rows:
                lines.append(f"| {row} | " + " | ".join(
                    f"{machines[m][anr][row]:.3f}" for m in names) + " |")
            lines += ["", _probe_reading(machines, anr, rows), ""]
    return lines


def _probe_reading(machines: dict, anr: str, rows: list[str]) -> str:
    """One computed sentence per table: how far the best other embedding is above the
    deployed one, where baseline-knn's vector sees the mixtures better than every one, and
    (where measured) which rule sees them better for the deployed embedding."""
    deployed = next(row for row in rows if row.endswith("(deployed)"))
    others = [row for row in rows if row not in (KNN_ROW, LDN_ROW)]
    gains, knn_wins, ldn_wins = [], [], []
    for m, by_anr in machines.items():
        aucs = by_anr[anr]
        best = max(others, key=lambda s: aucs[s])
        gains.append(aucs[best] - aucs[deployed])
        if aucs[KNN_ROW] > aucs[best]:
            knn_wins.append(f"{m} ({aucs[KNN_ROW]:.3f} vs {aucs[best]:.3f})")
        if LDN_ROW in aucs and aucs[LDN_ROW] > aucs[deployed]:
            ldn_wins.append(m)
    text = (f"Best other embedding above the deployed one by at most {max(gains):.3f}. "
            "baseline-knn's clip vector above every one on: " + (", ".join(knn_wins) or "none")
            + ".")
    if LDN_ROW in rows:
        text += (" The embedding-density rule above the per-domain scale on: "
                 + (", ".join(ldn_wins) or "none") + f" ({len(ldn_wins)} of {len(machines)}).")
    return text


def allocator_section(r: dict) -> list[str]:
    return [
        "## Keeping freed memory mapped (training/allocator.py)", "",
        f"`{r['command']}` ({r['when']}): `harken-train evaluate` of the {r['model']} bench run "
        "over the bench corpus's fan test clips, alternating the raised glibc malloc "
        "thresholds harken-train sets at start-up with glibc's defaults; the fastest run of "
        "each.", ""] + table(
        ["allocator", "wall s", "user s", "system s"],
        [[label, f"{b['wall_s']:.1f}", f"{b['user_s']:.1f}", f"{b['sys_s']:.1f}"]
         for label, b in r["best"].items()]) + [
        "", f"Speed-up from keeping freed memory mapped: **{r['speedup']:.2f}x** wall time."]


def wear_section(r: dict) -> list[str]:
    day, base = r["mb_per_day"], r["runs"]["base"][-1]
    day = {k: max(0.0, v) for k, v in day.items()}          # noise below a page: none
    total, goal = sum(day.values()), r["goal_mb_per_day"]
    outbox_kb = day.get("MQTT outbox", 0.0) * 1e6 / r["day_intervals"] / 1e3
    first = r["runs"]["base"][0]
    growth = {kind: (size - first["state_files"].get(kind, 0)) * r["day_intervals"]
              / (base["intervals"] - first["intervals"]) / 1e6
              for kind, size in base["state_files"].items()}
    files = ", ".join(f"`{k}`" for k in sorted(base["state_files"]))
    # one 4-KiB page more or less over the intervals between the two runs
    short = r["runs"]["base"][0]["intervals"]
    res = 4096 * r["day_intervals"] / (base["intervals"] - short) / 1e6

    def mb(v: float) -> str:
        return f"< {res:.2f} (below the resolution)" if v < res else f"{v:.2f}"
    return [
        "## Wear: bytes written per day per machine (bench/bench_wear.py)", "",
        f"`{r['command']}` ({r['when']}): `harken run` on the bench corpus's fan audio; each "
        "figure is the difference between runs that differ in one component, read from the "
        "agent's own `/proc/self/io` (`write_bytes`: what it caused to be written to the "
        "storage layer; file-system metadata and the card's erase-block amplification come "
        "on top). The default config, the outbox and the logs at real-time pacing with 1-s "
        f"intervals over {r['realtime_s'] // 4} and {r['realtime_s']} intervals (the bytes per "
        "interval between the two, so what a start writes once cancels out), scaled to a day "
        f"of the default 10-s intervals ({r['day_intervals']}); evidence audio as one event "
        "at its defaults (30 s before, the 10-s interval, 30 s after).", "",
        "| component | MB per day | |", "|---|---|---|",
        *[row for k, v in day.items() for row in [f"| {k} | {mb(v)} | |"] + (
            [f"| ... of which the feedback store (`{kind}` files' growth) | {mb(g)} | |"
             for kind, g in growth.items() if kind == "recent"]
            if k.startswith("default config") else [])],
        f"| evidence audio (`[evidence] enabled`, off by default) | "
        f"{r['evidence_mb_per_event']:.2f} per anomaly event | "
        f"{r['evidence_kept_mb_per_event']:.2f} MB kept per event |",
        f"| **total**, MQTT on, evidence off | **{mb(total)}** | goal < {goal:g}: "
        f"{met(r['met'])} |",
        *([f"| evidence audio on, at most (`evidence.max_mb_per_day`) | "
           f"{r['evidence_cap_mb_per_day']:g} | a flapping alarm: events beyond it are not "
           f"kept |"] if "evidence_cap_mb_per_day" in r else []), "",
        f"A figure is good to one 4-KiB page over the {base['intervals'] - short} intervals "
        f"between the runs ({res:.2f} MB per day). The outbox writes "
        + (f"{outbox_kb:.1f} kB per score" if day.get("MQTT outbox", 0.0) >= res else
           "no measurable bytes per score (below the resolution)")
        + ": a score on a live connection waits in memory for its PUBACK "
        "(`mqtt.outbox_hold_s`, 5 s) and is written only if that does not come in time "
        "(docs/mqtt.md \"Wear\"); events, state messages and everything made while the "
        "broker is away are written at once (a committed insert and, at the PUBACK, a "
        "committed delete in SQLite's write-ahead log with `synchronous=FULL`, folded into "
        "the database every 32 pages: agent/sinks/mqtt/outbox.py), and its start (the "
        f"database made) writes {r['start_bytes']['mqtt'] / 1e3:.0f} kB once. The state "
        "folder's files after the "
        f"longest run without MQTT: {files}; `recent` is the feedback store (on by default, "
        "docs/agent.md \"The feedback store\"): it appends each interval's record without "
        "syncing, so its writes are about its growth, and are in the first row.",
    ]


def store_section(r: dict, wear: dict | None = None) -> list[str]:
    """bench/bench_store.py: the feedback store's bytes per day for each default bundle
    (its record size), and with the wear bench's measured logs and outbox the day's total."""
    others = 0.0
    if wear is not None:
        day = {k: max(0.0, v) for k, v in wear["mb_per_day"].items()}
        others = sum(v for k, v in day.items() if not k.startswith("default config"))
    goal = wear["goal_mb_per_day"] if wear is not None else 50.0
    rows = [[Path(x["bundle"]).name, x["model"],
             " + ".join(f"{k} {w}" for k, w in x["statistics"].items()),
             x["bytes_per_interval"], f"{x['mb_per_day']:.2f}",
             f"{x['mb_per_day'] + others:.2f}" + ("" if x["mb_per_day"] + others < goal
                                                  else " (over the goal)")]
            for x in r["rows"]]
    return [
        "### The feedback store, bundle by bundle (bench/bench_store.py)", "",
        f"`{r['command']}` ({r['when']}): the store writes one record per report interval "
        "(agent/sinks/recent.py: a fixed part and each statistics vector as float32), so its "
        "bytes follow from the bundle's bank: the default detector's bundles carry two "
        "branches or five depending on the machine type. Per day at the default "
        f"{r['interval_s']:g}-s intervals; the last column adds the wear bench's measured "
        f"logs and MQTT outbox ({others:.2f} MB per day) against the goal of {goal:g}.", ""
    ] + table(["bundle", "model", "statistics (values)", "bytes per interval", "MB per day",
               "with logs and outbox"], rows)


def fleet_section(r: dict) -> list[str]:
    lines = [
        "## Fleet: many agents, one broker", "",
        f"`{r['command']}` ({r['when']}): N simulated agents, each the agent's real MQTT path "
        "(its own durable outbox and paho client, agent/sinks/mqtt/sink.py on publisher.py) "
        "replaying a real score "
        "stream as fast as it can, spread over "
        f"{r['workers']} processes, one Mosquitto (password file) and one plant subscriber "
        "with a persistent QoS 1 session, all on this machine. Lost = scores the outboxes "
        "handed over (PUBACK received) that never reached the subscriber, counted by (node, "
        "seq). Each fleet runs against the plant broker setting "
        f"(`{r['plant_conf'].strip()}`) and against Mosquitto's defaults.",
        ""] + table(
        ["agents", "Mosquitto config", "scores sent", "received (unique)", "duplicates", "lost",
         "drops in its log", "seconds", "scores/s delivered", "Mosquitto CPU, % of one core"],
        [[x["agents"], x["broker"], x["sent"], x["received_unique"],
          x["received"] - x["received_unique"], x["lost"], x["broker_logged_drops"],
          f"{x['seconds']:.1f}", f"{x['messages_per_s']:.0f}", f"{x['broker_cpu_percent']:.0f}"]
         for x in r["rows"]])
    plant = [x for x in r["rows"] if x["broker"] == "plant"]
    default_lost = sum(x["lost"] for x in r["rows"] if x["broker"] == "default")
    slowest = min(plant, key=lambda x: x["messages_per_s"])
    lines += [
        "", f"Target: 0 lost at every N with the plant broker setting: {met(r['met'])}. "
        + (f"With Mosquitto's defaults {default_lost} scores were lost in this run: "
           "the broker queues at most `max_queued_messages` (1000) QoS 1 messages for a "
           "subscriber beyond those in flight and drops the rest when the subscriber falls "
           "behind a burst (it logs that it is dropping). The agents had their PUBACKs, so "
           "no agent can see or repeat such a loss: the broker must be configured for it."
           if default_lost else
           "With Mosquitto's defaults nothing was lost in this run; the default queue limit "
           "(`max_queued_messages` 1000) can still drop QoS 1 messages for a subscriber that "
           "falls behind a burst, so a plant broker lifts it."), "",
        f"At the default 10-s report interval a plant of N agents sends N/10 scores per "
        f"second; the slowest fleet above (plant setting) was delivered at "
        f"{slowest['messages_per_s']:.0f} scores/s while Mosquitto used "
        f"{slowest['broker_cpu_percent']:.0f} % of one core: the simulated agents (an "
        "fsync'd SQLite outbox write and a Python paho client each), sharing these 2 cores, "
        "set the pace, not the broker.", "",
        "### Growing past one broker", "",
        "- A broker cluster: the agent takes the list of its nodes (`mqtt.brokers`, docs/mqtt.md "
        "\"Several brokers: failover\"), connects to the first that answers and moves to the "
        "next when a node dies. It publishes with a clean session and keeps its own durable "
        "outbox, so it can land on any node and resends what was not acknowledged; "
        "subscribers de-duplicate on (node, seq) as they already must. The fleet on a "
        "3-node nats-server cluster, with a node killed, is measured below; docs/deploy.md "
        "\"Many devices: a broker cluster\" has the tested broker settings.",
        "- A clustered broker behind one DNS name or TCP load balancer looks like one broker "
        "to the agent: `mqtt.host` with that name does the same job.",
        "- Plant-side consumers scale with shared subscriptions "
        "(`$share/<group>/harken/+/+/score`), which Mosquitto, EMQX and VerneMQ support: "
        "each score goes to one member of the group.",
        "- The broker's queue for a subscriber is where scores can still be lost (above). "
        "A consumer that may be away or slow needs an unbounded or large queue "
        "(Mosquitto `max_queued_messages`; EMQX and VerneMQ have their own session queue "
        "limits) and broker persistence.",
    ]
    return lines


CLUSTER_BENCH_START, CLUSTER_BENCH_END = "<!-- cluster-bench: start -->", "<!-- cluster-bench: end -->"


def into_deploy(start: str, end: str, body: list[str]) -> None:
    """docs/deploy.md's text between the markers ``start`` and ``end`` becomes ``body``
    (the cluster sections stand there too, beside what a plant configures); a page
    without the markers is left as it is."""
    deploy = ROOT / "docs" / "deploy.md"
    text = deploy.read_text() if deploy.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        deploy.write_text(head + "\n".join([start, *body, end]) + rest.split(end, 1)[1])


def fleet_cluster_section(r: dict) -> list[str]:
    """bench/bench_fleet.py --cluster: the fleet on a 3-node nats-server cluster, with and
    without a node SIGKILLed mid-run. Also written into docs/deploy.md between its markers
    ("A fleet on the cluster"), beside the settings it was measured with."""
    rows = r["rows"]
    first = rows[0]

    def ms(x: dict, key: str) -> str:
        return "-" if x.get(key) is None else f"{x[key]:.0f}"

    def secs(x: dict, key: str) -> str:
        return "-" if x.get(key) is None else f"{x[key]:.1f}"
    sizes = sorted({x["agents"] for x in rows}, reverse=True)
    settings = re.sub(r'listen: "[^"]*" ', "", r["mqtt_settings"])     # the run's own port
    lines = [
        "## Fleet on a broker cluster", "",
        f"`{r['command']}` ({r['when']}): N = " + ", ".join(map(str, sizes)) + " simulated "
        "agents (the fleet bench's: each the agent's real MqttSink with its durable outbox), "
        f"spread over {r['workers']} processes, each listing the {r['nodes']} nodes of one "
        f"nats-server cluster ({r['engine']}, harken/testkit/cluster.py) rotated, so that a "
        "third of the fleet starts on each node (docs/deploy.md \"Many devices: a broker "
        f"cluster\"); each agent publishes one score every {first['pace_s']:g} s at its own "
        f"offset, {first['messages_per_agent']} in all. One plant subscriber (fixed client id, "
        "clean session false, QoS 1; on a lost connection the next node, a refused CONNECT or "
        "SUBSCRIBE asked again) starts on node 1. Brokers, agents and subscriber share this "
        f"machine's {(r.get('machine') or {}).get('cores', '?')} cores. In the \"node killed\" "
        f"runs node {r['killed_node']} is SIGKILLed once the plant has a third of the scores "
        "and restarted once it has two thirds (or when the run's time is up). Never "
        "acknowledged = scores still in the agents' outboxes when the bench gave up waiting "
        "(300 s after the last was made): not handed over, the agent keeps them and sends "
        "them at its next connection. Lost = scores a node acknowledged (PUBACK) that never "
        "reached the plant, counted by (node, seq); duplicates = the same (node, seq) again "
        "(QoS 1 re-deliveries, and the agents' replay of rows a dead node had not "
        "acknowledged); publish latency = from a score's making to its PUBACK, the sinks' "
        "own figure (stats `publish_ms_p99`), over every acknowledged score of the run; "
        "reconnect = from the kill to the `connected to` log line naming another node, for "
        "each agent that had the killed node first; broker CPU = the three nats-server "
        "processes together.", ""]
    lines += table(
        ["agents", "run", "scores sent", "never acknowledged", "received (unique)",
         "duplicates", "lost", "publish ms median / p99 / max",
         "agents of the killed node reconnected", "reconnect s median / max",
         "other agents that changed node", "scores/s delivered", "broker CPU, % of one core"],
        [[x["agents"], "node killed" if x["node_killed"] else "no kill", x["sent"],
          x.get("unacknowledged", 0), x["received_unique"], x["duplicates"], x["lost"],
          f"{ms(x, 'publish_ms_median')} / {ms(x, 'publish_ms_p99')} / {ms(x, 'publish_ms_max')}",
          f"{x['reconnected']} of {x['affected']}" if x["node_killed"] else "-",
          f"{secs(x, 'reconnect_s_median')} / {secs(x, 'reconnect_s_max')}"
          if x["node_killed"] else "-",
          str(x.get("others_moved", "-")) if x["node_killed"] else "-",
          f"{x['messages_per_s']:.0f}", f"{x['broker_cpu_percent']:.0f}"] for x in rows])
    lines += [
        "", f"Target: 0 lost in every run: {met(r['met'])}. The broker settings it was "
        f"measured with, on every node: `{settings}` (replicated message streams "
        "and subscription consumers: the plant's consumer survives its node; docs/deploy.md "
        "\"The tested configuration\"), and on the subscriber's side a persistent QoS 1 "
        "session that moves to another node.", "",
        "The gateway makes a JetStream consumer, replicated as `consumer_replicas` says, for "
        "every QoS 1 subscription, the agents' own included (each agent subscribes to its "
        "`instance` topic at QoS 1 at every connection, docs/mqtt.md), and deletes it when a "
        "clean-session client goes: a node's death makes every agent that was on it delete "
        "and create one on another node at once, on top of the elections of the consumers "
        "that lost a replica. That replicated-consumer work, not the scores, is what the "
        "brokers' CPU goes to; where it outruns the machine, acknowledgements stop coming, "
        "the agents' ack timeout (`mqtt.ack_timeout_s`) closes connections on the live nodes "
        "too (\"other agents that changed node\"), and each reconnect adds more of it."]
    slow = [x for x in rows if x["node_killed"] and x.get("restart_s") is None]
    if slow:
        lines += ["", "The restarted node did not answer MQTT within the kit's 60 s (N = "
                  + ", ".join(str(x["agents"]) for x in slow) + "): it was still catching up "
                  "with the consumers' replicas when the run went on without it."]
    into_deploy(CLUSTER_BENCH_START, CLUSTER_BENCH_END, lines[2:])
    return lines


def web_section(r: dict) -> list[str]:
    """bench/bench_web.py: `harken watch` with and without --web beside one paced fleet."""
    m = r["machine"]
    hour = r["full_hour"]

    def pages(x: dict) -> str:
        return "1 (Chromium)" if x["browser"] else str(x["pages"])

    def each(values: list[float], scale: float = 1.0, fmt: str = ".0f") -> str:
        return ", ".join(f"{v / scale:{fmt}}" for v in values) or "-"

    def opened(x: dict) -> str:
        late = x["snapshot_late"]
        return "-" if late is None else f"{late[0] / 1024:.0f} kB ({late[1]} rows)"

    base = next(x for x in r["rows"] if not x["web"])
    shown = [str(x["pages"]) for x in r["rows"] if x["web"] and not x["browser"]]
    counts = " or ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)
    browser = [x for x in r["rows"] if x["browser"]]
    lines = [
        f"## The web view: `harken watch --web` with {r['machines']} machines publishing", "",
        f"`{r['command']}` ({r['when']}, {m['cores']} cores shared with other work, "
        f"{r['elapsed_s'] / 60:.1f} min in all): {r['machines']} simulated agents (the fleet "
        f"bench's: each its own MqttSink and durable outbox, over {r['workers']} processes) "
        f"publish one score per machine every {r['pace_s']:g} s, each at its own offset, to "
        "one Mosquitto; beside them run `harken watch` processes on the same fleet at the same "
        "time (stdout not a terminal, no `--json`): one without `--web`, the others with "
        f"`--web 127.0.0.1:0` and {counts} pages open (a page: a thread of the bench "
        "reading `/events` and parsing every event)"
        + (", and one with its page open in headless Chromium" if browser else "")
        + f". Measured over {r['seconds']:.0f} s after a {r['warmup_s']} s warm-up: CPU "
        "(utime + stime of the watcher's process), resident memory (VmRSS at the end, VmHWM "
        "its peak since start), scores handled per second (the `seq` of its /fleet.json rows "
        "before and after; for the watcher without a page, what the broker delivered to the "
        "bench's own subscriber), and per page the bytes and deltas received per second. The "
        "snapshot column is what a page opened after the period gets.", ""]
    lines += table(
        ["watcher", "pages", "CPU, % of one core", "RSS end (MB)", "RSS peak (MB)",
         "scores/s handled", "kB/s per page", "deltas/s per page", "rows per delta",
         "snapshot to a new page"],
        [[x["watcher"], pages(x), f"{x['cpu_percent']:.1f}", f"{x['rss_end_mb']:.0f}",
          f"{x['rss_peak_mb']:.0f}", f"{x['scores_per_s']:.0f}",
          each(x["page_bytes_per_s"], 1024), each(x["page_events_per_s"], fmt=".2f"),
          each(x["page_rows_per_event"]), opened(x)] for x in r["rows"]])
    web = [x for x in r["rows"] if x["web"] and not x["browser"]]
    most = max(web, key=lambda x: x["pages"])
    lines += [
        "", f"With `--web` and {most['pages']} pages open the watcher used "
        f"{most['cpu_percent']:.1f} % of one core against {base['cpu_percent']:.1f} % without "
        f"`--web`, and {most['rss_end_mb'] - base['rss_end_mb']:+.0f} MB of resident memory "
        f"({r['scores_delivered_per_s']:.0f} scores/s delivered by the broker). Pages dropped "
        f"for reading too slowly: {sum(x['pages_dropped'] for x in r['rows'])}."]
    for x in browser:
        lines += [
            "", f"The real page in headless Chromium drew {x['chromium_cards']} machine cards of "
            f"{r['machines']} (it draws a first page of cards; \"show more\" adds more) "
            f"with {x['chromium_console_errors']} console errors; Chromium itself (all its "
            f"processes) used {x['chromium_cpu_percent']:.0f} % of one core to keep it live."]
    lines += [
        "", f"A page opened after an hour gets every machine's whole hour ({hour['buckets']} "
        f"buckets each): for {hour['machines']} machines a snapshot of "
        f"{hour['snapshot_bytes'] / 2 ** 20:.1f} MB"
        + (f" ({hour['snapshot_gzip_bytes'] / 2 ** 20:.2f} MB gzip, as browsers take it), "
           f"built in {hour['snapshot_ms']:.0f} ms of CPU under the watcher's lock and encoded "
           f"in {hour['encode_ms']:.0f} ms outside it (once for the pages that open in the same "
           "second)" if "encode_ms" in hour else
           f", built and encoded in {hour['snapshot_ms']:.0f} ms of CPU under the watcher's "
           "lock") + "; the fleet with that "
        f"hour holds {hour['fleet_mb']:.1f} MB of Python memory (built in the bench's process "
        "through `Fleet.handle`, one score per bucket, and measured with tracemalloc)."]
    return lines


def machines_section(r: dict) -> list[str]:
    labels = list(r["rows"])
    t = r["targets"]
    what = ", ".join(f"{label} ({r['artifacts'][label]}, `{r['bundles'][label]}`)"
                     for label in labels)
    lines = [
        "## Several machines on one device" + (f": {', '.join(labels)}" if r["name"] != "machines"
                                              else ""), "",
        f"`{r['command']}` ({r['when']}): one `harken run` listening to the first N channels "
        f"of a {r['channels']}-channel raw PCM stream written to its stdin at real-time pace "
        f"({r['seconds']} s each, a different stretch of fan audio per channel), as a "
        f"multi-channel audio interface delivers it: one input, N pipelines and decisions, "
        f"one shared backend per bundle, {r['interval_s']}-s report intervals, JSON lines to "
        f"a file, on {r['machine']['cpu']} ({r['machine']['cores']} cores). Bundles: {what}. "
        f"CPU is the process's own CPU time after the first {r['warmup_s']:g} s, as % of one "
        "core; memory its peak RSS (VmHWM). Every N in one "
        "run, on a machine shared with other work (the CPU figure is the process's own time, "
        "so others' load slows it only through caches and frequency).", "",
        f"![CPU and RSS against the number of machines]({Path(r['plot']).relative_to('docs')})",
        ""] + table(
        ["machines"] + [f"{label} {what}" for label in labels
                        for what in ("CPU, % of one core", "peak RSS, MB")],
        [[pts[0]["machines"]] + [v for q in pts for v in (f"{q['cpu_percent']:.2f}",
                                                          f"{q['peak_rss_mb']:.0f}")]
         for pts in zip(*r["rows"].values())])
    lines += ["", "Marginal cost per machine (least-squares slope over N): " + "; ".join(
        f"{label} {f['cpu_percent_per_machine']:.3f} % of one core and "
        f"{f['rss_mb_per_machine']:.2f} MB" for label, f in r["fits"].items()) + ".", "",
        f"Target at {t['machines']} machines: CPU < {t['cpu_percent']:g} % of one core and peak "
        f"RSS < {t['rss_mb']:g} MB: " + ", ".join(
            f"{label} {met(all(ok.values()))}" for label, ok in r["met"].items()) + "."]
    return lines


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def detect_sections(records: list[dict]) -> list[str]:
    """Time to detect of every detect*.json record (bench_agent.py part 3), one table
    each; the first names how it is measured."""
    if not records:
        return []
    first = records[0]
    lines = [
        "## Time to detect", "",
        "`bench/bench_agent.py` part 3 (bench/_detect.py): recordings of a machine going from "
        "normal to faulty, as the quick start plays them (`harken-train recording`): 60 s of "
        "normal test clips, then 6 anomalous test clips of one fault kind, one recording per "
        "section, domain and fault kind of every machine type of "
        f"`{first['corpus']}`. The onset falls at 0, 1/4, 1/2 or 3/4 of a report interval "
        "(a normal clip's tail goes first), and the recording is cut to whole intervals. Each "
        "is played through `harken run` with the bundle and the default decision settings "
        f"({first['decision']}). Time to detect is the audio time from the onset to the end of "
        "the interval that raises the anomaly event. The recordings are played as fast as "
        "the agent runs, not at real time: the decision sees only whole report intervals, so "
        "the delay in audio seconds is the one at real time; at real time the agent's "
        "processing of that interval comes on top (milliseconds: the publish latency in "
        "\"Agent end to end\"). *Alarm on at onset*: the agent already raised an alarm on the "
        "normal part and it was still on when the fault began, so the recording times "
        "nothing; *false alarms*: anomaly events raised on the normal part. A missed fault "
        "counts as missed, not in the median; a detection is censored at the fault's "
        "length (57.5 to 60 s).", ""]
    for r in records:
        o = r["overall"]
        lines += [f"### {r['label']}", "",
                  f"`{r['command']}` ({r['when']}, {r['machine']['cpu']}, "
                  f"{r['machine']['cores']} cores); bundles {r['source']}: "
                  + ", ".join(f"`{b}`" for b in r["bundles"]) + ", run as "
                  + ", ".join(sorted({x["artifact"] for x in r["rows"]})) + ".", ""]
        rows = [*r["machines"].items(), *r["domains"].items(), ("all", o)]
        lines += table(
            ["recordings of", "recordings", "detected", "missed", "alarm on at onset",
             "false alarms", "median s", "max s"],
            [[k, x["recordings"], x["detected"], x["missed"], x["on_at_onset"],
              x["false_alarms"], _seconds(x["median_s"]), _seconds(x["max_s"])]
             for k, x in rows])
        lines += ["", f"Over all recordings: time to detect **median {_seconds(o['median_s'])} s, "
                  f"max {_seconds(o['max_s'])} s** ({o['detected']} of {o['recordings']} "
                  f"faults detected, {o['missed']} missed, {o['on_at_onset']} with an alarm "
                  "already on).", ""]
    return lines


def summary(results: dict) -> list[str]:
    """Every target of the benchmark issue, its figure and whether it is met."""
    rows = []
    if "features" in results:
        f = results["features"]
        ratio, diff = f["ratios"], f["max_abs_diff_db"]
        figures = [f"{ratio['batch_over_librosa_float32']:.2f}x",
                   f"{ratio['streaming_over_batch']:.2f}x",
                   f"{max(diff['batch_vs_librosa_db'], diff['streaming_vs_librosa_db']):.2g} dB"]
        if "spectral_knn_front_end" in f:
            figures.append(f"{f['spectral_knn_front_end']['front_end_all_branches_over_rfft']:.2f}x")
            figures.append(f"{f['spectral_knn_front_end']['front_end_frame_branches_over_rfft']:.2f}x")
        for (k, ok), fig in zip(f["targets_met"].items(), figures):
            rows.append((f"front end: {k}", fig, ok))
    if "agent" in results:
        a = results["agent"]
        rt, t = a["realtime"], a["targets"]
        rows += [("agent: CPU % of one core", f"{rt['cpu_percent_median']:.2f} < "
                  f"{t['cpu_percent']:g}", a["met"]["cpu_percent"]),
                 ("agent: peak RSS MB", f"{rt['peak_rss_mb']:.0f} < {t['rss_mb']:g}",
                  a["met"]["rss_mb"]),
                 ("agent: publish latency p99 ms", f"{rt['publish_ms_p99_max']:.1f} < "
                  f"{t['publish_ms_p99']:g}", a["met"]["publish_ms_p99"])]
    if "default-detector" in results:
        d = results["default-detector"]
        device = next(b for b in d["bundles"] if b["default_artifact"])
        rows += [("detection: official score, default detector through its bundle",
                  f"{device['official']:.4f} >= {d['targets']['official']}",
                  d["met"]["official"]),
                 ("detection: mean target-domain AUC", f"{device['auc_target']:.3f} >= "
                  f"{d['targets']['auc_target']}", d["met"]["auc_target"]),
                 ("detection: no machine type below baseline-knn", "smallest margin " + min(
                     (f"{device['machines'][m] - d['baseline']['machines'][m]:+.4f} ({m})"
                      for m in d["machines"]), key=lambda s: float(s.split()[0])),
                  d["met"]["no_machine_below_baseline"])]
    for key in [k for k in results if k == "machines" or k.startswith("machines-")]:
        m = results[key]
        t = m["targets"]
        for label, points in m["rows"].items():
            q = points[-1]
            rows.append((f"several machines: {label}, {q['machines']} machines, CPU % of one "
                         "core / peak RSS MB", f"{q['cpu_percent']:.2f} < {t['cpu_percent']:g}"
                         f" / {q['peak_rss_mb']:.0f} < {t['rss_mb']:g}",
                         all(m["met"][label].values())))
    if "unseen" in results:
        u = results["unseen"]
        for key, ok in u["met"].items():
            corpus = "standard" if key.startswith("standard") else \
                "unseen-real" if key.startswith("unseen_real") else "unseen"
            if ok is None or corpus not in u["corpora"]:
                continue
            d = next(b for b in u["corpora"][corpus]["bundles"] if b["default_artifact"])
            fig = f"{d['auc_target']:.3f}" if "auc" in key else f"{d['official']:.4f}"
            rows.append((f"machine types nobody tuned for: {key.replace('_', ' ')} "
                         "(docs/results.md)", fig, ok))
    for key in [k for k in results if k == "detect" or k.startswith("detect-")]:
        o = results[key]["overall"]
        rows.append((f"time to detect: {results[key]['label']}, median / max s (detected of "
                     "recordings)", f"{_seconds(o['median_s'])} / {_seconds(o['max_s'])} "
                     f"({o['detected']} of {o['recordings']})", None))
    if "fleet" in results:
        fl = results["fleet"]
        plant = [x for x in fl["rows"] if x["broker"] == "plant"]
        rows.append(("fleet: scores lost, plant broker setting (N = "
                     + ", ".join(str(x["agents"]) for x in plant) + ")",
                     ", ".join(str(x["lost"]) for x in plant) + " (target 0)", fl["met"]))
    if "fleet-cluster" in results:
        fc = results["fleet-cluster"]
        rows.append(("fleet on a 3-node broker cluster: scores lost, without / with a node "
                     "killed (N = " + ", ".join(dict.fromkeys(str(x["agents"]) for x in fc["rows"]))
                     + ")", ", ".join(" / ".join(str(x["lost"]) for x in fc["rows"]
                                                 if x["agents"] == n)
                                      for n in dict.fromkeys(x["agents"] for x in fc["rows"]))
                     + " (target 0)", fc["met"]))
    if not rows:
        return []
    return ["## Targets", "", "| target | figure | |", "|---|---|---|"] + [
        f"| {name} | {fig} | {'reported' if ok is None else met(ok)} |"
        for name, fig, ok in rows] + [""]


UNSEEN_START, UNSEEN_END = "<!-- unseen:start -->", "<!-- unseen:end -->"
UNSEEN_ORDER = ("standard", "validation", "unseen", "unseen-real")


def unseen_section(r: dict) -> list[str]:
    """bench/bench_unseen.py: the default per corpus (tuning, validation, test types), its
    bundle through the agent, baseline-knn's rules, and the score rules side by side."""
    corpora = {n: r["corpora"][n] for n in UNSEEN_ORDER if n in r["corpora"]}
    general = _general_rows()
    lines = ["## Machine types nobody tuned for", "",
             f"`{r['command']}` ({r['when']}). The protocol (roles of the machine types, how "
             "the default was chosen, targets fixed in advance) is docs/generalisation.md; the "
             "machine types are described in docs/corpus.md. Rows `[rule]` are the training "
             "code's scores; `bundle` rows are the exported default bundle scored through the "
             "agent's own scorer (the targets are judged on it). Where each setting came "
             "from (fixed in advance, chosen on the tuning types, chosen on the validation "
             "types) is the table at the end of docs/generalisation.md. The sections above "
             "this one come from `scripts/make-results` on the date at the top of the page, "
             "with the default of that date; the `standard` table here is the current "
             "default's on the same corpus."]
    for name, c in corpora.items():
        floor = next(b for b in c["baseline"] if b["rule"] == r["floor_rule"])
        rows = [*c["rows"], *c["bundles"], *general.get(name, []),
                *(b for b in c["baseline"] if b is not floor)]
        lines += ["", f"### `{name}` ({c['role']} types: {', '.join(c['machines'])})", "",
                  f"Default: {c['method']} [{c['default_rule']}]"
                  + ("; per-machine choice: " + ", ".join(f"{m} `{v}`" for m, v in
                                                            c["choices"].items())
                     if c.get("choices") else "") + f". Floor: baseline-knn [{r['floor_rule']}].", ""]
        lines += detector_table(rows, floor, c["machines"])
        rank = c.get("proxy_rank") or {}
        if rank.get("all") is not None:
            lines += ["", "How well the label-free proxy (training clips only) ranks the score "
                      "rules as this corpus's test clips rank them: Spearman's rho "
                      + ", ".join(f"{m} {v:+.2f}" for m, v in rank.items() if m != "all")
                      + f"; over all types {rank['all']:+.2f}."]
    rules = [x["rule"] for x in next(iter(corpora.values()))["rows"]] if corpora else []
    if rules:
        lines += ["", "Did it help? Official score of each score rule of the default method "
                  "(the same banks, other branches or weights) on each corpus:", ""]
        lines += table(["rule", *corpora], [
            [x, *(next((f"{y['official']:.4f}" for y in c["rows"] if y["rule"] == x), "-")
                  for c in corpora.values())] for x in rules])
    t, ok = r["targets"], r["met"]
    figures = {"unseen_official": ("official score on the test types (bundle)",
                                   f">= {t['unseen_official']}"),
               "unseen_auc_target": ("mean target-domain AUC on the test types (bundle)",
                                     f">= {t['unseen_auc_target']}"),
               "unseen_no_type_below_baseline": ("no test type below baseline-knn "
                                                 f"[{r['floor_rule']}]", ""),
               "unseen_real_above_baseline": ("test types with real backgrounds: above "
                                              f"baseline-knn [{r['floor_rule']}]", ""),
               "standard_official": ("standard corpus: not below the old default",
                                     f">= {t['standard_official']}")}
    lines += ["", "| target | figure | |", "|---|---|---|"]
    for key, (what, goal) in figures.items():
        corpus = "standard" if key.startswith("standard") else \
            "unseen-real" if key.startswith("unseen_real") else "unseen"
        if corpus not in corpora:
            continue
        d = next(b for b in corpora[corpus]["bundles"] if b["default_artifact"])
        fig = f"{d['auc_target']:.3f}" if "auc" in key else f"{d['official']:.4f}"
        if "baseline" in key:
            fl = next(b for b in corpora[corpus]["baseline"] if b["rule"] == r["floor_rule"])
            fig = ", ".join(f"{m} {d['machines'][m]:.4f} vs {fl['machines'][m]:.4f}"
                            for m in d["machines"]) if "no_type" in key else \
                f"{d['official']:.4f} vs {fl['official']:.4f}"
        lines.append(f"| {what} | {fig} {goal} | {met(bool(ok[key]))} |")
    return lines


def _general_rows() -> dict[str, list[dict]]:
    """bench/bench_general.py's enrolled general models with the default settings (records
    general.json and general-CORPUS.json), per corpus name (the corpus folder's name), as
    detector rows; its own baseline-knn row is left
    out (bench_unseen's floor rows are the same method)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("general*.json")):
        g = json.loads(path.read_text())
        corpus = Path(str(g.get("corpus", {}).get("root", ""))).name
        rows = g.get("rows")
        if not corpus or not isinstance(rows, dict) or path.stem not in ("general",
                                                                           f"general-{corpus}"):
            continue             # other settings' records (general-epochs6 ...) stay out
        for key, row in rows.items():
            if key.startswith("general-") and "machines" in row:
                n, _, precision = key.removeprefix("general-").partition("-")
                out.setdefault(corpus, []).append(
                    {**row, "name": f"general mobilenetv2-dual, {n} random machines, "
                                    f"enrolled ({precision})"})
    return out


def general_section(records: dict[str, dict]) -> list[str]:
    """bench/bench_general.py: the general model's curve (random machines seen -> official,
    enrolled, never trained, on the corpus's types), per corpus, and the label-free reach
    check."""
    lines = ["## The general learned model (mobilenetv2-dual over a random family of machines)",
             "", "Trained once on the tuning types plus N procedurally generated machines "
             "(docs/general-model.md), then enrolled on each section's training clips of a "
             "corpus whose types it never saw and scored with kNN + local density "
             "normalisation, beside baseline-knn trained per type on that corpus."]
    for key in sorted(k for k in records if k in ("general",) or (
            k.startswith("general-") and records[k].get("rows") and
            k == f"general-{Path(str(records[k].get('corpus', {}).get('root', ''))).name}")):
        r = records[key]
        corpus = Path(str(r["corpus"]["root"])).name
        rows = r["rows"]
        machines = sorted(next(iter(rows.values()))["machines"])
        body = []
        for name, row in rows.items():
            n, _, precision = name.removeprefix("general-").partition("-")
            model = r["models"].get(n, {}) if name.startswith("general-") else {}
            label = (f"general, {n} random machines, {precision}" if name.startswith("general-")
                     else name)
            body.append([label, f"{model['training_s']:.0f}" if model else "-",
                         f"{row['official']:.4f}", f"{row['auc_source']:.3f}",
                         f"{row['auc_target']:.3f}",
                         *(f"{row['machines'][m]:.4f}" for m in machines)])
        lines += ["", f"`{r['command']}` ({r['when']}) on `{corpus}`, trained on "
                  f"`{Path(str(r.get('train_data', ''))).name}`:", ""]
        lines += table(["model", "training wall s (2 shared cores)", "official",
                        "mean AUC source", "mean AUC target", *machines], body)
    reach = records.get("general-reach", {}).get("reach")
    if reach:
        lines += ["", "Reach check (`bench/bench_general.py --reach`, no labels, no detection "
                  f"score): each type's training clips' distance to the nearest of "
                  f"{reach['random_clips']} random clips (per-band log-mel mean and spread, "
                  "standardised), as a multiple of the random clips' own median "
                  "nearest-neighbour distance:", ""]
        lines += table(["type", "group", "median distance / random's own",
                        "share beyond the random clips' 95th percentile"],
                       [[t, group, f"{x['ratio_to_random_median']:.2f}",
                         f"{100 * x['share_beyond_random_p95']:.0f} %"]
                        for group in ("tuning", "checked") for t, x in reach[group].items()])
    return lines


def write_unseen_block(r: dict, results_md: Path = ROOT / "docs" / "results.md") -> None:
    """The same section in docs/results.md, between markers (replaced, or appended)."""
    block = "\n".join([UNSEEN_START, *unseen_section(r), UNSEEN_END]) + "\n"
    text = results_md.read_text() if results_md.is_file() else "# Results\n"
    if UNSEEN_START in text and UNSEEN_END in text:
        head, rest = text.split(UNSEEN_START, 1)
        text = head + block + rest.split(UNSEEN_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    results_md.write_text(text)


def feedback_section(r: dict) -> list[str]:
    """bench/bench_feedback.py: false alarms fed back, before and after, per machine type and
    section and pooled."""
    rows = [x for x in r["rows"] if "after" in x]

    def pooled(key: str, fig: str, weight) -> float:
        w = [weight(x) for x in rows]
        return sum(x[key][fig] * k for x, k in zip(rows, w)) / max(sum(w), 1)

    def held(x):
        return x["false_alarms"] - x["fed_back"]

    def not_fed(x):
        return x["normal_clips"] - x["fed_back"]
    cols = ("before", "after")
    names = {"before": "before", "after": "after (threshold kept)"}
    out = ["## False-alarm feedback", "",
           f"`{r['command']}` ({r['when']}, {r['seconds']:.0f} s) on `{r['corpus']}` with the "
           f"default detector's bundles (`{r['bundles']}`), scored through the agent's scorer. "
           "Per machine type and section, the normal test clips scoring above the bundle's "
           "threshold are the false alarms; half of them (seed "
           f"{r['seed']}) go through the feedback store and `mark_normal` (the overlay; the "
           "threshold is kept and the machine's own rows keep their densities: docs/agent.md "
           "\"Feedback: how the bank and threshold change\"), the rule and threshold then in "
           "force come from `live_state`. Held back: the other half, never fed back. False "
           "alarms and AUC are over all normal (and anomalous) test clips; \"not fed\" leaves "
           "the fed-back clips out (in the bank, each scores as a copy of itself).", ""]
    out += table(["", "held back still above", "false alarms, all normal",
                  "false alarms, not fed", "anomaly AUC", "anomaly AUC, not fed",
                  "anomalies above"],
                 [[names[c], f"{pooled(c, 'held_back_above', held):.3f}",
                   f"{pooled(c, 'false_alarm_rate', lambda x: x['normal_clips']):.3f}",
                   f"{pooled(c, 'false_alarm_rate_not_fed', not_fed):.3f}",
                   f"{pooled(c, 'anomaly_auc', lambda x: 1):.3f}",
                   f"{pooled(c, 'anomaly_auc_not_fed', lambda x: 1):.3f}",
                   f"{pooled(c, 'anomalies_above', lambda x: x['anomalous_clips']):.3f}"]
                  for c in cols])
    out += ["", f"Pooled over {len(rows)} sections: {sum(x['false_alarms'] for x in rows)} false "
            f"alarms, {sum(x['fed_back'] for x in rows)} fed back, "
            f"{sum(held(x) for x in rows)} held back; clips not fed back that score higher "
            f"after: {sum(x['scores_rose_not_fed'] for x in rows)}. Per section (before -> "
            "after):", ""]
    out += table(["machine", "section", "false alarms", "fed back", "threshold",
                  "held back above", "false alarms, all normal", "anomaly AUC, not fed",
                  "anomalies above"],
                 [[x["machine"], str(x["section"]), str(x["false_alarms"]), str(x["fed_back"]),
                   f"{x['threshold_before']:.3f} -> {x['threshold_after']:.3f}",
                   *(" -> ".join(f"{x[c][f]:.2f}" for c in cols)
                     for f in ("held_back_above", "false_alarm_rate", "anomaly_auc_not_fed",
                               "anomalies_above"))]
                  for x in rows])
    return out


CLUSTER_PROBE_START, CLUSTER_PROBE_END = "<!-- cluster-probe: start -->", "<!-- cluster-probe: end -->"
CLUSTER_CHECKS = [
    ("stream_replicas", "replicas of the MQTT message stream as created (NATS)"),
    ("mqtt5", "MQTT 5 accepted (else the agent falls back to 3.1.1)"),
    ("retained_other_node", "retained `status` from node A seen on node B (exact topic)"),
    ("retained_wildcard_same_node", "retained `status` on `harken/#`, same node"),
    ("retained_wildcard_other_node", "retained `status` on `harken/#`, other node"),
    ("retained_after_node_kill", "retained `status` seen on node C after node A's SIGKILL"),
    ("retained_wildcard_after_node_kill", "the same on `harken/#`"),
    ("refused_during_outage", "connections and QoS 1 subscriptions node C refused meanwhile (asked again)"),
    ("will_when_client_dies", "Last Will when the client is SIGKILLed"),
    ("will_when_node_dies", "Last Will when the client's node is SIGKILLed"),
    ("burst_acked", "QoS 1 publishes acknowledged while node A is dead"),
    ("persistent_session_present", "persistent session present on node C after node A's SIGKILL"),
    ("persistent_received", "messages published meanwhile that the resumed subscriber gets"),
    ("sparkplug_topic_unchanged", "`spBv1.0/...` topic crosses nodes unchanged"),
]


def cluster_probe_section(r: dict) -> list[str]:
    """bench/probe_cluster.py: what each clustered engine keeps of the agent's MQTT contract
    when a node dies. Also written into docs/deploy.md between its markers, where the
    engine choice is explained beside it (the page a plant reads), so the table there is
    generated as well."""
    runs = r["runs"]

    def cell(run: dict, key: str) -> str:
        v = run["checks"].get(key)
        if key == "stream_replicas":
            return str(v.get("$MQTT_msgs", "-")) if v else "-"
        if key == "refused_during_outage":
            return str(v) if v is not None else "-"
        if key in ("burst_acked", "persistent_received"):
            return f"{v} of {r['burst']}"
        return "yes" if v else "**no**" if v is not None else "-"
    lines = ["## Broker cluster probe", "",
             f"`{r['command']}` ({r['when']}, {r['seconds']:.0f} s): "
             + ", ".join(r["versions"].values())
             + (f"; not installed, skipped: {', '.join(r['skipped'])}" if r["skipped"] else "")
             + ". Three nodes on loopback started by the probe; paho clients; node A is the "
             "one SIGKILLed: it holds a persistent-session QoS 1 subscriber (fixed client id, "
             "clean session false; on NATS the node leading its consumer), took the retained "
             f"`status` and a client with a Will; {r['burst']} QoS 1 messages are published on "
             "node B while A is dead and the subscriber resumes on node C. A check waits at "
             f"most {r['wait_s']:.0f} s for a message that may not come.", ""]
    lines += table(["check", *(f"{x['engine']}, {x['config']}" for x in runs)],
                   [[label, *(cell(x, key) for x in runs)] for key, label in CLUSTER_CHECKS]
                   + [["cluster started and answering MQTT (s)", *(f"{x['start_s']:.0f}" for x in runs)]])
    lines += ["", "Settings: " + "; ".join(f"{x['engine']} {x['config']}: {x['sets']}" for x in runs)
              + "."]
    into_deploy(CLUSTER_PROBE_START, CLUSTER_PROBE_END, lines[2:])
    return lines


# training-gpu.json: the same script run with --name training-gpu on a machine with a GPU
SECTIONS = {"features": features_section, "scorers": scorers_section,
            "agent": agent_section, "default-detector": default_detector_section,
            "agent-fusion": agent_section, "agent-mobilenetv2-dual-0.5": agent_section,
            "fusion": fusion_section,
            "enroll": enroll_section, "feedback": feedback_section,
            "detection": detection_section,
            "normalisation": normalisation_section, "probe": probe_section,
            "probe-dual": probe_section,
            "machines": machines_section, "fleet": fleet_section,
            "fleet-cluster": fleet_cluster_section, "web": web_section,
            "training": training_section, "allocator": allocator_section,
            "training-gpu": training_section, "unseen": unseen_section,
            "training-distributed": distributed_training_section,
            "wear": wear_section, "store": store_section,
            "cluster-probe": cluster_probe_section}


def main() -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    probes = [k for k, r in results.items()     # bench/probe_generative.py's records
              if r.get("command", "").startswith("bench/probe_generative.py")]
    lines = ["# Benchmarks", "",
             "Written by `bench/run_all` from `bench/results/*.json`; re-run it to refresh. "
             "Ratios are measured side by side in one run, because these machines are noisy.", ""]
    # records are made on whichever machine ran them: the page names the one most were made
    # on (the first record's machine once named a machine only a new record came from)
    machines = [r["machine"] for k, r in results.items() if k != "training-gpu" and r.get("machine")]
    if machines:
        counts = Counter(json.dumps(m, sort_keys=True) for m in machines)
        text, n = counts.most_common(1)[0]
        machine = json.loads(text)
        lines += [f"Machine ({n} of {len(machines)} records; each record in bench/results/ names its "
                  f"own): {machine['cpu']}, {machine['cores']} cores, {machine['os']}, "
                  f"Python {machine['python']}, numpy {machine['numpy']}, scipy {machine['scipy']}.", ""]
    lines += summary(results)
    for name, fn in SECTIONS.items():
        if name == "store" and name in results:
            lines += store_section(results[name], results.get("wear")) + [""]
        elif name in results:
            lines += fn(results[name]) + [""]
    for name, r in results.items():      # labelled records (--name) of bench_agent / machines
        if name not in SECTIONS and name.startswith(("agent-", "machines-")):
            lines += (agent_section if name.startswith("agent-") else machines_section)(r) + [""]
    lines += detect_sections([r for k, r in results.items()
                              if k == "detect" or k.startswith("detect-")])
    general = {k: r for k, r in results.items() if k.startswith("general")}
    if general:
        lines += general_section(general) + [""]
    for name in probes:            # bench/probe_generative.py, one per probed run
        lines += generative_probe_section(results[name]) + [""]
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines))
    if "unseen" in results:
        write_unseen_block(results["unseen"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
