/*
 * vmfork-guest: customise a Linux guest when it finds itself in a new clone
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * usage: vmfork-guest watch [--poll-ms MS]   the daemon (vmfork-guest.service)
 *        vmfork-guest customize [--force]    run the customisation once, now
 *        vmfork-guest id                     print "CLONE-ID GENERATION"
 *        vmfork-guest id-bench N             time N reads of the fw_cfg file
 *        vmfork-guest freeze [--no-wait]     ask the host to fork this VM now
 *        vmfork-guest warm-up                run the customisation's paths once
 *
 * How a clone is noticed.  vmfork's QEMU gives every VM the fw_cfg file
 * opt/vmfork/clone-id, "CLONE-ID GENERATION" (zero-padded decimals): 0 0
 * in a VM that was booted, the child's pid and its generation (parent's +
 * 1) in a clone.  That file is the truth: a VM is customised when it holds
 * an id other than 0 that this guest has not handled yet (the last one
 * handled is in /run/vmfork/handled, in RAM, so a clone inherits its
 * parent's and sees that its own differs).  What wakes the daemon to look,
 * all at once (whichever comes first):
 *   - the VM generation ID change, seen as a kretprobe: with -device
 *     vmgenid, QEMU gives each child a new VM generation ID and notifies
 *     the guest (an ACPI Notify).  Linux's vmgenid driver calls
 *     add_vmfork_randomness(), which reseeds the RNG.  Linux 6.1 (Debian
 *     bookworm) tells user space nothing else: its vmgenid driver sends no
 *     uevent (checked: `udevadm monitor --kernel` shows none when the GUID
 *     changes, while the kernel logs the reseed).  So the daemon puts a
 *     kretprobe on add_vmfork_randomness in a tracing instance of its own
 *     (tracefs: kprobe_events, instances/vmfork-guest) and blocks in poll()
 *     on that instance's trace_pipe: it wakes when the function returns,
 *     after the reseed, with no polling.  Needs CONFIG_KPROBE_EVENTS
 *     (Debian's kernels have it) and root.
 *   - the NEW_VMGENID=1 uevent that later kernels' vmgenid driver sends
 *     (a NETLINK_KOBJECT_UEVENT socket): free to listen for, used where
 *     the kernel has it.
 *   - a poll of the fw_cfg file, as a fallback: every --poll-ms (default
 *     250 ms) when neither of the above can work (no vmgenid device, or
 *     no kprobes), every 60 s (a safety net only) otherwise.  One read of
 *     the file costs about 0.07 ms of guest time under TCG (`vmfork-guest
 *     id-bench N` measures it), so the default poll costs ~0.03 % of a
 *     vCPU, and four wakeups a second.
 * A VM generation ID change alone (qom-set guid auto on a VM that was not
 * forked) changes nothing: the clone id is the same.
 *
 * The customisation, each step timed (CLOCK_MONOTONIC: guest time) and
 * logged to stderr (the journal, under systemd) and /run/vmfork/last-clone:
 *   rng         mix the clone id, generation and clocks into the input pool
 *               and force a crng reseed (RNDRESEEDCRNG).  With vmgenid the
 *               kernel has already reseeded from the new GUID; without it
 *               this is what separates the clones' random numbers
 *   hostname    vmfork-<clone id>: sethostname(), /etc/hostname, the
 *               127.0.1.1 line of /etc/hosts
 *   machine-id  a new random /etc/machine-id (v4 UUID from getrandom()
 *               after the reseed); journald is restarted (asynchronously)
 *               so that it writes under the new id
 *   network     for each virtio-net NIC whose MAC in the device's config
 *               space (what vmfork's new-mac set) differs from the
 *               interface's: rebind virtio_net so that the driver takes the
 *               new address up (systemd-networkd configures the new link
 *               with DHCP itself); for the other interfaces networkd
 *               manages: a DHCP renewal, networkd's RenewLink D-Bus method
 *               (what `networkctl renew IFACE` calls; called directly, as
 *               networkctl itself costs ~90 ms of guest time under TCG)
 *   time        read the RTC (/dev/rtc0), which QEMU keeps at the host's
 *               time; if the system clock is off by more than the RTC's
 *               one-second resolution allows (a parent kept paused as a
 *               template), step it to the RTC time + 0.5 s, and then, after
 *               the drop-ins, to the exact second at the RTC's next update
 *               interrupt (at most 1 s later)
 *   clone.d     every executable in /etc/vmfork/clone.d/, in name order
 *               (names starting with '.' or ending in '~' or holding
 *               ".dpkg-" are skipped), with VMFORK_CLONE_ID,
 *               VMFORK_GENERATION, VMFORK_HOSTNAME and VMFORK_MACHINE_ID in
 *               the environment; each one's exit status is logged
 *
 * The freeze point (docs/guest-abi.md).  `freeze` asks the host to fork
 * the VM at this instant through the vmfork-guest device and returns in
 * every VM, as fork(2) does: it prints 0 in the parent and the clone id in
 * each child.  The device's I/O port is in the fw_cfg file
 * opt/vmfork/guest-port (else it is at its default, 0x5f0); its registers
 * are read with inl() after ioperm() (root).  In
 * a child, freeze returns once the clone is customised (by the daemon if
 * it runs, else by freeze itself), so that the caller's branch sees the
 * clone's hostname and machine-id; --no-wait returns at once.  In the
 * parent, which may have waited paused as a template, its clock stood still
 * meanwhile: freeze sets it from the RTC as the customisation's time step
 * does.
 *
 * Exit status: 0 ok, 1 error, 2 usage; freeze: 3 no vmfork-guest device,
 * 4 denied by the host, 5 busy (another request is pending), 6 cancelled
 * (the host let the VM run without forking it), 7 the fork failed.
 */

#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/rtc.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <net/if.h>
#include <time.h>
#include <unistd.h>

#define ID_PATH     "/sys/firmware/qemu_fw_cfg/by_name/opt/vmfork/clone-id/raw"
#define RUN_DIR     "/run/vmfork"
#define HANDLED     RUN_DIR "/handled"
#define STATUS      RUN_DIR "/last-clone"
#define WATCHING    RUN_DIR "/watching"
#define DROPIN_DIR  "/etc/vmfork/clone.d"
#define VMGENID_DRV "/sys/bus/acpi/drivers/vmgenid"
#define TRACEFS     "/sys/kernel/tracing"
#define INSTANCE    TRACEFS "/instances/vmfork-guest"
#define KPROBE      "vmfork_guest/vmgenid"

