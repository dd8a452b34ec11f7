/* The header index both backends store at append (see index.h): the Date,
 * the decoded subject and its RFC 5256 base subject, the address fields,
 * the message-id graph, and every field decoded for HEADER searches.
 * Input: message bytes, untrusted; everything here is bounded by the
 * header parser's limits and the caps below. */
#include "storage/index.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/datetime.h"
#include "lib/header.h"
#include "lib/rfc2047.h"

#define VALUE_MAX 8192   /* decoded bytes kept per field value */
#define IDS_MAX 256      /* message-ids kept from References + In-Reply-To */
#define ID_MAX 998       /* one message-id, the RFC 5322 line limit */

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
}

int tern_index_contains(const char *h, size_t hlen, const char *n, size_t nlen)
{
    if (nlen == 0)
        return 1;
    if (nlen > hlen)
        return 0;
    char first = lower(n[0]);
    for (size_t i = 0; i + nlen <= hlen; i++) {
        if (lower(h[i]) != first)
            continue;
        size_t k = 1;
        while (k < nlen && lower(h[i + k]) == lower(n[k]))
            k++;
        if (k == nlen)
            return 1;
    }
    return 0;
}

/* Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

/* ---- RFC 5256 base subject ---------------------------------------------- */

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

static bool prefix_ci(const char *s, size_t len, const char *p)
{
    size_t n = strlen(p);
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != p[i])
            return false;
    return true;
}

/* subj-blob = "[" *BLOBCHAR "]" *WSP; returns its length or 0. */
static size_t blob_len(const char *s, size_t len)
{
    if (len == 0 || s[0] != '[')
        return 0;
    size_t i = 1;
    while (i < len && s[i] != ']' && s[i] != '[')
        i++;
    if (i >= len || s[i] != ']')
        return 0;
    i++;
    while (i < len && is_wsp(s[i]))
        i++;
    return i;
}

/* subj-leader = (*subj-blob subj-refwd) / WSP; returns its length or 0. */
static size_t leader_len(const char *s, size_t len)
{
    if (len > 0 && is_wsp(s[0]))
        return 1;
    size_t i = 0, b;
    while ((b = blob_len(s + i, len - i)) > 0)
        i += b;
    if (prefix_ci(s + i, len - i, "re"))
        i += 2;
    else if (prefix_ci(s + i, len - i, "fwd"))
        i += 3;
    else if (prefix_ci(s + i, len - i, "fw"))
        i += 2;
    else
        return 0;
    while (i < len && is_wsp(s[i]))
        i++;
    i += blob_len(s + i, len - i);
    if (i < len && s[i] == ':')
        return i + 1;
    return 0;
}

static char *base_subject(tern_arena *a, const char *subj)
{
    size_t n = strlen(subj);
    char *s = tern_arena_alloc(a, n + 1);
    if (!s)
        return NULL;
    /* (1) runs of whitespace become one space */
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        char c = is_wsp(subj[i]) ? ' ' : subj[i];
        if (c == ' ' && len > 0 && s[len - 1] == ' ')
            continue;
        s[len++] = c;
    }
    size_t start = 0;
    for (;;) {
        /* (2) trailing subj-trailer: "(fwd)" and whitespace */
        for (;;) {
            if (len > start && is_wsp(s[len - 1]))
                len--;
            else if (len - start >= 5 && prefix_ci(s + len - 5, 5, "(fwd)"))
                len -= 5;
            else
                break;
        }
        /* (3) leaders and (4) blobs, until neither applies */
        for (bool changed = true; changed;) {
            changed = false;
            size_t l;
            while ((l = leader_len(s + start, len - start)) > 0) {
                start += l;
                changed = true;
            }
            l = blob_len(s + start, len - start);
            if (l > 0 && start + l < len) {
                start += l;
                changed = true;
            }
        }
        /* (5) "[fwd:" ... "]" */
        if (len - start >= 6 && prefix_ci(s + start, len - start, "[fwd:") && s[len - 1] == ']') {
            start += 5;
            len--;
            continue;
        }
        break;
    }
    while (start < len && is_wsp(s[start]))
        start++;
    for (size_t i = start; i < len; i++)
        s[i] = lower(s[i]);
    s[len] = '\0';
    return s + start;
}

