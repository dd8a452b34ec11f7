/* SASL EXTERNAL (RFC 4422 appendix A): the client's identity comes from
 * the TLS client certificate; the message is the requested authzid, maybe
 * empty. Input: the decoded client message (untrusted). The caller maps
 * the certificate subject and decides whether that authzid is allowed. */
#include "auth/sasl/sasl_private.h"

void sasl__external_step(tern_sasl *s, const uint8_t *m, size_t len, tern_sasl_result *r)
{
    if (!m && s->state == 0) {
        s->state = 1;
        sasl__challenge(s, r, "", 0);
        return;
    }
    if (!s->external_available) {
        sasl__fail(s, r, TERN_SASL_EBADCRED);
        return;
    }
    int rc = sasl__set_name(s, s->authzid, m, len);
    if (rc) {
        sasl__fail(s, r, rc == -1 ? TERN_SASL_ETOOLONG : TERN_SASL_EMALFORMED);
        return;
    }
    s->state = 2;
    sasl__need(s, r, TERN_SASL_NEED_EXTERNAL, WAIT_VERIFIED);
}