static const char *prog = "vmfork-guest";
static FILE *status_fp;         /* the status file being written, or NULL */
static char status_tmp[] = STATUS ".tmp";

static double now_ms(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void logmsg(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A line in the status file and in the log */
static void status(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (status_fp) {
        va_list aq;

        va_copy(aq, ap);
        vfprintf(status_fp, fmt, aq);
        fputc('\n', status_fp);
        fflush(status_fp);
        va_end(aq);
    }
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    size_t len = strlen(text);
    ssize_t n;

    if (fd < 0) {
        return -1;
    }
    n = write(fd, text, len);
    if (close(fd) < 0 || n != (ssize_t)len) {
        return -1;
    }
    return 0;
}

/* Replace a file: a new file renamed over it (written in place where it
 * is a mount point, as /etc/machine-id is until systemd commits it) */
static int replace_file(const char *path, const char *text, mode_t mode)
{
    char tmp[PATH_MAX];
    struct stat st;

    snprintf(tmp, sizeof(tmp), "%s.vmfork-new", path);
    if (write_file(tmp, text, mode) < 0) {
        return -1;
    }
    if (stat(path, &st) == 0) {
        (void)chmod(tmp, st.st_mode & 07777);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;

        unlink(tmp);
        if (e != EBUSY) {
            errno = e;
            return -1;
        }
        return write_file(path, text, mode);
    }
    return 0;
}

static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        return -1;
    }
    n = read(fd, buf, size - 1);
    close(fd);
    if (n >= 0) {
        buf[n] = 0;
    }
    return n;
}

/* Run a command, wait for it; its exit status (128 + signal), -1 if it
 * could not run */
static int run(char *const argv[], char *const envp[])
{
    pid_t pid = fork();
    int st;

    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);

        dup2(null, 0);
        if (envp) {
            execve(argv[0], argv, envp);
        } else {
            execv(argv[0], argv);
        }
        fprintf(stderr, "%s: %s: %s\n", prog, argv[0], strerror(errno));
        _exit(127);
    }
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            return -1;
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- A minimal D-Bus client (system bus, method calls as root) ----------
 * networkctl and systemctl cost 40-90 ms of guest time each under TCG
 * (exec, dynamic linking, sd-bus); one method call from here costs ~1 ms.
 * Little-endian messages, EXTERNAL authentication, Hello, then the call;
 * waits for its reply (or error). */

#define DBUS_SOCKET "/run/dbus/system_bus_socket"

typedef struct Buf {
    unsigned char d[1024];
    size_t n;
} Buf;

static void b_align(Buf *b, size_t a)
{
    while (b->n % a) {
        b->d[b->n++] = 0;
    }
}

static void b_u8(Buf *b, unsigned v)
{
    b->d[b->n++] = v;
}

static void b_u32(Buf *b, uint32_t v)
{
    b_align(b, 4);
    memcpy(b->d + b->n, &v, 4);
    b->n += 4;
}

static void b_str(Buf *b, const char *s)        /* 's' and 'o' */
{
    size_t l = strlen(s);

    b_u32(b, l);
    memcpy(b->d + b->n, s, l + 1);
    b->n += l + 1;
}

static void b_sig(Buf *b, const char *s)        /* 'g' */
{
    size_t l = strlen(s);

    b_u8(b, l);
    memcpy(b->d + b->n, s, l + 1);
    b->n += l + 1;
}

static void b_field(Buf *b, int code, char type, const char *v)
{
    char sig[2] = { type, 0 };

    b_align(b, 8);
    b_u8(b, code);
    b_sig(b, sig);
    if (type == 'g') {
        b_sig(b, v);
    } else {
        b_str(b, v);
    }
}

/* A method call message into @m; body @body of @blen bytes */
static void dbus_message(Buf *m, uint32_t serial, const char *dest,
                         const char *path, const char *iface,
                         const char *member, const char *sig,
                         const void *body, size_t blen)
{
    size_t flen_at;

    m->n = 0;
    b_u8(m, 'l');
    b_u8(m, 1);                 /* METHOD_CALL */
    b_u8(m, 0);
    b_u8(m, 1);
    b_u32(m, blen);
    b_u32(m, serial);
    b_u32(m, 0);                /* header fields' length, below */
    flen_at = m->n - 4;
    b_field(m, 1, 'o', path);
    b_field(m, 2, 's', iface);
    b_field(m, 3, 's', member);
    b_field(m, 6, 's', dest);
    if (sig && *sig) {
        b_field(m, 8, 'g', sig);
    }
    {
        uint32_t flen = m->n - (flen_at + 4);

        memcpy(m->d + flen_at, &flen, 4);
    }
    b_align(m, 8);
    memcpy(m->d + m->n, body, blen);
    m->n += blen;
}

static int write_all(int fd, const void *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);

        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return -1;
        }
        p = (const char *)p + w;
        n -= w;
    }
    return 0;
}

/* Read exactly n bytes (the socket has a receive timeout) */
static int read_all(int fd, void *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            if (r == 0) {
                errno = ECONNRESET;
            }
            return -1;
        }
        p = (char *)p + r;
        n -= r;
    }
    return 0;
}

/* Call DEST PATH IFACE.MEMBER(SIG: body) on the system bus and wait for
 * its reply: 0, or -1 with the reason in @err */
