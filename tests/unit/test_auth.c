/* test_auth: auth/ — every hash format against vectors made by real tools
 * (openssl passwd, python's crypt, RFC 2195 and RFC 7677), the file
 * backend's parsing and its file:line errors, backend order and
 * fall-through against a real local store, the unknown-user path, fake
 * SCRAM keys, and the login limiter. Input trusted: the test's own data. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "auth/hash.h"
#include "lib/log.h"
#include "storage/store.h"

/* ---- vectors ---------------------------------------------------------------- */

/* openssl passwd -6 -salt saltsalt secret */
#define SHA512_SECRET "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"
/* openssl passwd -5 -salt saltsalt secret */
#define SHA256_SECRET "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA"
/* python3 crypt.crypt('secret', '$2b$05$abcdefghijklmnopqrstuu') */
#define BCRYPT_SECRET "$2b$05$abcdefghijklmnopqrstuuOQiyCxlgf/oeuTqixKmWdcYUh4Hjl0a"
/* RFC 7677 section 3: "pencil" */
#define RFC7677_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC7677_STORED "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
#define RFC7677_SERVER "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
#define RFC7677_SCRAM "{SCRAM-SHA-256}4096," RFC7677_SALT "," RFC7677_STORED "," RFC7677_SERVER

static int verify(const char *stored, const char *pw)
{
    return tern_hash_verify(stored, pw, strlen(pw));
}

static void test_crypt_schemes(void **state)
{
    (void)state;
    assert_int_equal(verify("{SHA512-CRYPT}" SHA512_SECRET, "secret"), TERN_HASH_MATCH);
    assert_int_equal(verify("{SHA512-CRYPT}" SHA512_SECRET, "Secret"), TERN_HASH_MISMATCH);
    assert_int_equal(verify(SHA512_SECRET, "secret"), TERN_HASH_MATCH);
    assert_int_equal(verify("{sha256-crypt}" SHA256_SECRET, "secret"), TERN_HASH_MATCH);
    assert_int_equal(verify("{SHA256-CRYPT}" SHA256_SECRET, "secre"), TERN_HASH_MISMATCH);
    assert_int_equal(verify("{BLF-CRYPT}" BCRYPT_SECRET, "secret"), TERN_HASH_MATCH);
    assert_int_equal(verify("{BLF-CRYPT}" BCRYPT_SECRET, "secreT"), TERN_HASH_MISMATCH);
    /* $2y$ (PHP, Dovecot) is the same algorithm as $2b$. */
    char y[128];
    snprintf(y, sizeof(y), "{BLF-CRYPT}%s", BCRYPT_SECRET);
    y[13] = 'y';
    assert_int_equal(verify(y, "secret"), TERN_HASH_MATCH);
    /* The scheme names the algorithm: another one behind it is refused. */
    assert_int_equal(verify("{SHA512-CRYPT}" SHA256_SECRET, "secret"), TERN_HASH_EUNSUPPORTED);
    assert_int_equal(verify("{SHA512-CRYPT}abJnggxhB/yWI", "secret"), TERN_HASH_EUNSUPPORTED);
    assert_int_equal(verify("{NOPE}xyz", "secret"), TERN_HASH_EUNSUPPORTED);
    assert_int_equal(verify("", "secret"), TERN_HASH_EUNSUPPORTED);
    /* A NUL inside the password must not cut it short for crypt(). */
    assert_int_equal(tern_hash_verify("{SHA512-CRYPT}" SHA512_SECRET, "secret\0x", 8),
                     TERN_HASH_MISMATCH);
}

