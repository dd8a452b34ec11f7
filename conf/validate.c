/* The rules that span more than one key: listeners that would collide or
 * leak credentials, storage backends without their section, defaults
 * derived from other keys (hostname, local.path). Runs after the schema
 * walk on a struct whose every field is typed and in bounds (or already
 * reported); every broken rule is reported, none stops the others. */
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/stat.h>

#include <arpa/inet.h>

#include "conf/conf_internal.h"
#include "lib/http_response.h"
#include "lib/json.h"

static void validate__hostname(conf_walk *w)
{
    tern_server_conf *s = &w->cfg->server;
    if (s->hostname != NULL || conf__line(w, &s->hostname) != 0)
        return; /* set (or set and already reported) */
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) {
        conf__err(w, 0, "server.hostname", "not set and the system host name is unknown; set it");
        return;
    }
    host[sizeof(host) - 1] = '\0';
    /* The FQDN is what the greeting and Received headers should name;
     * a bare host name is the fallback when the resolver knows no better. */
    char name[256];
    snprintf(name, sizeof(name), "%s", host);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_flags = AI_CANONNAME};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) == 0 && res != NULL) {
        if (res->ai_canonname != NULL && strchr(res->ai_canonname, '.') != NULL)
            snprintf(name, sizeof(name), "%s", res->ai_canonname);
        freeaddrinfo(res);
    }
    for (char *p = name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    const char *why = conf__check_hostname(name);
    if (why) {
        conf__err(w, 0, "server.hostname",
                  "not set, and the system host name \"%s\" %s; set it", name, why);
        return;
    }
    s->hostname = conf__strdup(w, name);
}

/* postgres.blob_dir: absolute, made (0700) if missing; an existing one
 * must be a directory no other user can write (bodies are read back as
 * the stored messages). */
static void validate__blob_dir(conf_walk *w)
{
    tern_config *c = w->cfg;
    const char *d = c->postgres.blob_dir;
    if (d == NULL)
        return;
    int line = conf__line(w, &c->postgres.blob_dir);
    if (d[0] != '/') {
        conf__err(w, line, "postgres.blob_dir", "must be an absolute path");
        return;
    }
    struct stat st;
    if (stat(d, &st) < 0) {
        if (errno != ENOENT || mkdir(d, 0700) < 0)
            conf__err(w, line, "postgres.blob_dir", "cannot create the directory");
        return;
    }
    if (!S_ISDIR(st.st_mode))
        conf__err(w, line, "postgres.blob_dir", "not a directory");
    else if (st.st_mode & S_IWOTH)
        conf__err(w, line, "postgres.blob_dir", "is world-writable");
}

static void validate__storage(conf_walk *w)
{
    tern_config *c = w->cfg;
    if (c->local.path == NULL && c->server.state_dir != NULL)
        c->local.path = tern_arena_printf(&c->arena, "%s/mail", c->server.state_dir);
    if (c->server.control_socket == NULL && c->server.state_dir != NULL)
        c->server.control_socket = tern_arena_printf(&c->arena, "%s/control.sock", c->server.state_dir);
    if (c->storage.backend == TERN_STORAGE_POSTGRES && !c->postgres.present)
        conf__err(w, conf__line(w, &c->storage.backend), "storage.backend",
                  "postgres needs a postgres: section with conninfo");
    if (c->postgres.present && c->postgres.conninfo == NULL &&
        conf__line(w, &c->postgres.conninfo) == 0)
        conf__err(w, 0, "postgres.conninfo", "required when a postgres: section is present");
    validate__blob_dir(w);
}

/* The JWKS is fully decoded (keys imported) by auth/ when the snapshot is
 * built; here it must at least be a JSON key set, so a broken file fails
 * the reload with a config error rather than a login later. */
/* Introspection (RFC 7662): the client secret must never cross the
 * network in clear text, so the URL is https unless its host is this
 * machine; the secret is read from its file here (as the smarthost's),
 * and error messages name keys and files, never the secret. */
