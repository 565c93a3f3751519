"""Model bundles on the device: read, check and refuse (docs/bundle.md).

A bundle is a directory (or a .tar / .tar.gz of one) with ``manifest.json``, model files and
``.npy`` arrays. Loading checks everything before any model runs: the manifest itself
(agent/model/manifest.py: schema version, kinds, outputs, rule, arrays named, fusion), then
here what needs the files: the feature spec (the agent must be able to compute it), every
file's size and sha256, array loading without pickle, each artifact's declared input against
the feature window, and a fused bundle's member bundles. Every refusal names the file and
the manifest field.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pydantic import ValidationError

from harken.common.errors import HarkenError
from harken.agent.features import FeatureSpec, FeatureSpecError, shared_front_end
from harken.agent.model.manifest import (ARTIFACT_KINDS, MANIFEST, OUTPUTS, SCHEMA_VERSION,
                                   FileEntry, Manifest, explain)
from harken.agent.model.rules import RuleError, ScoreRule, make_rule

MAX_MANIFEST_BYTES = 1 << 20
# the artifact a bundle runs when none is named: int8 first, TFLite (XNNPACK) before ONNX
PREFERRED = ("tflite-int8", "onnx-int8", "onnx-fp32", "tflite-fp32")

__all__ = ["ARTIFACT_KINDS", "MANIFEST", "OUTPUTS", "SCHEMA_VERSION", "Artifact", "Bundle",
           "BundleError", "open_bundle", "sha256_file"]


class BundleError(HarkenError, ValueError):
    """A bundle the agent refuses; the message names the file and the field."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    kind: str                         # one of ARTIFACT_KINDS
    path: Path
    input_shape: tuple[int, ...]
    input_dtype: str                  # float32 | int8
    input_quant: tuple[float, int] | None
    outputs: dict[str, dict]          # semantics -> {"index" | "name", "scale", "zero_point"}

    @property
    def runtime(self) -> str:
        return self.kind.split("-")[0]


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    spec: FeatureSpec
    artifacts: dict[str, Artifact]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    members: dict[str, Bundle] = field(default_factory=dict)     # a fused bundle's, by name

    @property
    def is_fused(self) -> bool:
        return self.manifest.fusion is not None

    @property
    def kinds(self) -> list[str]:
        """The artifact kinds it can run: its own, in manifest order; a fused bundle's are
        its members', in the agent's order of preference (a member lacking one runs its
        runtime's other precision)."""
        if not self.is_fused:
            return list(self.artifacts)
        have = {k for b in self.members.values() for k in b.artifacts}
        return [k for k in PREFERRED if k in have]

    @property
    def model_id(self) -> str:
        return self.manifest.model.id

    @property
    def machine(self) -> str:
        return self.manifest.model.machine

    @property
    def sections(self) -> list[int]:
        return list(self.manifest.model.sections)

    @property
    def rule_name(self) -> str:
        return self.manifest.scoring.rule

    @property
    def needs_enrollment(self) -> bool:
        """A general bundle: its bank is learned on site (``harken enroll``)."""
        e = self.manifest.enrollment
        return e is not None and e.required

    @property
    def threshold(self) -> float | None:
        """None for a bundle nobody has set a threshold for (run ``harken calibrate``)."""
        value = self.manifest.threshold.value
        return None if value is None else float(value)

    def check_section(self, section: int) -> None:
        if section not in self.sections:
            raise BundleError(f"{self.root / MANIFEST}: model.sections is {self.sections}; "
                              f"section {section:02d} is not among them")

    def rule(self, section: int) -> ScoreRule:
        """The score rule of ``section`` with its arrays."""
        self.check_section(section)
        if self.is_fused:
            raise BundleError(f"{self.root / MANIFEST}: a fused bundle has no rule of its "
                              f"own; its members score (agent/model/fused.py)")
        names = self.manifest.scoring.sections.get(f"{section:02d}", {})
        try:
            return make_rule(self.rule_name, {k: self.arrays[v] for k, v in names.items()})
        except RuleError as exc:          # the manifest names too few arrays for its rule
            raise BundleError(f"{self.root / MANIFEST}: scoring.sections.{section:02d}: "
                              f"{exc}") from None

    def artifact(self, kind: str | None = None, same_runtime: bool = False) -> Artifact:
        """The artifact of ``kind``; without one, the first int8 one there is.
        ``same_runtime``: if ``kind`` is missing, the other precision of its runtime (a
        fused bundle's member without weights ships float only)."""
        if kind is not None and kind not in self.artifacts and same_runtime:
            runtime = kind.split("-")[0]
            kind = next((k for k in (f"{runtime}-int8", f"{runtime}-fp32")
                         if k in self.artifacts), kind)
        if kind is None:
            for k in PREFERRED:
                if k in self.artifacts:
                    return self.artifacts[k]
        if kind not in self.artifacts:
            raise BundleError(f"{self.root / MANIFEST}: no artifact '{kind}' in this bundle "
                              f"(it has {sorted(self.artifacts)})")
        return self.artifacts[kind]


def _checked_file(root: Path, entry: FileEntry, where: str) -> Path:
    path = (root / entry.path).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"{where}: path '{entry.path}' leaves the bundle")
    if not path.is_file():
        raise BundleError(f"{where}: file {path} is missing")
    if path.stat().st_size != entry.size:
        raise BundleError(f"{path}: size is {path.stat().st_size} bytes, the manifest's "
                          f"'{where}.size' says {entry.size}")
    if sha256_file(path) != entry.sha256:
        raise BundleError(f"{path}: sha256 does not match the manifest's '{where}.sha256' "
                          f"(file corrupt or changed)")
    return path


