/*
 * vmfork: give the parent and each child their own writable disks
 *
 * Copyright (c) 2026 vmfork developers
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Parent and children must not write the same image.  Every writable
 * disk is seen, whoever made it: -drive, -blockdev with -device
 * drive=NODE (libvirt), blockdev-add and device_add at run time, that is
 * every BlockBackend with write permission, named or anonymous.  The node
 * at its root (the base) becomes a backing file that nobody writes again:
 * before the pause, the parent creates a qcow2 overlay backed by it for
 * itself and one for each child, all the same bytes, and opens its own.
 * After fork() each process puts its overlay on top of the base (what
 * blockdev-snapshot does): the parent the node it opened, a child that
 * node too, moved to the child's own overlay file (take_layer()).  A
 * child does it before its guest runs.  The parent does it once its
 * guest runs again, out of its pause (block_resumed()): block I/O stays
 * drained until then (handler.h), so no request of its guest reaches
 * the base that the children read.  The child first stops touching the
 * image locks, which it shares with the parent through the inherited
 * open file descriptions (see bdrv_file_forget_locks_after_fork()), and
 * makes the base and every node below it read-only and inactive, without
 * any I/O (bdrv_forget_writes_after_fork()): it never flushes them or
 * writes their headers, refcounts or bitmaps, not even when it closes
 * them.  The files under the base get read-only open file descriptions
 * of the child's own (a write would fail in the kernel).
 *
 * A paused parent whose active layer is one that vmfork gave it, and
 * that nothing has written since, keeps it: that layer is empty, so the
 * new children are backed by the image under it, as the children of the
 * fork that made it are (reuse_layer()).  A template forked again and
 * again (a pool) would otherwise grow its chain by an empty layer, and an
 * open file, with each fork.
 *
 * Refused, by name: a writable node that no disk uses (nobody could say
 * who writes it), drivers other than qcow2 and raw over a file or host
 * device, and temporary images (snapshot=on).  Read-only disks (a cdrom)
 * are shared as they are.  Disks with aio=native or aio=io_uring need
 * nothing here: each child drops the parent's Linux AIO context and
 * io_uring, which belong to the event loop, and sets up its own
 * (threads.c).
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qobject/qdict.h"
#include "block/block.h"
#include "block/block_int-common.h"
#include "block/block-global-state.h"
#include "block/block_int-io.h"
#include "block/qcow2.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "hw/qdev-core.h"
#include "system/block-backend.h"
#include "vmfork-internal.h"
#include "trace.h"

/*
 * A layer that vmfork put on top of a disk of this process, and its
 * BlockDriverState.write_gen then, which each write through it moves on.
 * Unlike the rest, these outlive the command: the next fork may keep
 * them.  Node names are never reused in a process.
 */
typedef struct VmforkLayer {
    char *node_name;
    unsigned write_gen;
    /*
     * Once a paused parent keeps this layer: a node of an overlay of the
     * layer's backing node, the same bytes as the children's, opened at
     * the first fork that kept the layer and never used here.  The
     * children of each such fork take it over (take_layer()) instead of
     * opening their overlays.  Its file was removed once it was open.
     * A BlockBackend without permissions holds it, so that QEMU's exit
     * (bdrv_close_all()) closes it as it closes the disks.
     */
    BlockBackend *proto;
    char *proto_key;            /* what it was made for (proto_for()) */
} VmforkLayer;

typedef struct VmforkDisk {
    char *name;                 /* for messages: "disk 'virtio-disk0'" ... */
    char *file_name;            /* for overlay file names: the node name */
    BlockDriverState *base;
    /* the parent's unwritten layer on top of base, which it keeps */
    BlockDriverState *kept;
    VmforkLayer *kept_record;   /* in layers, until the parent's resumed */
    char *parent_path;
    /*
     * The node that each child moves to its own overlay (take_layer()):
     * the parent's new layer, opened before the fork and put on after it,
     * or the one that a kept layer keeps for its children (a reference)
     */
    BlockDriverState *layer;
    GPtrArray *child_paths;
    int64_t size;               /* of base, and so of every overlay */
    char *base_key;             /* overlay_images' key for base's overlays */
} VmforkDisk;

static GPtrArray *disks;        /* of VmforkDisk, during one vmfork */
/* in the parent, from its fork to the reply: each disk's child_paths */
static GPtrArray *child_overlays;
static GPtrArray *layers;       /* of VmforkLayer: this process's tops */
static unsigned vmfork_seq;     /* names the overlays of one command */

static void layer_free(gpointer p)
{
    VmforkLayer *l = p;

    if (l->proto) {
        blk_unref(l->proto);
    }
    g_free(l->proto_key);
    g_free(l->node_name);
    g_free(l);
}

