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
import lzma
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pydantic import ValidationError

from harken.common.atomic import repair
from harken.common.errors import HarkenError
from harken.agent.features import FeatureSpec, FeatureSpecError, shared_front_end
from harken.common.arrays import ArrayFileError, read_npy
from harken.agent.model.manifest import (ARTIFACT_KINDS, MAX_BUNDLE_BYTES, MANIFEST, OUTPUTS,
                                         SCHEMA_VERSION, FileEntry, Manifest, explain)
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

    def rule(self, section: int, kind: str | None = None) -> ScoreRule:
        """The score rule of ``section`` with the arrays artifact ``kind`` scores with
        (without a kind: those of the artifact ``artifact()`` picks). An int8 artifact may
        have statistics of its own (docs/export.md "Rule arrays per artifact")."""
        self.check_section(section)
        if self.is_fused:
            raise BundleError(f"{self.root / MANIFEST}: a fused bundle has no rule of its "
                              f"own; its members score (agent/model/fused.py)")
        names, where = self._array_names(section, kind)
        try:
            return make_rule(self.rule_name, {k: self.arrays[v] for k, v in names.items()})
        except RuleError as exc:          # the manifest names too few arrays for its rule
            raise BundleError(f"{self.root / MANIFEST}: {where}: {exc}") from None

    def _array_names(self, section: int, kind: str | None) -> tuple[dict[str, str], str]:
        """(role -> array name, the manifest fields that say so) of ``section`` for
        artifact ``kind`` (without one: the artifact ``artifact()`` picks): the section's
        arrays, with the artifact's own in their place (``scoring.per_artifact``)."""
        key = f"{section:02d}"
        names = dict(self.manifest.scoring.sections.get(key, {}))
        where = f"scoring.sections.{key}"
        if self.artifacts:
            kind = self.artifact(kind).kind
            own = self.manifest.scoring.per_artifact.get(kind, {}).get(key)
            if own:
                names |= own
                where = f"scoring.sections.{key} with scoring.per_artifact.{kind}.{key}"
        return names, where

    def scorer_digest(self, section: int, kind: str | None = None) -> str:
        """What scores ``section`` with artifact ``kind`` (without one: the artifact the
        agent picks), as one SHA-256: the rule, the model file's and each rule array's
        sha256 (a fused bundle: its manifest's, which pins its members', and the kind). A
        threshold calibrated on site holds for these only: a re-export (other int8 weights,
        arrays fitted on them) or another artifact scores on another scale."""
        if self.is_fused:
            kind = kind or self.kinds[0]
            parts = {"fused": sha256_file(self.root / MANIFEST), "kind": kind}
        else:
            artifact = self.artifact(kind)
            names, _ = self._array_names(section, artifact.kind)
            parts = {"rule": self.rule_name, "kind": artifact.kind,
                     "model": self.manifest.artifacts[artifact.kind].sha256,
                     "arrays": {role: self.manifest.arrays[name].sha256
                                for role, name in sorted(names.items())}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

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
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if digest != entry.sha256:
        raise BundleError(f"{path}: sha256 does not match the manifest's '{where}.sha256' "
                          f"(file corrupt or changed)")
    return path


def _no_twice(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once: with a key twice (an array named twice)
    json would silently keep the last, and which one the exporter meant is not clear."""
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"key {twice!r} is given twice in one object")
    return dict(pairs)


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """The typed manifest from its bytes; the schema version is checked first, so a
    manifest from a newer exporter is refused with the reason rather than a field error."""
    try:
        data = json.loads(raw.decode(), object_pairs_hook=_no_twice)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{where}: not a manifest (JSON nested too deeply)") from None
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


def read_manifest(manifest_path: Path) -> Manifest:
    """The typed manifest of the file at ``manifest_path`` (never more than
    MAX_MANIFEST_BYTES of it read)."""
    try:
        size = manifest_path.stat().st_size
        if size > MAX_MANIFEST_BYTES:       # a real one is a few KiB: never read a huge file
            raise BundleError(f"{manifest_path}: {size} bytes; a manifest is at most "
                              f"{MAX_MANIFEST_BYTES} bytes")
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot be read ({exc.strerror or exc})") from None
    return parse_manifest(raw, str(manifest_path))


def open_bundle(path: str | Path, extract_to: Path | None = None) -> Bundle:
    """Read and check a bundle directory or tarball."""
    path = Path(path)
    try:
        is_tar = path.is_file() and tarfile.is_tarfile(path)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if is_tar:
        path = _extract(path, extract_to)
    elif path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz")):
        raise BundleError(f"{path}: not a readable tarball (truncated, e.g. partly copied, "
                          f"or damaged); copy it again")
    manifest_path = path / MANIFEST
    if not is_tar and not manifest_path.is_file():
        repair(path)      # a bundle replacement killed mid-swap: the old one back (docs/export.md)
    if not manifest_path.is_file():
        if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
            raise BundleError(f"{path}: the bundle folder cannot be read by this user "
                              f"(permissions)")
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
            arrays[name] = read_npy(file)        # its header checked before any is read
        except ArrayFileError as exc:
            raise BundleError(str(exc)) from None

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
    bundle = Bundle(path, manifest, spec, artifacts, arrays)
    if not bundle.needs_enrollment:
        for s in bundle.sections:         # every section's arrays, checked now, not at its
            for kind in bundle.artifacts or [None]:      # first interval
                bundle.rule(s, kind)
    return bundle


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


MAX_MEMBERS = 10_000             # files in one tarball: a bundle has a handful
STALE_PREFIX = "harken-bundle-"  # temporary unpacked copies: harken-bundle-<pid>-<random>


def _member_name(member: tarfile.TarInfo, tar_path: Path) -> str:
    """The member's path, normalised ('./a//b' -> 'a/b'); refused if it is absolute or
    leaves the folder, or if it is anything but a regular file or a folder."""
    name = posixpath.normpath(member.name)
    if member.name.startswith("/") or name == ".." or name.startswith("../"):
        raise BundleError(f"{tar_path}: cannot unpack: member {member.name!r} would be "
                          f"written outside the folder")
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "not a regular file or folder"
        raise BundleError(f"{tar_path}: cannot unpack: member {member.name!r} is {kind}; a "
                          f"bundle holds only files and folders")
    return "" if name == "." else name


def _unreadable(tar_path: Path, exc: BaseException) -> BundleError:
    return BundleError(f"{tar_path}: cannot unpack: the tarball cannot be read to its end "
                       f"(truncated, e.g. partly copied, or damaged: {exc or type(exc).__name__}); "
                       f"copy it again")


READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _scan(tar_path: Path) -> dict[str, tarfile.TarInfo]:
    """Every member's header, read through to the end of the tarball (which is how a
    truncated one is found) without keeping any data, with its total size capped; no link,
    device, absolute or escaping path, no name twice."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for m in tar:
                name = _member_name(m, tar_path)
                if len(members) >= MAX_MEMBERS:
                    raise BundleError(f"{tar_path}: more than {MAX_MEMBERS} members; not a "
                                      f"bundle")
                if name in members and not m.isdir():
                    raise BundleError(f"{tar_path}: member {name!r} is stored twice; which "
                                      f"one is the bundle's is not clear")
                total += m.size
                if total > MAX_BUNDLE_BYTES:
                    raise BundleError(f"{tar_path}: its members hold more than "
                                      f"{MAX_BUNDLE_BYTES} bytes (member {m.name!r} alone "
                                      f"claims {m.size}); not a bundle")
                members[name] = m
    except READ_ERRORS as exc:
        raise _unreadable(tar_path, exc) from None
    return members


def _listed(tar_path: Path, members: dict[str, tarfile.TarInfo], tar: tarfile.TarFile
            ) -> tuple[str, dict[str, int]]:
    """(the bundle's folder in the tarball, {member: size} of every file its manifest
    lists, its fused members' manifests and files included). A tarball with a manifest the
    bundle does not name holds a second bundle and is refused."""
    manifests = sorted((n for n, m in members.items() if m.isfile()
                        and posixpath.basename(n) == MANIFEST),
                       key=lambda n: (n.count("/"), n))
    if not manifests:
        raise BundleError(f"{tar_path}: no {MANIFEST} inside; not a bundle")
    top = [n for n in manifests if n.count("/") == manifests[0].count("/")]
    if len(top) > 1:
        raise BundleError(f"{tar_path}: holds {len(top)} bundles "
                          f"({', '.join(posixpath.dirname(n) or '.' for n in top)}); give "
                          f"one bundle per tarball")
    root = posixpath.dirname(manifests[0])
    wanted: dict[str, int] = {}

    def add(folder: str, depth: int = 0) -> None:
        name = posixpath.join(folder, MANIFEST)
        m = members.get(name)
        if m is None or not m.isfile():
            raise BundleError(f"{tar_path}: no {name} inside (a fused bundle's member)")
        if m.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{tar_path}: {name}: {m.size} bytes; a manifest is at most "
                              f"{MAX_MANIFEST_BYTES} bytes")
        manifest = parse_manifest(_read_member(tar, m, tar_path), f"{tar_path}: {name}")
        wanted[name] = m.size
        entries = [(f"arrays.{k}", e) for k, e in manifest.arrays.items()] + \
            [(f"artifacts.{k}", e) for k, e in manifest.artifacts.items()]
        for key, e in entries:
            path = posixpath.normpath(posixpath.join(folder, e.path))
            if path.startswith("../") or (folder and not path.startswith(folder + "/")):
                raise BundleError(f"{tar_path}: {name}: {key}.path '{e.path}' leaves the bundle")
            have = members.get(path)
            if have is None or not have.isfile():
                raise BundleError(f"{tar_path}: {name} lists {key} at '{e.path}', which the "
                                  f"tarball does not hold")
            if have.size != e.size:
                raise BundleError(f"{tar_path}: member {path!r} is {have.size} bytes, the "
                                  f"manifest's '{key}.size' says {e.size}")
            wanted[path] = e.size
        if manifest.fusion is not None and depth == 0:
            for m_ in manifest.fusion.members:
                add(posixpath.normpath(posixpath.join(folder, m_.path)), depth + 1)

    add(root)
    other = [n for n in manifests if n not in wanted]
    if other:
        raise BundleError(f"{tar_path}: holds a second bundle ({other[0]} is not one its "
                          f"{MANIFEST} names); give one bundle per tarball")
    return root, wanted


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, tar_path: Path) -> bytes:
    f = tar.extractfile(member)
    data = f.read(member.size + 1) if f is not None else b""
    if len(data) != member.size:
        raise _unreadable(tar_path, EOFError(f"member {member.name!r} ends early"))
    return data


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path,
                 tar_path: Path) -> None:
    """The member's bytes to ``target``, exactly the size its header (already checked
    against the manifest) states: a stream that ends early is a truncated tarball."""
    src = tar.extractfile(member)
    left = member.size
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)        # a file or link already there: replaced
        out = open(target, "xb")
    except OSError as exc:
        raise BundleError(f"{target}: cannot be written while unpacking {tar_path} "
                          f"({exc.strerror or exc})") from None
    with out:
        while left > 0 and src is not None:
            block = src.read(min(left, 1 << 20))
            if not block:
                break
            try:
                out.write(block)
            except OSError as exc:          # a full disk: said as such, not as a bad tarball
                raise BundleError(f"{target}: cannot be written while unpacking {tar_path} "
                                  f"({exc.strerror or exc})") from None
            left -= len(block)
    if left:
        raise _unreadable(tar_path, EOFError(f"member {member.name!r} ends early"))


