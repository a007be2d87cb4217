"""pylog consumer-groups: kafka-consumer-groups.sh over a store (--list,
--describe, --reset-offsets, --delete).

Groups live in LMDB: committed offsets (meta.offsets) and membership
(meta.groups, see pylog.group).  A member counts as active while its last
heartbeat is within its session.timeout.ms.  CONSUMER-ID is the pylog
member id, HOST the member's process id (members share this machine), and
CLIENT-ID is "-" (the membership record does not keep it).
"""
import datetime
import re
import sys

from ..metrics import group_names
from .common import CliError, check_partition, now_ms, open_store

SCENARIOS = ("to_earliest", "to_latest", "to_current", "to_offset", "shift_by", "to_datetime",
             "by_duration")


def add_parser(sub, parents):
    p = sub.add_parser("consumer-groups", parents=parents,
                       help="list, describe, reset offsets of, or delete consumer groups")
    act = p.add_mutually_exclusive_group(required=True)
    act.add_argument("--list", action="store_true")
    act.add_argument("--describe", action="store_true")
    act.add_argument("--reset-offsets", action="store_true")
    act.add_argument("--delete", action="store_true")
    p.add_argument("--group", action="append", default=[], help="group id (repeatable)")
    p.add_argument("--all-groups", action="store_true")
    p.add_argument("--topic", action="append", default=[],
                   help="topic, or topic:p1,p2 (repeatable; with --reset-offsets)")
    p.add_argument("--all-topics", action="store_true", help="every partition the group has committed")
    scen = p.add_mutually_exclusive_group()
    scen.add_argument("--to-earliest", action="store_true")
    scen.add_argument("--to-latest", action="store_true")
    scen.add_argument("--to-current", action="store_true")
    scen.add_argument("--to-offset", type=int, metavar="N")
    scen.add_argument("--shift-by", type=int, metavar="N")
    scen.add_argument("--to-datetime", metavar="YYYY-MM-DDTHH:mm:SS.sss")
    scen.add_argument("--by-duration", metavar="PnDTnHnMnS")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true")
    mode.add_argument("--execute", action="store_true")
    p.set_defaults(func=run)


def run(args):
    with open_store(args) as store:
        if args.list:
            for name in group_names(store):
                print(name)
            return 0
        groups = group_names(store) if args.all_groups else args.group
        if not groups:
            raise CliError("Option [%s] takes one of these options: [all-groups], [group]"
                           % ("describe" if args.describe else "reset-offsets" if args.reset_offsets
                              else "delete"))
        if args.describe:
            return max(_describe(store, g) for g in groups)
        if args.delete:
            return _delete(store, groups)
        return _reset(store, groups, args)


# ---- state ----
def _members(st, now):
    """The members of a group record whose heartbeat is within their session timeout."""
    return {m: v for m, v in (st or {}).get("members", {}).items()
            if now - v["heartbeat_ms"] <= v["session_timeout_ms"]}


def _state(st, live):
    if not live:
        return "Empty"
    gen = st["generation"]
    if all(v.get("acked") == gen and v.get("gen") == gen for v in live.values()):
        return "Stable"
    return "PreparingRebalance"


def _host(member_id):
    """The process id inside a pylog member id ("<base>-<pid>-<hex>-<ms>")."""
    parts = member_id.rsplit("-", 3)
    return "/pid:%s" % parts[1] if len(parts) == 4 and parts[1].isdigit() else "-"


def _load(store, group):
    meta = store.meta
    return meta.view(lambda txn: (meta.get_group(txn, group), meta.group_offsets(txn, group)))


