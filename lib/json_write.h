/* Writing JSON (RFC 8259) text into a tern_buf: string escaping and the
 * few value forms Tern emits (export records, later API answers). Input:
 * untrusted bytes as string contents; the output is always valid JSON
 * whose strings are valid UTF-8 (invalid input bytes are taken as
 * Latin-1, as lib/rfc2047.h does for headers, so no information is lost).
 *
 * The writer keeps no state of its own: the caller writes the brackets,
 * commas and colons in order; these helpers only make the tokens safe. */
#ifndef TERN_JSON_WRITE_H
#define TERN_JSON_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Appends s[0..len) as a quoted JSON string: '"' and '\\' escaped, C0
 * controls and DEL as \uXXXX (\n \r \t short forms), U+2028/2029 escaped
 * (JavaScript consumers), invalid UTF-8 taken as Latin-1. Returns 0 or
 * TERN_BUF_E*. */
int tern_json_write_string(tern_buf *out, const char *s, size_t len);
/* The same for a NUL-terminated string; NULL writes `null`. */
int tern_json_write_cstr(tern_buf *out, const char *s);
/* `"key":` ready for the value that follows. */
int tern_json_write_key(tern_buf *out, const char *key);
int tern_json_write_int(tern_buf *out, int64_t v);
int tern_json_write_uint(tern_buf *out, uint64_t v);

#endif
