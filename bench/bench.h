/*
 * vmfork-bench: shared declarations
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Modules:
 *   clock.c    host clocks: CLOCK_MONOTONIC ns, rdtsc, TSC calibration,
 *              realtime <-> monotonic (QMP event and trace timestamps)
 *   procs.c    the processes and files of a run: QEMU in its own process
 *              group, killed and reaped, work directories removed, also on
 *              a signal
 *   stream.c   a reader thread that timestamps every line the guests print
 *              (serial sockets and serial files)
 *   vm.c       a benchmark VM: command line, QMP, serial, agent commands
 *   measure.c  statistics, guest clock offsets, trace parsing, smaps
 *   scenarios.c the vmfork scenarios and the peers
 *   service.c  the pool, "vmfork serve" and "vmfork migrate"
 *   vmfork-bench.c options, scenario list, JSON/CSV output, targets
 */

#ifndef VMFORK_BENCH_H
#define VMFORK_BENCH_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-glib/json-glib.h>
#include "qmp/qmp.h"

#define NS_PER_MS 1000000.0
#define MS(ns) ((double)(ns) / NS_PER_MS)

/* ---- clock.c ---------------------------------------------------------- */

gint64 now_ns(void);                    /* CLOCK_MONOTONIC */
guint64 host_rdtsc(void);
/* Calibrate the TSC against CLOCK_MONOTONIC (about 200 ms) */
double tsc_calibrate(void);
double tsc_hz(void);
/* CLOCK_REALTIME - CLOCK_MONOTONIC in ns, measured now */
gint64 realtime_offset_ns(void);
/* A QMP event's "timestamp" on CLOCK_MONOTONIC (rt_off from above) */
gint64 event_mono_ns(JsonNode *event, gint64 rt_off);

/* ---- procs.c ---------------------------------------------------------- */

/* Install signal handlers, the child subreaper, the exit cleanup */
void procs_init(void);
/* A fresh directory under base (removed at exit or by procs_remove_dir) */
char *procs_make_dir(const char *base, const char *prefix);
void procs_remove_dir(const char *dir);
/* fork + setsid + exec; stdin /dev/null, stdout+stderr to log (append) */
pid_t procs_spawn(char **argv, const char *log);
/* The same with io_fd as stdin and stdout (a socket to talk to it) */
pid_t procs_spawn_io(char **argv, const char *log, int io_fd);
/* SIGKILL the process group, reap its leader and any re-parented child */
void procs_kill_group(pid_t pgid);
/* Is the process gone (no /proc entry, or a zombie we could reap)? */
bool procs_pid_gone(pid_t pid);
bool procs_wait_gone(pid_t pid, int timeout_ms);
/* Kill everything, remove every directory (also run at exit) */
void procs_cleanup_all(void);
/* Was SIGINT/SIGTERM received? (cleanup already done; stop the run) */
bool procs_interrupted(void);

/* ---- stream.c --------------------------------------------------------- */

typedef enum {
    GUEST_LINUX,
    GUEST_TINY,
} GuestKind;

typedef enum {
    LINE_OTHER = 1,
    LINE_TICK = 2,          /* Linux "T <seq> <ns>", tiny "C <seq> <tsc>" */
    LINE_READY = 4,         /* "READY vmfork-agent", "TINY READY" */
    LINE_REPLY = 8,         /* Linux OK/ERR, tiny W/H/E */
} LineKind;

typedef struct Line {
    gint64 first_ns;        /* host time the line's first byte was read */
    gint64 end_ns;          /* host time its newline was read */
    LineKind kind;
    guint32 seq;            /* ticks */
    gint64 guest_ns;        /* ticks: guest timestamp in ns */
    guint64 tsc;            /* tiny ticks: the raw guest TSC */
    const char *text;       /* OTHER/READY/REPLY: the line (owned by the stream) */
} Line;

typedef struct Stream Stream;

void streams_init(void);
void streams_shutdown(void);
/* Read a connected socket (the stream owns the fd) */
Stream *stream_socket(int fd, GuestKind guest, const char *name);
/* Read a file that a QEMU will create and append to: every 5 ms until the
 * first tick line, then at every write for prompt_ns, then no more */
Stream *stream_file(const char *path, GuestKind guest, gint64 prompt_ns);
/* Stop reading (lines stay); free */
void stream_stop(Stream *s);
void stream_free(Stream *s);
int stream_fd(Stream *s);
const char *stream_name(Stream *s);
guint stream_count(Stream *s);
/* Copies of lines [from, count) */
GArray *stream_lines(Stream *s, guint from);
/* Copies of the lines whose first byte came at t_ns or later */
GArray *stream_lines_since(Stream *s, gint64 t_ns);
/* Wait for the first line at index >= from whose kind is in mask;
 * returns its index (and a copy in out), -1 on timeout */
