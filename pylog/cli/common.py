"""What every subcommand shares: finding the store, user errors, tables,
key=value arguments and the small Kafka formatting conventions.

A user mistake raises CliError; pylog.cli.main prints it as one
"Error: ..." line on stderr and exits non-zero, as it does for
KafkaException, ValueError and OSError.
"""
import argparse
import os
import sys
import time
from contextlib import contextmanager
from urllib.parse import quote

from ..errors import KafkaError

STORE_ENV = "PYLOG_STORE"


class CliError(Exception):
    """A mistake the user can fix: printed as "Error: <message>" (no traceback)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.message = message
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument is one "Error:" line, not usage text."""

    def error(self, message):
        raise CliError("%s (see '%s --help')" % (message, self.prog), status=2)


def store_options():
    """The parent parser giving every subcommand --store and --bootstrap-server.

    Defaults are SUPPRESSed so that an option given before the subcommand
    (pylog --store X topics ...) is not reset by the subcommand's parser."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--store", metavar="PATH", default=argparse.SUPPRESS,
                   help="the store directory (default: $%s)" % STORE_ENV)
    p.add_argument("--bootstrap-server", metavar="file:///PATH", default=argparse.SUPPRESS,
                   help="the store as a file: URL (Kafka's flag name)")
    return p


def store_path(args, must_exist=True):
    """The store directory named by --store, --bootstrap-server or $PYLOG_STORE."""
    path = getattr(args, "store", None)
    server = getattr(args, "bootstrap_server", None)
    if path and server:
        raise CliError("give the store once: --store or --bootstrap-server, not both")
    if not path and server:
        from ..config import store_path as from_url
        path = from_url({"bootstrap.servers": server})
        if path is None:
            raise CliError("--bootstrap-server %r names a Kafka cluster; pylog's tools work on a "
                           "store directory: use --store PATH or file:///PATH" % server)
    path = path or os.environ.get(STORE_ENV)
    if not path:
        raise CliError("no store given: use --store PATH or set %s" % STORE_ENV)
    if must_exist and not os.path.isdir(os.path.join(path, "meta")):
        raise CliError("%s is not a pylog store (it has no meta/ directory)" % path)
    return path


def store_url(path):
    """bootstrap.servers for a store directory."""
    return "file://" + quote(os.path.abspath(path))


def client_conf(args, props, create=False):
    """A client configuration for the store named by args, plus props."""
    conf = {"bootstrap.servers": store_url(store_path(args, must_exist=not create))}
    conf.update(props)
    return conf


@contextmanager
def open_store(args, create=False):
    """The process's Store for args' directory, released on exit."""
    from ..store import Store
    store = Store.acquire(store_path(args, must_exist=not create))
    try:
        yield store
    finally:
        store.release()


def parse_kv(items, what):
    """{"k": "v"} from ["k=v", ...] (the first "=" splits; values may hold more)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError("invalid %s %r: expected key=value" % (what, item))
        out[key.strip()] = value
    return out


def load_properties(path):
    """A Java .properties file as a dict (key=value or key:value lines, # and ! comments)."""
    if not path:
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#!":
                continue
            cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
            if cut < 0:
                out[line] = ""
            else:
                out[line[:cut].strip()] = line[cut + 1:].strip()
    return out


def topic_desc(store, topic):
    """The topic's LMDB record; CliError if it does not exist."""
    desc = store.topic(topic)
    if desc is None:
        raise CliError("Topic '%s' does not exist" % topic)
    return desc


def check_partition(store, topic, partition):
    desc = topic_desc(store, topic)
    if not 0 <= partition < desc["partitions"]:
        raise CliError("Topic '%s' has partitions 0..%d, not %d"
                       % (topic, desc["partitions"] - 1, partition))
    return desc


def print_table(headers, rows, out=None):
    """Kafka's TransactionsCommand table: each column padded to its widest
    cell and followed by a tab."""
    out = out or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row)]
    for row in [headers] + list(rows):
        out.write("".join(str(c).ljust(w) + "\t" for c, w in zip(row, widths)) + "\n")


def now_ms():
    return int(time.time() * 1000)


def kafka_error_text(exc):
    """The message of a KafkaException (the KafkaError's reason)."""
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return err.str()
    return str(exc)


def processes_using(paths):
    """PIDs of other processes with a file open under any of paths.

    Best effort and Linux only: reads /proc/<pid>/fd, which lists only what
    this user may see (root sees everything).  Returns an empty set where
    /proc is absent."""
    prefixes = tuple(os.path.realpath(p) + os.sep for p in paths)
    found = set()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return found
    me = os.getpid()
    for pid in pids:
        if pid == me:
            continue
        fd_dir = "/proc/%d/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith(prefixes):
                found.add(pid)
                break
    return found