static int dbus_call(const char *dest, const char *path, const char *iface,
                     const char *member, const char *sig, const void *body,
                     size_t blen, char *err, size_t esize)
{
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct timeval tv = { .tv_sec = 5 };
    char line[256], uid[32], hex[64] = "";
    int fd, r = -1;
    Buf m;

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    strcpy(sun.sun_path, DBUS_SOCKET);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        snprintf(err, esize, "%s: %s", DBUS_SOCKET, strerror(errno));
        goto out;
    }
    snprintf(uid, sizeof(uid), "%u", (unsigned)geteuid());
    for (size_t i = 0; uid[i]; i++) {
        sprintf(hex + 2 * i, "%02x", (unsigned char)uid[i]);
    }
    snprintf(line, sizeof(line), "AUTH EXTERNAL %s\r\n", hex);
    if (write_all(fd, "", 1) < 0 || write_all(fd, line, strlen(line)) < 0) {
        snprintf(err, esize, "D-Bus: %s", strerror(errno));
        goto out;
    }
    {
        size_t n = 0;

        while (n < sizeof(line) - 1 && read_all(fd, line + n, 1) == 0 &&
               line[n] != '\n') {
            n++;
        }
        line[n] = 0;
        if (strncmp(line, "OK ", 3)) {
            snprintf(err, esize, "D-Bus authentication: %s", line);
            goto out;
        }
    }
    if (write_all(fd, "BEGIN\r\n", 7) < 0) {
        snprintf(err, esize, "D-Bus: %s", strerror(errno));
        goto out;
    }
    dbus_message(&m, 1, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                 "org.freedesktop.DBus", "Hello", NULL, NULL, 0);
    if (write_all(fd, m.d, m.n) < 0) {
        goto io;
    }
    dbus_message(&m, 2, dest, path, iface, member, sig, body, blen);
    if (write_all(fd, m.d, m.n) < 0) {
        goto io;
    }
    /* Messages until the reply to serial 2 */
    for (;;) {
        unsigned char h[16], *f;
        uint32_t blen2, flen, reply_to = 0;
        size_t total, p;
        char ename[128] = "";

        if (read_all(fd, h, 16) < 0 || h[0] != 'l') {
            goto io;
        }
        memcpy(&blen2, h + 4, 4);
        memcpy(&flen, h + 12, 4);
        total = ((16 + flen + 7) & ~7u) + blen2 - 16;
        if (total > (1 << 20)) {
            goto io;
        }
        f = malloc(total + 16);
        memcpy(f, h, 16);
        if (read_all(fd, f + 16, total) < 0) {
            free(f);
            goto io;
        }
        for (p = 16; p < 16 + flen;) {
            int code;
            char type;

            p = (p + 7) & ~7u;
            if (p >= 16 + flen) {
                break;
            }
            code = f[p];
            type = f[p + 2];
            p += 3 + f[p + 1];              /* code, signature */
            if (type == 'u') {
                uint32_t v;

                p = (p + 3) & ~3u;
                memcpy(&v, f + p, 4);
                p += 4;
                if (code == 5) {
                    reply_to = v;
                }
            } else if (type == 's' || type == 'o') {
                uint32_t l;

                p = (p + 3) & ~3u;
                memcpy(&l, f + p, 4);
                if (code == 4) {
                    snprintf(ename, sizeof(ename), "%.*s", (int)l, f + p + 4);
                }
                p += 4 + l + 1;
            } else if (type == 'g') {
                p += 1 + f[p] + 1;
            } else {
                break;
            }
        }
        if (reply_to == 2 && (h[1] == 2 || h[1] == 3)) {
            if (h[1] == 3) {
                /* the error's message: its body's first string, if any */
                size_t b = (16 + flen + 7) & ~7u;
                uint32_t l = 0;

                if (blen2 >= 4) {
                    memcpy(&l, f + b, 4);
                }
                snprintf(err, esize, "%s: %.*s", ename,
                         (int)(l < blen2 ? l : 0), f + b + 4);
            } else {
                r = 0;
            }
            free(f);
            goto out;
        }
        free(f);
    }
io:
    snprintf(err, esize, "D-Bus: %s", strerror(errno));
out:
    if (fd >= 0) {
        close(fd);
    }
    return r;
}

/* networkd: a DHCP renewal on link @ifindex (what `networkctl renew` does) */
static int networkd_renew(int ifindex, char *err, size_t esize)
{
    int32_t i = ifindex;

    return dbus_call("org.freedesktop.network1", "/org/freedesktop/network1",
                     "org.freedesktop.network1.Manager", "RenewLink", "i",
                     &i, 4, err, esize);
}

/* PID 1: restart @unit (what `systemctl --no-block restart` does) */
static int systemd_restart(const char *unit, char *err, size_t esize)
{
    Buf b = { .n = 0 };

    b_str(&b, unit);
    b_str(&b, "replace");
    return dbus_call("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                     "org.freedesktop.systemd1.Manager", "RestartUnit", "ss",
                     b.d, b.n, err, esize);
}

/* ---- The clone id ------------------------------------------------------ */

/* 0: read; -1: no such file (not vmfork's QEMU, or no qemu_fw_cfg) */
static int read_id(unsigned long long *id, unsigned long long *gen)
{
    static bool tried_modprobe;
    char buf[64];

    if (read_small(ID_PATH, buf, sizeof(buf)) < 0 && !tried_modprobe) {
        char *argv[] = { "/sbin/modprobe", "-q", "qemu_fw_cfg", NULL };

        tried_modprobe = true;
        run(argv, NULL);
        for (int i = 0; i < 100 && access(ID_PATH, R_OK) < 0; i++) {
            usleep(10000);
        }
    }
    if (read_small(ID_PATH, buf, sizeof(buf)) < 0 ||
        sscanf(buf, "%llu %llu", id, gen) != 2) {
        return -1;
    }
    return 0;
}

static bool handled(unsigned long long id, unsigned long long gen)
{
    char buf[64];
    unsigned long long hid, hgen;

    return read_small(HANDLED, buf, sizeof(buf)) > 0 &&
           sscanf(buf, "%llu %llu", &hid, &hgen) == 2 &&
           hid == id && hgen == gen;
}

static void set_handled(unsigned long long id, unsigned long long gen)
{
    char buf[64];

    snprintf(buf, sizeof(buf), "%llu %llu\n", id, gen);
    mkdir(RUN_DIR, 0755);
    if (replace_file(HANDLED, buf, 0644) < 0) {
        logmsg("%s: %s", HANDLED, strerror(errno));
    }
}

static bool have_vmgenid(void)
{
    DIR *d = opendir(VMGENID_DRV);
    struct dirent *e;
    bool found = false;

    while (d && (e = readdir(d))) {
        if (strchr(e->d_name, ':')) {       /* QEMUVGID:00 */
            found = true;
        }
    }
    if (d) {
        closedir(d);
    }
    return found;
}

