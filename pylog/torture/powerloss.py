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

LMDB (meta/) syncs inside its own library, which the recorder cannot see,
so its data file is never cut or garbled: it is modelled by LMDB's own
guarantee instead.  pylog opens LMDB with sync on and metasync off, and then
a commit fdatasyncs its data pages (and with them the previous commit's meta
page) but not its own meta page: after a power loss the database is intact
and holds either the last committed transaction or the one before it
(LMDB's documentation for MDB_NOMETASYNC: "a system crash may undo the last
committed transaction").  apply(lmdb=...) chooses: "keep" the last commit,
"undo" it, or "random" (either); undo_last_lmdb_commit() does it by making
the newest of the two meta pages name an older transaction, so that LMDB
opens the previous one, which a commit never overwrites.  Never undone: a
commit the store had before the child started, one an env sync followed
(Meta.update(durable=True), Meta.flush()), and any commit if the child was
killed in the middle of an LMDB write (whose fdatasync may have made the
commit before it durable): the recorder logs where LMDB writes begin and
end.
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

# LMDB 0.9's data file starts with two meta pages; the one with the larger
# transaction id is the database.  Fields used (little-endian, 64-bit build):
_LMDB_DATA = os.path.join("meta", "data.mdb")
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_FLAGS_AT, _LMDB_META_FLAG = 10, 0x08     # page header: mp_flags, P_META
_LMDB_MAGIC_AT = 16                             # mm_magic, mm_version
_LMDB_PSIZE_AT = 40                             # mm_dbs[FREE].md_pad holds the page size
_LMDB_TXNID_AT = 144                            # mm_txnid


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

    # LMDB: where its writes begin and end (the environment's opening, each
    # commit through Meta.update, each env sync), so that apply() undoes a
    # commit only if it was the last LMDB write and it had ended: a child
    # killed inside a commit may have passed its fdatasync, which made the
    # commit before it durable; a sync makes every commit so far durable.
    from pylog import failpoints as _fp, meta as _meta
    orig_hit, orig_env = _fp.hit, _meta._Env.__init__
    lmdb_points = {"meta.commit.before": "begin", "meta.commit.after": "end"}

    def hit(name):
        phase = lmdb_points.get(name)
        if phase is not None:
            emit(op="lmdb", what="commit", phase=phase, ok=True)
        orig_hit(name)

    def env_init(self, *args, **kwargs):
        emit(op="lmdb", what="open", phase="begin", ok=True)
        orig_env(self, *args, **kwargs)
        flags = self.env.flags()
        self.env = _SyncRecorder(self.env, emit)
        emit(op="lmdb", what="open", phase="end", ok=True, sync=bool(flags["sync"]),
             metasync=bool(flags["metasync"]))

    fsutil.fsync, fsutil.fsync_dir, os.ftruncate = fsync, fsync_dir, ftruncate
    _fp.hit, _meta._Env.__init__ = hit, env_init

    def undo():
        fsutil.fsync, fsutil.fsync_dir, os.ftruncate = orig_fsync, orig_dir, orig_ftruncate
        _fp.hit, _meta._Env.__init__ = orig_hit, orig_env
        os.close(fd)
    return undo


class _SyncRecorder:
    """An lmdb.Environment that logs its sync() calls (whoever makes them)."""

    def __init__(self, env, emit):
        self._env, self._emit = env, emit

    def sync(self, *args, **kwargs):
        self._emit(op="lmdb", what="sync", phase="begin", ok=True)
        r = self._env.sync(*args, **kwargs)
        self._emit(op="lmdb", what="sync", phase="end", ok=True)
        return r

    def __getattr__(self, name):
        return getattr(self._env, name)


def lmdb_undoable(records, lmdb_before):
    """lmdb_before (the LMDB transaction id the store had when the child
    started: never undone) if the recorder's log lets a power loss undo the
    last commit, else None: the child's last LMDB write was not a commit
    that ended (it was killed in the middle of one, or a sync followed), it
    made none, or it opened LMDB with metasync on (commits durable), sync
    off (then pylog promises nothing) or before the recorder was installed."""
    events = [r for r in records if r.get("op") == "lmdb"]
    if lmdb_before is None or not events:
        return None
    opened = [r for r in events if r["what"] == "open" and r["phase"] == "end"]
    if not opened or any(r.get("metasync") or not r.get("sync") for r in opened):
        return None
    last = events[-1]
    if last["phase"] != "end" or last["what"] == "sync":
        return None
    return lmdb_before


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


def lmdb_meta(store):
    """The store's LMDB data file as [(offset of the txnid field, txnid)] for
    its two meta pages, or None if there is none or it does not have the
    layout this module knows (then nothing is undone)."""
    path = os.path.join(store, _LMDB_DATA)
    try:
        with open(path, "rb") as f:
            first = f.read(4096)
            if len(first) < _LMDB_TXNID_AT + 8:
                return None
            psize = struct.unpack_from("<I", first, _LMDB_PSIZE_AT)[0]
            if psize < 512 or psize & (psize - 1) or psize > 1 << 16:
                return None
            f.seek(0)
            pages = f.read(2 * psize)
    except FileNotFoundError:
        return None
    if len(pages) < 2 * psize:
        return None
    out = []
    for off in (0, psize):
        flags = struct.unpack_from("<H", pages, off + _LMDB_FLAGS_AT)[0]
        magic, version = struct.unpack_from("<II", pages, off + _LMDB_MAGIC_AT)
        if not flags & _LMDB_META_FLAG or magic != _LMDB_MAGIC or version != 1:
            return None
        out.append((off + _LMDB_TXNID_AT, struct.unpack_from("<Q", pages, off + _LMDB_TXNID_AT)[0]))
    return out


def lmdb_txnid(store):
    """The id of the store's last committed LMDB transaction (from its meta
    pages, without opening it), or None."""
    metas = lmdb_meta(store)
    return None if metas is None else max(t for _, t in metas)


def undo_last_lmdb_commit(store, durable_txnid):
    """Make the store's LMDB open at the transaction before its last one, as
    a power loss may (metasync off), unless the last one is durable_txnid or
    older.  The two meta pages hold the last two transactions, T and T-1:
    the one of T is made to say T-2, which is what it held until T's commit
    wrote it.  Returns True if a commit was undone."""
    metas = lmdb_meta(store)
    if metas is None:
        return False
    (at_new, last), (_, prev) = sorted(metas, key=lambda m: -m[1])
    if durable_txnid is None or last <= durable_txnid or prev != last - 1 or last < 2:
        return False
    with open(os.path.join(store, _LMDB_DATA), "r+b") as f:
        f.seek(at_new)
        f.write(struct.pack("<Q", last - 2))
    return True


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


def apply(store, records, before, rng=None, mode="garble", new_entries="keep", lmdb="keep",
          lmdb_before=None):
    """Turn the store into what a power loss would leave (see the module doc).

    records: read_records() of the child's recorder log; before: snapshot()
    taken before the child started.  lmdb: "keep", "undo" or "random" for
    LMDB's last commit, if it is newer than lmdb_before (lmdb_txnid() taken
    before the child started; None: never undone), no recorded LMDB sync
    covered it and no LMDB write was in flight (lmdb_undoable).  Returns a
    summary of what was changed."""
    rng = rng or random.Random()
    files_before, dirs_before = before
    summary = {"cut": 0, "zeroed": 0, "garbled": 0, "kept": 0, "vanished": 0, "bytes_lost": 0,
               "lmdb_undone": 0}
    if lmdb not in ("keep", "undo", "random"):
        raise ValueError("lmdb must be keep, undo or random, not %r" % (lmdb,))
    if lmdb == "undo" or lmdb == "random" and rng.random() < 0.5:
        floor = lmdb_undoable(records, lmdb_before)
        summary["lmdb_undone"] += undo_last_lmdb_commit(store, floor)
    durable, listed = {}, {}
    for r in records:
        if not r.get("ok") or not r.get("path"):
            continue
        if r["op"] == "fsync" and r.get("size") is not None:
            durable[r["path"]] = r["size"]
        elif r["op"] == "fsync_dir" and r.get("entries") is not None:
            listed.setdefault(r["path"], set()).update(r["entries"])
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
