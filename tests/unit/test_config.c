/* Unit tests for conf/: every key, every default, every validation rule
 * failing with its exact path, and the TLS file checks against the PEM
 * fixtures in tests/data/config/ (see gen.sh there). Input: test-authored
 * YAML; TERN_TEST_DATA points at tests/data. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sys/stat.h>
#include <mbedtls/ssl.h>

#include "conf/config.h"

static char data_dir[4096];
static tern_config_errors errs;

/* Expands @D@ to the fixture directory so tests can name PEM files. */
static char *expand(const char *yaml)
{
    size_t dl = strlen(data_dir), n = 0;
    for (const char *p = yaml; (p = strstr(p, "@D@")) != NULL; p += 3)
        n++;
    char *out = malloc(strlen(yaml) + n * dl + 1);
    assert_non_null(out);
    char *o = out;
    for (const char *p = yaml; *p;) {
        if (strncmp(p, "@D@", 3) == 0) {
            memcpy(o, data_dir, dl);
            o += dl;
            p += 3;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static tern_config *load(const char *yaml)
{
    char *text = expand(yaml);
    tern_config_errors_free(&errs);
    tern_config *c = tern_config_load_string(text, strlen(text), "test.yaml", &errs);
    free(text);
    return c;
}

static void dump_errors(void)
{
    for (size_t i = 0; i < errs.n; i++)
        print_message("  error: %s\n", errs.items[i]);
}

static tern_config *load_ok(const char *yaml)
{
    tern_config *c = load(yaml);
    if (c == NULL)
        dump_errors();
    assert_non_null(c);
    assert_int_equal(errs.n, 0);
    return c;
}

static bool has_error(const char *want, bool exact)
{
    for (size_t i = 0; i < errs.n; i++) {
        if (exact ? strcmp(errs.items[i], want) == 0 : strstr(errs.items[i], want) != NULL)
            return true;
    }
    return false;
}

/* Fails with every error listed, which is what one wants to see when the
 * expected message drifted. */
static void expect(const char *yaml, const char *want_raw, bool exact)
{
    tern_config *c = load(yaml);
    char *want = expand(want_raw);
    if (c != NULL || !has_error(want, exact)) {
        print_message("expected %s: %s\n", exact ? "exactly" : "containing", want);
        dump_errors();
    }
    assert_null(c);
    assert_true(has_error(want, exact));
    free(want);
}
#define EXPECT_EXACT(yaml, want) expect((yaml), (want), true)
#define EXPECT_HAS(yaml, want) expect((yaml), (want), false)

#define HEAD "server: {hostname: mx.example.test}\ndomains: [example.test]\n"
#define MX "listeners:\n  - {name: mx, protocol: smtp, port: 25}\n"
#define CERTS                                                  \
    "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/rsa.key}\n"

static int setup(void **state)
{
    const char *d = getenv("TERN_TEST_DATA");
    snprintf(data_dir, sizeof(data_dir), "%s/config", d ? d : "tests/data");
    tern_config_errors_init(&errs);
    return 0;
}

static int teardown(void **state)
{
    tern_config_errors_free(&errs);
    return 0;
}

/* ---- whole documents --------------------------------------------------- */

static void test_full_file(void **state)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/full.yaml", data_dir);
    tern_config_errors_free(&errs);
    tern_config *c = tern_config_load(path, &errs);
    if (c == NULL)
        dump_errors();
    assert_non_null(c);
    assert_string_equal(c->path, path);

    assert_string_equal(c->server.hostname, "mx.example.test");
    assert_int_equal(c->server.workers, 4);
    assert_int_equal(c->server.shutdown_grace_ms, 45000);
    assert_int_equal(c->server.max_connections, 5000);
    assert_string_equal(c->server.user, "root");
    assert_string_equal(c->server.group, "root");
    assert_string_equal(c->server.log_level, "info,smtp=debug");
    assert_string_equal(c->server.state_dir, "/tmp/tern-state");

    assert_int_equal(c->limits.max_connections_per_ip, 20);
    assert_true(c->limits.connection_rate_per_ip == 2.5);
    assert_int_equal(c->limits.connection_burst_per_ip, 5);

    assert_int_equal(c->n_domains, 2);
    assert_string_equal(c->domains[0], "example.test");
    assert_string_equal(c->domains[1], "mail.example.test");

    assert_int_equal(c->tls.n_certs, 2);
    assert_string_equal(c->tls.certs[0].name, "main");
    char want[4200];
    snprintf(want, sizeof(want), "%s/rsa.crt", data_dir);
    /* Relative to the config file, whatever the cwd. */
    assert_true(c->tls.certs[0].cert[0] == '/');
    assert_non_null(strstr(c->tls.certs[0].cert, "/config/rsa.crt"));
    assert_non_null(strstr(c->tls.certs[0].key, "/config/rsa.key"));
    assert_int_equal(c->tls.certs[0].n_subjects, 2);
    assert_string_equal(c->tls.certs[0].subjects[1], "*.example.test");
    assert_false(c->tls.certs[0].is_default);
    assert_string_equal(c->tls.certs[1].name, "ec");
    assert_true(c->tls.certs[1].is_default);
    assert_int_equal(c->tls.min_version, 12);
    assert_true(c->tls.ignore_client_order);
    assert_int_equal(c->tls.n_disable_cipher_suites, 2);
    assert_non_null(c->tls.cipher_suites);
    bool saw_gcm256 = false;
    for (const int *p = c->tls.cipher_suites; *p; p++) {
        assert_int_not_equal(*p, MBEDTLS_TLS_RSA_WITH_AES_128_CBC_SHA);
        assert_int_not_equal(*p, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
        if (*p == MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
            saw_gcm256 = true;
    }
    assert_true(saw_gcm256);

    assert_int_equal(c->smtp.max_command_line, 1024);
    assert_int_equal(c->smtp.max_text_line, 2000);
    assert_int_equal(c->smtp.max_recipients, 500);
    assert_int_equal(c->smtp.max_errors, 5);
    assert_int_equal(c->smtp.max_message_size, 25u << 20);
    assert_int_equal(c->smtp.memory_threshold, 512u << 10);
    assert_int_equal(c->smtp.max_hops, 30);
    assert_true(c->smtp.vrfy);
    assert_int_equal(c->smtp.bare_lf, TERN_BARE_LF_NORMALIZE);
    assert_int_equal(c->smtp.greeting_timeout_ms, 120000);
    assert_int_equal(c->smtp.command_timeout_ms, 240000);
    assert_int_equal(c->smtp.data_block_timeout_ms, 90000);
    assert_int_equal(c->smtp.data_done_timeout_ms, 3600000);
    assert_int_equal(c->smtp.n_relay_networks, 3);
    assert_int_equal(c->smtp.relay_networks[0].family, AF_INET);
    assert_int_equal(c->smtp.relay_networks[0].prefix, 8);
    assert_int_equal(c->smtp.relay_networks[1].family, AF_INET6);
    assert_int_equal(c->smtp.relay_networks[1].prefix, 32);
    assert_int_equal(c->smtp.relay_networks[2].prefix, 32);

    assert_int_equal(c->spool.segment_size, 128u << 20);
    assert_int_equal(c->spool.group_commit_max, 64);
    assert_int_equal(c->spool.group_commit_delay_us, 2000);

    assert_int_equal(c->storage.backend, TERN_STORAGE_POSTGRES);
    assert_string_equal(c->local.path, "/tmp/tern-mail");
    assert_true(c->postgres.present);
    assert_string_equal(c->postgres.conninfo, "host=/tmp dbname=tern");
    assert_int_equal(c->postgres.pool_size, 16);

    assert_int_equal(c->n_listeners, 5);
    const tern_listener_conf *l = &c->listeners[0];
    assert_string_equal(l->name, "mx");
    assert_int_equal(l->protocol, TERN_PROTO_SMTP);
    assert_string_equal(l->address, "0.0.0.0");
    assert_int_equal(l->port, 2525);
    assert_int_equal(l->timeout_ms, 600000);
    assert_true(l->reuse);
    assert_int_equal(l->workers, 2);
    assert_int_equal(l->buffer_size, 16384);
    assert_int_equal(l->tls, TERN_TLS_STARTTLS);
    assert_int_equal(l->max_message_size, 10u << 20);
    assert_string_equal(l->pipeline, "inbound");
    assert_int_equal(c->n_processors, 5);
    assert_false(c->mailets.default_processors);
    assert_int_equal(c->mailets.root_deadline_ms, 10000);
    const tern_processor_conf *pin = tern_config_processor(c, "inbound");
    assert_non_null(pin);
    assert_int_equal(pin->steps[0].match.op, TERN_MATCH_NOT);
    assert_string_equal(pin->steps[0].match.children[0].name, "SenderIsNull");
    assert_string_equal(pin->steps[0].params[0].key, "processor");
    assert_string_equal(tern_config_processor(c, "transport")->steps[0].match.name, "All");
    assert_false(l->auth);
    assert_false(l->allow_plaintext_auth);
    l = &c->listeners[1];
    assert_int_equal(l->protocol, TERN_PROTO_SUBMISSION);
    assert_string_equal(l->address, "::1");
    assert_int_equal(l->tls, TERN_TLS_IMPLICIT);
    assert_non_null(strstr(l->client_ca, "/config/ca.crt"));
    assert_int_equal(l->client_cert, TERN_CLIENT_CERT_OPTIONAL);
    assert_true(l->auth); /* submission's default */
    assert_int_equal(c->listeners[2].tls, TERN_TLS_STARTTLS);
    assert_int_equal(c->listeners[3].protocol, TERN_PROTO_POP3);
    assert_true(c->listeners[3].allow_plaintext_auth);
    assert_int_equal(c->listeners[4].protocol, TERN_PROTO_HTTP);
    assert_int_equal(c->listeners[4].tls, TERN_TLS_NONE);

    tern_config_unref(c);
}

static void test_example_yaml_parses(void **state)
{
    /* conf/example.yaml names files under /etc/tern that the test host
     * lacks; everything else about it must be right. */
    char path[4200];
    snprintf(path, sizeof(path), "%s/../../conf/example.yaml", getenv("TERN_TEST_DATA") ? getenv("TERN_TEST_DATA") : "tests/data");
    tern_config_errors_free(&errs);
    tern_config *c = tern_config_load(path, &errs);
    assert_null(c);
    for (size_t i = 0; i < errs.n; i++) {
        const char *e = errs.items[i];
        bool file_error = strncmp(e, "tls.certificates.", 17) == 0 && strstr(e, "no such file");
        bool user_error = strncmp(e, "server.user", 11) == 0 || strncmp(e, "server.group", 12) == 0;
        if (!file_error && !user_error)
            print_message("unexpected: %s\n", e);
        assert_true(file_error || user_error);
    }
}

static void test_defaults(void **state)
{
    tern_config *c = load_ok(HEAD MX);
    assert_int_equal(c->server.workers, 0);
    assert_int_equal(c->server.shutdown_grace_ms, 30000);
    assert_int_equal(c->server.max_connections, 10000);
    assert_null(c->server.user);
    assert_null(c->server.group);
    assert_string_equal(c->server.log_level, "info");
    assert_string_equal(c->server.state_dir, "/var/lib/tern");
    assert_int_equal(c->limits.max_connections_per_ip, 50);
    assert_true(c->limits.connection_rate_per_ip == 10.0);
    assert_int_equal(c->limits.connection_burst_per_ip, 20);
    assert_int_equal(c->tls.n_certs, 0);
    assert_int_equal(c->tls.min_version, 12);
    assert_false(c->tls.ignore_client_order);
    assert_non_null(c->tls.cipher_suites);
    assert_int_not_equal(c->tls.cipher_suites[0], 0);
    assert_int_equal(c->smtp.max_command_line, 512);
    assert_int_equal(c->smtp.max_text_line, 1000);
    assert_int_equal(c->smtp.max_recipients, 100);
    assert_int_equal(c->smtp.max_errors, 10);
    assert_int_equal(c->smtp.max_message_size, 50u << 20);
    assert_int_equal(c->smtp.memory_threshold, 1u << 20);
    assert_int_equal(c->smtp.max_hops, 50);
    assert_false(c->smtp.vrfy);
    assert_int_equal(c->smtp.bare_lf, TERN_BARE_LF_REJECT);
    assert_int_equal(c->smtp.greeting_timeout_ms, 300000);
    assert_int_equal(c->smtp.command_timeout_ms, 300000);
    assert_int_equal(c->smtp.data_block_timeout_ms, 180000);
    assert_int_equal(c->smtp.data_done_timeout_ms, 600000);
    assert_int_equal(c->smtp.n_relay_networks, 0);
    assert_int_equal(c->spool.segment_size, 64u << 20);
    assert_int_equal(c->spool.group_commit_max, 256);
    assert_int_equal(c->spool.group_commit_delay_us, 0);
    assert_int_equal(c->storage.backend, TERN_STORAGE_LOCAL);
    assert_string_equal(c->local.path, "/var/lib/tern/mail");
    assert_false(c->postgres.present);
    assert_int_equal(c->postgres.pool_size, 8);
    const tern_listener_conf *l = &c->listeners[0];
    assert_string_equal(l->address, "0.0.0.0");
    assert_int_equal(l->timeout_ms, 300000);
    assert_false(l->reuse);
    assert_int_equal(l->workers, 0);
    assert_int_equal(l->buffer_size, 9000);
    assert_int_equal(l->tls, TERN_TLS_NONE);
    assert_int_equal(l->max_message_size, 0);
    assert_string_equal(l->pipeline, "root");
    assert_false(l->auth);
    assert_false(l->allow_plaintext_auth);
    assert_null(l->client_ca);
    assert_int_equal(l->client_cert, TERN_CLIENT_CERT_NONE);
    tern_config_unref(c);

    /* state_dir moves local.path with it. */
    c = load_ok("server: {hostname: a.test, state_dir: /srv/tern}\ndomains: [a.test]\n" MX);
    assert_string_equal(c->local.path, "/srv/tern/mail");
    tern_config_unref(c);
}

static void test_hostname_default(void **state)
{
    tern_config *c = load("domains: [example.test]\n" MX);
    if (c == NULL) {
        /* Only acceptable when this host's own name is unusable. */
        assert_true(has_error("server.hostname: not set", false));
        return;
    }
    assert_non_null(c->server.hostname);
    assert_true(strlen(c->server.hostname) > 0);
    tern_config_unref(c);
}

static void test_ref_generation_helpers(void **state)
{
    tern_config *a = load_ok(HEAD MX);
    tern_config *b = load_ok(HEAD MX);
    assert_true(b->generation > a->generation);
    assert_ptr_equal(tern_config_ref(a), a);
    tern_config_unref(a);
    tern_config_unref(a);
    tern_config_unref(NULL);

    assert_true(tern_config_is_local_domain(b, "EXAMPLE.test", 12));
    assert_true(tern_config_is_local_domain(b, "example.test.", 13));
    assert_true(tern_config_is_local_domain(b, "example.testXYZ", 12));
    assert_false(tern_config_is_local_domain(b, "example.tes", 11));
    assert_false(tern_config_is_local_domain(b, "other.test", 10));

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(tern_config_workers(b), ncpu > 0 ? (uint32_t)ncpu : 1);
    tern_config_unref(b);
    b = load_ok("server: {hostname: a.test, workers: 3}\ndomains: [a.test]\n" MX);
    assert_int_equal(tern_config_workers(b), 3);
    tern_config_unref(b);

    assert_string_equal(tern_protocol_name(TERN_PROTO_SMTP), "smtp");
    assert_string_equal(tern_protocol_name(TERN_PROTO_SUBMISSION), "submission");
    assert_string_equal(tern_protocol_name(TERN_PROTO_IMAP), "imap");
    assert_string_equal(tern_protocol_name(TERN_PROTO_POP3), "pop3");
    assert_string_equal(tern_protocol_name(TERN_PROTO_HTTP), "http");
}

static void test_errors_api(void **state)
{
    tern_config_errors e;
    tern_config_errors_init(&e);
    tern_config_errors_add(&e, "a.b: %d", 1);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.items[0], "a.b: 1");
    for (int i = 0; i < 1000; i++)
        tern_config_errors_add(&e, "x%d", i);
    /* capped, with a closing line */
    assert_true(e.n < 300);
    assert_non_null(strstr(e.items[e.n - 1], "too many errors"));
    tern_config_errors_free(&e);
    assert_int_equal(e.n, 0);
}

/* ---- the document itself ----------------------------------------------- */

static void test_document_errors(void **state)
{
    EXPECT_EXACT("", "listeners: at least 1 entry is required");
    EXPECT_HAS("- a\n- b\n", "document: expected a mapping, got a sequence");
    EXPECT_HAS("server: {hostname: [\n", "document: ");
    EXPECT_HAS("server:\n  workers: 1\n workers: 2\n", "(line 3");
    EXPECT_HAS(HEAD MX "smtp: &s {vrfy: true}\n", "anchors (&s) are not supported");
    EXPECT_HAS("base: &b 1\n", "anchors");
    EXPECT_HAS(HEAD MX "x: *s\n", "document: ");
    EXPECT_HAS("a: 1\n---\nb: 2\n", "only one YAML document");
    EXPECT_HAS("? [a, b]\n: 1\n", "a mapping key must be a plain string");
    EXPECT_HAS(HEAD MX "server2: \"a\\0b\"\n", "NUL byte");

    char deep[512] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    EXPECT_HAS(deep, "nested deeper than 32 levels");

    size_t big = 1100 * 1024;
    char *huge = malloc(big + 1);
    assert_non_null(huge);
    memset(huge, '#', big);
    huge[big] = '\0';
    tern_config_errors_free(&errs);
    assert_null(tern_config_load_string(huge, big, "huge", &errs));
    assert_true(has_error("larger than", false));
    free(huge);

    /* Many keys: refused before the quadratic duplicate check runs. */
    size_t cap = 5000 * 16;
    char *wide = malloc(cap);
    assert_non_null(wide);
    size_t len = 0;
    for (int i = 0; i < 5000; i++)
        len += (size_t)snprintf(wide + len, cap - len, "k%d: 1\n", i);
    tern_config_errors_free(&errs);
    assert_null(tern_config_load_string(wide, len, "wide", &errs));
    assert_true(has_error("document: a mapping with more than 4096 keys (line 4097)", true));
    free(wide);

    tern_config_errors_free(&errs);
    assert_null(tern_config_load("/nonexistent/tern.yaml", &errs));
    assert_true(has_error("/nonexistent/tern.yaml: cannot open: No such file or directory", true));
}

static void test_unknown_keys(void **state)
{
    EXPECT_EXACT("server:\n  hostname: a.test\n  workrs: 4\ndomains: [a.test]\n" MX,
                 "server.workrs: unknown key (did you mean \"workers\"?) (line 3)");
    EXPECT_EXACT(HEAD MX "smpt: {}\n", "smpt: unknown key (did you mean \"smtp\"?) (line 5)");
    EXPECT_EXACT(HEAD MX "frobnicate: 1\n", "frobnicate: unknown key (line 5)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, adress: 1.2.3.4}\n",
                 "listeners[0].adress: unknown key (did you mean \"address\"?) (line 4)");
    EXPECT_EXACT(HEAD MX CERTS "    x: {cert: a, key: b, defualt: true}\n",
                 "tls.certificates.x.defualt: unknown key (did you mean \"default\"?) (line 8)");
    EXPECT_EXACT(HEAD MX "smtp: {bare_lf: rejct}\n",
                 "smtp.bare_lf: \"rejct\" is not one of reject, normalize (did you mean "
                 "\"reject\"?) (line 5)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtps, port: 25}\n",
                 "listeners[0].protocol: \"smtps\" is not one of smtp, submission, imap, pop3, "
                 "http (did you mean \"smtp\"?) (line 4)");
}

static void test_duplicate_keys(void **state)
{
    EXPECT_EXACT("server:\n  hostname: a.test\n  hostname: b.test\ndomains: [a.test]\n" MX,
                 "server.hostname: duplicate key (first at line 2) (line 3)");
    EXPECT_EXACT(HEAD MX "smtp: {}\nsmtp: {}\n", "smtp: duplicate key (first at line 5) (line 6)");
    EXPECT_EXACT(HEAD MX CERTS "    main: {cert: @D@/ec.crt, key: @D@/ec.key}\n",
                 "tls.certificates.main: duplicate key (first at line 7) (line 8)");
}

static void test_bounds(void **state)
{
    EXPECT_EXACT(HEAD MX "smtp:\n  max_recipients: 0\n",
                 "smtp.max_recipients: 0 is below the minimum 1 (line 6)");
    EXPECT_EXACT("server: {hostname: a.test, workers: 300}\ndomains: [a.test]\n" MX,
                 "server.workers: 300 is above the maximum 256 (line 1)");
    EXPECT_EXACT(HEAD MX "smtp: {max_message_size: 3GiB}\n",
                 "smtp.max_message_size: 3GiB is above the maximum 2GiB (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_command_line: 100}\n",
                 "smtp.max_command_line: 100 is below the minimum 512 (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_text_line: 2MiB}\n",
                 "smtp.max_text_line: 2MiB is above the maximum 1MiB (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {command_timeout: 2h}\n",
                 "smtp.command_timeout: 2h is above the maximum 1h (line 5)");
    EXPECT_EXACT(HEAD MX "spool: {group_commit_delay: 200ms}\n",
                 "spool.group_commit_delay: 200ms is above the maximum 100ms (line 5)");
    EXPECT_EXACT(HEAD MX "spool: {segment_size: 512KiB}\n",
                 "spool.segment_size: 512KiB is below the minimum 1MiB (line 5)");
    EXPECT_EXACT(HEAD MX "limits: {connection_rate_per_ip: 2000000}\n",
                 "limits.connection_rate_per_ip: 2e+06 is above the maximum 1e+06 (line 5)");
    EXPECT_EXACT(HEAD MX "postgres: {conninfo: x, pool_size: 0}\n",
                 "postgres.pool_size: 0 is below the minimum 1 (line 5)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 70000}\n",
                 "listeners[0].port: 70000 is above the maximum 65535 (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 0}\n",
                 "listeners[0].port: 0 is below the minimum 1 (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, buffer_size: 100}\n",
                 "listeners[0].buffer_size: 100 is below the minimum 512 (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, max_message_size: 3GiB}\n",
                 "listeners[0].max_message_size: 3GiB is above the maximum 2GiB (line 4)");
    /* the limits themselves are accepted */
    tern_config *c = load_ok(HEAD MX "smtp: {max_message_size: 2GiB, max_recipients: 100000}\n"
                                     "spool: {segment_size: 4GiB, group_commit_delay: 100ms}\n");
    assert_int_equal(c->smtp.max_message_size, 2ull << 30);
    assert_int_equal(c->spool.segment_size, 4ull << 30);
    assert_int_equal(c->spool.group_commit_delay_us, 100000);
    tern_config_unref(c);
}

static void test_bad_values(void **state)
{
    EXPECT_EXACT(HEAD MX "smtp: {command_timeout: 5x}\n",
                 "smtp.command_timeout: \"5x\" is not a duration (write e.g. 500ms, 30s, 5m, 1h, "
                 "2d) (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_message_size: 10XB}\n",
                 "smtp.max_message_size: \"10XB\" is not a size (write e.g. 512, 64KiB, 10MiB, "
                 "2GiB) (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_message_size: 99999999999999999999999GiB}\n",
                 "smtp.max_message_size: \"99999999999999999999999GiB\" is not a size (write e.g. "
                 "512, 64KiB, 10MiB, 2GiB) (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_recipients: -1}\n",
                 "smtp.max_recipients: expected a whole number, got \"-1\" (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {max_recipients: [1]}\n",
                 "smtp.max_recipients: expected a value, got a sequence (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {vrfy: maybe}\n",
                 "smtp.vrfy: expected true or false, got \"maybe\" (line 5)");
    EXPECT_EXACT(HEAD MX "limits: {connection_rate_per_ip: fast}\n",
                 "limits.connection_rate_per_ip: expected a number, got \"fast\" (line 5)");
    EXPECT_HAS(HEAD MX "limits: {connection_rate_per_ip: nan}\n", "expected a number");
    EXPECT_EXACT(HEAD MX "smtp: 5\n", "smtp: expected a mapping, got a value (line 5)");
    EXPECT_EXACT(HEAD "listeners: {name: mx}\n", "listeners: expected a list, got a mapping (line 3)");
    EXPECT_EXACT(HEAD "listeners: []\n", "listeners: at least 1 entry is required (line 3)");
    EXPECT_EXACT(HEAD "listeners:\n  - mx\n", "listeners[0]: expected a mapping, got a value (line 4)");
    EXPECT_EXACT(HEAD MX "server: {state_dir: var/lib}\n",
                 "server: duplicate key (first at line 1) (line 5)");
    EXPECT_EXACT("server: {hostname: a.test, state_dir: var/lib}\ndomains: [a.test]\n" MX,
                 "server.state_dir: \"var/lib\" must be an absolute path (line 1)");
    EXPECT_EXACT("server: {hostname: a.test, log_level: loud}\ndomains: [a.test]\n" MX,
                 "server.log_level: \"loud\" unknown log level (error, warn, info, debug) (line 1)");
    EXPECT_EXACT("server: {hostname: a.test, user: no-such-user-tern}\ndomains: [a.test]\n" MX,
                 "server.user: \"no-such-user-tern\" no such user (line 1)");
    EXPECT_EXACT("server: {hostname: a.test, group: no-such-group-tern}\ndomains: [a.test]\n" MX,
                 "server.group: \"no-such-group-tern\" no such group (line 1)");
    EXPECT_EXACT("server: {hostname: \"bad_host\"}\ndomains: [a.test]\n" MX,
                 "server.hostname: \"bad_host\" is not a valid host name (letters, digits, '-' "
                 "and '.' only) (line 1)");
    EXPECT_EXACT("server: {hostname: \"\"}\ndomains: [a.test]\n" MX,
                 "server.hostname: must not be empty (line 1)");
    EXPECT_EXACT(HEAD MX "local: {path: mail}\n",
                 "local.path: \"mail\" must be an absolute path (line 5)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, address: mx.example.test}\n",
                 "listeners[0].address: \"mx.example.test\" is not an IPv4 or IPv6 address (host "
                 "names are not resolved here) (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: \"m x\", protocol: smtp, port: 25}\n",
                 "listeners[0].name: \"m x\" may hold only letters, digits, '-', '_' and '.' (line 4)");
}

static void test_required(void **state)
{
    EXPECT_EXACT(HEAD "listeners:\n  - {protocol: smtp, port: 25}\n", "listeners[0].name: required (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, port: 25}\n",
                 "listeners[0].protocol: required (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: mx, protocol: smtp}\n",
                 "listeners[0].port: required (line 4)");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n    main: {key: @D@/rsa.key}\n",
                 "tls.certificates.main.cert: required (line 7)");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n    main:\n",
                 "tls.certificates.main: expected a mapping, got nothing (line 7)");
}

static void test_many_errors_at_once(void **state)
{
    tern_config *c = load("server:\n"
                          "  workrs: 2\n"
                          "  hostname: a.test\n"
                          "domains: [a.test]\n"
                          "smtp:\n"
                          "  max_recipients: 0\n"
                          "  command_timeout: soon\n"
                          "tls:\n"
                          "  protocols: {min_version: \"1.3\"}\n"
                          "listeners:\n"
                          "  - {name: a, protocol: smtp, port: 25}\n"
                          "  - {name: a, protocol: submission, port: 25}\n");
    if (c != NULL || errs.n != 7)
        dump_errors();
    assert_null(c);
    assert_true(has_error("server.workrs: unknown key (did you mean \"workers\"?) (line 2)", true));
    assert_true(has_error("smtp.max_recipients: 0 is below the minimum 1 (line 6)", true));
    assert_true(has_error("smtp.command_timeout: \"soon\" is not a duration", false));
    assert_true(has_error("tls.protocols.min_version: ", false));
    assert_true(has_error("listeners[1].name: \"a\" is already the name of listeners[0] (line 12)", true));
    assert_true(has_error("listeners[1].port: 25 on 0.0.0.0 collides with listeners[0]", false));
    assert_true(has_error("listeners[1].tls: none, but this submission listener takes credentials", false));
    assert_int_equal(errs.n, 7);
}

/* ---- listeners ------------------------------------------------------- */

static void test_port_collisions(void **state)
{
#define TWO(a1, a2)                                                          \
    HEAD "listeners:\n"                                                      \
         "  - {name: a, protocol: smtp, port: 25, address: \"" a1 "\"}\n"    \
         "  - {name: b, protocol: smtp, port: 25, address: \"" a2 "\"}\n"
    EXPECT_EXACT(TWO("0.0.0.0", "127.0.0.1"),
                 "listeners[1].port: 25 on 127.0.0.1 collides with listeners[0] \"a\" (0.0.0.0 "
                 "port 25) (line 5)");
    EXPECT_HAS(TWO("127.0.0.1", "0.0.0.0"), "listeners[1].port: 25 on 0.0.0.0 collides");
    EXPECT_HAS(TWO("127.0.0.1", "127.0.0.1"), "listeners[1].port: 25 on 127.0.0.1 collides");
    EXPECT_HAS(TWO("::", "127.0.0.1"), "listeners[1].port: 25 on 127.0.0.1 collides");
    EXPECT_HAS(TWO("::1", "::"), "listeners[1].port: 25 on :: collides");
    EXPECT_HAS(TWO("::1", "0:0::1"), "listeners[1].port: 25 on 0:0::1 collides");
    EXPECT_HAS(TWO("0.0.0.0", "::ffff:192.0.2.1"), "listeners[1].port: 25 on ::ffff:192.0.2.1 collides");
    tern_config *c = load_ok(TWO("127.0.0.1", "127.0.0.2"));
    tern_config_unref(c);
    c = load_ok(TWO("::1", "127.0.0.1"));
    tern_config_unref(c);
    c = load_ok(TWO("0.0.0.0", "::1"));
    tern_config_unref(c);
    c = load_ok(HEAD "listeners:\n  - {name: a, protocol: smtp, port: 25}\n"
                     "  - {name: b, protocol: smtp, port: 26}\n");
    tern_config_unref(c);
#undef TWO
}

static void test_plaintext_credentials(void **state)
{
    EXPECT_EXACT(HEAD "listeners:\n  - {name: sub, protocol: submission, port: 587}\n",
                 "listeners[0].tls: none, but this submission listener takes credentials (auth "
                 "is on): they would cross the network in plaintext; use starttls or implicit, "
                 "or set allow_plaintext_auth: true (line 4)");
    EXPECT_EXACT(HEAD "listeners:\n  - {name: i, protocol: imap, port: 143, tls: none}\n",
                 "listeners[0].tls: none, but this imap listener takes credentials (user "
                 "logins): they would cross the network in plaintext; use starttls or implicit, "
                 "or set allow_plaintext_auth: true (line 4)");
    EXPECT_HAS(HEAD "listeners:\n  - {name: p, protocol: pop3, port: 110}\n",
               "listeners[0].tls: none, but this pop3 listener");
    EXPECT_HAS(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, auth: true}\n",
               "listeners[0].tls: none, but this smtp listener takes credentials (auth is on)");
    tern_config *c = load_ok(HEAD "listeners:\n  - {name: sub, protocol: submission, port: 587, "
                                  "allow_plaintext_auth: true}\n");
    assert_true(c->listeners[0].auth);
    tern_config_unref(c);
    c = load_ok(HEAD "listeners:\n  - {name: sub, protocol: submission, port: 587, auth: false}\n");
    assert_false(c->listeners[0].auth);
    tern_config_unref(c);
    c = load_ok(HEAD CERTS "listeners:\n  - {name: sub, protocol: submission, port: 587, tls: starttls}\n");
    assert_true(c->listeners[0].auth);
    tern_config_unref(c);
}