/* ---- Steps --------------------------------------------------------------- */

typedef struct Clone {
    unsigned long long id, gen;
    char hostname[64];
    char machine_id[33];
    bool time_stepped;
} Clone;

static int step_rng(Clone *c, char *detail, size_t dsize)
{
    struct {
        unsigned long long id, gen;
        struct timespec rt, mono, boot;
        unsigned long long tsc;
        pid_t pid;
    } mix;
    unsigned int lo, hi;
    int fd, r = 0;

    memset(&mix, 0, sizeof(mix));
    mix.id = c->id;
    mix.gen = c->gen;
    clock_gettime(CLOCK_REALTIME, &mix.rt);
    clock_gettime(CLOCK_MONOTONIC, &mix.mono);
    clock_gettime(CLOCK_BOOTTIME, &mix.boot);
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    mix.tsc = (unsigned long long)hi << 32 | lo;
    mix.pid = getpid();
    fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(detail, dsize, "/dev/urandom: %s", strerror(errno));
        return 1;
    }
    if (write(fd, &mix, sizeof(mix)) != sizeof(mix)) {
        r = 1;
    }
    if (ioctl(fd, RNDRESEEDCRNG) < 0) {
        snprintf(detail, dsize, "RNDRESEEDCRNG: %s", strerror(errno));
        r = 1;
    } else {
        snprintf(detail, dsize, "reseeded%s",
                 have_vmgenid() ? " (vmgenid reseeded it first)" : "");
    }
    close(fd);
    return r;
}

static int step_hostname(Clone *c, char *detail, size_t dsize)
{
    char buf[4096], out[4096 + 128];
    char line[128];
    ssize_t n;
    int r = 0;
    double t0 = now_ms(CLOCK_MONOTONIC), t1, t2;

    snprintf(c->hostname, sizeof(c->hostname), "vmfork-%llu", c->id);
    if (sethostname(c->hostname, strlen(c->hostname)) < 0) {
        snprintf(detail, dsize, "sethostname: %s", strerror(errno));
        return 1;
    }
    t1 = now_ms(CLOCK_MONOTONIC);
    snprintf(line, sizeof(line), "%s\n", c->hostname);
    if (replace_file("/etc/hostname", line, 0644) < 0) {
        snprintf(detail, dsize, "/etc/hostname: %s", strerror(errno));
        r = 1;
    }
    t2 = now_ms(CLOCK_MONOTONIC);
    /* /etc/hosts: the 127.0.1.1 line names the host (Debian's way) */
    n = read_small("/etc/hosts", buf, sizeof(buf));
    if (n > 0) {
        char *p = buf, *nl;
        bool seen = false;

        out[0] = 0;
        for (; *p; p = nl ? nl + 1 : p + strlen(p)) {
            nl = strchr(p, '\n');
            if (!strncmp(p, "127.0.1.1", 9) && (p[9] == ' ' || p[9] == '\t')) {
                if (!seen) {
                    snprintf(out + strlen(out), sizeof(out) - strlen(out),
                             "127.0.1.1\t%s\n", c->hostname);
                }
                seen = true;
            } else {
                snprintf(out + strlen(out), sizeof(out) - strlen(out),
                         "%.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
            }
            if (!nl) {
                break;
            }
        }
        if (!seen) {
            snprintf(out + strlen(out), sizeof(out) - strlen(out),
                     "127.0.1.1\t%s\n", c->hostname);
        }
        if (replace_file("/etc/hosts", out, 0644) < 0) {
            r = 1;
        }
    }
    if (!r) {
        snprintf(detail, dsize, "%s (sethostname %.3f ms, /etc/hostname %.3f ms, "
                 "/etc/hosts %.3f ms)", c->hostname, t1 - t0, t2 - t1,
                 now_ms(CLOCK_MONOTONIC) - t2);
    }
    return r;
}

static int step_machine_id(Clone *c, char *detail, size_t dsize)
{
    unsigned char b[16];
    char old[64] = "", line[40];
    struct stat st;

    if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
        snprintf(detail, dsize, "getrandom: %s", strerror(errno));
        return 1;
    }
    b[6] = (b[6] & 0x0f) | 0x40;        /* a v4 UUID, as systemd makes */
    b[8] = (b[8] & 0x3f) | 0x80;
    for (int i = 0; i < 16; i++) {
        sprintf(c->machine_id + 2 * i, "%02x", b[i]);
    }
    read_small("/etc/machine-id", old, sizeof(old));
    old[strcspn(old, "\n")] = 0;
    snprintf(line, sizeof(line), "%s\n", c->machine_id);
    if (replace_file("/etc/machine-id", line, 0444) < 0) {
        snprintf(detail, dsize, "/etc/machine-id: %s", strerror(errno));
        return 1;
    }
    /* D-Bus's copy, where it is a file of its own */
    if (lstat("/var/lib/dbus/machine-id", &st) == 0 && S_ISREG(st.st_mode)) {
        replace_file("/var/lib/dbus/machine-id", line, 0444);
    }
    snprintf(detail, dsize, "%s (was %s)", c->machine_id, old[0] ? old : "-");
    return 0;
}

/* The MAC in a virtio-net device's config space (virtio 1.0: the
 * device-specific configuration, VIRTIO_PCI_CAP_DEVICE_CFG); 0 if read */
static int virtio_config_mac(const char *pcidir, unsigned char mac[6])
{
    char path[PATH_MAX + 32];
    unsigned char cfg[256];
    int fd, pos, bar = -1;
    uint32_t off = 0;
    ssize_t n;
    long page = sysconf(_SC_PAGESIZE);

    snprintf(path, sizeof(path), "%s/config", pcidir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    n = read(fd, cfg, sizeof(cfg));
    close(fd);
    if (n < 64 || !(cfg[6] & 0x10)) {
        return -1;
    }
    for (pos = cfg[0x34] & ~3; pos && pos + 16 <= n; pos = cfg[pos + 1] & ~3) {
        if (cfg[pos] == 0x09 && cfg[pos + 3] == 4) {    /* vendor, DEVICE_CFG */
            bar = cfg[pos + 4];
            memcpy(&off, cfg + pos + 8, 4);
            break;
        }
    }
    if (bar < 0 || bar > 5) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/resource%d", pcidir, bar);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    {
        off_t base = off & ~(page - 1);
        size_t len = (off - base) + 6;
        volatile unsigned char *m = mmap(NULL, len, PROT_READ, MAP_SHARED,
                                         fd, base);

        close(fd);
        if (m == MAP_FAILED) {
            return -1;
        }
        for (int i = 0; i < 6; i++) {
            mac[i] = m[off - base + i];
        }
        munmap((void *)m, len);
    }
    return 0;
}