static void test_argon2id(void **state)
{
    (void)state;
    char h[TERN_HASH_MAX];
    assert_int_equal(tern_hash_argon2id("correct horse", 13, h, sizeof(h)), 0);
    assert_true(strncmp(h, "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$", 41) == 0);
    assert_int_equal(verify(h, "correct horse"), TERN_HASH_MATCH);
    assert_int_equal(verify(h, "correct horsf"), TERN_HASH_MISMATCH);
    assert_int_equal(verify(h + 10, "correct horse"), TERN_HASH_MATCH); /* bare $argon2id$ */
    /* One libsodium wrote with its own parameters, as Dovecot would. */
    char raw[crypto_pwhash_STRBYTES];
    assert_int_equal(crypto_pwhash_str_alg(raw, "pw", 2, 3, 8u << 20, crypto_pwhash_ALG_ARGON2ID13),
                     0);
    snprintf(h, sizeof(h), "{ARGON2ID}%s", raw);
    assert_int_equal(verify(h, "pw"), TERN_HASH_MATCH);
    assert_int_equal(verify("{ARGON2ID}$argon2id$garbage", "pw"), TERN_HASH_MISMATCH);
    tern_hash_verify_dummy("pw", 2); /* runs, never matches, never crashes */
}

static void test_plain_and_lists(void **state)
{
    (void)state;
    assert_int_equal(verify("{PLAIN}secret", "secret"), TERN_HASH_MATCH);
    assert_int_equal(verify("{PLAIN}secret", "secret2"), TERN_HASH_MISMATCH);
    assert_int_equal(verify("{PLAIN}secret", ""), TERN_HASH_MISMATCH);
    assert_int_equal(verify("{CLEAR}secret", "secret"), TERN_HASH_MATCH);
    /* The first credential is the one checked; the others are found. */
    const char *list = "{PLAIN}one " RFC7677_SCRAM;
    assert_int_equal(verify(list, "one"), TERN_HASH_MATCH);
    assert_int_equal(verify(list, "pencil"), TERN_HASH_MISMATCH);
    size_t len;
    const char *d = tern_hash_find(list, "scram-sha-256", &len);
    assert_non_null(d);
    assert_int_equal(len, strlen(RFC7677_SCRAM) - 15);
    assert_null(tern_hash_find(list, "CRAM-MD5", &len));
    char sch[32];
    assert_string_equal(tern_hash_scheme(SHA512_SECRET, sch, sizeof(sch)), "SHA512-CRYPT");
    assert_string_equal(tern_hash_scheme("{x", sch, sizeof(sch)), "unknown");
}

