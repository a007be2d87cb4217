"""Simulated power loss: what a machine that lost power would find on disk.

Without a VM, the harness cannot drop a page cache, so it reconstructs the
durable state instead.  In the child, install_recorder() wraps
pylog.fsutil.fsync and fsync_dir (every durability step goes through them)
and logs, for each fsync that returned, the file and its size when the call
started, and for each directory fsync the names it held.  After the child is
killed, apply() goes over the store and, for every file:

- bytes up to the last fsynced size (or the size the file had when the child
  started: the harness made that state durable) are kept;
- bytes past it are cut at a random point, zero-filled (the size reached the
  disk, the data did not) or replaced with random garbage, or kept;
- a file or directory created by the child whose name no fsync of its
  parent directory recorded may vanish (with new_entries="vanish").

LMDB (meta/) syncs inside its own library, which the recorder cannot see;
its commits are durable when they return (sync=True), so it is left as is.
Files rewritten in place without fsync (.sync, notify) are left as is.

Mode "truncate" is deterministic (every file cut at its durable size), for
checking that nothing acknowledged lies past a successful fsync; "garble"
draws one of the outcomes above per file.
"""
import json
import os
import random
import struct

from pylog import fsutil

SKIP_DIRS = {"meta", "txn-locks", "group-locks"}
IN_PLACE = {".sync", ".lock", "notify"}


