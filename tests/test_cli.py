"""The pylog command line (pylog.cli): every subcommand, its Kafka-shaped
output, and the one-line error path.

Most tests call pylog.cli.main(argv) in-process (fast); a few run
`python -m pylog` as a subprocess to check the real entry point, stdin and
that no traceback escapes.  Each test has its own store under tmp_path.
"""
import io
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from pylog import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from pylog import cli, codec, metrics
from pylog.store import Store

TS = 1700000000000


# ---- helpers ----
@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    assert cli.main(["--store", path, "topics", "--create", "--topic", "orders",
                     "--partitions", "2"]) == 0
    return path


def run(capsys, *argv, stdin=None, monkeypatch=None):
    """(exit status, stdout, stderr) of pylog.cli.main(argv)."""
    capsys.readouterr()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def sh(path, *argv, stdin=b"", env=None):
    """Run `python -m pylog` with PYLOG_STORE=path; returns CompletedProcess (bytes)."""
    e = dict(os.environ, PYLOG_STORE=str(path), **(env or {}))
    return subprocess.run([sys.executable, "-m", "pylog"] + [str(a) for a in argv], input=stdin,
                          capture_output=True, env=e, timeout=60)


def conf(path, **extra):
    return dict({"bootstrap.servers": "file://" + str(path)}, **extra)


