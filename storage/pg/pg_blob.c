/* The PostgreSQL backend's blob directory (postgres.blob_dir): message
 * bodies kept as content-addressed files BLOB_DIR/ab/cd/<sha256 hex>, the
 * `bodies` row holding only the hash, its refcount and `external`.
 *
 * Everything here does file I/O and runs on the thread pool (pg_work in
 * pg.c), never on the backend's loop, except pg_blob_sweep at store open,
 * which runs before any loop (as the schema check does) and on the pool
 * from the periodic sweep.
 *
 * Durability: a body is written to BLOB_DIR/tmp/<unique>, fsync'd,
 * renamed to its final name and the directory fsync'd, so a name under
 * ab/cd/ always holds the whole body; the row is committed only after.
 *
 * Removal, which other nodes sharing the directory may race with: a file
 * is never unlinked in place. Its name is first renamed into tmp/ as
 * reap.<hex>.<unique>, the database is then asked whether an external row
 * of that hash exists (an append of equal bytes may have taken one since
 * the row was deleted), and the file is linked back if so. An append that
 * found the file already there checks, after its commit, that it is
 * still there and writes it again if not (pg_blob_ensure): whichever of
 * the two looks last sees the other. A crash between the rename and the
 * decision leaves a reap.* file, which the sweep links back or removes.
 *
 * Input trusted: the directory from the validated config; hashes from our
 * own code or from the database (checked to be 64 hex digits before they
 * make a path); file contents are message bytes and never interpreted. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "lib/log.h"
#include "storage/pg/pg_internal.h"

static atomic_uint blob_seq;

void pg_blob_hex(const uint8_t h[32], char out[65])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hx[h[i] >> 4];
        out[2 * i + 1] = hx[h[i] & 15];
    }
    out[64] = 0;
}

bool pg_blob_valid_hex(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == 64;
}

static int blob_path(const char *dir, const char *hex, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%.2s/%.2s/%s", dir, hex, hex + 2, hex);
    return n > 0 && (size_t)n < cap ? 0 : -ENAMETOOLONG;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* mkdir that is fine with an existing directory; a new one's parent is
 * fsync'd so its entry survives a crash. */
static int mkdir_durable(const char *path, const char *parent)
{
    if (mkdir(path, 0700) == 0)
        return fsync_dir(parent);
    return errno == EEXIST ? 0 : -errno;
}

static int ensure_fanout(const char *dir, const char *hex)
{
    char a[PG_BLOB_PATH_MAX], b[PG_BLOB_PATH_MAX];
    snprintf(a, sizeof a, "%s/%.2s", dir, hex);
    snprintf(b, sizeof b, "%s/%.2s/%.2s", dir, hex, hex + 2);
    int rc = mkdir_durable(a, dir);
    return rc < 0 ? rc : mkdir_durable(b, a);
}

int pg_blob_dir_prepare(const char *dir, char **error_r)
{
    char buf[PG_BLOB_PATH_MAX + 64];
    if (dir[0] != '/') {
        snprintf(buf, sizeof buf, "postgres.blob_dir %s is not an absolute path", dir);
        *error_r = strdup(buf);
        return -1;
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(buf, sizeof buf, "postgres.blob_dir %s: %s", dir, strerror(errno));
        *error_r = strdup(buf);
        return -1;
    }
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || (st.st_mode & S_IWOTH)) {
        snprintf(buf, sizeof buf, "postgres.blob_dir %s: not a directory, or world-writable", dir);
        *error_r = strdup(buf);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s/tmp", dir);
    int rc = mkdir_durable(buf, dir);
    if (rc < 0) {
        char e[PG_BLOB_PATH_MAX + 128];
        snprintf(e, sizeof e, "postgres.blob_dir %s: %s", buf, strerror(-rc));
        *error_r = strdup(e);
        return -1;
    }
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Writes the body under its final name (if that name is free). */
static int write_new(const char *dir, const char *hex, const uint8_t *data, size_t len)
{
    char tmp[PG_BLOB_PATH_MAX], fin[PG_BLOB_PATH_MAX], sub[PG_BLOB_PATH_MAX];
    int rc = ensure_fanout(dir, hex);
    if (rc < 0)
        return rc;
    unsigned seq = atomic_fetch_add(&blob_seq, 1);
    snprintf(tmp, sizeof tmp, "%s/tmp/w.%s.%ld.%u.%08x", dir, hex, (long)getpid(), seq,
             randombytes_random());
    if (blob_path(dir, hex, fin, sizeof fin) < 0)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    rc = write_all(fd, data, len);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, fin) < 0)
        rc = -errno;
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    snprintf(sub, sizeof sub, "%s/%.2s/%.2s", dir, hex, hex + 2);
    return fsync_dir(sub);
}

