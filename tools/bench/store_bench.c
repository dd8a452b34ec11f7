/* store_bench: the program behind tools/bench/store. Measures one backend
 * through store.h only, as ternd would use it:
 *   1. appends/s into one mailbox (CLIENTS threads, each its own loop and
 *      client, WINDOW appends in flight each, 2 KiB messages);
 *   2. appends/s spread over 1,000 mailboxes (same clients);
 *   3. a BIG-message mailbox filled through APPEND (small messages), with
 *      RSS and the rate printed as it grows;
 *   4. UID FETCH 1:* of flags over it: in pages of 5,000 UIDs as IMAP asks
 *      (time, peak RSS), then as one request (time, RSS before/after);
 *   5. a header SEARCH (SUBJECT) over it, and a flag search.
 * First it measures the disk's own fsync rate (4 KiB writes, each followed
 * by fdatasync, for one second, in the bench's dir) as the yardstick the
 * append rates are read against: an append is durable only after a sync,
 * so without batching that is the most a backend could reach.
 *
 *   store_bench local|pg|pg-blob [-n APPENDS] [-m MAILBOXES] [-b BIG] [-c CLIENTS]
 *                        [-w WINDOW] [-t FILL_SECONDS] [-x FIELDS] [-k]
 *
 * -x puts FIELDS more header fields on each appended message (the rate
 * tests'), as real mail has some 20-30 (Received, DKIM-Signature, ...)
 * where the generated one has 5; the default 0 keeps figures comparable.
 *
 * The fill stops at FILL_SECONDS (default 1200) and the FETCH/SEARCH run
 * on what is there, reported with its size. pg uses TERN_TEST_PG_CONNINFO
 * (a fresh database, dropped at the end unless -k). Output: one
 * "key=value" line per figure. Trusts: its arguments. */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/store/harness.h"

#define ACCOUNT "bench@example.test"

static harness H;

typedef struct bench_thread {
    pthread_t th;
    uv_loop_t loop;
    tern_store_client *client;
    const char *const *mailboxes;
    size_t n_mailboxes;
    unsigned first, count;  /* message numbers this thread appends */
    unsigned next, done, in_flight, window, failed;
    size_t msg_size;
    const char *tag;
} bench_thread;

static unsigned extra_fields;

static void bt_fill(bench_thread *t);

/* msg with extra_fields "X-Bench-k:" lines on top (frees msg). */
static uint8_t *with_fields(uint8_t *msg, size_t *len, unsigned n)
{
    if (extra_fields == 0 || msg == NULL)
        return msg;
    size_t cap = *len + (size_t)extra_fields * 80 + 1;
    uint8_t *out = malloc(cap);
    if (out == NULL) {
        free(msg);
        return NULL;
    }
    size_t o = 0;
    for (unsigned k = 0; k < extra_fields; k++)
        o += (size_t)snprintf((char *)out + o, cap - o,
                              "X-Bench-%u: trace field %u of message %u, padded like a header\r\n",
                              k, k, n);
    memcpy(out + o, msg, *len);
    *len += o;
    out[*len] = 0; /* as harness_message's, for strstr */
    free(msg);
    return out;
}

static void bt_done(tern_store_req *r)
{
    bench_thread *t = r->data;
    if (r->status != TERN_STORE_OK && t->failed++ < 3)
        fprintf(stderr, "store_bench: append: %s %s\n", tern_store_strerror(r->status), r->error);
    free((void *)r->in.data);
    tern_store_req_free(r);
    t->done++;
    t->in_flight--;
    bt_fill(t);
}

