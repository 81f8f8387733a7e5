/*
 * vmfork: give the parent and each child their own writable disks
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Parent and children must not write the same image.  For each writable
 * disk, the image that is active at the fork (the base) becomes a backing
 * file that nobody writes again: before the pause, the parent creates a
 * qcow2 overlay backed by it for itself and one for each child, and opens
 * its own.  After fork() each process puts its overlay on top of the base
 * (what blockdev-snapshot does) before its guest runs again.  The child
 * first stops touching the image locks, which it shares with the parent
 * through the inherited open file descriptions (see
 * bdrv_file_forget_locks_after_fork()), and drops its copy of the
 * parent's overlay without writing to it.
 *
 * Read-only disks are shared as they are.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "block/block.h"
#include "block/block_int-common.h"
#include "block/block-global-state.h"
#include "system/block-backend.h"
#include "vmfork-internal.h"
#include "trace.h"

typedef struct VmforkDisk {
    char *name;
    BlockDriverState *base;
    char *parent_path;
    BlockDriverState *parent_overlay;   /* opened before the pause */
    GPtrArray *child_paths;
} VmforkDisk;

static GPtrArray *disks;        /* of VmforkDisk, during one vmfork */
static unsigned vmfork_seq;     /* names the overlays of one command */

static const char *disk_name(BlockBackend *blk)
{
    return *blk_name(blk) ? blk_name(blk) : bdrv_get_node_name(blk_bs(blk));
}

static bool disk_is_writable(BlockBackend *blk)
{
    return blk_bs(blk) && blk_is_writable(blk);
}

void vmfork_disks_check(const char *overlay_dir, GString *why)
{
    for (BlockBackend *blk = blk_next(NULL); blk; blk = blk_next(blk)) {
        BlockDriverState *bs = blk_bs(blk);

        if (!disk_is_writable(blk)) {
            continue;
        }
        if (bs->open_flags & BDRV_O_TEMPORARY) {
            vmfork_blocker_add(why, "disk '%s' uses snapshot=on, a temporary "
                               "image that parent and children would share",
                               disk_name(blk));
        } else if (!overlay_dir) {
            vmfork_blocker_add(why, "disk '%s' is writable: pass "
                               "'overlay-dir' for its per-clone overlays",
                               disk_name(blk));
        }
    }
}

static void disk_free(gpointer p)
{
    VmforkDisk *d = p;

    g_free(d->name);
    g_free(d->parent_path);
    if (d->child_paths) {
        g_ptr_array_free(d->child_paths, true);
    }
    g_free(d);
}

/* Undo vmfork_disks_prepare(): nothing half-created is left behind */
void vmfork_disks_abort(void)
{
    if (!disks) {
        return;
    }
    for (guint i = 0; i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];

        if (d->parent_overlay) {
            bdrv_unref(d->parent_overlay);
        }
        if (d->parent_path) {
            unlink(d->parent_path);
        }
        for (guint j = 0; d->child_paths && j < d->child_paths->len; j++) {
            unlink(d->child_paths->pdata[j]);
        }
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
}

static bool create_overlay(VmforkDisk *d, const char *path, Error **errp)
{
    Error *local_err = NULL;
    int64_t size = bdrv_getlength(d->base);

    if (size < 0) {
        error_setg_errno(errp, -size, "vmfork: disk '%s': cannot get its "
                         "size", d->name);
        return false;
    }
    if (access(path, F_OK) == 0) {
        error_setg(errp, "vmfork: overlay '%s' exists already", path);
        return false;
    }
    bdrv_img_create(path, "qcow2", d->base->filename,
                    d->base->drv->format_name, NULL, size,
                    BDRV_O_RDWR | BDRV_O_NO_BACKING, true, &local_err);
    if (local_err) {
        error_propagate_prepend(errp, local_err, "vmfork: disk '%s': ",
                                d->name);
        unlink(path);
        return false;
    }
    return true;
}

static BlockDriverState *open_overlay(VmforkDisk *d, const char *path,
                                      Error **errp)
{
    QDict *options = qdict_new();
    int flags = d->base->open_flags;

    flags &= ~(BDRV_O_SNAPSHOT | BDRV_O_COPY_ON_READ);
    flags |= BDRV_O_RDWR | BDRV_O_NO_BACKING;
    qdict_put_str(options, "driver", "qcow2");
    return bdrv_open(path, NULL, options, flags, errp);
}

bool vmfork_disks_prepare(const VmforkRequest *req, Error **errp)
{
    unsigned seq = vmfork_seq++;

    assert(!disks);
    disks = g_ptr_array_new_with_free_func(disk_free);
    for (BlockBackend *blk = blk_next(NULL); blk; blk = blk_next(blk)) {
        VmforkDisk *d;

        if (!disk_is_writable(blk)) {
            continue;
        }
        d = g_new0(VmforkDisk, 1);
        g_ptr_array_add(disks, d);
        d->name = g_strdup(disk_name(blk));
        d->base = blk_bs(blk);
        bdrv_refresh_filename(d->base);
        d->child_paths = g_ptr_array_new_with_free_func(g_free);

        d->parent_path = g_strdup_printf("%s/%s-%d-%u-parent.qcow2",
                                         req->overlay_dir, d->name,
                                         (int)getpid(), seq);
        if (!create_overlay(d, d->parent_path, errp)) {
            g_clear_pointer(&d->parent_path, g_free);
            goto fail;
        }
        for (int i = 0; i < req->count; i++) {
            char *path = g_strdup_printf("%s/%s-%d-%u-child%d.qcow2",
                                         req->overlay_dir, d->name,
                                         (int)getpid(), seq, i);

            if (!create_overlay(d, path, errp)) {
                g_free(path);
                goto fail;
            }
            g_ptr_array_add(d->child_paths, path);
        }
        d->parent_overlay = open_overlay(d, d->parent_path, errp);
        if (!d->parent_overlay) {
            goto fail;
        }
        trace_vmfork_disk_overlays(d->name, d->parent_path, req->count);
    }
    return true;

fail:
    vmfork_disks_abort();
    return false;
}

/* Put @overlay on top of the disk's base, as blockdev-snapshot does */
static bool switch_to(VmforkDisk *d, BlockDriverState *overlay,
                      Error **errp)
{
    int ret;

    bdrv_drained_begin(d->base);
    ret = bdrv_append(overlay, d->base, errp);
    bdrv_drained_end(d->base);
    bdrv_unref(overlay);        /* the graph holds it now */
    if (ret < 0) {
        error_prepend(errp, "vmfork: disk '%s': ", d->name);
        return false;
    }
    return true;
}

/* In the parent after fork(), before its guest runs again */
bool vmfork_disks_parent_switch(Error **errp)
{
    bool ok = true;

    for (guint i = 0; disks && i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];
        BlockDriverState *overlay = d->parent_overlay;

        d->parent_overlay = NULL;
        if (ok) {
            ok = switch_to(d, overlay, errp);
        } else {
            bdrv_unref(overlay);
        }
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
    return ok;
}

/* In child number @index, before its guest runs */
bool vmfork_disks_child_switch(int index, Error **errp)
{
    for (guint i = 0; disks && i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];
        BlockDriverState *overlay;

        /* The parent's overlay is the parent's: close our copy unused */
        bdrv_unref(d->parent_overlay);
        d->parent_overlay = NULL;
        overlay = open_overlay(d, d->child_paths->pdata[index], errp);
        if (!overlay || !switch_to(d, overlay, errp)) {
            return false;
        }
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
    return true;
}
