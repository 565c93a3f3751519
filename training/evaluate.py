"""Scores a corpus's test clips with trained runs and reports the DCASE metrics:
result files in the DCASE format, a per-section table, CSV + JSON, and ROC curves.

metrics.json also says what was evaluated (``runs``: each run's id, folder, weights digest
and the corpus used, checked against the run's fingerprint) and holds the sha256 of every
result file beside it (``files``), so that a reader (``harken-train report``) can refuse a
folder whose parts do not belong together (docs/architecture.md)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harken.common.readers import read_csv
from harken.training.data.corpus import Clip, CorpusError, scan
from harken.training.method import ScoresAllRules
from harken.training.methods import method_class
from harken.training.metrics import SectionResult, machine_hmean, official_score, section_result
from harken.training.runs import RunError, RunInfo, check_corpus, read_run, weights_digest


@dataclass
class Evaluation:
    results: list[SectionResult] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)    # machine -> method
    training: dict[str, dict] = field(default_factory=dict)  # machine -> run.json "training"
    runs: dict[str, dict] = field(default_factory=dict)      # machine -> what was evaluated
    files: dict[str, str] | None = None                      # result file -> sha256
    training_ids: dict[str, str | None] = field(default_factory=dict)   # machine -> id

    @property
    def mixed(self) -> str | None:
        """What the scored runs mix, in words (None: one method, one training): a folder
        whose machines come from several ``train`` commands or methods (``train --force``
        over several machines killed after the first) gives an official score over both,
        which the table and metrics.json must say."""
        methods = {m.split(" (")[0] for m in self.methods.values()}
        ids = set(self.training_ids.values())
        parts = []
        if len(methods) > 1:
            parts.append("mixed methods: " + ", ".join(
                f"{machine} {method.split(' (')[0]}" for machine, method in self.methods.items()))
        if len(ids) > 1:
            parts.append(f"runs from {len(ids)} trainings (run.json training_id)")
        return "; ".join(parts) or None

    @property
    def official(self) -> float:
        return official_score(self.results)

    def machine_scores(self) -> dict[str, float]:
        return {m: machine_hmean(self.results, m) for m in sorted({r.machine for r in self.results})}

    def to_dict(self) -> dict:
        return {"official_score": self.official, "machines": self.machine_scores(),
                "methods": self.methods, "training": self.training, "runs": self.runs,
                "sections": [r.to_dict() for r in self.results],
                "training_ids": self.training_ids,
                **({"mixed": self.mixed} if self.mixed else {}),
                **({"files": self.files} if self.files is not None else {})}


def run_record(run_dir: Path, info: RunInfo, corpus: dict) -> dict:
    """What an evaluation says of the run it scored: its id, folder, method, weights
    digest and the corpus (checked against the run's fingerprint, ``check_corpus``)."""
    return {"run_id": info.run_id, "run": str(Path(run_dir).absolute()), "method": info.method,
            "weights_sha256": weights_digest(run_dir, info), "corpus": corpus}


def score_run(run_dir: Path, data_root: Path | None, progress: bool = True,
              rules: list[str | None] | None = None, other_corpus: bool = False
              ) -> tuple[RunInfo, list[Clip], dict[str | None, np.ndarray], dict]:
    """The run's test clips and their scores under each of ``rules`` (None: the run's
    default rule; ["all"]: every rule of the method, scored in one pass where it can), and
    the run's record for metrics.json (``run_record``). The corpus must be the one the run
    was trained on (its fingerprint), unless ``other_corpus``."""
    info = read_run(run_dir)
    corpus = check_corpus(run_dir, info, Path(data_root) if data_root else None, other_corpus)
    root = Path(corpus["path"])
    clips = scan(root, [info.machine], split="test")
    unlabelled = [c for c in clips if c.label is None]
    if unlabelled:
        raise CorpusError(f"{unlabelled[0].path}: test clip has no normal/anomaly label; "
                          "metrics need a labelled (development) test set")
    model = method_class(info.method).load(run_dir)
    rules = rules or [None]
    if rules == ["all"]:
        scores = model.score_all(clips, progress) if isinstance(model, ScoresAllRules) else \
            {r: model.score(clips, progress, rule=r) for r in model.score_rules}
    else:
        scores = {r: model.score(clips, progress, rule=r) if r else model.score(clips, progress)
                  for r in rules}
    return (info, clips, {r: np.asarray(v, dtype=np.float64) for r, v in scores.items()},
            run_record(run_dir, info, corpus))


RESULT_STEM = re.compile(r"(?P<machine>.+)_section_(?P<section>\d+)_test\.csv")


def write_result_files(out: Path, machine: str, clips: list[Clip], scores: np.ndarray,
                       threshold: float) -> None:
    """anomaly_score_<machine>_section_XX_test.csv and decision_result_... (DCASE format)."""
    for section in sorted({c.section for c in clips}):
        idx = [i for i, c in enumerate(clips) if c.section == section]
        stem = f"{machine}_section_{section:02d}_test.csv"
        with open(out / f"anomaly_score_{stem}", "w", newline="") as f:
            csv.writer(f).writerows((clips[i].name, f"{scores[i]:.6f}") for i in idx)
        with open(out / f"decision_result_{stem}", "w", newline="") as f:
            csv.writer(f).writerows((clips[i].name, int(scores[i] > threshold)) for i in idx)


def read_result_scores(path: Path) -> dict[tuple[str, str], float]:
    """(machine, file name) -> score, read back from the anomaly_score files
    ``write_result_files`` wrote (the per-fault table of the results page needs them)."""
    scores = {}
    for file in sorted(Path(path).glob("anomaly_score_*")):
        match = RESULT_STEM.fullmatch(file.name.removeprefix("anomaly_score_"))
        if match:
            scores.update({(match["machine"], name): score for name, score in
                           read_csv(file, (str, float), "a DCASE anomaly score file")})
    return scores


def section_results(machine: str, clips: list[Clip], scores: np.ndarray) -> list[SectionResult]:
    out = []
    for section in sorted({c.section for c in clips}):
        idx = [i for i, c in enumerate(clips) if c.section == section]
        out.append(section_result(machine, section, scores[idx],
                                  [clips[i].is_anomaly for i in idx],
                                  [clips[i].domain for i in idx]))
    return out


def evaluate(run_dirs: list[Path], out: Path, data_root: Path | None = None,
             progress: bool = True, plots: bool = True, rule: str | None = None,
             other_corpus: bool = False) -> Evaluation:
    """``rule``: a score rule of the method (e.g. mahalanobis, embedding); default: the run's."""
    return evaluate_rules(run_dirs, {rule: out}, data_root, progress, plots, other_corpus)[rule]


def evaluate_rules(run_dirs: list[Path], outs: dict[str | None, Path] | Path,
                   data_root: Path | None = None, progress: bool = True, plots: bool = True,
                   other_corpus: bool = False) -> dict[str | None, Evaluation]:
    """One evaluation per score rule, each in its own folder, from one scoring pass over
    the test clips. ``outs`` maps rule -> folder, or is one folder for every rule of the
    method (a sub-folder per rule)."""
    check_one_run_per_machine(run_dirs)
    evs: dict[str | None, Evaluation] = {}
    folders: dict[str | None, Path] = {}
    for run_dir in run_dirs:
        rules = ["all"] if isinstance(outs, Path) else list(outs)
        info, clips, scores, record = score_run(run_dir, data_root, progress, rules,
                                                other_corpus)
        machine = info.machine
        for rule, values in scores.items():
            out = outs / rule if isinstance(outs, Path) else outs[rule]
            folders[rule] = out
            out.mkdir(parents=True, exist_ok=True)
            ev = evs.setdefault(rule, Evaluation())
            used = rule or info.score_rule or info.params.get("score")
            ev.methods[machine] = info.method + (f" ({used} score)" if used else "")
            ev.runs[machine] = _relative_inside(record, out)
            ev.training_ids[machine] = info.training_id
            if info.training is not None:
                ev.training[machine] = info.training.model_dump()
            write_result_files(out, machine, clips, values, info.normal_scores.threshold)
            ev.results.extend(section_results(machine, clips, values))
            if plots:
                plot_roc(out / f"roc_{machine}.png", machine, info.method, clips, values)
    for rule, ev in evs.items():
        write_tables(folders[rule], ev)
    return evs


def check_one_run_per_machine(run_dirs: list[Path]) -> None:
    """Refuse, in one line naming both, two runs of one machine type: an evaluation scores
    each machine once (its table, result files and metrics.json are per machine), and two
    runs of one (a copy ``fan-old`` beside ``fan``) would mix their sections in the table
    while metrics.json named only the last."""
    seen: dict[str, Path] = {}
    for run_dir in run_dirs:
        machine = read_run(run_dir).machine
        if machine in seen:
            raise RunError(f"{seen[machine]} and {run_dir}: two runs of machine type "
                           f"'{machine}'; an evaluation takes one run per machine type "
                           f"(evaluate them apart, or move one out)")
        seen[machine] = run_dir


def _relative_inside(record: dict, out: Path) -> dict:
    """A run kept inside its evaluation (the baseline beside it) named relative to it: the
    folder is built under another name and renamed into place."""
    try:
        return {**record, "run": Path(record["run"]).relative_to(out.absolute()).as_posix()}
    except ValueError:
        return record


def write_tables(out: Path, ev: Evaluation) -> None:
    """metrics.csv and metrics.json, written last: metrics.json names the digest of every
    result file beside it (``check_evaluation``)."""
    rows = [r.to_dict() for r in ev.results]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ev.files = result_files(out)
    (out / "metrics.json").write_text(json.dumps(ev.to_dict(), indent=2))


def result_files(out: Path) -> dict[str, str]:
    """File name -> sha256 of the result files and metrics.csv of an evaluation folder."""
    files = {}
    for path in sorted(Path(out).glob("*.csv")):
        with open(path, "rb") as f:
            files[path.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return files


def check_evaluation(folder: Path, metrics: dict) -> None:
    """Refuse, in one line, an evaluation folder whose parts do not belong together:
    result files that are not the ones its metrics.json was written with (left by another
    evaluation, edited, missing). (Two runs of one machine type are refused before any
    scoring, ``check_one_run_per_machine``.) A metrics.json from before ``files`` was
    recorded is taken as it is."""
    recorded = metrics.get("files")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise RunError(f"{folder}/metrics.json: 'files' is not a mapping of file -> sha256")
    present = result_files(folder)
    for name in sorted(set(recorded) | set(present)):
        if name not in present:
            problem = "is missing"
        elif name not in recorded:
            problem = "is not one this evaluation wrote"
        elif present[name] != recorded[name]:
            problem = "differs from the one this evaluation wrote"
        else:
            continue
        raise RunError(f"{folder}/{name}: {problem} (metrics.json records the files it was "
                       f"written with); evaluate again with --force")


def format_table(ev: Evaluation) -> str:
    lines = [f"{'machine':<10} {'section':>7} {'AUC_s':>7} {'AUC_t':>7} {'pAUC':>7} {'hmean':>7}"]
    for r in ev.results:
        lines.append(f"{r.machine:<10} {f'{r.section:02d}':>7} {r.auc_source:>7.4f} "
                     f"{r.auc_target:>7.4f} {r.pauc:>7.4f} {r.hmean:>7.4f}")
    for m, v in ev.machine_scores().items():
        lines.append(f"{m:<10} {'all':>7} {'':>7} {'':>7} {'':>7} {v:>7.4f}")
    lines.append(f"official score (hmean over all sections, AUC_s, AUC_t, pAUC): {ev.official:.4f}")
    if ev.mixed:
        lines.append(f"NOTE: these runs are not one training ({ev.mixed}); the official "
                     f"score mixes them")
    return "\n".join(lines)


def comparison_table(ev: Evaluation, baseline: Evaluation) -> str:
    """Per-machine hmean and official score of a run beside baseline-knn on the same data."""
    name = next(iter(ev.methods.values()), "run")
    lines = [f"{'machine':<10} {name[:28]:>28} {'baseline-knn':>13} {'change':>8}"]
    base = baseline.machine_scores()
    for m, v in ev.machine_scores().items():
        b = base.get(m, float("nan"))
        lines.append(f"{m:<10} {v:>28.4f} {b:>13.4f} {v - b:>+8.4f}")
    lines.append(f"{'official':<10} {ev.official:>28.4f} {baseline.official:>13.4f} "
                 f"{ev.official - baseline.official:>+8.4f}")
    return "\n".join(lines)


def plot_roc(path: Path, machine: str, method: str, clips: list[Clip], scores: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    sections = sorted({c.section for c in clips})
    fig, axes = plt.subplots(1, len(sections), figsize=(4.2 * len(sections), 4), squeeze=False)
    y = np.array([c.is_anomaly for c in clips])
    d = np.array([c.domain for c in clips])
    sec = np.array([c.section for c in clips])
    for ax, s in zip(axes[0], sections):
        for domain, color in (("source", "tab:blue"), ("target", "tab:orange")):
            m = (sec == s) & ((d == domain) | y)
            if (m & ~y).any():
                fpr, tpr, _ = roc_curve(y[m], scores[m])
                ax.plot(fpr, tpr, color=color,
                        label=f"{domain}  AUC {roc_auc_score(y[m], scores[m]):.3f}")
        ax.axvspan(0, 0.1, color="grey", alpha=0.12, label="pAUC region (FPR ≤ 0.1)")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=f"{machine} section {s:02d}", xlabel="false positive rate",
               ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"ROC, {method}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
