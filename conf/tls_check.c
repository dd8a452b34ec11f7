/* The TLS parts of validation, done against mbedTLS 2.28 itself so that a
 * config that validates is one the TLS module can actually serve: the
 * certificate and key files exist, parse and belong together, client CA
 * files hold CAs, the minimum version is one mbedTLS speaks, and the
 * disabled cipher suites leave something to negotiate. Input: file names
 * from the untrusted config; the files are read, never trusted further than
 * mbedTLS's own parsers. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/x509_crt.h>

#include "conf/conf_internal.h"
#include "lib/util.h"

const char *conf__check_readable(const char *file, char *buf, size_t size)
{
    struct stat st;
    if (stat(file, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return "no such file";
        snprintf(buf, size, "cannot be read (%s)", strerror(errno));
        return buf;
    }
    if (S_ISDIR(st.st_mode))
        return "is a directory, not a file";
    if (access(file, R_OK) != 0) {
        snprintf(buf, size, "is not readable (%s)", strerror(errno));
        return buf;
    }
    return NULL;
}

void conf__parse_min_version(conf_walk *w, const cnode *n, void *dst, const char *path)
{
    int *v = dst;
    *v = 12;
    if (n == NULL || n->is_null)
        return;
    if (n->kind != CNODE_SCALAR) {
        conf__err(w, n->line, path, "expected a version such as \"1.2\"");
        return;
    }
    conf__line_set(w, dst, n->line);
    if (strcmp(n->str, "1.2") == 0)
        return;
    if (strcmp(n->str, "1.3") == 0)
        conf__err(w, n->line, path,
                  "\"1.3\" cannot be honoured: Tern uses mbedTLS 2.28, which speaks TLS 1.2 only; "
                  "use \"1.2\"");
    else if (strcmp(n->str, "1.0") == 0 || strcmp(n->str, "1.1") == 0 || strcmp(n->str, "1") == 0)
        conf__err(w, n->line, path,
                  "\"%s\" is unsupported and insecure (RFC 8996 deprecates TLS 1.0 and 1.1); "
                  "use \"1.2\"",
                  n->str);
    else
        conf__err(w, n->line, path, "\"%.32s\" is not a TLS version; only \"1.2\" is accepted",
                  n->str);
}

static void tls__strerror(int rc, char *buf, size_t size)
{
    mbedtls_strerror(rc, buf, size);
}

/* Returns 0 when the certificate file is usable, filling crt. */
static int tls__load_cert(conf_walk *w, const char *path, const char *file, unsigned line,
                          mbedtls_x509_crt *crt)
{
    char why[256];
    const char *r = conf__check_readable(file, why, sizeof(why));
    if (r) {
        conf__err(w, line, path, "%s: %s", file, r);
        return -1;
    }
    int rc = mbedtls_x509_crt_parse_file(crt, file);
    if (rc < 0) {
        char e[128];
        tls__strerror(rc, e, sizeof(e));
        conf__err(w, line, path, "%s: does not parse as PEM certificates (%s)", file, e);
        return -1;
    }
    if (rc > 0) {
        conf__err(w, line, path, "%s: %d certificate%s in the file do%s not parse", file, rc,
                  rc == 1 ? "" : "s", rc == 1 ? "es" : "");
        return -1;
    }
    return 0;
}

void conf__check_client_ca(conf_walk *w, const char *path, const char *file, unsigned line)
{
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    if (tls__load_cert(w, path, file, line, &crt) == 0) {
        /* A leaf here would silently verify nothing: mbedTLS needs CAs. */
        int i = 1;
        for (const mbedtls_x509_crt *c = &crt; c != NULL && c->raw.len > 0; c = c->next, i++) {
            if (!c->ca_istrue) {
                conf__err(w, line, path,
                          "%s: certificate %d is not a CA (no basicConstraints CA:TRUE)", file, i);
                break;
            }
        }
    }
    mbedtls_x509_crt_free(&crt);
}

static void tls__check_one(conf_walk *w, tern_cert_conf *c)
{
    char path[512], kpath[512];
    snprintf(path, sizeof(path), "tls.certificates.%.200s.cert", c->name ? c->name : "?");
    snprintf(kpath, sizeof(kpath), "tls.certificates.%.200s.key", c->name ? c->name : "?");
    mbedtls_x509_crt crt;
    mbedtls_pk_context pk;
    mbedtls_x509_crt_init(&crt);
    mbedtls_pk_init(&pk);
    bool crt_ok = false, key_ok = false;

    if (c->cert != NULL)
        crt_ok = tls__load_cert(w, path, c->cert, conf__line(w, &c->cert), &crt) == 0;

    if (c->key != NULL) {
        unsigned line = conf__line(w, &c->key);
        char why[256];
        const char *r = conf__check_readable(c->key, why, sizeof(why));
        if (r) {
            conf__err(w, line, kpath, "%s: %s", c->key, r);
        } else {
            int rc = mbedtls_pk_parse_keyfile(&pk, c->key, NULL);
            if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
                conf__err(w, line, kpath,
                          "%s: the key is encrypted; Tern needs it unencrypted (protect it with "
                          "file permissions instead)",
                          c->key);
            } else if (rc != 0) {
                char e[128];
                tls__strerror(rc, e, sizeof(e));
                conf__err(w, line, kpath, "%s: does not parse as a private key (%s)", c->key, e);
            } else {
                key_ok = true;
            }
        }
    }

    if (crt_ok && key_ok && mbedtls_pk_check_pair(&crt.pk, &pk) != 0)
        conf__err(w, conf__line(w, &c->key), kpath,
                  "%s does not match the certificate %s (its public key is another key's)",
                  c->key, c->cert);

    mbedtls_pk_free(&pk);
    mbedtls_x509_crt_free(&crt);
}

