/* Internal to storage/queue/: what the spool's writer needs to know about a
 * tern_body it has taken over. The body's content is the first `file_len`
 * bytes of `fd` (when fd >= 0) followed by the bytes in memory. */
#ifndef TERN_BODY_INTERNAL_H
#define TERN_BODY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/queue/spool.h"

typedef struct tern_body_view {
    int fd;            /* -1 when nothing went to disk */
    uint64_t file_len; /* bytes of the body in fd, from offset 0 */
    const uint8_t *mem;
    size_t mem_len;
    uint32_t crc;      /* CRC32C of the whole body */
} tern_body_view;

/* 0, -EBUSY (append in flight) or the sticky -errno of a failed write. */
int tern_body__state(const tern_body *b);
void tern_body__view(const tern_body *b, tern_body_view *v_r);

#endif
