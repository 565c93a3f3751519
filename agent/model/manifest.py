"""The bundle manifest (DESIGN contract 2, docs/export.md) as one typed model: the exporter
writes it (export/bundle.py, export/wrap.py) and the agent validates with it
(agent/model/bundle.py), so the schema exists once.

Unknown fields are kept, not refused: a newer exporter may add some, and the
``schema_version`` check is what refuses a manifest this agent cannot read. Checks that
need the files or the feature spec (sizes, sha256, input shape against the window, the
rule's output) stay in agent/model/bundle.py, which names the file and the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARTIFACT_KINDS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
OUTPUTS = ("reconstruction", "logits", "embedding", "energy", "moments")


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileEntry(_Part):
    """A file of the bundle, relative to its folder, with what it must hash to."""
    path: StrictStr
    size: StrictInt
    sha256: StrictStr


class ArtifactInput(_Part):
    name: str | None = None
    shape: list[StrictInt]
    dtype: Literal["float32", "int8"]
    scale: float | None = None          # int8 input only
    zero_point: StrictInt | None = None


class ArtifactEntry(FileEntry):
    """One model file: its input and, per output meaning, where to read it."""
    input: ArtifactInput
    outputs: dict[str, dict[str, Any]]
    calibration: dict[str, Any] | None = None


class ModelInfo(_Part):
    id: str = ""
    version: str = "unknown"
    method: str = ""
    machine: StrictStr
    sections: list[StrictInt]


class Scoring(_Part):
    rule: StrictStr
    output: str | None = None
    sections: dict[str, dict[str, str]] = Field(default_factory=dict)   # "00" -> role -> array


class Enrollment(_Part):
    """A general bundle: no reference bank inside; ``harken enroll`` learns one on site
    (agent/site/enroll.py) and ``harken run`` refuses to start without it."""
    required: bool = True
    density_k: StrictInt = 4
    weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    how: str = ""


class FusionMember(_Part):
    """A bundle inside the fused bundle's folder, pinned by its manifest's hash."""
    name: StrictStr
    path: StrictStr
    weight: float = Field(ge=0)
    manifest_sha256: StrictStr


class Fusion(_Part):
    """A fused bundle (agent/model/fused.py): each member scores the interval, its score is
    standardised with its section's (mean, std) of held-out normal training scores, and
    the weighted mean of those is the bundle's score."""
    members: list[FusionMember] = Field(min_length=2)
    standardise: dict[str, dict[str, tuple[float, float]]]     # "00" -> member -> (mean, std)


class Threshold(_Part):
    value: float | None                 # None: set on site with harken calibrate
    how: str = ""


class Manifest(_Part):
    schema_version: StrictInt
    model: ModelInfo
    feature_spec: dict[str, Any]
    input: dict[str, Any] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    scoring: Scoring
    aggregation: dict[str, Any] = Field(default_factory=dict)
    normal_scores: dict[str, Any] = Field(default_factory=dict)
    threshold: Threshold
    enrollment: Enrollment | None = None
    fusion: Fusion | None = None        # a fused bundle: its members score, it has no model
    artifacts: dict[str, ArtifactEntry]          # {} in a fused bundle (members have them)
    reference: dict[str, Any] = Field(default_factory=dict)
    arrays: dict[str, FileEntry] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as written: only the fields that were given (no nulls added)."""
        return self.model_dump_json(indent=2, exclude_unset=True)


def explain(exc: ValidationError, where: str) -> str:
    """The first problem of a manifest, naming the field as the old hand checks did:
    ``<where>: <parent>: field '<name>' is missing`` or ``... must be <type>, got <value>``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    parent = ".".join(loc[:-1])
    at = f"{where}: {parent}" if parent else where
    if err["type"] == "missing":
        return f"{at}: field '{loc[-1]}' is missing"
    return f"{at}: field '{loc[-1]}' {err['msg'].lower()}, got {err.get('input')!r}"
