"""Operational metrics of a store, and librdkafka-shaped client statistics.

Store metrics (what `pylog stats` prints):

    from pylog import metrics
    m = metrics.collect("file:///var/lib/app/log")       # or a path, or a Store
    m["partitions"]  # [{"topic", "partition", "log_start_offset", "high_watermark",
                     #   "last_stable_offset", "size_bytes", "segments",
                     #   "open_transactions", "producer_count"}, ...]
    m["groups"]      # {group: [{"topic", "partition", "committed_offset",
                     #           "high_watermark", "lag"}, ...]}

Lag is measured against the high watermark, as kafka-consumer-groups.sh does.
collect() opens the partitions it reports on (which runs the same recovery
as any opener).

Client statistics: StatsEmitter builds the JSON that librdkafka hands to
stats_cb every statistics.interval.ms (name, client_id, type, ts, time,
age, msg_cnt, msg_size, topics -> partitions with hi_offset, ls_offset,
lo_offset, committed_offset, consumer_lag, ..., plus cgrp and eos).  A
Producer or Consumer creates one and calls maybe_emit() from poll(); it
reads the client's state and only the partitions the process already has
open, so it costs nothing when stats_cb is unset.
"""
import itertools
import json
import time

__all__ = ["collect", "partition_metrics", "group_lag", "group_names", "StatsEmitter"]


# ---- store metrics ----
def partition_metrics(part):
    """Metrics of one open Partition (pylog.store.Partition), taking in
    other processes' appends first."""
    hw = part.refresh()
    with part.log._mutex:
        state = part.state
        lso = state.lso(hw)
        open_txns = len(state.open_txns)
        producers = len(state.entries)
        segments = part.log.segments()
        start = part.log.log_start_offset
    return {"topic": part.topic, "partition": part.partition, "log_start_offset": start,
            "high_watermark": hw, "last_stable_offset": lso,
            "size_bytes": sum(s.size for s in segments), "segments": len(segments),
            "open_transactions": open_txns, "producer_count": producers}


def group_names(store):
    """Every group the store knows: with committed offsets or with a membership record."""
    meta = store.meta

    def names(txn):
        out = set(meta.groups(txn))
        with txn.cursor(db=meta.db["groups"]) as cur:
            out.update(k.decode("utf-8") for k in cur.iternext(values=False))
        return out
    return sorted(meta.view(names))


def group_lag(store, group, high_watermark=None):
    """[{"topic", "partition", "committed_offset", "high_watermark", "lag"}]
    for the group's committed offsets; high_watermark(topic, partition) is
    used when given (None: the partition no longer exists)."""
    meta = store.meta
    offsets = meta.view(lambda txn: meta.group_offsets(txn, group))
    hw_of = high_watermark or (lambda t, p: _hw(store, t, p))
    rows = []
    for (topic, partition), rec in sorted(offsets.items()):
        hw = hw_of(topic, partition)
        rows.append({"topic": topic, "partition": partition, "committed_offset": rec["offset"],
                     "high_watermark": hw, "lag": None if hw is None else max(hw - rec["offset"], 0)})
    return rows


def _hw(store, topic, partition):
    from .errors import KafkaException
    try:
        return store.partition(topic, partition).refresh()
    except KafkaException:
        return None


def collect(source, topics=None, groups=None):
    """Partition metrics (of topics, default all) and group lag (of groups,
    default all).  source: a Store, a store directory, or a client
    configuration dict naming one in bootstrap.servers."""
    from .store import Store
    if isinstance(source, Store):
        return _collect(source, topics, groups)
    from . import config
    if isinstance(source, dict):
        path = config.store_path(source)
    elif str(source).startswith("file:"):
        path = config.store_path({"bootstrap.servers": str(source)})
    else:
        path = str(source)
    store = Store.acquire(path)
    try:
        return _collect(store, topics, groups)
    finally:
        store.release()


def _collect(store, topics, groups):
    known = store.topics()
    names = sorted(known) if topics is None else list(topics)
    parts, hws = [], {}
    for name in names:
        desc = known.get(name)
        if desc is None:
            continue
        for p in range(desc["partitions"]):
            m = partition_metrics(store.partition(name, p))
            hws[(name, p)] = m["high_watermark"]
            parts.append(m)

    def hw_of(t, p):
        if (t, p) not in hws:
            hws[(t, p)] = _hw(store, t, p)
        return hws[(t, p)]
    group_list = group_names(store) if groups is None else list(groups)
    return {"partitions": parts,
            "groups": {g: group_lag(store, g, hw_of) for g in group_list}}


# ---- librdkafka statistics ----
_instances = itertools.count(1)


