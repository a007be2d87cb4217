"""Producer and AdminClient as a confluent-kafka user sees them.

Configuration follows librdkafka (unknown keys refused, network keys
ignored), produce/poll/flush/len/purge behave as in confluent-kafka, delivery
reports carry the offsets, keys land where a Kafka cluster would put them
(murmur2, checked against kafka-python's independent implementation), and
every record produced is read back from the log exactly once.
"""
import collections
import time

import pytest
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from pylog import KafkaError, KafkaException, Producer, TIMESTAMP_CREATE_TIME, compression
from pylog.admin import AdminClient, NewTopic

from txn_support import read_partition


@pytest.fixture
def conf(tmp_path):
    return {"bootstrap.servers": "file://" + str(tmp_path / "store")}


def producer(closing, conf, **extra):
    p = Producer({**conf, **extra})
    closing(p)
    return p


def store_of(conf):
    return conf["bootstrap.servers"][len("file://"):]


class Reports:
    """An on_delivery callback that keeps (err, msg) pairs."""

    def __init__(self):
        self.got = []

    def __call__(self, err, msg):
        self.got.append((err, msg))

    @property
    def errors(self):
        return [e for e, _ in self.got if e is not None]


def error_code(excinfo):
    return excinfo.value.args[0].code()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

def test_unknown_config_key_is_invalid_arg(conf):
    with pytest.raises(KafkaException) as ei:
        Producer({**conf, "no.such.property": 1})
    assert error_code(ei) == KafkaError._INVALID_ARG
    assert "no.such.property" in ei.value.args[0].str()


def test_consumer_keys_on_a_producer_are_checked_then_ignored(closing, conf):
    # librdkafka warns and ignores a property of the other client type...
    p = producer(closing, conf, **{"group.id": "g", "auto.offset.reset": "earliest",
                                   "enable.auto.commit": False})
    p.produce("t", b"x")
    assert p.flush(5) == 0
    # ...but still refuses a value that is invalid for it.
    with pytest.raises(KafkaException) as ei:
        Producer({**conf, "auto.offset.reset": "bogus"})
    assert error_code(ei) == KafkaError._INVALID_ARG


def test_one_config_dict_serves_producer_consumer_and_admin(closing, conf):
    from pylog import Consumer, TopicPartition
    shared = {**conf, "group.id": "billing", "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "enable.idempotence": True, "linger.ms": 1,
              "client.id": "app", "security.protocol": "PLAINTEXT"}
    admin = AdminClient(shared)
    closing(admin)
    admin.create_topics([NewTopic("shared", num_partitions=1)])["shared"].result()
    p = producer(closing, shared)
    p.produce("shared", b"hello")
    assert p.flush(5) == 0
    c = Consumer(shared)
    closing(c)
    c.assign([TopicPartition("shared", 0, 0)])
    msg = c.poll(5)
    assert msg is not None and msg.error() is None and msg.value() == b"hello"


@pytest.mark.parametrize("acks", [1, "1", 0])
def test_idempotence_with_acks_other_than_all_is_refused(conf, acks):
    with pytest.raises(KafkaException) as ei:
        Producer({**conf, "enable.idempotence": True, "acks": acks})
    assert error_code(ei) == KafkaError._INVALID_ARG
    assert "acks" in ei.value.args[0].str()


@pytest.mark.parametrize("acks", ["all", -1, "-1"])
def test_idempotence_with_acks_all_is_accepted(closing, conf, acks):
    producer(closing, conf, **{"enable.idempotence": True, "acks": acks})


def test_network_and_security_keys_are_accepted_and_ignored(closing, conf):
    p = producer(closing, conf, **{
        "socket.timeout.ms": 1000, "socket.keepalive.enable": True,
        "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "p",
        "security.protocol": "SASL_SSL", "ssl.ca.location": "/nonexistent",
        "client.id": "billing-1", "reconnect.backoff.ms": 10})
    p.produce("t", b"x")
    assert p.flush(5) == 0


@pytest.mark.parametrize("key,value", [("linger.ms", -1), ("batch.num.messages", 0),
                                       ("compression.type", "brotli"),
                                       ("enable.idempotence", "maybe")])
def test_out_of_range_values_are_invalid_arg(conf, key, value):
    with pytest.raises(KafkaException) as ei:
        Producer({**conf, key: value})
    assert error_code(ei) == KafkaError._INVALID_ARG


