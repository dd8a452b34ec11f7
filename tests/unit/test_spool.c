/* Unit tests for storage/queue/: the spool (submit, group commit, replay,
 * completion, segment rotation and deletion, recovery from torn and
 * corrupted files, read-only opening) and the body sink. Each test works in
 * its own mkdtemp directory and runs a uv loop to receive completions. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "lib/log.h"
#include "storage/queue/body_internal.h"
#include "storage/queue/spool.h"
#include "storage/queue/spool_record.h"
#include "storage/queue/spool_stats.h"

/* ---- helpers ---- */

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static char *tmpdir_new(void)
{
    char tpl[] = "/tmp/tern-spool-test-XXXXXX";
    char *d = mkdtemp(tpl);
    assert_non_null(d);
    return strdup(d);
}

static void tmpdir_free(char *d)
{
    nftw(d, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static tern_spool *open_spool(const char *dir, uint64_t seg_size)
{
    tern_spool_opts o = {.segment_size = seg_size, .group_commit_max = 256, .fsync = true};
    tern_spool *s = NULL;
    char *err = NULL;
    int r = tern_spool_open(dir, &o, &s, &err);
    if (r != 0)
        fail_msg("open: %s", err);
    return s;
}

static tern_spool *open_ro(const char *dir)
{
    tern_spool *s = NULL;
    char *err = NULL;
    if (tern_spool_open_readonly(dir, &s, &err) != 0)
        fail_msg("open_readonly: %s", err);
    return s;
}

static tern_spool_stats stats(tern_spool *s)
{
    tern_spool_stats st;
    tern_spool_stats_get(s, &st);
    return st;
}

typedef struct waiter {
    int done;
    int failed;
    char qids[4096][TERN_QID_LEN];
} waiter;

static void on_submit(void *arg, int status, const char *qid, const char *error)
{
    waiter *w = arg;
    if (status != 0) {
        w->failed++;
    } else {
        assert_non_null(qid);
        assert_int_equal(strlen(qid), TERN_QID_LEN - 1);
        if (w->done < 4096)
            memcpy(w->qids[w->done], qid, TERN_QID_LEN);
    }
    w->done++;
}

static tern_envelope env_basic(void)
{
    static tern_spool_rcpt rcpts[2] = {
        {.addr = "bob@example.org", .orcpt = "rfc822;bob@example.org", .notify = TERN_NOTIFY_FAILURE},
        {.addr = "carol@example.org", .orcpt = NULL, .notify = 0},
    };
    tern_envelope e = {
        .mail_from = "alice@example.com",
        .rcpts = rcpts,
        .n_rcpts = 2,
        .envid = "ENV1",
        .ret = TERN_RET_HDRS,
        .body = TERN_BODY_8BITMIME,
        .smtputf8 = false,
        .helo = "client.example.com",
        .client_addr = "192.0.2.1",
        .session_id = "6f1c1b1e-0000-4000-8000-000000000000",
        .listener = "mx",
        .pipeline = "root",
        .received_at = 1700000000,
    };
    return e;
}

/* A memory body with `len` bytes of a pattern seeded by `seed`. */
static uint8_t *pattern(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len ? len : 1);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
    }
    return p;
}

static tern_body *mem_body(uv_loop_t *loop, const uint8_t *data, size_t len)
{
    tern_body *b = tern_body_new(loop, "/tmp", 1 << 20);
    assert_non_null(b);
    assert_int_equal(tern_body_append(b, data, len, NULL, NULL), 0);
    return b;
}

static void run_until(uv_loop_t *loop, const int *counter, int target)
{
    while (*counter < target)
        uv_run(loop, UV_RUN_ONCE);
}

static void loop_finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* Submits `n` messages (body = pattern(len, seed+i)) and waits for all. */
static void submit_n(tern_spool *s, int n, size_t len, unsigned seed, waiter *w)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(s, &loop);
    assert_non_null(c);
    for (int i = 0; i < n; i++) {
        tern_envelope e = env_basic();
        uint8_t *data = pattern(len, seed + (unsigned)i);
        tern_body *b = mem_body(&loop, data, len);
        free(data);
        const char prefix[] = "Received: from test\r\n";
        assert_int_equal(tern_spool_submit(c, &e, prefix, sizeof(prefix) - 1, b, on_submit, w), 0);
        assert_int_equal(strlen(e.qid), 16);
        assert_int_equal(e.size, sizeof(prefix) - 1 + len);
    }
    run_until(&loop, &w->done, n);
    assert_int_equal(w->failed, 0);
    tern_spool_client_close(c);
    loop_finish(&loop);
}

typedef struct collected {
    size_t n;
    tern_envelope *env[4096];
} collected;

static tern_envelope *env_dup(const tern_envelope *e)
{
    size_t len;
    uint8_t *blob = spool_env_encode(e, &len);
    assert_non_null(blob);
    const char *why = NULL;
    tern_envelope *d = spool_env_decode(blob, len, &why);
    free(blob);
    assert_non_null(d);
    return d;
}

static void collect_cb(void *arg, const tern_envelope *env)
{
    collected *c = arg;
    if (c->n < 4096)
        c->env[c->n] = env_dup(env);
    c->n++;
}

