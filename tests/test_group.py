"""Group membership (pylog.group): assignment strategies, fencing, liveness."""
import time

import pytest

from pylog import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pylog.admin import AdminClient, NewTopic
from pylog.group import GroupStore, compute_assignment, parse_strategy
from pylog.store import Store


def members(*names, topics=("t",)):
    return {n: {"topics": list(topics)} for n in names}


@pytest.mark.parametrize("protocol", ["range", "roundrobin", "cooperative-sticky"])
@pytest.mark.parametrize("n_members,n_parts", [(1, 4), (3, 8), (4, 3), (5, 16)])
def test_every_partition_has_exactly_one_owner_and_counts_are_balanced(protocol, n_members, n_parts):
    ms = members(*["m%d" % i for i in range(n_members)])
    out = compute_assignment(protocol, ms, {"t": n_parts})
    owned = [tuple(tp) for parts in out.values() for tp in parts]
    assert sorted(owned) == [("t", p) for p in range(n_parts)]
    counts = [len(v) for v in out.values()]
    assert max(counts) - min(counts) <= 1


def test_range_gives_consecutive_partitions_per_topic():
    out = compute_assignment("range", members("a", "b", "c"), {"t": 8})
    assert out == {"a": [["t", 0], ["t", 1], ["t", 2]], "b": [["t", 3], ["t", 4], ["t", 5]],
                   "c": [["t", 6], ["t", 7]]}


def test_only_subscribers_get_a_topic():
    ms = {"a": {"topics": ["x"]}, "b": {"topics": ["x", "y"]}}
    out = compute_assignment("roundrobin", ms, {"x": 2, "y": 2})
    assert all(tp[0] == "x" for tp in out["a"])
    assert sorted(tuple(tp) for tp in out["b"] if tp[0] == "y") == [("y", 0), ("y", 1)]


def test_cooperative_sticky_moves_only_what_it_must():
    three = compute_assignment("cooperative-sticky", members("a", "b", "c"), {"t": 9})
    two = compute_assignment("cooperative-sticky", members("a", "b"), {"t": 9}, three)
    for m in ("a", "b"):                          # survivors keep everything they had
        assert all(tp in two[m] for tp in three[m])
    back = compute_assignment("cooperative-sticky", members("a", "b", "c"), {"t": 9}, two)
    moved = sum(1 for m in ("a", "b") for tp in two[m] if tp not in back[m])
    assert moved == 3                              # exactly what the newcomer needs


def test_unknown_strategy_is_refused():
    with pytest.raises(KafkaException) as ei:
        parse_strategy("range,sticky-ish")
    assert ei.value.args[0].code() == KafkaError._INVALID_ARG


@pytest.fixture
def conf(tmp_path):
    c = {"bootstrap.servers": "file://" + str(tmp_path)}
    a = AdminClient(c)
    a.create_topics([NewTopic("t", 4)])["t"].result()
    a.close()
    return c


def consumer(conf, **extra):
    return Consumer({**conf, "group.id": "g", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": 1500,
                     "heartbeat.interval.ms": 100, **extra})


def settle(*cs, rounds=40):
    for _ in range(rounds):
        for c in cs:
            c.poll(0.02)
        owned = [tp for c in cs for tp in c.assignment()]
        if len(owned) == 4 and len(set(owned)) == 4 and all(c.assignment() for c in cs):
            return
    raise AssertionError("the group did not settle: %s" % [c.assignment() for c in cs])


def test_cooperative_members_revoke_only_moved_partitions(conf):
    revoked = []
    a = consumer(conf, **{"partition.assignment.strategy": "cooperative-sticky"})
    a.subscribe(["t"], on_revoke=lambda c, parts: revoked.append(sorted(parts)))
    settle(a)
    assert len(a.assignment()) == 4
    b = consumer(conf, **{"partition.assignment.strategy": "cooperative-sticky"})
    b.subscribe(["t"])
    settle(a, b)
    assert len(revoked) == 1 and len(revoked[0]) == 2   # gave up two, kept two, no full revoke
    a.close()
    b.close()


def test_stale_generation_and_expelled_member_cannot_commit(conf):
    a = consumer(conf)
    a.subscribe(["t"])
    settle(a)
    gm = a.consumer_group_metadata()
    groups = GroupStore(Store.acquire(conf["bootstrap.servers"][7:]))
    try:
        meta = groups.meta
        assert meta.view(lambda txn: groups.check_member(txn, "g", gm.generation_id, gm.member_id)) is None
        err = meta.view(lambda txn: groups.check_member(txn, "g", gm.generation_id - 1, gm.member_id))
        assert err.code() == KafkaError.ILLEGAL_GENERATION and err.txn_requires_abort()
        err = meta.view(lambda txn: groups.check_member(txn, "g", gm.generation_id, "nobody"))
        assert err.code() == KafkaError.UNKNOWN_MEMBER_ID
    finally:
        groups.store.release()
        a.close()


def test_expelled_member_gets_on_lost_and_its_commit_is_refused(conf):
    lost = []
    a = consumer(conf)
    a.subscribe(["t"], on_lost=lambda c, parts: lost.append(len(parts)))
    settle(a)
    member = a._member
    member.stopped = True                          # stop heartbeating: looks dead
    time.sleep(1.7)
    b = consumer(conf)
    b.subscribe(["t"])                             # b's join expels a (session expired)
    with pytest.raises(KafkaException) as ei:
        a.commit(offsets=[TopicPartition("t", 0, 1)], asynchronous=False)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_MEMBER_ID
    a.poll(0.1)                                    # a finds out: partitions lost, rejoins
    assert lost == [4]
    b.close()
    a.close()


def test_member_that_stops_polling_leaves_and_is_told(conf):
    p = Producer(conf)
    p.produce("t", b"x", partition=0)
    p.flush()
    p.close()
    a = consumer(conf, **{"max.poll.interval.ms": 300})
    a.subscribe(["t"])
    settle(a)
    time.sleep(0.8)                                # longer than max.poll.interval.ms
    msgs = []
    for _ in range(20):
        m = a.poll(0.05)
        if m is not None:
            msgs.append(m)
    codes = [m.error().code() for m in msgs if m.error() is not None]
    assert KafkaError._MAX_POLL_EXCEEDED in codes
    a.close()
