"""Consumer groups across processes: membership, rebalancing, fencing.

No broker process exists, so the group lives in LMDB (meta.groups, JSON):

    {"generation": G, "protocol": "range",
     "members": {member_id: {"instance_id", "topics", "heartbeat_ms",
                             "session_timeout_ms", "max_poll_interval_ms",
                             "acked": generation whose revocation it finished,
                             "owned": [[topic, p]...] what it reads now}},
     "assignment": {member_id: [[topic, p]...]}    (the target for G)}

Every change of membership (join, leave, expiry) bumps the generation and
recomputes the target assignment, a pure function of the sorted member list,
their subscriptions and the topics' partition counts.  A rebalance has two
steps, so no partition is read by two live members:

 1. each member revokes what it must give up (eager protocols: everything;
    cooperative-sticky: only partitions whose target owner changed), records
    that it owns the rest, and acks the generation;
 2. once every member has acked, each takes the partitions of its target it
    does not own yet.

Liveness: each consumer heartbeats from a background thread every
heartbeat.interval.ms; any member, or any process with the group open,
expels a member whose heartbeat is older than session.timeout.ms (a dead
or SIGSTOPped process), and a member whose application has not polled for
max.poll.interval.ms leaves by itself.  A static member (group.instance.id)
that comes back within session.timeout.ms takes over its own entry without
a rebalance.

Fencing (KIP-447): commits carry (generation, member_id); offsets from a
member that is no longer in the group, or from an older generation, are
refused with UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION, for plain commits and
for offsets sent to a transaction (checked when sent and again at the
commit point), so a zombie worker cannot commit over its successor.
"""
import time

from .errors import KafkaError, KafkaException

STRATEGIES = ("range", "roundrobin", "cooperative-sticky")


def now_ms():
    return int(time.time() * 1000)