gint stream_wait(Stream *s, guint from, int mask, gint64 deadline_ns,
                 Line *out);
/* Wait until the stream has a line with first_ns >= t (or deadline) */
bool stream_wait_past(Stream *s, gint64 t, gint64 deadline_ns);

/* ---- vm.c ------------------------------------------------------------- */

typedef struct VmConfig {
    GuestKind guest;
    const char *accel;      /* "tcg" or "kvm" */
    int mem_mib;
    int vcpus;
    int touch_mib;          /* Linux: MiB the parent's agent writes after
                             * boot (guest RAM in use), 0 for none */
    bool disk;              /* a qcow2 disk as libvirt and virt-install
                             * write it: -blockdev, virtio-blk on an
                             * IOThread; forks give it overlays */
} VmConfig;

typedef struct BenchPaths {
    const char *qemu;
    const char *linux_kernel;
    const char *linux_initrd;
    const char *tiny;
    const char *workdir;    /* base for work directories (default /tmp) */
    const char *shmdir;     /* base for template RAM files (/dev/shm) */
    const char *vmfork_tool;    /* qmp-tools' vmfork: pool, serve, migrate */
} BenchPaths;

extern BenchPaths bench_paths;
extern int bench_verbose;

typedef struct BenchVm {
    VmConfig cfg;
    char *name;
    char *dir;
    pid_t pid;              /* also the process group */
    char *qmp_path;
    QmpClient *qmp;
    char *log_path;
    gsize log_pos;          /* trace lines parsed up to here */
    Stream *serial;
    gint64 spawn_ns;        /* just before fork/exec */
    bool traces;            /* vmfork trace points enabled */
} BenchVm;

typedef struct VmSpawnOpts {
    bool paused;            /* -S */
    const char *incoming;   /* -incoming URI ("defer", "file:...") */
    const char *mem_path;   /* memory-backend-file at this path */
    bool mem_share;         /* share=on */
    bool connect_qmp;       /* wait for the QMP socket and connect */
    const char *const *extra;   /* more QEMU arguments, NULL-terminated */
    const char *kernel_args;    /* Linux: appended to its command line */
} VmSpawnOpts;

const char *guest_name(GuestKind g);
char *vm_config_label(const VmConfig *c);     /* "linux-tcg-512m-1cpu" */
/* Why this configuration cannot run here, or NULL */
const char *vm_missing(const VmConfig *c);
const char *accel_detail(const char *accel);

BenchVm *vm_spawn(const VmConfig *c, const char *dir, const char *name,
                  const VmSpawnOpts *o, GError **errp);
/* Connect QMP (retrying until the socket exists) */
bool vm_connect_qmp(BenchVm *vm, int timeout_ms, GError **errp);
/* Boot a paused VM: enable traces, cont, wait for the ready line */
bool vm_boot(BenchVm *vm, GError **errp);
/* Wait for the guest's ready line on the serial stream */
gint vm_wait_ready(BenchVm *vm, guint from, int timeout_ms, Line *out,
                   GError **errp);
void vm_destroy(BenchVm *vm);   /* kill the group, reap, free */

JsonNode *vm_qmp(BenchVm *vm, const char *cmd, const char *args_json,
                 int timeout_ms, GError **errp);
/* Drop every queued event */
void vm_drain_events(BenchVm *vm);

/* Write a line to a serial socket, return the reply line's text */
char *serial_command(Stream *s, const char *cmd, int timeout_ms,
                     GError **errp);

/* A listening unix socket; accept one connection (with timeout) */
int unix_listen(const char *path, GError **errp);
int unix_accept(int lfd, int timeout_ms, GError **errp);

/* ---- measure.c -------------------------------------------------------- */

typedef struct Dist {
    int n;
    double p50, p90, p99, max, min, mean;
} Dist;

void dist_of(GArray *doubles, Dist *d);      /* sorts the array */
JsonNode *dist_json(const Dist *d, bool full);
/* A member of a result by dotted path ("clone_ms.p50"), or NULL; as a
 * number, NAN where it is missing or not a value (a null distribution) */
JsonNode *json_path(JsonObject *o, const char *path);
double json_path_num(JsonObject *o, const char *path);

/* Guest clock offset (host ns - guest ns) from the ticks whose first byte
 * came in [from_ns, to_ns): the minimum, which is an upper bound of the
 * true offset (a line is read after the guest took its timestamp); spread =
 * median - minimum (how noisy the delivery was) */
typedef struct Offset {
    bool ok;
    int n;
    gint64 off_ns;
    gint64 spread_ns;
} Offset;