static VmforkLayer *layer_add(GPtrArray *list, BlockDriverState *bs,
                              unsigned write_gen)
{
    VmforkLayer *l = g_new0(VmforkLayer, 1);

    l->node_name = g_strdup(bdrv_get_node_name(bs));
    l->write_gen = write_gen;
    g_ptr_array_add(list, l);
    return l;
}

/*
 * @root's backing node, if @root is a layer that vmfork gave this
 * process and nothing has written it since: then @root is empty, and
 * what it shows is what the node under it shows.
 */
static BlockDriverState *reuse_layer(BlockDriverState *root,
                                     VmforkLayer **record)
{
    BlockDriverState *below;

    GLOBAL_STATE_CODE();
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    below = bdrv_cow_bs(root);
    for (guint i = 0; below && layers && i < layers->len; i++) {
        VmforkLayer *l = layers->pdata[i];

        if (!strcmp(l->node_name, bdrv_get_node_name(root)) &&
            qatomic_read(&root->write_gen) == l->write_gen) {
            *record = l;
            return below;
        }
    }
    return NULL;
}

/* "disk 'virtio-disk0' (node 'libvirt-1-format')", or what there is */
static char *disk_describe(BlockBackend *blk)
{
    const char *node = bdrv_get_node_name(blk_bs(blk));
    g_autofree char *dev = NULL;

    if (*blk_name(blk)) {
        return g_strdup_printf("disk '%s'", blk_name(blk));
    }
    /* The device with an id: virtio-blk-pci, not its virtio-backend */
    for (Object *o = OBJECT(blk_get_attached_dev(blk)); o; o = o->parent) {
        DeviceState *d = (DeviceState *)object_dynamic_cast(o, TYPE_DEVICE);

        if (d && d->id) {
            return g_strdup_printf("disk '%s' (node '%s')", d->id, node);
        }
    }
    dev = blk_get_attached_dev_id(blk);
    if (dev && *dev) {
        return g_strdup_printf("disk '%s' (node '%s')", dev, node);
    }
    return g_strdup_printf("disk node '%s'", node);
}

/* Is @blk one of those that hold the layers' protos?  Not a disk */
static bool is_proto(BlockBackend *blk)
{
    for (guint i = 0; layers && i < layers->len; i++) {
        if (((VmforkLayer *)layers->pdata[i])->proto == blk) {
            return true;
        }
    }
    return false;
}

/* The roots of the writable disks: each once, whoever owns its backend */
static GPtrArray *writable_roots(GPtrArray **names)
{
    GPtrArray *roots = g_ptr_array_new();

    *names = g_ptr_array_new_with_free_func(g_free);
    for (BlockBackend *blk = blk_all_next(NULL); blk;
         blk = blk_all_next(blk)) {
        BlockDriverState *bs = blk_bs(blk);

        if (!bs || !blk_is_writable(blk) || is_proto(blk) ||
            g_ptr_array_find(roots, bs, NULL)) {
            continue;
        }
        g_ptr_array_add(roots, bs);
        g_ptr_array_add(*names, disk_describe(blk));
    }
    return roots;
}

static bool driver_can_fork(BlockDriverState *bs)
{
    const char *drv = bs->drv ? bs->drv->format_name : "";

    return !strcmp(drv, "qcow2") || !strcmp(drv, "raw") ||
           !strcmp(drv, "file") || !strcmp(drv, "host_device");
}

/* Check the nodes under a writable disk's root, and note them covered */
static void check_subtree(VmforkCheck *chk, const char *disk,
                          BlockDriverState *bs, GHashTable *covered)
{
    BdrvChild *child;

    GLOBAL_STATE_CODE();
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    if (!g_hash_table_add(covered, bs)) {
        return;
    }
    if (!driver_can_fork(bs)) {
        vmfork_check_refuse(chk, "%s: node '%s' (driver %s) cannot be "
                            "forked (qcow2 and raw over files or host "
                            "devices can)", disk, bdrv_get_node_name(bs),
                            bs->drv ? bs->drv->format_name : "none");
    }
    /* once per disk: on the temporary overlay, not on its file too */
    if ((bs->open_flags & BDRV_O_TEMPORARY) && bs->drv &&
        !bs->drv->protocol_name) {
        vmfork_check_refuse(chk, "%s uses snapshot=on, a temporary image "
                            "that parent and children would share", disk);
    }
    QLIST_FOREACH(child, &bs->children, next) {
        check_subtree(chk, disk, child->bs, covered);
    }
}