static void collected_free(collected *c)
{
    for (size_t i = 0; i < c->n && i < 4096; i++)
        spool_env_free(c->env[i]);
    c->n = 0;
}

static void check_message(tern_spool *s, const char *qid, size_t len, unsigned seed)
{
    uint8_t *data = NULL;
    size_t n = 0;
    assert_int_equal(tern_spool_read_message(s, qid, &data, &n), 0);
    const char prefix[] = "Received: from test\r\n";
    assert_int_equal(n, sizeof(prefix) - 1 + len);
    assert_memory_equal(data, prefix, sizeof(prefix) - 1);
    uint8_t *want = pattern(len, seed);
    if (len)
        assert_memory_equal(data + sizeof(prefix) - 1, want, len);
    free(want);
    free(data);
}

static int count_segments(const char *dir)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/segments", dir);
    uv_fs_t req;
    int n = uv_fs_scandir(NULL, &req, path, 0, NULL);
    int segs = 0;
    uv_dirent_t ent;
    while (n > 0 && uv_fs_scandir_next(&req, &ent) != UV_EOF)
        if (strstr(ent.name, ".seg"))
            segs++;
    uv_fs_req_cleanup(&req);
    return segs;
}

static bool segment_exists(const char *dir, uint32_t num)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/segments/%010u.seg", dir, num);
    return access(path, F_OK) == 0;
}

static void seg_path(char *out, size_t size, const char *dir, uint32_t num)
{
    snprintf(out, size, "%s/segments/%010u.seg", dir, num);
}

/* Offsets of the records in a segment file, by walking the lengths. */
static size_t record_offsets(const char *path, uint64_t *offs, size_t max)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = 0;
    uint64_t off = SPOOL_FILE_HDR_LEN;
    uint8_t h[SPOOL_REC_HDR_LEN];
    while (n < max && fseek(f, (long)off, SEEK_SET) == 0 && fread(h, 1, sizeof(h), f) == sizeof(h)) {
        uint32_t len = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 | (uint32_t)h[11] << 24;
        offs[n++] = off;
        off += SPOOL_REC_HDR_LEN + len;
    }
    fclose(f);
    return n;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t c;
    assert_int_equal(pread(fd, &c, 1, (off_t)off), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)off), 1);
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* ---- tests ---- */

static void test_crc(void **state)
{
    /* Known answer for CRC32C, then the combination used for bodies. */
    assert_int_equal(spool_crc32c(0, "123456789", 9), 0xE3069283u);
    uint8_t *p = pattern(10007, 7);
    for (size_t split = 0; split <= 10007; split += 997) {
        uint32_t a = spool_crc32c(0, p, split);
        uint32_t b = spool_crc32c(0, p + split, 10007 - split);
        assert_int_equal(spool_crc32c_combine(a, b, 10007 - split), spool_crc32c(0, p, 10007));
        assert_int_equal(spool_crc32c(a, p + split, 10007 - split), spool_crc32c(0, p, 10007));
    }
    free(p);
}

static void test_roundtrip(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    static waiter w;
    memset(&w, 0, sizeof(w));
    submit_n(s, 3, 1000, 100, &w);
    assert_int_equal(stats(s).live, 3);
    /* Callbacks come in submission order for one client. */
    for (int i = 0; i < 3; i++)
        check_message(s, w.qids[i], 1000, 100 + (unsigned)i);
    tern_spool_close(s);

    s = open_spool(dir, 0);
    tern_spool_stats st = stats(s);
    assert_int_equal(st.replayed, 3);
    assert_int_equal(st.corrupt_records, 0);
    assert_int_equal(st.torn_tails, 0);
    static collected col;
    memset(&col, 0, sizeof(col));
    assert_int_equal(tern_spool_each(s, collect_cb, &col), 3);
    tern_envelope want = env_basic();
    for (int i = 0; i < 3; i++) {
        tern_envelope *e = col.env[i];
        assert_string_equal(e->qid, w.qids[i]);
        assert_string_equal(e->mail_from, want.mail_from);
        assert_int_equal(e->n_rcpts, 2);
        assert_string_equal(e->rcpts[0].addr, "bob@example.org");
        assert_string_equal(e->rcpts[0].orcpt, "rfc822;bob@example.org");
        assert_int_equal(e->rcpts[0].notify, TERN_NOTIFY_FAILURE);
        assert_string_equal(e->rcpts[1].addr, "carol@example.org");
        assert_null(e->rcpts[1].orcpt);
        assert_string_equal(e->envid, "ENV1");
        assert_int_equal(e->ret, TERN_RET_HDRS);
        assert_int_equal(e->body, TERN_BODY_8BITMIME);
        assert_false(e->smtputf8);
        assert_false(e->requiretls); /* not written when unset, read as false */
        assert_null(e->auth_user);
        assert_string_equal(e->helo, want.helo);
        assert_string_equal(e->client_addr, want.client_addr);
        assert_string_equal(e->session_id, want.session_id);
        assert_string_equal(e->listener, "mx");
        assert_string_equal(e->pipeline, "root");
        assert_int_equal(e->received_at, 1700000000);
        assert_int_equal(e->size, 1000 + strlen("Received: from test\r\n"));
        check_message(s, w.qids[i], 1000, 100 + (unsigned)i);
    }
    collected_free(&col);
    uint8_t *d;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, "0000000000000000", &d, &n), -ENOENT);
    tern_spool_close(s);
    tmpdir_free(dir);
}

