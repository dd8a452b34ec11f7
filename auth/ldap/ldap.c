/* ldap.c: the `ldap` auth backend. Finds a user in a directory (bind mode:
 * the DN made from dn_template; search mode: a search with the service
 * account) and checks a password by binding as the user's DN.
 *
 * Nothing blocks the loop: each loop has one connection, opened lazily on
 * the thread pool (TCP connect, ldaps:// handshake or StartTLS are
 * libldap's blocking calls), then driven with libldap's asynchronous calls
 * and ldap_result with a zero timeout whenever uv_poll says the socket is
 * readable. Operations on a connection run one at a time, because a user
 * bind changes the connection's identity for what follows.
 *
 * Input trusted: the validated config. User names (bounded and normalised
 * by auth.c, still the client's) are escaped into filters (RFC 4515) and
 * DNs (RFC 4514); passwords reach only the bind, never a log. The server's
 * answers are trusted only as far as "this bind or search succeeded". */
#include <ldap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_backend.h"
#include "auth/ldap/ldap_backend.h"
#include "lib/log.h"

#define MAX_EXPANDED 2048

typedef struct ldapb {
    char *uri, *ca_file, *bind_dn, *bind_password, *base, *filter, *dn_template;
    bool starttls;
    tern_ldap_mode mode;
    uint64_t timeout_ms;
} ldapb;

typedef enum { ST_FIND, ST_SVC_BIND, ST_USER_BIND } op_step;

typedef struct op op;
struct op {
    op *next;
    tern_auth_lookup *lk;
    op_step step;
    int msgid;
    int entries;
    char *dn;        /* the user's DN, in the request's arena */
    bool found;      /* FIND said the entry exists */
    bool bind_tried; /* bind mode: bound (and failed) before FIND */
    bool retried;
    bool verify;     /* VERIFY_PASSWORD with a password that may be bound with */
    op_step first;
};

typedef struct poller {
    uv_poll_t h;
} poller;

typedef struct lconn {
    ldapb *b;
    uv_loop_t *loop;
    LDAP *ld;
    poller *poll;
    bool service_bound; /* the connection's identity is the service account's */
    bool fresh;         /* has served nothing yet: a failure is not a stale socket */
    uv_timer_t timer;
    /* connecting on the pool */
    bool connecting;
    uv_work_t work;
    LDAP *new_ld;
    char connect_error[160];
    op *active, *head, *tail;
    bool closing;
    int refs; /* the timer handle and a connect in flight */
} lconn;

/* ---- escaping and templates --------------------------------------------- */

static const char hexd[] = "0123456789abcdef";

/* RFC 4515 3: a value in a filter; '*', '(', ')', '\' and NUL are what
 * could change the filter's meaning; controls are escaped too. */
static bool filter_special(unsigned char c)
{
    return c == '*' || c == '(' || c == ')' || c == '\\' || c < 0x20 || c == 0x7f;
}

/* RFC 4514 2.4: a value in a DN; leading '#' or space and trailing space
 * as well. Hex pairs are valid everywhere, so every special gets one. */
static bool dn_special(unsigned char c, size_t i, size_t n)
{
    return strchr(",+\"\\<>;=", c) != NULL || c < 0x20 || c == 0x7f ||
           (i == 0 && (c == '#' || c == ' ')) || (i + 1 == n && c == ' ');
}

static bool put_escaped(char *out, size_t size, size_t *pos, const char *v, size_t n, bool dn)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        bool esc = dn ? dn_special(c, i, n) : filter_special(c);
        if (*pos + (esc ? 3 : 1) >= size)
            return false;
        if (esc) {
            out[(*pos)++] = '\\';
            out[(*pos)++] = hexd[c >> 4];
            out[(*pos)++] = hexd[c & 15];
        } else {
            out[(*pos)++] = (char)c;
        }
    }
    return true;
}

