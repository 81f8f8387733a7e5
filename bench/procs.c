/*
 * vmfork-bench: processes and files of a run
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every QEMU runs in its own session and process group; its vmfork
 * children inherit the group, so one kill(-pgid) ends a whole family.
 * vmfork-bench is a child subreaper: children of a QEMU that died are
 * re-parented to it and reaped here.  The groups and the work directories
 * are kept in fixed arrays that a signal handler can walk: on SIGINT,
 * SIGTERM, SIGHUP, SIGABRT or SIGSEGV every group is killed and every
 * directory removed before the signal takes its course; at exit the same
 * happens through atexit().
 */

#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_GROUPS 512
#define MAX_DIRS 64

static volatile pid_t groups[MAX_GROUPS];
static char dirs[MAX_DIRS][512];
static volatile sig_atomic_t interrupted;

/* Remove a directory's entries (one level of subdirectories), then it */
static void remove_tree(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];

    if (d) {
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) {
                continue;
            }
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (unlink(path) < 0 && (errno == EISDIR || errno == EPERM) &&
                depth < 2) {
                remove_tree(path, depth + 1);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

static void kill_all_groups(void)
{
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] > 0) {
            kill(-groups[i], SIGKILL);
        }
    }
}

static void on_signal(int sig)
{
    kill_all_groups();
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0]) {
            remove_tree(dirs[i], 0);
        }
    }
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
        interrupted = 1;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

bool procs_interrupted(void)
{
    return interrupted;
}

void procs_init(void)
{
    static bool done;

    if (done) {
        return;
    }
    done = true;
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGABRT, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGPIPE, SIG_IGN);
    atexit(procs_cleanup_all);
}

static void register_group(pid_t pgid)
{
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] <= 0) {
            groups[i] = pgid;
            return;
        }
    }
    /* Full: kill it rather than lose track of it */
    kill(-pgid, SIGKILL);
    g_error("vmfork-bench: too many QEMU process groups");
}

static void unregister_group(pid_t pgid)
{
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] == pgid) {
            groups[i] = 0;
        }
    }
}

char *procs_make_dir(const char *base, const char *prefix)
{
    g_autofree char *tmpl = g_strdup_printf("%s/%s-XXXXXX", base, prefix);
    char *dir = g_mkdtemp(g_strdup(tmpl));

    if (!dir) {
        return NULL;
    }
    for (int i = 0; i < MAX_DIRS; i++) {
        if (!dirs[i][0]) {
            g_strlcpy(dirs[i], dir, sizeof(dirs[i]));
            return dir;
        }
    }
    g_error("vmfork-bench: too many work directories");
}

void procs_remove_dir(const char *dir)
{
    remove_tree(dir, 0);
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0] && !strcmp(dirs[i], dir)) {
            dirs[i][0] = 0;
        }
    }
}

pid_t procs_spawn(char **argv, const char *log)
{
    return procs_spawn_io(argv, log, -1);
}

pid_t procs_spawn_io(char **argv, const char *log, int io_fd)
{
    sigset_t all, old;
    pid_t pid;

    /* No signal between fork() and the registration of the group */
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

        setsid();
        for (int s = 1; s < NSIG; s++) {
            signal(s, SIG_DFL);
        }
        sigprocmask(SIG_SETMASK, &old, NULL);
        dup2(io_fd >= 0 ? io_fd : null, 0);
        dup2(io_fd >= 0 ? io_fd : fd, 1);
        dup2(fd, 2);
        /* QEMU gets stdio and nothing else we inherited (vmfork's fd
         * safety net would refuse a fork over an fd of unknown owner) */
        close_range(3, ~0U, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid > 0) {
        /* setpgid here too: the group exists before anyone kills it */
        setpgid(pid, pid);
        register_group(pid);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return pid;
}

bool procs_pid_gone(pid_t pid)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *stat = NULL;
    const char *p;

    if (!g_file_get_contents(path, &stat, NULL, NULL)) {
        return true;
    }
    p = strrchr(stat, ')');
    if (p && p[1] == ' ' && p[2] == 'Z') {
        /* A zombie: ours to reap if it was re-parented to us */
        waitpid(pid, NULL, WNOHANG);
        return true;
    }
    return false;
}

bool procs_wait_gone(pid_t pid, int timeout_ms)
{
    gint64 deadline = now_ns() + timeout_ms * 1000000LL;

    while (!procs_pid_gone(pid)) {
        if (now_ns() > deadline) {
            return false;
        }
        g_usleep(1000);
    }
    return true;
}

void procs_kill_group(pid_t pgid)
{
    gint64 deadline;

    if (pgid <= 0) {
        return;
    }
    kill(-pgid, SIGKILL);
    waitpid(pgid, NULL, 0);
    /* Its children, re-parented to us as the subreaper */
    deadline = now_ns() + 10 * 1000000000LL;
    while (kill(-pgid, 0) == 0 && now_ns() < deadline) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {
            /* reaped one */
        }
        g_usleep(1000);
    }
    unregister_group(pgid);
}

void procs_cleanup_all(void)
{
    kill_all_groups();
    for (int i = 0; i < MAX_GROUPS; i++) {
        if (groups[i] > 0) {
            procs_kill_group(groups[i]);
        }
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* reaped one */
    }
    for (int i = 0; i < MAX_DIRS; i++) {
        if (dirs[i][0]) {
            remove_tree(dirs[i], 0);
            dirs[i][0] = 0;
        }
    }
}