static void test_complete(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    static waiter w;
    memset(&w, 0, sizeof(w));
    submit_n(s, 3, 200, 1, &w);
    assert_int_equal(tern_spool_complete(s, w.qids[1]), 0);
    assert_int_equal(tern_spool_complete(s, w.qids[1]), -ENOENT);
    assert_int_equal(tern_spool_complete(s, "ZZZZZZZZZZZZZZZZ"), -ENOENT);
    assert_int_equal(stats(s).live, 2);
    uint8_t *d;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, w.qids[1], &d, &n), -ENOENT);
    tern_spool_close(s); /* the writer drains the COMPLETE record first */

    s = open_spool(dir, 0);
    static collected col;
    memset(&col, 0, sizeof(col));
    assert_int_equal(tern_spool_each(s, collect_cb, &col), 2);
    assert_string_equal(col.env[0]->qid, w.qids[0]);
    assert_string_equal(col.env[1]->qid, w.qids[2]);
    collected_free(&col);
    tern_spool_close(s);
    tmpdir_free(dir);
}

/* The queue's retry state survives a reopen: the last RCPT_RETRY record
 * of a recipient wins, the error is bounded, hold is per message, and a
 * record for a recipient out of range is refused. */
static void test_retry_state(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    static waiter w;
    memset(&w, 0, sizeof(w));
    submit_n(s, 2, 100, 7, &w);
    char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(tern_spool_rcpt_retry(s, w.qids[0], 1, 1, 1000, 0, "first"), 0);
    assert_int_equal(tern_spool_rcpt_retry(s, w.qids[0], 1, 3, 1700000123456LL, TERN_QFLAG_DELAY_SENT,
                                           "451 4.4.1 try later"), 0);
    assert_int_equal(tern_spool_rcpt_retry(s, w.qids[1], 0, 2, 5, 0, big), 0);
    assert_int_equal(tern_spool_rcpt_retry(s, w.qids[1], 2, 2, 5, 0, "x"), -ENOENT);
    assert_int_equal(tern_spool_rcpt_retry(s, "ZZZZZZZZZZZZZZZZ", 0, 2, 5, 0, "x"), -ENOENT);
    assert_int_equal(tern_spool_hold(s, w.qids[1], true), 0);
    tern_envelope *e = tern_spool_envelope_dup(s, w.qids[0]);
    assert_non_null(e);
    assert_int_equal(e->rcpts[1].attempts, 3);
    assert_false(e->held);
    tern_envelope_free(e);
    tern_spool_close(s);

    for (int round = 0; round < 2; round++) {
        s = round == 0 ? open_spool(dir, 0) : open_ro(dir);
        e = tern_spool_envelope_dup(s, w.qids[0]);
        assert_non_null(e);
        assert_int_equal(e->rcpts[0].attempts, 0);
        assert_null(e->rcpts[0].last_error);
        assert_int_equal(e->rcpts[1].attempts, 3);
        assert_true(e->rcpts[1].next_try == 1700000123456LL);
        assert_int_equal(e->rcpts[1].qflags, TERN_QFLAG_DELAY_SENT);
        assert_string_equal(e->rcpts[1].last_error, "451 4.4.1 try later");
        assert_false(e->held);
        tern_envelope_free(e);
        e = tern_spool_envelope_dup(s, w.qids[1]);
        assert_non_null(e);
        assert_true(e->held);
        assert_int_equal(strlen(e->rcpts[0].last_error), TERN_SPOOL_MAX_RETRY_ERROR);
        tern_envelope_free(e);
        if (round == 0) {
            assert_int_equal(tern_spool_hold(s, w.qids[1], false), 0);
        }
        tern_spool_close(s);
        if (round == 0) {
            s = open_spool(dir, 0);
            e = tern_spool_envelope_dup(s, w.qids[1]);
            assert_false(e->held);
            tern_envelope_free(e);
            assert_int_equal(tern_spool_hold(s, w.qids[1], true), 0);
            tern_spool_close(s);
        }
    }
    tmpdir_free(dir);
}

typedef struct thread_arg {
    tern_spool *s;
    int n;
    unsigned seed;
    waiter *w;
} thread_arg;