# ---- describe ----
def _describe(store, group):
    st, offsets = _load(store, group)
    if st is None and not offsets:
        raise CliError("Consumer group '%s' does not exist." % group)
    live = _members(st, now_ms())
    state = _state(st, live)
    if state == "Empty":
        sys.stderr.write("\nConsumer group '%s' has no active members.\n" % group)
    elif state != "Stable":
        sys.stderr.write("\nWarning: Consumer group '%s' is rebalancing.\n" % group)
    rows, assigned = [], set()
    by_size = sorted(live.items(), key=lambda kv: -len(kv[1].get("owned", [])))
    for mid, m in by_size:
        tps = sorted(tuple(tp) for tp in m.get("owned", []))
        assigned.update(tps)
        for t, p in tps:
            rows.append(_row(store, group, t, p, offsets, mid, _host(mid), "-"))
    for t, p in sorted(set(offsets) - assigned):
        rows.append(_row(store, group, t, p, offsets, "-", "-", "-"))
    widths = [max([15] + [len(r[i]) for r in rows]) for i in (0, 1, 6, 7)]
    fmt = "\n%%-%ds %%-%ds %%-10s %%-15s %%-15s %%-15s %%-%ds %%-%ds %%s" % tuple(widths)
    out = fmt % ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                 "CONSUMER-ID", "HOST", "CLIENT-ID")
    out += "".join(fmt % tuple(r) for r in rows)
    sys.stdout.write(out + "\n")
    return 0


def _row(store, group, topic, partition, offsets, member, host, client):
    rec = offsets.get((topic, partition))
    end = _end(store, topic, partition)
    current = rec["offset"] if rec else None
    lag = end - current if end is not None and current is not None else None
    return [group, topic, str(partition), _dash(current), _dash(end), _dash(lag), member, host, client]


def _dash(v):
    return "-" if v is None else str(v)


def _end(store, topic, partition):
    """High watermark (Kafka's LOG-END-OFFSET), None if the partition is gone."""
    from ..errors import KafkaException
    try:
        return store.partition(topic, partition).refresh()
    except KafkaException:
        return None


# ---- delete ----
def _delete(store, groups):
    meta = store.meta
    failed = {}

    def delete(txn, group):
        st = meta.get_group(txn, group)
        offsets = meta.group_offsets(txn, group)
        if st is None and not offsets:
            return "GroupIdNotFoundException: The group id does not exist."
        if _members(st, now_ms()):
            return "GroupNotEmptyException: The group is not empty."
        for t, p in offsets:
            meta.delete_offset(txn, group, t, p)
        if st is not None:
            meta.delete_group(txn, group)
        return None
    for g in groups:
        err = meta.update(lambda txn, g=g: delete(txn, g))
        if err:
            failed[g] = err
    ok = [g for g in groups if g not in failed]
    if failed:
        raise CliError("Deletion of some consumer groups failed: " + "; ".join(
            "Group '%s' could not be deleted due to: %s" % kv for kv in failed.items())
            + (" (these were deleted: %s)" % ", ".join("'%s'" % g for g in ok) if ok else ""))
    print("Deletion of requested consumer groups (%s) was successful."
          % ", ".join("'%s'" % g for g in ok))
    return 0


# ---- reset offsets ----
def _reset(store, groups, args):
    chosen = [s for s in SCENARIOS if getattr(args, s) not in (None, False)]
    if not chosen:
        raise CliError("Option [reset-offsets] requires one of these scenarios: --to-earliest, "
                       "--to-latest, --to-current, --to-offset, --shift-by, --to-datetime, "
                       "--by-duration")
    if not args.topic and not args.all_topics:
        raise CliError("One of the reset scopes should be defined: --all-topics, --topic.")
    if args.to_datetime is not None:
        args.timestamp = parse_datetime(args.to_datetime)
    elif args.by_duration is not None:
        args.timestamp = now_ms() - parse_duration(args.by_duration)
    if not args.dry_run and not args.execute:
        sys.stderr.write("WARN: No action will be performed as the --execute option is missing. "
                         "You should add the --dry-run option explicitly if you are scripting this "
                         "command and want to keep the current default behavior without "
                         "prompting.\n")
    plan = {}
    for group in groups:
        st, offsets = _load(store, group)
        live = _members(st, now_ms())
        if live:
            raise CliError("Assignments can only be reset if the group '%s' is inactive, but the "
                           "current state is %s." % (group, _state(st, live)))
        tps = sorted(offsets) if args.all_topics else _scope(store, args.topic)
        plan[group] = [(t, p, _target(store, t, p, offsets, args, chosen[0])) for t, p in tps]
    if args.execute:
        meta = store.meta
        for group, rows in plan.items():
            def write(txn, group=group, rows=rows):
                if _members(meta.get_group(txn, group), now_ms()):
                    raise CliError("Assignments can only be reset if the group '%s' is inactive: "
                                   "a member joined meanwhile" % group)
                for t, p, o in rows:
                    meta.put_offset(txn, group, t, p, o)
            meta.update(write)
    _print_plan(plan)
    return 0


