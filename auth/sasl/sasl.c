/* SASL dispatcher: session setup, the step/continuation entry points that
 * route to one mechanism file each, shared parsing helpers (names, GS2
 * header), the response decoder and the mechanism list. Input: decoded
 * client messages (untrusted); params and caller answers are trusted. */
#include "auth/sasl/sasl_private.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sodium.h>

#include "lib/base64.h"
#include "lib/rfc2047.h"

static const struct {
    const char *name;
    sasl_mech mech;
} mechs[] = {
    {"PLAIN", SASL_PLAIN},
    {"LOGIN", SASL_LOGIN},
    {"CRAM-MD5", SASL_CRAM_MD5},
    {"SCRAM-SHA-256", SASL_SCRAM},
    {"SCRAM-SHA-256-PLUS", SASL_SCRAM_PLUS},
    {"OAUTHBEARER", SASL_OAUTHBEARER},
    {"XOAUTH2", SASL_XOAUTH2},
    {"EXTERNAL", SASL_EXTERNAL},
};

static int find_mech(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
        if (strcasecmp(name, mechs[i].name) == 0)
            return (int)mechs[i].mech;
    return -1;
}

bool tern_sasl_mech_known(const char *mech)
{
    return find_mech(mech) >= 0;
}

/* Without a configured secret the fake salts are only stable for this
 * process; better than failing, and the config loader can warn. */
static uint8_t process_key[32];
static pthread_once_t process_key_once = PTHREAD_ONCE_INIT;
static void process_key_init(void)
{
    randombytes_buf(process_key, sizeof process_key);
}

