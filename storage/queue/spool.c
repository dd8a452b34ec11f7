/* The durable spool (see spool.h): append-only segment files written by one
 * writer thread with group commit, an in-memory index of live messages, and
 * replay at open. Input trusted: envelopes and bodies handed in by our own
 * sessions. Not trusted: the segment files, which are checked record by
 * record on replay (header checksum, bounds, payload checksum) and again on
 * every read.
 *
 * Layout: DIR/lock (flock, one writer process), DIR/tmp/ (body temp files,
 * unlinked), DIR/segments/NNNNNNNNNN.seg. Record format: spool_record.h.
 *
 * Threads: submitters put jobs on a queue (qlock + qcond); the writer takes
 * everything pending (up to group_commit_max), appends the records, runs one
 * fdatasync, then updates the index (ilock) and posts each completion to
 * the submitting client's loop (client lock + uv_async_send). Readers
 * (each, read_message, complete) take ilock only. Lock order: qlock and
 * ilock are never held together; a client lock is taken alone.
 *
 * Space: a segment is deleted when it is not the current one, holds no live
 * message, and holds no COMPLETE record for a message in a segment that
 * still exists. The last rule matters: deleting the file holding the
 * tombstone before the file holding the message would resurrect the
 * message on the next replay. Deletions are unlinked and the directory
 * fsynced one by one, in dependency order, for the same reason. */
#include "storage/queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"
#include "storage/queue/body_internal.h"
#include "storage/queue/spool_record.h"
#include "storage/queue/spool_stats.h"

#define DEFAULT_SEGMENT_SIZE (64ull << 20)
#define DEFAULT_GROUP_MAX 1024u
#define COPY_BUF (256u * 1024u)

typedef struct seg_dep {
    uint32_t seg;   /* a segment holding COMPLETE records ... */
    uint32_t count; /* ... for this many messages of ours */
} seg_dep;

typedef struct seg {
    uint32_t num;
    int fd;
    uint64_t size;
    uint64_t live;
    uint64_t tombs_out; /* our COMPLETE records whose target segment exists */
    seg_dep *tombs_in;
    size_t n_in, cap_in;
    unsigned refs; /* readers inside pread */
    bool doomed;   /* unlinked; close when the last reader leaves */
    bool unsynced;
    bool broken; /* an fdatasync failed: append no more */
    struct seg *prev, *next;
} seg;

typedef struct entry {
    char qid[TERN_QID_LEN];
    seg *seg;
    uint64_t rec_off;   /* record header */
    uint32_t head_len;  /* payload bytes before the message: u32 + envelope */
    uint64_t msg_len;
    uint32_t crc;       /* payload checksum */
    tern_envelope *env;
    unsigned refs;      /* the index holds one */
    struct entry *hnext, *prev, *next;
} entry;

typedef enum { JOB_MSG, JOB_COMPLETE, JOB_RCPT } job_type;

typedef struct job {
    job_type type;
    struct job *next;
    char qid[TERN_QID_LEN];
    /* JOB_MSG */
    tern_spool_client *client;
    tern_spool_submit_cb cb;
    void *arg;
    uint8_t *envblob;
    size_t envlen;
    tern_envelope *env; /* the index's copy */
    uint8_t *prefix;
    size_t prefix_len;
    tern_body *body;
    /* JOB_COMPLETE, JOB_RCPT */
    uint32_t target;
    uint32_t rcpt_idx; /* JOB_RCPT */
    uint8_t rcpt_state; /* JOB_RCPT: 1 done, 2 queued, 0 retry state (payload in envblob) */
    /* results */
    seg *seg;
    uint64_t rec_off;
    uint64_t msg_len;
    uint32_t crc;
    int status;
    const char *error;
} job;

struct tern_spool_client {
    tern_spool *spool;
    uv_loop_t *loop;
    uv_async_t async;
    pthread_mutex_t lock;
    job *done_head, *done_tail; /* under lock */
    size_t pending;             /* loop thread only */
    bool closing, closed;       /* loop thread only */
};

struct tern_spool {
    char *dir, *segdir, *tmpdir;
    int segdir_fd, lock_fd;
    bool readonly;
    tern_spool_opts opts;

    pthread_mutex_t ilock;
    entry **buckets;
    size_t nbuckets, nentries;
    entry *head, *tail; /* arrival order */
    seg *segs_head, *segs_tail;
    size_t nsegs;
    seg *cur; /* writer thread; read under ilock */
    tern_spool_stats st;

    pthread_mutex_t qlock;
    pthread_cond_t qcond;
    job *qhead, *qtail;
    size_t qlen;
    size_t qmsgs;       /* JOB_MSG jobs in the queue */
    bool stopping;
    bool sink_pending;
    tern_spool_sink_cb new_sink;
    void *new_sink_arg;
    pthread_t writer;
    bool writer_running;

    tern_spool_sink_cb sink; /* writer thread only */
    void *sink_arg;
};

/* ---- small helpers ---- */

static char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static void seg_name(char out[32], uint32_t num)
{
    snprintf(out, 32, "%010" PRIu32 ".seg", num);
}