/* The fds of a node over a file: those that link to its file */
static void claim_node_fds(VmforkCheck *chk, BlockDriverState *bs)
{
    g_autofree char *owner = NULL;
    char *real;

    if (!bs->drv || !bs->drv->protocol_name || !*bs->filename) {
        return;
    }
    owner = g_strdup_printf("block node '%s'", bdrv_get_node_name(bs));
    real = realpath(bs->filename, NULL);
    if (real) {
        vmfork_check_claim_fd_path(chk, real, owner);
        free(real);
    } else if (errno == ENOENT) {
        /* unlinked while open: snapshot=on's temporary image */
        g_autofree char *gone = g_strdup_printf("%s (deleted)",
                                                bs->filename);

        vmfork_check_claim_fd_path(chk, gone, owner);
    }
}

/*
 * Someone writes it, or could: a parent holds write permission, or it is
 * open read-write (not only as auto-read-only, which opens read-only
 * until a writer comes)
 */
static bool node_may_be_written(BlockDriverState *bs)
{
    BdrvChild *c;
    uint64_t perm = 0;

    GLOBAL_STATE_CODE();
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    QLIST_FOREACH(c, &bs->parents, next_parent) {
        perm |= c->perm;
    }
    return (perm & BLK_PERM_WRITE) ||
           (!bdrv_is_read_only(bs) && !(bs->open_flags & BDRV_O_AUTO_RDONLY));
}

static void block_check(VmforkCheck *chk)
{
    g_autoptr(GPtrArray) names = NULL;
    g_autoptr(GPtrArray) roots = writable_roots(&names);
    g_autoptr(GHashTable) covered = g_hash_table_new(NULL, NULL);

    for (guint i = 0; i < roots->len; i++) {
        if (!chk->req->overlay_dir) {
            vmfork_check_refuse(chk, "%s is writable: pass 'overlay-dir' for "
                                "its per-clone overlays",
                                (char *)names->pdata[i]);
        }
        check_subtree(chk, names->pdata[i], roots->pdata[i], covered);
    }
    /* Not a disk: the node that children of a kept layer take over */
    for (guint i = 0; layers && i < layers->len; i++) {
        VmforkLayer *l = layers->pdata[i];

        if (l->proto && blk_bs(l->proto)) {
            check_subtree(chk, "vmfork's overlay for children",
                          blk_bs(l->proto), covered);
        }
    }
    for (BlockDriverState *bs = bdrv_next_all_states(NULL); bs;
         bs = bdrv_next_all_states(bs)) {
        if (node_may_be_written(bs) && !g_hash_table_contains(covered, bs)) {
            vmfork_check_refuse(chk, "block node '%s' is writable but no "
                                "disk uses it, so vmfork cannot give it "
                                "overlays (open it read-only or remove it)",
                                bdrv_get_node_name(bs));
        }
        claim_node_fds(chk, bs);
    }
}

static void disk_free(gpointer p)
{
    VmforkDisk *d = p;

    g_free(d->name);
    g_free(d->file_name);
    g_free(d->parent_path);
    if (d->layer) {
        bdrv_unref(d->layer);
    }
    g_free(d->base_key);
    if (d->child_paths) {
        g_ptr_array_free(d->child_paths, true);
    }
    g_free(d);
}

/* Undo block_prepare(): nothing half-created is left behind */
static void block_abort(VmforkRequest *req)
{
    if (!disks) {
        return;
    }
    for (guint i = 0; i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];

        g_clear_pointer(&d->layer, bdrv_unref);
        if (d->parent_path) {
            unlink(d->parent_path);
        }
        for (guint j = 0; d->child_paths && j < d->child_paths->len; j++) {
            unlink(d->child_paths->pdata[j]);
        }
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
}

/*
 * The bytes of overlays that bdrv_img_create() made, by what they depend
 * on besides the backing file's name: its format and the size.  Two qcow2
 * overlays created with the same two differ only in that name, the last
 * thing in their header cluster (qcow2_update_header(): the header, its
 * extensions, the name, zeros), at the same offset, its length in
 * QCowHeader.backing_file_size.  Their tables are empty; nothing in a
 * qcow2 image is unique to it.  So only the first overlay of a format
 * and size is created through the block layer, which opens the image and
 * writes its tables, a few milliseconds, before the guest pauses; every
 * other, whatever its backing file, is written from those bytes with
 * the name replaced (overlay_write_like()), in microseconds.  A parent
 * that runs on gets a new base with each fork, its new layer: a qcow2
 * image, so once a qcow2 overlay of that size exists its next forks
 * create none.  If its base is not qcow2 (raw), an idle moment after its
 * first fork makes the first qcow2 one (overlays_prepare()).
 */
static GHashTable *overlay_images;      /* key -> GBytes */