static int step_network(Clone *c, char *detail, size_t dsize)
{
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    int r = 0;
    size_t used = 0;

    (void)c;
    detail[0] = 0;
    while (d && (e = readdir(d))) {
        char path[PATH_MAX], real[PATH_MAX], drv[PATH_MAX], addr[32];
        const char *ifname = e->d_name, *devname;
        unsigned char mac[6];
        char macs[20];
        ssize_t n;

        if (ifname[0] == '.') {
            continue;
        }
        snprintf(path, sizeof(path), "/sys/class/net/%s/device", ifname);
        if (!realpath(path, real)) {
            continue;                           /* lo, virtual interfaces */
        }
        snprintf(path, sizeof(path), "/sys/class/net/%s/device/driver", ifname);
        n = readlink(path, drv, sizeof(drv) - 1);
        drv[n > 0 ? n : 0] = 0;
        devname = strrchr(real, '/') + 1;
        if (strstr(drv, "/virtio_net")) {
            char pcidir[PATH_MAX];

            snprintf(pcidir, sizeof(pcidir), "%s", real);
            *strrchr(pcidir, '/') = 0;          /* the PCI function */
            snprintf(path, sizeof(path), "/sys/class/net/%s/address", ifname);
            read_small(path, addr, sizeof(addr));
            addr[strcspn(addr, "\n")] = 0;
            if (virtio_config_mac(pcidir, mac) == 0) {
                snprintf(macs, sizeof(macs), "%02x:%02x:%02x:%02x:%02x:%02x",
                         mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
                if (strcmp(macs, addr)) {
                    /* vmfork gave this NIC a new MAC: the driver reads it
                     * when it probes the device again */
                    int r1 = write_file("/sys/bus/virtio/drivers/virtio_net/unbind",
                                        devname, 0200);
                    int r2 = write_file("/sys/bus/virtio/drivers/virtio_net/bind",
                                        devname, 0200);

                    used += snprintf(detail + used, dsize - used,
                                     "%s%s: new MAC %s, virtio_net rebound%s",
                                     used ? "; " : "", ifname, macs,
                                     r1 || r2 ? " (FAILED)" : "");
                    r |= r1 || r2;
                    continue;
                }
            }
        }
        /* A DHCP renewal where systemd-networkd manages the link: its
         * RenewLink method, as `networkctl renew` calls it */
        if (access("/run/systemd/netif/links", F_OK) == 0) {
            char err[256] = "";
            int rr = networkd_renew(if_nametoindex(ifname), err, sizeof(err));

            used += snprintf(detail + used, dsize - used,
                             "%s%s: DHCP renewal requested from networkd%s%s",
                             used ? "; " : "", ifname, rr ? ": FAILED: " : "",
                             rr ? err : "");
            r |= rr != 0;
        }
        if (used >= dsize) {
            used = dsize - 1;
        }
    }
    if (d) {
        closedir(d);
    }
    if (!detail[0]) {
        snprintf(detail, dsize, "no NIC");
    }
    return r;
}

static int rtc_read(time_t *t, bool wait_edge)
{
    struct rtc_time rt;
    struct tm tm;
    int fd = open("/dev/rtc0", O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        return -1;
    }
    if (wait_edge) {
        unsigned long data;
        struct pollfd p = { .fd = fd, .events = POLLIN };

        if (ioctl(fd, RTC_UIE_ON, 0) < 0 || poll(&p, 1, 1500) != 1 ||
            read(fd, &data, sizeof(data)) < 0) {
            ioctl(fd, RTC_UIE_OFF, 0);
            close(fd);
            return -1;
        }
        ioctl(fd, RTC_UIE_OFF, 0);
    }
    if (ioctl(fd, RTC_RD_TIME, &rt) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    memset(&tm, 0, sizeof(tm));
    tm.tm_sec = rt.tm_sec;
    tm.tm_min = rt.tm_min;
    tm.tm_hour = rt.tm_hour;
    tm.tm_mday = rt.tm_mday;
    tm.tm_mon = rt.tm_mon;
    tm.tm_year = rt.tm_year;
    *t = timegm(&tm);               /* QEMU's RTC: UTC (-rtc base=utc) */
    return 0;
}

static int step_time(Clone *c, char *detail, size_t dsize)
{
    time_t rtc;
    double sys, off;

    if (rtc_read(&rtc, false) < 0) {
        snprintf(detail, dsize, "no RTC: %s", strerror(errno));
        return 1;
    }
    sys = now_ms(CLOCK_REALTIME) / 1e3;
    /* the true time is in [rtc, rtc + 1) */
    off = sys - (rtc + 0.5);
    if (off < -1.5 || off > 1.5) {
        struct timeval tv = { .tv_sec = rtc, .tv_usec = 500000 };

        if (settimeofday(&tv, NULL) < 0) {
            snprintf(detail, dsize, "settimeofday: %s", strerror(errno));
            return 1;
        }
        c->time_stepped = true;
        snprintf(detail, dsize, "clock was %+.1f s from the RTC: stepped to "
                 "RTC + 0.5 s (refined at the next RTC second)", off);
    } else {
        snprintf(detail, dsize, "clock %+.1f s from the RTC (within its "
                 "resolution): left alone", off);
    }
    return 0;
}

static int step_time_edge(Clone *c, char *detail, size_t dsize)
{
    time_t rtc;
    double off;
    struct timeval tv;

    (void)c;
    if (rtc_read(&rtc, true) < 0) {
        snprintf(detail, dsize, "no RTC update interrupt: %s", strerror(errno));
        return 1;
    }
    off = now_ms(CLOCK_REALTIME) / 1e3 - rtc;
    tv.tv_sec = rtc;
    tv.tv_usec = 0;
    if (settimeofday(&tv, NULL) < 0) {
        snprintf(detail, dsize, "settimeofday: %s", strerror(errno));
        return 1;
    }
    snprintf(detail, dsize, "set at the RTC's second edge (was %+.3f s)", off);
    return 0;
}

static int dropin_filter(const struct dirent *e)
{
    size_t n = strlen(e->d_name);

    return e->d_name[0] != '.' && e->d_name[n - 1] != '~' &&
           !strstr(e->d_name, ".dpkg-");
}

static int run_dropins(Clone *c)
{
    struct dirent **names;
    int n = scandir(DROPIN_DIR, &names, dropin_filter, alphasort);
    int failed = 0;
    char env_id[64], env_gen[64], env_host[96], env_mid[64];
    char *envp[] = { env_id, env_gen, env_host, env_mid,
                     "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "HOME=/root", "LANG=C.UTF-8", NULL };

    if (n < 0) {
        status("step clone.d - 0.000 ms %s: none", DROPIN_DIR);
        return 0;
    }
    snprintf(env_id, sizeof(env_id), "VMFORK_CLONE_ID=%llu", c->id);
    snprintf(env_gen, sizeof(env_gen), "VMFORK_GENERATION=%llu", c->gen);
    snprintf(env_host, sizeof(env_host), "VMFORK_HOSTNAME=%s", c->hostname);
    snprintf(env_mid, sizeof(env_mid), "VMFORK_MACHINE_ID=%s", c->machine_id);
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];
        struct stat st;

        snprintf(path, sizeof(path), "%s/%s", DROPIN_DIR, names[i]->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0) {
            char *argv[] = { path, NULL };
            double t = now_ms(CLOCK_MONOTONIC);
            int rc = run(argv, envp);

            status("step clone.d/%s %d %.3f ms exit status %d", names[i]->d_name,
                   rc != 0, now_ms(CLOCK_MONOTONIC) - t, rc);
            failed += rc != 0;
        }
        free(names[i]);
    }
    free(names);
    return failed;
}

typedef int StepFn(Clone *c, char *detail, size_t dsize);

static int do_step(Clone *c, const char *name, StepFn *fn)
{
    char detail[1024] = "";
    double t = now_ms(CLOCK_MONOTONIC);
    int r = fn(c, detail, sizeof(detail));

    status("step %s %d %.3f ms %s", name, r, now_ms(CLOCK_MONOTONIC) - t, detail);
    return r;
}

static int customize(unsigned long long id, unsigned long long gen,
                     const char *trigger, double woke_ms)
{
    Clone c = { .id = id, .gen = gen };
    double t0 = now_ms(CLOCK_MONOTONIC), main_ms;
    int failed = 0;

    set_handled(id, gen);
    mkdir(RUN_DIR, 0755);
    status_fp = fopen(status_tmp, "we");
    status("clone-id %llu", id);
    status("generation %llu", gen);
    status("trigger %s", trigger);
    status("start-monotonic-ms %.3f", t0);
    if (woke_ms > 0) {
        status("woke-to-start %.3f ms", t0 - woke_ms);
    }
    failed += do_step(&c, "rng", step_rng);
    failed += do_step(&c, "hostname", step_hostname);
    failed += do_step(&c, "machine-id", step_machine_id);
    failed += do_step(&c, "network", step_network);
    failed += do_step(&c, "time", step_time);
    failed += run_dropins(&c);
    main_ms = now_ms(CLOCK_MONOTONIC) - t0;
    status("total %.3f ms", main_ms);
    /* After the measured steps: journald keeps the machine id it read at
     * its start; a restart (its streams survive in systemd's fd store)
     * makes it write under the new one.  Queued with --no-block. */
    if (access("/run/systemd/system", F_OK) == 0) {
        char err[256] = "";
        double t = now_ms(CLOCK_MONOTONIC);
        int rc = systemd_restart("systemd-journald.service", err, sizeof(err));

        status("step journald-restart %d %.3f ms %s", rc != 0,
               now_ms(CLOCK_MONOTONIC) - t, rc ? err : "queued (RestartUnit)");
        failed += rc != 0;
    }
    if (c.time_stepped) {
        failed += do_step(&c, "time-edge", step_time_edge);
    }
    status("result %s", failed ? "failed" : "ok");
    if (status_fp) {
        fclose(status_fp);
        status_fp = NULL;
        rename(status_tmp, STATUS);
    }
    return failed ? 1 : 0;
}

/*
 * Warm-up, in a VM about to be forked: the customisation's code paths run
 * once, changing nothing (the same hostname and files written again, a
 * DHCP renewal, the RTC read, a process spawned), so that each clone runs
 * them warm.  Under TCG a clone inherits the template's translated code
 * and pays for the translation of every path the template never ran:
 * measured in a clone of a template that had not warmed up, the
 * customisation took 119 ms the first time, 26 ms the second.  Run by
 * freeze before it asks, by the daemon when it starts, and by
 * `vmfork-guest warm-up` for a template that the host forks.
 */
static void warm_up(void)
{
    static const char *const files[] = { "/etc/hostname", "/etc/hosts" };
    char host[256], buf[8192], detail[256];
    char *argv[] = { "/bin/sh", "-c", ":", NULL };
    char *envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
    Clone c = { 0 };
    time_t t;

    step_rng(&c, detail, sizeof(detail));
    if (gethostname(host, sizeof(host)) == 0) {
        sethostname(host, strlen(host));
    }
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if (read_small(files[i], buf, sizeof(buf)) > 0) {
            replace_file(files[i], buf, 0644);
        }
    }
    step_network(&c, detail, sizeof(detail));
    rtc_read(&t, false);
    run(argv, envp);
}