static int pwrite_all(int fd, struct iovec *iov, int iovcnt, uint64_t off)
{
    while (iovcnt > 0) {
        ssize_t n = pwritev(fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (uint64_t)n;
        while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* the index points past the end of the file */
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Body bytes from a temp file into the segment: in the kernel when it can
 * (copy_file_range), else through a buffer. */
static int copy_range(int in_fd, uint64_t len, int out_fd, uint64_t out_off)
{
    loff_t in_off = 0, o = (loff_t)out_off;
    while (len > 0) {
        ssize_t n = copy_file_range(in_fd, &in_off, out_fd, &o, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)
                break;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        len -= (uint64_t)n;
    }
    if (len == 0)
        return 0;
    uint8_t *buf = malloc(COPY_BUF);
    if (buf == NULL)
        return -ENOMEM;
    int r = 0;
    while (len > 0 && r == 0) {
        size_t chunk = len > COPY_BUF ? COPY_BUF : (size_t)len;
        r = pread_all(in_fd, buf, chunk, (uint64_t)in_off);
        if (r == 0) {
            struct iovec iov = {buf, chunk};
            r = pwrite_all(out_fd, &iov, 1, (uint64_t)o);
        }
        in_off += (loff_t)chunk;
        o += (loff_t)chunk;
        len -= chunk;
    }
    free(buf);
    return r;
}

/* ---- index (ilock held) ---- */

static size_t qid_hash(const char *qid)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < SPOOL_QID_CHARS && qid[i]; i++) {
        h ^= (unsigned char)qid[i];
        h *= 1099511628211ull;
    }
    return (size_t)h;
}

static entry *idx_find(tern_spool *s, const char *qid)
{
    if (s->nbuckets == 0)
        return NULL;
    for (entry *e = s->buckets[qid_hash(qid) & (s->nbuckets - 1)]; e; e = e->hnext)
        if (strcmp(e->qid, qid) == 0)
            return e;
    return NULL;
}

static int idx_insert(tern_spool *s, entry *e)
{
    if (s->nentries + 1 > s->nbuckets) {
        size_t nb = s->nbuckets ? s->nbuckets * 2 : 1024;
        entry **b = calloc(nb, sizeof(*b));
        if (b == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < s->nbuckets; i++) {
            entry *x = s->buckets[i];
            while (x) {
                entry *n = x->hnext;
                size_t h = qid_hash(x->qid) & (nb - 1);
                x->hnext = b[h];
                b[h] = x;
                x = n;
            }
        }
        free(s->buckets);
        s->buckets = b;
        s->nbuckets = nb;
    }
    size_t h = qid_hash(e->qid) & (s->nbuckets - 1);
    e->hnext = s->buckets[h];
    s->buckets[h] = e;
    e->prev = s->tail;
    e->next = NULL;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->nentries++;
    e->seg->live++;
    return 0;
}

static void entry_unref(entry *e)
{
    if (--e->refs == 0) {
        spool_env_free(e->env);
        free(e);
    }
}

/* Takes the entry out of the index; the segment's live count is the
 * caller's business (it drops when the COMPLETE record is written). */
static void idx_remove(tern_spool *s, entry *e)
{
    entry **pp = &s->buckets[qid_hash(e->qid) & (s->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    s->nentries--;
    entry_unref(e);
}

static seg *seg_find(tern_spool *s, uint32_t num)
{
    for (seg *g = s->segs_head; g; g = g->next)
        if (g->num == num)
            return g;
    return NULL;
}

static void seg_append(tern_spool *s, seg *g)
{
    g->prev = s->segs_tail;
    g->next = NULL;
    if (s->segs_tail)
        s->segs_tail->next = g;
    else
        s->segs_head = g;
    s->segs_tail = g;
    s->nsegs++;
}

static void seg_free(seg *g)
{
    if (g->fd >= 0)
        close(g->fd);
    free(g->tombs_in);
    free(g);
}

/* A COMPLETE record in `holder` for a message in `target`. */
static void seg_add_tomb(seg *target, seg *holder)
{
    if (target == holder)
        return;
    for (size_t i = 0; i < target->n_in; i++) {
        if (target->tombs_in[i].seg == holder->num) {
            target->tombs_in[i].count++;
            holder->tombs_out++;
            return;
        }
    }
    if (target->n_in == target->cap_in) {
        size_t cap = target->cap_in ? target->cap_in * 2 : 4;
        seg_dep *d = realloc(target->tombs_in, cap * sizeof(*d));
        if (d == NULL) {
            /* Without the record of the dependency the holder must never
             * be deleted; pin it by counting an extra tombstone. */
            holder->tombs_out++;
            holder->live++;
            return;
        }
        target->tombs_in = d;
        target->cap_in = cap;
    }
    target->tombs_in[target->n_in++] = (seg_dep){holder->num, 1};
    holder->tombs_out++;
}

/* ---- segment deletion ---- */

static bool seg_deletable(const tern_spool *s, const seg *g)
{
    return g != s->cur && g->live == 0 && g->tombs_out == 0;
}

static void spool_gc(tern_spool *s)
{
    if (s->readonly)
        return;
    for (;;) {
        pthread_mutex_lock(&s->ilock);
        seg *g = s->segs_head;
        while (g && !seg_deletable(s, g))
            g = g->next;
        if (g == NULL) {
            pthread_mutex_unlock(&s->ilock);
            return;
        }
        if (g->prev)
            g->prev->next = g->next;
        else
            s->segs_head = g->next;
        if (g->next)
            g->next->prev = g->prev;
        else
            s->segs_tail = g->prev;
        s->nsegs--;
        for (size_t i = 0; i < g->n_in; i++) {
            seg *h = seg_find(s, g->tombs_in[i].seg);
            if (h)
                h->tombs_out -= g->tombs_in[i].count;
        }
        bool close_now = g->refs == 0;
        g->doomed = true;
        s->st.segments_deleted++;
        pthread_mutex_unlock(&s->ilock);

        char name[32];
        seg_name(name, g->num);
        if (unlinkat(s->segdir_fd, name, 0) != 0 && errno != ENOENT)
            TLOG_ERR("spool", "event=segment_unlink_failed seg=%s error=\"%s\"", name,
                     strerror(errno));
        /* Before the next deletion, which may be of the file holding this
         * one's tombstones. */
        if (s->opts.fsync && fsync(s->segdir_fd) != 0)
            TLOG_ERR("spool", "event=dir_fsync_failed error=\"%s\"", strerror(errno));
        TLOG_DEBUG("spool", "event=segment_deleted seg=%s", name);
        if (close_now)
            seg_free(g);
    }
}

/* ---- writing (writer thread, or open before the writer starts) ---- */

static int seg_sync(tern_spool *s, seg *g)
{
    if (!g->unsynced || !s->opts.fsync)
        return 0;
    pthread_mutex_lock(&s->ilock);
    s->st.fsyncs++;
    pthread_mutex_unlock(&s->ilock);
    if (fdatasync(g->fd) != 0) {
        int e = errno;
        /* After a failed fdatasync the page cache may claim data the disk
         * never got; trust nothing more in this file. */
        g->broken = true;
        TLOG_ERR("spool", "event=fsync_failed seg=%" PRIu32 " error=\"%s\"", g->num, strerror(e));
        return -e;
    }
    g->unsynced = false;
    return 0;
}

static int spool_rotate(tern_spool *s)
{
    seg *old = s->cur;
    if (old) {
        int r = seg_sync(s, old);
        if (r != 0)
            return r;
    }
    uint32_t num = s->segs_tail ? s->segs_tail->num + 1 : 1;
    char name[32];
    seg_name(name, num);
    int fd = openat(s->segdir_fd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        TLOG_ERR("spool", "event=segment_create_failed seg=%s error=\"%s\"", name, strerror(e));
        return -e;
    }
    uint8_t hdr[SPOOL_FILE_HDR_LEN];
    spool_file_hdr_encode(hdr, num);
    struct iovec iov = {hdr, sizeof(hdr)};
    int r = pwrite_all(fd, &iov, 1, 0);
    /* The name must be durable before anything in the file is promised. */
    if (r == 0 && s->opts.fsync && fsync(s->segdir_fd) != 0)
        r = -errno;
    if (r != 0) {
        TLOG_ERR("spool", "event=segment_create_failed seg=%s error=\"%s\"", name, strerror(-r));
        close(fd);
        unlinkat(s->segdir_fd, name, 0);
        return r;
    }
    seg *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        close(fd);
        unlinkat(s->segdir_fd, name, 0);
        return -ENOMEM;
    }
    g->num = num;
    g->fd = fd;
    g->size = SPOOL_FILE_HDR_LEN;
    g->unsynced = true;
    pthread_mutex_lock(&s->ilock);
    seg_append(s, g);
    s->cur = g;
    s->st.segments_created++;
    pthread_mutex_unlock(&s->ilock);
    TLOG_DEBUG("spool", "event=segment_created seg=%s", name);
    return 0;
}

static int spool_need_segment(tern_spool *s)
{
    seg *g = s->cur;
    if (g == NULL || g->broken ||
        (g->size >= s->opts.segment_size && g->size > SPOOL_FILE_HDR_LEN))
        return spool_rotate(s);
    return 0;
}

static int write_msg(tern_spool *s, job *j)
{
    int r = spool_need_segment(s);
    if (r != 0)
        return r;
    seg *g = s->cur;
    uint64_t off = g->size;
    tern_body_view v = {.fd = -1};
    if (j->body)
        tern_body__view(j->body, &v);
    uint64_t body_len = v.file_len + v.mem_len;
    uint8_t lenb[4];
    for (int i = 0; i < 4; i++)
        lenb[i] = (uint8_t)(j->envlen >> (8 * i));
    uint32_t crc = spool_crc32c(0, lenb, 4);
    crc = spool_crc32c(crc, j->envblob, j->envlen);
    crc = spool_crc32c(crc, j->prefix, j->prefix_len);
    if (body_len)
        crc = spool_crc32c_combine(crc, v.crc, body_len);
    spool_rec_hdr h = {.type = SPOOL_REC_MESSAGE,
                       .len = (uint32_t)(4 + j->envlen + j->prefix_len + body_len),
                       .payload_crc = crc};
    memcpy(h.qid, j->qid, TERN_QID_LEN);
    uint8_t hb[SPOOL_REC_HDR_LEN];
    spool_rec_hdr_encode(hb, &h);
    struct iovec iov[5] = {{hb, sizeof(hb)}, {lenb, 4}, {j->envblob, j->envlen},
                           {j->prefix, j->prefix_len}, {(void *)v.mem, v.mem_len}};
    int n = v.file_len ? 4 : 5;
    uint64_t pos = off + SPOOL_REC_HDR_LEN + 4 + j->envlen + j->prefix_len;
    r = pwrite_all(g->fd, iov, n, off);
    if (r == 0 && v.file_len) {
        r = copy_range(v.fd, v.file_len, g->fd, pos);
        if (r == 0 && v.mem_len) {
            struct iovec t = {(void *)v.mem, v.mem_len};
            r = pwrite_all(g->fd, &t, 1, pos + v.file_len);
        }
    }
    g->unsynced = true;
    if (r != 0) {
        /* Leave no half record for the next one to follow. */
        if (ftruncate(g->fd, (off_t)off) != 0)
            g->broken = true;
        return r;
    }
    g->size = off + SPOOL_REC_HDR_LEN + h.len;
    j->seg = g;
    j->rec_off = off;
    j->msg_len = j->prefix_len + body_len;
    j->crc = crc;
    return 0;
}

static int write_complete(tern_spool *s, job *j)
{
    int r = spool_need_segment(s);
    if (r != 0)
        return r;
    seg *g = s->cur;
    spool_rec_hdr h = {.type = SPOOL_REC_COMPLETE, .len = 0, .payload_crc = spool_crc32c(0, "", 0)};
    memcpy(h.qid, j->qid, TERN_QID_LEN);
    uint8_t hb[SPOOL_REC_HDR_LEN];
    spool_rec_hdr_encode(hb, &h);
    struct iovec iov = {hb, sizeof(hb)};
    g->unsynced = true;
    r = pwrite_all(g->fd, &iov, 1, g->size);
    if (r != 0) {
        if (ftruncate(g->fd, (off_t)g->size) != 0)
            g->broken = true;
        return r;
    }
    g->size += SPOOL_REC_HDR_LEN;
    j->seg = g;
    return 0;
}

/* RCPT_STATE payload: u32 recipient index (LE) | u8 state (1: done,
 * 2: queued for remote delivery as stored). */
static int write_rcpt_state(tern_spool *s, job *j)
{
    int r = spool_need_segment(s);
    if (r != 0)
        return r;
    seg *g = s->cur;
    uint8_t st[5] = {(uint8_t)j->rcpt_idx, (uint8_t)(j->rcpt_idx >> 8), (uint8_t)(j->rcpt_idx >> 16),
                     (uint8_t)(j->rcpt_idx >> 24), j->rcpt_state};
    /* A retry-state job carries its whole RCPT_RETRY payload. */
    bool retry = j->rcpt_state == 0;
    const uint8_t *pl = retry ? j->envblob : st;
    size_t pl_len = retry ? j->envlen : sizeof(st);
    spool_rec_hdr h = {.type = retry ? SPOOL_REC_RCPT_RETRY : SPOOL_REC_RCPT_STATE,
                       .len = (uint32_t)pl_len, .payload_crc = spool_crc32c(0, pl, pl_len)};
    memcpy(h.qid, j->qid, TERN_QID_LEN);
    uint8_t hb[SPOOL_REC_HDR_LEN];
    spool_rec_hdr_encode(hb, &h);
    struct iovec iov[2] = {{hb, sizeof(hb)}, {(void *)pl, pl_len}};
    g->unsynced = true;
    r = pwrite_all(g->fd, iov, 2, g->size);
    if (r != 0) {
        if (ftruncate(g->fd, (off_t)g->size) != 0)
            g->broken = true;
        return r;
    }
    g->size += SPOOL_REC_HDR_LEN + pl_len;
    j->seg = g;
    return 0;
}

static void job_free_payload(job *j)
{
    free(j->envblob);
    j->envblob = NULL;
    free(j->prefix);
    j->prefix = NULL;
    tern_body_free(j->body);
    j->body = NULL;
}

static void client_post(job *j)
{
    tern_spool_client *c = j->client;
    pthread_mutex_lock(&c->lock);
    j->next = NULL;
    if (c->done_tail)
        c->done_tail->next = j;
    else
        c->done_head = j;
    c->done_tail = j;
    /* Under the lock: once it is released the loop may run the callback,
     * close the client and free it. */
    uv_async_send(&c->async);
    pthread_mutex_unlock(&c->lock);
}

static void sink_call(tern_spool *s, entry *e)
{
    if (s->sink)
        s->sink(s->sink_arg, e->env);
}

/* Returns the number of messages in the batch. */
static uint32_t write_batch(tern_spool *s, job *batch)
{
    uint32_t nmsg = 0, ncomp = 0;
    uint64_t bytes = 0;
    uint64_t t0 = tern_now_ms();
    for (job *j = batch; j; j = j->next) {
        if (j->type == JOB_MSG) {
            nmsg++;
            j->status = write_msg(s, j);
            if (j->status != 0)
                j->error = "spool write failed";
            else
                bytes += SPOOL_REC_HDR_LEN + 4 + j->envlen + j->msg_len;
            job_free_payload(j);
        } else if (j->type == JOB_RCPT) {
            j->status = write_rcpt_state(s, j);
            if (j->status != 0)
                TLOG_ERR("spool", "event=rcpt_state_write_failed qid=%s error=\"%s\"", j->qid,
                         strerror(-j->status));
        } else {
            ncomp++;
            j->status = write_complete(s, j);
            if (j->status != 0)
                TLOG_ERR("spool", "event=complete_write_failed qid=%s error=\"%s\"", j->qid,
                         strerror(-j->status));
        }
    }
    /* Rotation synced every earlier segment of this batch already. */
    int sr = s->cur ? seg_sync(s, s->cur) : 0;
    uint64_t t1 = tern_now_ms();

    /* Index and counters first, so a sink or callback that looks the
     * message up finds it. */
    entry **sinks = NULL;
    size_t nsinks = 0;
    if (s->sink && nmsg)
        sinks = malloc(nmsg * sizeof(*sinks));
    pthread_mutex_lock(&s->ilock);
    s->st.batches++;
    for (job *j = batch; j; j = j->next) {
        if (j->type == JOB_RCPT) {
            /* The record must outlive nothing but its message: the same
             * dependency a COMPLETE record has on its target segment. */
            seg *target = seg_find(s, j->target);
            if (target && j->seg && j->status == 0)
                seg_add_tomb(target, j->seg);
            continue;
        }
        if (j->type == JOB_COMPLETE) {
            seg *target = seg_find(s, j->target);
            if (target) {
                target->live--;
                if (j->seg && j->status == 0)
                    seg_add_tomb(target, j->seg);
            }
            s->st.completes++;
            continue;
        }
        if (j->status == 0 && sr != 0) {
            j->status = sr;
            j->error = "spool fsync failed";
        }
        if (j->status != 0) {
            s->st.failed++;
            continue;
        }
        entry *e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->qid, j->qid, TERN_QID_LEN);
            e->seg = j->seg;
            e->rec_off = j->rec_off;
            e->head_len = (uint32_t)(4 + j->envlen);
            e->msg_len = j->msg_len;
            e->crc = j->crc;
            e->env = j->env;
            e->refs = 1;
        }
        if (e == NULL || idx_insert(s, e) != 0) {
            /* Durable but not indexed: the next open will find it. */
            TLOG_ERR("spool", "event=index_failed qid=%s error=\"out of memory\"", j->qid);
            free(e);
            spool_env_free(j->env);
        } else if (sinks) {
            e->refs++;
            sinks[nsinks++] = e;
        }
        j->env = NULL;
        s->st.messages++;
    }
    s->st.live = s->nentries;
    s->st.segments = s->nsegs;
    pthread_mutex_unlock(&s->ilock);

    TLOG_DEBUG("spool", "event=batch messages=%" PRIu32 " completes=%" PRIu32
               " bytes=%" PRIu64 " write_sync_ms=%" PRIu64, nmsg, ncomp, bytes, t1 - t0);
    while (batch) {
        job *j = batch;
        batch = j->next;
        if (j->type == JOB_MSG) {
            if (j->status == 0)
                TLOG_DEBUG("spool", "event=durable qid=%s size=%" PRIu64 " batch=%" PRIu32,
                           j->qid, j->msg_len, nmsg);
            else
                TLOG_ERR("spool", "event=submit_failed qid=%s error=\"%s\"", j->qid,
                         strerror(-j->status));
            spool_env_free(j->env);
            j->env = NULL;
            client_post(j);
        } else {
            free(j->envblob); /* a retry record's payload, else NULL */
            free(j);
        }
    }
    for (size_t i = 0; i < nsinks; i++) {
        sink_call(s, sinks[i]);
        pthread_mutex_lock(&s->ilock);
        entry_unref(sinks[i]);
        pthread_mutex_unlock(&s->ilock);
    }
    free(sinks);
    spool_gc(s);
    return nmsg;
}