static void test_scram_rfc7677(void **state)
{
    (void)state;
    uint8_t salt[32], sk[32], svk[32], want_sk[32], want_svk[32];
    size_t n;
    assert_int_equal(sodium_base642bin(salt, sizeof(salt), RFC7677_SALT, strlen(RFC7677_SALT), NULL,
                                       &n, NULL, sodium_base64_VARIANT_ORIGINAL),
                     0);
    assert_int_equal(tern_hash_scram_derive("pencil", 6, salt, n, 4096, sk, svk), 0);
    size_t m;
    sodium_base642bin(want_sk, 32, RFC7677_STORED, strlen(RFC7677_STORED), NULL, &m, NULL,
                      sodium_base64_VARIANT_ORIGINAL);
    sodium_base642bin(want_svk, 32, RFC7677_SERVER, strlen(RFC7677_SERVER), NULL, &m, NULL,
                      sodium_base64_VARIANT_ORIGINAL);
    assert_memory_equal(sk, want_sk, 32);
    assert_memory_equal(svk, want_svk, 32);

    assert_int_equal(verify(RFC7677_SCRAM, "pencil"), TERN_HASH_MATCH);
    assert_int_equal(verify(RFC7677_SCRAM, "pencil2"), TERN_HASH_MISMATCH);

    tern_scram_keys k;
    const char *d = RFC7677_SCRAM + 15;
    assert_int_equal(tern_hash_scram_parse(d, strlen(d), &k), 0);
    assert_int_equal(k.iterations, 4096);
    assert_int_equal(k.salt_len, 16);
    assert_memory_equal(k.stored_key, want_sk, 32);
    /* Malformed: missing field, extra field, zero or huge iterations, bad base64. */
    const char *bad[] = {
        "4096," RFC7677_SALT "," RFC7677_STORED,
        "4096," RFC7677_SALT "," RFC7677_STORED "," RFC7677_SERVER ",x",
        "0," RFC7677_SALT "," RFC7677_STORED "," RFC7677_SERVER,
        "99999999," RFC7677_SALT "," RFC7677_STORED "," RFC7677_SERVER,
        "4096,!!!," RFC7677_STORED "," RFC7677_SERVER,
        "4096," RFC7677_SALT ",c2hvcnQ=," RFC7677_SERVER,
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(tern_hash_scram_parse(bad[i], strlen(bad[i]), &k), -1);

    /* What tern-passwd --scram writes verifies. */
    char h[TERN_HASH_MAX];
    assert_int_equal(tern_hash_scram_sha256("pencil", 6, 4096, h, sizeof(h)), 0);
    assert_int_equal(verify(h, "pencil"), TERN_HASH_MATCH);
}

static void test_cram_md5(void **state)
{
    (void)state;
    /* RFC 2195: tim / tanstaaftanstaaf. */
    static const char chal[] = "<1896.697170952@postoffice.reston.mci.net>";
    static const uint8_t want[16] = {0xb9, 0x13, 0xa6, 0x02, 0xc7, 0xed, 0xa7, 0xa4,
                                     0x95, 0xb4, 0xe6, 0xe7, 0x33, 0x4d, 0x38, 0x90};
    uint8_t ctx[32], dig[16];
    tern_hash_cram_md5_context("tanstaaftanstaaf", 16, ctx);
    tern_hash_cram_md5_digest(ctx, (const uint8_t *)chal, strlen(chal), dig);
    assert_memory_equal(dig, want, 16);
    /* Through Dovecot's stored hex form. */
    char hex[65], stored[80];
    sodium_bin2hex(hex, sizeof(hex), ctx, 32);
    snprintf(stored, sizeof(stored), "{CRAM-MD5}%s", hex);
    assert_int_equal(verify(stored, "tanstaaftanstaaf"), TERN_HASH_MATCH);
    assert_int_equal(verify(stored, "tanstaaf"), TERN_HASH_MISMATCH);
    uint8_t back[32];
    assert_int_equal(tern_hash_cram_md5_parse(hex, 64, back), 0);
    assert_memory_equal(back, ctx, 32);
    assert_int_equal(tern_hash_cram_md5_parse(hex, 63, back), -1);
    /* A key longer than the MD5 block is hashed first (RFC 2104). */
    char longpw[100];
    memset(longpw, 'k', sizeof(longpw));
    tern_hash_cram_md5_context(longpw, sizeof(longpw), ctx);
    tern_hash_cram_md5_digest(ctx, (const uint8_t *)"x", 1, dig);
    /* python3: hmac.new(b'k'*100, b'x', 'md5').hexdigest() */
    char dh[33];
    sodium_bin2hex(dh, sizeof(dh), dig, 16);
    assert_string_equal(dh, "2917e317832330baa72b773a7941a286");
}

/* ---- fixture: a temp dir, a store, configs --------------------------------- */

static struct {
    char dir[64];
    tern_config *cfg;
    tern_store *store;
} F;

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static char *write_file(const char *name, const char *text)
{
    char *path = tern_arena_printf(&F.cfg->arena, "%s/%s", F.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void set_backends(const char *a, const char *b)
{
    F.cfg->auth.backends = tern_arena_alloc(&F.cfg->arena, 2 * sizeof(char *));
    F.cfg->auth.backends[0] = (char *)a;
    F.cfg->auth.backends[1] = (char *)b;
    F.cfg->auth.n_backends = b ? 2 : 1;
}

static int setup(void **state)
{
    (void)state;
    tern_log_configure("error", NULL);
    snprintf(F.dir, sizeof F.dir, "/tmp/tern-auth-test-XXXXXX");
    if (mkdtemp(F.dir) == NULL)
        return -1;
    tern_config *c = calloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    tern_arena_init(&c->arena, 4096);
    c->server.state_dir = tern_arena_strdup(&c->arena, F.dir);
    c->storage.backend = TERN_STORAGE_LOCAL;
    c->storage.changes_retention_ms = 30ull * 24 * 3600 * 1000;
    c->local.path = tern_arena_printf(&c->arena, "%s/mail", F.dir);
    c->auth.max_failures = 3;
    c->auth.lockout_ms = 60000;
    c->auth.failure_delay_ms = 250;
    c->auth.max_delay_ms = 5000;
    F.cfg = c;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (F.store)
        tern_store_close(F.store);
    F.store = NULL;
    tern_arena_free(&F.cfg->arena);
    free(F.cfg);
    nftw(F.dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static void open_store_with(const char *account, const char *hash)
{
    char *err = NULL;
    if (F.store == NULL) {
        assert_int_equal(tern_store_open(F.cfg, &F.store, &err), 0);
        tern_store_req *r = tern_store_req_new(TERN_STORE_DOMAIN_ADD, NULL, NULL);
        r->in.domain = "example.test";
        assert_int_equal(tern_store_run_sync(F.store, r), TERN_STORE_OK);
        tern_store_req_free(r);
    }
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, NULL, NULL);
    r->in.account = account;
    r->in.password_hash = hash;
    assert_int_equal(tern_store_run_sync(F.store, r), TERN_STORE_OK);
    tern_store_req_free(r);
}

static tern_auth *auth_new(void)
{
    char *err = NULL;
    tern_auth *a = tern_auth_new(F.cfg, F.store, &err);
    if (a == NULL)
        fail_msg("tern_auth_new: %s", err);
    return a;
}

static int run(tern_auth *a, tern_auth_op op, const char *user, const char *pw, const char *ip,
               tern_auth_req **r_out)
{
    tern_auth_req *r = tern_auth_req_new(op, NULL, NULL);
    r->in.service = "imap";
    r->in.user = user;
    r->in.password = pw;
    r->in.password_len = pw ? strlen(pw) : 0;
    r->in.remote_ip = ip;
    int st = tern_auth_run_sync(a, r);
    if (r_out)
        *r_out = r;
    else
        tern_auth_req_free(r);
    return st;
}

/* ---- the file backend -------------------------------------------------------- */

static const char good_file[] =
    "# Tern test users\n"
    "\n"
    "alice@example.test:{SHA512-CRYPT}" SHA512_SECRET "\n"
    "   # an indented comment\n"
    "Bob@Example.TEST:{BLF-CRYPT}" BCRYPT_SECRET ":quota=1G\n"
    "carol:{PLAIN}pencil:scram=" RFC7677_SCRAM " userdb_home=/x\n"
    /* Dovecot's passwd-file layout */
    "dave@example.test:{SHA256-CRYPT}" SHA256_SECRET ":1000:1000::/home/dave::\r\n";

static void test_file_backend(void **state)
{
    (void)state;
    F.cfg->auth_file.path = write_file("passwd", good_file);
    F.cfg->auth_file.default_domain = "example.test";
    set_backends("file", NULL);
    tern_auth *a = auth_new();
    /* carol alone has SCRAM keys: SCRAM cannot be offered for everyone. */
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_PASSWORD);

    tern_auth_req *r;
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "alice@example.test", "secret", "192.0.2.1",
                         &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "alice@example.test");
    assert_string_equal(r->out.backend, "file");
    tern_auth_req_free(r);
    /* Names compare case-insensitively; the canonical name is the file's. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "BOB@example.test", "secret", NULL, &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.account, "Bob@example.test");
    tern_auth_req_free(r);
    /* default_domain, at login and in the file. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "carol", "pencil", NULL, &r), TERN_AUTH_OK);
    assert_string_equal(r->out.account, "carol@example.test");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "dave@example.test", "secret", NULL, NULL),
                     TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "dave@example.test", "wrong", NULL, &r),
                     TERN_AUTH_EFAIL);
    assert_null(r->out.account);
    assert_int_equal(r->out.delay_ms, 250);
    tern_auth_req_free(r);
    /* Unknown user: the same answer, after the dummy hash. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "nobody@example.test", "secret", NULL, &r),
                     TERN_AUTH_EFAIL);
    assert_null(r->out.account);
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "bad name", "x", NULL, NULL),
                     TERN_AUTH_EFAIL);

    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "ALICE@EXAMPLE.TEST", NULL, NULL, NULL),
                     TERN_AUTH_OK);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "zed@example.test", NULL, NULL, NULL),
                     TERN_AUTH_ENOTFOUND);

    /* SCRAM keys from the extra field. */
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "carol@example.test", NULL, NULL, &r),
                     TERN_AUTH_OK);
    assert_int_equal(r->out.scram.iterations, 4096);
    assert_int_equal(r->out.scram.salt_len, 16);
    tern_auth_req_free(r);
    /* No keys, or no user: fake keys, stable per name. */
    tern_auth_req *r2;
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "alice@example.test", NULL, NULL, &r),
                     TERN_AUTH_EUNAVAIL);
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "nobody@example.test", NULL, NULL, &r2),
                     TERN_AUTH_ENOTFOUND);
    assert_int_equal(r2->out.scram.iterations, 4096);
    assert_memory_not_equal(r->out.scram.salt, r2->out.scram.salt, 16);
    tern_auth_req_free(r2);
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "nobody@example.test", NULL, NULL, &r2),
                     TERN_AUTH_ENOTFOUND);
    tern_auth_req *r3;
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "nobody@example.test", NULL, NULL, &r3),
                     TERN_AUTH_ENOTFOUND);
    assert_memory_equal(r2->out.scram.salt, r3->out.scram.salt, 16);
    tern_auth_req_free(r);
    tern_auth_req_free(r2);
    tern_auth_req_free(r3);

    /* CRAM-MD5 secret from {PLAIN}. */
    assert_int_equal(run(a, TERN_AUTH_GET_SECRET, "carol", NULL, NULL, &r), TERN_AUTH_OK);
    uint8_t want[32];
    tern_hash_cram_md5_context("pencil", 6, want);
    assert_memory_equal(r->out.cram_md5, want, 32);
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_GET_SECRET, "alice@example.test", NULL, NULL, NULL),
                     TERN_AUTH_EUNAVAIL);

    /* Bad parameters are refused before anything runs. */
    tern_auth_req *bad = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, NULL, NULL);
    bad->in.user = "alice@example.test";
    assert_int_equal(tern_auth_run_sync(a, bad), TERN_AUTH_EINVAL);
    tern_auth_req_free(bad);
    tern_auth_unref(a);
}