int pg_blob_write(const char *dir, const uint8_t *data, size_t len, uint8_t hash[32],
                  bool *existed_r)
{
    char hex[65], fin[PG_BLOB_PATH_MAX];
    crypto_hash_sha256(hash, data, len);
    pg_blob_hex(hash, hex);
    if (blob_path(dir, hex, fin, sizeof fin) < 0)
        return -ENAMETOOLONG;
    struct stat st;
    /* Equal bytes are stored once: an existing file of this name holds
     * them (it was written whole before it got the name). */
    if (stat(fin, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == len) {
        *existed_r = true;
        return 0;
    }
    *existed_r = false;
    return write_new(dir, hex, data, len);
}

int pg_blob_ensure(const char *dir, const uint8_t hash[32], const uint8_t *data, size_t len)
{
    char hex[65], fin[PG_BLOB_PATH_MAX];
    pg_blob_hex(hash, hex);
    if (blob_path(dir, hex, fin, sizeof fin) < 0)
        return -ENAMETOOLONG;
    if (access(fin, F_OK) == 0)
        return 0;
    TLOG_WARN("store", "event=blob_rewrite hash=%s", hex);
    return write_new(dir, hex, data, len);
}

int pg_blob_read(const char *dir, const char *hex, uint64_t off, size_t len, uint8_t *out,
                 size_t *got_r)
{
    char fin[PG_BLOB_PATH_MAX];
    *got_r = 0;
    if (!pg_blob_valid_hex(hex) || blob_path(dir, hex, fin, sizeof fin) < 0)
        return -EINVAL;
    int fd = open(fin, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, out + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *got_r = got;
    return 0;
}

int pg_blob_size(const char *dir, const char *hex, uint64_t *size_r)
{
    char fin[PG_BLOB_PATH_MAX];
    struct stat st;
    if (!pg_blob_valid_hex(hex) || blob_path(dir, hex, fin, sizeof fin) < 0)
        return -EINVAL;
    if (stat(fin, &st) < 0)
        return -errno;
    *size_r = (uint64_t)st.st_size;
    return 0;
}

int pg_blob_reap_take(const char *dir, const char *hex, char *taken, size_t cap)
{
    char fin[PG_BLOB_PATH_MAX];
    if (!pg_blob_valid_hex(hex) || blob_path(dir, hex, fin, sizeof fin) < 0)
        return -EINVAL;
    unsigned seq = atomic_fetch_add(&blob_seq, 1);
    int n = snprintf(taken, cap, "%s/tmp/reap.%s.%ld.%u.%08x", dir, hex, (long)getpid(), seq,
                     randombytes_random());
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    return rename(fin, taken) < 0 ? -errno : 0;
}

int pg_blob_reap_settle(const char *dir, const char *hex, const char *taken, bool keep)
{
    if (keep) {
        char fin[PG_BLOB_PATH_MAX];
        if (blob_path(dir, hex, fin, sizeof fin) < 0 || ensure_fanout(dir, hex) < 0 ||
            (link(taken, fin) < 0 && errno != EEXIST)) {
            TLOG_ERR("store", "event=blob_restore_failed hash=%s error=%s", hex, strerror(errno));
            return -1; /* left in tmp/: the sweep tries again */
        }
    }
    return unlink(taken) < 0 ? -errno : 0;
}

/* ---- the sweep ----------------------------------------------------------- */

typedef struct sweep_list {
    char (*hex)[65];
    char **taken;     /* for reap.* files: their path */
    size_t n, cap;
} sweep_list;

static int list_add(sweep_list *l, const char *hex, const char *taken)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        char(*h)[65] = realloc(l->hex, cap * sizeof *h);
        if (!h)
            return -1;
        l->hex = h;
        char **t = realloc(l->taken, cap * sizeof *t);
        if (!t)
            return -1;
        l->taken = t;
        l->cap = cap;
    }
    memcpy(l->hex[l->n], hex, 65);
    l->taken[l->n] = taken ? strdup(taken) : NULL;
    if (taken && !l->taken[l->n])
        return -1;
    l->n++;
    return 0;
}

