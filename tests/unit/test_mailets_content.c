/* Unit tests of the content mailets (AddHeader, SetHeader, RemoveHeader,
 * AddSubjectPrefix, AddFooter, LogMessage, JsonExport) and lib/json_write:
 * each module is initialised from parameters as the pipeline gives them
 * (bad ones included), run on standalone mails built from tricky
 * messages, and the result checked on the serialized message, decoded
 * back with lib/mime.h where encodings are involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "conf/config.h"
#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/json.h"
#include "lib/json_write.h"
#include "lib/log.h"
#include "lib/mime.h"
#include "lib/rfc2047.h"
#include "mailets/builtin/builtin.h"
#include "mailets/engine.h"
#include "mailets/mail.h"

/* ---- helpers ------------------------------------------------------------- */

typedef struct {
    const tern_mailet_module *mod;
    void *state;
    tern_mailet_param items[8];
    size_t n;
} inst;

#define P(k, v) ((tern_mailet_param){.key = (k), .value = (v)})

/* Initialises module `name` with the given params; returns 0 or -1 with
 * the init error in err. */
static int inst_init(inst *in, const char *name, const tern_mailet_param *items, size_t n,
                     char *err, size_t size)
{
    memset(in, 0, sizeof(*in));
    in->mod = tern_builtin_find(name);
    assert_non_null(in->mod);
    assert_true(n <= 8);
    if (n)
        memcpy(in->items, items, n * sizeof(*items));
    in->n = n;
    tern_mailet_params params = {in->items, n};
    err[0] = '\0';
    return in->mod->init(tern_mailet_host_table(), &params, &in->state, err, size);
}