/* ---- Commands ------------------------------------------------------------ */

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

/* The kretprobe on add_vmfork_randomness in a tracing instance of our own:
 * its trace_pipe, or -1 (why in @why) */
static int open_kprobe(char *why, size_t wsize)
{
    struct stat st;
    int fd;

    if (stat(TRACEFS "/kprobe_events", &st) < 0 &&
        mount("tracefs", TRACEFS, "tracefs", 0, NULL) < 0) {
        snprintf(why, wsize, "no tracefs: %s", strerror(errno));
        return -1;
    }
    rmdir(INSTANCE);            /* a previous daemon's */
    if (stat(TRACEFS "/events/" KPROBE, &st) < 0) {
        fd = open(TRACEFS "/kprobe_events", O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd < 0 || write(fd, "r:" KPROBE " add_vmfork_randomness\n",
                            strlen("r:" KPROBE " add_vmfork_randomness\n")) < 0) {
            snprintf(why, wsize, "kretprobe on add_vmfork_randomness: %s",
                     strerror(errno));
            if (fd >= 0) {
                close(fd);
            }
            return -1;
        }
        close(fd);
    }
    if (mkdir(INSTANCE, 0700) < 0 ||
        write_file(INSTANCE "/buffer_size_kb", "8", 0600) < 0 ||
        write_file(INSTANCE "/events/" KPROBE "/enable", "1", 0600) < 0) {
        snprintf(why, wsize, "tracing instance: %s", strerror(errno));
        rmdir(INSTANCE);
        return -1;
    }
    fd = open(INSTANCE "/trace_pipe", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, wsize, "trace_pipe: %s", strerror(errno));
        rmdir(INSTANCE);
    }
    return fd;
}

