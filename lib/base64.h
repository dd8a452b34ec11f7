/* RFC 4648 base64 (standard alphabet, with padding) for protocol fields
 * such as SASL exchanges and stored SCRAM keys. Input: untrusted text.
 *
 * Decoding is strict on purpose: no whitespace, padding required, and the
 * unused low bits of the last character must be zero, so that every byte
 * string has exactly one accepted encoding. MIME bodies, which need a
 * lenient decoder, use tern_base64_stream below. */
#ifndef TERN_BASE64_H
#define TERN_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Characters needed to encode n bytes, without the terminating NUL. */
#define TERN_BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)
/* Upper bound of bytes decoded from n characters. */
#define TERN_BASE64_DECODED_MAX(n) (((n) / 4) * 3 + 3)

/* Writes the encoding and a NUL into out (cap includes the NUL). Returns
 * the length written without the NUL, or -1 if out is too small. */
long tern_base64_encode(const uint8_t *in, size_t len, char *out, size_t cap);

/* Decodes strictly. Returns 0 and the length in *len_r, or -1 (bad
 * character, bad padding, non-zero trailing bits, length not a multiple
 * of 4, or more than cap bytes). An empty input decodes to nothing. */
int tern_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *len_r);


/* A lenient, resumable decoder for MIME bodies (RFC 2045 6.8): characters
 * outside the alphabet (line ends, spaces, junk) are skipped, "=" ends the
 * data (what follows is ignored), a partial last group gives the whole
 * bytes it holds. Any chunking gives the same output. */
typedef struct tern_base64_stream {
    uint32_t acc;
    int bits;
    int done; /* "=" seen */
} tern_base64_stream;

void tern_base64_stream_init(tern_base64_stream *s);
/* Writes at most len bytes (3 per 4 characters used) to out and returns
 * how many. */
size_t tern_base64_stream_decode(tern_base64_stream *s, const uint8_t *in, size_t len, uint8_t *out);

#endif
