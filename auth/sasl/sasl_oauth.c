/* SASL OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's format): parsing of
 * the client's single message into a user and a bearer token, and the
 * error challenge sent before failing. Input: the decoded client message
 * (untrusted). The token is validated by the caller (auth/oauth2). */
#include "auth/sasl/sasl_private.h"

#include <string.h>
#include <strings.h>

#include <sodium.h>

#define KVSEP 0x01

enum { OAUTH_START, OAUTH_WAIT_MSG, OAUTH_VERIFY, OAUTH_ERROR_SENT, OAUTH_DONE };

static bool is_alpha(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* b64token of RFC 6750 section 2.1. */
static bool token_ok(const uint8_t *t, size_t n)
{
    size_t i = 0;
    while (i < n && (is_alpha(t[i]) || (t[i] >= '0' && t[i] <= '9') || t[i] == '-' ||
                     t[i] == '.' || t[i] == '_' || t[i] == '~' || t[i] == '+' || t[i] == '/'))
        i++;
    if (i == 0)
        return false;
    while (i < n && t[i] == '=')
        i++;
    return i == n;
}

typedef struct {
    const uint8_t *user, *auth;
    size_t user_len, auth_len;
    bool have_user, have_auth;
} kv_found;

/* kvpairs: *(key "=" value KVSEP) KVSEP, up to the end of the message.
 * key is ALPHA only; value is VCHAR / SP / HTAB / CR / LF. */
static bool parse_kv(const uint8_t *m, size_t len, bool want_user, kv_found *f)
{
    size_t i = 0;
    memset(f, 0, sizeof *f);
    for (;;) {
        if (i >= len)
            return false;
        if (m[i] == KVSEP)
            return i + 1 == len;
        size_t k = i;
        while (i < len && is_alpha(m[i]))
            i++;
        size_t klen = i - k;
        if (klen == 0 || i >= len || m[i] != '=')
            return false;
        size_t v = ++i;
        while (i < len && m[i] != KVSEP) {
            uint8_t c = m[i];
            if (!((c >= 0x21 && c <= 0x7e) || c == ' ' || c == '\t' || c == '\r' || c == '\n'))
                return false;
            i++;
        }
        if (i >= len)
            return false;
        size_t vlen = i - v;
        i++;
        if (klen == 4 && memcmp(m + k, "auth", 4) == 0) {
            if (f->have_auth)
                return false;
            f->have_auth = true;
            f->auth = m + v;
            f->auth_len = vlen;
        } else if (want_user && klen == 4 && memcmp(m + k, "user", 4) == 0) {
            if (f->have_user)
                return false;
            f->have_user = true;
            f->user = m + v;
            f->user_len = vlen;
        }
        /* host, port, and keys of later extensions: ignored. */
    }
}

/* "Bearer" 1*SP b64token; the scheme name is case-insensitive (RFC 6750). */
static bool bearer(const uint8_t *a, size_t n, const uint8_t **tok, size_t *tok_len)
{
    if (n < 7 || strncasecmp((const char *)a, "Bearer", 6) != 0 || a[6] != ' ')
        return false;
    size_t i = 6;
    while (i < n && a[i] == ' ')
        i++;
    if (!token_ok(a + i, n - i))
        return false;
    *tok = a + i;
    *tok_len = n - i;
    return true;
}

static void need_token(tern_sasl *s, const kv_found *f, tern_sasl_result *r)
{
    const uint8_t *tok;
    size_t tok_len;
    if (!f->have_auth || !bearer(f->auth, f->auth_len, &tok, &tok_len)) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    if (sasl__set_cred(s, tok, tok_len) != 0) {
        sasl__fail(s, r, TERN_SASL_EINTERNAL);
        return;
    }
    s->state = OAUTH_VERIFY;
    sasl__need(s, r, TERN_SASL_NEED_VERIFY_TOKEN, WAIT_VERIFIED);
    r->token = (const char *)s->cred;
}

/* Shared start and end states of both mechanisms. Returns true when the
 * step was handled here. */
static bool common_states(tern_sasl *s, const uint8_t *m, tern_sasl_result *r)
{
    if (s->state == OAUTH_START && !m) {
        s->state = OAUTH_WAIT_MSG;
        sasl__challenge(s, r, "", 0);
        return true;
    }
    if (s->state == OAUTH_ERROR_SENT) {
        /* RFC 7628 3.2.3: the client answers the error with a dummy
         * %x01; whatever it sends, the exchange has failed. */
        s->state = OAUTH_DONE;
        sasl__fail(s, r, TERN_SASL_EBADCRED);
        return true;
    }
    if (s->state != OAUTH_START && s->state != OAUTH_WAIT_MSG) {
        sasl__fail(s, r, TERN_SASL_ESTATE);
        return true;
    }
    return false;
}

void sasl__oauthbearer_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    if (common_states(s, m, r))
        return;
    char flag, cb_name[32];
    long h = sasl__gs2_header(s, m, len, &flag, cb_name, sizeof cb_name);
    if (h < 0) {
        sasl__fail(s, r, (tern_sasl_error)-h);
        return;
    }
    /* OAUTHBEARER has no -PLUS variant: "p" cannot be honoured. */
    if (flag == 'p') {
        sasl__fail(s, r, TERN_SASL_ECB_UNSUPPORTED);
        return;
    }
    size_t i = (size_t)h;
    if (i >= len || m[i] != KVSEP) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    kv_found f;
    if (!parse_kv(m + i + 1, len - i - 1, false, &f)) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    need_token(s, &f, r);
}

void sasl__xoauth2_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    if (common_states(s, m, r))
        return;
    kv_found f;
    if (!parse_kv(m, len, true, &f) || !f.have_user || f.user_len == 0) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    int rc = sasl__set_name(s, s->authzid, f.user, f.user_len);
    if (rc) {
        sasl__fail(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED);
        return;
    }
    need_token(s, &f, r);
}

static void json_str(tern_buf *b, const char *v)
{
    tern_buf_append(b, "\"", 1);
    for (const char *p = v; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c == 0x7f)
            continue;
        if (c == '"' || c == '\\')
            tern_buf_append(b, "\\", 1);
        tern_buf_append(b, p, 1);
    }
    tern_buf_append(b, "\"", 1);
}

void sasl__oauth_verified(tern_sasl *s, bool ok, const char *account, tern_sasl_result *r)
{
    if (ok) {
        s->state = OAUTH_DONE;
        sasl__success(s, r, account);
        return;
    }
    /* RFC 7628 3.2.2 for OAUTHBEARER; XOAUTH2 clients expect the same
     * shape with an HTTP-like status, as Google sends it. */
    tern_buf j;
    tern_buf_init(&j, 0);
    tern_buf_append_str(&j, "{\"status\":");
    json_str(&j, s->mech == SASL_XOAUTH2 ? "401" : "invalid_token");
    tern_buf_append_str(&j, ",\"schemes\":\"bearer\"");
    if (s->scope[0]) {
        tern_buf_append_str(&j, ",\"scope\":");
        json_str(&j, s->scope);
    }
    tern_buf_append_str(&j, "}");
    if (s->cred) {
        sodium_memzero(s->cred, s->cred_len);
        s->cred_len = 0;
    }
    s->state = OAUTH_ERROR_SENT;
    sasl__challenge(s, r, j.data, j.len);
    tern_buf_free(&j);
}