/* Every live message, each with a reference taken; NULL when none. */
static entry **snapshot(tern_spool *s, size_t *n_r)
{
    pthread_mutex_lock(&s->ilock);
    size_t n = s->nentries;
    entry **v = n ? malloc(n * sizeof(*v)) : NULL;
    size_t i = 0;
    if (v)
        for (entry *e = s->head; e; e = e->next) {
            e->refs++;
            v[i++] = e;
        }
    pthread_mutex_unlock(&s->ilock);
    *n_r = v ? i : 0;
    return v;
}

static void release(tern_spool *s, entry **v, size_t n)
{
    pthread_mutex_lock(&s->ilock);
    for (size_t i = 0; i < n; i++)
        entry_unref(v[i]);
    pthread_mutex_unlock(&s->ilock);
    free(v);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void deadline_after(struct timespec *dl, uint64_t ns)
{
    clock_gettime(CLOCK_MONOTONIC, dl);
    ns += (uint64_t)dl->tv_nsec;
    dl->tv_sec += (time_t)(ns / 1000000000u);
    dl->tv_nsec = (long)(ns % 1000000000u);
}

/* The writer. Besides the configured delay it waits, briefly, for the
 * submitters it just acknowledged: under steady load those sessions come
 * back with their next message a few hundred microseconds later, and
 * starting the next fsync without them splits the load into alternating
 * small and large batches (half the throughput at a given concurrency).
 * The wait ends as soon as as many jobs are queued as the last batch had,
 * and never lasts more than a quarter of the last write+sync time (capped
 * at ADAPTIVE_WAIT_MAX_NS), so it cannot cost more than that in latency;
 * with fsync off it is practically zero. */
#define ADAPTIVE_WAIT_MAX_NS 1000000u
#define BOOKKEEPING_WAIT_NS 50000000u /* 50 ms */

static void *writer_main(void *arg)
{
    tern_spool *s = arg;
    uint32_t max = s->opts.group_commit_max;
    size_t expect = 0;
    uint64_t last_ns = 0;
    pthread_mutex_lock(&s->qlock);
    for (;;) {
        while (s->qhead == NULL && !s->stopping && !s->sink_pending)
            pthread_cond_wait(&s->qcond, &s->qlock);
        if (s->sink_pending) {
            s->sink_pending = false;
            s->sink = s->new_sink;
            s->sink_arg = s->new_sink_arg;
            pthread_mutex_unlock(&s->qlock);
            size_t n;
            entry **v = snapshot(s, &n);
            for (size_t i = 0; i < n; i++)
                sink_call(s, v[i]);
            release(s, v, n);
            pthread_mutex_lock(&s->qlock);
            continue;
        }
        if (s->qhead == NULL)
            break; /* stopping, and everything submitted is written */
        if (s->qmsgs == 0 && !s->stopping) {
            /* Only bookkeeping (completions, finished recipients): no client
             * waits on it, so it waits for the next message batch and
             * shares its fsync, up to BOOKKEEPING_WAIT_NS. Lost in a crash
             * meanwhile, it means a repeated delivery, never a lost one. */
            struct timespec dl;
            deadline_after(&dl, BOOKKEEPING_WAIT_NS);
            while (s->qmsgs == 0 && s->qlen < max && !s->stopping &&
                   pthread_cond_timedwait(&s->qcond, &s->qlock, &dl) != ETIMEDOUT)
                ;
        }
        if (s->opts.group_commit_delay_us && s->qlen < max && !s->stopping) {
            struct timespec dl;
            deadline_after(&dl, s->opts.group_commit_delay_us * 1000u);
            while (s->qlen < max && !s->stopping &&
                   pthread_cond_timedwait(&s->qcond, &s->qlock, &dl) != ETIMEDOUT)
                ;
        } else if (s->qlen < expect && s->qlen < max && !s->stopping && last_ns >= 4000) {
            struct timespec dl;
            uint64_t wait = last_ns / 4;
            deadline_after(&dl, wait < ADAPTIVE_WAIT_MAX_NS ? wait : ADAPTIVE_WAIT_MAX_NS);
            while (s->qlen < expect && s->qlen < max && !s->stopping &&
                   pthread_cond_timedwait(&s->qcond, &s->qlock, &dl) != ETIMEDOUT)
                ;
        }
        job *batch = s->qhead, *last = batch;
        size_t n = 1;
        while (n < max && last->next) {
            last = last->next;
            n++;
        }
        s->qhead = last->next;
        if (s->qhead == NULL)
            s->qtail = NULL;
        last->next = NULL;
        s->qlen -= n;
        for (job *j = batch; j; j = j->next)
            if (j->type == JOB_MSG)
                s->qmsgs--;
        pthread_mutex_unlock(&s->qlock);
        uint64_t t0 = mono_ns();
        expect = write_batch(s, batch);
        last_ns = mono_ns() - t0;
        pthread_mutex_lock(&s->qlock);
    }
    pthread_mutex_unlock(&s->qlock);
    return NULL;
}

/* ---- replay ---- */

/* A record at `off` whose header and payload both check out. */
static bool rec_valid(const uint8_t *map, uint64_t size, uint64_t off, spool_rec_hdr *h)
{
    if (size - off < SPOOL_REC_HDR_LEN || spool_rec_hdr_decode(map + off, SPOOL_REC_HDR_LEN, h) != 0)
        return false;
    if (h->len > size - off - SPOOL_REC_HDR_LEN)
        return false;
    return spool_crc32c(0, map + off + SPOOL_REC_HDR_LEN, h->len) == h->payload_crc;
}

/* The next intact record after a damaged header, or 0. */
static uint64_t rec_resync(const uint8_t *map, uint64_t size, uint64_t from)
{
    static const uint8_t magic[4] = {SPOOL_REC_MAGIC & 0xff, (SPOOL_REC_MAGIC >> 8) & 0xff,
                                     (SPOOL_REC_MAGIC >> 16) & 0xff, SPOOL_REC_MAGIC >> 24};
    while (from < size) {
        const uint8_t *p = memmem(map + from, size - from, magic, 4);
        if (p == NULL)
            return 0;
        uint64_t off = (uint64_t)(p - map);
        spool_rec_hdr h;
        if (rec_valid(map, size, off, &h))
            return off;
        from = off + 1;
    }
    return 0;
}

static void replay_message(tern_spool *s, seg *g, uint64_t off, const spool_rec_hdr *h,
                           const uint8_t *payload)
{
    const char *why = NULL;
    uint32_t envlen = 0;
    if (h->len < 4)
        why = "short message record";
    else {
        envlen = (uint32_t)payload[0] | (uint32_t)payload[1] << 8 | (uint32_t)payload[2] << 16 |
                 (uint32_t)payload[3] << 24;
        if (envlen > h->len - 4 || envlen > SPOOL_MAX_ENVELOPE)
            why = "envelope length out of bounds";
    }
    tern_envelope *env = why ? NULL : spool_env_decode(payload + 4, envlen, &why);
    if (env == NULL) {
        TLOG_ERR("spool", "event=corrupt_record seg=%" PRIu32 " offset=%" PRIu64 " qid=%s reason=\"%s\"",
                 g->num, off, h->qid, why);
        s->st.corrupt_records++;
        return;
    }
    memcpy(env->qid, h->qid, TERN_QID_LEN); /* the header's is the checked one */
    if (idx_find(s, h->qid)) {
        TLOG_WARN("spool", "event=duplicate_record seg=%" PRIu32 " offset=%" PRIu64 " qid=%s",
                  g->num, off, h->qid);
        spool_env_free(env);
        return;
    }
    entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        spool_env_free(env);
        return;
    }
    memcpy(e->qid, h->qid, TERN_QID_LEN);
    e->seg = g;
    e->rec_off = off;
    e->head_len = 4 + envlen;
    e->msg_len = h->len - 4 - envlen;
    e->crc = h->payload_crc;
    e->env = env;
    e->refs = 1;
    if (idx_insert(s, e) != 0) {
        spool_env_free(env);
        free(e);
    }
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Applies a RCPT_RETRY payload (checksummed, but still bounds-checked:
 * disk data) to env. Returns false when it does not fit. */
static bool spool_retry_apply(tern_envelope *env, const uint8_t *pl, size_t len)
{
    if (len < SPOOL_RETRY_FIXED)
        return false;
    uint32_t idx = le32(pl);
    uint32_t attempts = le32(pl + 4);
    uint64_t next = (uint64_t)le32(pl + 8) | (uint64_t)le32(pl + 12) << 32;
    uint8_t flags = pl[16];
    size_t elen = (size_t)pl[17] | (size_t)pl[18] << 8;
    if (elen > len - SPOOL_RETRY_FIXED || elen > TERN_SPOOL_MAX_RETRY_ERROR)
        return false;
    if (idx == SPOOL_RETRY_MSG) {
        env->held = (flags & 1) != 0;
        return true;
    }
    if (idx >= env->n_rcpts)
        return false;
    tern_spool_rcpt *r = &env->rcpts[idx];
    char *e = NULL;
    if (elen > 0) {
        e = malloc(elen + 1);
        if (e == NULL)
            return false;
        memcpy(e, pl + SPOOL_RETRY_FIXED, elen);
        e[elen] = '\0';
    }
    free(r->last_error);
    r->last_error = e;
    r->attempts = attempts;
    r->next_try = (int64_t)next;
    r->qflags = flags;
    return true;
}

static void replay_record(tern_spool *s, seg *g, uint64_t off, const spool_rec_hdr *h,
                          const uint8_t *payload)
{
    if (h->version > SPOOL_REC_VERSION) {
        TLOG_WARN("spool", "event=unknown_record_version seg=%" PRIu32 " offset=%" PRIu64
                  " version=%u qid=%s", g->num, off, h->version, h->qid);
        return;
    }
    switch (h->type) {
    case SPOOL_REC_MESSAGE:
        replay_message(s, g, off, h, payload);
        break;
    case SPOOL_REC_COMPLETE: {
        entry *e = idx_find(s, h->qid);
        if (e == NULL)
            break; /* its segment is gone already */
        seg *target = e->seg;
        idx_remove(s, e);
        target->live--;
        seg_add_tomb(target, g);
        break;
    }
    case SPOOL_REC_RCPT_STATE: {
        entry *e = idx_find(s, h->qid);
        if (e == NULL || h->len < 5)
            break;
        uint32_t idx = (uint32_t)payload[0] | (uint32_t)payload[1] << 8 |
                       (uint32_t)payload[2] << 16 | (uint32_t)payload[3] << 24;
        if (idx < e->env->n_rcpts && payload[4] == 1)
            e->env->rcpts[idx].done = true;
        else if (idx < e->env->n_rcpts && payload[4] == 2)
            e->env->rcpts[idx].queued = true;
        seg_add_tomb(e->seg, g);
        break;
    }
    case SPOOL_REC_RCPT_RETRY: {
        entry *e = idx_find(s, h->qid);
        if (e == NULL || h->len < SPOOL_RETRY_FIXED)
            break;
        spool_retry_apply(e->env, payload, h->len);
        seg_add_tomb(e->seg, g);
        break;
    }
    default:
        TLOG_WARN("spool", "event=unknown_record_type seg=%" PRIu32 " offset=%" PRIu64 " type=%u",
                  g->num, off, h->type);
    }
}

static void replay_segment(tern_spool *s, seg *g, bool last)
{
    struct stat st;
    if (fstat(g->fd, &st) != 0) {
        TLOG_ERR("spool", "event=segment_stat_failed seg=%" PRIu32 " error=\"%s\"", g->num,
                 strerror(errno));
        return;
    }
    uint64_t size = (uint64_t)st.st_size;
    g->size = size;
    if (size == 0)
        return;
    uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, g->fd, 0);
    if (map == MAP_FAILED) {
        TLOG_ERR("spool", "event=segment_map_failed seg=%" PRIu32 " error=\"%s\"", g->num,
                 strerror(errno));
        return;
    }
    uint64_t off = SPOOL_FILE_HDR_LEN;
    if (spool_file_hdr_check(map, size) != 0) {
        TLOG_ERR("spool", "event=corrupt_record seg=%" PRIu32 " offset=0 reason=\"bad file header\"",
                 g->num);
        s->st.corrupt_records++;
    }
    while (off < size) {
        spool_rec_hdr h;
        if (rec_valid(map, size, off, &h)) {
            replay_record(s, g, off, &h, map + off + SPOOL_REC_HDR_LEN);
            off += SPOOL_REC_HDR_LEN + h.len;
            continue;
        }
        uint64_t next;
        const char *why;
        if (size - off >= SPOOL_REC_HDR_LEN &&
            spool_rec_hdr_decode(map + off, SPOOL_REC_HDR_LEN, &h) == 0) {
            /* The header vouches for the length: skip exactly this record. */
            next = h.len <= size - off - SPOOL_REC_HDR_LEN ? off + SPOOL_REC_HDR_LEN + h.len : size;
            why = "payload checksum mismatch";
        } else {
            next = rec_resync(map, size, off + 1);
            if (next == 0)
                next = size;
            why = "bad record header";
        }
        if (next >= size) {
            /* Nothing intact follows: a write cut short by a crash. */
            s->st.torn_tails++;
            TLOG_WARN("spool", "event=torn_tail seg=%" PRIu32 " offset=%" PRIu64 " bytes=%" PRIu64
                      " last=%s action=%s", g->num, off, size - off, last ? "yes" : "no",
                      s->readonly ? "ignored" : "truncated");
            if (!s->readonly) {
                if (ftruncate(g->fd, (off_t)off) != 0 || fsync(g->fd) != 0)
                    TLOG_ERR("spool", "event=truncate_failed seg=%" PRIu32 " error=\"%s\"",
                             g->num, strerror(errno));
                else
                    g->size = off;
            }
            break;
        }
        TLOG_ERR("spool", "event=corrupt_record seg=%" PRIu32 " offset=%" PRIu64 " bytes=%" PRIu64
                 " reason=\"%s\"", g->num, off, next - off, why);
        s->st.corrupt_records++;
        off = next;
    }
    munmap(map, size);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int spool_replay(tern_spool *s, char **error_r)
{
    DIR *d = fdopendir(dup(s->segdir_fd));
    if (d == NULL) {
        *error_r = str_printf("%s: %s", s->segdir, strerror(errno));
        return -1;
    }
    uint32_t *nums = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strlen(nm) != 14 || strcmp(nm + 10, ".seg") != 0 ||
            strspn(nm, "0123456789") != 10)
            continue;
        unsigned long v = strtoul(nm, NULL, 10);
        if (v == 0 || v > UINT32_MAX - 1)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint32_t *t = realloc(nums, cap * sizeof(*t));
            if (t == NULL) {
                free(nums);
                closedir(d);
                *error_r = strdup("out of memory");
                return -1;
            }
            nums = t;
        }
        nums[n++] = (uint32_t)v;
    }
    closedir(d);
    if (n)
        qsort(nums, n, sizeof(*nums), cmp_u32);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        seg_name(name, nums[i]);
        int fd = openat(s->segdir_fd, name, (s->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && s->readonly)
            continue; /* deleted by the running server since readdir */
        seg *g = fd >= 0 ? calloc(1, sizeof(*g)) : NULL;
        if (g == NULL) {
            int e = errno;
            if (fd >= 0)
                close(fd);
            *error_r = str_printf("%s/%s: %s", s->segdir, name, strerror(e));
            free(nums);
            return -1;
        }
        g->num = nums[i];
        g->fd = fd;
        pthread_mutex_lock(&s->ilock);
        seg_append(s, g);
        replay_segment(s, g, i + 1 == n);
        pthread_mutex_unlock(&s->ilock);
    }
    free(nums);
    s->st.replayed = s->nentries;
    s->st.live = s->nentries;
    s->st.segments = s->nsegs;
    return 0;
}

