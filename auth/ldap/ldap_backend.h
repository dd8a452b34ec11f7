/* ldap_backend.h: what ldap.c exposes besides its backend table, for its
 * unit tests. Private to auth/. */
#ifndef TERN_AUTH_LDAP_BACKEND_H
#define TERN_AUTH_LDAP_BACKEND_H

#include <stdbool.h>
#include <stddef.h>

/* Expands %u (user), %n (local part), %d (domain) and %% in tmpl, each value
 * escaped for a DN (RFC 4514) when `dn`, else for a filter (RFC 4515).
 * Returns 0, or -1 when the result does not fit in size. */
int tern_auth_ldap__expand(const char *tmpl, const char *user, bool dn, char *out, size_t size);

#endif
