/*
 * Runs a fuzz target's LLVMFuzzerTestOneInput() once on each file given,
 * or on each file of each directory given, without libFuzzer: any compiler,
 * no sanitizer needed.  The unit suite replays the seed corpus this way, so
 * that every input in tests/fuzz/corpus (crashes found earlier included)
 * stays checked by `meson test --suite unit`.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static gboolean replay_file(const char *path)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *data = NULL;
    gsize size;

    if (!g_file_get_contents(path, &data, &size, &err)) {
        fprintf(stderr, "replay: %s\n", err->message);
        return FALSE;
    }
    printf("replay: %s (%" G_GSIZE_FORMAT " bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput((const uint8_t *)data, size);
    return TRUE;
}

static int compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    guint n = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
        GDir *dir;
        const char *name;

        if (!g_file_test(argv[i], G_FILE_TEST_IS_DIR)) {
            g_ptr_array_add(paths, g_strdup(argv[i]));
        } else if ((dir = g_dir_open(argv[i], 0, &err))) {
            while ((name = g_dir_read_name(dir))) {
                g_ptr_array_add(paths, g_build_filename(argv[i], name, NULL));
            }
            g_dir_close(dir);
            g_ptr_array_sort(paths, compare_names);
        } else {
            fprintf(stderr, "replay: %s\n", err->message);
            return 1;
        }
        for (guint j = 0; j < paths->len; j++) {
            if (!replay_file(paths->pdata[j])) {
                return 1;
            }
            n++;
        }
    }
    if (n == 0) {
        fprintf(stderr, "replay: no input\n");
        return 1;
    }
    printf("replay: %u inputs, no failure\n", n);
    return 0;
}
