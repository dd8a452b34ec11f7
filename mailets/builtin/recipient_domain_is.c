/* Matcher RecipientDomainIs: the recipients whose domain is in the
 * condition's comma list (case-insensitive; a trailing dot is the same
 * domain; subdomains are not included). Input: the condition (checked at
 * init). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailets/builtin/matcher_util.h"

static size_t trim_dot(const char *d)
{
    size_t n = strlen(d);
    return n > 0 && d[n - 1] == '.' ? n - 1 : n;
}

static int rdi_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                    char *err, size_t size)
{
    const char *c =
        tern_matcher_condition(p, "RecipientDomainIs", "example.org, example.net", err, size);
    if (c == NULL)
        return -1;
    tern_matcher_list *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    if (tern_matcher_list_parse(c, ',', l, err, size) != 0) {
        free(l);
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        char *d = l->items[i];
        d[trim_dot(d)] = '\0';
        bool ok = d[0] != '\0' && d[0] != '.';
        for (const unsigned char *q = (const unsigned char *)d; ok && *q; q++)
            if (*q <= ' ' || *q == 127 || *q == '@' || *q == '<' || *q == '>')
                ok = false;
        if (!ok) {
            tern_builtin_fail(err, size, "\"%s\" is not a domain", d);
            tern_matcher_list_free(l);
            free(l);
            return -1;
        }
    }
    *state_r = l;
    return 0;
}

static void rdi_deinit(void *state)
{
    tern_matcher_list_free(state);
    free(state);
}

static int rdi_match(void *state, tern_mail *m, bool *matched)
{
    const tern_matcher_list *l = state;
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++) {
        const char *d = tern_addr_domain(tern_mail_rcpt(m, i));
        size_t dn = trim_dot(d);
        for (size_t k = 0; k < l->n && !matched[i]; k++)
            matched[i] = strlen(l->items[k]) == dn && strncasecmp(d, l->items[k], dn) == 0;
    }
    return 0;
}

static const tern_mailet_module tern_mb_recipient_domain_is = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RecipientDomainIs",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = rdi_init,
    .deinit = rdi_deinit,
    .match = rdi_match,
};
TERN_BUILTIN(tern_mb_recipient_domain_is)
