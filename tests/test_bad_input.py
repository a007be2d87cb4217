"""Producer, Consumer and AdminClient under bad arguments (DESIGN.md,
invariant 6): every call gives a typed error (TypeError, ValueError or a
KafkaException with librdkafka's code) and writes nothing: the partition's
log end is unchanged and no topic or directory appears.
"""
import os

import pytest

from pylog import (Consumer, KafkaError, KafkaException, Producer, TopicPartition,
                   OFFSET_BEGINNING)
from pylog.admin import AdminClient, NewTopic


@pytest.fixture
def conf(tmp_path):
    c = {"bootstrap.servers": "file://" + str(tmp_path / "store")}
    admin = AdminClient(c)
    for f in admin.create_topics([NewTopic("t", num_partitions=2)]).values():
        f.result()
    admin.close()
    return c


def log_ends(conf):
    """{(topic, partition): high watermark} of every partition."""
    c = Consumer({**conf, "group.id": "bad-input-probe", "isolation.level": "read_uncommitted"})
    try:
        topics = c.list_topics().topics
        return {(t, p): c.get_watermark_offsets(TopicPartition(t, p))[1]
                for t in topics for p in topics[t].partitions}
    finally:
        c.close()


def store_entries(conf):
    return sorted(os.listdir(conf["bootstrap.servers"][len("file://"):]))


def code_of(excinfo):
    return excinfo.value.args[0].code()


# ---- Producer.produce ----

BAD_PRODUCE = [
    # (kwargs, expected exception, KafkaError code or None)
    (dict(topic=123, value=b"v"), TypeError, None),
    (dict(topic=None, value=b"v"), TypeError, None),
    (dict(topic=b"t", value=b"v"), TypeError, None),
    (dict(topic="t", value=12), TypeError, None),
    (dict(topic="t", value=["v"]), TypeError, None),
    (dict(topic="t", value={"v": 1}), TypeError, None),
    (dict(topic="t", value=b"v", key=3.5), TypeError, None),
    (dict(topic="t", value=b"v", key=object()), TypeError, None),
    (dict(topic="t", value=b"v", partition="0"), TypeError, None),
    (dict(topic="t", value=b"v", partition=1.0), TypeError, None),
    (dict(topic="t", value=b"v", partition=True), TypeError, None),
    (dict(topic="t", value=b"v", partition=None), TypeError, None),
    (dict(topic="t", value=b"v", partition=-5), KafkaException, KafkaError._UNKNOWN_PARTITION),
    (dict(topic="t", value=b"v", partition=2), KafkaException, KafkaError._UNKNOWN_PARTITION),
    (dict(topic="t", value=b"v", partition=2 ** 31), KafkaException, KafkaError._UNKNOWN_PARTITION),
    (dict(topic="t", value=b"v", partition=2 ** 70), KafkaException, KafkaError._UNKNOWN_PARTITION),
    (dict(topic="t", value=b"v", headers=[("k",)]), TypeError, None),
    (dict(topic="t", value=b"v", headers=[("k", b"v", b"x")]), TypeError, None),
    (dict(topic="t", value=b"v", headers=[("k", 5)]), TypeError, None),
    (dict(topic="t", value=b"v", headers=[(5, b"v")]), TypeError, None),
    (dict(topic="t", value=b"v", headers=[None]), TypeError, None),
    (dict(topic="t", value=b"v", headers=[(None, b"v")]), TypeError, None),
    (dict(topic="t", value=b"v", headers={1: b"v"}), TypeError, None),
    (dict(topic="t", value=b"v", headers=5), TypeError, None),
    (dict(topic="t", value=b"v", headers="kv"), TypeError, None),
    (dict(topic="t", value=b"v", timestamp=-1), KafkaException, KafkaError._INVALID_ARG),
    (dict(topic="t", value=b"v", timestamp="now"), TypeError, None),
    (dict(topic="t", value=b"v", timestamp=1.5), TypeError, None),
    (dict(topic="t", value=b"v", on_delivery=42), TypeError, None),
    (dict(topic="t", value=b"x" * 2_000_000), KafkaException, KafkaError.MSG_SIZE_TOO_LARGE),
    (dict(topic="t", value=b"v", key=b"k" * 2_000_000), KafkaException,
     KafkaError.MSG_SIZE_TOO_LARGE),
    (dict(topic="t", value=b"v", headers=[("h", b"x" * 2_000_000)]), KafkaException,
     KafkaError.MSG_SIZE_TOO_LARGE),
]


