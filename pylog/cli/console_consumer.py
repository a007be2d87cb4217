"""pylog console-consumer: kafka-console-consumer.sh over a store.

Without --group the consumer reads by assignment under a throw-away group
id and commits nothing (Kafka's console consumer disables auto commit for
its generated group too); with --group it joins that group and commits as
it goes.  --isolation-level defaults to read_uncommitted, as in Kafka.

Output: Kafka's DefaultMessageFormatter properties (--property): print.key,
print.value, print.offset, print.partition, print.timestamp, print.headers,
print.delivery, key.separator, line.separator, headers.separator,
null.literal.  "Processed a total of N messages" goes to stderr at the end.
"""
import random
import signal
import sys
import time

from ..consumer import Consumer
from ..errors import KafkaError
from ..message import (OFFSET_BEGINNING, OFFSET_END, TIMESTAMP_CREATE_TIME,
                       TIMESTAMP_LOG_APPEND_TIME, TopicPartition)
from .common import CliError, client_conf, load_properties, parse_kv

_TS_NAMES = {TIMESTAMP_CREATE_TIME: "CreateTime", TIMESTAMP_LOG_APPEND_TIME: "LogAppendTime"}


def add_parser(sub, parents):
    p = sub.add_parser("console-consumer", parents=parents, help="print records to stdout")
    p.add_argument("--topic")
    p.add_argument("--include", metavar="REGEX", help="consume every topic matching the regex")
    p.add_argument("--partition", type=int)
    p.add_argument("--offset", help="earliest, latest or a non-negative offset (needs --partition)")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--group")
    p.add_argument("--max-messages", type=int, default=-1)
    p.add_argument("--timeout-ms", type=int, default=-1,
                   help="exit when no record arrives for this long")
    p.add_argument("--isolation-level", choices=("read_committed", "read_uncommitted"))
    p.add_argument("--skip-message-on-error", action="store_true")
    p.add_argument("--property", "--formatter-property", action="append", default=[],
                   metavar="KEY=VALUE", help="formatter property (print.key, key.separator, ...)")
    p.add_argument("--consumer-property", "--command-property", action="append", default=[],
                   metavar="KEY=VALUE", help="consumer configuration property")
    p.add_argument("--consumer.config", "--command-config", dest="consumer_config", metavar="FILE")
    p.set_defaults(func=run)


class Formatter:
    """Kafka's DefaultMessageFormatter, writing bytes."""

    def __init__(self, props):
        def flag(name, default):
            v = props.get(name)
            return default if v is None else v.strip().lower() == "true"

        def text(name, default):
            return props.get(name, default).encode("utf-8")
        self.fields = [name for name, on in (
            ("timestamp", flag("print.timestamp", False)), ("partition", flag("print.partition", False)),
            ("offset", flag("print.offset", False)), ("delivery", flag("print.delivery", False)),
            ("headers", flag("print.headers", False)), ("key", flag("print.key", False)),
            ("value", flag("print.value", True))) if on]
        self.key_sep = text("key.separator", "\t")
        self.line_sep = text("line.separator", "\n")
        self.headers_sep = text("headers.separator", ",")
        self.null = text("null.literal", "null")

    def format(self, msg):
        out = []
        for i, field in enumerate(self.fields):
            out.append(getattr(self, "_" + field)(msg))
            out.append(self.key_sep if i + 1 < len(self.fields) else self.line_sep)
        return b"".join(out)

    def _timestamp(self, msg):
        kind, ts = msg.timestamp()
        return ("%s:%d" % (_TS_NAMES[kind], ts) if kind in _TS_NAMES else "NO_TIMESTAMP").encode()

    def _partition(self, msg):
        return b"Partition:%d" % msg.partition()

    def _offset(self, msg):
        return b"Offset:%d" % msg.offset()

    def _delivery(self, msg):
        return b"Delivery:NONE"

    def _headers(self, msg):
        headers = msg.headers()
        if not headers:
            return b"NO_HEADERS"
        return self.headers_sep.join(k.encode("utf-8") + b":" + (self.null if v is None else v)
                                     for k, v in headers)

    def _key(self, msg):
        return self.null if msg.key() is None else msg.key()

    def _value(self, msg):
        return self.null if msg.value() is None else msg.value()


def _start_offset(args):
    if args.offset is None:
        return OFFSET_BEGINNING if args.from_beginning else OFFSET_END
    if args.from_beginning:
        raise CliError("Options from-beginning and offset cannot be specified together.")
    word = args.offset.lower()
    if word in ("earliest", "latest"):
        return OFFSET_BEGINNING if word == "earliest" else OFFSET_END
    try:
        offset = int(args.offset)
    except ValueError:
        offset = -1
    if offset < 0:
        raise CliError("The provided offset value '%s' is incorrect. Valid values are 'earliest', "
                       "'latest', or a non-negative long." % args.offset)
    return offset


