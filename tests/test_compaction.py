"""Log compaction (cleanup.policy=compact): latest record per key, tombstones,
transactions, producer state, crash safety, concurrent readers."""
import os
import struct
import time

import pytest

from pylog import KafkaError, KafkaException, Producer, TopicPartition, testing
from pylog import compaction
from pylog.codec import decode_batch, encode_batch
from pylog.log import LogConfig, PartitionLog
from pylog.store import Store

from txn_support import conf_for, create_topics, opened_store, read_all

COMPACT = {"cleanup.policy": "compact", "segment.bytes": 4096}


def produce(conf, topic, pairs, flush_every=7, **extra):
    """pairs: [(key, value)], flushed every few records so batches are small."""
    p = Producer({**conf, "enable.idempotence": True, "linger.ms": 0, **extra})
    try:
        for i, (k, v) in enumerate(pairs):
            p.produce(topic, key=k, value=v, partition=0)
            if i % flush_every == 0:
                p.flush()
        p.flush()
    finally:
        p.close()


def updates(n, keys, tag=b"v"):
    return [(b"k%d" % (i % keys), tag + b"%d" % i) for i in range(n)]


def expected_view(pairs, start=0):
    """key -> last value, as a reader of a compacted log must end up seeing."""
    out = {}
    for k, v in pairs:
        out[k] = v
    return out


def final_view(msgs):
    out = {}
    for m in msgs:
        if m.value() is None:
            out.pop(m.key(), None)
        else:
            out[m.key()] = m.value()
    return out


def records_by_offset(msgs):
    return {m.offset(): (m.key(), m.value()) for m in msgs}


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path)


def compacted_topic(store_dir, pairs, config=COMPACT, **produce_kw):
    """A compacted topic "c" holding pairs; returns the client conf."""
    conf = conf_for(store_dir)
    create_topics(conf, {"c": (1, config)})
    produce(conf, "c", pairs, **produce_kw)
    return conf


def test_keeps_the_latest_record_per_key_and_every_offset(store_dir):
    pairs = updates(400, 10)
    conf = compacted_topic(store_dir, pairs)
    before = records_by_offset(read_all(conf, [("c", 0)]))
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        size_before, hw = part.log.size_bytes, part.high_watermark
        result = s.compact("c")[0]
        assert result.segments >= 1 and result.records_removed > 0
        assert part.log.size_bytes < size_before and part.high_watermark == hw
        end = result.end_offset
    after = records_by_offset(read_all(conf, [("c", 0)]))
    # Everything kept is byte-for-byte what was there, under its old offset.
    assert all(before[o] == kv for o, kv in after.items())
    # Past the cleaned range nothing changed; inside it one record per key.
    assert {o: kv for o, kv in after.items() if o >= end} == {o: kv for o, kv in before.items() if o >= end}
    cleaned_keys = [kv[0] for o, kv in after.items() if o < end]
    assert len(cleaned_keys) == len(set(cleaned_keys))
    assert final_view(read_all(conf, [("c", 0)])) == expected_view(pairs)


def test_a_reader_positioned_inside_a_removed_range_moves_on(store_dir):
    conf = compacted_topic(store_dir, updates(300, 3))
    with opened_store(store_dir) as s:
        s.compact("c")
    msgs = read_all(conf, [TopicPartition("c", 0, 5)])
    assert msgs and msgs[0].offset() > 5
    assert [m.offset() for m in msgs] == sorted(m.offset() for m in msgs)
    assert msgs[-1].offset() == 299


def test_tombstones_stay_for_delete_retention_ms_then_go(store_dir):
    pairs = updates(200, 5) + [(b"k1", None)] + updates(200, 5, b"w")[2:]
    conf = compacted_topic(store_dir, [(b"k1", None) if k == b"k1" else (k, v) for k, v in pairs],
                           {**COMPACT, "delete.retention.ms": 60000})
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        cfg = s._topic_config("c")
        compaction.compact(part, cfg)
        tombstones = [m for m in read_all(conf, [("c", 0)]) if m.value() is None]
        assert tombstones                                   # still young: kept
        later = int(time.time() * 1000) + 120000
        r = compaction.compact(part, cfg, now_ms=later)
        assert r.records_removed > 0
    msgs = read_all(conf, [("c", 0)])
    end = r.end_offset
    assert not [m for m in msgs if m.value() is None and m.offset() < end]
    assert b"k1" not in final_view(msgs)


