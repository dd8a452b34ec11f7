/* tls.h over mbedTLS 2.28 (TLS 1.2 only), on memory buffers: the event loop
 * feeds received ciphertext in and sends what the output queue holds, so no
 * call here blocks or touches a socket. One tern_tls_server per config
 * snapshot holds the certificates, the SNI table and one mbedTLS config per
 * TLS listener; it is reference counted so sessions keep the one they
 * started with across a reload. Input trusted: the validated config (files
 * are still parsed defensively: they may have changed since validation).
 * Not trusted: every byte from the peer, including the SNI name.
 *
 * Threads: a server is shared by all workers; a connection is used by one
 * thread at a time. Debian builds mbedTLS with MBEDTLS_THREADING_PTHREAD, so
 * the CTR_DRBG, the entropy pool, the ticket keys and RSA blinding lock
 * themselves. What does not is the lazily built table of precomputed points
 * an EC group caches on first use (ecp_mul_comb writes grp->T); see
 * tls__ec_warm_up().
 *
 * What mbedTLS 2.28 cannot do here: choose the cipher suite by the client's
 * order. Its server walks its own list unless built with
 * MBEDTLS_SSL_SRV_RESPECT_CLIENT_PREFERENCE, which Debian's is not, so
 * tls.ignore_client_order: false still gets server order. tls.min_version
 * needs no handling: 1.2 is both the floor and the ceiling here.
 *
 * Names reported: the version as mbedTLS gives it ("TLSv1.2"); the cipher
 * suite as mbedTLS names it with '-' turned into '_', which is the IANA name
 * for every suite mbedTLS 2.28 offers in TLS 1.2
 * ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"); the peer subject as
 * mbedtls_x509_dn_gets writes it ("O=Example, CN=alice", certificate order). */
#include "protocols/common/tls.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_internal.h> /* the handshake's resume and extended_ms flags (tls-unique) */
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include "lib/log.h"
#include "protocols/common/tls_internal.h"

#if !defined(MBEDTLS_THREADING_C)
#error "mbedTLS must be built with MBEDTLS_THREADING_C: a server is shared by worker threads"
#endif

/* RFC 5246 6.2.3: a TLSCiphertext fragment is at most 2^14 + 2048 bytes. */
#define TLS_RECORD_MAX (5 + 16384 + 2048)
/* Two whole records plus slack: enough that a reader which drains the
 * plaintext after each feed never hits the limit, small enough that a peer
 * cannot make us hold much it has not been asked for. */
#define TLS_IN_LIMIT (2 * TLS_RECORD_MAX + 1024)
/* Resumption tickets live this long; keys rotate with the same period. */
#define TLS_TICKET_LIFETIME_S (4 * 3600)
#define TLS_NAME_MAX 253
#define TLS_ERR_MAX 160

typedef struct tls_cert {
    mbedtls_x509_crt chain; /* leaf first, as sent */
    mbedtls_pk_context key;
    char **names; /* lowercase, no trailing dot; may start with "*." */
    size_t n_names;
    bool is_default;
} tls_cert;

typedef struct tls_listener {
    bool enabled;
    bool has_ca;
    bool has_ticket;
    int authmode;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    /* Per listener, not per server: a ticket carries the verification
     * result of the client certificate, and must not let a session verified
     * against one listener's client_ca resume on a listener with another. */
    mbedtls_ssl_ticket_context ticket;
} tls_listener;

struct tern_tls_server {
    atomic_int refs;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    tls_cert *certs; /* configured, then the self-signed one if made */
    size_t n_certs;
    tls_cert *fallback; /* serves names that match nothing, and no SNI */
    int *ciphersuites;  /* copy: the config snapshot may go before us */
    tls_listener *listeners;
    size_t n_listeners;
};

struct tern_tls_client {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca;
    bool have_ca;
    mbedtls_ssl_config opportunistic, strict;
};

struct tern_tls_conn {
    mbedtls_ssl_context ssl; /* the SNI callback finds the conn from it */
    tern_tls_server *server; /* NULL for a client connection */
    const tls_listener *listener;
    bool client, client_strict;
    tern_buf in;
    size_t in_off; /* bytes of `in` mbedTLS has already taken */
    tern_buf out;
    bool established;
    bool failed;
    bool closed;
    bool has_sni;
    bool peer_verified;
    const char *version;
    char *peer_subject;
    char cipher[64];
    char sni[TLS_NAME_MAX + 1];
    char err[TLS_ERR_MAX];
    /* DANE (client, tern_tls_conn_new_client_dane): the usable TLSA
     * records (copies), what the verify callback decided and why. */
    tern_tlsa *dane;
    size_t n_dane;
    bool dane_verified;
    char dane_err[TLS_ERR_MAX];
    char *dane_alt_name; /* a second name DANE-TA accepts, or NULL */
    /* Noted while the handshake ran (its parameters are freed at the end):
     * tern_tls_conn_tls_unique needs them. */
    bool hs_resumed, hs_ems;
};