def parse_strategy(value):
    """librdkafka's partition.assignment.strategy: a list; the first one all
    members support wins.  pylog groups use the first listed."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    for n in names:
        if n not in STRATEGIES:
            raise KafkaException(KafkaError(
                KafkaError._INVALID_ARG, "Unsupported partition.assignment.strategy %r "
                "(expected %s)" % (n, ", ".join(STRATEGIES))))
    return names[0] if names else "range"


def compute_assignment(protocol, members, partition_counts, previous=None):
    """{member_id: [[topic, p]...]} for the sorted members.

    range: per topic, consecutive ranges in member order (Kafka's RangeAssignor).
    roundrobin: every partition of every topic in turn (RoundRobinAssignor).
    cooperative-sticky: keep each partition with its current owner while
    counts stay balanced (within one), move only the excess."""
    ids = sorted(members)
    out = {m: [] for m in ids}
    if not ids:
        return out
    wanted = {m: set(members[m]["topics"]) for m in ids}
    topics = sorted({t for m in ids for t in wanted[m] if t in partition_counts})
    if protocol == "range":
        for t in topics:
            subs = [m for m in ids if t in wanted[m]]
            n = partition_counts[t]
            per, extra = divmod(n, len(subs))
            p = 0
            for i, m in enumerate(subs):
                k = per + (1 if i < extra else 0)
                out[m].extend([t, q] for q in range(p, p + k))
                p += k
        return out
    all_parts = [(t, p) for t in topics for p in range(partition_counts[t])]
    if protocol == "roundrobin":
        i = 0
        for t, p in all_parts:
            for _ in range(len(ids)):
                m = ids[i % len(ids)]
                i += 1
                if t in wanted[m]:
                    out[m].append([t, p])
                    break
        return out
    # cooperative-sticky
    prev_owner = {}
    for m, parts in (previous or {}).items():
        if m in out:
            for t, p in parts:
                prev_owner[(t, p)] = m
    quota_low = len(all_parts) // len(ids)
    extra = len(all_parts) - quota_low * len(ids)
    counts = {m: 0 for m in ids}
    unplaced = []
    for tp in all_parts:
        m = prev_owner.get(tp)
        if m is not None and tp[0] in wanted[m] and counts[m] < quota_low:
            out[m].append(list(tp))
            counts[m] += 1
        else:
            unplaced.append(tp)
    # a second pass lets previous owners keep one more while extra slots remain
    rest = []
    for tp in unplaced:
        m = prev_owner.get(tp)
        if m is not None and tp[0] in wanted[m] and counts[m] == quota_low and extra > 0:
            out[m].append(list(tp))
            counts[m] += 1
            extra -= 1
        else:
            rest.append(tp)
    for tp in rest:
        cands = [m for m in ids if tp[0] in wanted[m] and
                 (counts[m] < quota_low or (counts[m] == quota_low and extra > 0))]
        if not cands:
            cands = [m for m in ids if tp[0] in wanted[m]]
        if not cands:
            continue
        m = min(cands, key=lambda x: (counts[x], x))
        if counts[m] >= quota_low:
            extra -= 1
        out[m].append(list(tp))
        counts[m] += 1
    return out


class GroupStore:
    """Group state operations on the store's LMDB.  Thread-safe."""

    def __init__(self, store):
        self.store = store
        self.meta = store.meta

    def _get(self, txn, group):
        return self.meta.get_group(txn, group) or {
            "generation": 0, "protocol": None, "members": {}, "assignment": {}}

    def _partition_counts(self, txn, topics):
        out = {}
        for t in topics:
            d = self.meta.get_topic(txn, t)
            if d is not None:
                out[t] = d["partitions"]
        return out

    def _rebalance(self, txn, st):
        """New generation and target assignment for st's members (in txn)."""
        st["generation"] += 1
        topics = sorted({t for m in st["members"].values() for t in m["topics"]})
        st["assignment"] = compute_assignment(
            st["protocol"] or "range", st["members"], self._partition_counts(txn, topics),
            {m: v.get("owned", []) for m, v in st["members"].items()})

    def _expire(self, st, now):
        gone = [m for m, v in st["members"].items()
                if now - v["heartbeat_ms"] > v["session_timeout_ms"]]
        for m in gone:
            del st["members"][m]
        return gone

    def join(self, group, member_id, instance_id, topics, protocol, session_timeout_ms,
             max_poll_interval_ms):
        """Add (or re-add) a member; returns the member id to use."""
        def do(txn):
            st = self._get(txn, group)
            now = now_ms()
            if st["protocol"] not in (None, protocol) and st["members"]:
                raise KafkaException(KafkaError(
                    KafkaError.INCONSISTENT_GROUP_PROTOCOL,
                    "group %r uses %s, this member asks for %s" % (group, st["protocol"], protocol)))
            st["protocol"] = protocol
            self._expire(st, now)
            mid = member_id
            static = None
            if instance_id is not None:
                static = next((m for m, v in st["members"].items()
                               if v.get("instance_id") == instance_id), None)
            entry = {"instance_id": instance_id, "topics": sorted(topics), "heartbeat_ms": now,
                     "session_timeout_ms": session_timeout_ms,
                     "max_poll_interval_ms": max_poll_interval_ms, "acked": 0, "owned": []}
            if static is not None and st["members"][static]["topics"] == sorted(topics):
                # A static member back within session.timeout.ms: same
                # partitions, no rebalance; the old incarnation is fenced.
                old = st["members"].pop(static)
                entry["acked"], entry["owned"] = old["acked"], old["owned"]
                entry["gen"] = old.get("gen")
                st["members"][mid] = entry
                st["assignment"][mid] = st["assignment"].pop(static, [])
            else:
                if static is not None:
                    del st["members"][static]
                st["members"][mid] = entry
                self._rebalance(txn, st)
            self.meta.put_group(txn, group, st)
            return st
        return self.meta.update(do)

    def leave(self, group, member_id):
        def do(txn):
            st = self._get(txn, group)
            if member_id in st["members"]:
                del st["members"][member_id]
                self._rebalance(txn, st)
                self.meta.put_group(txn, group, st)
        self.meta.update(do)

    def heartbeat(self, group, member_id, owned=None, acked=None, gen=None):
        """Refresh our heartbeat, expel expired members; returns the state, or
        None if we are no longer a member."""
        def do(txn):
            st = self._get(txn, group)
            now = now_ms()
            me = st["members"].get(member_id)
            if me is None:
                return None
            me["heartbeat_ms"] = now
            if owned is not None:
                me["owned"] = owned
            if acked is not None:
                me["acked"] = acked
            if gen is not None:
                me["gen"] = gen
            if self._expire(st, now):
                self._rebalance(txn, st)
            self.meta.put_group(txn, group, st)
            return st
        return self.meta.update(do)

    def read(self, group):
        return self.meta.view(lambda txn: self.meta.get_group(txn, group))

    def check_member(self, txn, group, generation, member_id):
        """KafkaError if (generation, member_id) may not commit for group, else None.

        A group nobody joined (assign() users, generation -1 metadata) is open."""
        st = self.meta.get_group(txn, group)
        if st is None or not st["members"] or generation < 0:
            return None
        if member_id not in st["members"]:
            return KafkaError(KafkaError.UNKNOWN_MEMBER_ID,
                              "member %r is not in group %r (expelled or left); its offsets "
                              "are refused" % (member_id, group), txn_requires_abort=True)
        # A live member may still commit what it owns with the generation it
        # took it in: during a rebalance it commits before giving it up.
        if generation != st["generation"] and generation != st["members"][member_id].get("gen"):
            return KafkaError(KafkaError.ILLEGAL_GENERATION,
                              "group %r is at generation %d, the commit is from generation %d"
                              % (group, st["generation"], generation), txn_requires_abort=True)
        return None


class Member:
    """One consumer's membership: joins, heartbeats (a daemon thread) and
    walks the two rebalance steps when its consumer polls."""

    def __init__(self, consumer, topics, conf):
        self.c = consumer
        self.groups = GroupStore(consumer._store)
        self.group = consumer._group
        self.instance_id = conf.get("group.instance.id")
        self.protocol = parse_strategy(conf["partition.assignment.strategy"])
        self.cooperative = self.protocol == "cooperative-sticky"
        self.patterns = list(topics)
        self.session_timeout_ms = conf["session.timeout.ms"]
        self.heartbeat_s = conf["heartbeat.interval.ms"] / 1000.0
        self.max_poll_ms = conf["max.poll.interval.ms"]
        self.member_id = None
        self.state = None               # latest group state seen
        self.acked = 0                  # generation whose revocation step we finished
        self.generation = -1            # generation of the partitions we own
        self.owned = []
        self.left_for_max_poll = False
        self.stopped = False
        self.thread = None

    def topics(self):
        known = self.c._store.topics()
        out = set()
        for pattern in self.patterns:
            if pattern.startswith("^"):
                import re
                out.update(t for t in known if re.match(pattern[1:], t))
            elif pattern in known:
                out.add(pattern)
        return sorted(out)

    def join(self):
        import os
        import threading
        base = self.instance_id or "pylog"
        self.member_id = "%s-%d-%x-%d" % (base, os.getpid(), id(self), now_ms())
        self.state = self.groups.join(self.group, self.member_id, self.instance_id, self.topics(),
                                      self.protocol, self.session_timeout_ms, self.max_poll_ms)
        me = self.state["members"][self.member_id]
        # A static member taking over its old entry has no fetch state yet:
        # step() assigns its target afresh (the entry keeps the old ack).
        self.acked = me["acked"]
        self.owned, self.generation = [], -1
        if self.thread is None:
            self.thread = threading.Thread(target=self._beat, daemon=True, name="pylog-heartbeat")
            self.thread.start()

    def _beat(self):
        while not self.stopped:
            time.sleep(self.heartbeat_s)
            if self.stopped or self.member_id is None:
                continue
            try:
                idle = time.monotonic() - self.c._last_poll
                if idle * 1000 > self.max_poll_ms and not self.left_for_max_poll:
                    # librdkafka: the application stopped polling; leave so
                    # the others can take our partitions.
                    self.left_for_max_poll = True
                    self.groups.leave(self.group, self.member_id)
                    self.c._hot = None
                    continue
                st = self.groups.heartbeat(self.group, self.member_id)
                self.state = st
                if st is None or st["generation"] != self.acked or \
                        self.generation != st["generation"]:
                    self.c._hot = None              # poll() must take its long path
            except Exception:                       # the next beat retries
                pass

    def step(self):
        """Advance the rebalance as far as it can go now (called from poll)."""
        c = self.c
        if self.left_for_max_poll:
            self.left_for_max_poll = False
            self._lose()
            c._events.append(_event(KafkaError._MAX_POLL_EXCEEDED,
                                    "Application maximum poll interval (%dms) exceeded: "
                                    "the consumer left the group and rejoins" % self.max_poll_ms))
            self.join()
        st = self.groups.read(self.group)          # a read: heartbeats are the thread's
        if st is None or self.member_id not in st["members"]:
            self._lose()                            # expelled (we looked dead): rejoin
            self.join()
            st = self.state
        self.state = st
        gen = st["generation"]
        target = [tuple(x) for x in st["assignment"].get(self.member_id, [])]
        if self.acked < gen:
            keep = [tp for tp in self.owned if tp in target] if self.cooperative else []
            revoked = [tp for tp in self.owned if tp not in keep]
            if revoked or not self.cooperative:
                c._on_revoke(revoked)
            self.owned = keep
            self.acked = gen
            st = self.groups.heartbeat(self.group, self.member_id, owned=[list(t) for t in keep],
                                       acked=gen)
            if st is None:
                return
            self.state = st
            if st["generation"] != gen:
                return                              # membership moved on meanwhile
        if self.generation != gen and all(m["acked"] >= gen for m in st["members"].values()):
            added = [tp for tp in target if tp not in self.owned]
            self.owned = list(target)
            self.generation = gen
            self.groups.heartbeat(self.group, self.member_id, owned=[list(t) for t in target],
                                  gen=gen)
            c._on_assign(added if self.cooperative else target, incremental=self.cooperative)

    def _lose(self):
        if self.owned:
            self.c._on_lost(list(self.owned))
        self.owned, self.generation, self.acked = [], -1, 0

    def leave(self):
        self.stopped = True
        if self.member_id is not None:
            try:
                self.groups.leave(self.group, self.member_id)
            except Exception:
                pass
            self.member_id = None


def _event(code, text):
    from .message import Message
    return Message(error=KafkaError(code, text))