static char *overlay_key(const char *fmt, int64_t size)
{
    return g_strdup_printf("%s\n%" PRId64, fmt, size);
}

/* Create an overlay at @path with the block layer, and keep its bytes */
static bool overlay_image_create(const char *path, const char *backing,
                                 const char *fmt, int64_t size,
                                 Error **errp)
{
    ERRP_GUARD();
    g_autofree char *contents = NULL;
    gsize len;

    bdrv_img_create(path, "qcow2", backing, fmt, NULL, size,
                    BDRV_O_RDWR | BDRV_O_NO_BACKING, true, errp);
    if (*errp) {
        return false;
    }
    /* Without the bytes, the next overlay is created again */
    if (g_file_get_contents(path, &contents, &len, NULL)) {
        if (!overlay_images) {
            overlay_images = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                   g_free, (GDestroyNotify)
                                                   g_bytes_unref);
        }
        g_hash_table_insert(overlay_images, overlay_key(fmt, size),
                            g_bytes_new_take(g_steal_pointer(&contents),
                                             len));
    }
    return true;
}

/*
 * Where @image, an overlay that bdrv_img_create() wrote, has its backing
 * file's name (@offset, @old_len), if @backing fits there as qcow2 would
 * put it.  false if not: then the overlay is created.
 */
static bool overlay_name_fits(GBytes *image, const char *backing,
                              uint64_t *offset, uint32_t *old_len)
{
    gsize len;
    const uint8_t *src = g_bytes_get_data(image, &len);
    uint32_t cluster_bits;
    uint64_t header_end;

    if (len < sizeof(QCowHeader) || ldl_be_p(src) != QCOW_MAGIC) {
        return false;
    }
    *offset = ldq_be_p(src + offsetof(QCowHeader, backing_file_offset));
    *old_len = ldl_be_p(src + offsetof(QCowHeader, backing_file_size));
    cluster_bits = ldl_be_p(src + offsetof(QCowHeader, cluster_bits));
    if (cluster_bits < MIN_CLUSTER_BITS || cluster_bits > MAX_CLUSTER_BITS) {
        return false;
    }
    header_end = MIN(1ULL << cluster_bits, len);
    /* qcow2_co_change_backing_file() takes no longer name */
    return *offset >= sizeof(QCowHeader) && *old_len <= 1023 &&
           strlen(backing) <= 1023 &&
           *offset + MAX(*old_len, strlen(backing)) <= header_end;
}

/*
 * Write the overlay of @backing at @path: @image, one with the same
 * backing format and size, with the name replaced, straight from it (an
 * image is a few hundred KiB: a copy would write as many pages of this
 * process's heap, most of them shared with its children until then)
 */
static bool overlay_write_like(GBytes *image, const char *backing,
                               uint64_t offset, uint32_t old_len,
                               const char *path, Error **errp)
{
    static const char zeros[1024];
    gsize len;
    const uint8_t *src = g_bytes_get_data(image, &len);
    uint32_t name_len = strlen(backing);
    uint8_t size_be[4];
    uint64_t rest = offset + MAX(old_len, name_len);
    struct {
        const void *buf;
        size_t len;
    } part[] = {
        { src, offsetof(QCowHeader, backing_file_size) },
        { size_be, sizeof(size_be) },
        { src + offsetof(QCowHeader, backing_file_size) + sizeof(size_be),
          offset - offsetof(QCowHeader, backing_file_size) - sizeof(size_be) },
        { backing, name_len },
        { zeros, old_len > name_len ? old_len - name_len : 0 },
        { src + rest, len - rest },
    };
    /* The mode that file-posix creates images with */
    int fd = qemu_create(path, O_WRONLY | O_EXCL, 0644, errp);

    if (fd < 0) {
        return false;
    }
    stl_be_p(size_be, name_len);
    for (size_t i = 0; i < ARRAY_SIZE(part); i++) {
        if (qemu_write_full(fd, part[i].buf, part[i].len) != part[i].len) {
            error_setg_errno(errp, errno, "cannot write '%s'", path);
            qemu_close(fd);
            return false;
        }
    }
    if (qemu_close(fd) < 0) {
        error_setg_errno(errp, errno, "cannot write '%s'", path);
        return false;
    }
    return true;
}