static void list_free(sweep_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->taken[i]);
    free(l->hex);
    free(l->taken);
    memset(l, 0, sizeof *l);
}

/* Which of hex[from..to) have an external row: alive[i] set. */
static int query_alive(PGconn *c, sweep_list *l, size_t from, size_t to, bool *alive)
{
    size_t cap = (to - from) * 68 + 3;
    char *arr = malloc(cap), *p = arr;
    if (!arr)
        return -1;
    *p++ = '{';
    for (size_t i = from; i < to; i++) {
        if (i > from)
            *p++ = ',';
        memcpy(p, l->hex[i], 64);
        p += 64;
    }
    *p++ = '}';
    *p = 0;
    const char *pv[1] = {arr};
    PGresult *r = PQexecParams(c,
                               "SELECT encode(hash, 'hex') FROM bodies WHERE external AND hash = ANY "
                               "(SELECT decode(h, 'hex') FROM unnest($1::text[]) h)",
                               1, NULL, pv, NULL, NULL, 0);
    free(arr);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        TLOG_ERR("store", "event=blob_sweep_query_failed error=%s", PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    for (size_t i = from; i < to; i++)
        alive[i - from] = false;
    for (int k = 0; k < PQntuples(r); k++) {
        const char *h = PQgetvalue(r, k, 0);
        for (size_t i = from; i < to; i++)
            if (!memcmp(l->hex[i], h, 64))
                alive[i - from] = true;
    }
    PQclear(r);
    return 0;
}

#define SWEEP_CHUNK 500

int pg_blob_sweep(const char *dir, const char *conninfo, uint64_t grace_s, char **error_r)
{
    time_t now = time(NULL);
    sweep_list cand = {0}, reap = {0};
    size_t tmp_removed = 0, removed = 0, restored = 0, kept_fresh = 0;
    int rc = -1;
    char path[PG_BLOB_PATH_MAX];
    PGconn *c = NULL;

    /* tmp/: reap.* files a crash left (decided below), other files older
     * than the grace period (writes that never got their name). */
    snprintf(path, sizeof path, "%s/tmp", dir);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char full[PG_BLOB_PATH_MAX + 264];
            snprintf(full, sizeof full, "%s/tmp/%s", dir, e->d_name);
            if (!strncmp(e->d_name, "reap.", 5) && strlen(e->d_name) > 5 + 64 &&
                e->d_name[5 + 64] == '.') {
                char hex[65];
                memcpy(hex, e->d_name + 5, 64);
                hex[64] = 0;
                if (pg_blob_valid_hex(hex) && list_add(&reap, hex, full) < 0)
                    goto out_closedir;
                continue;
            }
            struct stat st;
            if (lstat(full, &st) == 0 && (uint64_t)(now - st.st_mtime) > grace_s &&
                unlink(full) == 0)
                tmp_removed++;
        }
    out_closedir:
        closedir(d);
    }
    /* ab/cd/<hex>: files older than the grace period are candidates. */
    DIR *d1 = opendir(dir);
    if (!d1) {
        *error_r = strdup("blob sweep: cannot open postgres.blob_dir");
        goto out;
    }
    struct dirent *e1;
    while ((e1 = readdir(d1)) != NULL) {
        if (strlen(e1->d_name) != 2 || strspn(e1->d_name, "0123456789abcdef") != 2)
            continue;
        char p1[PG_BLOB_PATH_MAX + 8];
        snprintf(p1, sizeof p1, "%s/%s", dir, e1->d_name);
        DIR *d2 = opendir(p1);
        if (!d2)
            continue;
        struct dirent *e2;
        while ((e2 = readdir(d2)) != NULL) {
            if (strlen(e2->d_name) != 2 || strspn(e2->d_name, "0123456789abcdef") != 2)
                continue;
            char p2[PG_BLOB_PATH_MAX + 16];
            snprintf(p2, sizeof p2, "%s/%s", p1, e2->d_name);
            DIR *d3 = opendir(p2);
            if (!d3)
                continue;
            struct dirent *e3;
            while ((e3 = readdir(d3)) != NULL) {
                if (!pg_blob_valid_hex(e3->d_name))
                    continue;
                char full[PG_BLOB_PATH_MAX + 16 + 264];
                snprintf(full, sizeof full, "%s/%s", p2, e3->d_name);
                struct stat st;
                if (lstat(full, &st) < 0)
                    continue;
                if ((uint64_t)(now - st.st_mtime) <= grace_s) {
                    kept_fresh++;
                    continue;
                }
                if (list_add(&cand, e3->d_name, NULL) < 0) {
                    closedir(d3);
                    closedir(d2);
                    closedir(d1);
                    *error_r = strdup("blob sweep: out of memory");
                    goto out;
                }
            }
            closedir(d3);
        }
        closedir(d2);
    }
    closedir(d1);

    if (cand.n || reap.n) {
        c = PQconnectdb(conninfo);
        if (PQstatus(c) != CONNECTION_OK) {
            *error_r = strdup("blob sweep: cannot connect to the database");
            goto out;
        }
    }
    bool alive[SWEEP_CHUNK];
    /* Candidates without a row: taken into tmp/, asked about again (an
     * append may have taken a row meanwhile), then removed or put back. */
    for (size_t from = 0; from < cand.n; from += SWEEP_CHUNK) {
        size_t to = cand.n - from > SWEEP_CHUNK ? from + SWEEP_CHUNK : cand.n;
        if (query_alive(c, &cand, from, to, alive) < 0) {
            *error_r = strdup("blob sweep: query failed");
            goto out;
        }
        sweep_list taken = {0};
        for (size_t i = from; i < to; i++) {
            if (alive[i - from])
                continue;
            char t[PG_BLOB_PATH_MAX];
            if (pg_blob_reap_take(dir, cand.hex[i], t, sizeof t) == 0 &&
                list_add(&taken, cand.hex[i], t) < 0) {
                list_free(&taken);
                goto out;
            }
        }
        if (taken.n && query_alive(c, &taken, 0, taken.n, alive) < 0) {
            /* Unsure: everything goes back. */
            for (size_t i = 0; i < taken.n; i++)
                alive[i] = true;
        }
        for (size_t i = 0; i < taken.n; i++) {
            if (pg_blob_reap_settle(dir, taken.hex[i], taken.taken[i], alive[i]) == 0) {
                if (alive[i])
                    restored++;
                else {
                    removed++;
                    TLOG_DEBUG("store", "event=blob_sweep_removed hash=%s", taken.hex[i]);
                }
            }
        }
        list_free(&taken);
    }
    /* reap.* left by a crash: put back what still has a row. */
    for (size_t from = 0; from < reap.n; from += SWEEP_CHUNK) {
        size_t to = reap.n - from > SWEEP_CHUNK ? from + SWEEP_CHUNK : reap.n;
        if (query_alive(c, &reap, from, to, alive) < 0) {
            *error_r = strdup("blob sweep: query failed");
            goto out;
        }
        for (size_t i = from; i < to; i++)
            if (pg_blob_reap_settle(dir, reap.hex[i], reap.taken[i], alive[i - from]) == 0) {
                if (alive[i - from])
                    restored++;
                else
                    removed++;
            }
    }
    TLOG_INFO("store", "event=blob_sweep removed=%zu tmp_removed=%zu restored=%zu fresh_kept=%zu",
              removed, tmp_removed, restored, kept_fresh);
    rc = 0;
