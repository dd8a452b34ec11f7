/* fuzz_repository.c: libFuzzer target for the repository file format
 * (mailets/repository.c: header line and envelope) and for what the DSN
 * builder does with untrusted message bytes (mailets/builtin/dsn_build.c:
 * the loop guard's Content-Type reading, header-section cut, CRLF repair).
 * Input: arbitrary bytes, taken both as a repository file and as the
 * original message of a report. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailets/builtin/dsn_build.h"
#include "mailets/engine.h"
#include "mailets/repository.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    if (size)
        memcpy(copy, data, size);
    tern_repo_entry e;
    char err[256];
    if (tern_repository_parse(&e, copy, size, "fuzz", err, sizeof(err)) == 0) {
        tern_envelope *env = tern_repository_envelope(&e, "root");
        tern_repository_envelope_free(env);
    }
    tern_repository_entry_free(&e);

    static char from[] = "s@example.org", rcpt[] = "r@example.test";
    tern_spool_rcpt r = {.addr = rcpt, .orcpt = NULL};
    tern_envelope env = {.mail_from = from, .rcpts = &r, .n_rcpts = 1};
    tern_mail *m = tern_mail_standalone(&env, data, size, NULL);
    if (m) {
        volatile bool rep = tern_dsn_is_report(m);
        (void)rep;
        tern_mail_standalone_free(m);
    }
    tern_dsn_rcpt dr = {.addr = "r@example.test", .orcpt = "rfc822;r+2B1@example.test"};
    for (int attach = 0; attach < 2; attach++) {
        tern_dsn_info in = {.style = TERN_DSN_REPORT, .reporting_mta = "mx.example.test",
                            .from = "f", .to = "t", .subject = "s", .qid = "Q", .code = 550,
                            .text = "x", .rcpts = &dr, .n_rcpts = 1,
                            .attach = attach ? TERN_DSN_ATTACH_HEADERS : TERN_DSN_ATTACH_FULL,
                            .orig = data, .orig_len = size};
        size_t len = 0;
        free(tern_dsn_build(&in, &len));
    }
    return 0;
}
