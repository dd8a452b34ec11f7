/* Auth benchmark (run by hand through tools/bench/auth, never in CI):
 * logins per second and CPU milliseconds per login, per mechanism, for the
 * file and internal backends. One uv loop keeps C requests in flight until
 * N logins are done; hashing runs on libuv's pool as in ternd. PLAIN is a
 * VERIFY_PASSWORD against {ARGON2ID} (the server's own parameters),
 * {SHA512-CRYPT} and {BLF-CRYPT}; SCRAM is a whole SCRAM-SHA-256 exchange
 * through tern_sasl with GET_SCRAM_KEYS (the client's side, whose
 * SaltedPassword a real client caches, is computed once). CPU is
 * getrusage(RUSAGE_SELF), so the pool threads count. Input trusted: the
 * command line. */
#include <crypt.h>
#include <ftw.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <sodium.h>

#include "auth/auth.h"
#include "auth/hash.h"
#include "auth/sasl/sasl.h"
#include "lib/log.h"
#include "storage/store.h"

#define PASSWORD "correct horse battery staple"

static int n_logins = 200, concurrency = 8, blf_cost = 10;
static char dir[64] = "/tmp/tern-auth-bench-XXXXXX";

typedef enum { M_ARGON2ID, M_SHA512, M_BLF, M_SCRAM, M_COUNT } mech;
static const char *const mech_name[] = {"PLAIN/ARGON2ID", "PLAIN/SHA512-CRYPT", "PLAIN/BLF-CRYPT",
                                        "SCRAM-SHA-256"};
static const char *const mech_user[] = {"argon@bench.test", "sha@bench.test", "blf@bench.test",
                                        "scram@bench.test"};
static char *creds[M_COUNT];
static uint8_t client_key[32]; /* SCRAM: the client's cached HMAC(SaltedPassword, "Client Key") */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static void die(const char *what)
{
    fprintf(stderr, "auth_bench: %s\n", what);
    exit(1);
}

static char *crypt_of(const char *prefix, unsigned long count)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data cd;
    memset(&cd, 0, sizeof cd);
    if (crypt_gensalt_rn(prefix, count, NULL, 0, salt, sizeof salt) == NULL)
        die("crypt_gensalt failed");
    const char *h = crypt_rn(PASSWORD, salt, &cd, sizeof cd);
    if (h == NULL || h[0] == '*')
        die("crypt failed");
    return strdup(h);
}

static void make_credentials(void)
{
    char a[TERN_HASH_MAX], s[TERN_HASH_MAX], buf[2 * TERN_HASH_MAX + 2];
    if (tern_hash_argon2id(PASSWORD, strlen(PASSWORD), a, sizeof a) != 0 ||
        tern_hash_scram_sha256(PASSWORD, strlen(PASSWORD), TERN_HASH_SCRAM_DEFAULT_ITERATIONS, s,
                               sizeof s) != 0)
        die("hashing failed");
    creds[M_ARGON2ID] = strdup(a);
    char *h = crypt_of("$6$", 0); /* crypt(3)'s default: 5000 rounds */
    snprintf(buf, sizeof buf, "{SHA512-CRYPT}%s", h);
    creds[M_SHA512] = strdup(buf);
    free(h);
    h = crypt_of("$2b$", (unsigned long)blf_cost);
    snprintf(buf, sizeof buf, "{BLF-CRYPT}%s", h);
    creds[M_BLF] = strdup(buf);
    free(h);
    snprintf(buf, sizeof buf, "%s %s", a, s);
    creds[M_SCRAM] = strdup(buf);

    /* The client's key, from the stored salt and iterations. */
    tern_scram_keys k;
    size_t len;
    const char *d = tern_hash_find(s, "SCRAM-SHA-256", &len);
    if (d == NULL || tern_hash_scram_parse(d, len, &k) != 0)
        die("scram parse failed");
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    uint8_t salted[32];
    mbedtls_md_context_t ctx;
    mbedtls_md_init(&ctx);
    if (mbedtls_md_setup(&ctx, md, 1) != 0 ||
        mbedtls_pkcs5_pbkdf2_hmac(&ctx, (const uint8_t *)PASSWORD, strlen(PASSWORD), k.salt,
                                  k.salt_len, k.iterations, sizeof salted, salted) != 0 ||
        mbedtls_md_hmac(md, salted, sizeof salted, (const uint8_t *)"Client Key", 10,
                        client_key) != 0)
        die("pbkdf2 failed");
    mbedtls_md_free(&ctx);
}

/* ---- one login ------------------------------------------------------------ */

typedef struct login {
    mech m;
    tern_sasl *sasl;
    char client_first_bare[128];
} login;

static tern_auth_client *client;
static uv_loop_t *bench_loop; /* stopped when the last login ends: clients keep handles open */
static int started, finished, failures;
static mech current;