def sweep_stale_copies(folder: Path | None = None) -> int:
    """Remove the unpacked copies that agents killed before they could (SIGKILL, power
    loss) left in the temporary folder: those whose process is gone. Returns how many."""
    folder = Path(folder or tempfile.gettempdir())
    removed = 0
    for path in folder.glob(f"{STALE_PREFIX}*"):
        try:
            pid = int(path.name[len(STALE_PREFIX):].split("-", 1)[0])
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ValueError:
            continue                          # not one of ours
        except ProcessLookupError:            # its process is gone
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        except OSError:                       # alive (another user's), or not ours
            continue
    return removed


def _extract(tar_path: Path, into: Path | None) -> Path:
    """Unpack the one bundle the tarball holds, only the files its manifest lists at the
    sizes it states (docs/bundle.md), into ``into``, or into a temporary folder named after
    this process that is removed when it exits, at once if the tarball is refused, and by
    the next start (``sweep_stale_copies``) if the process is killed first."""
    members = _scan(tar_path)
    own = into is None
    if own:
        sweep_stale_copies()
        into = Path(tempfile.mkdtemp(prefix=f"{STALE_PREFIX}{os.getpid()}-"))
    try:
        try:
            with tarfile.open(tar_path, "r:*") as tar:
                root, wanted = _listed(tar_path, members, tar)
                for name, member in members.items():
                    if name in wanted:
                        _copy_member(tar, member, into.joinpath(*name.split("/")), tar_path)
        except BundleError:
            raise
        except READ_ERRORS as exc:
            raise _unreadable(tar_path, exc) from None
    except BaseException:
        if own:
            shutil.rmtree(into, ignore_errors=True)
        raise
    if own:
        atexit.register(shutil.rmtree, into, ignore_errors=True)
    return into.joinpath(*root.split("/")) if root else into
