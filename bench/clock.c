/*
 * vmfork-bench: host clocks
 *
 * Copyright (c) 2026 vmfork developers
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every host time in vmfork-bench is CLOCK_MONOTONIC in ns.  QEMU stamps
 * its QMP events and (with -msg timestamp=on) its trace lines with
 * CLOCK_REALTIME; they are moved onto CLOCK_MONOTONIC with the difference
 * of the two clocks measured right before each measurement.
 */

#include "bench.h"

#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

static double calibrated_hz;

gint64 now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static gint64 realtime_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

guint64 host_rdtsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#else
    return 0;
#endif
}

/* A (tsc, monotonic) pair taken as close together as we can */
static void tsc_pair(guint64 *tsc, gint64 *mono)
{
    gint64 best = G_MAXINT64;

    for (int i = 0; i < 16; i++) {
        gint64 a = now_ns();
        guint64 t = host_rdtsc();
        gint64 b = now_ns();

        if (b - a < best) {
            best = b - a;
            *tsc = t;
            *mono = a + (b - a) / 2;
        }
    }
}

double tsc_calibrate(void)
{
    guint64 t0, t1;
    gint64 m0, m1;

    tsc_pair(&t0, &m0);
    g_usleep(200000);
    tsc_pair(&t1, &m1);
    if (t1 > t0 && m1 > m0) {
        calibrated_hz = (double)(t1 - t0) * 1e9 / (double)(m1 - m0);
    }
    return calibrated_hz;
}

double tsc_hz(void)
{
    return calibrated_hz;
}

gint64 realtime_offset_ns(void)
{
    gint64 best = G_MAXINT64, off = 0;

    for (int i = 0; i < 8; i++) {
        gint64 a = now_ns();
        gint64 r = realtime_ns();
        gint64 b = now_ns();

        if (b - a < best) {
            best = b - a;
            off = r - (a + (b - a) / 2);
        }
    }
    return off;
}

gint64 event_mono_ns(JsonNode *event, gint64 rt_off)
{
    JsonObject *o = json_node_get_object(event);
    JsonObject *ts;

    if (!json_object_has_member(o, "timestamp")) {
        return 0;
    }
    ts = json_object_get_object_member(o, "timestamp");
    return json_object_get_int_member(ts, "seconds") * 1000000000LL +
           json_object_get_int_member(ts, "microseconds") * 1000LL - rt_off;
}
