/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Raw system calls for the cleaner child, without libc and without errno.
 *
 * Why not libc's syscall() or its wrappers: the cleaner is created by
 * clone(CLONE_VM) without CLONE_SETTLS, so it runs with the thread pointer of
 * the thread that armed it.  Every libc wrapper that fails writes errno, and
 * that errno is the *creating thread's* errno, in memory the parent is using
 * at the same moment: a failed poll() in the cleaner could turn the parent's
 * EAGAIN into EINTR between its read() and its errno check.  These inline
 * versions return -errno in the result and touch nothing but registers.
 *
 * x86_64, aarch64 and s390x follow the kernel's calling conventions (the same
 * register constraints as tools/include/nolibc).  Other architectures fall
 * back to libc's syscall() and accept the errno clobbering described above
 * (a compile-time warning says so).
 */
#ifndef KVMPV_RAWSYS_H
#define KVMPV_RAWSYS_H

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Numbers newer than some libc headers (identical on all architectures that
 * use the generic table, which includes every one we build for). */
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#if defined(__x86_64__)
static inline long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
static inline long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;

	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory", "cc");
	return x0;
}
#elif defined(__s390x__)
static inline long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	/* Number in r1, arguments in r2..r7, result in r2. */
	register long r1 __asm__("1") = n;
	register long r2 __asm__("2") = a;
	register long r3 __asm__("3") = b;
	register long r4 __asm__("4") = c;
	register long r5 __asm__("5") = d;
	register long r6 __asm__("6") = e;
	register long r7 __asm__("7") = f;

	__asm__ volatile("svc 0"
			 : "+d"(r2)
			 : "d"(r1), "d"(r3), "d"(r4), "d"(r5), "d"(r6), "d"(r7)
			 : "memory", "cc");
	return r2;
}
#else
#warning "no inline system calls for this architecture: the cleaner uses syscall(), which may clobber the arming thread's errno"
static inline long raw_syscall6(long n, long a, long b, long c, long d, long e, long f)
{
	long ret = syscall(n, a, b, c, d, e, f);

	return ret == -1 ? -errno : ret;
}
#endif

#define RAW0(n) raw_syscall6((n), 0, 0, 0, 0, 0, 0)
#define RAW1(n, a) raw_syscall6((n), (long)(a), 0, 0, 0, 0, 0)
#define RAW2(n, a, b) raw_syscall6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define RAW3(n, a, b, c) raw_syscall6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define RAW4(n, a, b, c, d) raw_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define RAW5(n, a, b, c, d, e) \
	raw_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

#endif /* KVMPV_RAWSYS_H */