static void *submit_thread(void *arg)
{
    thread_arg *a = arg;
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(a->s, &loop);
    /* Keep a window of submissions in flight, as many sessions would. */
    int sent = 0;
    while (a->w->done < a->n) {
        while (sent < a->n && sent - a->w->done < 64) {
            tern_envelope e = env_basic();
            uint8_t *data = pattern(512, a->seed + (unsigned)sent);
            tern_body *b = tern_body_new(&loop, "/tmp", 1 << 20);
            tern_body_append(b, data, 512, NULL, NULL);
            free(data);
            if (tern_spool_submit(c, &e, "", 0, b, on_submit, a->w) != 0)
                abort();
            sent++;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    tern_spool_client_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return NULL;
}

static int cmp_qid(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_concurrent(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    static waiter w1, w2;
    memset(&w1, 0, sizeof(w1));
    memset(&w2, 0, sizeof(w2));
    thread_arg a1 = {s, 1000, 0, &w1}, a2 = {s, 1000, 50000, &w2};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, submit_thread, &a1);
    pthread_create(&t2, NULL, submit_thread, &a2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_int_equal(w1.failed + w2.failed, 0);
    tern_spool_stats st = stats(s);
    assert_int_equal(st.messages, 2000);
    assert_int_equal(st.live, 2000);
    assert_true(st.batches < st.messages);
    assert_true(st.fsyncs <= st.batches + st.segments_created);
    print_message("concurrent: %llu messages in %llu batches\n", (unsigned long long)st.messages,
                  (unsigned long long)st.batches);
    /* Every qid distinct. */
    static char all[2000][TERN_QID_LEN];
    memcpy(all, w1.qids, sizeof(all[0]) * 1000);
    memcpy(all[1000], w2.qids, sizeof(all[0]) * 1000);
    qsort(all, 2000, TERN_QID_LEN, cmp_qid);
    for (int i = 1; i < 2000; i++)
        assert_true(strcmp(all[i - 1], all[i]) != 0);
    uint8_t *d;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, w1.qids[999], &d, &n), 0);
    uint8_t *want = pattern(512, 999);
    assert_int_equal(n, 512);
    assert_memory_equal(d, want, 512);
    free(want);
    free(d);
    tern_spool_close(s);

    s = open_spool(dir, 0);
    assert_int_equal(stats(s).replayed, 2000);
    tern_spool_close(s);
    tmpdir_free(dir);
}

static void test_rotation(void **state)
{
    char *dir = tmpdir_new();
    /* Records of ~1.3 KiB: three fill a 3000-byte segment. */
    tern_spool *s = open_spool(dir, 3000);
    uint32_t first = stats(s).current_segment;
    static waiter w, w2, w3, w4;
    memset(&w, 0, sizeof(w));
    memset(&w2, 0, sizeof(w2));
    memset(&w3, 0, sizeof(w3));
    memset(&w4, 0, sizeof(w4));
    submit_n(s, 3, 1000, 0, &w); /* X Y Z in `first` */
    assert_int_equal(stats(s).current_segment, first);
    submit_n(s, 1, 2400, 10, &w2); /* W opens first+1 */
    assert_int_equal(stats(s).current_segment, first + 1);
    /* The tombstone of X lands in first+1 ... */
    assert_int_equal(tern_spool_complete(s, w.qids[0]), 0);
    assert_int_equal(tern_spool_complete(s, w2.qids[0]), 0);
    submit_n(s, 1, 1000, 20, &w3); /* M, still in first+1 */
    assert_int_equal(stats(s).current_segment, first + 1);
    /* ... which, once M is done too, holds nothing live but must outlive
     * `first`: otherwise X would come back on replay. */
    assert_int_equal(tern_spool_complete(s, w3.qids[0]), 0);
    submit_n(s, 12, 1000, 30, &w4);
    tern_spool_stats st = stats(s);
    assert_true(st.current_segment >= first + 4);
    assert_true(st.segments_created >= 5);
    tern_spool_close(s);
    assert_true(segment_exists(dir, first));
    assert_true(segment_exists(dir, first + 1));

    s = open_spool(dir, 3000);
    static collected col;
    memset(&col, 0, sizeof(col));
    assert_int_equal(tern_spool_each(s, collect_cb, &col), 14);
    assert_string_equal(col.env[0]->qid, w.qids[1]);
    assert_string_equal(col.env[1]->qid, w.qids[2]);
    assert_string_equal(col.env[2]->qid, w4.qids[0]);
    collected_free(&col);
    /* Completing everything leaves only the current segment: `first` goes,
     * then the one holding its tombstones. */
    assert_int_equal(tern_spool_complete(s, w.qids[1]), 0);
    assert_int_equal(tern_spool_complete(s, w.qids[2]), 0);
    for (int i = 0; i < 12; i++)
        assert_int_equal(tern_spool_complete(s, w4.qids[i]), 0);
    tern_spool_close(s);
    assert_false(segment_exists(dir, first));
    assert_false(segment_exists(dir, first + 1));

    s = open_spool(dir, 3000);
    st = stats(s);
    assert_int_equal(st.live, 0);
    assert_int_equal(st.segments, 1); /* just the fresh current one */
    assert_true(st.segments_deleted >= 1);
    tern_spool_close(s);
    assert_int_equal(count_segments(dir), 1);
    tmpdir_free(dir);
}

/* Writes 3 messages and returns the path of their segment. */
static uint32_t three_messages(const char *dir, waiter *w)
{
    tern_spool *s = open_spool(dir, 0);
    uint32_t seg = stats(s).current_segment;
    submit_n(s, 3, 3000, 300, w);
    tern_spool_close(s);
    return seg;
}

static void test_torn_tail(void **state)
{
    char *dir = tmpdir_new();
    static waiter w;
    memset(&w, 0, sizeof(w));
    uint32_t seg = three_messages(dir, &w);
    char path[512];
    seg_path(path, sizeof(path), dir, seg);
    uint64_t offs[8];
    assert_int_equal(record_offsets(path, offs, 8), 3);
    /* Cut the last record in the middle of its payload. */
    assert_int_equal(truncate(path, (off_t)offs[2] + 1500), 0);
    tern_spool *s = open_spool(dir, 0);
    tern_spool_stats st = stats(s);
    assert_int_equal(st.replayed, 2);
    assert_int_equal(st.torn_tails, 1);
    assert_int_equal(st.corrupt_records, 0);
    assert_int_equal(file_size(path), (off_t)offs[2]);
    check_message(s, w.qids[0], 3000, 300);
    check_message(s, w.qids[1], 3000, 301);
    tern_spool_close(s);

    /* A crash can also leave the size extended with zeros. */
    assert_int_equal(truncate(path, (off_t)offs[2] + 4096), 0);
    s = open_spool(dir, 0);
    st = stats(s);
    assert_int_equal(st.replayed, 2);
    assert_int_equal(st.torn_tails, 1);
    assert_int_equal(file_size(path), (off_t)offs[2]);
    tern_spool_close(s);
    tmpdir_free(dir);
}

static void test_corrupt(void **state)
{
    char *dir = tmpdir_new();
    static waiter w;
    memset(&w, 0, sizeof(w));
    uint32_t seg = three_messages(dir, &w);
    char path[512];
    seg_path(path, sizeof(path), dir, seg);
    uint64_t offs[8];
    assert_int_equal(record_offsets(path, offs, 8), 3);
    off_t size = file_size(path);

    /* A damaged payload: skipped by its (checked) length. */
    flip_byte(path, offs[1] + SPOOL_REC_HDR_LEN + 2000);
    tern_spool *s = open_spool(dir, 0);
    tern_spool_stats st = stats(s);
    assert_int_equal(st.replayed, 2);
    assert_int_equal(st.corrupt_records, 1);
    assert_int_equal(st.torn_tails, 0);
    check_message(s, w.qids[0], 3000, 300);
    check_message(s, w.qids[2], 3000, 302);
    uint8_t *d;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, w.qids[1], &d, &n), -ENOENT);
    tern_spool_close(s);
    assert_int_equal(file_size(path), size); /* corruption is not truncated away */
    flip_byte(path, offs[1] + SPOOL_REC_HDR_LEN + 2000);

    /* A damaged header: its length cannot be trusted; find the next one. */
    flip_byte(path, offs[1] + 9);
    s = open_spool(dir, 0);
    st = stats(s);
    assert_int_equal(st.replayed, 2);
    assert_int_equal(st.corrupt_records, 1);
    check_message(s, w.qids[2], 3000, 302);
    tern_spool_close(s);
    flip_byte(path, offs[1] + 9);

    /* Damaged file header: records are still read. */
    flip_byte(path, 2);
    s = open_spool(dir, 0);
    st = stats(s);
    assert_int_equal(st.replayed, 3);
    assert_int_equal(st.corrupt_records, 1);
    tern_spool_close(s);

    /* Garbage everywhere: never a crash. */
    for (uint64_t off = 0; off < (uint64_t)size; off += 97)
        flip_byte(path, off);
    s = open_spool(dir, 0);
    tern_spool_close(s);
    tmpdir_free(dir);
}

