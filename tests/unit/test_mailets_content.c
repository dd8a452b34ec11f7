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
#include <pthread.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>

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
#include "mailets/builtin/json_export.h"
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


/* Neither the footer nor re-encoded text may make a line that reads as a
 * boundary of a multipart around the part. */
static void test_footer_boundary_collision(void **state)
{
    inst in;
    tern_mailet_param p[] = {P("text", "--sep and more\n")};
    inst_ok(&in, "AddFooter", p, 1);
    const char *msgs[] = {
        /* 7bit part: becomes QP with the dash escaped. */
        "Content-Type: multipart/mixed; boundary=sep\r\n\r\n"
        "--sep\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        "--sep\r\nContent-Type: text/plain; name=a.txt\r\n\r\nsecond\r\n--sep--\r\n",
        /* QP part whose text holds a boundary-like line once decoded. */
        "Content-Type: multipart/mixed; boundary=sep\r\n\r\n"
        "--sep\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "=2D-sep inside\r\n"
        "--sep\r\nContent-Type: text/plain; name=a.txt\r\n\r\nsecond\r\n--sep--\r\n",
    };
    for (size_t i = 0; i < 2; i++) {
        tern_mail *m = mk_mail(msgs[i]);
        assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
        char *out = ser(m);
        tern_arena ar;
        tern_arena_init(&ar, 4096);
        tern_mime_part *root = tern_mime_parse(&ar, (const uint8_t *)out, strlen(out), NULL);
        assert_int_equal(tern_mime_count_parts(root), 3);
        tern_arena_free(&ar);
        const char *cte = NULL;
        char *txt = part_text(out, "plain", 0, NULL, &cte);
        assert_string_equal(cte, "quoted-printable");
        assert_string_equal(txt, i == 0 ? "hello\r\n--sep and more" : "--sep inside\r\n--sep and more");
        free(txt);
        txt = part_text(out, "plain", 1, NULL, NULL);
        assert_string_equal(txt, "second");
        free(txt);
        free(out);
        tern_mail_standalone_free(m);
    }
    inst_fini(&in);
}


/* A header field holding a NUL: the mail keeps it as raw bytes, which its
 * serialisation cuts at the NUL, so the parser would see another header
 * (found by fuzz_mailets_content). The footer leaves such mail alone. */
