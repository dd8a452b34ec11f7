/* TLS-RPT data (RFC 8460): per policy domain and UTC day, how many TLS
 * sessions of remote delivery succeeded and failed, with the failures by
 * result type, MX host and address, and the policy that applied. Kept in
 * memory on the queue's loop and written (debounced, on the thread pool)
 * to STATE_DIR/tlsrpt/YYYY-MM-DD.json in the RFC 8460 report shape, one
 * report per policy domain; the domain's `rua` from its `_smtp._tls` TXT
 * record rides along. Sending the reports is not done yet.
 * Input: outcomes from our own queue (trusted); names and reasons in them
 * came from the network and are only ever written as JSON strings. */
#ifndef TERN_TLSRPT_H
#define TERN_TLSRPT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "lib/mta_sts.h"

/* How long after a change the day's file is rewritten. */
#define TERN_TLSRPT_FLUSH_MS 1000
/* Caps on what one day holds in memory (named so a flood of distinct
 * domains or hosts cannot grow it without bound). */
#define TERN_TLSRPT_MAX_DOMAINS 10000
#define TERN_TLSRPT_MAX_DETAILS 100

/* RFC 8460 4.3 policy types this module writes. */
#define TERN_TLSRPT_STS "sts"
#define TERN_TLSRPT_NO_POLICY "no-policy-found"
#define TERN_TLSRPT_TLSA "tlsa"
/* TLSA records kept per policy (a policy-string line each). */
#define TERN_TLSRPT_MAX_TLSA 8

typedef struct tern_tlsrpt tern_tlsrpt;

/* org_name: our host name (the report's organization-name and contact).
 * Today's file, if one exists, is read back so a restart keeps counting.
 * NULL when out of memory. */
tern_tlsrpt *tern_tlsrpt_new(uv_loop_t *loop, const char *state_dir, const char *org_name);

/* One session with a host of `domain`. policy_type is TERN_TLSRPT_STS
 * (pol is the policy) or TERN_TLSRPT_NO_POLICY (pol NULL); rua may be
 * NULL. For a failure, result_type is an RFC 8460 4.3.2 name
 * ("starttls-not-supported", "validation-failure", ...), mx_host and ip
 * say where, why is additional-information (may be NULL). */
void tern_tlsrpt_session(tern_tlsrpt *t, const char *domain, const char *policy_type,
                         const tern_sts_policy *pol, const char *rua, bool ok,
                         const char *result_type, const char *mx_host, const char *ip,
                         const char *why);

/* One session with mx_host of `domain` under DANE (RFC 7672): the policy
 * is "tlsa", one per MX host, its policy-string the host's usable TLSA
 * records in presentation form (at most TERN_TLSRPT_MAX_TLSA; association
 * data past 64 bytes shown by its length). Failures as above, plus the
 * DANE ones of RFC 8460 4.3.2.2 ("tlsa-invalid", "dnssec-invalid"). */
struct tern_tlsa;
void tern_tlsrpt_session_tlsa(tern_tlsrpt *t, const char *domain, const char *mx_host,
                              const struct tern_tlsa *recs, size_t n, const char *rua, bool ok,
                              const char *result_type, const char *ip, const char *why);

/* Writes what is pending now (synchronously: for shutdown) and stops the
 * timer; the loop must run on for the handle to close, then free. */
void tern_tlsrpt_close(tern_tlsrpt *t);
void tern_tlsrpt_free(tern_tlsrpt *t);

#endif
