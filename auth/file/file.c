/* file.c: the `file` auth backend: a passwd-style file read whole when the
 * auth snapshot is built (start-up and every SIGHUP), then looked up in
 * memory. Lines:
 *
 *   # comment
 *   user:hash
 *   user:hash:extra
 *   user:hash:uid:gid:gecos:home:shell:extra     (Dovecot's passwd-file)
 *
 * `user` is local@domain, or a bare local part with auth_file.default_domain;
 * names compare case-insensitively. `hash` is a credential list (hash.h).
 * `extra` is space-separated key=value; `scram=` adds SCRAM-SHA-256 keys
 * ("{SCRAM-SHA-256}i,salt,sk,svk" as tern-passwd --scram prints), other keys
 * (Dovecot's userdb fields) are ignored. Input trusted: the admin's file,
 * still bounded (line length, file size) and every bad line reported as
 * file:line, which fails the load. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/auth_backend.h"

#define FILE_MAX_BYTES (64u * 1024u * 1024u)
#define FILE_MAX_LINE 8192
#define FILE_MAX_ERRORS 20

typedef struct entry {
    char *key;     /* lowercase, for lookups */
    char *account; /* as written, domain lowercased */
    char *stored;  /* credential list */
    unsigned line;
} entry;

typedef struct filebe {
    tern_arena arena;
    entry *entries;
    size_t n;
    unsigned caps;
} filebe;

typedef struct errs {
    char *buf;
    size_t len, n;
} errs;

static void err_add(errs *e, const char *path, unsigned line, const char *msg)
{
    char full[1024];
    if (++e->n > FILE_MAX_ERRORS)
        return;
    int n = snprintf(full, sizeof(full), "%s%s:%u: %s", e->len ? "\n" : "", path, line, msg);
    if (n <= 0)
        return;
    char *nb = realloc(e->buf, e->len + (size_t)n + 1);
    if (nb == NULL)
        return;
    memcpy(nb + e->len, full, (size_t)n + 1);
    e->buf = nb;
    e->len += (size_t)n;
}

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s + 32);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->key, ((const entry *)b)->key);
}

/* The first credential must be one hash.c can check, or every login of
 * this user would fail for a reason only the log would tell. */
static const char *check_first(const char *stored)
{
    static const char *const known[] = {"ARGON2ID",  "ARGON2I",  "SHA512-CRYPT", "SHA256-CRYPT",
                                        "BLF-CRYPT", "MD5-CRYPT", "PLAIN",       "CLEAR",
                                        "CLEARTEXT", "CRAM-MD5",  "SCRAM-SHA-256"};
    char scheme[32];
    tern_hash_scheme(stored, scheme, sizeof(scheme));
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(scheme, known[i]) == 0)
            return NULL;
    return "the password field has no known scheme ({ARGON2ID}, {SHA512-CRYPT}, "
           "{SHA256-CRYPT}, {BLF-CRYPT}, {PLAIN}, {CRAM-MD5}, {SCRAM-SHA-256}, ...)";
}

static const char *check_secrets(const char *stored)
{
    size_t len;
    const char *d;
    tern_scram_keys k;
    uint8_t ctx[32];
    if ((d = tern_hash_find(stored, "SCRAM-SHA-256", &len)) != NULL &&
        tern_hash_scram_parse(d, len, &k) != 0)
        return "a {SCRAM-SHA-256} value is not iterations,salt,StoredKey,ServerKey in base64";
    if ((d = tern_hash_find(stored, "CRAM-MD5", &len)) != NULL &&
        tern_hash_cram_md5_parse(d, len, ctx) != 0)
        return "a {CRAM-MD5} value is not 64 hex digits";
    return NULL;
}

/* Parses one line (NUL-terminated, no newline) into *e; returns NULL or
 * why not. */