static void bt_fill(bench_thread *t)
{
    while (t->in_flight < t->window && t->next < t->count) {
        unsigned n = t->first + t->next++;
        size_t len;
        uint8_t *msg = harness_message(t->tag, n, t->msg_size, &len);
        if (t->msg_size >= 2048)
            msg = with_fields(msg, &len, n);
        /* A few messages carry a rare subject word for the SEARCH. */
        if (n % 100000 == 77777)
            memcpy(strstr((char *)msg, "Subject: ") + 9, "needle", 6);
        tern_store_req *r = tern_store_req_new(TERN_STORE_APPEND, bt_done, t);
        r->in.account = ACCOUNT;
        r->in.name = t->mailboxes[n % t->n_mailboxes];
        r->in.data = msg;
        r->in.len = len;
        r->in.flags = n % 3 == 0 ? TERN_FLAG_SEEN : 0;
        if (tern_store_submit(t->client, r) != 0) {
            free(msg);
            tern_store_req_free(r);
            t->failed++;
            t->done++;
            continue;
        }
        t->in_flight++;
    }
}

static void *bt_main(void *arg)
{
    bench_thread *t = arg;
    uv_loop_init(&t->loop);
    t->client = tern_store_client_new(H.store, &t->loop);
    bt_fill(t);
    while (t->done < t->count)
        uv_run(&t->loop, UV_RUN_ONCE);
    tern_store_client_close(t->client);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->loop);
    return NULL;
}

/* Appends `count` messages numbered from `first` with `clients` threads;
 * returns the seconds it took, and the failures in *failed_r. */
static double append_run(const char *const *mailboxes, size_t n_mailboxes, unsigned first,
                         unsigned count, unsigned clients, unsigned window, size_t msg_size,
                         const char *tag, unsigned *failed_r)
{
    bench_thread *ts = calloc(clients, sizeof(*ts));
    unsigned per = count / clients, extra = count % clients, at = first;
    double t0 = harness_now();
    for (unsigned i = 0; i < clients; i++) {
        ts[i].mailboxes = mailboxes;
        ts[i].n_mailboxes = n_mailboxes;
        ts[i].first = at;
        ts[i].count = per + (i < extra);
        at += ts[i].count;
        ts[i].window = window;
        ts[i].msg_size = msg_size;
        ts[i].tag = tag;
        pthread_create(&ts[i].th, NULL, bt_main, &ts[i]);
    }
    unsigned failed = 0;
    for (unsigned i = 0; i < clients; i++) {
        pthread_join(ts[i].th, NULL);
        failed += ts[i].failed;
    }
    double dt = harness_now() - t0;
    free(ts);
    *failed_r = failed;
    return dt;
}

static void create_mailbox(const char *name)
{
    tern_store_req *r = hreq(TERN_STORE_MAILBOX_CREATE);
    r->in.account = ACCOUNT;
    r->in.name = name;
    int st = hrun(&H, r);
    if (st != TERN_STORE_OK && st != TERN_STORE_EEXISTS) {
        fprintf(stderr, "store_bench: create %s: %s %s\n", name, tern_store_strerror(st),
                r->error);
        exit(1);
    }
    tern_store_req_free(r);
}

static uint32_t count_messages(const char *mbox)
{
    tern_store_req *r = hreq(TERN_STORE_MAILBOX_STATUS);
    r->in.account = ACCOUNT;
    r->in.name = mbox;
    uint32_t n = hrun(&H, r) == TERN_STORE_OK ? r->out.mailbox.messages : 0;
    tern_store_req_free(r);
    return n;
}

/* Synced 4 KiB writes per second, over about one second, in dir. */
static double fsync_rate(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/fsync-probe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 0;
    static char block[4096];
    unsigned n = 0;
    double t0 = harness_now(), t;
    do {
        if (pwrite(fd, block, sizeof block, (off_t)(n % 16) * 4096) != (ssize_t)sizeof block ||
            fdatasync(fd) != 0)
            break;
        n++;
    } while ((t = harness_now() - t0) < 1.0);
    close(fd);
    unlink(path);
    t = harness_now() - t0;
    return t > 0 ? n / t : 0;
}

