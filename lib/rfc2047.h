/* Header text to UTF-8: RFC 2047 encoded-words (B and Q, any charset glibc
 * iconv knows, an RFC 2231 "*language" suffix tolerated), and charset
 * conversion for MIME text. Input: untrusted header values and bodies.
 *
 * Output is always valid UTF-8. Bytes that are not valid UTF-8, in raw
 * (unencoded) header text or in a charset iconv does not know, are taken
 * as Latin-1 (each byte becomes U+0080..U+00FF): it keeps the information,
 * and searching for an accented word in an unlabelled Latin-1 header still
 * works. Bytes iconv rejects inside a charset it knows become U+FFFD.
 *
 * Encoded-words are decoded wherever they appear, even touching other text
 * (many mailers write "Re:=?utf-8?q?x?="); whitespace between two adjacent
 * encoded-words is dropped; words of one charset in a row are converted
 * together, so a character split across two words survives; a malformed
 * word is left as it is. */
#ifndef TERN_RFC2047_H
#define TERN_RFC2047_H

#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/buf.h"

/* Appends the decoded value to `out`. Control characters (C0, DEL; NUL
 * included) become spaces, so the result is a clean C string once
 * terminated. Returns 0 or TERN_BUF_E*. */
int tern_rfc2047_decode(tern_buf *out, const char *in, size_t len);

/* The same, NUL-terminated in `a`; *len_r (may be NULL) gets the length.
 * NULL only when out of memory. */
char *tern_rfc2047_decode_arena(tern_arena *a, const char *in, size_t len, size_t *len_r);

/* Appends `in`, text in `charset` (name as in a MIME parameter, any case,
 * "*lang" suffix allowed), as UTF-8. Unknown charsets: see above. Controls
 * are kept. Returns 0 or TERN_BUF_E*. */
int tern_charset_to_utf8(tern_buf *out, const char *charset, size_t charset_len,
                         const uint8_t *in, size_t len);

/* Appends `in` with every invalid UTF-8 byte taken as Latin-1. */
int tern_utf8_sanitize(tern_buf *out, const uint8_t *in, size_t len);

/* Length of the valid UTF-8 sequence at in[0..len), or 0 if invalid or
 * incomplete. */
size_t tern_utf8_seq_len(const uint8_t *in, size_t len);

/* Normalised charset name for iconv into `buf` (lowercase, "*lang" cut,
 * a few common mislabels mapped). Returns 0, or -1 if it is not a charset
 * name at all. */
int tern_charset_normalize(const char *charset, size_t len, char *buf, size_t size);

#endif