static void test_footer_nul_in_header(void **state)
{
    inst in = footer_inst(NULL);
    /* Serialised, the field loses its line end: the parser then reads
     * the body's first lines as header and ends it later than the mail. */
    static const char msg[] = "X-Bad\x01: a\0b\r\n"
                              "\r\n"
                              "--outer\r\n"
                              "Content-Type: multipart/alternative; boundary=inner\r\n"
                              "\r\n"
                              "--inner\r\n"
                              "Content-Type: text/plain\r\n"
                              "\r\n"
                              "hello\r\n"
                              "--inner--\r\n";
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    memcpy(env.qid, "AAAABBBBCCCCDDDD", TERN_QID_LEN);
    env.mail_from = "a@example.org";
    tern_spool_rcpt r = {.addr = "b@example.com"};
    env.rcpts = &r;
    env.n_rcpts = 1;
    tern_mail *m = tern_mail_standalone(&env, (const uint8_t *)msg, sizeof(msg) - 1, NULL);
    assert_non_null(m);
    char *before = ser(m);
    assert_int_equal(run(&in, m), TERN_MAILET_CONTINUE);
    char *after = ser(m);
    assert_string_equal(before, after);
    free(before);
    free(after);
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



/* ---- LogMessage ---------------------------------------------------------------- */

/* Runs in on a mail and returns what it logged (caller frees). */
static char *logged(inst *in, const char *msg)
{
    char path[] = "/tmp/tern-lm-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    tern_log_set_fd(fd);
    tern_mail *m = mk_mail(msg);
    assert_int_equal(run(in, m), TERN_MAILET_CONTINUE);
    tern_mail_standalone_free(m);
    tern_log_set_fd(2);
    off_t n = lseek(fd, 0, SEEK_END);
    char *d = calloc(1, (size_t)n + 1);
    assert_non_null(d);
    assert_int_equal(pread(fd, d, (size_t)n, 0), n);
    close(fd);
    return d;
}

static void test_log_message(void **state)
{
    assert_int_equal(tern_log_configure("info", NULL), 0);
    inst in;
    inst_ok(&in, "LogMessage", NULL, 0);
    char *l = logged(&in, "From: Alice <alice@example.org>\r\n"
                          "To: bob@example.com\r\n"
                          "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= \"quoted\" a=b\r\n"
                          "X-Other: not logged\r\n"
                          "\r\nsecret body\r\n");
    assert_int_equal(count_of(l, "\n"), 1);
    assert_non_null(strstr(l, " module=mailet qid=AAAABBBBCCCCDDDD session=sess-1 mailet=LogMessage "));
    assert_non_null(strstr(l, " from=alice@example.org "));
    assert_non_null(strstr(l, " rcpts=bob@example.com,carol@example.com nrcpt=2 "));
    assert_non_null(strstr(l, " remote=192.0.2.7 "));
    assert_non_null(strstr(l, " h.from=\"Alice <alice@example.org>\""));
    assert_non_null(strstr(l, " h.subject=\"Grüße \\\"quoted\\\" a=b\""));
    assert_null(strstr(l, "X-Other"));
    assert_null(strstr(l, "secret"));
    assert_null(strstr(l, "h.message-id")); /* absent: not logged */
    free(l);
    inst_fini(&in);

    /* Chosen headers, the body's first bytes, a tag; CRLF cannot split the line. */
    const char *names[] = {"X-Other", "Subject"};
    tern_mailet_param p[] = {{.key = "headers", .list = names, .n_list = 2}, P("body", "8"),
                             P("tag", "after-spam")};
    inst_ok(&in, "LogMessage", p, 3);
    l = logged(&in, "Subject: s\r\nX-Other: o\r\n\r\nab\r\ncdefghij");
    assert_int_equal(count_of(l, "\n"), 1);
    assert_non_null(strstr(l, " tag=after-spam "));
    assert_non_null(strstr(l, " h.x-other=o h.subject=s "));
    assert_non_null(strstr(l, " body=\"ab\\x0d\\x0acdef\"\n"));
    free(l);
    inst_fini(&in);

    /* level: debug is not logged at info. */
    tern_mailet_param dbg[] = {P("level", "debug")};
    inst_ok(&in, "LogMessage", dbg, 1);
    l = logged(&in, "Subject: s\r\n\r\nx");
    assert_string_equal(l, "");
    free(l);
    inst_fini(&in);

    tern_mailet_param b1[] = {P("body", "100000")};
    assert_non_null(strstr(inst_bad("LogMessage", b1, 1), "body"));
    tern_mailet_param b2[] = {P("body", "-1")};
    inst_bad("LogMessage", b2, 1);
    tern_mailet_param b3[] = {P("level", "loud")};
    assert_non_null(strstr(inst_bad("LogMessage", b3, 1), "level"));
    tern_mailet_param b4[] = {P("headers", "Bad Name")};
    inst_bad("LogMessage", b4, 1);
    tern_mailet_param b5[] = {P("tag", "")};
    inst_bad("LogMessage", b5, 1);
}

/* ---- JsonExport ------------------------------------------------------------------ */

static const char *export_msg =
    "Received: from client by mx; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.org>\r\n"
    "To: Bob <bob@example.com>\r\n"
    "Cc: carol@example.com\r\n"
    "Subject: =?iso-8859-1?q?R=E9sum=E9?= attached\r\n"
    "Message-ID: <m1@example.org>\r\n"
    "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    "X-Raw: caf\xe9\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"zz\"\r\n"
    "\r\n"
    "--zz\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Voil=E0 mon CV.\r\n"
    "--zz\r\n"
    "Content-Type: application/pdf; name=\"cv.pdf\"\r\n"
    "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERi0xLjQKJcfsj6IK\r\n"
    "--zz--\r\n";

static char tmpdir[64];

static void mk_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tern-je-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

static char *slurp(const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    assert_non_null(d);
    assert_int_equal(fread(d, 1, (size_t)n, f), (size_t)n);
    d[n] = '\0';
    fclose(f);
    if (len_r)
        *len_r = (size_t)n;
    return d;
}

/* Runs the job synchronously (as the pool thread would); returns its error. */
static char *export_one(inst *in, const char *msg)
{
    tern_mail *m = mk_mail(msg);
    je_job *j = tern_json_export_job_new(in->state, m);
    assert_non_null(j);
    tern_mail_standalone_free(m); /* the job holds its own copy */
    tern_json_export_job_run(j);
    const char *e = tern_json_export_job_error(j);
    char *r = e ? strdup(e) : NULL;
    tern_json_export_job_free(j);
    return r;
}

static const char *jstr(const tern_json *o, const char *k)
{
    const tern_json *v = tern_json_get(o, k);
    assert_non_null(v);
    return tern_json_str(v);
}

static void check_record(const tern_json *r)
{
    assert_int_equal(r->type, TERN_JSON_OBJECT);
    assert_string_equal(jstr(r, "qid"), "AAAABBBBCCCCDDDD");
    assert_string_equal(jstr(r, "receivedAt"), "2023-11-14T22:13:20Z");
    assert_string_equal(jstr(r, "remoteAddr"), "192.0.2.7");
    assert_int_equal(tern_json_get(r, "authUser")->type, TERN_JSON_NULL);
    const tern_json *from = tern_json_get(r, "from");
    assert_string_equal(jstr(from, "envelope"), "alice@example.org");
    assert_string_equal(jstr(from, "header"), "Jürgen <juergen@example.org>");
    const tern_json *to = tern_json_get(r, "to");
    const tern_json *env = tern_json_get(to, "envelope");
    assert_int_equal(env->type, TERN_JSON_ARRAY);
    assert_int_equal(env->len, 2);
    assert_string_equal(tern_json_str(env->child), "bob@example.com");
    assert_string_equal(tern_json_str(env->child->next), "carol@example.com");
    assert_string_equal(jstr(to, "header"), "Bob <bob@example.com>");
    assert_string_equal(jstr(r, "cc"), "carol@example.com");
    assert_string_equal(jstr(r, "subject"), "Résumé attached");
    assert_string_equal(jstr(r, "messageId"), "<m1@example.org>");
    assert_string_equal(jstr(r, "body"), "Voilà mon CV.");
    assert_false(tern_json_get(r, "bodyTruncated")->boolean);
    const tern_json *h = tern_json_get(r, "headers");
    assert_int_equal(h->type, TERN_JSON_ARRAY);
    assert_int_equal(h->len, 10);
    assert_string_equal(jstr(h->child, "name"), "Received");
    bool raw_seen = false;
    for (const tern_json *f = h->child; f; f = f->next)
        if (strcmp(jstr(f, "name"), "X-Raw") == 0) {
            assert_string_equal(jstr(f, "value"), "café"); /* Latin-1 byte kept as U+00E9 */
            raw_seen = true;
        }
    assert_true(raw_seen);
    const tern_json *att = tern_json_get(r, "attachments");
    assert_int_equal(att->len, 1);
    assert_string_equal(jstr(att->child, "name"), "résumé.pdf");
    assert_string_equal(jstr(att->child, "type"), "application/pdf");
    int64_t sz = 0;
    assert_int_equal(tern_json_int64(tern_json_get(att->child, "size"), &sz), 0);
    assert_true(sz >= 13 && sz <= 15);
}

static void test_json_export_file(void **state)
{
    mk_tmpdir();
    char path[128];
    snprintf(path, sizeof(path), "%s/export.jsonl", tmpdir);
    inst in;
    tern_mailet_param p[] = {P("file", path)};
    inst_ok(&in, "JsonExport", p, 1);
    for (int i = 0; i < 3; i++) {
        char *e = export_one(&in, export_msg);
        if (e)
            fail_msg("export failed: %s", e);
    }
    size_t len = 0;
    char *d = slurp(path, &len);
    assert_non_null(d);
    /* Three lines, each one JSON object that parses back. */
    size_t lines = 0;
    for (char *l = d; *l;) {
        char *nl = strchr(l, '\n');
        assert_non_null(nl);
        tern_arena a;
        tern_arena_init(&a, 4096);
        tern_json *root = NULL;
        size_t off = 0;
        int rc = tern_json_parse(l, (size_t)(nl - l), NULL, &a, &root, &off);
        if (rc != 0)
            fail_msg("line %zu: %s at %zu", lines, tern_json_strerror(rc), off);
        check_record(root);
        tern_arena_free(&a);
        lines++;
        l = nl + 1;
    }
    assert_int_equal(lines, 3);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);
    free(d);
    inst_fini(&in);
    rm_tmpdir();
}

