/* Mailet Redirect: sends a NEW mail, made from this one, to `recipients`
 * (from `sender`, default the original envelope sender; "<>" is the null
 * sender) into processor `processor` (default transport), optionally with
 * `subject_prefix` and with `inline` choosing what it carries: all (the
 * message as it is), headers (the original header section as the text
 * body) or body (the body with only the fields needed to read it). The
 * original then ends (`passThrough: false`, the default) or continues.
 * Each redirect adds an X-Tern-Loop field; a message that already carries
 * five of them is not redirected again (a loop between redirects
 * or servers: MAX_LOOPS) and the step fails to its on_error. Input: its YAML
 * parameters (checked at init); the message is the sender's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/util.h"
#include "mailets/builtin/builtin.h"

#define MAX_LOOPS 5

enum { INL_ALL = 0, INL_HEADERS, INL_BODY };

typedef struct {
    const char *const *to;
    size_t n_to;
    const char *single[1];
    const char *sender; /* NULL: the original's */
    const char *subject_prefix;
    int inl;
    const char *processor;
    bool pass_through;
} redirect;

static bool addr_plausible(const char *a)
{
    const char *at = a ? strrchr(a, '@') : NULL;
    if (at == NULL || at == a || at[1] == '\0' || strlen(a) > 320)
        return false;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == ',' || *p == 0x7f)
            return false;
    return true;
}

static int parse_bool(const tern_mailet_params *p, const char *key, bool def, bool *out,
                      char *err, size_t size)
{
    const char *v = tern_param_str(p, key);
    *out = def;
    if (tern_param_get(p, key) == NULL)
        return 0;
    if (v && strcmp(v, "true") == 0)
        *out = true;
    else if (v && strcmp(v, "false") == 0)
        *out = false;
    else
        return tern_builtin_fail(err, size, "%s: expected true or false", key);
    return 0;
}

static int rd_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"recipients", "sender",     "subject_prefix", "inline",
                                        "processor",  "passThrough", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    const tern_mailet_param *to = tern_param_get(p, "recipients");
    if (to == NULL || (to->value == NULL && to->n_list == 0) || (to->value && !to->value[0]))
        return tern_builtin_fail(err, size, "recipients: a list of addresses is required");
    redirect *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (to->value) {
        r->single[0] = to->value;
        r->to = r->single;
        r->n_to = 1;
    } else {
        r->to = to->list;
        r->n_to = to->n_list;
    }
    for (size_t i = 0; i < r->n_to; i++)
        if (!addr_plausible(r->to[i])) {
            tern_builtin_fail(err, size, "recipients: \"%.100s\" is not an address local@domain",
                              r->to[i] ? r->to[i] : "");
            goto fail;
        }
    if (tern_param_get(p, "sender")) {
        const char *s = tern_param_str(p, "sender");
        if (s && strcmp(s, "<>") == 0)
            r->sender = "";
        else if (addr_plausible(s))
            r->sender = s;
        else {
            tern_builtin_fail(err, size, "sender: expected an address local@domain or <>");
            goto fail;
        }
    }
    r->subject_prefix = tern_param_str(p, "subject_prefix");
    if (r->subject_prefix && strpbrk(r->subject_prefix, "\r\n")) {
        tern_builtin_fail(err, size, "subject_prefix: one line of text");
        goto fail;
    }
    const char *inl = tern_param_str(p, "inline");
    if (inl == NULL && tern_param_get(p, "inline") == NULL)
        r->inl = INL_ALL;
    else if (inl && strcmp(inl, "all") == 0)
        r->inl = INL_ALL;
    else if (inl && strcmp(inl, "headers") == 0)
        r->inl = INL_HEADERS;
    else if (inl && strcmp(inl, "body") == 0)
        r->inl = INL_BODY;
    else {
        tern_builtin_fail(err, size, "inline: expected all, headers or body");
        goto fail;
    }
    r->processor = "transport";
    if (tern_param_get(p, "processor")) {
        r->processor = tern_param_str(p, "processor");
        if (r->processor == NULL || r->processor[0] == '\0') {
            tern_builtin_fail(err, size, "processor: a processor name is required");
            goto fail;
        }
    }
    if (parse_bool(p, "passThrough", false, &r->pass_through, err, size) != 0)
        goto fail;
    *state_r = r;
    return 0;
fail:
    free(r);
    return -1;
}

static void rd_deinit(void *state)
{
    free(state);
}

static size_t header_end(const uint8_t *msg, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (msg[i] == '\n' && (msg[i + 1] == '\n' || (msg[i + 1] == '\r' && i + 2 < len &&
                                                      msg[i + 2] == '\n')))
            return i + 1;
    return len;
}

/* The fields a reader needs for the body alone. */
static bool keep_for_body(const char *name)
{
    static const char *const keep[] = {"From", "To", "Cc", "Subject", "Date", "Message-ID",
                                       "MIME-Version", "Content-Type",
                                       "Content-Transfer-Encoding", NULL};
    for (size_t i = 0; keep[i]; i++)
        if (strcasecmp(name, keep[i]) == 0)
            return true;
    return false;
}