static void validate__introspection(conf_walk *w)
{
    struct tern_auth_introspection_conf *in = &w->cfg->auth_oauth2.introspection;
    unsigned line = conf__line(w, &in->url);
    if (in->url == NULL) {
        conf__err(w, 0, "auth_oauth2.introspection.url", "required");
    } else {
        tern_http_url u;
        const char *why = NULL;
        if (tern_http_url_parse(in->url, &u, &why) != 0)
            conf__err(w, line, "auth_oauth2.introspection.url", "\"%s\": %s", in->url, why);
        else if (!u.tls && !tern_http_host_is_loopback(u.host))
            conf__err(w, line, "auth_oauth2.introspection.url",
                      "must be https:// (the client secret would cross the network in clear "
                      "text); http:// is allowed only to a loopback host");
    }
    if (in->client_id == NULL || in->client_id[0] == '\0' || strlen(in->client_id) > 255)
        conf__err(w, conf__line(w, &in->client_id), "auth_oauth2.introspection.client_id",
                  "required, 1 to 255 characters");
    if ((in->client_secret == NULL) == (in->client_secret_file == NULL)) {
        conf__err(w, line, "auth_oauth2.introspection",
                  "needs exactly one of client_secret and client_secret_file");
        return;
    }
    if (in->client_secret_file != NULL) {
        const char *f = in->client_secret_file;
        unsigned fl = conf__line(w, &in->client_secret_file);
        struct stat st;
        if (stat(f, &st) != 0) {
            conf__err(w, fl, "auth_oauth2.introspection.client_secret_file", "\"%s\": %s", f,
                      strerror(errno));
            return;
        }
        if (st.st_mode & (S_IROTH | S_IWOTH)) {
            conf__err(w, fl, "auth_oauth2.introspection.client_secret_file",
                      "\"%s\" is readable or writable by everyone (chmod o-rw)", f);
            return;
        }
        FILE *fp = fopen(f, "rb");
        if (fp == NULL) {
            conf__err(w, fl, "auth_oauth2.introspection.client_secret_file", "\"%s\": %s", f,
                      strerror(errno));
            return;
        }
        char buf[512];
        size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        in->client_secret = conf__strdup(w, buf);
        explicit_bzero(buf, sizeof(buf));
    }
    size_t sl = in->client_secret ? strlen(in->client_secret) : 0;
    if (sl == 0 || sl > 255)
        conf__err(w, line, "auth_oauth2.introspection", "the client secret must be 1 to 255 "
                                                        "characters");
    if (in->ca_file != NULL && access(in->ca_file, R_OK) != 0)
        conf__err(w, conf__line(w, &in->ca_file), "auth_oauth2.introspection.ca_file",
                  "\"%s\": %s", in->ca_file, strerror(errno));
    if (in->account_claim == NULL || in->account_claim[0] == '\0')
        conf__err(w, conf__line(w, &in->account_claim),
                  "auth_oauth2.introspection.account_claim", "is empty");
    if (in->always && w->cfg->auth_oauth2.jwks_file == NULL)
        conf__err(w, conf__line(w, &in->always), "auth_oauth2.introspection.always",
                  "is only meaningful with jwks_file (without it every token is introspected)");
}