/* ---- open / close ---- */

static int mkdir_p1(const char *path)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Makes a directory's entries durable (new subdirectories, files). */
static void fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (fsync(fd) != 0)
        TLOG_WARN("spool", "event=dir_fsync_failed dir=%s error=\"%s\"", path, strerror(errno));
    close(fd);
}

static void clean_tmp(const char *tmpdir)
{
    DIR *d = opendir(tmpdir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "body.", 5) == 0)
            unlinkat(dirfd(d), de->d_name, 0);
    closedir(d);
}

static tern_spool *spool_alloc(const char *dir, bool readonly)
{
    tern_spool *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->readonly = readonly;
    s->segdir_fd = -1;
    s->lock_fd = -1;
    s->dir = strdup(dir);
    s->segdir = str_printf("%s/segments", dir);
    s->tmpdir = str_printf("%s/tmp", dir);
    pthread_mutex_init(&s->ilock, NULL);
    pthread_mutex_init(&s->qlock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->qcond, &ca);
    pthread_condattr_destroy(&ca);
    if (!s->dir || !s->segdir || !s->tmpdir) {
        tern_spool_close(s);
        return NULL;
    }
    return s;
}

static int spool_fail(tern_spool *s, char **error_r, char *msg)
{
    if (error_r)
        *error_r = msg ? msg : strdup("out of memory");
    else
        free(msg);
    tern_spool_close(s);
    return -1;
}