static void test_listener_tls(void **state)
{
    /* No certificate at all: valid; the TLS module generates a
     * self-signed one and warns. */
    tern_config *nc = load_ok(HEAD "listeners:\n  - {name: mx, protocol: smtp, port: 25, tls: starttls}\n");
    assert_int_equal(nc->tls.n_certs, 0);
    tern_config_unref(nc);
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - {name: mx, protocol: smtp, port: 25, tls: startls}\n",
                 "listeners[0].tls: \"startls\" is not one of none, starttls, implicit (did you "
                 "mean \"starttls\"?) (line 7)");
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - {name: mx, protocol: smtp, port: 25, tls: [a]}\n",
                 "listeners[0].tls: expected none, starttls, implicit or a mapping, got a "
                 "sequence (line 7)");
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                            "    tls: {mode: starttls, client_cert: required}\n",
                 "listeners[0].tls.client_cert: required needs tls.client_ca, the CAs that client "
                 "certificates are checked against (line 10)");
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                            "    tls: {client_ca: @D@/ca.crt, client_cert: optional}\n",
                 "listeners[0].tls.client_cert: optional needs tls mode starttls or implicit: "
                 "there is no handshake without TLS (line 10)");
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                            "    tls:\n      mode: implicit\n      client_ca: @D@/nope.crt\n",
                 "listeners[0].tls.client_ca: @D@/nope.crt: no such file (line 12)");
    EXPECT_HAS(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                          "    tls:\n      mode: implicit\n      client_ca: @D@/client.crt\n",
               "listeners[0].tls.client_ca: @D@/client.crt: certificate 1 is not a CA");
    EXPECT_HAS(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                          "    tls:\n      mode: implicit\n      client_ca: @D@/garbage.pem\n",
               "listeners[0].tls.client_ca: @D@/garbage.pem: does not parse as PEM certificates");
    EXPECT_HAS(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                          "    tls:\n      mode: implicit\n      client_ca: @D@\n",
               "listeners[0].tls.client_ca: @D@: is a directory");
    EXPECT_EXACT(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                            "    tls: {mode: starttls, client_certs: required}\n",
                 "listeners[0].tls.client_certs: unknown key (did you mean \"client_cert\"?) (line 10)");
    tern_config *c = load_ok(HEAD CERTS "listeners:\n  - name: mx\n    protocol: smtp\n    port: 25\n"
                                        "    tls: {mode: starttls, client_ca: @D@/ca.crt, client_cert: required}\n");
    assert_int_equal(c->listeners[0].client_cert, TERN_CLIENT_CERT_REQUIRED);
    assert_int_equal(c->listeners[0].tls, TERN_TLS_STARTTLS);
    /* No default marked: none is made one (the TLS module falls back to
     * the only certificate, or to a self-signed one with a warning). */
    assert_false(c->tls.certs[0].is_default);
    tern_config_unref(c);
}