static void validate__auth_oauth2(conf_walk *w)
{
    const tern_auth_oauth2_conf *o = &w->cfg->auth_oauth2;
    if (!o->present)
        return;
    if (o->introspection.present)
        validate__introspection(w);
    /* Local JWT checks need the keys, the issuer and the audience; with
     * introspection alone, issuer and audience are optional checks of
     * its answers. */
    const char *const names[] = {"auth_oauth2.jwks_file", "auth_oauth2.issuer",
                                 "auth_oauth2.audience"};
    char *const *vals[] = {(char *const *)&o->jwks_file, (char *const *)&o->issuer,
                           (char *const *)&o->audience};
    bool local = o->jwks_file != NULL || conf__line(w, &o->jwks_file) != 0 ||
                 !o->introspection.present;
    for (size_t i = 0; i < 3 && local; i++)
        if (*vals[i] == NULL && conf__line(w, vals[i]) == 0)
            conf__err(w, 0, names[i], "required when an auth_oauth2: section is present%s",
                      o->introspection.present && i > 0 ? " with jwks_file" : "");
    if (o->audience != NULL && o->audience[0] == '\0')
        conf__err(w, conf__line(w, &o->audience), "auth_oauth2.audience", "is empty");
    if (o->issuer != NULL && o->issuer[0] == '\0')
        conf__err(w, conf__line(w, &o->issuer), "auth_oauth2.issuer", "is empty");
    if (o->jwks_file == NULL)
        return;
    unsigned line = conf__line(w, &o->jwks_file);
    FILE *f = fopen(o->jwks_file, "rb");
    if (f == NULL) {
        conf__err(w, line, "auth_oauth2.jwks_file", "\"%s\": %s", o->jwks_file, strerror(errno));
        return;
    }
    enum { MAX = 1 << 20 };
    char *buf = malloc(MAX + 1);
    size_t n = buf ? fread(buf, 1, MAX + 1, f) : 0;
    fclose(f);
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_json *root = NULL;
    size_t off = 0;
    int rc = buf == NULL || n > MAX ? TERN_JSON_ELIMIT
                                    : tern_json_parse(buf, n, NULL, &a, &root, &off);
    const tern_json *keys = tern_json_get(root, "keys");
    if (rc != TERN_JSON_OK)
        conf__err(w, line, "auth_oauth2.jwks_file", "\"%s\": %s at byte %zu", o->jwks_file,
                  tern_json_strerror(rc), off);
    else if (keys == NULL || keys->type != TERN_JSON_ARRAY || keys->len == 0)
        conf__err(w, line, "auth_oauth2.jwks_file", "\"%s\": no \"keys\" array with keys",
                  o->jwks_file);
    tern_arena_free(&a);
    free(buf);
}

/* A backend named in auth.backends reads its own section; one that takes
 * settings (file) without it could answer for no one. The file itself is
 * parsed by auth/ when the auth snapshot is built, which fails the reload
 * with file:line errors; here it must at least be readable. */
