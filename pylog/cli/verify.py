"""pylog verify: check the CRC of every batch of every segment, and the
offsets that chain batches and segments together.

Damage is reported with its file, byte position and reason, and the exit
status is 1 if any was found (even when --recover then repaired it).

The files are read directly, without opening the partitions (opening runs
recovery, which would cut the damage away before it is seen).  The tail of
a partition's last segment may be a batch another process is writing right
now; damage found there is checked again while holding the partition's
append lock, under which any invalid bytes can only come from a writer
that died.

--recover opens each damaged partition after removing its recovery point,
so that recovery validates the whole log (not only the part written since
the last checkpoint), truncates it at the first damaged batch and drops
every later segment, as Kafka's log recovery does.  Whatever followed the
damage is lost; run it while no other process uses the partition.
"""
import fcntl
import os

from .. import _bridge, format
from ..segment import Segment
from ..store import TOPIC_CONFIG_DEFAULTS
from .common import CliError, open_store


def add_parser(sub, parents):
    p = sub.add_parser("verify", parents=parents, help="check every CRC; optionally recover")
    p.add_argument("--topic", action="append", default=[], help="only these topics (repeatable)")
    p.add_argument("--recover", action="store_true",
                   help="truncate each damaged partition at its first bad batch")
    p.set_defaults(func=run)


class Damage:
    def __init__(self, path, position, reason, lost):
        self.path, self.position, self.reason, self.lost = path, position, reason, lost

    def __str__(self):
        return "file: %s position: %d reason: %s (%d bytes of the partition from there on)" % (
            self.path, self.position, self.reason, self.lost)


def scan_partition(dirpath, max_batch_size):
    """(stats, damage or None) for one partition directory, read without locks."""
    bases = sorted(b for b in (format.parse_segment_name(n) for n in os.listdir(dirpath)
                               if n.endswith(format.LOG_SUFFIX)) if b is not None)
    sizes = [os.path.getsize(os.path.join(dirpath, format.segment_name(b, format.LOG_SUFFIX)))
             for b in bases]
    stats = {"segments": len(bases), "batches": 0, "bytes": sum(sizes),
             "next_offset": bases[0] if bases else 0}
    expect = bases[0] if bases else 0
    for i, base in enumerate(bases):
        seg = Segment(dirpath, base)
        try:
            size = os.fstat(seg.fd).st_size
            if base != expect:
                return stats, Damage(seg.log_path, 0, "segment starts at offset %d, the previous one "
                                     "ends at %d" % (base, expect), sum(sizes[i:]))
            infos, end, rc = seg.scan_from(0, base, max_batch_size, size)
        finally:
            seg.close()
        stats["batches"] += len(infos)
        if infos:
            expect = infos[-1].next_offset
        stats["next_offset"] = expect
        if rc:
            return stats, Damage(seg.log_path, end, _bridge.SCAN_REASONS.get(rc, "error %d" % rc),
                                 size - end + sum(sizes[i + 1:]))
    return stats, None


def _recheck_locked(dirpath, max_batch_size):
    """scan_partition again while holding the partition's append lock."""
    fd = os.open(os.path.join(dirpath, format.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return scan_partition(dirpath, max_batch_size)
    finally:
        os.close(fd)


def _recover(store, topic, partition, dirpath):
    """Open the partition with no recovery point: recovery validates it all."""
    fd = os.open(os.path.join(dirpath, format.LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.unlink(os.path.join(dirpath, format.RECOVERY_POINT_FILE))
        except FileNotFoundError:
            pass
    finally:
        os.close(fd)
    store.partition(topic, partition)


def run(args):
    damaged = 0
    with open_store(args) as store:
        topics = store.topics()
        for t in args.topic:
            if t not in topics:
                raise CliError("Topic '%s' does not exist" % t)
        names = args.topic or sorted(topics)
        total = 0
        for topic in names:
            cfg = dict(TOPIC_CONFIG_DEFAULTS, **topics[topic].get("config", {}))
            max_batch = cfg["segment.bytes"]
            for p in range(topics[topic]["partitions"]):
                dirpath = os.path.join(store.path, format.partition_dir_name(topic, p))
                if not os.path.isdir(dirpath):
                    continue                    # never opened: nothing written
                total += 1
                name = "%s-%d" % (topic, p)
                stats, damage = scan_partition(dirpath, max_batch)
                if damage is not None:
                    stats, damage = _recheck_locked(dirpath, max_batch)
                if damage is None:
                    print("OK %s segments: %d batches: %d bytes: %d next offset: %d" % (
                        name, stats["segments"], stats["batches"], stats["bytes"], stats["next_offset"]))
                    continue
                damaged += 1
                print("DAMAGED %s %s" % (name, damage))
                if args.recover:
                    before = stats["bytes"]
                    _recover(store, topic, p, dirpath)
                    after, left = _recheck_locked(dirpath, max_batch)
                    if left is None:
                        print("RECOVERED %s truncated to offset %d (removed %d bytes)" % (
                            name, after["next_offset"], before - after["bytes"]))
                    else:
                        print("STILL DAMAGED %s %s" % (name, left))
        print("Verified %d partitions: %d damaged%s" % (
            total, damaged, ", recovery attempted" if args.recover and damaged else ""))
    return 1 if damaged else 0
