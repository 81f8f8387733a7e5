/*
 * vmtest: boot the test guests in the patched QEMU and talk to them
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every QEMU a test starts runs in its own session and process group
 * (its vmfork children inherit it), so that one kill() ends the whole
 * family.  The groups and the sockets are registered here and removed at
 * vm_cleanup_all(), and also when an assertion aborts the test program.
 */

#ifndef VMTEST_H
#define VMTEST_H

#include <glib.h>
#include <stdbool.h>
#include <json-glib/json-glib.h>
#include <sys/types.h>
#include "qmp/qmp.h"

typedef enum {
    GUEST_LINUX,        /* Debian kernel + busybox + agent (line commands) */
    GUEST_TINY,         /* freestanding: "C <seq> <tsc>" lines, w/h commands */
    GUEST_DEBIAN,       /* build/guest/debian: systemd, sshd, qemu-ga; the
                         * serial port is its console (ttyS0) */
} GuestKind;

typedef struct VmOptions {
    GuestKind guest;
    const char *accel;          /* "tcg" (default) or "kvm" */
    int mem_mib;                /* default 512 (Linux) / 64 (tiny) */
    int smp;                    /* default 1 */
    const char *machine;        /* -M argument, default "pc" */
    const char *dir;            /* the test directory, made by the caller
                                 * (default: a new one) */
    bool daemonize;             /* -daemonize, as libvirt's older releases
                                 * and init scripts run QEMU */
    const char *const *extra;   /* more QEMU arguments, NULL-terminated;
                                 * "@DIR@" stands for the test directory */
    bool no_boot;               /* leave the VM as QEMU starts it (-S) */
    const char *const *wrapper; /* a command that execs QEMU, NULL-ended */
    int ssh_port;               /* Debian: the hostfwd port to the guest's
                                 * port 22 (default: a free one) */
    const char *kernel_args;    /* Debian: appended to the kernel command
                                 * line */
} VmOptions;

/*
 * A qcow2 disk, @DIR@/disk.qcow2, as libvirt gives it to QEMU (its
 * generated node names, a file node under a format node), for VmOptions
 * .extra; the device goes on node "libvirt-1-format"
 */
#define VM_LIBVIRT_BLOCKDEV_QCOW2 \
    "-blockdev", "{\"driver\":\"file\",\"filename\":\"@DIR@/disk.qcow2\"," \
                 "\"node-name\":\"libvirt-1-storage\"," \
                 "\"auto-read-only\":true,\"discard\":\"unmap\"}", \
    "-blockdev", "{\"node-name\":\"libvirt-1-format\",\"read-only\":false," \
                 "\"driver\":\"qcow2\",\"file\":\"libvirt-1-storage\"}"

typedef struct Vm {
    GuestKind guest;
    pid_t pid;
    bool is_child;              /* forked by vmfork, not spawned by us */
    char *dir;                  /* this test's directory (shared by a family) */
    char *qmp_path;
    QmpClient *qmp;
    int serial_fd;              /* the guest's first serial port */
    char *console_path;         /* Debian: the file that port writes to,
                                 * the guest's console (serial_fd -1) */
    GString *serial_buf;        /* bytes read but not yet returned */
    bool partial_line;          /* the last line read was cut by a fork */
    int ssh_port;               /* Debian: host port forwarded to its sshd */
    char *qga_path;             /* Debian: its qemu-ga socket (chardev qga0) */
} Vm;

/* Is everything there to run this guest under this accelerator?  If not,
 * the reason (for g_test_skip). */
const char *vm_missing(GuestKind guest, const char *accel);
/* The QEMU binary under test */
const char *vm_qemu_binary(void);

/* In a test: skip it with the reason when something is missing (true),
 * else say in the log what runs */
bool vm_skip_if_missing(const VmOptions *opts);

/* A human name of what runs, for the test log: "linux guest under tcg" */
const char *vm_describe(const VmOptions *opts);

/* Boot to the guest's first output and connect QMP and the serial port
 * (Debian: on a new overlay of debian.qcow2 in the test directory, with
 * user networking, a hostfwd to port 22 and qemu-ga on a virtio-serial
 * socket; returns once the guest runs, without waiting for its boot) */
