"""The bundle manifest (docs/export.md, docs/bundle.md) as one typed model: the exporter
writes it (export/bundle.py, export/wrap.py) and the agent validates with it
(agent/model/bundle.py), so the schema exists once.

Unknown fields are kept, not refused: a newer exporter may add some, and the
``schema_version`` check is what refuses a manifest this agent cannot read. Everything the
manifest alone can say is checked here: artifact kinds and outputs, an int8 input's
quantization, the score rule and the output it reads, the arrays each section names, a
fused bundle's members and standardisation. What needs the files or the feature spec
(sizes, sha256, the input shape against the window, the members' own bundles) stays in
agent/model/bundle.py, which names the file and the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import (BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)

from harken.agent.model.rules import outputs_of
from harken.agent.model.rules.base import REGISTRY

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ArtifactKind = Literal["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]
# latent: a generative model's code (z); latent_aux: its re-encoding after the decoder (E(G(z)))
Output = Literal["reconstruction", "logits", "embedding", "energy", "moments", "latent", "latent_aux"]
ARTIFACT_KINDS: tuple[str, ...] = get_args(ArtifactKind)
OUTPUTS: tuple[str, ...] = get_args(Output)
FUSED_RULE = "fused"            # a fused bundle's scoring.rule: its members score


class _Part(BaseModel):
    # no NaN or infinity in any number the manifest states: a NaN weight or scale would
    # make every score NaN, which compares as "normal" (docs/reliability.md)
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# the most a bundle's files may hold together (a fused bundle of several models is a few
# tens of MB): a manifest stating more is refused before anything is read or unpacked
MAX_BUNDLE_BYTES = 1 << 30


class FileEntry(_Part):
    """A file of the bundle, relative to its folder, with what it must hash to."""
    path: StrictStr = Field(min_length=1)
    size: StrictInt = Field(ge=0, le=MAX_BUNDLE_BYTES)
    sha256: StrictStr


class ArtifactInput(_Part):
    name: str | None = None
    shape: list[Annotated[StrictInt, Field(ge=1, le=1 << 24)]] = Field(min_length=1, max_length=8)
    dtype: Literal["float32", "int8"]
    scale: Annotated[float, Field(gt=0)] | None = None          # int8 input only
    zero_point: StrictInt | None = None

    @model_validator(mode="after")
    def _int8_is_quantized(self) -> ArtifactInput:
        if self.dtype == "int8":
            missing = next((f for f in ("scale", "zero_point") if getattr(self, f) is None), None)
            if missing:
                raise ValueError(f"field '{missing}' is missing (int8 input)")
        return self


class ArtifactEntry(FileEntry):
    """One model file: its input and, per output meaning, where to read it."""
    input: ArtifactInput
    outputs: dict[str, dict[str, Any]]       # keys: Output names (checked below)
    calibration: dict[str, Any] | None = None

    @field_validator("outputs")
    @classmethod
    def _known_outputs(cls, outputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        bad = sorted(set(outputs) - set(OUTPUTS))
        if bad:
            raise ValueError(f"unknown output {bad[0]!r}; known: {list(OUTPUTS)}")
        return outputs


class ModelInfo(_Part):
    id: str = ""
    version: str = "unknown"
    method: str = ""
    machine: StrictStr
    sections: list[StrictInt] = Field(min_length=1)


class Scoring(_Part):
    rule: StrictStr
    output: Output | None = None
    sections: dict[str, dict[str, str]] = Field(default_factory=dict)   # "00" -> role -> array
    # artifact kind -> "00" -> role -> array: what that artifact scores with instead of the
    # section's own array of the role (an int8 artifact's statistics fitted on its own
    # outputs: docs/export.md "Rule arrays per artifact"); absent in older bundles
    per_artifact: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict)
    # the training method's score the device rule reproduces (``harken-export verify``
    # scores torch with it; the device rule's name may differ, e.g. aegan-d-lof for d-lof)
    # and, for a run that chose its score itself, the record of that choice (run.json
    # ``score_choice``); neither is read by the agent, and older bundles have neither
    training_score: StrictStr | None = None
    choice: dict[str, Any] | None = None


class Enrollment(_Part):
    """A general bundle: no reference bank inside; ``harken enroll`` learns one on site
    (agent/site/enroll.py) and ``harken run`` refuses to start without it."""
    required: bool = True
    density_k: StrictInt = Field(4, ge=1, le=1000)
    # the spectral-knn branches the bank is fitted on (agent/model/rules/spectral_knn.py),
    # in its fixed order; a bundle written before there were more than two has none
    branches: list[Literal["mel", "spectrum", "modulation", "temporal", "cepstrum"]] = Field(
        default_factory=lambda: ["mel", "spectrum"], min_length=1, max_length=5)
    weights: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0], min_length=2, max_length=10)
    how: str = ""

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, weights: list[float]) -> list[float]:
        if sum(weights) <= 0:
            raise ValueError("the weights sum to 0: no component would count")
        return weights

    @model_validator(mode="after")
    def _two_weights_per_branch(self) -> Enrollment:
        order = ["mel", "spectrum", "modulation", "temporal", "cepstrum"]
        if len(set(self.branches)) != len(self.branches) or self.branches != sorted(
                self.branches, key=order.index):
            raise ValueError(f"branches {self.branches}: each at most once, in the order "
                             f"{order}")
        if len(self.weights) != 2 * len(self.branches):
            raise ValueError(f"{len(self.weights)} weights for the branches {self.branches}: "
                             f"expected {2 * len(self.branches)} (knn and density of each)")
        return self


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
    # None: set on site with harken calibrate; a NaN or infinite value would make every
    # interval "normal" (or anomalous) without a word, a string or bool is no threshold
    value: Annotated[float, Field(strict=True, allow_inf_nan=False)] | None
    how: str = ""
    # the report interval the value was fitted at (a score over 10 s of audio is not one
    # over 2 s: docs/agent.md "Calibration"); None in bundles exported before it was
    # written (``Manifest.threshold_interval_s`` then reads ``aggregation.interval_s``)
    interval_s: Annotated[float, Field(gt=0, le=3600)] | None = None


class Manifest(_Part):
    schema_version: StrictInt
    model: ModelInfo
    feature_spec: dict[str, Any]
    input: dict[str, Any] = Field(default_factory=dict)
    outputs: list[Output] = Field(default_factory=list)
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

    @field_validator("artifacts")
    @classmethod
    def _known_kinds(cls, artifacts: dict[str, ArtifactEntry]) -> dict[str, ArtifactEntry]:
        bad = [k for k in artifacts if k not in ARTIFACT_KINDS]
        if bad:
            raise ValueError(f"unknown artifact kind {bad[0]!r}; known: {list(ARTIFACT_KINDS)}")
        return artifacts

    @model_validator(mode="after")
    def _scoring(self) -> Manifest:
        """A model bundle's rule is one this agent has, every artifact has the output it
        reads, and each section's arrays are in ``arrays``; a fused bundle standardises
        every member in every section."""
        if self.fusion is not None:
            return self._fused()
        rule = self.scoring.rule
        if rule not in REGISTRY:        # the registry itself: a rule registered late counts
            raise ValueError(f"field 'scoring.rule' is {rule!r}; this agent knows "
                             f"{list(REGISTRY)}")
        for kind, entry in self.artifacts.items():
            for needed in outputs_of(rule):
                if needed not in entry.outputs:
                    raise ValueError(f"artifacts.{kind}.outputs has {sorted(entry.outputs)}; "
                                     f"scoring rule '{rule}' needs '{needed}'")
        if not self.artifacts:
            raise ValueError("field 'artifacts' lists no model")
        for s in self.model.sections:
            for key, name in self.scoring.sections.get(f"{s:02d}", {}).items():
                if name not in self.arrays:
                    raise ValueError(f"scoring.sections.{s:02d}.{key} names array '{name}', "
                                     f"which is not in 'arrays'")
        self._per_artifact()
        return self

    def _per_artifact(self) -> None:
        """An artifact's own arrays replace arrays its section has, for an artifact and a
        section the bundle has, and are in ``arrays``: a role or section of its own would
        score with arrays nobody checked against the run."""
        sections = {f"{s:02d}" for s in self.model.sections}
        for kind, by_section in self.scoring.per_artifact.items():
            at = f"scoring.per_artifact.{kind}"
            if kind not in self.artifacts:
                raise ValueError(f"{at}: the bundle has no artifact {kind!r} (it has "
                                 f"{sorted(self.artifacts)})")
            for key, roles in by_section.items():
                if key not in sections:
                    raise ValueError(f"{at}.{key}: not one of model.sections "
                                     f"{sorted(sections)}")
                own = self.scoring.sections.get(key, {})
                for role, name in roles.items():
                    if role not in own:
                        raise ValueError(f"{at}.{key}.{role}: section {key} has no array "
                                         f"'{role}' to replace (it has {sorted(own)})")
                    if name not in self.arrays:
                        raise ValueError(f"{at}.{key}.{role} names array '{name}', which is "
                                         f"not in 'arrays'")

    def _fused(self) -> Manifest:
        if self.scoring.per_artifact:
            raise ValueError("scoring.per_artifact: a fused bundle has no arrays of its own; "
                             "each member's manifest carries its artifacts' arrays")
        seen: set[str] = set()
        for i, m in enumerate(self.fusion.members):
            if m.name in seen:
                raise ValueError(f"fusion.members[{i}]: member name {m.name!r} given twice")
            seen.add(m.name)
        if sum(m.weight for m in self.fusion.members) <= 0:
            raise ValueError("fusion.members: the weights sum to 0")
        # each section it standardises, for every member; that those are model.sections is
        # checked against the members' own sections (agent/model/bundle.py)
        for key, scales in self.fusion.standardise.items():
            for m in self.fusion.members:
                scale = scales.get(m.name)
                if scale is None:
                    raise ValueError(f"fusion.standardise.{key} has no '{m.name}'")
                if not (math.isfinite(scale[0]) and math.isfinite(scale[1]) and scale[1] > 0):
                    raise ValueError(f"fusion.standardise.{key}.{m.name} must be a finite "
                                     f"mean and a positive std, got {list(scale)}")
        return self

    @property
    def threshold_interval_s(self) -> float | None:
        """The interval length the bundle's threshold holds for: as the exporter recorded
        it, else (an older bundle) the interval the exporter said it aggregated over (the
        training clips' length), else None (unknown: an imported model's threshold)."""
        if self.threshold.value is None:
            return None
        if self.threshold.interval_s is not None:
            return float(self.threshold.interval_s)
        old = self.aggregation.get("interval_s")
        if isinstance(old, (int, float)) and not isinstance(old, bool) and \
                math.isfinite(old) and 0 < old <= 3600:
            return float(old)
        return None

    def to_json(self) -> str:
        """The manifest as written: only the fields that were given (no nulls added)."""
        return self.model_dump_json(indent=2, exclude_unset=True)


def explain(exc: ValidationError, where: str) -> str:
    """The first problem of a manifest, naming the field as the old hand checks did:
    ``<where>: <parent>: field '<name>' is missing``, ``... must be <type>, got <value>``,
    or a validator's own sentence after the field's path."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "value_error":
        msg = str(err["ctx"]["error"]) if "error" in err.get("ctx", {}) else err["msg"]
        path = ".".join(loc)
        return f"{where}: {path}: {msg}" if path else f"{where}: {msg}"
    parent = ".".join(loc[:-1])
    at = f"{where}: {parent}" if parent else where
    if err["type"] == "missing":
        return f"{at}: field '{loc[-1]}' is missing"
    return f"{at}: field '{loc[-1]}' {err['msg'].lower()}, got {err.get('input')!r}"
