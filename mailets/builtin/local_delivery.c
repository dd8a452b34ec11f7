/* Mailet LocalDelivery: appends the mail to each recipient account's
 * mailbox through store.h (INBOX, or the folder named by the `folder`
 * parameter or by a mail attribute), with Return-Path and Delivered-To
 * added, one store request per recipient, all in flight at once. Those two
 * lines go as each request's prefix and the message itself is one buffer
 * shared by all, so a store can keep one copy of it (pg does). An
 * account that a backend knows but the store does not yet (LDAP, SQL) gets
 * its mailboxes at its first delivery. Recipients delivered are finished;
 * the others go on: a full mailbox (552 5.2.2) to `bounces`, a store that
 * is down is retried later. Input: the mail's recipients as the directory
 * resolved them; parameters from the config. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/builtin.h"

typedef struct ld_conf {
    const char *folder;       /* default mailbox; NULL: INBOX */
    const char *folder_attr;  /* attribute naming the mailbox, checked first */
    bool fallback_inbox;      /* missing folder: deliver to INBOX instead of failing */
} ld_conf;

typedef enum { LD_PENDING = 0, LD_OK, LD_QUOTA, LD_TEMP, LD_PERM } ld_state;

typedef struct ld_rcpt {
    struct ld_run *run;
    size_t idx;
    ld_state st;
    const char *account;
    const char *mailbox;
    uint8_t *prefix;          /* this copy's Return-Path and Delivered-To */
    size_t prefix_len;
    bool created, fell_back;
    char error[600];
} ld_rcpt;

typedef struct ld_run {
    tern_mail *m;
    const ld_conf *conf;
    ld_rcpt *r;
    size_t n;
    uint8_t *base;            /* the message, shared by every request */
    size_t blen;
    size_t out;
    size_t others; /* recipients that are not accounts: left in the mail */
} ld_run;

static int ld_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"folder", "folder_attribute", "fallback_to_inbox", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    ld_conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    c->folder = tern_param_str(p, "folder");
    c->folder_attr = tern_param_str(p, "folder_attribute");
    if (c->folder_attr == NULL)
        c->folder_attr = "tern.folder";
    const char *fb = tern_param_str(p, "fallback_to_inbox");
    c->fallback_inbox = true;
    if (fb && strcmp(fb, "false") == 0)
        c->fallback_inbox = false;
    else if (fb && strcmp(fb, "true") != 0) {
        free(c);
        return tern_builtin_fail(err, size, "fallback_to_inbox: true or false");
    }
    if (c->folder && (c->folder[0] == '\0' || strlen(c->folder) > 255)) {
        free(c);
        return tern_builtin_fail(err, size, "folder: a mailbox name");
    }
    *state_r = c;
    return 0;
}

static void ld_deinit(void *state)
{
    free(state);
}

static void ld_submit(ld_rcpt *r);