def test_aborted_records_never_shadow_committed_ones(store_dir):
    conf = compacted_topic(store_dir, [(b"a", b"committed-a"), (b"b", b"committed-b")])
    p = Producer({**conf, "transactional.id": "t1", "linger.ms": 0})
    p.init_transactions()
    p.begin_transaction()
    p.produce("c", key=b"a", value=b"aborted-a", partition=0)
    p.flush()
    p.abort_transaction()
    p.begin_transaction()
    p.produce("c", key=b"b", value=b"txn-b", partition=0)
    p.commit_transaction()
    p.close()
    produce(conf, "c", [(b"x%d" % i, b"f" * 100) for i in range(120)])    # roll past them
    with opened_store(store_dir) as s:
        r = s.compact("c")[0]
        assert r.end_offset > 5 and r.records_removed > 0
    committed = final_view(read_all(conf, [("c", 0)]))
    assert committed[b"a"] == b"committed-a" and committed[b"b"] == b"txn-b"
    raw = [m.value() for m in read_all(conf, [("c", 0)], isolation="read_uncommitted")]
    assert b"aborted-a" not in raw and b"committed-b" not in raw


def test_an_open_transaction_bounds_what_is_cleaned(store_dir):
    conf = compacted_topic(store_dir, updates(50, 2))
    p = Producer({**conf, "transactional.id": "open", "linger.ms": 0})
    p.init_transactions()
    p.begin_transaction()
    p.produce("c", key=b"k0", value=b"undecided", partition=0)
    p.flush()
    lso = 50
    produce(conf, "c", updates(300, 2, b"late"))
    s = Store.acquire(store_dir)
    try:
        part = s.partition("c", 0)
        assert part.last_stable_offset() == lso
        r = s.compact("c")[0]
        assert r.end_offset is None or r.end_offset <= lso
        # Nothing at or past the LSO was touched: every later record is there.
        late = [m for m in read_all(conf, [("c", 0)], isolation="read_uncommitted") if m.offset() >= lso]
        assert len(late) == 301
        p.commit_transaction()
        r = s.compact("c")[0]
        assert r.end_offset > lso
    finally:
        p.close()
        s.release()
    assert final_view(read_all(conf, [("c", 0)])) == {b"k0": b"late298", b"k1": b"late299"}