int tern_spool_open(const char *dir, const tern_spool_opts *opts, tern_spool **spool_r, char **error_r)
{
    tern_spool *s = spool_alloc(dir, false);
    if (s == NULL)
        return spool_fail(NULL, error_r, NULL);
    if (opts)
        s->opts = *opts;
    else
        s->opts.fsync = true;
    if (s->opts.segment_size == 0)
        s->opts.segment_size = DEFAULT_SEGMENT_SIZE;
    if (s->opts.group_commit_max == 0)
        s->opts.group_commit_max = DEFAULT_GROUP_MAX;
    int r;
    if ((r = mkdir_p1(dir)) != 0 || (r = mkdir_p1(s->segdir)) != 0 || (r = mkdir_p1(s->tmpdir)) != 0)
        return spool_fail(s, error_r, str_printf("%s: cannot create: %s", dir, strerror(-r)));
    if (s->opts.fsync) {
        /* A first open must not lose the directories themselves. */
        char *parent = str_printf("%s/..", dir);
        if (parent)
            fsync_path(parent);
        free(parent);
        fsync_path(dir);
    }
    char *lockpath = str_printf("%s/lock", dir);
    if (lockpath == NULL)
        return spool_fail(s, error_r, NULL);
    s->lock_fd = open(lockpath, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    free(lockpath);
    if (s->lock_fd < 0)
        return spool_fail(s, error_r, str_printf("%s/lock: %s", dir, strerror(errno)));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return spool_fail(s, error_r,
                          str_printf("%s: spool is in use by another process", dir));
    s->segdir_fd = open(s->segdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->segdir_fd < 0)
        return spool_fail(s, error_r, str_printf("%s: %s", s->segdir, strerror(errno)));
    clean_tmp(s->tmpdir);
    char *err = NULL;
    if (spool_replay(s, &err) != 0)
        return spool_fail(s, error_r, err);
    /* Never append to a file from an earlier run: its tail is whatever the
     * crash left, and a fresh file keeps that reasoning out of the writer. */
    if ((r = spool_rotate(s)) != 0)
        return spool_fail(s, error_r, str_printf("%s: cannot create a segment: %s", s->segdir,
                                                 strerror(-r)));
    spool_gc(s);
    s->st.segments = s->nsegs;
    TLOG_INFO("spool", "event=open dir=%s live=%" PRIu64 " segments=%zu corrupt=%" PRIu64
              " torn=%" PRIu64, dir, s->st.replayed, s->nsegs, s->st.corrupt_records,
              s->st.torn_tails);
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
        return spool_fail(s, error_r, str_printf("cannot start the spool writer thread"));
    s->writer_running = true;
    *spool_r = s;
    return 0;
}

int tern_spool_open_readonly(const char *dir, tern_spool **spool_r, char **error_r)
{
    tern_spool *s = spool_alloc(dir, true);
    if (s == NULL)
        return spool_fail(NULL, error_r, NULL);
    s->segdir_fd = open(s->segdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->segdir_fd < 0)
        return spool_fail(s, error_r, str_printf("%s: %s", s->segdir, strerror(errno)));
    char *err = NULL;
    if (spool_replay(s, &err) != 0)
        return spool_fail(s, error_r, err);
    *spool_r = s;
    return 0;
}

void tern_spool_close(tern_spool *s)
{
    if (s == NULL)
        return;
    if (s->writer_running) {
        pthread_mutex_lock(&s->qlock);
        s->stopping = true;
        pthread_cond_signal(&s->qcond);
        pthread_mutex_unlock(&s->qlock);
        pthread_join(s->writer, NULL);
    }
    for (entry *e = s->head; e;) {
        entry *n = e->next;
        entry_unref(e);
        e = n;
    }
    free(s->buckets);
    for (seg *g = s->segs_head; g;) {
        seg *n = g->next;
        seg_free(g);
        g = n;
    }
    if (s->segdir_fd >= 0)
        close(s->segdir_fd);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_mutex_destroy(&s->ilock);
    pthread_mutex_destroy(&s->qlock);
    pthread_cond_destroy(&s->qcond);
    free(s->dir);
    free(s->segdir);
    free(s->tmpdir);
    free(s);
}

const char *tern_spool_tmpdir(const tern_spool *s)
{
    return s->tmpdir;
}

/* ---- clients ---- */

static void client_free_cb(uv_handle_t *h)
{
    tern_spool_client *c = h->data;
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void client_maybe_close(tern_spool_client *c)
{
    if (c->closing && c->pending == 0 && !c->closed) {
        c->closed = true;
        uv_close((uv_handle_t *)&c->async, client_free_cb);
    }
}

static void client_async_cb(uv_async_t *a)
{
    tern_spool_client *c = a->data;
    pthread_mutex_lock(&c->lock);
    job *j = c->done_head;
    c->done_head = c->done_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    while (j) {
        job *n = j->next;
        if (j->cb)
            j->cb(j->arg, j->status, j->status == 0 ? j->qid : NULL, j->error);
        c->pending--;
        free(j);
        j = n;
    }
    client_maybe_close(c);
}

tern_spool_client *tern_spool_client_new(tern_spool *s, uv_loop_t *loop)
{
    tern_spool_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->spool = s;
    c->loop = loop;
    pthread_mutex_init(&c->lock, NULL);
    if (uv_async_init(loop, &c->async, client_async_cb) != 0) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
    }
    c->async.data = c;
    return c;
}

/* The client lives until its last pending submission has been called back
 * (on its loop, as usual); then the handle is closed and freed. Call on the
 * client's loop thread. */
void tern_spool_client_close(tern_spool_client *c)
{
    if (c == NULL)
        return;
    c->closing = true;
    client_maybe_close(c);
}

/* ---- submit, complete, read ---- */

static void enqueue(tern_spool *s, job *j)
{
    j->next = NULL;
    if (s->qtail)
        s->qtail->next = j;
    else
        s->qhead = j;
    s->qtail = j;
    s->qlen++;
    if (j->type == JOB_MSG)
        s->qmsgs++;
    pthread_cond_signal(&s->qcond);
}

static bool qid_valid(const char *q)
{
    for (int i = 0; i < TERN_QID_LEN - 1; i++)
        if (!((q[i] >= '0' && q[i] <= '9') || (q[i] >= 'A' && q[i] <= 'Z')))
            return false;
    return q[TERN_QID_LEN - 1] == '\0';
}

int tern_spool_submit(tern_spool_client *c, tern_envelope *env, const char *prefix,
                      size_t prefix_len, tern_body *body, tern_spool_submit_cb cb, void *arg)
{
    tern_spool *s = c->spool;
    if (s->readonly)
        return -EROFS;
    if (c->closing)
        return -ESHUTDOWN;
    if (body) {
        int st = tern_body__state(body);
        if (st != 0)
            return st;
    }
    uint64_t size = prefix_len + (body ? tern_body_size(body) : 0);
    if (size > SPOOL_MAX_MESSAGE)
        return -EFBIG;
    if (env->n_rcpts > SPOOL_MAX_RCPTS)
        return -E2BIG;
    job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    /* The session names the qid in our Received header before submitting,
     * so a caller-chosen qid (16 chars of [0-9A-Z]) is kept; otherwise one
     * is assigned here. */
    if (qid_valid(env->qid))
        memcpy(j->qid, env->qid, TERN_QID_LEN);
    else
        tern_qid(j->qid);
    tern_envelope copy = *env;
    memcpy(copy.qid, j->qid, TERN_QID_LEN);
    copy.size = size;
    const char *why = NULL;
    j->envblob = spool_env_encode(&copy, &j->envlen);
    if (j->envblob)
        j->env = spool_env_decode(j->envblob, j->envlen, &why);
    if (prefix_len) {
        j->prefix = malloc(prefix_len);
        if (j->prefix)
            memcpy(j->prefix, prefix, prefix_len);
    }
    if (j->envblob == NULL || j->env == NULL || (prefix_len && j->prefix == NULL)) {
        int r = j->envblob == NULL && j->envlen == 0 ? -E2BIG : -ENOMEM;
        if (j->envblob && j->env == NULL)
            r = -EINVAL;
        spool_env_free(j->env);
        free(j->envblob);
        free(j->prefix);
        free(j);
        return r;
    }
    j->prefix_len = prefix_len;
    j->type = JOB_MSG;
    j->client = c;
    j->cb = cb;
    j->arg = arg;
    pthread_mutex_lock(&s->qlock);
    if (s->stopping || !s->writer_running) {
        pthread_mutex_unlock(&s->qlock);
        spool_env_free(j->env);
        free(j->envblob);
        free(j->prefix);
        free(j);
        return -ESHUTDOWN;
    }
    j->body = body;
    enqueue(s, j);
    pthread_mutex_unlock(&s->qlock);
    c->pending++;
    memcpy(env->qid, j->qid, TERN_QID_LEN);
    env->size = size;
    return 0;
}

int tern_spool_complete_if_done(tern_spool *s, const char *qid)
{
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    bool all = e != NULL;
    for (size_t i = 0; e && i < e->env->n_rcpts; i++)
        if (!e->env->rcpts[i].done)
            all = false;
    pthread_mutex_unlock(&s->ilock);
    if (e == NULL)
        return -ENOENT;
    if (!all)
        return 0;
    /* Two callers may both see "all done": the second gets -ENOENT. */
    int r = tern_spool_complete(s, qid);
    return r == 0 ? 1 : r == -ENOENT ? 0 : r;
}

int tern_spool_complete(tern_spool *s, const char *qid)
{
    if (s->readonly)
        return -EROFS;
    job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    if (e == NULL) {
        pthread_mutex_unlock(&s->ilock);
        free(j);
        return -ENOENT;
    }
    j->type = JOB_COMPLETE;
    memcpy(j->qid, e->qid, TERN_QID_LEN);
    j->target = e->seg->num;
    idx_remove(s, e);
    s->st.live = s->nentries;
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->qlock);
    enqueue(s, j);
    pthread_mutex_unlock(&s->qlock);
    return 0;
}