static void ld_finish(ld_run *run)
{
    tern_mail *m = run->m;
    size_t delivered = 0, quota = 0, temp = 0, perm = 0;
    const char *why = NULL;
    /* Highest index first: removing a recipient shifts the later ones. */
    for (size_t i = run->n; i-- > 0;) {
        ld_rcpt *r = &run->r[i];
        switch (r->st) {
        case LD_OK: {
            char how[300];
            snprintf(how, sizeof(how), "delivered:%s/%s%s", r->account, r->mailbox,
                     r->fell_back ? "(fallback)" : "");
            tern_mail_rcpt_done(m, r->idx, how);
            delivered++;
            break;
        }
        case LD_QUOTA:
            quota++;
            why = r->error;
            break;
        case LD_PERM:
            perm++;
            why = r->error;
            break;
        default:
            temp++;
            if (why == NULL)
                why = r->error;
            break;
        }
        free(r->prefix);
    }
    free(run->base);
    size_t others = run->others;
    free(run->r);
    free(run);
    if (tern_mail_rcpt_count(m) == 0) {
        tern_mail_resume(m, TERN_MAILET_FINISH, NULL);
        return;
    }
    tern_mailet_result res = {.text = why};
    if (others > 0 && quota + temp + perm == 0) {
        /* Aliases not rewritten, unknown or remote addresses: not for
         * LocalDelivery; the step's on_error decides what becomes of them
         * (the accounts among the recipients are delivered). */
        res.text = "recipients that are not local accounts reached LocalDelivery "
                   "(missing RecipientRewrite or a matcher?)";
        tern_mail_resume(m, TERN_MAILET_ERROR, &res);
        return;
    }
    if (temp > 0) {
        /* The store was unavailable: the whole remainder waits and retries. */
        res.code = 451;
        res.enhanced = "4.3.0";
        tern_mail_resume(m, TERN_MAILET_TEMPFAIL, &res);
        return;
    }
    tern_mail_attr_set_int(m, "tern.error.code", 552);
    tern_mail_attr_set_str(m, "tern.error.enhanced", quota ? "5.2.2" : "5.1.1");
    tern_mail_attr_set_str(m, "tern.error.text", why ? why : "mailbox unavailable");
    res.processor = "bounces";
    tern_mail_resume(m, TERN_MAILET_GOTO, &res);
    (void)perm;
}

static void ld_done_one(ld_rcpt *r)
{
    ld_run *run = r->run;
    if (--run->out == 0)
        ld_finish(run);
}

static void ld_created(tern_store_req *q)
{
    ld_rcpt *r = q->data;
    int st = q->status;
    tern_store_req_free(q);
    if (st == TERN_STORE_OK || st == TERN_STORE_EEXISTS) {
        ld_submit(r);
        return;
    }
    r->st = st == TERN_STORE_ETEMP || st == TERN_STORE_EIO ? LD_TEMP : LD_PERM;
    snprintf(r->error, sizeof(r->error), "cannot create account %s: %s", r->account,
             tern_store_strerror(st));
    ld_done_one(r);
}

static void ld_appended(tern_store_req *q)
{
    ld_rcpt *r = q->data;
    ld_run *run = r->run;
    int st = q->status;
    char qerr[256];
    snprintf(qerr, sizeof(qerr), "%s", q->error);
    if (st == TERN_STORE_OK)
        tern_mail_log(run->m, TERN_MAILET_LOG_DEBUG, "appended to %s/%s uid=%u", r->account,
                      r->mailbox, q->out.append.uid);
    tern_store_req_free(q);
    switch (st) {
    case TERN_STORE_OK:
        r->st = LD_OK;
        break;
    case TERN_STORE_ENOTFOUND:
        if (!r->created) {
            /* Either the account has no mailboxes yet (a backend-only
             * account's first delivery) or the folder is missing. */
            r->created = true;
            tern_store_req *c = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, ld_created, r);
            if (c) {
                c->in.account = r->account;
                if (tern_store_submit(tern_mail_store(run->m), c) == 0)
                    return;
                tern_store_req_free(c);
            }
            r->st = LD_TEMP;
            snprintf(r->error, sizeof(r->error), "store unavailable");
            break;
        }
        if (strcmp(r->mailbox, "INBOX") != 0 && run->conf->fallback_inbox) {
            tern_mail_log(run->m, TERN_MAILET_LOG_WARN, "no mailbox %s for %s: delivering to INBOX",
                          r->mailbox, r->account);
            r->mailbox = "INBOX";
            r->fell_back = true;
            ld_submit(r);
            return;
        }
        r->st = LD_PERM;
        snprintf(r->error, sizeof(r->error), "no mailbox %s for %s", r->mailbox, r->account);
        break;
    case TERN_STORE_EQUOTA:
        r->st = LD_QUOTA;
        snprintf(r->error, sizeof(r->error), "mailbox of %s is full", r->account);
        break;
    case TERN_STORE_EINVAL:
        r->st = LD_PERM;
        snprintf(r->error, sizeof(r->error), "cannot deliver to %s/%s: %s", r->account,
                 r->mailbox, qerr);
        break;
    default:
        r->st = LD_TEMP;
        snprintf(r->error, sizeof(r->error), "store: %s %s", tern_store_strerror(st), qerr);
        break;
    }
    ld_done_one(r);
}