/* ---- certificates, versions, suites ----------------------------------- */

static void test_certificates(void **state)
{
    tern_config *c = load_ok(HEAD MX "tls:\n  certificates:\n"
                                     "    rsa: {cert: @D@/rsa.crt, key: @D@/rsa.key}\n"
                                     "    ec: {cert: @D@/ec.crt, key: @D@/ec.key, default: yes, subjects: [\"*.example.test\", Mx.Example.Test]}\n");
    assert_int_equal(c->tls.n_certs, 2);
    assert_false(c->tls.certs[0].is_default);
    assert_true(c->tls.certs[1].is_default);
    assert_string_equal(c->tls.certs[1].subjects[1], "mx.example.test");
    tern_config_unref(c);

    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/other.key}\n",
               "tls.certificates.main.key: @D@/other.key does not match the certificate "
               "@D@/rsa.crt");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/ec.key}\n",
               "tls.certificates.main.key: @D@/ec.key does not match");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/missing.crt, key: @D@/rsa.key}\n",
                 "tls.certificates.main.cert: @D@/missing.crt: no such file (line 7)");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/missing.key}\n",
                 "tls.certificates.main.key: @D@/missing.key: no such file (line 7)");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/garbage.pem, key: @D@/rsa.key}\n",
               "tls.certificates.main.cert: @D@/garbage.pem: does not parse as PEM certificates");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/garbage.pem}\n",
               "tls.certificates.main.key: @D@/garbage.pem: does not parse as a private key");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n    main: {cert: @D@/rsa.crt, key: @D@/encrypted.key}\n",
               "tls.certificates.main.key: @D@/encrypted.key: the key is encrypted");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n"
                         "    a: {cert: @D@/rsa.crt, key: @D@/rsa.key, default: true}\n"
                         "    b: {cert: @D@/ec.crt, key: @D@/ec.key, default: true}\n",
                 "tls.certificates.b.default: only one certificate may be the default, and \"a\" "
                 "already is (line 8)");
    EXPECT_EXACT(HEAD MX "tls:\n  certificates:\n"
                         "    a: {cert: @D@/rsa.crt, key: @D@/rsa.key, subjects: [\"*.*.test\"]}\n",
                 "tls.certificates.a.subjects[0]: \"*.*.test\" may hold '*' only as the whole "
                 "first label (\"*.example.test\") (line 7)");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n"
                       "    a: {cert: @D@/rsa.crt, key: @D@/rsa.key, subjects: [bad_name.test]}\n",
               "tls.certificates.a.subjects[0]: \"bad_name.test\" is not a valid host name");
    EXPECT_HAS(HEAD MX "tls:\n  certificates:\n"
                       "    \"a b\": {cert: @D@/rsa.crt, key: @D@/rsa.key}\n",
               "tls.certificates.a b: the name may hold only");
}