static int rcpt_state(tern_spool *s, const char *qid, size_t idx, uint8_t state);

int tern_spool_rcpt_done(tern_spool *s, const char *qid, size_t idx)
{
    return rcpt_state(s, qid, idx, 1);
}

int tern_spool_rcpt_queued(tern_spool *s, const char *qid, size_t idx)
{
    return rcpt_state(s, qid, idx, 2);
}

static int rcpt_state(tern_spool *s, const char *qid, size_t idx, uint8_t state)
{
    if (s->readonly)
        return -EROFS;
    job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    if (e == NULL || idx >= e->env->n_rcpts) {
        pthread_mutex_unlock(&s->ilock);
        free(j);
        return -ENOENT;
    }
    if (state == 1)
        e->env->rcpts[idx].done = true;
    else
        e->env->rcpts[idx].queued = true;
    j->type = JOB_RCPT;
    j->rcpt_state = state;
    memcpy(j->qid, e->qid, TERN_QID_LEN);
    j->target = e->seg->num;
    j->rcpt_idx = (uint32_t)idx;
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->qlock);
    enqueue(s, j);
    pthread_mutex_unlock(&s->qlock);
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int retry_record(tern_spool *s, const char *qid, uint32_t idx, uint32_t attempts,
                        int64_t next_try, uint8_t flags, const char *err)
{
    if (s->readonly)
        return -EROFS;
    size_t elen = err ? strlen(err) : 0;
    if (elen > TERN_SPOOL_MAX_RETRY_ERROR)
        elen = TERN_SPOOL_MAX_RETRY_ERROR;
    job *j = calloc(1, sizeof(*j));
    uint8_t *pl = malloc(SPOOL_RETRY_FIXED + elen);
    if (j == NULL || pl == NULL) {
        free(j);
        free(pl);
        return -ENOMEM;
    }
    put32(pl, idx);
    put32(pl + 4, attempts);
    put32(pl + 8, (uint32_t)(uint64_t)next_try);
    put32(pl + 12, (uint32_t)((uint64_t)next_try >> 32));
    pl[16] = flags;
    pl[17] = (uint8_t)elen;
    pl[18] = (uint8_t)(elen >> 8);
    if (elen)
        memcpy(pl + SPOOL_RETRY_FIXED, err, elen);
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    if (e == NULL || (idx != SPOOL_RETRY_MSG && idx >= e->env->n_rcpts) ||
        !spool_retry_apply(e->env, pl, SPOOL_RETRY_FIXED + elen)) {
        pthread_mutex_unlock(&s->ilock);
        free(j);
        free(pl);
        return -ENOENT;
    }
    j->type = JOB_RCPT;
    j->rcpt_state = 0;
    j->envblob = pl;
    j->envlen = SPOOL_RETRY_FIXED + elen;
    memcpy(j->qid, e->qid, TERN_QID_LEN);
    j->target = e->seg->num;
    j->rcpt_idx = idx;
    pthread_mutex_unlock(&s->ilock);
    pthread_mutex_lock(&s->qlock);
    enqueue(s, j);
    pthread_mutex_unlock(&s->qlock);
    return 0;
}

