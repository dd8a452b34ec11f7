/* Private to mailets/: the built pipeline (processors, steps, instances,
 * plugins) shared by pipeline.c (building) and runner.c (running). */
#ifndef TERN_MAILETS_PIPELINE_INT_H
#define TERN_MAILETS_PIPELINE_INT_H

#include <stdatomic.h>

#include "mailets/engine.h"

typedef struct pl_inst {
    const tern_mailet_module *mod;
    void *state;
    const char *name;
    tern_mailet_params params;
    tern_mailet_param *owned_items;
    bool live; /* init succeeded: deinit is owed */
} pl_inst;

typedef struct pl_match {
    tern_match_op op;
    pl_inst inst;            /* NAME */
    struct pl_match *kids;   /* AND, OR, NOT */
    size_t n_kids;
} pl_match;

enum { PL_ERR_PROC = 0, PL_ERR_IGNORE, PL_ERR_RETRY };

typedef struct pl_step {
    pl_match match;
    pl_inst mailet;
    int on_error;
    int on_error_proc;
    const char *on_error_name;
    char path[96];           /* "processors.transport[2]" for logs */
} pl_step;

typedef struct pl_proc {
    const char *name;
    pl_step *steps;
    size_t n_steps;
} pl_proc;

typedef struct pl_plugin {
    void *handle;
    int fd;          /* the private copy it was loaded from, or -1 */
    const tern_mailet_module *mod;
    const char *path;
} pl_plugin;

struct tern_pipeline {
    atomic_int refs;
    tern_config *cfg;
    struct tern_auth *auth;
    pl_plugin *plugins;
    size_t n_plugins;
    pl_proc *procs;
    size_t n_procs;
    int root, error, bounces;
};

#endif