static const char *parse_line(filebe *f, char *line, const char *default_domain, entry *e)
{
    char *field[9];
    size_t nf = 0;
    field[nf++] = line;
    for (char *p = line; *p; p++) {
        if (*p == ':') {
            if (nf == 9)
                return "too many ':' fields (at most user:hash:uid:gid:gecos:home:shell:extra)";
            *p = '\0';
            field[nf++] = p + 1;
        }
    }
    if (nf < 2)
        return "expected user:hash[:extra]";
    char *extra = nf == 3 ? field[2] : nf == 8 ? field[7] : NULL;
    char user[TERN_AUTH_MAX_USER + 1];
    if (field[0][0] == '\0')
        return "empty user name";
    if (tern_auth__normalise(field[0], default_domain, user, sizeof(user)) != 0)
        return "bad user name (empty, too long, or holds spaces or control characters)";
    if (strchr(user, '@') == NULL)
        return "user has no @domain and auth_file.default_domain is not set";
    if (field[1][0] == '\0')
        return "empty password field";
    char stored[TERN_HASH_MAX + 1];
    if (strlen(field[1]) > TERN_HASH_MAX)
        return "password field longer than 1024 bytes";
    snprintf(stored, sizeof(stored), "%s", field[1]);
    const char *why = check_first(stored);
    if (why)
        return why;
    /* Extra fields: only scram= matters to us. */
    char *save = NULL;
    for (char *tok = extra ? strtok_r(extra, " \t", &save) : NULL; tok;
         tok = strtok_r(NULL, " \t", &save)) {
        if (strncasecmp(tok, "scram=", 6) != 0)
            continue;
        const char *v = tok + 6;
        if (v[0] == '{' && strncasecmp(v, "{SCRAM-SHA-256}", 15) != 0)
            return "scram= takes {SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey";
        size_t at = strlen(stored);
        int n = snprintf(stored + at, sizeof(stored) - at, " %s%s",
                         v[0] == '{' ? "" : "{SCRAM-SHA-256}", v);
        if (n < 0 || (size_t)n >= sizeof(stored) - at)
            return "credentials longer than 1024 bytes";
    }
    if ((why = check_secrets(stored)) != NULL)
        return why;
    e->account = tern_arena_strdup(&f->arena, user);
    e->key = tern_arena_strdup(&f->arena, user);
    e->stored = tern_arena_strdup(&f->arena, stored);
    if (e->account == NULL || e->key == NULL || e->stored == NULL)
        return "out of memory";
    lower(e->key);
    return NULL;
}

static unsigned entry_caps(const entry *e)
{
    size_t len;
    unsigned c = TERN_AUTH_CAP_PASSWORD;
    if (tern_hash_find(e->stored, "SCRAM-SHA-256", &len))
        c |= TERN_AUTH_CAP_SCRAM_SHA_256;
    if (tern_hash_find(e->stored, "CRAM-MD5", &len) || tern_hash_find(e->stored, "PLAIN", &len))
        c |= TERN_AUTH_CAP_CRAM_MD5;
    return c;
}

static void file_destroy(void *b)
{
    filebe *f = b;
    if (f == NULL)
        return;
    free(f->entries);
    tern_arena_free(&f->arena);
    free(f);
}