/* %u user, %n local part, %d domain (empty without '@'), %% a '%'. */
int tern_auth_ldap__expand(const char *tmpl, const char *user, bool dn, char *out, size_t size)
{
    const char *at = strrchr(user, '@');
    size_t nlen = at ? (size_t)(at - user) : strlen(user);
    const char *dom = at ? at + 1 : "";
    size_t pos = 0;
    for (const char *p = tmpl; *p; p++) {
        bool ok = true;
        if (*p == '%' && p[1] == 'u') {
            ok = put_escaped(out, size, &pos, user, strlen(user), dn);
            p++;
        } else if (*p == '%' && p[1] == 'n') {
            ok = put_escaped(out, size, &pos, user, nlen, dn);
            p++;
        } else if (*p == '%' && p[1] == 'd') {
            ok = put_escaped(out, size, &pos, dom, strlen(dom), dn);
            p++;
        } else {
            if (*p == '%' && p[1] == '%')
                p++;
            if (pos + 1 >= size)
                return -1;
            out[pos++] = *p;
        }
        if (!ok)
            return -1;
    }
    if (pos >= size)
        return -1;
    out[pos] = '\0';
    return 0;
}

/* ---- the backend ----------------------------------------------------------- */

static void ldapb_free(ldapb *b)
{
    if (b == NULL)
        return;
    free(b->uri);
    free(b->ca_file);
    free(b->bind_dn);
    if (b->bind_password)
        memset(b->bind_password, 0, strlen(b->bind_password));
    free(b->bind_password);
    free(b->base);
    free(b->filter);
    free(b->dn_template);
    free(b);
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *oom = true;
    return d;
}

static void *lb_create(const tern_config *cfg, tern_store *store, char **error_r)
{
    (void)store;
    const tern_auth_ldap_conf *c = &cfg->auth_ldap;
    if (c->uri == NULL) {
        *error_r = strdup("auth backend ldap needs auth_ldap.uri");
        return NULL;
    }
    ldapb *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        *error_r = strdup("out of memory");
        return NULL;
    }
    bool oom = false;
    b->uri = dup_or_null(c->uri, &oom);
    b->ca_file = dup_or_null(c->ca_file, &oom);
    b->bind_dn = dup_or_null(c->bind_dn, &oom);
    b->bind_password = dup_or_null(c->bind_password, &oom);
    b->base = dup_or_null(c->base, &oom);
    b->filter = dup_or_null(c->filter ? c->filter : "(mail=%u)", &oom);
    b->dn_template = dup_or_null(c->dn_template, &oom);
    b->starttls = c->starttls;
    b->mode = c->mode;
    b->timeout_ms = c->timeout_ms ? c->timeout_ms : 5000;
    if (oom) {
        ldapb_free(b);
        *error_r = strdup("out of memory");
        return NULL;
    }
    if ((b->mode == TERN_LDAP_MODE_BIND && b->dn_template == NULL) ||
        (b->mode == TERN_LDAP_MODE_SEARCH && b->base == NULL)) {
        ldapb_free(b);
        *error_r = strdup("auth_ldap: bind mode needs dn_template, search mode needs base");
        return NULL;
    }
    /* Catch a bad URI now rather than at the first login. */
    LDAP *ld = NULL;
    if (ldap_initialize(&ld, b->uri) != LDAP_SUCCESS) {
        ldapb_free(b);
        *error_r = strdup("auth_ldap.uri: not a valid LDAP URI");
        return NULL;
    }
    ldap_unbind_ext(ld, NULL, NULL);
    return b;
}

static void lb_destroy(void *b)
{
    ldapb_free(b);
}

static unsigned lb_caps(void *b)
{
    (void)b;
    /* The directory checks passwords; it never hands out a secret. */
    return TERN_AUTH_CAP_PASSWORD;
}

/* ---- the connection --------------------------------------------------------- */

static void op_run(lconn *c);

static void lconn_maybe_free(lconn *c)
{
    if (c->closing && c->refs == 0 && c->ld == NULL && c->poll == NULL)
        free(c);
}

static void poller_closed(uv_handle_t *h)
{
    free(h->data);
}

