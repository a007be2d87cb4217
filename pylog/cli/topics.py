"""pylog topics: kafka-topics.sh over a store (--create, --list, --describe,
--alter, --delete).

Topics live in LMDB (meta.topics); --alter and --delete change that record.
A process that already has a partition open keeps the partition count and
configs it read until it reopens the topic, as a Kafka client keeps stale
metadata until its next refresh.
"""
import base64
import hashlib
import os
import re
import shutil

from .. import format
from ..meta import pkey
from ..store import MAX_PARTITIONS, TOPIC_CONFIG_DEFAULTS, validate_topic_config
from .common import CliError, open_store, processes_using

_LIVE_TXN_STATES = ("Ongoing", "PrepareCommit", "PrepareAbort")


def add_parser(sub, parents):
    p = sub.add_parser("topics", parents=parents, help="create, list, describe, alter or delete topics")
    act = p.add_mutually_exclusive_group(required=True)
    for name in ("create", "list", "describe", "alter", "delete"):
        act.add_argument("--" + name, action="store_true")
    p.add_argument("--topic", help="topic name (for --list/--describe/--delete: a regex)")
    p.add_argument("--partitions", type=int, help="partition count (create, or increase with --alter)")
    p.add_argument("--replication-factor", type=int, help="accepted for compatibility; must be 1")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="topic config override (repeatable)")
    p.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                   help="with --alter: return a config to its default")
    p.add_argument("--if-not-exists", action="store_true", help="with --create: no error if it exists")
    p.add_argument("--if-exists", action="store_true", help="no error if the topic does not exist")
    p.add_argument("--exclude-internal", action="store_true", help="accepted; pylog has no internal topics")
    p.set_defaults(func=run)


def run(args):
    if args.replication_factor is not None and args.replication_factor != 1:
        raise CliError("Replication factor: %d larger than available brokers: 1."
                       % args.replication_factor)
    if (args.create or args.alter or args.delete) and not args.topic:
        raise CliError('Missing required argument "[topic]"')
    with open_store(args, create=args.create) as store:
        if args.create:
            return _create(store, args)
        if args.list:
            for name in _matching(store, args.topic):
                print(name)
            return 0
        names = _matching(store, args.topic)
        if not names and args.topic and not args.if_exists:
            raise CliError("Topic '%s' does not exist as expected" % args.topic)
        if args.describe:
            return _describe(store, names)
        if args.alter:
            return _alter(store, names, args)
        return _delete(store, names)


def _matching(store, pattern):
    """Topic names, sorted; pattern is Kafka's include list (a regex, ','
    meaning '|'), or an exact name when it is not a valid regex."""
    names = sorted(store.topics())
    if not pattern:
        return names
    try:
        rx = re.compile(pattern.replace(",", "|"))
    except re.error:
        return [n for n in names if n == pattern]
    return [n for n in names if rx.fullmatch(n)]


def _parse_configs(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError('requirement failed: Invalid topic config: all configs to be added must '
                           'be in the format "key=val".')
        out[key.strip()] = value.strip()
    return out


def _create(store, args):
    format.validate_topic(args.topic)
    if args.partitions is not None and args.partitions < 1:
        raise CliError("The partitions must be greater than 0")
    configs = _parse_configs(args.config)
    if store.topic(args.topic) is not None and args.if_not_exists:
        return 0
    store.create_topic(args.topic, args.partitions or 1, configs)
    print("Created topic %s." % args.topic)
    return 0


def topic_id(name, desc):
    """A stable 22-character id in Kafka's Uuid text form (base64url, no padding)."""
    raw = hashlib.sha1(("%s\0%s" % (name, desc.get("created_ms", 0))).encode()).digest()[:16]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _describe(store, names):
    topics = store.topics()
    for name in names:
        desc = topics[name]
        configs = ",".join("%s=%s" % (k, v) for k, v in sorted(desc.get("config", {}).items()))
        print("Topic: %s\tTopicId: %s\tPartitionCount: %d\tReplicationFactor: 1\tConfigs: %s"
              % (name, topic_id(name, desc), desc["partitions"], configs))
        for p in range(desc["partitions"]):
            print("\tTopic: %s\tPartition: %d\tLeader: 0\tReplicas: 0\tIsr: 0" % (name, p))
    return 0


def _alter(store, names, args):
    if args.partitions is None and not args.config and not args.delete_config:
        raise CliError("--alter needs --partitions, --config or --delete-config")
    configs = _parse_configs(args.config)
    for name in args.delete_config:
        if name not in TOPIC_CONFIG_DEFAULTS:
            raise CliError("Unknown topic config name: %s" % name)
    meta = store.meta
    for name in names:
        def alter(txn, name=name):
            desc = meta.get_topic(txn, name)
            if desc is None:
                raise CliError("Topic '%s' does not exist as expected" % name)
            if args.partitions is not None:
                have = desc["partitions"]
                if args.partitions <= have:
                    raise CliError("The topic %s currently has %d partition(s); %d would not be an "
                                   "increase." % (name, have, args.partitions))
                if args.partitions > MAX_PARTITIONS:
                    raise CliError("A topic has at most %d partitions" % MAX_PARTITIONS)
                desc["partitions"] = args.partitions
            cfg = dict(desc.get("config", {}))
            cfg.update(configs)
            for key in args.delete_config:
                cfg.pop(key, None)
            desc["config"] = validate_topic_config(cfg)
            meta.put_topic(txn, name, desc)
        meta.update(alter)
    return 0


def _delete(store, names):
    """Remove each topic's LMDB record and state, then its directories.

    Refused while another process has one of its partition files open
    (found through /proc, Linux only), or while a transaction that wrote to
    it is unfinished (its markers would have nowhere to go)."""
    topics = store.topics()
    for name in names:
        nparts = topics[name]["partitions"]
        dirs = [os.path.join(store.path, format.partition_dir_name(name, p)) for p in range(nparts)]
        users = processes_using([d for d in dirs if os.path.isdir(d)])
        if users:
            raise CliError("Topic '%s' is in use by process(es) %s; stop them first"
                           % (name, ", ".join(map(str, sorted(users)))))
        for tid, st in store.meta.view(store.meta.txn_ids).items():
            if st["state"] in _LIVE_TXN_STATES and any(t == name for t, _ in st["partitions"]):
                raise CliError("Topic '%s' has an unfinished transaction (transactional.id %r, "
                               "state %s); finish or abort it first" % (name, tid, st["state"]))
        store.meta.update(lambda txn, name=name, n=nparts: _purge_meta(store.meta, txn, name, n))
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    return 0


def _purge_meta(meta, txn, topic, nparts):
    """Delete the topic record and everything LMDB keys by its partitions:
    producer state, state end, open and aborted transactions, group offsets.
    A topic created again under the same name must not inherit any of it."""
    meta.delete_topic(txn, topic)
    pks = [pkey(topic, p) for p in range(nparts)]
    for db in ("pstate", "partitions", "txn_open", "aborted"):
        handle = meta.db[db]
        for pk in pks:
            with txn.cursor(db=handle) as cur:
                if not cur.set_range(pk):
                    continue
                while cur.key().startswith(pk):
                    if not cur.delete():
                        break
    prefix_of = set(pks)
    doomed = []
    with txn.cursor(db=meta.db["offsets"]) as cur:
        for key in cur.iternext(values=False):
            _, _, pk = key.partition(b"\x00")
            if pk in prefix_of:
                doomed.append(key)
    for key in doomed:
        txn.delete(key, db=meta.db["offsets"])