/* Drain a non-blocking fd: was anything there? */
static bool drain(int fd)
{
    char buf[4096];
    bool any = false;

    while (read(fd, buf, sizeof(buf)) > 0) {
        any = true;
    }
    return any;
}

static int open_uevent_socket(void)
{
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = 1 };
    int size = 1 << 20;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    NETLINK_KOBJECT_UEVENT);

    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Drain the socket: did a NEW_VMGENID uevent come? */
static bool read_uevents(int fd)
{
    char buf[8192];
    bool vmgenid = false;
    ssize_t n;

    while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) > 0) {
        buf[n] = 0;
        for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
            if (!strcmp(p, "NEW_VMGENID=1")) {
                vmgenid = true;
            }
        }
    }
    return vmgenid;
}

static int cmd_watch(int poll_ms)
{
    unsigned long long id, gen;
    int fd, kfd = -1, timeout;
    char buf[512], why[256] = "";
    bool genid;
    struct sigaction sa = { .sa_handler = on_term };

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    mkdir(RUN_DIR, 0755);
    fd = open_uevent_socket();
    if (fd < 0) {
        logmsg("uevent socket: %s", strerror(errno));
    }
    if (read_id(&id, &gen) < 0) {
        logmsg("no %s: not a vmfork VM, or no qemu_fw_cfg; nothing to do", ID_PATH);
        /* stay, quietly: a unit that fails would degrade the system */
        for (;;) {
            pause();
        }
    }
    genid = have_vmgenid();
    if (genid) {
        kfd = open_kprobe(why, sizeof(why));
        if (kfd < 0) {
            logmsg("%s: falling back to polling", why);
        }
    }
    timeout = poll_ms > 0 ? poll_ms : (genid && kfd >= 0 ? 60000 : 250);
    snprintf(buf, sizeof(buf), "clone-id %llu generation %llu vmgenid %s "
             "kretprobe %s uevent %s poll-ms %d\n", id, gen,
             genid ? "yes" : "no", kfd >= 0 ? "yes" : "no",
             fd >= 0 ? "yes" : "no", timeout);
    write_file(WATCHING, buf, 0644);
    logmsg("watching: %.*s", (int)strlen(buf) - 1, buf);
    if (id == 0) {
        set_handled(0, gen);            /* booted, not forked */
        warm_up();
    } else if (!handled(id, gen)) {
        customize(id, gen, "startup", 0);
    }
    while (!stop) {
        struct pollfd p[2] = { { .fd = fd, .events = POLLIN },
                               { .fd = kfd, .events = POLLIN } };
        const char *trigger = "poll";
        double woke;
        int r = poll(p, 2, timeout);

        woke = now_ms(CLOCK_MONOTONIC);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            logmsg("poll: %s", strerror(errno));
            return 1;
        }
        if (r > 0) {
            bool ev = p[1].revents && drain(kfd);

            if (ev) {
                trigger = "vmgenid-kretprobe";
            }
            if (p[0].revents && read_uevents(fd) && !ev) {
                trigger = "vmgenid-uevent";
                ev = true;
            }
            if (!ev) {
                continue;               /* another device's uevent */
            }
        }
        if (read_id(&id, &gen) < 0 || id == 0 || handled(id, gen)) {
            continue;
        }
        customize(id, gen, trigger, woke);
    }
    if (kfd >= 0) {
        close(kfd);
        rmdir(INSTANCE);
    }
    return 0;
}

/* ---- The freeze point (docs/guest-abi.md) ----------------------------- */

#define FREEZE_PORT_DEFAULT 0x5f0
#define FREEZE_SIGNATURE    0x4b524f46u
#define FREEZE_REQUEST      0x4
#define FREEZE_STATUS       0x8
#define FREEZE_RESULT       0xc
#define FREEZE_PENDING      1
#define FREEZE_DONE         2
#define PORT_PATH \
    "/sys/firmware/qemu_fw_cfg/by_name/opt/vmfork/guest-port/raw"

enum {
    EXIT_NO_DEVICE = 3,
    EXIT_DENIED = 4,
    EXIT_BUSY = 5,
    EXIT_CANCELLED = 6,
    EXIT_FORK_FAILED = 7,
};

/* The device's first I/O port, as QEMU tells it in fw_cfg, or 0 */
static unsigned freeze_port_from_fw_cfg(void)
{
    unsigned char le[8];
    unsigned long long id, gen;

    read_id(&id, &gen);                 /* loads qemu_fw_cfg if need be */
    if (read_small(PORT_PATH, (char *)le, sizeof(le)) < 2) {
        return 0;
    }
    return le[0] | le[1] << 8;
}

static const char *freeze_error(unsigned code, int *exit_code)
{
    switch (code) {
    case 1:
        *exit_code = EXIT_DENIED;
        return "the host denied the request (its vmfork-guest-policy)";
    case 2:
        *exit_code = EXIT_BUSY;
        return "busy: another freeze request is pending";
    case 3:
        *exit_code = EXIT_CANCELLED;
        return "cancelled: the host let the VM run without forking it";
    case 4:
        *exit_code = EXIT_FORK_FAILED;
        return "the host could not fork the VM (see its "
               "VMFORK_GUEST_REQUEST event)";
    }
    *exit_code = 1;
    return "unknown answer from the device";
}