/* The new message, made on a copy so the original stays as it was. */
static uint8_t *make_message(const redirect *r, const tern_mail *m, size_t *len_r)
{
    tern_mail *c = tern_mail_clone_empty(m);
    if (c == NULL)
        return NULL;
    const tern_config *cfg = tern_mail_config(m);
    const char *host = cfg->server.hostname ? cfg->server.hostname : "localhost";
    uint8_t *out = NULL;
    if (r->subject_prefix) {
        const char *subj = tern_mail_header_get(c, "Subject", 0);
        char *ns = malloc(strlen(r->subject_prefix) + (subj ? strlen(subj) : 0) + 2);
        if (ns == NULL)
            goto done;
        sprintf(ns, "%s%s%s", r->subject_prefix, subj && subj[0] ? " " : "", subj ? subj : "");
        int rc = tern_mail_header_set(c, "Subject", ns);
        free(ns);
        if (rc != 0)
            goto done;
    }
    if (r->inl == INL_BODY) {
        for (size_t pos = 0; tern_mail_header_name_at(c, pos);) {
            const char *name = tern_mail_header_name_at(c, pos);
            if (keep_for_body(name)) {
                pos++;
                continue;
            }
            char *nm = strdup(name);
            if (nm == NULL)
                goto done;
            tern_mail_header_remove(c, nm);
            free(nm);
        }
    }
    if (tern_mail_header_add(c, "X-Tern-Loop", host) != 0)
        goto done;
    size_t len = 0;
    out = tern_mail_serialize(c, &len);
    if (out && r->inl == INL_HEADERS) {
        /* The original's header section becomes the text of a short note. */
        size_t he = header_end(out, len);
        char date[64], u[TERN_UUID_LEN];
        tern_rfc5322_date((int64_t)time(NULL), date, sizeof(date));
        tern_uuid(u);
        const char *subj = tern_mail_header_get(c, "Subject", 0);
        const char *from = tern_mail_header_get(c, "From", 0);
        char head[2048];
        int hn = snprintf(head, sizeof(head),
                          "From: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n"
                          "X-Tern-Loop: %s\r\nMIME-Version: 1.0\r\n"
                          "Content-Type: text/plain; charset=utf-8\r\n"
                          "Content-Transfer-Encoding: 8bit\r\n\r\n",
                          from ? from : "MAILER-DAEMON", subj ? subj : "", date, u, host, host);
        if (hn < 0 || (size_t)hn >= sizeof(head)) {
            free(out);
            out = NULL;
            goto done;
        }
        uint8_t *n = malloc((size_t)hn + he);
        if (n) {
            memcpy(n, head, (size_t)hn);
            memcpy(n + hn, out, he);
        }
        free(out);
        out = n;
        len = (size_t)hn + he;
    }
    if (out)
        *len_r = len;
done:
    tern_mail_free(c);
    return out;
}

static void rd_spawned(tern_mail *m, void *arg, int status)
{
    const redirect *r = arg;
    if (status != 0) {
        tern_mailet_result res = {.text = "could not write the redirected mail to the spool"};
        tern_mail_resume(m, TERN_MAILET_ERROR, &res);
        return;
    }
    tern_mail_resume(m, r->pass_through ? TERN_MAILET_CONTINUE : TERN_MAILET_FINISH, NULL);
}

static tern_mailet_verdict rd_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    redirect *r = state;
    if (tern_mail_header_count(m, "X-Tern-Loop") >= MAX_LOOPS) {
        tern_mail_log(m, TERN_MAILET_LOG_WARN, "redirect loop: the message carries %d "
                      "X-Tern-Loop fields; not redirected", MAX_LOOPS);
        res->text = "redirect loop";
        return TERN_MAILET_ERROR;
    }
    size_t len = 0;
    uint8_t *msg = make_message(r, m, &len);
    if (msg == NULL) {
        res->text = "out of memory building the redirected mail";
        return TERN_MAILET_ERROR;
    }
    const char *sender = r->sender ? r->sender : tern_mail_sender(m);
    if (tern_pipeline_processor(m->pipeline, r->processor) < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_ERROR, "processor %s does not exist", r->processor);
        free(msg);
        res->text = "the processor for new mail does not exist";
        return TERN_MAILET_ERROR;
    }
    int rc = tern_mail_spawn(m, sender, r->to, r->n_to, msg, len, r->processor, rd_spawned, r);
    free(msg);
    if (rc != 0) {
        res->text = "could not spawn the redirected mail";
        return TERN_MAILET_ERROR;
    }
    tern_mail_log(m, TERN_MAILET_LOG_INFO, "redirected to %zu address(es) from <%s> into %s%s",
                  r->n_to, sender, r->processor, r->pass_through ? " (original continues)" : "");
    return TERN_MAILET_PENDING;
}

static const tern_mailet_module tern_mb_redirect = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "Redirect",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = rd_init,
    .deinit = rd_deinit,
    .service = rd_service,
};
TERN_BUILTIN(tern_mb_redirect)
