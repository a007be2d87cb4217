"""Client configuration: librdkafka's property names, defaults and validation.

An unknown property raises KafkaException(_INVALID_ARG), as librdkafka does,
so a typo is caught on one machine before it reaches a cluster.  Network
and security properties are accepted and ignored, so one dict serves a
pylog store and a Kafka cluster.  Store-only properties start with "pylog.".
"""
import logging
from urllib.parse import unquote, urlparse

from .errors import KafkaError, KafkaException

INT32_MAX = 2147483647
_log = logging.getLogger("pylog.config")

# name: (kind, default, low, high or choices)
_COMMON = {
    "bootstrap.servers": ("str", None, None, None),
    "client.id": ("str", "rdkafka", None, None),
    "statistics.interval.ms": ("int", 0, 0, 86400000),
    "stats_cb": ("cb", None, None, None),
    "error_cb": ("cb", None, None, None),
    "throttle_cb": ("cb", None, None, None),
    "logger": ("any", None, None, None),
    "log_level": ("int", 6, 0, 7),
    "debug": ("str", "", None, None),
    "message.max.bytes": ("int", 1000000, 1000, 1000000000),
    "pylog.fsync": ("enum", "never", None, ("always", "interval", "never")),
    "pylog.fsync.interval.ms": ("int", 1000, 1, 86400000),
    "pylog.producer.id.expiration.ms": ("int", 86400000, 1, 2 ** 62),
}

_PRODUCER = {
    "acks": ("enum", "all", None, ("all", "-1", "0", "1")),
    "enable.idempotence": ("bool", False, None, None),
    "enable.gapless.guarantee": ("bool", False, None, None),
    "transactional.id": ("str", None, None, None),
    "transaction.timeout.ms": ("int", 60000, 1000, INT32_MAX),
    "linger.ms": ("float", 5.0, 0, 900000),
    "batch.num.messages": ("int", 10000, 1, 1000000),
    "batch.size": ("int", 1000000, 1, INT32_MAX),
    "queue.buffering.max.messages": ("int", 100000, 0, INT32_MAX),
    "queue.buffering.max.kbytes": ("int", 1048576, 1, INT32_MAX),
    "compression.type": ("enum", "none", None, ("none", "gzip", "snappy", "lz4", "zstd")),
    "compression.level": ("int", -1, -1, 12),
    "message.timeout.ms": ("int", 300000, 0, INT32_MAX),
    "max.in.flight.requests.per.connection": ("int", 1000000, 1, 1000000),
    "retries": ("int", INT32_MAX, 0, INT32_MAX),
    "retry.backoff.ms": ("int", 100, 1, 300000),
    "request.timeout.ms": ("int", 30000, 1, 900000),
    "partitioner": ("enum", "murmur2_random", None,
                    ("murmur2_random", "murmur2", "consistent_random", "consistent", "random", "fnv1a", "fnv1a_random")),
    "sticky.partitioning.linger.ms": ("int", 10, 0, 900000),
    "on_delivery": ("cb", None, None, None),
    "delivery.report.only.error": ("bool", False, None, None),
    "dr_msg_cb": ("cb", None, None, None),
    "dr_cb": ("cb", None, None, None),
}

_CONSUMER = {
    "group.id": ("str", None, None, None),
    "group.instance.id": ("str", None, None, None),
    "isolation.level": ("enum", "read_committed", None, ("read_committed", "read_uncommitted")),
    "auto.offset.reset": ("enum", "largest", None,
                          ("smallest", "earliest", "beginning", "largest", "latest", "end", "error")),
    "enable.auto.commit": ("bool", True, None, None),
    "auto.commit.interval.ms": ("int", 5000, 0, 86400000),
    "enable.auto.offset.store": ("bool", True, None, None),
    "enable.partition.eof": ("bool", False, None, None),
    "session.timeout.ms": ("int", 45000, 1, 3600000),
    "heartbeat.interval.ms": ("int", 3000, 1, 3600000),
    "max.poll.interval.ms": ("int", 300000, 1, 86400000),
    "partition.assignment.strategy": ("str", "range,roundrobin", None, None),
    "group.protocol": ("enum", "classic", None, ("classic", "consumer")),
    "fetch.max.bytes": ("int", 52428800, 0, INT32_MAX),
    "max.partition.fetch.bytes": ("int", 1048576, 1, INT32_MAX),
    "fetch.min.bytes": ("int", 1, 1, 100000000),
    "fetch.wait.max.ms": ("int", 500, 0, 300000),
    "queued.min.messages": ("int", 100000, 1, 10000000),
    "queued.max.messages.kbytes": ("int", 65536, 1, INT32_MAX),
    "check.crcs": ("bool", False, None, None),
    "allow.auto.create.topics": ("bool", False, None, None),
    "on_commit": ("cb", None, None, None),
}

