/* The outbound connection pool (see smtp_pool.h). Every client it starts
 * carries the pool's keep hooks; the pool tracks them all (a short list:
 * bounded by the queue's concurrency plus the idle limit) so it can find
 * an idle one by key and forget one when it closes. Input: the queue's
 * parameters and config (ours); nothing from the network. */
#include "protocols/smtp/smtp_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "lib/log.h"
#include "lib/util.h"

#define MOD "smtp_pool"

typedef struct entry {
    tern_smtp_client *c;
    char *key;
    bool idle;
    struct entry *next;
} entry;

struct tern_smtp_pool {
    uv_loop_t *loop;
    const tern_queue_conf *(*conf)(void *arg);
    void *conf_arg;
    tern_smtp_client_keep keep;
    entry *entries;
    size_t n_idle;
    bool closing;
    size_t next_source;        /* round robin over queue.source_addresses */
};

static entry *find(tern_smtp_pool *p, const tern_smtp_client *c)
{
    for (entry *e = p->entries; e; e = e->next)
        if (e->c == c)
            return e;
    return NULL;
}

static bool on_idle(void *arg, tern_smtp_client *c)
{
    tern_smtp_pool *p = arg;
    const tern_queue_conf *qc = p->conf(p->conf_arg);
    entry *e = find(p, c);
    if (e == NULL || p->closing || p->n_idle >= qc->max_idle_connections)
        return false;
    e->idle = true;
    p->n_idle++;
    return true;
}

static void on_gone(void *arg, tern_smtp_client *c)
{
    tern_smtp_pool *p = arg;
    for (entry **pe = &p->entries; *pe; pe = &(*pe)->next) {
        entry *e = *pe;
        if (e->c != c)
            continue;
        if (e->idle)
            p->n_idle--;
        *pe = e->next;
        explicit_bzero(e->key, strlen(e->key)); /* it holds the password */
        free(e->key);
        free(e);
        return;
    }
}

tern_smtp_pool *tern_smtp_pool_new(uv_loop_t *loop, const tern_queue_conf *(*conf)(void *arg),
                                   void *conf_arg)
{
    tern_smtp_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->conf = conf;
    p->conf_arg = conf_arg;
    p->keep.idle = on_idle;
    p->keep.gone = on_gone;
    p->keep.arg = p;
    return p;
}

/* Two deliveries may share a connection when all of this is equal. The
 * TLS context pointer stands for its trust settings; credentials are in
 * the key only in memory, never logged. */
static char *make_key(const tern_smtp_client_params *pp, const char *source)
{
    char ip[64];
    int port = 0;
    tern_sockaddr_str(pp->addr, ip, sizeof(ip), &port);
    const char *user = pp->auth_username ? pp->auth_username : "";
    const char *pass = pp->auth_password ? pp->auth_password : "";
    size_t n = strlen(ip) + strlen(pp->helo ? pp->helo : "") +
               strlen(pp->tls_name ? pp->tls_name : "") + strlen(user) + strlen(pass) + strlen(source) + 128;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s|%d|%s|%s|%p|%d%d%d|%s|%s|%s|%d", ip, port, source, pp->tls_name ? pp->tls_name : "",
                 (const void *)pp->tls, pp->tls_required ? 1 : 0, pp->tls_encrypt_required ? 1 : 0,
                 pp->auth_allow_plaintext ? 1 : 0, pp->helo ? pp->helo : "", user, pass,
                 /* DANE: only a connection that matched TLSA serves another DANE delivery */
                 pp->n_dane_tlsa > 0 ? 1 : 0);
    return k;
}

/* The next configured source address of the destination's family (round
 * robin), as a socket address with port 0; its HELO name in *helo_r. */
static bool pick_source(tern_smtp_pool *p, const tern_queue_conf *qc, int family,
                        struct sockaddr_storage *ss, const char **helo_r, const char **text_r)
{
    for (size_t k = 0; k < qc->n_source_addresses; k++) {
        const tern_source_address_conf *s =
            &qc->source_addresses[(p->next_source + k) % qc->n_source_addresses];
        memset(ss, 0, sizeof(*ss));
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        if (family == AF_INET && inet_pton(AF_INET, s->address, &s4->sin_addr) == 1)
            s4->sin_family = AF_INET;
        else if (family == AF_INET6 && inet_pton(AF_INET6, s->address, &s6->sin6_addr) == 1)
            s6->sin6_family = AF_INET6;
        else
            continue;
        p->next_source = (p->next_source + k + 1) % qc->n_source_addresses;
        if (s->helo)
            *helo_r = s->helo;
        *text_r = s->address;
        return true;
    }
    return false;
}

tern_smtp_client *tern_smtp_pool_start(tern_smtp_pool *p, const tern_smtp_client_params *params,
                                       tern_smtp_client_cb cb, void *arg)
{
    const tern_queue_conf *qc = p->conf(p->conf_arg);
    tern_smtp_client_params pp = *params;
    pp.use_chunking = qc->use_chunking;
    /* Everything goes to the smarthost when there is one: its login and
     * TLS policy apply to every delivery. */
    if (qc->smarthost && qc->smarthost[0]) {
        pp.auth_username = qc->smarthost_auth.username;
        pp.auth_password = qc->smarthost_auth.password;
        pp.auth_allow_plaintext = qc->smarthost_auth.allow_plaintext;
        pp.tls_encrypt_required = qc->smarthost_tls != TERN_SMARTHOST_TLS_OPPORTUNISTIC;
    }
    struct sockaddr_storage src;
    const char *src_text = "";
    if (pick_source(p, qc, params->addr->sa_family, &src, &pp.helo, &src_text))
        pp.source = (const struct sockaddr *)&src;
    if (p->closing || qc->connection_reuse_limit <= 1)
        return tern_smtp_client_start(&pp, cb, arg); /* one message per connection */
    p->keep.max_messages = qc->connection_reuse_limit;
    p->keep.idle_timeout_ms = qc->connection_idle_timeout_ms;
    pp.keep = &p->keep;
    char *key = make_key(&pp, src_text);
    if (key == NULL)
        return NULL;
    for (entry *e = p->entries; e; e = e->next) {
        if (!e->idle || strcmp(e->key, key) != 0)
            continue;
        e->idle = false;
        p->n_idle--;
        if (tern_smtp_client_reuse(e->c, &pp, cb, arg) == 0) {
            TLOG_DEBUG(MOD, "event=reuse messages=%u", tern_smtp_client_messages(e->c));
            free(key);
            return e->c;
        }
        tern_smtp_client_release(e->c);
        break;
    }
    entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        free(key);
        return NULL;
    }
    e->key = key;
    /* Listing it after the start is safe: a client runs its hooks only
     * from the loop, never from inside start. */
    e->c = tern_smtp_client_start(&pp, cb, arg);
    if (e->c == NULL) {
        free(key);
        free(e);
        return NULL;
    }
    e->next = p->entries;
    p->entries = e;
    return e->c;
}

size_t tern_smtp_pool_idle(const tern_smtp_pool *p)
{
    return p ? p->n_idle : 0;
}

void tern_smtp_pool_close(tern_smtp_pool *p)
{
    if (p == NULL)
        return;
    p->closing = true;
    for (entry *e = p->entries; e; e = e->next)
        if (e->idle)
            tern_smtp_client_release(e->c); /* QUIT; on_gone follows */
}

void tern_smtp_pool_free(tern_smtp_pool *p)
{
    if (p == NULL)
        return;
    while (p->entries) {
        entry *e = p->entries;
        p->entries = e->next;
        free(e->key);
        free(e);
    }
    free(p);
}
