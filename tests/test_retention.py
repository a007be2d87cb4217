"""Retention (retention.ms, retention.bytes) and delete_records."""
import time

import pytest

from pylog import Consumer, Producer, TopicPartition
from pylog.admin import AdminClient, NewTopic
from pylog.codec import encode_batch
from pylog.store import Store


@pytest.fixture
def conf(tmp_path):
    return {"bootstrap.servers": "file://" + str(tmp_path)}


def fill(conf, topic, n, config, **producer_conf):
    a = AdminClient(conf)
    a.create_topics([NewTopic(topic, 1, config=config)])[topic].result()
    a.close()
    p = Producer({**conf, "batch.num.messages": 10, **producer_conf})
    for i in range(n):
        p.produce(topic, b"%06d" % i + b"x" * 44, partition=0)
    p.flush()
    p.close()


def test_retention_bytes_deletes_oldest_whole_segments(conf, tmp_path):
    fill(conf, "r", 300, {"segment.bytes": 2000, "retention.bytes": 5000})
    s = Store.acquire(str(tmp_path))
    try:
        part = s.partition("r", 0)
        before = len(part.log.segments())
        moved = s.enforce_retention()
        start = part.log.log_start_offset
        assert moved == {("r", 0): start} and start > 0
        assert len(part.log.segments()) < before
        assert part.log.size_bytes - part.log.segments()[0].size < 5000   # no more than needed
        assert start == part.log.segments()[0].base_offset                # whole segments only
        assert part.high_watermark == 300
    finally:
        s.release()


def test_retention_ms_uses_the_segments_largest_timestamp(conf, tmp_path):
    fill(conf, "t", 200, {"segment.bytes": 2000, "retention.ms": 60000})
    s = Store.acquire(str(tmp_path))
    try:
        part = s.partition("t", 0)
        assert s.enforce_retention() == {}                 # all fresh
        later = int(time.time() * 1000) + 120000
        s.enforce_retention(now_ms=later)
        assert len(part.log.segments()) == 1               # never the active segment
        assert part.log.log_start_offset == part.log.segments()[0].base_offset
    finally:
        s.release()


def test_retention_never_deletes_at_or_beyond_the_lso(conf, tmp_path):
    a = AdminClient(conf)
    a.create_topics([NewTopic("x", 1, config={"segment.bytes": 2000, "retention.bytes": 1})])
    a.close()
    p = Producer({**conf, "transactional.id": "open", "batch.num.messages": 10})
    p.init_transactions()
    p.begin_transaction()
    for i in range(100):
        p.produce("x", b"v" * 50, partition=0)
    p.flush()                                              # written, still undecided
    s = Store.acquire(str(tmp_path))
    try:
        part = s.partition("x", 0)
        assert part.last_stable_offset() == 0
        s.enforce_retention()
        assert part.log.log_start_offset == 0
        p.commit_transaction()
        part.refresh()
        s.enforce_retention()
        assert part.log.log_start_offset > 0
    finally:
        p.close()
        s.release()


def test_delete_records_moves_the_start_and_consumers_reset(conf, tmp_path):
    fill(conf, "d", 100, {"segment.bytes": 2000})
    a = AdminClient(conf)
    res = a.delete_records([TopicPartition("d", 0, 42)])
    assert [f.result().low_watermark for f in res.values()] == [42]
    c = Consumer({**conf, "group.id": "g", "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("d", 0, 3)])                  # before the start
    m = c.poll(2.0)
    assert m is not None and m.offset() == 42 and m.value().startswith(b"000042")
    assert c.get_watermark_offsets(TopicPartition("d", 0))[0] == 42
    c.close()
    a.close()


def test_delete_records_is_seen_by_another_store_instance(conf, tmp_path):
    fill(conf, "o", 100, {"segment.bytes": 2000})
    s = Store.acquire(str(tmp_path))
    part = s.partition("o", 0)
    s.delete_records("o", 0, 55)
    s.release()
    s2 = Store.acquire(str(tmp_path))
    try:
        assert s2.partition("o", 0).log.log_start_offset == 55
    finally:
        s2.release()


def test_producer_state_outlives_deleted_segments(conf, tmp_path):
    """KIP-360: a producer whose batches were all deleted is still known, so
    its retried batch is a duplicate rather than written twice."""
    s = Store.acquire(str(tmp_path))
    try:
        s.create_topic("k", 1, {"segment.bytes": 2000})
        part = s.partition("k", 0)
        first = encode_batch([(0, None, b"a" * 50, None)] * 5, producer_id=77, producer_epoch=0,
                             base_sequence=0)
        assert part.append([first])[0].appended
        for i in range(40):                                 # roll the producer's batch away
            part.append([encode_batch([(0, None, b"b" * 50, None)] * 5)])
        part.log.delete_before(part.log.segments()[-1].base_offset)
        assert part.log.log_start_offset > 4
        again = part.append([first])[0]
        assert not again.appended and (again.base_offset, again.last_offset) == (0, 4)
    finally:
        s.release()