static void test_file_caps(void **state)
{
    (void)state;
    F.cfg->auth_file.path = write_file("scram", "u@example.test:{PLAIN}pencil:scram=" RFC7677_SCRAM
                                                "\n");
    set_backends("file", NULL);
    tern_auth *a = auth_new();
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_PASSWORD |
                                                    TERN_AUTH_CAP_SCRAM_SHA_256 |
                                                    TERN_AUTH_CAP_CRAM_MD5);
    tern_auth_unref(a);
}

static void test_file_errors(void **state)
{
    (void)state;
    F.cfg->auth_file.path = write_file("bad",
        "ok@example.test:{PLAIN}x\n"              /* 1 */
        "nodomain:{PLAIN}x\n"                     /* 2: no default_domain */
        "e@example.test:\n"                       /* 3 */
        "f@example.test:{MD4}abc\n"               /* 4 */
        "justaname\n"                             /* 5 */
        "g@example.test:{PLAIN}x:scram=4096,a\n"  /* 6 */
        "ok@EXAMPLE.test:{PLAIN}y\n"              /* 7: duplicate of 1 */
        "h@example.test:{CRAM-MD5}abcd\n"         /* 8 */
        "a:b:c:d:e:f:g:h:i:j\n");                 /* 9 */
    set_backends("file", NULL);
    char *err = NULL;
    tern_auth *a = tern_auth_new(F.cfg, NULL, &err);
    assert_null(a);
    assert_non_null(err);
    const char *want[] = {"bad:2: user has no @domain", "bad:3: empty password field",
                          "bad:4: the password field has no known scheme",
                          "bad:5: expected user:hash", "bad:6: a {SCRAM-SHA-256} value",
                          "bad:7: user already defined at line 1", "bad:8: a {CRAM-MD5} value",
                          "bad:9: too many ':' fields"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(err, want[i]) == NULL)
            fail_msg("missing \"%s\" in:\n%s", want[i], err);
    assert_null(strstr(err, "bad:1:"));
    free(err);

    F.cfg->auth_file.path = tern_arena_printf(&F.cfg->arena, "%s/missing", F.dir);
    assert_null(tern_auth_new(F.cfg, NULL, &err));
    assert_non_null(strstr(err, "No such file"));
    free(err);
}