/* ---- message-ids -------------------------------------------------------- */

typedef struct {
    char **ids;
    size_t n, max;
} idlist;

static int id_add(tern_arena *a, idlist *l, const char *s, size_t len)
{
    char tmp[ID_MAX];
    size_t n = 0;
    for (size_t i = 0; i < len && n < sizeof tmp; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c != 0x7f && c != '<' && c != '>')
            tmp[n++] = (char)c; /* ids are written folded: CFWS inside is dropped */
    }
    if (n == 0 || l->n >= l->max)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->ids[i]) == n && memcmp(l->ids[i], tmp, n) == 0)
            return 0;
    tern_buf b;
    tern_buf_init(&b, 0);
    if (tern_utf8_sanitize(&b, (const uint8_t *)tmp, n)) {
        tern_buf_free(&b);
        return -1;
    }
    l->ids[l->n] = tern_arena_strndup(a, (const char *)b.data, b.len);
    tern_buf_free(&b);
    if (!l->ids[l->n])
        return -1;
    l->n++;
    return 0;
}

/* msg-id lists, leniently: every "<...>"; with no angle brackets at all,
 * every word holding an "@" (or, with `any_word`, the first word). Comments
 * and quoted phrases ("In-Reply-To: Your message of ...") are skipped. */
static int parse_ids(tern_arena *a, idlist *l, const char *v, size_t len, bool any_word)
{
    bool brackets = false;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '(') {
            int depth = 0;
            for (; i < len; i++) {
                if (v[i] == '(')
                    depth++;
                else if (v[i] == ')' && --depth == 0)
                    break;
            }
        } else if (v[i] == '"') {
            for (i++; i < len && v[i] != '"'; i++)
                if (v[i] == '\\')
                    i++;
        } else if (v[i] == '<') {
            size_t j = i + 1;
            while (j < len && v[j] != '>' && v[j] != '<')
                j++;
            if (j < len && v[j] == '>') {
                brackets = true;
                if (id_add(a, l, v + i + 1, j - i - 1))
                    return -1;
                i = j;
            }
        }
    }
    if (brackets)
        return 0;
    for (size_t i = 0; i < len;) {
        while (i < len && (is_wsp(v[i]) || v[i] == ','))
            i++;
        size_t s = i;
        bool at = false;
        while (i < len && !is_wsp(v[i]) && v[i] != ',')
            at |= v[i++] == '@';
        if (i > s && (at || any_word)) {
            if (id_add(a, l, v + s, i - s))
                return -1;
            if (any_word)
                break;
        }
    }
    return 0;
}

/* ---- building ----------------------------------------------------------- */

typedef struct {
    tern_arena *a;
    tern_msg_index *out;
    tern_buf fields;       /* tern_index_field array, copied to the arena at the end */
    bool have_date;
    idlist refs, irt;
    const char *msgid_raw;
} builder;

static const struct {
    const char *name;
    size_t off;
} addr_fields[] = {
    {"from", offsetof(tern_msg_index, from)},
    {"to", offsetof(tern_msg_index, to)},
    {"cc", offsetof(tern_msg_index, cc)},
    {"bcc", offsetof(tern_msg_index, bcc)},
    {"reply-to", offsetof(tern_msg_index, reply_to)},
    {"sender", offsetof(tern_msg_index, sender)},
};

