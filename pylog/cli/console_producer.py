"""pylog console-producer: kafka-console-producer.sh over a store.

Each line of stdin is one record, parsed by Kafka's LineMessageReader
properties (--property):

    parse.key, key.separator (\\t)          key<sep>value
    parse.headers, headers.delimiter (\\t),  h1:v1,h2:v2<delim>key<sep>value
    headers.separator (, a regex), headers.key.separator (:)
    null.marker                             a key, value or header value equal
                                            to it is sent as null
    ignore.error                            a line without a separator is sent
                                            whole as the value (no key)

--transactional-id sends all of stdin as one transaction: committed at the
end of input, aborted (nothing visible) if any line or write fails.
Bytes that are not UTF-8 pass through unchanged.
"""
import io
import re
import sys

from ..producer import Producer
from .common import CliError, client_conf, load_properties, parse_kv

_ENCODING = ("utf-8", "surrogateescape")     # any byte sequence round-trips


def add_parser(sub, parents):
    p = sub.add_parser("console-producer", parents=parents, help="produce lines of stdin")
    p.add_argument("--topic", required=True)
    p.add_argument("--property", "--reader-property", action="append", default=[],
                   metavar="KEY=VALUE", help="line reader property (parse.key, key.separator, ...)")
    p.add_argument("--producer-property", "--command-property", action="append", default=[],
                   metavar="KEY=VALUE", help="producer configuration property")
    p.add_argument("--producer.config", "--command-config", dest="producer_config",
                   metavar="FILE", help="producer configuration properties file")
    p.add_argument("--transactional-id", metavar="ID", help="send all of stdin as one transaction")
    p.add_argument("--sync", action="store_true", help="wait for each record's delivery report")
    p.set_defaults(func=run)


class LineReader:
    """Kafka's LineMessageReader: one line -> (key, value, headers)."""

    def __init__(self, props):
        def flag(name):
            return props.get(name, "false").strip().lower() == "true"
        self.parse_key = flag("parse.key")
        self.key_sep = props.get("key.separator", "\t")
        self.parse_headers = flag("parse.headers")
        self.headers_delim = props.get("headers.delimiter", "\t")
        self.headers_sep = props.get("headers.separator", ",")
        self.headers_key_sep = props.get("headers.key.separator", ":")
        self.ignore_error = flag("ignore.error")
        self.null_marker = props.get("null.marker")
        for a, b in (("headers.delimiter", "headers.separator"),
                     ("headers.delimiter", "headers.key.separator"),
                     ("headers.separator", "headers.key.separator")):
            if self._prop(a) == self._prop(b):
                raise CliError("%s and %s may not be equal" % (a, b))
        for other in ("key.separator", "headers.separator", "headers.delimiter",
                      "headers.key.separator"):
            if self.null_marker is not None and self.null_marker == self._prop(other):
                raise CliError("null.marker and %s may not be equal" % other)
        try:
            self.headers_rx = re.compile(self.headers_sep)
        except re.error as e:
            raise CliError("invalid headers.separator %r: %s" % (self.headers_sep, e)) from None

    def _prop(self, name):
        return {"key.separator": self.key_sep, "headers.delimiter": self.headers_delim,
                "headers.separator": self.headers_sep,
                "headers.key.separator": self.headers_key_sep}[name]

    def _cut(self, enabled, line, start, sep, what, lineno):
        if not enabled:
            return None
        i = line.find(sep, start)
        if i < 0:
            if self.ignore_error:
                return None
            raise CliError("No %s found on line number %d: '%s'" % (what, lineno, line))
        return line[start:i]

    def _bytes(self, text):
        return None if text is None or text == self.null_marker else text.encode(*_ENCODING)

    def parse(self, line, lineno):
        headers = self._cut(self.parse_headers, line, 0, self.headers_delim, "headers delimiter", lineno)
        h_end = 0 if headers is None else len(headers) + len(self.headers_delim)
        key = self._cut(self.parse_key, line, h_end, self.key_sep, "key separator", lineno)
        k_end = 0 if key is None else len(key) + len(self.key_sep)
        value = line[h_end + k_end:]
        out_headers = None
        if headers is not None and headers != self.null_marker:
            out_headers = [self._header(pair, lineno) for pair in self._split(headers)]
        return self._bytes(key), self._bytes(value), out_headers

    def _split(self, text):
        # Java's String.split: trailing empty strings are dropped.
        if text == "":
            return [""]
        parts = self.headers_rx.split(text)
        while parts and parts[-1] == "":
            parts.pop()
        return parts

    def _header(self, pair, lineno):
        i = pair.find(self.headers_key_sep)
        if i < 0:
            if self.ignore_error:
                return pair, None
            raise CliError("No header key separator found in pair '%s' on line number %d"
                           % (pair, lineno))
        key = pair[:i]
        if key == self.null_marker:
            raise CliError("Header keys should not be equal to the null marker '%s' as they "
                           "can't be null" % self.null_marker)
        return key, self._bytes(pair[i + len(self.headers_key_sep):])


def _lines(stream):
    """Lines of stream without their terminator (\\n, \\r\\n or \\r, as Java's readLine)."""
    raw = getattr(stream, "buffer", None)
    text = io.TextIOWrapper(raw, encoding=_ENCODING[0], errors=_ENCODING[1], newline=None) \
        if raw is not None else stream
    prompt = stream.isatty() if hasattr(stream, "isatty") else False
    try:
        while True:
            if prompt:
                sys.stdout.write(">")
                sys.stdout.flush()
            line = text.readline()
            if not line:
                return
            yield line[:-1] if line.endswith("\n") else line
    finally:
        if text is not stream:
            text.detach()               # closing the wrapper would close stdin


def run(args):
    reader = LineReader(parse_kv(args.property, "--property"))
    props = {"client.id": "console-producer"}
    props.update(load_properties(args.producer_config))
    props.update(parse_kv(args.producer_property, "--producer-property"))
    if args.transactional_id:
        props["transactional.id"] = args.transactional_id
    producer = Producer(client_conf(args, props, create=True))
    failed = []
    aborting = []                       # purged records of an aborted transaction: no report

    def report(err, msg):
        if err is not None and not aborting:
            failed.append(err)
            sys.stderr.write("Error when sending message to topic %s with key: %s, value: %s with "
                             "error: %s\n" % (msg.topic(), _size(msg.key()), _size(msg.value()),
                                              err.str()))

    in_txn = False
    try:
        if args.transactional_id:
            producer.init_transactions()
            producer.begin_transaction()
            in_txn = True
        for lineno, line in enumerate(_lines(sys.stdin), 1):
            key, value, headers = reader.parse(line, lineno)
            _produce(producer, args.topic, key, value, headers, report)
            producer.flush() if args.sync else producer.poll(0)
        if in_txn:
            in_txn = False
            producer.commit_transaction()
        else:
            producer.flush()
    finally:
        if in_txn:
            aborting.append(True)
            try:
                producer.abort_transaction()
            except Exception:           # the original error is the one to report
                pass
        producer.close()
    return 1 if failed else 0


def _produce(producer, topic, key, value, headers, report):
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=report)
            return
        except BufferError:             # the local queue is full: let it drain
            producer.poll(0.1)


def _size(data):
    return "null" if data is None else "%d bytes" % len(data)
