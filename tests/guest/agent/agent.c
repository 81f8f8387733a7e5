/*
 * vmfork guest agent: answers line commands on a serial port.
 *
 * Usage: agent [DEVICE]   (default /dev/ttyS0; "-": standard input and
 *                         output, as in a container)
 *
 * One command per line, exactly one reply line per command: "OK ..." or
 * "ERR <message>".  Unsolicited lines are "READY vmfork-agent" (on start)
 * and "T <seq> <monotonic ns>" (while a tick stream runs).  The agent is
 * single-threaded and writes every line with one write(), so lines never
 * interleave.  The protocol is documented in tests/guest/README.md.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_LEN    8192            /* longest command line */
#define MAX_BYTES_REPLY 4096            /* peek, rand */
#define MAX_FILE_REPLY  65536           /* fread, sh output */
#define MAX_ALLOC_MIB   65536
#define DEFAULT_MIB     16
#define CLONEID_PATH    "/sys/firmware/qemu_fw_cfg/by_name/opt/vmfork/clone-id/raw"
#define FWCFG_DIR       "/sys/firmware/qemu_fw_cfg/by_name/"

static int tty = -1;                    /* commands come in here */
static int tty_out = -1;                /* replies go out here */
static uint8_t *buf;
static size_t buf_size;
static uint64_t tick_ns;                /* 0: no tick stream */
static uint64_t tick_next;
static uint64_t tick_seq;

/* A reply line under construction; sent by send_line(). */
static char *out;
static size_t out_len, out_cap;

static void out_reserve(size_t n)
{
    if (out_len + n + 2 > out_cap) {
        out_cap = (out_len + n + 2) * 2;
        out = realloc(out, out_cap);
        if (!out) {
            abort();
        }
    }
}

static void out_printf(const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    out_reserve(n);
    va_start(ap, fmt);
    vsnprintf(out + out_len, n + 1, fmt, ap);
    va_end(ap);
    out_len += n;
}

static void out_hex(const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    out_reserve(2 * n);
    for (size_t i = 0; i < n; i++) {
        out[out_len++] = hex[p[i] >> 4];
        out[out_len++] = hex[p[i] & 15];
    }
}

/* Write the line built so far plus '\n' with a single write() (retried
 * only if the tty takes part of it). */
static void send_line(void)
{
    size_t off = 0;

    out_reserve(0);
    out[out_len++] = '\n';
    while (off < out_len) {
        ssize_t r = write(tty_out, out + off, out_len - off);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            break;
        }
        off += r;
    }
    out_len = 0;
}

static void reply_err(const char *fmt, ...)
{
    va_list ap;
    char msg[512];

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    out_len = 0;
    out_printf("ERR %s", msg);
    send_line();
}

static uint64_t now_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* Parse an unsigned number filling all of s: decimal, or hex after "0x"
 * (base 0), or hex digits only (base 16). */
static int parse_u64(const char *s, int base, uint64_t *v)
{
    char *end;

    if (base == 0) {
        base = (s && (!strncmp(s, "0x", 2) || !strncmp(s, "0X", 2))) ? 16 : 10;
        if (base == 16) {
            s += 2;
        }
    } else if (s && (!strncmp(s, "0x", 2) || !strncmp(s, "0X", 2))) {
        return -1;
    }
    if (!s || !*s || !(base == 16 ? isxdigit((unsigned char)*s) : isdigit((unsigned char)*s))) {
        return -1;
    }
    errno = 0;
    *v = strtoull(s, &end, base);
    return (errno || *end) ? -1 : 0;
}

/* The rest of a command line without its leading blanks */
static char *skip_blanks(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    return s;
}

/* Split the next space-separated word off *rest (NULL when none). */
static char *next_word(char **rest)
{
    char *s = skip_blanks(*rest), *w;

    if (!*s) {
        *rest = s;
        return NULL;
    }
    w = s;
    while (*s && *s != ' ' && *s != '\t') {
        s++;
    }
    if (*s) {
        *s++ = 0;
    }
    *rest = s;
    return w;
}

