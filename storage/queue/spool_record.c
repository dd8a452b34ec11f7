/* The spool's on-disk format: CRC32C, segment and record headers, and the
 * envelope encoding (see spool_record.h for the layout). Encoders take our
 * own envelopes; decoders take bytes read back from disk and check every
 * length against what is left before using it. */
#include "storage/queue/spool_record.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---- */

#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void crc__init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc__sw(uint32_t c, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= c;
        c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
            crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
            crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
            crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t crc__hw(uint32_t c, const uint8_t *p, size_t len)
{
    uint64_t c64 = c;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        len -= 8;
    }
    c = (uint32_t)c64;
    while (len--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t spool_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc__init);
    uint32_t c = ~crc;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (crc_hw)
        return ~crc__hw(c, data, len);
#endif
    return ~crc__sw(c, data, len);
}

/* Multiplication of polynomials modulo the CRC polynomial, in the reflected
 * bit order the CRC uses (bit 31 is x^0). */
static uint32_t crc__mulmod(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return p;
}

uint32_t spool_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    /* crc(A||B) = crc(A) * x^(8*len_b) + crc(B) mod P, with the pre- and
     * post-conditioning cancelling out; x^(8n) by squaring. */
    uint32_t sq = 1u << 30; /* x^1 */
    for (int i = 0; i < 3; i++)
        sq = crc__mulmod(sq, sq); /* x^8 */
    uint32_t p = 1u << 31;        /* x^0 */
    while (len_b) {
        if (len_b & 1)
            p = crc__mulmod(sq, p);
        len_b >>= 1;
        sq = crc__mulmod(sq, sq);
    }
    return crc__mulmod(p, crc_a) ^ crc_b;
}

/* ---- little-endian helpers ---- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- headers ---- */

void spool_file_hdr_encode(uint8_t out[SPOOL_FILE_HDR_LEN], uint32_t seg_num)
{
    memcpy(out, SPOOL_FILE_MAGIC, 8); /* includes the NUL */
    put32(out + 8, SPOOL_FORMAT_VERSION);
    put32(out + 12, seg_num);
}

int spool_file_hdr_check(const uint8_t *in, size_t len)
{
    if (len < SPOOL_FILE_HDR_LEN || memcmp(in, SPOOL_FILE_MAGIC, 8) != 0)
        return -1;
    uint32_t v = get32(in + 8);
    return v >= 1 && v <= SPOOL_FORMAT_VERSION ? 0 : -1;
}

void spool_rec_hdr_encode(uint8_t out[SPOOL_REC_HDR_LEN], const spool_rec_hdr *h)
{
    put32(out, SPOOL_REC_MAGIC);
    out[4] = h->version ? h->version : SPOOL_REC_VERSION;
    out[5] = h->type;
    put16(out + 6, h->flags);
    put32(out + 8, h->len);
    memcpy(out + 12, h->qid, SPOOL_QID_CHARS);
    put32(out + 28, h->payload_crc);
    put32(out + 32, 0);
    put32(out + 36, spool_crc32c(0, out, 36));
}