#define TLS_CONN_OF(ssl_ptr) \
    ((tern_tls_conn *)(void *)((char *)(ssl_ptr) - offsetof(tern_tls_conn, ssl)))

/* ---- certificates and names ---- */

static void tls__cert_free(tls_cert *c)
{
    mbedtls_x509_crt_free(&c->chain);
    mbedtls_pk_free(&c->key);
    for (size_t i = 0; i < c->n_names; i++)
        free(c->names[i]);
    free(c->names);
    c->names = NULL;
    c->n_names = 0;
}

/* Lowercases into out (size TLS_NAME_MAX + 1) and drops one trailing dot.
 * Accepts only host name characters, plus a leading "*." when `wildcard`:
 * the name comes from the peer (SNI) or from a certificate. */
static bool tls__norm_name(const unsigned char *s, size_t n, bool wildcard, char *out)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > TLS_NAME_MAX)
        return false;
    size_t i = 0;
    if (wildcard && n > 2 && s[0] == '*' && s[1] == '.') {
        out[0] = '*';
        out[1] = '.';
        i = 2;
    }
    for (; i < n; i++) {
        unsigned char ch = s[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                   ch == '.' || ch == '_'))
            return false;
        out[i] = (char)ch;
    }
    out[n] = '\0';
    return true;
}

static int tls__cert_add_name(tls_cert *c, const unsigned char *s, size_t n)
{
    char norm[TLS_NAME_MAX + 1];
    if (!tls__norm_name(s, n, true, norm))
        return 0; /* a name we could never match: skip it, not the cert */
    for (size_t i = 0; i < c->n_names; i++)
        if (strcmp(c->names[i], norm) == 0)
            return 0;
    char **names = realloc(c->names, (c->n_names + 1) * sizeof(*names));
    if (names == NULL)
        return -1;
    c->names = names;
    if ((c->names[c->n_names] = strdup(norm)) == NULL)
        return -1;
    c->n_names++;
    return 0;
}

/* The names a certificate answers for when the config lists none: its
 * subjectAltName dNSNames, or its CN when it has none (old certificates). */
static int tls__cert_names_from_crt(tls_cert *c)
{
    const mbedtls_x509_crt *crt = &c->chain;
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s != NULL; s = s->next) {
        if (s->buf.p != NULL &&
            s->buf.tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME) &&
            tls__cert_add_name(c, s->buf.p, s->buf.len) != 0)
            return -1;
    }
    if (c->n_names > 0)
        return 0;
    for (const mbedtls_x509_name *n = &crt->subject; n != NULL; n = n->next) {
        if (n->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            return tls__cert_add_name(c, n->val.p, n->val.len);
    }
    return 0;
}

/* ecp_mul_comb caches the precomputed multiples of the generator in the
 * group on first use (grp->T), unlocked; two workers signing with one
 * key, or verifying against one CA, could race on it and free a table the
 * other is reading. One multiplication by G now, while the server is still
 * private to this thread, fills the cache: afterwards it is only read.
 * A throwaway verification does it for private and public keys alike; it
 * fails, by design, after the multiplication. */
static void tls__ec_warm_up(mbedtls_pk_context *pk)
{
    if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECKEY && mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECDSA)
        return;
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(*pk);
    mbedtls_mpi r, s;
    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    unsigned char hash[32];
    memset(hash, 0x5a, sizeof(hash)); /* non-zero: a zero scalar skips the multiplication */
    if (mbedtls_mpi_lset(&r, 1) == 0 && mbedtls_mpi_lset(&s, 1) == 0)
        (void)mbedtls_ecdsa_verify(&ec->grp, hash, sizeof(hash), &ec->Q, &r, &s);
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
}

static char *tls__mbedtls_error(const char *what, const char *path, int r)
{
    char msg[128];
    mbedtls_strerror(r, msg, sizeof(msg));
    return tls__strdupf("%s %s: %s", what, path, msg);
}

