/* fuzz_control_req.c: libFuzzer target for server/control_req.c (control
 * socket requests). Input: arbitrary bytes as one request line; an
 * accepted request must name a known command and a qid within bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/control_req.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_control_req req;
    char err[160];
    if (tern_control_req_parse((const char *)data, size, &req, err, sizeof(err)) == 0) {
        if (req.cmd < TERN_CTL_QUEUE_LIST || req.cmd > TERN_CTL_AUTH_STATS)
            abort();
        if (strlen(req.qid) > TERN_CONTROL_MAX_QID)
            abort();
    } else if (memchr(err, '\0', sizeof(err)) == NULL || strchr(err, '\n')) {
        abort();
    }
    return 0;
}
