"""training/allocator.py: the malloc thresholds are set on glibc, and a user's own
environment setting wins."""

import os
import platform
import subprocess
import sys

import pytest

from harken.training.allocator import keep_freed_memory

CHECK = "from harken.training.allocator import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_thresholds_are_set_on_glibc():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
    assert out.stdout.strip() == "True"


def test_a_users_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
