/* Matcher RemoteAddrNotInNetwork: every recipient when the SMTP client's address is in none of the
 * condition's networks, none otherwise. The condition is a comma
 * list of CIDRs ("10.0.0.0/8", "2001:db8::/32"), bare addresses, dotted
 * netmasks ("192.168.0.0/255.255.0.0") or IPv4 wildcards ("192.168.*"); an
 * IPv4-mapped IPv6 client matches IPv4 networks. Mail made by the server
 * itself (a bounce has no client address) matches neither this nor
 * RemoteAddrInNetwork, so a relay rule never catches our own DSNs.
 * Input: the condition (checked at init); the envelope's client address,
 * text the session wrote. */
#include "mailets/builtin/matcher_util.h"

static int rani_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                     char *err, size_t size)
{
    return tern_matcher_remote_nets_init(p, "RemoteAddrNotInNetwork", state_r, err, size);
}

static int rani_match(void *state, tern_mail *m, bool *matched)
{
    return tern_matcher_remote_nets_match(state, m, "RemoteAddrNotInNetwork", false, matched);
}

static const tern_mailet_module tern_mb_remote_addr_not_in_network = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RemoteAddrNotInNetwork",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = rani_init,
    .deinit = tern_matcher_remote_nets_deinit,
    .match = rani_match,
};
TERN_BUILTIN(tern_mb_remote_addr_not_in_network)