static void *file_create(const tern_config *cfg, tern_store *store, char **error_r)
{
    (void)store;
    const char *path = cfg->auth_file.path;
    if (path == NULL) {
        *error_r = strdup("auth backend file needs auth_file.path");
        return NULL;
    }
    FILE *fp = fopen(path, "r");
    if (fp == NULL) {
        char buf[512];
        snprintf(buf, sizeof(buf), "%s: %s", path, strerror(errno));
        *error_r = strdup(buf);
        return NULL;
    }
    filebe *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        fclose(fp);
        *error_r = strdup("out of memory");
        return NULL;
    }
    tern_arena_init(&f->arena, 64 * 1024);
    f->caps = TERN_AUTH_CAP_PASSWORD | TERN_AUTH_CAP_SCRAM_SHA_256 | TERN_AUTH_CAP_CRAM_MD5;
    errs e = {0};
    size_t cap = 0, total = 0;
    unsigned lineno = 0;
    char *line = malloc(FILE_MAX_LINE + 2);
    while (line != NULL && fgets(line, FILE_MAX_LINE + 2, fp) != NULL) {
        lineno++;
        size_t n = strlen(line);
        total += n;
        if (total > FILE_MAX_BYTES) {
            err_add(&e, path, lineno, "file larger than 64 MiB");
            break;
        }
        if (n > 0 && line[n - 1] != '\n' && !feof(fp)) {
            err_add(&e, path, lineno, "line longer than 8192 bytes");
            int ch;
            while ((ch = fgetc(fp)) != EOF && ch != '\n')
                ;
            continue;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (memchr(line, '\0', n) != NULL || strlen(line) != n) {
            err_add(&e, path, lineno, "NUL byte in line");
            continue;
        }
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        if (f->n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            entry *ne = realloc(f->entries, ncap * sizeof(*ne));
            if (ne == NULL) {
                err_add(&e, path, lineno, "out of memory");
                break;
            }
            f->entries = ne;
            cap = ncap;
        }
        entry *en = &f->entries[f->n];
        memset(en, 0, sizeof(*en));
        const char *why = parse_line(f, p, cfg->auth_file.default_domain, en);
        if (why) {
            err_add(&e, path, lineno, why);
            continue;
        }
        en->line = lineno;
        f->n++;
    }
    if (line == NULL)
        err_add(&e, path, 0, "out of memory");
    else if (ferror(fp))
        err_add(&e, path, lineno, strerror(errno));
    free(line);
    fclose(fp);
    if (f->n > 1)
        qsort(f->entries, f->n, sizeof(entry), cmp_entry);
    for (size_t i = 1; i < f->n; i++) {
        if (strcmp(f->entries[i].key, f->entries[i - 1].key) == 0) {
            char msg[64];
            snprintf(msg, sizeof(msg), "user already defined at line %u", f->entries[i - 1].line < f->entries[i].line
                                                 ? f->entries[i - 1].line
                                                 : f->entries[i].line);
            unsigned later = f->entries[i - 1].line < f->entries[i].line ? f->entries[i].line
                                                                         : f->entries[i - 1].line;
            err_add(&e, path, later, msg);
        }
    }
    for (size_t i = 0; i < f->n; i++)
        f->caps &= entry_caps(&f->entries[i]);
    if (e.n > 0) {
        if (e.n > FILE_MAX_ERRORS) {
            char more[64];
            snprintf(more, sizeof(more), "\n... and %zu more errors", e.n - FILE_MAX_ERRORS);
            size_t ml = strlen(more);
            char *nb = realloc(e.buf, e.len + ml + 1);
            if (nb) {
                memcpy(nb + e.len, more, ml + 1);
                e.buf = nb;
            }
        }
        *error_r = e.buf ? e.buf : strdup("auth file: errors");
        file_destroy(f);
        return NULL;
    }
    return f;
}

static unsigned file_caps(void *b)
{
    return ((filebe *)b)->caps;
}

static void file_lookup(void *b, tern_auth_lookup *lk)
{
    filebe *f = b;
    char key[TERN_AUTH_MAX_USER + 1];
    snprintf(key, sizeof(key), "%s", lk->user);
    lower(key);
    entry probe = {.key = key};
    const entry *en = f->n ? bsearch(&probe, f->entries, f->n, sizeof(entry), cmp_entry) : NULL;
    lk->status = TERN_AUTH_LOOKUP_UNKNOWN;
    if (en != NULL) {
        lk->account = tern_arena_strdup(&lk->req->arena, en->account);
        lk->stored = tern_arena_strdup(&lk->req->arena, en->stored);
        lk->status = lk->account && lk->stored ? TERN_AUTH_LOOKUP_FOUND : TERN_AUTH_ETEMP;
    }
    lk->done(lk);
}

const tern_auth_backend_ops tern_auth_file_backend = {
    .name = "file",
    .create = file_create,
    .destroy = file_destroy,
    .caps = file_caps,
    .lookup = file_lookup,
};
