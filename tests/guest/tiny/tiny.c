/*
 * vmfork tiny test guest: a freestanding 32-bit multiboot kernel.
 *
 * Single-threaded and polling only (interrupts stay off).  It talks on
 * COM1 (0x3f8) and does these things (protocol in ../README.md):
 *   - prints "TINY READY" once,
 *   - every TICK_TSC_DELTA TSC cycles prints "C <seq> <tsc>",
 *   - answers line commands "w <seed>" and "h" about a 1 MiB pattern
 *     region at guest-physical 4 MiB, and "t" with its TSC,
 *   - watches the link of the first legacy virtio-net device on PCI bus 0
 *     at each tick, and prints "L <changes> <up>" when it changes,
 *   - asks the host to fork it through the vmfork-guest device at its
 *     default port ("f", "b", "r <n>": docs/guest-abi.md).
 * Every output line is written whole, so lines never interleave.
 * No system headers, no libgcc: only 32-bit division is used.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;

#ifndef TICK_TSC_DELTA
#define TICK_TSC_DELTA (1ull << 24)     /* about 10 ms at 1.7 GHz */
#endif

#define COM1 0x3f8
#define UART_RBR 0      /* receive buffer (read) */
#define UART_THR 0      /* transmit holding (write) */
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_DR   0x01   /* data ready */
#define LSR_THRE 0x20   /* transmit holding register empty */

#define LINE_MAX 64

extern u32 pattern_region[];            /* from tiny.ld */
extern u32 pattern_region_end[];

static inline void outb(u16 port, u8 v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outl(u16 port, u32 v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static void uart_init(void)
{
    outb(COM1 + UART_IER, 0x00);        /* no interrupts */
    outb(COM1 + UART_LCR, 0x80);        /* DLAB */
    outb(COM1 + UART_RBR, 0x01);        /* divisor 1: 115200 baud */
    outb(COM1 + UART_IER, 0x00);
    outb(COM1 + UART_LCR, 0x03);        /* 8N1 */
    outb(COM1 + UART_FCR, 0xc7);        /* FIFOs on and cleared */
    outb(COM1 + UART_MCR, 0x03);        /* DTR, RTS; OUT2 off (no IRQ) */
}

static void uart_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE)) {
    }
    outb(COM1 + UART_THR, (u8)c);
}

/* An output line under construction; written out whole by line_end(). */
static char out[96];
static u32 outlen;

static void put_str(const char *s)
{
    while (*s && outlen < sizeof(out) - 1) {
        out[outlen++] = *s++;
    }
}

static void put_char(char c)
{
    if (outlen < sizeof(out) - 1) {
        out[outlen++] = c;
    }
}

static void put_hex(u32 v, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--) {
        put_char(hex[(v >> (4 * i)) & 0xf]);
    }
}

static void put_hex64(u64 v)
{
    put_hex((u32)(v >> 32), 8);
    put_hex((u32)v, 8);
}

static void put_dec(u32 v)
{
    char buf[10];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) {
        put_char(buf[--n]);
    }
}

static void line_end(void)
{
    out[outlen++] = '\n';
    for (u32 i = 0; i < outlen; i++) {
        uart_putc(out[i]);
    }
    outlen = 0;
}

/* Pattern: xorshift32 per 32-bit word, state starts at the seed (0 -> 0x9e3779b9). */
static void pattern_fill(u32 seed)
{
    u32 x = seed ? seed : 0x9e3779b9u;
#pragma GCC unroll 4
    for (u32 *p = pattern_region; p < pattern_region_end; p++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *p = x;
    }
}

/*
 * FNV-1a 32 over the region taken as 32-bit words (not bytes: 4x fewer
 * steps, which matters under this machine's instruction-emulating KVM):
 * h = 0x811c9dc5; for each word w in address order: h ^= w; h *= 0x01000193.
 */
