/* auth_backend.h: what a backend of auth/ implements (a table of
 * functions) and how auth.c drives it. Private to auth/. A backend finds a
 * user and hands back the stored credential list; auth.c does all hashing,
 * limiting and answering, so a backend never sees a password. Input
 * trusted: the user name reaching a backend is already bounded and
 * normalised by auth.c (domain lowercased, default domain applied). */
#ifndef TERN_AUTH_BACKEND_H
#define TERN_AUTH_BACKEND_H

#include "auth/auth.h"

#define TERN_AUTH_LOOKUP_UNKNOWN 0
#define TERN_AUTH_LOOKUP_FOUND 1
/* or TERN_AUTH_ETEMP */

typedef struct tern_auth_lookup tern_auth_lookup;
struct tern_auth_lookup {
    tern_auth_req *req;        /* arena for the results */
    const char *user;          /* normalised */
    void *client_state;        /* the backend's per-loop state, or NULL */
    int status;                /* TERN_AUTH_LOOKUP_* or TERN_AUTH_ETEMP */
    char *account;             /* FOUND: canonical name, in req->arena */
    char *stored;              /* FOUND: credential list in req->arena; NULL: no password */
    bool verified;             /* FOUND, VERIFY_PASSWORD: the backend checked the password
                                  itself (an LDAP bind); nothing is hashed, the answer is OK */
    void (*done)(tern_auth_lookup *lk); /* may be called from inside lookup() */
};

typedef struct tern_auth_backend_ops {
    const char *name;
    /* Blocking. Returns the backend's state or NULL with *error_r. */
    void *(*create)(const tern_config *cfg, tern_store *store, char **error_r);
    void (*destroy)(void *b);
    /* TERN_AUTH_CAP_* that every user of this backend can be served. */
    unsigned (*caps)(void *b);
    /* Optional per-loop state; client_close lets pending lookups finish. */
    void *(*client_new)(void *b, uv_loop_t *loop);
    void (*client_close)(void *b, void *client_state);
    void (*lookup)(void *b, tern_auth_lookup *lk);
    /* Optional: a backend that checks bearer tokens itself (VERIFY_TOKEN;
     * its caps() then says TERN_AUTH_CAP_TOKEN). Runs on the thread pool,
     * so it may only read b. r->in.user may be NULL or "". Returns
     * TERN_AUTH_OK with *account_r in r->arena, TERN_AUTH_EFAIL with why in
     * r->error, or TERN_AUTH_ETEMP. */
    int (*verify_token)(void *b, tern_auth_req *r, char **account_r);
    /* Optional: when verify_token answers TERN_AUTH__ASYNC (the token must
     * be asked of a server: RFC 7662 introspection), this runs on the
     * request's loop and calls done exactly once, from that loop, with
     * r->status (and r->error) set and the account (in r->arena) when OK. */
    void (*verify_token_async)(void *b, uv_loop_t *loop, tern_auth_req *r,
                               void (*done)(tern_auth_req *r, char *account));
} tern_auth_backend_ops;

/* verify_token: "cannot decide here, call verify_token_async on the loop".
 * Never seen outside auth/. */
#define TERN_AUTH__ASYNC (-100)

extern const tern_auth_backend_ops tern_auth_file_backend;
extern const tern_auth_backend_ops tern_auth_oauth2_backend;
extern const tern_auth_backend_ops tern_auth_internal_backend;
/* auth/static: no create() in its table; auth.c makes one per listener with
 * auth_static through this, and asks it before the configured backends. */
extern const tern_auth_backend_ops tern_auth_static_backend;
void *tern_auth__static_new(const tern_listener_conf *l, const char *default_domain,
                            char **error_r);
extern const tern_auth_backend_ops tern_auth_ldap_backend;
extern const tern_auth_backend_ops tern_auth_sql_backend;

/* Lowercases the domain part; appends "@default_domain" when the name has
 * no '@' and a default is given. Returns 0, or -1 when the result is empty,
 * too long or holds a control character, space or ':'. */
int tern_auth__normalise(const char *in, const char *default_domain, char *out, size_t size);

#endif
