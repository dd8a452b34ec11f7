/* Unit tests of the mailet engine's pure parts: the mail model (header
 * splitting that keeps untouched bytes exact, edits, attributes, limits)
 * and pipeline building (module lookup, parameters, errors with paths). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conf/config.h"
#include "mailets/engine.h"
#include "mailets/mail.h"

static tern_envelope *env_new(const char *from, const char *const *rcpts, size_t n)
{
    static tern_spool_rcpt rs[8];
    static tern_envelope e;
    memset(&e, 0, sizeof(e));
    memset(rs, 0, sizeof(rs));
    memcpy(e.qid, "0123456789ABCDEF", 16);
    e.mail_from = (char *)from;
    for (size_t i = 0; i < n; i++)
        rs[i].addr = (char *)rcpts[i];
    e.rcpts = rs;
    e.n_rcpts = n;
    e.client_addr = (char *)"192.0.2.7";
    e.helo = (char *)"client.test";
    e.session_id = (char *)"sess-1";
    e.listener = (char *)"mx";
    return &e;
}

static const char MSG[] = "Received: from x\r\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                          "From: <a@example.org>\r\n"
                          "Subject:  hello\r\n world \r\n"
                          "From x@y Sat\r\n"
                          "\r\n"
                          "body line\r\n";

static void test_untouched_message_is_byte_exact(void **st)
{
    const char *r[] = {"bob@example.test"};
    tern_mail *m = tern_mail_standalone(env_new("a@example.org", r, 1), (const uint8_t *)MSG,
                                        sizeof(MSG) - 1, NULL);
    assert_non_null(m);
    size_t len = 0;
    uint8_t *out = tern_mail_serialize(m, &len);
    assert_int_equal(len, sizeof(MSG) - 1);
    assert_memory_equal(out, MSG, len);
    assert_int_equal(tern_mail_size(m), len);
    free(out);
    /* Unfolded and trimmed values; the mbox-style line is not a field. */
    assert_string_equal(tern_mail_header_get(m, "subject", 0), "hello world");
    assert_int_equal(tern_mail_header_count(m, NULL), 3);
    assert_string_equal(tern_mail_remote_addr(m), "192.0.2.7");
    assert_string_equal(tern_mail_qid(m), "0123456789ABCDEF");
    assert_string_equal(tern_mail_rcpt(m, 0), "bob@example.test");
    assert_int_equal(tern_mail_body_size(m), strlen("body line\r\n"));
    tern_mail_standalone_free(m);
}

static void test_nul_in_header_kept(void **st)
{
    const char *r[] = {"bob@example.test"};
    static const char msg[] = "X-A: a\0b\r\nSubject: s\r\n\r\nbody\r\n";
    tern_mail *m = tern_mail_standalone(env_new("a@example.org", r, 1), (const uint8_t *)msg,
                                        sizeof(msg) - 1, NULL);
    size_t len = 0;
    uint8_t *out = tern_mail_serialize(m, &len);
    assert_int_equal(len, sizeof(msg) - 1);
    assert_memory_equal(out, msg, len);
    free(out);
    tern_mail *c = tern_mail_clone_empty(m);
    out = tern_mail_serialize(c, &len);
    assert_int_equal(len, sizeof(msg) - 1);
    assert_memory_equal(out, msg, len);
    free(out);
    tern_mail_free(c);
    tern_mail_standalone_free(m);
}

static void test_header_edits(void **st)
{
    const char *r[] = {"bob@example.test"};
    tern_mail *m = tern_mail_standalone(env_new("a@example.org", r, 1), (const uint8_t *)MSG,
                                        sizeof(MSG) - 1, NULL);
    assert_int_equal(tern_mail_header_add(m, "X-Test", "1"), 0);
    assert_string_equal(tern_mail_header_name_at(m, 0), "X-Test");
    /* No header injection through a value or a name. */
    assert_int_equal(tern_mail_header_add(m, "X-Bad", "a\r\nBcc: evil@x"), -1);
    assert_int_equal(tern_mail_header_add(m, "X Bad", "a"), -1);
    assert_int_equal(tern_mail_header_add(m, "X:Bad", "a"), -1);
    assert_int_equal(tern_mail_header_set(m, "Subject", "changed"), 0);
    assert_string_equal(tern_mail_header_get(m, "Subject", 0), "changed");
    assert_int_equal(tern_mail_header_remove(m, "received"), 0);
    assert_null(tern_mail_header_get(m, "Received", 0));
    size_t len = 0;
    char *out = (char *)tern_mail_serialize(m, &len);
    const char want[] = "X-Test: 1\r\nFrom: <a@example.org>\r\nSubject: changed\r\n"
                        "From x@y Sat\r\n\r\nbody line\r\n";
    assert_int_equal(len, sizeof(want) - 1);
    assert_memory_equal(out, want, len);
    free(out);
    tern_mail_standalone_free(m);
}

