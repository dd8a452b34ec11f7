/* Unit tests for protocols/common/tls.h: real TLS 1.2 handshakes in memory
 * between the server side under test and a small mbedTLS client written
 * here, bytes pumped by hand. Certificates come from tests/data/tls/
 * (made by gen.sh there). The config is filled in by hand so these tests
 * do not depend on the YAML loader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/oid.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/x509_crt.h>

#include "lib/log.h"
#include "protocols/common/tls.h"

static mbedtls_entropy_context g_entropy;
static mbedtls_ctr_drbg_context g_drbg;

static const char *data_dir(void)
{
    const char *d = getenv("TERN_TEST_DATA");
    return d != NULL ? d : "tests/data";
}

static void tls_path(char *out, size_t size, const char *file)
{
    snprintf(out, size, "%s/tls/%s", data_dir(), file);
}

/* ---- a config built by hand ---- */

enum { L_STARTTLS = 0, L_PLAIN = 1, L_MTLS = 2, N_LISTENERS = 3 };

typedef struct tcfg {
    tern_config cfg;
    tern_listener_conf listeners[N_LISTENERS];
    tern_cert_conf certs[4];
    char paths[4][2][512];
    char ca_path[512];
    int suites[8];
} tcfg;

static void tcfg_init(tcfg *t)
{
    memset(t, 0, sizeof(*t));
    t->cfg.server.hostname = "mx.tern.test";
    t->listeners[L_STARTTLS] = (tern_listener_conf){
        .name = "smtp", .protocol = TERN_PROTO_SMTP, .port = 25, .tls = TERN_TLS_STARTTLS};
    t->listeners[L_PLAIN] = (tern_listener_conf){
        .name = "plain", .protocol = TERN_PROTO_SMTP, .port = 2525, .tls = TERN_TLS_NONE};
    tls_path(t->ca_path, sizeof(t->ca_path), "ca.crt");
    t->listeners[L_MTLS] = (tern_listener_conf){.name = "submissions",
                                                .protocol = TERN_PROTO_SUBMISSION,
                                                .port = 465,
                                                .tls = TERN_TLS_IMPLICIT,
                                                .client_ca = t->ca_path,
                                                .client_cert = TERN_CLIENT_CERT_OPTIONAL};
    t->cfg.listeners = t->listeners;
    t->cfg.n_listeners = N_LISTENERS;
    t->cfg.tls.certs = t->certs;
    t->cfg.tls.min_version = 12;
}

static tern_cert_conf *tcfg_add_cert(tcfg *t, const char *base, bool is_default)
{
    size_t i = t->cfg.tls.n_certs++;
    char file[64];
    snprintf(file, sizeof(file), "%s.crt", base);
    tls_path(t->paths[i][0], sizeof(t->paths[i][0]), file);
    snprintf(file, sizeof(file), "%s.key", base);
    tls_path(t->paths[i][1], sizeof(t->paths[i][1]), file);
    t->certs[i] = (tern_cert_conf){.name = (char *)base,
                                   .cert = t->paths[i][0],
                                   .key = t->paths[i][1],
                                   .is_default = is_default};
    return &t->certs[i];
}

static tern_tls_server *tcfg_server(tcfg *t)
{
    char *err = NULL;
    tern_tls_server *s = tern_tls_server_new(&t->cfg, &err);
    if (s == NULL)
        fail_msg("tern_tls_server_new: %s", err ? err : "(no message)");
    assert_null(err);
    return s;
}

/* ---- the test client ---- */

typedef struct tclient {
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config conf;
    mbedtls_x509_crt ca;
    mbedtls_x509_crt own;
    mbedtls_pk_context key;
    tern_buf in; /* from the server */
    size_t in_off;
    tern_buf out; /* to the server */
    int suites[4];
} tclient;

static int client_send(void *ctx, const unsigned char *buf, size_t len)
{
    tclient *cl = ctx;
    assert_int_equal(tern_buf_append(&cl->out, buf, len), 0);
    return (int)len;
}

static int client_recv(void *ctx, unsigned char *buf, size_t len)
{
    tclient *cl = ctx;
    size_t avail = cl->in.len - cl->in_off;
    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < avail ? len : avail;
    memcpy(buf, cl->in.data + cl->in_off, n);
    cl->in_off += n;
    if (cl->in_off == cl->in.len)
        cl->in.len = cl->in_off = 0;
    return (int)n;
}

/* sni: NULL sends none. cert: base name of a client certificate or NULL.
 * suite: 0 for mbedTLS's default list, else the only suite offered. */