_ALIASES = {
    "metadata.broker.list": "bootstrap.servers",
    "queue.buffering.max.ms": "linger.ms",
    "compression.codec": "compression.type",
    "request.required.acks": "acks",
    "delivery.timeout.ms": "message.timeout.ms",
    "max.in.flight": "max.in.flight.requests.per.connection",
    "message.send.max.retries": "retries",
    "topic.metadata.refresh.interval.ms": None,
}

# Accepted and ignored: they configure the network path to a broker.
_IGNORED_PREFIXES = ("socket.", "sasl.", "ssl.", "ssl_", "security.protocol", "metadata.",
                     "reconnect.", "api.version.", "broker.", "topic.metadata.", "connections.",
                     "client.rack", "client.dns.lookup", "enable.ssl.", "oauthbearer_", "https.",
                     "enable.sasl.", "retry.backoff.max.ms", "log.", "enable.metrics.push",
                     "resolve_cb", "oauth_cb", "open_cb", "closesocket_cb", "connect_cb")


def invalid(msg):
    return KafkaException(KafkaError(KafkaError._INVALID_ARG, msg))


def parse(conf, role):
    """Validate conf for role ("producer", "consumer" or "admin"); returns a
    dict with every known property set (defaults filled in)."""
    if not isinstance(conf, dict):
        raise TypeError("configuration must be a dict, not %s" % type(conf).__name__)
    schema = dict(_COMMON)
    if role == "producer":
        schema.update(_PRODUCER)
    elif role == "consumer":
        schema.update(_CONSUMER)
    out = {k: v[1] for k, v in schema.items()}
    for key, value in conf.items():
        if not isinstance(key, str):
            raise invalid("configuration property names must be str, got %r" % (key,))
        name = _ALIASES.get(key, key)
        if name is None or key.startswith(_IGNORED_PREFIXES):
            continue
        spec = schema.get(name)
        if spec is None:
            spec = _PRODUCER.get(name) or _CONSUMER.get(name)
            if spec is None:
                raise invalid('No such configuration property: "%s"' % key)
            # librdkafka checks the value of a property meant for the other
            # client type, then ignores it with a warning: one dict (with
            # group.id, linger.ms, ...) then configures producers, consumers
            # and admin clients alike, as with confluent-kafka.
            _convert(key, value, spec)
            if role != "admin":
                _log.warning('Configuration property %s is a %s property and will be ignored '
                             'by this %s instance', key,
                             "producer" if name in _PRODUCER else "consumer", role)
            continue
        out[name] = _convert(key, value, spec)
    return out


def _convert(key, value, spec):
    kind, _, low, high = spec
    bad = invalid('Invalid value "%s" for configuration property "%s"' % (value, key))
    if kind == "cb" or kind == "any":
        if kind == "cb" and value is not None and not callable(value):
            raise invalid('Configuration property "%s" must be callable' % key)
        return value
    if kind == "str":
        if value is not None and not isinstance(value, str):
            raise bad
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise bad
        try:
            num = float(value) if kind == "float" else int(value)
        except (TypeError, ValueError):
            raise bad from None
        if isinstance(value, float) and kind == "int" and value != int(value):
            raise bad
        if num < low or num > high:
            raise invalid('Configuration property "%s" value %s is outside allowed range %s..%s'
                          % (key, value, low, high))
        return num
    if kind == "enum":
        sval = str(value).lower() if not isinstance(value, bool) else None
        if sval not in high:
            raise invalid('Invalid value "%s" for configuration property "%s": expected one of %s'
                          % (value, key, ", ".join(high)))
        return sval
    raise AssertionError(kind)


def store_path(conf):
    """The store directory named by bootstrap.servers ("file:///path" or
    "file:relative/path"); None if it names a Kafka cluster."""
    servers = conf.get("bootstrap.servers")
    if not servers:
        raise invalid('"bootstrap.servers" is required: use file:///path/to/store for a local '
                      'store, or host:port for a Kafka cluster')
    if not servers.startswith("file:"):
        return None
    url = urlparse(servers)
    path = unquote(url.path if url.netloc in ("", "localhost") else "//" + url.netloc + url.path)
    if not path:
        raise invalid('"bootstrap.servers" %r names no directory' % servers)
    return path