static void test_no_header_end_and_empty_message(void **st)
{
    const char *r[] = {"bob@example.test"};
    const char only[] = "Subject: x\r\n";
    tern_mail *m = tern_mail_standalone(env_new("", r, 1), (const uint8_t *)only,
                                        sizeof(only) - 1, NULL);
    assert_non_null(m);
    assert_string_equal(tern_mail_sender(m), "");
    assert_string_equal(tern_mail_header_get(m, "subject", 0), "x");
    assert_int_equal(tern_mail_body_size(m), 0);
    tern_mail_standalone_free(m);
    m = tern_mail_standalone(env_new("", r, 1), (const uint8_t *)"", 0, NULL);
    assert_non_null(m);
    assert_int_equal(tern_mail_header_count(m, NULL), 0);
    tern_mail_standalone_free(m);
}

static void test_recipients_and_attributes(void **st)
{
    const char *r[] = {"a@x.test", "b@x.test"};
    tern_mail *m = tern_mail_standalone(env_new("s@y.test", r, 2), (const uint8_t *)MSG,
                                        sizeof(MSG) - 1, NULL);
    assert_int_equal(tern_mail_rcpt_add(m, "c@x.test"), 0);
    assert_int_equal(tern_mail_rcpt_add(m, "bad address"), -1);
    assert_int_equal(tern_mail_rcpt_add(m, "<x@y>"), -1);
    assert_int_equal(tern_mail_rcpt_count(m), 3);
    assert_int_equal(tern_mail_rcpt_info(m, 0)->orig, 0);
    assert_int_equal(tern_mail_rcpt_info(m, 2)->orig, -1);
    assert_int_equal(tern_mail_rcpt_replace(m, 1, "d@x.test"), 0);
    assert_int_equal(tern_mail_rcpt_info(m, 1)->orig, 1); /* derived from the original */
    assert_int_equal(tern_mail_rcpt_remove(m, 0), 0);
    assert_string_equal(tern_mail_rcpt(m, 0), "d@x.test");

    assert_int_equal(tern_mail_attr_set_str(m, "k", "v"), 0);
    assert_int_equal(tern_mail_attr_set_int(m, "n", 42), 0);
    int64_t n = 0;
    assert_true(tern_mail_attr_get_int(m, "n", &n));
    assert_int_equal(n, 42);
    assert_null(tern_mail_attr_get_str(m, "n")); /* typed */
    assert_string_equal(tern_mail_attr_get_str(m, "k"), "v");
    /* Plugins cannot write the engine's namespace. */
    assert_int_equal(tern_mail_attr_set_str_public(m, "tern.error.text", "x"), -1);
    assert_int_equal(tern_mail_attr_set_str(m, "tern.error.text", "x"), 0);
    assert_int_equal(tern_mail_attr_remove_public(m, "tern.error.text"), -1);
    assert_int_equal(tern_mail_attr_remove(m, "k"), 0);
    assert_false(tern_mail_attr_has(m, "k"));

    /* A clone shares the body and copies header and attributes. */
    tern_mail *c = tern_mail_clone_empty(m);
    assert_non_null(c);
    assert_int_equal(tern_mail_rcpt_count(c), 0);
    assert_true(tern_mail_attr_has(c, "n"));
    assert_int_equal(tern_mail_body_replace(c, "new\r\n", 5), 0);
    assert_int_equal(tern_mail_body_size(c), 5);
    assert_int_equal(tern_mail_body_size(m), strlen("body line\r\n"));
    char buf[4];
    assert_int_equal(tern_mail_body_read(m, 5, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "line", 4);
    tern_mail_free(c);
    tern_mail_standalone_free(m);
}

static const char BASE[] = "server: {hostname: mail.example.test, state_dir: /tmp}\n"
                           "domains: [example.test]\n"
                           "listeners: [{name: mx, protocol: smtp, port: 2525}]\n";

static tern_pipeline *build(const char *processors, tern_config_errors *errs)
{
    char text[4096];
    snprintf(text, sizeof(text), "%s%s", BASE, processors);
    tern_config *cfg = tern_config_load_string(text, strlen(text), "t.yaml", errs);
    if (cfg == NULL)
        return NULL;
    tern_pipeline *p = tern_pipeline_build(cfg, NULL, errs);
    tern_config_unref(cfg);
    return p;
}

static bool has_error(const tern_config_errors *e, const char *needle)
{
    for (size_t i = 0; i < e->n; i++)
        if (strstr(e->items[i], needle))
            return true;
    return false;
}

static void test_pipeline_build_and_errors(void **st)
{
    tern_config_errors e;
    tern_config_errors_init(&e);
    tern_pipeline *p = build("processors:\n"
                             "  root: [{match: All, mailet: ToProcessor, processor: b}]\n"
                             "  b: [{mailet: Null}]\n"
                             "  error: [{mailet: Null}]\n"
                             "  bounces: [{mailet: Null}]\n", &e);
    assert_non_null(p);
    assert_int_equal(e.n, 0);
    assert_int_equal(tern_pipeline_processor(p, "b"), 1);
    assert_int_equal(tern_pipeline_processor(p, "nope"), -1);
    tern_pipeline_unref(p);

    p = build("processors:\n"
              "  root:\n"
              "    - {match: {and: [All, Nope]}, mailet: ToProcessor}\n"
              "    - {match: All, mailet: Null, extra: 1}\n"
              "    - {match: \"All=x\", mailet: Null}\n"
              "  error: [{mailet: Null}]\n"
              "  bounces: [{mailet: All}]\n", &e);
    assert_null(p);
    assert_true(has_error(&e, "processors.root[0]: line 6: unknown matcher \"Nope\""));
    assert_true(has_error(&e, "processors.root[0]: line 6: ToProcessor: processor: a processor name is required"));
    assert_true(has_error(&e, "unknown parameter \"extra\""));
    assert_true(has_error(&e, "All takes no condition"));
    assert_true(has_error(&e, "\"All\" is not a mailet"));
    tern_config_errors_free(&e);

    /* The shipped chain when `processors:` is absent. */
    tern_config_errors_init(&e);
    tern_config *cfg = tern_config_load_string(BASE, strlen(BASE), "t.yaml", &e);
    assert_non_null(cfg);
    assert_true(cfg->mailets.default_processors);
    assert_non_null(tern_config_processor(cfg, "local-delivery"));
    assert_non_null(tern_config_processor(cfg, "relay"));
    assert_non_null(tern_config_processor(cfg, "spam"));
    tern_config_unref(cfg);
    tern_config_errors_free(&e);
}

static void test_params(void **st)
{
    tern_mailet_param items[] = {{.key = "a", .value = "1"}, {.key = "b", .value = "2"}};
    tern_mailet_params p = {items, 2};
    assert_string_equal(tern_param_str(&p, "b"), "2");
    assert_null(tern_param_str(&p, "c"));
    char err[200];
    static const char *const ok[] = {"a", "b", NULL};
    static const char *const only_a[] = {"a", NULL};
    assert_int_equal(tern_param_check(&p, ok, err, sizeof(err)), 0);
    assert_int_equal(tern_param_check(&p, only_a, err, sizeof(err)), -1);
    assert_string_equal(err, "unknown parameter \"b\" (known: a)");
    assert_non_null(tern_builtin_find("LocalDelivery"));
    assert_null(tern_builtin_find("localdelivery"));
    const tern_mailet_host *h = tern_mailet_host_table();
    assert_int_equal(h->abi_version, TERN_MAILET_ABI_VERSION);
    assert_int_equal(h->struct_size, sizeof(tern_mailet_host));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_untouched_message_is_byte_exact),
        cmocka_unit_test(test_header_edits),
        cmocka_unit_test(test_nul_in_header_kept),
        cmocka_unit_test(test_no_header_end_and_empty_message),
        cmocka_unit_test(test_recipients_and_attributes),
        cmocka_unit_test(test_pipeline_build_and_errors),
        cmocka_unit_test(test_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