def _conf(args):
    props = load_properties(args.consumer_config)
    props.update(parse_kv(args.consumer_property, "--consumer-property"))
    groups = {g for g in (args.group, props.get("group.id")) if g}
    if len(groups) > 1:
        raise CliError("The group ids provided in different places (directly using '--group', via "
                       "'--consumer-property', or via '--consumer.config') do not match. Detected "
                       "group ids: %s" % ", ".join("'%s'" % g for g in sorted(groups)))
    if groups and args.partition is not None:
        raise CliError("Options group and partition cannot be specified together.")
    reset = props.get("auto.offset.reset")
    if reset is not None and args.from_beginning and reset not in ("earliest", "smallest", "beginning"):
        raise CliError("Can't simultaneously specify --from-beginning and 'auto.offset.reset=%s', "
                       "please remove one option" % reset)
    props.setdefault("auto.offset.reset", "earliest" if args.from_beginning else "latest")
    props.setdefault("client.id", "console-consumer")
    if args.isolation_level:
        props["isolation.level"] = args.isolation_level
    props.setdefault("isolation.level", "read_uncommitted")
    explicit = bool(groups)
    if groups:
        props["group.id"] = groups.pop()
    else:
        props["group.id"] = "console-consumer-%d" % random.randrange(100000)
        props.setdefault("enable.auto.commit", "false")
    return client_conf(args, props), explicit


def _topics(consumer, args):
    meta = consumer.list_topics()
    if args.include:
        import re
        try:
            rx = re.compile(args.include)
        except re.error as e:
            raise CliError("invalid --include regex %r: %s" % (args.include, e)) from None
        return sorted(t for t in meta.topics if rx.fullmatch(t))
    if args.topic not in meta.topics:
        raise CliError("Topic '%s' does not exist" % args.topic)
    return [args.topic]


def run(args):
    if bool(args.topic) == bool(args.include):
        raise CliError("Exactly one of --topic or --include is required")
    if args.partition is not None and not args.topic:
        raise CliError("The topic is required when partition is specified.")
    if args.offset is not None and args.partition is None:
        raise CliError("The partition is required when offset is specified.")
    start = _start_offset(args) if args.partition is not None else None
    formatter = Formatter(parse_kv(args.property, "--property"))
    conf, in_group = _conf(args)
    consumer = Consumer(conf)
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    progress = [0, 0]                   # records printed, exit status
    try:
        _start(consumer, conf, args, start, in_group)
    except BaseException:
        consumer.close()
        raise
    old_term = _on_sigterm()
    try:
        _loop(consumer, formatter, out, args, progress)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if out is not None:
                out.flush()
            else:
                sys.stdout.flush()
        except BrokenPipeError:
            pass
        consumer.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        sys.stderr.write("Processed a total of %d messages\n" % progress[0])
        sys.stderr.flush()
    return progress[1]


def _start(consumer, conf, args, start, in_group):
    if args.topic and args.topic not in consumer.list_topics().topics:
        raise CliError("Topic '%s' does not exist" % args.topic)
    if args.partition is not None:
        consumer.assign([TopicPartition(args.topic, args.partition, start)])
    elif in_group:
        # pylog groups re.match() what follows "^"; Kafka's --include must match whole names.
        consumer.subscribe(["^(?:%s)\\Z" % args.include] if args.include else [args.topic])
    else:
        where = OFFSET_BEGINNING if conf["auto.offset.reset"] in ("earliest", "smallest",
                                                                  "beginning") else OFFSET_END
        meta = consumer.list_topics()
        consumer.assign([TopicPartition(t, p, where) for t in _topics(consumer, args)
                         for p in sorted(meta.topics[t].partitions)])


def _on_sigterm():
    """SIGTERM ends the loop like Ctrl-C (Kafka's shutdown hook): the group is
    left, offsets committed and the total printed.  Returns the old handler."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:                  # not the main thread
        return None


def _loop(consumer, formatter, out, args, progress):
    timeout = args.timeout_ms / 1000.0 if args.timeout_ms >= 0 else None
    tty = sys.stdout.isatty()
    last = time.monotonic()
    while args.max_messages < 0 or progress[0] < args.max_messages:
        wait = 0.2 if timeout is None else max(0.0, min(0.2, last + timeout - time.monotonic()))
        msg = consumer.poll(wait)
        if msg is None:
            _flush(out)
            if timeout is not None and time.monotonic() - last >= timeout:
                return
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            sys.stderr.write("Error processing message, terminating consumer process: %s\n" % err.str())
            if args.skip_message_on_error:
                continue
            progress[1] = 1
            return
        data = formatter.format(msg)
        if out is not None:
            out.write(data)
        else:
            sys.stdout.write(data.decode("utf-8", "replace"))
        if tty:
            _flush(out)
        progress[0] += 1
        last = time.monotonic()


def _flush(out):
    (out or sys.stdout).flush()