static int add_field(builder *b, const tern_header_field *f)
{
    tern_arena *a = b->a;
    tern_buf nb;
    tern_buf_init(&nb, 0);
    if (tern_utf8_sanitize(&nb, (const uint8_t *)f->name, f->name_len)) {
        tern_buf_free(&nb);
        return -1;
    }
    char *name = tern_arena_strndup(a, nb.len ? (const char *)nb.data : "", nb.len);
    tern_buf_free(&nb);
    if (!name)
        return -1;
    for (char *p = name; *p; p++)
        *p = lower(*p);

    size_t vlen;
    char *value = tern_rfc2047_decode_arena(a, f->value, f->value_len, &vlen);
    if (!value)
        return -1;
    vlen = utf8_cut(value, vlen, VALUE_MAX);
    while (vlen > 0 && value[vlen - 1] == ' ')
        vlen--;
    value[vlen] = '\0';

    tern_index_field tf = {name, value};
    if (tern_buf_append(&b->fields, &tf, sizeof tf))
        return -1;

    tern_msg_index *o = b->out;
    if (strcmp(name, "date") == 0) {
        int64_t t;
        if (!b->have_date && tern_datetime_parse(f->value, f->value_len, &t) == 0) {
            o->date = t;
            b->have_date = true;
        }
    } else if (strcmp(name, "subject") == 0) {
        if (!o->subject)
            o->subject = value;
    } else if (strcmp(name, "message-id") == 0) {
        if (!o->message_id) {
            idlist one = {&o->message_id, 0, 1};
            if (parse_ids(a, &one, f->value, f->value_len, true))
                return -1;
        }
    } else if (strcmp(name, "references") == 0) {
        if (parse_ids(a, &b->refs, f->value, f->value_len, false))
            return -1;
    } else if (strcmp(name, "in-reply-to") == 0) {
        if (parse_ids(a, &b->irt, f->value, f->value_len, false))
            return -1;
    } else {
        for (size_t i = 0; i < sizeof addr_fields / sizeof addr_fields[0]; i++) {
            if (strcmp(name, addr_fields[i].name) != 0)
                continue;
            char **slot = (char **)((char *)o + addr_fields[i].off);
            if (!*slot) {
                *slot = value;
            } else if (vlen > 0 && strlen(*slot) < VALUE_MAX) {
                /* Repeated fields (two To: lines) are one list to a reader. */
                char *j = tern_arena_printf(a, "%s, %s", *slot, value);
                if (!j)
                    return -1;
                j[utf8_cut(j, strlen(j), VALUE_MAX)] = '\0';
                *slot = j;
            }
            break;
        }
    }
    return 0;
}

int tern_msg_index_build(tern_arena *a, const uint8_t *msg, size_t len, tern_msg_index *out)
{
    memset(out, 0, sizeof *out);
    tern_header_parser *p = malloc(sizeof *p);
    builder b = {.a = a, .out = out};
    b.refs.ids = tern_arena_alloc(a, (IDS_MAX + 1) * sizeof(char *));
    b.refs.max = b.irt.max = IDS_MAX;
    b.irt.ids = tern_arena_alloc(a, IDS_MAX * sizeof(char *));
    tern_buf_init(&b.fields, 0);
    int rc = -1;
    if (!p || !b.refs.ids || !b.irt.ids)
        goto done;
    tern_header_parser_init(p, NULL);

    size_t off = 0;
    bool input_over = false;
    for (;;) {
        tern_header_field f;
        size_t used = 0;
        tern_header_event ev;
        if (input_over) {
            ev = tern_header_parser_finish(p, &f);
        } else {
            ev = tern_header_parser_feed(p, msg ? msg + off : NULL, len - off, &used, &f);
            off += used;
            if (ev == TERN_HEADER_MORE) {
                input_over = true;
                continue;
            }
        }
        if (ev == TERN_HEADER_END)
            break;
        if (add_field(&b, &f))
            goto done;
    }
    out->header_size = p->size;
    out->body_offset = p->size;

    if (b.fields.len) {
        out->fields = tern_arena_alloc(a, b.fields.len);
        if (!out->fields)
            goto done;
        memcpy(out->fields, b.fields.data, b.fields.len);
        out->n_fields = b.fields.len / sizeof(tern_index_field);
    }

    /* The parent is the first In-Reply-To id; References give the chain
     * oldest first; the parent goes last if References missed it. */
    if (b.irt.n)
        out->in_reply_to = b.irt.ids[0];
    idlist all = {b.refs.ids, b.refs.n, IDS_MAX + 1};
    if (b.irt.n && id_add(a, &all, b.irt.ids[0], strlen(b.irt.ids[0])))
        goto done;
    out->references = all.ids;
    out->n_references = all.n;

    out->base_subject = base_subject(a, out->subject ? out->subject : "");
    if (!out->base_subject)
        goto done;

    uint32_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += msg[i] == '\n';
    if (len > 0 && msg[len - 1] != '\n')
        lines++;
    out->lines = lines;
    rc = 0;
done:
    tern_buf_free(&b.fields);
    free(p);
    return rc;
}
