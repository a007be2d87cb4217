"""On-disk names and constants of a store directory.

    <store>/
      meta/                         LMDB environment (producer, transaction, group state)
      <topic>-<partition>/          one partition log
        00000000000000000000.log    record batch v2 bytes, named by base offset
        00000000000000000000.index  sparse offset index, 8-byte entries:
                                      | 0-3 | int32 BE | offset - segment base offset |
                                      | 4-7 | int32 BE | byte position in the .log    |
                                    every entry names the first byte of a batch that
                                    starts at exactly that offset
        00000000000000000000.timeindex  12-byte entries:
                                      | 0-7  | int64 BE | largest timestamp so far      |
                                      | 8-11 | int32 BE | relative offset of the batch  |
                                    that ends at that largest timestamp
        recovery-point              8-byte BE offset + CRC-32C: every byte below it
                                    was fsynced and validated, so recovery starts there
        log-start-offset            8-byte BE offset + CRC-32C: set by DeleteRecords or
                                    retention; reads below it are refused
        cleaner-offset-checkpoint   8-byte BE offset + CRC-32C: where the last
                                    compaction ended (what is dirty is after it)
        .lock                       flock()ed by whoever appends or recovers
        .cleaner.lock               flock()ed by the one cleaner compacting the partition
        <segment>.log.cleaned       a compacted copy being written (compaction.py)
        .sync                       group commit: (segment base, position) fsynced so
                                    far, and a flag set when an fsync failed
"""
import re

from .errors import KafkaError, KafkaException

OFFSET_DIGITS = 20
LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
RECOVERY_POINT_FILE = "recovery-point"
LOG_START_FILE = "log-start-offset"
LOCK_FILE = ".lock"
SYNC_FILE = ".sync"
TMP_SUFFIX = ".tmp"
INDEX_ENTRY = 8
TIMEINDEX_ENTRY = 12

# Kafka's rule: legal characters, at most 249 of them, and never "." or ".."
# (so a name can never climb out of the store directory).
MAX_TOPIC_LENGTH = 249
# \Z, not $: "$" also matches before a trailing newline, which let "orders\n"
# through.  re.ASCII keeps \d to 0-9 (str patterns match any Unicode digit).
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]+\Z")
_PARTITION_DIR_RE = re.compile(r"^(.+)-(\d+)\Z", re.ASCII)


def segment_name(base_offset, suffix):
    return "%0*d%s" % (OFFSET_DIGITS, base_offset, suffix)


def parse_segment_name(name):
    """Base offset of a segment file name like 00000000000000000042.log, else None."""
    stem, dot, _ = name.partition(".")
    if dot and len(stem) == OFFSET_DIGITS and stem.isdigit():
        return int(stem)
    return None


def validate_topic(name):
    """Raise KafkaException(TOPIC_EXCEPTION) unless name is a legal Kafka topic name."""
    if not isinstance(name, str):
        raise KafkaException(KafkaError(KafkaError.TOPIC_EXCEPTION,
                                        "topic name must be str, not %s" % type(name).__name__))
    if name in (".", "..") or not name:
        raise KafkaException(KafkaError(KafkaError.TOPIC_EXCEPTION,
                                        "topic name %r is not allowed" % name))
    if len(name) > MAX_TOPIC_LENGTH:
        raise KafkaException(KafkaError(
            KafkaError.TOPIC_EXCEPTION,
            "topic name is %d characters long, the limit is %d" % (len(name), MAX_TOPIC_LENGTH)))
    if not _TOPIC_RE.match(name):
        raise KafkaException(KafkaError(
            KafkaError.TOPIC_EXCEPTION,
            "topic name %r has characters other than ASCII letters, digits, '.', '_' and '-'"
            % name))
    return name


def partition_dir_name(topic, partition):
    return "%s-%d" % (topic, partition)


def parse_partition_dir(name):
    """(topic, partition) for a partition directory name, else None."""
    m = _PARTITION_DIR_RE.match(name)
    if not m or not _TOPIC_RE.match(m.group(1)) or m.group(1) in (".", ".."):
        return None
    return m.group(1), int(m.group(2))
