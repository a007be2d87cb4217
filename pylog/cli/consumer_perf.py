"""pylog consumer-perf-test: kafka-consumer-perf-test.sh over a store.

Joins a group (default a throw-away "perf-consumer-NNNNN" that commits
nothing and is removed afterwards), reads --messages records (or stops
after --timeout ms without one) and prints Kafka's CSV header and line:

    start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg,
    nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
"""
import datetime
import random
import sys
import time

from ..consumer import Consumer
from .common import CliError, client_conf, load_properties, open_store, parse_kv


def add_parser(sub, parents):
    p = sub.add_parser("consumer-perf-test", parents=parents, help="measure consume throughput")
    p.add_argument("--topic", required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--group")
    p.add_argument("--timeout", type=int, default=10000,
                   help="ms allowed between returned records (default 10000)")
    p.add_argument("--from-latest", action="store_true")
    p.add_argument("--hide-header", action="store_true")
    p.add_argument("--consumer.config", "--command-config", dest="consumer_config", metavar="FILE")
    p.add_argument("--consumer-property", "--command-property", action="append", default=[],
                   metavar="KEY=VALUE")
    p.add_argument("--date-format", default="%Y-%m-%d %H:%M:%S:%f",
                   help="strftime format (%%f is cut to milliseconds)")
    p.set_defaults(func=run)


def _date(ms, fmt):
    mark = "@@pylog-ms@@"                # strftime's %f is microseconds; Kafka shows millis
    text = datetime.datetime.fromtimestamp(ms / 1000.0).strftime(fmt.replace("%f", mark))
    return text.replace(mark, "%03d" % (ms % 1000))


def run(args):
    if args.messages < 0:
        raise CliError("--messages must be >= 0")
    props = load_properties(args.consumer_config)
    props.update(parse_kv(args.consumer_property, "--consumer-property"))
    generated = not (args.group or props.get("group.id"))
    group = args.group or props.get("group.id") or "perf-consumer-%d" % random.randrange(100000)
    props["group.id"] = group
    props.setdefault("auto.offset.reset", "latest" if args.from_latest else "earliest")
    props.setdefault("isolation.level", "read_uncommitted")
    if generated:
        props.setdefault("enable.auto.commit", "false")
    with open_store(args) as store:
        if store.topic(args.topic) is None:
            raise CliError("Topic '%s' does not exist" % args.topic)
        joined = []
        consumer = Consumer(client_conf(args, props))
        start_ms = int(time.time() * 1000)
        t0 = time.monotonic()
        try:
            consumer.subscribe([args.topic],
                               on_assign=lambda c, parts: joined.append(time.monotonic()))
            count, nbytes = _consume(consumer, args)
        finally:
            consumer.close()
        end_ms = int(time.time() * 1000)
        if generated:
            store.meta.update(lambda txn: store.meta.delete_group(txn, group))
    if count < args.messages:
        print("WARNING: Exiting before consuming the expected number of messages: timeout (%d ms) "
              "exceeded. You can use the --timeout option to increase the timeout." % args.timeout)
    elapsed = max((end_ms - start_ms) / 1000.0, 1e-9)
    join_ms = int((joined[0] - t0) * 1000) if joined else 0
    fetch_s = max((end_ms - start_ms - join_ms) / 1000.0, 1e-9)
    mb = nbytes / (1024.0 * 1024.0)
    if not args.hide_header:
        print("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, "
              "rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
    print("%s, %s, %.4f, %.4f, %d, %.4f, %d, %d, %.4f, %.4f" % (
        _date(start_ms, args.date_format), _date(end_ms, args.date_format), mb, mb / elapsed,
        count, count / elapsed, join_ms, int(fetch_s * 1000), mb / fetch_s, count / fetch_s))
    return 0


def _consume(consumer, args):
    count = nbytes = 0
    last = time.monotonic()
    timeout = args.timeout / 1000.0
    while count < args.messages:
        msgs = consumer.consume(min(args.messages - count, 10000), 0.1)
        now = time.monotonic()
        if not msgs:
            if now - last > timeout:
                break
            continue
        last = now
        for m in msgs:
            err = m.error()
            if err is not None:
                sys.stderr.write("Error: %s\n" % err.str())
                continue
            count += 1
            nbytes += len(m.key() or b"") + len(m.value() or b"")
    return count, nbytes
