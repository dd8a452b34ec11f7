/* Mailet AddSubjectPrefix: puts a tag such as "[SPAM]" or "[list]" in front
 * of the Subject, once. Input: its YAML parameter `prefix` (checked at
 * init: valid UTF-8, no controls) and the message's Subject (untrusted:
 * raw, RFC 2047 encoded or not).
 *
 * Not twice: the subject is decoded (RFC 2047) and reply/forward markers
 * ("Re:", "Fwd:", "AW:", "SV:"...) at its start are skipped; if it then
 * starts with the prefix (ASCII case ignored), it is left alone, so a
 * reply to tagged mail is not tagged again.
 *
 * Encoding: an ASCII prefix is written as it is. A non-ASCII one is written
 * as UTF-8 "B" encoded-words. When the subject itself starts with an
 * encoded-word, the separating space goes inside the prefix's last word:
 * RFC 2047 drops whitespace between two adjacent encoded-words, so a space
 * outside would vanish on display ("[Spä]Hello"). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arena.h"
#include "lib/base64.h"
#include "lib/rfc2047.h"
#include "mailets/builtin/builtin.h"

#define ASP_PREFIX_MAX 200
/* An encoded-word is at most 75 characters (RFC 2047 2): "=?UTF-8?B?" and
 * "?=" take 12, leaving 60 base64 characters, 45 bytes. */
#define ASP_WORD_BYTES 45

typedef struct {
    char *prefix;       /* trimmed */
    size_t prefix_len;
    char *plain;        /* what goes before a plain subject (no separator) */
    char *before_word;  /* what goes before a subject starting with an encoded-word */
} subject_prefix;

/* The prefix as encoded-words, split on character boundaries; `space`
 * appends a space inside the last word. */
static char *encode_words(const char *s, size_t len, bool space)
{
    size_t total = len + (space ? 1 : 0);
    char *src = malloc(total + 1);
    if (src == NULL)
        return NULL;
    memcpy(src, s, len);
    if (space)
        src[len] = ' ';
    src[total] = '\0';
    size_t cap = (total / 30 + 2) * 80;
    char *out = malloc(cap);
    if (out == NULL) {
        free(src);
        return NULL;
    }
    size_t o = 0, i = 0;
    while (i < total) {
        size_t n = 0;
        while (i + n < total) {
            size_t q = tern_utf8_seq_len((const uint8_t *)src + i + n, total - i - n);
            if (q == 0)
                q = 1;
            if (n + q > ASP_WORD_BYTES)
                break;
            n += q;
        }
        if (o)
            out[o++] = ' ';
        memcpy(out + o, "=?UTF-8?B?", 10);
        o += 10;
        long w = tern_base64_encode((const uint8_t *)src + i, n, out + o, cap - o);
        if (w < 0) {
            free(src);
            free(out);
            return NULL;
        }
        o += (size_t)w;
        memcpy(out + o, "?=", 2);
        o += 2;
        i += n;
    }
    out[o] = '\0';
    free(src);
    return out;
}

static void asp_deinit(void *state)
{
    subject_prefix *s = state;
    if (s == NULL)
        return;
    free(s->prefix);
    free(s->plain);
    free(s->before_word);
    free(s);
}

static int asp_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    static const char *const known[] = {"prefix", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const char *v = tern_param_str(p, "prefix");
    if (v == NULL)
        return tern_builtin_fail(err, size, "prefix: a prefix such as \"[SPAM]\" is required");
    while (*v == ' ' || *v == '\t')
        v++;
    size_t len = strlen(v);
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0)
        return tern_builtin_fail(err, size, "prefix: must not be empty");
    if (len > ASP_PREFIX_MAX)
        return tern_builtin_fail(err, size, "prefix: at most %d bytes", ASP_PREFIX_MAX);
    bool ascii = true;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)v[i];
        if ((c < ' ' && c != '\t') || c == 127)
            return tern_builtin_fail(err, size, "prefix: control characters are not allowed");
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t q = tern_utf8_seq_len((const uint8_t *)v + i, len - i);
        if (q == 0)
            return tern_builtin_fail(err, size, "prefix: not valid UTF-8");
        ascii = false;
        i += q;
    }
    subject_prefix *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    s->prefix = strndup(v, len);
    s->prefix_len = len;
    if (ascii) {
        s->plain = strndup(v, len);
        s->before_word = strndup(v, len);
    } else {
        s->plain = encode_words(v, len, false);
        s->before_word = encode_words(v, len, true);
    }
    if (s->prefix == NULL || s->plain == NULL || s->before_word == NULL) {
        asp_deinit(s);
        return tern_builtin_fail(err, size, "out of memory");
    }
    *state_r = s;
    return 0;
}

/* Skips "Re:", "Fwd:", "Re[2]:" and the like (any number, any case). */
static const char *skip_markers(const char *s)
{
    static const char *const markers[] = {"re", "fwd", "fw", "aw", "sv", "wg", "tr", "antw", NULL};
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        const char *next = NULL;
        for (size_t i = 0; markers[i] && next == NULL; i++) {
            size_t n = strlen(markers[i]);
            if (strncasecmp(s, markers[i], n) != 0)
                continue;
            const char *q = s + n;
            if (*q == '[') {
                q++;
                while (*q >= '0' && *q <= '9')
                    q++;
                if (*q != ']')
                    continue;
                q++;
            }
            while (*q == ' ')
                q++;
            if (*q == ':')
                next = q + 1;
        }
        if (next == NULL)
            return s;
        s = next;
    }
}

static tern_mailet_verdict asp_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    subject_prefix *s = state;
    const char *raw = tern_mail_header_get(m, "Subject", 0);
    while (raw && (*raw == ' ' || *raw == '\t'))
        raw++;
    if (raw == NULL || raw[0] == '\0') {
        if (tern_mail_header_set(m, "Subject", s->plain) != 0)
            goto fail;
        return TERN_MAILET_CONTINUE;
    }
    tern_arena a;
    tern_arena_init(&a, 1024);
    const char *dec = tern_rfc2047_decode_arena(&a, raw, strlen(raw), NULL);
    if (dec == NULL) {
        tern_arena_free(&a);
        goto fail;
    }
    bool tagged = strncasecmp(skip_markers(dec), s->prefix, s->prefix_len) == 0;
    tern_arena_free(&a);
    if (tagged) {
        tern_mail_log(m, TERN_MAILET_LOG_DEBUG, "subject already tagged");
        return TERN_MAILET_CONTINUE;
    }
    bool word = raw[0] == '=' && raw[1] == '?';
    const char *pre = word ? s->before_word : s->plain;
    size_t pl = strlen(pre), rl = strlen(raw);
    size_t n = pl + 1 + rl + 1;
    if (n > TERN_MAIL_MAX_VALUE) {
        res->text = "the subject would be too long";
        return TERN_MAILET_ERROR;
    }
    char *v = malloc(n);
    if (v == NULL)
        goto fail;
    memcpy(v, pre, pl);
    v[pl] = ' ';
    memcpy(v + pl + 1, raw, rl + 1);
    int rc = tern_mail_header_set(m, "Subject", v);
    free(v);
    if (rc != 0)
        goto fail;
    return TERN_MAILET_CONTINUE;
fail:
    res->text = "could not set the subject (out of memory)";
    return TERN_MAILET_ERROR;
}

static const tern_mailet_module tern_mb_add_subject_prefix = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "AddSubjectPrefix",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = asp_init,
    .deinit = asp_deinit,
    .service = asp_service,
};
TERN_BUILTIN(tern_mb_add_subject_prefix)
