/* Spool acceptance benchmark (run by hand, never in CI): K threads, each
 * with its own uv loop and spool client, keep W submissions of S-byte
 * messages in flight until N are durable; prints messages/s. With --baseline
 * it instead measures a Postfix-like queue: P threads each writing one file
 * per message, fsync, close, rename into place, for the same N messages.
 * Input trusted: the command line. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage/queue/spool.h"
#include "storage/queue/spool_stats.h"

static int n_total = 20000, k_threads = 4, window = 64, msg_size = 4096, p_threads = 64;
static bool do_fsync = true;
static tern_spool *spool;
static uint8_t *payload;
static const char *basedir;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct worker {
    int n, done, sent, failed;
    uv_loop_t loop;
} worker;

static void on_done(void *arg, int status, const char *qid, const char *error)
{
    worker *w = arg;
    w->done++;
    if (status != 0)
        w->failed++;
}

static void *spool_worker(void *arg)
{
    worker *w = arg;
    uv_loop_init(&w->loop);
    tern_spool_client *c = tern_spool_client_new(spool, &w->loop);
    static tern_spool_rcpt rcpt = {.addr = "bob@example.org"};
    while (w->done < w->n) {
        while (w->sent < w->n && w->sent - w->done < window) {
            tern_envelope e = {.mail_from = "alice@example.com", .rcpts = &rcpt, .n_rcpts = 1,
                               .helo = "bench", .client_addr = "127.0.0.1", .listener = "mx",
                               .received_at = time(NULL)};
            tern_body *b = tern_body_new(&w->loop, tern_spool_tmpdir(spool), 1 << 20);
            tern_body_append(b, payload, (size_t)msg_size, NULL, NULL);
            const char prefix[] = "Received: from bench by tern\r\n";
            if (tern_spool_submit(c, &e, prefix, sizeof(prefix) - 1, b, on_done, w) != 0) {
                fprintf(stderr, "submit failed\n");
                exit(1);
            }
            w->sent++;
        }
        uv_run(&w->loop, UV_RUN_ONCE);
    }
    tern_spool_client_close(c);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    return NULL;
}

static atomic_int baseline_next;

static void *baseline_worker(void *arg)
{
    char tmp[4096], dst[4096];
    for (;;) {
        int i = atomic_fetch_add(&baseline_next, 1);
        if (i >= n_total)
            return NULL;
        snprintf(tmp, sizeof(tmp), "%s/incoming/t%d", basedir, i);
        snprintf(dst, sizeof(dst), "%s/active/m%d", basedir, i);
        int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, payload, (size_t)msg_size) != msg_size ||
            (do_fsync && fsync(fd) != 0) || close(fd) != 0 || rename(tmp, dst) != 0) {
            perror("baseline");
            exit(1);
        }
    }
}

int main(int argc, char **argv)
{
    bool baseline = false;
    char *dir = NULL;
    uint64_t delay_us = 0;
    int opt;
    while ((opt = getopt(argc, argv, "n:k:w:s:p:d:D:bF")) != -1) {
        switch (opt) {
        case 'n': n_total = atoi(optarg); break;
        case 'k': k_threads = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 's': msg_size = atoi(optarg); break;
        case 'p': p_threads = atoi(optarg); break;
        case 'd': dir = optarg; break;
        case 'D': delay_us = strtoull(optarg, NULL, 10); break;
        case 'b': baseline = true; break;
        case 'F': do_fsync = false; break;
        default:
            fprintf(stderr, "usage: spool_bench [-n N] [-k THREADS] [-w WINDOW] [-s SIZE] [-D DELAY_US]"
                            " [-F no fsync] [-b baseline [-p THREADS]] [-d DIR]\n");
            return 2;
        }
    }
    if (n_total <= 0 || k_threads <= 0 || window <= 0 || msg_size < 0 || p_threads <= 0)
        return 2;
    char tpl[] = "/tmp/tern-spool-bench-XXXXXX";
    if (dir == NULL && (dir = mkdtemp(tpl)) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    basedir = dir;
    payload = malloc((size_t)msg_size + 1);
    for (int i = 0; i < msg_size; i++)
        payload[i] = (uint8_t)(i % 64 == 63 ? '\n' : 'a' + i % 26);

    if (baseline) {
        char p[4096];
        snprintf(p, sizeof(p), "%s/incoming", dir);
        mkdir(p, 0700);
        snprintf(p, sizeof(p), "%s/active", dir);
        mkdir(p, 0700);
        pthread_t *t = calloc((size_t)p_threads, sizeof(*t));
        double t0 = now_s();
        for (int i = 0; i < p_threads; i++)
            pthread_create(&t[i], NULL, baseline_worker, NULL);
        for (int i = 0; i < p_threads; i++)
            pthread_join(t[i], NULL);
        double dt = now_s() - t0;
        printf("baseline (file per message%s, %d threads): %d messages of %d bytes in %.3f s: %.0f msg/s\n",
               do_fsync ? " + fsync" : "", p_threads, n_total, msg_size, dt, n_total / dt);
        free(t);
        printf("dir: %s (not removed)\n", dir);
        return 0;
    }

    tern_spool_opts o = {.segment_size = 64u << 20, .group_commit_max = 1024,
                         .group_commit_delay_us = delay_us, .fsync = do_fsync};
    char *err = NULL;
    char sp[4096];
    snprintf(sp, sizeof(sp), "%s/spool", dir);
    if (tern_spool_open(sp, &o, &spool, &err) != 0) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    worker *w = calloc((size_t)k_threads, sizeof(*w));
    pthread_t *t = calloc((size_t)k_threads, sizeof(*t));
    double t0 = now_s();
    for (int i = 0; i < k_threads; i++) {
        w[i].n = n_total / k_threads + (i < n_total % k_threads);
        pthread_create(&t[i], NULL, spool_worker, &w[i]);
    }
    int failed = 0;
    for (int i = 0; i < k_threads; i++) {
        pthread_join(t[i], NULL);
        failed += w[i].failed;
    }
    double dt = now_s() - t0;
    tern_spool_stats st;
    tern_spool_stats_get(spool, &st);
    printf("spool (%s, %d threads x window %d): %d messages of %d bytes in %.3f s: %.0f msg/s; "
           "%llu batches (%.1f msg/batch), %llu fsyncs, %d failed\n",
           do_fsync ? "fdatasync" : "no fsync", k_threads, window, n_total, msg_size, dt,
           n_total / dt, (unsigned long long)st.batches, (double)st.messages / (double)st.batches,
           (unsigned long long)st.fsyncs, failed);
    tern_spool_close(spool);
    free(w);
    free(t);
    printf("dir: %s (not removed)\n", dir);
    return failed ? 1 : 0;
}
