/* Growable byte buffer with a hard limit, see buf.h. */
#include "lib/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tern_buf_init(tern_buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit;
}

void tern_buf_free(tern_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int tern_buf_reserve(tern_buf *b, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return TERN_BUF_ENOMEM;
    size_t need = b->len + n;
    if (b->limit != 0 && need > b->limit)
        return TERN_BUF_ELIMIT;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->limit != 0 && cap > b->limit)
        cap = b->limit;
    uint8_t *d = realloc(b->data, cap);
    if (d == NULL)
        return TERN_BUF_ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int tern_buf_append(tern_buf *b, const void *data, size_t n)
{
    if (n == 0)
        return 0;
    int r = tern_buf_reserve(b, n);
    if (r != 0)
        return r;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return 0;
}

int tern_buf_append_str(tern_buf *b, const char *s)
{
    return tern_buf_append(b, s, strlen(s));
}

int tern_buf_printf(tern_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return TERN_BUF_ENOMEM;
    if ((size_t)n < sizeof(tmp))
        return tern_buf_append(b, tmp, (size_t)n);
    int r = tern_buf_reserve(b, (size_t)n + 1);
    if (r != 0)
        return r;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void tern_buf_consume(tern_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void tern_buf_shrink(tern_buf *b, size_t keep)
{
    if (b->len == 0 && b->cap > keep) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}
