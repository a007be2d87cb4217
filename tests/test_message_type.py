"""pylog.message.Message: the C type (csrc/message_type.c) and the Python
fallback class (PyMessage, used with PYLOG_NO_FASTMSG) behave alike."""
import gc
import pickle
import weakref

import pytest

from pylog import _fastmsg, message
from pylog.errors import KafkaError
from pylog.message import (PyMessage, Message, OFFSET_INVALID, TIMESTAMP_CREATE_TIME,
                           TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE)

SLOTS = PyMessage.__slots__
CLASSES = [pytest.param(_fastmsg.Message, id="C"), pytest.param(PyMessage, id="Python")]
# With PYLOG_NO_FASTMSG set, pylog.message.Message is PyMessage: C instances
# then pickle under a name that is not their class.
c_is_public = pytest.mark.skipif(message.fastmsg is None, reason="PYLOG_NO_FASTMSG is set")


@c_is_public
def test_the_c_type_is_the_public_one():
    assert message.fastmsg is _fastmsg and Message is _fastmsg.Message
    assert Message.__module__ == "pylog.message" and Message.__name__ == "Message"
    assert PyMessage.__name__ == "Message"


def shown(m):
    return (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(),
            m.timestamp(), m.error(), m.latency(), m.leader_epoch(), len(m), repr(m),
            tuple(getattr(m, s) for s in SLOTS))


@pytest.mark.parametrize("cls", CLASSES)
def test_defaults(cls):
    m = cls()
    assert shown(m)[:11] == (None, -1, OFFSET_INVALID, None, None, None,
                             (TIMESTAMP_NOT_AVAILABLE, -1), None, None, None, 0)
    assert repr(m) == "Message(topic=None, partition=-1, offset=-1001, key=None, value=None)"


ARGS = [
    ("t", 3, 7, b"k", b"v", [("h", b"x")], 1700000000000),
    ("t", 0, 1 << 62, None, b"x" * 100, None, 0, None, TIMESTAMP_LOG_APPEND_TIME),
    ("t", 1, 2, b"", b"", [], -1),
    ("t", 1, 2, b"", None, None, None),
    (None, None, None, None, None, None, -5, KafkaError(KafkaError._PARTITION_EOF, "eof")),
    ("t", 2, 1 << 70, b"k", "a str value", None, 5, None, TIMESTAMP_CREATE_TIME, 0.5, 3),
]


@pytest.mark.parametrize("args", ARGS)
def test_both_classes_show_the_same(args):
    a, b = _fastmsg.Message(*args), PyMessage(*args)
    assert shown(a) == shown(b)
    names = ("topic", "partition", "offset", "key", "value", "headers", "timestamp", "error",
             "tstype", "latency", "leader_epoch")
    kw = dict(zip(names, args))
    assert shown(_fastmsg.Message(**kw)) == shown(b)


@pytest.mark.parametrize("cls", CLASSES)
def test_timestamp_type_follows_the_timestamp(cls):
    assert cls("t", 0, 0, timestamp=5).timestamp() == (TIMESTAMP_CREATE_TIME, 5)
    assert cls("t", 0, 0, timestamp=0, tstype=2).timestamp() == (TIMESTAMP_LOG_APPEND_TIME, 0)
    assert cls("t", 0, 0, timestamp=-1, tstype=2).timestamp() == (TIMESTAMP_NOT_AVAILABLE, -1)
    assert cls("t", 0, 0, timestamp=None).timestamp() == (TIMESTAMP_NOT_AVAILABLE, None)


@pytest.mark.parametrize("cls", CLASSES)
def test_setters_len_and_repr(cls):
    m = cls("t", 0, 9, b"k", b"v" * 41)
    assert repr(m) == "Message(topic='t', partition=0, offset=9, key=b'k', value=%r)" % (
        b"v" * 40 + b"...")
    m.set_value(b"abc")
    m.set_key(None)
    m.set_headers([("a", None)])
    assert (m.value(), m.key(), m.headers(), len(m)) == (b"abc", None, [("a", None)], 3)
    m.set_headers([])
    assert m.headers() is None and m._headers == []
    assert repr(cls(error=KafkaError(KafkaError._FENCED, "x"))).startswith("Message(error=")


@c_is_public
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("args", ARGS)
def test_pickle_round_trip(cls, args):
    m = cls(*args)
    if m.error() is not None:
        return                                      # KafkaError pickling is not ours
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is message.Message and shown(back) == shown(Message(*args))


def test_subclass():
    class Tagged(Message):
        def __init__(self, tag, *args, **kw):
            super().__init__(*args, **kw)
            self.tag = tag

    m = Tagged("x", "t", 1, 2, b"k", b"v")
    assert (m.tag, m.offset(), m.value(), isinstance(m, Message)) == ("x", 2, b"v", True)
    m.self_ref = m                                  # a cycle through the instance dict
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


def test_c_type_refuses_a_non_int_timestamp_type():
    with pytest.raises(TypeError):
        _fastmsg.Message("t", 0, 0, tstype="create")


def test_the_slot_names_are_read_only_on_the_c_type():
    m = _fastmsg.Message("t", 0, 0)
    with pytest.raises(AttributeError):
        m._value = b"x"


def test_c_type_does_not_leak():
    import sys

    def churn(n):
        for _ in range(n):
            for args in ARGS:
                m = _fastmsg.Message(*args)
                shown(m)
                m.set_value(b"x")
                m.set_headers(None)
                m.__reduce__()
                try:
                    _fastmsg.Message("t", 0, 0, tstype="bad")
                except TypeError:
                    pass

    churn(200)
    gc.collect()
    blocks = sys.getallocatedblocks()
    churn(2000)
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200     # a leaked object a call: 2,000+