static void conn_drop(lconn *c)
{
    if (c->poll != NULL) {
        c->poll->h.data = c->poll;
        uv_close((uv_handle_t *)&c->poll->h, poller_closed);
        c->poll = NULL;
    }
    if (c->ld != NULL) {
        ldap_unbind_ext(c->ld, NULL, NULL);
        c->ld = NULL;
    }
    c->service_bound = false;
}

static void op_finish(lconn *c, int status)
{
    op *o = c->active;
    c->active = NULL;
    uv_timer_stop(&c->timer);
    tern_auth_lookup *lk = o->lk;
    lk->status = status;
    if (status == TERN_AUTH_LOOKUP_FOUND) {
        lk->account = tern_arena_strdup(&lk->req->arena, lk->user);
        if (lk->account == NULL)
            lk->status = TERN_AUTH_ETEMP;
    }
    free(o);
    lk->done(lk);
    op_run(c);
}

static void op_fail(lconn *c, const char *what, int rc)
{
    tern_auth_req *r = c->active->lk->req;
    snprintf(r->error, sizeof(r->error), "ldap: %s: %s", what,
             rc ? ldap_err2string(rc) : c->connect_error);
    op_finish(c, TERN_AUTH_ETEMP);
}

/* The connection broke under the active operation. A connection that had
 * served before may simply have gone stale (server restart, idle
 * timeout): the operation is tried once more on a new one. */
static void conn_broken(lconn *c, const char *what, int rc)
{
    bool was_fresh = c->fresh;
    conn_drop(c);
    op *o = c->active;
    if (o != NULL && !was_fresh && !o->retried) {
        o->retried = true;
        o->step = o->first;
        if (c->b->mode == TERN_LDAP_MODE_SEARCH)
            o->dn = NULL;
        o->found = o->bind_tried = false;
        o->entries = 0;
        c->active = NULL;
        o->next = c->head;
        c->head = o;
        if (c->tail == NULL)
            c->tail = o;
        op_run(c);
        return;
    }
    if (o != NULL)
        op_fail(c, what, rc);
}

static void on_readable(uv_poll_t *h, int status, int events);
static void op_step_send(lconn *c);

static void connect_work(uv_work_t *w)
{
    lconn *c = w->data;
    const ldapb *b = c->b;
    LDAP *ld = NULL;
    int rc = ldap_initialize(&ld, b->uri);
    if (rc != LDAP_SUCCESS) {
        snprintf(c->connect_error, sizeof(c->connect_error), "%s", ldap_err2string(rc));
        return;
    }
    int v3 = LDAP_VERSION3, demand = LDAP_OPT_X_TLS_DEMAND, zero = 0;
    struct timeval tv = {.tv_sec = (time_t)(b->timeout_ms / 1000),
                         .tv_usec = (suseconds_t)(b->timeout_ms % 1000) * 1000};
    ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
    ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
    ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
    ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
    if (b->starttls || strncmp(b->uri, "ldaps://", 8) == 0) {
        ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &demand);
        if (b->ca_file != NULL)
            ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, b->ca_file);
        /* The handle's TLS settings take effect only in a context of its own. */
        rc = ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
    }
    if (rc == LDAP_SUCCESS)
        rc = ldap_connect(ld);
    if (rc == LDAP_SUCCESS && b->starttls)
        rc = ldap_start_tls_s(ld, NULL, NULL);
    if (rc != LDAP_SUCCESS) {
        snprintf(c->connect_error, sizeof(c->connect_error), "connect to %s: %s", b->uri,
                 ldap_err2string(rc));
        ldap_unbind_ext(ld, NULL, NULL);
        return;
    }
    c->new_ld = ld;
}

