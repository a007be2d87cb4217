"""One producer's records keep their produce() order within each partition,
whatever mix of keyless, keyed, explicit-partition, header and callback
records one drain of the queue takes (Kafka's per-partition ordering)."""
import random

import pytest

from pylog import Producer

from txn_support import conf_for, create_topics, read_all


def _produce_mix(p, topic, first, n, nparts, rng, reports):
    sent = []
    for i in range(first, first + n):
        value = b"%d" % i
        kind = rng.randrange(5)
        if kind == 0:
            p.produce(topic, value)
        elif kind == 1:
            p.produce(topic, value, key=b"k%d" % rng.randrange(7))
        elif kind == 2:
            p.produce(topic, value, partition=rng.randrange(nparts))
        elif kind == 3:
            p.produce(topic, value, headers=[("h", b"x")])
        else:
            p.produce(topic, value, on_delivery=lambda err, m: reports.append((err, m)))
        sent.append(value)
    return sent


def _read(conf, topic, nparts):
    by_part = {p: [] for p in range(nparts)}
    for m in read_all(conf, [(topic, p) for p in range(nparts)], group="order"):
        by_part[m.partition()].append((m.offset(), m.value()))
    return by_part


@pytest.mark.parametrize("fastprod", ["1", "0"])
@pytest.mark.parametrize("nparts", [1, 3])
def test_each_partition_keeps_produce_order(tmp_path, monkeypatch, fastprod, nparts):
    monkeypatch.setenv("PYLOG_NO_FASTPROD", "0" if fastprod == "1" else "1")
    conf = conf_for(tmp_path)
    create_topics(conf, {"t": nparts})
    rng = random.Random(nparts)
    reports = []
    # a long linger: each flush() drains one queue holding every kind of record
    p = Producer({**conf, "linger.ms": 10000, "batch.num.messages": 50})
    sent = []
    for r in range(4):
        sent += _produce_mix(p, "t", r * 300, 300, nparts, rng, reports)
        assert p.flush(30) == 0
    p.close()
    by_part = _read(conf, "t", nparts)
    got = [v for part in by_part.values() for _, v in part]
    assert sorted(got) == sorted(sent)
    order = {v: i for i, v in enumerate(sent)}
    for part, recs in by_part.items():
        assert [o for o, _ in recs] == sorted(o for o, _ in recs)
        ranks = [order[v] for _, v in recs]
        assert ranks == sorted(ranks), "partition %d out of produce order" % part
    # delivery reports carry the offsets the records got, in produce order per partition
    assert reports and all(err is None for err, _ in reports)
    seen = {}
    for _, m in reports:
        seen.setdefault(m.partition(), []).append((order[m.value()], m.offset()))
    for part, pairs in seen.items():
        assert [o for _, o in pairs] == sorted(o for _, o in pairs)
        assert [r for r, _ in pairs] == sorted(r for r, _ in pairs)