static int tls__cert_load(tls_cert *c, const tern_cert_conf *cc, char **error_r)
{
    mbedtls_x509_crt_init(&c->chain);
    mbedtls_pk_init(&c->key);
    c->is_default = cc->is_default;
    const char *label = cc->name != NULL ? cc->name : cc->cert;
    if (cc->cert == NULL || cc->key == NULL) {
        *error_r = tls__strdupf("tls.certificates.%s: cert and key are required", label);
        return -1;
    }
    int r = mbedtls_x509_crt_parse_file(&c->chain, cc->cert);
    if (r != 0) {
        /* >0: some certificates in the file did not parse. Serving a chain
         * with a hole in it fails at clients, so refuse it here. */
        *error_r = r > 0 ? tls__strdupf("certificate %s: %d certificate(s) failed to parse", cc->cert, r)
                         : tls__mbedtls_error("certificate", cc->cert, r);
        return -1;
    }
    if ((r = mbedtls_pk_parse_keyfile(&c->key, cc->key, NULL)) != 0) {
        *error_r = tls__mbedtls_error("key", cc->key, r);
        return -1;
    }
    if ((r = mbedtls_pk_check_pair(&c->chain.pk, &c->key)) != 0) {
        *error_r = tls__strdupf("key %s does not match certificate %s", cc->key, cc->cert);
        return -1;
    }
    tls__ec_warm_up(&c->key);
    if (cc->n_subjects > 0) {
        for (size_t i = 0; i < cc->n_subjects; i++)
            if (cc->subjects[i] != NULL &&
                tls__cert_add_name(c, (const unsigned char *)cc->subjects[i], strlen(cc->subjects[i])) != 0)
                goto nomem;
    } else if (tls__cert_names_from_crt(c) != 0) {
        goto nomem;
    }
    return 0;
nomem:
    *error_r = tls__strdupf("out of memory");
    return -1;
}

static bool tls__cert_has(const tls_cert *c, const char *name)
{
    for (size_t i = 0; i < c->n_names; i++)
        if (strcmp(c->names[i], name) == 0)
            return true;
    return false;
}

/* Exact name first; then, walking up one label at a time, a wildcard for
 * the immediate parent ("*.example.org" covers one label, RFC 6125 6.4.3)
 * or a certificate whose subject is the parent domain itself. The closest
 * parent wins. `name` is normalised. */
static tls_cert *tls__lookup(const tern_tls_server *s, const char *name)
{
    for (size_t i = 0; i < s->n_certs; i++)
        if (tls__cert_has(&s->certs[i], name))
            return &s->certs[i];
    char wild[TLS_NAME_MAX + 3];
    bool immediate = true;
    for (const char *dot = strchr(name, '.'); dot != NULL && dot[1] != '\0';
         dot = strchr(dot + 1, '.')) {
        const char *parent = dot + 1;
        snprintf(wild, sizeof(wild), "*.%s", parent);
        for (size_t i = 0; i < s->n_certs; i++) {
            if ((immediate && tls__cert_has(&s->certs[i], wild)) || tls__cert_has(&s->certs[i], parent))
                return &s->certs[i];
        }
        immediate = false;
    }
    return NULL;
}

/* Called by mbedTLS while parsing the ClientHello. A name matching no
 * certificate is not an error: the listener's own certificate (the
 * fallback) is used, as most servers do, since senders rarely verify. */
static int tls__sni_cb(void *p, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    tern_tls_server *s = p;
    tern_tls_conn *c = TLS_CONN_OF(ssl);
    char norm[TLS_NAME_MAX + 1];
    if (!tls__norm_name(name, len, false, norm))
        return 0;
    memcpy(c->sni, norm, strlen(norm) + 1);
    c->has_sni = true;
    tls_cert *cert = tls__lookup(s, norm);
    if (cert == NULL || cert == s->fallback)
        return 0;
    return mbedtls_ssl_set_hs_own_cert(ssl, &cert->chain, &cert->key);
}

/* ---- the server ---- */

static void tls__server_destroy(tern_tls_server *s)
{
    for (size_t i = 0; i < s->n_listeners; i++) {
        tls_listener *l = &s->listeners[i];
        mbedtls_ssl_config_free(&l->conf);
        mbedtls_x509_crt_free(&l->ca);
        if (l->has_ticket)
            mbedtls_ssl_ticket_free(&l->ticket);
    }
    free(s->listeners);
    for (size_t i = 0; i < s->n_certs; i++)
        tls__cert_free(&s->certs[i]);
    free(s->certs);
    free(s->ciphersuites);
    mbedtls_ctr_drbg_free(&s->drbg);
    mbedtls_entropy_free(&s->entropy);
    free(s);
}

