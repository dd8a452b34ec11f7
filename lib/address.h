/* RFC 5322 address lists (From, To, Cc, Reply-To, ...), parsed leniently
 * as real mail needs: display names as phrases or quoted strings, comments
 * anywhere (a comment after a bare address is its display name, as old
 * mailers wrote "user@host (Full Name)"), groups "name: a, b;", route
 * addresses "<@relay,@relay2:user@host>", obsolete forms (dots in phrases,
 * spaces around dots and "@", empty list elements), RFC 6532 UTF-8 in
 * every field, RFC 2047 encoded-words in display names (decoded when asked).
 * Input: an untrusted header value (unfolded or not). Never fails except
 * when out of memory; what cannot be made sense of is marked `invalid`.
 *
 * The result is a list in the order of the input, with group start and
 * end markers, which is what IMAP ENVELOPE writes:
 *   MAILBOX     (name route local domain), NULL members are NIL;
 *   GROUP_START (NIL NIL name NIL)  -- the group's display name in `name`;
 *   GROUP_END   (NIL NIL NIL NIL).
 * A group never closed by ';' is closed at the end of the input.
 *
 * Broken mailboxes, as Dovecot reads them: a bare word ("user") is a local
 * part without a domain; words that are no local part ("Someone Else") are
 * a display name without an address. Both are `invalid`, with NULL for
 * what is missing; Dovecot's ENVELOPE writes "MISSING_MAILBOX" and
 * "MISSING_DOMAIN" there, not NIL (which would read as a group marker). */
#ifndef TERN_ADDRESS_H
#define TERN_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/arena.h"

typedef enum {
    TERN_ADDRESS_MAILBOX = 0,
    TERN_ADDRESS_GROUP_START,
    TERN_ADDRESS_GROUP_END,
} tern_address_kind;

typedef struct tern_address tern_address;
struct tern_address {
    tern_address *next;
    tern_address_kind kind;
    /* Display name as written: quoted strings unquoted, words separated by
     * one space where the input had whitespace or a comment between them,
     * encoded-words left as they are. NULL when there is none. */
    const char *name;
    /* The same decoded (RFC 2047, UTF-8 checked, controls as spaces), when
     * TERN_ADDRESS_DECODE was given; else NULL. */
    const char *name_decoded;
    const char *route;   /* obs-route as "@a,@b", or NULL */
    const char *local;   /* local part, unquoted; "" for "<>"; NULL if missing */
    const char *domain;  /* domain (a literal keeps its brackets); NULL if missing */
    bool invalid;        /* no "@", no domain, stray characters, unclosed "<"... */
};

enum {
    TERN_ADDRESS_DECODE = 1 << 0, /* fill name_decoded */
};

#define TERN_ADDRESS_MAX 1000 /* addresses kept per list; the rest is dropped */

/* Parses in[0..len). *count_r (may be NULL) gets the number of entries
 * (markers included). Returns the first entry, NULL when the list is empty
 * (*count_r 0) or when out of memory (*count_r (size_t)-1). */
tern_address *tern_address_list_parse(tern_arena *a, const char *in, size_t len, unsigned flags,
                                      size_t *count_r);

/* "local@domain" (the local part quoted when it is not a dot-atom), or
 * "local" without a domain, in `a`. NULL for markers or out of memory. */
char *tern_address_spec(tern_arena *a, const tern_address *addr);

#endif