out:
    if (c)
        PQfinish(c);
    list_free(&cand);
    list_free(&reap);
    return rc;
}

/* ---- removal after a commit (a job of our own, pg.c spawn_reap) ---------- */

static void reap_take_work(pg_job *j)
{
    char **taken = j->q;
    for (int i = 0; i < j->n_dead; i++) {
        char t[PG_BLOB_PATH_MAX];
        taken[i] = NULL;
        int rc = pg_blob_reap_take(j->pg->blob_dir, j->dead[i], t, sizeof t);
        if (rc == 0)
            taken[i] = tern_arena_strdup(&j->a, t);
        else if (rc != -ENOENT)
            TLOG_WARN("store", "event=blob_unlink_failed hash=%s error=%s", j->dead[i],
                      strerror(-rc));
    }
}

void pg_blob_reap_settle_all(pg_job *j)
{
    char **taken = j->q;
    bool *alive = j->p;
    size_t removed = 0, kept = 0;
    for (int i = 0; i < j->n_dead; i++) {
        if (!taken[i])
            continue;
        if (pg_blob_reap_settle(j->pg->blob_dir, j->dead[i], taken[i], alive[i]) == 0) {
            if (alive[i])
                kept++;
            else
                removed++;
        }
    }
    TLOG_DEBUG("store", "event=blob_unlink removed=%zu kept=%zu", removed, kept);
}

