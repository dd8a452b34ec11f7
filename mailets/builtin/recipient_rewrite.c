/* Mailet RecipientRewrite: turns each recipient into what the directory
 * says it is. An account address becomes the account's canonical name
 * (with its +detail kept in the address, so local delivery still sees the
 * sub-address, and recorded as attribute tern.detail.<account>); an alias
 * or catch-all is replaced by its targets, de-duplicated against every
 * recipient of the mail. Targets derive from the alias's original spool
 * recipient, so crash bookkeeping follows them. A target that is itself an
 * alias is resolved by a later round: when anything was expanded the mail
 * restarts its processor, the engine looks the new addresses up, and this
 * step runs again, at most `max_hops` times per mail; an address expanded
 * twice in one mail is a loop and is cut with a log line, and a mail left
 * with nothing but looping recipients goes to `loop_processor` (bounces)
 * with status 5.4.6. Input: the engine's lookup results (trusted) and the
 * YAML parameters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailets/builtin/builtin.h"
#include "mailets/pipeline_int.h"

#define ATTR_HOPS "tern.alias.hops"
#define ATTR_SEEN "tern.alias.seen"

typedef struct {
    long max_hops;
    bool restart;
    const char *loop_processor;
} rewrite;

static int rr_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"max_hops", "restart", "loop_processor", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    rewrite *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    r->max_hops = 10;
    r->restart = true;
    r->loop_processor = "bounces";
    const char *v = tern_param_str(p, "max_hops");
    if (v) {
        char *end;
        r->max_hops = strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0' || r->max_hops < 1 || r->max_hops > 100) {
            free(r);
            return tern_builtin_fail(err, size, "max_hops: expected a number from 1 to 100");
        }
    }
    if ((v = tern_param_str(p, "restart")) != NULL) {
        if (strcmp(v, "true") == 0)
            r->restart = true;
        else if (strcmp(v, "false") == 0)
            r->restart = false;
        else {
            free(r);
            return tern_builtin_fail(err, size, "restart: expected true or false");
        }
    }
    if (tern_param_get(p, "loop_processor")) {
        v = tern_param_str(p, "loop_processor");
        if (v == NULL || v[0] == '\0') {
            free(r);
            return tern_builtin_fail(err, size, "loop_processor: a processor name is required");
        }
        r->loop_processor = v;
    }
    *state_r = r;
    return 0;
}

static void rr_deinit(void *state)
{
    free(state);
}

/* The seen set: alias addresses expanded in this mail, one per line,
 * lowercased (the directory matches aliases case-insensitively). */
static bool seen_has(const char *seen, const char *addr)
{
    size_t n = strlen(addr);
    for (const char *p = seen; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && strncasecmp(p, addr, n) == 0)
            return true;
        p = e ? e + 1 : p + l;
    }
    return false;
}

static void seen_add(tern_mail *m, const char *addr)
{
    const char *seen = tern_mail_attr_get_str(m, ATTR_SEEN);
    size_t a = seen ? strlen(seen) : 0, b = strlen(addr);
    if (a + b + 2 > TERN_MAIL_MAX_VALUE)
        return; /* the hop limit still ends the chain */
    char *s = malloc(a + b + 2);
    if (s == NULL)
        return;
    size_t o = 0;
    if (a) {
        memcpy(s, seen, a);
        s[a] = '\n';
        o = a + 1;
    }
    for (size_t i = 0; i < b; i++)
        s[o + i] = (char)((addr[i] >= 'A' && addr[i] <= 'Z') ? addr[i] + 32 : addr[i]);
    s[o + b] = '\0';
    tern_mail_attr_set_str(m, ATTR_SEEN, s);
    free(s);
}

/* Two addresses name one recipient: in our domains the directory folds
 * the local part's case, elsewhere it is the remote host's to interpret. */
static bool same_rcpt(const tern_mail *m, const char *a, const char *b)
{
    const char *d = tern_addr_domain(a);
    if (d[0] && tern_config_is_local_domain(tern_mail_config(m), d, strlen(d)))
        return strcasecmp(a, b) == 0;
    return tern_addr_equal(a, b);
}

static bool is_rcpt(const tern_mail *m, const char *addr)
{
    for (size_t i = 0; i < tern_mail_rcpt_count(m); i++)
        if (same_rcpt(m, tern_mail_rcpt(m, i), addr))
            return true;
    return false;
}

/* A recipient leaves the mail: recorded finished when the mail runs in the
 * engine (its spool recipient is done once nothing derived from it is
 * left); a standalone mail (unit tests) has no spool to tell. */
static void rcpt_leave(tern_mail *m, size_t i, const char *how)
{
    if (m->runner)
        tern_mail_rcpt_done(m, i, how);
    else
        tern_mail_rcpt_remove(m, i);
}

/* "local+detail@domain" from the account name and the detail. */
static void canonical(const char *account, const char *detail, char *out, size_t size)
{
    const char *at = strrchr(account, '@');
    if (detail == NULL || detail[0] == '\0' || at == NULL)
        snprintf(out, size, "%s", account);
    else
        snprintf(out, size, "%.*s+%s%s", (int)(at - account), account, detail, at);
}

