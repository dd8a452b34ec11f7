/* Example mailet plugin "SubjectTagger", built out of tree against the
 * installed <tern/mailet.h> only: when the Subject matches a regular
 * expression (POSIX ERE, case-insensitive), it adds a header field, and
 * optionally rejects the message instead (`action: reject`), which in the
 * root processor reaches the SMTP client as its reply.
 *
 *   plugins:
 *     - {name: SubjectTagger, path: /usr/lib/tern/subject_tagger.so}
 *   processors:
 *     root:
 *       - match: All
 *         mailet: SubjectTagger
 *         pattern: "\\[ad\\]"
 *         header: X-Tagged
 *         value: advert
 *
 * Input: parameters from the config (checked at init), the mail through
 * the host table. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tern/mailet.h>

typedef struct tagger {
    const tern_mailet_host *host;
    regex_t re;
    char header[128];
    char value[256];
    int reject;
    char text[200];
} tagger;

static const char *param(const tern_mailet_params *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->items[i].key, key) == 0)
            return p->items[i].value;
    return NULL;
}

static int tagger_init(const tern_mailet_host *host, const tern_mailet_params *p, void **state_r,
                       char *err, size_t err_size)
{
    if (host->abi_version != TERN_MAILET_ABI_VERSION) {
        snprintf(err, err_size, "host ABI %u, built for %u", host->abi_version,
                 TERN_MAILET_ABI_VERSION);
        return -1;
    }
    const char *pattern = param(p, "pattern");
    const char *action = param(p, "action");
    if (pattern == NULL) {
        snprintf(err, err_size, "pattern: a regular expression is required");
        return -1;
    }
    if (action && strcmp(action, "tag") != 0 && strcmp(action, "reject") != 0) {
        snprintf(err, err_size, "action: tag or reject");
        return -1;
    }
    tagger *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    int rc = regcomp(&t->re, pattern, REG_EXTENDED | REG_ICASE | REG_NOSUB);
    if (rc != 0) {
        char why[128];
        regerror(rc, &t->re, why, sizeof(why));
        snprintf(err, err_size, "pattern: %s", why);
        free(t);
        return -1;
    }
    t->host = host;
    snprintf(t->header, sizeof(t->header), "%s", param(p, "header") ? param(p, "header") : "X-Subject-Tag");
    snprintf(t->value, sizeof(t->value), "%s", param(p, "value") ? param(p, "value") : "matched");
    snprintf(t->text, sizeof(t->text), "%s", param(p, "text") ? param(p, "text") : "Message refused by policy");
    t->reject = action && strcmp(action, "reject") == 0;
    *state_r = t;
    return 0;
}

static void tagger_deinit(void *state)
{
    tagger *t = state;
    regfree(&t->re);
    free(t);
}

static tern_mailet_verdict tagger_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    tagger *t = state;
    const char *subject = t->host->header_get(m, "Subject", 0);
    if (subject == NULL || regexec(&t->re, subject, 0, NULL, 0) != 0)
        return TERN_MAILET_CONTINUE;
    if (t->reject) {
        res->code = 550;
        res->enhanced = "5.7.1";
        res->text = t->text;
        return TERN_MAILET_REJECT;
    }
    if (t->host->header_add(m, t->header, t->value) != 0)
        return TERN_MAILET_ERROR;
    t->host->log(m, TERN_MAILET_LOG_INFO, "tagged %s: %s", t->header, t->value);
    return TERN_MAILET_CONTINUE;
}

const tern_mailet_module tern_mailet_module_v1 = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "SubjectTagger",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = tagger_init,
    .deinit = tagger_deinit,
    .service = tagger_service,
};
