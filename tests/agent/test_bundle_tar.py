"""Bundles shipped as .tar.gz: unpacked to a temporary folder that goes away with the
process, and a refused tarball leaves nothing half-unpacked (agent/bundle.py)."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from harken.agent.bundle import BundleError, open_bundle


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
    code = ("import sys; from harken.agent.bundle import open_bundle; "
            "b = open_bundle(sys.argv[1]); print(b.root)")
    out = subprocess.run([sys.executable, "-c", code, str(tar)], capture_output=True, text=True,
                         env={**os.environ, "TMPDIR": str(scratch)}, check=True)
    assert out.stdout.strip().startswith(str(scratch))    # it was unpacked there ...
    assert list(scratch.iterdir()) == []                 # ... and removed at exit


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
