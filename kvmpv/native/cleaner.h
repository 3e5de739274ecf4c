/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kvmpv teardown cleaner: exported entry points of libkvmpv-cleaner.so.
 *
 * One shared object serves both users: kvmpv.teardown loads it with ctypes,
 * and `kvmpv launch` preloads it (LD_PRELOAD) into unmodified programs.  When
 * a Python program runs under the launcher, dlopen() of the same file returns
 * the preloaded copy, so there is one state and never two cleaners.
 */
#ifndef KVMPV_CLEANER_H
#define KVMPV_CLEANER_H

#define KVMPV_CLEANER_ABI 1
#define KVMPV_MAX_PARALLEL 64

/* Steps reported in the high bits of a failed kvmpv_cleaner_arm(). */
#define KVMPV_STEP_CLONE 0
#define KVMPV_STEP_PIDFD 1
#define KVMPV_STEP_PIPE 2
#define KVMPV_STEP_MMAP 3
#define KVMPV_STEP_CLONE2 4

#define KVMPV_EXPORT __attribute__((visibility("default")))

/* Version of this interface (1). */
KVMPV_EXPORT int kvmpv_cleaner_abi(void);
/* Create the cleaner (idempotent).  0 on success or when already armed;
 * -((step << 16) | errno) on failure. */
KVMPV_EXPORT int kvmpv_cleaner_arm(int parallel);
/* Kill and reap the cleaner: 1 if one was armed, 0 if none, -errno on error. */
KVMPV_EXPORT int kvmpv_cleaner_disarm(void);
/* Pid of the live cleaner (0 if none; a dead one is reaped); *parallel set. */
KVMPV_EXPORT int kvmpv_cleaner_status(int *parallel);
/* Re-arm fork children too (used by `kvmpv launch --children`). */
KVMPV_EXPORT void kvmpv_cleaner_arm_children(int enable, int parallel);

#endif /* KVMPV_CLEANER_H */
