"""The pylog command: Kafka's operator tools over a store directory.

    pylog --store /var/lib/app/log topics --list
    PYLOG_STORE=/var/lib/app/log pylog console-consumer --topic orders --from-beginning

One module per subcommand; each has add_parser(subparsers, parents) and
run(args) -> exit status.  Flags and output follow Kafka's kafka-*.sh tools
where Kafka has them, so scripts written for those carry over.

Errors: a user mistake (bad arguments, unknown topic, a KafkaException, a
ValueError or an OSError) is one "Error: ..." line on stderr and a non-zero
exit status, never a traceback.  PYLOG_DEBUG=1 shows tracebacks of
unexpected errors.
"""
import logging
import os
import sys

from . import (common, console_consumer, console_producer, consumer_groups, consumer_perf,
               dump_log, producer_perf, stats, topics, transactions, verify)
from .common import CliError
from ..errors import KafkaException

SUBCOMMANDS = (topics, console_producer, console_consumer, consumer_groups, transactions,
               dump_log, verify, stats, producer_perf, consumer_perf)


def build_parser():
    parser = common.Parser(prog="pylog", description=__doc__.split("\n")[0])
    parser.add_argument("--store", metavar="PATH", help="the store directory (default: $%s)"
                        % common.STORE_ENV)
    parser.add_argument("--bootstrap-server", metavar="file:///PATH",
                        help="the store as a file: URL (Kafka's flag name)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = [common.store_options()]
    for module in SUBCOMMANDS:
        module.add_parser(sub, parents)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Kafka's log line shape, written to whatever sys.stderr is now."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s (%(name)s)"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _error(text):
    sys.stderr.write("Error: %s\n" % " ".join(str(text).split("\n")))
    sys.stderr.flush()


def main(argv=None):
    """Run one pylog command; returns its exit status (the console script exits with it)."""
    parser = build_parser()
    handler = _StderrHandler()
    log = logging.getLogger("pylog")
    log.addHandler(handler)
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args) or 0
    except CliError as e:
        _error(e.message)
        return e.status
    except KafkaException as e:
        _error(common.kafka_error_text(e))
        return 1
    except (ValueError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            _silence_stdout()
            return 1
        _error(e)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if os.environ.get("PYLOG_DEBUG"):
            raise
        _error("%s: %s (set PYLOG_DEBUG=1 for a traceback)" % (type(e).__name__, e))
        return 1
    finally:
        log.removeHandler(handler)


def _silence_stdout():
    """A reader closed our stdout (| head): stop writing there quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