static void test_min_version(void **state)
{
    EXPECT_EXACT(HEAD MX "tls:\n  protocols:\n    min_version: \"1.3\"\n",
                 "tls.protocols.min_version: \"1.3\" cannot be honoured: Tern uses mbedTLS 2.28, "
                 "which speaks TLS 1.2 only; use \"1.2\" (line 7)");
    EXPECT_HAS(HEAD MX "tls:\n  protocols:\n    min_version: 1.3\n", "mbedTLS 2.28");
    EXPECT_EXACT(HEAD MX "tls:\n  protocols:\n    min_version: \"1.1\"\n",
                 "tls.protocols.min_version: \"1.1\" is unsupported and insecure (RFC 8996 "
                 "deprecates TLS 1.0 and 1.1); use \"1.2\" (line 7)");
    EXPECT_HAS(HEAD MX "tls:\n  protocols:\n    min_version: \"1.0\"\n", "unsupported and insecure");
    EXPECT_HAS(HEAD MX "tls:\n  protocols:\n    min_version: \"2\"\n",
               "tls.protocols.min_version: \"2\" is not a TLS version; only \"1.2\" is accepted");
    tern_config *c = load_ok(HEAD MX "tls:\n  protocols:\n    min_version: 1.2\n");
    assert_int_equal(c->tls.min_version, 12);
    tern_config_unref(c);
}

