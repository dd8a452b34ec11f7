/* The body sink of a message being received: memory up to a threshold,
 * then an unlinked temp file written on the libuv thread pool so the event
 * loop never waits on the disk. Input: bytes from our own SMTP session
 * (already dot-unstuffed; any byte values). Runs on one loop thread; only
 * the file write runs on a pool thread, and it touches only the buffer it
 * was handed.
 *
 * Once spilled, appends are gathered in memory and written in chunks of
 * FLUSH_CHUNK, so a DATA stream of small reads costs one pool round trip
 * per chunk, not per read. The tail that never reached FLUSH_CHUNK stays in
 * memory and the spool writes it straight from there. A running CRC32C is
 * kept so the spool never has to read the temp file back to checksum it. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "storage/queue/body_internal.h"
#include "storage/queue/spool_record.h"

#define FLUSH_CHUNK (256u * 1024u)

struct tern_body {
    uv_loop_t *loop;
    char *tmpdir;
    uint64_t threshold;
    uint64_t size;
    uint32_t crc;
    tern_buf mem; /* bytes after file_len */
    int fd;
    uint64_t file_len;
    int error; /* sticky -errno once a write failed */
    /* the write in flight */
    bool inflight;
    bool free_pending; /* tern_body_free came while a write was in flight */
    uv_work_t work;
    tern_buf wbuf;
    int wfd;  /* fd for the pool thread: opened there when fd < 0 */
    int wres; /* 0 or -errno from the pool thread */
    tern_body_cb cb;
    void *cb_arg;
};

tern_body *tern_body_new(uv_loop_t *loop, const char *tmpdir, uint64_t mem_threshold)
{
    tern_body *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->tmpdir = strdup(tmpdir ? tmpdir : "/tmp");
    if (b->tmpdir == NULL) {
        free(b);
        return NULL;
    }
    b->loop = loop;
    b->threshold = mem_threshold;
    b->fd = -1;
    b->wfd = -1;
    tern_buf_init(&b->mem, 0);
    tern_buf_init(&b->wbuf, 0);
    return b;
}

static int body__open_tmp(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    /* Filesystems without O_TMPFILE: a named file unlinked at once. */
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/body.XXXXXX", dir) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unlink(path);
    return fd;
}

static void body__work(uv_work_t *w)
{
    tern_body *b = w->data;
    b->wres = 0;
    if (b->wfd < 0) {
        int fd = body__open_tmp(b->tmpdir);
        if (fd < 0) {
            b->wres = fd;
            return;
        }
        b->wfd = fd;
    }
    const uint8_t *p = b->wbuf.data;
    size_t left = b->wbuf.len;
    off_t off = (off_t)b->file_len;
    while (left > 0) {
        ssize_t n = pwrite(b->wfd, p, left, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            b->wres = -errno;
            return;
        }
        p += n;
        left -= (size_t)n;
        off += n;
    }
}

static void body__destroy(tern_body *b)
{
    if (b->fd >= 0)
        close(b->fd);
    else if (b->wfd >= 0)
        close(b->wfd);
    tern_buf_free(&b->mem);
    tern_buf_free(&b->wbuf);
    free(b->tmpdir);
    free(b);
}

static void body__after(uv_work_t *w, int status)
{
    tern_body *b = w->data;
    b->inflight = false;
    int res = status == UV_ECANCELED ? -ECANCELED : b->wres;
    if (b->wfd >= 0)
        b->fd = b->wfd;
    if (res == 0) {
        b->file_len += b->wbuf.len;
    } else {
        b->error = res;
    }
    b->wbuf.len = 0;
    /* Keep the larger allocation for the next chunk. */
    if (b->mem.len == 0 && b->wbuf.cap > b->mem.cap) {
        tern_buf t = b->mem;
        b->mem = b->wbuf;
        b->wbuf = t;
    }
    if (b->free_pending) {
        body__destroy(b);
        return;
    }
    if (b->cb)
        b->cb(b->cb_arg, res);
}

int tern_body_append(tern_body *b, const uint8_t *data, size_t len, tern_body_cb cb, void *arg)
{
    if (b->inflight)
        return -EBUSY;
    if (b->error)
        return b->error;
    if (len == 0)
        return 0;
    if (b->size + len > SPOOL_MAX_MESSAGE)
        return -EFBIG;
    if (tern_buf_append(&b->mem, data, len) != 0)
        return -ENOMEM;
    b->crc = spool_crc32c(b->crc, data, len);
    b->size += len;
    bool spill = b->fd < 0 ? b->size > b->threshold : b->mem.len >= FLUSH_CHUNK;
    if (!spill)
        return 0;
    /* Hand the gathered bytes to the pool; wbuf is empty here. */
    tern_buf t = b->wbuf;
    b->wbuf = b->mem;
    b->mem = t;
    b->wfd = b->fd;
    b->cb = cb;
    b->cb_arg = arg;
    b->work.data = b;
    int r = uv_queue_work(b->loop, &b->work, body__work, body__after);
    if (r != 0) {
        /* Put the bytes back: nothing was lost, the caller sees the error. */
        t = b->mem;
        b->mem = b->wbuf;
        b->wbuf = t;
        b->error = r;
        return r;
    }
    b->inflight = true;
    return 1;
}

uint64_t tern_body_size(const tern_body *b)
{
    return b->size;
}

void tern_body_free(tern_body *b)
{
    if (b == NULL)
        return;
    if (b->inflight) {
        /* A caller bug, but not worth a use-after-free: finish on the
         * loop when the write returns, without calling back. */
        b->free_pending = true;
        return;
    }
    body__destroy(b);
}

int tern_body__state(const tern_body *b)
{
    if (b->inflight)
        return -EBUSY;
    return b->error;
}

void tern_body__view(const tern_body *b, tern_body_view *v_r)
{
    v_r->fd = b->fd;
    v_r->file_len = b->file_len;
    v_r->mem = b->mem.data;
    v_r->mem_len = b->mem.len;
    v_r->crc = b->crc;
}
