"""python -m pylog.torture SCENARIO [--trials N] [--seed S] [...]: run torture
scenarios and print the scoreboard.  Exit status 1 if any anomaly was found.

SCENARIO is 1-6, a name (kill, failpoints, powerloss, ioerrors, recovery,
soak) or "all".  --quick gives every scenario its CI size (seconds each);
without it the defaults are the full run: 250 trials x 2 kills, every
failpoint x its first 3 hits and 2 later ones, 1000 power losses, every I/O
error case, 100 recovery trials x 3 kills, a 120 s soak.
"""
import argparse
import os
import sys
import tempfile

from . import scenarios
from .harness import print_scoreboard

FULL = {"1": 250, "2": 0, "3": 1000, "4": 0, "5": 100, "6": 1}
QUICK = {"1": 3, "2": 16, "3": 6, "4": 8, "5": 2, "6": 1}
QUICK_OPTS = dict(kills=2, hits=1, later=0, cycles=3, recovery_kills=2, duration=5.0, min_s=0.1,
                  max_s=0.4, io_arms=("open",))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pylog.torture", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", help="1-6, a scenario name, or all")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials (scenarios 2 and 4: cases, 0 = all; 3: power losses)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="CI-sized run")
    ap.add_argument("--duration", type=float, default=None, help="scenario 6: seconds per trial")
    ap.add_argument("--kills", type=int, default=None, help="scenario 1: kills per trial")
    ap.add_argument("--hits", type=int, default=None, help="scenarios 2, 4: first N hits")
    ap.add_argument("--later", type=int, default=None,
                    help="scenario 2: also N later hits, spread to the last")
    ap.add_argument("--cycles", type=int, default=None, help="scenario 3: power losses per store")
    ap.add_argument("--lmdb", choices=("keep", "undo", "random"), default=None,
                    help="scenario 3: LMDB's last commit survives a power loss, is undone "
                         "(if metasync is off), or either (default)")
    ap.add_argument("--failpoint", action="append", default=None,
                    help="scenario 2: only this failpoint (repeatable)")
    ap.add_argument("--arm", choices=("start", "open", "both"), default=None,
                    help="scenario 4: count hits from the start, from once the store is open, or both")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep trials that found anomalies")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    names = list(scenarios.SCENARIOS) if args.scenario == "all" else \
        [scenarios.NAMES.get(args.scenario, args.scenario)]
    for n in names:
        if n not in scenarios.SCENARIOS:
            ap.error("unknown scenario %r" % args.scenario)
    opts = scenarios.Options(**(QUICK_OPTS if args.quick else {}))
    for k in ("duration", "kills", "hits", "later", "cycles", "lmdb"):
        if getattr(args, k) is not None:
            setattr(opts, k, getattr(args, k))
    opts.failpoints = args.failpoint
    if args.arm:
        opts.io_arms = ("start", "open") if args.arm == "both" else (args.arm,)
    opts.keep, opts.verbose = args.keep, args.verbose
    root = args.dir or tempfile.mkdtemp(prefix="pylog-torture-")
    outcomes = []
    for n in names:
        trials = args.trials if args.trials is not None else (QUICK if args.quick else FULL)[n]
        out = scenarios.run(n, trials, args.seed, os.path.join(root, "s" + n), opts)
        outcomes.append(out)
        if args.verbose:
            print_scoreboard([out])
    print("pylog torture: %s, seed %d, work directory %s" % (
        "quick" if args.quick else "full", args.seed, root))
    print_scoreboard(outcomes)
    if not args.dir and not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(o.anomalies for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