void conf__check_certificates(conf_walk *w)
{
    tern_tls_conf *t = &w->cfg->tls;
    const tern_cert_conf *first_default = NULL;
    for (size_t i = 0; i < t->n_certs; i++) {
        tern_cert_conf *c = &t->certs[i];
        tls__check_one(w, c);
        if (!c->is_default)
            continue;
        if (first_default != NULL) {
            char path[512];
            snprintf(path, sizeof(path), "tls.certificates.%.200s.default", c->name);
            conf__err(w, conf__line(w, &c->is_default), path,
                      "only one certificate may be the default, and \"%s\" already is",
                      first_default->name);
        } else {
            first_default = c;
        }
    }
    /* No implicit default: with several certificates and none marked, a
     * name that matches none gets the generated self-signed certificate and
     * a warning from the TLS module, rather than a real certificate for
     * some other name chosen by list order. */
}

/* mbedTLS writes "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256", IANA
 * "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": the same name up to '-'/'_'
 * and case. */
static bool tls__suite_name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x >= 'a' && x <= 'z')
            x = (char)(x - 'a' + 'A');
        if (y >= 'a' && y <= 'z')
            y = (char)(y - 'a' + 'A');
        if (x != y)
            return false;
    }
    return *a == *b;
}

/* Suites that need a pre-shared key or a password exchange: the server has
 * neither, so they never negotiate and must not count as "something left". */
static bool tls__needs_psk(const mbedtls_ssl_ciphersuite_t *info)
{
    switch (info->key_exchange) {
    case MBEDTLS_KEY_EXCHANGE_PSK:
    case MBEDTLS_KEY_EXCHANGE_DHE_PSK:
    case MBEDTLS_KEY_EXCHANGE_RSA_PSK:
    case MBEDTLS_KEY_EXCHANGE_ECDHE_PSK:
    case MBEDTLS_KEY_EXCHANGE_ECJPAKE:
        return true;
    default:
        return false;
    }
}

void conf__resolve_cipher_suites(conf_walk *w)
{
    tern_tls_conf *t = &w->cfg->tls;
    const int *all = mbedtls_ssl_list_ciphersuites();
    size_t n_all = 0;
    while (all[n_all] != 0)
        n_all++;
    bool *disabled = conf__alloc(w, (n_all + 1) * sizeof(bool));
    int *out = conf__alloc(w, (n_all + 1) * sizeof(int));
    if (disabled == NULL || out == NULL)
        return;

    bool bad_name = false;
    for (size_t d = 0; d < t->n_disable_cipher_suites; d++) {
        const char *want = t->disable_cipher_suites[d];
        bool found = false;
        for (size_t i = 0; i < n_all; i++) {
            const char *name = mbedtls_ssl_get_ciphersuite_name(all[i]);
            if (name != NULL && tls__suite_name_eq(want, name)) {
                disabled[i] = true;
                found = true;
            }
        }
        if (found)
            continue;
        bad_name = true;
        char path[128];
        snprintf(path, sizeof(path), "tls.protocols.disable_cipher_suites[%zu]", d);
        /* Suggest against the name as the user spelled its separators. */
        const char *best = NULL;
        size_t best_d = 4;
        char norm[128];
        snprintf(norm, sizeof(norm), "%s", want);
        for (char *p = norm; *p; p++)
            if (*p == '_')
                *p = '-';
        for (size_t i = 0; i < n_all; i++) {
            const char *name = mbedtls_ssl_get_ciphersuite_name(all[i]);
            if (name == NULL)
                continue;
            size_t dist = tern_edit_distance(norm, name, best_d);
            if (dist < best_d) {
                best_d = dist;
                best = name;
            }
        }
        if (best)
            conf__err(w, conf__line(w, &t->disable_cipher_suites[d]), path,
                      "unknown cipher suite \"%.80s\" (did you mean \"%s\"?)", want, best);
        else
            conf__err(w, conf__line(w, &t->disable_cipher_suites[d]), path,
                      "unknown cipher suite \"%.80s\" (names as in mbedTLS, "
                      "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256, or IANA, "
                      "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
                      want);
    }

    size_t n = 0;
    for (size_t i = 0; i < n_all; i++) {
        const mbedtls_ssl_ciphersuite_t *info = mbedtls_ssl_ciphersuite_from_id(all[i]);
        if (info == NULL || info->max_minor_ver < MBEDTLS_SSL_MINOR_VERSION_3 ||
            tls__needs_psk(info) || disabled[i])
            continue;
        out[n++] = all[i];
    }
    out[n] = 0;
    t->cipher_suites = out;
    if (n == 0 && !bad_name)
        conf__err(w, conf__line(w, &t->disable_cipher_suites), "tls.protocols.disable_cipher_suites",
                  "every TLS 1.2 cipher suite is disabled; nothing would be left to negotiate");
}
