/* ternctl's message commands: `message append ACCOUNT MAILBOX FILE...`
 * puts RFC 5322 files into a mailbox through store.h (seeding test and
 * demo mailboxes, importing mail). Bare LF line endings are turned into
 * CRLF, as store.h expects and as POP3's octet counts assume. Input
 * trusted: the command line and the config file; the files' content is
 * stored as mail (the store indexes it within its bounds). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/config.h"
#include "storage/store.h"
#include "tools/ternctl.h"

#define MAX_FILE (1024ull * 1024 * 1024) /* one message file, bytes */

/* The file with every line ending as CRLF; NULL after printing why. */
static uint8_t *read_crlf(ctx *c, const char *path, size_t *len_r)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "%s: %s: %s\n", c->prog, path, strerror(errno));
        return NULL;
    }
    size_t cap = 8192, n = 0;
    uint8_t *out = malloc(cap);
    int ch, prev = -1;
    while (out && (ch = getc(f)) != EOF) {
        if (n + 2 > cap) {
            if (cap > MAX_FILE) {
                fprintf(stderr, "%s: %s: larger than 1 GiB\n", c->prog, path);
                free(out);
                out = NULL;
                break;
            }
            uint8_t *p = realloc(out, cap * 2);
            if (p == NULL) {
                free(out);
                out = NULL;
                break;
            }
            out = p;
            cap *= 2;
        }
        if (ch == '\n' && prev != '\r')
            out[n++] = '\r';
        out[n++] = (uint8_t)ch;
        prev = ch;
    }
    if (out && ferror(f)) {
        fprintf(stderr, "%s: %s: read error\n", c->prog, path);
        free(out);
        out = NULL;
    }
    fclose(f);
    *len_r = n;
    return out;
}

static int message_append(ctx *c, int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s message append ACCOUNT MAILBOX FILE...\n", c->prog);
        return EX_USAGE_;
    }
    tern_config *cfg = NULL;
    tern_store *s = ternctl_store_open(c, &cfg);
    if (s == NULL)
        return EX_FAIL;
    int rc = EX_OK_;
    for (int i = 2; i < argc && rc == EX_OK_; i++) {
        size_t len = 0;
        uint8_t *data = read_crlf(c, argv[i], &len);
        if (data == NULL) {
            rc = EX_FAIL;
            break;
        }
        tern_store_req *r = tern_store_req_new(TERN_STORE_APPEND, NULL, NULL);
        if (r == NULL) {
            free(data);
            rc = EX_FAIL;
            break;
        }
        r->in.account = argv[0];
        r->in.name = argv[1];
        r->in.data = data;
        r->in.len = len;
        if (tern_store_run_sync(s, r) != TERN_STORE_OK) {
            fprintf(stderr, "%s: %s: %s%s%s\n", c->prog, argv[i], tern_store_strerror(r->status),
                    r->error[0] ? ": " : "", r->error);
            rc = EX_FAIL;
        } else {
            printf("%s uidvalidity=%" PRIu32 " uid=%" PRIu32 " size=%zu\n", argv[i],
                   r->out.append.uidvalidity, r->out.append.uid, len);
        }
        tern_store_req_free(r);
        free(data);
    }
    ternctl_store_close(s, cfg);
    return rc;
}

static const command message_cmds[] = {
    {"append", message_append, "append ACCOUNT MAILBOX FILE...",
     "store each file as a message (LF becomes CRLF)"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_message(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "message", message_cmds, argc, argv);
}
