"""pylog.torture.checker: synthetic histories, one per anomaly kind.

Each test builds the smallest history that shows one anomaly (producers'
acknowledged sends, transaction outcomes, consumers' polls) and asserts the
checker reports exactly that kind; the clean history reports nothing.
Offsets are laid out as a partition would hold them: data, then markers.
"""
import json

import pytest

from pylog.torture import checker
from pylog.torture.checker import History, check


# ---- history builders ----

def produce(v, topic="a", partition=0, txn=None, proc="p", i=None):
    ev = {"op": "produce", "value": v, "topic": topic, "partition": partition, "txn": txn,
          "proc": proc}
    if i is not None:
        ev["i"] = i
    return ev


def send(v, offset, topic="a", partition=0, txn=None, proc="p", i=None):
    return dict(produce(v, topic, partition, txn, proc, i), op="send", offset=offset)


def commit(txn, start=1.0, end=1.1):
    return [{"op": "commit_start", "txn": txn, "t": start},
            {"op": "end", "txn": txn, "outcome": "committed", "t": end}]


def abort(txn, end=1.1):
    return [{"op": "end", "txn": txn, "outcome": "aborted", "t": end}]


def start(run, isolation="read_committed", positions=(("a", 0, 0),)):
    return {"op": "start", "run": run, "isolation": isolation,
            "positions": [list(p) for p in positions]}


def poll(t1, *msgs):
    """msgs: (offset, value) on a-0, or (topic, partition, offset, value)."""
    out = []
    for m in msgs:
        out.append(["a", 0, m[0], m[1]] if len(m) == 2 else list(m))
    return {"op": "poll", "t0": t1 - 0.01, "t1": t1, "msgs": out}


def end(final=True, ends=(("a", 0, 99),)):
    return {"op": "end", "complete": True, "final": final, "ends": [list(e) for e in ends]}


def run_check(producers, consumers, copies=None):
    h = History()
    for events in producers:
        h.add_producer_events(events)
    for events in consumers:
        h.add_consumer_events(events)
    return check(h, copies=copies)


def assert_only(report, kind):
    assert report.count(kind) >= 1, report.summary()
    others = {k: a for k, a in report.anomalies.items() if k != kind}
    assert not others, report.summary()


# A clean history: t1 committed at 0-1 (a-0) and 0 (b-0), markers at a-0 2 and
# b-0 1; t2 aborted at a-0 3-4, marker 5; t3 committed at a-0 6, marker 7.
CLEAN_PRODUCER = (
    [send("v1", 0, txn="t1", i=1), send("v2", 1, txn="t1", i=2),
     send("w1", 0, topic="b", txn="t1", i=3)] + commit("t1", 1.0, 1.1) +
    [send("v3", 3, txn="t2", i=4), send("v4", 4, txn="t2", i=5)] + abort("t2", 1.3) +
    [send("v5", 6, txn="t3", i=6)] + commit("t3", 1.5, 1.6))
CLEAN_READERS = [
    [start("rc", positions=[("a", 0, 0), ("b", 0, 0)]), poll(1.2, (0, "v1"), (1, "v2")),
     poll(1.7, (6, "v5"), ("b", 0, 0, "w1")), end(ends=[("a", 0, 8), ("b", 0, 2)])],
    [start("ru", "read_uncommitted"), poll(1.25, (0, "v1"), (1, "v2"), (3, "v3"), (4, "v4")),
     poll(1.7, (6, "v5")), end()],
]


def test_clean_history_has_no_anomalies():
    rep = run_check([CLEAN_PRODUCER], CLEAN_READERS)
    assert rep.ok, rep.summary()
    assert rep.stats["acked"] == 4 and rep.stats["committed"] == 2 and rep.stats["aborted"] == 1


def test_every_kind_is_documented():
    for kind in checker.KINDS:
        assert kind in checker.__doc__


def test_lost_write_acknowledged_offset_skipped_by_a_reader_that_read_past_it():
    prod = [send("v0", 0, i=1), send("v1", 1, i=2), send("v2", 2, i=3)]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "v0"), (2, "v2"))]])
    assert rep.count("lost-write") == 1
    assert rep.anomalies["lost-write"]["example"]["value"] == "v1"


def test_unseen_acknowledged_write_never_read():
    prod = [send("v0", 0, i=1), send("v1", 1, i=2)]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "v0"))]])
    assert_only(rep, "unseen")
    assert rep.anomalies["unseen"]["example"]["value"] == "v1"


def test_duplicate_one_value_at_two_offsets():
    prod = [send("v0", 0, i=1)]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "v0"), (1, "v0"))]])
    assert rep.count("duplicate") == 1


