/* Growable byte buffer with a hard limit. Used for read buffers, reply
 * queues and in-memory message bodies; going past the limit is reported,
 * never silently truncated. */
#ifndef TERN_BUF_H
#define TERN_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct tern_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t limit; /* 0: unlimited */
} tern_buf;

#define TERN_BUF_ELIMIT (-2)
#define TERN_BUF_ENOMEM (-1)

void tern_buf_init(tern_buf *b, size_t limit);
void tern_buf_free(tern_buf *b);
/* Makes room for n more bytes; returns 0, TERN_BUF_ELIMIT or TERN_BUF_ENOMEM. */
int tern_buf_reserve(tern_buf *b, size_t n);
int tern_buf_append(tern_buf *b, const void *data, size_t n);
int tern_buf_append_str(tern_buf *b, const char *s);
int tern_buf_printf(tern_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void tern_buf_consume(tern_buf *b, size_t n);
/* Releases memory beyond `keep` bytes of capacity when the buffer is empty,
 * so idle connections do not hold large buffers. */
void tern_buf_shrink(tern_buf *b, size_t keep);

#endif