static void ld_submit(ld_rcpt *r)
{
    tern_store_req *q = tern_store_req_new(TERN_STORE_APPEND, ld_appended, r);
    if (q == NULL) {
        r->st = LD_TEMP;
        snprintf(r->error, sizeof(r->error), "out of memory");
        ld_done_one(r);
        return;
    }
    q->in.account = r->account;
    q->in.name = r->mailbox;
    q->in.prefix = r->prefix;
    q->in.prefix_len = r->prefix_len;
    q->in.data = r->run->base;
    q->in.len = r->run->blen;
    if (tern_store_submit(tern_mail_store(r->run->m), q) != 0) {
        tern_store_req_free(q);
        r->st = LD_TEMP;
        snprintf(r->error, sizeof(r->error), "store unavailable");
        ld_done_one(r);
    }
}

/* Return-Path (RFC 5321 4.4) and Delivered-To (the address this copy was
 * delivered for, the loop guard other MDAs use) go on top of this copy
 * only. */
static uint8_t *ld_prefix(const tern_mail *m, const char *rcpt, size_t *len_r)
{
    char top[1200];
    int n = snprintf(top, sizeof(top), "Return-Path: <%s>\r\nDelivered-To: %s\r\n",
                     tern_mail_sender(m), rcpt);
    if (n < 0 || (size_t)n >= sizeof(top))
        return NULL;
    uint8_t *out = malloc((size_t)n);
    if (out == NULL)
        return NULL;
    memcpy(out, top, (size_t)n);
    *len_r = (size_t)n;
    return out;
}

static tern_mailet_verdict ld_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    const ld_conf *c = state;
    size_t n = tern_mail_rcpt_count(m);
    const char *folder = tern_mail_attr_get_str(m, c->folder_attr);
    if (folder == NULL || folder[0] == '\0')
        folder = c->folder ? c->folder : "INBOX";
    ld_run *run = calloc(1, sizeof(*run));
    ld_rcpt *rs = run ? calloc(n, sizeof(*rs)) : NULL;
    size_t blen = 0;
    uint8_t *base = rs ? tern_mail_serialize(m, &blen) : NULL;
    if (base == NULL) {
        free(rs);
        free(run);
        res->text = "out of memory";
        return TERN_MAILET_TEMPFAIL;
    }
    run->m = m;
    run->conf = c;
    run->r = rs;
    size_t deliverable = 0;
    for (size_t i = 0; i < n; i++) {
        const tern_rcpt_entry *e = tern_mail_rcpt_info(m, i);
        ld_rcpt *r = &rs[run->n];
        if (e->kind != TERN_RCPT_ACCOUNT || e->account == NULL)
            continue; /* not an account here: stays in the mail */
        r->run = run;
        r->idx = i;
        r->account = e->account;
        r->mailbox = folder;
        r->prefix = ld_prefix(m, e->addr, &r->prefix_len);
        if (r->prefix == NULL) {
            r->st = LD_TEMP;
            snprintf(r->error, sizeof(r->error), "out of memory");
        }
        run->n++;
        deliverable++;
    }
    run->base = base;
    run->blen = blen;
    run->others = n - deliverable;
    run->out = 1; /* held until every request is submitted */
    for (size_t i = 0; i < run->n; i++) {
        if (rs[i].st != LD_PENDING)
            continue;
        run->out++;
        ld_submit(&rs[i]);
    }
    if (--run->out == 0)
        ld_finish(run);
    return TERN_MAILET_PENDING;
}

static const tern_mailet_module tern_mb_local_delivery = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "LocalDelivery",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = ld_init,
    .deinit = ld_deinit,
    .service = ld_service,
};
TERN_BUILTIN(tern_mb_local_delivery)
