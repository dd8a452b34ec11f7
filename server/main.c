/* ternd's entry point: command line, config loading and checking, logging
 * set-up, then the runtime. Input: argv, TERN_CONFIG and TERN_LOG from the
 * environment, the config file (validated by conf/ before use). */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/config.h"
#include "lib/log.h"
#include "mailets/engine.h"
#include "protocols/common/tls.h"
#include "server/server.h"

#define DEFAULT_CONFIG "/etc/tern/tern.yaml"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ternd [-c FILE]           run in the foreground\n"
            "       ternd --check-config FILE validate FILE and exit 0 (valid) or 1\n"
            "       ternd --version\n"
            "The config path defaults to $TERN_CONFIG, then " DEFAULT_CONFIG ".\n"
            "TERN_LOG overrides server.log_level (e.g. TERN_LOG=debug or info,smtp=debug).\n");
}

/* Rules of this build rather than of the config language: a protocol the
 * config knows but this ternd does not serve yet must not be silently
 * ignored. */
static void check_served(const tern_config *cfg, tern_config_errors *errs)
{
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        tern_protocol p = cfg->listeners[i].protocol;
        if (p != TERN_PROTO_SMTP && p != TERN_PROTO_SUBMISSION && p != TERN_PROTO_POP3 &&
            p != TERN_PROTO_IMAP)
            tern_config_errors_add(errs, "listeners[%zu].protocol: %s is not served by this version of ternd",
                                   i, tern_protocol_name(p));
    }
}

static tern_config *load(const char *path, bool with_tls)
{
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *cfg = tern_config_load(path, &errs);
    if (cfg != NULL) {
        check_served(cfg, &errs);
        if (errs.n == 0 && with_tls) {
            /* Building the TLS server proves every certificate loads. */
            char *err = NULL;
            tern_tls_server *tls = tern_tls_server_new(cfg, &err);
            if (tls == NULL)
                tern_config_errors_add(&errs, "tls: %s", err ? err : "cannot set up TLS");
            else
                tern_tls_server_unref(tls);
            free(err);
        }
        if (errs.n == 0) {
            /* The mailet chain: every matcher and mailet exists and takes
             * its parameters, every plugin loads and initialises. */
            tern_pipeline *p = tern_pipeline_build(cfg, NULL, &errs);
            if (p)
                tern_pipeline_unref(p);
        }
    }
    if (errs.n > 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s: %s\n", path, errs.items[i]);
        fprintf(stderr, "ternd: %zu error%s in %s\n", errs.n, errs.n == 1 ? "" : "s", path);
        if (cfg)
            tern_config_unref(cfg);
        cfg = NULL;
    }
    tern_config_errors_free(&errs);
    return cfg;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 't'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* Until the runtime installs its handlers, a SIGHUP or SIGTERM would
     * take the default action and kill a server whose ports may already
     * accept. Blocked here, before any thread exists (threads inherit the
     * mask), and unblocked by the runtime once the handlers are in place. */
    sigset_t ctl;
    sigemptyset(&ctl);
    sigaddset(&ctl, SIGHUP);
    sigaddset(&ctl, SIGTERM);
    sigaddset(&ctl, SIGINT);
    pthread_sigmask(SIG_BLOCK, &ctl, NULL);
    const char *path = getenv("TERN_CONFIG");
    const char *check = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "c:t:vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 't': check = optarg; break;
        case 'v': printf("ternd 0.1.0\n"); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    const char *env_log = getenv("TERN_LOG");
    if (env_log) {
        const char *e = NULL;
        if (tern_log_configure(env_log, &e) != 0) {
            fprintf(stderr, "ternd: TERN_LOG: %s\n", e);
            return 2;
        }
    }
    if (check) {
        tern_config *cfg = load(check, true);
        if (cfg == NULL)
            return 1;
        printf("ternd: configuration %s is valid (%zu listener%s)\n", check, cfg->n_listeners,
               cfg->n_listeners == 1 ? "" : "s");
        tern_config_unref(cfg);
        return 0;
    }
    if (path == NULL)
        path = DEFAULT_CONFIG;
    tern_config *cfg = load(path, false);
    if (cfg == NULL)
        return 1;
    if (env_log == NULL)
        tern_log_configure(cfg->server.log_level, NULL);
    return tern_server_run(path, cfg);
}
