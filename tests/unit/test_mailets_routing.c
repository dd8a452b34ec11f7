/* Unit tests of the routing mailets that run without a server:
 * RecipientRewrite (with the directory's answers filled in by hand),
 * PostmasterAlias, Forward, the bounce mailets' no-bounce paths, the DSN
 * builder (its output parsed back), parameter checking of every routing
 * builtin, and the repository (file format, names, the release scan into
 * a real spool on a real loop). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/config.h"
#include "mailets/builtin/dsn_build.h"
#include "mailets/engine.h"
#include "mailets/mail.h"
#include "mailets/pipeline_int.h"
#include "mailets/repository.h"

static tern_spool_rcpt g_rs[8];
static tern_envelope g_env;

static tern_envelope *env_new(const char *from, const char *const *rcpts, size_t n)
{
    memset(&g_env, 0, sizeof(g_env));
    memset(g_rs, 0, sizeof(g_rs));
    memcpy(g_env.qid, "0123456789ABCDEF", 16);
    g_env.mail_from = (char *)from;
    for (size_t i = 0; i < n; i++)
        g_rs[i].addr = (char *)rcpts[i];
    g_env.rcpts = g_rs;
    g_env.n_rcpts = n;
    g_env.client_addr = (char *)"192.0.2.7";
    g_env.helo = (char *)"client.test";
    g_env.session_id = (char *)"sess-1";
    g_env.listener = (char *)"mx";
    g_env.received_at = 1700000000;
    return &g_env;
}

static const char MSG[] = "From: <a@example.org>\r\n"
                          "To: <list@example.test>\r\n"
                          "Subject: hello\r\n"
                          "Message-ID: <m1@example.org>\r\n"
                          "\r\n"
                          "body line\r\n";

static const char BASE[] = "server: {hostname: mail.example.test, state_dir: /tmp}\n"
                           "domains: [example.test, other.test]\n"
                           "listeners: [{name: mx, protocol: smtp, port: 2525}]\n";

static tern_pipeline *build(const char *processors, tern_config_errors *errs)
{
    char text[8192];
    snprintf(text, sizeof(text), "%s%s", BASE, processors);
    tern_config *cfg = tern_config_load_string(text, strlen(text), "t.yaml", errs);
    if (cfg == NULL)
        return NULL;
    tern_pipeline *p = tern_pipeline_build(cfg, NULL, errs);
    tern_config_unref(cfg);
    return p;
}

/* A pipeline whose root processor's first step is `step` (YAML flow map). */
static tern_pipeline *one_step(const char *step)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "processors:\n"
             "  root: [%s]\n"
             "  transport: [{mailet: Null}]\n"
             "  error: [{mailet: Null}]\n"
             "  bounces: [{mailet: Null}]\n", step);
    tern_config_errors e;
    tern_config_errors_init(&e);
    tern_pipeline *p = build(text, &e);
    for (size_t i = 0; i < e.n; i++)
        print_message("config: %s\n", e.items[i]);
    tern_config_errors_free(&e);
    return p;
}

/* The config error that building `step` gives, or "" when it builds. */
static char g_err[1024];
static const char *step_error(const char *step)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "processors:\n"
             "  root: [%s]\n"
             "  transport: [{mailet: Null}]\n"
             "  error: [{mailet: Null}]\n"
             "  bounces: [{mailet: Null}]\n", step);
    tern_config_errors e;
    tern_config_errors_init(&e);
    tern_pipeline *p = build(text, &e);
    snprintf(g_err, sizeof(g_err), "%s", e.n ? e.items[0] : "");
    if (p)
        tern_pipeline_unref(p);
    tern_config_errors_free(&e);
    return g_err;
}

static tern_mailet_verdict service(tern_pipeline *p, tern_mail *m, tern_mailet_result *res)
{
    pl_step *st = &p->procs[0].steps[0];
    m->proc = 0;
    m->step = 0;
    m->step_name = st->mailet.name;
    memset(res, 0, sizeof(*res));
    return st->mailet.mod->service(st->mailet.state, m, res);
}

static tern_mail *mail_new(tern_pipeline *p, const char *from, const char *const *rcpts, size_t n)
{
    tern_mail *m = tern_mail_standalone(env_new(from, rcpts, n), (const uint8_t *)MSG,
                                        sizeof(MSG) - 1, p);
    assert_non_null(m);
    return m;
}

/* What the directory would have answered for recipient i. */
static void set_account(tern_mail *m, size_t i, const char *account, const char *detail)
{
    tern_rcpt_entry *r = &m->rcpts[i];
    r->lookup = TERN_LOOKUP_DONE;
    r->kind = TERN_RCPT_ACCOUNT;
    r->account = strdup(account);
    r->detail = detail ? strdup(detail) : NULL;
}

static void set_alias(tern_mail *m, size_t i, bool catch_all, const char *const *targets,
                      size_t n)
{
    tern_rcpt_entry *r = &m->rcpts[i];
    r->lookup = TERN_LOOKUP_DONE;
    r->kind = TERN_RCPT_ALIAS;
    r->catch_all = catch_all;
    r->targets = calloc(n, sizeof(char *));
    for (size_t k = 0; k < n; k++)
        r->targets[k] = strdup(targets[k]);
    r->n_targets = n;
}