/* ---- internal backend and ordering ----------------------------------------- */

static void test_internal_and_order(void **state)
{
    (void)state;
    char h[TERN_HASH_MAX], s[TERN_HASH_MAX];
    assert_int_equal(tern_hash_argon2id("inside", 6, h, sizeof(h)), 0);
    assert_int_equal(tern_hash_scram_sha256("inside", 6, 4096, s, sizeof(s)), 0);
    char list[2 * TERN_HASH_MAX];
    snprintf(list, sizeof(list), "%s %s", h, s);
    open_store_with("both@example.test", list);
    open_store_with("nopw@example.test", NULL);
    F.cfg->auth_file.path = write_file("order",
        "both@example.test:{PLAIN}outside\n"
        "fileonly@example.test:{PLAIN}outside\n");
    set_backends("internal", "file");
    tern_auth *a = auth_new();
    assert_int_equal(tern_auth_capabilities(a), TERN_AUTH_CAP_PASSWORD);

    tern_auth_req *r;
    /* The store knows "both": it decides, and the file's password fails. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "both@EXAMPLE.test", "inside", NULL, &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "internal");
    assert_string_equal(r->out.account, "both@example.test");
    tern_auth_req_free(r);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "both@example.test", "outside", NULL, NULL),
                     TERN_AUTH_EFAIL);
    /* Unknown to the store: falls through to the file. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "fileonly@example.test", "outside", NULL,
                         &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "file");
    tern_auth_req_free(r);
    /* Known without a password: refused like a wrong one. */
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "nopw@example.test", "", NULL, NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "ghost@example.test", "x", NULL, NULL),
                     TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_USER_EXISTS, "nopw@example.test", NULL, NULL, &r),
                     TERN_AUTH_OK);
    assert_string_equal(r->out.backend, "internal");
    tern_auth_req_free(r);
    /* SCRAM keys stored after the argon2id hash, as ternctl writes them. */
    assert_int_equal(run(a, TERN_AUTH_GET_SCRAM_KEYS, "both@example.test", NULL, NULL, &r),
                     TERN_AUTH_OK);
    uint8_t sk[32], svk[32];
    assert_int_equal(tern_hash_scram_derive("inside", 6, r->out.scram.salt, r->out.scram.salt_len,
                                            r->out.scram.iterations, sk, svk),
                     0);
    assert_memory_equal(sk, r->out.scram.stored_key, 32);
    assert_memory_equal(svk, r->out.scram.server_key, 32);
    tern_auth_req_free(r);
    tern_auth_unref(a);

    /* With auth_internal.scram the admin vouches for every account. */
    F.cfg->auth_internal.scram = true;
    set_backends("internal", NULL);
    a = auth_new();
    assert_int_equal(tern_auth_capabilities(a),
                     TERN_AUTH_CAP_PASSWORD | TERN_AUTH_CAP_SCRAM_SHA_256);
    tern_auth_unref(a);
    F.cfg->auth_internal.scram = false;
    /* internal without a store is a configuration error. */
    char *err = NULL;
    assert_null(tern_auth_new(F.cfg, NULL, &err));
    free(err);
}