static void test_json_export_rotation(void **state)
{
    mk_tmpdir();
    char path[128], p1[140], p2[140], p3[140];
    snprintf(path, sizeof(path), "%s/x.jsonl", tmpdir);
    snprintf(p1, sizeof(p1), "%s.1", path);
    snprintf(p2, sizeof(p2), "%s.2", path);
    snprintf(p3, sizeof(p3), "%s.3", path);
    inst in;
    /* Each record is over 1 KiB: a few fit in 4k, then it rotates. */
    tern_mailet_param p[] = {P("file", path), P("max_size", "4k"), P("keep", "2"),
                             P("fsync", "false")};
    inst_ok(&in, "JsonExport", p, 4);
    for (int i = 0; i < 9; i++) {
        char *e = export_one(&in, export_msg);
        if (e)
            fail_msg("export failed: %s", e);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_true(st.st_size <= 4096);
    }
    struct stat st;
    assert_int_equal(stat(p1, &st), 0);
    assert_int_equal(stat(p2, &st), 0);
    assert_int_not_equal(stat(p3, &st), 0); /* keep: 2 */
    size_t l1 = 0;
    char *d = slurp(p1, &l1);
    assert_non_null(d);
    assert_true(count_of(d, "\n") >= 2 && l1 <= 4096);
    free(d);
    inst_fini(&in);

    /* keep: 0 deletes; a record larger than max_size is written whole. */
    tern_mailet_param k0[] = {P("file", path), P("max_size", "4k"), P("keep", "0")};
    inst_ok(&in, "JsonExport", k0, 3);
    char big[12000];
    snprintf(big, sizeof(big), "Subject: big\r\n\r\n");
    size_t o = strlen(big);
    memset(big + o, 'b', 8000);
    big[o + 8000] = '\0';
    char *e = export_one(&in, big);
    assert_null(e);
    d = slurp(path, NULL);
    assert_int_equal(count_of(d, "\n"), 1);
    assert_true(strlen(d) > 8000);
    free(d);
    e = export_one(&in, export_msg);
    assert_null(e);
    d = slurp(path, NULL);
    assert_int_equal(count_of(d, "\n"), 1);
    assert_true(strlen(d) < 4096);
    free(d);
    inst_fini(&in);

    /* body_max cuts the text on a character boundary and says so. */
    tern_mailet_param bm[] = {P("file", path), P("body_max", "5")};
    inst_ok(&in, "JsonExport", bm, 2);
    unlink(path);
    assert_null(export_one(&in, "Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nabcdé"));
    d = slurp(path, NULL);
    assert_non_null(strstr(d, "\"body\":\"abcd\",\"bodyTruncated\":true"));
    free(d);
    inst_fini(&in);

    /* A file that cannot be written: an error for on_error. */
    char bad[160];
    snprintf(bad, sizeof(bad), "%s/no/such/dir/x.jsonl", tmpdir);
    tern_mailet_param pb[] = {P("file", bad)};
    inst_ok(&in, "JsonExport", pb, 1);
    e = export_one(&in, export_msg);
    assert_non_null(e);
    assert_non_null(strstr(e, "No such file"));
    free(e);
    inst_fini(&in);
    rm_tmpdir();
}

