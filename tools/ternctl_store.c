/* ternctl's directory commands: domains, accounts (passwords, quotas) and
 * aliases, through store.h with the backend the config file names. They
 * work next to a running ternd (SQLite in WAL mode and PostgreSQL both take
 * concurrent writers). Input trusted: the command line and the config file
 * (validated by conf/); passwords are read from stdin, never argv, so they
 * do not show in `ps`. */
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/hash.h"
#include "conf/config.h"
#include "lib/log.h"
#include "lib/util.h"
#include "storage/store.h"
#include "tools/password.h"
#include "tools/ternctl.h"

static tern_store *open_store(ctx *c, tern_config **cfg_r)
{
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *cfg = tern_config_load(c->config_path, &errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s: %s\n", c->config_path, errs.items[i]);
        if (errs.n == 0)
            fprintf(stderr, "%s: cannot load %s\n", c->prog, c->config_path);
        tern_config_errors_free(&errs);
        return NULL;
    }
    tern_config_errors_free(&errs);
    tern_store *s = NULL;
    char *err = NULL;
    if (tern_store_open(cfg, &s, &err) != 0) {
        fprintf(stderr, "%s: cannot open the store: %s\n", c->prog, err ? err : "?");
        free(err);
        tern_config_unref(cfg);
        return NULL;
    }
    if (tern_store_seed_domains(s, cfg, &err) != 0) {
        fprintf(stderr, "%s: %s\n", c->prog, err ? err : "cannot add the config's domains");
        free(err);
        tern_store_close(s);
        tern_config_unref(cfg);
        return NULL;
    }
    *cfg_r = cfg;
    return s;
}

static void close_store(tern_store *s, tern_config *cfg)
{
    tern_store_close(s);
    tern_config_unref(cfg);
}

/* Runs one request; prints the error and returns EX_FAIL when it failed. */
static int run(ctx *c, tern_store *s, tern_store_req *r, const char *what)
{
    if (tern_store_run_sync(s, r) != TERN_STORE_OK) {
        fprintf(stderr, "%s: %s: %s%s%s\n", c->prog, what, tern_store_strerror(r->status),
                r->error[0] ? ": " : "", r->error);
        return EX_FAIL;
    }
    return EX_OK_;
}

/* Opens the store of the config, runs `r`, prints the result with `print`
 * (may be NULL) when it succeeded, and frees everything. */
static int one_request(ctx *c, tern_store_req *r, const char *what,
                       void (*print)(const tern_store_req *r))
{
    tern_config *cfg;
    tern_store *s = r ? open_store(c, &cfg) : NULL;
    if (s == NULL) {
        tern_store_req_free(r);
        return EX_FAIL;
    }
    int rc = run(c, s, r, what);
    if (rc == EX_OK_ && print)
        print(r);
    tern_store_req_free(r);
    close_store(s, cfg);
    return rc;
}

static void print_names(const tern_store_req *r)
{
    for (size_t i = 0; i < r->out.n_names; i++)
        printf("%s\n", r->out.names[i]);
}

/* ---- domain ----------------------------------------------------------- */

static int domain_simple(ctx *c, int argc, char **argv, tern_store_op op, const char *verb)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s domain %s DOMAIN\n", c->prog, verb);
        return EX_USAGE_;
    }
    tern_store_req *r = tern_store_req_new(op, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.domain = argv[0];
    return one_request(c, r, argv[0], NULL);
}

static int domain_add(ctx *c, int argc, char **argv)
{
    return domain_simple(c, argc, argv, TERN_STORE_DOMAIN_ADD, "add");
}

static int domain_remove(ctx *c, int argc, char **argv)
{
    return domain_simple(c, argc, argv, TERN_STORE_DOMAIN_REMOVE, "remove");
}