@pytest.mark.parametrize("kwargs,exc,code", BAD_PRODUCE,
                         ids=["%d-%s" % (i, "-".join(k for k in kw if k != "topic"))
                              for i, (kw, _, _) in enumerate(BAD_PRODUCE)])
def test_produce_with_bad_arguments_raises_and_writes_nothing(conf, closing, kwargs, exc, code):
    before = log_ends(conf)
    p = Producer({**conf, "linger.ms": 0})
    closing(p)
    p.produce("t", value=b"good", partition=0)        # the queue has company
    with pytest.raises(exc) as ei:
        p.produce(**kwargs)
    if code is not None:
        assert code_of(ei) == code
    assert p.flush(10) == 0
    after = log_ends(conf)
    assert after[("t", 0)] == before[("t", 0)] + 1     # only the good record
    assert after[("t", 1)] == before[("t", 1)]
    assert set(after) == set(before)


INVALID_TOPICS = [".", "..", "a b", "a/b", "../escape", "t\n", "t\x00", "tö", "a" * 250,
                  "a" * 600, "*", "t:1"]


@pytest.mark.parametrize("topic", INVALID_TOPICS, ids=repr)
def test_produce_to_an_invalid_topic_name_creates_nothing(conf, closing, topic):
    before, entries = log_ends(conf), store_entries(conf)
    p = Producer(conf)
    closing(p)
    with pytest.raises(KafkaException) as ei:
        p.produce(topic, value=b"v")
    assert code_of(ei) == KafkaError.TOPIC_EXCEPTION
    assert p.flush(10) == 0
    assert log_ends(conf) == before
    assert store_entries(conf) == entries
    assert not os.path.exists(os.path.join(os.path.dirname(conf["bootstrap.servers"][7:]), "escape"))


def test_empty_topic_name_gives_a_typed_error(conf, closing):
    p = Producer(conf)
    closing(p)
    with pytest.raises(KafkaException) as ei:
        p.produce("", value=b"v")
    assert code_of(ei) == KafkaError.TOPIC_EXCEPTION
    c = consumer(conf, closing)
    with pytest.raises(KafkaException):
        c.assign([TopicPartition("", 0)])


def test_value_and_key_may_be_none_str_or_buffers(conf, closing):
    p = Producer(conf)
    closing(p)
    p.produce("t", value=None, key=None, partition=0)
    p.produce("t", value="text", key="k", partition=0)
    p.produce("t", value=bytearray(b"ba"), key=memoryview(b"mv"), partition=0,
              headers=[("h", None), (b"k", "s")])
    assert p.flush(10) == 0
    assert log_ends(conf)[("t", 0)] == 3


# ---- Producer config and state ----

BAD_PRODUCER_CONF = [
    {"linger.ms": -1}, {"linger.ms": "soon"}, {"batch.size": 0}, {"batch.size": 2 ** 40},
    {"batch.num.messages": "many"}, {"acks": 2}, {"acks": "some"},
    {"enable.idempotence": "maybe"}, {"enable.idempotence": 1.5},
    {"transaction.timeout.ms": 10}, {"message.max.bytes": 10 ** 12},
    {"compression.type": "rar"}, {"queue.buffering.max.messages": -1},
    {"no.such.property": 1}, {"pylog.fsync": "sometimes"}, {"pylog.fsync.interval.ms": 0},
    {"isolation.level": "read_sometimes"},       # a consumer property: ignored, but checked
    {"enable.idempotence": True, "acks": "1"},
    {"on_delivery": "not callable"}, {3: "non-str key"},
]


