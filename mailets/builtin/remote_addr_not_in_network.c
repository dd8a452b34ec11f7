/* Matcher RemoteAddrNotInNetwork: every recipient when the SMTP client's address is in none of the
 * condition's networks, none otherwise. The condition is a comma
 * list of CIDRs ("10.0.0.0/8", "2001:db8::/32"), bare addresses, dotted
 * netmasks ("192.168.0.0/255.255.0.0") or IPv4 wildcards ("192.168.*"); an
 * IPv4-mapped IPv6 client matches IPv4 networks. Mail made by the server
 * itself (a bounce has no client address) matches neither this nor
 * RemoteAddrInNetwork, so a relay rule never catches our own DSNs.
 * Input: the condition (checked at init); the envelope's client address,
 * text the session wrote. */
#include <stdlib.h>

#include "mailets/builtin/matcher_util.h"

static int rani_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                     char *err, size_t size)
{
    const char *c = tern_matcher_condition(p, "RemoteAddrNotInNetwork",
                                           "127.0.0.0/8, ::1, 192.168.*", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_nets *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (tern_matcher_nets_parse(c, n, err, size) != 0) {
        free(n);
        return -1;
    }
    *state_r = n;
    return 0;
}

static void rani_deinit(void *state)
{
    tern_matcher_nets_free(state);
    free(state);
}

static int rani_match(void *state, tern_mail *m, bool *matched)
{
    const char *a = tern_mail_remote_addr(m);
    if (a == NULL || a[0] == '\0')
        return 0; /* internal mail: no client */
    int r = tern_matcher_nets_match(state, a);
    if (r < 0) {
        tern_mail_log(m, TERN_MAILET_LOG_WARN,
                      "RemoteAddrNotInNetwork: client address \"%.64s\" is not an IP", a);
        return -1;
    }
    tern_matcher_all(m, matched, r == 0);
    return 0;
}

static const tern_mailet_module tern_mb_remote_addr_not_in_network = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RemoteAddrNotInNetwork",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = rani_init,
    .deinit = rani_deinit,
    .match = rani_match,
};
TERN_BUILTIN(tern_mb_remote_addr_not_in_network)
