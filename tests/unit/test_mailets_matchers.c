/* Unit tests for the builtin matchers (mailets/builtin/): each one's match
 * hook on mails built with tern_mail_standalone() (recipients, sender,
 * client address, AUTH identity, header fields, body, attributes, directory
 * lookups set as the engine would), every bad condition refused at init
 * with its message, and conditions reaching the matchers through a pipeline
 * built from YAML (including inside and/or/not). Input: test-authored
 * envelopes, messages and YAML. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conf/config.h"
#include "lib/log.h"
#include "mailets/engine.h"
#include "mailets/mail.h"
#include "mailets/pipeline_int.h"

/* ---- helpers ------------------------------------------------------------- */

typedef struct {
    const char *from;     /* NULL: null sender */
    const char *rcpts[8]; /* NULL-terminated */
    const char *client;   /* NULL: internal mail */
    const char *auth;     /* NULL: not authenticated */
    const char *msg;      /* NULL: a small default message */
    size_t msg_len;       /* 0: strlen(msg) */
} mail_spec;

static const char default_msg[] = "From: a@example.org\r\n"
                                  "To: b@example.org\r\n"
                                  "Subject: hello\r\n"
                                  "\r\n"
                                  "body\r\n";

static tern_mail *mail_new_p(const mail_spec *s, tern_pipeline *p)
{
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    tern_qid(env.qid);
    env.mail_from = (char *)(s->from ? s->from : "");
    tern_spool_rcpt rc[8];
    memset(rc, 0, sizeof(rc));
    size_t n = 0;
    while (n < 8 && s->rcpts[n]) {
        rc[n].addr = (char *)s->rcpts[n];
        n++;
    }
    env.rcpts = rc;
    env.n_rcpts = n;
    env.client_addr = (char *)(s->client ? s->client : "");
    env.auth_user = (char *)s->auth;
    env.helo = (char *)"client.example.net";
    env.session_id = (char *)"test-session";
    env.listener = (char *)"mx";
    const char *msg = s->msg ? s->msg : default_msg;
    size_t len = s->msg && s->msg_len ? s->msg_len : strlen(msg);
    tern_mail *m = tern_mail_standalone(&env, (const uint8_t *)msg, len, p);
    assert_non_null(m);
    return m;
}

static tern_mail *mail_new(const mail_spec *s)
{
    return mail_new_p(s, NULL);
}

/* Sets recipient i's directory answer as the engine's lookup would. */
static void set_lookup(tern_mail *m, size_t i, tern_rcpt_kind kind)
{
    assert_true(i < m->n_rcpts);
    m->rcpts[i].lookup = TERN_LOOKUP_DONE;
    m->rcpts[i].kind = kind;
}

typedef struct {
    const tern_mailet_module *mod;
    void *state;
} inst;

static inst inst_new(const char *name, const char *cond)
{
    inst in = {tern_builtin_find(name), NULL};
    assert_non_null(in.mod);
    assert_true(in.mod->kinds & TERN_MAILET_KIND_MATCHER);
    tern_mailet_param item = {.key = "condition", .value = cond};
    tern_mailet_params ps = {cond ? &item : NULL, cond ? 1 : 0};
    char err[256] = "";
    int r = in.mod->init(tern_mailet_host_table(), &ps, &in.state, err, sizeof(err));
    if (r != 0)
        print_message("unexpected init failure of %s=%s: %s\n", name, cond ? cond : "(none)", err);
    assert_int_equal(r, 0);
    return in;
}

static void inst_free(inst *in)
{
    if (in->mod->deinit)
        in->mod->deinit(in->state);
}

/* Init must fail, with `want` somewhere in the message. */
static void init_fails(const char *name, const char *cond, const char *want)
{
    const tern_mailet_module *mod = tern_builtin_find(name);
    assert_non_null(mod);
    tern_mailet_param item = {.key = "condition", .value = cond};
    tern_mailet_params ps = {cond ? &item : NULL, cond ? 1 : 0};
    char err[256] = "";
    void *state = NULL;
    int r = mod->init(tern_mailet_host_table(), &ps, &state, err, sizeof(err));
    if (r == 0 || strstr(err, want) == NULL)
        print_message("%s=%s: r=%d err=\"%s\", wanted \"%s\"\n", name, cond ? cond : "(none)", r,
                      err, want);
    assert_int_equal(r, -1);
    assert_non_null(strstr(err, want));
}

/* Runs the matcher and returns the matched flags as a string "101". */
static int run(inst *in, tern_mail *m, char *out)
{
    size_t n = tern_mail_rcpt_count(m);
    bool matched[8] = {false};
    assert_true(n <= 8);
    int r = in->mod->match(in->state, m, matched);
    for (size_t i = 0; i < n; i++)
        out[i] = matched[i] ? '1' : '0';
    out[n] = '\0';
    return r;
}

/* One matcher, one condition, one mail: the expected flags. */
static void expect(const char *name, const char *cond, tern_mail *m, const char *want)
{
    inst in = inst_new(name, cond);
    char got[9];
    assert_int_equal(run(&in, m, got), 0);
    if (strcmp(got, want) != 0)
        print_message("%s=%s: got %s, want %s\n", name, cond ? cond : "", got, want);
    assert_string_equal(got, want);
    inst_free(&in);
}

static const mail_spec three = {
    .from = "alice@example.org",
    .rcpts = {"bob@example.org", "carol@Example.NET", "dave@elsewhere.test"},
    .client = "192.0.2.10",
};

/* ---- every builtin matcher is registered --------------------------------- */

static void test_registered(void **state)
{
    static const char *const names[] = {"All",
                                        "RecipientIsLocal",
                                        "HostIsLocal",
                                        "RecipientIs",
                                        "RecipientIsRegex",
                                        "SenderIsRegex",
                                        "RecipientDomainIs",
                                        "SenderIs",
                                        "SenderIsNull",
                                        "SenderIsLocal",
                                        "SMTPAuthSuccessful",
                                        "SMTPAuthUserIs",
                                        "RemoteAddrInNetwork",
                                        "RemoteAddrNotInNetwork",
                                        "RelayLimit",
                                        "SizeGreaterThan",
                                        "HasHeader",
                                        "HasAttachment",
                                        "HasMailAttribute",
                                        "IsMarkedAsSpam",
                                        "TooManyRecipients"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const tern_mailet_module *mod = tern_builtin_find(names[i]);
        if (mod == NULL)
            print_message("missing: %s\n", names[i]);
        assert_non_null(mod);
        assert_int_equal(mod->kinds, TERN_MAILET_KIND_MATCHER);
        assert_non_null(mod->match);
        assert_int_equal(mod->abi_version, TERN_MAILET_ABI_VERSION);
    }
}

