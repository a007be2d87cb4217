"""Named failpoints: crash, fail or pause the process at a chosen step.

Off by default, and then hit() is one dict lookup on an empty dict.  Turned
on from Python (set/clear) or by the environment at import:

    PYLOG_FAILPOINTS="log.append.after_write=kill;fsync.before=eio@3"

Actions: kill (SIGKILL this process), eio / enospc (raise OSError once),
eio! / enospc! (raise on every hit from then on), sleep:<ms>.  "@k" fires on
the k-th hit only (1-based), counting hits since the failpoint was set.
"""
import errno
import os
import signal
import time

_active = {}     # name -> [action, fire_at_hit, hits]


def set(name, action, at=1):
    """Arm failpoint name with action; fire on hit number `at` (and after, if persistent)."""
    _parse_action(action)
    _active[name] = [action, at, 0]


def clear(name=None):
    if name is None:
        _active.clear()
    else:
        _active.pop(name, None)


def active():
    return dict((k, (v[0], v[1])) for k, v in _active.items())


def hits(name):
    entry = _active.get(name)
    return entry[2] if entry else 0


def hit(name):
    if not _active:
        return
    entry = _active.get(name)
    if entry is None:
        return
    entry[2] += 1
    action, at, n = entry
    persistent = action.endswith("!")
    if n < at or (n > at and not persistent):
        return
    _fire(name, action)


def _parse_action(action):
    base = action.rstrip("!")
    if base in ("kill", "eio", "enospc") or (base.startswith("sleep:") and base[6:].isdigit()):
        return base
    raise ValueError("unknown failpoint action %r (kill, eio, enospc, eio!, enospc!, sleep:MS)"
                     % action)


def _fire(name, action):
    base = _parse_action(action)
    if base == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)                 # SIGKILL is asynchronous for ourselves on some kernels
    elif base == "eio":
        raise OSError(errno.EIO, "injected EIO at failpoint %s" % name)
    elif base == "enospc":
        raise OSError(errno.ENOSPC, "injected ENOSPC at failpoint %s" % name)
    else:
        time.sleep(int(base[6:]) / 1000.0)


def _load_env():
    spec = os.environ.get("PYLOG_FAILPOINTS", "")
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, action = item.partition("=")
        action, _, at = action.partition("@")
        set(name.strip(), action.strip(), int(at) if at else 1)


_load_env()