int tern_spool_rcpt_retry(tern_spool *s, const char *qid, size_t idx, uint32_t attempts,
                          int64_t next_try, uint8_t qflags, const char *last_error)
{
    if (idx >= SPOOL_RETRY_MSG)
        return -ENOENT;
    return retry_record(s, qid, (uint32_t)idx, attempts, next_try, qflags, last_error);
}

int tern_spool_hold(tern_spool *s, const char *qid, bool held)
{
    return retry_record(s, qid, SPOOL_RETRY_MSG, 0, 0, held ? 1 : 0, NULL);
}

tern_envelope *tern_spool_envelope_dup(tern_spool *s, const char *qid)
{
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    tern_envelope *copy = NULL;
    if (e != NULL) {
        size_t len = 0;
        uint8_t *blob = spool_env_encode(e->env, &len);
        const char *why = NULL;
        copy = blob ? spool_env_decode(blob, len, &why) : NULL;
        free(blob);
        if (copy) {
            memcpy(copy->qid, e->qid, TERN_QID_LEN);
            for (size_t i = 0; i < copy->n_rcpts && i < e->env->n_rcpts; i++) {
                copy->rcpts[i].done = e->env->rcpts[i].done;
                copy->rcpts[i].queued = e->env->rcpts[i].queued;
                copy->rcpts[i].attempts = e->env->rcpts[i].attempts;
                copy->rcpts[i].next_try = e->env->rcpts[i].next_try;
                copy->rcpts[i].qflags = e->env->rcpts[i].qflags;
                if (e->env->rcpts[i].last_error)
                    copy->rcpts[i].last_error = strdup(e->env->rcpts[i].last_error);
            }
            copy->held = e->env->held;
        }
    }
    pthread_mutex_unlock(&s->ilock);
    return copy;
}