/* A one-shot HTTP server on loopback: answers `status` after reading a
 * whole request (or nothing at all when status is 0). */
typedef struct {
    int lfd;
    int status;
    char req[65536];
    size_t req_len;
} http_srv;

static void *srv_main(void *arg)
{
    http_srv *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    size_t want = 0;
    while (s->req_len < sizeof(s->req) - 1) {
        ssize_t r = recv(fd, s->req + s->req_len, sizeof(s->req) - 1 - s->req_len, 0);
        if (r <= 0)
            break;
        s->req_len += (size_t)r;
        s->req[s->req_len] = '\0';
        char *end = strstr(s->req, "\r\n\r\n");
        char *cl = strcasestr(s->req, "Content-Length:");
        if (end && cl && want == 0)
            want = (size_t)(end + 4 - s->req) + strtoul(cl + 15, NULL, 10);
        if (want && s->req_len >= want)
            break;
    }
    if (s->status) {
        char resp[128];
        int n = snprintf(resp, sizeof(resp), "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", s->status);
        ssize_t w = send(fd, resp, (size_t)n, MSG_NOSIGNAL);
        (void)w;
    } else
        usleep(700 * 1000); /* longer than the client's timeout */
    close(fd);
    return NULL;
}

static int srv_start(http_srv *s, pthread_t *t, int status)
{
    memset(s, 0, sizeof(*s));
    s->status = status;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    socklen_t sl = sizeof(a);
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &sl), 0);
    assert_int_equal(pthread_create(t, NULL, srv_main, s), 0);
    return ntohs(a.sin_port);
}

