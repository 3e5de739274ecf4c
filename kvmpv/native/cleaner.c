/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The clone(CLONE_VM) teardown cleaner (the idea of QEMU's
 * system/async-teardown.c, reimplemented with exact exit/exec notification
 * and an optional parallel release).
 *
 * The armed process creates a child that shares its address space but is a
 * separate process (clone flags: CLONE_VM only, exit signal 0).  When the
 * armed process exits, its threads only drop their references to the mm; the
 * exit is visible to waiters at once.  The cleaner then exits too and, holding
 * the last reference, pays for exit_mmap() in its own context -- an ordinary
 * task in the same cgroups, so CPU and memory stay accounted there.
 *
 * Rules for the child (cleaner_main and everything it calls):
 *  - It shares the arming thread's TLS (no CLONE_SETTLS) and the whole heap of
 *    a running interpreter.  So: raw system calls only (rawsys.h, which never
 *    writes errno), no malloc, no stdio, no opendir, no locks, no Python.
 *  - Everything it reads after the armed process is gone lives in the
 *    "arena", a private mapping made by the parent at arm time that the
 *    parallel release skips: globals of this library may sit in an anonymous
 *    .bss mapping that the release zeroes.
 *  - Built with -fno-stack-protector (the canary is read from the TLS block,
 *    which a parallel release may zero between prologue and epilogue),
 *    -fno-builtin and -fno-tree-loop-distribute-patterns (no hidden calls to
 *    libc memcpy/memset), and -z now (no lazy PLT resolution, which would run
 *    the dynamic linker -- locks, TLS -- inside the child).
 *  - The one libc function called in the child is clone() itself, to start the
 *    parallel helpers once the parent is gone; its child path is assembly
 *    that touches no TLS, and on failure it writes errno of a thread that no
 *    longer exists.
 *
 * How the cleaner learns that the parent is gone (no 1-second polling):
 *  - A pidfd of the armed process (pidfd_open on its tgid, Linux 5.3) becomes
 *    readable only when the *whole thread group* has exited: pidfd_poll()
 *    reports a zombie thread-group leader only when !delay_group_leader(),
 *    i.e. once its last thread is gone.  So the arming thread exiting early,
 *    or even the leader thread exiting first, does not trigger the teardown
 *    (QEMU needs its getppid() re-check for the same reason, because
 *    PR_SET_PDEATHSIG fires on the death of the creating *thread*).  The
 *    notification is sent from exit_notify()/release_task(), after every
 *    thread's exit_mm(), so the cleaner's later exit is the last mmput().
 *    Reparenting to a subreaper or to init does not matter: we never look at
 *    our parent except in the no-pidfd fallback below.
 *  - exec does not make the pidfd readable (same pid), yet the old mm is then
 *    used by nobody but us: waiting on would pin it until the new program
 *    exits.  The parent holds the only write end of a close-on-exec pipe; the
 *    read end is ours.  exec closes it after exec_mmap() switched mm, and an
 *    exit closes it in exit_files() after exit_mm(): either way we see POLLHUP
 *    when the parent no longer uses the old mm.  fork children would keep a
 *    copy of the write end open, so a pthread_atfork child handler closes it
 *    in them (vfork/posix_spawn children drop it at their exec: O_CLOEXEC).
 *  - POLLHUP alone is ambiguous: the program may have closed "all its fds"
 *    (daemonizing code) while it keeps running.  kcmp(KCMP_VM) tells: if our
 *    parent still has our mm, the pipe was just lost and we keep waiting on
 *    the pidfd, checking kcmp every 50 ms for an exec.  Otherwise the parent
 *    no longer uses our mm (exec'd, or exiting: its mm pointer is NULL).
 *    Both modes then give the pidfd 20 ms to confirm a complete exit (it
 *    follows POLLHUP by microseconds), so the teardown never competes with
 *    the parent's last exit steps; without confirmation (exec, or the leader
 *    thread a zombie while other threads run) the cleaner exits plainly --
 *    always safe: it never frees memory anybody still uses.
 *  - Without pidfd_open (ENOSYS, or a seccomp filter), getppid() changing
 *    (reparenting after the last thread exited) is the "gone" test: checked
 *    after POLLHUP (every 200 us for up to 20 ms), every 100 ms as a backstop
 *    while the pipe is watched, every 2 ms once it is lost.
 *
 * The parallel mode only runs after a *confirmed* complete exit
 * (pidfd readable, or getppid changed): MADV_DONTNEED zeroes memory, so it
 * must never run while any thread of the armed process can still use it.
 *
 * Where the teardown runs (docs/teardown-cost.md has the traces): the
 * cleaner moves itself (sched_setaffinity) to the CPU the armed process
 * last ran on, read from /proc/<pid>/stat when the exit is noticed, so that
 * its exit_mmap() runs where a plain exit's would have.  The wakeup would
 * otherwise put it on another, idle CPU -- and the cost of freeing pages
 * depends on the CPU: free_frozen_page_commit() (mm/page_alloc.c) keeps a
 * freed page on that CPU's per-cpu list while the list is below its `high`,
 * and only past it moves pages to the buddy allocator under zone->lock
 * (free_pcppages_bulk()), about twice the cost per page here.  `high` is
 * auto-tuned per CPU (nr_pcp_alloc() raises it when that CPU allocates a
 * lot, nr_pcp_high() when it frees a lot, decay_pcp_high() lowers it every
 * second): a process that allocated its memory itself leaves roomy lists on
 * its own CPU, while the other CPU's lists are often full.
 */
