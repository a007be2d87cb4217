"""pylog producer-perf-test: kafka-producer-perf-test.sh over a store.

Every 5 seconds: "N records sent, X records/sec (Y MB/sec), Z ms avg
latency, W ms max latency." and at the end the same totals with the 50th,
95th, 99th and 99.9th latency percentiles.  Latency is the time from
produce() to the record's delivery report (served by poll(), which the
loop calls after every record).  On a terminal a progress bar is drawn on
the line below the reports.

--transactional-id (or --transaction-duration-ms) wraps the records in
transactions committed every --transaction-duration-ms (default 3000).
"""
import random
import string
import sys
import time

from ..producer import Producer
from .common import CliError, client_conf, load_properties, parse_kv

REPORT_S = 5.0
MAX_SAMPLES = 500000
DEFAULT_TID = "performance-producer-default-transactional-id"


def add_parser(sub, parents):
    p = sub.add_parser("producer-perf-test", parents=parents, help="measure produce throughput")
    p.add_argument("--topic", required=True)
    p.add_argument("--num-records", type=int, required=True)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--record-size", type=int)
    size.add_argument("--payload-file", help="records are the file's lines, picked at random")
    p.add_argument("--payload-delimiter", default="\\n")
    p.add_argument("--throughput", type=float, required=True,
                   help="records/sec to aim for; -1 for no limit")
    p.add_argument("--producer-props", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--producer.config", "--command-config", dest="producer_config", metavar="FILE")
    p.add_argument("--transactional-id")
    p.add_argument("--transaction-duration-ms", type=int)
    p.set_defaults(func=run)


class Stats:
    """Kafka's ProducerPerformance.Stats: windows of REPORT_S and a sample of latencies."""

    def __init__(self, num_records, out):
        self.out = out
        self.start = self.window_start = time.monotonic()
        self.count = self.bytes = self.total_latency = self.max_latency = 0
        self.window_count = self.window_bytes = self.window_total = self.window_max = 0
        self.sampling = max(num_records // min(max(num_records, 1), MAX_SAMPLES), 1)
        self.latencies = []
        self.errors = 0

    def record(self, latency_ms, nbytes, now):
        self.count += 1
        self.bytes += nbytes
        self.total_latency += latency_ms
        self.max_latency = max(self.max_latency, latency_ms)
        self.window_count += 1
        self.window_bytes += nbytes
        self.window_total += latency_ms
        self.window_max = max(self.window_max, latency_ms)
        if self.count % self.sampling == 0:
            self.latencies.append(latency_ms)
        if now - self.window_start >= REPORT_S:
            self.print_window(now)

    def print_window(self, now):
        elapsed = max(now - self.window_start, 1e-9)
        self.out("%d records sent, %.1f records/sec (%.2f MB/sec), %.1f ms avg latency, "
                 "%.1f ms max latency." % (
                     self.window_count, self.window_count / elapsed,
                     self.window_bytes / elapsed / (1024 * 1024),
                     self.window_total / max(self.window_count, 1), self.window_max))
        self.window_start = now
        self.window_count = self.window_bytes = self.window_total = self.window_max = 0

    def total_line(self, now=None):
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        lat = sorted(self.latencies)
        percs = [lat[int(q * len(lat))] if lat else 0 for q in (0.5, 0.95, 0.99, 0.999)]
        return ("%d records sent, %f records/sec (%.2f MB/sec), %.2f ms avg latency, %.2f ms max "
                "latency, %d ms 50th, %d ms 95th, %d ms 99th, %d ms 99.9th." % (
                    self.count, self.count / elapsed, self.bytes / elapsed / (1024 * 1024),
                    self.total_latency / max(self.count, 1), self.max_latency, *percs))


class Progress:
    """A one-line bar, redrawn at most 10 times a second, on a terminal only."""

    def __init__(self, total, stream):
        self.total, self.stream = total, stream
        self.on = stream.isatty()
        self.drawn = 0.0

    def draw(self, done, now, force=False):
        if not self.on or (not force and now - self.drawn < 0.1):
            return
        self.drawn = now
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write("\r[%-30s] %3d%% %d/%d records" % (bar, frac * 100, done, self.total))
        self.stream.flush()

    def clear(self):
        if self.on:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _payloads(args):
    if args.record_size is not None:
        if args.record_size < 0:
            raise CliError("--record-size must be >= 0")
        rng = random.Random()
        return [bytes(rng.choice(string.ascii_uppercase.encode()) for _ in range(args.record_size))]
    delim = args.payload_delimiter.encode().decode("unicode_escape")
    with open(args.payload_file, encoding="utf-8") as f:
        items = [s.encode("utf-8") for s in f.read().split(delim) if s]
    if not items:
        raise CliError("File does not contain any payloads: %s" % args.payload_file)
    print("Reading payloads from: %s" % args.payload_file)
    print("Number of messages read: %d" % len(items))
    return items


def run(args):
    if args.num_records < 0:
        raise CliError("--num-records must be >= 0")
    payloads = _payloads(args)
    props = load_properties(args.producer_config)
    props.update(parse_kv(args.producer_props, "--producer-props"))
    transactional = args.transactional_id is not None or args.transaction_duration_ms is not None
    duration = (args.transaction_duration_ms or 3000) / 1000.0
    if transactional:
        if duration <= 0:
            raise CliError("--transaction-duration-ms must be > 0")
        props["transactional.id"] = args.transactional_id or props.get("transactional.id", DEFAULT_TID)
    producer = Producer(client_conf(args, props, create=True))
    progress = Progress(args.num_records, sys.stdout)

    def out(line):
        progress.clear()
        print(line, flush=True)
    stats = Stats(args.num_records, out)
    first_error = []

    def report(err, msg, sent):
        now = time.monotonic()
        if err is not None:
            stats.errors += 1
            if not first_error:
                first_error.append(err)
                sys.stderr.write("Error: delivery failed: %s\n" % err.str())
            return
        stats.record(int((now - sent) * 1000), len(msg.value() or b""), now)
    try:
        _send(producer, args, payloads, report, stats, progress, transactional, duration)
    finally:
        producer.close()
    progress.clear()
    print(stats.total_line(), flush=True)
    return 1 if stats.errors else 0


def _send(producer, args, payloads, report, stats, progress, transactional, duration):
    if transactional:
        producer.init_transactions()
        producer.begin_transaction()
        txn_start = time.monotonic()
    start = time.monotonic()
    rate = args.throughput if args.throughput > 0 else None
    pick = random.Random().choice
    one = payloads[0] if len(payloads) == 1 else None
    for i in range(args.num_records):
        value = one if one is not None else pick(payloads)
        sent = time.monotonic()
        while True:
            try:
                producer.produce(args.topic, value,
                                 on_delivery=lambda err, msg, t=sent: report(err, msg, t))
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        now = time.monotonic()
        progress.draw(stats.count, now)
        if transactional and now - txn_start >= duration:
            producer.commit_transaction()
            producer.begin_transaction()
            txn_start = time.monotonic()
        if rate is not None:
            ahead = start + (i + 1) / rate - now
            while ahead > 0.002:            # Kafka's throttler sleeps once 2 ms are owed
                producer.poll(min(ahead, 0.05))
                ahead = start + (i + 1) / rate - time.monotonic()
    if transactional:
        producer.commit_transaction()
    producer.flush()
    progress.draw(stats.count, time.monotonic(), force=True)