static u32 pattern_hash(void)
{
    const u32 *p = pattern_region;
    u32 h = 0x811c9dc5u;
#pragma GCC unroll 8
    for (; p < pattern_region_end; p++) {
        h ^= *p;
        h *= 0x01000193u;
    }
    return h;
}

/*
 * The link of a legacy (transitional) virtio-net device, read from its
 * device configuration: the firmware has assigned its I/O BAR; without
 * MSI-X the configuration starts at offset 20, and "status" (bit 0: link
 * up) is its 16-bit field at offset 6.
 */
#define PCI_CONFIG_ADDR 0xcf8
#define PCI_CONFIG_DATA 0xcfc
#define VIRTIO_NET_LEGACY_ID 0x10001af4u        /* device << 16 | vendor */
#define VIRTIO_NET_STATUS_OFF (20 + 6)

static u16 net_io;                      /* 0: no such device */
static u32 link_up, link_changes;

static u32 pci_read(u32 dev, u32 reg)
{
    outl(PCI_CONFIG_ADDR, 0x80000000u | (dev << 11) | reg);
    return inl(PCI_CONFIG_DATA);
}

static void link_find(void)
{
    for (u32 dev = 0; dev < 32; dev++) {
        if (pci_read(dev, 0) == VIRTIO_NET_LEGACY_ID) {
            u32 bar = pci_read(dev, 0x10);

            if ((bar & 1) && (pci_read(dev, 4) & 1)) {  /* I/O, decoded */
                net_io = (u16)(bar & 0xfffc);
                link_up = inw(net_io + VIRTIO_NET_STATUS_OFF) & 1;
            }
            return;
        }
    }
}

static void link_poll(void)
{
    u32 up;

    if (!net_io) {
        return;
    }
    up = inw(net_io + VIRTIO_NET_STATUS_OFF) & 1;
    if (up != link_up) {
        link_up = up;
        link_changes++;
        put_str("L ");
        put_dec(link_changes);
        put_char(' ');
        put_dec(up);
        line_end();
    }
}

static void reply_error(const char *what)
{
    put_str("E ");
    put_str(what);
    line_end();
}

/* The vmfork-guest device (docs/guest-abi.md), at its default port */
#define VMFORK_PORT 0x5f0
#define VMFORK_SIGNATURE 0x4b524f46u
#define VMFORK_REQUEST (VMFORK_PORT + 4)
#define VMFORK_STATUS (VMFORK_PORT + 8)
#define VMFORK_RESULT (VMFORK_PORT + 12)
#define VMFORK_PENDING 1
#define VMFORK_DONE 2

/* Wait for the host to serve an accepted request; returns its status */
static u32 vmfork_wait(void)
{
    u32 st;

    while ((st = inl(VMFORK_STATUS)) == VMFORK_PENDING) {
        __asm__ volatile("pause");
    }
    return st;
}

/* "f": freeze here; "F ok <0 or clone id>", "F err <code>" or "F none" */
static void vmfork_freeze(void)
{
    u32 answer, st, result;

    if (inl(VMFORK_PORT) != VMFORK_SIGNATURE) {
        put_str("F none");
        line_end();
        return;
    }
    answer = inl(VMFORK_REQUEST);
    if (answer) {
        put_str("F err ");
        put_dec(answer);
        line_end();
        return;
    }
    st = vmfork_wait();
    result = inl(VMFORK_RESULT);
    put_str(st == VMFORK_DONE ? "F ok " : "F err ");
    put_dec(result);
    line_end();
}

/*
 * "b": a second request before the first is acknowledged is busy:
 * "B <second answer> <first's status> <first's result>"
 */
static void vmfork_busy(void)
{
    u32 second, st, result;

    if (inl(VMFORK_REQUEST)) {
        reply_error("not-accepted");
        return;
    }
    st = vmfork_wait();
    second = inl(VMFORK_REQUEST);
    result = inl(VMFORK_RESULT);
    put_str("B ");
    put_dec(second);
    put_char(' ');
    put_dec(st);
    put_char(' ');
    put_dec(result);
    line_end();
}