# ---------------------------------------------------------------------------
# produce, poll, flush, len and delivery reports
# ---------------------------------------------------------------------------

def test_delivery_reports_carry_offsets_and_the_record(closing, conf):
    p = producer(closing, conf, **{"enable.idempotence": True})
    dr = Reports()
    ts = 1700000000123
    for i in range(3):
        p.produce("orders", value=b"v%d" % i, key=b"k%d" % i, on_delivery=dr,
                  headers=[("h", b"%d" % i), ("n", None)], timestamp=ts + i)
    assert p.flush(10) == 0
    assert len(dr.got) == 3 and dr.errors == []
    for i, (err, msg) in enumerate(dr.got):
        assert msg.error() is None
        assert (msg.topic(), msg.partition(), msg.offset()) == ("orders", 0, i)
        assert (msg.key(), msg.value()) == (b"k%d" % i, b"v%d" % i)
        assert msg.headers() == [("h", b"%d" % i), ("n", None)]
        assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, ts + i)


def test_default_timestamp_is_now(closing, conf):
    p = producer(closing, conf)
    dr = Reports()
    before = int(time.time() * 1000)
    p.produce("t", b"x", on_delivery=dr)
    p.flush(5)
    tstype, ts = dr.got[0][1].timestamp()
    assert tstype == TIMESTAMP_CREATE_TIME and before <= ts <= int(time.time() * 1000)


def test_poll_serves_reports_and_len_counts_until_served(closing, conf):
    p = producer(closing, conf, **{"linger.ms": 60000})
    dr = Reports()
    for i in range(3):
        p.produce("t", b"%d" % i, on_delivery=dr)
    assert len(p) == 3
    assert p.poll(0) == 0                      # linger.ms not over: nothing written
    assert dr.got == [] and len(p) == 3
    assert p.flush(5) == 0
    assert len(p) == 0 and [m.offset() for _, m in dr.got] == [0, 1, 2]

    p2 = producer(closing, conf, **{"linger.ms": 0})
    p2.produce("t", b"x", on_delivery=dr)
    assert p2.poll(5) == 1
    assert dr.got[-1][1].offset() == 3 and len(p2) == 0


def test_producer_wide_on_delivery_from_config(closing, conf):
    dr = Reports()
    p = producer(closing, conf, on_delivery=dr)
    p.produce("t", b"a")
    p.produce("t", b"b", on_delivery=None)
    p.flush(5)
    assert [m.value() for _, m in dr.got] == [b"a", b"b"]


def test_buffer_error_when_queue_buffering_max_messages_is_reached(closing, conf):
    p = producer(closing, conf, **{"queue.buffering.max.messages": 3, "linger.ms": 60000})
    dr = Reports()
    for i in range(3):
        p.produce("t", b"%d" % i, on_delivery=dr)
    with pytest.raises(BufferError):
        p.produce("t", b"overflow", on_delivery=dr)
    assert len(p) == 3
    p.flush(5)
    p.produce("t", b"after", on_delivery=dr)    # room again once reports are served
    p.flush(5)
    assert [m.value() for _, m in dr.got] == [b"0", b"1", b"2", b"after"]


def test_value_over_message_max_bytes_raises_at_once(closing, conf):
    p = producer(closing, conf, **{"message.max.bytes": 1000, "enable.idempotence": True})
    dr = Reports()
    with pytest.raises(KafkaException) as ei:
        p.produce("t", b"x" * 2000, on_delivery=dr)
    assert error_code(ei) == KafkaError.MSG_SIZE_TOO_LARGE
    assert "1000" in ei.value.args[0].str()
    assert len(p) == 0
    p.produce("t", b"x" * 100, on_delivery=dr)   # the producer is still usable
    p.flush(5)
    assert dr.errors == [] and dr.got[0][1].offset() == 0


def test_partition_out_of_range_is_unknown_partition(closing, conf):
    p = producer(closing, conf)
    with pytest.raises(KafkaException) as ei:
        p.produce("t", b"x", partition=1)
    assert error_code(ei) == KafkaError._UNKNOWN_PARTITION


def test_produce_after_close_raises_state(conf):
    p = Producer(conf)
    p.close()
    with pytest.raises(KafkaException) as ei:
        p.produce("t", b"x")
    assert error_code(ei) == KafkaError._STATE