/* ---- directory-based -------------------------------------------------------- */

static void test_recipient_is_local(void **state)
{
    mail_spec s = {.from = "x@example.org",
                   .rcpts = {"acct@example.org", "alias@example.org", "nobody@example.org",
                             "far@elsewhere.test", "any@catchall.test"}};
    tern_mail *m = mail_new(&s);
    set_lookup(m, 0, TERN_RCPT_ACCOUNT);
    set_lookup(m, 1, TERN_RCPT_ALIAS);
    set_lookup(m, 2, TERN_RCPT_UNKNOWN);
    set_lookup(m, 3, TERN_RCPT_NOT_LOCAL);
    set_lookup(m, 4, TERN_RCPT_ALIAS);
    m->rcpts[4].catch_all = true;
    expect("RecipientIsLocal", NULL, m, "11001");
    expect("HostIsLocal", NULL, m, "11101");

    /* A recipient whose lookup is not done: the matcher cannot decide. */
    m->rcpts[2].lookup = TERN_LOOKUP_PENDING;
    inst in = inst_new("RecipientIsLocal", NULL);
    char got[9];
    assert_int_equal(run(&in, m, got), -1);
    inst_free(&in);
    in = inst_new("HostIsLocal", NULL);
    m->rcpts[2].lookup = TERN_LOOKUP_FAILED;
    assert_int_equal(run(&in, m, got), -1);
    inst_free(&in);
    tern_mail_standalone_free(m);

    init_fails("RecipientIsLocal", "x", "takes no condition");
    init_fails("RecipientIsLocal", "", "takes no condition");
    init_fails("HostIsLocal", "example.org", "takes no condition");
}

/* ---- recipient lists ------------------------------------------------------- */

static void test_recipient_is(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("RecipientIs", "bob@example.org", m, "100");
    /* The domain compares case-insensitively; the local part as written. */
    expect("RecipientIs", "carol@example.net", m, "010");
    expect("RecipientIs", "Carol@example.net", m, "000");
    expect("RecipientIs", " <bob@EXAMPLE.org> ,dave@elsewhere.test", m, "101");
    expect("RecipientIs", "nobody@example.org", m, "000");
    tern_mail_standalone_free(m);

    init_fails("RecipientIs", NULL, "needs a condition, e.g. RecipientIs=");
    init_fails("RecipientIs", "  ", "needs a condition");
    init_fails("RecipientIs", "bob@example.org,,x@y", "empty item 2");
    init_fails("RecipientIs", "bob@example.org,", "empty item 2");
    init_fails("RecipientIs", "bob", "\"bob\" is not an address");
    init_fails("RecipientIs", "@example.org", "is not an address");
    init_fails("RecipientIs", "bob@", "is not an address");
    init_fails("RecipientIs", "bob smith@example.org", "is not an address");
    init_fails("RecipientIs", "<>", "null sender");
}

static void test_recipient_domain_is(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("RecipientDomainIs", "example.org", m, "100");
    expect("RecipientDomainIs", "EXAMPLE.net, elsewhere.test.", m, "011");
    /* Subdomains are other domains. */
    expect("RecipientDomainIs", "org, sub.example.org", m, "000");
    tern_mail_standalone_free(m);

    init_fails("RecipientDomainIs", NULL, "needs a condition");
    init_fails("RecipientDomainIs", "bob@example.org", "\"bob@example.org\" is not a domain");
    init_fails("RecipientDomainIs", "a.test,,b.test", "empty item 2");
    init_fails("RecipientDomainIs", ".", "is not a domain");
}

/* ---- regexes ------------------------------------------------------------------ */

static void test_recipient_is_regex(void **state)
{
    tern_mail *m = mail_new(&three);
    /* Whole-address match, case-insensitive by default. */
    expect("RecipientIsRegex", "^(bob|carol)@.*$", m, "110");
    expect("RecipientIsRegex", "(bob|carol)@.*", m, "110");
    expect("RecipientIsRegex", "bob", m, "000"); /* not a substring search */
    expect("RecipientIsRegex", ".*@example\\.(org|net)", m, "110");
    expect("RecipientIsRegex", "CAROL@.*", m, "010");
    expect("RecipientIsRegex", "(?-i)CAROL@.*", m, "000");
    expect("RecipientIsRegex", ".*@EXAMPLE\\.NET", m, "010");
    tern_mail_standalone_free(m);

    init_fails("RecipientIsRegex", NULL, "needs a condition");
    init_fails("RecipientIsRegex", "(bob",
               "invalid regex \"(bob\": missing closing parenthesis at offset 4");
    init_fails("RecipientIsRegex", "a[", "missing terminating ] for character class at offset 2");
    init_fails("RecipientIsRegex", "*x",
               "quantifier does not follow a repeatable item at offset 0");
}

static void test_sender_is_regex(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("SenderIsRegex", ".*@example\\.org", m, "111");
    expect("SenderIsRegex", "ALICE@.*", m, "111");
    expect("SenderIsRegex", "bob@.*", m, "000");
    expect("SenderIsRegex", "example", m, "000");
    tern_mail_standalone_free(m);

    /* The null sender never matches, not even ".*". */
    mail_spec s = {.from = NULL, .rcpts = {"bob@example.org", "x@example.org"}};
    m = mail_new(&s);
    expect("SenderIsRegex", ".*", m, "00");
    tern_mail_standalone_free(m);

    init_fails("SenderIsRegex", "", "needs a condition");
    init_fails("SenderIsRegex", "(?<n>a)(?<n>b)", "invalid regex");
}

