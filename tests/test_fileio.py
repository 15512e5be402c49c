"""Atomic writes under concurrency and what `tagllm gc` does with killed writers' leftovers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tagllm.cli import main
from tagllm.fileio import atomic_write_dir, atomic_write_file, remove_stale, temp_name


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _race(write, texts: str) -> None:
    """``write(text, barrier)`` in one thread per text at once (each fill waits at the
    barrier until all have filled, then all rename); fails on any thread's error."""
    filled = threading.Barrier(len(texts))
    errors: list[BaseException] = []

    def one(text: str) -> None:
        try:
            write(text, filled)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_two_threads_writing_one_file_do_not_share_a_temporary_name(tmp_path):
    """Both writers fill their copy before either renames it: with one temporary name per
    process the second rename finds nothing (and the first wrote the second's bytes)."""
    target = tmp_path / "out.csv"
    _race(lambda text, filled: atomic_write_file(
        target, lambda tmp: (tmp.write_text(text * 1000), filled.wait(timeout=10))), "ab")
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_written_file_or_folder_has_the_usual_permissions(tmp_path):
    """The private temporary copy (mkstemp's 0600, mkdtemp's 0700) does not leak into the
    result: a tag folder in a store shared by a group stays readable."""
    umask = os.umask(0o022)
    try:
        atomic_write_file(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
        atomic_write_dir(tmp_path / "d", lambda d: (d / "v").write_text("1"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_replacing_a_folder_does_not_collide_with_another_writers_old_copy(tmp_path):
    """This process's ``.old`` copy of the same folder, still in use by another thread,
    must not block (or be replaced by) a second replacement."""
    target = tmp_path / "tags"
    atomic_write_dir(target, lambda d: (d / "v").write_text("1"))
    busy = tmp_path / temp_name("tags", "old")
    busy.mkdir()
    (busy / "v").write_text("in use")
    atomic_write_dir(target, lambda d: (d / "v").write_text("2"))
    assert (target / "v").read_text() == "2" and (busy / "v").read_text() == "in use"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tags", busy.name])


def test_gc_removes_a_killed_folder_with_leftovers_inside_and_says_what_it_put_back(
        tmp_path, monkeypatch, capsys):
    """A killed writer's temporary folder can hold another killed writer's ``.old`` copy:
    removing the folder removes both (no error from the inner one). An ``.old`` copy whose
    target is missing is put back, and gc says so."""
    monkeypatch.setenv("TAGLLM_HOME", str(tmp_path / "home"))
    store = tmp_path / "home" / "store"
    (store / ".index").mkdir(parents=True)
    dead = _dead_pid()
    outer = store / (temp_name("abc", "tmp").replace(str(os.getpid()), dead) + "-x1")
    inner = outer / temp_name("tags", "old").replace(str(os.getpid()), dead)
    inner.mkdir(parents=True)
    (inner / "tag.json").write_text("{}")
    assert remove_stale(store, recursive=True, dry_run=True) == [outer]

    lost = store / "k1" / temp_name("ck", "old").replace(str(os.getpid()), dead)
    lost.mkdir(parents=True)
    (lost / "state.json").write_text("{}")
    older = lost.with_name(lost.name + "-y2")
    older.mkdir()
    os.utime(older, (1, 1))
    main(["gc", "--store", str(store), "--dry-run"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"would put back {lost} as {store / 'k1' / 'ck'}" in out
    assert f"would remove {older}" in out and f"would remove {outer}" in out
    assert outer.exists() and lost.exists()

    main(["gc", "--store", str(store)])
    out = " ".join(capsys.readouterr().out.split())
    assert f"put back {lost}" in out and f"removed {outer}" in out
    assert not outer.exists() and not older.exists()
    assert (store / "k1" / "ck" / "state.json").exists()


@pytest.mark.parametrize("kind", ["tmp", "old"])
def test_a_live_writers_copy_is_left_alone(tmp_path, kind):
    mine = tmp_path / (temp_name("f", kind) + "-z9")
    mine.write_text("in progress")
    assert remove_stale(tmp_path) == [] and mine.exists()


def test_threads_replacing_one_folder_each_get_their_turn(tmp_path):
    """Four writers fill their copy, then race to replace the same folder: none fails, the
    folder is one writer's whole version, and nothing else is left."""
    target = tmp_path / "tags"
    atomic_write_dir(target, lambda d: (d / "v").write_text("0"))
    for _ in range(10):
        _race(lambda text, filled: atomic_write_dir(target, lambda d: (
            (d / "v").write_text(text), (d / "w").write_text(text),
            filled.wait(timeout=10))), "abcd")
        v, w = (target / "v").read_text(), (target / "w").read_text()
        assert v == w and v in "abcd"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tags"]


def test_a_killed_runs_prefix_folder_goes_with_the_next_cache_and_with_gc(
        tmp_path, monkeypatch, capsys):
    """The disk tier's folder of a killed run (gigabytes) is removed as soon as the next
    cache with a disk tier starts (not only once it spills), and by ``tagllm gc`` also
    when the store lies elsewhere."""
    from tagllm.paths import prefix_cache_dir
    from tagllm.prefix import FrozenPrefix

    from tiny import tiny_tagged

    monkeypatch.setenv("TAGLLM_HOME", str(tmp_path / "home"))
    dead = _dead_pid()

    def killed() -> Path:
        d = prefix_cache_dir() / (temp_name("tagllm-prefix").replace(str(os.getpid()), dead)
                                  + "-k1")
        d.mkdir(parents=True)
        (d / "0.safetensors").write_bytes(b"x" * 1000)
        return d

    left = killed()
    FrozenPrefix(tiny_tagged(), [], disk_bytes=1e6, disk_dir=prefix_cache_dir())
    assert not left.exists()
    left = killed()
    store = tmp_path / "elsewhere"
    (store / ".index").mkdir(parents=True)
    main(["gc", "--store", str(store)])
    assert not left.exists()
    assert f"removed {left}" in " ".join(capsys.readouterr().out.split())


def test_a_replaced_folder_is_deleted_under_a_name_that_is_never_put_back(tmp_path,
                                                                          monkeypatch):
    """A kill during the deletion of a replaced version leaves a partial copy: it must not
    look like a version to restore. It is renamed ``del`` first; of the copies a killed
    writer left, the complete ``.old`` is put back and the partial ``del`` removed."""
    import tagllm.fileio as fileio

    target = tmp_path / "tags"
    atomic_write_dir(target, lambda d: (d / "v").write_text("1"))
    deleted = []
    real = fileio.shutil.rmtree
    monkeypatch.setattr(fileio.shutil, "rmtree",
                        lambda p, *a, **k: (deleted.append(Path(p).name), real(p, *a, **k)))
    atomic_write_dir(target, lambda d: (d / "v").write_text("2"))
    assert any(".del-" in n for n in deleted) and not any(".old-" in n for n in deleted)

    dead = _dead_pid()
    whole = tmp_path / (temp_name("tags", "old").replace(str(os.getpid()), dead) + "-a1")
    whole.mkdir()
    (whole / "tag.json").write_text("{}")
    (whole / "tag.safetensors").write_text("x")
    partial = tmp_path / (temp_name("tags", "del").replace(str(os.getpid()), dead) + "-b2")
    partial.mkdir()
    (partial / "tag.json").write_text("{}")  # newer mtime, half gone
    real(target)
    remove_stale(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["tag.json", "tag.safetensors"]
    assert not whole.exists() and not partial.exists()


def test_cleaning_twice_or_late_never_fails_and_says_what_it_did(tmp_path):
    """Two cleaners of the same leftovers (two writers starting at once): the second finds
    them gone and neither fails; a target that appeared meanwhile is kept and the copy
    removed, reported as removed; leftovers inside a folder that is put back go first."""
    from tagllm.fileio import clean_stale, find_stale

    dead = _dead_pid()
    old = tmp_path / (temp_name("tags", "old").replace(str(os.getpid()), dead) + "-a1")
    old.mkdir()
    (old / "tag.json").write_text("{}")
    inner = old / (temp_name("tag.json", "tmp").replace(str(os.getpid()), dead) + "-c3")
    inner.write_text("half")
    found = find_stale(tmp_path, recursive=True)
    assert [(x.path, x.put_back) for x in found] == [(inner, False), (old, True)]
    done = clean_stale(found)
    assert [(x.path, x.put_back) for x in done] == [(inner, False), (old, True)]
    assert sorted(p.name for p in (tmp_path / "tags").iterdir()) == ["tag.json"]
    assert clean_stale(found) == []  # a second cleaner finds nothing left to do
    late = tmp_path / (temp_name("x", "old").replace(str(os.getpid()), dead) + "-d4")
    late.mkdir()
    found = find_stale(tmp_path)
    assert [x.put_back for x in found] == [True]
    (tmp_path / "x").mkdir()  # another process wrote the target meanwhile
    assert [x.put_back for x in clean_stale(found)] == [False]
    assert not late.exists() and (tmp_path / "x").is_dir()


def test_a_write_that_cannot_even_start_is_a_clear_error_naming_the_target(tmp_path,
                                                                         monkeypatch):
    """The file system refusing the temporary copy itself (read-only, full) names the
    target, not the temporary name."""
    import errno

    import tagllm.fileio as fileio
    from tagllm.fileio import WriteFailed

    def refuse(prefix="", dir=None, **_):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / (prefix + "zz")))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(fileio.tempfile, "mkdtemp", refuse)
    for write in (lambda t: atomic_write_file(t, lambda p: p.write_text("x")),
                  lambda t: atomic_write_dir(t, lambda d: None)):
        with pytest.raises(WriteFailed, match=f"cannot write {tmp_path / 'r.json'}: Read-only"):
            write(tmp_path / "r.json")


def test_a_folder_write_over_a_symbolic_link_or_a_file_is_refused(tmp_path):
    from tagllm.fileio import WriteFailed

    real = tmp_path / "real"
    atomic_write_dir(real, lambda d: (d / "v").write_text("1"))
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_text("data")
    for name, what in (("link", "a symbolic link"), ("file", "a file")):
        with pytest.raises(WriteFailed, match=f"{tmp_path / name}: it is {what}, not a folder"):
            atomic_write_dir(tmp_path / name, lambda d: (d / "v").write_text("2"))
    assert (real / "v").read_text() == "1" and (tmp_path / "file").read_text() == "data"
    assert (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "real"]