def test_unknown_topic_is_created_with_one_partition(closing, conf):
    p = producer(closing, conf)
    dr = Reports()
    p.produce("brand-new", b"x", on_delivery=dr)
    p.flush(5)
    assert dr.errors == []
    admin = AdminClient(conf)
    closing(admin)
    md = admin.list_topics()
    assert "brand-new" in md.topics and len(md.topics["brand-new"].partitions) == 1


# ---------------------------------------------------------------------------
# AdminClient.create_topics
# ---------------------------------------------------------------------------

def test_create_topics_returns_futures(closing, conf):
    admin = AdminClient(conf)
    closing(admin)
    fs = admin.create_topics([NewTopic("orders", num_partitions=3), NewTopic("audit")])
    assert set(fs) == {"orders", "audit"}
    assert all(f.result(1) is None for f in fs.values())
    md = admin.list_topics()
    assert len(md.topics["orders"].partitions) == 3
    assert len(md.topics["audit"].partitions) == 1


def test_create_existing_topic_fails_through_its_future(closing, conf):
    admin = AdminClient(conf)
    closing(admin)
    admin.create_topics([NewTopic("orders", num_partitions=2)])["orders"].result()
    fs = admin.create_topics([NewTopic("orders", num_partitions=5), NewTopic("other")])
    with pytest.raises(KafkaException) as ei:
        fs["orders"].result()
    assert error_code(ei) == KafkaError.TOPIC_ALREADY_EXISTS
    assert fs["other"].result() is None
    assert len(admin.list_topics().topics["orders"].partitions) == 2


@pytest.mark.parametrize("name", ["has space", "slash/y", ".", "..", "x" * 250, "é"])
def test_invalid_topic_names_fail_through_the_future(closing, conf, name):
    admin = AdminClient(conf)
    closing(admin)
    f = admin.create_topics([NewTopic(name, num_partitions=1)])[name]
    assert isinstance(f.exception(), KafkaException)
    assert f.exception().args[0].code() == KafkaError.TOPIC_EXCEPTION
    assert name not in admin.list_topics().topics


def test_invalid_partition_count_fails_through_the_future(closing, conf):
    admin = AdminClient(conf)
    closing(admin)
    f = admin.create_topics([NewTopic("z", num_partitions=0)])["z"]
    assert f.exception().args[0].code() == KafkaError.INVALID_PARTITIONS


def test_validate_only_runs_every_check_and_creates_nothing(closing, conf):
    admin = AdminClient(conf)
    closing(admin)
    admin.create_topics([NewTopic("exists", num_partitions=1)])["exists"].result()
    fs = admin.create_topics([NewTopic("fresh", num_partitions=2), NewTopic("exists"),
                              NewTopic("zero", num_partitions=0), NewTopic("bad name")],
                             validate_only=True)
    assert fs["fresh"].result() is None
    assert fs["exists"].exception().args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert fs["zero"].exception().args[0].code() == KafkaError.INVALID_PARTITIONS
    assert fs["bad name"].exception().args[0].code() == KafkaError.TOPIC_EXCEPTION
    assert set(admin.list_topics().topics) == {"exists"}


# ---------------------------------------------------------------------------
# Partitioner
# ---------------------------------------------------------------------------

def test_keyed_records_land_on_kafkas_murmur2_partition(closing, conf):
    admin = AdminClient(conf)
    closing(admin)
    admin.create_topics([NewTopic("keyed", num_partitions=7)])["keyed"].result()
    p = producer(closing, conf)
    dr = Reports()
    keys = [b"k%d" % i for i in range(300)] + [b"", b"\xff\x00\x80", b"order-12345" * 7]
    for k in keys:
        p.produce("keyed", value=b"v", key=k, on_delivery=dr)
    p.flush(10)
    assert dr.errors == []
    for err, msg in dr.got:
        expected = (kafka_python_murmur2(msg.key()) & 0x7fffffff) % 7
        assert msg.partition() == expected, msg.key()
    assert len({m.partition() for _, m in dr.got}) == 7