/* A regex that backtracks catastrophically on a hostile value gives up at
 * the match limit: the matcher says it cannot decide. */
static void test_regex_limit(void **state)
{
    char from[200];
    /* A 'b' later on defeats PCRE2's required-character shortcut. */
    memset(from, 'a', 60);
    strcpy(from + 60, "@b.example");
    mail_spec s = {.from = from, .rcpts = {"bob@example.org"}};
    tern_mail *m = mail_new(&s);
    inst in = inst_new("SenderIsRegex", "(a+)+b");
    char got[9];
    assert_int_equal(run(&in, m, got), -1);
    inst_free(&in);
    tern_mail_standalone_free(m);
}

/* ---- sender ------------------------------------------------------------------ */

static void test_sender_is(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("SenderIs", "alice@example.org", m, "111");
    expect("SenderIs", "x@y.test, alice@EXAMPLE.ORG", m, "111");
    expect("SenderIs", "Alice@example.org", m, "000");
    expect("SenderIs", "bob@example.org", m, "000");
    tern_mail_standalone_free(m);

    mail_spec s = {.from = NULL, .rcpts = {"bob@example.org"}};
    m = mail_new(&s);
    expect("SenderIs", "alice@example.org", m, "0");
    expect("SenderIsNull", NULL, m, "1");
    tern_mail_standalone_free(m);
    m = mail_new(&three);
    expect("SenderIsNull", NULL, m, "000");
    tern_mail_standalone_free(m);

    init_fails("SenderIs", NULL, "needs a condition");
    init_fails("SenderIs", "<>", "\"<>\" is the null sender, not an address (SenderIsNull");
    init_fails("SenderIs", "alice", "is not an address");
    init_fails("SenderIsNull", "x", "takes no condition");
}

static const char matcher_yaml[] = "domains: [example.org, Example.NET]\n"
                                   "listeners:\n  - {name: mx, protocol: smtp, port: 25}\n"
                                   "processors:\n"
                                   "  root:\n"
                                   "    - match: All\n"
                                   "      mailet: \"Null\"\n"
                                   "  error:\n"
                                   "    - mailet: \"Null\"\n"
                                   "  bounces:\n"
                                   "    - mailet: \"Null\"\n";

static tern_pipeline *pipeline_from(const char *yaml, tern_config_errors *errs)
{
    tern_config_errors_init(errs);
    tern_config *c = tern_config_load_string(yaml, strlen(yaml), "test.yaml", errs);
    if (c == NULL) {
        for (size_t i = 0; i < errs->n; i++)
            print_message("config: %s\n", errs->items[i]);
        return NULL;
    }
    tern_pipeline *p = tern_pipeline_build(c, NULL, errs);
    tern_config_unref(c);
    return p;
}

static void test_sender_is_local(void **state)
{
    tern_config_errors errs;
    tern_pipeline *p = pipeline_from(matcher_yaml, &errs);
    assert_non_null(p);
    tern_config_errors_free(&errs);

    static const struct {
        const char *from;
        const char *want;
    } cases[] = {
        {"alice@example.org", "11"},
        {"alice@EXAMPLE.ORG", "11"},
        {"alice@example.net", "11"},
        {"alice@example.org.", "11"},
        {"alice@sub.example.org", "00"},
        {"alice@elsewhere.test", "00"},
        {"alice", "00"},
        {NULL, "00"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mail_spec s = {.from = cases[i].from, .rcpts = {"a@b.test", "c@d.test"}};
        tern_mail *m = mail_new_p(&s, p);
        expect("SenderIsLocal", NULL, m, cases[i].want);
        tern_mail_standalone_free(m);
    }
    /* A mail without a config: cannot decide rather than guess. */
    mail_spec s = {.from = "alice@example.org", .rcpts = {"a@b.test"}};
    tern_mail *m = mail_new(&s);
    inst in = inst_new("SenderIsLocal", NULL);
    char got[9];
    assert_int_equal(run(&in, m, got), -1);
    inst_free(&in);
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);

    init_fails("SenderIsLocal", "example.org", "takes no condition");
}

/* ---- SMTP session ------------------------------------------------------------- */

static void test_smtp_auth(void **state)
{
    mail_spec s = three;
    tern_mail *m = mail_new(&s);
    expect("SMTPAuthSuccessful", NULL, m, "000");
    expect("SMTPAuthUserIs", "alice@example.org", m, "000");
    tern_mail_standalone_free(m);

    s.auth = "alice@example.org";
    m = mail_new(&s);
    expect("SMTPAuthSuccessful", NULL, m, "111");
    expect("SMTPAuthUserIs", "alice@example.org", m, "111");
    expect("SMTPAuthUserIs", "bob@example.org, alice@Example.Org", m, "111");
    expect("SMTPAuthUserIs", "Alice@example.org", m, "000");
    expect("SMTPAuthUserIs", "alice", m, "000");
    tern_mail_standalone_free(m);

    s.auth = "relayuser"; /* a listener's static login: no domain */
    m = mail_new(&s);
    expect("SMTPAuthUserIs", "RelayUser", m, "111");
    expect("SMTPAuthUserIs", "relayuser@example.org", m, "000");
    tern_mail_standalone_free(m);

    init_fails("SMTPAuthSuccessful", "yes", "takes no condition");
    init_fails("SMTPAuthUserIs", NULL, "needs a condition");
    init_fails("SMTPAuthUserIs", "a b", "\"a b\" is not a user name");
    init_fails("SMTPAuthUserIs", "a,,b", "empty item 2");
}

