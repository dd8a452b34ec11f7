/* What ternctl's command files share: the context (state dir, config
 * path), the command table type and the dispatcher. */
#ifndef TERN_TERNCTL_H
#define TERN_TERNCTL_H

#define DEFAULT_STATE_DIR "/var/lib/tern"

typedef struct ctx {
    const char *state_dir;
    const char *config_path;
    const char *prog;
} ctx;

typedef struct command {
    const char *name;
    int (*run)(ctx *c, int argc, char **argv);
    const char *usage;
    const char *help;
} command;

/* Exit codes. */
enum { EX_OK_ = 0, EX_FAIL = 1, EX_USAGE_ = 2 };

#define DEFAULT_CONFIG "/etc/tern/tern.yaml"

int ternctl_dispatch(ctx *c, const char *prefix, const command *t, int argc, char **argv);
int ternctl_cmd_domain(ctx *c, int argc, char **argv);
int ternctl_cmd_account(ctx *c, int argc, char **argv);
int ternctl_cmd_alias(ctx *c, int argc, char **argv);
int ternctl_cmd_repository(ctx *c, int argc, char **argv);
int ternctl_cmd_message(ctx *c, int argc, char **argv);
int ternctl_cmd_queue(ctx *c, int argc, char **argv);
int ternctl_cmd_auth(ctx *c, int argc, char **argv);
struct tern_config;
struct tern_store;
/* The store the config names (ternctl_store.c); NULL after printing why. */
struct tern_store *ternctl_store_open(ctx *c, struct tern_config **cfg_r);
void ternctl_store_close(struct tern_store *s, struct tern_config *cfg);

#endif