class StatsEmitter:
    """librdkafka's statistics for one client, handed to stats_cb as JSON.

    kind: "producer" or "consumer"; conf: the client's parsed configuration
    (stats_cb, statistics.interval.ms, client.id).  Inert unless both
    stats_cb and a positive interval are set.  Not thread-safe: call
    maybe_emit() from the thread that polls."""

    def __init__(self, client, kind, conf):
        self.client = client
        self.kind = kind
        self.cb = conf.get("stats_cb")
        self.interval = (conf.get("statistics.interval.ms") or 0) / 1000.0
        self.enabled = self.cb is not None and self.interval > 0
        self.client_id = conf.get("client.id") or "rdkafka"
        self.name = "%s#%s-%d" % (self.client_id, kind, next(_instances))
        self.created = time.monotonic()
        self.next_due = self.created + self.interval
        self.emitted = 0
        self._open = {}

    def maybe_emit(self, now=None):
        """Call stats_cb with the statistics JSON if the interval has passed;
        returns True if it did."""
        if not self.enabled:
            return False
        now = time.monotonic() if now is None else now
        if now < self.next_due:
            return False
        self.next_due = max(self.next_due + self.interval, now)
        self.emitted += 1
        self.cb(json.dumps(self.snapshot(now)))
        return True

    def snapshot(self, now=None):
        """The statistics as a dict (librdkafka's field names)."""
        now = time.monotonic() if now is None else now
        c = self.client
        store = getattr(c, "_store", None)
        out = {"name": self.name, "client_id": self.client_id, "type": self.kind,
               "ts": int(now * 1e6), "time": int(time.time()),
               "age": int((now - self.created) * 1e6), "replyq": 0,
               "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
               "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0,
               "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0,
               "metadata_cache_cnt": len(store.topics()) if store is not None else 0,
               "brokers": {}, "topics": {}}
        self._open = {(p.topic, p.partition): p for p in store.open_partitions()} \
            if store is not None else {}
        if self.kind == "producer":
            self._producer(c, out)
        else:
            self._consumer(c, out)
        return out

    # -- shared --
    def _partition(self, topic, partition):
        """(lo, hi, ls) offsets of a partition this process already has open, else -1s."""
        part = self._open.get((topic, partition))
        if part is None:
            return -1, -1, -1
        hw = part.refresh()
        return part.log.log_start_offset, hw, part.last_stable_offset()

    @staticmethod
    def _pstats(partition, lo, hi, ls):
        return {"partition": partition, "broker": 0, "leader": 0, "desired": True,
                "unknown": False, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "none",
                "query_offset": -1001, "next_offset": -1001, "app_offset": -1001,
                "stored_offset": -1001, "committed_offset": -1001, "committed_leader_epoch": -1,
                "eof_offset": -1001, "lo_offset": lo, "hi_offset": hi, "ls_offset": ls,
                "consumer_lag": -1, "consumer_lag_stored": -1, "leader_epoch": 0,
                "txmsgs": 0, "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0,
                "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0,
                "acked_msgid": 0}

    def _topic(self, out, store, topic):
        t = out["topics"].get(topic)
        if t is None:
            desc = store.topic(topic) if store is not None else None
            t = out["topics"][topic] = {"topic": topic, "age": out["age"] // 1000,
                                        "metadata_age": 0, "batchsize": {}, "batchcnt": {},
                                        "partitions": {}}
            for p in range(desc["partitions"] if desc else 0):
                t["partitions"][str(p)] = self._pstats(p, *self._partition(topic, p))
        return t

    # -- producer --
    def _producer(self, p, out):
        store = p._store
        queues = dict(getattr(p, "_queues", {}))
        out["msg_cnt"] = len(p)
        out["msg_size"] = sum(tq.bytes for tq in queues.values())
        conf = getattr(p, "_conf", {})
        out["msg_max"] = conf.get("queue.buffering.max.messages", 0)
        out["msg_size_max"] = conf.get("queue.buffering.max.kbytes", 0) * 1024
        for topic, tq in queues.items():
            t = self._topic(out, store, topic)
            ua = t["partitions"].setdefault("-1", self._pstats(-1, -1, -1, -1))
            ua["msgq_cnt"], ua["msgq_bytes"] = len(tq.dq), tq.bytes
        txn = getattr(p, "_txn", None)
        pid = getattr(p, "_producer_id", -1)
        out["eos"] = {"idemp_state": "Assigned" if pid >= 0 else "Init",
                      "idemp_stateage": out["age"] // 1000,
                      "txn_state": txn.state if txn is not None else "Init",
                      "txn_stateage": out["age"] // 1000,
                      "txn_may_enq": bool(txn is not None and txn.state == "InTransaction"),
                      "producer_id": pid, "producer_epoch": getattr(p, "_producer_epoch", -1),
                      "epoch_cnt": 0}

    # -- consumer --
    def _consumer(self, c, out):
        store = c._store
        meta = store.meta
        group = getattr(c, "_group", None)
        committed = meta.view(lambda txn: meta.group_offsets(txn, group)) if group else {}
        read_committed = getattr(c, "_committed_only", False)
        stored = dict(getattr(c, "_stored", {}))
        fetches = list(getattr(c, "_fetches", {}).items())
        for (topic, partition), f in fetches:
            t = self._topic(out, store, topic)
            ps = t["partitions"].setdefault(str(partition), self._pstats(partition, -1, -1, -1))
            ps["fetchq_cnt"] = f.pending()
            ps["fetch_state"] = "active" if not f.paused else "stopped"
            ps["next_offset"] = ps["app_offset"] = f.position if f.position >= 0 else -1001
            ps["stored_offset"] = stored.get((topic, partition), -1001)
            rec = committed.get((topic, partition))
            ps["committed_offset"] = rec["offset"] if rec else -1001
            end = ps["ls_offset"] if read_committed else ps["hi_offset"]
            if end >= 0 and rec:
                ps["consumer_lag"] = max(end - rec["offset"], 0)
            if end >= 0 and ps["stored_offset"] >= 0:
                ps["consumer_lag_stored"] = max(end - ps["stored_offset"], 0)
            out["msg_cnt"] += f.pending()
        member = getattr(c, "_member", None)
        if group:
            out["cgrp"] = {"state": "up", "stateage": out["age"] // 1000,
                           "join_state": "steady" if member is None or member.generation >= 0
                           else "wait-join",
                           "rebalance_age": 0, "rebalance_cnt": max(getattr(member, "generation", 0), 0),
                           "rebalance_reason": "", "assignment_size": len(fetches)}

