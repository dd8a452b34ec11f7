/* SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, in the initial
 * response or after an empty challenge. Input: the decoded client message
 * (untrusted). The password is handed to the caller, never checked here. */
#include "auth/sasl/sasl_private.h"

#include <string.h>

void sasl__plain_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    if (!m) {
        s->state = 1;
        sasl__challenge(s, r, "", 0);
        return;
    }
    const uint8_t *nul1 = memchr(m, 0, len);
    if (!nul1) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    const uint8_t *cid = nul1 + 1;
    const uint8_t *nul2 = memchr(cid, 0, len - (size_t)(cid - m));
    if (!nul2) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    const uint8_t *pw = nul2 + 1;
    size_t pw_len = len - (size_t)(pw - m);
    size_t zid_len = (size_t)(nul1 - m), cid_len = (size_t)(nul2 - cid);
    if (cid_len == 0 || pw_len == 0 || memchr(pw, 0, pw_len)) {
        sasl__fail(s, r, TERN_SASL_EMALFORMED);
        return;
    }
    int rc = sasl__set_name(s, s->authzid, m, zid_len);
    if (rc == 0)
        rc = sasl__set_name(s, s->authcid, cid, cid_len);
    if (rc) {
        sasl__fail(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED);
        return;
    }
    /* An authzid equal to the authcid is the same as none (RFC 4616 says
     * the server derives one); any other needs the proxy permission. */
    if (s->authzid[0] && strcmp(s->authzid, s->authcid) == 0)
        s->authzid[0] = '\0';
    if (s->authzid[0] && !s->allow_proxy) {
        sasl__fail(s, r, TERN_SASL_EAUTHZ);
        return;
    }
    if (sasl__set_cred(s, pw, pw_len) != 0) {
        sasl__fail(s, r, TERN_SASL_EINTERNAL);
        return;
    }
    s->state = 2;
    sasl__need(s, r, TERN_SASL_NEED_VERIFY_PASSWORD, WAIT_VERIFIED);
    r->password = s->cred;
    r->password_len = s->cred_len;
}
