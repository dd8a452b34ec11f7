/* libFuzzer target for the builtin matchers that read message bytes:
 * HasAttachment over lib/mime's tree, HasHeader's regexes over header
 * values, RelayLimit and SizeGreaterThan. Input: arbitrary bytes taken as
 * a whole message (header section, then body) and given to a standalone
 * mail with three recipients. Checked: every matcher decides (returns 0,
 * or -1 only where a regex may hit its match limit) and answers all or
 * none of the recipients, never a mix; any broken invariant calls abort().
 * The MIME parser's bounds (depth, parts, header bytes) keep runs short. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailets/engine.h"
#include "mailets/mail.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

typedef struct {
    const char *name, *cond;
    bool may_fail; /* a regex may give up at its match limit */
    const tern_mailet_module *mod;
    void *state;
} fz_inst;

static fz_inst insts[] = {
    {"HasAttachment", NULL, false, NULL, NULL},
    {"HasHeader", "Content-Type=multipart/.*boundary", true, NULL, NULL},
    {"HasHeader", "Subject=^(re|fwd?):\\s*(.*\\s)*x$+From", true, NULL, NULL},
    {"HasHeader", "Received", false, NULL, NULL},
    {"RelayLimit", "3", false, NULL, NULL},
    {"SizeGreaterThan", "1k", false, NULL, NULL},
};

static void setup(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    for (size_t i = 0; i < sizeof(insts) / sizeof(insts[0]); i++) {
        insts[i].mod = tern_builtin_find(insts[i].name);
        CHECK(insts[i].mod != NULL);
        tern_mailet_param item = {.key = "condition", .value = insts[i].cond};
        tern_mailet_params ps = {insts[i].cond ? &item : NULL, insts[i].cond ? 1 : 0};
        char err[256];
        CHECK(insts[i].mod->init(tern_mailet_host_table(), &ps, &insts[i].state, err,
                                 sizeof(err)) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    static char *rc_addrs[] = {"a@example.org", "b@example.org", "c@example.net"};
    tern_spool_rcpt rc[3];
    memset(rc, 0, sizeof(rc));
    for (size_t i = 0; i < 3; i++)
        rc[i].addr = rc_addrs[i];
    tern_envelope env;
    memset(&env, 0, sizeof(env));
    memcpy(env.qid, "FUZZ000000000000", TERN_QID_LEN);
    env.mail_from = (char *)"s@example.org";
    env.rcpts = rc;
    env.n_rcpts = 3;
    env.client_addr = (char *)"192.0.2.1";
    tern_mail *m = tern_mail_standalone(&env, data, size, NULL);
    if (m == NULL)
        return 0; /* out of memory */
    for (size_t i = 0; i < sizeof(insts) / sizeof(insts[0]); i++) {
        bool matched[3] = {false, false, false};
        int r = insts[i].mod->match(insts[i].state, m, matched);
        CHECK(r == 0 || (r == -1 && insts[i].may_fail));
        CHECK(matched[0] == matched[1] && matched[1] == matched[2]);
    }
    tern_mail_standalone_free(m);
    return 0;
}