typedef struct body_ctx {
    int calls;
    int status;
} body_ctx;

static void on_body(void *arg, int status)
{
    body_ctx *b = arg;
    b->calls++;
    b->status = status;
}

static void test_body_spill(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(s, &loop);
    const size_t total = 5u << 20;
    uint8_t *data = pattern(total, 5);
    tern_body *b = tern_body_new(&loop, tern_spool_tmpdir(s), 64 * 1024);
    assert_non_null(b);
    body_ctx bc = {0};
    int waits = 0;
    size_t off = 0;
    bool saw_busy = false;
    while (off < total) {
        size_t chunk = total - off < 65000 ? total - off : 65000;
        int r = tern_body_append(b, data + off, chunk, on_body, &bc);
        assert_true(r == 0 || r == 1);
        off += chunk;
        if (r == 1) {
            if (!saw_busy) {
                assert_int_equal(tern_body_append(b, data, 1, on_body, &bc), -EBUSY);
                tern_envelope e = env_basic();
                static waiter wb;
                assert_int_equal(tern_spool_submit(c, &e, "", 0, b, on_submit, &wb), -EBUSY);
                saw_busy = true;
            }
            int target = bc.calls + 1;
            run_until(&loop, &bc.calls, target);
            assert_int_equal(bc.status, 0);
            waits++;
        }
    }
    assert_true(saw_busy);
    assert_true(waits >= 2);
    assert_int_equal(tern_body_size(b), total);
    tern_body_view v;
    tern_body__view(b, &v);
    assert_true(v.fd >= 0);
    assert_true(v.file_len > 0);
    assert_int_equal(v.file_len + v.mem_len, total);

    static waiter w;
    memset(&w, 0, sizeof(w));
    tern_envelope e = env_basic();
    assert_int_equal(tern_spool_submit(c, &e, "P:\r\n", 4, b, on_submit, &w), 0);
    run_until(&loop, &w.done, 1);
    assert_int_equal(w.failed, 0);
    tern_spool_client_close(c);
    loop_finish(&loop);
    tern_spool_close(s);

    s = open_spool(dir, 0);
    uint8_t *got;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, w.qids[0], &got, &n), 0);
    assert_int_equal(n, total + 4);
    assert_memory_equal(got, "P:\r\n", 4);
    assert_memory_equal(got + 4, data, total);
    free(got);
    tern_spool_close(s);
    free(data);

    /* A body freed while its write is in flight is finished by the loop. */
    uv_loop_init(&loop);
    b = tern_body_new(&loop, "/tmp", 10);
    uint8_t small[100] = {0};
    assert_int_equal(tern_body_append(b, small, sizeof(small), on_body, &bc), 1);
    tern_body_free(b);
    loop_finish(&loop);
    tmpdir_free(dir);
}

