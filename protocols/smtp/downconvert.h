/* 8BITMIME downconversion (RFC 6152 3, RFC 1652): when the next hop does
 * not take 8-bit data, every leaf part whose body has 8-bit octets is
 * rewritten as quoted-printable, recursing into multiparts and into
 * message/rfc822 parts; 7bit, QP and base64 parts stay as they are.
 * Headers are left alone (8-bit headers need SMTPUTF8, which the caller
 * checks). A pure function over a whole message held in memory. Input: a
 * message from our spool, whose content is untrusted (it came from the
 * network). */
#ifndef TERN_DOWNCONVERT_H
#define TERN_DOWNCONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Any octet above 127 in msg[0..len). */
bool tern_has_8bit(const uint8_t *msg, size_t len);

/* Appends the converted message to out. Returns 1 when something was
 * converted, 0 when nothing needed to be (out is then left unchanged), or
 * a negative TERN_BUF_E* (out of memory / out's limit). */
int tern_downconvert_8bit(const uint8_t *msg, size_t len, tern_buf *out);

#endif
