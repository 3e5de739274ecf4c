/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * LD_PRELOAD side of libkvmpv-cleaner.so: arm the cleaner in an unmodified,
 * dynamically linked program before its main() runs (`kvmpv launch`).
 *
 * The constructor does nothing unless KVMPV_CLEANER_ARM=1, so that loading
 * the library from Python (ctypes) never arms anything by itself.  The
 * launcher passes:
 *   KVMPV_CLEANER_ARM=1          arm in this process
 *   KVMPV_CLEANER_PARALLEL=N     tasks for the release (1: plain exit)
 *   KVMPV_CLEANER_CHILDREN=1     also arm exec'd and forked children
 *   KVMPV_CLEANER_LD_PRELOAD=... the LD_PRELOAD to restore for the children
 *                                (absent: unset LD_PRELOAD)
 *   KVMPV_CLEANER_REPORT_FD=fd   write "armed <pid> <parallel>" or
 *                                "error <step> <errno>" there, then close it
 *   KVMPV_CLEANER_VERBOSE=1      say on stderr that the cleaner is armed
 *                                (`kvmpv launch -v` exec'd in place: no
 *                                kvmpv process is left to say it)
 * Unless children are wanted, the constructor removes all of this from the
 * environment, so CMD's own children are neither armed nor preloaded.
 *
 * A failure to arm is reported on stderr (and the report fd); the program then
 * runs unarmed: a cleaner is an optimisation, not a reason to refuse to run.
 */
#define _GNU_SOURCE
#include "cleaner.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const step_names[] = { "clone", "pidfd_open", "pipe2", "mmap", "clone" };

__attribute__((constructor)) static void kvmpv_preload_init(void)
{
	const char *armv = getenv("KVMPV_CLEANER_ARM");
	const char *s;
	int parallel = 1, children, report_fd = -1, ret, pid, par = 0, verbose;
	char msg[160];
	int len;

	if (!armv || strcmp(armv, "1") != 0)
		return;
	s = getenv("KVMPV_CLEANER_PARALLEL");
	if (s)
		parallel = atoi(s);
	s = getenv("KVMPV_CLEANER_CHILDREN");
	children = s && strcmp(s, "1") == 0;
	s = getenv("KVMPV_CLEANER_REPORT_FD");
	if (s)
		report_fd = atoi(s);
	unsetenv("KVMPV_CLEANER_REPORT_FD");
	s = getenv("KVMPV_CLEANER_VERBOSE");
	verbose = s && strcmp(s, "1") == 0;
	unsetenv("KVMPV_CLEANER_VERBOSE");
	if (!children) {
		s = getenv("KVMPV_CLEANER_LD_PRELOAD");
		if (s)
			setenv("LD_PRELOAD", s, 1);
		else
			unsetenv("LD_PRELOAD");
		unsetenv("KVMPV_CLEANER_LD_PRELOAD");
		unsetenv("KVMPV_CLEANER_ARM");
		unsetenv("KVMPV_CLEANER_PARALLEL");
		unsetenv("KVMPV_CLEANER_CHILDREN");
	}
	kvmpv_cleaner_arm_children(children, parallel);
	ret = kvmpv_cleaner_arm(parallel);
	if (ret < 0) {
		int step = (-ret) >> 16, err = (-ret) & 0xffff;

		if (step < 0 || step > 4)
			step = 0;
		len = snprintf(msg, sizeof(msg), "kvmpv: cleaner not armed in %d: %s failed: %s\n",
			       (int)getpid(), step_names[step], strerror(err));
		if (len > 0)
			(void)!write(2, msg, (size_t)len);
		len = snprintf(msg, sizeof(msg), "error %s %d\n", step_names[step], err);
	} else {
		pid = kvmpv_cleaner_status(&par);
		if (verbose) {
			len = snprintf(msg, sizeof(msg),
				       "kvmpv: cleaner cleanup/%d armed (pid %d, parallel %d)\n",
				       (int)getpid(), pid, par);
			if (len > 0)
				(void)!write(2, msg, (size_t)len);
		}
		len = snprintf(msg, sizeof(msg), "armed %d %d %d\n", (int)getpid(), pid, par);
	}
	if (report_fd >= 0) {
		if (len > 0)
			(void)!write(report_fd, msg, (size_t)len);
		close(report_fd);
	}
}