int spool_rec_hdr_decode(const uint8_t *in, size_t len, spool_rec_hdr *h_r)
{
    if (len < SPOOL_REC_HDR_LEN || get32(in) != SPOOL_REC_MAGIC)
        return -1;
    if (get32(in + 36) != spool_crc32c(0, in, 36))
        return -1;
    h_r->version = in[4];
    h_r->type = in[5];
    h_r->flags = get16(in + 6);
    h_r->len = get32(in + 8);
    memcpy(h_r->qid, in + 12, SPOOL_QID_CHARS);
    h_r->qid[SPOOL_QID_CHARS] = '\0';
    h_r->payload_crc = get32(in + 28);
    if (h_r->version == 0 || h_r->len > SPOOL_MAX_PAYLOAD)
        return -1;
    for (int i = 0; i < SPOOL_QID_CHARS; i++) {
        char c = h_r->qid[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')))
            return -1;
    }
    return 0;
}

/* ---- envelope ---- */

#define ENV_VERSION 1

enum {
    T_MAIL_FROM = 1,
    T_RCPT = 2,
    T_ENVID = 3,
    T_RET = 4,
    T_BODY = 5,
    T_SMTPUTF8 = 6,
    T_AUTH_USER = 7,
    T_HELO = 8,
    T_CLIENT_ADDR = 9,
    T_SESSION_ID = 10,
    T_LISTENER = 11,
    T_PIPELINE = 12,
    T_RECEIVED_AT = 13,
    T_SIZE = 14,
    T_QID = 15,
    /* RFC 8689 REQUIRETLS, written only when set. Numbered apart from the
     * run above so fields added there in parallel do not collide. */
    T_REQUIRETLS = 32,
    /* inside T_RCPT */
    T_R_ADDR = 1,
    T_R_ORCPT = 2,
    T_R_NOTIFY = 3,
};

typedef struct enc {
    uint8_t *p;
    size_t len, cap;
    bool fail;
} enc;

static uint8_t *enc__room(enc *e, size_t n)
{
    if (e->fail)
        return NULL;
    if (n > SPOOL_MAX_ENVELOPE || e->len + n > SPOOL_MAX_ENVELOPE) {
        e->fail = true;
        return NULL;
    }
    if (e->len + n > e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 256;
        while (cap < e->len + n)
            cap *= 2;
        uint8_t *np = realloc(e->p, cap);
        if (np == NULL) {
            e->fail = true;
            return NULL;
        }
        e->p = np;
        e->cap = cap;
    }
    uint8_t *r = e->p + e->len;
    e->len += n;
    return r;
}

static void enc__tlv(enc *e, uint16_t tag, const void *v, size_t n)
{
    uint8_t *p = enc__room(e, 6 + n);
    if (p == NULL)
        return;
    put16(p, tag);
    put32(p + 2, (uint32_t)n);
    if (n)
        memcpy(p + 6, v, n);
}

static void enc__str(enc *e, uint16_t tag, const char *s)
{
    if (s != NULL)
        enc__tlv(e, tag, s, strlen(s));
}

static void enc__u8(enc *e, uint16_t tag, uint8_t v)
{
    enc__tlv(e, tag, &v, 1);
}

static void enc__u64(enc *e, uint16_t tag, uint64_t v)
{
    uint8_t b[8];
    put64(b, v);
    enc__tlv(e, tag, b, 8);
}

uint8_t *spool_env_encode(const tern_envelope *env, size_t *len_r)
{
    enc e = {0};
    if (env->n_rcpts > SPOOL_MAX_RCPTS)
        return NULL;
    uint8_t *v = enc__room(&e, 1);
    if (v)
        *v = ENV_VERSION;
    enc__tlv(&e, T_QID, env->qid, strnlen(env->qid, SPOOL_QID_CHARS));
    enc__str(&e, T_MAIL_FROM, env->mail_from ? env->mail_from : "");
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const tern_spool_rcpt *r = &env->rcpts[i];
        enc sub = {0};
        enc__str(&sub, T_R_ADDR, r->addr ? r->addr : "");
        enc__str(&sub, T_R_ORCPT, r->orcpt);
        enc__u8(&sub, T_R_NOTIFY, r->notify);
        if (sub.fail)
            e.fail = true;
        else
            enc__tlv(&e, T_RCPT, sub.p, sub.len);
        free(sub.p);
    }
    enc__str(&e, T_ENVID, env->envid);
    enc__u8(&e, T_RET, (uint8_t)env->ret);
    enc__u8(&e, T_BODY, (uint8_t)env->body);
    enc__u8(&e, T_SMTPUTF8, env->smtputf8 ? 1 : 0);
    enc__str(&e, T_AUTH_USER, env->auth_user);
    enc__str(&e, T_HELO, env->helo);
    enc__str(&e, T_CLIENT_ADDR, env->client_addr);
    enc__str(&e, T_SESSION_ID, env->session_id);
    enc__str(&e, T_LISTENER, env->listener);
    enc__str(&e, T_PIPELINE, env->pipeline);
    enc__u64(&e, T_RECEIVED_AT, (uint64_t)env->received_at);
    enc__u64(&e, T_SIZE, env->size);
    if (env->requiretls)
        enc__u8(&e, T_REQUIRETLS, 1);
    if (e.fail) {
        free(e.p);
        return NULL;
    }
    *len_r = e.len;
    return e.p;
}

typedef struct dec {
    const uint8_t *p;
    size_t left;
} dec;

/* Next TLV or 0 at the end, -1 when the remaining bytes cannot hold it. */
static int dec__next(dec *d, uint16_t *tag_r, const uint8_t **v_r, size_t *n_r)
{
    if (d->left == 0)
        return 0;
    if (d->left < 6)
        return -1;
    uint16_t tag = get16(d->p);
    uint32_t n = get32(d->p + 2);
    if (n > d->left - 6)
        return -1;
    *tag_r = tag;
    *v_r = d->p + 6;
    *n_r = n;
    d->p += 6 + (size_t)n;
    d->left -= 6 + (size_t)n;
    return 1;
}

static char *dec__str(const uint8_t *v, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL)
        return NULL;
    memcpy(s, v, n);
    s[n] = '\0';
    return s;
}

/* Replaces *dst, so a repeated tag cannot leak. */
static int dec__setstr(char **dst, const uint8_t *v, size_t n)
{
    char *s = dec__str(v, n);
    if (s == NULL)
        return -1;
    free(*dst);
    *dst = s;
    return 0;
}