static void inst_ok(inst *in, const char *name, const tern_mailet_param *items, size_t n)
{
    char err[256];
    int rc = inst_init(in, name, items, n, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s init failed: %s", name, err);
}

/* The init error for bad params, which must fail. */
static const char *inst_bad(const char *name, const tern_mailet_param *items, size_t n)
{
    static char err[256];
    inst in;
    int rc = inst_init(&in, name, items, n, err, sizeof(err));
    if (rc == 0) {
        if (in.mod->deinit)
            in.mod->deinit(in.state);
        fail_msg("%s init accepted bad parameters", name);
    }
    assert_true(err[0] != '\0');
    return err;
}

static void inst_fini(inst *in)
{
    if (in->mod->deinit)
        in->mod->deinit(in->state);
}

static tern_mail *mk_mail(const char *msg)
{
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    memcpy(env.qid, "AAAABBBBCCCCDDDD", TERN_QID_LEN);
    env.mail_from = "alice@example.org";
    tern_spool_rcpt r[2] = {{.addr = "bob@example.com"}, {.addr = "carol@example.com"}};
    env.rcpts = r;
    env.n_rcpts = 2;
    env.client_addr = "192.0.2.7";
    env.helo = "client.example.org";
    env.session_id = "sess-1";
    env.listener = "mx";
    env.received_at = 1700000000;
    tern_mail *m = tern_mail_standalone(&env, (const uint8_t *)msg, strlen(msg), NULL);
    assert_non_null(m);
    return m;
}

static tern_mailet_verdict run(inst *in, tern_mail *m)
{
    tern_mailet_result res = {0};
    return in->mod->service(in->state, m, &res);
}

/* The whole message as a C string (caller frees). */
static char *ser(const tern_mail *m)
{
    size_t len = 0;
    uint8_t *d = tern_mail_serialize(m, &len);
    assert_non_null(d);
    char *s = malloc(len + 1);
    assert_non_null(s);
    memcpy(s, d, len);
    s[len] = '\0';
    free(d);
    return s;
}

static size_t count_of(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* part_text's tree lives until the next call (charset_r/cte_r point in it). */
static tern_arena pt_arena;
static bool pt_init;

/* The decoded UTF-8 text of the i-th text/<subtype> leaf of the message. */
static char *part_text(const char *msg, const char *subtype, int nth, const char **charset_r,
                       const char **cte_r)
{
    if (pt_init)
        tern_arena_free(&pt_arena);
    tern_arena_init(&pt_arena, 4096);
    pt_init = true;
    size_t len = strlen(msg);
    tern_mime_part *root = tern_mime_parse(&pt_arena, (const uint8_t *)msg, len, NULL);
    assert_non_null(root);
    const tern_mime_part *stack[64];
    size_t sp = 0;
    stack[sp++] = root;
    while (sp) {
        const tern_mime_part *p = stack[--sp];
        if (p->children) {
            const tern_mime_part *kids[32];
            size_t k = 0;
            for (const tern_mime_part *c = p->children; c && k < 32; c = c->next)
                kids[k++] = c;
            while (k)
                stack[sp++] = kids[--k];
            continue;
        }
        if (strcmp(p->type, "text") == 0 && strcmp(p->subtype, subtype) == 0 && nth-- == 0) {
            tern_buf out;
            tern_buf_init(&out, 0);
            assert_int_equal(tern_mime_part_text(p, (const uint8_t *)msg, len, &out), 0);
            tern_buf_append(&out, "", 1);
            if (charset_r)
                *charset_r = p->charset;
            if (cte_r)
                *cte_r = p->encoding_name;
            return (char *)out.data;
        }
    }
    return NULL;
}

static void arena_cleanup(void)
{
    if (pt_init)
        tern_arena_free(&pt_arena);
    pt_init = false;
}

/* ---- AddHeader / SetHeader / RemoveHeader -------------------------------- */

static const char *simple =
    "Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "From: Alice <alice@example.org>\r\n"
    "To: bob@example.com\r\n"
    "X-Spam: old1\r\n"
    "Subject: Hello\r\n"
    "X-Spam: old2\r\n"
    "\r\n"
    "Body line\r\n";

static void test_add_header(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("name", "X-Tern-Seen"), P("value", "yes, via tern")};
    inst_ok(&in, "AddHeader", p, 2);
    tern_mail *m = mk_mail(simple);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    /* At the top, twice (AddHeader keeps existing fields). */
    const char *top = "X-Tern-Seen: yes, via tern\r\nX-Tern-Seen: yes, via tern\r\nReceived:";
    assert_true(strncmp(s, top, strlen(top)) == 0);
    assert_non_null(strstr(s, "\r\n\r\nBody line\r\n"));
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    assert_non_null(strstr(inst_bad("AddHeader", p, 1), "value"));
    tern_mailet_param bad1[] = {P("name", "X Bad"), P("value", "v")};
    assert_non_null(strstr(inst_bad("AddHeader", bad1, 2), "name"));
    tern_mailet_param bad2[] = {P("name", "X-A:"), P("value", "v")};
    inst_bad("AddHeader", bad2, 2);
    tern_mailet_param bad3[] = {P("name", "X-Inject"), P("value", "v\r\nBcc: evil@example.net")};
    assert_non_null(strstr(inst_bad("AddHeader", bad3, 2), "line breaks"));
    tern_mailet_param bad4[] = {P("name", "X-A"), P("value", "v"), P("other", "1")};
    assert_non_null(strstr(inst_bad("AddHeader", bad4, 3), "unknown parameter"));
    tern_mailet_param noname[] = {P("value", "v")};
    inst_bad("AddHeader", noname, 1);
}

static void test_set_header(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("name", "x-spam"), P("value", "new")};
    inst_ok(&in, "SetHeader", p, 2);
    tern_mail *m = mk_mail(simple);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    /* The first field keeps its name's spelling and its place. */
    assert_int_equal(count_of(s, "X-Spam"), 1);
    assert_int_equal(count_of(s, "X-Spam: new\r\n"), 1);
    assert_int_equal(count_of(s, "old"), 0);
    assert_true(strstr(s, "To:") < strstr(s, "X-Spam:") && strstr(s, "X-Spam:") < strstr(s, "Subject:"));
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    /* Absent: added at the top. */
    tern_mailet_param p2[] = {P("name", "X-New"), P("value", "")};
    inst_ok(&in, "SetHeader", p2, 2);
    m = mk_mail(simple);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    assert_string_equal(tern_mail_header_get(m, "X-New", 0), "");
    assert_string_equal(tern_mail_header_name_at(m, 0), "X-New");
    tern_mail_standalone_free(m);
    inst_fini(&in);

    tern_mailet_param bad[] = {P("name", "Subject"), P("value", "a\nb")};
    inst_bad("SetHeader", bad, 2);
    inst_bad("SetHeader", bad, 0);
}