#define _GNU_SOURCE
#include "cleaner.h"
#include "rawsys.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef __WCLONE
#define __WCLONE 0x80000000
#endif

#define CLEANER_STACK (64 * 1024)
#define HELPER_STACK (16 * 1024)
#define MAPS_BUF (64 * 1024)
#define MAX_RANGES 16384
/* Below this much private anonymous memory, helpers cost more than they save. */
#define PARALLEL_MIN_BYTES (64UL << 20)
/* Cut points between pieces are aligned so no transparent huge page is split
 * and no page table page is zapped by two tasks (each task's MADV_DONTNEED
 * can then free the PTE tables it empties: CONFIG_PT_RECLAIM, Linux 6.14). */
#define SLICE_ALIGN (2UL << 20)
/* The parallel release hands out pieces of about this size, one at a time, to
 * whichever task is free: a task on a busier CPU (another job, or full per-cpu
 * page lists: see the top comment) then takes fewer.  32 MiB is 1-3 ms of
 * MADV_DONTNEED here, against a few microseconds of per-call overhead. */
#define CHUNK_BYTES (32UL << 20)
/* At most this many chunks (larger chunks for terabytes), bounding the table. */
#define MAX_CHUNKS (64 * KVMPV_MAX_PARALLEL)
/* sched_setaffinity mask: CPUs 0..MASK_CPUS-1 (the kernel ignores the rest). */
#define MASK_CPUS 4096
/* Bound of the close-by-number fallback (a 2^30 RLIMIT_NOFILE would take minutes). */
#define CLOSE_LOOP_MAX (1L << 20)

#define MS (1000L * 1000L)

/* What wait_for_parent() concluded. */
enum {
	PARENT_GONE = 1,	/* the whole thread group exited: nobody else uses the mm */
	JUST_EXIT = 2,		/* exec, or not sure: a plain exit is always safe */
};

/* Test hooks (KVMPV_CLEANER_TEST_FALLBACK=proc,limit,nopidfd): force the
 * fallback paths so the tests can exercise them on a modern kernel. */
#define FALLBACK_PROC 1		/* skip close_range, walk /proc/self/fd */
#define FALLBACK_LIMIT 2	/* skip close_range and /proc, loop to RLIMIT_NOFILE */

/* Benchmark hooks (KVMPV_CLEANER_TEST_LEGACY=placement,chunks), so that
 * benchmarks/teardown_cost.py and teardown_trace.py measure the variants in
 * one run: the placement before issue 27, and the chunked release issue 27
 * tried and measured slower (see parallel_release()). */
#define LEGACY_PLACEMENT 1	/* stay where the wakeup put us */
#define TEST_CHUNKS 2		/* CHUNK_BYTES pieces from a shared counter */

struct range {
	unsigned long start, end;
};

/* A piece of a range, released by one MADV_DONTNEED. */
struct piece {
	unsigned long start, end;
	int owner;		/* fixed slices: the one task that releases it */
};

struct par;

struct job {
	struct par *par;
	int index;		/* 0: the cleaner itself */
	int report_fd;		/* see struct arena */
	int fixed;		/* fixed slices (the default): only the pieces it owns */
};

/* Scratch of the parallel mode; lives in the arena. */
struct par {
	struct job jobs[KVMPV_MAX_PARALLEL];
	struct piece pieces[MAX_RANGES + MAX_CHUNKS + 1];
	long npieces;
	long next;		/* next piece to take (atomic) */
	struct range ranges[MAX_RANGES];
	char maps[MAPS_BUF];
};

/* Written by the parent before clone(), read-only for the cleaner. */
struct arena {
	long parent;		/* tgid of the armed process */
	int pidfd;		/* pidfd of the armed process, -1 if unavailable */
	int notify_fd;		/* read end of the close-on-exec pipe */
	int parallel;		/* tasks releasing memory (1: plain exit) */
	int fallback;		/* FALLBACK_* test hooks */
	int legacy;		/* LEGACY_* benchmark hooks */
	int report_fd;		/* KVMPV_CLEANER_REPORT_FD, -1 if not asked for */
	unsigned long base;	/* the whole arena mapping: never released by us */
	unsigned long size;
	char *helper_stacks;	/* parallel-1 stacks of HELPER_STACK bytes */
	struct par *par;	/* NULL unless parallel > 1 */
	char name[16];		/* "cleanup/<pid>", PR_SET_NAME's 16 bytes */
	int ready;		/* set (and futex-woken) by the cleaner once set up */
};

/* ---------------------------------------------------------------------------
 * The child.  Nothing below until "parent side" may call libc (see top).
 */

static long raw_sleep_ns(long ns)
{
	struct timespec ts = { ns / 1000000000L, ns % 1000000000L };

	return RAW4(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &ts, 0);
}

/*
 * The cleaner's report (KVMPV_CLEANER_REPORT_FD, read at arm time): one line
 * per event, written with one write() each (a pipe keeps lines of up to
 * PIPE_BUF bytes whole, whoever writes them):
 *   "started K T"   the cleaner cloned helper task T for slice K
 *   "job K T B"     task T finished slice K, B bytes released by MADV_DONTNEED
 *   "reaped T"      the cleaner reaped helper T (its own CLONE_VM child)
 *   "cpu T C"       task T is about to release memory (a job, or the final
 *                   exit) on CPU C (getcpu)
 *   "exit T"        the cleaner T is about to exit (its exit_mmap follows)
 * So a test learns the helper tids from the tasks themselves instead of
 * guessing them from pid numbers.  Errors are ignored: the report never
 * changes what the cleaner does.
 */
