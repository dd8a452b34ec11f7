/* Quoted-printable (RFC 2045 6.7): a resumable decoder for message bodies
 * fed in any chunking, and an encoder for mailets that write QP bodies.
 * Input: untrusted encoded text.
 *
 * The decoder is lenient, as mail needs: "=XX" in either case decodes;
 * "=" followed by anything else is kept as it is; a soft line break is
 * "=" then optional whitespace then CRLF or LF; whitespace at the end of a
 * line is dropped (RFC 2045 rule 3: it was added in transport); hard line
 * ends are passed through as they came (CRLF or LF). Any chunking gives
 * the same output. */
#ifndef TERN_QP_H
#define TERN_QP_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define TERN_QP_WS_MAX 256 /* trailing whitespace held back; a longer run is data */

typedef struct tern_qp_decoder {
    int state;
    uint8_t hex1;
    size_t ws_len;         /* whitespace held until we know if the line ends */
    uint8_t ws[TERN_QP_WS_MAX];
} tern_qp_decoder;

void tern_qp_decoder_init(tern_qp_decoder *d);
/* Appends what in[0..len) decodes to. Returns 0 or TERN_BUF_E*. */
int tern_qp_decode(tern_qp_decoder *d, tern_buf *out, const uint8_t *in, size_t len);
/* The input is over: flushes what was held back. A last "=" is a soft
 * break (a part's body ends before the CRLF that belongs to the boundary,
 * so "...=\r\n--boundary" leaves it last); "=X" is kept as it is;
 * trailing whitespace is dropped. */
int tern_qp_decode_finish(tern_qp_decoder *d, tern_buf *out);

enum {
    /* Line ends in the input are data (encoded as =0D=0A), not line
     * breaks: for binary content. Otherwise CRLF or a bare LF is a hard
     * line break, written CRLF. */
    TERN_QP_BINARY = 1 << 0,
};

/* Appends the QP encoding of in[0..len): lines of at most 76 characters
 * (soft breaks "=\r\n"), whitespace before a line end encoded, "=", controls
 * and 8-bit bytes encoded, a "." or "From " at a line start encoded so the
 * body survives SMTP and mbox. Returns 0 or TERN_BUF_E*. */
int tern_qp_encode(tern_buf *out, const uint8_t *in, size_t len, unsigned flags);

#endif