def test_keyless_records_spread_over_partitions(closing, conf):
    """Keyless records stick to one partition for a while (librdkafka's
    sticky partitioner: one partition per burst), then move on."""
    admin = AdminClient(conf)
    closing(admin)
    admin.create_topics([NewTopic("spread", num_partitions=4)])["spread"].result()
    p = producer(closing, conf, **{"linger.ms": 1})
    dr = Reports()
    for burst in range(60):
        for i in range(10):
            p.produce("spread", value=b"%d-%d" % (burst, i), on_delivery=dr)
        p.flush(5)
    counts = collections.Counter(m.partition() for _, m in dr.got)
    assert sorted(counts) == [0, 1, 2, 3]
    assert sum(counts.values()) == 600
    assert dr.errors == []


# ---------------------------------------------------------------------------
# linger.ms, purge, compression, read-back
# ---------------------------------------------------------------------------

def test_linger_sender_writes_without_poll(closing, conf):
    p = producer(closing, conf, **{"linger.ms": 50})
    dr = Reports()
    p.produce("t", b"lingered", on_delivery=dr)
    time.sleep(0.4)                              # well past linger.ms; no poll()
    _, records = read_partition(conf, "t", 0)
    assert [r.value for r in records] == [b"lingered"]
    assert dr.got == [] and len(p) == 1          # reports still wait for poll()
    assert p.poll(1) == 1 and dr.got[0][1].offset() == 0


def test_purge_reports_purge_queue_and_leaves_no_sequence_gap(closing, conf):
    p = producer(closing, conf, **{"enable.idempotence": True, "linger.ms": 60000})
    dr = Reports()
    for i in range(2):
        p.produce("t", b"a%d" % i, on_delivery=dr)
    p.flush(5)
    for i in range(5):
        p.produce("t", b"purged%d" % i, on_delivery=dr)
    p.purge()
    assert p.poll(0) == 5
    purged = dr.got[2:]
    assert [e.code() for e, _ in purged] == [KafkaError._PURGE_QUEUE] * 5
    assert all(m.offset() < 0 for _, m in purged)
    assert len(p) == 0

    for i in range(3):
        p.produce("t", b"b%d" % i, on_delivery=dr)
    assert p.flush(5) == 0
    after = dr.got[7:]
    assert [e for e, _ in after] == [None] * 3           # no OUT_OF_ORDER_SEQUENCE
    assert [m.offset() for _, m in after] == [2, 3, 4]
    infos, records = read_partition(conf, "t", 0)
    assert [r.value for r in records] == [b"a0", b"a1", b"b0", b"b1", b"b2"]
    assert [bi.base_sequence for bi in infos] == [0, 2]
    assert len({bi.producer_id for bi in infos}) == 1 and infos[0].producer_id >= 0


def test_flush_without_purge_after_purge_keeps_producer_usable(closing, conf):
    p = producer(closing, conf, **{"enable.idempotence": True})
    p.purge()                                    # nothing queued: a no-op
    assert p.flush(1) == 0