static int tls__listener_setup(tern_tls_server *s, tls_listener *l, const tern_listener_conf *lc,
                               char **error_r)
{
    mbedtls_ssl_config *conf = &l->conf;
    const char *name = lc->name != NULL ? lc->name : "?";
    int r = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0)
        goto fail;
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &s->drbg);
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    if (s->ciphersuites != NULL)
        mbedtls_ssl_conf_ciphersuites(conf, s->ciphersuites);
    /* Client-initiated renegotiation only costs the server CPU. */
    mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    if ((r = mbedtls_ssl_conf_own_cert(conf, &s->fallback->chain, &s->fallback->key)) != 0)
        goto fail;
    mbedtls_ssl_conf_sni(conf, tls__sni_cb, s);

    l->authmode = MBEDTLS_SSL_VERIFY_NONE;
    if (lc->client_cert != TERN_CLIENT_CERT_NONE) {
        if (lc->client_ca == NULL) {
            *error_r = tls__strdupf("listeners.%s: client_cert needs client_ca", name);
            return -1;
        }
        l->has_ca = true;
        r = mbedtls_x509_crt_parse_file(&l->ca, lc->client_ca);
        if (r != 0) {
            *error_r = r > 0 ? tls__strdupf("listeners.%s: client_ca %s: %d certificate(s) failed to parse",
                                            name, lc->client_ca, r)
                             : tls__mbedtls_error("client_ca", lc->client_ca, r);
            return -1;
        }
        for (mbedtls_x509_crt *ca = &l->ca; ca != NULL; ca = ca->next)
            tls__ec_warm_up(&ca->pk);
        l->authmode = lc->client_cert == TERN_CLIENT_CERT_REQUIRED ? MBEDTLS_SSL_VERIFY_REQUIRED
                                                                   : MBEDTLS_SSL_VERIFY_OPTIONAL;
        mbedtls_ssl_conf_ca_chain(conf, &l->ca, NULL);
    }
    mbedtls_ssl_conf_authmode(conf, l->authmode);

    mbedtls_ssl_ticket_init(&l->ticket);
    l->has_ticket = true;
    if ((r = mbedtls_ssl_ticket_setup(&l->ticket, mbedtls_ctr_drbg_random, &s->drbg,
                                      MBEDTLS_CIPHER_AES_256_GCM, TLS_TICKET_LIFETIME_S)) != 0)
        goto fail;
    mbedtls_ssl_conf_session_tickets_cb(conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
                                        &l->ticket);
    l->enabled = true;
    return 0;
fail:;
    char msg[128];
    mbedtls_strerror(r, msg, sizeof(msg));
    *error_r = tls__strdupf("listeners.%s: TLS setup: %s", name, msg);
    return -1;
}

tern_tls_server *tern_tls_server_new(const tern_config *cfg, char **error_r)
{
    char *dummy = NULL;
    if (error_r == NULL)
        error_r = &dummy;
    *error_r = NULL;
    tern_tls_server *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *error_r = tls__strdupf("out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    mbedtls_entropy_init(&s->entropy);
    mbedtls_ctr_drbg_init(&s->drbg);
    static const unsigned char pers[] = "tern-tls-server";
    int r = mbedtls_ctr_drbg_seed(&s->drbg, mbedtls_entropy_func, &s->entropy, pers, sizeof(pers) - 1);
    if (r != 0) {
        char msg[128];
        mbedtls_strerror(r, msg, sizeof(msg));
        *error_r = tls__strdupf("TLS random generator: %s", msg);
        goto fail;
    }

    const tern_tls_conf *tc = &cfg->tls;
    if (tc->cipher_suites != NULL) {
        size_t n = 0;
        while (tc->cipher_suites[n] != 0)
            n++;
        if (n == 0) {
            *error_r = tls__strdupf("tls: every cipher suite is disabled");
            goto fail;
        }
        if ((s->ciphersuites = malloc((n + 1) * sizeof(int))) == NULL)
            goto nomem;
        memcpy(s->ciphersuites, tc->cipher_suites, (n + 1) * sizeof(int));
    }

    /* One slot more than configured, for the self-signed certificate. */
    if ((s->certs = calloc(tc->n_certs + 1, sizeof(*s->certs))) == NULL)
        goto nomem;
    for (size_t i = 0; i < tc->n_certs; i++) {
        s->n_certs++;
        if (tls__cert_load(&s->certs[i], &tc->certs[i], error_r) != 0)
            goto fail;
        if (s->certs[i].is_default && s->fallback == NULL)
            s->fallback = &s->certs[i];
    }
    if (s->fallback == NULL && s->n_certs == 1)
        s->fallback = &s->certs[0];
    if (s->fallback == NULL) {
        const char *reason = s->n_certs == 0 ? "no_certificates" : "no_default_certificate";
        tls_cert *ss = &s->certs[s->n_certs];
        mbedtls_x509_crt_init(&ss->chain);
        mbedtls_pk_init(&ss->key);
        s->n_certs++;
        if (tls__selfsigned(cfg->server.hostname, mbedtls_ctr_drbg_random, &s->drbg, &ss->chain,
                            &ss->key, error_r) != 0)
            goto fail;
        tls__ec_warm_up(&ss->key);
        /* No names: it must never win a lookup over a configured certificate. */
        s->fallback = ss;
        char q[300];
        TLOG_WARN("tls", "event=selfsigned_cert hostname=%s reason=%s",
                  tern_log_q(q, sizeof(q), cfg->server.hostname ? cfg->server.hostname : "localhost"),
                  reason);
    }
    if (!tc->ignore_client_order)
        TLOG_DEBUG("tls", "event=cipher_order order=server reason=mbedtls_2.28_has_no_client_order");

    if (cfg->n_listeners > 0 &&
        (s->listeners = calloc(cfg->n_listeners, sizeof(*s->listeners))) == NULL)
        goto nomem;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        tls_listener *l = &s->listeners[i];
        mbedtls_ssl_config_init(&l->conf);
        mbedtls_x509_crt_init(&l->ca);
        s->n_listeners++;
        if (cfg->listeners[i].tls == TERN_TLS_NONE)
            continue;
        if (tls__listener_setup(s, l, &cfg->listeners[i], error_r) != 0)
            goto fail;
    }
    return s;

nomem:
    free(*error_r);
    *error_r = tls__strdupf("out of memory");
fail:
    tls__server_destroy(s);
    if (error_r == &dummy)
        free(dummy);
    return NULL;
}