/* Several requests in flight on one client, answered on its loop. */
static int async_done;
static void async_cb(tern_auth_req *r)
{
    (void)r;
    async_done++;
}

static void test_async_client(void **state)
{
    (void)state;
    F.cfg->auth_file.path = write_file("async", "x@example.test:{PLAIN}p\n");
    set_backends("file", NULL);
    tern_auth *a = auth_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_auth_client *c = tern_auth_client_new(a, &loop);
    tern_auth_unref(a); /* the client keeps it alive */
    tern_auth_req *rs[4];
    async_done = 0;
    for (int i = 0; i < 4; i++) {
        rs[i] = tern_auth_req_new(TERN_AUTH_VERIFY_PASSWORD, async_cb, NULL);
        rs[i]->in.user = "x@example.test";
        rs[i]->in.password = i % 2 ? "p" : "q";
        rs[i]->in.password_len = 1;
        assert_int_equal(tern_auth_submit(c, rs[i]), 0);
    }
    assert_int_equal(async_done, 0); /* never inside submit */
    tern_auth_client_close(c);       /* pending ones still complete */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(async_done, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(rs[i]->status, i % 2 ? TERN_AUTH_OK : TERN_AUTH_EFAIL);
        tern_auth_req_free(rs[i]);
    }
    uv_loop_close(&loop);
}