static void test_remove_header(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("name", "x-spam")};
    inst_ok(&in, "RemoveHeader", p, 1);
    tern_mail *m = mk_mail(simple);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    assert_int_equal(count_of(s, "X-Spam"), 0);
    assert_non_null(strstr(s, "Subject: Hello\r\n"));
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    const char *names[] = {"Received", "subject", "X-Absent"};
    tern_mailet_param l = {.key = "name", .list = names, .n_list = 3};
    inst_ok(&in, "RemoveHeader", &l, 1);
    m = mk_mail(simple);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_null(strstr(s, "Received"));
    assert_null(strstr(s, "Subject"));
    assert_int_equal(count_of(s, "X-Spam"), 2);
    assert_true(strncmp(s, "From: Alice", 11) == 0);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    inst_bad("RemoveHeader", NULL, 0);
    tern_mailet_param empty = {.key = "name", .list = names, .n_list = 0};
    assert_non_null(strstr(inst_bad("RemoveHeader", &empty, 1), "empty"));
    const char *bad_names[] = {"Good", "Bad Name"};
    tern_mailet_param bl = {.key = "name", .list = bad_names, .n_list = 2};
    assert_non_null(strstr(inst_bad("RemoveHeader", &bl, 1), "Bad Name"));
}

/* ---- AddSubjectPrefix ------------------------------------------------------ */

static char *decoded_subject(tern_mail *m)
{
    const char *v = tern_mail_header_get(m, "Subject", 0);
    assert_non_null(v);
    tern_buf b;
    tern_buf_init(&b, 0);
    assert_int_equal(tern_rfc2047_decode(&b, v, strlen(v)), 0);
    tern_buf_append(&b, "", 1);
    return (char *)b.data;
}

static void subject_case(inst *in, const char *subject_field, const char *want_decoded,
                         const char *want_raw)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "From: a@example.org\r\n%s\r\n\r\nbody\r\n", subject_field);
    tern_mail *m = mk_mail(msg);
    assert_int_equal(run(in, m), TERN_MAILET_CONTINUE);
    char *d = decoded_subject(m);
    assert_string_equal(d, want_decoded);
    free(d);
    if (want_raw)
        assert_string_equal(tern_mail_header_get(m, "Subject", 0), want_raw);
    /* Never twice. */
    assert_int_equal(run(in, m), TERN_MAILET_CONTINUE);
    d = decoded_subject(m);
    assert_string_equal(d, want_decoded);
    free(d);
    assert_int_equal(tern_mail_header_count(m, "Subject"), 1);
    tern_mail_standalone_free(m);
}

static void test_subject_prefix_ascii(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("prefix", "[SPAM] ")};
    inst_ok(&in, "AddSubjectPrefix", p, 1);
    subject_case(&in, "Subject: Hello", "[SPAM] Hello", "[SPAM] Hello");
    subject_case(&in, "Subject: [spam] already", "[spam] already", "[spam] already");
    subject_case(&in, "Subject: Re: Fwd: [SPAM] old thread", "Re: Fwd: [SPAM] old thread", NULL);
    subject_case(&in, "Subject: RE[2]: [SPAM] x", "RE[2]: [SPAM] x", NULL);
    /* An encoded subject: decoded for the check, kept encoded. */
    subject_case(&in, "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "[SPAM] Grüße",
                 "[SPAM] =?utf-8?q?Gr=C3=BC=C3=9Fe?=");
    subject_case(&in, "Subject: =?utf-8?B?W1NQQU1dIGFscmVhZHk=?=", "[SPAM] already", NULL);
    subject_case(&in, "X-None: 1", "[SPAM]", "[SPAM]");
    subject_case(&in, "Subject:   ", "[SPAM]", "[SPAM]");
    inst_fini(&in);
}