static void test_remote_addr(void **state)
{
    static const struct {
        const char *client, *cond, *in, *notin;
    } cases[] = {
        {"192.0.2.10", "192.0.2.0/24", "11", "00"},
        {"192.0.2.10", "192.0.2.10", "11", "00"},
        {"192.0.2.10", "192.0.2.11", "00", "11"},
        {"192.0.2.10", "10.0.0.0/8, 192.0.0.0/16", "11", "00"},
        {"192.0.2.10", "192.0.*", "11", "00"},
        {"192.0.2.10", "192.0.3.*", "00", "11"},
        {"192.0.2.10", "192.*.*.*", "11", "00"},
        {"192.0.2.10", "192.0.2.0/255.255.255.0", "11", "00"},
        {"192.0.2.10", "192.0.3.0/255.255.255.0", "00", "11"},
        {"192.0.2.10", "0.0.0.0/0", "11", "00"},
        {"192.0.2.10", "::/0", "00", "11"},
        {"::ffff:192.0.2.10", "192.0.2.0/24", "11", "00"},
        {"2001:db8::5", "2001:db8::/32", "11", "00"},
        {"2001:db8::5", "[2001:db8::5]", "11", "00"},
        {"2001:db9::5", "2001:db8::/32, 127.0.0.1", "00", "11"},
        {"127.0.0.1", "127.0.0.0/8, ::1", "11", "00"},
        /* Internal mail (no client) matches neither. */
        {NULL, "0.0.0.0/0, ::/0", "00", "00"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mail_spec s = {
            .from = "a@b.test", .rcpts = {"x@y.test", "z@y.test"}, .client = cases[i].client};
        tern_mail *m = mail_new(&s);
        expect("RemoteAddrInNetwork", cases[i].cond, m, cases[i].in);
        expect("RemoteAddrNotInNetwork", cases[i].cond, m, cases[i].notin);
        tern_mail_standalone_free(m);
    }
    /* A client address that is not an IP: cannot decide. */
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test"}, .client = "unix-socket"};
    tern_mail *m = mail_new(&s);
    inst in = inst_new("RemoteAddrNotInNetwork", "10.0.0.0/8");
    char got[9];
    assert_int_equal(run(&in, m, got), -1);
    inst_free(&in);
    tern_mail_standalone_free(m);

    init_fails("RemoteAddrInNetwork", NULL, "needs a condition");
    init_fails("RemoteAddrNotInNetwork", "", "needs a condition");
    init_fails("RemoteAddrInNetwork", "10.0.0.0/33", "\"10.0.0.0/33\" is not a network");
    init_fails("RemoteAddrInNetwork", "10.0.0.0/8,example.org", "\"example.org\" is not a network");
    init_fails("RemoteAddrInNetwork", "10.0.0.0/255.0.255.0", "is not a network");
    init_fails("RemoteAddrInNetwork", "*", "is not a network");
    init_fails("RemoteAddrInNetwork", "10.*.0.*", "is not a network");
    init_fails("RemoteAddrInNetwork", "10..*", "is not a network");
    init_fails("RemoteAddrInNetwork", "300.*", "is not a network");
    init_fails("RemoteAddrInNetwork", "2001:db8::/129", "is not a network");
    init_fails("RemoteAddrInNetwork", "10.0.0.0/8,", "empty item 2");
}

/* ---- message ------------------------------------------------------------------- */

static void test_relay_limit(void **state)
{
    char msg[4096];
    size_t o = 0;
    for (int i = 0; i < 5; i++)
        o += (size_t)snprintf(msg + o, sizeof(msg) - o,
                              "Received: from h%d.test\r\n\tby mx.test; Sat, 21 Nov 2026\r\n", i);
    /* Names are case-insensitive; look-alikes do not count. */
    o += (size_t)snprintf(msg + o, sizeof(msg) - o,
                          "RECEIVED: from x\r\nX-Received: y\r\nReceived-SPF: pass\r\n"
                          "Subject: s\r\n\r\nReceived: in the body\r\n");
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test", "z@y.test"}, .msg = msg};
    tern_mail *m = mail_new(&s);
    expect("RelayLimit", "1", m, "11");
    expect("RelayLimit", "6", m, "11");
    expect("RelayLimit", "7", m, "00");
    expect("RelayLimit", " 30 ", m, "00");
    tern_mail_standalone_free(m);
    m = mail_new(&three);
    expect("RelayLimit", "1", m, "000");
    tern_mail_standalone_free(m);

    init_fails("RelayLimit", NULL, "needs a condition, e.g. RelayLimit=30");
    init_fails("RelayLimit", "0", "\"0\" is not a count of Received fields (1 to 10000)");
    init_fails("RelayLimit", "-1", "is not a count");
    init_fails("RelayLimit", "ten", "is not a count");
    init_fails("RelayLimit", "10001", "is not a count");
    init_fails("RelayLimit", "99999999999999999999999", "is not a count");
}

static void test_size_greater_than(void **state)
{
    /* Header and body as stored: exactly the message's bytes. */
    tern_mail *m = mail_new(&three);
    size_t len = strlen(default_msg);
    assert_int_equal(tern_mail_size(m), len);
    char cond[32];
    snprintf(cond, sizeof(cond), "%zu", len - 1);
    expect("SizeGreaterThan", cond, m, "111");
    snprintf(cond, sizeof(cond), "%zu", len);
    expect("SizeGreaterThan", cond, m, "000");
    expect("SizeGreaterThan", "1k", m, "000");
    tern_mail_standalone_free(m);

    size_t big = 10 * 1024 + 1;
    char *msg = malloc(big + 1);
    assert_non_null(msg);
    memcpy(msg, "Subject: big\r\n\r\n", 16);
    memset(msg + 16, 'x', big - 16);
    msg[big] = '\0';
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test"}, .msg = msg};
    m = mail_new(&s);
    expect("SizeGreaterThan", "10k", m, "1");
    expect("SizeGreaterThan", "10K", m, "1");
    expect("SizeGreaterThan", "10KiB", m, "1");
    expect("SizeGreaterThan", "10241", m, "0");
    expect("SizeGreaterThan", "10kB", m, "1"); /* 10000 */
    expect("SizeGreaterThan", "11k", m, "0");
    expect("SizeGreaterThan", "1m", m, "0");
    expect("SizeGreaterThan", "1g", m, "0");
    expect("SizeGreaterThan", " 10240 ", m, "1");
    tern_mail_standalone_free(m);
    free(msg);

    init_fails("SizeGreaterThan", NULL, "needs a condition");
    init_fails("SizeGreaterThan", "10x", "\"10x\" is not a size");
    init_fails("SizeGreaterThan", "k", "is not a size");
    init_fails("SizeGreaterThan", "-5", "is not a size");
    init_fails("SizeGreaterThan", "99999999999g", "is not a size");
}

static void test_has_header(void **state)
{
    static const char msg[] = "X-Spam-Flag: YES\r\n"
                              "X-Spam-Score: 7.5\r\n"
                              "X-Tag: first\r\n"
                              "X-Tag: second\r\n"
                              "Subject: a folded\r\n"
                              " subject line\r\n"
                              "\r\n"
                              "X-Body: not a field\r\n";
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test", "z@y.test"}, .msg = msg};
    tern_mail *m = mail_new(&s);
    expect("HasHeader", "X-Spam-Flag", m, "11");
    expect("HasHeader", "x-spam-flag", m, "11");
    expect("HasHeader", "X-Body", m, "00");
    expect("HasHeader", "X-Spam-Flag=^yes$", m, "11");
    expect("HasHeader", "X-Spam-Flag=(?-i)^yes$", m, "00");
    expect("HasHeader", "X-Spam-Flag=no", m, "00");
    /* Every condition must hold. */
    expect("HasHeader", "X-Spam-Flag=yes+X-Spam-Score", m, "11");
    expect("HasHeader", "X-Spam-Flag=yes + X-Missing", m, "00");
    expect("HasHeader", "X-Spam-Score=^[5-9]\\.", m, "11");
    /* Any field of the name may match. */
    expect("HasHeader", "X-Tag=^second$", m, "11");
    /* The value is unfolded. */
    expect("HasHeader", "Subject=folded subject", m, "11");
    /* A literal '+' written as \x2b, the quantifier as {1,}. */
    tern_mail_standalone_free(m);
    static const char msg2[] = "X-Level: a+b\r\nX-Stars: ***\r\n\r\n";
    s.msg = msg2;
    m = mail_new(&s);
    expect("HasHeader", "X-Level=a\\x2bb", m, "11");
    expect("HasHeader", "X-Stars=^\\*{1,}$+X-Level", m, "11");
    tern_mail_standalone_free(m);

    init_fails("HasHeader", NULL, "needs a condition");
    init_fails("HasHeader", "X-A+", "empty item 2");
    init_fails("HasHeader", "Bad Name", "\"Bad Name\" is not a header field name");
    init_fails("HasHeader", "X:Y", "is not a header field name");
    /* The usual mistake: a '+' inside the regex. */
    init_fails("HasHeader", "Subject=^hel+o$",
               "\"o$\" is not a header field name ('+' separates conditions: in a regex write "
               "\\x2b for a plus, {1,} to repeat)");
    init_fails("HasHeader", "=abc", "\"\" is not a header field name");
    init_fails("HasHeader", "X-A=", "empty regex after \"X-A=\"");
    init_fails("HasHeader", "X-A+X-B=(",
               "invalid regex \"(\": missing closing parenthesis at offset 1");
}

static void test_has_mail_attribute(void **state)
{
    tern_mail *m = mail_new(&three);
    assert_int_equal(tern_mail_attr_set_str(m, "org.example.tag", "blue"), 0);
    assert_int_equal(tern_mail_attr_set_int(m, "tern.spam.score", -3), 0);
    assert_int_equal(tern_mail_attr_set_bool(m, "tern.spam", true), 0);
    expect("HasMailAttribute", "org.example.tag", m, "111");
    expect("HasMailAttribute", "org.example.tag=blue", m, "111");
    expect("HasMailAttribute", "org.example.tag=Blue", m, "000");
    expect("HasMailAttribute", "org.example.tag=", m, "000");
    expect("HasMailAttribute", "tern.spam.score=-3", m, "111");
    expect("HasMailAttribute", "tern.spam.score=3", m, "000");
    expect("HasMailAttribute", "tern.spam=true", m, "111");
    expect("HasMailAttribute", "tern.spam=false", m, "000");
    expect("HasMailAttribute", "org.example.other", m, "000");
    expect("HasMailAttribute", "org.example.other=x", m, "000");
    assert_int_equal(tern_mail_attr_set_str(m, "org.example.empty", ""), 0);
    expect("HasMailAttribute", "org.example.empty=", m, "111");
    tern_mail_standalone_free(m);

    init_fails("HasMailAttribute", NULL, "needs a condition");
    init_fails("HasMailAttribute", "=x", "\"=x\" does not start with a key");
    init_fails("HasMailAttribute", "a b=x", "does not start with a key");
}

static void test_is_marked_as_spam(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("IsMarkedAsSpam", NULL, m, "000");
    assert_int_equal(tern_mail_attr_set_bool(m, "tern.spam", false), 0);
    expect("IsMarkedAsSpam", NULL, m, "000");
    assert_int_equal(tern_mail_attr_set_bool(m, "tern.spam", true), 0);
    expect("IsMarkedAsSpam", NULL, m, "111");
    expect("IsMarkedAsSpam", "org.example.junk", m, "000");
    assert_int_equal(tern_mail_attr_set_bool(m, "org.example.junk", true), 0);
    expect("IsMarkedAsSpam", "org.example.junk", m, "111");
    /* Not a bool: not marked. */
    assert_int_equal(tern_mail_attr_set_str(m, "org.example.str", "true"), 0);
    expect("IsMarkedAsSpam", "org.example.str", m, "000");
    tern_mail_standalone_free(m);

    init_fails("IsMarkedAsSpam", "", "the condition names a bool attribute");
    init_fails("IsMarkedAsSpam", "a=b", "names a bool attribute");
    init_fails("IsMarkedAsSpam", "a b", "names a bool attribute");
}

static void test_too_many_recipients(void **state)
{
    tern_mail *m = mail_new(&three);
    expect("TooManyRecipients", "1", m, "111");
    expect("TooManyRecipients", "2", m, "111");
    expect("TooManyRecipients", "3", m, "000");
    expect("TooManyRecipients", "100", m, "000");
    tern_mail_standalone_free(m);

    init_fails("TooManyRecipients", NULL, "needs a condition");
    init_fails("TooManyRecipients", "0", "\"0\" is not a recipient count (1 to 10000)");
    init_fails("TooManyRecipients", "3x", "is not a recipient count");
    init_fails("TooManyRecipients", "10001", "is not a recipient count");
}

/* ---- attachments --------------------------------------------------------------- */

static void has_attachment(const char *msg, const char *want)
{
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test", "z@y.test"}, .msg = msg};
    tern_mail *m = mail_new(&s);
    expect("HasAttachment", NULL, m, want);
    tern_mail_standalone_free(m);
}

static void test_has_attachment(void **state)
{
    /* Plain text: none. */
    has_attachment(default_msg, "00");
    /* multipart/alternative, text and html: none. */
    has_attachment("Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
                   "preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                   "--b1\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b1--\r\nepilogue\r\n",
                   "00");
    /* A part with Content-Disposition: attachment. */
    has_attachment("MIME-Version: 1.0\r\n"
                   "Content-Type: multipart/mixed;\r\n boundary=\"=_outer\"\r\n\r\n"
                   "--=_outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                   "--=_outer\r\nContent-Type: application/pdf\r\n"
                   "Content-Disposition: ATTACHMENT\r\n\r\nJVBERi0=\r\n--=_outer--\r\n",
                   "11");
    /* inline with a filename counts; a name on Content-Type counts. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: image/png\r\nContent-Disposition: inline;\r\n"
                   "\tfilename=\"logo.png\"\r\n\r\niVBO\r\n--b--\r\n",
                   "11");
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: application/octet-stream; name=data.bin\r\n\r\nAAAA\r\n"
                   "--b--\r\n",
                   "11");
    /* RFC 2231 forms. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: application/pdf\r\nContent-Disposition: inline; "
                   "filename*0*=utf-8''r%C3%A9sum; filename*1=\"e.pdf\"\r\n\r\nx\r\n--b--\r\n",
                   "11");
    /* "filenames" or "xname" are other parameters; a quoted "name=" is a
     * value, not a parameter. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: text/plain; xname=a; charset=\"name=x\"\r\n"
                   "Content-Disposition: inline; filenames=3\r\n\r\nx\r\n--b--\r\n",
                   "00");
    /* A single-part message that is itself an attachment. */
    has_attachment("Content-Type: application/zip\r\n"
                   "Content-Disposition: attachment; filename=a.zip\r\n\r\nUEsDBA==\r\n",
                   "11");
    /* Nested: mixed > alternative, the attachment in the inner part, and a
     * boundary that is a prefix of the inner one. */
    has_attachment("Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\n"
                   "--a\r\nContent-Type: multipart/related; boundary=\"ab\"\r\n\r\n"
                   "--ab\r\nContent-Type: text/html\r\n\r\n<img>\r\n"
                   "--ab\r\nContent-Type: image/gif\r\nContent-Disposition: attachment\r\n\r\n"
                   "R0lG\r\n--ab--\r\n--a--\r\n",
                   "11");
    /* The structure is lib/mime's, as IMAP shows it: what follows the
     * boundary on a delimiter line is ignored (Dovecot does the same), so
     * "--bx" is a delimiter of boundary "b" and opens an attachment. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: text/plain\r\n\r\n"
                   "--bx\r\nContent-Disposition: attachment\r\n\r\n--b--\r\n",
                   "11");
    /* Text in a part's body that is not at a line start is no delimiter. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: text/plain\r\n\r\n"
                   "see --b\r\nContent-Disposition: attachment\r\n--b--\r\n",
                   "00");
    /* A base64-encoded attached message is not looked into. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: message/rfc822\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n"
                   "Q29udGVudC1EaXNwb3NpdGlvbjogYXR0YWNobWVudA0KDQp4DQo=\r\n--b--\r\n",
                   "00");
    /* Parts after the close delimiter (the epilogue) are not parts. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"
                   "--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n",
                   "00");
    /* No close delimiter: the last part runs to the end, still seen. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                   "--b  \r\nContent-Disposition: attachment\r\n\r\nx",
                   "11");
    /* Bare LF line ends. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\n\n"
                   "--b\nContent-Type: text/plain\n\nhi\n"
                   "--b\nContent-Disposition: attachment\n\nx\n--b--\n",
                   "11");
    /* An attached message/rfc822 is looked into. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   "--b\r\nContent-Type: message/rfc822\r\n\r\n"
                   "Subject: inner\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n"
                   "--c\r\nContent-Type: text/plain; name=\"x.txt\"\r\n\r\nx\r\n--c--\r\n"
                   "--b--\r\n",
                   "11");
    /* Multipart without a boundary parameter: a leaf. */
    has_attachment("Content-Type: multipart/mixed\r\n\r\n"
                   "--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n--b--\r\n",
                   "00");
    /* A message that is all header. */
    has_attachment("Content-Type: multipart/mixed; boundary=b\r\n", "00");

    /* Nesting past the depth bound is not looked at (and does not crash).
     * Boundaries of one length, so none is a prefix of another (a prefix
     * would be taken as a delimiter, see above). */
    size_t cap = 64 * 1024;
    char *deep = malloc(cap);
    assert_non_null(deep);
    size_t o = (size_t)snprintf(deep, cap, "Content-Type: multipart/mixed; boundary=b00\r\n\r\n");
    for (int d = 0; d < 40; d++)
        o += (size_t)snprintf(deep + o, cap - o,
                              "--b%02d\r\nContent-Type: multipart/mixed; boundary=b%02d\r\n\r\n", d,
                              d + 1);
    o += (size_t)snprintf(deep + o, cap - o,
                          "--b40\r\nContent-Disposition: attachment\r\n\r\nx\r\n");
    has_attachment(deep, "00");
    /* The same at depth 10 is found. */
    o = (size_t)snprintf(deep, cap, "Content-Type: multipart/mixed; boundary=b00\r\n\r\n");
    for (int d = 0; d < 10; d++)
        o += (size_t)snprintf(deep + o, cap - o,
                              "--b%02d\r\nContent-Type: multipart/mixed; boundary=b%02d\r\n\r\n", d,
                              d + 1);
    snprintf(deep + o, cap - o, "--b10\r\nContent-Disposition: attachment\r\n\r\nx\r\n");
    has_attachment(deep, "11");
    free(deep);

    /* A NUL the sender put in a field does not hide the fields after it. */
    static const char nul_msg[] = "X-Junk: a\0b\r\n"
                                  "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                                  "--b\r\nContent-Disposition: attachment\r\n\r\nx\r\n--b--\r\n";
    mail_spec ns = {
        .from = "a@b.test", .rcpts = {"x@y.test"}, .msg = nul_msg, .msg_len = sizeof(nul_msg) - 1};
    tern_mail *nm = mail_new(&ns);
    expect("HasAttachment", NULL, nm, "1");
    tern_mail_standalone_free(nm);

    /* A mailet may have changed the top-level header: the mail's fields
     * count, not the original bytes. */
    mail_spec s = {.from = "a@b.test", .rcpts = {"x@y.test"}, .msg = default_msg};
    tern_mail *m = mail_new(&s);
    expect("HasAttachment", NULL, m, "0");
    assert_int_equal(tern_mail_header_set(m, "Content-Disposition", "attachment"), 0);
    expect("HasAttachment", NULL, m, "1");
    tern_mail_standalone_free(m);

    init_fails("HasAttachment", "x", "takes no condition");
}

/* ---- through a pipeline built from YAML ------------------------------------------ */

static const char *const pipeline_yaml_fmt =
    "domains: [example.org]\n"
    "listeners:\n  - {name: mx, protocol: smtp, port: 25}\n"
    "processors:\n"
    "  root:\n"
    "    - match: %s\n"
    "      mailet: \"Null\"\n"
    "  error:\n"
    "    - mailet: \"Null\"\n"
    "  bounces:\n"
    "    - mailet: \"Null\"\n";

/* Builds a pipeline whose root step matches with `match` (YAML text);
 * returns it, or NULL with the errors in errs. */
static tern_pipeline *pipeline_with(const char *match, tern_config_errors *errs)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml), pipeline_yaml_fmt, match);
    return pipeline_from(yaml, errs);
}