/* In a child: until the clone is customised, by the daemon or by us */
static void freeze_wait_customised(void)
{
    unsigned long long id, gen;
    char want[64], buf[128];

    if (read_id(&id, &gen) < 0 || id == 0) {
        return;
    }
    if (access(WATCHING, F_OK) < 0) {
        if (!handled(id, gen)) {
            customize(id, gen, "freeze", 0);
        }
        return;
    }
    snprintf(want, sizeof(want), "clone-id %llu\n", id);
    for (int i = 0; i < 1000; i++) {
        if (read_small(STATUS, buf, sizeof(buf)) > 0 &&
            !strncmp(buf, want, strlen(want))) {
            return;
        }
        usleep(10000);
    }
    fprintf(stderr, "%s: the clone is not customised after 10 s (see "
            "journalctl -u vmfork-guest)\n", prog);
}

/*
 * In the parent: a template may have waited, paused, for a long time, and
 * its clock stood still meanwhile.  The clone's time step, on its own.
 */
static void freeze_parent_clock(void)
{
    Clone c = { 0 };
    char detail[256] = "";

    int failed = step_time(&c, detail, sizeof(detail));

    if (failed || c.time_stepped) {
        logmsg("freeze: time: %s", detail);
    }
    if (!failed && c.time_stepped) {
        step_time_edge(&c, detail, sizeof(detail));
    }
}

static int cmd_freeze(bool wait_customised)
{
    unsigned port = freeze_port_from_fw_cfg();
    unsigned answer, st, result;
    int exit_code;

    if (!port) {
        port = FREEZE_PORT_DEFAULT;
    }
    if (ioperm(port, 16, 1) < 0) {
        fprintf(stderr, "%s: cannot access I/O ports 0x%x-0x%x: %s (run as "
                "root)\n", prog, port, port + 15, strerror(errno));
        return 1;
    }
    if (inl(port) != FREEZE_SIGNATURE) {
        fprintf(stderr, "%s: no vmfork-guest device (the host must start "
                "the VM with -device vmfork-guest)\n", prog);
        return EXIT_NO_DEVICE;
    }
    warm_up();
    answer = inl(port + FREEZE_REQUEST);
    if (answer) {
        fprintf(stderr, "%s: %s\n", prog, freeze_error(answer, &exit_code));
        return exit_code;
    }
    /* Pending for the microseconds until the host pauses or forks the VM */
    while ((st = inl(port + FREEZE_STATUS)) == FREEZE_PENDING) {
        sched_yield();
    }
    result = inl(port + FREEZE_RESULT);
    if (st != FREEZE_DONE) {
        fprintf(stderr, "%s: %s\n", prog, freeze_error(result, &exit_code));
        return exit_code;
    }
    if (result && wait_customised) {
        freeze_wait_customised();
    } else if (!result) {
        freeze_parent_clock();
    }
    printf("%u\n", result);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: %s watch [--poll-ms MS] | customize [--force] | id | "
            "freeze [--no-wait] | warm-up\n"
            "  watch      wait for a clone (vmgenid uevent, fw_cfg poll) and "
            "customise it\n"
            "  customize  customise now (a clone only, unless --force)\n"
            "  id         print the clone id and generation (0 0: not a clone)\n"
            "  freeze     ask the host to fork this VM now; prints 0 in the "
            "parent,\n"
            "             the clone id in each child (once it is customised, "
            "unless\n"
            "             --no-wait).  Exit 3 no device, 4 denied, 5 busy, "
            "6 cancelled,\n"
            "             7 the fork failed\n"
            "  warm-up    run the customisation's code paths once, changing "
            "nothing,\n"
            "             so that clones run them warm (before the host forks "
            "a template)\n",
            prog);
}

int main(int argc, char **argv)
{
    unsigned long long id, gen;

    setvbuf(stderr, NULL, _IOLBF, 0);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "id") && argc == 2) {
        if (read_id(&id, &gen) < 0) {
            fprintf(stderr, "%s: cannot read %s\n", prog, ID_PATH);
            return 1;
        }
        printf("%llu %llu\n", id, gen);
        return 0;
    }
    if (!strcmp(argv[1], "id-bench") && argc == 3) {
        /* what one read of the fw_cfg file costs, in guest time */
        int n = atoi(argv[2]);
        double t = now_ms(CLOCK_MONOTONIC);

        for (int i = 0; i < n; i++) {
            if (read_id(&id, &gen) < 0) {
                return 1;
            }
        }
        printf("%.3f ms per read of %s\n", (now_ms(CLOCK_MONOTONIC) - t) / (n ? n : 1),
               ID_PATH);
        return 0;
    }
    if (!strcmp(argv[1], "customize")) {
        bool force = argc == 3 && !strcmp(argv[2], "--force");

        if (argc > 3 || (argc == 3 && !force)) {
            usage(stderr);
            return 2;
        }
        if (read_id(&id, &gen) < 0) {
            if (!force) {
                fprintf(stderr, "%s: cannot read %s\n", prog, ID_PATH);
                return 1;
            }
            id = gen = 0;
        }
        if (id == 0 && !force) {
            fprintf(stderr, "%s: not a clone (clone id 0): nothing to do "
                    "(--force to customise anyway)\n", prog);
            return 0;
        }
        return customize(id, gen, "manual", 0);
    }
    if (!strcmp(argv[1], "warm-up") && argc == 2) {
        warm_up();
        return 0;
    }
    if (!strcmp(argv[1], "freeze")) {
        bool no_wait = argc == 3 && !strcmp(argv[2], "--no-wait");

        if (argc > 3 || (argc == 3 && !no_wait)) {
            usage(stderr);
            return 2;
        }
        return cmd_freeze(!no_wait);
    }
    if (!strcmp(argv[1], "watch")) {
        int poll_ms = 0;

        if (argc == 4 && !strcmp(argv[2], "--poll-ms")) {
            poll_ms = atoi(argv[3]);
        } else if (argc != 2) {
            usage(stderr);
            return 2;
        }
        return cmd_watch(poll_ms);
    }
    usage(stderr);
    return 2;
}