tern_tls_server *tern_tls_server_ref(tern_tls_server *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void tern_tls_server_unref(tern_tls_server *s)
{
    if (s == NULL)
        return;
    /* acq_rel: the last thread to drop must see every other thread's
     * writes to the shared mbedTLS state before freeing it. */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
        tls__server_destroy(s);
}

/* ---- connections ---- */

static int tls__bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    tern_tls_conn *c = ctx;
    if (tern_buf_append(&c->out, buf, len) != 0)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    return (int)len;
}

static int tls__bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    tern_tls_conn *c = ctx;
    size_t avail = c->in.len - c->in_off;
    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < avail ? len : avail;
    if (n > INT32_MAX)
        n = INT32_MAX;
    memcpy(buf, c->in.data + c->in_off, n);
    c->in_off += n;
    if (c->in_off == c->in.len)
        c->in.len = c->in_off = 0;
    return (int)n;
}

tern_tls_conn *tern_tls_conn_new(tern_tls_server *s, size_t listener)
{
    if (s == NULL || listener >= s->n_listeners || !s->listeners[listener].enabled)
        return NULL;
    tern_tls_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    mbedtls_ssl_init(&c->ssl);
    if (mbedtls_ssl_setup(&c->ssl, &s->listeners[listener].conf) != 0) {
        mbedtls_ssl_free(&c->ssl);
        free(c);
        return NULL;
    }
    c->server = tern_tls_server_ref(s);
    c->listener = &s->listeners[listener];
    tern_buf_init(&c->in, TLS_IN_LIMIT);
    /* No limit on output: tern_tls_conn_write promises to take all it is
     * given, so the bound is the caller's own backpressure on what it
     * writes (plus one record of overhead per 16 KiB). */
    tern_buf_init(&c->out, 0);
    mbedtls_ssl_set_bio(&c->ssl, c, tls__bio_send, tls__bio_recv, NULL);
    return c;
}

void tern_tls_conn_free(tern_tls_conn *c)
{
    if (c == NULL)
        return;
    mbedtls_ssl_free(&c->ssl);
    tern_buf_free(&c->in);
    tern_buf_free(&c->out);
    free(c->peer_subject);
    free(c->dane); /* the records and their data are one block */
    free(c->dane_alt_name);
    if (c->server)
        tern_tls_server_unref(c->server);
    free(c);
}

/* ---- the client side ---- */

static int tls__client_conf(tern_tls_client *cl, mbedtls_ssl_config *conf, int authmode)
{
    mbedtls_ssl_config_init(conf);
    int r = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                        MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0)
        return r;
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &cl->drbg);
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(conf, authmode);
    if (cl->have_ca)
        mbedtls_ssl_conf_ca_chain(conf, &cl->ca, NULL);
    return 0;
}