static void test_subject_prefix_utf8(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("prefix", "[Spä]")};
    inst_ok(&in, "AddSubjectPrefix", p, 1);
    /* Encoded prefix, space kept outside before plain text... */
    subject_case(&in, "Subject: Hello", "[Spä] Hello", NULL);
    const char *raw = NULL;
    {
        tern_mail *m = mk_mail("Subject: Hello\r\n\r\nx");
        run(&in, m);
        raw = tern_mail_header_get(m, "Subject", 0);
        assert_true(strncmp(raw, "=?UTF-8?B?", 10) == 0);
        for (const char *c = raw; *c; c++)
            assert_true((unsigned char)*c < 0x80);
        tern_mail_standalone_free(m);
    }
    /* ...and inside the word before an encoded-word, so it is not lost. */
    subject_case(&in, "Subject: =?iso-8859-1?q?caf=E9?=", "[Spä] café", NULL);
    /* The non-ASCII check compares decoded text. */
    subject_case(&in, "Subject: Re: =?utf-8?q?=5BSp=C3=A4=5D?= x", "Re: [Spä] x", NULL);
    inst_fini(&in);

    /* A long prefix is split into several words of at most 75 characters. */
    char longp[200];
    memset(longp, 0, sizeof(longp));
    for (int i = 0; i < 60; i++)
        strcat(longp, "é");
    tern_mailet_param lp[] = {P("prefix", longp)};
    inst_ok(&in, "AddSubjectPrefix", lp, 1);
    tern_mail *m = mk_mail("Subject: =?utf-8?q?x?=\r\n\r\nx");
    run(&in, m);
    const char *v = tern_mail_header_get(m, "Subject", 0);
    for (const char *w = strstr(v, "=?"); w; w = strstr(w + 2, "=?")) {
        const char *e = strstr(w + 2, "?=");
        /* the end of this word: the second "?=" after the charset and B */
        e = strstr(strstr(strstr(w + 2, "?") + 1, "?") + 1, "?=");
        assert_non_null(e);
        assert_true(e + 2 - w <= 75);
        w = e;
    }
    char *d = decoded_subject(m);
    char want[256];
    snprintf(want, sizeof(want), "%s x", longp);
    assert_string_equal(d, want);
    free(d);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    inst_bad("AddSubjectPrefix", NULL, 0);
    tern_mailet_param e1[] = {P("prefix", "   ")};
    inst_bad("AddSubjectPrefix", e1, 1);
    tern_mailet_param e2[] = {P("prefix", "[a\r\nBcc: x]")};
    inst_bad("AddSubjectPrefix", e2, 1);
    tern_mailet_param e3[] = {P("prefix", "\xff\xfe")};
    assert_non_null(strstr(inst_bad("AddSubjectPrefix", e3, 1), "UTF-8"));
}

/* ---- AddFooter ------------------------------------------------------------------ */

static inst footer_inst(const char *html)
{
    inst in;
    tern_mailet_param p[] = {P("text", "-- \nSent through Tern\n"), P("html", html)};
    inst_ok(&in, "AddFooter", p, html ? 2 : 1);
    return in;
}