def test_producer_state_survives_compaction_and_reopen(store_dir):
    conf = conf_for(store_dir)
    create_topics(conf, {"c": (1, COMPACT)})
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        pid, epoch = 4242, 0
        batches = [encode_batch([(0, b"k", b"v%d" % i, None)], pid, epoch, i) for i in range(60)]
        first = [part.append([b])[0] for b in batches]
        produce(conf, "c", [(b"k", b"x" * 100)] * 80)               # supersede, roll
        assert s.compact("c")[0].records_removed > 0
    with opened_store(store_dir) as s:                  # reopen: state from LMDB + log
        part = s.partition("c", 0)
        dup = part.append([batches[-1]])[0]
        assert not dup.appended and dup.base_offset == first[-1].base_offset
        assert part.append([batches[10]])[0].error is not None      # stale: refused
        nxt = encode_batch([(0, b"k", b"next", None)], pid, epoch, 60)
        assert part.append([nxt])[0].appended
        # The producer's last data batch keeps its header in the cleaned log.
        kept = [bi for seg, bi in part.log.batches(0, first[-1].base_offset + 1)
                if bi.producer_id == pid]
        assert kept and kept[-1].base_offset == first[-1].base_offset


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_recompressed_with_their_codec(store_dir, codec):
    pairs = updates(300, 4)
    conf = compacted_topic(store_dir, pairs, {**COMPACT, "segment.bytes": 1024}, flush_every=20,
                           **{"compression.type": codec})
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        assert s.compact("c")[0].records_removed > 0
        codecs = {bi.compression for _, bi in part.log.batches(0) if bi.records_count}
        assert codecs == {{"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]}
    assert final_view(read_all(conf, [("c", 0)])) == expected_view(pairs)


def test_a_record_without_a_key_is_refused(store_dir):
    """As Kafka's broker does: INVALID_RECORD for the record's batch, and the
    producer goes on (its later keyed records are written)."""
    conf = conf_for(store_dir)
    create_topics(conf, {"c": (1, COMPACT), "plain": 1})
    reports = []
    p = Producer({**conf, "enable.idempotence": True, "linger.ms": 0})
    try:
        for key in (b"a", None, b"b"):
            for topic in ("c", "plain"):
                p.produce(topic, key=key, value=b"v", partition=0,
                          on_delivery=lambda err, m: reports.append((m.topic(), m.key(), err)))
            p.flush()
    finally:
        p.close()
    errors = {(t, k): None if e is None else e.code() for t, k, e in reports}
    assert errors == {("c", b"a"): None, ("c", None): KafkaError.INVALID_RECORD,
                      ("c", b"b"): None, ("plain", b"a"): None, ("plain", None): None,
                      ("plain", b"b"): None}
    assert [m.key() for m in read_all(conf, [("c", 0)])] == [b"a", b"b"]
    assert "without key" in [e for t, k, e in reports if e is not None][0].str()


def test_keyless_records_already_in_the_log_are_kept(store_dir):
    """Records written before the key check (an older pylog) stay: compaction
    does not guess what a record without a key superseded."""
    pairs = [(None if i % 3 == 0 else b"k", b"%d" % i) for i in range(300)]
    conf = conf_for(store_dir)
    create_topics(conf, {"c": (1, COMPACT)})
    with opened_store(store_dir) as s:
        path = s.partition("c", 0).log.path
    lg = PartitionLog(path, LogConfig(segment_bytes=COMPACT["segment.bytes"]), "c", 0)
    try:
        for i in range(0, len(pairs), 7):
            lg.append([encode_batch([(1000 + j, k, v, None) for j, (k, v) in
                                     enumerate(pairs[i:i + 7])])])
    finally:
        lg.close()
    with opened_store(store_dir) as s:
        assert s.compact("c")[0].records_removed > 0
    msgs = read_all(conf, [("c", 0)])
    assert [m.value() for m in msgs if m.key() is None] == [v for k, v in pairs if k is None]


def test_dirty_ratio_decides_the_background_round(store_dir):
    conf = compacted_topic(store_dir, updates(300, 5), {**COMPACT, "min.cleanable.dirty.ratio": 0.5})
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        assert compaction.dirty_ratio(part, s._topic_config("c")) == 1.0
        assert ("c", 0) in s.enforce_compaction()
        assert compaction.dirty_ratio(part, s._topic_config("c")) < 0.5
        assert s.enforce_compaction() == {}                  # nothing dirty enough


def test_compact_refuses_a_delete_topic_and_bad_ratios(store_dir):
    conf = conf_for(store_dir)
    create_topics(conf, {"d": 1})
    with opened_store(store_dir) as s:
        with pytest.raises(KafkaException):
            s.compact("d")
        with pytest.raises(KafkaException):
            s.compact("missing")
        for bad in (1.5, -0.1, "x"):
            with pytest.raises(KafkaException):
                s.create_topic("e", 1, {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": bad})


def test_a_reader_with_the_old_file_open_still_reads_consistently(store_dir):
    conf = compacted_topic(store_dir, updates(300, 5))
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        other = PartitionLog(part.log.path, part.log.config)   # as another process has it
        old = [(bi.base_offset, bi.records_count) for _, bi in other.batches(0)]
        s.compact("c")
        data, infos = other.read(0, 1 << 20)
        assert [(bi.base_offset, bi.records_count) for bi in infos] == old[:len(infos)]
        assert all(len(decode_batch(data, bi)) == bi.records_count for bi in infos)
        other.close()
        fresh = PartitionLog(part.log.path, part.log.config)   # a reopen sees the cleaned files
        assert sum(bi.records_count for _, bi in fresh.batches(0)) < sum(n for _, n in old)
        fresh.close()


def _compact_in_child(store_dir):
    with opened_store(store_dir) as s:
        s.compact("c")


@pytest.mark.parametrize("point", ["compaction.cleaned.written", "compaction.swap"])
def test_a_crash_while_compacting_loses_nothing(store_dir, point):
    pairs = updates(400, 10)
    conf = compacted_topic(store_dir, pairs)
    before = records_by_offset(read_all(conf, [("c", 0)]))
    r = testing.run_in_child(_compact_in_child, store_dir, failpoints={point: "kill"}, timeout=60)
    assert r.killed_by == "failpoint", r
    after_crash = records_by_offset(read_all(conf, [("c", 0)]))
    assert set(after_crash) <= set(before) and all(before[o] == kv for o, kv in after_crash.items())
    assert final_view(read_all(conf, [("c", 0)])) == expected_view(pairs)
    part_dir = os.path.join(store_dir, "c-0")
    with opened_store(store_dir) as s:
        assert s.compact("c")[0] is not None                 # a stale copy does not block it
        assert not [n for n in os.listdir(part_dir) if n.endswith(compaction.CLEANED_SUFFIX)]
    assert final_view(read_all(conf, [("c", 0)])) == expected_view(pairs)


def test_compact_and_delete_policies_combine(store_dir):
    conf = conf_for(store_dir)
    create_topics(conf, {"c": (1, {**COMPACT, "cleanup.policy": "compact,delete",
                                   "retention.ms": 60000})})
    produce(conf, "c", updates(300, 5))
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        assert s.compact("c")[0].records_removed > 0
        s.enforce_retention(now_ms=int(time.time() * 1000) + 120000)
        assert part.log.log_start_offset == part.log.segments()[-1].base_offset


def test_a_damaged_segment_is_left_alone_and_nothing_after_it_cleaned(store_dir):
    conf = compacted_topic(store_dir, updates(400, 10))
    with opened_store(store_dir) as s:
        part = s.partition("c", 0)
        second = part.log.segments()[1]
        with open(second.log_path, "r+b") as f:        # a bit flip inside a record
            f.seek(second.size // 2)
            b = f.read(1)
            f.seek(second.size // 2)
            f.write(bytes([b[0] ^ 0x10]))
        sizes = [seg.size for seg in part.log.segments()]
        r = s.compact("c")[0]
        assert r.segments <= 1                         # at most the first, before the damage
        assert [seg.size for seg in part.log.segments()][1:] == sizes[1:]


def test_many_small_batches_are_streamed(store_dir):
    """One record per batch: the cleaner walks a segment in chunks, never
    holding one header object per batch of the whole segment."""
    conf = compacted_topic(store_dir, updates(14000, 7), {**COMPACT, "segment.bytes": 1 << 20},
                           flush_every=1)
    with opened_store(store_dir) as s:
        r = s.compact("c")[0]
        assert r.segments >= 1 and r.records_removed > 10000
    msgs = read_all(conf, [("c", 0)])
    assert final_view(msgs) == expected_view(updates(14000, 7))


def _produce_updates_child(store_dir, n, keys):
    produce(conf_for(store_dir), "c", updates(n, keys), flush_every=3)


def test_compacting_while_another_process_appends_and_reads(store_dir):
    """Segments roll and get swapped while a producer in another process
    appends: nothing it acknowledged is lost, every key ends at its last
    value, and the appending process's own reads stay consistent."""
    conf = compacted_topic(store_dir, updates(50, 10), {**COMPACT, "segment.bytes": 2048})
    child = testing.start_child(_produce_updates_child, store_dir, 3000, 10)
    rounds = 0
    with opened_store(store_dir) as s:
        while child.alive():
            s.compact("c")
            rounds += 1
        r = child.wait(60)
        assert r.ok, r.error
        s.compact("c")
    assert rounds > 1
    msgs = read_all(conf, [("c", 0)])
    assert [m.offset() for m in msgs] == sorted(m.offset() for m in msgs)
    assert final_view(msgs) == expected_view(updates(3000, 10))



def _valid_segment_bytes(total, value_size=100000, keys=5):
    buf = bytearray()
    off = 0
    while len(buf) < total:
        b = bytearray(encode_batch([(1000 + off, b"k%d" % (off % keys), b"x" * value_size, [])]))
        struct.pack_into(">q", b, 0, off)
        buf += b
        off += 1
    return bytes(buf), off


def test_walk_accepts_a_valid_segment_larger_than_one_chunk():
    data, end = _valid_segment_bytes(12 << 20)
    n = sum(1 for _ in compaction._walk(lambda pos, n: data[pos:pos + n], len(data), 0, end,
                                        1 << 30))
    assert n == end


def test_compaction_of_a_segment_over_8_mib(tmp_path):
    conf = conf_for(tmp_path)
    create_topics(conf, {"c": (1, {"cleanup.policy": "compact", "segment.bytes": 10 << 20})})
    p = Producer({**conf, "enable.idempotence": True, "linger.ms": 0})
    try:
        for i in range(115):                      # ~11.5 MB: one closed ~10 MB segment
            p.produce("c", key=b"k%d" % (i % 5), value=b"%06d" % i + b"x" * 100000, partition=0)
            p.flush()
    finally:
        p.close()
    with opened_store(tmp_path) as s:
        assert len(s.partition("c", 0).log.segments()) >= 2
        r = s.compact("c")[0]
    assert r.segments == 1 and r.records_removed > 90, r


# ---------------------------------------------------------------------------
# 5. compaction: the tombstone horizon runs on the record's CreateTime
# ---------------------------------------------------------------------------

def test_a_lagging_consumer_still_sees_a_fresh_tombstone(tmp_path):
    from pylog import Consumer, TopicPartition
    conf = conf_for(tmp_path)
    create_topics(conf, {"c": (1, {"cleanup.policy": "compact", "segment.bytes": 4096})})
    p = Producer({**conf, "linger.ms": 0})
    try:
        p.produce("c", key=b"k", value=b"v1", partition=0)
        p.flush()
        # event-time data (a replay, a streams app): CreateTime far in the past
        p.produce("c", key=b"k", value=None, partition=0, timestamp=1000)
        p.flush()
        for i in range(150):                        # roll: the tombstone's segment closes
            p.produce("c", key=b"o%d" % i, value=b"x" * 40, partition=0)
            p.flush()
    finally:
        p.close()
    c = Consumer({**conf, "group.id": "view", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "max.partition.fetch.bytes": 1})
    try:
        c.assign([TopicPartition("c", 0, 0)])
        m = c.poll(5.0)
        assert m is not None and m.error() is None and (m.key(), m.value()) == (b"k", b"v1")
        with opened_store(tmp_path) as s:                 # written a moment ago: well inside 24 h
            s.compact("c")
        seen = []
        while True:
            msgs = c.consume(1000, 0.5)
            if not msgs:
                break
            seen.extend((m.key(), m.value()) for m in msgs if m.error() is None)
    finally:
        c.close()
    assert (b"k", None) in seen


# ---------------------------------------------------------------------------
# 6. compaction: stop() is not honoured during the learn pass
# ---------------------------------------------------------------------------

def test_compaction_stops_at_the_next_batch_when_asked(tmp_path, monkeypatch):
    conf = conf_for(tmp_path)
    create_topics(conf, {"c": (1, {"cleanup.policy": "compact", "segment.bytes": 4096})})
    p = Producer({**conf, "enable.idempotence": True, "linger.ms": 0})
    try:
        for i in range(300):
            p.produce("c", key=b"k%d" % (i % 7), value=b"v%05d" % i + b"y" * 40, partition=0)
            if i % 5 == 0:
                p.flush()
    finally:
        p.close()
    walked = []
    real = compaction._walk

    def counting(*a, **kw):
        for item in real(*a, **kw):
            walked.append(1)
            yield item
    monkeypatch.setattr(compaction, "_walk", counting)
    with opened_store(tmp_path) as s:
        part = s.partition("c", 0)
        assert len(part.log.segments()) > 3
        cfg = s._topic_config("c")
        compaction.compact(part, cfg, stop=lambda: True)
    assert len(walked) <= 1