static void validate__auth(conf_walk *w)
{
    tern_config *c = w->cfg;
    tern_auth_conf *a = &c->auth;
    if (a->n_backends == 0 && conf__line(w, &a->backends) == 0) {
        a->backends = conf__alloc(w, sizeof(char *));
        if (a->backends != NULL) {
            a->backends[0] = conf__strdup(w, "internal");
            a->n_backends = 1;
        }
        return;
    }
    if (a->n_backends == 0)
        conf__err(w, conf__line(w, &a->backends), "auth.backends",
                  "is empty: no one could log in; list at least one backend");
    for (size_t i = 0; i < a->n_backends; i++) {
        char path[64];
        snprintf(path, sizeof(path), "auth.backends[%zu]", i);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(a->backends[i], a->backends[j]) == 0) {
                conf__err(w, conf__line(w, &a->backends[i]), path, "\"%s\" is listed twice",
                          a->backends[i]);
                break;
            }
        }
        if (strcmp(a->backends[i], "oauth2") == 0 && !c->auth_oauth2.present)
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "oauth2 needs an auth_oauth2: section with jwks_file, issuer, audience");
        if (strcmp(a->backends[i], "file") == 0 && !c->auth_file.present)
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "file needs an auth_file: section with path");
        if (strcmp(a->backends[i], "sql") == 0 &&
            (!c->auth_sql.present || c->auth_sql.password_query == NULL))
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "sql needs an auth_sql: section with password_query");
        else if (strcmp(a->backends[i], "sql") == 0 && c->auth_sql.conninfo == NULL &&
                 c->postgres.conninfo == NULL)
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "sql needs auth_sql.conninfo (or a postgres: section)");
        if (strcmp(a->backends[i], "ldap") == 0 && !c->auth_ldap.present)
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "ldap needs an auth_ldap: section with uri");
        if (strcmp(a->backends[i], "sql") == 0 &&
            (!c->auth_sql.present || c->auth_sql.password_query == NULL))
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "sql needs an auth_sql: section with password_query");
        else if (strcmp(a->backends[i], "sql") == 0 && c->auth_sql.conninfo == NULL &&
                 c->postgres.conninfo == NULL)
            conf__err(w, conf__line(w, &a->backends[i]), path,
                      "sql needs auth_sql.conninfo (or a postgres: section)");
    }
    if (c->auth_file.present && c->auth_file.path == NULL &&
        conf__line(w, &c->auth_file.path) == 0)
        conf__err(w, 0, "auth_file.path", "required when an auth_file: section is present");
    const tern_auth_ldap_conf *l = &c->auth_ldap;
    if (l->present && l->uri == NULL && conf__line(w, &l->uri) == 0)
        conf__err(w, 0, "auth_ldap.uri", "required when an auth_ldap: section is present");
    if (l->present && l->mode == TERN_LDAP_MODE_BIND && l->dn_template == NULL)
        conf__err(w, 0, "auth_ldap.dn_template", "required in bind mode");
    if (l->present && l->mode == TERN_LDAP_MODE_SEARCH && l->base == NULL)
        conf__err(w, 0, "auth_ldap.base", "required in search mode");
    if (l->present && (l->bind_dn == NULL) != (l->bind_password == NULL))
        conf__err(w, 0, l->bind_dn ? "auth_ldap.bind_password" : "auth_ldap.bind_dn",
                  "bind_dn and bind_password go together");
    if (l->present && l->starttls && l->uri != NULL && strncmp(l->uri, "ldaps://", 8) == 0)
        conf__err(w, 0, "auth_ldap.starttls", "makes no sense with ldaps://");
    if (c->auth_file.path != NULL) {
        char buf[256];
        const char *why = conf__check_readable(c->auth_file.path, buf, sizeof(buf));
        if (why)
            conf__err(w, conf__line(w, &c->auth_file.path), "auth_file.path", "\"%s\": %s",
                      c->auth_file.path, why);
    }
}

static void validate__dns(conf_walk *w)
{
    tern_dns_conf *d = &w->cfg->dns;
    if (d->trust_anchor_file != NULL) {
        char buf[256];
        const char *why = conf__check_readable(d->trust_anchor_file, buf, sizeof(buf));
        if (why)
            conf__err(w, conf__line(w, &d->trust_anchor_file), "dns.trust_anchor_file",
                      "\"%s\": %s", d->trust_anchor_file, why);
    }
}

/* AUTH to the smarthost: a secret. Error messages name the key and the
 * file, never the password. The file must not be readable or writable by
 * everyone (a shared secret, like a private key); its first line is the
 * password. */
static void validate__smarthost_auth(conf_walk *w)
{
    tern_queue_conf *q = &w->cfg->queue;
    if (q->smarthost_auth.username == NULL) {
        if (q->smarthost_auth.password || q->smarthost_auth.password_file)
            conf__err(w, 0, "queue.smarthost_auth.username", "required");
        return;
    }
    unsigned line = conf__line(w, &q->smarthost_auth.username);
    if (q->smarthost == NULL || q->smarthost[0] == '\0')
        conf__err(w, line, "queue.smarthost_auth", "needs queue.smarthost (credentials go to "
                                                   "the smarthost only)");
    if (q->smarthost_auth.username[0] == '\0' || strlen(q->smarthost_auth.username) > 255)
        conf__err(w, line, "queue.smarthost_auth.username", "must be 1 to 255 characters");
    if ((q->smarthost_auth.password == NULL) == (q->smarthost_auth.password_file == NULL)) {
        conf__err(w, line, "queue.smarthost_auth",
                  "needs exactly one of password and password_file");
        return;
    }
    if (q->smarthost_auth.password_file) {
        const char *f = q->smarthost_auth.password_file;
        unsigned fl = conf__line(w, &q->smarthost_auth.password_file);
        struct stat st;
        if (stat(f, &st) != 0) {
            conf__err(w, fl, "queue.smarthost_auth.password_file", "\"%s\": %s", f, strerror(errno));
            return;
        }
        if (st.st_mode & (S_IROTH | S_IWOTH)) {
            conf__err(w, fl, "queue.smarthost_auth.password_file",
                      "\"%s\" is readable or writable by everyone (chmod o-rw)", f);
            return;
        }
        FILE *fp = fopen(f, "rb");
        if (fp == NULL) {
            conf__err(w, fl, "queue.smarthost_auth.password_file", "\"%s\": %s", f, strerror(errno));
            return;
        }
        char buf[512];
        size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        q->smarthost_auth.password = conf__strdup(w, buf);
        explicit_bzero(buf, sizeof(buf));
    }
    size_t pl = q->smarthost_auth.password ? strlen(q->smarthost_auth.password) : 0;
    if (pl == 0 || pl > 255)
        conf__err(w, line, "queue.smarthost_auth", "the password must be 1 to 255 characters");
}