static void copy_str(char *dst, size_t size, const char *src)
{
    if (!src)
        src = "";
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

tern_sasl *tern_sasl_new(const char *mech, const tern_sasl_params *p)
{
    int m = find_mech(mech);
    if (m < 0 || !p)
        return NULL;
    bool have_cb = p->cb_type && p->cb_type[0] && p->cb_data && p->cb_len > 0 &&
                   p->cb_len <= TERN_SASL_CB_MAX && strlen(p->cb_type) < 32;
    if (m == SASL_SCRAM_PLUS && !have_cb)
        return NULL;
    if (sodium_init() < 0)
        return NULL;
    tern_sasl *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->mech = (sasl_mech)m;
    s->wait = WAIT_STEP;
    s->max_message = p->max_message ? p->max_message : TERN_SASL_MSG_MAX;
    s->max_user = p->max_user ? p->max_user : TERN_SASL_USER_MAX;
    s->allow_proxy = p->allow_proxy;
    s->external_available = p->external_available;
    s->success_data = p->success_data;
    s->have_cb = have_cb;
    if (have_cb) {
        copy_str(s->cb_type, sizeof s->cb_type, p->cb_type);
        memcpy(s->cb_data, p->cb_data, p->cb_len);
        s->cb_len = p->cb_len;
    }
    if (p->secret && p->secret_len) {
        crypto_hash_sha256_state h;
        uint8_t full[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_init(&h);
        crypto_hash_sha256_update(&h, (const uint8_t *)"tern-scram-fake\0", 16);
        crypto_hash_sha256_update(&h, p->secret, p->secret_len);
        crypto_hash_sha256_final(&h, full);
        memcpy(s->fake_key, full, sizeof s->fake_key);
        sodium_memzero(full, sizeof full);
    } else {
        pthread_once(&process_key_once, process_key_init);
        memcpy(s->fake_key, process_key, sizeof s->fake_key);
    }
    s->fake_iterations = p->fake_iterations ? p->fake_iterations : 4096;
    if (s->fake_iterations > TERN_SCRAM_ITER_MAX)
        s->fake_iterations = TERN_SCRAM_ITER_MAX;
    copy_str(s->hostname, sizeof s->hostname, p->hostname && p->hostname[0] ? p->hostname : "localhost");
    copy_str(s->scope, sizeof s->scope, p->oauth_scope);
    s->now = p->now;
    s->authcid = calloc(1, s->max_user + 1);
    s->authzid = calloc(1, s->max_user + 1);
    s->account = calloc(1, s->max_user + 1);
    tern_buf_init(&s->out, s->max_message + 1024);
    tern_buf_init(&s->gs2, 0);
    tern_buf_init(&s->first_bare, 0);
    tern_buf_init(&s->server_first, 0);
    if (!s->authcid || !s->authzid || !s->account) {
        tern_sasl_free(s);
        return NULL;
    }
    return s;
}

static void wipe_buf(tern_buf *b)
{
    if (b->data)
        sodium_memzero(b->data, b->cap);
    tern_buf_free(b);
}

void tern_sasl_free(tern_sasl *s)
{
    if (!s)
        return;
    if (s->cred) {
        sodium_memzero(s->cred, s->cred_len);
        free(s->cred);
    }
    free(s->authcid);
    free(s->authzid);
    free(s->account);
    wipe_buf(&s->out);
    tern_buf_free(&s->gs2);
    tern_buf_free(&s->first_bare);
    tern_buf_free(&s->server_first);
    sodium_memzero(s, sizeof *s);
    free(s);
}

void sasl__reset(tern_sasl_result *r)
{
    memset(r, 0, sizeof *r);
}

static void fill_names(tern_sasl *s, tern_sasl_result *r)
{
    r->authcid = s->authcid;
    r->authzid = s->authzid;
}

void sasl__fail(tern_sasl *s, tern_sasl_result *r, tern_sasl_error e)
{
    sasl__reset(r);
    r->status = TERN_SASL_FAIL;
    r->error = e;
    s->wait = WAIT_NOTHING;
    fill_names(s, r);
    if (s->cred) {
        sodium_memzero(s->cred, s->cred_len);
        s->cred_len = 0;
    }
}

void sasl__challenge(tern_sasl *s, tern_sasl_result *r, const void *data, size_t len)
{
    sasl__reset(r);
    s->out.len = 0;
    /* A NUL after the data (not counted) lets callers log it as text. */
    if ((len && tern_buf_append(&s->out, data, len) != 0) || tern_buf_append(&s->out, "", 1) != 0) {
        sasl__fail(s, r, TERN_SASL_EINTERNAL);
        return;
    }
    s->out.len--;
    r->status = TERN_SASL_CHALLENGE;
    r->data = s->out.data;
    r->data_len = s->out.len;
    s->wait = WAIT_STEP;
    fill_names(s, r);
}

void sasl__success(tern_sasl *s, tern_sasl_result *r, const char *account)
{
    sasl__reset(r);
    /* account may already be s->account (SCRAM keeps it there). */
    if (account && account[0]) {
        if (account != s->account)
            copy_str(s->account, s->max_user + 1, account);
    } else if (s->authzid[0]) {
        copy_str(s->account, s->max_user + 1, s->authzid);
    } else {
        copy_str(s->account, s->max_user + 1, s->authcid);
    }
    r->status = TERN_SASL_SUCCESS;
    r->account = s->account;
    s->wait = WAIT_NOTHING;
    fill_names(s, r);
    if (s->cred) {
        sodium_memzero(s->cred, s->cred_len);
        s->cred_len = 0;
    }
}

void sasl__need(tern_sasl *s, tern_sasl_result *r, tern_sasl_status st, sasl_wait w)
{
    sasl__reset(r);
    r->status = st;
    s->wait = w;
    fill_names(s, r);
}

int sasl__set_cred(tern_sasl *s, const uint8_t *p, size_t n)
{
    if (s->cred) {
        sodium_memzero(s->cred, s->cred_len);
        free(s->cred);
    }
    s->cred = malloc(n + 1);
    if (!s->cred) {
        s->cred_len = 0;
        return -1;
    }
    if (n)
        memcpy(s->cred, p, n);
    s->cred[n] = 0;
    s->cred_len = n;
    return 0;
}

/* Names end up in logs and backend queries: no control characters and
 * valid UTF-8 keeps both simple. */
static bool name_bytes_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            return false;
        size_t k = tern_utf8_seq_len(p + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

int sasl__set_name(tern_sasl *s, char *dst, const uint8_t *p, size_t n)
{
    if (n > s->max_user)
        return -1;
    if (!name_bytes_ok(p, n))
        return -2;
    if (n)
        memcpy(dst, p, n);
    dst[n] = '\0';
    return 0;
}

int sasl__set_saslname(tern_sasl *s, char *dst, const uint8_t *p, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == ',')
            return -2;
        if (c == '=') {
            if (n - i < 3)
                return -2;
            if (p[i + 1] == '2' && p[i + 2] == 'C')
                c = ',';
            else if (p[i + 1] == '3' && p[i + 2] == 'D')
                c = '=';
            else
                return -2;
            i += 2;
        }
        if (o >= s->max_user)
            return -1;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return name_bytes_ok((const uint8_t *)dst, o) ? 0 : -2;
}

long sasl__gs2_header(tern_sasl *s, const uint8_t *m, size_t len, char *flag, char *cb_name,
                      size_t cb_name_size)
{
    size_t i = 0;
    if (len < 1)
        return -TERN_SASL_EMALFORMED;
    cb_name[0] = '\0';
    if (m[0] == 'n' || m[0] == 'y') {
        *flag = (char)m[0];
        i = 1;
    } else if (m[0] == 'p') {
        *flag = 'p';
        if (len < 2 || m[1] != '=')
            return -TERN_SASL_EMALFORMED;
        i = 2;
        size_t start = i;
        while (i < len && m[i] != ',') {
            uint8_t c = m[i];
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '-';
            if (!ok)
                return -TERN_SASL_EMALFORMED;
            i++;
        }
        if (i == start || i - start >= cb_name_size)
            return i == start ? -TERN_SASL_EMALFORMED : -TERN_SASL_ECB_UNSUPPORTED;
        memcpy(cb_name, m + start, i - start);
        cb_name[i - start] = '\0';
    } else {
        return -TERN_SASL_EMALFORMED;
    }
    if (i >= len || m[i] != ',')
        return -TERN_SASL_EMALFORMED;
    i++;
    s->authzid[0] = '\0';
    if (i < len && m[i] == 'a') {
        if (i + 1 >= len || m[i + 1] != '=')
            return -TERN_SASL_EMALFORMED;
        size_t start = i + 2;
        const uint8_t *comma = memchr(m + start, ',', len - start);
        if (!comma || comma == m + start)
            return -TERN_SASL_EMALFORMED;
        int rc = sasl__set_saslname(s, s->authzid, m + start, (size_t)(comma - (m + start)));
        if (rc)
            return rc == -1 ? -TERN_SASL_ETOOLONG : -TERN_SASL_EMALFORMED;
        i = (size_t)(comma - m);
    }
    if (i >= len || m[i] != ',')
        return -TERN_SASL_EMALFORMED;
    return (long)(i + 1);
}

void tern_sasl_step(tern_sasl *s, const uint8_t *msg, size_t len, tern_sasl_result *r)
{
    if (s->wait != WAIT_STEP) {
        /* A client talking past a NEED_* answer, or after the end. */
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return;
    }
    if (msg && len > s->max_message) {
        sasl__fail(s, r, TERN_SASL_ETOOLONG);
        return;
    }
    if (!msg && s->state != 0) {
        msg = (const uint8_t *)"";
        len = 0;
    }
    switch (s->mech) {
    case SASL_PLAIN:
        sasl__plain_step(s, msg, len, r);
        break;
    case SASL_LOGIN:
        sasl__login_step(s, msg, len, r);
        break;
    case SASL_CRAM_MD5:
        sasl__cram_step(s, msg, len, r);
        break;
    case SASL_SCRAM:
    case SASL_SCRAM_PLUS:
        sasl__scram_step(s, msg, len, r);
        break;
    case SASL_OAUTHBEARER:
        sasl__oauthbearer_step(s, msg, len, r);
        break;
    case SASL_XOAUTH2:
        sasl__xoauth2_step(s, msg, len, r);
        break;
    case SASL_EXTERNAL:
        sasl__external_step(s, msg, len, r);
        break;
    }
}

void tern_sasl_abort(tern_sasl *s, tern_sasl_result *r)
{
    sasl__fail(s, r, TERN_SASL_EABORTED);
}

void tern_sasl_verified(tern_sasl *s, bool ok, const char *account, tern_sasl_result *r)
{
    if (s->wait != WAIT_VERIFIED) {
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return;
    }
    if (s->mech == SASL_OAUTHBEARER || s->mech == SASL_XOAUTH2) {
        sasl__oauth_verified(s, ok, account, r);
        return;
    }
    if (ok)
        sasl__success(s, r, account);
    else
        sasl__fail(s, r, TERN_SASL_EBADCRED);
}

void tern_sasl_scram_keys(tern_sasl *s, const tern_scram_keys *keys, const char *account,
                          tern_sasl_result *r)
{
    if (s->wait != WAIT_SCRAM_KEYS) {
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return;
    }
    sasl__scram_keys(s, keys, account, r);
}

void tern_sasl_cram_secret(tern_sasl *s, const uint8_t *secret, size_t secret_len,
                           const char *account, tern_sasl_result *r)
{
    if (s->wait != WAIT_CRAM_SECRET) {
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return;
    }
    if (secret && tern_cram_md5_verify(secret, secret_len, s->cram_chal, s->cram_digest))
        sasl__success(s, r, account);
    else
        sasl__fail(s, r, TERN_SASL_EBADCRED);
}

tern_sasl_resp tern_sasl_decode_response(const char *line, size_t len, bool initial,
                                         uint8_t *out, size_t cap, size_t *len_r)
{
    *len_r = 0;
    if (len == 1 && line[0] == '*')
        return TERN_SASL_RESP_ABORT;
    if (initial && len == 1 && line[0] == '=')
        return TERN_SASL_RESP_OK;
    if (len % 4 != 0)
        return TERN_SASL_RESP_BAD;
    if (len / 4 * 3 > cap + 2)
        return TERN_SASL_RESP_TOOLONG;
    if (tern_base64_decode(line, len, out, cap, len_r) != 0) {
        /* Tell "too long" from "not base64": a big buffer would hide it. */
        return len / 4 * 3 > cap ? TERN_SASL_RESP_TOOLONG : TERN_SASL_RESP_BAD;
    }
    return TERN_SASL_RESP_OK;
}

const char *tern_sasl_error_name(tern_sasl_error e)
{
    switch (e) {
    case TERN_SASL_OK: return "ok";
    case TERN_SASL_EMALFORMED: return "malformed";
    case TERN_SASL_ETOOLONG: return "too_long";
    case TERN_SASL_EBADCRED: return "bad_credentials";
    case TERN_SASL_EABORTED: return "aborted";
    case TERN_SASL_ECB_UNSUPPORTED: return "channel_binding_unsupported";
    case TERN_SASL_ECB_MISMATCH: return "channel_binding_mismatch";
    case TERN_SASL_EDOWNGRADE: return "channel_binding_downgrade";
    case TERN_SASL_EAUTHZ: return "authzid_not_allowed";
    case TERN_SASL_EEXTENSION: return "extension_unsupported";
    case TERN_SASL_ESTATE: return "out_of_order";
    case TERN_SASL_EINTERNAL: return "internal";
    }
    return "unknown";
}

int tern_sasl_mechanisms(unsigned caps, bool tls_active, bool allow_plaintext,
                         bool cb_available, char *buf, size_t size)
{
    bool clear_ok = tls_active || allow_plaintext;
    const struct {
        const char *name;
        bool on;
    } list[] = {
        {"SCRAM-SHA-256-PLUS", (caps & TERN_SASL_CAP_SCRAM) && cb_available && tls_active},
        {"SCRAM-SHA-256", (caps & TERN_SASL_CAP_SCRAM) != 0},
        {"CRAM-MD5", (caps & TERN_SASL_CAP_CRAM) != 0},
        {"PLAIN", (caps & TERN_SASL_CAP_PASSWORD) && clear_ok},
        {"LOGIN", (caps & TERN_SASL_CAP_PASSWORD) && clear_ok},
        {"OAUTHBEARER", (caps & TERN_SASL_CAP_TOKEN) && clear_ok},
        {"XOAUTH2", (caps & TERN_SASL_CAP_TOKEN) && clear_ok},
        {"EXTERNAL", (caps & TERN_SASL_CAP_EXTERNAL) && tls_active},
    };
    if (size == 0)
        return -1;
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {
        if (!list[i].on)
            continue;
        size_t n = strlen(list[i].name);
        if (o + (o ? 1 : 0) + n + 1 > size)
            return -1;
        if (o)
            buf[o++] = ' ';
        memcpy(buf + o, list[i].name, n);
        o += n;
        buf[o] = '\0';
    }
    return (int)o;
}

void tern_sasl_test_fix(tern_sasl *s, const char *nonce_or_challenge)
{
    copy_str(s->fixed, sizeof s->fixed, nonce_or_challenge);
}