enum { ACT_NONE = 0, ACT_EXPANDED, ACT_LOOP };

static tern_mailet_verdict rr_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    rewrite *rw = state;
    int64_t hops = 0;
    tern_mail_attr_get_int(m, ATTR_HOPS, &hops);
    size_t n0 = tern_mail_rcpt_count(m);
    unsigned char *act = calloc(n0 ? n0 : 1, 1);
    if (act == NULL) {
        res->text = "out of memory";
        return TERN_MAILET_ERROR;
    }
    size_t expanded = 0, loops = 0, added_total = 0;
    for (size_t i = 0; i < n0; i++) {
        const tern_rcpt_entry *e = tern_mail_rcpt_info(m, i);
        if (e->lookup != TERN_LOOKUP_DONE)
            continue;
        if (e->kind == TERN_RCPT_ACCOUNT && e->account) {
            char want[600];
            canonical(e->account, e->detail, want, sizeof(want));
            if (e->detail && e->detail[0]) {
                char key[300];
                snprintf(key, sizeof(key), "tern.detail.%s", e->account);
                tern_mail_attr_set_str(m, key, e->detail);
            }
            if (!tern_addr_equal(e->addr, want)) {
                tern_mail_log(m, TERN_MAILET_LOG_DEBUG, "rewrote %s to account %s", e->addr,
                              want);
                if (tern_mail_rcpt_replace(m, i, want) != 0)
                    tern_mail_log(m, TERN_MAILET_LOG_WARN, "cannot rewrite %s to %s", e->addr,
                                  want);
            }
            continue;
        }
        if (e->kind != TERN_RCPT_ALIAS)
            continue;
        if (hops >= rw->max_hops) {
            tern_mail_log(m, TERN_MAILET_LOG_WARN,
                          "alias loop: %s not expanded, %ld alias hops already (max_hops)",
                          e->addr, rw->max_hops);
            act[i] = ACT_LOOP;
            loops++;
            continue;
        }
        /* The entry array may move as targets are added; the strings it
         * points to do not. */
        const char *addr = e->addr;
        char *const *targets = e->targets;
        size_t n_targets = e->n_targets;
        int orig = e->orig;
        bool catch_all = e->catch_all;
        size_t added = 0, cut = 0;
        const char *seen = tern_mail_attr_get_str(m, ATTR_SEEN);
        for (size_t t = 0; t < n_targets; t++) {
            const char *tg = targets[t];
            if (!same_rcpt(m, tg, addr) && is_rcpt(m, tg))
                continue; /* fan-out de-duplication */
            if (same_rcpt(m, tg, addr) || (seen && seen_has(seen, tg))) {
                tern_mail_log(m, TERN_MAILET_LOG_WARN,
                              "alias loop: %s -> %s, which this mail has already expanded; "
                              "target dropped", addr, tg);
                cut++;
                continue;
            }
            if (tern_mail_rcpt_add_derived(m, tg, orig) != 0) {
                tern_mail_log(m, TERN_MAILET_LOG_WARN, "alias %s: cannot add target %s", addr,
                              tg);
                continue;
            }
            added++;
        }
        tern_mail_log(m, TERN_MAILET_LOG_INFO, "expanded %s%s to %zu new recipient(s) of %zu",
                      addr, catch_all ? " (catch-all)" : "", added, n_targets);
        seen_add(m, addr);
        added_total += added;
        if (added == 0 && cut > 0) {
            act[i] = ACT_LOOP;
            loops++;
        } else {
            act[i] = ACT_EXPANDED;
            expanded++;
        }
    }
    /* Only looping recipients left: none of them can be delivered. */
    if (loops > 0 && expanded == 0 && loops == n0 && added_total == 0) {
        free(act);
        tern_mail_attr_set_int(m, "tern.error.code", 550);
        tern_mail_attr_set_str(m, "tern.error.enhanced", "5.4.6");
        tern_mail_attr_set_str(m, "tern.error.text", "alias loop or too many alias hops");
        res->processor = rw->loop_processor;
        return TERN_MAILET_GOTO;
    }
    for (size_t i = n0; i-- > 0;) {
        if (act[i] == ACT_EXPANDED)
            rcpt_leave(m, i, "alias-expanded");
        else if (act[i] == ACT_LOOP)
            rcpt_leave(m, i, "alias-loop");
    }
    free(act);
    if (expanded + loops == 0)
        return TERN_MAILET_CONTINUE;
    tern_mail_attr_set_int(m, ATTR_HOPS, hops + 1);
    if (added_total > 0 && rw->restart && m->pipeline) {
        /* New addresses must meet this processor's steps (and this one)
         * again after the engine has looked them up. */
        res->processor = m->pipeline->procs[m->proc].name;
        return TERN_MAILET_GOTO;
    }
    return TERN_MAILET_CONTINUE;
}

static const tern_mailet_module tern_mb_recipient_rewrite = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "RecipientRewrite",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = rr_init,
    .deinit = rr_deinit,
    .service = rr_service,
};
TERN_BUILTIN(tern_mb_recipient_rewrite)