/*
 * "r <n>": n requests in a row, each served before the next:
 * "R <accepted> <denied> <busy> <done>"
 */
static void vmfork_flood(u32 n)
{
    u32 count[3] = { 0, 0, 0 }, done = 0;

    for (u32 i = 0; i < n; i++) {
        u32 answer = inl(VMFORK_REQUEST);

        if (answer < 3) {
            count[answer]++;
        }
        if (answer == 0) {
            done += vmfork_wait() == VMFORK_DONE;
            (void)inl(VMFORK_RESULT);
        }
    }
    put_str("R ");
    for (int i = 0; i < 3; i++) {
        put_dec(count[i]);
        put_char(' ');
    }
    put_dec(done);
    line_end();
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static void handle_line(const char *s)
{
    while (is_space(*s)) {
        s++;
    }
    if (s[0] == 'h' && (s[1] == 0 || is_space(s[1]))) {
        for (s++; is_space(*s); s++) {
        }
        if (*s) {
            reply_error("bad-args");
            return;
        }
        put_str("H ");
        put_hex(pattern_hash(), 8);
        line_end();
    } else if (s[0] == 't' && s[1] == 0) {
        put_str("T ");
        put_hex64(rdtsc());
        line_end();
    } else if ((s[0] == 'f' || s[0] == 'b') && s[1] == 0) {
        if (s[0] == 'f') {
            vmfork_freeze();
        } else {
            vmfork_busy();
        }
    } else if (s[0] == 'r' && is_space(s[1])) {
        u32 n = 0;
        int digits = 0;
        for (s++; is_space(*s); s++) {
        }
        for (; hex_val(*s) >= 0; s++, digits++) {
            n = (n << 4) | (u32)hex_val(*s);
        }
        if (digits < 1 || digits > 8 || *s) {
            reply_error("bad-count");
            return;
        }
        vmfork_flood(n);
    } else if (s[0] == 'w' && (s[1] == 0 || is_space(s[1]))) {
        u32 seed = 0;
        int digits = 0;
        for (s++; is_space(*s); s++) {
        }
        for (; hex_val(*s) >= 0; s++, digits++) {
            seed = (seed << 4) | (u32)hex_val(*s);
        }
        while (is_space(*s)) {
            s++;
        }
        if (digits < 1 || digits > 8 || *s) {
            reply_error("bad-seed");
            return;
        }
        pattern_fill(seed);
        put_str("W ");
        put_hex(seed, 8);
        put_char(' ');
        put_hex(pattern_hash(), 8);
        line_end();
    } else {
        reply_error("unknown-command");
    }
}

void tiny_main(void)
{
    char line[LINE_MAX + 1];
    u32 len = 0;
    int overflow = 0;
    u32 seq = 0;
    u64 next;

    uart_init();
    link_find();
    put_str("TINY READY");
    line_end();
    next = rdtsc() + TICK_TSC_DELTA;

    for (;;) {
        u64 now = rdtsc();
        if ((s64)(now - next) >= 0) {
            seq++;
            put_str("C ");
            put_dec(seq);
            put_char(' ');
            put_hex64(now);
            line_end();
            next += TICK_TSC_DELTA;
            if ((s64)(now - next) >= 0) {
                next = now + TICK_TSC_DELTA;    /* missed ticks: no burst */
            }
            link_poll();
        }
        if (inb(COM1 + UART_LSR) & LSR_DR) {
            char c = (char)inb(COM1 + UART_RBR);
            if (c == '\n' || c == '\r') {
                line[len] = 0;
                if (overflow) {
                    reply_error("line-too-long");
                } else if (len) {
                    handle_line(line);
                }
                len = 0;
                overflow = 0;
            } else if (len < LINE_MAX) {
                line[len++] = c;
            } else {
                overflow = 1;
            }
        }
    }
}