int main(int argc, char **argv)
{
    unsigned n_appends = 5000, n_mailboxes = 1000, big = 1000000, clients = 4, window = 16;
    double fill_seconds = 1200;
    bool keep = false;
    int opt;
    while ((opt = getopt(argc - 1, argv + 1, "n:m:b:c:w:t:x:k")) != -1) {
        switch (opt) {
        case 'n': n_appends = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'm': n_mailboxes = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'b': big = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'c': clients = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'w': window = (unsigned)strtoul(optarg, NULL, 10); break;
        case 't': fill_seconds = strtod(optarg, NULL); break;
        case 'x': extra_fields = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'k': keep = true; break;
        default:
            fprintf(stderr, "usage: store_bench local|pg|pg-blob [-n N] [-m M] [-b BIG] [-c C] [-w W] "
                            "[-t SECONDS] [-x FIELDS] [-k]\n");
            return 2;
        }
    }
    if (argc < 2 || clients == 0 || n_mailboxes == 0) {
        fprintf(stderr, "usage: store_bench local|pg [options]\n");
        return 2;
    }
    int rc = harness_init(&H, argv[1], NULL, NULL);
    if (rc != 0)
        return rc == 1 ? 77 : 1;
    H.keep = keep;
    if (harness_open(&H) != 0)
        return 1;
    if (harness_account(&H, ACCOUNT, 0, 0) != TERN_STORE_OK)
        return 1;
    printf("backend=%s dir=%s%s%s\n", argv[1], H.dir, H.pg ? " db=" : "", H.pg ? H.pg_db : "");
    printf("rss_start_kib=%ld\n", harness_rss_kib());
    printf("disk_fsync_rate=%.0f/s\n", fsync_rate(H.dir));
    fflush(stdout);

    unsigned failed;
    const char *inbox[] = {"INBOX"};
    double dt = append_run(inbox, 1, 1, n_appends, clients, window, 2048, "one", &failed);
    printf("append_one_mailbox messages=%u clients=%u window=%u seconds=%.2f rate=%.0f/s "
           "failed=%u\n",
           n_appends, clients, window, dt, n_appends / dt, failed);
    fflush(stdout);

    char **names = calloc(n_mailboxes, sizeof(char *));
    double t0 = harness_now();
    for (unsigned i = 0; i < n_mailboxes; i++) {
        names[i] = malloc(32);
        snprintf(names[i], 32, "box%04u", i);
        create_mailbox(names[i]);
    }
    printf("create_mailboxes count=%u seconds=%.2f\n", n_mailboxes, harness_now() - t0);
    dt = append_run((const char *const *)names, n_mailboxes, 1, n_appends, clients, window, 2048,
                    "many", &failed);
    printf("append_many_mailboxes mailboxes=%u messages=%u seconds=%.2f rate=%.0f/s failed=%u\n",
           n_mailboxes, n_appends, dt, n_appends / dt, failed);
    fflush(stdout);

    /* The big mailbox, in steps so RSS can be sampled as it grows. */
    create_mailbox("Big");
    const char *bigbox[] = {"Big"};
    unsigned have = count_messages("Big"), step = big >= 1000000 ? 100000 : (big / 10 ? big / 10 : big);
    double fill0 = harness_now();
    while (have < big && harness_now() - fill0 < fill_seconds) {
        unsigned n = big - have < step ? big - have : step;
        dt = append_run(bigbox, 1, have + 1, n, clients, window * 4, 300, "big", &failed);
        have += n - failed;
        printf("fill messages=%u step_rate=%.0f/s rss_kib=%ld failed=%u\n", have, n / dt,
               harness_rss_kib(), failed);
        fflush(stdout);
        if (failed == n)
            break;
    }
    have = count_messages("Big");
    printf("big_mailbox messages=%u fill_seconds=%.1f\n", have, harness_now() - fill0);

    /* As IMAP asks (imap.fetch_batch UIDs per store request, each answer
     * written before the next is asked): memory is one page's, however
     * big the mailbox. Before the one-request FETCH, whose 100 MB the
     * allocator keeps. */
    {
        tern_store_req *st = hreq(TERN_STORE_MAILBOX_STATUS);
        st->in.account = ACCOUNT;
        st->in.name = "Big";
        uint32_t uidnext = hrun(&H, st) == TERN_STORE_OK ? st->out.mailbox.uidnext : 1;
        tern_store_req_free(st);
        const uint32_t page = 5000;
        long rss0 = harness_rss_kib(), rss_max = rss0;
        size_t got = 0;
        unsigned seen = 0, pages = 0;
        int status = TERN_STORE_OK;
        t0 = harness_now();
        for (uint32_t first = 1; first < uidnext && status == TERN_STORE_OK; first += page) {
            tern_uid_range rg = {first, first + page - 1};
            tern_store_req *r = hreq(TERN_STORE_FETCH);
            r->in.account = ACCOUNT;
            r->in.name = "Big";
            r->in.uids = (tern_uid_set){&rg, 1};
            status = hrun(&H, r);
            got += r->out.n_messages;
            for (size_t i = 0; i < r->out.n_messages; i++)
                seen += (r->out.messages[i].flags & TERN_FLAG_SEEN) != 0;
            tern_store_req_free(r);
            pages++;
            long rss = harness_rss_kib();
            if (rss > rss_max)
                rss_max = rss;
        }
        printf("fetch_flags_paged page=%u pages=%u status=%s messages=%zu seen=%u seconds=%.3f "
               "rss_before_kib=%ld rss_max_kib=%ld\n",
               page, pages, tern_store_strerror(status), got, seen, harness_now() - t0, rss0,
               rss_max);
        fflush(stdout);
    }

    for (int rep = 0; rep < 2; rep++) {
        long rss0 = harness_rss_kib();
        tern_store_req *r = hreq(TERN_STORE_FETCH);
        static const tern_uid_range all = {1, UINT32_MAX};
        r->in.account = ACCOUNT;
        r->in.name = "Big";
        r->in.uids = (tern_uid_set){&all, 1};
        t0 = harness_now();
        int st = hrun(&H, r);
        dt = harness_now() - t0;
        unsigned seen = 0;
        for (size_t i = 0; i < r->out.n_messages; i++)
            seen += (r->out.messages[i].flags & TERN_FLAG_SEEN) != 0;
        printf("fetch_flags run=%d status=%s messages=%zu seen=%u seconds=%.3f rss_before_kib=%ld "
               "rss_after_kib=%ld result_arena_kib=%zu\n",
               rep + 1, tern_store_strerror(st), r->out.n_messages, seen, dt, rss0,
               harness_rss_kib(), r->arena.total / 1024);
        tern_store_req_free(r);
        fflush(stdout);
    }

    tern_search s = {.kind = TERN_SEARCH_HEADER, .field = "subject", .str = "needle"};
    for (int rep = 0; rep < 2; rep++) {
        tern_store_req *r = hreq(TERN_STORE_SEARCH);
        r->in.account = ACCOUNT;
        r->in.name = "Big";
        r->in.search = &s;
        t0 = harness_now();
        int st = hrun(&H, r);
        printf("search_header run=%d status=%s hits=%zu seconds=%.3f\n", rep + 1,
               tern_store_strerror(st), r->out.n_uids, harness_now() - t0);
        tern_store_req_free(r);
    }
    tern_search fs = {.kind = TERN_SEARCH_FLAGS_UNSET, .flags = TERN_FLAG_SEEN};
    tern_store_req *r = hreq(TERN_STORE_SEARCH);
    r->in.account = ACCOUNT;
    r->in.name = "Big";
    r->in.search = &fs;
    t0 = harness_now();
    int st = hrun(&H, r);
    printf("search_unseen status=%s hits=%zu seconds=%.3f\n", tern_store_strerror(st),
           r->out.n_uids, harness_now() - t0);
    tern_store_req_free(r);
    printf("rss_end_kib=%ld\n", harness_rss_kib());

    for (unsigned i = 0; i < n_mailboxes; i++)
        free(names[i]);
    free(names);
    harness_fini(&H);
    return 0;
}