static bool has_err(const tern_config_errors *errs, const char *want)
{
    for (size_t i = 0; i < errs->n; i++)
        if (strstr(errs->items[i], want))
            return true;
    for (size_t i = 0; i < errs->n; i++)
        print_message("  error: %s\n", errs->items[i]);
    return false;
}

/* Evaluates the step's matcher tree on m the way the runner composes
 * (and: every child; or: any; not: the complement), calling the built
 * instances' own hooks with the conditions the YAML gave them. */
static int eval(const pl_match *mt, tern_mail *m, bool *out)
{
    size_t n = tern_mail_rcpt_count(m);
    if (mt->op == TERN_MATCH_NAME) {
        memset(out, 0, n * sizeof(bool));
        return mt->inst.mod->match(mt->inst.state, m, out);
    }
    if (mt->op == TERN_MATCH_NOT) {
        int r = eval(&mt->kids[0], m, out);
        for (size_t i = 0; i < n; i++)
            out[i] = !out[i];
        return r;
    }
    bool is_and = mt->op == TERN_MATCH_AND;
    bool tmp[8];
    for (size_t i = 0; i < n; i++)
        out[i] = is_and;
    for (size_t k = 0; k < mt->n_kids; k++) {
        int r = eval(&mt->kids[k], m, tmp);
        if (r != 0)
            return r;
        for (size_t i = 0; i < n; i++)
            out[i] = is_and ? out[i] && tmp[i] : out[i] || tmp[i];
    }
    return 0;
}

