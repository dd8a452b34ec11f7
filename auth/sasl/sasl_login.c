/* SASL LOGIN (draft-murchison-sasl-login): "Username:" then "Password:",
 * each answered by one client message; clients may send the username as
 * the initial response. Input: decoded client messages (untrusted). */
#include "auth/sasl/sasl_private.h"

#include <string.h>

enum { LOGIN_START, LOGIN_USER, LOGIN_PASS, LOGIN_DONE };

void sasl__login_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    switch (s->state) {
    case LOGIN_START:
        /* An empty initial response carries no username: ask for it. */
        if (!m || len == 0) {
            s->state = LOGIN_USER;
            sasl__challenge(s, r, "Username:", 9);
            return;
        }
        /* fall through */
    case LOGIN_USER: {
        int rc = len == 0 ? -2 : sasl__set_name(s, s->authcid, m, len);
        if (rc) {
            sasl__fail(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED);
            return;
        }
        s->state = LOGIN_PASS;
        sasl__challenge(s, r, "Password:", 9);
        return;
    }
    case LOGIN_PASS:
        if (len == 0 || memchr(m, 0, len)) {
            sasl__fail(s, r, TERN_SASL_EMALFORMED);
            return;
        }
        if (sasl__set_cred(s, m, len) != 0) {
            sasl__fail(s, r, TERN_SASL_EINTERNAL);
            return;
        }
        s->state = LOGIN_DONE;
        sasl__need(s, r, TERN_SASL_NEED_VERIFY_PASSWORD, WAIT_VERIFIED);
        r->password = s->cred;
        r->password_len = s->cred_len;
        return;
    default:
        sasl__fail(s, r, TERN_SASL_ESTATE);
    }
}
