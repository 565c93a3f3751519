"""Bundles shipped as .tar.gz (agent/model/bundle.py): only the files the manifest lists are
unpacked, at the sizes it states, under a cap, into a temporary folder that goes away with
the process (or at the next start, if the process was killed); a truncated, ambiguous or
hostile tarball is refused in one line and leaves nothing behind."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

from harken.agent.model.bundle import BundleError, open_bundle


def make_tar(bundle, tar_path, arcname=None):
    """What ``harken-export --tar`` writes (export/bundle.py), written here so that the
    test runs where only the device side is installed."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(bundle, arcname=arcname or bundle.name)
    return tar_path


def add(tar, name, data=b"", **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if data else None)


def harken(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harken.agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The temporary folder the agent unpacks into, empty, for this test alone."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def test_a_tarred_bundle_leaves_no_temporary_folder_behind(ae_bundle, tmp_path):
    tar = make_tar(ae_bundle, tmp_path / "ae.tar.gz")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = ("import sys; from harken.agent.model.bundle import open_bundle; "
            "b = open_bundle(sys.argv[1]); print(b.root)")
    out = subprocess.run([sys.executable, "-c", code, str(tar)], capture_output=True, text=True,
                         env={**os.environ, "TMPDIR": str(scratch)}, check=True)
    assert out.stdout.strip().startswith(str(scratch))    # it was unpacked there ...
    assert list(scratch.iterdir()) == []                 # ... and removed at exit


def test_a_tarred_bundle_opens_and_only_its_listed_files_are_unpacked(ae_bundle, tmp_path):
    """A file the manifest does not list (a README, a stray 'notes' a user added) is not
    written; the bundle's own folder may be the tarball's top ('tar -C bundle .')."""
    tar_path = make_tar(ae_bundle, tmp_path / "ae.tar.gz")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(ae_bundle, arcname=".")
        add(tar, "./notes.txt", b"not part of it")
    b = open_bundle(tar_path, extract_to=tmp_path / "out")
    assert b.root == tmp_path / "out" / ae_bundle.name and b.artifacts
    b = open_bundle(tmp_path / "x.tar", extract_to=tmp_path / "out2")
    assert b.root == tmp_path / "out2" and b.artifacts
    assert not (tmp_path / "out2" / "notes.txt").exists()


@pytest.mark.parametrize("evil, why", [
    ("../../escape.txt", "would be written outside the folder"),
    ("absolute", "would be written outside the folder"),
    ("symlink", "is a link; a bundle holds only files and folders"),
    ("hardlink", "is a link; a bundle holds only files and folders"),
    ("fifo", "is not a regular file or folder"),
])
def test_a_tarball_reaching_outside_or_holding_links_is_refused_writing_nothing(
        tmp_path, scratch, evil, why):
    """A path that leaves the folder, an absolute one, a link (symbolic or hard) or a
    device is refused from its header, before anything is unpacked."""
    outside = tmp_path / "absolute.txt"
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        add(tar, "b/manifest.json", b"{}")
        if evil == "symlink":
            add(tar, "b/escape", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        elif evil == "hardlink":
            add(tar, "b/escape", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        elif evil == "fifo":
            add(tar, "b/escape", type=tarfile.FIFOTYPE)
        else:
            add(tar, str(outside) if evil == "absolute" else evil, b"x")
    with pytest.raises(BundleError) as err:
        open_bundle(tar_path)
    assert str(err.value).startswith(f"{tar_path}: cannot unpack: member ") and why in str(err.value)
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not outside.exists()


def test_a_truncated_tarball_is_one_line_for_run_and_score(ae_bundle, tmp_path, scratch):
    """A partly copied tarball (the copy to the device was cut off) raised EOFError with a
    traceback in the agent and in 'harken score'."""
    whole = make_tar(ae_bundle, tmp_path / "ae.tar.gz").read_bytes()
    for keep in (len(whole) // 2, len(whole) - 100):
        cut = tmp_path / "cut.tar.gz"
        cut.write_bytes(whole[:keep])
        with pytest.raises(BundleError, match=r"cut\.tar\.gz: cannot unpack: the tarball cannot "
                                              r"be read to its end \(truncated"):
            open_bundle(cut)
        assert list(scratch.iterdir()) == []
    r = harken("score", cut, tmp_path / "none.wav", env={"TMPDIR": str(scratch)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "cut.tar.gz: cannot unpack: the tarball cannot be read to its end" in r.stderr
    assert list(scratch.iterdir()) == []


def test_a_tarball_holding_two_bundles_is_refused(ae_bundle, tmp_path, scratch):
    """Two bundles in one tarball: the first alphabetically was used, silently."""
    tar_path = tmp_path / "two.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(ae_bundle, arcname="fan-a")
        tar.add(ae_bundle, arcname="fan-b")
    with pytest.raises(BundleError, match=r"two\.tar\.gz: holds 2 bundles \(fan-a, fan-b\); "
                                          r"give one bundle per tarball"):
        open_bundle(tar_path)
    nested = tmp_path / "nested.tar.gz"       # a second bundle inside the first's folder
    with tarfile.open(nested, "w:gz") as tar:
        tar.add(ae_bundle, arcname="fan")
        tar.add(ae_bundle, arcname="fan/old")
    with pytest.raises(BundleError, match=r"nested\.tar\.gz: holds a second bundle "
                                          r"\(fan/old/manifest\.json"):
        open_bundle(nested)
    assert list(scratch.iterdir()) == []


def test_a_member_larger_than_the_cap_or_than_listed_is_refused_from_its_header(
        ae_bundle, tmp_path, scratch):
    """A small tarball whose header claims a 3 GB member was unpacked into the temporary
    folder at every start: now its header alone refuses it (no data is read or written),
    and a listed file of another size than the manifest states is refused before it is
    written."""
    tar_path = tmp_path / "huge.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(ae_bundle, arcname="fan")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(ae_bundle, arcname="fan")
        info = tarfile.TarInfo("fan/junk.bin")
        info.size = 3 << 30                # the header only: the data would be 3 GB
        tar.fileobj.write(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar_path.write_bytes(raw.getvalue())
    with pytest.raises(BundleError, match=r"huge\.tar\.gz: its members hold more than "
                                          r"1073741824 bytes \(member 'fan/junk\.bin' alone "
                                          r"claims 3221225472\)"):
        open_bundle(tar_path)
    manifest = json.loads((ae_bundle / "manifest.json").read_text())
    kind, entry = next(iter(manifest["artifacts"].items()))
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        for p in sorted(ae_bundle.rglob("*")):
            name = f"fan/{p.relative_to(ae_bundle).as_posix()}"
            if p.is_dir():
                continue
            data = p.read_bytes() + (b"x" if p.name == entry["path"] else b"")
            add(tar, name, data)
    with pytest.raises(BundleError, match=rf"member 'fan/{entry['path']}' is "
                                          rf"{entry['size'] + 1} bytes, the manifest's "
                                          rf"'artifacts\.{kind}\.size' says {entry['size']}"):
        open_bundle(other)
    assert list(scratch.iterdir()) == []


def test_a_copy_left_by_a_killed_agent_is_swept_at_the_next_start(ae_bundle, tmp_path):
    """SIGKILL left the unpacked copy behind at every start; the next start removes
    the copies whose process is gone (and keeps a live one's)."""
    tar = make_tar(ae_bundle, tmp_path / "ae.tar.gz")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    killed = ("import os, signal, sys; from harken.agent.model.bundle import open_bundle; "
              "open_bundle(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", killed, str(tar)], env=env, timeout=60)
    assert r.returncode == -signal.SIGKILL
    left = list(scratch.iterdir())
    assert len(left) == 1 and left[0].name.startswith("harken-bundle-")
    live = scratch / f"harken-bundle-{os.getpid()}-live"     # this process: alive
    live.mkdir()
    code = ("import sys; from harken.agent.model.bundle import open_bundle; "
            "b = open_bundle(sys.argv[1]); print(b.root)")
    out = subprocess.run([sys.executable, "-c", code, str(tar)], capture_output=True,
                         text=True, env=env, check=True)
    assert not left[0].exists() and str(left[0]) not in out.stdout
    assert list(scratch.iterdir()) == [live]


def test_a_fused_bundle_unpacks_with_its_members_files(ae_bundle, tmp_path, scratch):
    """A fused bundle's tarball: its members' manifests and the files they list are the
    bundle's too (two copies of one model stand in for two models here)."""
    from harken.agent.features import FeatureSpec, shared_front_end
    from harken.agent.model.bundle import sha256_file
    root = tmp_path / "fused"
    for name in ("a", "b"):
        shutil.copytree(ae_bundle, root / "members" / name)
    member = json.loads((ae_bundle / "manifest.json").read_text())
    spec = FeatureSpec.from_dict(member["feature_spec"])
    fused = {**member, "scoring": {"rule": "fused", "sections": {}}, "artifacts": {},
             "arrays": {}, "feature_spec": shared_front_end([spec, spec]).to_dict(),
             "fusion": {"members": [{"name": n, "path": f"members/{n}", "weight": 1.0,
                                     "manifest_sha256": sha256_file(
                                         root / "members" / n / "manifest.json")}
                                    for n in ("a", "b")],
                        "standardise": {f"{s:02d}": {"a": [0.0, 1.0], "b": [1.0, 2.0]}
                                        for s in member["model"]["sections"]}}}
    (root / "manifest.json").write_text(json.dumps(fused))
    tar_path = make_tar(root, tmp_path / "fused.tar.gz")
    b = open_bundle(tar_path)
    assert b.is_fused and sorted(b.members) == ["a", "b"] and b.members["a"].artifacts
    (root / "members" / "a" / "notes.txt").write_text("not listed")
    shutil.copytree(ae_bundle, root / "members" / "c")       # a member the manifest lacks
    with pytest.raises(BundleError, match=r"holds a second bundle \(fused/members/c/manifest"):
        open_bundle(make_tar(root, tmp_path / "fused2.tar.gz"))