static void test_envelope_odd(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    char longstr[70000];
    memset(longstr, 'x', sizeof(longstr) - 1);
    longstr[sizeof(longstr) - 1] = '\0';
    tern_spool_rcpt r[3] = {
        {.addr = "\xc3\xa9l\xc3\xa8ve@\xc3\xa9" "cole.fr", .orcpt = "utf-8;\xff\xfe", .notify = 0x0f},
        {.addr = "", .orcpt = "", .notify = TERN_NOTIFY_NEVER},
        {.addr = "a b\r\n.\r\n\"q\"=\\", .orcpt = longstr, .notify = 0},
    };
    tern_envelope e = {
        .mail_from = "",
        .rcpts = r,
        .n_rcpts = 3,
        .envid = NULL,
        .ret = TERN_RET_FULL,
        .body = TERN_BODY_BINARYMIME,
        .smtputf8 = true,
        .requiretls = true,
        .auth_user = "user\x01\x7f",
        .helo = "[IPv6:2001:db8::1]",
        .client_addr = "2001:db8::1",
        .session_id = "",
        .listener = "sub mission",
        .pipeline = NULL,
        .received_at = -1,
    };
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(s, &loop);
    static waiter w;
    memset(&w, 0, sizeof(w));
    /* No body at all: the prefix is the whole message. */
    assert_int_equal(tern_spool_submit(c, &e, "only\r\n", 6, NULL, on_submit, &w), 0);
    run_until(&loop, &w.done, 1);
    assert_int_equal(w.failed, 0);
    tern_spool_client_close(c);
    loop_finish(&loop);
    tern_spool_close(s);

    s = open_spool(dir, 0);
    static collected col;
    memset(&col, 0, sizeof(col));
    assert_int_equal(tern_spool_each(s, collect_cb, &col), 1);
    tern_envelope *g = col.env[0];
    assert_string_equal(g->mail_from, "");
    assert_int_equal(g->n_rcpts, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(g->rcpts[i].addr, r[i].addr);
        assert_string_equal(g->rcpts[i].orcpt, r[i].orcpt);
        assert_int_equal(g->rcpts[i].notify, r[i].notify);
    }
    assert_null(g->envid);
    assert_null(g->pipeline);
    assert_int_equal(g->ret, TERN_RET_FULL);
    assert_int_equal(g->body, TERN_BODY_BINARYMIME);
    assert_true(g->smtputf8);
    assert_true(g->requiretls);
    assert_string_equal(g->auth_user, e.auth_user);
    assert_string_equal(g->helo, e.helo);
    assert_string_equal(g->session_id, "");
    assert_string_equal(g->listener, "sub mission");
    assert_int_equal(g->received_at, -1);
    assert_int_equal(g->size, 6);
    uint8_t *d;
    size_t n;
    assert_int_equal(tern_spool_read_message(s, w.qids[0], &d, &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(d, "only\r\n", 6);
    free(d);

    /* Decoding every truncation and many bit flips of a valid blob never
     * crashes and never accepts garbage lengths. */
    size_t len;
    uint8_t *blob = spool_env_encode(g, &len);
    assert_non_null(blob);
    for (size_t cut = 0; cut < len; cut++) {
        const char *why;
        tern_envelope *x = spool_env_decode(blob, cut, &why);
        spool_env_free(x);
    }
    for (size_t i = 0; i < len; i += 7) {
        blob[i] ^= 0xff;
        const char *why;
        spool_env_free(spool_env_decode(blob, len, &why));
        blob[i] ^= 0xff;
    }
    free(blob);
    collected_free(&col);
    tern_spool_close(s);
    tmpdir_free(dir);
}

typedef struct snap {
    char name[64];
    off_t size;
    struct timespec mtime;
    uint32_t crc;
} snap;

static size_t snapshot_dir(const char *dir, snap *out, size_t max)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/segments", dir);
    uv_fs_t req;
    int n = uv_fs_scandir(NULL, &req, path, 0, NULL);
    size_t k = 0;
    uv_dirent_t ent;
    while (n > 0 && k < max && uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        char p[600];
        snprintf(p, sizeof(p), "%s/%s", path, ent.name);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        snprintf(out[k].name, sizeof(out[k].name), "%s", ent.name);
        out[k].size = st.st_size;
        out[k].mtime = st.st_mtim;
        FILE *f = fopen(p, "rb");
        uint8_t *buf = malloc((size_t)st.st_size + 1);
        size_t got = fread(buf, 1, (size_t)st.st_size, f);
        fclose(f);
        out[k].crc = spool_crc32c(0, buf, got);
        free(buf);
        k++;
    }
    uv_fs_req_cleanup(&req);
    return k;
}

static void test_readonly(void **state)
{
    char *dir = tmpdir_new();
    static waiter w;
    memset(&w, 0, sizeof(w));
    uint32_t seg = three_messages(dir, &w);
    tern_spool *s = open_spool(dir, 0);
    assert_int_equal(tern_spool_complete(s, w.qids[0]), 0);
    tern_spool_close(s);
    char path[512];
    seg_path(path, sizeof(path), dir, seg);
    /* Leave a torn tail that a writable open would truncate. */
    off_t size = file_size(path);
    assert_int_equal(truncate(path, size + 100), 0);

    /* A writer holds the lock; read-only opening must still work. */
    s = NULL;
    snap before[16], after[16];
    size_t nb = snapshot_dir(dir, before, 16);
    tern_spool *ro = open_ro(dir);
    tern_spool_stats st = stats(ro);
    assert_int_equal(st.live, 2);
    assert_int_equal(st.torn_tails, 1);
    check_message(ro, w.qids[1], 3000, 301);
    assert_int_equal(tern_spool_complete(ro, w.qids[1]), -EROFS);
    static collected col;
    memset(&col, 0, sizeof(col));
    assert_int_equal(tern_spool_each(ro, collect_cb, &col), 2);
    collected_free(&col);
    tern_spool_close(ro);
    size_t na = snapshot_dir(dir, after, 16);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < nb; i++) {
        assert_string_equal(before[i].name, after[i].name);
        assert_int_equal(before[i].size, after[i].size);
        assert_int_equal(before[i].crc, after[i].crc);
        assert_int_equal(before[i].mtime.tv_sec, after[i].mtime.tv_sec);
        assert_int_equal(before[i].mtime.tv_nsec, after[i].mtime.tv_nsec);
    }
    /* Two writers never share a spool. */
    s = open_spool(dir, 0);
    tern_spool *s2 = NULL;
    char *err = NULL;
    assert_int_equal(tern_spool_open(dir, NULL, &s2, &err), -1);
    assert_non_null(strstr(err, "in use"));
    free(err);
    ro = open_ro(dir);
    assert_int_equal(stats(ro).live, 2);
    tern_spool_close(ro);
    tern_spool_close(s);
    char *missing = NULL;
    assert_int_equal(tern_spool_open_readonly("/nonexistent/tern", &ro, &missing), -1);
    free(missing);
    tmpdir_free(dir);
}

