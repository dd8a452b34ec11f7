/* Connection start for libpq without blocking lookups: see pq_connect.h.
 * Input trusted: the validated conninfo; resolver answers are addresses
 * formatted by libuv. */
#include "storage/pg/pq_connect.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PQ_MAX_ADDRS 8 /* addresses of one name that libpq tries in turn */

struct tern_pq_lookup {
    uv_getaddrinfo_t req;
    tern_pq_started_cb cb; /* NULL once cancelled */
    void *arg;
    char *conninfo, *host, *appname;
};

char *tern_pq_host_to_resolve(const char *conninfo)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (opts == NULL) {
        PQfreemem(perr);
        return NULL;
    }
    const char *host = NULL, *hostaddr = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "host") == 0 && o->val && o->val[0])
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0 && o->val && o->val[0])
            hostaddr = o->val;
    }
    unsigned char ab[16];
    bool resolve = host && !hostaddr && host[0] != '/' && host[0] != '@' &&
                   strchr(host, ',') == NULL && inet_pton(AF_INET, host, ab) != 1 &&
                   inet_pton(AF_INET6, host, ab) != 1;
    char *r = resolve ? strdup(host) : NULL;
    PQconninfoFree(opts);
    return r;
}

PGconn *tern_pq_start(const char *conninfo, const char *appname, const char *hosts,
                      const char *addrs)
{
    /* Keywords are applied in order, so host/hostaddr after the expanded
     * dbname (the conninfo) override what it says. */
    const char *keys[] = {"dbname", "fallback_application_name", "host", "hostaddr", NULL};
    const char *vals[] = {conninfo, appname, hosts, addrs, NULL};
    if (hosts == NULL || addrs == NULL)
        keys[2] = NULL;
    return PQconnectStartParams(keys, vals, 1);
}

static void lookup_free(tern_pq_lookup *l)
{
    free(l->conninfo);
    free(l->host);
    free(l->appname);
    free(l);
}

static void resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    tern_pq_lookup *l = req->data;
    if (l->cb != NULL) {
        char hosts[PQ_MAX_ADDRS * 256], addrs[PQ_MAX_ADDRS * (INET6_ADDRSTRLEN + 1)];
        size_t hl = 0, al = 0, n = 0;
        hosts[0] = addrs[0] = '\0';
        for (struct addrinfo *ai = status == 0 ? res : NULL; ai && n < PQ_MAX_ADDRS;
             ai = ai->ai_next) {
            char ip[INET6_ADDRSTRLEN];
            int rc = ai->ai_family == AF_INET
                         ? uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof(ip))
                     : ai->ai_family == AF_INET6
                         ? uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof(ip))
                         : -1;
            if (rc != 0 || strlen(l->host) + 2 > sizeof(hosts) - hl)
                continue;
            hl += (size_t)snprintf(hosts + hl, sizeof(hosts) - hl, "%s%s", n ? "," : "", l->host);
            al += (size_t)snprintf(addrs + al, sizeof(addrs) - al, "%s%s", n ? "," : "", ip);
            n++;
        }
        if (n == 0) {
            char msg[300];
            snprintf(msg, sizeof(msg), "cannot resolve host \"%.200s\": %s", l->host,
                     status ? uv_strerror(status) : "no address");
            l->cb(l->arg, NULL, msg);
        } else {
            l->cb(l->arg, tern_pq_start(l->conninfo, l->appname, hosts, addrs), NULL);
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    lookup_free(l);
}

tern_pq_lookup *tern_pq_start_resolved(uv_loop_t *loop, const char *conninfo, const char *host,
                                       const char *appname, tern_pq_started_cb cb, void *arg)
{
    tern_pq_lookup *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->cb = cb;
    l->arg = arg;
    l->conninfo = strdup(conninfo);
    l->host = strdup(host);
    l->appname = strdup(appname);
    l->req.data = l;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (l->conninfo == NULL || l->host == NULL || l->appname == NULL ||
        uv_getaddrinfo(loop, &l->req, resolved, l->host, NULL, &hints) != 0) {
        lookup_free(l);
        return NULL;
    }
    return l;
}

void tern_pq_lookup_cancel(tern_pq_lookup *l)
{
    if (l == NULL)
        return;
    l->cb = NULL;
    uv_cancel((uv_req_t *)&l->req);
}
