/* JSON text output: see json_write.h. Input: untrusted string bytes. */
#include "lib/json_write.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "lib/rfc2047.h"

static int put_escape(tern_buf *out, unsigned cp)
{
    char tmp[8];
    snprintf(tmp, sizeof(tmp), "\\u%04x", cp & 0xffffu);
    return tern_buf_append(out, tmp, 6);
}

int tern_json_write_string(tern_buf *out, const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    int rc = tern_buf_append(out, "\"", 1);
    size_t run = 0; /* start of a run of bytes copied as they are */
    size_t i = 0;
    while (rc == 0 && i < len) {
        uint8_t c = p[i];
        const char *esc = NULL;
        size_t seq = 1;
        bool latin1 = false, u_escape = false;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20 || c == 0x7f)
            u_escape = true;
        else if (c >= 0x80) {
            seq = tern_utf8_seq_len(p + i, len - i);
            if (seq == 0) {
                latin1 = true;
                seq = 1;
            } else if (seq == 3 && p[i] == 0xe2 && p[i + 1] == 0x80 &&
                       (p[i + 2] == 0xa8 || p[i + 2] == 0xa9))
                u_escape = true;
        }
        if (esc == NULL && !latin1 && !u_escape) {
            i += seq;
            continue;
        }
        if (i > run)
            rc = tern_buf_append(out, p + run, i - run);
        if (rc != 0)
            break;
        if (esc)
            rc = tern_buf_append_str(out, esc);
        else if (latin1) {
            uint8_t two[2] = {(uint8_t)(0xc0 | (c >> 6)), (uint8_t)(0x80 | (c & 0x3f))};
            rc = tern_buf_append(out, two, 2);
        } else if (seq == 3)
            rc = put_escape(out, p[i + 2] == 0xa8 ? 0x2028 : 0x2029);
        else
            rc = put_escape(out, c);
        i += seq;
        run = i;
    }
    if (rc == 0 && i > run)
        rc = tern_buf_append(out, p + run, i - run);
    if (rc == 0)
        rc = tern_buf_append(out, "\"", 1);
    return rc;
}

int tern_json_write_cstr(tern_buf *out, const char *s)
{
    if (s == NULL)
        return tern_buf_append(out, "null", 4);
    return tern_json_write_string(out, s, strlen(s));
}

int tern_json_write_key(tern_buf *out, const char *key)
{
    int rc = tern_json_write_cstr(out, key);
    return rc ? rc : tern_buf_append(out, ":", 1);
}

int tern_json_write_int(tern_buf *out, int64_t v)
{
    return tern_buf_printf(out, "%" PRId64, v);
}

int tern_json_write_uint(tern_buf *out, uint64_t v)
{
    return tern_buf_printf(out, "%" PRIu64, v);
}
