""""Corrupt" means corrupt; a lock names its holder and is waited for a bounded time.

Every case uses a real second process (holding HDF5's file lock, or a key's
lock) or a real permission: the permission cases run in a child forked from
this process that becomes user `nobody` (root reads anything, so a chmod alone
proves nothing when the suite runs as root).
"""

import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from layerprobe.features.store import (
    CorruptEntryError,
    EntryLockedError,
    EntryNotFoundError,
    FeatureStore,
    StoreError,
)

FIRST = "block1_pool"

_HOLD_OPEN = """
import sys, time, h5py
handle = h5py.File({path!r}, "a")  # what an h5py session editing the entry does
print("open", flush=True)
time.sleep(120)
"""

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from layerprobe.features.keys import FeatureKey
from layerprobe.features.store import FeatureStore
key = FeatureKey(**{key!r})
with FeatureStore({root!r}).lock([key]):
    print("held", flush=True)
    time.sleep(120)
"""


def _started(helpers, code):
    process = helpers.run_python(code, background=True)
    line = process.stdout.readline()
    assert line.strip() in ("open", "held"), process.stderr.read()[-3000:]
    return process


@pytest.fixture
def shared_dir():
    """A folder user nobody can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="layerprobe-shared-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ entries held open, unreadable, removed


def test_entry_open_for_writing_in_another_process_is_locked_not_corrupt(harness, helpers, tmp_path, monkeypatch):
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    store = FeatureStore(tmp_path)
    harness.extract(store)
    key = harness.keys[FIRST]
    holder = _started(helpers, _HOLD_OPEN.format(path=str(store.path_for(key))))
    try:
        for call in (lambda: store.load(key), lambda: store.info(key.entry_name), lambda: harness.extract(store)):
            with pytest.raises(StoreError) as info:
                call()
            assert not isinstance(info.value, CorruptEntryError), info.value  # before the fix: "corrupt ... store rm"
            assert isinstance(info.value, EntryLockedError)
            message = str(info.value)
            assert "is locked" in message and "not corrupt" in message and "store rm" not in message
            assert f"pid {holder.pid}" in message  # who holds it, from /proc
        statuses = {row["entry"]: row["status"] for row in store.entries()}
        assert statuses[key.entry_name].startswith("locked: ")
        assert statuses[harness.keys["block3_pool"].entry_name] == "ok"

        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")  # honoured at each open (NFS without locks)
        harness.assert_matches_reference(store)
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING")
    harness.assert_matches_reference(store)  # the holder is gone: readable again