static int no_more_words(char *rest)
{
    return next_word(&rest) == NULL;
}

static int buf_alloc(size_t mib)
{
    size_t size = mib << 20;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED) {
        return -errno;
    }
    if (buf) {
        munmap(buf, buf_size);
    }
    buf = p;
    buf_size = size;
    return 0;
}

/* 64-bit FNV-1a over the buffer taken as little-endian 64-bit words. */
static uint64_t buf_hash(void)
{
    const uint64_t *w = (const uint64_t *)buf;
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < buf_size / 8; i++) {
        h ^= w[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* xorshift64 per 64-bit word, state starting at the seed (0 -> golden ratio). */
static void buf_fill(uint64_t seed)
{
    uint64_t *w = (uint64_t *)buf;
    uint64_t x = seed ? seed : 0x9e3779b97f4a7c15ull;

    for (size_t i = 0; i < buf_size / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w[i] = x;
    }
}

/* Read up to max bytes of a file; returns the length or -errno, and
 * -EFBIG when the file is longer than max. */
static ssize_t read_file(const char *path, uint8_t *dst, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t len = 0;
    uint8_t extra;

    if (fd < 0) {
        return -errno;
    }
    for (;;) {
        ssize_t r = read(fd, len < max ? dst + len : &extra,
                         len < max ? max - len : 1);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            r = -errno;
            close(fd);
            return r;
        }
        if (r == 0) {
            break;
        }
        if (len >= max) {
            close(fd);
            return -EFBIG;
        }
        len += r;
    }
    close(fd);
    return len;
}

static void cmd_ping(char *args)
{
    if (!no_more_words(args)) {
        reply_err("usage: ping");
        return;
    }
    out_printf("OK pong");
    send_line();
}

static void cmd_alloc(char *args)
{
    char *a = next_word(&args);
    uint64_t mib;
    int r;

    if (!a || !no_more_words(args) || parse_u64(a, 10, &mib) || mib < 1 ||
        mib > MAX_ALLOC_MIB) {
        reply_err("usage: alloc <MiB 1..%d>", MAX_ALLOC_MIB);
        return;
    }
    r = buf_alloc(mib);
    if (r < 0) {
        reply_err("alloc %" PRIu64 " MiB: %s", mib, strerror(-r));
        return;
    }
    out_printf("OK");
    send_line();
}

static void cmd_fill(char *args)
{
    char *a = next_word(&args);
    uint64_t seed;

    if (!a || !no_more_words(args) || strlen(a) > 16 || parse_u64(a, 16, &seed)) {
        reply_err("usage: fill <seed: 1..16 hex digits>");
        return;
    }
    buf_fill(seed);
    out_printf("OK %016" PRIx64, buf_hash());
    send_line();
}

static void cmd_hash(char *args)
{
    if (!no_more_words(args)) {
        reply_err("usage: hash");
        return;
    }
    out_printf("OK %016" PRIx64, buf_hash());
    send_line();
}

static void cmd_peek(char *args)
{
    char *a = next_word(&args), *b = next_word(&args);
    uint64_t off, len;

    if (!a || !b || !no_more_words(args) || parse_u64(a, 0, &off) ||
        parse_u64(b, 0, &len) || len < 1 || len > MAX_BYTES_REPLY) {
        reply_err("usage: peek <offset> <len 1..%d>", MAX_BYTES_REPLY);
        return;
    }
    if (off > buf_size || len > buf_size - off) {
        reply_err("peek beyond the buffer (%zu bytes)", buf_size);
        return;
    }
    out_printf("OK ");
    out_hex(buf + off, len);
    send_line();
}

static void cmd_rand(char *args)
{
    char *a = next_word(&args);
    uint8_t bytes[MAX_BYTES_REPLY];
    uint64_t n;
    size_t got = 0;
    int fd;

    if (!a || !no_more_words(args) || parse_u64(a, 0, &n) || n < 1 ||
        n > MAX_BYTES_REPLY) {
        reply_err("usage: rand <n 1..%d>", MAX_BYTES_REPLY);
        return;
    }
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && got < n) {
        ssize_t r = read(fd, bytes + got, n - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        got += r;
    }
    if (fd >= 0) {
        close(fd);
    }
    if (got < n) {
        reply_err("/dev/urandom: %s", fd < 0 ? strerror(errno) : "short read");
        return;
    }
    out_printf("OK ");
    out_hex(bytes, n);
    send_line();
}

static void cmd_time(char *args)
{
    if (!no_more_words(args)) {
        reply_err("usage: time");
        return;
    }
    out_printf("OK %" PRIu64 " %" PRIu64, now_ns(CLOCK_MONOTONIC), now_ns(CLOCK_REALTIME));
    send_line();
}

static void cmd_cloneid(char *args)
{
    uint8_t id[256];
    ssize_t n;

    if (!no_more_words(args)) {
        reply_err("usage: cloneid");
        return;
    }
    n = read_file(CLONEID_PATH, id, sizeof(id));
    if (n == -ENOENT) {
        out_printf("OK none");
        send_line();
        return;
    }
    if (n < 0) {
        reply_err("%s: %s", CLONEID_PATH, strerror(-n));
        return;
    }
    /* Trailing NULs/newlines dropped; anything unprintable shown as '.'. */
    while (n > 0 && (id[n - 1] == 0 || id[n - 1] == '\n')) {
        n--;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (id[i] < 0x20 || id[i] > 0x7e) {
            id[i] = '.';
        }
    }
    out_printf("OK %.*s", (int)n, n ? (char *)id : "none");
    send_line();
}

static void cmd_fwcfg(char *args)
{
    char *name = next_word(&args), path[512];
    static uint8_t data[MAX_FILE_REPLY];
    ssize_t n;

    if (!name || !no_more_words(args) || strstr(name, "..")) {
        reply_err("usage: fwcfg <name>");
        return;
    }
    snprintf(path, sizeof(path), FWCFG_DIR "%s/raw", name);
    n = read_file(path, data, sizeof(data));
    if (n == -ENOENT) {
        out_printf("OK none");
        send_line();
        return;
    }
    if (n < 0) {
        reply_err("%s: %s", path, strerror(-n));
        return;
    }
    out_printf("OK ");
    out_hex(data, n);
    send_line();
}

static void cmd_sh(char *args)
{
    static uint8_t data[MAX_FILE_REPLY];
    size_t len = 0;
    int pfd[2], status, code;
    pid_t pid;

    args = skip_blanks(args);
    if (!*args) {
        reply_err("usage: sh <command line>");
        return;
    }
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        reply_err("pipe: %s", strerror(errno));
        return;
    }
    pid = fork();
    if (pid < 0) {
        reply_err("fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        if (devnull > 2) {
            close(devnull);
        }
        execl("/bin/sh", "sh", "-c", args, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    for (;;) {
        uint8_t discard[4096];
        ssize_t r = read(pfd[0], len < sizeof(data) ? data + len : discard,
                         len < sizeof(data) ? sizeof(data) - len : sizeof(discard));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        if (len < sizeof(data)) {
            len += r;           /* output beyond MAX_FILE_REPLY is dropped */
        }
    }
    close(pfd[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    out_printf("OK %d", code);
    if (len) {
        out_printf(" ");
        out_hex(data, len);
    }
    send_line();
}

static void cmd_fwrite(char *args)
{
    char *path = next_word(&args);
    size_t len, off = 0;
    char *text;
    int fd;

    if (!path) {
        reply_err("usage: fwrite <path> <text>");
        return;
    }
    args = skip_blanks(args);
    /* The text plus '\n', written with one write() where possible. */
    len = strlen(args);
    text = malloc(len + 1);
    if (!text) {
        reply_err("out of memory");
        return;
    }
    memcpy(text, args, len);
    text[len++] = '\n';
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        reply_err("%s: %s", path, strerror(errno));
        free(text);
        return;
    }
    while (off < len) {
        ssize_t r = write(fd, text + off, len - off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            reply_err("write %s: %s", path, strerror(errno));
            close(fd);
            free(text);
            return;
        }
        off += r;
    }
    free(text);
    if (fsync(fd) < 0) {
        reply_err("fsync %s: %s", path, strerror(errno));
        close(fd);
        return;
    }
    if (close(fd) < 0) {
        reply_err("close %s: %s", path, strerror(errno));
        return;
    }
    out_printf("OK");
    send_line();
}

/*
 * kmsg <ms> <text>: waits up to ms milliseconds for a kernel log record
 * that contains text (the rest of the line), searching from the start of
 * the log.  Reading /dev/kmsg takes nothing from the RNG, so a test can
 * wait for a reseed without changing what /dev/urandom gives next.
 */
static void cmd_kmsg(char *args)
{
    char *a = next_word(&args), rec[8192];
    uint64_t ms, deadline;
    int fd;

    args = skip_blanks(args);
    if (!a || parse_u64(a, 10, &ms) || ms > 3600000 || !*args) {
        reply_err("usage: kmsg <ms 0..3600000> <text>");
        return;
    }
    fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        reply_err("/dev/kmsg: %s", strerror(errno));
        return;
    }
    deadline = now_ns(CLOCK_MONOTONIC) + ms * 1000000;
    for (;;) {
        /* One record per read: "prio,seq,usec,flags;text\n" */
        ssize_t n = read(fd, rec, sizeof(rec) - 1);
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        uint64_t now;

        if (n > 0) {
            char *text;

            rec[n] = 0;
            text = strchr(rec, ';');
            if (text && strstr(text + 1, args)) {
                out_printf("OK %" PRIu64, now_ns(CLOCK_MONOTONIC));
                break;
            }
            continue;
        }
        if (n < 0 && (errno == EINTR || errno == EPIPE)) {
            continue;           /* EPIPE: records overwritten, read on */
        }
        if (n < 0 && errno != EAGAIN) {
            reply_err("/dev/kmsg: %s", strerror(errno));
            close(fd);
            return;
        }
        now = now_ns(CLOCK_MONOTONIC);
        if (now >= deadline) {
            reply_err("kmsg: no '%.64s' in %" PRIu64 " ms", args, ms);
            close(fd);
            return;
        }
        poll(&pfd, 1, (int)((deadline - now + 999999) / 1000000));
    }
    close(fd);
    send_line();
}

static void cmd_fread(char *args)
{
    char *path = next_word(&args);
    static uint8_t data[MAX_FILE_REPLY];
    ssize_t n;

    if (!path || !no_more_words(args)) {
        reply_err("usage: fread <path>");
        return;
    }
    n = read_file(path, data, sizeof(data));
    if (n == -EFBIG) {
        reply_err("%s: longer than %d bytes", path, MAX_FILE_REPLY);
        return;
    }
    if (n < 0) {
        reply_err("%s: %s", path, strerror(-n));
        return;
    }
    out_printf("OK");
    if (n) {
        out_printf(" ");
        out_hex(data, n);
    }
    send_line();
}

static void cmd_tick(char *args)
{
    char *a = next_word(&args);
    uint64_t ms;

    if (!a || !no_more_words(args) || parse_u64(a, 10, &ms) || ms > 3600000) {
        reply_err("usage: tick <ms 0..3600000> (0 stops)");
        return;
    }
    out_printf("OK");
    send_line();
    tick_ns = ms * 1000000u;
    tick_seq = 0;
    tick_next = now_ns(CLOCK_MONOTONIC) + tick_ns;
}

/* ---- Disk writer: fsync'd records for the data tests ------------------- */

/*
 * Record i lives in sector i of the device:
 *   "VMFWREC1 <i, 12 digits> <clone id> <FNV-1a 64 of the part before, 16
 *   hex>\n", zero-padded to 512 bytes.
 * The clone id is the fw_cfg clone-id text (spaces as '_'; "none" without
 * it), read again for each record, so records written after a fork carry
 * the writer's new identity.
 */
#define REC_SIZE        512
#define REC_MAGIC       "VMFWREC1"
#define CHECK_CHUNK     (64 * 1024)

static pid_t writer_pid;
static volatile uint64_t *writer_acked;  /* shared with the writer process */

static uint64_t fnv64(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    while (n--) {
        h ^= (uint8_t)*p++;
        h *= 0x100000001b3ull;
    }
    return h;
}

static void clone_id_word(char *dst, size_t size)
{
    uint8_t id[64];
    ssize_t n = read_file(CLONEID_PATH, id, sizeof(id) - 1);
    size_t k = 0;

    while (n > 0 && (id[n - 1] == 0 || id[n - 1] == '\n')) {
        n--;
    }
    for (ssize_t i = 0; i < n && k + 1 < size; i++) {
        dst[k++] = id[i] > 0x20 && id[i] <= 0x7e ? id[i] : '_';
    }
    if (!k) {
        snprintf(dst, size, "none");
        return;
    }
    dst[k] = 0;
}

static void record_make(char *rec, uint64_t seq)
{
    char id[64];
    int n;

    clone_id_word(id, sizeof(id));
    memset(rec, 0, REC_SIZE);
    n = snprintf(rec, REC_SIZE, REC_MAGIC " %012" PRIu64 " %s", seq, id);
    snprintf(rec + n, REC_SIZE - n, " %016" PRIx64 "\n", fnv64(rec, n));
}

/* The clone id in a valid record number seq (into id), or -1 */
static int record_check(const char *rec, uint64_t seq, char *id, size_t size)
{
    char magic[16], idw[64];
    uint64_t s, h;
    int n = 0;

    if (memcmp(rec, REC_MAGIC " ", 9) ||
        sscanf(rec, "%15s %" SCNu64 " %63s%n %" SCNx64, magic, &s, idw, &n,
               &h) != 4 || s != seq || fnv64(rec, n) != h) {
        return -1;
    }
    snprintf(id, size, "%s", idw);
    return 0;
}

static int open_disk(const char *dev, int flags)
{
    int fd = open(dev, flags | O_DIRECT | O_CLOEXEC);

    if (fd < 0 && errno == EINVAL) {
        fd = open(dev, flags | O_CLOEXEC);      /* no O_DIRECT there */
    }
    return fd;
}

static void writer_run(int fd, uint64_t nr_records, uint64_t pause_us)
{
    char *rec;

    if (posix_memalign((void **)&rec, 4096, REC_SIZE)) {
        _exit(1);
    }
    for (uint64_t i = 0; i < nr_records; i++) {
        record_make(rec, i);
        if (pwrite(fd, rec, REC_SIZE, i * REC_SIZE) != REC_SIZE ||
            fdatasync(fd) < 0) {
            _exit(1);
        }
        *writer_acked = i + 1;
        if (pause_us) {
            usleep(pause_us);
        }
    }
    for (;;) {
        pause();            /* the device is full: idle until wstop */
    }
}

static void cmd_wstart(char *args)
{
    char *dev = next_word(&args), *a = next_word(&args);
    uint64_t pause_us = 0;
    off_t size;
    int fd;

    if (!dev || (a && parse_u64(a, 0, &pause_us)) || !no_more_words(args)) {
        reply_err("usage: wstart <block device> [<pause between records, us>]");
        return;
    }
    if (writer_pid) {
        reply_err("a writer runs already");
        return;
    }
    if (!writer_acked) {
        writer_acked = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (writer_acked == MAP_FAILED) {
            writer_acked = NULL;
            reply_err("mmap: %s", strerror(errno));
            return;
        }
    }
    fd = open_disk(dev, O_RDWR);
    if (fd < 0 || (size = lseek(fd, 0, SEEK_END)) < 0) {
        reply_err("%s: %s", dev, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    *writer_acked = 0;
    writer_pid = fork();
    if (writer_pid < 0) {
        writer_pid = 0;
        reply_err("fork: %s", strerror(errno));
        close(fd);
        return;
    }
    if (writer_pid == 0) {
        if (tty_out != tty) {
            close(tty_out);
        }
        close(tty);
        writer_run(fd, size / REC_SIZE, pause_us);
    }
    close(fd);
    out_printf("OK");
    send_line();
}

/* A command on the running writer, without arguments: replies if not */
static int writer_cmd_ok(char *args, const char *name)
{
    if (!no_more_words(args)) {
        reply_err("usage: %s", name);
        return 0;
    }
    if (!writer_pid) {
        reply_err("no writer runs");
        return 0;
    }
    return 1;
}

static void cmd_wstat(char *args)
{
    if (!writer_cmd_ok(args, "wstat")) {
        return;
    }
    out_printf("OK %" PRIu64, *writer_acked);
    send_line();
}

static void cmd_wstop(char *args)
{
    if (!writer_cmd_ok(args, "wstop")) {
        return;
    }
    kill(writer_pid, SIGKILL);
    while (waitpid(writer_pid, NULL, 0) < 0 && errno == EINTR) {
    }
    writer_pid = 0;
    out_printf("OK %" PRIu64, *writer_acked);
    send_line();
}

/*
 * Reads records 0..n-1 and replies "OK <valid prefix> <valid records after
 * it> <id>:<count>[,<id>:<count>]..." (the runs of clone ids in the prefix,
 * "-" when it is empty).
 */
static void cmd_wcheck(char *args)
{
    char *dev = next_word(&args), *a = next_word(&args);
    char *chunk, id[64], run_id[64] = "";
    uint64_t n, prefix = 0, after = 0, run = 0;
    int fd, in_prefix = 1;

    if (!dev || !a || !no_more_words(args) || parse_u64(a, 0, &n)) {
        reply_err("usage: wcheck <block device> <records>");
        return;
    }
    fd = open_disk(dev, O_RDONLY);
    if (fd < 0) {
        reply_err("%s: %s", dev, strerror(errno));
        return;
    }
    if (posix_memalign((void **)&chunk, 4096, CHECK_CHUNK)) {
        close(fd);
        reply_err("out of memory");
        return;
    }
    out_printf("OK ");
    {
        size_t head = out_len;  /* counts are inserted in front at the end */

        for (uint64_t i = 0; i < n; i += CHECK_CHUNK / REC_SIZE) {
            ssize_t r = pread(fd, chunk, CHECK_CHUNK, i * REC_SIZE);

            if (r <= 0) {
                break;
            }
            for (uint64_t j = 0; j < (uint64_t)r / REC_SIZE && i + j < n; j++) {
                int ok = !record_check(chunk + j * REC_SIZE, i + j, id,
                                       sizeof(id));

                if (!ok) {
                    in_prefix = 0;
                } else if (!in_prefix) {
                    after++;
                } else {
                    prefix++;
                    if (run && strcmp(id, run_id)) {
                        out_printf("%s%s:%" PRIu64, out_len > head ? "," : "",
                                   run_id, run);
                        run = 0;
                    }
                    snprintf(run_id, sizeof(run_id), "%s", id);
                    run++;
                }
            }
        }
        if (run) {
            out_printf("%s%s:%" PRIu64, out_len > head ? "," : "", run_id,
                       run);
        }
        if (out_len == head) {
            out_printf("-");
        }
        {
            char counts[64];
            int k = snprintf(counts, sizeof(counts), "%" PRIu64 " %" PRIu64
                             " ", prefix, after);

            out_reserve(k);
            memmove(out + head + k, out + head, out_len - head);
            memcpy(out + head, counts, k);
            out_len += k;
        }
    }
    free(chunk);
    close(fd);
    send_line();
}

static const struct {
    const char *name;
    void (*fn)(char *args);
} commands[] = {
    { "ping", cmd_ping },
    { "alloc", cmd_alloc },
    { "fill", cmd_fill },
    { "hash", cmd_hash },
    { "peek", cmd_peek },
    { "rand", cmd_rand },
    { "time", cmd_time },
    { "cloneid", cmd_cloneid },
    { "fwcfg", cmd_fwcfg },
    { "kmsg", cmd_kmsg },
    { "sh", cmd_sh },
    { "fwrite", cmd_fwrite },
    { "fread", cmd_fread },
    { "tick", cmd_tick },
    { "wstart", cmd_wstart },
    { "wstat", cmd_wstat },
    { "wstop", cmd_wstop },
    { "wcheck", cmd_wcheck },
};

static void handle_line(char *line)
{
    char *rest = line, *cmd = next_word(&rest);

    if (!cmd) {
        return;                 /* empty line: no reply */
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (!strcmp(cmd, commands[i].name)) {
            commands[i].fn(rest);
            return;
        }
    }
    reply_err("unknown command '%.64s'", cmd);
}

static void tick_if_due(void)
{
    uint64_t now;

    if (!tick_ns) {
        return;
    }
    now = now_ns(CLOCK_MONOTONIC);
    if (now < tick_next) {
        return;
    }
    out_printf("T %" PRIu64 " %" PRIu64, ++tick_seq, now);
    send_line();
    tick_next += tick_ns;
    if (tick_next <= now) {
        tick_next = now + tick_ns;      /* missed ticks: no burst */
    }
}

static int poll_timeout_ms(void)
{
    uint64_t now;

    if (!tick_ns) {
        return -1;
    }
    now = now_ns(CLOCK_MONOTONIC);
    return now >= tick_next ? 0 : (int)((tick_next - now + 999999) / 1000000);
}

int main(int argc, char **argv)
{
    const char *dev = argc > 1 ? argv[1] : "/dev/ttyS0";
    static char line[LINE_MAX_LEN + 1];
    size_t len = 0;
    int overflow = 0;
    struct termios t;

    if (argc > 2) {
        fprintf(stderr, "usage: %s [DEVICE]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* O_NONBLOCK so that the open does not wait for carrier; CLOCAL below. */
    if (strcmp(dev, "-")) {
        tty = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
        tty_out = tty;
    } else {
        tty = fcntl(0, F_DUPFD_CLOEXEC, 3);
        tty_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
    }
    if (tty < 0 || tty_out < 0) {
        fprintf(stderr, "agent: %s: %s\n", dev, strerror(errno));
        return 1;
    }
    if (tcgetattr(tty, &t) == 0) {
        cfmakeraw(&t);
        t.c_cflag |= CLOCAL | CREAD;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(tty, TCSANOW, &t);
    }
    fcntl(tty, F_SETFL, fcntl(tty, F_GETFL) & ~O_NONBLOCK);
    if (buf_alloc(DEFAULT_MIB) < 0) {
        fprintf(stderr, "agent: cannot allocate %d MiB\n", DEFAULT_MIB);
        return 1;
    }
    tcflush(tty, TCIFLUSH);
    out_printf("READY vmfork-agent");
    send_line();

    for (;;) {
        struct pollfd pfd = { .fd = tty, .events = POLLIN };
        char chunk[4096];
        ssize_t n;
        int r = poll(&pfd, 1, poll_timeout_ms());

        if (r < 0 && errno != EINTR) {
            fprintf(stderr, "agent: poll: %s\n", strerror(errno));
            return 1;
        }
        tick_if_due();
        if (r <= 0) {
            continue;
        }
        n = read(tty, chunk, sizeof(chunk));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            fprintf(stderr, "agent: read %s: %s\n", dev, n ? strerror(errno) : "EOF");
            return 1;
        }
        for (ssize_t i = 0; i < n; i++) {
            char c = chunk[i];
            if (c == '\n' || c == '\r') {
                line[len] = 0;
                if (overflow) {
                    reply_err("line longer than %d bytes", LINE_MAX_LEN);
                } else {
                    handle_line(line);
                }
                len = 0;
                overflow = 0;
            } else if (len < LINE_MAX_LEN) {
                line[len++] = c;
            } else {
                overflow = 1;
            }
        }
    }
}