static void test_client_close_pending(void **state)
{
    char *dir = tmpdir_new();
    tern_spool *s = open_spool(dir, 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(s, &loop);
    static waiter w;
    memset(&w, 0, sizeof(w));
    for (int i = 0; i < 20; i++) {
        tern_envelope e = env_basic();
        tern_body *b = mem_body(&loop, (const uint8_t *)"hi\r\n", 4);
        assert_int_equal(tern_spool_submit(c, &e, "", 0, b, on_submit, &w), 0);
    }
    tern_spool_client_close(c);
    /* Callbacks still arrive; then the handle closes and the loop ends. */
    loop_finish(&loop);
    assert_int_equal(w.done, 20);
    assert_int_equal(w.failed, 0);
    tern_spool_close(s);
    tmpdir_free(dir);
}

typedef struct sink_ctx {
    pthread_mutex_t lock;
    int n;
    char qids[64][TERN_QID_LEN];
} sink_ctx;

static void sink_cb(void *arg, const tern_envelope *env)
{
    sink_ctx *k = arg;
    pthread_mutex_lock(&k->lock);
    if (k->n < 64)
        memcpy(k->qids[k->n], env->qid, TERN_QID_LEN);
    k->n++;
    pthread_mutex_unlock(&k->lock);
}

static int sink_count(sink_ctx *k)
{
    pthread_mutex_lock(&k->lock);
    int n = k->n;
    pthread_mutex_unlock(&k->lock);
    return n;
}

static void test_sink(void **state)
{
    char *dir = tmpdir_new();
    static waiter w;
    memset(&w, 0, sizeof(w));
    three_messages(dir, &w);
    tern_spool *s = open_spool(dir, 0);
    static sink_ctx k = {.lock = PTHREAD_MUTEX_INITIALIZER};
    tern_spool_set_sink(s, sink_cb, &k);
    static waiter w2;
    memset(&w2, 0, sizeof(w2));
    submit_n(s, 2, 10, 0, &w2);
    /* The sink runs after the completion is posted; wait for it. */
    for (int i = 0; i < 2000 && sink_count(&k) < 5; i++)
        usleep(1000);
    tern_spool_close(s);
    assert_int_equal(k.n, 5);
    for (int i = 0; i < 3; i++)
        assert_string_equal(k.qids[i], w.qids[i]);
    assert_string_equal(k.qids[3], w2.qids[0]);
    assert_string_equal(k.qids[4], w2.qids[1]);
    tmpdir_free(dir);
}

static void test_no_fsync_and_delay(void **state)
{
    char *dir = tmpdir_new();
    tern_spool_opts o = {.segment_size = 1 << 20, .group_commit_max = 8,
                         .group_commit_delay_us = 2000, .fsync = false};
    tern_spool *s = NULL;
    char *err = NULL;
    assert_int_equal(tern_spool_open(dir, &o, &s, &err), 0);
    static waiter w;
    memset(&w, 0, sizeof(w));
    submit_n(s, 40, 100, 0, &w);
    tern_spool_stats st = stats(s);
    assert_int_equal(st.fsyncs, 0);
    assert_true(st.batches >= 5); /* group_commit_max caps a batch */
    tern_spool_close(s);
    tmpdir_free(dir);
}

static int ack_fd = -1;

static void on_submit_ack(void *arg, int status, const char *qid, const char *error)
{
    int *done = arg;
    (*done)++;
    if (status == 0) {
        char line[TERN_QID_LEN + 1];
        memcpy(line, qid, TERN_QID_LEN - 1);
        line[TERN_QID_LEN - 1] = '\n';
        if (write(ack_fd, line, TERN_QID_LEN) != TERN_QID_LEN)
            _exit(3);
    }
}

/* The child submits without end and reports each acknowledgement; it is
 * killed mid-stream. Everything it reported must be in the spool. */
static void kill9_child(const char *dir)
{
    tern_spool_opts o = {.segment_size = 256 * 1024, .group_commit_max = 64, .fsync = true};
    tern_spool *s = NULL;
    char *err = NULL;
    if (tern_spool_open(dir, &o, &s, &err) != 0)
        _exit(2);
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *c = tern_spool_client_new(s, &loop);
    int sent = 0, done = 0;
    uint8_t *data = pattern(2000, 9);
    for (;;) {
        while (sent - done < 32) {
            tern_envelope e = env_basic();
            tern_body *b = tern_body_new(&loop, tern_spool_tmpdir(s), 1000);
            if (sent % 3 == 0) { /* some bodies in memory, some spilled */
                tern_body_append(b, data, 900, NULL, NULL);
            } else {
                body_ctx bc = {0};
                if (tern_body_append(b, data, 2000, on_body, &bc) == 1)
                    run_until(&loop, &bc.calls, 1);
            }
            if (tern_spool_submit(c, &e, "", 0, b, on_submit_ack, &done) != 0)
                _exit(4);
            sent++;
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
}

static void test_kill9(void **state)
{
#if defined(__SANITIZE_THREAD__)
    skip(); /* TSan does not support threads in a child of fork */
#endif
    char *dir = tmpdir_new();
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        ack_fd = p[1];
        kill9_child(dir);
        _exit(0);
    }
    close(p[1]);
    static char acked[20000][TERN_QID_LEN];
    size_t n = 0;
    char line[TERN_QID_LEN];
    size_t got = 0;
    bool killed = false;
    for (;;) {
        ssize_t r = read(p[0], line + got, sizeof(line) - got);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got < sizeof(line))
            continue;
        got = 0;
        assert_int_equal(line[TERN_QID_LEN - 1], '\n');
        if (n < 20000) {
            memcpy(acked[n], line, TERN_QID_LEN - 1);
            acked[n][TERN_QID_LEN - 1] = '\0';
            n++;
        }
        if (n == 300 && !killed) {
            kill(pid, SIGKILL);
            killed = true;
        }
    }
    close(p[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st));
    assert_true(n >= 300);
    tern_spool *s = open_spool(dir, 0);
    for (size_t i = 0; i < n; i++) {
        uint8_t *d;
        size_t len;
        if (tern_spool_read_message(s, acked[i], &d, &len) != 0)
            fail_msg("acknowledged message %s lost", acked[i]);
        assert_true(len == 900 || len == 2000);
        free(d);
    }
    assert_true(stats(s).live >= n);
    print_message("kill -9: %zu acknowledged, %llu in the spool, %llu torn tails\n", n,
                  (unsigned long long)stats(s).live, (unsigned long long)stats(s).torn_tails);
    tern_spool_close(s);
    tmpdir_free(dir);
}

int main(void)
{
    /* Corruption tests log errors on purpose; keep the output readable. */
    const char *spec = getenv("TERN_TEST_LOG");
    if (spec)
        tern_log_configure(spec, NULL);
    else
        tern_log_set_fd(open("/dev/null", O_WRONLY | O_CLOEXEC));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_complete),
        cmocka_unit_test(test_retry_state),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_torn_tail),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_body_spill),
        cmocka_unit_test(test_envelope_odd),
        cmocka_unit_test(test_readonly),
        cmocka_unit_test(test_client_close_pending),
        cmocka_unit_test(test_sink),
        cmocka_unit_test(test_no_fsync_and_delay),
        cmocka_unit_test(test_kill9),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