Vm *vm_start(const VmOptions *opts);

/* Attach to a child listed in a vmfork reply ({pid, monitor, clone-id}):
 * connect its monitor, give its serial port a socket again and connect */
Vm *vm_attach_child(Vm *parent, JsonObject *child);

/* Ask QEMU to quit (child or parent) and wait until the process is gone */
void vm_quit(Vm *vm);

/* Remove this directory's files too at vm_cleanup_all() or an abort */
void vm_register_dir(const char *dir);

/* Stop every QEMU this program started, reap them, remove their files */
void vm_cleanup_all(void);

/* QMP: the return value (asserting success), or the error */
JsonNode *vm_qmp(Vm *vm, const char *command, const char *args_json);
GError *vm_qmp_error(Vm *vm, const char *command, const char *args_json);
char *vm_runstate(Vm *vm);
/* The thread ID of the VM's vCPU 0, or of its IOThread @iothread */
pid_t vm_thread_id(Vm *vm, const char *iothread);

/* vmfork with JSON arguments; returns the reply's children array */
JsonArray *vm_fork(Vm *vm, const char *args_json);

/*
 * vmfork in a thread of its own, for a test that acts while the command
 * waits (on another monitor, or for a child held in its set-up): start
 * it on @qmp, see whether it has answered, and join it for its return
 * value (NULL and @err if it failed)
 */
typedef struct VmForkThread VmForkThread;
VmForkThread *vm_fork_thread_start(QmpClient *qmp, const char *args_json);
bool vm_fork_thread_answered(VmForkThread *t);
JsonNode *vm_fork_thread_join(VmForkThread *t, GError **err);

/* Serial port: the next complete line, NULL on timeout */
char *vm_read_line(Vm *vm, int timeout_ms);

/* Linux guest agent: send a command, return the text after "OK " (or ""),
 * asserting that the reply is OK */
