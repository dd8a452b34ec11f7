/* libFuzzer target for auth/sasl/ and lib/base64.c. Input: one control
 * byte, then client messages separated by 0xFF. The control byte picks
 * the mechanism (low 3 bits) and flags: bit 3 SCRAM success data, bit 4
 * TLS channel binding present, bit 5 proxying allowed, bit 6 a client
 * certificate, bit 7 the caller's answers to NEED_* say yes (known user,
 * good password, the RFC test secrets). A first segment of exactly "-"
 * means no initial response. Checked: every result is well formed (data
 * and names within bounds and NUL-terminated), a finished exchange stays
 * finished, base64 round-trips and the response decoder agrees with it.
 * Any broken invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/sasl/sasl.h"
#include "lib/base64.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static const char *mechs[8] = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256",
                               "SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2", "EXTERNAL"};

static tern_scram_keys pencil;
static bool pencil_ready;

static void check_name(const char *s)
{
    CHECK(s != NULL);
    CHECK(strnlen(s, TERN_SASL_USER_MAX + 1) <= TERN_SASL_USER_MAX);
}

static void check_result(const tern_sasl_result *r)
{
    CHECK(r->status >= TERN_SASL_CHALLENGE && r->status <= TERN_SASL_FAIL);
    if (r->data_len) {
        CHECK(r->data != NULL);
        CHECK(r->data_len <= TERN_SASL_MSG_MAX + 1024);
        CHECK(r->data[r->data_len] == 0);
    }
    check_name(r->authcid);
    check_name(r->authzid);
    if (r->status == TERN_SASL_FAIL)
        CHECK(r->error != TERN_SASL_OK);
    else
        CHECK(r->error == TERN_SASL_OK);
    if (r->status == TERN_SASL_SUCCESS)
        check_name(r->account);
    if (r->status == TERN_SASL_NEED_VERIFY_PASSWORD) {
        CHECK(r->password && r->password_len > 0);
        CHECK(r->password[r->password_len] == 0);
        CHECK(memchr(r->password, 0, r->password_len) == NULL);
        CHECK(r->authcid[0] != 0);
    }
    if (r->status == TERN_SASL_NEED_VERIFY_TOKEN)
        CHECK(r->token && r->token[0]);
    if (r->status == TERN_SASL_NEED_CRAM_SECRET)
        CHECK(r->challenge && r->digest && r->authcid[0]);
}

static void check_base64(const uint8_t *m, size_t len)
{
    char *enc = malloc(TERN_BASE64_ENCODED_LEN(len) + 1);
    uint8_t *dec = malloc(len + 3);
    CHECK(enc && dec);
    long e = tern_base64_encode(m, len, enc, TERN_BASE64_ENCODED_LEN(len) + 1);
    CHECK(e == (long)TERN_BASE64_ENCODED_LEN(len));
    size_t dl;
    CHECK(tern_base64_decode(enc, (size_t)e, dec, len + 3, &dl) == 0);
    CHECK(dl == len && (len == 0 || memcmp(dec, m, len) == 0));
    CHECK(tern_sasl_decode_response(enc, (size_t)e, false, dec, len + 3, &dl) ==
          TERN_SASL_RESP_OK);
    CHECK(dl == len);
    /* The raw bytes as a response line: whatever it says, in bounds. */
    uint8_t small[64];
    tern_sasl_resp rr = tern_sasl_decode_response((const char *)m, len, true, small, sizeof small, &dl);
    CHECK(rr <= TERN_SASL_RESP_TOOLONG);
    CHECK(rr != TERN_SASL_RESP_OK || dl <= sizeof small);
    free(enc);
    free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!pencil_ready) {
        uint8_t salt[16];
        size_t sl;
        CHECK(tern_base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 24, salt, sizeof salt, &sl) == 0);
        CHECK(tern_scram_derive((const uint8_t *)"pencil", 6, salt, sl, 4096, &pencil) == 0);
        pencil_ready = true;
    }
    uint8_t ctl = data[0];
    bool yes = ctl & 0x80;
    static const uint8_t cb[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
    tern_sasl_params p = {0};
    p.hostname = "fuzz.example";
    p.success_data = ctl & 0x08;
    if (ctl & 0x10) {
        p.cb_type = "tls-exporter";
        p.cb_data = cb;
        p.cb_len = sizeof cb;
    }
    p.allow_proxy = ctl & 0x20;
    p.external_available = ctl & 0x40;
    p.secret = (const uint8_t *)"fuzz";
    p.secret_len = 4;
    p.oauth_scope = "scope\"\\x";
    tern_sasl *s = tern_sasl_new(mechs[ctl & 7], &p);
    if (!s) {
        CHECK((ctl & 7) == 4 && !(ctl & 0x10));
        return 0;
    }
    tern_sasl_test_fix(s, (ctl & 7) == 2 ? "<1896.697170952@postoffice.reston.mci.net>"
                                         : "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    const uint8_t *in = data + 1, *end = data + size;
    bool first = true, over = false;
    tern_sasl_result r;
    unsigned steps = 0;
    while (in <= end && steps++ < 16) {
        const uint8_t *sep = memchr(in, 0xff, (size_t)(end - in));
        size_t len = sep ? (size_t)(sep - in) : (size_t)(end - in);
        check_base64(in, len);
        if (first && len == 1 && in[0] == '-')
            tern_sasl_step(s, NULL, 0, &r);
        else
            tern_sasl_step(s, in, len, &r);
        first = false;
        check_result(&r);
        if (over)
            CHECK(r.status == TERN_SASL_FAIL && r.error == TERN_SASL_ESTATE);
        /* Answer NEED_* results until the mechanism wants the client. */
        for (int k = 0; k < 4; k++) {
            switch (r.status) {
            case TERN_SASL_NEED_VERIFY_PASSWORD:
            case TERN_SASL_NEED_VERIFY_TOKEN:
            case TERN_SASL_NEED_EXTERNAL:
                tern_sasl_verified(s, yes, NULL, &r);
                break;
            case TERN_SASL_NEED_SCRAM_KEYS:
                tern_sasl_scram_keys(s, yes ? &pencil : NULL, NULL, &r);
                break;
            case TERN_SASL_NEED_CRAM_SECRET:
                tern_sasl_cram_secret(s, yes ? (const uint8_t *)"tanstaaftanstaaf" : NULL, 16,
                                      NULL, &r);
                break;
            default:
                k = 4;
                continue;
            }
            check_result(&r);
        }
        CHECK(r.status == TERN_SASL_CHALLENGE || r.status == TERN_SASL_SUCCESS ||
              r.status == TERN_SASL_FAIL);
        if (r.status != TERN_SASL_CHALLENGE)
            over = true;
        if (!sep)
            break;
        in = sep + 1;
    }
    tern_sasl_abort(s, &r);
    CHECK(r.status == TERN_SASL_FAIL && r.error == TERN_SASL_EABORTED);
    tern_sasl_free(s);

    /* The whole input as a stored SCRAM key line. */
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    tern_scram_keys k;
    if (tern_scram_keys_parse(text, &k) == 0) {
        char buf[TERN_SCRAM_TEXT_MAX];
        CHECK(tern_scram_keys_format(&k, buf, sizeof buf) == 0);
        tern_scram_keys k2;
        CHECK(tern_scram_keys_parse(buf, &k2) == 0);
        CHECK(k2.iterations == k.iterations && k2.salt_len == k.salt_len);
    }
    free(text);
    return 0;
}