static void connect_done(uv_work_t *w, int status)
{
    lconn *c = w->data;
    (void)status;
    c->connecting = false;
    c->refs--;
    LDAP *ld = c->new_ld;
    c->new_ld = NULL;
    if (c->closing) {
        if (ld != NULL)
            ldap_unbind_ext(ld, NULL, NULL);
        lconn_maybe_free(c);
        return;
    }
    int fd = -1;
    if (ld != NULL && ldap_get_option(ld, LDAP_OPT_DESC, &fd) != LDAP_OPT_SUCCESS)
        fd = -1;
    poller *p = ld != NULL && fd >= 0 ? calloc(1, sizeof(*p)) : NULL;
    if (p != NULL && uv_poll_init(c->loop, &p->h, fd) != 0) {
        free(p);
        p = NULL;
    } else if (p != NULL && uv_poll_start(&p->h, UV_READABLE, on_readable) != 0) {
        p->h.data = p;
        uv_close((uv_handle_t *)&p->h, poller_closed);
        p = NULL;
    }
    if (p == NULL && ld != NULL)
        snprintf(c->connect_error, sizeof(c->connect_error), "cannot watch the socket");
    if (p == NULL) {
        if (ld != NULL)
            ldap_unbind_ext(ld, NULL, NULL);
        if (c->active != NULL) {
            TLOG_WARN("auth", "event=ldap_connect_failed error=\"%s\"", c->connect_error);
            op_fail(c, "connect", 0);
        }
        return;
    }
    p->h.data = c;
    c->ld = ld;
    c->poll = p;
    c->fresh = true;
    c->service_bound = false;
    if (c->active != NULL)
        op_step_send(c);
    else
        op_run(c);
}

static void on_timeout(uv_timer_t *t)
{
    lconn *c = t->data;
    if (c->active == NULL)
        return;
    if (c->ld != NULL && c->active->msgid > 0)
        ldap_abandon_ext(c->ld, c->active->msgid, NULL, NULL);
    /* A server that does not answer in time is down as far as logins go:
     * the waiting ones fail now rather than one timeout after another. */
    conn_drop(c);
    snprintf(c->connect_error, sizeof(c->connect_error), "no answer within %llu ms",
             (unsigned long long)c->b->timeout_ms);
    op *q = c->head;
    c->head = c->tail = NULL;
    op_fail(c, "timeout", 0);
    while (q != NULL) {
        op *n = q->next;
        tern_auth_lookup *lk = q->lk;
        snprintf(lk->req->error, sizeof(lk->req->error), "ldap: server did not answer");
        lk->status = TERN_AUTH_ETEMP;
        free(q);
        lk->done(lk);
        q = n;
    }
}

/* ---- operations ------------------------------------------------------------ */

static int send_bind(lconn *c, op *o, const char *dn, const char *pw, size_t pw_len)
{
    struct berval cred = {.bv_len = (ber_len_t)pw_len, .bv_val = (char *)pw};
    return ldap_sasl_bind(c->ld, dn, LDAP_SASL_SIMPLE, &cred, NULL, NULL, &o->msgid);
}

/* Sends the active operation's next request. */
static void op_step_send(lconn *c)
{
    op *o = c->active;
    const ldapb *b = c->b;
    tern_auth_req *r = o->lk->req;
    int rc;
    if (o->step == ST_USER_BIND) {
        c->service_bound = false;
        rc = send_bind(c, o, o->dn, r->in.password, r->in.password_len);
    } else if (!c->service_bound) {
        o->step = ST_SVC_BIND;
        /* With no service account, an explicit anonymous bind: the
         * identity a failed user bind left behind is not trusted. */
        rc = send_bind(c, o, b->bind_dn ? b->bind_dn : "", b->bind_password ? b->bind_password : "",
                       b->bind_password ? strlen(b->bind_password) : 0);
    } else {
        char filter[MAX_EXPANDED];
        char *attrs[] = {LDAP_NO_ATTRS, NULL};
        struct timeval tv = {.tv_sec = (time_t)(b->timeout_ms / 1000),
                             .tv_usec = (suseconds_t)(b->timeout_ms % 1000) * 1000};
        o->step = ST_FIND;
        o->entries = 0;
        if (b->mode == TERN_LDAP_MODE_BIND) {
            rc = ldap_search_ext(c->ld, o->dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 1, NULL,
                                 NULL, &tv, 1, &o->msgid);
        } else if (tern_auth_ldap__expand(b->filter, o->lk->user, false, filter,
                                          sizeof(filter)) != 0) {
            op_finish(c, TERN_AUTH_LOOKUP_UNKNOWN);
            return;
        } else {
            /* Two entries are enough to see that a filter is ambiguous. */
            rc = ldap_search_ext(c->ld, b->base, LDAP_SCOPE_SUBTREE, filter, attrs, 1, NULL, NULL,
                                 &tv, 2, &o->msgid);
        }
    }
    if (rc != LDAP_SUCCESS)
        conn_broken(c, "send", rc);
}