static char *put_num(char *p, unsigned long v)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

static void report(int fd, const char *tag, int nums, unsigned long a, unsigned long b,
		   unsigned long c)
{
	char line[96], *p = line;
	unsigned long v[3] = { a, b, c };
	int i;

	if (fd < 0)
		return;
	while (*tag)
		*p++ = *tag++;
	for (i = 0; i < nums; i++) {
		*p++ = ' ';
		p = put_num(p, v[i]);
	}
	*p++ = '\n';
	RAW3(SYS_write, fd, line, p - line);
}

static void close_gaps(const int *keep, int nkeep, long *ret)
{
	unsigned int lo = 0;
	int i;

	*ret = 0;
	for (i = 0; i < nkeep; i++) {
		if ((unsigned int)keep[i] > lo) {
			*ret = RAW3(SYS_close_range, lo, keep[i] - 1, 0);
			if (*ret < 0)
				return;
		}
		lo = (unsigned int)keep[i] + 1;
	}
	*ret = RAW3(SYS_close_range, lo, ~0U, 0);
}

static int is_kept(const int *keep, int nkeep, long fd)
{
	int i;

	for (i = 0; i < nkeep; i++)
		if (keep[i] == fd)
			return 1;
	return 0;
}

struct linux_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

/* Fallback 1: walk /proc/self/fd with getdents64 into a stack buffer. */
static int close_by_proc(const int *keep, int nkeep)
{
	char buf[4096] __attribute__((aligned(8)));
	long dfd = RAW4(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
	long n, closed;

	if (dfd < 0)
		return -1;
	do {
		closed = 0;
		/* Closing while iterating may shift entries: rescan until clean. */
		RAW3(SYS_lseek, dfd, 0, SEEK_SET);
		while ((n = RAW3(SYS_getdents64, dfd, buf, sizeof(buf))) > 0) {
			long off = 0;

			while (off < n) {
				struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
				const char *s = d->d_name;
				long fd = 0;

				off += d->d_reclen;
				if (*s < '0' || *s > '9')
					continue;
				while (*s >= '0' && *s <= '9')
					fd = fd * 10 + (*s++ - '0');
				if (fd == dfd || is_kept(keep, nkeep, fd))
					continue;
				RAW1(SYS_close, fd);
				closed++;
			}
		}
	} while (closed);
	RAW1(SYS_close, dfd);
	return 0;
}

/* Fallback 2 (no /proc): close by number up to the soft RLIMIT_NOFILE, bounded. */
static void close_by_limit(const int *keep, int nkeep)
{
	struct {
		unsigned long long cur, max;
	} rl = { 1024, 1024 };
	long fd, limit;

	if (RAW4(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, &rl) < 0)
		rl.cur = 1024;
	limit = rl.cur > (unsigned long long)CLOSE_LOOP_MAX ? CLOSE_LOOP_MAX : (long)rl.cur;
	for (fd = 0; fd < limit; fd++)
		if (!is_kept(keep, nkeep, fd))
			RAW1(SYS_close, fd);
}

/*
 * Close every inherited fd but ours: otherwise the cleaner keeps the parent's
 * stdout pipe (a waiter reading it never sees EOF), log files and sockets
 * (libvirt's logger refused to start the next VM, QEMU review) open.
 */
static void close_inherited(const struct arena *a)
{
	int keep[3], nkeep = 0, i, j;
	long ret;

	if (a->pidfd >= 0)
		keep[nkeep++] = a->pidfd;
	keep[nkeep++] = a->notify_fd;
	if (a->report_fd >= 0)
		keep[nkeep++] = a->report_fd;
	/* close_gaps() wants them in ascending order */
	for (i = 1; i < nkeep; i++)
		for (j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];

			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	if (!(a->fallback & (FALLBACK_PROC | FALLBACK_LIMIT))) {
		close_gaps(keep, nkeep, &ret);	/* close_range: Linux 5.9 */
		if (ret == 0)
			return;
	}
	if (!(a->fallback & FALLBACK_LIMIT) && close_by_proc(keep, nkeep) == 0)
		return;
	close_by_limit(keep, nkeep);
}

/* Does the armed process still run on our mm?  Errors count as "no". */
static int parent_shares_mm(const struct arena *a)
{
	long self = RAW0(SYS_getpid);

	return RAW5(SYS_kcmp, self, a->parent, KCMP_VM, 0, 0) == 0;
}

/*
 * The CPU the armed process's thread-group leader last ran on: field 39
 * ("processor") of /proc/<pid>/stat; -1 if it cannot be read (already
 * reaped, no /proc).  Read when the exit is noticed: the leader is then
 * running its exit (single-threaded programs: the CPU of the exit itself) or
 * is a zombie that kept its last CPU.
 */
static long parent_cpu(const struct arena *a)
{
	char path[48], buf[1024], *p = path;
	const char *s, *end, *close_paren = 0;
	long fd, n, field = 2, cpu = 0;

	for (s = "/proc/"; *s;)
		*p++ = *s++;
	p = put_num(p, (unsigned long)a->parent);
	for (s = "/stat"; *s;)
		*p++ = *s++;
	*p = 0;
	fd = RAW4(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	do
		n = RAW3(SYS_read, fd, buf, sizeof(buf));
	while (n == -EINTR);
	RAW1(SYS_close, fd);
	if (n <= 0)
		return -1;
	end = buf + n;
	/* comm (field 2) may hold spaces and parentheses: count from the last ')'. */
	for (s = buf; s < end; s++)
		if (*s == ')')
			close_paren = s;
	if (!close_paren)
		return -1;
	for (s = close_paren + 1; s < end && field < 39; s++)
		if (*s == ' ')
			field++;
	if (field != 39 || s >= end || *s < '0' || *s > '9')
		return -1;
	while (s < end && *s >= '0' && *s <= '9')
		cpu = cpu * 10 + (*s++ - '0');
	return cpu;
}

/* Restrict this task to `cpu` (migrating now if need be).  Errors -- a CPU
 * outside our cpuset (EINVAL), seccomp -- leave us where we are. */
static void run_on_cpu(long cpu)
{
	unsigned long mask[MASK_CPUS / (8 * sizeof(unsigned long))];
	unsigned long i;

	if (cpu < 0 || cpu >= MASK_CPUS)
		return;
	for (i = 0; i < sizeof(mask) / sizeof(mask[0]); i++)	/* no memset: see top */
		mask[i] = 0;
	mask[cpu / (8 * sizeof(unsigned long))] = 1UL << (cpu % (8 * sizeof(unsigned long)));
	RAW3(SYS_sched_setaffinity, 0, sizeof(mask), mask);
}

/* "cpu T C": where task T releases memory (tests check the placement). */
static void report_cpu(int fd)
{
	unsigned int cpu = 0;

	if (fd >= 0 && RAW3(SYS_getcpu, &cpu, 0, 0) == 0)
		report(fd, "cpu", 2, (unsigned long)RAW0(SYS_gettid), cpu, 0);
}

/* Has the whole thread group of the armed process exited?  Wait up to ns. */
static int parent_gone(const struct arena *a, long ns)
{
	if (a->pidfd >= 0) {
		struct pollfd p = { a->pidfd, POLLIN, 0 };
		struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
		long n;

		do
			n = RAW5(SYS_ppoll, &p, 1, &ts, 0, 8);
		while (n == -EINTR);
		return n > 0;
	}
	for (;;) {
		if (RAW0(SYS_getppid) != a->parent)
			return 1;
		if (ns <= 0)
			return 0;
		raw_sleep_ns(200 * 1000);
		ns -= 200 * 1000;
	}
}

/* The notification pipe hung up: complete exit, or exec? */
static int settle(const struct arena *a)
{
	return parent_gone(a, 20 * MS) ? PARENT_GONE : JUST_EXIT;
}

/* *cpu: the armed process's last CPU when its exit was noticed (-1 unknown). */
static int wait_for_parent(const struct arena *a, long *cpu)
{
	struct pollfd p[2] = {
		{ a->pidfd, POLLIN, 0 },	/* fd -1 is ignored by poll */
		{ a->notify_fd, POLLIN, 0 },
	};
	int watch_pipe = 1;

	for (;;) {
		/* Timeouts are only backstops: pidfd -> kcmp every 50 ms once the
		 * pipe is lost; no pidfd -> getppid every 100 ms beside the pipe
		 * (a raw-clone child may hold a copy), every 2 ms without it. */
		struct timespec tick = { 0, (a->pidfd >= 0 ? 50 : watch_pipe ? 100 : 2) * MS };
		int timed = !watch_pipe || a->pidfd < 0;
		long n = RAW5(SYS_ppoll, p, 2, timed ? &tick : 0, 0, 8);

		if (n < 0 && n != -EINTR && n != -EAGAIN && n != -ENOMEM)
			return JUST_EXIT;	/* cannot wait: never pin memory */
		if (a->pidfd >= 0 ? (n > 0 && p[0].revents) : parent_gone(a, 0)) {
			*cpu = parent_cpu(a);	/* a zombie, if not reaped yet */
			return PARENT_GONE;
		}
		if (watch_pipe && n > 0 && p[1].revents) {
			/*
			 * The pipe closes in exit_files(), before exit_notify():
			 * tearing down at once would compete for the CPU with the
			 * last steps of the parent's exit and delay its waiter
			 * (2-9 ms seen on a busy 2-CPU host).  So both modes give
			 * the pidfd up to 20 ms to confirm a complete exit; an exec
			 * never confirms and ends the wait after 20 ms, well within
			 * the 100 ms in which an exec'd address space must go.
			 */
			if (!parent_shares_mm(a)) {
				/* Still in do_exit (or exec'd): its /proc entry is there. */
				*cpu = parent_cpu(a);
				return settle(a);
			}
			/* The program closed our fd but still runs on this mm. */
			watch_pipe = 0;
			p[1].fd = -1;
			continue;
		}
		if (!watch_pipe && !parent_shares_mm(a)) {
			*cpu = parent_cpu(a);
			return settle(a);
		}
	}
}

/* ---- parallel release ---- */

static int parse_hex(const char **pp, unsigned long *v)
{
	const char *p = *pp;
	unsigned long x = 0;
	int digits = 0;

	for (;; p++, digits++) {
		char c = *p;

		if (c >= '0' && c <= '9')
			x = x * 16 + (unsigned long)(c - '0');
		else if (c >= 'a' && c <= 'f')
			x = x * 16 + (unsigned long)(c - 'a' + 10);
		else
			break;
	}
	*pp = p;
	*v = x;
	return digits > 0;
}

static int starts_with(const char *s, const char *end, const char *prefix)
{
	while (*prefix) {
		if (s >= end || *s != *prefix)
			return 0;
		s++;
		prefix++;
	}
	return 1;
}

static void add_range(struct par *p, long *n, unsigned long s, unsigned long e)
{
	if (s < e && *n < MAX_RANGES) {
		p->ranges[*n].start = s;
		p->ranges[*n].end = e;
		(*n)++;
	}
}

/*
 * One line of /proc/self/maps: "start-end perms offset dev inode   [name]".
 * Taken: private ('p'), readable or writable, no backing inode, and either
 * unnamed, [heap] or a named anonymous region ([anon:...]).  Left to the final
 * exit: shared mappings (including shared anonymous and device mappings such
 * as a vCPU's kvm_run: 's'), file-backed and hugetlb mappings (inode != 0),
 * [stack], [vdso], [vvar], [vsyscall], PROT_NONE guard areas, and our arena.
 */
static void parse_line(const struct arena *a, struct par *p, long *n, const char *s,
		       const char *end)
{
	unsigned long start, stop, dummy, inode;
	const char *perms;

	if (!parse_hex(&s, &start) || *s++ != '-' || !parse_hex(&s, &stop) || *s++ != ' ')
		return;
	perms = s;
	if (end - s < 5)
		return;
	s += 5;
	if (!parse_hex(&s, &dummy) || *s++ != ' ')			/* offset */
		return;
	if (!parse_hex(&s, &dummy) || *s++ != ':' || !parse_hex(&s, &dummy))	/* dev */
		return;
	if (*s++ != ' ')
		return;
	inode = 0;
	while (s < end && *s >= '0' && *s <= '9')
		inode = inode * 10 + (unsigned long)(*s++ - '0');
	while (s < end && *s == ' ')
		s++;
	if (perms[3] != 'p' || (perms[0] != 'r' && perms[1] != 'w') || inode != 0)
		return;
	if (s < end && !starts_with(s, end, "[heap]") && !starts_with(s, end, "[anon:"))
		return;
	/* Never release the arena (our stacks and this very buffer). */
	if (start < a->base + a->size && stop > a->base) {
		add_range(p, n, start, a->base);
		add_range(p, n, a->base + a->size, stop);
		return;
	}
	add_range(p, n, start, stop);
}

static long read_ranges(const struct arena *a, struct par *p)
{
	long fd = RAW4(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
	long have = 0, n = 0, got;

	if (fd < 0)
		return 0;
	for (;;) {
		long i, line = 0;

		do
			got = RAW3(SYS_read, fd, p->maps + have, MAPS_BUF - have);
		while (got == -EINTR);
		if (got <= 0)
			break;
		have += got;
		for (i = 0; i < have; i++) {
			if (p->maps[i] == '\n') {
				parse_line(a, p, &n, p->maps + line, p->maps + i);
				line = i + 1;
			}
		}
		if (line == 0 && have == MAPS_BUF)
			line = have;	/* a line longer than the buffer: drop it */
		/* Keep the partial last line (hand-written: no memmove call). */
		for (i = line; i < have; i++)
			p->maps[i - line] = p->maps[i];
		have -= line;
	}
	RAW1(SYS_close, fd);
	return n;
}

/*
 * Cut the ranges into pieces at every multiple of `chunk` bytes (counted over
 * the ranges laid end to end), each cut moved up to a 2 MiB boundary.  The
 * owner of a piece is the index of the chunk it starts in (capped at
 * tasks - 1): with chunk = total / tasks that is the fixed slice of
 * the default release.  Pieces beyond the table (more than MAX_RANGES ranges) are
 * left to the final exit.
 */
static long build_pieces(struct par *p, long n, unsigned long chunk, int tasks)
{
	const long cap = (long)(sizeof(p->pieces) / sizeof(p->pieces[0]));
	unsigned long cum = 0;
	long r, np = 0;

	for (r = 0; r < n && np < cap; r++) {
		unsigned long base = p->ranges[r].start, s = base, e = p->ranges[r].end;

		while (s < e && np < cap) {
			unsigned long k = (cum + (s - base)) / chunk;
			/* The next multiple of chunk lies beyond s: the cut moves forward. */
			unsigned long cut = base + ((k + 1) * chunk - cum);

			cut = (cut + SLICE_ALIGN - 1) & ~(SLICE_ALIGN - 1);
			if (cut > e || cut <= s)
				cut = e;
			p->pieces[np].start = s;
			p->pieces[np].end = cut;
			p->pieces[np].owner = k < (unsigned long)tasks ? (int)k : tasks - 1;
			np++;
			s = cut;
		}
		cum += e - base;
	}
	return np;
}

static void run_job(const struct job *j)
{
	struct par *p = j->par;
	unsigned long released = 0;
	long i = j->fixed ? 0 : -1;

	report_cpu(j->report_fd);
	for (;;) {
		const struct piece *pc;

		if (j->fixed) {
			/* Fixed slices: the pieces we own, in order. */
			while (i < p->npieces && p->pieces[i].owner != j->index)
				i++;
			if (i >= p->npieces)
				break;
			pc = &p->pieces[i++];
		} else {
			/* The next piece nobody took yet. */
			i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
			if (i >= p->npieces)
				break;
			pc = &p->pieces[i];
		}
		/* Errors (mlocked or VM_PFNMAP areas: EINVAL) leave it to exit. */
		if (RAW3(SYS_madvise, pc->start, pc->end - pc->start, MADV_DONTNEED) == 0)
			released += pc->end - pc->start;
	}
	report(j->report_fd, "job", 3, (unsigned long)j->index, (unsigned long)RAW0(SYS_gettid),
	       released);
}

static int helper_main(void *arg)
{
	run_job(arg);
	return 0;	/* the clone() trampoline calls SYS_exit with this */
}

/*
 * Release the private anonymous memory from `parallel` tasks sharing this mm
 * with MADV_DONTNEED (the idea of the 2021 linux-mm thread: clone(CLONE_VM)
 * plus DONTNEED from several threads).  The tasks are children of the
 * cleaner, in its cgroups: the CPU time stays charged there.  Page tables
 * (those MADV_DONTNEED did not reclaim) and everything skipped go at the
 * final exit.
 *
 * Each task releases one fixed slice of equal bytes.  Issue 27 tried
 * CHUNK_BYTES pieces taken from a shared counter by whichever task is free
 * (TEST_CHUNKS), because the two CPUs of a 2-CPU host do not free at the same
 * speed (at 2 GiB one CPU freed 288k pages, 92% into its own per-cpu lists,
 * the other pushed all its 238k to the buddy allocator and took 60% longer).
 * On a quiet machine the chunks were slower at 8 GiB (release 251 ms against
 * 222 ms, CPU 0.47-0.49 s against 0.41-0.43 s: 256 MADV_DONTNEED calls, each
 * with its TLB flush, and both tasks in the same zone lock more often), so the
 * slices stay and the chunks are a benchmark variant (docs/teardown-cost.md).
 *
 * `cpu`: the armed process's last CPU; the cleaner moves there only after
 * cloning the helpers, so that they do not inherit the one-CPU mask.
 */
static void parallel_release(const struct arena *a, long cpu)
{
	struct par *p = a->par;
	long n = read_ranges(a, p), r, k, started = 0;
	unsigned long total = 0, chunk;
	int tasks = a->parallel, failed[KVMPV_MAX_PARALLEL];
	int fixed = (a->legacy & TEST_CHUNKS) == 0;

	for (r = 0; r < n; r++)
		total += p->ranges[r].end - p->ranges[r].start;
	if (n == 0 || total < PARALLEL_MIN_BYTES) {
		if (!(a->legacy & LEGACY_PLACEMENT))
			run_on_cpu(cpu);
		return;
	}
	if (fixed) {
		chunk = total / (unsigned long)tasks;
	} else {
		chunk = total / MAX_CHUNKS + 1;
		if (chunk < CHUNK_BYTES)
			chunk = CHUNK_BYTES;
	}
	p->npieces = build_pieces(p, n, chunk, tasks);
	p->next = 0;
	for (k = 0; k < tasks; k++) {
		p->jobs[k].par = p;
		p->jobs[k].index = (int)k;
		p->jobs[k].report_fd = a->report_fd;
		p->jobs[k].fixed = fixed;
		failed[k] = 0;
	}
	for (k = 1; k < tasks; k++) {
		char *top = a->helper_stacks + (unsigned long)k * HELPER_STACK;
		/* libc clone(): see the top comment; exit signal 0, reaped below. */
		long tid = clone(helper_main, top, CLONE_VM, &p->jobs[k]);

		if (tid > 0) {
			started++;
			report(a->report_fd, "started", 2, (unsigned long)k, (unsigned long)tid, 0);
		} else {
			failed[k] = 1;
		}
	}
	if (!(a->legacy & LEGACY_PLACEMENT))
		run_on_cpu(cpu);
	run_job(&p->jobs[0]);
	/* Chunks: job 0 took whatever a failed helper left.  Fixed slices: do them. */
	for (k = 1; k < tasks; k++)
		if (failed[k] && fixed)
			run_job(&p->jobs[k]);
	while (started > 0) {
		long w = RAW4(SYS_wait4, -1, 0, __WCLONE, 0);

		if (w > 0) {
			started--;
			report(a->report_fd, "reaped", 1, (unsigned long)w, 0, 0);
		}
		else if (w != -EINTR)
			break;
	}
}

static int cleaner_main(void *arg)
{
	const struct arena *a = arg;
	long cpu = -1;
	int gone;

	RAW2(SYS_prctl, PR_SET_NAME, a->name);
	close_inherited(a);
	/* Do not keep the parent's working directory (a mount point) busy. */
	RAW1(SYS_chdir, "/");
	/* Tell arm() we are named and hold no inherited fd (private futex: the
	 * key is (mm, address), and we share the mm). */
	__atomic_store_n(&((struct arena *)arg)->ready, 1, __ATOMIC_RELEASE);
	RAW3(SYS_futex, &a->ready, FUTEX_WAKE_PRIVATE, 1);
	gone = wait_for_parent(a, &cpu);
	if (gone == PARENT_GONE && a->par)
		parallel_release(a, cpu);
	else if (!(a->legacy & LEGACY_PLACEMENT))
		run_on_cpu(cpu);	/* exit_mmap where a plain exit would run it */
	report_cpu(a->report_fd);
	report(a->report_fd, "exit", 1, (unsigned long)RAW0(SYS_gettid), 0, 0);
	/* Our exit drops the last mm reference: exit_mmap() runs here. */
	RAW1(SYS_exit, 0);
	return 0;
}

/* ---------------------------------------------------------------------------
 * Parent side: ordinary libc code, called from Python (ctypes) or the preload.
 */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t cleaner_pid;
static int notify_wfd = -1;
static dev_t pipe_dev;
static ino_t pipe_ino;
static void *arena_mem;
static size_t arena_size;
static int cur_parallel;
static int atfork_done;
static int children_enable;
static int children_parallel = 1;

static void forget_locked(void)
{
	if (notify_wfd >= 0)
		close(notify_wfd);
	if (arena_mem)
		munmap(arena_mem, arena_size);
	cleaner_pid = 0;
	notify_wfd = -1;
	arena_mem = NULL;
	arena_size = 0;
	cur_parallel = 0;
}

/* 1 if the cleaner is alive; a dead one (killed, or exited after the pipe
 * told it about an exec) is reaped and forgotten. */
static int alive_locked(void)
{
	pid_t r;
	int st;

	if (cleaner_pid <= 0)
		return 0;
	do
		r = waitpid(cleaner_pid, &st, WNOHANG | __WCLONE);
	while (r < 0 && errno == EINTR);
	if (r == 0)
		return 1;
	forget_locked();	/* exited, or reaped by someone using __WALL */
	return 0;
}

static void atfork_prepare(void)
{
	pthread_mutex_lock(&lock);
}

static void atfork_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void atfork_child(void)
{
	if (cleaner_pid > 0) {
		struct stat st;

		/*
		 * The child is not armed (its mm is a copy).  Drop its copy of
		 * the write end, or the parent's exec would not be noticed while
		 * this child lives.  fstat() guards against an fd number that the
		 * program closed and reused.  The arena is MADV_DONTFORK: the
		 * child has no copy of it.
		 */
		if (notify_wfd >= 0 && fstat(notify_wfd, &st) == 0 && st.st_dev == pipe_dev &&
		    st.st_ino == pipe_ino)
			close(notify_wfd);
		cleaner_pid = 0;
		notify_wfd = -1;
		arena_mem = NULL;
		arena_size = 0;
		cur_parallel = 0;
	}
	pthread_mutex_init(&lock, NULL);
	if (children_enable) {
		int ret = kvmpv_cleaner_arm(children_parallel);

		if (ret < 0) {
			char msg[128];
			int len = snprintf(msg, sizeof(msg),
					   "kvmpv: cleaner not armed in child %d: %s\n", (int)getpid(),
					   strerror((-ret) & 0xffff));

			if (len > 0)
				(void)!write(2, msg, (size_t)len);
		}
	}
}

/*
 * Return once the cleaner has named itself and closed the inherited fds, so
 * that arm() returning means "a reader of our stdout sees EOF when we exit"
 * and "ps shows cleanup/<pid>".  Bounded (2 s) in case it is stopped/killed.
 */
static void wait_ready(struct arena *a, pid_t pid)
{
	struct timespec ts = { 0, 100 * MS };
	siginfo_t info;
	int i;

	for (i = 0; i < 20; i++) {
		if (__atomic_load_n(&a->ready, __ATOMIC_ACQUIRE))
			return;
		syscall(SYS_futex, &a->ready, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
		if (__atomic_load_n(&a->ready, __ATOMIC_ACQUIRE))
			return;
		/* Died before getting ready?  Look without reaping. */
		info.si_pid = 0;
		if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT | __WCLONE) != 0 ||
		    info.si_pid != 0)
			return;	/* status() will see and reap it */
	}
}

int kvmpv_cleaner_abi(void)
{
	return KVMPV_CLEANER_ABI;
}

void kvmpv_cleaner_arm_children(int enable, int parallel)
{
	children_enable = enable;
	children_parallel = parallel;
}

/* KVMPV_CLEANER_TEST_LEGACY=placement,chunks: see LEGACY_PLACEMENT, TEST_CHUNKS. */
static int test_legacy(void)
{
	const char *s = getenv("KVMPV_CLEANER_TEST_LEGACY");
	int f = 0;

	if (!s)
		return 0;
	if (strstr(s, "placement"))
		f |= LEGACY_PLACEMENT;
	if (strstr(s, "chunks"))
		f |= TEST_CHUNKS;
	return f;
}

static int test_fallback(int *no_pidfd)
{
	const char *s = getenv("KVMPV_CLEANER_TEST_FALLBACK");
	int f = 0;

	*no_pidfd = 0;
	if (!s)
		return 0;
	if (strstr(s, "proc"))
		f |= FALLBACK_PROC;
	if (strstr(s, "limit"))
		f |= FALLBACK_LIMIT;
	if (strstr(s, "nopidfd"))
		*no_pidfd = 1;
	return f;
}

/* KVMPV_CLEANER_REPORT_FD=N: the cleaner keeps fd N and writes its report
 * there (see report()); ignored unless N is an open fd at arm time. */
static int report_fd_from_env(void)
{
	const char *s = getenv("KVMPV_CLEANER_REPORT_FD");
	long fd = 0;

	if (!s || *s < '0' || *s > '9')
		return -1;
	while (*s >= '0' && *s <= '9' && fd < 1L << 30)
		fd = fd * 10 + (*s++ - '0');
	if (*s || fd >= 1L << 30 || fcntl((int)fd, F_GETFD) < 0)
		return -1;
	return (int)fd;
}

static int fail(int step, int err)
{
	return -((step << 16) | (err & 0xffff));
}

int kvmpv_cleaner_arm(int parallel)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t hdr, size, off_par = 0, off_helpers = 0;
	unsigned long full = ~0UL, old = 0;
	struct arena *a;
	struct stat st;
	char *mem;
	int fds[2], pidfd, err, fallback, no_pidfd;
	pid_t me, pid;

	if (parallel < 1)
		parallel = 1;
	if (parallel > KVMPV_MAX_PARALLEL)
		parallel = KVMPV_MAX_PARALLEL;
	pthread_mutex_lock(&lock);
	if (alive_locked()) {
		pthread_mutex_unlock(&lock);
		return 0;
	}
	if (!atfork_done) {
		if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) == 0)
			atfork_done = 1;
	}
	me = getpid();
	fallback = test_fallback(&no_pidfd);
	pidfd = no_pidfd ? -1 : (int)syscall(SYS_pidfd_open, me, 0);
	if (pidfd < 0 && !no_pidfd) {
		err = errno;
		/* Old kernel or a seccomp filter: fall back to getppid() polling. */
		if (err != ENOSYS && err != EPERM && err != EINVAL) {
			pthread_mutex_unlock(&lock);
			return fail(KVMPV_STEP_PIDFD, err);
		}
	}
	if (pipe2(fds, O_CLOEXEC) < 0 || fstat(fds[1], &st) < 0) {
		err = errno;
		if (pidfd >= 0)
			close(pidfd);
		pthread_mutex_unlock(&lock);
		return fail(KVMPV_STEP_PIPE, err);
	}

	/* Layout: guard page | cleaner stack | header | helper stacks | par. */
	hdr = ((sizeof(struct arena) + (size_t)page - 1) / (size_t)page) * (size_t)page;
	size = (size_t)page + CLEANER_STACK + hdr;
	if (parallel > 1) {
		off_helpers = size;
		size += (size_t)(parallel - 1) * HELPER_STACK;
		off_par = size;
		size += ((sizeof(struct par) + (size_t)page - 1) / (size_t)page) * (size_t)page;
	}
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	if (mem == MAP_FAILED) {
		err = errno;
		close(fds[0]);
		close(fds[1]);
		if (pidfd >= 0)
			close(pidfd);
		pthread_mutex_unlock(&lock);
		return fail(KVMPV_STEP_MMAP, err);
	}
	mprotect(mem, (size_t)page, PROT_NONE);	/* stack overflow guard */
	/* fork children get no copy (nothing to undo in them), and the distinct
	 * VM flag keeps the kernel from merging it with a neighbour VMA. */
	madvise(mem, size, MADV_DONTFORK);

	a = (struct arena *)(mem + page + CLEANER_STACK);
	a->parent = me;
	a->pidfd = pidfd;
	a->notify_fd = fds[0];
	a->parallel = parallel;
	a->fallback = fallback;
	a->legacy = test_legacy();
	a->report_fd = report_fd_from_env();
	a->base = (unsigned long)mem;
	a->size = size;
	/* helper k (1..parallel-1) runs on [helper_stacks + (k-1)*HELPER_STACK, + HELPER_STACK) */
	a->helper_stacks = parallel > 1 ? mem + off_helpers : NULL;
	a->par = parallel > 1 ? (struct par *)(mem + off_par) : NULL;
	snprintf(a->name, sizeof(a->name), "cleanup/%d", (int)me);

	/*
	 * Block every signal, glibc-internal ones included (hence the raw call:
	 * pthread_sigmask silently keeps SIGCANCEL/SIGSETXID unblocked), so the
	 * child starts with all blocked and never runs one of the parent's
	 * handlers -- CPython's would write the wakeup fd and trip flags in the
	 * interpreter it shares.  The child never unblocks anything; only SIGKILL
	 * and SIGSTOP reach it.
	 */
	RAW4(SYS_rt_sigprocmask, SIG_BLOCK, &full, &old, 8);
	pid = clone(cleaner_main, mem + page + CLEANER_STACK, CLONE_VM, a);
	err = errno;
	RAW4(SYS_rt_sigprocmask, SIG_SETMASK, &old, 0, 8);

	/* The child has its own copies (no CLONE_FILES); we keep the write end. */
	close(fds[0]);
	if (pidfd >= 0)
		close(pidfd);
	if (pid < 0) {
		close(fds[1]);
		munmap(mem, size);
		pthread_mutex_unlock(&lock);
		return fail(KVMPV_STEP_CLONE2, err);
	}
	wait_ready(a, pid);
	cleaner_pid = pid;
	notify_wfd = fds[1];
	pipe_dev = st.st_dev;
	pipe_ino = st.st_ino;
	arena_mem = mem;
	arena_size = size;
	cur_parallel = parallel;
	pthread_mutex_unlock(&lock);
	return 0;
}

int kvmpv_cleaner_disarm(void)
{
	pid_t r;
	int st;

	pthread_mutex_lock(&lock);
	if (!alive_locked()) {
		pthread_mutex_unlock(&lock);
		return 0;
	}
	/* Unreaped child of ours: its pid cannot have been reused. */
	kill(cleaner_pid, SIGKILL);
	do
		r = waitpid(cleaner_pid, &st, __WCLONE);
	while (r < 0 && errno == EINTR);
	forget_locked();
	pthread_mutex_unlock(&lock);
	return 1;
}

int kvmpv_cleaner_status(int *parallel)
{
	int pid;

	pthread_mutex_lock(&lock);
	pid = alive_locked() ? (int)cleaner_pid : 0;
	if (parallel)
		*parallel = pid ? cur_parallel : 0;
	pthread_mutex_unlock(&lock);
	return pid;
}