static void expect_pipeline(const char *match, const mail_spec *s, const char *want)
{
    tern_config_errors errs;
    tern_pipeline *p = pipeline_with(match, &errs);
    if (p == NULL)
        has_err(&errs, "(none expected)");
    assert_non_null(p);
    tern_config_errors_free(&errs);
    int root = tern_pipeline_processor(p, "root");
    assert_true(root >= 0);
    tern_mail *m = mail_new_p(s, p);
    for (size_t i = 0; i < m->n_rcpts; i++)
        set_lookup(m, i,
                   strcmp(tern_addr_domain(m->rcpts[i].addr), "example.org") == 0
                       ? TERN_RCPT_ACCOUNT
                       : TERN_RCPT_NOT_LOCAL);
    bool out[8];
    assert_int_equal(eval(&p->procs[root].steps[0].match, m, out), 0);
    char got[9];
    size_t n = tern_mail_rcpt_count(m);
    for (size_t i = 0; i < n; i++)
        got[i] = out[i] ? '1' : '0';
    got[n] = '\0';
    if (strcmp(got, want) != 0)
        print_message("%s: got %s, want %s\n", match, got, want);
    assert_string_equal(got, want);
    tern_mail_standalone_free(m);
    tern_pipeline_unref(p);
}

static void test_pipeline(void **state)
{
    mail_spec s = three;
    s.auth = "alice@example.org";
    /* Conditions reach the instances through the YAML, '=' and all. */
    expect_pipeline("\"HasHeader=Subject=^hel{1,}o$\"", &s, "111");
    expect_pipeline("\"RecipientIsRegex=.*@example\\\\.(org|net)\"", &s, "110");
    expect_pipeline("RecipientIsLocal", &s, "100");
    expect_pipeline("{and: [SMTPAuthSuccessful, 'RemoteAddrNotInNetwork=10.0.0.0/8']}", &s, "111");
    expect_pipeline("{and: [SMTPAuthSuccessful, {not: RecipientIsLocal}]}", &s, "011");
    expect_pipeline("{or: ['RecipientIs=carol@example.net', 'RecipientDomainIs=elsewhere.test']}",
                    &s, "011");
    expect_pipeline("{not: {or: [SenderIsNull, 'SizeGreaterThan=1k']}}", &s, "111");
    expect_pipeline("{and: [HostIsLocal, 'SenderIsRegex=alice@.*', {not: SenderIsLocal}]}", &s,
                    "000");
    s.auth = NULL;
    expect_pipeline("{or: [SMTPAuthSuccessful, 'RemoteAddrInNetwork=192.0.2.0/24']}", &s, "111");
    expect_pipeline("{and: [SMTPAuthSuccessful, 'RemoteAddrInNetwork=192.0.2.0/24']}", &s, "000");

    /* A bad condition anywhere in a tree is a config error with its path. */
    tern_config_errors errs;
    assert_null(pipeline_with("{and: [All, {not: 'RecipientIsRegex=(x'}]}", &errs));
    assert_true(has_err(&errs, "processors.root[0]: line 6: RecipientIsRegex: "
                               "invalid regex \"(x\": missing closing parenthesis at offset 2"));
    tern_config_errors_free(&errs);
    assert_null(
        pipeline_with("{or: ['TooManyRecipients=0', 'RemoteAddrInNetwork=nowhere']}", &errs));
    assert_true(has_err(&errs, "TooManyRecipients: \"0\" is not a recipient"));
    assert_true(has_err(&errs, "RemoteAddrInNetwork: \"nowhere\" is not a "
                               "network"));
    tern_config_errors_free(&errs);
    assert_null(pipeline_with("HostIsLocal=example.org", &errs));
    assert_true(has_err(&errs, "processors.root[0]: line 6: HostIsLocal: takes no condition "
                               "(write \"HostIsLocal\", not \"HostIsLocal=...\")"));
    tern_config_errors_free(&errs);
}

