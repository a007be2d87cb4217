"""Retention: delete whole old segments by retention.ms and retention.bytes.

Kafka's rules: only closed segments go (never the active one); a segment
goes when its largest timestamp is older than retention.ms, or while the
partition is over retention.bytes without it.  pylog adds one bound Kafka
also keeps: nothing at or beyond the last stable offset is deleted, so an
open transaction's records and its marker's partner data stay readable.
Producer state is snapshotted first and never deleted with the segments
(Kafka's KIP-360 lesson: a producer whose batches all expired must still be
recognised).

Compaction (cleanup.policy=compact, or "compact,delete" for both) is in
compaction.py.
"""
import logging
import time

log = logging.getLogger("pylog.retention")


def retention_cut(partition, config, now_ms=None):
    """The offset retention would move the log start to (or the current start)."""
    lg = partition.log
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    retention_ms = int(config.get("retention.ms", -1))
    retention_bytes = int(config.get("retention.bytes", -1))
    policy = config.get("cleanup.policy", "delete")
    cut = lg.log_start_offset
    if "delete" not in policy:
        return cut
    segments = lg.closed_segments()
    total = lg.size_bytes
    lso = partition.last_stable_offset()
    for seg in segments:
        expired = retention_ms >= 0 and now_ms - seg.largest_timestamp() > retention_ms
        oversized = retention_bytes >= 0 and total - seg.size >= retention_bytes
        end = seg.next_offset if seg.next_offset is not None else seg.base_offset
        if not (expired or oversized) or end > lso:
            break
        cut = end
        total -= seg.size
    return cut


def enforce(partition, config, now_ms=None):
    """Apply retention to one partition; returns the (possibly new) log start."""
    lg = partition.log
    partition.refresh()
    cut = retention_cut(partition, config, now_ms)
    if cut <= lg.log_start_offset:
        return lg.log_start_offset
    partition.snapshot()                # producer state must outlive the segments
    start = lg.delete_before(cut)
    log.info("%s-%d: retention moved the log start to %d", partition.topic, partition.partition,
             start)
    return start