int pg_op_blob_reap(pg_job *j)
{
    PG_BEGIN(j);
    if (!j->pg->blob_dir || j->n_dead == 0)
        return PG_DONE;
    j->q = tern_arena_alloc(&j->a, (size_t)j->n_dead * sizeof(char *));
    j->p = tern_arena_alloc(&j->a, (size_t)j->n_dead * sizeof(bool));
    if (!j->q || !j->p)
        return pg_done(j, TERN_STORE_ETEMP, "out of memory");
    memset(j->q, 0, (size_t)j->n_dead * sizeof(char *));
    PG_WORK(j, reap_take_work);
    {
        char **taken = j->q;
        const char **hx = tern_arena_alloc(&j->a, (size_t)j->n_dead * sizeof *hx);
        size_t n = 0;
        for (int i = 0; i < j->n_dead; i++)
            if (taken[i])
                hx[n++] = j->dead[i];
        if (n == 0)
            return PG_DONE;
        pg_p_strarray(j, hx, n, false);
    }
    /* An append of equal bytes may have made a new row since the delete. */
    PG_QUERY(j, "SELECT encode(hash, 'hex') FROM bodies WHERE external AND hash = ANY "
                "(SELECT decode(h, 'hex') FROM unnest($1::text[]) h)");
    {
        bool *alive = j->p;
        for (int i = 0; i < j->n_dead; i++) {
            alive[i] = false;
            for (int k = 0; k < PQntuples(j->res); k++)
                if (!strcmp(PQgetvalue(j->res, k, 0), j->dead[i]))
                    alive[i] = true;
        }
    }
    PG_WORK(j, pg_blob_reap_settle_all);
    PG_END(j);
}

/* ---- the marker --------------------------------------------------------- */

static PGresult *marker_exec(PGconn *c, const char *sql, const char *param, char **error_r)
{
    const char *pv[1] = {param};
    PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, param ? pv : NULL, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char buf[400];
        snprintf(buf, sizeof buf, "postgres: blob_dir check: %s", PQresultErrorMessage(r));
        buf[strcspn(buf, "\n")] = 0;
        *error_r = strdup(buf);
        PQclear(r);
        return NULL;
    }
    return r;
}

int pg_blob_marker(const char *conninfo, const char *blob_dir, char **error_r)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        char buf[400];
        snprintf(buf, sizeof buf, "postgres: cannot connect: %s", PQerrorMessage(c));
        buf[strcspn(buf, "\n")] = 0;
        *error_r = strdup(buf);
        PQfinish(c);
        return -1;
    }
    int rc = -1;
    PGresult *r = NULL;
    if (blob_dir) {
        r = marker_exec(c, "INSERT INTO meta (key, value) VALUES ('blob_dir', $1) "
                           "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        blob_dir, error_r);
        rc = r ? 0 : -1;
        goto out;
    }
    r = marker_exec(c, "SELECT value FROM meta WHERE key = 'blob_dir'", NULL, error_r);
    if (!r)
        goto out;
    if (PQntuples(r) == 0) {
        rc = 0;
        goto out;
    }
    char was[PG_BLOB_PATH_MAX];
    snprintf(was, sizeof was, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    /* Only databases that once used a blob directory pay for this look. */
    r = marker_exec(c, "SELECT count(*) FROM (SELECT 1 FROM bodies WHERE external LIMIT 1) x",
                    NULL, error_r);
    if (!r)
        goto out;
    if (strcmp(PQgetvalue(r, 0, 0), "0") != 0) {
        char buf[PG_BLOB_PATH_MAX + 300];
        snprintf(buf, sizeof buf,
                 "postgres: the database keeps message bodies in the blob directory %s, "
                 "but postgres.blob_dir is not set: set it (the same path), or those "
                 "messages cannot be read", was);
        *error_r = strdup(buf);
        goto out;
    }
    PQclear(r);
    r = marker_exec(c, "DELETE FROM meta WHERE key = 'blob_dir'", NULL, error_r);
    rc = r ? 0 : -1;
out:
    if (r)
        PQclear(r);
    PQfinish(c);
    return rc;
}
