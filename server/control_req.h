/* Control socket requests (server/control_req.c): one JSON object per
 * line, parsed into a small struct. Pure: no I/O, no server state, so the
 * unit test and the fuzzer run it alone. Input: untrusted bytes. */
#ifndef TERN_SERVER_CONTROL_REQ_H
#define TERN_SERVER_CONTROL_REQ_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    TERN_CTL_QUEUE_LIST = 1,
    TERN_CTL_QUEUE_SHOW,
    TERN_CTL_QUEUE_RETRY,
    TERN_CTL_QUEUE_HOLD,
    TERN_CTL_QUEUE_RELEASE,
    TERN_CTL_QUEUE_DELETE,
    TERN_CTL_QUEUE_HOSTS,
    TERN_CTL_AUTH_STATS,
} tern_control_cmd;

/* Longest qid taken (ours are 16 characters; room for future forms). */
#define TERN_CONTROL_MAX_QID 64

typedef struct tern_control_req {
    tern_control_cmd cmd;
    char qid[TERN_CONTROL_MAX_QID + 1]; /* "" when not given */
    bool all;                           /* queue.retry {"all":true} */
} tern_control_req;

/* Parses line[0..len) (no newline). 0 and *req, or -1 with a one-line
 * reason in err: not JSON, not an object, no or unknown "cmd", a missing
 * or malformed "qid" (1..64 printable ASCII characters, no spaces) where
 * the command needs one. Unknown members are ignored (newer clients). */
int tern_control_req_parse(const char *line, size_t len, tern_control_req *req, char *err,
                           size_t err_size);

#endif
