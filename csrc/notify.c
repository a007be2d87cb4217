/* notify.c -- wake consumers in other processes when a partition grows.
 *
 * shared[0] is a sequence number every append increments; shared[1] counts
 * sleepers, so an append pays for a futex wake-up only when somebody waits.
 * A waiter registers, re-reads the sequence, then sleeps only if it is still
 * the value it last saw (FUTEX_WAIT compares atomically), so a bump between
 * its check and its sleep is never missed.  The mapping is MAP_SHARED, so
 * the futex is process-shared (no FUTEX_PRIVATE_FLAG).
 */
#include "pylog.h"
#include <errno.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

uint32_t pl_notify_seq(uint32_t *shared)
{
    return __atomic_load_n(&shared[0], __ATOMIC_ACQUIRE);
}

void pl_notify_bump(uint32_t *shared)
{
    __atomic_fetch_add(&shared[0], 1, __ATOMIC_ACQ_REL);
#ifdef __linux__
    if (__atomic_load_n(&shared[1], __ATOMIC_ACQUIRE) > 0)
        syscall(SYS_futex, &shared[0], FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
#endif
}

int pl_notify_wait(uint32_t *shared, uint32_t seen, int64_t timeout_us)
{
    if (timeout_us < 0)
        timeout_us = 0;
    struct timespec ts = { (time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000 };
    __atomic_fetch_add(&shared[1], 1, __ATOMIC_ACQ_REL);
    int rc = 0;
    if (__atomic_load_n(&shared[0], __ATOMIC_ACQUIRE) == seen) {
#ifdef __linux__
        long r = syscall(SYS_futex, &shared[0], FUTEX_WAIT, seen, &ts, NULL, 0);
        rc = (r == -1 && errno == ETIMEDOUT) ? 1 : 0;
#else
        nanosleep(&ts, NULL);
        rc = __atomic_load_n(&shared[0], __ATOMIC_ACQUIRE) == seen;
#endif
    }
    __atomic_fetch_sub(&shared[1], 1, __ATOMIC_ACQ_REL);
    return rc;
}