static bool create_overlay(VmforkDisk *d, const char *path, Error **errp)
{
    Error *local_err = NULL;
    const char *backing = d->base->filename;
    GBytes *like;
    uint64_t offset;
    uint32_t old_len;

    if (access(path, F_OK) == 0) {
        error_setg(errp, "vmfork: overlay '%s' exists already", path);
        return false;
    }
    like = overlay_images ? g_hash_table_lookup(overlay_images, d->base_key)
                          : NULL;
    if (like && overlay_name_fits(like, backing, &offset, &old_len)) {
        if (!overlay_write_like(like, backing, offset, old_len, path,
                                &local_err)) {
            error_propagate_prepend(errp, local_err, "vmfork: %s: ",
                                    d->name);
            unlink(path);
            return false;
        }
        return true;
    }
    if (!overlay_image_create(path, backing, d->base->drv->format_name,
                              d->size, &local_err)) {
        error_propagate_prepend(errp, local_err, "vmfork: %s: ", d->name);
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

/*
 * For a paused parent that keeps its layer (d->kept): the node its
 * children take over, an overlay of the same base opened at the first
 * such fork and kept with the layer's record for the next (its own
 * parent's copy is never used).  Made again if the base's file name, the
 * size or the overlay directory (and so the file system, whose
 * properties file-posix probed when it opened the file) changed.
 */
static bool proto_for(VmforkRequest *req, VmforkDisk *d, unsigned seq,
                      Error **errp)
{
    VmforkLayer *rec = d->kept_record;
    BlockDriverState *bs;
    g_autofree char *key = g_strdup_printf("%s\n%s\n%s", d->base_key,
                                           d->base->filename,
                                           req->overlay_dir);
    g_autofree char *path = NULL;

    if (!rec->proto || strcmp(rec->proto_key, key)) {
        g_clear_pointer(&rec->proto, blk_unref);
        g_clear_pointer(&rec->proto_key, g_free);
        path = g_strdup_printf("%s/%s-%d-%u-proto.qcow2", req->overlay_dir,
                               d->file_name, (int)getpid(), seq);
        if (!create_overlay(d, path, errp)) {
            return false;
        }
        bs = open_overlay(d, path, errp);
        unlink(path);
        if (!bs) {
            error_prepend(errp, "vmfork: %s: ", d->name);
            return false;
        }
        rec->proto = blk_new(qemu_get_aio_context(), 0, BLK_PERM_ALL);
        if (blk_insert_bs(rec->proto, bs, errp) < 0) {
            g_clear_pointer(&rec->proto, blk_unref);
        }
        bdrv_unref(bs);
        if (!rec->proto) {
            return false;
        }
        rec->proto_key = g_steal_pointer(&key);
    }
    d->layer = blk_bs(rec->proto);
    bdrv_ref(d->layer);
    return true;
}

static bool block_prepare(VmforkRequest *req, Error **errp)
{
    unsigned seq = vmfork_seq++;
    g_autoptr(GPtrArray) names = NULL;
    g_autoptr(GPtrArray) roots = writable_roots(&names);

    assert(!disks);
    disks = g_ptr_array_new_with_free_func(disk_free);
    for (guint r = 0; r < roots->len; r++) {
        VmforkDisk *d = g_new0(VmforkDisk, 1);

        g_ptr_array_add(disks, d);
        d->name = g_strdup(names->pdata[r]);
        d->base = roots->pdata[r];
        /* A paused guest cannot write it before the fork */
        if (!req->was_running) {
            BlockDriverState *below = reuse_layer(d->base,
                                                  &d->kept_record);

            if (below) {
                d->kept = d->base;
                d->base = below;
            }
        }
        d->file_name = g_strdup(bdrv_get_node_name(d->base));
        g_strdelimit(d->file_name, "/", '_');
        bdrv_refresh_filename(d->base);
        d->child_paths = g_ptr_array_new_with_free_func(g_free);
        d->size = bdrv_getlength(d->base);
        if (d->size < 0) {
            error_setg_errno(errp, -d->size, "vmfork: %s: cannot get its "
                             "size", d->name);
            goto fail;
        }
        d->base_key = overlay_key(d->base->drv->format_name, d->size);

        if (!d->kept) {
            d->parent_path = g_strdup_printf("%s/%s-%d-%u-parent.qcow2",
                                             req->overlay_dir, d->file_name,
                                             (int)getpid(), seq);
            if (!create_overlay(d, d->parent_path, errp)) {
                g_clear_pointer(&d->parent_path, g_free);
                goto fail;
            }
            /*
             * Opened now, while the guest runs: each child takes it over
             * instead of opening its own overlay, the same bytes
             */
            d->layer = open_overlay(d, d->parent_path, errp);
            if (!d->layer) {
                error_prepend(errp, "vmfork: %s: ", d->name);
                goto fail;
            }
        }
        for (int i = 0; i < req->count; i++) {
            char *path = g_strdup_printf("%s/%s-%d-%u-child%d.qcow2",
                                         req->overlay_dir, d->file_name,
                                         (int)getpid(), seq, i);

            if (!create_overlay(d, path, errp)) {
                g_free(path);
                goto fail;
            }
            g_ptr_array_add(d->child_paths, path);
        }
        if (d->kept && !proto_for(req, d, seq, errp)) {
            goto fail;
        }
        trace_vmfork_disk_overlays(d->name, d->parent_path ?: "(kept)",
                                   req->count);
    }
    return true;

fail:
    block_abort(req);
    return false;
}

/*
 * What the children inherit must be on the images: vm_stop() flushed
 * them, but a guest that was paused already may have had block requests
 * since (a flush of nothing dirty costs next to nothing).  A child never
 * writes back anything of the bases' caches.
 */
static bool block_paused(VmforkRequest *req, Error **errp)
{
    for (guint i = 0; !req->was_running && disks && i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];
        int ret;

        /*
         * Nothing writes a paused guest's disk here (block jobs are
         * refused), but if something had, the children would miss it
         */
        if (d->kept && qatomic_read(&d->kept->write_gen) !=
                       d->kept_record->write_gen) {
            error_setg(errp, "vmfork: %s was written while the fork was "
                       "prepared; try again", d->name);
            return false;
        }
        ret = bdrv_flush(d->base);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "vmfork: %s: flush failed",
                             d->name);
            return false;
        }
    }
    return true;
}

