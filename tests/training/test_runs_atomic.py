"""The one commit helper every workstation command builds its artifacts through
(harken/common/atomic.py ``building``): a failure injected at each of its steps, as SQLite
tests its journal, leaves what a later reader sees wholly old or wholly new, and the next
start repairs what a kill left."""

import os
import signal

import pytest

from harken.common import atomic
from harken.common.atomic import ArtifactError, aside_path, building, repair


def _write(folder, version):
    """An artifact of two files that must agree (like run.json and its weights)."""
    (folder / "weights.bin").write_text(f"weights {version}")
    (folder / "run.json").write_text(f"run {version}")


def _seen(target):
    """What a reader finds at ``target``: 'old', 'new', None (nothing) or 'MIXED'."""
    if not target.exists():
        return None
    files = {p.name: p.read_text() for p in target.iterdir()}
    versions = {v.split()[-1] for v in files.values()}
    if set(files) != {"weights.bin", "run.json"} or len(versions) != 1:
        return "MIXED"
    return versions.pop()


def _leftovers(target):
    return sorted(p.name for p in target.parent.iterdir()
                  if p.name.startswith(f".{target.name}.") and not p.name.endswith(".lock"))


def _old(tmp_path):
    target = tmp_path / "run"
    with building(target) as new:
        _write(new, "old")
    return target


def test_a_first_build_is_renamed_into_place_and_leaves_nothing_beside(tmp_path):
    target = tmp_path / "a" / "run"
    with building(target) as new:
        assert new.parent == target.parent and new.name.startswith(".run.new-")
        _write(new, "new")
        assert not target.exists()
    assert _seen(target) == "new" and _leftovers(target) == []


def test_an_existing_target_is_refused_unless_forced(tmp_path):
    target = _old(tmp_path)
    with pytest.raises(ArtifactError, match=r"run: already exists \(a folder\); give a new "
                                            r"run folder or --force"):
        with building(target, what="run folder") as new:
            _write(new, "new")
    assert _seen(target) == "old"
    with building(target, force=True) as new:
        _write(new, "new")
    assert _seen(target) == "new" and _leftovers(target) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_error_while_building_leaves_the_old_one_whole(tmp_path, exc):
    target = _old(tmp_path)
    with pytest.raises(type(exc)):
        with building(target, force=True) as new:
            (new / "weights.bin").write_text("weights new")       # then Ctrl-C
            raise exc
    assert _seen(target) == "old" and _leftovers(target) == []


@pytest.mark.parametrize("step", atomic.STEPS)
@pytest.mark.parametrize("had_old", [True, False], ids=["replacing", "first"])
def test_an_error_at_each_commit_step_leaves_old_or_new(tmp_path, monkeypatch, step, had_old):
    target = _old(tmp_path) if had_old else tmp_path / "run"

    def fail(at):
        if at == step:
            raise OSError(f"injected at {at}")
    monkeypatch.setattr(atomic, "FAULT", fail)
    if step in ("aside", "removed") and not had_old:
        with building(target, force=True) as new:       # no old one: no such step
            _write(new, "new")
        assert _seen(target) == "new"
        return
    with pytest.raises(OSError, match="injected"):
        with building(target, force=True) as new:
            _write(new, "new")
    seen = _seen(target)
    assert seen == ("new" if step in ("placed", "removed") else "old" if had_old else None)
    monkeypatch.setattr(atomic, "FAULT", None)
    repair(target)
    assert _seen(target) == seen and _leftovers(target) == []


def _killed_at(target, step, force=True) -> int:
    """Build ``target`` in a child process that dies (no clean-up, as on SIGKILL or a
    power cut) when the commit reaches ``step``."""
    pid = os.fork()
    if pid == 0:                                       # the child: never returns
        try:
            def die(at):
                if at == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            atomic.FAULT = die
            with building(target, force=force) as new:
                _write(new, "new")
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("step", atomic.STEPS)
def test_a_kill_at_each_commit_step_is_old_or_new_and_repaired_at_the_next_start(tmp_path,
                                                                                 step):
    target = _old(tmp_path)
    status = _killed_at(target, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    seen = _seen(target)
    # between the two renames the target is briefly absent, its old copy whole beside it
    assert seen in ("old", "new") or (step == "aside" and seen is None
                                      and aside_path(target).is_dir())
    # the next start (any command that builds or reads it) repairs: old or new, whole
    assert bool(repair(target)) == (step != "removed")  # killed after the last step: done
    assert _seen(target) == ("old" if step in ("built", "aside") else "new")
    assert _leftovers(target) == []
    # and the next build goes through
    with building(target, force=True) as new:
        _write(new, "newer")
    assert _seen(target) == "newer"


def test_a_kill_leaves_no_stale_lock(tmp_path):
    target = _old(tmp_path)
    _killed_at(target, "built")
    with building(target, force=True) as new:          # the kernel released the lock
        _write(new, "new")
    assert _seen(target) == "new"


def test_two_builds_of_one_target_at_once_the_second_is_refused(tmp_path):
    target = tmp_path / "run"
    with building(target) as new:
        _write(new, "first")
        with pytest.raises(ArtifactError, match="another harken command is writing it now"):
            with building(target, force=True):
                pass
    assert _seen(target) == "first"


def test_a_file_target_is_swapped_the_same_way(tmp_path):
    target = tmp_path / "bundle.tar.gz"
    target.write_text("old")
    with pytest.raises(ArtifactError, match=r"already exists \(a file\)"):
        with building(target, folder=False) as new:
            new.write_text("new")
    with building(target, force=True, folder=False) as new:
        new.write_text("new")
    assert target.read_text() == "new" and _leftovers(target) == []


def test_force_onto_a_file_replaces_it_with_the_folder(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    with building(target, force=True) as new:
        _write(new, "new")
    assert _seen(target) == "new"


def test_a_target_that_is_a_link_is_built_where_it_points(tmp_path):
    real = tmp_path / "disk" / "run"
    real.parent.mkdir()
    _write(real.parent, "unrelated")                   # beside, untouched
    real.mkdir()
    _write(real, "old")
    link = tmp_path / "run"
    link.symlink_to(real, target_is_directory=True)
    with building(link, force=True) as new:
        assert new.parent == real.parent               # same file system as the target
        _write(new, "new")
    assert link.is_symlink() and _seen(real) == "new" and _seen(link) == "new"


def test_a_read_only_parent_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(ArtifactError, match="cannot write beside it"):
            with building(parent / "run"):
                pass
    finally:
        parent.chmod(0o755)


def test_a_read_only_folder_is_replaced_with_force(tmp_path):
    target = _old(tmp_path)
    (target / "inner").mkdir()
    for p in [*target.rglob("*"), target]:
        p.chmod(0o555 if p.is_dir() else 0o444)      # guarded against edits
    with building(target, force=True) as new:
        _write(new, "new")
    assert _seen(target) == "new" and _leftovers(target) == []


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("the user's")
    monkeypatch.chdir(here)
    for target in (".", ".."):
        with pytest.raises(ArtifactError, match="would replace the current folder"):
            with building(target, force=True):
                pass
    assert (here / "mine.txt").read_text() == "the user's"