@pytest.mark.parametrize("extra", BAD_PRODUCER_CONF, ids=lambda e: ",".join(map(str, e)))
def test_producer_config_out_of_range_is_refused(conf, extra):
    with pytest.raises(KafkaException) as ei:
        Producer({**conf, **extra})
    assert code_of(ei) == KafkaError._INVALID_ARG


def test_producer_config_must_be_a_dict_and_name_a_store(tmp_path):
    with pytest.raises((TypeError, ValueError)):
        Producer("bootstrap.servers=file:///tmp/x")
    with pytest.raises(KafkaException) as ei:
        Producer({})
    assert code_of(ei) == KafkaError._INVALID_ARG
    with pytest.raises(KafkaException):
        Producer({"bootstrap.servers": 42})


def test_transactional_calls_out_of_order_raise_state_errors(conf, closing):
    before = log_ends(conf)
    p = Producer({**conf, "transactional.id": "bad-input"})
    closing(p)
    with pytest.raises(KafkaException) as ei:
        p.produce("t", value=b"v", partition=0)          # before init_transactions
    assert code_of(ei) == KafkaError._STATE
    for call in (p.begin_transaction, p.commit_transaction, p.abort_transaction):
        with pytest.raises(KafkaException) as ei:
            call()
        assert code_of(ei) == KafkaError._STATE
    p.init_transactions()
    with pytest.raises(KafkaException) as ei:
        p.init_transactions()
    assert code_of(ei) == KafkaError._STATE
    p.begin_transaction()
    with pytest.raises(KafkaException) as ei:
        p.begin_transaction()
    assert code_of(ei) == KafkaError._STATE
    with pytest.raises(KafkaException) as ei:
        p.send_offsets_to_transaction([TopicPartition("t", 0, 5)], "not-group-metadata")
    assert code_of(ei) == KafkaError._INVALID_ARG
    p.abort_transaction()
    assert log_ends(conf) == before


def test_non_transactional_producer_refuses_the_transaction_api(conf, closing):
    p = Producer(conf)
    closing(p)
    with pytest.raises(KafkaException) as ei:
        p.init_transactions()
    assert code_of(ei) == KafkaError._NOT_CONFIGURED


def test_closed_producer_refuses_produce(conf):
    p = Producer(conf)
    p.close()
    with pytest.raises(KafkaException) as ei:
        p.produce("t", value=b"v", partition=0, key=b"k")
    assert code_of(ei) == KafkaError._STATE


# ---- Consumer ----

def consumer(conf, closing, **extra):
    c = Consumer({**conf, "group.id": "bad-input", "auto.offset.reset": "earliest", **extra})
    closing(c)
    return c


def test_consumer_without_group_id_raises_value_error(conf):
    with pytest.raises(ValueError):
        Consumer(conf)
    with pytest.raises(ValueError):
        Consumer({**conf, "group.id": ""})


BAD_CONSUMER_CONF = [
    {"isolation.level": "read_sometimes"}, {"auto.offset.reset": "sometime"},
    {"max.partition.fetch.bytes": 0}, {"session.timeout.ms": -1},
    {"enable.auto.commit": "perhaps"}, {"fetch.max.bytes": "lots"},
    {"acks": "some"},                            # a producer property: ignored, but checked
    {"group.id": "g\x00"}, {"on_commit": 7},
]


@pytest.mark.parametrize("extra", BAD_CONSUMER_CONF, ids=lambda e: ",".join(map(str, e)))
def test_consumer_config_out_of_range_is_refused(conf, extra):
    with pytest.raises(KafkaException) as ei:
        Consumer({**conf, "group.id": "g", **extra})
    assert code_of(ei) == KafkaError._INVALID_ARG