Offset offset_estimate(Stream *s, gint64 from_ns, gint64 to_ns, int min_n);

/* The median gap between consecutive guest timestamps of the ticks whose
 * first byte came in [from_ns, to_ns) */
bool tick_median_gap(Stream *s, gint64 from_ns, gint64 to_ns,
                     gint64 *median_gap);
/* For a guest clock that runs on while the VM is stopped (offset off_ns):
 * the largest gap between consecutive guest timestamps that spans some of
 * the host interval [h_start, h_end] (ticks read in [from_ns, to_ns]) */
bool tick_gap_across(Stream *s, gint64 from_ns, gint64 to_ns, gint64 off_ns,
                     gint64 h_start, gint64 h_end, gint64 *gap);

typedef struct Smaps {
    bool ok;
    gint64 rss_kib, pss_kib, uss_kib;
} Smaps;
Smaps smaps_read(pid_t pid);

/* Trace records of one vmfork command, times on CLOCK_MONOTONIC */
#define TRACE_MAX_CHILDREN 256
typedef struct TraceChild {
    int pid;
    gint64 forked_us;           /* parent: after fork() returned */
    gint64 fds_us, threads_us, accel_us, devices_us;    /* child, after fork */
    gint64 devices_abs_ns;      /* child: when its setup was done */
} TraceChild;

typedef struct TraceFork {
    bool ok;
    gint64 start_abs_ns;        /* vmfork_start */
    gint64 paused_us;           /* parent: handler start -> before fork */
    gint64 paused_abs_ns;
    gint64 resumed_us;          /* parent: total pause (-1 if none) */
    gint64 unlocked_us;         /* parent: until its vCPUs can run (-1) */
    gint64 restart_abs_ns;      /* parent: its last step before vm_start */
    int nchildren;
    TraceChild child[TRACE_MAX_CHILDREN];
} TraceFork;

/* Parse the trace lines appended to vm->log_path since the last call */
void trace_parse(BenchVm *vm, gint64 rt_off, TraceFork *tf);
TraceChild *trace_child(TraceFork *tf, int pid);

/* ---- scenarios.c ------------------------------------------------------ */

typedef enum {
    SPEC_FORK,              /* repeated vmfork commands */
    SPEC_PEERS,             /* cold boot, snapshot restore, template clone */
    SPEC_SERVICE,           /* pool, serve, migrate (service.c) */
} SpecKind;

typedef struct Spec {
    SpecKind kind;
    bool template;          /* parent 'paused': a frozen template */
    int count;              /* children per vmfork command */
    int n;                  /* measured commands, or runs per peer method */
    int n_mem;              /* children whose memory is measured (idle;
                               the first BENCH_DIRTY_SAMPLES dirtied too) */
    int cold_runs;          /* peers: cold boots */
    int alive;              /* children kept alive (paused) meanwhile */
} Spec;

/* Children of a fork-CFG scenario that dirty bench_dirty_mib of memory */
#define BENCH_DIRTY_SAMPLES 4

#define GROUP_MAX_SPECS 16
typedef struct Group {
    VmConfig cfg;
    int nspecs;
    Spec spec[GROUP_MAX_SPECS];
} Group;

extern int bench_dirty_mib;         /* Linux: MiB the child dirties */
/* Per child: "scenario,command,child,clone_ms,clone_resume_ms,
 * clone_arrival_ms,qmp_ms,parent_pause_ms,child_uss_mib" lines */
extern GString *bench_samples;

char *spec_name(const VmConfig *c, const Spec *s);
/* A result object with the configuration's members */
JsonObject *bench_base_object(const char *scenario, const char *kind,
                              const VmConfig *c);
/* Boot the group's VM once and run its scenarios; emit() gets each
 * scenario's result object (peers: one per method) as it is done */
void run_group(const Group *g, void (*emit)(JsonObject *o, gpointer data),
               gpointer data);
/* The container peer: why it cannot run here (or NULL), and an OCI
 * bundle in @bundle that runs @args (NULL-ended), with the Linux guest's
 * agent at /agent and its busybox in /bin (sh, cat, nc);
 * @host_net: in the host's network namespace */
const char *container_missing(void);
bool container_bundle(const char *bundle, const char *const *args,
                      bool host_net, GError **errp);
/* Kill container @name (its `runc run` is @pid, if > 0), wait, delete */
void container_remove(const char *name, pid_t pid);

/* ---- service.c -------------------------------------------------------- */

/* The pool, the per-connection server and migration of a clone (n:
 * connections measured for first byte); emits one object per figure */
void run_service(const VmConfig *cfg, const Spec *s,
                 void (*emit)(JsonObject *o, gpointer data), gpointer data);

#endif