static void client_init(tclient *cl, const char *sni, const char *cert, int suite)
{
    memset(cl, 0, sizeof(*cl));
    mbedtls_ssl_init(&cl->ssl);
    mbedtls_ssl_config_init(&cl->conf);
    mbedtls_x509_crt_init(&cl->ca);
    mbedtls_x509_crt_init(&cl->own);
    mbedtls_pk_init(&cl->key);
    tern_buf_init(&cl->in, 0);
    tern_buf_init(&cl->out, 0);
    assert_int_equal(mbedtls_ssl_config_defaults(&cl->conf, MBEDTLS_SSL_IS_CLIENT,
                                                 MBEDTLS_SSL_TRANSPORT_STREAM,
                                                 MBEDTLS_SSL_PRESET_DEFAULT),
                     0);
    mbedtls_ssl_conf_rng(&cl->conf, mbedtls_ctr_drbg_random, &g_drbg);
    mbedtls_ssl_conf_min_version(&cl->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    char path[600];
    tls_path(path, sizeof(path), "ca.crt");
    assert_int_equal(mbedtls_x509_crt_parse_file(&cl->ca, path), 0);
    mbedtls_ssl_conf_ca_chain(&cl->conf, &cl->ca, NULL);
    /* Optional: the handshake goes on with the self-signed certificate,
     * and the verify result tells us what the client thought of it. */
    mbedtls_ssl_conf_authmode(&cl->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
    if (suite != 0) {
        cl->suites[0] = suite;
        mbedtls_ssl_conf_ciphersuites(&cl->conf, cl->suites);
    }
    if (cert != NULL) {
        char file[64];
        snprintf(file, sizeof(file), "%s.crt", cert);
        tls_path(path, sizeof(path), file);
        assert_int_equal(mbedtls_x509_crt_parse_file(&cl->own, path), 0);
        snprintf(file, sizeof(file), "%s.key", cert);
        tls_path(path, sizeof(path), file);
        assert_int_equal(mbedtls_pk_parse_keyfile(&cl->key, path, NULL), 0);
        assert_int_equal(mbedtls_ssl_conf_own_cert(&cl->conf, &cl->own, &cl->key), 0);
    }
    assert_int_equal(mbedtls_ssl_setup(&cl->ssl, &cl->conf), 0);
    if (sni != NULL)
        assert_int_equal(mbedtls_ssl_set_hostname(&cl->ssl, sni), 0);
    mbedtls_ssl_set_bio(&cl->ssl, cl, client_send, client_recv, NULL);
}

static void client_free(tclient *cl)
{
    mbedtls_ssl_free(&cl->ssl);
    mbedtls_ssl_config_free(&cl->conf);
    mbedtls_x509_crt_free(&cl->ca);
    mbedtls_x509_crt_free(&cl->own);
    mbedtls_pk_free(&cl->key);
    tern_buf_free(&cl->in);
    tern_buf_free(&cl->out);
}

/* CN of the certificate the server presented. */
static const char *client_peer_cn(tclient *cl, char *buf, size_t size)
{
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&cl->ssl);
    assert_non_null(peer);
    for (const mbedtls_x509_name *n = &peer->subject; n != NULL; n = n->next) {
        if (n->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0) {
            snprintf(buf, size, "%.*s", (int)n->val.len, (const char *)n->val.p);
            return buf;
        }
    }
    fail_msg("peer certificate without CN");
    return NULL;
}

/* ---- pumping bytes between the two ---- */

typedef struct pair {
    tclient cl;
    tern_tls_conn *sc;
    tern_buf srv_plain; /* what the server decrypted */
    int srv_status;     /* last non-OK result from the server side */
    bool srv_done;
    size_t chunk;        /* bytes per feed: 1 tests byte-at-a-time input */
    size_t to_client_n;  /* ciphertext bytes the server produced */
} pair;

static void pair_init(pair *p, tern_tls_server *s, size_t listener, const char *sni,
                      const char *cert, int suite)
{
    memset(p, 0, sizeof(*p));
    client_init(&p->cl, sni, cert, suite);
    p->sc = tern_tls_conn_new(s, listener);
    assert_non_null(p->sc);
    tern_buf_init(&p->srv_plain, 0);
    p->chunk = 16384;
}

static void pair_free(pair *p)
{
    tern_tls_conn_free(p->sc);
    client_free(&p->cl);
    tern_buf_free(&p->srv_plain);
}

static void server_step(pair *p)
{
    if (!p->srv_done) {
        int r = tern_tls_conn_handshake(p->sc);
        if (r != TERN_TLS_OK) {
            p->srv_status = r;
            return;
        }
        assert_true(tern_tls_conn_established(p->sc));
        p->srv_done = true;
    }
    for (;;) {
        uint8_t b[5000];
        size_t n = 0;
        int r = tern_tls_conn_read(p->sc, b, sizeof(b), &n);
        if (r != TERN_TLS_OK) {
            assert_int_equal(n, 0);
            p->srv_status = r;
            return;
        }
        assert_true(n > 0 && n <= sizeof(b));
        assert_int_equal(tern_buf_append(&p->srv_plain, b, n), 0);
    }
}

static void to_server(pair *p)
{
    while (p->cl.out.len > 0 && p->srv_status != TERN_TLS_ERROR) {
        size_t n = p->cl.out.len < p->chunk ? p->cl.out.len : p->chunk;
        size_t room = tern_tls_conn_feed_room(p->sc);
        /* The server drains everything it can after each feed, so it must
         * always have room for at least a record's worth. */
        assert_true(room >= 16384 + 2048 + 5);
        if (n > room)
            n = room;
        assert_int_equal(tern_tls_conn_feed(p->sc, p->cl.out.data, n), 0);
        tern_buf_consume(&p->cl.out, n);
        server_step(p);
    }
}

static void to_client(pair *p)
{
    tern_buf *o = tern_tls_conn_output(p->sc);
    p->to_client_n += o->len;
    assert_int_equal(tern_buf_append(&p->cl.in, o->data, o->len), 0);
    /* Consume in odd pieces, as a socket that takes partial writes would. */
    while (o->len > 0)
        tern_buf_consume(o, o->len > 777 ? 777 : o->len);
}

/* 0 when both sides completed; the client's mbedTLS error, or -1 when the
 * server side failed. */
static int pair_handshake(pair *p)
{
    for (int i = 0; i < 10000; i++) {
        int cr = mbedtls_ssl_handshake(&p->cl.ssl);
        to_server(p);
        to_client(p);
        if (cr == 0 && p->srv_done)
            return 0;
        if (p->srv_status == TERN_TLS_ERROR) {
            /* Deliver the server's alert so the client fails too. */
            (void)mbedtls_ssl_handshake(&p->cl.ssl);
            return -1;
        }
        if (cr != 0 && cr != MBEDTLS_ERR_SSL_WANT_READ) {
            to_server(p);
            return cr;
        }
    }
    fail_msg("handshake did not converge");
    return -2;
}

static void client_write_all(pair *p, const uint8_t *data, size_t len)
{
    while (len > 0) {
        int r = mbedtls_ssl_write(&p->cl.ssl, data, len);
        assert_true(r > 0);
        data += r;
        len -= (size_t)r;
        to_server(p);
    }
}

/* Reads exactly len bytes of plaintext the server sent. */
static void client_read_exact(pair *p, uint8_t *out, size_t len)
{
    size_t got = 0;
    while (got < len) {
        int r = mbedtls_ssl_read(&p->cl.ssl, out + got, len - got);
        if (r == MBEDTLS_ERR_SSL_WANT_READ)
            fail_msg("client wants more than the server sent (%zu of %zu)", got, len);
        assert_true(r > 0);
        got += (size_t)r;
    }
}

static void fill_pattern(uint8_t *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)((i * 31u + seed) ^ (i >> 8));
}