static void test_footer_plain(void **state)
{
    inst in = footer_inst(NULL);
    tern_mail *m = mk_mail("From: a@example.org\r\nSubject: x\r\n\r\nHello\r\nWorld");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    assert_non_null(strstr(s, "\r\n\r\nHello\r\nWorld\r\n-- \r\nSent through Tern\r\n"));
    free(s);
    tern_mail_standalone_free(m);

    /* Missing body: the footer alone. */
    m = mk_mail("From: a@example.org\r\nSubject: x\r\n\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_non_null(strstr(s, "\r\n\r\n-- \r\nSent through Tern\r\n"));
    free(s);
    tern_mail_standalone_free(m);

    /* No empty line at all (header only). */
    m = mk_mail("From: a@example.org\r\nSubject: x\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_non_null(strstr(s, "Sent through Tern"));
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static void test_footer_base64(void **state)
{
    inst in = footer_inst(NULL);
    /* "Grüße aus Köln\r\n" in UTF-8, base64. */
    tern_mail *m = mk_mail("From: a@example.org\r\nMIME-Version: 1.0\r\n"
                           "Content-Type: text/plain; charset=utf-8\r\n"
                           "Content-Transfer-Encoding: base64\r\n\r\n"
                           "R3LDvMOfZSBhdXMgS8O2bG4NCg==\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    assert_null(strstr(s, "Sent through")); /* encoded, not appended raw */
    const char *cte = NULL;
    char *t = part_text(s, "plain", 0, NULL, &cte);
    assert_string_equal(cte, "base64");
    assert_string_equal(t, "Grüße aus Köln\r\n-- \r\nSent through Tern\r\n");
    free(t);
    /* Lines stay within 76 characters. */
    const char *body = strstr(s, "\r\n\r\n") + 4;
    for (const char *l = body; *l;) {
        const char *e = strstr(l, "\r\n");
        assert_non_null(e);
        assert_true(e - l <= 76);
        l = e + 2;
    }
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static void test_footer_qp_latin1(void **state)
{
    /* A non-ASCII footer into an ISO-8859-1 QP part: converted to Latin-1. */
    inst in;
    tern_mailet_param p[] = {P("text", "Grüße, Tern")};
    inst_ok(&in, "AddFooter", p, 1);
    tern_mail *m = mk_mail("From: a@example.org\r\nMIME-Version: 1.0\r\n"
                           "Content-Type: text/plain; charset=\"ISO-8859-1\"\r\n"
                           "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                           "caf=E9 cr=E8me=\r\n br=FBl=E9e\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    const char *cs = NULL, *cte = NULL;
    char *t = part_text(s, "plain", 0, &cs, &cte);
    assert_string_equal(cte, "quoted-printable");
    assert_string_equal(cs, "ISO-8859-1");
    assert_string_equal(t, "café crème brûlée\r\nGrüße, Tern\r\n");
    assert_non_null(strstr(s, "Gr=FC=DFe"));
    free(t);
    free(s);
    tern_mail_standalone_free(m);

    /* A character Latin-1 lacks: the whole text becomes UTF-8. */
    tern_mailet_param p2[] = {P("text", "€ 5 — Tern")};
    inst in2;
    inst_ok(&in2, "AddFooter", p2, 1);
    m = mk_mail("From: a@example.org\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; format=flowed; charset=\"ISO-8859-1\"\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                "caf=E9\r\n");
    assert_int_equal(run(&in2, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    t = part_text(s, "plain", 0, &cs, &cte);
    assert_string_equal(cs, "utf-8");
    assert_string_equal(t, "café\r\n€ 5 — Tern\r\n");
    assert_non_null(strstr(s, "Content-Type: text/plain; format=flowed; charset=utf-8\r\n"));
    assert_int_equal(tern_mail_header_count(m, "Content-Type"), 1);
    free(t);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in2);

    /* 7bit us-ascii with a non-ASCII footer: QP and utf-8, MIME-Version added. */
    m = mk_mail("From: a@example.org\r\nSubject: plain\r\n\r\nhi\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    t = part_text(s, "plain", 0, &cs, &cte);
    assert_string_equal(cte, "quoted-printable");
    assert_string_equal(cs, "utf-8");
    assert_string_equal(t, "hi\r\nGrüße, Tern\r\n");
    assert_non_null(strstr(s, "MIME-Version: 1.0\r\n"));
    free(t);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static const char *alternative =
    "From: a@example.org\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
    "\r\n"
    "preamble\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "plain text\r\n"
    "--b1\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "<html><body><p>caf=C3=A9</p></BODY></html>\r\n"
    "--b1--\r\n"
    "epilogue\r\n";

static void test_footer_alternative(void **state)
{
    inst in = footer_inst("<div>Tern &amp; co</div>");
    tern_mail *m = mk_mail(alternative);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    char *t = part_text(s, "plain", 0, NULL, NULL);
    assert_string_equal(t, "plain text\r\n-- \r\nSent through Tern");
    free(t);
    t = part_text(s, "html", 0, NULL, NULL);
    assert_string_equal(t, "<html><body><p>café</p><div>Tern &amp; co</div>\r\n</BODY></html>");
    free(t);
    /* The structure around is untouched. */
    assert_non_null(strstr(s, "\r\n\r\npreamble\r\n--b1\r\n"));
    assert_non_null(strstr(s, "--b1--\r\nepilogue\r\n"));
    assert_int_equal(count_of(s, "--b1"), 3);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);

    /* Without html: the text, escaped, as HTML. */
    in = footer_inst(NULL);
    m = mk_mail(alternative);
    run(&in, m);
    s = ser(m);
    t = part_text(s, "html", 0, NULL, NULL);
    assert_non_null(strstr(t, "<p>-- <br>\r\nSent through Tern</p>\r\n</BODY>"));
    free(t);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static void test_footer_mixed(void **state)
{
    inst in = footer_inst(NULL);
    /* mixed[ alternative[plain(base64), html], text attachment ] */
    tern_mail *m = mk_mail("From: a@example.org\r\n"
                           "MIME-Version: 1.0\r\n"
                           "Content-Type: multipart/mixed; boundary=outer\r\n"
                           "\r\n"
                           "--outer\r\n"
                           "Content-Type: multipart/alternative; boundary=inner\r\n"
                           "\r\n"
                           "--inner\r\n"
                           "Content-Type: text/plain\r\n"
                           "Content-Transfer-Encoding: base64\r\n"
                           "\r\n"
                           "aGVsbG8gd29ybGQ=\r\n"
                           "--inner\r\n"
                           "Content-Type: text/html\r\n"
                           "\r\n"
                           "<b>hello</b>\r\n"
                           "--inner--\r\n"
                           "--outer\r\n"
                           "Content-Type: text/plain; name=notes.txt\r\n"
                           "Content-Disposition: attachment; filename=notes.txt\r\n"
                           "\r\n"
                           "attached notes\r\n"
                           "--outer--\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    char *t = part_text(s, "plain", 0, NULL, NULL);
    assert_string_equal(t, "hello world\r\n-- \r\nSent through Tern\r\n");
    free(t);
    t = part_text(s, "html", 0, NULL, NULL);
    assert_string_equal(t, "<b>hello</b><p>-- <br>\r\nSent through Tern</p>");
    free(t);
    /* The attachment is not the text. */
    t = part_text(s, "plain", 1, NULL, NULL);
    assert_string_equal(t, "attached notes");
    free(t);
    free(s);
    tern_mail_standalone_free(m);

    /* mixed[ image, text ]: the first text part. */
    m = mk_mail("From: a@example.org\r\n"
                "Content-Type: multipart/mixed; boundary=\"x\"\r\n"
                "\r\n"
                "--x\r\n"
                "Content-Type: image/png\r\n"
                "Content-Transfer-Encoding: base64\r\n"
                "\r\n"
                "iVBORw0KGgo=\r\n"
                "--x\r\n"
                "\r\n"
                "default typed text\r\n"
                "--x\r\n"
                "Content-Type: text/plain\r\n"
                "\r\n"
                "second text\r\n"
                "--x--\r\n");
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    t = part_text(s, "plain", 0, NULL, NULL);
    assert_string_equal(t, "default typed text\r\n-- \r\nSent through Tern");
    free(t);
    t = part_text(s, "plain", 1, NULL, NULL);
    assert_string_equal(t, "second text");
    free(t);
    assert_non_null(strstr(s, "iVBORw0KGgo=\r\n--x\r\n"));
    free(s);
    tern_mail_standalone_free(m);

    /* Only an attachment: nothing to do. */
    const char *pdf = "From: a@example.org\r\n"
                      "Content-Type: application/pdf\r\n"
                      "Content-Transfer-Encoding: base64\r\n"
                      "\r\n"
                      "JVBERi0=\r\n";
    m = mk_mail(pdf);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_string_equal(s, pdf);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static void test_footer_signed(void **state)
{
    inst in = footer_inst(NULL);
    const char *signed_msg =
        "From: a@example.org\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/signed; protocol=\"application/pgp-signature\";\r\n"
        " micalg=pgp-sha256; boundary=\"sig\"\r\n"
        "\r\n"
        "--sig\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "signed text\r\n"
        "--sig\r\n"
        "Content-Type: application/pgp-signature\r\n"
        "\r\n"
        "-----BEGIN PGP SIGNATURE-----\r\n"
        "-----END PGP SIGNATURE-----\r\n"
        "--sig--\r\n";
    tern_mail *m = mk_mail(signed_msg);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    assert_string_equal(s, signed_msg); /* byte for byte */
    free(s);
    tern_mail_standalone_free(m);

    /* Inside a mixed: the signed part is still left alone. */
    char wrapped[2048];
    snprintf(wrapped, sizeof(wrapped),
             "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n"
             "--w\r\n%s--w--\r\n",
             strstr(signed_msg, "Content-Type: multipart/signed"));
    m = mk_mail(wrapped);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_string_equal(s, wrapped);
    free(s);
    tern_mail_standalone_free(m);

    /* S/MIME opaque. */
    const char *smime = "From: a@example.org\r\n"
                        "Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
                        "Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n";
    m = mk_mail(smime);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    s = ser(m);
    assert_string_equal(s, smime);
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

static void test_footer_params(void **state)
{
    inst_bad("AddFooter", NULL, 0);
    tern_mailet_param p1[] = {P("html", "<p>x</p>")};
    assert_non_null(strstr(inst_bad("AddFooter", p1, 1), "text"));
    tern_mailet_param p2[] = {P("text", "a\x01")};
    inst_bad("AddFooter", p2, 1);
    tern_mailet_param p3[] = {P("text", "ok"), P("max_part_size", "12q")};
    assert_non_null(strstr(inst_bad("AddFooter", p3, 2), "max_part_size"));
    tern_mailet_param p4[] = {P("text", "ok"), P("html", "")};
    inst_bad("AddFooter", p4, 2);

    /* max_part_size: a larger text part is left alone. */
    inst in;
    tern_mailet_param p5[] = {P("text", "foot"), P("max_part_size", "1k")};
    inst_ok(&in, "AddFooter", p5, 2);
    char big[4096];
    strcpy(big, "Subject: big\r\n\r\n");
    size_t o = strlen(big);
    memset(big + o, 'a', 2000);
    big[o + 2000] = '\0';
    tern_mail *m = mk_mail(big);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *s = ser(m);
    assert_null(strstr(s, "foot"));
    free(s);
    tern_mail_standalone_free(m);
    inst_fini(&in);
}

/* ---- lib/json_write ----------------------------------------------------------- */

static void test_json_write(void **state)
{
    tern_buf b;
    tern_buf_init(&b, 0);
    const char in[] = "a\"b\\c\n\r\t\x01\x7f é \xe2\x80\xa8 \xff end";
    assert_int_equal(tern_buf_append_str(&b, "{"), 0);
    assert_int_equal(tern_json_write_key(&b, "k"), 0);
    assert_int_equal(tern_json_write_string(&b, in, sizeof(in) - 1), 0);
    assert_int_equal(tern_buf_append_str(&b, ","), 0);
    assert_int_equal(tern_json_write_key(&b, "n"), 0);
    assert_int_equal(tern_json_write_int(&b, -42), 0);
    assert_int_equal(tern_buf_append_str(&b, ","), 0);
    assert_int_equal(tern_json_write_key(&b, "z"), 0);
    assert_int_equal(tern_json_write_cstr(&b, NULL), 0);
    assert_int_equal(tern_buf_append_str(&b, "}"), 0);
    tern_arena a;
    tern_arena_init(&a, 1024);
    tern_json *root = NULL;
    assert_int_equal(tern_json_parse((const char *)b.data, b.len, NULL, &a, &root, NULL), 0);
    const tern_json *k = tern_json_get(root, "k");
    assert_non_null(k);
    assert_string_equal(k->text, "a\"b\\c\n\r\t\x01\x7f é \xe2\x80\xa8 \xc3\xbf end");
    int64_t n = 0;
    assert_int_equal(tern_json_int64(tern_json_get(root, "n"), &n), 0);
    assert_int_equal(n, -42);
    assert_int_equal(tern_json_get(root, "z")->type, TERN_JSON_NULL);
    /* The raw text escapes U+2028 for JavaScript readers. */
    assert_non_null(strstr((const char *)b.data, "\\u2028"));
    tern_arena_free(&a);
    tern_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_header),
        cmocka_unit_test(test_set_header),
        cmocka_unit_test(test_remove_header),
        cmocka_unit_test(test_subject_prefix_ascii),
        cmocka_unit_test(test_subject_prefix_utf8),
        cmocka_unit_test(test_footer_plain),
        cmocka_unit_test(test_footer_base64),
        cmocka_unit_test(test_footer_qp_latin1),
        cmocka_unit_test(test_footer_alternative),
        cmocka_unit_test(test_footer_mixed),
        cmocka_unit_test(test_footer_signed),
        cmocka_unit_test(test_footer_params),
        cmocka_unit_test(test_json_write),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    arena_cleanup();
    return rc;
}
