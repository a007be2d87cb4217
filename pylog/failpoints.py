"""Named failpoints: crash, fail or pause the process at a chosen step.

Off by default, and then hit() is one dict lookup on an empty dict.  Turned
on from Python (set/clear) or by the environment at import:

    PYLOG_FAILPOINTS="log.append.after_write=kill;fsync.before=eio@3"

Actions: kill (SIGKILL this process), eio / enospc (raise OSError once),
eio! / enospc! (raise on every hit from then on), sleep:<ms>.  "@k" fires on
the k-th hit only (1-based), counting hits since the failpoint was set.

CATALOGUE below names every failpoint pylog's code hits and the step it
marks (pylog.testing.failpoint_names() reads the names from the source; a
test keeps the two equal).
"""
import errno
import os
import signal
import time

_active = {}     # name -> [action, fire_at_hit, hits]

CATALOGUE = {
    # durability primitives (pylog.fsutil)
    "write": "before writing the .tmp file of an atomic replace (recovery point, "
             "log start and other offset files, index files)",
    "rename": "before renaming an atomic replace's .tmp over the file",
    "fsync.before": "before every fsync of a file or a directory",
    "fsync.after": "after every fsync of a file or a directory returned",
    "truncate": "before cutting a segment (a dead writer's tail, truncate_to, the bytes "
                "past a failed fsync)",
    # appending (log, segment)
    "log.write": "before the write(2) of batches to the active segment",
    "log.append.after_write": "after batches are written to the segment, before their "
                              "fsync and before LMDB records anything of them",
    "log.sync_marker.before": "before the group-commit .sync marker (fsynced position, "
                              "failed flag) is written",
    "log.sync_marker.after": "after the .sync marker is written",
    "index.append": "before index entries are appended to the .index file",
    "index.append.time": "between the .index and the .timeindex appends",
    # segment roll
    "log.roll.before": "before a roll fsyncs the old segment",
    "log.roll.created": "after the new segment file exists, before its directory fsync",
    "log.roll.after": "after a roll, its recovery point written",
    # recovery and index rebuilds
    "recovery.segment": "before a segment is validated on open",
    "recovery.truncate": "before recovery cuts a segment's invalid tail",
    "recovery.drop_segment": "before recovery deletes each segment after a cut",
    "recovery.discard": "on open after a failed fsync, before the bytes past the last "
                        "good fsync are cut",
    "recovery.point": "after recovery's fsync, before the new recovery point is written",
    "index.rebuild": "before the index entries of a segment are re-derived",
    "index.save.between": "mid index rebuild: the new .index is in place, the "
                          ".timeindex not yet",
    # LMDB (producer state, transaction state, offsets, groups)
    "meta.commit.before": "before every LMDB write transaction commits",
    "meta.commit.after": "after every LMDB write transaction committed",
    "meta.durable.after": "after a durable commit's meta page is flushed too (Prepare*)",
    # the transaction coordinator
    "txn.init.before": "init_transactions: the previous instance's transaction is "
                       "settled, the epoch bump is not yet committed",
    "txn.add_partitions.after": "partitions recorded in the Ongoing transaction, "
                                "nothing written to them yet",
    "txn.add_offsets.after": "group offsets staged in the Ongoing transaction",
    "txn.prepare.before": "before PrepareCommit/PrepareAbort (the commit point)",
    "txn.prepare.after": "Prepare* durable, no marker written yet (with batches carried "
                         "in it: they are appended and fsynced too)",
    "txn.redo.committed": "a PrepareCommit carrying the transaction's unsent batches is "
                          "committed to LMDB (its meta page not yet flushed); none of the "
                          "batches appended yet",
    "txn.redo.append.after": "after each partition's append (and fsync) of the batches its "
                             "PrepareCommit carries, before any marker",
    "txn.redo.reappend.after": "a roll-forward appended the carried batches a partition "
                               "lacked, its marker not yet written",
    "txn.marker.after": "after each partition's marker (between markers)",
    "txn.markers.sync.before": "commit_transaction() returned; the producer's marker "
                               "fsync (a worker thread) not yet started",
    "txn.complete.before": "markers written and fsynced, Complete* not yet recorded",
    "txn.complete.after": "after Complete* is recorded",
    # pylog.streams
    "streams.commit.before": "streams runner: changelog produced, transaction not yet "
                             "committed",
    "streams.commit.after": "streams runner: committed, the local stores not yet updated",
    # compaction
    "compaction.cleaned.written": "the cleaned copy of a segment is written, not yet "
                                  "checked, fsynced or swapped in",
    "compaction.swap": "the old segment's index files removed, before the cleaned "
                       "segment is renamed over it",
}


def set(name, action, at=1):
    """Arm failpoint name with action; fire on hit number `at` (and after, if persistent)."""
    _parse_action(action)
    _active[name] = [action, at, 0]


def clear(name=None):
    if name is None:
        _active.clear()
    else:
        _active.pop(name, None)


def active():
    return dict((k, (v[0], v[1])) for k, v in _active.items())


def hits(name):
    entry = _active.get(name)
    return entry[2] if entry else 0


def hit(name):
    if not _active:
        return
    entry = _active.get(name)
    if entry is None:
        return
    entry[2] += 1
    action, at, n = entry
    persistent = action.endswith("!")
    if n < at or (n > at and not persistent):
        return
    _fire(name, action)


def _parse_action(action):
    base = action.rstrip("!")
    if base in ("kill", "eio", "enospc") or (base.startswith("sleep:") and base[6:].isdigit()):
        return base
    raise ValueError("unknown failpoint action %r (kill, eio, enospc, eio!, enospc!, sleep:MS)"
                     % action)


def _fire(name, action):
    base = _parse_action(action)
    if base == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)                 # SIGKILL is asynchronous for ourselves on some kernels
    elif base == "eio":
        raise OSError(errno.EIO, "injected EIO at failpoint %s" % name)
    elif base == "enospc":
        raise OSError(errno.ENOSPC, "injected ENOSPC at failpoint %s" % name)
    else:
        time.sleep(int(base[6:]) / 1000.0)


def _load_env():
    spec = os.environ.get("PYLOG_FAILPOINTS", "")
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, action = item.partition("=")
        action, _, at = action.partition("@")
        set(name.strip(), action.strip(), int(at) if at else 1)


_load_env()