/* The examples of docs/mailets.md build as written (kept in step by hand). */
static const char doc_yaml[] =
    "domains: [example.org]\n"
    "listeners:\n  - {name: mx, protocol: smtp, port: 25}\n"
    "processors:\n"
    "  root:\n"
    "    - match: \"RecipientIs=postmaster@example.org, abuse@example.org\"\n"
    "      mailet: ToProcessor\n"
    "      processor: admins\n"
    "    - match: {and: [SMTPAuthSuccessful, {not: \"SMTPAuthUserIs=newsletter@example.org\"}]}\n"
    "      mailet: ToProcessor\n"
    "      processor: relay\n"
    "    - match: 'RecipientIsRegex=(postmaster|abuse|hostmaster)@.*'\n"
    "      mailet: ToProcessor\n"
    "      processor: admins\n"
    "    - match: 'SenderIsRegex=.*@(mailer-daemon|bounces)\\..*'\n"
    "      mailet: ToProcessor\n"
    "      processor: auto\n"
    "    - match: {and: [SenderIsLocal, {not: SMTPAuthSuccessful}, "
    "\"RemoteAddrNotInNetwork=127.0.0.0/8, ::1\"]}\n"
    "      mailet: ToProcessor\n"
    "      processor: spam\n"
    "    - match: {and: [\"RemoteAddrNotInNetwork=127.0.0.0/8, ::1, 192.168.*\", {not: "
    "SMTPAuthSuccessful}, {not: HostIsLocal}]}\n"
    "      mailet: ToProcessor\n"
    "      processor: bounces\n"
    "      notice: \"5.7.1 relaying denied\"\n"
    "    - match: RelayLimit=30\n"
    "      mailet: ToProcessor\n"
    "      processor: bounces\n"
    "      notice: \"5.4.6 too many hops, probably a mail loop\"\n"
    "    - match: {and: [SMTPAuthSuccessful, TooManyRecipients=100]}\n"
    "      mailet: ToProcessor\n"
    "      processor: hold\n"
    "    - match: SizeGreaterThan=10m\n"
    "      mailet: ToProcessor\n"
    "      processor: big\n"
    "    - match: 'HasHeader=X-Spam-Flag=^yes$+X-Spam-Score'\n"
    "      mailet: ToProcessor\n"
    "      processor: spam\n"
    "    - match: 'HasHeader=List-Id'\n"
    "      mailet: ToProcessor\n"
    "      processor: lists\n"
    "    - match: {and: [HasAttachment, \"SizeGreaterThan=20m\"]}\n"
    "      mailet: ToProcessor\n"
    "      processor: bounces\n"
    "      notice: \"5.3.4 attachments over 20 MB are refused here\"\n"
    "    - match: IsMarkedAsSpam\n"
    "      mailet: ToProcessor\n"
    "      processor: spam\n"
    "    - match: \"HasMailAttribute=org.example.filter.verdict=quarantine\"\n"
    "      mailet: ToProcessor\n"
    "      processor: quarantine\n"
    "    - match: RecipientIsLocal\n"
    "      mailet: \"Null\"\n"
    "  admins: [{mailet: \"Null\"}]\n"
    "  relay: [{mailet: \"Null\"}]\n"
    "  auto: [{mailet: \"Null\"}]\n"
    "  spam: [{mailet: \"Null\"}]\n"
    "  hold: [{mailet: \"Null\"}]\n"
    "  big: [{mailet: \"Null\"}]\n"
    "  lists: [{mailet: \"Null\"}]\n"
    "  quarantine: [{mailet: \"Null\"}]\n"
    "  error: [{mailet: \"Null\"}]\n"
    "  bounces: [{mailet: \"Null\"}]\n";