def test_inconsistent_offsets_two_values_at_one_offset():
    prod = [send("x", 0, i=1), send("y", 0, proc="q", i=1)]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "x"))]])
    assert rep.count("inconsistent-offsets") == 1
    assert rep.anomalies["inconsistent-offsets"]["example"]["values"] == ["x", "y"]


def test_g1a_read_committed_sees_an_aborted_transaction():
    prod = [send("v0", 0, txn="t", i=1)] + abort("t")
    rep = run_check([prod], [[start("r"), poll(2.0, (0, "v0"))]])
    assert_only(rep, "G1a")


def test_read_uncommitted_may_see_aborted_data():
    prod = [send("v0", 0, txn="t", i=1)] + abort("t")
    rep = run_check([prod], [[start("r", "read_uncommitted"), poll(2.0, (0, "v0"))]])
    assert rep.ok, rep.summary()


def test_precommitted_read_before_commit_began():
    prod = [send("v0", 0, txn="t", i=1)] + commit("t", start=5.0, end=5.1)
    rep = run_check([prod], [[start("r"), poll(4.0, (0, "v0"))]])
    assert_only(rep, "precommitted-read")


def test_precommitted_read_of_a_transaction_never_committed():
    # The producer died before commit_transaction(): nothing may be visible.
    prod = [produce("v0", txn="t", i=1), send("v0", 0, txn="t", i=1)]
    rep = run_check([prod], [[start("r"), poll(4.0, (0, "v0"))]])
    assert_only(rep, "precommitted-read")


def test_poll_skip_over_an_offset_another_reader_saw():
    prod = [send("v0", 0, i=1), send("v1", 1, i=2), send("v2", 2, i=3)]
    rep = run_check([prod], [[start("r1"), poll(1.0, (0, "v0")), poll(1.1, (2, "v2"))],
                             [start("r2"), poll(1.0, (0, "v0"), (1, "v1"), (2, "v2"))]])
    assert_only(rep, "poll-skip")
    ex = rep.anomalies["poll-skip"]["example"]
    assert (ex["reader"], ex["from"], ex["to"], ex["skipped"]) == ("r1", 0, 2, 1)


def test_skipping_aborted_offsets_and_markers_is_not_a_poll_skip():
    rep = run_check([CLEAN_PRODUCER], [[start("rc"), poll(1.2, (0, "v1")), poll(1.3, (1, "v2")),
                                        poll(1.7, (6, "v5"))]])
    assert rep.count("poll-skip") == 0, rep.summary()


def test_nonmonotonic_poll_offsets_go_back():
    prod = [send("v0", 0, i=1), send("v1", 1, i=2)]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "v0"), (1, "v1")), poll(1.1, (1, "v1"))]])
    assert rep.count("nonmonotonic-poll") == 1


def test_seek_resets_the_expected_position():
    prod = [send("v0", 0, i=1), send("v1", 1, i=2), send("v2", 2, i=3)]
    events = [start("r"), poll(1.0, (0, "v0"), (1, "v1")),
              {"op": "seek", "positions": [["a", 0, 0]]}, poll(1.1, (0, "v0"), (1, "v1"), (2, "v2")),
              {"op": "seek", "positions": [["a", 0, -1]]}, poll(1.2, (2, "v2"))]
    rep = run_check([prod], [events])
    assert rep.ok, rep.summary()


def test_nonmonotonic_send_offsets_fall_while_produce_order_rises():
    prod = [send("v0", 5, i=1), send("v1", 3, i=2)]
    rep = run_check([prod], [[start("r"), poll(1.0, (3, "v1"), (5, "v0"))]])
    assert_only(rep, "nonmonotonic-send")


def test_torn_transaction_visible_in_one_partition_only():
    # Outcome unknown (the producer died after commit_start): all or nothing.
    prod = [produce("x", txn="t", i=1), send("x", 0, txn="t", i=1),
            produce("y", topic="b", txn="t", i=2), send("y", 0, topic="b", txn="t", i=2),
            {"op": "commit_start", "txn": "t", "t": 1.0}]
    reader = [start("r", positions=[("a", 0, 0), ("b", 0, 0)]), poll(2.0, (0, "x")),
              end(ends=[("a", 0, 2), ("b", 0, 2)])]
    rep = run_check([prod], [reader])
    assert_only(rep, "torn-transaction")
    assert rep.anomalies["torn-transaction"]["example"]["missing"] == "y"


