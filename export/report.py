"""The export section of docs/results.md, from ``harken-export verify --json`` files, with the
export targets checked by code rather than by hand."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, TypeAdapter, ValidationError

from harken.common.errors import UsageError
from harken.common.readers import FileFormatError, read_json
from harken.common.records import explain
from harken.training.markdown import table

START, END = "<!-- export:start -->", "<!-- export:end -->"
TARGETS = {"official": 0.01, "spearman": 0.98, "size": 0.30}


class _Row(BaseModel):
    """What the page reads of one verify row (export/verify.py ``ArtifactCheck``)."""
    model_config = ConfigDict(extra="allow")
    artifact: StrictStr
    official: float
    spearman: float
    max_rel_error: float
    size_bytes: StrictInt
    size_vs_onnx_fp32: float | None = None
    latency_ms: float
    quant_params_bytes: StrictInt | None = None


_Rows = TypeAdapter(list[_Row])


def load_checks(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """``<method>__<machine>.json`` files -> (method, machine) -> verify rows, each file
    read through the one reader (harken/common/readers.py) and checked: a damaged one is
    one line naming it."""
    out = {}
    for file in sorted(Path(folder).glob("*__*.json")):
        method, machine = file.stem.split("__", 1)
        rows = read_json(file, "a 'harken-export verify --json' output")
        try:
            _Rows.validate_python(rows)
        except ValidationError as exc:
            raise FileFormatError(f"{file}: not a 'harken-export verify --json' output: "
                                  f"{explain(exc)}") from None
        if not any(r["artifact"] == "torch-fp32" for r in rows):
            raise FileFormatError(f"{file}: no 'torch-fp32' row to compare the artifacts with")
        method, machine = _inside(file, rows, method, machine)
        if (method, machine) in out:
            raise UsageError(f"{file}: a second verify output of {method} on {machine}; keep one")
        out[(method, machine)] = rows
    if not out:
        raise UsageError(f"{folder}: no <method>__<machine>.json verify outputs")
    return out


def _inside(file: Path, rows: list[dict], method: str, machine: str) -> tuple[str, str]:
    """The method and machine the verify output itself records (verify --json writes them
    in every row), which must agree with its file name: a file copied to another name would
    otherwise become another method's row. Outputs written before verify recorded them are
    read by their name."""
    for key, named in (("method", method), ("machine", machine)):
        found = {r.get(key) for r in rows}
        if found == {None}:
            continue
        if len(found) != 1 or not isinstance(next(iter(found)), str):
            raise FileFormatError(f"{file}: rows of several {key}s ({sorted(map(str, found))}); "
                                  f"expected one verify output")
        inside = next(iter(found))
        if inside != named:
            raise FileFormatError(f"{file}: the file name says {key} {named!r}, the verify "
                                  f"output inside says {inside!r}; name it "
                                  f"<method>__<machine>.json after what it verified")
    return method, machine


def export_markdown(checks: dict[tuple[str, str], list[dict]], command: str) -> str:
    lines = [START, "## Export: bundles against the training code", "",
             f"Made by `{command}`: each run exported with `harken-export RUN --out BUNDLE` "
             "(int8 ONNX and int8 TFLite, 300 calibration windows from training clips; a "
             "graph without weights, spectral-knn's window moments, gets float ONNX and TFLite "
             "instead, since int8 would only round its statistics), then "
             "`harken-export verify BUNDLE --data corpora/standard --json` over every test clip, "
             "each artifact scored through the agent's own scorer (agent/model/scorer.py). Targets: "
             f"official score within {TARGETS['official']} of torch fp32, clip-score Spearman "
             f">= {TARGETS['spearman']}, file <= {TARGETS['size']} x the fp32 ONNX file. "
             "Latency: median per window, one thread, this machine.", ""]
    cells = []
    missed: list[str] = []
    size_notes: dict[str, list[str]] = {}   # explanation -> artifacts it applies to
    for (method, machine), rows in sorted(checks.items()):
        ref = next(r for r in rows if r["artifact"] == "torch-fp32")
        for r in rows:
            if r["artifact"] == "torch-fp32":
                continue
            fails = []
            if abs(r["official"] - ref["official"]) > TARGETS["official"]:
                fails.append("official")
            if r["spearman"] < TARGETS["spearman"]:
                fails.append("Spearman")
            ratio = r.get("size_vs_onnx_fp32")
            if ratio is not None and "int8" in r["artifact"] and ratio > TARGETS["size"]:
                fails.append("size")
                if r.get("quant_params_bytes"):
                    q = r["quant_params_bytes"]
                    why = (f"{q:,} of {r['size_bytes']:,} bytes are quantization scales and "
                           f"zero points; without them "
                           f"{(r['size_bytes'] - q) / r['size_bytes'] * ratio:.3f} x")
                    size_notes.setdefault(why, []).append(f"{method}/{machine}/{r['artifact']}")
            verdict = "met" if not fails else "**missed: " + ", ".join(fails) + "**"
            if fails:
                missed.append(f"{method}/{machine}/{r['artifact']} ({', '.join(fails)})")
            cells.append([method, machine, r["artifact"], f"{r['official']:.4f}",
                          f"{ref['official']:.4f}", f"{r['spearman']:.4f}",
                          f"{r['max_rel_error']:.4f}", f"{r['size_bytes']:,}",
                          "-" if ratio is None else f"{ratio:.3f}", f"{r['latency_ms']:.3f}",
                          verdict])
    lines += table(["method", "machine", "artifact", "official", "torch fp32", "Spearman",
                    "max rel. err", "size", "x fp32 ONNX", "ms / window", "targets"], cells)
    n = sum(len(rows) - 1 for rows in checks.values())
    lines += ["", f"Targets met by {n - len(missed)} of {n} artifacts."
              + (" Missed: " + "; ".join(missed) + "." if missed else "")]
    if size_notes:
        lines += ["", "Where the size is missed, the quantization parameters in the file "
                  "(`quant_params_bytes` in the verify JSON) say why: per-channel int8 stores a "
                  "scale and a zero point for every output channel of every weight and bias "
                  "tensor (TFLite: float32 + int64, fixed by its schema), which on a narrow "
                  "network is a large share of the file. " + "; ".join(
                      f"{', '.join(arts)}: {why}" for why, arts in size_notes.items()) + "."]
    lines += [END]
    return "\n".join(lines) + "\n"


def write_section(results_md: Path, section: str) -> None:
    """Replace the export section of ``results_md`` (or append it)."""
    try:
        text = results_md.read_text() if results_md.is_file() else "# Results\n"
    except UnicodeDecodeError:
        raise UsageError(f"--results {results_md}: not a markdown (UTF-8 text) file") from None
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
