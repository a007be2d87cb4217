"""pylog.format: segment file names and Kafka's topic-name rule.

Kafka's rule (clients `common/internals/Topic.java`): characters [a-zA-Z0-9._-],
at most 249 of them, and never "." or "..".  A name becomes a directory, so
anything else could climb out of the store or collide on disk.
"""
import pytest

from pylog import format
from pylog.errors import KafkaError, KafkaException


# ---- segment file names ----
def test_segment_name_is_base_offset_zero_padded_to_20_digits():
    assert format.segment_name(0, ".log") == "00000000000000000000.log"
    assert format.segment_name(42, ".index") == "00000000000000000042.index"
    assert format.segment_name(2 ** 63 - 1, ".timeindex") == "09223372036854775807.timeindex"


@pytest.mark.parametrize("base", [0, 1, 4096, 10 ** 12, 2 ** 63 - 1])
@pytest.mark.parametrize("suffix", [".log", ".index", ".timeindex"])
def test_parse_segment_name_inverts_segment_name(base, suffix):
    assert format.parse_segment_name(format.segment_name(base, suffix)) == base


@pytest.mark.parametrize("name", [
    "0000000000000000000.log",          # 19 digits
    "000000000000000000000.log",        # 21 digits
    "0000000000000000000a.log",
    "00000000000000000000",             # no suffix
    "recovery-point", ".lock", ".sync", "",
])
def test_parse_segment_name_rejects_other_files(name):
    assert format.parse_segment_name(name) is None


def test_segment_names_sort_by_offset():
    offsets = [10 ** k for k in range(19)] + [0, 7, 99]
    names = sorted(format.segment_name(o, ".log") for o in offsets)
    assert [format.parse_segment_name(n) for n in names] == sorted(offsets)


# ---- topic names ----
@pytest.mark.parametrize("name", [
    "a", "orders", "Orders-2024_v1.0", "...", "-", "_", ".a", "a.", "0", "x" * 249,
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
])
def test_validate_topic_accepts_legal_names(name):
    assert format.validate_topic(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", "../x", "a/b", "/abs", "a\\b", "é", "caf\u00e9", "a b", "a\tb", "a:b",
    "a\x00b", "orders\n", "\norders", "a\r", "x" * 250, "\u0661", "ａ",   # Arabic digit, fullwidth a
])
def test_validate_topic_refuses_illegal_names_with_topic_exception(name):
    with pytest.raises(KafkaException) as ei:
        format.validate_topic(name)
    assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION


@pytest.mark.parametrize("name", [None, b"orders", 42, ["orders"]])
def test_validate_topic_refuses_non_str_with_topic_exception(name):
    with pytest.raises(KafkaException) as ei:
        format.validate_topic(name)
    assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION


def test_validate_topic_error_message_names_the_limit():
    with pytest.raises(KafkaException) as ei:
        format.validate_topic("x" * 250)
    assert "250" in str(ei.value) and "249" in str(ei.value)


# ---- partition directories ----
@pytest.mark.parametrize("topic,partition", [("orders", 0), ("a-b-c", 12), ("x.y_z", 3),
                                             ("-", 0), ("t-1", 1)])
def test_partition_dir_name_round_trips(topic, partition):
    assert format.parse_partition_dir(format.partition_dir_name(topic, partition)) == (topic, partition)


@pytest.mark.parametrize("name", ["orders", "orders-", "-0", ".-0", "..-0", "a/b-0", "é-0",
                                  "orders-0\n", "orders-x", "meta",
                                  "orders-\u0661"])   # an Arabic-Indic 1 would alias "orders-1"
def test_parse_partition_dir_rejects_other_directories(name):
    assert format.parse_partition_dir(name) is None
