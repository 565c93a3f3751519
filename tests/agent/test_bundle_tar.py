"""Bundles shipped as .tar.gz: unpacked to a temporary folder that goes away with the
process, and a refused tarball leaves nothing half-unpacked (agent/model/bundle.py)."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from harken.agent.model.bundle import BundleError, open_bundle


def make_tar(bundle, tar_path):
    """What ``harken-export --tar`` writes (export/bundle.py), written here so that the
    test runs where only the device side is installed."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    return tar_path


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


@pytest.fixture(params=["data filter", "by hand"])
def extraction(request, monkeypatch):
    """Both ways the agent unpacks: Python's 'data' filter, and the same refusals by hand
    where Python is older than 3.11.4 (Debian bookworm and Raspberry Pi OS ship 3.11.2)."""
    if request.param == "by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip(f"Python {sys.version.split()[0]} has no tarfile data filter")
    return request.param


def test_a_tarred_bundle_opens_either_way(ae_bundle, tmp_path, extraction):
    tar = make_tar(ae_bundle, tmp_path / "ae.tar.gz")
    b = open_bundle(tar, extract_to=tmp_path / "out")
    assert b.root == tmp_path / "out" / ae_bundle.name and b.artifacts


@pytest.mark.parametrize("evil", ["../../escape.txt", "absolute", "link"])
def test_a_tarball_reaching_outside_writes_nothing_there_either_way(tmp_path, evil, extraction,
                                                                    monkeypatch):
    """A path that leaves the folder and a link are refused; an absolute path is refused
    by hand, and made relative by Python's filter: outside the folder, nothing is written."""
    outside = tmp_path / "absolute.txt"
    if evil == "absolute":
        evil = str(outside)
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("b/manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo("b/escape" if evil == "link" else evil)
        if evil == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.size = 1
        tar.addfile(info, None if evil == "link" else io.BytesIO(b"x"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    refused = "manifest.json: field 'schema_version' is missing" \
        if evil == str(outside) and extraction == "data filter" else "evil.tar.gz: cannot unpack"
    with pytest.raises(BundleError, match=refused):
        open_bundle(tar_path)
    if "cannot unpack" in refused:       # refused while unpacking: nothing half-unpacked
        assert list(scratch.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not outside.exists()


def test_a_refused_tarball_leaves_nothing_half_unpacked(tmp_path, monkeypatch):
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, data in (("b/manifest.json", b"{}"), ("../../escape.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    with pytest.raises(BundleError, match="evil.tar.gz: cannot unpack"):
        open_bundle(tar_path)
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