tern_tls_client *tern_tls_client_new(const char *ca_file, char **error_r)
{
    char *dummy = NULL;
    if (error_r == NULL)
        error_r = &dummy;
    *error_r = NULL;
    tern_tls_client *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        *error_r = tls__strdupf("out of memory");
        return NULL;
    }
    mbedtls_entropy_init(&cl->entropy);
    mbedtls_ctr_drbg_init(&cl->drbg);
    mbedtls_x509_crt_init(&cl->ca);
    static const unsigned char pers[] = "tern-tls-client";
    int r = mbedtls_ctr_drbg_seed(&cl->drbg, mbedtls_entropy_func, &cl->entropy, pers,
                                  sizeof(pers) - 1);
    if (r != 0) {
        *error_r = tls__mbedtls_error("TLS random generator", "", r);
        tern_tls_client_free(cl);
        return NULL;
    }
    const char *path = ca_file ? ca_file : "/etc/ssl/certs/ca-certificates.crt";
    r = mbedtls_x509_crt_parse_file(&cl->ca, path);
    if (r < 0 && ca_file != NULL) {
        *error_r = tls__mbedtls_error("CA file", path, r);
        tern_tls_client_free(cl);
        return NULL;
    }
    /* r > 0: some certificates of the bundle did not parse; the rest do. */
    cl->have_ca = r >= 0 && cl->ca.version != 0;
    if (tls__client_conf(cl, &cl->opportunistic, MBEDTLS_SSL_VERIFY_OPTIONAL) != 0 ||
        tls__client_conf(cl, &cl->strict, MBEDTLS_SSL_VERIFY_REQUIRED) != 0) {
        *error_r = tls__strdupf("TLS client configuration failed");
        tern_tls_client_free(cl);
        return NULL;
    }
    return cl;
}

void tern_tls_client_free(tern_tls_client *cl)
{
    if (cl == NULL)
        return;
    mbedtls_ssl_config_free(&cl->opportunistic);
    mbedtls_ssl_config_free(&cl->strict);
    mbedtls_x509_crt_free(&cl->ca);
    mbedtls_ctr_drbg_free(&cl->drbg);
    mbedtls_entropy_free(&cl->entropy);
    free(cl);
}

tern_tls_conn *tern_tls_conn_new_client(tern_tls_client *cl, const char *server_name,
                                        bool require_verified)
{
    if (cl == NULL)
        return NULL;
    tern_tls_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    mbedtls_ssl_init(&c->ssl);
    if (mbedtls_ssl_setup(&c->ssl, require_verified ? &cl->strict : &cl->opportunistic) != 0 ||
        (server_name && mbedtls_ssl_set_hostname(&c->ssl, server_name) != 0)) {
        mbedtls_ssl_free(&c->ssl);
        free(c);
        return NULL;
    }
    c->client = true;
    c->client_strict = require_verified;
    tern_buf_init(&c->in, TLS_IN_LIMIT);
    tern_buf_init(&c->out, 0);
    mbedtls_ssl_set_bio(&c->ssl, c, tls__bio_send, tls__bio_recv, NULL);
    return c;
}

static int tls__fail(tern_tls_conn *c, const char *what, int r)
{
    if (c->dane_err[0]) {
        /* The verify callback said what it refused; the library's code
         * for it ("fatal error") says less. */
        snprintf(c->err, sizeof(c->err), "%s", c->dane_err);
        c->failed = true;
        return TERN_TLS_ERROR;
    }
    char msg[128];
    mbedtls_strerror(r, msg, sizeof(msg));
    snprintf(c->err, sizeof(c->err), "%s: %s", what, msg);
    c->failed = true;
    return TERN_TLS_ERROR;
}

static int tls__fail_msg(tern_tls_conn *c, const char *msg)
{
    snprintf(c->err, sizeof(c->err), "%s", msg);
    c->failed = true;
    return TERN_TLS_ERROR;
}

size_t tern_tls_conn_feed_room(const tern_tls_conn *c)
{
    size_t queued = c->in.len - c->in_off;
    return c->failed || queued >= TLS_IN_LIMIT ? 0 : TLS_IN_LIMIT - queued;
}

int tern_tls_conn_feed(tern_tls_conn *c, const uint8_t *data, size_t len)
{
    if (c->failed)
        return TERN_TLS_ERROR;
    if (len > tern_tls_conn_feed_room(c))
        return tls__fail_msg(c, "input: peer sent more than we buffer unread");
    if (c->in_off > 0) {
        tern_buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    if (tern_buf_append(&c->in, data, len) != 0)
        return tls__fail_msg(c, "input: out of memory");
    return 0;
}

/* Called where the connection goes idle waiting for the peer: an idle
 * session should not keep a bulk transfer's input buffer, while small
 * command traffic keeps its small one and does not churn malloc. */
static int tls__again(tern_tls_conn *c)
{
    if (c->in.len == c->in_off)
        tern_buf_shrink(&c->in, 4096);
    return TERN_TLS_AGAIN;
}

static void tls__established(tern_tls_conn *c)
{
    c->established = true;
    c->version = mbedtls_ssl_get_version(&c->ssl);
    const char *suite = mbedtls_ssl_get_ciphersuite(&c->ssl);
    snprintf(c->cipher, sizeof(c->cipher), "%s", suite != NULL ? suite : "");
    for (char *p = c->cipher; *p; p++)
        if (*p == '-')
            *p = '_';
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&c->ssl);
    if (peer != NULL) {
        char dn[1024];
        if (mbedtls_x509_dn_gets(dn, sizeof(dn), &peer->subject) >= 0)
            c->peer_subject = strdup(dn);
        c->peer_verified = (c->client || c->listener->authmode != MBEDTLS_SSL_VERIFY_NONE) &&
                           mbedtls_ssl_get_verify_result(&c->ssl) == 0;
    }
}

