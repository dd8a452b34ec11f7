/* fuzz_json.c: libFuzzer target for lib/json.c. Input: arbitrary bytes as
 * one document; parsed with tight limits and with the defaults, and every
 * node of an accepted tree is walked so ASan sees each read. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lib/json.h"

static size_t walk(const tern_json *v)
{
    size_t n = 0;
    for (; v; v = v->next) {
        n += v->len + v->key_len;
        if (v->type == TERN_JSON_STRING || v->type == TERN_JSON_NUMBER)
            n += strlen(v->text);
        if (v->type == TERN_JSON_NUMBER) {
            int64_t i;
            n += (size_t)(tern_json_int64(v, &i) == 0);
        }
        n += tern_json_str(v) != NULL;
        if (v->type == TERN_JSON_OBJECT)
            n += tern_json_get(v, "kty") != NULL;
        n += walk(v->child);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const tern_json_limits tight = {.max_depth = 4, .max_nodes = 64, .max_string = 32};
    tern_arena a;
    tern_arena_init(&a, 512);
    tern_json *v;
    volatile size_t sink = 0;
    if (tern_json_parse((const char *)data, size, NULL, &a, &v, NULL) == TERN_JSON_OK)
        sink += walk(v);
    tern_arena_reset(&a);
    if (tern_json_parse((const char *)data, size, &tight, &a, &v, NULL) == TERN_JSON_OK)
        sink += walk(v);
    (void)sink;
    tern_arena_free(&a);
    return 0;
}