def test_torn_transaction_found_for_a_write_without_delivery_report():
    # y never got its delivery report (offset unknown); a final reader covers b-0.
    prod = [produce("x", txn="t", i=1), send("x", 0, txn="t", i=1),
            produce("y", topic="b", txn="t", i=2), {"op": "commit_start", "txn": "t", "t": 1.0}]
    reader = [start("r", positions=[("a", 0, 0), ("b", 0, 0)]), poll(2.0, (0, "x")),
              end(ends=[("a", 0, 2), ("b", 0, 0)])]
    rep = run_check([prod], [reader])
    assert_only(rep, "torn-transaction")


def test_phantom_read_of_a_value_nobody_wrote():
    rep = run_check([[send("v0", 0, i=1)]], [[start("r"), poll(1.0, (0, "v0"), (1, "garbage"))]])
    assert_only(rep, "phantom-read")


def test_lost_copy_input_visible_but_never_copied():
    prod = [send("v0", 0, topic="in", i=1), send("v1", 1, topic="in", i=2),
            send("c:v0", 0, topic="out", txn="c", proc="copier", i=1)] + commit("c")
    reader = [start("r", positions=[("in", 0, 0), ("out", 0, 0)]),
              poll(2.0, ("in", 0, 0, "v0"), ("in", 0, 1, "v1"), ("out", 0, 0, "c:v0")),
              end(ends=[("in", 0, 2), ("out", 0, 2)])]
    rep = run_check([prod], [reader], copies={("in", "out"): "c:"})
    assert_only(rep, "lost-copy")
    assert rep.anomalies["lost-copy"]["example"]["missing"] == "c:v1"


def test_copier_redoing_an_aborted_copy_is_clean():
    # The same output value in an aborted and then a committed transaction.
    prod = ([send("c:v0", 0, topic="out", txn="c1", proc="copier", i=1)] + abort("c1") +
            [send("c:v0", 2, topic="out", txn="c2", proc="copier", i=2)] + commit("c2", 2.0, 2.1))
    readers = [[start("rc", positions=[("out", 0, 0)]), poll(3.0, ("out", 0, 2, "c:v0")),
                end(ends=[("out", 0, 4)])],
               [start("ru", "read_uncommitted", positions=[("out", 0, 0)]),
                poll(3.0, ("out", 0, 0, "c:v0"), ("out", 0, 2, "c:v0"))]]
    rep = run_check([prod], readers)
    assert rep.ok, rep.summary()


def test_copied_twice_is_a_duplicate():
    prod = ([send("c:v0", 0, topic="out", txn="c1", proc="copier", i=1)] + commit("c1") +
            [send("c:v0", 2, topic="out", txn="c2", proc="copier", i=2)] + commit("c2", 2.0, 2.1))
    reader = [start("rc", positions=[("out", 0, 0)]),
              poll(3.0, ("out", 0, 0, "c:v0"), ("out", 0, 2, "c:v0"))]
    rep = run_check([prod], [reader])
    assert_only(rep, "duplicate")


def test_brief_send_lines_without_op_carry_their_outcome():
    # The minimal format: value, topic, partition, offset, txn, outcome.
    prod = [{"value": "v0", "topic": "a", "partition": 0, "offset": 0, "txn": "t",
             "outcome": "aborted"}]
    rep = run_check([prod], [[start("r"), poll(1.0, (0, "v0"))]])
    assert_only(rep, "G1a")


def test_logs_read_from_files_tolerate_a_torn_last_line(tmp_path):
    p, c = tmp_path / "p-1.jsonl", tmp_path / "c-1.jsonl"
    p.write_text("\n".join(json.dumps(e) for e in CLEAN_PRODUCER) + '\n{"op": "sen')
    c.write_text("\n".join(json.dumps(e) for e in CLEAN_READERS[0]) + "\n")
    rep = check(producer_logs=[str(p)], consumer_logs=[str(c), str(tmp_path / "missing.jsonl")])
    assert rep.ok, rep.summary()
    assert rep.stats["bad_lines"] == 1


def test_report_counts_merge_and_summary():
    a, b = checker.Report(), checker.Report()
    a.add("G1a", {"value": "x"})
    a.add("G1a", {"value": "y"})
    b.add("G1a", {"value": "z"})
    b.add("duplicate", {"value": "d"})
    a.merge(b)
    assert a.count("G1a") == 3 and a.count() == 4 and not a.ok
    assert a.anomalies["G1a"]["example"] == {"value": "x"}
    assert "G1a=3" in a.summary()


@pytest.mark.parametrize("kind", checker.KINDS)
def test_each_kind_has_a_synthetic_case_here(kind):
    names = [n for n in globals() if n.startswith("test_")]
    words = kind.lower().replace("-", "_")
    assert any(words in n for n in names), "no test named after %s" % kind