int tern_tls_conn_handshake(tern_tls_conn *c)
{
    if (c->failed)
        return TERN_TLS_ERROR;
    if (c->established)
        return TERN_TLS_OK;
    /* mbedtls_ssl_handshake() is this loop over the steps; doing it here
     * lets us note whether the session was resumed and the extended master
     * secret negotiated while mbedTLS still holds that state. */
    int r = 0;
    while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        if (c->ssl.handshake) {
            c->hs_resumed = c->ssl.handshake->resume != 0;
            c->hs_ems = c->ssl.handshake->extended_ms == MBEDTLS_SSL_EXTENDED_MS_ENABLED;
        }
        if ((r = mbedtls_ssl_handshake_step(&c->ssl)) != 0)
            break;
    }
    if (r == 0) {
        tls__established(c);
        return TERN_TLS_OK;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
        return tls__again(c);
    return tls__fail(c, "handshake", r);
}

size_t tern_tls_conn_tls_unique(const tern_tls_conn *c, uint8_t *out, size_t cap)
{
#if defined(MBEDTLS_SSL_RENEGOTIATION)
    size_t n = c->ssl.verify_data_len;
    if (!c->established || !c->hs_ems || n == 0 || n > cap || n > sizeof(c->ssl.own_verify_data))
        return 0;
    /* RFC 5929 3.1: the first Finished message of the handshake: the
     * client's in a full handshake, the server's in a resumed one. */
    bool ours = c->client ? !c->hs_resumed : c->hs_resumed;
    memcpy(out, ours ? c->ssl.own_verify_data : c->ssl.peer_verify_data, n);
    return n;
#else
    (void)c;
    (void)out;
    (void)cap;
    return 0;
#endif
}

bool tern_tls_conn_established(const tern_tls_conn *c)
{
    return c->established;
}

int tern_tls_conn_read(tern_tls_conn *c, uint8_t *buf, size_t len, size_t *nread_r)
{
    *nread_r = 0;
    if (c->failed)
        return TERN_TLS_ERROR;
    if (c->closed)
        return TERN_TLS_CLOSED;
    if (!c->established) {
        int h = tern_tls_conn_handshake(c);
        if (h != TERN_TLS_OK)
            return h;
    }
    if (len == 0)
        return TERN_TLS_AGAIN;
    for (;;) {
        int r = mbedtls_ssl_read(&c->ssl, buf, len);
        if (r > 0) {
            *nread_r = (size_t)r;
            return TERN_TLS_OK;
        }
        switch (r) {
        case 0:
            /* Our bio never reports EOF, so 0 is an empty record. */
            if (c->in.len - c->in_off == 0)
                return tls__again(c);
            continue;
        case MBEDTLS_ERR_SSL_WANT_READ:
        case MBEDTLS_ERR_SSL_WANT_WRITE:
            return tls__again(c);
        case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
            c->closed = true;
            return TERN_TLS_CLOSED;
        default:
            return tls__fail(c, "read", r);
        }
    }
}

int tern_tls_conn_write(tern_tls_conn *c, const uint8_t *data, size_t len)
{
    if (c->failed)
        return TERN_TLS_ERROR;
    if (!c->established)
        return tls__fail_msg(c, "write: handshake not complete");
    while (len > 0) {
        /* mbedtls_ssl_write takes at most one record's worth per call. */
        int r = mbedtls_ssl_write(&c->ssl, data, len);
        if (r <= 0)
            return tls__fail(c, "write", r == 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : r);
        data += r;
        len -= (size_t)r;
    }
    return TERN_TLS_OK;
}

void tern_tls_conn_close_notify(tern_tls_conn *c)
{
    if (c->failed || !c->established)
        return;
    (void)mbedtls_ssl_close_notify(&c->ssl);
}

tern_buf *tern_tls_conn_output(tern_tls_conn *c)
{
    return &c->out;
}

const char *tern_tls_conn_version(const tern_tls_conn *c)
{
    return c->established ? c->version : NULL;
}

const char *tern_tls_conn_cipher(const tern_tls_conn *c)
{
    return c->established ? c->cipher : NULL;
}

const char *tern_tls_conn_sni(const tern_tls_conn *c)
{
    return c->has_sni ? c->sni : NULL;
}

const char *tern_tls_conn_peer_subject(const tern_tls_conn *c)
{
    return c->peer_subject;
}

bool tern_tls_conn_peer_verified(const tern_tls_conn *c)
{
    return c->peer_verified;
}