/* ---- limiter ------------------------------------------------------------------ */

static void test_limiter(void **state)
{
    (void)state;
    F.cfg->auth_file.path = write_file("lim", "v@example.test:{PLAIN}right\n");
    set_backends("file", NULL);
    tern_auth *a = auth_new();
    uint64_t t = 1000000;
    /* Exponential delay, then refusal at max_failures (3). */
    assert_int_equal(tern_auth_limiter_check(a, "198.51.100.7", "v@example.test", t), 0);
    assert_int_equal(tern_auth_limiter_failure(a, "198.51.100.7", "v@example.test", t), 250);
    assert_int_equal(tern_auth_limiter_failure(a, "198.51.100.7", "v@example.test", t), 500);
    assert_int_equal(tern_auth_limiter_check(a, "198.51.100.7", "v@example.test", t), 0);
    assert_int_equal(tern_auth_limiter_failure(a, "198.51.100.7", "v@example.test", t), 1000);
    assert_int_equal(tern_auth_limiter_check(a, "198.51.100.7", NULL, t), TERN_AUTH_ELOCKED);
    assert_int_equal(tern_auth_limiter_check(a, "203.0.113.9", "v@example.test", t),
                     TERN_AUTH_ELOCKED); /* the account, from anywhere */
    assert_int_equal(tern_auth_limiter_check(a, "203.0.113.9", "w@example.test", t), 0);
    /* The lockout ends and is forgotten. */
    assert_int_equal(tern_auth_limiter_check(a, "198.51.100.7", "v@example.test", t + 60000), 0);
    assert_int_equal(tern_auth_limiter_failure(a, "198.51.100.7", "v@example.test", t + 60001),
                     250);
    /* Success resets. */
    tern_auth_limiter_success(a, "198.51.100.7", "v@example.test");
    assert_int_equal(tern_auth_limiter_failure(a, "198.51.100.7", "v@example.test", t + 60002),
                     250);
    tern_auth_limiter_success(a, "198.51.100.7", "v@example.test");

    /* Through the API: a locked account is refused even with the right
     * password, with the same kind of answer as a wrong one. */
    tern_auth_req *r;
    for (int i = 0; i < 3; i++)
        assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "v@example.test", "wrong", "192.0.2.50",
                             NULL),
                         TERN_AUTH_EFAIL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "v@example.test", "right", "192.0.2.51",
                         &r),
                     TERN_AUTH_ELOCKED);
    assert_null(r->out.account);
    assert_true(r->out.delay_ms > 0);
    tern_auth_req_free(r);
    /* Unknown users count too (per IP), without telling. */
    for (int i = 0; i < 3; i++)
        run(a, TERN_AUTH_VERIFY_PASSWORD, "guess@example.test", "x", "192.0.2.60", NULL);
    assert_int_equal(run(a, TERN_AUTH_VERIFY_PASSWORD, "other@example.test", "x", "192.0.2.60",
                         NULL),
                     TERN_AUTH_ELOCKED);

    /* A reload keeps the counters. */
    tern_auth *b = auth_new();
    tern_auth_keep_state(b, a);
    tern_auth_unref(a);
    assert_int_equal(run(b, TERN_AUTH_VERIFY_PASSWORD, "v@example.test", "right", "192.0.2.52",
                         NULL),
                     TERN_AUTH_ELOCKED);

    /* Memory stays bounded whatever the number of addresses. */
    char ip[32];
    for (unsigned i = 0; i < 100000; i++) {
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
        tern_auth_limiter_failure(b, ip, NULL, t);
    }
    assert_true(tern_auth_limiter_entries(b) <= 16384);
    tern_auth_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crypt_schemes),
        cmocka_unit_test(test_argon2id),
        cmocka_unit_test(test_plain_and_lists),
        cmocka_unit_test(test_scram_rfc7677),
        cmocka_unit_test(test_cram_md5),
        cmocka_unit_test_setup_teardown(test_file_backend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_internal_and_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limiter, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