def test_entry_this_user_may_not_read_is_permission_denied_not_corrupt(harness, shared_dir, as_nobody):
    store = FeatureStore(shared_dir / "store")
    harness.extract(store)
    key = harness.keys[FIRST]
    for path in (store.root, *store.root.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    store.path_for(key).chmod(0)

    failed = as_nobody(lambda: FeatureStore(shared_dir / "store").load(key))
    assert failed is not None
    classes, message = failed
    assert "StoreError" in classes and "CorruptEntryError" not in classes, failed  # before the fix: corrupt
    assert "permission denied" in message.lower() and "not corrupt" in message and "chmod a+r" in message

    def statuses():
        rows = FeatureStore(shared_dir / "store").entries()
        raise RuntimeError(repr(sorted((row["entry"], row["status"][:12]) for row in rows)))

    _, listed = as_nobody(statuses)
    assert f"('{key.entry_name}', 'unreadable: ')" in listed and "'ok'" in listed and "corrupt" not in listed


def test_entry_removed_while_being_read_is_not_found_not_corrupt(harness, tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    harness.extract(store)
    key = harness.keys[FIRST]
    path = store.path_for(key)
    resolve = FeatureStore.resolve

    def resolve_then_remove(self, name):
        found = resolve(self, name)
        found.unlink()  # another process runs `layerprobe store rm` right now
        return found

    monkeypatch.setattr(FeatureStore, "resolve", resolve_then_remove)
    with pytest.raises(EntryNotFoundError, match="disappeared"):
        store.info(path.stem)


# ------------------------------------------------------------------ per-key locks


def _lock_in_thread(store, key):
    """Try to take `key`'s lock in a thread; returns (thread, outcome list, seconds list)."""
    outcome, seconds = [], []

    def take():
        started = time.monotonic()
        try:
            with store.lock([key]):
                outcome.append("acquired")
        except BaseException as error:  # reported to the test
            outcome.append(error)
        seconds.append(time.monotonic() - started)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread, outcome, seconds


def test_lock_wait_gives_up_after_the_timeout_naming_the_holder(harness, helpers, tmp_path, monkeypatch):
    key = harness.keys[FIRST]
    holder = _started(helpers, _HOLD_LOCK.format(key=key.to_dict(), root=str(tmp_path)))
    try:
        monkeypatch.setenv("LAYERPROBE_LOCK_TIMEOUT", "1")
        thread, outcome, seconds = _lock_in_thread(FeatureStore(tmp_path), key)
        thread.join(timeout=30)
        assert not thread.is_alive(), "blocked on the lock with no limit"  # before the fix: forever
        error = outcome[0]
        assert isinstance(error, EntryLockedError) and 1 <= seconds[0] < 10
        message = str(error)
        assert f"pid {holder.pid} on {socket.gethostname()} since " in message
        assert "LAYERPROBE_LOCK_TIMEOUT" in message and key.entry_name in message

        monkeypatch.delenv("LAYERPROBE_LOCK_TIMEOUT")
        thread, outcome, seconds = _lock_in_thread(FeatureStore(tmp_path, lock_timeout=0.3), key)
        thread.join(timeout=30)
        assert isinstance(outcome[0], EntryLockedError) and seconds[0] < 5

        log = []
        with pytest.raises(EntryLockedError):
            harness.extract(FeatureStore(tmp_path, lock_timeout=0.2), log=log.append)
        assert any(line.startswith("waiting") and f"pid {holder.pid}" in line for line in log), log
    finally:
        holder.kill()
        holder.wait()
    with FeatureStore(tmp_path, lock_timeout=5).lock([key]):  # released when its holder died
        pass


def test_bad_lock_timeout_is_refused(tmp_path, harness, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_LOCK_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="LAYERPROBE_LOCK_TIMEOUT='soon'"):
        with FeatureStore(tmp_path).lock([harness.keys[FIRST]]):
            pass


def test_shared_store_whose_lock_folder_is_not_writable(harness, shared_dir, monkeypatch, as_nobody):
    # Made by another user under umask 022: the store is group/world writable, its .locks/ is not.
    root = shared_dir / "store"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    (root / ".locks").mkdir(mode=0o755)
    key = harness.keys[FIRST]

    def lock():
        with FeatureStore(root).lock([key]):
            pass

    failed = as_nobody(lock)
    assert failed is not None
    classes, message = failed
    assert "StoreError" in classes and "PermissionError" not in classes, failed  # before the fix: a raw OSError
    assert "chmod -R g+w" in message and "LAYERPROBE_LOCK_DIR" in message and str(root / ".locks") in message

    own_locks = shared_dir / "my-locks"
    own_locks.mkdir(mode=0o777)
    own_locks.chmod(0o1777)  # every user may write, only a file's owner may remove it (as /tmp)
    monkeypatch.setenv("LAYERPROBE_LOCK_DIR", str(own_locks))
    assert as_nobody(lock) is None
    assert [p.name for p in own_locks.iterdir()] == [f"{key.digest}.lock"]
    assert stat.S_IMODE((root / ".locks").stat().st_mode) == 0o755 and not list((root / ".locks").iterdir())


# ------------------------------------------------------------------ lock files planted by others (issue 24, item 4)

VICTIM_TEXT = "a file of this user that a lock must never write\n"


def _lock_file(store, key):
    folder = store.root / ".locks"
    folder.mkdir(exist_ok=True)
    return folder / f"{key.digest}.lock"


def _symlink(path, victim):
    path.symlink_to(victim)


def _hard_link(path, victim):
    os.link(victim, path)


def _fifo(path, victim):
    os.mkfifo(path)


def _owned_by_nobody(path, victim):
    path.write_text("")
    os.chown(path, 65534, 65534)


PLANTED = {
    "symbolic-link": (_symlink, "is a symbolic link"),
    "hard-link": (_hard_link, "has 2 hard links"),
    "fifo": (_fifo, "is not a regular file"),
    "other-owner": (_owned_by_nobody, "is owned by uid 65534 and gid 65534"),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_a_lock_path_planted_by_someone_else_is_refused_and_nothing_is_written(harness, tmp_path, case):
    if case == "other-owner" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    plant, problem = PLANTED[case]
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    store = FeatureStore(tmp_path / "store")
    key = harness.keys[FIRST]
    lock_path = _lock_file(store, key)
    plant(lock_path, victim)
    with pytest.raises(StoreError, match=problem) as info:
        harness.extract(store)  # before the fix: the holder record overwrote the victim (symlink, hard link)
    message = str(info.value)
    assert str(lock_path) in message and "Nothing was computed" in message and f"rm {lock_path}" in message
    assert victim.read_text() == VICTIM_TEXT
    assert not store.has(key) and not (store.root / ".partial").exists()
    assert "did not record itself" in store.lock_holder(key)  # read without following it (a FIFO would block)
    lock_path.unlink()
    harness.extract(store)
    harness.assert_matches_reference(store)


def test_clean_up_never_writes_through_a_planted_symbolic_link(harness, tmp_path):
    store = FeatureStore(tmp_path / "store")
    harness.extract(store)
    key = harness.keys[FIRST]
    (store.root / f".tmp-{store.path_for(key).name}.0123").write_bytes(b"left by a killed writer")
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    lock_path = _lock_file(store, key)
    lock_path.unlink()
    lock_path.symlink_to(victim)
    report = harness.extract(store)  # cached keys: leftovers are removed only under a lock taken safely
    assert report.n_forward == 0 and victim.read_text() == VICTIM_TEXT


def test_lock_files_are_never_writable_by_every_user(harness, tmp_path):
    store = FeatureStore(tmp_path / "store")
    previous = os.umask(0)
    try:
        with store.lock([harness.keys[FIRST]]):
            pass
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(_lock_file(store, harness.keys[FIRST]).stat().st_mode)
    assert mode == 0o664  # before the fix: 0o666 under umask 0


def test_a_lock_folder_anyone_may_write_needs_the_sticky_bit(harness, tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    folder.mkdir()
    folder.chmod(0o777)  # any user may delete or replace a lock file another user holds
    monkeypatch.setenv("LAYERPROBE_LOCK_DIR", str(folder))
    key = harness.keys[FIRST]
    with pytest.raises(StoreError, match=r"writable by every user and lacks the sticky bit.*chmod \+t") as info:
        with FeatureStore(tmp_path / "store").lock([key]):
            pass
    assert str(folder) in str(info.value) and "LAYERPROBE_LOCK_DIR" in str(info.value)
    assert not list(folder.iterdir())
    folder.chmod(0o1777)  # as /tmp: only a file's owner may delete or rename it
    with FeatureStore(tmp_path / "store").lock([key]):
        pass


def test_a_held_lock_file_goes_when_released_and_still_excludes_every_waiter(tmp_path):
    from layerprobe.core.errors import OutputError
    from layerprobe.core.lock_files import hold_lock_file

    lock, inside, overlaps = tmp_path / ".results.csv.lock", [], []

    def hold(index):
        with hold_lock_file(lock, doing="testing", error=OutputError):
            inside.append(index)
            overlaps.append(len(inside) > 1)
            time.sleep(0.02)  # waiters open the file meanwhile; this holder then removes it
            inside.remove(index)

    threads = [threading.Thread(target=hold, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 8 and not any(overlaps) and not lock.exists()