static int domain_list(ctx *c, int argc, char **argv)
{
    tern_store_req *r = tern_store_req_new(TERN_STORE_DOMAIN_LIST, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    return one_request(c, r, "domain list", print_names);
}

static const command domain_cmds[] = {
    {"add", domain_add, "add DOMAIN", "accept mail for DOMAIN"},
    {"remove", domain_remove, "remove DOMAIN", "stop (refused while it has accounts)"},
    {"list", domain_list, "list", "one domain per line"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_domain(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "domain", domain_cmds, argc, argv);
}

/* ---- passwords --------------------------------------------------------- */


/* The stored credential list (auth/hash.h): "{ARGON2ID}..." for the
 * plaintext mechanisms, then "{SCRAM-SHA-256}..." so that SCRAM can be
 * served without the password. */
static int hash_password(const char *pw, char *out, size_t size)
{
    char scram[TERN_HASH_MAX];
    size_t n = strlen(pw);
    if (tern_hash_argon2id(pw, n, out, size) != 0 ||
        tern_hash_scram_sha256(pw, n, TERN_HASH_SCRAM_DEFAULT_ITERATIONS, scram,
                               sizeof(scram)) != 0)
        return -1;
    size_t at = strlen(out);
    return snprintf(out + at, size - at, " %s", scram) < (int)(size - at) ? 0 : -1;
}

/* ---- account ----------------------------------------------------------- */

static int parse_quota(ctx *c, const char *opt, const char *v, uint64_t *out, bool is_size)
{
    if (strcmp(v, "unlimited") == 0) {
        *out = 0;
        return 0;
    }
    int r = is_size ? tern_parse_size(v, out) : (sscanf(v, "%" SCNu64, out) == 1 ? 0 : -1);
    if (r != 0)
        fprintf(stderr, "%s: %s: bad value '%s'\n", c->prog, opt, v);
    return r;
}

static int account_add(ctx *c, int argc, char **argv)
{
    const char *name = NULL;
    bool want_pw = false;
    uint64_t qb = 0, qm = 0;
    bool have_qb = false, have_qm = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--password-stdin") == 0) {
            want_pw = true;
        } else if (strcmp(argv[i], "--quota") == 0 && i + 1 < argc) {
            if (parse_quota(c, "--quota", argv[++i], &qb, true) != 0)
                return EX_USAGE_;
            have_qb = true;
        } else if (strcmp(argv[i], "--quota-messages") == 0 && i + 1 < argc) {
            if (parse_quota(c, "--quota-messages", argv[++i], &qm, false) != 0)
                return EX_USAGE_;
            have_qm = true;
        } else if (argv[i][0] != '-' && name == NULL) {
            name = argv[i];
        } else {
            name = NULL;
            break;
        }
    }
    if (name == NULL) {
        fprintf(stderr, "usage: %s account add USER@DOMAIN [--password-stdin] [--quota SIZE] "
                        "[--quota-messages N]\n", c->prog);
        return EX_USAGE_;
    }
    char pw[1024], hash[TERN_HASH_MAX];
    if (want_pw) {
        if (tern_tool_read_password(pw, sizeof(pw)) != 0 || hash_password(pw, hash, sizeof(hash)) != 0) {
            sodium_memzero(pw, sizeof(pw));
            fprintf(stderr, "%s: no password read from stdin\n", c->prog);
            return EX_FAIL;
        }
        sodium_memzero(pw, sizeof(pw));
    }
    /* Quotas not given come from the config's defaults. */
    tern_config *cfg;
    tern_store *s = open_store(c, &cfg);
    if (s == NULL)
        return EX_FAIL;
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_CREATE, NULL, NULL);
    int rc = EX_FAIL;
    if (r != NULL) {
        r->in.account = name;
        r->in.password_hash = want_pw ? hash : NULL;
        r->in.quota_bytes = have_qb ? qb : cfg->storage.default_quota_bytes;
        r->in.quota_messages = have_qm ? qm : cfg->storage.default_quota_messages;
        rc = run(c, s, r, name);
        tern_store_req_free(r);
    }
    close_store(s, cfg);
    return rc;
}

static void print_account(const tern_account_info *a)
{
    char qb[32] = "unlimited", qm[32] = "unlimited";
    if (a->quota_bytes)
        snprintf(qb, sizeof(qb), "%" PRIu64, a->quota_bytes);
    if (a->quota_messages)
        snprintf(qm, sizeof(qm), "%" PRIu64, a->quota_messages);
    printf("%s used_bytes=%" PRIu64 " quota_bytes=%s used_messages=%" PRIu64
           " quota_messages=%s password=%s\n",
           a->name, a->used_bytes, qb, a->used_messages, qm, a->has_password ? "set" : "none");
}

static void print_one_account(const tern_store_req *r)
{
    print_account(&r->out.account);
}

static void print_accounts(const tern_store_req *r)
{
    for (size_t i = 0; i < r->out.n_accounts; i++)
        print_account(&r->out.accounts[i]);
}

static int account_remove(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s account remove USER@DOMAIN\n", c->prog);
        return EX_USAGE_;
    }
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_DELETE, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.account = argv[0];
    return one_request(c, r, argv[0], NULL);
}


static int account_list(ctx *c, int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: %s account list [DOMAIN]\n", c->prog);
        return EX_USAGE_;
    }
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_LIST, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.domain = argc == 1 ? argv[0] : NULL;
    return one_request(c, r, "account list", print_accounts);
}

