/* Example matcher plugin "SenderDomainIn", built out of tree against the
 * installed <tern/mailet.h> only: matches every recipient when the
 * envelope sender's domain is in the comma-separated condition
 * ("SenderDomainIn=example.org,example.net"), none otherwise.
 * Input: the condition (checked at init), the mail through the host table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <tern/mailet.h>

typedef struct domains {
    const tern_mailet_host *host;
    char list[1024];
} domains;

static int sd_init(const tern_mailet_host *host, const tern_mailet_params *p, void **state_r,
                   char *err, size_t err_size)
{
    const char *cond = NULL;
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->items[i].key, "condition") == 0)
            cond = p->items[i].value;
    if (cond == NULL || cond[0] == '\0' || strlen(cond) >= sizeof(((domains *)0)->list)) {
        snprintf(err, err_size, "a condition with one or more domains is required");
        return -1;
    }
    domains *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    d->host = host;
    snprintf(d->list, sizeof(d->list), "%s", cond);
    *state_r = d;
    return 0;
}

static void sd_deinit(void *state)
{
    free(state);
}

static int sd_match(void *state, tern_mail *m, bool *matched)
{
    domains *d = state;
    const char *sender = d->host->sender(m);
    const char *at = strrchr(sender, '@');
    if (at == NULL)
        return 0;
    char copy[sizeof(d->list)];
    snprintf(copy, sizeof(copy), "%s", d->list);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
        if (strcasecmp(tok, at + 1) == 0) {
            for (size_t i = 0; i < d->host->rcpt_count(m); i++)
                matched[i] = true;
            break;
        }
    return 0;
}

const tern_mailet_module tern_mailet_module_v1 = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SenderDomainIn",
    .kinds = TERN_MAILET_KIND_MATCHER,
    .init = sd_init,
    .deinit = sd_deinit,
    .match = sd_match,
};