/* queue.mta_sts_ca_file: a file that cannot be read would leave MTA-STS
 * with no CA to verify against; say so at load, not at the first fetch. */
static void validate__queue_mta_sts(conf_walk *w)
{
    tern_queue_conf *q = &w->cfg->queue;
    if (q->mta_sts_ca_file != NULL) {
        char buf[256];
        const char *why = conf__check_readable(q->mta_sts_ca_file, buf, sizeof(buf));
        if (why)
            conf__err(w, conf__line(w, &q->mta_sts_ca_file), "queue.mta_sts_ca_file",
                      "\"%s\": %s", q->mta_sts_ca_file, why);
    }
}

static void validate__queue(conf_walk *w)
{
    /* backend_connect_retries is another name for connect_retries. */
    tern_queue_conf *q = &w->cfg->queue;
    unsigned a = conf__line(w, &q->connect_retries), b = conf__line(w, &q->backend_connect_retries);
    if (a && b && q->connect_retries != q->backend_connect_retries)
        conf__err(w, b, "queue.backend_connect_retries",
                  "is another name for queue.connect_retries, which says otherwise");
    else if (b)
        q->connect_retries = q->backend_connect_retries;
}

static void validate__smtp(conf_walk *w)
{
    /* memory_threshold above max_message_size is harmless: no message
     * spills to disk, which is what such a setting asks for. */
    const tern_smtp_conf *sc = &w->cfg->smtp;
    for (size_t i = 0; i < sc->n_send_as; i++) {
        const tern_send_as_conf *g = &sc->send_as[i];
        char path[64];
        snprintf(path, sizeof(path), "smtp.send_as[%zu]", i);
        /* A grant listing nothing is a typo, not a policy: say so rather
         * than let the author believe it grants something. */
        if (g->n_addresses == 0)
            conf__err(w, conf__line(w, &g->account), path, "addresses: at least one is required");
        /* Two grants for one account would make the effective set depend
         * on which one a reader looks at. */
        for (size_t k = 0; k < i; k++)
            if (g->account && sc->send_as[k].account &&
                strcmp(g->account, sc->send_as[k].account) == 0)
                conf__err(w, conf__line(w, &g->account), path,
                          "account \"%s\" already has a grant at smtp.send_as[%zu]; merge them",
                          g->account, k);
    }
}

static void validate__domains(conf_walk *w)
{
    tern_config *c = w->cfg;
    for (size_t i = 0; i < c->n_domains; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->domains[i], c->domains[j]) == 0) {
                char path[64];
                snprintf(path, sizeof(path), "domains[%zu]", i);
                conf__err(w, conf__line(w, &c->domains[i]), path,
                          "\"%s\" is listed twice (first at line %u)", c->domains[i],
                          conf__line(w, &c->domains[j]));
                break;
            }
        }
    }
}

/* An address as 16 bytes, IPv4 mapped into IPv6 so that one comparison
 * covers both; `any6` is "::" which (dual stack) takes every address. */