/* Put @overlay on top of the disk's base, as blockdev-snapshot does */
static bool switch_to(VmforkDisk *d, BlockDriverState *overlay,
                      Error **errp)
{
    int ret;

    bdrv_drained_begin(d->base);
    /* A disk on an IOThread: the overlay joins the base's AioContext */
    ret = bdrv_try_change_aio_context(overlay, bdrv_get_aio_context(d->base),
                                      NULL, errp);
    if (ret == 0) {
        ret = bdrv_append(overlay, d->base, errp);
    }
    bdrv_drained_end(d->base);
    bdrv_unref(overlay);        /* the graph holds it now */
    if (ret < 0) {
        error_prepend(errp, "vmfork: %s: ", d->name);
        return false;
    }
    return true;
}

/* What overlays_prepare() makes, once the command is over */
typedef struct OverlaysNext {
    GPtrArray *bases;           /* of char *: the new layers' files */
    GArray *sizes;              /* of int64_t: their sizes */
    QEMUBH *bh;
} OverlaysNext;

static void overlays_next_free(OverlaysNext *next)
{
    if (next->bh) {
        qemu_bh_delete(next->bh);
    }
    g_ptr_array_unref(next->bases);
    g_array_unref(next->sizes);
    g_free(next);
}

/* The image goes to a file of its own in $TMPDIR, removed at once */
static void overlays_prepare(void *opaque)
{
    OverlaysNext *next = opaque;
    g_autofree char *path = NULL;
    int fd = g_file_open_tmp("vmfork-overlay-XXXXXX.qcow2", &path, NULL);

    if (fd < 0) {
        overlays_next_free(next);
        return;
    }
    close(fd);
    for (guint i = 0; i < next->bases->len; i++) {
        const char *base = next->bases->pdata[i];
        int64_t size = g_array_index(next->sizes, int64_t, i);
        g_autofree char *key = overlay_key("qcow2", size);
        Error *err = NULL;

        if (overlay_images && g_hash_table_contains(overlay_images, key)) {
            continue;
        }
        /* Not an error: the next fork creates its overlays itself */
        if (!overlay_image_create(path, base, "qcow2", size, &err)) {
            error_free(err);
        }
    }
    unlink(path);
    overlays_next_free(next);
}

/*
 * After a fork that succeeded: only the bytes for the bases of the next
 * fork stay.  Those that a parent that runs on lacks for its new layers,
 * the next bases, are made once the command is over, in an idle bottom
 * half: after the reply, and after what the main loop has to do then
 */
static void overlays_for_next_fork(GPtrArray *keep, OverlaysNext *next)
{
    GHashTableIter iter;
    gpointer key;

    if (overlay_images) {
        g_hash_table_iter_init(&iter, overlay_images);
        while (g_hash_table_iter_next(&iter, &key, NULL)) {
            if (!g_ptr_array_find_with_equal_func(keep, key, g_str_equal,
                                                  NULL)) {
                g_hash_table_iter_remove(&iter);
            }
        }
    }
    if (next->bases->len) {
        next->bh = qemu_bh_new(overlays_prepare, next);
        qemu_bh_schedule_idle(next->bh);
    } else {
        overlays_next_free(next);
    }
}

/*
 * In the parent once its guest runs (or stays paused as asked): the new
 * layers on its disks, then their requests go on, to the layers.  After
 * an error the command fails and its children go: their overlays, and
 * the parent's that were not put on, are removed.
 */