static void test_doc_examples(void **state)
{
    tern_config_errors errs;
    tern_pipeline *p = pipeline_from(doc_yaml, &errs);
    if (p == NULL)
        has_err(&errs, "(none expected)");
    assert_non_null(p);
    tern_config_errors_free(&errs);
    tern_pipeline_unref(p);
}

int main(void)
{
    tern_log_configure("error", NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registered),
        cmocka_unit_test(test_recipient_is_local),
        cmocka_unit_test(test_recipient_is),
        cmocka_unit_test(test_recipient_domain_is),
        cmocka_unit_test(test_recipient_is_regex),
        cmocka_unit_test(test_sender_is_regex),
        cmocka_unit_test(test_regex_limit),
        cmocka_unit_test(test_sender_is),
        cmocka_unit_test(test_sender_is_local),
        cmocka_unit_test(test_smtp_auth),
        cmocka_unit_test(test_remote_addr),
        cmocka_unit_test(test_relay_limit),
        cmocka_unit_test(test_size_greater_than),
        cmocka_unit_test(test_has_header),
        cmocka_unit_test(test_has_mail_attribute),
        cmocka_unit_test(test_is_marked_as_spam),
        cmocka_unit_test(test_too_many_recipients),
        cmocka_unit_test(test_has_attachment),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_doc_examples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