def read(path, topic, partitions=(0, 1), isolation="read_uncommitted"):
    """[(partition, offset, key, value, headers)] of everything in topic."""
    c = Consumer(conf(path, **{"group.id": "test-reader", "isolation.level": isolation,
                               "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out, idle = [], time.monotonic()
        while time.monotonic() - idle < 0.3:
            for m in c.consume(100, 0.05):
                assert m.error() is None, m.error()
                out.append((m.partition(), m.offset(), m.key(), m.value(), m.headers()))
                idle = time.monotonic()
        return sorted(out)
    finally:
        c.close()


def produce(path, topic, values, partition=0, **extra):
    p = Producer(conf(path, **extra))
    for v in values:
        p.produce(topic, v, partition=partition, timestamp=TS)
    p.flush()
    p.close()


def commit(path, group, topic, partition, offset):
    c = Consumer(conf(path, **{"group.id": group, "enable.auto.commit": False}))
    c.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
    c.close()


def append_raw(path, topic, partition, batches):
    s = Store.acquire(path)
    try:
        return s.partition(topic, partition).append(batches)
    finally:
        s.release()


def hanging_batch(pid=99, epoch=3, value=b"hang"):
    """A transactional batch from a producer id no transactional.id owns."""
    return codec.encode_batch([(TS, b"k", value, None)], producer_id=pid, producer_epoch=epoch,
                              base_sequence=0, transactional=True)


# ---- topics ----
def test_topics_create_list_describe_print_kafka_lines(store, capsys):
    assert run(capsys, "--store", store, "topics", "--create", "--topic", "payments",
               "--partitions", "3", "--config", "segment.bytes=100000")[1] == "Created topic payments.\n"
    rc, out, _ = run(capsys, "--store", store, "topics", "--list")
    assert (rc, out) == (0, "orders\npayments\n")
    rc, out, _ = run(capsys, "topics", "--describe", "--topic", "payments", "--store", store)
    lines = out.splitlines()
    assert lines[0].startswith("Topic: payments\tTopicId: ")
    assert lines[0].endswith("\tPartitionCount: 3\tReplicationFactor: 1\tConfigs: segment.bytes=100000")
    assert lines[1:] == ["\tTopic: payments\tPartition: %d\tLeader: 0\tReplicas: 0\tIsr: 0" % p
                         for p in range(3)]


def test_topics_create_existing_fails_unless_if_not_exists(store, capsys):
    rc, out, err = run(capsys, "--store", store, "topics", "--create", "--topic", "orders")
    assert rc == 1 and err == "Error: Topic 'orders' already exists.\n"
    assert run(capsys, "--store", store, "topics", "--create", "--topic", "orders",
               "--if-not-exists")[:2] == (0, "")


def test_topics_alter_increases_partitions_and_refuses_a_decrease(store, capsys):
    rc, _, err = run(capsys, "--store", store, "topics", "--alter", "--topic", "orders",
                     "--partitions", "1")
    assert rc == 1
    assert err == "Error: The topic orders currently has 2 partition(s); 1 would not be an increase.\n"
    assert run(capsys, "--store", store, "topics", "--alter", "--topic", "orders",
               "--partitions", "4")[0] == 0
    produce(store, "orders", [b"x"], partition=3)
    assert read(store, "orders", partitions=(3,))[0][3] == b"x"


def test_topics_alter_sets_and_removes_configs(store, capsys):
    assert run(capsys, "--store", store, "topics", "--alter", "--topic", "orders",
               "--config", "retention.ms=1000", "--config", "cleanup.policy=compact")[0] == 0
    s = Store.acquire(store)
    try:
        assert s.topic("orders")["config"] == {"retention.ms": 1000, "cleanup.policy": "compact"}
    finally:
        s.release()
    run(capsys, "--store", store, "topics", "--alter", "--topic", "orders",
        "--delete-config", "retention.ms")
    out = run(capsys, "--store", store, "topics", "--describe", "--topic", "orders")[1]
    assert "Configs: cleanup.policy=compact\n" in out
    rc, _, err = run(capsys, "--store", store, "topics", "--alter", "--topic", "orders",
                     "--config", "nonsense=1")
    assert rc == 1 and err == "Error: Unknown topic config name: nonsense\n"


def test_topics_delete_removes_record_dirs_offsets_and_producer_state(store, capsys):
    produce(store, "orders", [b"a", b"b"], **{"enable.idempotence": True})
    commit(store, "g", "orders", 0, 2)
    assert os.path.isdir(os.path.join(store, "orders-0"))
    assert run(capsys, "--store", store, "topics", "--delete", "--topic", "orders")[:2] == (0, "")
    assert not os.path.exists(os.path.join(store, "orders-0"))
    assert run(capsys, "--store", store, "topics", "--list")[1] == ""
    assert run(capsys, "--store", store, "consumer-groups", "--list")[1] == ""
    # The same name again starts from nothing: no offsets, no producer state.
    run(capsys, "--store", store, "topics", "--create", "--topic", "orders")
    assert read(store, "orders", partitions=(0,)) == []
    out = run(capsys, "--store", store, "transactions", "describe-producers", "--topic", "orders",
              "--partition", "0")[1]
    assert out.splitlines()[1:] == []


def test_topics_delete_refused_while_another_process_has_the_topic_open(store, capsys):
    produce(store, "orders", [b"a"])
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pylog.store import Store; "
         "s = Store.acquire(sys.argv[1]); s.partition('orders', 0); print('ready', flush=True); "
         "sys.stdin.read()", store], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        rc, _, err = run(capsys, "--store", store, "topics", "--delete", "--topic", "orders")
        assert rc == 1 and "is in use by process(es) %d" % child.pid in err
    finally:
        child.communicate(b"", timeout=30)
    assert run(capsys, "--store", store, "topics", "--delete", "--topic", "orders")[0] == 0


def test_topics_delete_refused_during_an_unfinished_transaction(store, capsys):
    p = Producer(conf(store, **{"transactional.id": "t1"}))
    p.init_transactions()
    p.begin_transaction()
    p.produce("orders", b"x", partition=0)
    p.flush()
    try:
        rc, _, err = run(capsys, "--store", store, "topics", "--delete", "--topic", "orders")
        assert rc == 1 and "unfinished transaction (transactional.id 't1', state Ongoing)" in err
    finally:
        p.abort_transaction()
        p.close()


# ---- console-producer ----
def test_console_producer_parses_keys_headers_and_null_marker(store, capsys, monkeypatch):
    lines = b"h1:a,h2:NULL\tk1\tv1\nNULL\tk2\tNULL\n"
    rc, _, err = run(capsys, "--store", store, "console-producer", "--topic", "orders",
                     "--property", "parse.key=true", "--property", "parse.headers=true",
                     "--property", "null.marker=NULL", "--producer-property", "linger.ms=0",
                     stdin=lines, monkeypatch=monkeypatch)
    assert (rc, err) == (0, "")
    got = [(k, v, h) for _, _, k, v, h in read(store, "orders")]
    assert sorted(got, key=repr) == sorted([(b"k1", b"v1", [("h1", b"a"), ("h2", None)]),
                                            (b"k2", None, None)], key=repr)


def test_console_producer_sends_stdin_as_one_transaction(store, capsys, monkeypatch):
    rc, _, _ = run(capsys, "--store", store, "console-producer", "--topic", "orders",
                   "--transactional-id", "loader", stdin=b"a\nb\nc\n", monkeypatch=monkeypatch)
    assert rc == 0
    assert len(read(store, "orders", isolation="read_committed")) == 3
    out = run(capsys, "--store", store, "transactions", "list")[1]
    assert out.splitlines()[1].split() == ["loader", "0", "1000", "CompleteCommit"]


def test_console_producer_bad_line_aborts_the_transaction(store, capsys, monkeypatch):
    rc, out, err = run(capsys, "--store", store, "console-producer", "--topic", "orders",
                       "--transactional-id", "loader", "--property", "parse.key=true",
                       stdin=b"k\tv\nno separator\n", monkeypatch=monkeypatch)
    assert rc == 1
    assert err == "Error: No key separator found on line number 2: 'no separator'\n"
    assert read(store, "orders", isolation="read_committed") == []


def test_console_producer_refuses_conflicting_reader_properties(store, capsys, monkeypatch):
    rc, _, err = run(capsys, "--store", store, "console-producer", "--topic", "orders",
                     "--property", "null.marker=\t", stdin=b"", monkeypatch=monkeypatch)
    assert rc == 1 and err == "Error: null.marker and key.separator may not be equal\n"


def test_console_producer_passes_non_utf8_bytes_through(store, capsys, monkeypatch):
    run(capsys, "--store", store, "console-producer", "--topic", "orders",
        stdin=b"\xff\xfe bin\r\nplain\n", monkeypatch=monkeypatch)
    assert sorted(v for _, _, _, v, _ in read(store, "orders")) == [b"plain", b"\xff\xfe bin"]


# ---- console-consumer ----
def test_console_consumer_prints_formatter_properties(store, capsysbinary):
    p = Producer(conf(store))
    p.produce("orders", b"v1", key=b"k1", partition=1, timestamp=TS, headers=[("h", b"1")])
    p.produce("orders", None, key=None, partition=1, timestamp=TS + 1)
    p.flush()
    p.close()
    capsysbinary.readouterr()
    rc = cli.main(["--store", store, "console-consumer", "--topic", "orders", "--from-beginning",
                   "--timeout-ms", "300", "--property", "print.key=true", "--property",
                   "print.timestamp=true", "--property", "print.partition=true", "--property",
                   "print.offset=true", "--property", "print.headers=true", "--property",
                   "key.separator=|", "--property", "null.literal=<null>"])
    out, err = capsysbinary.readouterr()
    assert rc == 0
    assert out == (b"CreateTime:1700000000000|Partition:1|Offset:0|h:1|k1|v1\n"
                   b"CreateTime:1700000000001|Partition:1|Offset:1|NO_HEADERS|<null>|<null>\n")
    assert err == b"Processed a total of 2 messages\n"


def test_console_consumer_reads_from_a_partition_offset_up_to_max_messages(store, capsys):
    produce(store, "orders", [b"a", b"b", b"c", b"d"])
    rc, out, err = run(capsys, "--store", store, "console-consumer", "--topic", "orders",
                       "--partition", "0", "--offset", "1", "--max-messages", "2",
                       "--property", "print.value=false", "--property", "print.offset=true")
    assert (rc, out, err) == (0, "Offset:1\nOffset:2\n", "Processed a total of 2 messages\n")


def test_console_consumer_with_group_commits_its_position(store, capsys):
    produce(store, "orders", [b"a", b"b", b"c"])
    rc, out, _ = run(capsys, "--store", store, "console-consumer", "--topic", "orders",
                     "--group", "readers", "--from-beginning", "--max-messages", "3")
    assert (rc, out) == (0, "a\nb\nc\n")
    out = run(capsys, "--store", store, "consumer-groups", "--describe", "--group", "readers")[1]
    row = [line.split() for line in out.splitlines() if line.startswith("readers")]
    assert ["readers", "orders", "0", "3", "3", "0", "-", "-", "-"] in row


def test_console_consumer_read_committed_stops_at_an_open_transaction(store, capsys):
    produce(store, "orders", [b"before"])
    append_raw(store, "orders", 0, [hanging_batch()])
    produce(store, "orders", [b"after"])
    args = ["--store", store, "console-consumer", "--topic", "orders", "--partition", "0",
            "--offset", "earliest", "--timeout-ms", "200"]
    assert run(capsys, *args)[1] == "before\nhang\nafter\n"
    assert run(capsys, *args, "--isolation-level", "read_committed")[1] == "before\n"


@pytest.mark.parametrize("argv, message", [
    (["--offset", "3"], "The partition is required when offset is specified."),
    (["--partition", "0", "--offset", "1", "--from-beginning"],
     "Options from-beginning and offset cannot be specified together."),
    (["--partition", "0", "--group", "g"], "Options group and partition cannot be specified together."),
    (["--partition", "0", "--offset", "-4"], "The provided offset value '-4' is incorrect. Valid "
     "values are 'earliest', 'latest', or a non-negative long."),
])
def test_console_consumer_refuses_conflicting_options(store, capsys, argv, message):
    rc, out, err = run(capsys, "--store", store, "console-consumer", "--topic", "orders", *argv)
    assert (rc, out, err) == (1, "", "Error: %s\n" % message)


# ---- consumer-groups ----
def test_consumer_groups_list_and_describe_show_lag(store, capsys):
    produce(store, "orders", [b"a", b"b", b"c"])
    commit(store, "billing", "orders", 0, 1)
    assert run(capsys, "--store", store, "consumer-groups", "--list")[1] == "billing\n"
    rc, out, err = run(capsys, "--store", store, "consumer-groups", "--describe", "--group", "billing")
    assert rc == 0 and err == "\nConsumer group 'billing' has no active members.\n"
    lines = out.split("\n")
    assert lines[0] == ""
    assert lines[1].split() == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET",
                                "LAG", "CONSUMER-ID", "HOST", "CLIENT-ID"]
    assert lines[1].startswith("GROUP           TOPIC           PARTITION  CURRENT-OFFSET  ")
    assert lines[2].split() == ["billing", "orders", "0", "1", "3", "2", "-", "-", "-"]


def test_consumer_groups_describe_shows_active_members(store, capsys):
    c = Consumer(conf(store, **{"group.id": "live", "auto.offset.reset": "earliest"}))
    c.subscribe(["orders"])
    try:
        deadline = time.monotonic() + 10
        while not c.assignment() and time.monotonic() < deadline:
            c.poll(0.05)
        rc, out, err = run(capsys, "--store", store, "consumer-groups", "--describe", "--group", "live")
        rows = [line.split() for line in out.splitlines() if line.startswith("live")]
        assert rc == 0 and err == ""
        assert [r[:3] for r in rows] == [["live", "orders", "0"], ["live", "orders", "1"]]
        assert rows[0][6].startswith("pylog-%d-" % os.getpid()) and rows[0][7] == "/pid:%d" % os.getpid()
        rc, _, err = run(capsys, "--store", store, "consumer-groups", "--reset-offsets", "--group",
                         "live", "--all-topics", "--to-earliest", "--execute")
        assert rc == 1 and err == ("Error: Assignments can only be reset if the group 'live' is "
                                   "inactive, but the current state is Stable.\n")
    finally:
        c.close()


def test_consumer_groups_reset_offsets_dry_run_then_execute(store, capsys):
    produce(store, "orders", [b"a", b"b", b"c", b"d"])
    p = Producer(conf(store))
    for i, v in enumerate([b"x", b"y"]):
        p.produce("orders", v, partition=1, timestamp=TS + 1000 * i)
    p.flush()
    p.close()
    commit(store, "g", "orders", 0, 3)
    commit(store, "g", "orders", 1, 2)
    base = ["--store", store, "consumer-groups", "--reset-offsets", "--group", "g"]
    rc, out, err = run(capsys, *base, "--topic", "orders", "--to-earliest")
    assert rc == 0 and err.startswith("WARN: No action will be performed")
    assert out == ("\nGROUP           TOPIC           PARTITION  NEW-OFFSET"
                   "\ng               orders          0          0"
                   "\ng               orders          1          0\n")

    def committed():
        s = Store.acquire(store)
        try:
            return {k: v["offset"] for k, v in s.meta.view(lambda t: s.meta.group_offsets(t, "g")).items()}
        finally:
            s.release()
    assert committed() == {("orders", 0): 3, ("orders", 1): 2}
    run(capsys, *base, "--all-topics", "--shift-by", "-2", "--execute")
    assert committed() == {("orders", 0): 1, ("orders", 1): 0}
    rc, _, err = run(capsys, *base, "--topic", "orders:0", "--to-offset", "99", "--execute")
    assert "New offset (99) is higher than latest offset for topic partition orders-0. Value will " \
           "be set to 4." in err
    assert committed()[("orders", 0)] == 4
    run(capsys, *base, "--topic", "orders:1", "--to-datetime",
        time.strftime("%Y-%m-%dT%H:%M:%S.500", time.localtime((TS + 500) / 1000)), "--execute")
    assert committed()[("orders", 1)] == 1
    run(capsys, *base, "--topic", "orders", "--to-latest", "--execute")
    assert committed() == {("orders", 0): 4, ("orders", 1): 2}
    rc, _, err = run(capsys, *base, "--topic", "orders", "--to-datetime", "yesterday")
    assert rc == 1 and err.startswith("Error: Error parsing datetime 'yesterday'")


def test_consumer_groups_delete(store, capsys):
    commit(store, "old", "orders", 0, 0)
    rc, out, _ = run(capsys, "--store", store, "consumer-groups", "--delete", "--group", "old")
    assert (rc, out) == (0, "Deletion of requested consumer groups ('old') was successful.\n")
    assert run(capsys, "--store", store, "consumer-groups", "--list")[1] == ""
    rc, _, err = run(capsys, "--store", store, "consumer-groups", "--delete", "--group", "old")
    assert rc == 1 and "GroupIdNotFoundException" in err


# ---- transactions ----
def test_transactions_list_describe_and_describe_producers_show_an_open_transaction(store, capsys):
    p = Producer(conf(store, **{"transactional.id": "writer"}))
    p.init_transactions()
    p.begin_transaction()
    p.produce("orders", b"x", partition=1, timestamp=TS)
    p.flush()
    try:
        out = run(capsys, "--store", store, "transactions", "list")[1].splitlines()
        assert out[0] == "TransactionalId\tCoordinator\tProducerId\tTransactionState\t"
        assert out[1].split() == ["writer", "0", "1000", "Ongoing"]
        out = run(capsys, "--store", store, "transactions", "describe", "--transactional-id",
                  "writer")[1].splitlines()
        assert out[0].split() == ["CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch",
                                  "TransactionState", "TransactionTimeoutMs",
                                  "CurrentTransactionStartTimeMs", "TransactionDurationMs",
                                  "TopicPartitions"]
        row = out[1].split()
        assert row[:6] == ["0", "writer", "1000", "0", "Ongoing", "60000"] and row[8] == "orders-1"
        out = run(capsys, "--store", store, "transactions", "describe-producers", "--topic",
                  "orders", "--partition", "1")[1].splitlines()
        assert out[1].split() == ["1000", "0", "0", "0", str(TS), "0"]
        rc, _, err = run(capsys, "--store", store, "transactions", "describe", "--transactional-id", "x")
        assert rc == 1 and "TransactionalIdNotFoundException" in err
    finally:
        p.abort_transaction()
        p.close()


def test_transactions_find_hanging_and_abort_by_start_offset(store, capsys):
    produce(store, "orders", [b"a"])
    append_raw(store, "orders", 0, [hanging_batch()])
    out = run(capsys, "--store", store, "transactions", "find-hanging")[1].splitlines()
    assert out[0].split() == ["Topic", "Partition", "ProducerId", "ProducerEpoch", "CoordinatorEpoch",
                              "StartOffset", "LastTimestamp", "Duration(min)"]
    assert out[1].split()[:7] == ["orders", "0", "99", "3", "0", "1", str(TS)]
    rc, _, err = run(capsys, "--store", store, "transactions", "abort", "--topic", "orders",
                     "--partition", "0", "--start-offset", "0")
    assert rc == 1
    assert err == "Error: Could not find any open transactions starting at offset 0 on partition orders-0\n"
    assert run(capsys, "--store", store, "transactions", "abort", "--topic", "orders",
               "--partition", "0", "--start-offset", "1")[:2] == (0, "")
    assert run(capsys, "--store", store, "transactions", "find-hanging")[1].count("\n") == 1
    stats = json.loads(run(capsys, "--store", store, "stats", "--json")[1])
    p0 = [p for p in stats["partitions"] if p["partition"] == 0][0]
    assert (p0["high_watermark"], p0["last_stable_offset"], p0["open_transactions"]) == (3, 3, 0)
    assert read(store, "orders", isolation="read_committed")[0][3] == b"a"
    assert len(read(store, "orders", isolation="read_committed")) == 1


def test_transactions_abort_by_start_offset_refuses_a_live_transaction(store, capsys):
    p = Producer(conf(store, **{"transactional.id": "w"}))
    p.init_transactions()
    p.begin_transaction()
    p.produce("orders", b"x", partition=0)
    p.flush()
    try:
        assert run(capsys, "--store", store, "transactions", "find-hanging")[1].count("\n") == 1
        rc, _, err = run(capsys, "--store", store, "transactions", "abort", "--topic", "orders",
                         "--partition", "0", "--start-offset", "0")
        assert rc == 1 and "it is not hanging. Use 'abort --transactional-id w'" in err
    finally:
        p.abort_transaction()
        p.close()


def test_transactions_abort_by_transactional_id_fences_the_owner(store, capsys):
    p = Producer(conf(store, **{"transactional.id": "w"}))
    p.init_transactions()
    p.begin_transaction()
    p.produce("orders", b"x", partition=0)
    p.flush()
    rc, out, _ = run(capsys, "--store", store, "transactions", "abort", "--transactional-id", "w")
    assert rc == 0 and out == ("Aborted the transaction of transactional-id 'w' (producer 1000, "
                               "epoch 0 -> 1); markers written to: orders-0\n")
    with pytest.raises(Exception):
        p.commit_transaction()
    p.close()
    assert read(store, "orders", isolation="read_committed") == []
    out = run(capsys, "--store", store, "dump-log", "--aborted-index", "--topic", "orders",
              "--partition", "0")[1]
    assert "version: 0 producerId: 1000 firstOffset: 0 lastOffset: 1 " in out


# ---- dump-log ----
def _seg(store, topic="orders", partition=0, suffix=".log", base=0):
    return os.path.join(store, "%s-%d" % (topic, partition), "%020d%s" % (base, suffix))


def test_dump_log_prints_batches_records_and_markers(store, capsys):
    p = Producer(conf(store, **{"transactional.id": "t"}))
    p.init_transactions()
    p.begin_transaction()
    now = int(time.time() * 1000)       # the marker's too: an old TS would roll a segment (segment.ms)
    p.produce("orders", b"abc", key=b"k", partition=0, timestamp=now, headers=[("h1", b"x")])
    p.produce("orders", b"de", partition=0, timestamp=now)
    p.commit_transaction()
    p.close()
    rc, out, err = run(capsys, "--store", store, "dump-log", "--files", _seg(store), "--print-data-log")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[:2] == ["Dumping " + _seg(store), "Log starting offset: 0"]
    assert lines[2].startswith(
        "baseOffset: 0 lastOffset: 1 count: 2 baseSequence: 0 lastSequence: 1 producerId: 1000 "
        "producerEpoch: 0 partitionLeaderEpoch: 0 isTransactional: true isControl: false "
        "deleteHorizonMs: OptionalLong.empty position: 0 CreateTime: %d size: " % now)
    assert lines[2].endswith(" magic: 2 compresscodec: none crc: %d isvalid: true"
                             % codec.scan(open(_seg(store), "rb").read())[0][0].crc)
    assert lines[3] == ("| offset: 0 CreateTime: %d keySize: 1 valueSize: 3 sequence: 0 "
                        "headerKeys: [h1] key: k payload: abc" % now)
    assert lines[4] == ("| offset: 1 CreateTime: %d keySize: -1 valueSize: 2 sequence: 1 "
                        "headerKeys: [] payload: de" % now)
    assert "isTransactional: true isControl: true" in lines[5]
    assert lines[6].startswith("| offset: 2 CreateTime: ") and lines[6].endswith(
        " keySize: 4 valueSize: 6 sequence: -1 headerKeys: [] endTxnMarker: COMMIT coordinatorEpoch: 0")
    shallow = run(capsys, "--store", store, "dump-log", "--files", _seg(store))[1].splitlines()
    assert len(shallow) == 4 and not any(line.startswith("|") for line in shallow)


def _fill(store, n=40, size=300):
    """n one-record batches of `size` bytes at increasing timestamps: index entries every ~4 KiB."""
    append_raw(store, "orders", 0, [codec.encode_batch([(TS + i, None, bytes([65 + i % 26]) * size,
                                                         None)]) for i in range(n)])


def test_dump_log_prints_and_verifies_indexes(store, capsys):
    _fill(store)
    idx, tidx = _seg(store, suffix=".index"), _seg(store, suffix=".timeindex")
    rc, out, err = run(capsys, "--store", store, "dump-log", "--files", "%s,%s" % (idx, tidx))
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Dumping " + idx and lines[1].startswith("offset: ")
    offset, position = int(lines[1].split()[1]), int(lines[1].split()[3])
    assert position > 0 and offset > 0
    t = lines.index("Dumping " + tidx)
    assert lines[t + 1] == "timestamp: %d offset: %d" % (TS + offset - 1, offset)
    assert run(capsys, "dump-log", "--files", idx, tidx, "--verify-index-only")[1] == \
        "Dumping %s\nDumping %s\n" % (idx, tidx)
    rc, out, _ = run(capsys, "dump-log", "--files", idx, tidx, "--index-sanity-check")
    assert rc == 0 and out.endswith("%s passed sanity check.\n" % tidx)


def test_dump_log_reports_a_damaged_index_and_invalid_trailing_bytes(store, capsys):
    _fill(store)
    idx = _seg(store, suffix=".index")
    with open(idx, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(struct.pack(">i", 7))              # the last entry now points into a batch
    rc, out, err = run(capsys, "dump-log", "--files", idx, "--verify-index-only")
    assert rc == 1 and err.startswith("Mismatches in :%s\n  Index offset: " % idx)
    rc, out, err = run(capsys, "dump-log", "--files", idx, "--index-sanity-check")
    assert rc == 1 and err.startswith("Corrupt index found, index file (%s)" % idx)
    with open(_seg(store), "ab") as f:
        f.write(b"\x00" * 30)
    out = run(capsys, "dump-log", "--files", _seg(store))[1]
    assert out.endswith("Found 30 invalid bytes at the end of 00000000000000000000.log\n")


def test_dump_log_producer_state_of_a_partition(store, capsys):
    produce(store, "orders", [b"a", b"b"], **{"enable.idempotence": True, "linger.ms": 0})
    append_raw(store, "orders", 0, [hanging_batch()])
    rc, out, _ = run(capsys, "--store", store, "dump-log", "--producer-state", "--topic", "orders",
                     "--partition", "0")
    lines = out.splitlines()
    assert lines[0] == "Dumping producer state of orders-0"
    assert lines[1].startswith("producerId: 99 producerEpoch: 3 coordinatorEpoch: 0 "
                               "currentTxnFirstOffset: OptionalLong[2] lastTimestamp: %d "
                               "firstSequence: 0 lastSequence: 0 lastOffset: 2 offsetDelta: 0" % TS)
    assert lines[2].startswith("producerId: 1000 producerEpoch: 0 coordinatorEpoch: 0 "
                               "currentTxnFirstOffset: OptionalLong.empty")
    rc, _, err = run(capsys, "--store", store, "dump-log", "--producer-state", "--topic", "orders")
    assert rc == 1 and err == "Error: --producer-state and --aborted-index need --topic and --partition\n"


# ---- verify ----
def test_verify_reports_crc_damage_and_recover_truncates_there(store, capsys):
    _fill(store, n=10)
    log = _seg(store)
    batches = codec.scan(open(log, "rb").read())[0]
    victim = batches[6]
    with open(log, "r+b") as f:                     # flip one byte of batch 6's records
        f.seek(victim.position + 70)
        b = f.read(1)
        f.seek(victim.position + 70)
        f.write(bytes([b[0] ^ 0xFF]))
    rc, out, _ = run(capsys, "--store", store, "verify")
    assert rc == 1
    assert "DAMAGED orders-0 file: %s position: %d reason: bad crc" % (log, victim.position) in out
    assert out.endswith("Verified 1 partitions: 1 damaged\n")     # orders-1 has no files yet
    rc, out, _ = run(capsys, "--store", store, "verify", "--topic", "orders", "--recover")
    assert rc == 1 and "RECOVERED orders-0 truncated to offset 6" in out
    rc, out, _ = run(capsys, "--store", store, "verify")
    assert rc == 0 and "OK orders-0 segments: 1 batches: 6 " in out
    assert len(read(store, "orders", partitions=(0,))) == 6


# ---- stats and metrics ----
def test_stats_prints_partitions_and_group_lag(store, capsys):
    produce(store, "orders", [b"a", b"b"], **{"enable.idempotence": True})
    append_raw(store, "orders", 0, [hanging_batch()])
    commit(store, "g", "orders", 0, 1)
    rc, out, _ = run(capsys, "--store", store, "stats")
    lines = out.splitlines()
    assert lines[0].split() == ["TOPIC", "PARTITION", "LOG-START", "HIGH-WATERMARK", "LSO", "SIZE",
                                "SEGMENTS", "OPEN-TXNS", "PRODUCERS"]
    row = lines[1].split()
    assert row[:5] == ["orders", "0", "0", "3", "2"] and row[6:] == ["1", "1", "2"]
    assert lines[2].split() == ["orders", "1", "0", "0", "0", "0", "1", "0", "0"]
    assert lines[4].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"]
    assert lines[5].split() == ["g", "orders", "0", "1", "3", "2"]
    data = json.loads(run(capsys, "--store", store, "stats", "--json", "--topic", "orders")[1])
    assert data["groups"] == {"g": [{"topic": "orders", "partition": 0, "committed_offset": 1,
                                     "high_watermark": 3, "lag": 2}]}


def test_metrics_collect_accepts_a_path_a_conf_or_a_store(store):
    produce(store, "orders", [b"a"])
    by_path = metrics.collect(store, topics=["orders"])
    by_conf = metrics.collect(conf(store))
    assert by_path == by_conf
    assert by_path["partitions"][0] == {"topic": "orders", "partition": 0, "log_start_offset": 0,
                                        "high_watermark": 1, "last_stable_offset": 1,
                                        "size_bytes": by_path["partitions"][0]["size_bytes"],
                                        "segments": 1, "open_transactions": 0, "producer_count": 0}


def test_stats_emitter_builds_librdkafka_shaped_statistics(store):
    produce(store, "orders", [b"a", b"b", b"c"], partition=1)
    got = []
    c = Consumer(conf(store, **{"group.id": "g", "stats_cb": got.append,
                                "statistics.interval.ms": 1000}))
    c.assign([TopicPartition("orders", 1, 0)])
    assert c.poll(5.0).value() == b"a"
    c.commit(asynchronous=False)
    e = metrics.StatsEmitter(c, "consumer", c._conf)
    assert not e.maybe_emit(e.created + 0.5)
    assert e.maybe_emit(e.created + 1.0)
    stats = json.loads(got[0])
    c.close()
    assert stats["type"] == "consumer" and stats["name"] == "rdkafka#consumer-%d" % int(
        stats["name"].rsplit("-", 1)[1])
    part = stats["topics"]["orders"]["partitions"]["1"]
    assert (part["hi_offset"], part["ls_offset"], part["lo_offset"], part["committed_offset"],
            part["consumer_lag"], part["app_offset"]) == (3, 3, 0, 1, 2, 1)
    assert stats["cgrp"]["assignment_size"] == 1
    p = Producer(conf(store))
    p.produce("orders", b"x")
    snap = metrics.StatsEmitter(p, "producer", p._conf).snapshot()
    p.close()
    assert snap["type"] == "producer" and snap["msg_cnt"] == 1
    assert snap["topics"]["orders"]["partitions"]["-1"]["msgq_cnt"] == 1


# ---- perf tests ----
def test_producer_perf_test_prints_kafka_totals(store, capsys):
    rc, out, _ = run(capsys, "--store", store, "producer-perf-test", "--topic", "orders",
                     "--num-records", "500", "--record-size", "20", "--throughput", "-1",
                     "--producer-props", "linger.ms=0")
    assert rc == 0
    assert out.startswith("500 records sent, ")
    assert " records/sec (" in out and out.endswith(" ms 99.9th.\n") and " ms 50th, " in out
    rc, out, _ = run(capsys, "--store", store, "producer-perf-test", "--topic", "orders",
                     "--num-records", "200", "--record-size", "20", "--throughput", "2000",
                     "--transactional-id", "perf", "--transaction-duration-ms", "30")
    assert rc == 0 and out.startswith("200 records sent, ")
    assert len(read(store, "orders", isolation="read_committed")) == 700


def test_consumer_perf_test_prints_the_csv_line(store, capsys):
    produce(store, "orders", [b"x" * 100] * 50)
    rc, out, _ = run(capsys, "--store", store, "consumer-perf-test", "--topic", "orders",
                     "--messages", "50", "--timeout", "2000")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == (
        "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, "
        "rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
    fields = lines[1].split(", ")
    assert len(fields) == 10 and fields[2] == "0.0048" and fields[4] == "50"
    assert run(capsys, "--store", store, "consumer-groups", "--list")[1] == ""
    rc, out, _ = run(capsys, "--store", store, "consumer-perf-test", "--topic", "orders",
                     "--messages", "60", "--timeout", "100", "--hide-header")
    assert out.startswith("WARNING: Exiting before consuming the expected number of messages: "
                          "timeout (100 ms) exceeded.")


# ---- the entry point and errors ----
def test_python_m_pylog_pipes_producer_into_consumer(store):
    r = sh(store, "console-producer", "--topic", "orders", "--property", "parse.key=true",
           stdin=b"a\t1\nb\t2\n")
    assert (r.returncode, r.stderr) == (0, b"")
    r = sh(store, "console-consumer", "--topic", "orders", "--from-beginning", "--max-messages", "2",
           "--property", "print.key=true", "--property", "key.separator==")
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == [b"a=1", b"b=2"]
    assert r.stderr == b"Processed a total of 2 messages\n"


@pytest.mark.parametrize("argv, message", [
    (["topics", "--list", "--bootstrap-server", "file:///x"],
     "give the store once: --store or --bootstrap-server"),
    (["topics", "--create", "--topic", "a b"], "topic name 'a b' has characters other than"),
    (["topics", "--describe", "--topic", "missing"], "Topic 'missing' does not exist as expected"),
    (["topics", "--create", "--topic", "t", "--config", "segment.bytes"],
     'Invalid topic config: all configs to be added must be in the format "key=val"'),
    (["console-producer", "--topic", "orders", "--producer-property", "acks=maybe"],
     'Invalid value "maybe" for configuration property "acks"'),
    (["console-consumer", "--topic", "orders", "--partition", "7"],
     "Topic 'orders' has partitions 0..1, not 7"),
    (["transactions", "describe-producers", "--topic", "nope", "--partition", "0"],
     "Topic 'nope' does not exist"),
    (["consumer-groups", "--describe", "--group", "nobody"],
     "Consumer group 'nobody' does not exist."),
    (["dump-log", "--files", "/no/such/00000000000000000000.log"], "no such file"),
    (["stats", "--topci", "x"], "unrecognized arguments: --topci x"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_user_mistakes_are_one_error_line_without_traceback(store, capsys, argv, message):
    rc, out, err = run(capsys, "--store", store, *argv)
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err, err


def test_a_kafka_bootstrap_server_is_refused(capsys):
    rc, _, err = run(capsys, "topics", "--list", "--bootstrap-server", "localhost:9092")
    assert rc == 1 and err.startswith("Error: --bootstrap-server 'localhost:9092' names a Kafka "
                                      "cluster; pylog's tools work on a store directory")


def test_errors_exit_non_zero_without_traceback_in_a_subprocess(tmp_path):
    r = sh(tmp_path / "nothing-here", "topics", "--list")
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr == b"Error: %s is not a pylog store (it has no meta/ directory)\n" % (
        str(tmp_path / "nothing-here").encode())
    r = sh(tmp_path, "topics")
    assert r.returncode == 2 and r.stderr.startswith(b"Error: one of the arguments") \
        and b"Traceback" not in r.stderr
    env = dict(os.environ)
    env.pop("PYLOG_STORE", None)
    r = subprocess.run([sys.executable, "-m", "pylog", "stats"], capture_output=True, env=env,
                       timeout=60)
    assert (r.returncode, r.stderr) == (1, b"Error: no store given: use --store PATH or set PYLOG_STORE\n")