@pytest.mark.parametrize("partitions,exc,code", [
    ("t", TypeError, None),
    ([("t", 0)], TypeError, None),
    ([TopicPartition("t", 0), "t"], TypeError, None),
    (None, TypeError, None),
    ([TopicPartition("t", 2)], KafkaException, KafkaError._UNKNOWN_PARTITION),
    ([TopicPartition("t", -3)], KafkaException, KafkaError._UNKNOWN_PARTITION),
    ([TopicPartition("t", 2 ** 40)], KafkaException, KafkaError._UNKNOWN_PARTITION),
    ([TopicPartition("missing", 0)], KafkaException, KafkaError.UNKNOWN_TOPIC_OR_PART),
    ([TopicPartition("..", 0)], KafkaException, KafkaError.UNKNOWN_TOPIC_OR_PART),
], ids=["str", "tuples", "mixed", "none", "p2", "negative", "huge", "missing-topic", "dotdot"])
def test_assign_bad_partitions(conf, closing, partitions, exc, code):
    c = consumer(conf, closing)
    entries = store_entries(conf)
    with pytest.raises(exc) as ei:
        c.assign(partitions)
    if code is not None:
        assert code_of(ei) == code
    assert store_entries(conf) == entries


def test_subscribe_bad_arguments(conf, closing):
    c = consumer(conf, closing)
    for topics in ("t", [1], None, [b"t"]):
        with pytest.raises(TypeError):
            c.subscribe(topics)
    with pytest.raises(TypeError):
        c.subscribe(["t"], on_assign=5)


def test_consume_bad_counts_and_offsets(conf, closing):
    c = consumer(conf, closing)
    c.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    for n in (0, -1, 10 ** 7, "5"):
        with pytest.raises(ValueError):
            c.consume(num_messages=n, timeout=0)
    with pytest.raises(KafkaException) as ei:
        c.commit(offsets=[TopicPartition("t", 0, -5)], asynchronous=False)
    assert code_of(ei) == KafkaError._INVALID_ARG
    with pytest.raises(TypeError):
        c.commit(offsets="t:0:5")
    with pytest.raises(KafkaException) as ei:
        c.seek(TopicPartition("t", 1, 0))                 # not assigned
    assert code_of(ei) == KafkaError._STATE
    with pytest.raises(KafkaException) as ei:
        c.get_watermark_offsets(TopicPartition("t", 7))
    assert code_of(ei) == KafkaError._UNKNOWN_PARTITION
    assert c.committed([TopicPartition("t", 0)])[0].offset < 0       # nothing committed


def test_consumer_list_arguments_must_be_lists_of_topic_partitions(conf, closing):
    c = consumer(conf, closing)
    c.assign([TopicPartition("t", 0, 0)])
    for call in (c.position, c.committed, c.pause, c.resume, c.offsets_for_times,
                 c.incremental_assign, c.incremental_unassign):
        for arg in (None, "t", [("t", 0)]):
            with pytest.raises(TypeError):
                call(arg)
    for bad in ((None, 0), ("t", "0"), ("t", 0.5)):
        with pytest.raises(TypeError):
            c.assign([TopicPartition(*bad)])
    for timeout in ("1", [1]):
        with pytest.raises(TypeError):
            c.poll(timeout)


@pytest.mark.parametrize("call", ["seek", "get_watermark_offsets", "store_offsets", "commit"])
def test_consumer_single_argument_of_the_wrong_type_raises_type_error(conf, closing, call):
    c = consumer(conf, closing)
    c.assign([TopicPartition("t", 0, 0)])
    bad = {"seek": lambda: c.seek(("t", 0, 0)),
           "get_watermark_offsets": lambda: c.get_watermark_offsets(None),
           "store_offsets": lambda: c.store_offsets(offsets=[("t", 0, 1)]),
           "commit": lambda: c.commit(message="t:0:1")}[call]
    with pytest.raises(TypeError):
        bad()


def test_closed_consumer_raises_runtime_error(conf):
    c = Consumer({**conf, "group.id": "g"})
    c.close()
    for call in (lambda: c.poll(0), lambda: c.assign([TopicPartition("t", 0)]),
                 lambda: c.commit(), lambda: c.subscribe(["t"])):
        with pytest.raises(RuntimeError):
            call()
    c.close()                                             # idempotent