static int dec__rcpt(tern_spool_rcpt *r, const uint8_t *v, size_t n, const char **why_r)
{
    dec d = {v, n};
    uint16_t tag;
    const uint8_t *fv;
    size_t fn;
    int k;
    while ((k = dec__next(&d, &tag, &fv, &fn)) == 1) {
        switch (tag) {
        case T_R_ADDR:
            if (dec__setstr(&r->addr, fv, fn) != 0)
                goto nomem;
            break;
        case T_R_ORCPT:
            if (dec__setstr(&r->orcpt, fv, fn) != 0)
                goto nomem;
            break;
        case T_R_NOTIFY:
            if (fn != 1) {
                *why_r = "bad notify length";
                return -1;
            }
            r->notify = fv[0];
            break;
        default:
            break;
        }
    }
    if (k < 0) {
        *why_r = "truncated recipient field";
        return -1;
    }
    if (r->addr == NULL) {
        *why_r = "recipient without address";
        return -1;
    }
    return 0;
nomem:
    *why_r = "out of memory";
    return -1;
}

tern_envelope *spool_env_decode(const uint8_t *data, size_t len, const char **why_r)
{
    const char *why = "malformed";
    if (len < 1 || data[0] != ENV_VERSION) {
        *why_r = "unknown envelope version";
        return NULL;
    }
    tern_envelope *env = calloc(1, sizeof(*env));
    if (env == NULL) {
        *why_r = "out of memory";
        return NULL;
    }
    /* First pass counts recipients so the array is allocated once. */
    dec d = {data + 1, len - 1};
    uint16_t tag;
    const uint8_t *v;
    size_t n, nr = 0;
    int k;
    while ((k = dec__next(&d, &tag, &v, &n)) == 1)
        if (tag == T_RCPT)
            nr++;
    if (k < 0) {
        why = "truncated field";
        goto fail;
    }
    if (nr > SPOOL_MAX_RCPTS) {
        why = "too many recipients";
        goto fail;
    }
    if (nr) {
        env->rcpts = calloc(nr, sizeof(*env->rcpts));
        if (env->rcpts == NULL) {
            why = "out of memory";
            goto fail;
        }
    }
    d = (dec){data + 1, len - 1};
    while (dec__next(&d, &tag, &v, &n) == 1) {
        char **sp = NULL;
        switch (tag) {
        case T_QID:
            if (n != SPOOL_QID_CHARS) {
                why = "bad qid";
                goto fail;
            }
            memcpy(env->qid, v, n);
            env->qid[n] = '\0';
            break;
        case T_MAIL_FROM: sp = &env->mail_from; break;
        case T_ENVID: sp = &env->envid; break;
        case T_AUTH_USER: sp = &env->auth_user; break;
        case T_HELO: sp = &env->helo; break;
        case T_CLIENT_ADDR: sp = &env->client_addr; break;
        case T_SESSION_ID: sp = &env->session_id; break;
        case T_LISTENER: sp = &env->listener; break;
        case T_PIPELINE: sp = &env->pipeline; break;
        case T_RCPT:
            if (dec__rcpt(&env->rcpts[env->n_rcpts++], v, n, &why) != 0)
                goto fail;
            break;
        case T_RET:
        case T_BODY:
        case T_SMTPUTF8:
            if (n != 1) {
                why = "bad flag length";
                goto fail;
            }
            if (tag == T_RET) {
                if (v[0] > TERN_RET_HDRS) {
                    why = "bad ret";
                    goto fail;
                }
                env->ret = (tern_dsn_ret)v[0];
            } else if (tag == T_BODY) {
                if (v[0] > TERN_BODY_BINARYMIME) {
                    why = "bad body type";
                    goto fail;
                }
                env->body = (tern_body_type)v[0];
            } else {
                env->smtputf8 = v[0] != 0;
            }
            break;
        case T_REQUIRETLS:
            if (n != 1) {
                why = "bad flag length";
                goto fail;
            }
            env->requiretls = v[0] != 0;
            break;
        case T_RECEIVED_AT:
        case T_SIZE:
            if (n != 8) {
                why = "bad integer length";
                goto fail;
            }
            if (tag == T_SIZE)
                env->size = get64(v);
            else
                env->received_at = (int64_t)get64(v);
            break;
        default:
            break; /* a field from a newer writer */
        }
        if (sp != NULL && dec__setstr(sp, v, n) != 0) {
            why = "out of memory";
            goto fail;
        }
    }
    if (env->mail_from == NULL) {
        why = "no sender";
        goto fail;
    }
    return env;
fail:
    *why_r = why;
    spool_env_free(env);
    return NULL;
}

void spool_env_free(tern_envelope *env)
{
    if (env == NULL)
        return;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        free(env->rcpts[i].addr);
        free(env->rcpts[i].orcpt);
        free(env->rcpts[i].last_error);
    }
    free(env->rcpts);
    free(env->mail_from);
    free(env->envid);
    free(env->auth_user);
    free(env->helo);
    free(env->client_addr);
    free(env->session_id);
    free(env->listener);
    free(env->pipeline);
    free(env);
}