void tern_envelope_free(tern_envelope *env)
{
    spool_env_free(env);
}

int tern_spool_read_message(tern_spool *s, const char *qid, uint8_t **data_r, size_t *len_r)
{
    pthread_mutex_lock(&s->ilock);
    entry *e = idx_find(s, qid);
    if (e == NULL) {
        pthread_mutex_unlock(&s->ilock);
        return -ENOENT;
    }
    seg *g = e->seg;
    g->refs++;
    uint64_t off = e->rec_off + SPOOL_REC_HDR_LEN;
    uint32_t head_len = e->head_len, crc = e->crc;
    uint64_t len = e->msg_len;
    pthread_mutex_unlock(&s->ilock);

    int r = 0;
    uint8_t *head = malloc(head_len);
    uint8_t *data = len <= SIZE_MAX - 1 ? malloc((size_t)len + 1) : NULL;
    if (head == NULL || data == NULL)
        r = -ENOMEM;
    if (r == 0)
        r = pread_all(g->fd, head, head_len, off);
    if (r == 0)
        r = pread_all(g->fd, data, (size_t)len, off + head_len);
    /* Checked again here: the disk may have rotted since the replay. */
    if (r == 0 && spool_crc32c(spool_crc32c(0, head, head_len), data, (size_t)len) != crc) {
        TLOG_ERR("spool", "event=corrupt_record seg=%" PRIu32 " offset=%" PRIu64
                 " qid=%s reason=\"checksum mismatch on read\"", g->num, off - SPOOL_REC_HDR_LEN, qid);
        r = -EIO;
    }
    free(head);
    pthread_mutex_lock(&s->ilock);
    bool fin = --g->refs == 0 && g->doomed;
    pthread_mutex_unlock(&s->ilock);
    if (fin)
        seg_free(g);
    if (r != 0) {
        free(data);
        return r;
    }
    data[len] = '\0'; /* a convenience for text tools; not counted in len */
    *data_r = data;
    *len_r = (size_t)len;
    return 0;
}

/* ---- iteration, sink, stats ---- */

size_t tern_spool_each(tern_spool *s, tern_spool_each_cb cb, void *arg)
{
    size_t n;
    entry **v = snapshot(s, &n);
    for (size_t i = 0; i < n; i++)
        cb(arg, v[i]->env);
    release(s, v, n);
    return n;
}

void tern_spool_set_sink(tern_spool *s, tern_spool_sink_cb cb, void *arg)
{
    if (!s->writer_running) {
        /* Read-only: no writer thread, so the caller's thread replays. */
        s->sink = cb;
        s->sink_arg = arg;
        tern_spool_each(s, cb, arg);
        return;
    }
    pthread_mutex_lock(&s->qlock);
    s->new_sink = cb;
    s->new_sink_arg = arg;
    s->sink_pending = true;
    pthread_cond_signal(&s->qcond);
    pthread_mutex_unlock(&s->qlock);
}

void tern_spool_stats_get(tern_spool *s, tern_spool_stats *st_r)
{
    pthread_mutex_lock(&s->ilock);
    *st_r = s->st;
    st_r->live = s->nentries;
    st_r->segments = s->nsegs;
    st_r->current_segment = s->cur ? s->cur->num : 0;
    pthread_mutex_unlock(&s->ilock);
}