# ---- AdminClient ----

@pytest.mark.parametrize("topic", INVALID_TOPICS, ids=repr)
def test_create_topic_with_an_invalid_name_fails_its_future(conf, closing, topic):
    entries = store_entries(conf)
    admin = AdminClient(conf)
    closing(admin)
    fut = admin.create_topics([NewTopic(topic, num_partitions=1)])[topic]
    with pytest.raises(KafkaException) as ei:
        fut.result()
    assert code_of(ei) == KafkaError.TOPIC_EXCEPTION
    assert topic not in admin.list_topics().topics
    assert store_entries(conf) == entries


@pytest.mark.parametrize("partitions", [0, -5, 100001, 2 ** 40, "3", 2.0, None, True])
def test_create_topic_with_bad_partition_counts(conf, closing, partitions):
    admin = AdminClient(conf)
    closing(admin)
    with pytest.raises(KafkaException) as ei:
        admin.create_topics([NewTopic("n", num_partitions=partitions)])["n"].result()
    assert code_of(ei) == KafkaError.INVALID_PARTITIONS
    assert "n" not in admin.list_topics().topics


@pytest.mark.parametrize("config", [{"segment.bytes": "big"}, {"segment.bytes": 1},
                                    {"segment.bytes": 2 ** 40}, {"retention.ms": -2},
                                    {"cleanup.policy": "shred"}, {"no.such.config": 1},
                                    {"message.timestamp.type": "Whenever"}])
def test_create_topic_with_bad_config(conf, closing, config):
    admin = AdminClient(conf)
    closing(admin)
    with pytest.raises(KafkaException) as ei:
        admin.create_topics([NewTopic("n", num_partitions=1, config=config)])["n"].result()
    assert code_of(ei) == KafkaError.INVALID_CONFIG
    assert "n" not in admin.list_topics().topics


def test_create_topics_bad_argument_shapes(conf, closing):
    admin = AdminClient(conf)
    closing(admin)
    for arg in ("t", NewTopic("t2", 1), [("t2", 1)], None):
        with pytest.raises(TypeError):
            admin.create_topics(arg)
    with pytest.raises((TypeError, ValueError)):
        NewTopic("t3", 1, config="segment.bytes=100")
    assert set(admin.list_topics().topics) == {"t"}


def test_existing_topic_is_not_recreated(conf, closing):
    before = log_ends(conf)
    admin = AdminClient(conf)
    closing(admin)
    with pytest.raises(KafkaException) as ei:
        admin.create_topics([NewTopic("t", num_partitions=5)])["t"].result()
    assert code_of(ei) == KafkaError.TOPIC_ALREADY_EXISTS
    assert len(admin.list_topics().topics["t"].partitions) == 2
    assert log_ends(conf) == before


def test_admin_config_is_validated(conf):
    with pytest.raises(KafkaException) as ei:
        AdminClient({**conf, "no.such.property": 1})
    assert code_of(ei) == KafkaError._INVALID_ARG


# ---- record counts read from disk: bounded before allocation ----
#
# A records region may decompress to 128 MiB, and a record takes at least 7
# bytes of it: 19 million records from 12 KiB of zstd.  Decoding allocates
# per record (8 int64 positions, then Python objects), so the record count
# must be bounded by more than the bytes: pylog refuses a batch of over
# _bridge.MAX_BATCH_RECORDS records (what its producer's batch.num.messages
# allows at most) with CorruptRecordError, before allocating for it.

def crafted_batch(region_bytes):
    """A zstd batch whose records region is region_bytes of minimal records
    (7 bytes each: no key, no value, no headers), with a valid CRC."""
    from pylog import _bridge, compression
    n = region_bytes // 7
    packed = compression.compress(compression.ZSTD, bytes([0x0c, 0, 0, 0, 1, 1, 0]) * n)
    buf = bytearray(61 + len(packed))
    buf[61:] = packed
    _bridge.write_header(buf, 0, compression.ZSTD, n - 1, 1000, 1000, -1, -1, -1, n)
    return bytes(buf), n