static void start_one(void);

static void login_done(login *l, bool ok)
{
    if (!ok)
        failures++;
    tern_sasl_free(l->sasl);
    free(l);
    finished++;
    if (started < n_logins)
        start_one();
    else if (finished == started)
        uv_stop(bench_loop);
}

static void verified(tern_auth_req *r)
{
    login *l = r->data;
    bool ok = r->status == TERN_AUTH_OK;
    tern_auth_req_free(r);
    login_done(l, ok);
}

/* RFC 5802 client-final-message for the server-first message in `sf`. */
static int client_final(login *l, const uint8_t *sf, size_t sf_len, char *out, size_t size)
{
    char server_first[512];
    if (sf_len >= sizeof server_first)
        return -1;
    memcpy(server_first, sf, sf_len);
    server_first[sf_len] = '\0';
    const char *rn = strstr(server_first, "r="), *end = rn ? strchr(rn, ',') : NULL;
    if (rn == NULL || end == NULL)
        return -1;
    char without_proof[512];
    int n = snprintf(without_proof, sizeof without_proof, "c=biws,%.*s", (int)(end - rn), rn);
    char auth_msg[1536];
    int am = snprintf(auth_msg, sizeof auth_msg, "%s,%s,%s", l->client_first_bare, server_first,
                      without_proof);
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    uint8_t stored[32], sig[32], proof[32];
    mbedtls_md(md, client_key, 32, stored);
    mbedtls_md_hmac(md, stored, 32, (const uint8_t *)auth_msg, (size_t)am, sig);
    for (int i = 0; i < 32; i++)
        proof[i] = client_key[i] ^ sig[i];
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, proof, 32, sodium_base64_VARIANT_ORIGINAL);
    return snprintf(out, size, "%.*s,p=%s", n, without_proof, b64);
}

static void scram_keys(tern_auth_req *r)
{
    login *l = r->data;
    tern_sasl_result res;
    tern_sasl_scram_keys(l->sasl, r->status == TERN_AUTH_OK ? &r->out.scram : NULL,
                         r->out.account, &res);
    tern_auth_req_free(r);
    char cf[1024];
    int n;
    if (res.status != TERN_SASL_CHALLENGE ||
        (n = client_final(l, res.data, res.data_len, cf, sizeof cf)) < 0) {
        login_done(l, false);
        return;
    }
    tern_sasl_step(l->sasl, (const uint8_t *)cf, (size_t)n, &res);
    if (res.status == TERN_SASL_CHALLENGE) /* server-final as a challenge (SMTP) */
        tern_sasl_step(l->sasl, (const uint8_t *)"", 0, &res);
    login_done(l, res.status == TERN_SASL_SUCCESS);
}

static void start_one(void)
{
    login *l = calloc(1, sizeof *l);
    if (l == NULL)
        die("out of memory");
    l->m = current;
    started++;
    if (l->m != M_SCRAM) {
        tern_auth_req *r = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, verified, l);
        r->in.service = "bench";
        r->in.user = mech_user[l->m];
        r->in.password = PASSWORD;
        r->in.password_len = strlen(PASSWORD);
        if (tern_auth_submit(client, r) != 0)
            die("submit failed");
        return;
    }
    tern_sasl_params p = {.service = "smtp", .hostname = "bench.test"};
    l->sasl = tern_sasl_new("SCRAM-SHA-256", &p);
    uint8_t nonce[12];
    char nb64[sodium_base64_ENCODED_LEN(12, sodium_base64_VARIANT_ORIGINAL)];
    randombytes_buf(nonce, sizeof nonce);
    sodium_bin2base64(nb64, sizeof nb64, nonce, sizeof nonce, sodium_base64_VARIANT_ORIGINAL);
    snprintf(l->client_first_bare, sizeof l->client_first_bare, "n=%s,r=%s", mech_user[l->m],
             nb64);
    char first[160];
    int n = snprintf(first, sizeof first, "n,,%s", l->client_first_bare);
    tern_sasl_result res;
    tern_sasl_step(l->sasl, (const uint8_t *)first, (size_t)n, &res);
    if (res.status != TERN_SASL_NEED_SCRAM_KEYS)
        die("SCRAM did not ask for keys");
    tern_auth_req *r = tern_auth_req_new(TERN_AUTH_GET_SCRAM_KEYS, scram_keys, l);
    r->in.user = res.authcid;
    if (tern_auth_submit(client, r) != 0)
        die("submit failed");
}