static bool block_resumed(VmforkRequest *req, Error **errp)
{
    g_autoptr(GPtrArray) keep = NULL;     /* overlay_images keys */
    /* A paused parent keeps an unwritten layer: its base is the next */
    bool stays_paused = !req->was_running || req->parent_stays_paused;
    OverlaysNext *next;
    GPtrArray *tops;
    bool ok;

    if (!disks) {
        return true;    /* the fork failed: block_abort() undid it all */
    }
    /*
     * No writable disk: nothing to switch.  Only forget the layers of a
     * disk unplugged since the last fork; block_done() frees the empty
     * list.
     */
    if (!disks->len) {
        g_clear_pointer(&layers, g_ptr_array_unref);
        return true;
    }
    ok = !vmfork_fault_parent_fails("block", errp);
    keep = g_ptr_array_new_with_free_func(g_free);
    next = g_new0(OverlaysNext, 1);
    next->bases = g_ptr_array_new_with_free_func(g_free);
    next->sizes = g_array_new(false, false, sizeof(int64_t));
    tops = g_ptr_array_new_with_free_func(layer_free);
    /* For the reply: where each child's disks are */
    child_overlays = g_ptr_array_new_with_free_func(
        (GDestroyNotify)g_ptr_array_unref);
    for (guint i = 0; i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];
        BlockDriverState *overlay;
        bool switched = false;

        if (d->kept) {
            VmforkLayer *l = layer_add(tops, d->kept,
                                       d->kept_record->write_gen);

            /* The next children of this layer take it over too */
            l->proto = g_steal_pointer(&d->kept_record->proto);
            l->proto_key = g_steal_pointer(&d->kept_record->proto_key);
            g_ptr_array_add(keep, g_strdup(d->base_key));
        } else if (ok) {
            overlay = g_steal_pointer(&d->layer);
            layer_add(tops, overlay, qatomic_read(&overlay->write_gen));
            switched = switch_to(d, overlay, errp);
            ok = switched;
            if (switched && stays_paused) {
                g_ptr_array_add(keep, g_strdup(d->base_key));
            } else if (switched) {
                char *key = overlay_key("qcow2", d->size);

                /* Its new layer, the next base, is a qcow2 image */
                if (!overlay_images ||
                    !g_hash_table_contains(overlay_images, key)) {
                    g_ptr_array_add(next->bases, g_strdup(d->parent_path));
                    g_array_append_val(next->sizes, d->size);
                }
                g_ptr_array_add(keep, key);
            }
        }
        if (!ok && !d->kept && !switched) {
            g_clear_pointer(&d->layer, bdrv_unref);
            unlink(d->parent_path);
        }
        g_ptr_array_add(child_overlays, g_steal_pointer(&d->child_paths));
    }
    if (ok) {
        overlays_for_next_fork(keep, next);
    } else {
        /* After a failure, no layer is known to be one of ours */
        g_ptr_array_set_size(tops, 0);
        for (guint i = 0; i < child_overlays->len; i++) {
            GPtrArray *paths = child_overlays->pdata[i];

            for (guint j = 0; j < paths->len; j++) {
                unlink(paths->pdata[j]);
            }
        }
        overlays_next_free(next);
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
    g_clear_pointer(&layers, g_ptr_array_unref);
    layers = tops;
    return ok;
}

/* In the parent: child @index's overlays, one for each writable disk */
static void block_child_info(VmforkRequest *req, int index,
                             VmforkChild *info)
{
    strList **tail = &info->overlays;

    for (guint i = 0; child_overlays && i < child_overlays->len; i++) {
        GPtrArray *paths = child_overlays->pdata[i];

        QAPI_LIST_APPEND(tail, g_strdup(paths->pdata[index]));
    }
    info->has_overlays = info->overlays != NULL;
}

static void block_done(VmforkRequest *req)
{
    g_clear_pointer(&child_overlays, g_ptr_array_unref);
    g_clear_pointer(&disks, g_ptr_array_unref);
}

/*
 * In a child: its overlay in place of the parent's layer that the parent
 * keeps, backed by the base as the parent's layer is.  That layer, which
 * the parent writes once its guest runs, is then dropped without a write.
 */