def _scope(store, topics):
    out = []
    for arg in topics:
        topic, sep, parts = arg.partition(":")
        if not sep:
            desc = store.topic(topic)
            if desc is None:
                raise CliError("Topic '%s' does not exist" % topic)
            out.extend((topic, p) for p in range(desc["partitions"]))
            continue
        for part in parts.split(","):
            try:
                p = int(part)
            except ValueError:
                raise CliError("Invalid partition '%s' specified in topic arg '%s'" % (part, arg)) from None
            check_partition(store, topic, p)
            out.append((topic, p))
    return sorted(set(out))


def _target(store, topic, partition, offsets, args, scenario):
    part = store.partition(topic, partition)
    end = part.refresh()
    start = part.log.log_start_offset
    current = offsets.get((topic, partition), {}).get("offset")
    if scenario == "to_earliest":
        return start
    if scenario == "to_latest":
        return end
    if scenario == "to_current":
        return current if current is not None else end
    if scenario == "to_offset":
        return _clamp(args.to_offset, start, end, topic, partition)
    if scenario == "shift_by":
        if current is None:
            raise CliError("Cannot shift offset for partition %s-%d since there is no current "
                           "committed offset" % (topic, partition))
        return _clamp(current + args.shift_by, start, end, topic, partition)
    found = part.log.offsets_for_time(args.timestamp)
    if found < 0:
        print("\nWarn: Partition %d from topic %s is empty. Falling back to latest known offset."
              % (partition, topic))
        return end
    return found


def _clamp(offset, start, end, topic, partition):
    if offset > end:
        sys.stderr.write("WARN New offset (%d) is higher than latest offset for topic partition "
                         "%s-%d. Value will be set to %d.\n" % (offset, topic, partition, end))
        return end
    if offset < start:
        sys.stderr.write("WARN New offset (%d) is lower than earliest offset for topic partition "
                         "%s-%d. Value will be set to %d.\n" % (offset, topic, partition, start))
        return start
    return offset


def _print_plan(plan):
    rows = [(g, t, p, o) for g, items in plan.items() for t, p, o in items]
    gw = max([15] + [len(r[0]) for r in rows])
    tw = max([15] + [len(r[1]) for r in rows])
    fmt = "\n%%-%ds %%-%ds %%-10s %%s" % (gw, tw)
    out = fmt % ("GROUP", "TOPIC", "PARTITION", "NEW-OFFSET") if rows else ""
    out += "".join(fmt % r for r in rows)
    sys.stdout.write(out + "\n")


def parse_datetime(text):
    """Milliseconds since the epoch of Kafka's --to-datetime (YYYY-MM-DDTHH:mm:SS.sss, an
    optional zone such as Z or +01:00; local time without one)."""
    try:
        if "T" not in text:
            raise ValueError
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError("Error parsing datetime '%s': expected the format "
                       "'YYYY-MM-DDTHH:mm:SS.sss' (optionally with a zone such as Z or +01:00)"
                       % text) from None
    return int(dt.timestamp() * 1000)


_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?\Z")


def parse_duration(text):
    """Milliseconds of an ISO-8601 duration PnDTnHnMn.nS (Kafka's --by-duration)."""
    m = _DURATION.match(text or "")
    if not m or text in ("P", "PT"):
        raise CliError("Error parsing duration '%s': expected the format 'PnDTnHnMnS'" % text)
    d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return int(((d * 24 + h) * 60 + mi) * 60000 + s * 1000)