static int account_show(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s account show USER@DOMAIN\n", c->prog);
        return EX_USAGE_;
    }
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_GET, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.account = argv[0];
    return one_request(c, r, argv[0], print_one_account);
}

static int account_passwd(ctx *c, int argc, char **argv)
{
    if (argc != 1) {
        fprintf(stderr, "usage: %s account passwd USER@DOMAIN   (password on stdin)\n", c->prog);
        return EX_USAGE_;
    }
    char pw[1024], hash[TERN_HASH_MAX];
    if (tern_tool_read_password(pw, sizeof(pw)) != 0 || hash_password(pw, hash, sizeof(hash)) != 0) {
        sodium_memzero(pw, sizeof(pw));
        fprintf(stderr, "%s: no password read from stdin\n", c->prog);
        return EX_FAIL;
    }
    sodium_memzero(pw, sizeof(pw));
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_SET_PASSWORD, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.account = argv[0];
    r->in.password_hash = hash;
    return one_request(c, r, argv[0], NULL);
}

static int account_quota(ctx *c, int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s account quota USER@DOMAIN SIZE|unlimited COUNT|unlimited\n",
                c->prog);
        return EX_USAGE_;
    }
    uint64_t qb, qm;
    if (parse_quota(c, "SIZE", argv[1], &qb, true) != 0 ||
        parse_quota(c, "COUNT", argv[2], &qm, false) != 0)
        return EX_USAGE_;
    tern_store_req *r = tern_store_req_new(TERN_STORE_ACCOUNT_SET_QUOTA, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.account = argv[0];
    r->in.quota_bytes = qb;
    r->in.quota_messages = qm;
    return one_request(c, r, argv[0], NULL);
}

static const command account_cmds[] = {
    {"add", account_add, "add USER@DOMAIN [opts]", "create, with its default mailboxes "
                                                   "(--password-stdin, --quota, --quota-messages)"},
    {"remove", account_remove, "remove USER@DOMAIN", "delete the account and its mail"},
    {"list", account_list, "list [DOMAIN]", "one account per line with usage and quotas"},
    {"show", account_show, "show USER@DOMAIN", "usage and quotas"},
    {"passwd", account_passwd, "passwd USER@DOMAIN", "set the password (read from stdin)"},
    {"quota", account_quota, "quota USER@DOMAIN SIZE COUNT", "set quotas (or 'unlimited')"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_account(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "account", account_cmds, argc, argv);
}

/* ---- alias -------------------------------------------------------------- */

/* add and remove take the same shape: ADDRESS then targets (remove with
 * no target drops the whole alias). */
static int alias_change(ctx *c, int argc, char **argv, tern_store_op op, int min_args,
                        const char *usage)
{
    if (argc < min_args) {
        fprintf(stderr, "usage: %s alias %s\n", c->prog, usage);
        return EX_USAGE_;
    }
    tern_store_req *r = tern_store_req_new(op, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.name = argv[0];
    r->in.targets = (const char *const *)(argv + 1);
    r->in.n_targets = (size_t)(argc - 1);
    return one_request(c, r, argv[0], NULL);
}

static int alias_add(ctx *c, int argc, char **argv)
{
    return alias_change(c, argc, argv, TERN_STORE_ALIAS_ADD, 2, "add ADDRESS|@DOMAIN TARGET...");
}

static int alias_remove(ctx *c, int argc, char **argv)
{
    return alias_change(c, argc, argv, TERN_STORE_ALIAS_REMOVE, 1, "remove ADDRESS [TARGET...]");
}

static int alias_list(ctx *c, int argc, char **argv)
{
    tern_store_req *r = tern_store_req_new(TERN_STORE_ALIAS_LIST, NULL, NULL);
    if (r == NULL)
        return EX_FAIL;
    r->in.domain = argc >= 1 ? argv[0] : NULL;
    return one_request(c, r, "alias list", print_names);
}

static const command alias_cmds[] = {
    {"add", alias_add, "add ADDRESS TARGET...", "deliver ADDRESS (or @DOMAIN: catch-all) to targets"},
    {"remove", alias_remove, "remove ADDRESS [TARGET...]", "drop some targets, or the whole alias"},
    {"list", alias_list, "list [DOMAIN]", "one alias per line: address target,target"},
    {NULL, NULL, NULL, NULL},
};

int ternctl_cmd_alias(ctx *c, int argc, char **argv)
{
    return ternctl_dispatch(c, "alias", alias_cmds, argc, argv);
}

/* For the other command files (ternctl_message.c). */
tern_store *ternctl_store_open(ctx *c, tern_config **cfg_r)
{
    return open_store(c, cfg_r);
}

void ternctl_store_close(tern_store *s, tern_config *cfg)
{
    close_store(s, cfg);
}