def decode_crafted_child(path, how):
    """Decode the batch in path through `how`; (outcome, peak RSS in MiB).
    Address space capped at 2 GiB: a regression fails here, not the machine."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from pylog import _bridge, codec
    from pylog.errors import CorruptRecordError
    with open(path, "rb") as f:
        batch = f.read()
    try:
        if how == "codec":
            found, _, _ = _bridge.scan(batch, 0x7FFFFFFF, True)
            outcome = "decoded %d" % len(codec.decode_batch(batch, found[0]))
        else:
            outcome = consume_crafted(batch, how)
    except CorruptRecordError as e:
        outcome = "CorruptRecordError: " + e.args[0].str()
    except MemoryError:
        outcome = "MemoryError"
    return outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def consume_crafted(batch, how):
    import tempfile
    import pylog.consumer
    from pylog.store import Store
    if how == "consumer-python":
        pylog.consumer._decode_messages = None          # the fallback: _bridge.decode_records
    store = tempfile.mkdtemp()
    conf = {"bootstrap.servers": "file://" + store}
    AdminClient(conf).create_topics([NewTopic("t", 1)])["t"].result()
    s = Store.acquire(store)
    try:
        s.partition("t", 0).append([batch])
    finally:
        s.release()
    c = Consumer({**conf, "group.id": "g", "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition("t", 0, 0)])
        got = c.consume(10, 5.0)
        return "consumed %d" % len(got)
    finally:
        c.close()


@pytest.fixture(scope="module")
def crafted_128mib(tmp_path_factory):
    batch, n = crafted_batch(128 << 20)
    assert len(batch) < 64 << 10 and n > 19000000
    path = tmp_path_factory.mktemp("crafted") / "batch"
    path.write_bytes(batch)
    return str(path)


@pytest.mark.parametrize("how", ["codec", "consumer-python"])
def test_batch_of_millions_of_tiny_records_is_refused_before_allocation(crafted_128mib, how):
    from pylog import testing
    r = testing.run_in_child(decode_crafted_child, crafted_128mib, how, timeout=120)
    assert r.ok, r.error
    outcome, peak_mib = r.value
    assert outcome.startswith("CorruptRecordError: batch of 19173961 records is over")
    # The decompressed region (128 MiB, copied once on the way) and the
    # interpreter: about 300 MiB; not 8 int64 and a Message per record
    # (without the bound: MemoryError at the 2 GiB cap).
    assert peak_mib < 450, outcome


def test_batch_of_millions_of_tiny_records_is_refused_by_the_c_message_decoder(tmp_path):
    import pylog.consumer
    if getattr(pylog.consumer, "_decode_messages", None) is None:
        pytest.skip("the consumer decodes without pylog._fastmsg here")
    from pylog import testing
    batch, n = crafted_batch(24 << 20)              # 3.6 million records: ~600 MiB of Messages
    path = tmp_path / "batch"
    path.write_bytes(batch)
    r = testing.run_in_child(decode_crafted_child, str(path), "consumer", timeout=120)
    assert r.ok, r.error
    outcome, peak_mib = r.value
    assert outcome.startswith("CorruptRecordError: batch of %d records is over" % n)
    assert peak_mib < 450, outcome


def test_record_count_limit_is_what_the_producer_can_write():
    from pylog import _bridge
    from pylog.config import _PRODUCER
    assert _PRODUCER["batch.num.messages"][3] == _bridge.MAX_BATCH_RECORDS


def test_header_count_over_the_limit_is_refused_before_allocation():
    from pylog import _bridge
    from pylog.errors import CorruptRecordError
    n = _bridge.MAX_RECORD_HEADERS + 1
    with pytest.raises(CorruptRecordError, match="headers is over"):
        _bridge.decode_headers(bytes([0, 1]) * n, n)     # n empty keys with null values
    assert len(_bridge.decode_headers(bytes([0, 1]) * 3, 3)) == 3
