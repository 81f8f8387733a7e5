/*
 * nofork-exec: run a program where it cannot fork
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Usage: nofork-exec PROGRAM [ARG]...
 *
 * Installs the process-spawning part of QEMU's "-sandbox on,spawn=deny"
 * (what libvirt's default seccomp sandbox gives a QEMU built with seccomp)
 * and execs PROGRAM: fork, vfork and clone without CLONE_THREAD fail with
 * EPERM, clone3 with ENOSYS (glibc then makes threads with clone).  The
 * tests use it to make vmfork's fork() really fail, as root, while thread
 * creation keeps working.
 */

#define _GNU_SOURCE     /* CLONE_THREAD */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define ARG_LO(n) offsetof(struct seccomp_data, args[n])

int main(int argc, char **argv)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fork, 5, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_vfork, 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 5, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* clone: flags, low 32 bits (little endian) */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0)),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    };
    struct sock_fprog prog = {
        .len = sizeof(filter) / sizeof(filter[0]),
        .filter = filter,
    };

    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARG]...\n", argv[0]);
        return 2;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
        fprintf(stderr, "nofork-exec: seccomp: %s\n", strerror(errno));
        return 1;
    }
    execv(argv[1], argv + 1);
    fprintf(stderr, "nofork-exec: %s: %s\n", argv[1], strerror(errno));
    return 127;
}
