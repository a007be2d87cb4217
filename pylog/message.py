"""Message and TopicPartition, shaped like confluent-kafka's.

Message is the C type of pylog._fastmsg (csrc/message_type.c) when that
extension is built, else (or with PYLOG_NO_FASTMSG set) the Python class
below, PyMessage; both behave alike (tests/test_message_type.py)."""
import os

OFFSET_BEGINNING = -2
OFFSET_END = -1
OFFSET_STORED = -1000
OFFSET_INVALID = -1001

TIMESTAMP_NOT_AVAILABLE = 0
TIMESTAMP_CREATE_TIME = 1
TIMESTAMP_LOG_APPEND_TIME = 2


def _load_fastmsg():
    if os.environ.get("PYLOG_NO_FASTMSG", "") not in ("", "0"):
        return None
    try:
        from . import _fastmsg
    except ImportError:
        return None
    return _fastmsg


fastmsg = _load_fastmsg()       # None: the Python class and decode loop


class PyMessage:
    """One record as handed to the application (or a delivery report, or an
    event carrying only error())."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers",
                 "_timestamp", "_tstype", "_error", "_latency", "_leader_epoch")

    def __init__(self, topic=None, partition=-1, offset=OFFSET_INVALID, key=None, value=None,
                 headers=None, timestamp=-1, error=None, tstype=TIMESTAMP_CREATE_TIME,
                 latency=None, leader_epoch=None):
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._headers = headers
        self._timestamp = timestamp
        self._tstype = tstype if timestamp is not None and timestamp >= 0 else TIMESTAMP_NOT_AVAILABLE
        self._error = error
        self._latency = latency
        self._leader_epoch = leader_epoch

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def headers(self):
        """[(str, bytes or None)], or None when the record has no headers."""
        return self._headers or None

    def timestamp(self):
        """(timestamp type, milliseconds since the epoch)."""
        return (self._tstype, self._timestamp)

    def error(self):
        return self._error

    def latency(self):
        return self._latency

    def leader_epoch(self):
        return self._leader_epoch

    def set_headers(self, headers):
        self._headers = headers

    def set_key(self, key):
        self._key = key

    def set_value(self, value):
        self._value = value

    def __len__(self):
        return len(self._value) if self._value is not None else 0

    def __reduce__(self):
        # by the public name, whichever class it is in the unpickling process
        return (Message, (self._topic, self._partition, self._offset, self._key, self._value,
                             self._headers, self._timestamp, self._error, self._tstype,
                             self._latency, self._leader_epoch))

    def __repr__(self):
        if self._error is not None:
            return "Message(error=%s)" % (self._error,)
        return "Message(topic=%r, partition=%d, offset=%d, key=%r, value=%r)" % (
            self._topic, self._partition, self._offset, self._key,
            self._value if self._value is None or len(self._value) <= 40 else self._value[:40] + b"...")


PyMessage.__name__ = PyMessage.__qualname__ = "Message"
Message = fastmsg.Message if fastmsg is not None else PyMessage


class TopicPartition:
    """A (topic, partition, offset) triple, with metadata and a per-partition error."""

    __slots__ = ("topic", "partition", "offset", "metadata", "leader_epoch", "error")

    def __init__(self, topic, partition=-1, offset=OFFSET_INVALID, metadata=None, leader_epoch=None):
        if not isinstance(topic, str):
            raise TypeError("TopicPartition topic must be str, not %s" % type(topic).__name__)
        if not isinstance(partition, int) or not isinstance(offset, int):
            raise TypeError("TopicPartition partition and offset must be int")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.metadata = metadata
        self.leader_epoch = leader_epoch
        self.error = None

    def _key(self):
        return (self.topic, self.partition)

    def __eq__(self, other):
        if not isinstance(other, TopicPartition):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other):
        return self._key() < other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "TopicPartition{topic=%s,partition=%d,offset=%d,leader_epoch=%s,error=%s}" % (
            self.topic, self.partition, self.offset, self.leader_epoch, self.error)

    __str__ = __repr__