static void run_case(tern_auth *a, const char *backend, mech m)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_loop = &loop;
    client = tern_auth_client_new(a, &loop);
    current = m;
    started = finished = failures = 0;
    /* One login first: first-login creation and lazy pools are not what
     * is measured. */
    int keep = n_logins;
    n_logins = 1;
    start_one();
    uv_run(&loop, UV_RUN_DEFAULT);
    n_logins = keep;
    started = finished = failures = 0;
    double t0 = now_s(), c0 = cpu_ms();
    for (int i = 0; i < concurrency && started < n_logins; i++)
        start_one();
    uv_run(&loop, UV_RUN_DEFAULT);
    double t = now_s() - t0, c = cpu_ms() - c0;
    tern_auth_client_close(client);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    printf("backend=%s mech=%s logins=%d concurrency=%d failures=%d logins_per_s=%.1f "
           "cpu_ms_per_login=%.2f wall_s=%.2f\n",
           backend, mech_name[m], finished, concurrency, failures, finished / t, c / finished, t);
    fflush(stdout);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

int main(int argc, char **argv)
{
    int opt;
    const char *only = NULL;
    while ((opt = getopt(argc, argv, "n:c:B:b:")) != -1) {
        switch (opt) {
        case 'n': n_logins = atoi(optarg); break;
        case 'c': concurrency = atoi(optarg); break;
        case 'B': blf_cost = atoi(optarg); break;
        case 'b': only = optarg; break;
        default:
            fprintf(stderr, "usage: auth_bench [-n logins] [-c concurrency] [-B bcrypt-cost] "
                            "[-b file|internal]\n");
            return 2;
        }
    }
    if (n_logins < 1 || concurrency < 1 || blf_cost < 4 || blf_cost > 31)
        die("bad arguments");
    tern_log_configure("error", NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tern_hash_init() != 0 || mkdtemp(dir) == NULL)
        die("setup failed");
    make_credentials();

    /* Argon2id alone, one thread: the figure the 50 ms bound is about. */
    double c0 = cpu_ms(), t0 = now_s();
    for (int i = 0; i < 10; i++)
        if (tern_hash_verify(creds[M_ARGON2ID], PASSWORD, strlen(PASSWORD)) != TERN_HASH_MATCH)
            die("argon2id verify failed");
    printf("argon2id opslimit=%d memlimit_kib=%u cpu_ms_per_verify=%.2f wall_ms_per_verify=%.2f "
           "under_50ms=%s\n",
           TERN_HASH_ARGON2_OPSLIMIT, TERN_HASH_ARGON2_MEMLIMIT / 1024, (cpu_ms() - c0) / 10,
           (now_s() - t0) * 100, (cpu_ms() - c0) / 10 < 50 ? "yes" : "NO");

    char path[160], file[8192] = "", yaml[1024];
    for (int m = 0; m < M_COUNT; m++) {
        size_t at = strlen(file);
        snprintf(file + at, sizeof file - at, "%s:%s\n", mech_user[m], creds[m]);
    }
    snprintf(path, sizeof path, "%s/users", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(file, f) < 0 || fclose(f) != 0)
        die("cannot write the users file");
    snprintf(yaml, sizeof yaml,
             "server: {state_dir: %s}\n"
             "domains: [bench.test]\n"
             "local: {path: %s/mail}\n"
             "auth: {backends: [internal], failure_delay: 0}\n"
             "auth_file: {path: %s}\n"
             "listeners:\n  - {name: mx, protocol: smtp, port: 2525}\n",
             dir, dir, path);
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *cfg = tern_config_load_string(yaml, strlen(yaml), "bench.yaml", &errs);
    if (cfg == NULL) {
        fprintf(stderr, "auth_bench: config: %s\n", errs.n ? errs.items[0] : "?");
        return 1;
    }
    tern_config_errors_free(&errs);
    tern_store *store;
    char *err = NULL;
    if (tern_store_open(cfg, &store, &err) != 0 || tern_store_seed_domains(store, cfg, &err) != 0)
        die(err ? err : "store");
    for (int m = 0; m < M_COUNT; m++) {
        tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, NULL, NULL);
        r->in.account = mech_user[m];
        r->in.password_hash = creds[m];
        if (tern_store_run_sync(store, r) != TERN_STORE_OK)
            die("account create failed");
        tern_store_req_free(r);
    }

    static char *file_backend[] = {"file"}, *internal_backend[] = {"internal"};
    const char *names[] = {"file", "internal"};
    char **lists[] = {file_backend, internal_backend};
    for (int b = 0; b < 2; b++) {
        if (only && strcmp(only, names[b]) != 0)
            continue;
        cfg->auth.backends = lists[b];
        cfg->auth.n_backends = 1;
        tern_auth *a = tern_auth_new(cfg, store, &err);
        if (a == NULL)
            die(err);
        for (int m = 0; m < M_COUNT; m++)
            run_case(a, names[b], (mech)m);
        tern_auth_unref(a);
    }
    cfg->auth.n_backends = 0;
    cfg->auth.backends = NULL;
    tern_store_close(store);
    tern_config_unref(cfg);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