char *vm_agent(Vm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* ... the same in two steps: send a command (the guest may be paused),
 * then wait for its reply */
void vm_agent_send(Vm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
char *vm_agent_reply(Vm *vm);

/* Linux guest: the fw_cfg clone id as the disk writer records it */
char *vm_clone_id_word(Vm *vm);
/* Linux guest: start the agent's disk writer (fsync'd numbered records) */
void vm_writer_start(Vm *vm, const char *dev);
/* ... wait until it has acknowledged @n records (30 s at most) */
guint64 vm_writer_wait(Vm *vm, guint64 n);
/* ... stop it: the number of records it had acknowledged */
guint64 vm_writer_stop(Vm *vm);
/* ... assert the device holds exactly the acknowledged records (one more
 * at most) and nothing after; returns the clone ids that wrote them,
 * "ID:COUNT[,ID:COUNT]..." in disk order */
char *vm_writer_check(Vm *vm, const char *dev, guint64 acked);

/* Tiny guest: the next counter line's sequence number (-1: timeout) */
gint64 vm_tiny_next_seq(Vm *vm, int timeout_ms);
/* Tiny guest: a command ("h", "w SEED") and its reply line */
char *vm_tiny_cmd(Vm *vm, const char *cmd);
/* Tiny guest: the same in two steps, for replies that wait on the host */
void vm_tiny_send(Vm *vm, const char *cmd);
/* the reply line starting with @want, without "X " (g_error on timeout) */
char *vm_tiny_reply(Vm *vm, char want, int timeout_ms);

/* The next VMFORK_GUEST_REQUEST event of @vm (the guest asked to be
 * forked), whose action must be @action */
JsonNode *vm_guest_request_event(Vm *vm, const char *action, int timeout_ms);

/* Debian guest: ssh root@127.0.0.1 -p vm->ssh_port CMD (the image's key):
 * its stdout; *status its wait status */
char *vm_ssh(Vm *vm, int *status, const char *cmd);
/* Debian guest: its wall clock minus the host's, read over one ssh
 * connection (the login is not timed); *err: half the round trip */
double vm_ssh_clock_offset(Vm *vm, double *err);
/* A port p such that p + k * offset, k = 0 .. n - 1, are free on
 * 127.0.0.1: for a parent's ssh forward and its children's */
int vm_free_ports(int offset, int n);
/*
 * A null chardev "piped" on serial port @index whose log is a FIFO in
 * @dir, as libvirt's <log> through virtlogd is a pipe: its -chardev and
 * -device options (four strings, NULL-terminated), and in *reader the
 * FIFO's read end (non-blocking), opened first so that QEMU's open of the
 * log does not block
 */
char **vm_piped_log_args(const char *dir, int index, int *reader);
/* Debian guest: @command on its qemu-ga (tests/guest/debian/qga.py, at
 * most @timeout_s): stdout, its return value as JSON, or NULL; *status is
 * the script's exit status (-1: not run), *errout its stderr if not NULL */
char *vm_qga(Vm *vm, const char *command, int timeout_s, int *status,
             char **errout);
/* Debian guest: until ssh logs in (g_error after timeout_s) */
void vm_wait_ssh(Vm *vm, int timeout_s);

/* qemu-img check every qcow2 image in dir (all of them before the caller
 * removes any: they may back each other), asserting each is clean, or
 * with @may_leak only leaks clusters (what a VM killed while it writes
 * leaves: qcow2 counts a cluster before it references it, so a kill
 * loses space, never data); returns how many there were */
guint vm_qemu_img_check_dir(const char *dir, bool may_leak);
/* qemu-img create a @mib MiB image of format @fmt at @path */
void vm_qemu_img_create(const char *path, const char *fmt, int mib);
/* How many images the first disk of @vm has: its active one and its
 * backing chain (query-block) */
guint vm_disk_chain_length(Vm *vm);

/* The QEMU log of @vm (its stderr and its children's, trace lines among
 * them): its size, the text it got after @from bytes, and how many of
 * its lines match @pattern */
gsize vm_log_size(Vm *vm);
char *vm_log_since(Vm *vm, gsize from);
guint vm_log_count(Vm *vm, const char *pattern);
/* Switch trace event @name on in @vm (its lines go to the QEMU log) */
void vm_trace_enable(Vm *vm, const char *name);

/* Linux guest agent: run a shell command, assert it exits 0 and return
 * its standard output */
char *vm_sh(Vm *vm, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* Linux guest: write @text at sector @sector of /dev/@dev, synchronously,
 * and the text at a sector, read past the page cache (NULs dropped) */
void vm_disk_write(Vm *vm, const char *dev, int sector, const char *text);
char *vm_disk_read(Vm *vm, const char *dev, int sector);

/* Start a helper program (argv[0] a path) in a session of its own, its
 * stdout and stderr appended to @log; it is killed with the VMs at
 * vm_cleanup_all() (the caller reaps it) */
pid_t vm_spawn(const char *const *argv, const char *log);

/* Connect to a unix socket that process @pid creates soon (-1: it did not
 * within timeout_ms, or the process is gone); the fd is non-blocking */
int vm_unix_connect(pid_t pid, const char *path, int timeout_ms);

/* The SHA-256 of a file's contents, in hex */
char *file_sha256(const char *path);

/* Read one line from a non-blocking fd (NULL on timeout) */
char *fd_read_line(int fd, int timeout_ms);
/* Write all of @text to @fd (waiting while a non-blocking one is full) */
void fd_write_all(int fd, const char *text);

/* How many entries /proc/PID/@what has ("fd", "task") */
guint proc_count(pid_t pid, const char *what);
/*
 * /proc/PID/task/TID/@file of every thread of @pid, one string each
 * (a thread that ended meanwhile is left out)
 */
GPtrArray *proc_threads_read(pid_t pid, const char *file);
/* The value of @field in the text of a /proc status file, stripped */
char *proc_status_value(const char *status, const char *field);

/* Is the process gone (exited and reaped, not a zombie)? */
bool pid_gone(pid_t pid);
/* Wait up to timeout_ms for that */
bool pid_wait_gone(pid_t pid, int timeout_ms);
/* Until every thread of @pid is stopped (SIGSTOP), or the timeout */
bool pid_wait_stopped(pid_t pid, int timeout_ms);
/* A child of @pid's main thread other than @not (0: any), once there is
 * one; 0 after timeout_ms */
pid_t pid_wait_child(pid_t pid, pid_t not, int timeout_ms);

#endif