def install_recorder(log_path):
    """Wrap pylog.fsutil.fsync/fsync_dir (and os.ftruncate) in this process
    to log successful and failed fsyncs, and truncations, to log_path.
    Returns an undo function."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    orig_fsync, orig_dir = fsutil.fsync, fsutil.fsync_dir

    def emit(**ev):
        os.write(fd, (json.dumps(ev, separators=(",", ":")) + "\n").encode())

    def fsync(f, what="file"):
        try:
            path = os.readlink("/proc/self/fd/%d" % f)
            size = os.fstat(f).st_size
        except OSError:
            path, size = None, None
        try:
            orig_fsync(f, what)
        except BaseException as e:
            emit(op="fsync", path=path, size=size, ok=False, error=str(e))
            raise
        emit(op="fsync", path=path, size=size, ok=True)

    def fsync_dir(path):
        path = os.path.abspath(path)
        try:
            entries = sorted(os.listdir(path))
        except OSError:
            entries = None
        try:
            orig_dir(path)
        except BaseException as e:
            emit(op="fsync_dir", path=path, ok=False, error=str(e))
            raise
        emit(op="fsync_dir", path=path, entries=entries, ok=True)

    orig_ftruncate = os.ftruncate

    def ftruncate(f, length):
        try:
            path = os.readlink("/proc/self/fd/%d" % f)
        except OSError:
            path = None
        orig_ftruncate(f, length)
        emit(op="truncate", path=path, size=length, ok=True)

    fsutil.fsync, fsutil.fsync_dir, os.ftruncate = fsync, fsync_dir, ftruncate

    def undo():
        fsutil.fsync, fsutil.fsync_dir, os.ftruncate = orig_fsync, orig_dir, orig_ftruncate
        os.close(fd)
    return undo


def read_records(log_path):
    out = []
    try:
        with open(log_path, "rb") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass                     # torn by the kill
    except FileNotFoundError:
        pass
    return out


def snapshot(store):
    """{path: size} of every file and {dir} of every directory under store
    (what the harness regards as durable before a child starts)."""
    files, dirs = {}, set()
    for root, dnames, fnames in os.walk(store):
        dirs.add(os.path.abspath(root))
        for n in fnames:
            p = os.path.abspath(os.path.join(root, n))
            try:
                files[p] = os.path.getsize(p)
            except OSError:
                pass
    return files, dirs


def durable_sizes(store):
    """{segment path: bytes the store itself vouches were fsynced}, from each
    partition's .sync marker (segment base, position): segments before the
    marker's were fsynced whole when they rolled, the marker's up to its
    position, later ones not at all."""
    out = {}
    for d in sorted(os.listdir(store)):
        pdir = os.path.join(os.path.abspath(store), d)
        try:
            with open(os.path.join(pdir, ".sync"), "rb") as f:
                raw = f.read(17)
        except (FileNotFoundError, NotADirectoryError):
            continue
        base, pos = struct.unpack(">qq", raw[:16]) if len(raw) >= 16 else (-1, 0)
        for name in os.listdir(pdir):
            if not name.endswith(".log") or not name[:-4].isdigit():
                continue
            seg = int(name[:-4])
            path = os.path.join(pdir, name)
            out[path] = os.path.getsize(path) if seg < base else pos if seg == base else 0
    return out


def fsync_retries(records, durable_before):
    """Segment fsyncs that followed a failed one on the same file without
    the file first being cut back to what an earlier fsync made durable:
    after a failed fsync the kernel may have dropped the dirty pages, so a
    later fsync that succeeds proves nothing about them (invariant 5).
    durable_before: durable_sizes() taken before the process started."""
    good = {}                           # path -> size durable so far
    suspect = {}                        # path -> durable size when an fsync failed
    out = []
    for r in records:
        path = r.get("path") or ""
        if not path.endswith(".log"):
            continue
        durable = good.get(path, durable_before.get(path, 0))
        if r["op"] == "truncate":
            if path in suspect and r["size"] <= suspect[path]:
                del suspect[path]
        elif r["op"] == "fsync":
            if path in suspect:
                out.append(dict(r, durable_before_failure=suspect.pop(path)))
            elif not r.get("ok"):
                if r.get("size") is None or r["size"] > durable:    # dirty pages at stake
                    suspect[path] = durable
            elif r.get("size") is not None:
                good[path] = r["size"]
    return out


def apply(store, records, before, rng=None, mode="garble", new_entries="keep"):
    """Turn the store into what a power loss would leave (see the module doc).

    records: read_records() of the child's recorder log; before: snapshot()
    taken before the child started.  Returns a summary of what was changed."""
    rng = rng or random.Random()
    files_before, dirs_before = before
    durable, listed = {}, {}
    for r in records:
        if not r.get("ok") or not r.get("path"):
            continue
        if r["op"] == "fsync" and r.get("size") is not None:
            durable[r["path"]] = r["size"]
        elif r["op"] == "fsync_dir" and r.get("entries") is not None:
            listed.setdefault(r["path"], set()).update(r["entries"])
    summary = {"cut": 0, "zeroed": 0, "garbled": 0, "kept": 0, "vanished": 0, "bytes_lost": 0}
    store = os.path.abspath(store)

    def entry_durable(path, is_dir):
        known = dirs_before if is_dir else files_before
        if path in known:
            return True
        return os.path.basename(path) in listed.get(os.path.dirname(path), ())

    for root, dnames, fnames in os.walk(store, topdown=True):
        rel = os.path.relpath(root, store)
        if rel.split(os.sep)[0] in SKIP_DIRS:
            dnames[:] = []
            continue
        for d in list(dnames):
            p = os.path.join(root, d)
            if d in SKIP_DIRS and root == store:
                continue
            if new_entries == "vanish" and not entry_durable(p, True) and rng.random() < 0.5:
                _rmtree(p)
                dnames.remove(d)
                summary["vanished"] += 1
        for n in fnames:
            p = os.path.join(root, n)
            if n in IN_PLACE:
                continue
            if new_entries == "vanish" and not entry_durable(p, False) and rng.random() < 0.5:
                summary["bytes_lost"] += os.path.getsize(p)
                os.unlink(p)
                summary["vanished"] += 1
                continue
            base = durable.get(p, files_before.get(p, 0))
            size = os.path.getsize(p)
            if size <= base:
                continue
            _mangle(p, base, size, rng, mode, summary)
    return summary


def _mangle(path, base, size, rng, mode, summary):
    choice = "cut" if mode == "truncate" else rng.choice(("cut", "cut", "zeroed", "garbled", "kept"))
    point = base if mode == "truncate" else rng.randint(base, size)
    if choice == "kept":
        summary["kept"] += 1
        return
    summary[choice] += 1
    summary["bytes_lost"] += size - point
    with open(path, "r+b") as f:
        if choice == "cut":
            f.truncate(point)
        else:
            f.seek(point)
            n = size - point
            f.write(bytes(n) if choice == "zeroed" else bytes(rng.getrandbits(8) for _ in range(n)))


def _rmtree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)