static void set_kind(tern_mail *m, size_t i, tern_rcpt_kind kind)
{
    m->rcpts[i].lookup = TERN_LOOKUP_DONE;
    m->rcpts[i].kind = kind;
}

static int rcpt_index(const tern_mail *m, const char *addr)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++)
        if (strcmp(tern_mail_rcpt(m, i), addr) == 0)
            return (int)i;
    return -1;
}

/* ---- RecipientRewrite ------------------------------------------------- */

static void test_rewrite_accounts_and_detail(void **st)
{
    tern_pipeline *p = one_step("{match: All, mailet: RecipientRewrite}");
    assert_non_null(p);
    const char *r[] = {"Alice@Example.Test", "bob+news@example.test", "carol@example.test",
                       "x@elsewhere.org"};
    tern_mail *m = mail_new(p, "s@example.org", r, 4);
    set_account(m, 0, "alice@example.test", NULL);
    set_account(m, 1, "bob@example.test", "news");
    set_account(m, 2, "carol@example.test", NULL);
    set_kind(m, 3, TERN_RCPT_NOT_LOCAL);
    tern_mailet_result res;
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    assert_int_equal(tern_mail_rcpt_count(m), 4);
    assert_string_equal(tern_mail_rcpt(m, 0), "alice@example.test");
    /* The sub-address stays in the address and is kept as an attribute. */
    assert_string_equal(tern_mail_rcpt(m, 1), "bob+news@example.test");
    assert_string_equal(tern_mail_attr_get_str(m, "tern.detail.bob@example.test"), "news");
    assert_string_equal(tern_mail_rcpt(m, 2), "carol@example.test");
    assert_string_equal(tern_mail_rcpt(m, 3), "x@elsewhere.org");
    /* A rewritten recipient keeps its original and is looked up again. */
    assert_int_equal(tern_mail_rcpt_info(m, 0)->orig, 0);
    assert_int_equal(tern_mail_rcpt_info(m, 0)->lookup, TERN_LOOKUP_PENDING);
    /* Untouched ones keep their answer. */
    assert_int_equal(tern_mail_rcpt_info(m, 2)->lookup, TERN_LOOKUP_DONE);
    assert_false(tern_mail_attr_has(m, "tern.alias.hops"));
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

static void test_rewrite_alias_fanout_dedup(void **st)
{
    tern_pipeline *p = one_step("{match: All, mailet: RecipientRewrite}");
    assert_non_null(p);
    const char *r[] = {"a@example.test", "list@example.test", "team@example.test"};
    tern_mail *m = mail_new(p, "s@example.org", r, 3);
    set_account(m, 0, "a@example.test", NULL);
    const char *list[] = {"a@example.test", "b@example.test", "friend@elsewhere.org"};
    set_alias(m, 1, false, list, 3);
    const char *team[] = {"B@example.test", "c@example.test"};
    set_alias(m, 2, false, team, 2);
    tern_mailet_result res;
    /* New recipients: the processor runs again once they are looked up. */
    assert_int_equal(service(p, m, &res), TERN_MAILET_GOTO);
    assert_string_equal(res.processor, "root");
    assert_int_equal(tern_mail_rcpt_count(m), 4);
    assert_true(rcpt_index(m, "a@example.test") >= 0);
    int b = rcpt_index(m, "b@example.test"), f = rcpt_index(m, "friend@elsewhere.org"),
        c = rcpt_index(m, "c@example.test");
    assert_true(b >= 0 && f >= 0 && c >= 0);
    assert_int_equal(rcpt_index(m, "list@example.test"), -1);
    assert_int_equal(rcpt_index(m, "B@example.test"), -1); /* de-duplicated */
    /* Targets derive from their alias's spool recipient. */
    assert_int_equal(tern_mail_rcpt_info(m, (size_t)b)->orig, 1);
    assert_int_equal(tern_mail_rcpt_info(m, (size_t)f)->orig, 1);
    assert_int_equal(tern_mail_rcpt_info(m, (size_t)c)->orig, 2);
    assert_int_equal(tern_mail_rcpt_info(m, (size_t)c)->lookup, TERN_LOOKUP_PENDING);
    int64_t hops = 0;
    assert_true(tern_mail_attr_get_int(m, "tern.alias.hops", &hops));
    assert_int_equal(hops, 1);
    const char *seen = tern_mail_attr_get_str(m, "tern.alias.seen");
    assert_non_null(seen);
    assert_non_null(strstr(seen, "list@example.test"));
    assert_non_null(strstr(seen, "team@example.test"));
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

static void test_rewrite_catch_all_and_no_restart(void **st)
{
    tern_pipeline *p = one_step("{match: All, mailet: RecipientRewrite, restart: false}");
    assert_non_null(p);
    const char *r[] = {"whoever@example.test"};
    tern_mail *m = mail_new(p, "s@example.org", r, 1);
    const char *t[] = {"catchall@example.test"};
    set_alias(m, 0, true, t, 1);
    tern_mailet_result res;
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    assert_int_equal(tern_mail_rcpt_count(m), 1);
    assert_string_equal(tern_mail_rcpt(m, 0), "catchall@example.test");
    assert_int_equal(tern_mail_rcpt_info(m, 0)->orig, 0);
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

static void test_rewrite_loops(void **st)
{
    tern_pipeline *p = one_step("{match: All, mailet: RecipientRewrite}");
    assert_non_null(p);
    tern_mailet_result res;

    /* An alias of itself, alone: nothing can be delivered, so a bounce. */
    const char *r1[] = {"self@example.test"};
    tern_mail *m = mail_new(p, "s@example.org", r1, 1);
    const char *t1[] = {"SELF@example.test"};
    set_alias(m, 0, false, t1, 1);
    assert_int_equal(service(p, m, &res), TERN_MAILET_GOTO);
    assert_string_equal(res.processor, "bounces");
    assert_string_equal(tern_mail_attr_get_str(m, "tern.error.enhanced"), "5.4.6");
    assert_int_equal(tern_mail_rcpt_count(m), 1);
    tern_mail_standalone_free(m);

    /* a -> b -> a: the second round finds a already expanded. */
    const char *r2[] = {"b@example.test", "d@example.test"};
    m = mail_new(p, "s@example.org", r2, 2);
    assert_int_equal(tern_mail_attr_set_str(m, "tern.alias.seen", "a@example.test"), 0);
    assert_int_equal(tern_mail_attr_set_int(m, "tern.alias.hops", 1), 0);
    const char *t2[] = {"a@example.test"};
    set_alias(m, 0, false, t2, 1);
    set_account(m, 1, "d@example.test", NULL);
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    assert_int_equal(tern_mail_rcpt_count(m), 1); /* the loop is cut, d stays */
    assert_string_equal(tern_mail_rcpt(m, 0), "d@example.test");
    tern_mail_standalone_free(m);

    /* The hop limit ends a long chain. */
    tern_pipeline_unref(p);
    p = one_step("{match: All, mailet: RecipientRewrite, max_hops: 3, loop_processor: error}");
    assert_non_null(p);
    const char *r3[] = {"deep@example.test"};
    m = mail_new(p, "s@example.org", r3, 1);
    assert_int_equal(tern_mail_attr_set_int(m, "tern.alias.hops", 3), 0);
    const char *t3[] = {"deeper@example.test"};
    set_alias(m, 0, false, t3, 1);
    assert_int_equal(service(p, m, &res), TERN_MAILET_GOTO);
    assert_string_equal(res.processor, "error");
    assert_string_equal(tern_mail_rcpt(m, 0), "deep@example.test");
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

/* ---- PostmasterAlias --------------------------------------------------- */

static void test_postmaster_alias(void **st)
{
    tern_pipeline *p = one_step("{match: All, mailet: PostmasterAlias}");
    assert_non_null(p);
    const char *r[] = {"PostMaster@Other.Test", "postmaster", "postmaster@elsewhere.org",
                       "postmasterx@example.test"};
    tern_mail *m = mail_new(p, "s@example.org", r, 4);
    set_kind(m, 0, TERN_RCPT_UNKNOWN);
    set_kind(m, 2, TERN_RCPT_NOT_LOCAL);
    set_kind(m, 3, TERN_RCPT_UNKNOWN);
    tern_mailet_result res;
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    /* Default: postmaster@<first domain>; the bare one was a duplicate. */
    assert_int_equal(tern_mail_rcpt_count(m), 3);
    assert_string_equal(tern_mail_rcpt(m, 0), "postmaster@example.test");
    assert_string_equal(tern_mail_rcpt(m, 1), "postmaster@elsewhere.org");
    assert_string_equal(tern_mail_rcpt(m, 2), "postmasterx@example.test");
    assert_int_equal(tern_mail_rcpt_info(m, 0)->orig, 0);
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);

    p = one_step("{match: All, mailet: PostmasterAlias, postmaster: admin@example.test}");
    assert_non_null(p);
    const char *r2[] = {"postmaster@example.test", "postmaster@other.test"};
    m = mail_new(p, "s@example.org", r2, 2);
    /* The directory knows postmaster@example.test: the admin's choice wins. */
    set_account(m, 0, "postmaster@example.test", NULL);
    set_kind(m, 1, TERN_RCPT_UNKNOWN);
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    assert_string_equal(tern_mail_rcpt(m, 0), "postmaster@example.test");
    assert_string_equal(tern_mail_rcpt(m, 1), "admin@example.test");
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

/* ---- Forward ------------------------------------------------------------ */

static void test_forward(void **st)
{
    tern_pipeline *p = one_step(
        "{match: All, mailet: Forward, forward_to: [x@one.org, y@two.org, x@ONE.org]}");
    assert_non_null(p);
    const char *r[] = {"a@example.test", "b@example.test"};
    tern_mail *m = mail_new(p, "s@example.org", r, 2);
    tern_mailet_result res;
    assert_int_equal(service(p, m, &res), TERN_MAILET_CONTINUE);
    assert_int_equal(tern_mail_rcpt_count(m), 2);
    assert_string_equal(tern_mail_rcpt(m, 0), "x@one.org");
    assert_string_equal(tern_mail_rcpt(m, 1), "y@two.org");
    assert_int_equal(tern_mail_rcpt_info(m, 0)->orig, 0);
    assert_int_equal(tern_mail_rcpt_info(m, 1)->orig, 0);
    assert_string_equal(tern_mail_sender(m), "s@example.org");
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);

    p = one_step("{match: All, mailet: Forward, forward_to: z@three.org, processor: transport}");
    assert_non_null(p);
    m = mail_new(p, "s@example.org", r, 2);
    assert_int_equal(service(p, m, &res), TERN_MAILET_GOTO);
    assert_string_equal(res.processor, "transport");
    assert_int_equal(tern_mail_rcpt_count(m), 1);
    assert_string_equal(tern_mail_rcpt(m, 0), "z@three.org");
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

/* ---- parameters -------------------------------------------------------- */

static void test_bad_parameters(void **st)
{
    assert_string_equal(step_error("{match: All, mailet: RecipientRewrite}"), "");
    assert_non_null(strstr(step_error("{match: All, mailet: RecipientRewrite, max_hops: 0}"),
                           "max_hops: expected a number from 1 to 100"));
    assert_non_null(strstr(step_error("{match: All, mailet: RecipientRewrite, restart: maybe}"),
                           "restart: expected true or false"));
    assert_non_null(strstr(step_error("{match: All, mailet: RecipientRewrite, hops: 3}"),
                           "unknown parameter \"hops\""));
    assert_non_null(strstr(step_error("{match: All, mailet: PostmasterAlias, postmaster: nope}"),
                           "postmaster: expected an address"));
    assert_non_null(strstr(step_error("{match: All, mailet: Forward}"),
                           "forward_to: a list of addresses is required"));
    assert_non_null(strstr(step_error("{match: All, mailet: Forward, forward_to: [a@b.c, \"x y\"]}"),
                           "forward_to: \"x y\" is not an address"));
    assert_non_null(strstr(step_error("{match: All, mailet: Redirect}"),
                           "recipients: a list of addresses is required"));
    assert_non_null(strstr(step_error("{match: All, mailet: Redirect, recipients: [a@b.c], "
                                      "inline: some}"),
                           "inline: expected all, headers or body"));
    assert_non_null(strstr(step_error("{match: All, mailet: Redirect, recipients: [a@b.c], "
                                      "sender: bad}"),
                           "sender: expected an address"));
    assert_non_null(strstr(step_error("{match: All, mailet: Redirect, recipients: a@b.c, "
                                      "passThrough: yes}"),
                           "passThrough: expected true or false"));
    assert_string_equal(step_error("{match: All, mailet: Redirect, recipients: [a@b.c], "
                                   "sender: \"<>\", subject_prefix: \"[fwd]\", inline: body, "
                                   "passThrough: true}"), "");
    assert_non_null(strstr(step_error("{match: All, mailet: DSNBounce, attachment: all}"),
                           "attachment: expected message, headers or none"));
    /* conf/ checks that a `processor` parameter names a processor. */
    assert_non_null(strstr(step_error("{match: All, mailet: Bounce, processor: nowhere}"),
                           "processor \"nowhere\" is not a processor"));
    assert_string_equal(step_error("{match: All, mailet: Bounce, processor: error}"), "");
    assert_string_equal(step_error("{match: All, mailet: Bounce, attachment: headers}"), "");
    assert_non_null(strstr(step_error("{match: All, mailet: NotifyPostmaster, to: \"a b\"}"),
                           "to: expected an address"));
    assert_non_null(strstr(step_error("{match: All, mailet: NotifyPostmaster, passThrough: 1}"),
                           "passThrough: expected true or false"));
    assert_non_null(strstr(step_error("{match: All, mailet: ToRepository}"),
                           "repository: a name"));
    assert_non_null(strstr(step_error("{match: All, mailet: ToRepository, repository: ../x}"),
                           "repository: a name"));
    assert_string_equal(step_error("{match: All, mailet: ToRepository, repository: held}"), "");
    assert_non_null(strstr(step_error("{match: All, mailet: RemoteDelivery, via: x}"),
                           "unknown parameter \"via\""));
}

/* ---- bounces that are not sent ------------------------------------------- */

static void test_bounce_not_sent(void **st)
{
    const char *names[] = {"DSNBounce", "Bounce"};
    for (size_t k = 0; k < 2; k++) {
        char step[128];
        snprintf(step, sizeof(step), "{match: All, mailet: %s}", names[k]);
        tern_pipeline *p = one_step(step);
        assert_non_null(p);
        tern_mailet_result res;
        const char *r[] = {"a@example.test", "b@example.test"};
        /* The null sender never gets a bounce. */
        tern_mail *m = mail_new(p, "", r, 2);
        assert_int_equal(service(p, m, &res), TERN_MAILET_FINISH);
        tern_mail_standalone_free(m);
        /* A delivery report is never bounced. */
        tern_mail *m2 = mail_new(p, "s@example.org", r, 2);
        assert_int_equal(tern_mail_header_set(m2, "Content-Type",
                                              "multipart/report; REPORT-TYPE=\"Delivery-Status\"; "
                                              "boundary=x"), 0);
        assert_int_equal(service(p, m2, &res), TERN_MAILET_FINISH);
        tern_mail_standalone_free(m2);
        /* NOTIFY=NEVER and NOTIFY=SUCCESS exclude failure reports. */
        tern_envelope *e = env_new("s@example.org", r, 2);
        g_rs[0].notify = TERN_NOTIFY_NEVER;
        g_rs[1].notify = TERN_NOTIFY_SUCCESS | TERN_NOTIFY_DELAY;
        tern_mail *m3 = tern_mail_standalone(e, (const uint8_t *)MSG, sizeof(MSG) - 1, p);
        assert_int_equal(service(p, m3, &res), TERN_MAILET_FINISH);
        tern_mail_standalone_free(m3);
        tern_pipeline_unref(p);
    }
}

static void test_failed_rcpts_notify(void **st)
{
    const char *r[] = {"a@x.test", "b@x.test", "c@x.test", "d@x.test"};
    tern_envelope *e = env_new("s@example.org", r, 4);
    g_rs[0].notify = TERN_NOTIFY_NEVER;
    g_rs[1].notify = TERN_NOTIFY_FAILURE | TERN_NOTIFY_DELAY;
    g_rs[1].orcpt = (char *)"rfc822;b+2Bx@x.test";
    g_rs[2].notify = TERN_NOTIFY_SUCCESS;
    tern_mail *m = tern_mail_standalone(e, (const uint8_t *)MSG, sizeof(MSG) - 1, NULL);
    assert_int_equal(tern_mail_rcpt_add(m, "added@x.test"), 0);
    tern_dsn_rcpt out[5];
    assert_int_equal(tern_dsn_failed_rcpts(m, out), 3);
    assert_string_equal(out[0].addr, "b@x.test");
    assert_string_equal(out[0].orcpt, "rfc822;b+2Bx@x.test");
    assert_string_equal(out[1].addr, "d@x.test");
    assert_null(out[1].orcpt);
    assert_string_equal(out[2].addr, "added@x.test");
    tern_mail_standalone_free(m);

    char dec[64];
    tern_dsn_xtext_decode("rfc822;a+2Bb+3Dc@x", dec, sizeof(dec));
    assert_string_equal(dec, "rfc822;a+b=c@x");
    tern_dsn_xtext_decode("x+zz+0", dec, sizeof(dec)); /* bad escapes kept */
    assert_string_equal(dec, "x+zz+0");
    tern_dsn_xtext_decode("a+0Db", dec, sizeof(dec)); /* no control bytes out */
    assert_string_equal(dec, "a b");
}

/* ---- the DSN builder, parsed back ------------------------------------------ */

typedef struct part {
    const char *head, *body;
    size_t head_len, body_len;
} part;

/* Splits a multipart body at "--boundary" lines; returns the parts. */
static size_t split_parts(const char *msg, const char *boundary, part *parts, size_t max)
{
    char delim[128];
    snprintf(delim, sizeof(delim), "\r\n--%s", boundary);
    size_t dl = strlen(delim), n = 0;
    const char *p = strstr(msg, delim);
    while (p && n < max) {
        p += dl;
        if (strncmp(p, "--", 2) == 0)
            break; /* the close delimiter */
        assert_true(strncmp(p, "\r\n", 2) == 0);
        p += 2;
        const char *next = strstr(p, delim);
        assert_non_null(next);
        const char *he = strstr(p, "\r\n\r\n");
        assert_true(he != NULL && he <= next);
        parts[n].head = p;
        parts[n].head_len = (size_t)(he - p);
        parts[n].body = he + 4;
        parts[n].body_len = (size_t)(next - he - 4);
        n++;
        p = next;
    }
    return n;
}

static bool span_has(const char *p, size_t len, const char *needle)
{
    return memmem(p, len, needle, strlen(needle)) != NULL;
}

static void test_dsn_report_parsed_back(void **st)
{
    tern_dsn_rcpt rc[2] = {{.addr = "bob@example.test", .orcpt = "rfc822;Bob+2Bx@example.test"},
                           {.addr = "carol@example.test"}};
    tern_dsn_info in = {
        .style = TERN_DSN_REPORT,
        .reporting_mta = "mail.example.test",
        .from = "Mail Delivery System <MAILER-DAEMON@mail.example.test>",
        .to = "<s@example.org>",
        .subject = "Undelivered Mail Returned to Sender",
        .intro = "Sorry.",
        .qid = "QID123",
        .envid = "env-42",
        .arrival = 1700000000,
        .now = 1700000100,
        .code = 550,
        .enhanced = "5.1.1",
        .text = "no such mailbox\r\nInjected: yes",
        .rcpts = rc,
        .n_rcpts = 2,
        .attach = TERN_DSN_ATTACH_HEADERS,
        .orig = (const uint8_t *)MSG,
        .orig_len = sizeof(MSG) - 1,
    };
    size_t len = 0;
    uint8_t *out = tern_dsn_build(&in, &len);
    assert_non_null(out);
    char *s = malloc(len + 1);
    memcpy(s, out, len);
    s[len] = '\0';
    free(out);
    assert_int_equal(strlen(s), len);
    /* Every line ends in CRLF. */
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\n')
            assert_true(i > 0 && s[i - 1] == '\r');
    /* The notice's header. */
    const char *hend = strstr(s, "\r\n\r\n");
    assert_non_null(hend);
    size_t hl = (size_t)(hend - s);
    assert_true(span_has(s, hl, "From: Mail Delivery System <MAILER-DAEMON@mail.example.test>\r\n"));
    assert_true(span_has(s, hl, "To: <s@example.org>\r\n"));
    assert_true(span_has(s, hl, "Auto-Submitted: auto-replied\r\n"));
    assert_true(span_has(s, hl, "Date: "));
    assert_true(span_has(s, hl, "Message-ID: <"));
    const char *ct = strstr(s, "Content-Type: multipart/report; report-type=delivery-status;");
    assert_true(ct != NULL && ct < hend);
    const char *bq = strstr(ct, "boundary=\"");
    assert_non_null(bq);
    char boundary[100];
    bq += 10;
    size_t bl = strcspn(bq, "\"");
    assert_true(bl > 0 && bl < sizeof(boundary));
    memcpy(boundary, bq, bl);
    boundary[bl] = '\0';
    assert_null(strstr(MSG, boundary));

    part parts[4];
    assert_int_equal(split_parts(s, boundary, parts, 4), 3);
    /* 1: the human part quotes the error (as one line). */
    assert_true(span_has(parts[0].head, parts[0].head_len, "Content-Type: text/plain"));
    assert_true(span_has(parts[0].body, parts[0].body_len,
                         "<bob@example.test>: no such mailbox  Injected: yes"));
    assert_false(span_has(s, len, "\r\nInjected: yes"));
    /* 2: message/delivery-status: per-message fields, then per recipient. */
    assert_true(span_has(parts[1].head, parts[1].head_len,
                         "Content-Type: message/delivery-status"));
    const char *ds = parts[1].body;
    size_t dl = parts[1].body_len;
    assert_true(span_has(ds, dl, "Reporting-MTA: dns; mail.example.test\r\n"));
    assert_true(span_has(ds, dl, "Original-Envelope-Id: env-42\r\n"));
    assert_true(span_has(ds, dl, "Arrival-Date: "));
    assert_true(span_has(ds, dl, "\r\n\r\nFinal-Recipient: rfc822; bob@example.test\r\n"
                                 "Original-Recipient: rfc822; Bob+x@example.test\r\n"
                                 "Action: failed\r\nStatus: 5.1.1\r\n"
                                 "Diagnostic-Code: smtp; 550 no such mailbox  Injected: yes\r\n"));
    assert_true(span_has(ds, dl, "\r\n\r\nFinal-Recipient: rfc822; carol@example.test\r\n"
                                 "Action: failed\r\nStatus: 5.1.1\r\n"));
    /* 3: RET=HDRS: the header section only. */
    assert_true(span_has(parts[2].head, parts[2].head_len, "Content-Type: text/rfc822-headers"));
    assert_true(span_has(parts[2].body, parts[2].body_len, "Subject: hello\r\n"));
    assert_false(span_has(parts[2].body, parts[2].body_len, "body line"));
    /* The close delimiter ends the message. */
    char close[128];
    snprintf(close, sizeof(close), "\r\n--%s--\r\n", boundary);
    assert_true(len >= strlen(close) && strcmp(s + len - strlen(close), close) == 0);

    /* It is itself a report: the loop guard sees it. */
    const char *r[] = {"s@example.org"};
    tern_mail *m = tern_mail_standalone(env_new("", r, 1), (const uint8_t *)s, len, NULL);
    assert_non_null(m);
    assert_true(tern_dsn_is_report(m));
    tern_mail_standalone_free(m);
    m = tern_mail_standalone(env_new("", r, 1), (const uint8_t *)MSG, sizeof(MSG) - 1, NULL);
    assert_false(tern_dsn_is_report(m));
    tern_mail_standalone_free(m);
    free(s);
}

static void test_dsn_plain_full_message(void **st)
{
    tern_dsn_rcpt rc[1] = {{.addr = "bob@example.test"}};
    static const char eight[] = "Subject: caf\xc3\xa9\r\n\r\nline one\nline two";
    tern_dsn_info in = {
        .style = TERN_DSN_PLAIN,
        .reporting_mta = "mail.example.test",
        .from = "f",
        .to = "<s@example.org>",
        .subject = "Undelivered",
        .qid = "Q",
        .rcpts = rc,
        .n_rcpts = 1,
        .attach = TERN_DSN_ATTACH_FULL,
        .orig = (const uint8_t *)eight,
        .orig_len = sizeof(eight) - 1,
        .marker = "bounce",
    };
    size_t len = 0;
    char *s = (char *)tern_dsn_build(&in, &len);
    assert_non_null(s);
    char *z = calloc(1, len + 1);
    memcpy(z, s, len);
    free(s);
    assert_non_null(strstr(z, "X-Tern-Notice: bounce\r\n"));
    assert_non_null(strstr(z, "Content-Type: multipart/mixed; boundary=\""));
    assert_null(strstr(z, "message/delivery-status"));
    assert_non_null(strstr(z, "<bob@example.test>: delivery failed\r\n"));
    assert_non_null(strstr(z, "Content-Type: message/rfc822\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n\r\n"
                              "Subject: caf\xc3\xa9\r\n\r\nline one\r\nline two\r\n"));
    const char *r[] = {"s@example.org"};
    tern_mail *m = tern_mail_standalone(env_new("", r, 1), (const uint8_t *)z, len, NULL);
    assert_true(tern_dsn_is_report(m)); /* our marker */
    tern_mail_standalone_free(m);
    free(z);
}

/* ---- repositories --------------------------------------------------------- */

static char g_dir[256];

static void rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
}

static void test_repository_names_and_file(void **st)
{
    assert_true(tern_repository_name_ok("error"));
    assert_true(tern_repository_name_ok("spam.held-1_x"));
    assert_false(tern_repository_name_ok(".."));
    assert_false(tern_repository_name_ok("../etc"));
    assert_false(tern_repository_name_ok("a/b"));
    assert_false(tern_repository_name_ok(""));
    assert_false(tern_repository_id_ok("a.b"));
    assert_false(tern_repository_id_ok("x@root"));
    char id[TERN_REPO_ID_MAX];
    tern_repository_new_id("Q/1.2", id, sizeof(id));
    assert_true(tern_repository_id_ok(id));
    assert_int_equal(strncmp(id, "Q12-", 4), 0);

    snprintf(g_dir, sizeof(g_dir), "/tmp/tern-repo-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/repositories/error", g_dir);
    const char *rcpts[] = {"a@example.test", "b\"q@example.test"};
    const char *orcpts[] = {"rfc822;a@example.test", NULL};
    const uint8_t notify[] = {TERN_NOTIFY_FAILURE, 0};
    tern_repo_meta meta = {
        .id = id, .repository = "error", .qid = "Q12", .session = "sess",
        .sender = "s@example.org", .processor = "transport", .listener = "mx",
        .remote_addr = "192.0.2.1", .helo = "h\x01\xff", .auth_user = NULL,
        .envid = "e1", .ret = TERN_RET_HDRS, .smtputf8 = false, .time = 1700000000,
        .rcpts = rcpts, .orcpts = orcpts, .notify = notify, .n_rcpts = 2,
        .error_code = 451, .error_enhanced = "4.3.0", .error_text = "it \"broke\"\n",
        .error_processor = "transport",
    };
    char *json = tern_repository_meta_json(&meta);
    assert_non_null(json);
    assert_null(strchr(json, '\n'));
    assert_int_equal(tern_repository_write(dir, id, json, (const uint8_t *)MSG, sizeof(MSG) - 1),
                     0);
    assert_int_equal(tern_repository_write(dir, "../x", json, (const uint8_t *)MSG, 3), -EINVAL);
    free(json);
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, id);
    tern_repo_entry e;
    char err[300];
    assert_int_equal(tern_repository_load(path, &e, err, sizeof(err)), 0);
    assert_int_equal(e.len - e.msg_off, sizeof(MSG) - 1);
    assert_memory_equal(e.data + e.msg_off, MSG, sizeof(MSG) - 1);
    assert_string_equal(tern_json_str(tern_json_get(e.meta, "qid")), "Q12");
    assert_string_equal(tern_json_str(tern_json_get(e.meta, "helo")), "h\x01\xef\xbf\xbd");
    const tern_json *er = tern_json_get(e.meta, "error");
    assert_string_equal(tern_json_str(tern_json_get(er, "text")), "it \"broke\"\n");
    int64_t code = 0;
    assert_int_equal(tern_json_int64(tern_json_get(er, "code"), &code), 0);
    assert_int_equal(code, 451);
    tern_envelope *env = tern_repository_envelope(&e, "transport");
    assert_non_null(env);
    assert_string_equal(env->mail_from, "s@example.org");
    assert_int_equal(env->n_rcpts, 2);
    assert_string_equal(env->rcpts[1].addr, "b\"q@example.test");
    assert_string_equal(env->rcpts[0].orcpt, "rfc822;a@example.test");
    assert_int_equal(env->rcpts[0].notify, TERN_NOTIFY_FAILURE);
    assert_int_equal(env->ret, TERN_RET_HDRS);
    assert_string_equal(env->envid, "e1");
    assert_string_equal(env->pipeline, "transport");
    assert_null(env->auth_user);
    tern_repository_envelope_free(env);
    tern_repository_entry_free(&e);
    /* The temp directory is left empty. */
    char tmp[500];
    snprintf(tmp, sizeof(tmp), "%s/tmp", dir);
    DIR *d = opendir(tmp);
    assert_non_null(d);
    struct dirent *de;
    size_t files = 0;
    while ((de = readdir(d)) != NULL)
        files += de->d_name[0] != '.';
    closedir(d);
    assert_int_equal(files, 0);
    /* Damaged files are refused with a reason. */
    FILE *f = fopen(path, "w");
    fputs("{\"sender\": tru\nmessage", f);
    fclose(f);
    assert_int_equal(tern_repository_load(path, &e, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bad header"));
    tern_repository_entry_free(&e);
    f = fopen(path, "w");
    fputs("no newline at all", f);
    fclose(f);
    assert_int_equal(tern_repository_load(path, &e, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no header line"));
    tern_repository_entry_free(&e);
    rm_rf(g_dir);
}

typedef struct scan_result {
    bool done;
    size_t submitted, failed, posted;
    char qid[TERN_QID_LEN];
} scan_result;

static void on_posted(void *arg, const char *qid)
{
    scan_result *r = arg;
    r->posted++;
    snprintf(r->qid, sizeof(r->qid), "%s", qid);
}

static void on_done(void *arg, size_t submitted, size_t failed)
{
    scan_result *r = arg;
    r->done = true;
    r->submitted = submitted;
    r->failed = failed;
}

static void test_repository_release_scan(void **st)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/tern-repo-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    char text[1024];
    snprintf(text, sizeof(text),
             "server: {hostname: mail.example.test, state_dir: %s}\n"
             "domains: [example.test]\n"
             "listeners: [{name: mx, protocol: smtp, port: 2525}]\n", g_dir);
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *cfg = tern_config_load_string(text, strlen(text), "t.yaml", &errs);
    assert_non_null(cfg);
    tern_config_errors_free(&errs);

    /* Two kept mails: one released into `transport`, one left alone, and
     * a file in release/ whose header is damaged (left, logged). */
    char base[400], dir[500];
    tern_repository_base(cfg, base, sizeof(base));
    snprintf(dir, sizeof(dir), "%s/error", base);
    const char *rcpts[] = {"a@example.test", "b@example.test"};
    tern_repo_meta meta = {.id = "Q1-aaaa", .repository = "error", .qid = "Q1",
                           .sender = "s@example.org", .time = 1, .rcpts = rcpts, .n_rcpts = 2,
                           .ret = TERN_RET_FULL, .requiretls = true};
    char *json = tern_repository_meta_json(&meta);
    assert_non_null(strstr(json, "\"requiretls\":true"));
    assert_int_equal(tern_repository_write(dir, "Q1-aaaa", json, (const uint8_t *)MSG,
                                           sizeof(MSG) - 1), 0);
    assert_int_equal(tern_repository_write(dir, "Q2-bbbb", json, (const uint8_t *)MSG,
                                           sizeof(MSG) - 1), 0);
    free(json);
    char from[600], to[600], bad[600];
    snprintf(from, sizeof(from), "%s/Q1-aaaa", dir);
    snprintf(to, sizeof(to), "%s/release/Q1-aaaa@transport", dir);
    assert_int_equal(rename(from, to), 0);
    snprintf(bad, sizeof(bad), "%s/release/Q3-cccc@root", dir);
    FILE *f = fopen(bad, "w");
    fputs("{]\nx", f);
    fclose(f);

    char sdir[400];
    snprintf(sdir, sizeof(sdir), "%s/spool", g_dir);
    tern_spool_opts o = {.segment_size = 1 << 20, .group_commit_max = 64, .fsync = true};
    tern_spool *sp = NULL;
    char *err = NULL;
    assert_int_equal(tern_spool_open(sdir, &o, &sp, &err), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    tern_spool_client *sc = tern_spool_client_new(sp, &loop);
    assert_non_null(sc);
    scan_result r = {0};
    assert_int_equal(tern_repository_scan_released(cfg, &loop, sp, sc, on_posted, on_done, &r), 0);
    for (int i = 0; i < 2000 && !r.done; i++)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(r.done);
    assert_int_equal(r.submitted, 1);
    assert_int_equal(r.posted, 1);
    assert_int_equal(r.failed, 0);
    /* Durable in the spool, entering `transport`, the message intact. */
    tern_envelope *env = tern_spool_envelope_dup(sp, r.qid);
    assert_non_null(env);
    assert_string_equal(env->pipeline, "transport");
    assert_string_equal(env->mail_from, "s@example.org");
    assert_int_equal(env->n_rcpts, 2);
    assert_string_equal(env->rcpts[1].addr, "b@example.test");
    assert_int_equal(env->ret, TERN_RET_FULL);
    assert_true(env->requiretls); /* RFC 8689: kept through the repository */
    tern_envelope_free(env);
    uint8_t *data = NULL;
    size_t dlen = 0;
    assert_int_equal(tern_spool_read_message(sp, r.qid, &data, &dlen), 0);
    assert_int_equal(dlen, sizeof(MSG) - 1);
    assert_memory_equal(data, MSG, dlen);
    free(data);
    /* The released file is gone; the other mail and the damaged file stay. */
    assert_int_equal(access(to, F_OK), -1);
    assert_int_equal(access(bad, F_OK), 0);
    snprintf(from, sizeof(from), "%s/Q2-bbbb", dir);
    assert_int_equal(access(from, F_OK), 0);
    /* A second scan finds nothing new. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(tern_repository_scan_released(cfg, &loop, sp, sc, on_posted, on_done, &r), 0);
    for (int i = 0; i < 2000 && !r.done; i++)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(r.done);
    assert_int_equal(r.submitted, 0);

    tern_spool_client_close(sc);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    tern_spool_close(sp);
    tern_config_unref(cfg);
    rm_rf(g_dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rewrite_accounts_and_detail),
        cmocka_unit_test(test_rewrite_alias_fanout_dedup),
        cmocka_unit_test(test_rewrite_catch_all_and_no_restart),
        cmocka_unit_test(test_rewrite_loops),
        cmocka_unit_test(test_postmaster_alias),
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_bad_parameters),
        cmocka_unit_test(test_bounce_not_sent),
        cmocka_unit_test(test_failed_rcpts_notify),
        cmocka_unit_test(test_dsn_report_parsed_back),
        cmocka_unit_test(test_dsn_plain_full_message),
        cmocka_unit_test(test_repository_names_and_file),
        cmocka_unit_test(test_repository_release_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