/* Both directions, sizes crossing record boundaries. */
static void exchange(pair *p, size_t n)
{
    uint8_t *up = malloc(n), *down = malloc(n), *got = malloc(n);
    assert_non_null(up);
    assert_non_null(down);
    assert_non_null(got);
    fill_pattern(up, n, 7);
    fill_pattern(down, n, 11);

    p->srv_plain.len = 0;
    client_write_all(p, up, n);
    assert_int_equal(p->srv_status, TERN_TLS_AGAIN);
    assert_int_equal(p->srv_plain.len, n);
    assert_memory_equal(p->srv_plain.data, up, n);

    assert_int_equal(tern_tls_conn_write(p->sc, down, n), TERN_TLS_OK);
    to_client(p);
    client_read_exact(p, got, n);
    assert_memory_equal(got, down, n);
    free(up);
    free(down);
    free(got);
}

/* Handshake with `sni` and return the CN the client was shown. */
static const char *cn_for(tern_tls_server *s, size_t listener, const char *sni, char *buf, size_t size)
{
    pair p;
    pair_init(&p, s, listener, sni, NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    client_peer_cn(&p.cl, buf, size);
    pair_free(&p);
    return buf;
}

/* ---- tests ---- */

static void test_handshake_and_data(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);

    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_false(tern_tls_conn_established(p.sc));
    assert_null(tern_tls_conn_version(p.sc));
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(mbedtls_ssl_get_verify_result(&p.cl.ssl), 0);
    assert_string_equal(tern_tls_conn_version(p.sc), "TLSv1.2");
    const char *cipher = tern_tls_conn_cipher(p.sc);
    assert_non_null(cipher);
    assert_true(strncmp(cipher, "TLS_", 4) == 0);
    assert_null(strchr(cipher, '-'));
    char expect[64];
    snprintf(expect, sizeof(expect), "%s", mbedtls_ssl_get_ciphersuite(&p.cl.ssl));
    for (char *c = expect; *c; c++)
        if (*c == '-')
            *c = '_';
    assert_string_equal(cipher, expect);
    assert_string_equal(tern_tls_conn_sni(p.sc), "mail.example.test");
    assert_null(tern_tls_conn_peer_subject(p.sc));
    assert_false(tern_tls_conn_peer_verified(p.sc));
    assert_null(tern_tls_conn_error(p.sc));

    exchange(&p, 1);
    exchange(&p, 100);
    exchange(&p, 16384);
    exchange(&p, 16385);
    exchange(&p, 200 * 1024 + 3);
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_sni_selection(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tcfg_add_cert(&t, "other", false);
    tcfg_add_cert(&t, "cnonly", false);
    tern_tls_server *s = tcfg_server(&t);
    char b[128];

    assert_string_equal(cn_for(s, L_STARTTLS, "mail.example.test", b, sizeof(b)), "mail.example.test");
    assert_string_equal(cn_for(s, L_STARTTLS, "MAIL.Example.TEST", b, sizeof(b)), "mail.example.test");
    /* The second subjectAltName. */
    assert_string_equal(cn_for(s, L_STARTTLS, "example.test", b, sizeof(b)), "mail.example.test");
    assert_string_equal(cn_for(s, L_STARTTLS, "other.example.org", b, sizeof(b)), "other.example.org");
    /* *.other.example.org covers one label, not two. */
    assert_string_equal(cn_for(s, L_STARTTLS, "x.other.example.org", b, sizeof(b)), "other.example.org");
    /* No subjectAltName: the CN names it. */
    assert_string_equal(cn_for(s, L_STARTTLS, "cnonly.example.net", b, sizeof(b)), "cnonly.example.net");
    /* Several certificates, no default: unknown names and no SNI get the
     * self-signed one. */
    assert_string_equal(cn_for(s, L_STARTTLS, "unknown.example.com", b, sizeof(b)), "mx.tern.test");
    assert_string_equal(cn_for(s, L_STARTTLS, NULL, b, sizeof(b)), "mx.tern.test");
    /* Same table on every TLS listener. */
    assert_string_equal(cn_for(s, L_MTLS, "other.example.org", b, sizeof(b)), "other.example.org");

    /* And the server reports what it was asked for. */
    pair p;
    pair_init(&p, s, L_STARTTLS, "Other.Example.Org", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_string_equal(tern_tls_conn_sni(p.sc), "other.example.org");
    pair_free(&p);
    pair_init(&p, s, L_STARTTLS, NULL, NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_null(tern_tls_conn_sni(p.sc));
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_sni_config_subjects(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    char *parent[] = {"example.org"};
    tern_cert_conf *o = tcfg_add_cert(&t, "other", false);
    o->subjects = parent;
    o->n_subjects = 1;
    char *wild[] = {"*.wild.test", "exact.test"};
    tern_cert_conf *c = tcfg_add_cert(&t, "cnonly", false);
    c->subjects = wild;
    c->n_subjects = 2;
    tern_tls_server *s = tcfg_server(&t);
    char b[128];

    /* Configured subjects replace the certificate's own names. */
    assert_string_equal(cn_for(s, L_STARTTLS, "other.example.org", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, "example.org", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, "mail.example.org", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, "a.b.example.org", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, "cnonly.example.net", b, sizeof(b)), "mx.tern.test");
    assert_string_equal(cn_for(s, L_STARTTLS, "exact.test", b, sizeof(b)), "cnonly.example.net");
    assert_string_equal(cn_for(s, L_STARTTLS, "a.wild.test", b, sizeof(b)), "cnonly.example.net");
    assert_string_equal(cn_for(s, L_STARTTLS, "wild.test", b, sizeof(b)), "mx.tern.test");
    assert_string_equal(cn_for(s, L_STARTTLS, "b.a.wild.test", b, sizeof(b)), "mx.tern.test");
    /* An exact name beats a parent: mail.example.test is mail's own. */
    assert_string_equal(cn_for(s, L_STARTTLS, "mail.example.test", b, sizeof(b)), "mail.example.test");
    tern_tls_server_unref(s);
}

static void test_default_cert(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tcfg_add_cert(&t, "other", true);
    tern_tls_server *s = tcfg_server(&t);
    char b[128];
    assert_string_equal(cn_for(s, L_STARTTLS, "mail.example.test", b, sizeof(b)), "mail.example.test");
    assert_string_equal(cn_for(s, L_STARTTLS, "nothing.example.com", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, NULL, b, sizeof(b)), "other.example.org");
    tern_tls_server_unref(s);
}

static void test_single_cert_serves_every_name(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "other", false);
    tern_tls_server *s = tcfg_server(&t);
    char b[128];
    assert_string_equal(cn_for(s, L_STARTTLS, "whatever.invalid", b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_STARTTLS, NULL, b, sizeof(b)), "other.example.org");
    assert_string_equal(cn_for(s, L_MTLS, "mail.example.test", b, sizeof(b)), "other.example.org");
    tern_tls_server_unref(s);
}

static char *read_fd_all(int fd)
{
    static char buf[8192];
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    assert_true(n >= 0);
    buf[n] = '\0';
    return buf;
}

static void test_selfsigned_fallback(void **state)
{
    tcfg t;
    tcfg_init(&t);
    FILE *logf = tmpfile();
    assert_non_null(logf);
    tern_log_set_fd(fileno(logf));
    tern_tls_server *s = tcfg_server(&t);
    tern_log_set_fd(2);
    const char *log = read_fd_all(fileno(logf));
    assert_non_null(strstr(log, "event=selfsigned_cert"));
    assert_non_null(strstr(log, "hostname=mx.tern.test"));
    assert_non_null(strstr(log, "reason=no_certificates"));
    fclose(logf);

    pair p;
    pair_init(&p, s, L_STARTTLS, "anything.example", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    char b[128];
    assert_string_equal(client_peer_cn(&p.cl, b, sizeof(b)), "mx.tern.test");
    const mbedtls_x509_crt *peer = mbedtls_ssl_get_peer_cert(&p.cl.ssl);
    /* Self-signed: not trusted by the client's CA, issuer is subject. */
    assert_true(mbedtls_ssl_get_verify_result(&p.cl.ssl) & MBEDTLS_X509_BADCERT_NOT_TRUSTED);
    assert_int_equal(peer->issuer_raw.len, peer->subject_raw.len);
    assert_memory_equal(peer->issuer_raw.p, peer->subject_raw.p, peer->subject_raw.len);
    assert_int_equal(mbedtls_pk_get_type(&peer->pk), MBEDTLS_PK_ECKEY);
    assert_false(mbedtls_x509_time_is_past(&peer->valid_to));
    assert_false(mbedtls_x509_time_is_future(&peer->valid_from));
    /* One year (the backdating hour may cross a new year). */
    assert_in_range(peer->valid_to.year - peer->valid_from.year, 1, 2);
    /* The SAN carries the hostname too (what modern clients check). */
    assert_true(peer->ext_types & MBEDTLS_X509_EXT_SUBJECT_ALT_NAME);
    const mbedtls_x509_sequence *san = &peer->subject_alt_names;
    assert_int_equal(san->buf.tag, MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME);
    assert_int_equal(san->buf.len, strlen("mx.tern.test"));
    assert_memory_equal(san->buf.p, "mx.tern.test", san->buf.len);
    assert_null(san->next);
    exchange(&p, 40000);
    pair_free(&p);
    tern_tls_server_unref(s);

    /* A hostname that cannot go in a DN is refused, not mangled. */
    t.cfg.server.hostname = "bad,name=x";
    char *err = NULL;
    assert_null(tern_tls_server_new(&t.cfg, &err));
    assert_non_null(err);
    free(err);
}

static void test_client_cert_required(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    t.listeners[L_MTLS].client_cert = TERN_CLIENT_CERT_REQUIRED;
    tern_tls_server *s = tcfg_server(&t);

    pair p;
    pair_init(&p, s, L_MTLS, "mail.example.test", "client", 0);
    assert_int_equal(pair_handshake(&p), 0);
    const char *subj = tern_tls_conn_peer_subject(p.sc);
    assert_non_null(subj);
    assert_non_null(strstr(subj, "CN=alice"));
    assert_non_null(strstr(subj, "O=Example"));
    assert_true(tern_tls_conn_peer_verified(p.sc));
    exchange(&p, 1000);
    pair_free(&p);

    pair_init(&p, s, L_MTLS, "mail.example.test", NULL, 0);
    assert_int_not_equal(pair_handshake(&p), 0);
    assert_int_equal(p.srv_status, TERN_TLS_ERROR);
    assert_non_null(tern_tls_conn_error(p.sc));
    assert_false(tern_tls_conn_established(p.sc));
    pair_free(&p);

    pair_init(&p, s, L_MTLS, "mail.example.test", "rogue-client", 0);
    assert_int_not_equal(pair_handshake(&p), 0);
    assert_int_equal(p.srv_status, TERN_TLS_ERROR);
    assert_non_null(tern_tls_conn_error(p.sc));
    pair_free(&p);

    /* The STARTTLS listener asks for nothing, even of a client with one. */
    pair_init(&p, s, L_STARTTLS, "mail.example.test", "client", 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_null(tern_tls_conn_peer_subject(p.sc));
    assert_false(tern_tls_conn_peer_verified(p.sc));
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_client_cert_optional(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);

    pair p;
    pair_init(&p, s, L_MTLS, "mail.example.test", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_null(tern_tls_conn_peer_subject(p.sc));
    assert_false(tern_tls_conn_peer_verified(p.sc));
    pair_free(&p);

    pair_init(&p, s, L_MTLS, "mail.example.test", "rogue-client", 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_non_null(strstr(tern_tls_conn_peer_subject(p.sc), "CN=mallory"));
    assert_false(tern_tls_conn_peer_verified(p.sc));
    pair_free(&p);

    pair_init(&p, s, L_MTLS, "mail.example.test", "client", 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_non_null(strstr(tern_tls_conn_peer_subject(p.sc), "CN=alice"));
    assert_true(tern_tls_conn_peer_verified(p.sc));
    pair_free(&p);
    tern_tls_server_unref(s);

    /* A missing client_ca file fails the whole server, with its name. */
    snprintf(t.ca_path, sizeof(t.ca_path), "%s/tls/no-such-ca.crt", data_dir());
    char *err = NULL;
    assert_null(tern_tls_server_new(&t.cfg, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "no-such-ca.crt"));
    free(err);
}

static void test_cipher_restriction(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    t.suites[0] = MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256;
    t.suites[1] = MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256;
    t.suites[2] = 0;
    t.cfg.tls.cipher_suites = t.suites;
    tern_tls_server *s = tcfg_server(&t);
    /* The server keeps its own copy of the list. */
    t.suites[0] = t.suites[1] = 0x1234;

    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384);
    assert_int_not_equal(pair_handshake(&p), 0);
    assert_int_equal(p.srv_status, TERN_TLS_ERROR);
    assert_non_null(tern_tls_conn_error(p.sc));
    pair_free(&p);

    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
    assert_int_equal(pair_handshake(&p), 0);
    assert_string_equal(tern_tls_conn_cipher(p.sc), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    exchange(&p, 20000);
    pair_free(&p);

    /* The client's default list offers many: the server's order decides
     * (mbedTLS 2.28 cannot follow the client's order). */
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_string_equal(tern_tls_conn_cipher(p.sc), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_close_notify(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "other", false);
    tern_tls_server *s = tcfg_server(&t);

    /* Client closes: the server reads CLOSED, and keeps saying so. */
    pair p;
    pair_init(&p, s, L_STARTTLS, NULL, NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    exchange(&p, 10);
    assert_int_equal(mbedtls_ssl_close_notify(&p.cl.ssl), 0);
    to_server(&p);
    assert_int_equal(p.srv_status, TERN_TLS_CLOSED);
    uint8_t b[16];
    size_t n = 99;
    assert_int_equal(tern_tls_conn_read(p.sc, b, sizeof(b), &n), TERN_TLS_CLOSED);
    assert_int_equal(n, 0);
    pair_free(&p);

    /* Data before the alert in the same flight is still delivered. */
    pair_init(&p, s, L_STARTTLS, NULL, NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(mbedtls_ssl_write(&p.cl.ssl, (const unsigned char *)"QUIT\r\n", 6), 6);
    assert_int_equal(mbedtls_ssl_close_notify(&p.cl.ssl), 0);
    to_server(&p);
    assert_int_equal(p.srv_status, TERN_TLS_CLOSED);
    assert_int_equal(p.srv_plain.len, 6);
    assert_memory_equal(p.srv_plain.data, "QUIT\r\n", 6);
    pair_free(&p);

    /* Server closes: the client sees close_notify. */
    pair_init(&p, s, L_STARTTLS, NULL, NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(tern_tls_conn_write(p.sc, (const uint8_t *)"221 bye\r\n", 9), TERN_TLS_OK);
    tern_tls_conn_close_notify(p.sc);
    to_client(&p);
    unsigned char cb[32];
    assert_int_equal(mbedtls_ssl_read(&p.cl.ssl, cb, sizeof(cb)), 9);
    assert_int_equal(mbedtls_ssl_read(&p.cl.ssl, cb, sizeof(cb)), MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY);
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_garbage(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);

    /* Plaintext SMTP on an implicit-TLS port. */
    tern_tls_conn *c = tern_tls_conn_new(s, L_MTLS);
    assert_non_null(c);
    const char *ehlo = "EHLO client.example\r\n";
    assert_int_equal(tern_tls_conn_feed(c, (const uint8_t *)ehlo, strlen(ehlo)), 0);
    assert_int_equal(tern_tls_conn_handshake(c), TERN_TLS_ERROR);
    assert_non_null(tern_tls_conn_error(c));
    assert_true(strncmp(tern_tls_conn_error(c), "handshake: ", 11) == 0);
    /* Failure is sticky. */
    assert_int_equal(tern_tls_conn_handshake(c), TERN_TLS_ERROR);
    size_t n;
    uint8_t b[16];
    assert_int_equal(tern_tls_conn_read(c, b, sizeof(b), &n), TERN_TLS_ERROR);
    assert_int_equal(tern_tls_conn_write(c, b, 1), TERN_TLS_ERROR);
    assert_int_equal(tern_tls_conn_feed(c, b, 1), TERN_TLS_ERROR);
    tern_tls_conn_free(c);

    /* A handshake record that lies about its length. */
    c = tern_tls_conn_new(s, L_STARTTLS);
    const uint8_t bad_hello[] = {0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x7f, 0xff, 0x03, 0x03, 0, 0};
    assert_int_equal(tern_tls_conn_feed(c, bad_hello, sizeof(bad_hello)), 0);
    assert_int_equal(tern_tls_conn_handshake(c), TERN_TLS_ERROR);
    tern_tls_conn_free(c);

    /* Writing before the handshake is a caller bug, reported as an error. */
    c = tern_tls_conn_new(s, L_STARTTLS);
    assert_int_equal(tern_tls_conn_write(c, (const uint8_t *)"x", 1), TERN_TLS_ERROR);
    tern_tls_conn_free(c);

    /* After the handshake: a record whose MAC cannot check out. */
    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    uint8_t rec[5 + 48] = {0x17, 0x03, 0x03, 0x00, 48};
    fill_pattern(rec + 5, 48, 3);
    assert_int_equal(tern_tls_conn_feed(p.sc, rec, sizeof(rec)), 0);
    assert_int_equal(tern_tls_conn_read(p.sc, b, sizeof(b), &n), TERN_TLS_ERROR);
    assert_true(strncmp(tern_tls_conn_error(p.sc), "read: ", 6) == 0);
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_byte_by_byte(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);
    pair p;
    pair_init(&p, s, L_MTLS, "mail.example.test", "client", 0);
    p.chunk = 1;
    assert_int_equal(pair_handshake(&p), 0);
    assert_true(tern_tls_conn_peer_verified(p.sc));
    exchange(&p, 20000);
    assert_int_equal(mbedtls_ssl_close_notify(&p.cl.ssl), 0);
    to_server(&p);
    assert_int_equal(p.srv_status, TERN_TLS_CLOSED);
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_input_bound(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);

    /* Room for two full records, and not much more. */
    tern_tls_conn *c = tern_tls_conn_new(s, L_STARTTLS);
    size_t room = tern_tls_conn_feed_room(c);
    assert_true(room >= 2 * (5 + 16384 + 2048));
    assert_true(room <= 40 * 1024);
    uint8_t *junk = calloc(1, room + 1);
    assert_int_equal(tern_tls_conn_feed(c, junk, room + 1), TERN_TLS_ERROR);
    assert_int_equal(tern_tls_conn_feed_room(c), 0);
    tern_tls_conn_free(c);

    c = tern_tls_conn_new(s, L_STARTTLS);
    assert_int_equal(tern_tls_conn_feed(c, junk, room - 10), 0);
    assert_int_equal(tern_tls_conn_feed_room(c), 10);
    assert_int_equal(tern_tls_conn_feed(c, junk, 10), 0);
    assert_int_equal(tern_tls_conn_feed_room(c), 0);
    assert_int_equal(tern_tls_conn_feed(c, junk, 1), TERN_TLS_ERROR);
    tern_tls_conn_free(c);
    free(junk);

    /* A peer that sends while we do not read fills the buffer; reading
     * makes room again. */
    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    uint8_t *big = malloc(100000);
    fill_pattern(big, 100000, 5);
    size_t off = 0;
    while (off < 100000) {
        int r = mbedtls_ssl_write(&p.cl.ssl, big + off, 100000 - off);
        assert_true(r > 0);
        off += (size_t)r;
    }
    size_t fed = 0;
    while (p.cl.out.len > 0) {
        size_t n = tern_tls_conn_feed_room(p.sc);
        if (n > p.cl.out.len)
            n = p.cl.out.len;
        if (n == 0) {
            /* Full: drain some plaintext, as the session would. */
            uint8_t b[3000];
            size_t got;
            assert_int_equal(tern_tls_conn_read(p.sc, b, sizeof(b), &got), TERN_TLS_OK);
            assert_int_equal(tern_buf_append(&p.srv_plain, b, got), 0);
            continue;
        }
        assert_int_equal(tern_tls_conn_feed(p.sc, p.cl.out.data, n), 0);
        tern_buf_consume(&p.cl.out, n);
        fed += n;
    }
    assert_true(fed > 100000);
    server_step(&p);
    assert_int_equal(p.srv_plain.len, 100000);
    assert_memory_equal(p.srv_plain.data, big, 100000);
    free(big);
    pair_free(&p);
    tern_tls_server_unref(s);
}

static void test_listeners_and_errors(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);
    assert_null(tern_tls_conn_new(s, L_PLAIN)); /* not a TLS listener */
    assert_null(tern_tls_conn_new(s, N_LISTENERS));
    assert_null(tern_tls_conn_new(s, (size_t)-1));
    tern_tls_server_unref(s);

    char *err = NULL;
    tcfg_init(&t);
    tern_cert_conf *c = tcfg_add_cert(&t, "mail", false);
    c->key = t.paths[0][1];
    snprintf(t.paths[0][1], sizeof(t.paths[0][1]), "%s/tls/other.key", data_dir());
    assert_null(tern_tls_server_new(&t.cfg, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "does not match"));
    free(err);

    err = NULL;
    tcfg_init(&t);
    tcfg_add_cert(&t, "absent", false);
    assert_null(tern_tls_server_new(&t.cfg, &err));
    assert_non_null(err);
    assert_non_null(strstr(err, "absent.crt"));
    free(err);

    /* A NULL error_r is allowed. */
    assert_null(tern_tls_server_new(&t.cfg, NULL));
}

static void test_refcount(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);
    assert_ptr_equal(tern_tls_server_ref(s), s);
    tern_tls_server_unref(s);

    /* A session outlives the reload that dropped its server. */
    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    tern_tls_server_unref(s);
    assert_int_equal(pair_handshake(&p), 0);
    exchange(&p, 5000);
    pair_free(&p); /* frees the server; ASan reports any use after */
    tern_tls_server_unref(NULL);
}

static void test_session_resumption(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tern_tls_server *s = tcfg_server(&t);

    pair p;
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(pair_handshake(&p), 0);
    size_t full = p.to_client_n;
    /* tls-unique (RFC 5929): in a full handshake the client's Finished. */
    uint8_t tu[64];
    assert_int_equal(tern_tls_conn_tls_unique(p.sc, tu, sizeof(tu)), 12);
    assert_memory_equal(tu, p.cl.ssl.own_verify_data, 12);
    assert_int_equal(tern_tls_conn_tls_unique(p.sc, tu, 11), 0); /* too small: none */
    mbedtls_ssl_session sess;
    mbedtls_ssl_session_init(&sess);
    assert_int_equal(mbedtls_ssl_get_session(&p.cl.ssl, &sess), 0);
    pair_free(&p);

    /* Resumed: no certificate in the server's flight. */
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(mbedtls_ssl_set_session(&p.cl.ssl, &sess), 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_true(p.to_client_n < full / 2);
    /* Resumed: the server's Finished comes first, and is the binding. */
    assert_int_equal(tern_tls_conn_tls_unique(p.sc, tu, sizeof(tu)), 12);
    assert_memory_equal(tu, p.cl.ssl.peer_verify_data, 12);
    assert_memory_not_equal(tu, p.cl.ssl.own_verify_data, 12);
    exchange(&p, 100);
    pair_free(&p);

    /* Without the extended master secret there is no binding to give. */
    pair_init(&p, s, L_STARTTLS, "mail.example.test", NULL, 0);
    mbedtls_ssl_conf_extended_master_secret(&p.cl.conf,
                                            MBEDTLS_SSL_EXTENDED_MS_DISABLED);
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(tern_tls_conn_tls_unique(p.sc, tu, sizeof(tu)), 0);
    pair_free(&p);

    /* A ticket from one listener is worthless on another (which may check
     * client certificates against another CA): full handshake. */
    pair_init(&p, s, L_MTLS, "mail.example.test", NULL, 0);
    assert_int_equal(mbedtls_ssl_set_session(&p.cl.ssl, &sess), 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_true(p.to_client_n >= full / 2);
    pair_free(&p);

    /* Nor on the server built by the next reload. */
    tern_tls_server *s2 = tcfg_server(&t);
    pair_init(&p, s2, L_STARTTLS, "mail.example.test", NULL, 0);
    assert_int_equal(mbedtls_ssl_set_session(&p.cl.ssl, &sess), 0);
    assert_int_equal(pair_handshake(&p), 0);
    assert_true(p.to_client_n >= full / 2);
    pair_free(&p);
    mbedtls_ssl_session_free(&sess);
    tern_tls_server_unref(s2);
    tern_tls_server_unref(s);
}

/* Several workers sharing one server, each with its own connections: the
 * EC keys and CA are used concurrently from the first handshake on. */
typedef struct worker_arg {
    tern_tls_server *s;
    unsigned id;
} worker_arg;

static void *worker(void *p_)
{
    worker_arg *a = p_;
    static const char *names[] = {"mail.example.test", "other.example.org", NULL};
    static const char *expect[] = {"mail.example.test", "other.example.org", "mx.tern.test"};
    for (unsigned i = 0; i < 12; i++) {
        unsigned k = (a->id + i) % 3;
        pair p;
        pair_init(&p, a->s, (i & 1) ? L_MTLS : L_STARTTLS, names[k], (i & 1) ? "client" : NULL, 0);
        assert_int_equal(pair_handshake(&p), 0);
        char b[128];
        assert_string_equal(client_peer_cn(&p.cl, b, sizeof(b)), expect[k]);
        if (i & 1)
            assert_true(tern_tls_conn_peer_verified(p.sc));
        exchange(&p, 3000 + i * 1000);
        pair_free(&p);
    }
    return NULL;
}

static void test_threads(void **state)
{
    tcfg t;
    tcfg_init(&t);
    tcfg_add_cert(&t, "mail", false);
    tcfg_add_cert(&t, "other", false);
    tern_tls_server *s = tcfg_server(&t);
    enum { N = 6 };
    pthread_t th[N];
    worker_arg args[N];
    for (unsigned i = 0; i < N; i++) {
        args[i] = (worker_arg){.s = s, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (unsigned i = 0; i < N; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    tern_tls_server_unref(s);
}

static int setup(void **state)
{
    mbedtls_entropy_init(&g_entropy);
    mbedtls_ctr_drbg_init(&g_drbg);
    static const unsigned char pers[] = "tern-test-client";
    return mbedtls_ctr_drbg_seed(&g_drbg, mbedtls_entropy_func, &g_entropy, pers, sizeof(pers) - 1);
}

static int teardown(void **state)
{
    mbedtls_ctr_drbg_free(&g_drbg);
    mbedtls_entropy_free(&g_entropy);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_sni_selection),
        cmocka_unit_test(test_sni_config_subjects),
        cmocka_unit_test(test_default_cert),
        cmocka_unit_test(test_single_cert_serves_every_name),
        cmocka_unit_test(test_selfsigned_fallback),
        cmocka_unit_test(test_client_cert_required),
        cmocka_unit_test(test_client_cert_optional),
        cmocka_unit_test(test_cipher_restriction),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_input_bound),
        cmocka_unit_test(test_listeners_and_errors),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_session_resumption),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