@pytest.mark.parametrize("ctype", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_type_round_trips(closing, conf, ctype):
    p = producer(closing, conf, **{"compression.type": ctype, "enable.idempotence": True,
                                   "linger.ms": 60000})
    dr = Reports()
    values = [(b"record %d " % i) * (1 + i % 7) for i in range(500)]
    for i, v in enumerate(values):
        p.produce("c", value=v, key=b"%d" % i, headers={"i": b"%d" % i}, on_delivery=dr)
    assert p.flush(10) == 0 and dr.errors == []
    infos, records = read_partition(conf, "c", 0)
    assert {bi.compression for bi in infos} == {compression.codec_id(ctype)}
    assert [r.value for r in records] == values
    assert [r.key for r in records] == [b"%d" % i for i in range(500)]
    assert [r.headers for r in records] == [[("i", b"%d" % i)] for i in range(500)]
    assert [r.offset for r in records] == list(range(500))


@pytest.mark.parametrize("idempotent", [True, False])
def test_every_produced_record_read_back_exactly_once(closing, conf, idempotent):
    admin = AdminClient(conf)
    closing(admin)
    admin.create_topics([NewTopic("all", num_partitions=3)])["all"].result()
    p = producer(closing, conf, **{"enable.idempotence": idempotent, "batch.num.messages": 37,
                                   "linger.ms": 2})
    dr = Reports()
    n = 5000
    for i in range(n):
        p.produce("all", value=b"%06d" % i, key=b"key-%d" % (i % 101), on_delivery=dr)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(10) == 0
    assert dr.errors == [] and len(dr.got) == n

    reported = {(m.partition(), m.offset()): m.value() for _, m in dr.got}
    seen = collections.Counter()
    for part in range(3):
        infos, records = read_partition(conf, "all", part)
        assert [r.offset for r in records] == list(range(len(records)))
        for r in records:
            seen[r.value] += 1
            assert reported[(part, r.offset)] == r.value
        if idempotent:
            seqs = [(bi.base_sequence, bi.records_count) for bi in infos]
            assert all(s == prev + cnt for (prev, cnt), (s, _) in zip(seqs, seqs[1:]))
            assert seqs[0][0] == 0
        else:
            assert all(bi.producer_id == -1 and bi.base_sequence == -1 for bi in infos)
    assert set(seen) == {b"%06d" % i for i in range(n)}
    assert set(seen.values()) == {1}


def test_records_survive_close_and_reopen(conf):
    p = Producer({**conf, "enable.idempotence": True, "pylog.fsync": "always"})
    for i in range(10):
        p.produce("durable", b"%d" % i)
    assert p.close() == 0
    _, records = read_partition(conf, "durable", 0)
    assert [r.value for r in records] == [b"%d" % i for i in range(10)]


def test_non_file_bootstrap_servers_gives_a_confluent_kafka_producer():
    import confluent_kafka
    p = Producer({"bootstrap.servers": "127.0.0.1:1", "socket.timeout.ms": 100,
                  "message.timeout.ms": 100})
    assert isinstance(p, confluent_kafka.Producer)


# ---------------------------------------------------------------------------
# Regressions: bugs these tests found in produce()/flush() (fixed in bcf699b)
# ---------------------------------------------------------------------------

# Bug: Sender._take popped a queue's records before counting them in `inflight`;
# a flush() looking in between saw an empty queue, nothing in flight, and
# returned 0 before the records were written.
def test_flush_waits_for_records_the_sender_thread_has_taken(closing, conf):
    class SlowDeque(collections.deque):
        """Widens the window between taking the last record and counting it."""

        def popleft(self):
            x = super().popleft()
            if not self:
                time.sleep(0.3)
            return x

    p = producer(closing, conf, **{"linger.ms": 5})
    p.produce("t", b"first")
    p.flush(5)
    p._queues["t"].dq = SlowDeque()
    p.produce("t", b"second")
    time.sleep(0.1)                  # the sender thread took it and sits in the window
    assert p.flush(5) == 0
    _, records = read_partition(conf, "t", 0)
    assert [r.value for r in records] == [b"first", b"second"]


# Bug: unserved delivery reports did not count toward queue.buffering.max.messages
# (librdkafka counts a message until its report is served), so a producer that
# never polled grew its report queue without bound and never saw BufferError.
def test_unserved_delivery_reports_count_toward_queue_buffering_max_messages(closing, conf):
    p = producer(closing, conf, **{"queue.buffering.max.messages": 3, "linger.ms": 0})
    dr = Reports()
    for i in range(3):
        p.produce("t", b"%d" % i, on_delivery=dr)
    deadline = time.monotonic() + 5
    while len(read_partition(conf, "t", 0)[1]) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(p) == 3 and dr.got == []          # written, reports not yet served
    with pytest.raises(BufferError):
        p.produce("t", b"3", on_delivery=dr)


# Bug: produce()'s short path checked queue.buffering.max.messages against the
# record's own topic queue only; librdkafka's limit is producer-wide.
def test_queue_buffering_max_messages_is_producer_wide(closing, conf):
    p = producer(closing, conf, **{"queue.buffering.max.messages": 5, "linger.ms": 60000})
    for t in ("a", "b"):                         # first records take the slow path
        p.produce(t, b"0")
    with pytest.raises(BufferError):
        for i in range(10):
            p.produce("a" if i % 2 else "b", b"x")
    assert len(p) <= 5


# Bug: produce()'s short path (bare bytes value) never checked
# queue.buffering.max.kbytes.
def test_queue_buffering_max_kbytes_bounds_bare_values(closing, conf):
    p = producer(closing, conf, **{"queue.buffering.max.kbytes": 1, "linger.ms": 60000})
    with pytest.raises(BufferError):
        for i in range(100):
            p.produce("t", b"x" * 100)           # 10 KB into a 1 KB queue