const char *tern_tls_conn_error(const tern_tls_conn *c)
{
    return c->err[0] != '\0' ? c->err : NULL;
}

/* ---- DANE (RFC 7672) ---- */

static bool tls__dane_ee(const tern_tls_conn *c, const mbedtls_x509_crt *leaf)
{
    for (size_t i = 0; i < c->n_dane; i++)
        if (c->dane[i].usage == TERN_TLSA_DANE_EE &&
            tern_tlsa_match_der(leaf->raw.p, leaf->raw.len, &c->dane[i]) == 1)
            return true;
    return false;
}

/* DANE-TA: a certificate the peer sent (or, for "2 0 0", the record
 * itself) matches a record and the chain from the leaf verifies up to it
 * for the name: RFC 7672 3.1.2 keeps the name check for this usage. */
static bool tls__dane_ta(const tern_tls_conn *c, mbedtls_x509_crt *leaf, const char *name)
{
    for (size_t i = 0; i < c->n_dane; i++) {
        const tern_tlsa *t = &c->dane[i];
        if (t->usage != TERN_TLSA_DANE_TA)
            continue;
        mbedtls_x509_crt ta;
        mbedtls_x509_crt_init(&ta);
        bool have = false;
        for (const mbedtls_x509_crt *p = leaf->next; p && p->version != 0 && !have; p = p->next)
            if (tern_tlsa_match_der(p->raw.p, p->raw.len, t) == 1)
                have = mbedtls_x509_crt_parse_der(&ta, p->raw.p, p->raw.len) == 0;
        if (!have && t->selector == TERN_TLSA_SEL_CERT && t->mtype == TERN_TLSA_MATCH_FULL)
            have = mbedtls_x509_crt_parse_der(&ta, t->data, t->len) == 0;
        uint32_t flags = 0;
        bool ok = have && mbedtls_x509_crt_verify(leaf, &ta, NULL, name, &flags, NULL, NULL) == 0 &&
                  flags == 0;
        mbedtls_x509_crt_free(&ta);
        if (ok)
            return true;
    }
    return false;
}

/* mbedTLS calls this for each certificate of the chain it built, the
 * top first and the leaf (depth 0) last, with what PKIX found wrong.
 * Under DANE the PKIX verdict does not count (the trust comes from
 * DNSSEC): every depth is cleared and the leaf call decides, failing the
 * handshake with an error the opportunistic mode cannot ignore. */
static int tls__dane_verify(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    tern_tls_conn *c = arg;
    *flags = 0;
    if (depth != 0)
        return 0;
    const char *name = c->ssl.hostname;
    if (tls__dane_ee(c, crt) || tls__dane_ta(c, crt, name) ||
        (c->dane_alt_name && tls__dane_ta(c, crt, c->dane_alt_name))) {
        c->dane_verified = true;
        return 0;
    }
    snprintf(c->dane_err, sizeof(c->dane_err),
             "DANE: the certificate matches none of the %zu usable TLSA records", c->n_dane);
    return MBEDTLS_ERR_X509_FATAL_ERROR;
}

tern_tls_conn *tern_tls_conn_new_client_dane(tern_tls_client *cl, const char *server_name,
                                             const char *alt_name, const tern_tlsa *tlsa,
                                             size_t n)
{
    size_t usable = tern_tlsa_count_usable(tlsa, n), bytes = 0;
    if (usable == 0)
        return tern_tls_conn_new_client(cl, server_name, false);
    for (size_t i = 0; i < n; i++)
        if (tern_tlsa_usable(&tlsa[i]))
            bytes += tlsa[i].len;
    tern_tls_conn *c = tern_tls_conn_new_client(cl, server_name, false);
    if (c == NULL)
        return NULL;
    c->dane = malloc(usable * sizeof(*c->dane) + bytes);
    if (c->dane == NULL) {
        tern_tls_conn_free(c);
        return NULL;
    }
    if (alt_name && (c->dane_alt_name = strdup(alt_name)) == NULL) {
        tern_tls_conn_free(c);
        return NULL;
    }
    uint8_t *data = (uint8_t *)(c->dane + usable);
    for (size_t i = 0; i < n; i++) {
        if (!tern_tlsa_usable(&tlsa[i]))
            continue;
        tern_tlsa *t = &c->dane[c->n_dane++];
        *t = tlsa[i];
        memcpy(data, tlsa[i].data, tlsa[i].len);
        t->data = data;
        data += tlsa[i].len;
    }
    /* The opportunistic config (verify optional) with our callback: a
     * PKIX failure alone passes, a DANE mismatch is fatal (see above). */
    mbedtls_ssl_set_verify(&c->ssl, tls__dane_verify, c);
    return c;
}

bool tern_tls_conn_dane_verified(const tern_tls_conn *c)
{
    return c->dane_verified;
}