typedef struct bind_addr {
    bool ok, any4, any6;
    uint8_t a[16];
} bind_addr;

static bind_addr validate__bind_addr(const char *s)
{
    bind_addr b = {0};
    if (s == NULL)
        return b;
    uint8_t v4[4];
    if (inet_pton(AF_INET, s, v4) == 1) {
        b.a[10] = b.a[11] = 0xff;
        memcpy(b.a + 12, v4, 4);
        b.any4 = memcmp(v4, "\0\0\0\0", 4) == 0;
        b.ok = true;
    } else if (inet_pton(AF_INET6, s, b.a) == 1) {
        static const uint8_t zero[16];
        static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        b.any6 = memcmp(b.a, zero, 16) == 0;
        b.any4 = memcmp(b.a, mapped_prefix, 12) == 0 && memcmp(b.a + 12, zero, 4) == 0;
        b.ok = true;
    }
    return b;
}

static bool validate__is_mapped(const bind_addr *b)
{
    static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(b->a, mapped_prefix, 12) == 0;
}

static bool validate__overlap(const bind_addr *x, const bind_addr *y)
{
    if (!x->ok || !y->ok)
        return false;
    if (x->any6 || y->any6)
        return true;
    if ((x->any4 && validate__is_mapped(y)) || (y->any4 && validate__is_mapped(x)))
        return true;
    return memcmp(x->a, y->a, 16) == 0;
}

/* The shape of a credential list's first entry, as auth/hash.h reads it:
 * conf/ cannot call auth/ (auth/ depends on conf/), so the hash itself is
 * checked again when the auth snapshot is built. NULL or why not. */
static const char *validate__credential(const char *s)
{
    static const char *const schemes[] = {
        "ARGON2ID", "ARGON2I", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "MD5-CRYPT",
        "PLAIN", "CLEAR", "CLEARTEXT", "CRAM-MD5", "SCRAM-SHA-256"};
    static const char *const bare[] = {"$argon2id$", "$argon2i$", "$6$", "$5$",
                                       "$2y$", "$2b$", "$2a$", "$1$"};
    if (s[0] == '{') {
        const char *e = strchr(s, '}');
        if (e == NULL)
            return "starts with { but has no }";
        for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
            if ((size_t)(e - s - 1) == strlen(schemes[i]) &&
                strncasecmp(s + 1, schemes[i], strlen(schemes[i])) == 0)
                return e[1] == '\0' || e[1] == ' ' ? "has an empty credential" : NULL;
        return "has an unknown scheme (ARGON2ID, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, "
               "PLAIN, ...)";
    }
    for (size_t i = 0; i < sizeof(bare) / sizeof(bare[0]); i++)
        if (strncmp(s, bare[i], strlen(bare[i])) == 0)
            return NULL;
    return "is neither {SCHEME}data nor a crypt string ($argon2id$, $6$, $2y$, ...); "
           "write a clear one as {PLAIN}text";
}