def read_manifest(manifest_path: Path) -> Manifest:
    """The typed manifest; the schema version is checked first, so a manifest from a
    newer exporter is refused with the reason rather than a field error."""
    try:
        size = manifest_path.stat().st_size
        if size > MAX_MANIFEST_BYTES:       # a real one is a few KiB: never read a huge file
            raise BundleError(f"{manifest_path}: {size} bytes; a manifest is at most "
                              f"{MAX_MANIFEST_BYTES} bytes")
        data = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{manifest_path}: not a manifest (JSON nested too deeply)") from None
    where = str(manifest_path)
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, int) and version != SCHEMA_VERSION:
        raise BundleError(f"{where}: field 'schema_version' is {version}; this agent reads "
                          f"version {SCHEMA_VERSION} (update the agent or re-export)")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(explain(exc, where)) from None


def open_bundle(path: str | Path, extract_to: Path | None = None) -> Bundle:
    """Read and check a bundle directory or tarball."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        path = _extract(path, extract_to)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle ({MANIFEST} missing)")
    manifest = read_manifest(manifest_path)
    where = str(manifest_path)
    try:
        spec = FeatureSpec.from_dict(manifest.feature_spec, f"{where}: feature_spec")
    except FeatureSpecError as exc:
        raise BundleError(str(exc)) from None
    if manifest.fusion is not None:
        return _open_fused(path, manifest, spec)

    arrays = {}
    for name, entry in manifest.arrays.items():
        file = _checked_file(path, entry, f"{where}: arrays.{name}")
        try:
            arrays[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{file}: not a plain .npy array ({exc})") from None

    window = spec.window_frames * spec.n_features
    artifacts = {}
    for kind, entry in manifest.artifacts.items():
        at = f"{where}: artifacts.{kind}"
        file = _checked_file(path, entry, at)
        inp = entry.input
        shape = tuple(inp.shape)
        if int(np.prod(shape)) != window:
            raise BundleError(f"{at}.input.shape is {list(shape)}, but the feature spec's window "
                              f"is {spec.window_frames} frames x {spec.n_features} values = {window} "
                              f"values")
        # the manifest model made sure an int8 input carries its scale and zero point
        quant = (float(inp.scale), int(inp.zero_point)) if inp.dtype == "int8" else None
        artifacts[kind] = Artifact(kind, file, shape, inp.dtype, quant, entry.outputs)
    return Bundle(path, manifest, spec, artifacts, arrays)


def _open_fused(path: Path, manifest: Manifest, spec: FeatureSpec) -> Bundle:
    """A fused bundle: every member a complete bundle in a sub-folder, pinned by its
    manifest's sha256, scoring every section of the fused one from the same frames."""
    where = f"{path / MANIFEST}: fusion.members"
    members: dict[str, Bundle] = {}
    for i, m in enumerate(manifest.fusion.members):
        at = f"{where}[{i}]"
        pinned = (path / m.path / MANIFEST).resolve()
        if path.resolve() not in pinned.parents:
            raise BundleError(f"{at}.path: '{m.path}' leaves the bundle")
        if not pinned.is_file():
            raise BundleError(f"{at}.path: no {MANIFEST} in {path / m.path}")
        if sha256_file(pinned) != m.manifest_sha256:
            raise BundleError(f"{pinned}: sha256 does not match '{at}.manifest_sha256' "
                              f"(member changed or replaced)")
        member = open_bundle(path / m.path)
        if member.is_fused or member.needs_enrollment:
            raise BundleError(f"{at}: {m.path} is {'fused' if member.is_fused else 'a general bundle'}; "
                              f"a member must be a bundle with its own model and bank")
        missing = sorted(set(manifest.model.sections) - set(member.sections))
        if missing:
            raise BundleError(f"{at}: {m.path} has no section(s) {missing} of model.sections")
        members[m.name] = member
    for s in manifest.model.sections:
        if f"{s:02d}" not in manifest.fusion.standardise:
            raise BundleError(f"{path / MANIFEST}: fusion.standardise.{s:02d} has no "
                              f"'{manifest.fusion.members[0].name}'")
    try:
        shared = shared_front_end([b.spec for b in members.values()])
    except FeatureSpecError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if shared.replace(name=spec.name) != spec:
        raise BundleError(f"{path / MANIFEST}: field 'feature_spec' is not the members' shared "
                          f"front end (expected {shared.to_dict()})")
    return Bundle(path, manifest, spec, {}, {}, members)


def _extract_safely(tar: tarfile.TarFile, into: Path) -> None:
    """Regular files and folders only, all inside ``into``: the 'data' filter where Python
    has it (3.11.4 and later), the same refusals by hand where it does not (Debian
    bookworm and Raspberry Pi OS ship 3.11.2)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in tar.getmembers():
        target = (into / member.name).resolve()
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is not a regular file or folder")
        if member.name.startswith("/") or (target != root and root not in target.parents):
            raise tarfile.TarError(f"{member.name!r} would be written outside the folder")
    tar.extractall(into)


def _extract(tar_path: Path, into: Path | None) -> Path:
    """Unpack into ``into``, or into a temporary folder that is removed when the process
    exits (and at once if the tarball is refused: nothing half-unpacked stays behind)."""
    own = into is None
    into = into or Path(tempfile.mkdtemp(prefix="harken-bundle-"))
    try:
        try:
            with tarfile.open(tar_path) as tar:
                _extract_safely(tar, into)
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"{tar_path}: cannot unpack ({exc})") from None
        found = sorted(p.parent for p in into.rglob(MANIFEST))
        if not found:
            raise BundleError(f"{tar_path}: no {MANIFEST} inside")
    except BaseException:
        if own:
            shutil.rmtree(into, ignore_errors=True)
        raise
    if own:
        atexit.register(shutil.rmtree, into, ignore_errors=True)
    return found[0]