static void op_run(lconn *c)
{
    if (c->active != NULL || c->head == NULL || c->connecting || c->closing)
        return;
    if (c->ld == NULL) {
        c->connecting = true;
        c->refs++;
        c->connect_error[0] = '\0';
        c->work.data = c;
        c->active = c->head; /* owns the timer while the connect runs */
        c->head = c->head->next;
        if (c->head == NULL)
            c->tail = NULL;
        uv_timer_start(&c->timer, on_timeout, c->b->timeout_ms, 0);
        if (uv_queue_work(c->loop, &c->work, connect_work, connect_done) != 0) {
            c->connecting = false;
            c->refs--;
            snprintf(c->connect_error, sizeof(c->connect_error), "cannot queue work");
            op_fail(c, "connect", 0);
        }
        return;
    }
    if (c->active == NULL) {
        c->active = c->head;
        c->head = c->head->next;
        if (c->head == NULL)
            c->tail = NULL;
        uv_timer_start(&c->timer, on_timeout, c->b->timeout_ms, 0);
    }
    op_step_send(c);
}

static void op_result(lconn *c, LDAPMessage *msg)
{
    op *o = c->active;
    tern_auth_req *r = o->lk->req;
    int type = ldap_msgtype(msg);
    if (type == LDAP_RES_SEARCH_ENTRY) {
        if (o->entries++ == 0) {
            char *dn = ldap_get_dn(c->ld, msg);
            if (dn != NULL && o->dn == NULL)
                o->dn = tern_arena_strdup(&r->arena, dn);
            ldap_memfree(dn);
        }
        return;
    }
    if (type == LDAP_RES_SEARCH_REFERENCE || type == LDAP_RES_INTERMEDIATE)
        return;
    int err = LDAP_OTHER;
    if (ldap_parse_result(c->ld, msg, &err, NULL, NULL, NULL, NULL, 0) != LDAP_SUCCESS)
        err = LDAP_OTHER;
    o->msgid = 0;
    c->fresh = false;
    bool verify = o->verify;
    switch (o->step) {
    case ST_SVC_BIND:
        if (err != LDAP_SUCCESS) {
            op_fail(c, "service bind", err);
            return;
        }
        c->service_bound = true;
        o->step = ST_FIND;
        op_step_send(c);
        return;
    case ST_FIND:
        if (c->b->mode == TERN_LDAP_MODE_BIND) {
            if (err == LDAP_NO_SUCH_OBJECT) {
                op_finish(c, TERN_AUTH_LOOKUP_UNKNOWN);
                return;
            }
            if (err != LDAP_SUCCESS || o->entries != 1) {
                op_fail(c, "search", err == LDAP_SUCCESS ? LDAP_OTHER : err);
                return;
            }
            op_finish(c, TERN_AUTH_LOOKUP_FOUND); /* the bind, if any, already failed */
            return;
        }
        if (err != LDAP_SUCCESS && err != LDAP_SIZELIMIT_EXCEEDED) {
            op_fail(c, "search", err);
            return;
        }
        if (o->entries == 0) {
            op_finish(c, TERN_AUTH_LOOKUP_UNKNOWN);
            return;
        }
        if (o->entries > 1 || o->dn == NULL) {
            /* Fail closed: which entry's password would count? */
            snprintf(r->error, sizeof(r->error), "ldap: filter matches several entries");
            op_finish(c, TERN_AUTH_ETEMP);
            return;
        }
        if (!verify) {
            op_finish(c, TERN_AUTH_LOOKUP_FOUND);
            return;
        }
        o->step = ST_USER_BIND;
        op_step_send(c);
        return;
    case ST_USER_BIND:
        if (err == LDAP_SUCCESS) {
            o->lk->verified = true;
            op_finish(c, TERN_AUTH_LOOKUP_FOUND);
        } else if (err == LDAP_INVALID_CREDENTIALS && c->b->mode == TERN_LDAP_MODE_BIND) {
            /* Wrong password or no such entry: the directory says which. */
            o->bind_tried = true;
            o->step = ST_FIND;
            op_step_send(c);
        } else if (err == LDAP_INVALID_CREDENTIALS) {
            op_finish(c, TERN_AUTH_LOOKUP_FOUND);
        } else {
            op_fail(c, "bind", err);
        }
        return;
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    lconn *c = h->data;
    if (status < 0) {
        conn_broken(c, "socket", LDAP_SERVER_DOWN);
        return;
    }
    LDAP *ld = c->ld;
    while (c->ld == ld && ld != NULL) {
        struct timeval zero = {0, 0};
        LDAPMessage *msg = NULL;
        int rc = ldap_result(ld, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
        if (rc == 0)
            return;
        if (rc < 0) {
            int err = LDAP_SERVER_DOWN;
            ldap_get_option(ld, LDAP_OPT_RESULT_CODE, &err);
            if (c->active != NULL)
                conn_broken(c, "receive", err);
            else
                conn_drop(c); /* closed while idle: reopen at the next login */
            return;
        }
        if (c->active != NULL && ldap_msgid(msg) == c->active->msgid)
            op_result(c, msg);
        ldap_msgfree(msg);
    }
}

static void timer_closed(uv_handle_t *h)
{
    lconn *c = h->data;
    c->refs--;
    lconn_maybe_free(c);
}

static void *lb_client_new(void *bp, uv_loop_t *loop)
{
    lconn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->b = bp;
    c->loop = loop;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->refs = 1;
    return c;
}

static void lb_client_close(void *bp, void *cs)
{
    (void)bp;
    lconn *c = cs;
    c->closing = true;
    conn_drop(c);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void lb_lookup(void *bp, tern_auth_lookup *lk)
{
    const ldapb *b = bp;
    lconn *c = lk->client_state;
    tern_auth_req *r = lk->req;
    if (c == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    op *o = calloc(1, sizeof(*o));
    if (o == NULL) {
        lk->status = TERN_AUTH_ETEMP;
        lk->done(lk);
        return;
    }
    o->lk = lk;
    /* An empty simple bind is an anonymous bind, which "succeeds"; a NUL
     * would cut the password short. Such passwords never reach a bind:
     * the user is only looked up, and the check fails. */
    o->verify = r->op == TERN_AUTH_VERIFY_PASSWORD && r->in.password_len > 0 &&
                memchr(r->in.password, '\0', r->in.password_len) == NULL;
    if (b->mode == TERN_LDAP_MODE_BIND) {
        char dn[MAX_EXPANDED];
        if (tern_auth_ldap__expand(b->dn_template, lk->user, true, dn, sizeof(dn)) != 0 ||
            (o->dn = tern_arena_strdup(&r->arena, dn)) == NULL) {
            free(o);
            lk->status = TERN_AUTH_LOOKUP_UNKNOWN;
            lk->done(lk);
            return;
        }
        o->step = o->verify ? ST_USER_BIND : ST_FIND;
    }
    o->first = o->step;
    if (c->tail)
        c->tail->next = o;
    else
        c->head = o;
    c->tail = o;
    op_run(c);
}

const tern_auth_backend_ops tern_auth_ldap_backend = {
    .name = "ldap",
    .create = lb_create,
    .destroy = lb_destroy,
    .caps = lb_caps,
    .client_new = lb_client_new,
    .client_close = lb_client_close,
    .lookup = lb_lookup,
};