static void validate__listener(conf_walk *w, size_t i)
{
    tern_config *c = w->cfg;
    tern_listener_conf *l = &c->listeners[i];
    char path[128];
    unsigned lline = conf__line(w, &l->protocol);
    if (lline == 0)
        lline = conf__line(w, &l->port);

    for (size_t j = 0; j < i && l->name; j++) {
        if (c->listeners[j].name && strcmp(c->listeners[j].name, l->name) == 0) {
            snprintf(path, sizeof(path), "listeners[%zu].name", i);
            conf__err(w, conf__line(w, &l->name), path,
                      "\"%s\" is already the name of listeners[%zu]", l->name, j);
            break;
        }
    }

    if (l->port != 0) {
        bind_addr me = validate__bind_addr(l->address);
        for (size_t j = 0; j < i; j++) {
            const tern_listener_conf *o = &c->listeners[j];
            if (o->port != l->port)
                continue;
            bind_addr other = validate__bind_addr(o->address);
            if (!validate__overlap(&me, &other))
                continue;
            snprintf(path, sizeof(path), "listeners[%zu].port", i);
            conf__err(w, conf__line(w, &l->port), path,
                      "%u on %s collides with listeners[%zu] \"%s\" (%s port %u)", l->port,
                      l->address, j, o->name ? o->name : "?", o->address, o->port);
            break;
        }
    }

    unsigned tls_line = conf__line(w, &l->tls);
    bool creds = l->auth || l->protocol == TERN_PROTO_IMAP || l->protocol == TERN_PROTO_POP3;
    if (creds && l->tls == TERN_TLS_NONE && !l->allow_plaintext_auth) {
        snprintf(path, sizeof(path), "listeners[%zu].tls", i);
        conf__err(w, tls_line ? tls_line : lline, path,
                  "none, but this %s listener takes credentials%s: they would cross the network "
                  "in plaintext; use starttls or implicit, or set allow_plaintext_auth: true",
                  tern_protocol_name(l->protocol),
                  l->auth ? " (auth is on)" : " (user logins)");
    }

    if (l->client_cert != TERN_CLIENT_CERT_NONE) {
        const char *cc = l->client_cert == TERN_CLIENT_CERT_OPTIONAL ? "optional" : "required";
        snprintf(path, sizeof(path), "listeners[%zu].tls.client_cert", i);
        if (l->client_ca == NULL && conf__line(w, &l->client_ca) == 0)
            conf__err(w, conf__line(w, &l->client_cert), path,
                      "%s needs tls.client_ca, the CAs that client certificates are checked "
                      "against",
                      cc);
        if (l->tls == TERN_TLS_NONE)
            conf__err(w, conf__line(w, &l->client_cert), path,
                      "%s needs tls mode starttls or implicit: there is no handshake without TLS",
                      cc);
    }
    if (l->auth_static.username != NULL && l->auth_static.username[0] == '\0') {
        snprintf(path, sizeof(path), "listeners[%zu].auth_static.username", i);
        conf__err(w, conf__line(w, &l->auth_static.username), path, "is empty");
    }
    if (l->auth_static.password != NULL) {
        const char *why = validate__credential(l->auth_static.password);
        snprintf(path, sizeof(path), "listeners[%zu].auth_static.password", i);
        if (why)
            conf__err(w, conf__line(w, &l->auth_static.password), path, "%s", why);
        if (!l->auth)
            conf__err(w, conf__line(w, &l->auth), path,
                      "is set but auth is false: the listener would never offer it");
    }

    if (l->client_ca != NULL) {
        snprintf(path, sizeof(path), "listeners[%zu].tls.client_ca", i);
        conf__check_client_ca(w, path, l->client_ca, conf__line(w, &l->client_ca));
    }

    /* A TLS listener without tls.certificates is served with a generated
     * self-signed certificate; the TLS module logs a warning at start. */

    if (l->protocol == TERN_PROTO_SMTP && c->n_domains == 0) {
        /* Reported once, at the first smtp listener. */
        bool first = true;
        for (size_t j = 0; j < i; j++)
            if (c->listeners[j].protocol == TERN_PROTO_SMTP)
                first = false;
        if (first) {
            snprintf(path, sizeof(path), "listeners[%zu].protocol", i);
            conf__err(w, lline, path,
                      "smtp, but domains is empty: this listener could accept mail for no one; "
                      "list the local domains under domains:");
        }
    }
}

void conf__validate(conf_walk *w)
{
    tern_config *c = w->cfg;
    validate__hostname(w);
    validate__storage(w);
    validate__auth(w);
    validate__auth_oauth2(w);
    validate__smtp(w);
    validate__queue(w);
    validate__domains(w);
    validate__dns(w);
    validate__smarthost_auth(w);
    validate__queue_mta_sts(w);
    for (size_t i = 0; i < c->n_listeners; i++)
        validate__listener(w, i);
    conf__validate_processors(w);
    conf__check_certificates(w);
    conf__resolve_cipher_suites(w);
}
