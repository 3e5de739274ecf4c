/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * kvmpv-pgste: run a program in an address space with PGSTE page tables.
 *
 *   kvmpv-pgste PROGRAM [ARG...]
 *
 * Why: on s390x, KVM_CREATE_VM fails with EINVAL unless the calling process's
 * mm was created with page-table extensions (s390_enable_sie(): "Fail if the
 * page tables are 2K").  The kernel gives an mm PGSTEs at exec time when the
 * sysctl vm.allocate_pgste is 1, when the binary being exec'd carries a
 * PT_S390_PGSTE program header (this file is linked with -Wl,--s390-pgste,
 * as QEMU and the KVM selftests are), or when the process calling execve()
 * already has them (init_new_context() copies current->mm's alloc_pgste).
 * The last rule is what makes this work: this program gets PGSTEs from its
 * own header and hands them on to the Python interpreter it execs, which has
 * no such header.
 *
 * It sets KVMPV_PGSTE=1 first, so that kvmpv knows it was started this way
 * and never restarts itself again (the guard against an exec loop), then
 * replaces itself with PROGRAM; it returns only if execvp() failed (127).
 * Nothing else: no allocation, no other state.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs("usage: kvmpv-pgste PROGRAM [ARG...]\n", stderr);
		return 2;
	}
	if (setenv("KVMPV_PGSTE", "1", 1) != 0) {
		perror("kvmpv-pgste: setenv");
		return 127;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "kvmpv-pgste: cannot exec %s: %s\n", argv[1], strerror(errno));
	return 127;
}