static void test_json_export_http(void **state)
{
    http_srv *s = calloc(1, sizeof(*s));
    pthread_t t;
    int port = srv_start(s, &t, 201);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook/mail", port);
    inst in;
    tern_mailet_param p[] = {P("url", url), P("timeout", "2s")};
    inst_ok(&in, "JsonExport", p, 2);
    char *e = export_one(&in, export_msg);
    if (e)
        fail_msg("post failed: %s", e);
    pthread_join(t, NULL);
    close(s->lfd);
    assert_true(strncmp(s->req, "POST /hook/mail HTTP/1.1\r\n", 26) == 0);
    char host[64];
    snprintf(host, sizeof(host), "Host: 127.0.0.1:%d\r\n", port);
    assert_non_null(strstr(s->req, host));
    assert_non_null(strstr(s->req, "Content-Type: application/json\r\n"));
    char *body = strstr(s->req, "\r\n\r\n") + 4;
    tern_arena a;
    tern_arena_init(&a, 4096);
    tern_json *root = NULL;
    assert_int_equal(tern_json_parse(body, strlen(body), NULL, &a, &root, NULL), 0);
    check_record(root);
    tern_arena_free(&a);
    inst_fini(&in);

    /* A non-2xx status is an error. */
    port = srv_start(s, &t, 503);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    tern_mailet_param p2[] = {P("url", url), P("timeout", "2s")};
    inst_ok(&in, "JsonExport", p2, 2);
    e = export_one(&in, export_msg);
    pthread_join(t, NULL);
    close(s->lfd);
    assert_non_null(e);
    assert_non_null(strstr(e, "HTTP 503"));
    free(e);
    inst_fini(&in);

    /* No answer within the timeout. */
    port = srv_start(s, &t, 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/slow", port);
    tern_mailet_param p3[] = {P("url", url), P("timeout", "300ms")};
    inst_ok(&in, "JsonExport", p3, 2);
    e = export_one(&in, export_msg);
    pthread_join(t, NULL);
    close(s->lfd);
    assert_non_null(e);
    assert_non_null(strstr(e, "no answer"));
    free(e);
    inst_fini(&in);

    /* Refused: nothing listens on the port any more. */
    inst_ok(&in, "JsonExport", p3, 2);
    e = export_one(&in, export_msg);
    assert_non_null(e);
    assert_non_null(strstr(e, "connecting"));
    free(e);
    inst_fini(&in);
    free(s);
}

static void test_json_export_params(void **state)
{
    inst_bad("JsonExport", NULL, 0);
    tern_mailet_param both[] = {P("file", "/tmp/x"), P("url", "http://127.0.0.1/")};
    assert_non_null(strstr(inst_bad("JsonExport", both, 2), "exactly one"));
    tern_mailet_param rel[] = {P("file", "relative.jsonl")};
    assert_non_null(strstr(inst_bad("JsonExport", rel, 1), "absolute"));
    tern_mailet_param tls[] = {P("url", "https://127.0.0.1/")};
    assert_non_null(strstr(inst_bad("JsonExport", tls, 1), "https is not supported"));
    tern_mailet_param port[] = {P("url", "http://127.0.0.1:99999/")};
    assert_non_null(strstr(inst_bad("JsonExport", port, 1), "port"));
    tern_mailet_param sz[] = {P("file", "/tmp/x"), P("max_size", "10")};
    assert_non_null(strstr(inst_bad("JsonExport", sz, 2), "max_size"));
    tern_mailet_param keep[] = {P("file", "/tmp/x"), P("keep", "1000")};
    assert_non_null(strstr(inst_bad("JsonExport", keep, 2), "keep"));
    tern_mailet_param fs[] = {P("file", "/tmp/x"), P("fsync", "maybe")};
    assert_non_null(strstr(inst_bad("JsonExport", fs, 2), "fsync"));
    tern_mailet_param to[] = {P("url", "http://127.0.0.1/"), P("timeout", "1h")};
    assert_non_null(strstr(inst_bad("JsonExport", to, 2), "timeout"));
    tern_mailet_param mix[] = {P("url", "http://127.0.0.1/"), P("keep", "3")};
    assert_non_null(strstr(inst_bad("JsonExport", mix, 2), "only with file"));
    tern_mailet_param mix2[] = {P("file", "/tmp/x"), P("timeout", "3s")};
    assert_non_null(strstr(inst_bad("JsonExport", mix2, 2), "only with url"));
    /* IPv6 literal and default port accepted. */
    inst in;
    tern_mailet_param v6[] = {P("url", "http://[::1]/x")};
    inst_ok(&in, "JsonExport", v6, 1);
    inst_fini(&in);
}

/* Bad parameters surface as config errors of the pipeline, with the path. */
static void test_pipeline_errors(void **state)
{
    const char *yaml = "domains: [example.com]\n"
                       "listeners:\n"
                       "  - name: mx\n"
                       "    protocol: smtp\n"
                       "    address: 127.0.0.1\n"
                       "    port: 2525\n"
                       "processors:\n"
                       "  root:\n"
                       "    - match: All\n"
                       "      mailet: AddFooter\n"
                       "      html: <p>x</p>\n"
                       "    - match: All\n"
                       "      mailet: JsonExport\n"
                       "      url: https://example.org/\n"
                       "    - mailet: \"Null\"\n"
                       "  error:\n"
                       "    - mailet: \"Null\"\n"
                       "  bounces:\n"
                       "    - mailet: \"Null\"\n";
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *cfg = tern_config_load_string(yaml, strlen(yaml), "test", &errs);
    if (cfg == NULL)
        fail_msg("config: %s", errs.n ? errs.items[0] : "?");
    tern_pipeline *p = tern_pipeline_build(cfg, NULL, &errs);
    assert_null(p);
    assert_int_equal(errs.n, 2);
    assert_non_null(strstr(errs.items[0], "AddFooter"));
    assert_non_null(strstr(errs.items[0], "text"));
    assert_non_null(strstr(errs.items[1], "https"));
    tern_config_errors_free(&errs);
    tern_config_unref(cfg);
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
    assert_non_null(memmem(b.data, b.len, "\\u2028", 6)); /* b is not NUL-terminated */
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
        cmocka_unit_test(test_footer_boundary_collision),
        cmocka_unit_test(test_footer_nul_in_header),
        cmocka_unit_test(test_footer_params),
        cmocka_unit_test(test_log_message),
        cmocka_unit_test(test_json_export_file),
        cmocka_unit_test(test_json_export_rotation),
        cmocka_unit_test(test_json_export_http),
        cmocka_unit_test(test_json_export_params),
        cmocka_unit_test(test_pipeline_errors),
        cmocka_unit_test(test_json_write),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    arena_cleanup();
    return rc;
}