static void test_cipher_suites(void **state)
{
    tern_config *c = load_ok(HEAD MX "tls:\n  protocols:\n    disable_cipher_suites:\n"
                                     "      - TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256\n"
                                     "      - tls_ecdhe_ecdsa_with_chacha20_poly1305_sha256\n");
    size_t n = 0;
    for (const int *p = c->tls.cipher_suites; *p; p++, n++) {
        assert_int_not_equal(*p, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
        assert_int_not_equal(*p, MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
    }
    tern_config_unref(c);
    c = load_ok(HEAD MX);
    size_t all = 0;
    for (const int *p = c->tls.cipher_suites; *p; p++, all++) {
        /* only suites a certificate-based TLS 1.2 server can use */
        const mbedtls_ssl_ciphersuite_t *info = mbedtls_ssl_ciphersuite_from_id(*p);
        assert_non_null(info);
        assert_true(info->max_minor_ver >= MBEDTLS_SSL_MINOR_VERSION_3);
        assert_int_not_equal(info->key_exchange, MBEDTLS_KEY_EXCHANGE_PSK);
    }
    assert_int_equal(n + 2, all);
    tern_config_unref(c);

    EXPECT_EXACT(HEAD MX "tls:\n  protocols:\n    disable_cipher_suites: [TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA265]\n",
                 "tls.protocols.disable_cipher_suites[0]: unknown cipher suite "
                 "\"TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA265\" (did you mean "
                 "\"TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256\"?) (line 7)");
    EXPECT_HAS(HEAD MX "tls:\n  protocols:\n    disable_cipher_suites: [RC4-FOREVER]\n",
               "tls.protocols.disable_cipher_suites[0]: unknown cipher suite \"RC4-FOREVER\"");

    /* Disabling every suite leaves nothing to negotiate. */
    size_t cap = 64 * 1024, len = 0;
    char *yaml = malloc(cap);
    assert_non_null(yaml);
    len += (size_t)snprintf(yaml, cap, "%s%stls:\n  protocols:\n    disable_cipher_suites:\n", HEAD, MX);
    for (const int *p = mbedtls_ssl_list_ciphersuites(); *p; p++)
        len += (size_t)snprintf(yaml + len, cap - len, "      - %s\n", mbedtls_ssl_get_ciphersuite_name(*p));
    assert_true(len < cap);
    EXPECT_EXACT(yaml, "tls.protocols.disable_cipher_suites: every TLS 1.2 cipher suite is "
                       "disabled; nothing would be left to negotiate (line 7)");
    free(yaml);
}

/* ---- other cross rules ------------------------------------------------ */

static void test_storage(void **state)
{
    EXPECT_EXACT(HEAD MX "storage: {backend: postgres}\n",
                 "storage.backend: postgres needs a postgres: section with conninfo (line 5)");
    EXPECT_EXACT(HEAD MX "postgres: {pool_size: 4}\n",
                 "postgres.conninfo: required when a postgres: section is present");
    EXPECT_EXACT(HEAD MX "postgres:\n", "postgres.conninfo: required when a postgres: section is present");
    EXPECT_EXACT(HEAD MX "storage: {backend: mysql}\n",
                 "storage.backend: \"mysql\" is not one of local, postgres (line 5)");
    tern_config *c = load_ok(HEAD MX "postgres: {conninfo: \"dbname=t\"}\n");
    assert_true(c->postgres.present);
    assert_int_equal(c->storage.backend, TERN_STORAGE_LOCAL);
    tern_config_unref(c);
}

/* postgres.blob_dir: absolute, made 0700 when missing, never a
 * world-writable directory. */
static void test_blob_dir(void **state)
{
    EXPECT_HAS(HEAD MX "postgres: {conninfo: x, blob_dir: rel/blobs}\n",
               "postgres.blob_dir: must be an absolute path");
    char base[] = "/tmp/tern-blobcfg.XXXXXX";
    assert_non_null(mkdtemp(base));
    char yaml[512], dir[300];
    snprintf(dir, sizeof dir, "%s/new", base);
    snprintf(yaml, sizeof yaml, HEAD MX "postgres: {conninfo: x, blob_dir: %s}\n", dir);
    tern_config *c = load_ok(yaml);
    assert_string_equal(c->postgres.blob_dir, dir);
    tern_config_unref(c);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(chmod(dir, 0777), 0);
    EXPECT_HAS(yaml, "postgres.blob_dir: is world-writable");
    rmdir(dir);
    rmdir(base);
}

static void test_relay_networks(void **state)
{
    EXPECT_EXACT(HEAD MX "smtp: {relay_networks: [0.0.0.0/0]}\n",
                 "smtp.relay_networks[0]: \"0.0.0.0/0\" is wider than /8: relaying for that much "
                 "of the Internet makes an open relay (line 5)");
    EXPECT_HAS(HEAD MX "smtp: {relay_networks: [10.0.0.0/8, \"::/0\"]}\n",
               "smtp.relay_networks[1]: \"::/0\" is wider than /16");
    EXPECT_HAS(HEAD MX "smtp: {relay_networks: [10.0.0.0/7]}\n", "smtp.relay_networks[0]: \"10.0.0.0/7\" is wider than /8");
    EXPECT_HAS(HEAD MX "smtp: {relay_networks: [\"2001::/15\"]}\n", "is wider than /16");
    EXPECT_EXACT(HEAD MX "smtp: {relay_networks: [10.0.0.300/8]}\n",
                 "smtp.relay_networks[0]: \"10.0.0.300/8\" is not a network (write e.g. "
                 "192.0.2.0/24, 2001:db8::/32) (line 5)");
    EXPECT_EXACT(HEAD MX "smtp: {relay_networks: 10.0.0.0/8}\n",
                 "smtp.relay_networks: expected a list, got a value (line 5)");
    tern_config *c = load_ok(HEAD MX "smtp: {relay_networks: [10.0.0.0/8, \"2001:db8::/16\", \"::1\"]}\n");
    assert_int_equal(c->smtp.n_relay_networks, 3);
    assert_int_equal(c->smtp.relay_networks[2].prefix, 128);
    tern_config_unref(c);
}

static void test_domains(void **state)
{
    EXPECT_EXACT("server: {hostname: a.test}\n" MX,
                 "listeners[0].protocol: smtp, but domains is empty: this listener could accept "
                 "mail for no one; list the local domains under domains: (line 3)");
    EXPECT_HAS("server: {hostname: a.test}\ndomains: []\n" MX, "but domains is empty");
    EXPECT_EXACT("server: {hostname: a.test}\ndomains: [example.test, \"-bad.test\"]\n" MX,
                 "domains[1]: \"-bad.test\" has a label that starts or ends with '-' (line 2)");
    EXPECT_EXACT("server: {hostname: a.test}\ndomains: [example.test, \"example.test.\"]\n" MX,
                 "domains[1]: \"example.test.\" must be written without the trailing dot (line 2)");
    EXPECT_EXACT("server: {hostname: a.test}\ndomains: [example.test, Example.TEST]\n" MX,
                 "domains[1]: \"example.test\" is listed twice (first at line 2) (line 2)");
    EXPECT_HAS("server: {hostname: a.test}\ndomains: [1.2.3.4]\n" MX, "is an address, not a host name");
    /* no smtp listener: no domains needed */
    tern_config *c = load_ok("server: {hostname: a.test}\nlisteners:\n  - {name: h, protocol: http, port: 80}\n");
    assert_int_equal(c->n_domains, 0);
    assert_false(tern_config_is_local_domain(c, "a.test", 6));
    tern_config_unref(c);
    c = load_ok("server: {hostname: a.test}\ndomains: [Example.TEST, b.test]\n" MX);
    assert_string_equal(c->domains[0], "example.test");
    tern_config_unref(c);
}

static void test_memory_threshold(void **state)
{
    /* A threshold above the size limit only means nothing spills. */
    tern_config *c = load_ok(HEAD MX "smtp: {max_message_size: 1MiB, memory_threshold: 2MiB}\n");
    assert_int_equal(c->smtp.memory_threshold, 2 * 1024 * 1024);
    tern_config_unref(c);
    c = load_ok(HEAD MX "smtp: {max_message_size: 1MiB, memory_threshold: 1MiB}\n");
    tern_config_unref(c);
}

static void test_file_relative_paths(void **state)
{
    /* A config written to a temp dir next to copies of nothing: relative
     * names resolve against its own directory, not the cwd. */
    char dir[] = "/tmp/tern-conf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/tern.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(HEAD MX "tls:\n  certificates:\n    main: {cert: sub/x.crt, key: x.key}\n", f);
    fclose(f);
    tern_config_errors_free(&errs);
    assert_null(tern_config_load(path, &errs));
    char want[512];
    snprintf(want, sizeof(want), "tls.certificates.main.cert: %s/sub/x.crt: no such file (line 7)", dir);
    if (!has_error(want, true))
        dump_errors();
    assert_true(has_error(want, true));
    unlink(path);
    rmdir(dir);
}

/* dns: (lib/dns.h through server wiring later) */
static void test_dns(void **state)
{
    tern_config *c = load_ok(HEAD MX);
    assert_int_equal(c->dns.n_resolvers, 0);
    assert_true(c->dns.dnssec);
    assert_null(c->dns.trust_anchor_file);
    assert_int_equal(c->dns.timeout_ms, 10000);
    assert_int_equal(c->dns.cache_size, 8u * 1024 * 1024);
    assert_int_equal(c->dns.cache_max_ttl_ms, 86400000);
    tern_config_unref(c);
    c = load_ok(HEAD MX "dns: {resolvers: system}\n");
    assert_int_equal(c->dns.n_resolvers, 0);
    tern_config_unref(c);
    c = load_ok(HEAD MX "dns:\n  resolvers: [\"127.0.0.1@5353\", \"::1\", \"192.0.2.53\"]\n"
                       "  dnssec: false\n  timeout: 2s\n  cache_size: 1MiB\n  cache_max_ttl: 1h\n"
                       "  unblock_zones: [Test, 2.0.192.in-addr.arpa]\n"
                       "  trust_anchor_file: @D@/rsa.crt\n");
    assert_int_equal(c->dns.n_resolvers, 3);
    assert_string_equal(c->dns.resolvers[0], "127.0.0.1@5353");
    assert_string_equal(c->dns.resolvers[1], "::1");
    assert_false(c->dns.dnssec);
    assert_int_equal(c->dns.timeout_ms, 2000);
    assert_int_equal(c->dns.cache_size, 1024 * 1024);
    assert_int_equal(c->dns.cache_max_ttl_ms, 3600000);
    assert_int_equal(c->dns.n_unblock_zones, 2);
    assert_string_equal(c->dns.unblock_zones[0], "test");
    tern_config_unref(c);
    EXPECT_HAS(HEAD MX "dns: {resolvers: [\"dns.example.test\"]}\n",
               "dns.resolvers[0]: \"dns.example.test\" is not an IPv4 or IPv6 address");
    EXPECT_HAS(HEAD MX "dns: {resolvers: [\"127.0.0.1@0\"]}\n", "has a port that is not 1..65535");
    EXPECT_HAS(HEAD MX "dns: {resolvers: [\"127.0.0.1@\"]}\n", "has a port that is not 1..65535");
    EXPECT_HAS(HEAD MX "dns: {resolvers: []}\n", "write \"system\"");
    EXPECT_HAS(HEAD MX "dns: {resolvers: systen}\n", "expected \"system\" or a list");
    EXPECT_HAS(HEAD MX "dns: {timeout: 50ms}\n", "dns.timeout: 50ms is below the minimum 100ms");
    EXPECT_HAS(HEAD MX "dns: {trust_anchor_file: /nonexistent/root.key}\n",
               "dns.trust_anchor_file: \"/nonexistent/root.key\": no such file");
    EXPECT_HAS(HEAD MX "dns: {resolver: system}\n", "dns.resolver: unknown key (did you mean \"resolvers\"?)");
}

/* queue.mta_sts*: MTA-STS (server/queue_mtasts.c) */
static void test_queue_mta_sts(void **state)
{
    (void)state;
    tern_config *c = load_ok(HEAD MX);
    assert_true(c->queue.mta_sts);
    assert_null(c->queue.mta_sts_ca_file);
    assert_int_equal(c->queue.mta_sts_port, 443);
    tern_config_unref(c);
    c = load_ok(HEAD MX "queue:\n  mta_sts: false\n  mta_sts_ca_file: @D@/rsa.crt\n"
                       "  mta_sts_port: 8443\n");
    assert_false(c->queue.mta_sts);
    assert_non_null(c->queue.mta_sts_ca_file);
    assert_int_equal(c->queue.mta_sts_port, 8443);
    tern_config_unref(c);
    EXPECT_HAS(HEAD MX "queue: {mta_sts_ca_file: /nonexistent/ca.crt}\n",
               "queue.mta_sts_ca_file: \"/nonexistent/ca.crt\": no such file");
    EXPECT_HAS(HEAD MX "queue: {mta_sts_port: 0}\n", "queue.mta_sts_port");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_example_yaml_parses),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_hostname_default),
        cmocka_unit_test(test_ref_generation_helpers),
        cmocka_unit_test(test_errors_api),
        cmocka_unit_test(test_document_errors),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_many_errors_at_once),
        cmocka_unit_test(test_port_collisions),
        cmocka_unit_test(test_plaintext_credentials),
        cmocka_unit_test(test_listener_tls),
        cmocka_unit_test(test_certificates),
        cmocka_unit_test(test_min_version),
        cmocka_unit_test(test_cipher_suites),
        cmocka_unit_test(test_storage),
        cmocka_unit_test(test_blob_dir),
        cmocka_unit_test(test_relay_networks),
        cmocka_unit_test(test_domains),
        cmocka_unit_test(test_memory_threshold),
        cmocka_unit_test(test_file_relative_paths),
        cmocka_unit_test(test_dns),
        cmocka_unit_test(test_queue_mta_sts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