static bool replace_kept(VmforkDisk *d, BlockDriverState *overlay,
                         Error **errp)
{
    BlockDriverState *kept = d->kept;
    int ret;

    bdrv_ref(kept);
    bdrv_drained_begin(kept);
    /* A disk on an IOThread: the overlay joins its AioContext */
    ret = bdrv_try_change_aio_context(overlay, bdrv_get_aio_context(kept),
                                      NULL, errp);
    if (ret == 0) {
        bdrv_drained_begin(overlay);
        bdrv_graph_wrlock();
        ret = bdrv_set_backing_hd_drained(overlay, d->base, errp);
        if (ret == 0) {
            ret = bdrv_replace_node(kept, overlay, errp);
        }
        bdrv_graph_wrunlock();
        bdrv_drained_end(overlay);
    }
    bdrv_drained_end(kept);
    bdrv_unref(overlay);        /* the graph holds it now */
    /* The layer, its file and the base below it are the parent's */
    bdrv_forget_writes_after_fork(kept);
    bdrv_unref(kept);
    if (ret < 0) {
        error_prepend(errp, "vmfork: %s: ", d->name);
        return false;
    }
    return true;
}

/*
 * The files under the base, in a child: the fds it inherited are the
 * parent's open file descriptions, writable.  Each becomes a read-only
 * one of the child's own (vmfork_fd_reopen_readonly() on what this
 * collects), so the kernel, not only the block layer, keeps the child
 * from writing the base, and the parent's image locks (on its open file
 * descriptions) stay out of the child's reach.
 */
static void base_files(BlockDriverState *bs, GHashTable *seen,
                       GPtrArray *paths)
{
    BdrvChild *child;

    GLOBAL_STATE_CODE();
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    if (!g_hash_table_add(seen, bs)) {
        return;
    }
    if (bs->drv && bs->drv->protocol_name && *bs->filename) {
        g_ptr_array_add(paths, bs->filename);
    }
    QLIST_FOREACH(child, &bs->children, next) {
        base_files(child->bs, seen, paths);
    }
}

static BlockDriverState *layer_file(BlockDriverState *layer)
{
    GLOBAL_STATE_CODE();
    GRAPH_RDLOCK_GUARD_MAINLOOP();

    return layer->file ? layer->file->bs : NULL;
}

/*
 * In a child: d->layer, the parent's new layer opened before the fork and
 * not yet used (or the node that a kept layer keeps for its children,
 * proto_for()), on the child's overlay at @path instead.  All the
 * overlays of a disk are the same bytes (create_overlay()), so what the
 * node read when it opened is the child's too; only its file changes, to
 * an open file description of the child's own, with its own image locks.
 * Opening the overlay anew would read and parse those bytes again,
 * through the thread pool, allocating as it goes, each allocation a
 * copy-on-write fault of a page of the heap that the child shares with
 * its parent.
 */
static BlockDriverState *take_layer(VmforkDisk *d, const char *path,
                                    Error **errp)
{
    BlockDriverState *layer = g_steal_pointer(&d->layer);
    BlockDriverState *file = layer_file(layer);

    if (!file || bdrv_file_take_image_after_fork(file, path, errp) < 0) {
        error_prepend(errp, "vmfork: %s: ", d->name);
        /* The parent's: dropped without a write */
        bdrv_forget_writes_after_fork(layer);
        bdrv_unref(layer);
        return NULL;
    }
    bdrv_refresh_filename(layer);
    return layer;
}

/* In child number @index, before its guest runs */
static bool block_child(VmforkRequest *req, int index, Error **errp)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(NULL, NULL);
    g_autoptr(GPtrArray) paths = g_ptr_array_new();      /* bs->filename */

    /* The locks are the parent's, through the shared open files */
    bdrv_file_forget_locks_after_fork();

    /* The parent's layers; this child's are its own overlays */
    g_clear_pointer(&layers, g_ptr_array_unref);
    layers = g_ptr_array_new_with_free_func(layer_free);
    for (guint i = 0; disks && i < disks->len; i++) {
        VmforkDisk *d = disks->pdata[i];
        BlockDriverState *overlay;

        overlay = take_layer(d, d->child_paths->pdata[index], errp);
        if (!overlay) {
            return false;
        }
        layer_add(layers, overlay, qatomic_read(&overlay->write_gen));
        if (!(d->kept ? replace_kept(d, overlay, errp) :
              switch_to(d, overlay, errp))) {
            return false;
        }
        /* The base is the parent's too: read it, never write it */
        bdrv_forget_writes_after_fork(d->base);
        base_files(d->base, seen, paths);
    }
    if (!vmfork_fd_reopen_readonly(paths, errp)) {
        return false;
    }
    g_clear_pointer(&disks, g_ptr_array_unref);
    return true;
}

static const VmforkHandler block_handler = {
    .name = "block",
    .priority = VMFORK_PRIO_BLOCK,
    .check = block_check,
    .prepare = block_prepare,
    .paused = block_paused,
    .child = block_child,
    .resumed = block_resumed,
    .child_info = block_child_info,
    .done = block_done,
    .abort = block_abort,
};

static void block_register(void)
{
    vmfork_register_handler(&block_handler);
}
type_init(block_register);
