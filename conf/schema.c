/* The schema: one table per YAML mapping saying, for every key, its type,
 * where it lands in the struct, its default and its bounds. The walk applies
 * it to the node tree: defaults for what is absent, type and bound checks
 * for what is present, and an error (with a "did you mean") for every key
 * the table does not know. Input: the untrusted node tree from tree.c;
 * every error is collected, none stops the walk. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "conf/conf_internal.h"
#include "lib/log.h"
#include "lib/util.h"

typedef enum {
    FT_STRING,
    FT_BOOL,
    FT_UINT,
    FT_FLOAT,
    FT_DURATION,
    FT_SIZE,
    FT_ENUM,
    FT_STRLIST,
    FT_CIDRLIST,
    FT_MAP,      /* a nested mapping: its own table, into a sub-struct */
    FT_MAPLIST,  /* a sequence of mappings: an array plus a count */
    FT_NAMEDMAP, /* NAME: mapping, ...: an array whose elements carry the name */
    FT_CUSTOM,
} field_type;

enum {
    FL_REQUIRED = 1 << 0,     /* only when the enclosing mapping is present */
    FL_LOWER = 1 << 1,        /* names compare case-insensitively: store lowercase */
    FL_FILE = 1 << 2,         /* a file name: relative means next to the config */
    FL_NO_OPEN_RELAY = 1 << 3,
};

typedef const char *(*check_fn)(const char *s);
typedef void (*custom_fn)(conf_walk *w, const cnode *n, void *dst, const char *path);

typedef struct schema_map schema_map;

typedef struct field {
    const char *key;
    field_type type;
    unsigned flags;
    size_t off;
    size_t width;       /* integer storage size */
    uint64_t min, max, def;
    uint64_t scale;     /* durations are bounded in ms; stored as ms * scale (us: 1000) */
    double fmin, fmax, fdef;
    const char *sdef;
    const char *const *names; /* enum names, NULL-terminated, index = value */
    const schema_map *sub;
    size_t count_off;   /* lists: the size_t count next to the array */
    size_t elem_size;
    size_t name_off;    /* FT_NAMEDMAP: where the element's name goes */
    size_t min_items, max_items;
    check_fn check;
    custom_fn custom;
} field;

struct schema_map {
    const field *fields;
    size_t n;
    /* Defaults that depend on other keys of the same mapping. */
    void (*post)(conf_walk *w, const cnode *n, void *base, const char *path);
};

#define MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define KiB (1024ull)
#define MiB (1024ull * 1024ull)
#define GiB (1024ull * 1024ull * 1024ull)
#define SEC (1000ull)
#define MIN (60ull * 1000ull)
#define HOUR (3600ull * 1000ull)
#define DAY (86400ull * 1000ull)

#define F_STRING(k, T, m, d, fl, chk) \
    {.key = k, .type = FT_STRING, .flags = fl, .off = offsetof(T, m), .sdef = d, .check = chk}
#define F_BOOL(k, T, m, d) \
    {.key = k, .type = FT_BOOL, .off = offsetof(T, m), .width = sizeof(bool), .def = d}
#define F_UINT(k, T, m, lo, hi, d, fl)                                                          \
    {.key = k, .type = FT_UINT, .flags = fl, .off = offsetof(T, m), .width = MEMBER_SIZE(T, m), \
     .min = lo, .max = hi, .def = d}
#define F_FLOAT(k, T, m, lo, hi, d) \
    {.key = k, .type = FT_FLOAT, .off = offsetof(T, m), .fmin = lo, .fmax = hi, .fdef = d}
#define F_DURATION(k, T, m, lo, hi, d, sc)                                                  \
    {.key = k, .type = FT_DURATION, .off = offsetof(T, m), .width = MEMBER_SIZE(T, m), \
     .min = lo, .max = hi, .def = d, .scale = sc}
#define F_SIZE(k, T, m, lo, hi, d)                                                      \
    {.key = k, .type = FT_SIZE, .off = offsetof(T, m), .width = MEMBER_SIZE(T, m), .min = lo, \
     .max = hi, .def = d}
#define F_ENUM(k, T, m, nm, d, fl)                                                             \
    {.key = k, .type = FT_ENUM, .flags = fl, .off = offsetof(T, m), .width = MEMBER_SIZE(T, m), \
     .names = nm, .def = d}
#define F_STRLIST(k, T, m, cnt, fl, chk)                                                      \
    {.key = k, .type = FT_STRLIST, .flags = fl, .off = offsetof(T, m), .count_off = offsetof(T, cnt), \
     .max_items = CONF_MAX_LIST, .check = chk}
#define F_CIDRLIST(k, T, m, cnt, fl)                                                            \
    {.key = k, .type = FT_CIDRLIST, .flags = fl, .off = offsetof(T, m), .count_off = offsetof(T, cnt), \
     .max_items = CONF_MAX_LIST}
#define F_MAP(k, T, m, s) {.key = k, .type = FT_MAP, .off = offsetof(T, m), .sub = &s}
#define F_CUSTOM(k, T, m, fn) {.key = k, .type = FT_CUSTOM, .off = offsetof(T, m), .custom = fn}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- value checks ------------------------------------------------------ */

const char *conf__check_hostname(const char *s)
{
    size_t len = strlen(s);
    if (len == 0)
        return "is empty";
    if (len > 253)
        return "is longer than 253 characters";
    if (s[len - 1] == '.')
        return "must be written without the trailing dot";
    const char *label = s;
    bool last_numeric = true;
    for (const char *p = s;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t l = (size_t)(p - label);
            if (l == 0)
                return "has an empty label";
            if (l > 63)
                return "has a label longer than 63 characters";
            if (label[0] == '-' || p[-1] == '-')
                return "has a label that starts or ends with '-'";
            if (*p == '\0')
                break;
            label = p + 1;
            last_numeric = true;
            continue;
        }
        if (!isalnum((unsigned char)*p) && *p != '-')
            return "is not a valid host name (letters, digits, '-' and '.' only)";
        if (!isdigit((unsigned char)*p))
            last_numeric = false;
    }
    /* An all-digit top label means an IP address was written as a name. */
    if (last_numeric)
        return "is an address, not a host name";
    return NULL;
}

const char *conf__check_wildcard_name(const char *s)
{
    if (s[0] == '*' && s[1] == '.')
        s += 2;
    if (strchr(s, '*') != NULL)
        return "may hold '*' only as the whole first label (\"*.example.test\")";
    return conf__check_hostname(s);
}

static const char *check_absolute(const char *s)
{
    return s[0] == '/' ? NULL : "must be an absolute path";
}

static const char *check_ident(const char *s)
{
    if (strlen(s) > 64)
        return "is longer than 64 characters";
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return "may hold only letters, digits, '-', '_' and '.'";
    return NULL;
}

static const char *check_address(const char *s)
{
    unsigned char buf[16];
    if (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1)
        return NULL;
    return "is not an IPv4 or IPv6 address (host names are not resolved here)";
}

static const char *check_user(const char *s)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwnam_r(s, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return "no such user";
    return NULL;
}

static const char *check_group(const char *s)
{
    struct group gr, *res = NULL;
    char buf[8192];
    if (getgrnam_r(s, &gr, buf, sizeof(buf), &res) != 0 || res == NULL)
        return "no such group";
    return NULL;
}

static const char *check_log_level(const char *s)
{
    const char *why = NULL;
    if (tern_log_check_spec(s, &why) != 0)
        return why ? why : "is not a log level spec";
    return NULL;
}

/* ---- the tables -------------------------------------------------------- */

static const char *const protocol_names[] = {"smtp", "submission", "imap", "pop3", "http", NULL};
static const char *const tls_mode_names[] = {"none", "starttls", "implicit", NULL};
static const char *const client_cert_names[] = {"none", "optional", "required", NULL};
static const char *const bare_lf_names[] = {"reject", "normalize", NULL};
static const char *const backend_names[] = {"local", "postgres", NULL};

static const field server_fields[] = {
    F_STRING("hostname", tern_server_conf, hostname, NULL, FL_LOWER, conf__check_hostname),
    F_UINT("workers", tern_server_conf, workers, 0, 256, 0, 0),
    F_DURATION("shutdown_grace", tern_server_conf, shutdown_grace_ms, 0, HOUR, 30 * SEC, 1),
    F_UINT("max_connections", tern_server_conf, max_connections, 1, 1000000, 10000, 0),
    F_STRING("user", tern_server_conf, user, NULL, 0, check_user),
    F_STRING("group", tern_server_conf, group, NULL, 0, check_group),
    F_STRING("log_level", tern_server_conf, log_level, "info", 0, check_log_level),
    F_STRING("state_dir", tern_server_conf, state_dir, "/var/lib/tern", 0, check_absolute),
    F_STRING("control_socket", tern_server_conf, control_socket, NULL, 0, check_absolute),
};
static const schema_map server_schema = {server_fields, COUNT(server_fields), NULL};

static const field limits_fields[] = {
    F_UINT("max_connections_per_ip", tern_limits_conf, max_connections_per_ip, 0, 1000000, 50, 0),
    F_FLOAT("connection_rate_per_ip", tern_limits_conf, connection_rate_per_ip, 0.0, 1e6, 10.0),
    F_UINT("connection_burst_per_ip", tern_limits_conf, connection_burst_per_ip, 1, 1000000, 20, 0),
};
static const schema_map limits_schema = {limits_fields, COUNT(limits_fields), NULL};

static const field cert_fields[] = {
    F_STRING("cert", tern_cert_conf, cert, NULL, FL_REQUIRED | FL_FILE, NULL),
    F_STRING("key", tern_cert_conf, key, NULL, FL_REQUIRED | FL_FILE, NULL),
    F_STRLIST("subjects", tern_cert_conf, subjects, n_subjects, FL_LOWER, conf__check_wildcard_name),
    F_BOOL("default", tern_cert_conf, is_default, false),
};
static const schema_map cert_schema = {cert_fields, COUNT(cert_fields), NULL};

static const field protocols_fields[] = {
    F_CUSTOM("min_version", tern_tls_conf, min_version, conf__parse_min_version),
    F_BOOL("ignore_client_order", tern_tls_conf, ignore_client_order, false),
    F_STRLIST("disable_cipher_suites", tern_tls_conf, disable_cipher_suites,
              n_disable_cipher_suites, 0, NULL),
};
/* tls.protocols shares tern_tls_conf with tls.certificates: offset 0. */
static const schema_map protocols_schema = {protocols_fields, COUNT(protocols_fields), NULL};

static const field tls_fields[] = {
    {.key = "certificates", .type = FT_NAMEDMAP, .off = offsetof(tern_tls_conf, certs),
     .count_off = offsetof(tern_tls_conf, n_certs), .elem_size = sizeof(tern_cert_conf),
     .name_off = offsetof(tern_cert_conf, name), .max_items = CONF_MAX_CERTS, .sub = &cert_schema},
    {.key = "protocols", .type = FT_MAP, .off = 0, .sub = &protocols_schema},
};
static const schema_map tls_schema = {tls_fields, COUNT(tls_fields), NULL};

/* A mailbox address "local@domain" (local part without spaces or angle
 * brackets; quoting is not needed for a grant), or "@domain" with
 * allow_domain. */
static const char *check_mailbox(const char *s, bool allow_domain)
{
    const char *at = strrchr(s, '@');
    if (at == NULL)
        return "is not an address (local@domain)";
    if (at == s && !allow_domain)
        return "needs a local part";
    for (const char *p = s; p < at; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == '"' || *p == '\\' ||
            *p == '@' || *p == 0x7f)
            return "has a character a grant's local part may not hold";
    if (at - s > 64)
        return "has a local part longer than 64 characters";
    return conf__check_hostname(at + 1);
}

static const char *check_send_as_account(const char *s)
{
    return check_mailbox(s, false);
}

static const char *check_send_as_address(const char *s)
{
    return check_mailbox(s, true);
}

static const field send_as_fields[] = {
    F_STRING("account", tern_send_as_conf, account, NULL, FL_REQUIRED | FL_LOWER,
             check_send_as_account),
    F_STRLIST("addresses", tern_send_as_conf, addresses, n_addresses, FL_LOWER,
              check_send_as_address),
};
static const schema_map send_as_schema = {send_as_fields, COUNT(send_as_fields), NULL};

static const field smtp_fields[] = {
    F_SIZE("max_command_line", tern_smtp_conf, max_command_line, 512, 64 * KiB, 512),
    F_SIZE("max_text_line", tern_smtp_conf, max_text_line, 1000, MiB, 1000),
    F_UINT("max_recipients", tern_smtp_conf, max_recipients, 1, 100000, 100, 0),
    F_UINT("max_errors", tern_smtp_conf, max_errors, 1, 1000, 10, 0),
    F_SIZE("max_message_size", tern_smtp_conf, max_message_size, KiB, 2 * GiB, 50 * MiB),
    F_SIZE("memory_threshold", tern_smtp_conf, memory_threshold, 4 * KiB, 256 * MiB, MiB),
    F_UINT("max_hops", tern_smtp_conf, max_hops, 1, 500, 50, 0),
    F_BOOL("vrfy", tern_smtp_conf, vrfy, false),
    F_BOOL("verify_recipients", tern_smtp_conf, verify_recipients, true),
    F_ENUM("bare_lf", tern_smtp_conf, bare_lf, bare_lf_names, TERN_BARE_LF_REJECT, 0),
    F_DURATION("greeting_timeout", tern_smtp_conf, greeting_timeout_ms, SEC, HOUR, 5 * MIN, 1),
    F_DURATION("command_timeout", tern_smtp_conf, command_timeout_ms, SEC, HOUR, 5 * MIN, 1),
    F_DURATION("data_block_timeout", tern_smtp_conf, data_block_timeout_ms, SEC, HOUR, 3 * MIN, 1),
    F_DURATION("data_done_timeout", tern_smtp_conf, data_done_timeout_ms, SEC, HOUR, 10 * MIN, 1),
    F_CIDRLIST("relay_networks", tern_smtp_conf, relay_networks, n_relay_networks, FL_NO_OPEN_RELAY),
    {.key = "send_as", .type = FT_MAPLIST, .off = offsetof(tern_smtp_conf, send_as),
     .count_off = offsetof(tern_smtp_conf, n_send_as), .elem_size = sizeof(tern_send_as_conf),
     .max_items = CONF_MAX_SEND_AS, .sub = &send_as_schema},
};
static const schema_map smtp_schema = {smtp_fields, COUNT(smtp_fields), NULL};

static const char *const pop3_delete_names[] = {"expunge", "trash", "keep", NULL};

static const char *check_pop3_expire(const char *s)
{
    if (strcmp(s, "never") == 0)
        return NULL;
    size_t n = strlen(s);
    if (n == 0 || n > 5 || strspn(s, "0123456789") != n)
        return "must be never or a number of days (0..99999)";
    return NULL;
}

static const field pop3_fields[] = {
    F_SIZE("max_command_line", tern_pop3_conf, max_command_line, 255, 64 * KiB, 512),
    F_UINT("max_errors", tern_pop3_conf, max_errors, 1, 1000, 10, 0),
    F_UINT("max_messages", tern_pop3_conf, max_messages, 1, 10000000, 100000, 0),
    F_ENUM("delete_policy", tern_pop3_conf, delete_policy, pop3_delete_names,
           TERN_POP3_DELETE_EXPUNGE, 0),
    F_DURATION("login_delay", tern_pop3_conf, login_delay_ms, 0, DAY, 0, 1),
    F_STRING("expire", tern_pop3_conf, expire, "never", FL_LOWER, check_pop3_expire),
    F_DURATION("idle_timeout", tern_pop3_conf, idle_timeout_ms, 10 * MIN, DAY, 10 * MIN, 1),
    F_BOOL("apop", tern_pop3_conf, apop, false),
};
static const schema_map pop3_schema = {pop3_fields, COUNT(pop3_fields), NULL};
static const field imap_fields[] = {
    F_SIZE("max_line", tern_imap_conf, max_line, KiB, MiB, 64 * KiB),
    F_SIZE("max_literal", tern_imap_conf, max_literal, KiB, 2 * GiB, 50 * MiB),
    F_UINT("max_depth", tern_imap_conf, max_depth, 4, 256, 32, 0),
    F_UINT("max_errors", tern_imap_conf, max_errors, 1, 1000, 10, 0),
    F_DURATION("idle_timeout", tern_imap_conf, idle_timeout_ms, MIN, DAY, 30 * MIN, 1),
    F_UINT("fetch_batch", tern_imap_conf, fetch_batch, 1, 10000, 256, 0),
};
static const schema_map imap_schema = {imap_fields, COUNT(imap_fields), NULL};

static const field spool_fields[] = {
    F_SIZE("segment_size", tern_spool_conf, segment_size, MiB, 4 * GiB, 64 * MiB),
    F_UINT("group_commit_max", tern_spool_conf, group_commit_max, 1, 65536, 256, 0),
    F_DURATION("group_commit_delay", tern_spool_conf, group_commit_delay_us, 0, 100, 0, 1000),
};
static const schema_map spool_schema = {spool_fields, COUNT(spool_fields), NULL};

static const field storage_fields[] = {
    F_ENUM("backend", tern_storage_conf, backend, backend_names, TERN_STORAGE_LOCAL, 0),
    F_DURATION("changes_retention", tern_storage_conf, changes_retention_ms, HOUR, 3650 * DAY,
               30 * DAY, 1),
    F_SIZE("default_quota_bytes", tern_storage_conf, default_quota_bytes, 0, 1ull << 50, 0),
    F_UINT("default_quota_messages", tern_storage_conf, default_quota_messages, 0, 100000000, 0, 0),
};
static const schema_map storage_schema = {storage_fields, COUNT(storage_fields), NULL};

static const field local_fields[] = {
    F_STRING("path", tern_local_conf, path, NULL, 0, check_absolute),
};
static const schema_map local_schema = {local_fields, COUNT(local_fields), NULL};

/* conninfo is required only when the section exists; validate.c says so
 * once, whether the section is empty or only lacks that key. */
static const field postgres_fields[] = {
    F_STRING("conninfo", tern_postgres_conf, conninfo, NULL, 0, NULL),
    F_UINT("pool_size", tern_postgres_conf, pool_size, 1, 256, 8, 0),
    F_STRING("blob_dir", tern_postgres_conf, blob_dir, NULL, 0, NULL),
};
static const schema_map postgres_schema = {postgres_fields, COUNT(postgres_fields), NULL};

static const char *check_auth_backend(const char *s)
{
    static const char *const names[] = {"internal", "file", "oauth2", "sql", "ldap"};
    for (size_t i = 0; i < COUNT(names); i++)
        if (strcmp(s, names[i]) == 0)
            return NULL;
    return "is not an auth backend (internal, file, oauth2, sql, ldap)";
}

static const field auth_fields[] = {
    F_STRLIST("backends", tern_auth_conf, backends, n_backends, FL_LOWER, check_auth_backend),
    F_UINT("max_failures", tern_auth_conf, max_failures, 1, 100000, 10, 0),
    F_DURATION("lockout", tern_auth_conf, lockout_ms, SEC, DAY, 15 * MIN, 1),
    F_DURATION("failure_delay", tern_auth_conf, failure_delay_ms, 0, 10 * SEC, 250, 1),
    F_DURATION("max_delay", tern_auth_conf, max_delay_ms, 0, MIN, 5 * SEC, 1),
};
static const schema_map auth_schema = {auth_fields, COUNT(auth_fields), NULL};

/* path is required only when the section exists; validate.c says so. */
static const field auth_file_fields[] = {
    F_STRING("path", tern_auth_file_conf, path, NULL, FL_FILE, NULL),
    F_STRING("default_domain", tern_auth_file_conf, default_domain, NULL, FL_LOWER,
             conf__check_hostname),
};
static const schema_map auth_file_schema = {auth_file_fields, COUNT(auth_file_fields), NULL};

static const field auth_internal_fields[] = {
    F_BOOL("scram", tern_auth_internal_conf, scram, false),
};
static const schema_map auth_internal_schema = {auth_internal_fields, COUNT(auth_internal_fields),
                                                NULL};

static const char *check_oauth2_alg(const char *s)
{
    /* Asymmetric only: an HMAC alg would make the public JWKS a secret. */
    if (strcmp(s, "RS256") == 0 || strcmp(s, "ES256") == 0 || strcmp(s, "EdDSA") == 0)
        return NULL;
    return "is not a supported JWS algorithm (RS256, ES256, EdDSA)";
}

static void introspection_post(conf_walk *w, const cnode *n, void *base, const char *path)
{
    (void)w;
    (void)path;
    ((struct tern_auth_introspection_conf *)base)->present = n != NULL;
}

/* url, client_id and a secret are required when the mapping exists;
 * validate.c says so. */
static const field introspection_fields[] = {
    F_STRING("url", struct tern_auth_introspection_conf, url, NULL, 0, NULL),
    F_STRING("client_id", struct tern_auth_introspection_conf, client_id, NULL, 0, NULL),
    F_STRING("client_secret", struct tern_auth_introspection_conf, client_secret, NULL, 0, NULL),
    F_STRING("client_secret_file", struct tern_auth_introspection_conf, client_secret_file, NULL,
             FL_FILE, NULL),
    F_STRING("ca_file", struct tern_auth_introspection_conf, ca_file, NULL, FL_FILE, NULL),
    F_DURATION("timeout", struct tern_auth_introspection_conf, timeout_ms, 100, MIN, 10 * SEC, 1),
    F_DURATION("cache_ttl", struct tern_auth_introspection_conf, cache_ttl_ms, 0, DAY, 5 * MIN, 1),
    F_DURATION("negative_cache_ttl", struct tern_auth_introspection_conf, negative_cache_ttl_ms,
               0, HOUR, 30 * SEC, 1),
    F_STRING("account_claim", struct tern_auth_introspection_conf, account_claim, "username", 0,
             NULL),
    F_BOOL("always", struct tern_auth_introspection_conf, always, false),
};
static const schema_map introspection_schema = {introspection_fields,
                                                COUNT(introspection_fields), introspection_post};

/* jwks_file, issuer and audience are required only when the section
 * exists; validate.c says so. */
static const field auth_oauth2_fields[] = {
    F_STRING("jwks_file", tern_auth_oauth2_conf, jwks_file, NULL, FL_FILE, NULL),
    F_STRING("issuer", tern_auth_oauth2_conf, issuer, NULL, 0, NULL),
    F_STRING("audience", tern_auth_oauth2_conf, audience, NULL, 0, NULL),
    F_STRING("account_claim", tern_auth_oauth2_conf, account_claim, "email", 0, NULL),
    F_DURATION("leeway", tern_auth_oauth2_conf, leeway_ms, 0, HOUR, 60 * SEC, 1),
    F_STRLIST("algorithms", tern_auth_oauth2_conf, algorithms, n_algorithms, 0, check_oauth2_alg),
    F_MAP("introspection", tern_auth_oauth2_conf, introspection, introspection_schema),
};
static const schema_map auth_oauth2_schema = {auth_oauth2_fields, COUNT(auth_oauth2_fields), NULL};

static const char *const ldap_mode_names[] = {"bind", "search", NULL};

static const char *check_ldap_uri(const char *s)
{
    if (strncmp(s, "ldap://", 7) != 0 && strncmp(s, "ldaps://", 8) != 0)
        return "must start with ldap:// or ldaps://";
    return NULL;
}

/* uri is required only when the section exists, and the mode's own keys
 * (dn_template, base) only in that mode; validate.c says so. */
static const field auth_ldap_fields[] = {
    F_STRING("uri", tern_auth_ldap_conf, uri, NULL, 0, check_ldap_uri),
    F_BOOL("starttls", tern_auth_ldap_conf, starttls, false),
    F_STRING("ca_file", tern_auth_ldap_conf, ca_file, NULL, FL_FILE, NULL),
    F_STRING("bind_dn", tern_auth_ldap_conf, bind_dn, NULL, 0, NULL),
    F_STRING("bind_password", tern_auth_ldap_conf, bind_password, NULL, 0, NULL),
    F_STRING("base", tern_auth_ldap_conf, base, NULL, 0, NULL),
    F_STRING("filter", tern_auth_ldap_conf, filter, "(mail=%u)", 0, NULL),
    F_ENUM("mode", tern_auth_ldap_conf, mode, ldap_mode_names, TERN_LDAP_MODE_BIND, 0),
    F_STRING("dn_template", tern_auth_ldap_conf, dn_template, NULL, 0, NULL),
    F_DURATION("timeout", tern_auth_ldap_conf, timeout_ms, 100, MIN, 5 * SEC, 1),
};
static const schema_map auth_ldap_schema = {auth_ldap_fields, COUNT(auth_ldap_fields), NULL};

/* password_query is required only when sql is a backend, and conninfo
 * may come from postgres:; validate.c says so. */
static const field auth_sql_fields[] = {
    F_STRING("conninfo", tern_auth_sql_conf, conninfo, NULL, 0, NULL),
    F_STRING("password_query", tern_auth_sql_conf, password_query, NULL, 0, NULL),
    F_STRING("user_query", tern_auth_sql_conf, user_query, NULL, 0, NULL),
    F_UINT("pool_size", tern_auth_sql_conf, pool_size, 1, 64, 2, 0),
    F_DURATION("timeout", tern_auth_sql_conf, timeout_ms, 100, MIN, 10 * SEC, 1),
    F_BOOL("scram", tern_auth_sql_conf, scram, false),
};
static const schema_map auth_sql_schema = {auth_sql_fields, COUNT(auth_sql_fields), NULL};

/* dns.resolvers: "system", or a list of "IP" / "IP@PORT". */
#define CONF_MAX_RESOLVERS 16

static const char *check_resolver(const char *s)
{
    char addr[64];
    unsigned char buf[16];
    const char *at = strrchr(s, '@');
    size_t alen = at ? (size_t)(at - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(addr))
        return "is not an IP address, optionally with @PORT";
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    if (inet_pton(AF_INET, addr, buf) != 1 && inet_pton(AF_INET6, addr, buf) != 1)
        return "is not an IPv4 or IPv6 address (write e.g. 192.0.2.53 or 127.0.0.1@5353)";
    if (at) {
        char *end;
        errno = 0;
        unsigned long port = strtoul(at + 1, &end, 10);
        if (at[1] == '\0' || *end != '\0' || errno != 0 || port < 1 || port > 65535)
            return "has a port that is not 1..65535";
    }
    return NULL;
}

static void dns_resolvers(conf_walk *w, const cnode *n, void *dst, const char *path)
{
    tern_dns_conf *d = dst;
    d->resolvers = NULL;
    d->n_resolvers = 0;
    if (n == NULL || n->is_null)
        return;
    if (n->kind == CNODE_SCALAR) {
        if (strcmp(n->str, "system") != 0)
            conf__err(w, n->line, path,
                      "\"%.64s\": expected \"system\" or a list of addresses (\"IP\" or \"IP@PORT\")",
                      n->str);
        return;
    }
    if (n->kind != CNODE_SEQ) {
        conf__err(w, n->line, path, "expected \"system\" or a list of addresses");
        return;
    }
    if (n->n == 0) {
        conf__err(w, n->line, path, "an empty list: write \"system\" for the system's resolvers");
        return;
    }
    if (n->n > CONF_MAX_RESOLVERS) {
        conf__err(w, n->line, path, "more than %d resolvers", CONF_MAX_RESOLVERS);
        return;
    }
    char **arr = conf__alloc(w, n->n * sizeof(*arr));
    if (arr == NULL)
        return;
    size_t i = 0, kept = 0;
    for (const cnode *it = n->child; it; it = it->next, i++) {
        char p[512];
        snprintf(p, sizeof(p), "%s[%zu]", path, i);
        if (it->kind != CNODE_SCALAR || it->is_null) {
            conf__err(w, it->line, p, "expected an address");
            continue;
        }
        const char *why = check_resolver(it->str);
        if (why) {
            conf__err(w, it->line, p, "\"%.64s\" %s", it->str, why);
            continue;
        }
        arr[kept] = conf__strdup(w, it->str);
        if (arr[kept] == NULL)
            return;
        conf__line_set(w, &arr[kept], it->line);
        kept++;
    }
    d->resolvers = arr;
    d->n_resolvers = kept;
}

static const field dns_fields[] = {
    {.key = "resolvers", .type = FT_CUSTOM, .off = 0, .custom = dns_resolvers},
    F_BOOL("dnssec", tern_dns_conf, dnssec, true),
    F_STRING("trust_anchor_file", tern_dns_conf, trust_anchor_file, NULL, FL_FILE, NULL),
    F_DURATION("timeout", tern_dns_conf, timeout_ms, 100, 5 * MIN, 10 * SEC, 1),
    F_SIZE("cache_size", tern_dns_conf, cache_size, 64 * KiB, GiB, 8 * MiB),
    F_DURATION("cache_max_ttl", tern_dns_conf, cache_max_ttl_ms, SEC, 7 * DAY, DAY, 1),
    F_STRLIST("unblock_zones", tern_dns_conf, unblock_zones, n_unblock_zones, FL_LOWER,
              conf__check_hostname),
};
static const schema_map dns_schema = {dns_fields, COUNT(dns_fields), NULL};

static void listener_tls(conf_walk *w, const cnode *n, void *dst, const char *path);

/* `auth` is already the listener's on/off switch, so the fixed login of an
 * ingest-only endpoint has its own key. Checked further in validate.c. */
static const field listener_auth_static_fields[] = {
    F_STRING("username", tern_listener_conf, auth_static.username, NULL, FL_REQUIRED, NULL),
    F_STRING("password", tern_listener_conf, auth_static.password, NULL, FL_REQUIRED, NULL),
};
static const schema_map listener_auth_static_schema = {
    listener_auth_static_fields, COUNT(listener_auth_static_fields), NULL};

static const field listener_fields[] = {
    F_STRING("name", tern_listener_conf, name, NULL, FL_REQUIRED, check_ident),
    F_ENUM("protocol", tern_listener_conf, protocol, protocol_names, 0, FL_REQUIRED),
    F_STRING("address", tern_listener_conf, address, "0.0.0.0", 0, check_address),
    F_UINT("port", tern_listener_conf, port, 1, 65535, 0, FL_REQUIRED),
    F_DURATION("timeout", tern_listener_conf, timeout_ms, SEC, DAY, 5 * MIN, 1),
    F_BOOL("reuse", tern_listener_conf, reuse, false),
    F_UINT("workers", tern_listener_conf, workers, 0, 256, 0, 0),
    F_SIZE("buffer_size", tern_listener_conf, buffer_size, 512, MiB, 9000),
    {.key = "tls", .type = FT_CUSTOM, .off = 0, .custom = listener_tls},
    F_SIZE("max_message_size", tern_listener_conf, max_message_size, 0, 2 * GiB, 0),
    F_STRING("pipeline", tern_listener_conf, pipeline, "root", 0, check_ident),
    F_BOOL("auth", tern_listener_conf, auth, false),
    F_BOOL("allow_plaintext_auth", tern_listener_conf, allow_plaintext_auth, false),
    {.key = "auth_static", .type = FT_MAP, .off = 0, .sub = &listener_auth_static_schema},
};

static void listener_post(conf_walk *w, const cnode *n, void *base, const char *path)
{
    tern_listener_conf *l = base;
    const cnode *a = conf__map_get(n, "auth");
    /* Submission exists to take credentials; the other protocols only
     * offer AUTH when told to. */
    if (a == NULL || a->is_null)
        l->auth = l->protocol == TERN_PROTO_SUBMISSION;
    /* A fixed login is only there to be used. */
    const cnode *st = conf__map_get(n, "auth_static");
    if ((a == NULL || a->is_null) && st != NULL && !st->is_null)
        l->auth = true;
}
static const schema_map listener_schema = {listener_fields, COUNT(listener_fields), listener_post};

/* The mapping form of a listener's tls: lands in the listener itself. */
static const field listener_tls_fields[] = {
    F_ENUM("mode", tern_listener_conf, tls, tls_mode_names, TERN_TLS_NONE, 0),
    F_STRING("client_ca", tern_listener_conf, client_ca, NULL, FL_FILE, NULL),
    F_ENUM("client_cert", tern_listener_conf, client_cert, client_cert_names, TERN_CLIENT_CERT_NONE, 0),
};
static const schema_map listener_tls_schema = {listener_tls_fields, COUNT(listener_tls_fields), NULL};
static const field listener_tls_scalar =
    F_ENUM("tls", tern_listener_conf, tls, tls_mode_names, TERN_TLS_NONE, 0);

static const field mailets_fields[] = {
    F_DURATION("root_deadline", tern_mailets_conf, root_deadline_ms, 100, 10 * MIN, 30 * SEC, 1),
    F_DURATION("retry_min", tern_mailets_conf, retry_min_ms, SEC, DAY, MIN, 1),
    F_DURATION("retry_max", tern_mailets_conf, retry_max_ms, SEC, 7 * DAY, HOUR, 1),
    F_DURATION("max_lifetime", tern_mailets_conf, max_lifetime_ms, MIN, 30 * DAY, 5 * DAY, 1),
    F_UINT("max_steps", tern_mailets_conf, max_steps, 10, 100000, 1000, 0),
    F_UINT("max_active", tern_mailets_conf, max_active, 1, 100000, 256, 0),
    F_STRING("repository_dir", tern_mailets_conf, repository_dir, NULL, 0, check_absolute),
};
static const schema_map mailets_schema = {mailets_fields, COUNT(mailets_fields), NULL};

/* One of password / password_file; validate.c checks and reads the file. */
static const field smarthost_auth_fields[] = {
    F_STRING("username", tern_queue_conf, smarthost_auth.username, NULL, FL_REQUIRED, NULL),
    F_STRING("password", tern_queue_conf, smarthost_auth.password, NULL, 0, NULL),
    F_STRING("password_file", tern_queue_conf, smarthost_auth.password_file, NULL, FL_FILE, NULL),
    F_BOOL("allow_plaintext", tern_queue_conf, smarthost_auth.allow_plaintext, false),
};
static const schema_map smarthost_auth_schema = {smarthost_auth_fields, COUNT(smarthost_auth_fields),
                                                 NULL};
static const char *const smarthost_tls_names[] = {"opportunistic", "required", "verify", NULL};

static const field source_address_fields[] = {
    F_STRING("address", tern_source_address_conf, address, NULL, FL_REQUIRED, check_address),
    F_STRING("helo", tern_source_address_conf, helo, NULL, FL_LOWER, conf__check_hostname),
};
static const schema_map source_address_schema = {source_address_fields,
                                                 COUNT(source_address_fields), NULL};
static const char *const address_family_names[] = {"any", "ipv4", "ipv6", NULL};

static const field queue_fields[] = {
    F_BOOL("hold", tern_queue_conf, hold, false),
    F_UINT("port", tern_queue_conf, port, 1, 65535, 25, 0),
    F_STRING("smarthost", tern_queue_conf, smarthost, NULL, FL_LOWER, NULL),
    F_UINT("max_concurrency", tern_queue_conf, max_concurrency, 1, 100000, 100, 0),
    F_UINT("per_destination", tern_queue_conf, per_destination, 1, 10000, 10, 0),
    F_DURATION("retry_min", tern_queue_conf, retry_min_ms, SEC, DAY, 5 * MIN, 1),
    F_DURATION("retry_max", tern_queue_conf, retry_max_ms, SEC, 7 * DAY, HOUR, 1),
    F_DURATION("max_lifetime", tern_queue_conf, max_lifetime_ms, MIN, 30 * DAY, 5 * DAY, 1),
    F_DURATION("connect_timeout", tern_queue_conf, connect_timeout_ms, 100, 10 * MIN, 30 * SEC, 1),
    F_DURATION("command_timeout", tern_queue_conf, command_timeout_ms, 100, HOUR, 5 * MIN, 1),
    F_DURATION("data_timeout", tern_queue_conf, data_timeout_ms, 100, HOUR, 10 * MIN, 1),
    F_UINT("connection_reuse_limit", tern_queue_conf, connection_reuse_limit, 1, 100000, 100, 0),
    F_DURATION("connection_idle_timeout", tern_queue_conf, connection_idle_timeout_ms, 100, 10 * MIN, 5 * SEC, 1),
    F_UINT("max_idle_connections", tern_queue_conf, max_idle_connections, 0, 100000, 50, 0),
    F_BOOL("use_chunking", tern_queue_conf, use_chunking, true),
    {.key = "smarthost_auth", .type = FT_MAP, .off = 0, .sub = &smarthost_auth_schema},
    F_ENUM("smarthost_tls", tern_queue_conf, smarthost_tls, smarthost_tls_names,
           TERN_SMARTHOST_TLS_OPPORTUNISTIC, 0),
    {.key = "source_addresses", .type = FT_MAPLIST, .off = offsetof(tern_queue_conf, source_addresses),
     .count_off = offsetof(tern_queue_conf, n_source_addresses),
     .elem_size = sizeof(tern_source_address_conf), .max_items = 256, .sub = &source_address_schema},
    F_BOOL("mta_sts", tern_queue_conf, mta_sts, true),
    F_STRING("mta_sts_ca_file", tern_queue_conf, mta_sts_ca_file, NULL, FL_FILE, NULL),
    F_STRING("smarthost_ca_file", tern_queue_conf, smarthost_ca_file, NULL, FL_FILE, NULL),
    F_STRING("smarthost_tls_name", tern_queue_conf, smarthost_tls_name, NULL, FL_LOWER,
             conf__check_hostname),
    F_UINT("mta_sts_port", tern_queue_conf, mta_sts_port, 1, 65535, 443, 0),
    F_UINT("host_down_threshold", tern_queue_conf, host_down_threshold, 1, 1000, 5, 0),
    F_DURATION("host_down_cooldown", tern_queue_conf, host_down_cooldown_ms, SEC, DAY, 30 * SEC, 1),
    F_UINT("connect_retries", tern_queue_conf, connect_retries, 0, 10, 0, 0),
    F_UINT("backend_connect_retries", tern_queue_conf, backend_connect_retries, 0, 10, 0, 0),
    F_DURATION("delay_warning", tern_queue_conf, delay_warning_ms, SEC, 30 * DAY, 4 * HOUR, 1),
    F_ENUM("address_family", tern_queue_conf, address_family, address_family_names, TERN_AF_ANY, 0),
    F_BOOL("dane", tern_queue_conf, dane, true),
};
static const schema_map queue_schema = {queue_fields, COUNT(queue_fields), NULL};

static void root_post(conf_walk *w, const cnode *n, void *base, const char *path)
{
    tern_config *cfg = base;
    for (const cnode *k = n ? n->child : NULL; k; k = k->next)
        if (strcmp(k->str, "postgres") == 0)
            cfg->postgres.present = true;
        else if (strcmp(k->str, "auth_file") == 0)
            cfg->auth_file.present = true;
        else if (strcmp(k->str, "auth_oauth2") == 0)
            cfg->auth_oauth2.present = true;
        else if (strcmp(k->str, "auth_ldap") == 0)
            cfg->auth_ldap.present = true;
        else if (strcmp(k->str, "auth_sql") == 0)
            cfg->auth_sql.present = true;
}

static const field root_fields[] = {
    F_MAP("server", tern_config, server, server_schema),
    F_MAP("limits", tern_config, limits, limits_schema),
    F_STRLIST("domains", tern_config, domains, n_domains, FL_LOWER, conf__check_hostname),
    F_MAP("tls", tern_config, tls, tls_schema),
    F_MAP("smtp", tern_config, smtp, smtp_schema),
    F_MAP("pop3", tern_config, pop3, pop3_schema),
    F_MAP("imap", tern_config, imap, imap_schema),
    F_MAP("spool", tern_config, spool, spool_schema),
    F_MAP("storage", tern_config, storage, storage_schema),
    F_MAP("local", tern_config, local, local_schema),
    F_MAP("postgres", tern_config, postgres, postgres_schema),
    F_MAP("auth", tern_config, auth, auth_schema),
    F_MAP("auth_file", tern_config, auth_file, auth_file_schema),
    F_MAP("auth_oauth2", tern_config, auth_oauth2, auth_oauth2_schema),
    F_MAP("auth_internal", tern_config, auth_internal, auth_internal_schema),
    F_MAP("auth_ldap", tern_config, auth_ldap, auth_ldap_schema),
    F_MAP("auth_sql", tern_config, auth_sql, auth_sql_schema),
    F_MAP("dns", tern_config, dns, dns_schema),
    {.key = "listeners", .type = FT_MAPLIST, .off = offsetof(tern_config, listeners),
     .count_off = offsetof(tern_config, n_listeners), .elem_size = sizeof(tern_listener_conf),
     .min_items = 1, .max_items = CONF_MAX_LISTENERS, .sub = &listener_schema},
    F_MAP("mailets", tern_config, mailets, mailets_schema),
    F_MAP("queue", tern_config, queue, queue_schema),
    {.key = "processors", .type = FT_CUSTOM, .off = 0, .custom = conf__processors},
    {.key = "plugins", .type = FT_CUSTOM, .off = 0, .custom = conf__plugins},
};
static const schema_map root_schema = {root_fields, COUNT(root_fields), root_post};

/* ---- the walk ---------------------------------------------------------- */

/* Paths are for people reading errors; an absurdly long key is cut. */
static void path_append(char *buf, size_t size, size_t *at, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max)
        n = max;
    if (*at + n >= size)
        n = size - 1 - *at;
    memcpy(buf + *at, s, n);
    *at += n;
    buf[*at] = '\0';
}

static void path_join(char *buf, size_t size, const char *path, const char *key)
{
    size_t at = 0;
    buf[0] = '\0';
    path_append(buf, size, &at, path, size);
    if (path[0] != '\0')
        path_append(buf, size, &at, ".", 1);
    path_append(buf, size, &at, key, 200);
}

static void path_index(char *buf, size_t size, const char *path, size_t i)
{
    char idx[32];
    size_t at = 0;
    buf[0] = '\0';
    snprintf(idx, sizeof(idx), "[%zu]", i);
    path_append(buf, size, &at, path, size);
    path_append(buf, size, &at, idx, sizeof(idx));
}

void conf__format_size(uint64_t v, char *buf, size_t size)
{
    if (v != 0 && v % GiB == 0)
        snprintf(buf, size, "%lluGiB", (unsigned long long)(v / GiB));
    else if (v != 0 && v % MiB == 0)
        snprintf(buf, size, "%lluMiB", (unsigned long long)(v / MiB));
    else if (v != 0 && v % KiB == 0)
        snprintf(buf, size, "%lluKiB", (unsigned long long)(v / KiB));
    else
        snprintf(buf, size, "%llu", (unsigned long long)v);
}

static void store_uint(void *dst, size_t width, uint64_t v)
{
    switch (width) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(dst, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(dst, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(dst, &x, 4);
        break;
    }
    default:
        memcpy(dst, &v, 8);
        break;
    }
}

static const char *kind_name(const cnode *n)
{
    return n->kind == CNODE_MAP ? "a mapping" : n->kind == CNODE_SEQ ? "a sequence" : "a value";
}

static bool want_scalar(conf_walk *w, const cnode *v, const char *path, const char *what)
{
    if (v->kind == CNODE_SCALAR)
        return true;
    conf__err(w, v->line, path, "expected %s, got %s", what, kind_name(v));
    return false;
}

/* Closest of `n` candidates within an edit distance of 2, or NULL. */
static const char *suggest(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < n; i++) {
        size_t d = tern_edit_distance(word, cands[i], best_d);
        if (d < best_d) {
            best_d = d;
            best = cands[i];
        }
    }
    return best;
}

static void report_unknown(conf_walk *w, const cnode *k, const schema_map *s, const char *path)
{
    const char *cands[32];
    size_t n = 0;
    for (size_t i = 0; i < s->n && n < COUNT(cands); i++)
        cands[n++] = s->fields[i].key;
    const char *best = suggest(k->str, cands, n);
    char p[512];
    path_join(p, sizeof(p), path, k->str);
    if (best)
        conf__err(w, k->line, p, "unknown key (did you mean \"%s\"?)", best);
    else
        conf__err(w, k->line, p, "unknown key");
}

static void check_duplicates(conf_walk *w, const cnode *map, const char *path)
{
    for (const cnode *k = map->child; k; k = k->next) {
        for (const cnode *e = map->child; e != k; e = e->next) {
            if (strcmp(e->str, k->str) == 0) {
                char p[512];
                path_join(p, sizeof(p), path, k->str);
                conf__err(w, k->line, p, "duplicate key (first at line %u)", e->line);
                break;
            }
        }
    }
}

static bool parse_uint(const char *s, uint64_t *v_r)
{
    if (!isdigit((unsigned char)s[0]))
        return false;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *v_r = v;
    return true;
}

static void walk_map(conf_walk *w, const schema_map *s, const cnode *n, void *base,
                     const char *path);

static void bound_error(conf_walk *w, const field *f, const cnode *v, const char *path,
                        uint64_t val, bool below)
{
    char a[32], b[32];
    uint64_t lim = below ? f->min : f->max;
    if (f->type == FT_DURATION) {
        tern_format_duration(val, a, sizeof(a));
        tern_format_duration(lim, b, sizeof(b));
    } else if (f->type == FT_SIZE) {
        conf__format_size(val, a, sizeof(a));
        conf__format_size(lim, b, sizeof(b));
    } else {
        snprintf(a, sizeof(a), "%llu", (unsigned long long)val);
        snprintf(b, sizeof(b), "%llu", (unsigned long long)lim);
    }
    conf__err(w, v->line, path, "%s is %s the %s %s", a, below ? "below" : "above",
              below ? "minimum" : "maximum", b);
}

static void apply_enum(conf_walk *w, const field *f, const cnode *v, void *dst, const char *path)
{
    if (!want_scalar(w, v, path, "a name"))
        return;
    size_t n = 0;
    for (; f->names[n]; n++) {
        if (strcasecmp(v->str, f->names[n]) == 0) {
            store_uint(dst, f->width, n);
            conf__line_set(w, dst, v->line);
            return;
        }
    }
    char list[256] = "";
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", f->names[i]);
    }
    const char *best = suggest(v->str, f->names, n);
    if (best)
        conf__err(w, v->line, path, "\"%.64s\" is not one of %s (did you mean \"%s\"?)", v->str,
                  list, best);
    else
        conf__err(w, v->line, path, "\"%.64s\" is not one of %s", v->str, list);
}

static char *resolve_file(conf_walk *w, const char *s)
{
    if (s[0] == '/' || w->basedir == NULL)
        return conf__strdup(w, s);
    char *r = tern_arena_printf(&w->cfg->arena, "%s/%s", w->basedir, s);
    if (r == NULL)
        w->oom = true;
    return r;
}

/* A string value after its checks, in the arena; NULL when it failed. */
static char *take_string(conf_walk *w, const field *f, const cnode *v, const char *path)
{
    if (!want_scalar(w, v, path, "a string"))
        return NULL;
    if (v->is_null || v->len == 0) {
        conf__err(w, v->line, path, "must not be empty");
        return NULL;
    }
    char *s = (f->flags & FL_FILE) ? resolve_file(w, v->str) : conf__strdup(w, v->str);
    if (s == NULL)
        return NULL;
    if (f->flags & FL_LOWER)
        for (char *p = s; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    if (f->check) {
        const char *why = f->check(s);
        if (why) {
            conf__err(w, v->line, path, "\"%.64s\" %s", v->str, why);
            return NULL;
        }
    }
    return s;
}

static const char *open_relay_reason(const tern_cidr *c)
{
    if (c->family == AF_INET && c->prefix < 8)
        return "is wider than /8: relaying for that much of the Internet makes an open relay";
    if (c->family == AF_INET6 && c->prefix < 16)
        return "is wider than /16: relaying for that much of the Internet makes an open relay";
    return NULL;
}

static void apply_list(conf_walk *w, const field *f, const cnode *v, void *base, const char *path)
{
    void *dst = (char *)base + f->off;
    size_t *count = (size_t *)(void *)((char *)base + f->count_off);
    if (v->kind != CNODE_SEQ) {
        conf__err(w, v->line, path, "expected a list, got %s", kind_name(v));
        return;
    }
    if (v->n > f->max_items) {
        conf__err(w, v->line, path, "more than %zu entries", f->max_items);
        return;
    }
    if (v->n == 0)
        return;
    char p[512];
    size_t i = 0, kept = 0;
    if (f->type == FT_STRLIST) {
        char **arr = conf__alloc(w, v->n * sizeof(*arr));
        if (arr == NULL)
            return;
        for (const cnode *it = v->child; it; it = it->next, i++) {
            path_index(p, sizeof(p), path, i);
            char *s = take_string(w, f, it, p);
            if (s == NULL)
                continue;
            conf__line_set(w, &arr[kept], it->line);
            arr[kept++] = s;
        }
        memcpy(dst, &arr, sizeof(arr));
    } else {
        tern_cidr *arr = conf__alloc(w, v->n * sizeof(*arr));
        if (arr == NULL)
            return;
        for (const cnode *it = v->child; it; it = it->next, i++) {
            path_index(p, sizeof(p), path, i);
            if (!want_scalar(w, it, p, "a network"))
                continue;
            if (tern_cidr_parse(it->str, &arr[kept]) != 0) {
                conf__err(w, it->line, p, "\"%.64s\" is not a network (write e.g. 192.0.2.0/24, 2001:db8::/32)",
                          it->str);
                continue;
            }
            const char *why = (f->flags & FL_NO_OPEN_RELAY) ? open_relay_reason(&arr[kept]) : NULL;
            if (why) {
                conf__err(w, it->line, p, "\"%.64s\" %s", it->str, why);
                continue;
            }
            conf__line_set(w, &arr[kept], it->line);
            kept++;
        }
        memcpy(dst, &arr, sizeof(arr));
    }
    *count = kept;
}

static void apply_maplist(conf_walk *w, const field *f, const cnode *v, void *base,
                          const char *path)
{
    void *dst = (char *)base + f->off;
    size_t *count = (size_t *)(void *)((char *)base + f->count_off);
    bool named = f->type == FT_NAMEDMAP;
    if (v->kind != (named ? CNODE_MAP : CNODE_SEQ)) {
        conf__err(w, v->line, path, "expected %s, got %s", named ? "a mapping of names" : "a list",
                  kind_name(v));
        return;
    }
    if (v->n > f->max_items) {
        conf__err(w, v->line, path, "more than %zu entries", f->max_items);
        return;
    }
    if (v->n < f->min_items) {
        conf__err(w, v->line, path, "at least %zu entr%s required", f->min_items,
                  f->min_items == 1 ? "y is" : "ies are");
        return;
    }
    if (v->n == 0)
        return;
    if (named)
        check_duplicates(w, v, path);
    char *arr = conf__alloc(w, v->n * f->elem_size);
    if (arr == NULL)
        return;
    char p[512];
    size_t i = 0;
    for (const cnode *it = v->child; it; it = it->next, i++) {
        char *elem = arr + i * f->elem_size;
        if (named) {
            path_join(p, sizeof(p), path, it->str);
            char *name = conf__strdup(w, it->str);
            memcpy(elem + f->name_off, &name, sizeof(name));
            conf__line_set(w, elem + f->name_off, it->line);
            const char *why = it->len == 0 ? "is empty" : check_ident(it->str);
            if (why)
                conf__err(w, it->line, p, "the name %s", why);
            const cnode *val = it->value;
            if (val->is_null || val->kind != CNODE_MAP) {
                conf__err(w, val->line, p, "expected a mapping, got %s",
                          val->is_null ? "nothing" : kind_name(val));
                walk_map(w, f->sub, NULL, elem, p);
                continue;
            }
            walk_map(w, f->sub, val, elem, p);
        } else {
            path_index(p, sizeof(p), path, i);
            if (it->kind != CNODE_MAP) {
                conf__err(w, it->line, p, "expected a mapping, got %s", kind_name(it));
                walk_map(w, f->sub, NULL, elem, p);
                continue;
            }
            walk_map(w, f->sub, it, elem, p);
        }
    }
    memcpy(dst, &arr, sizeof(arr));
    *count = v->n;
}

/* The defaults: what a field holds when its key is absent or null. */
static void apply_default(conf_walk *w, const field *f, void *base, const char *path)
{
    void *dst = (char *)base + f->off;
    switch (f->type) {
    case FT_STRING: {
        char *s = f->sdef ? conf__strdup(w, f->sdef) : NULL;
        memcpy(dst, &s, sizeof(s));
        break;
    }
    case FT_BOOL: {
        bool b = f->def != 0;
        memcpy(dst, &b, sizeof(b));
        break;
    }
    case FT_UINT:
    case FT_SIZE:
    case FT_ENUM:
        store_uint(dst, f->width, f->def);
        break;
    case FT_DURATION:
        store_uint(dst, f->width, f->def * f->scale);
        break;
    case FT_FLOAT:
        memcpy(dst, &f->fdef, sizeof(double));
        break;
    case FT_MAP:
        walk_map(w, f->sub, NULL, dst, path);
        break;
    case FT_CUSTOM:
        f->custom(w, NULL, dst, path);
        break;
    case FT_STRLIST:
    case FT_CIDRLIST:
    case FT_MAPLIST:
    case FT_NAMEDMAP:
        break; /* calloc'd: NULL and 0 */
    }
}

static void apply_field(conf_walk *w, const field *f, const cnode *v, void *base,
                        const char *path, unsigned map_line, bool map_present)
{
    void *dst = (char *)base + f->off;
    if (f->type == FT_MAP || f->type == FT_CUSTOM) {
        /* They apply their own defaults and know what null means. */
        if (v == NULL) {
            apply_default(w, f, base, path);
            return;
        }
    } else {
        apply_default(w, f, base, path);
    }
    if (v == NULL || (v->is_null && f->type != FT_MAP && f->type != FT_CUSTOM)) {
        if ((f->flags & FL_REQUIRED) && map_present)
            conf__err(w, v ? v->line : map_line, path, "required");
        else if ((f->type == FT_MAPLIST || f->type == FT_NAMEDMAP) && f->min_items > 0)
            conf__err(w, v ? v->line : map_line, path, "at least %zu entr%s required",
                      f->min_items, f->min_items == 1 ? "y is" : "ies are");
        return;
    }
    /* Mappings and custom fields may sit at offset 0 of a struct they share
     * with other fields; they record their own lines. */
    if (f->type != FT_MAP && f->type != FT_CUSTOM)
        conf__line_set(w, dst, v->line);
    uint64_t u;
    switch (f->type) {
    case FT_STRING: {
        char *s = take_string(w, f, v, path);
        if (s)
            memcpy(dst, &s, sizeof(s));
        break;
    }
    case FT_BOOL: {
        if (!want_scalar(w, v, path, "true or false"))
            break;
        static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
        bool b, ok = false;
        for (size_t i = 0; i < 3 && !ok; i++) {
            if (strcasecmp(v->str, yes[i]) == 0)
                ok = b = true;
            else if (strcasecmp(v->str, no[i]) == 0)
                ok = true, b = false;
        }
        if (!ok) {
            conf__err(w, v->line, path, "expected true or false, got \"%.64s\"", v->str);
            break;
        }
        memcpy(dst, &b, sizeof(b));
        break;
    }
    case FT_UINT:
    case FT_DURATION:
    case FT_SIZE: {
        if (!want_scalar(w, v, path, "a value"))
            break;
        int rc;
        if (f->type == FT_UINT)
            rc = parse_uint(v->str, &u) ? 0 : -1;
        else if (f->type == FT_DURATION)
            rc = tern_parse_duration_ms(v->str, &u);
        else
            rc = tern_parse_size(v->str, &u);
        if (rc != 0) {
            if (f->type == FT_UINT)
                conf__err(w, v->line, path, "expected a whole number, got \"%.64s\"", v->str);
            else if (f->type == FT_DURATION)
                conf__err(w, v->line, path,
                          "\"%.64s\" is not a duration (write e.g. 500ms, 30s, 5m, 1h, 2d)", v->str);
            else
                conf__err(w, v->line, path,
                          "\"%.64s\" is not a size (write e.g. 512, 64KiB, 10MiB, 2GiB)", v->str);
            break;
        }
        if (u < f->min) {
            bound_error(w, f, v, path, u, true);
            break;
        }
        if (u > f->max) {
            bound_error(w, f, v, path, u, false);
            break;
        }
        store_uint(dst, f->width, f->type == FT_DURATION ? u * f->scale : u);
        break;
    }
    case FT_FLOAT: {
        if (!want_scalar(w, v, path, "a number"))
            break;
        char *end;
        errno = 0;
        double d = strtod(v->str, &end);
        /* strtod also takes "inf", "nan" and hex; a config means decimals. */
        bool plain = true;
        for (const char *p = v->str; *p; p++)
            if (!isdigit((unsigned char)*p) && *p != '.' && *p != '-' && *p != '+' && *p != 'e' &&
                *p != 'E')
                plain = false;
        if (!plain || v->len == 0 || *end != '\0' || errno != 0 || !isfinite(d)) {
            conf__err(w, v->line, path, "expected a number, got \"%.64s\"", v->str);
            break;
        }
        if (d < f->fmin || d > f->fmax) {
            conf__err(w, v->line, path, "%g is %s the %s %g", d, d < f->fmin ? "below" : "above",
                      d < f->fmin ? "minimum" : "maximum", d < f->fmin ? f->fmin : f->fmax);
            break;
        }
        memcpy(dst, &d, sizeof(d));
        break;
    }
    case FT_ENUM:
        apply_enum(w, f, v, dst, path);
        break;
    case FT_STRLIST:
    case FT_CIDRLIST:
        apply_list(w, f, v, base, path);
        break;
    case FT_MAP:
        if (v->is_null) {
            walk_map(w, f->sub, NULL, dst, path);
        } else if (v->kind != CNODE_MAP) {
            conf__err(w, v->line, path, "expected a mapping, got %s", kind_name(v));
        } else {
            walk_map(w, f->sub, v, dst, path);
        }
        break;
    case FT_MAPLIST:
    case FT_NAMEDMAP:
        apply_maplist(w, f, v, base, path);
        break;
    case FT_CUSTOM:
        f->custom(w, v, dst, path);
        break;
    }
}

static void walk_map(conf_walk *w, const schema_map *s, const cnode *n, void *base,
                     const char *path)
{
    char p[512];
    if (n != NULL && n->kind != CNODE_MAP) {
        conf__err(w, n->line, path[0] ? path : "document", "expected a mapping, got %s",
                  kind_name(n));
        n = NULL;
    }
    if (n != NULL) {
        check_duplicates(w, n, path);
        for (const cnode *k = n->child; k; k = k->next) {
            bool known = false;
            for (size_t i = 0; i < s->n && !known; i++)
                known = strcmp(k->str, s->fields[i].key) == 0;
            if (!known)
                report_unknown(w, k, s, path);
        }
    }
    for (size_t i = 0; i < s->n; i++) {
        const field *f = &s->fields[i];
        path_join(p, sizeof(p), path, f->key);
        apply_field(w, f, conf__map_get(n, f->key), base, p, n ? n->line : 0, n != NULL);
    }
    if (s->post)
        s->post(w, n, base, path);
}

static void listener_tls(conf_walk *w, const cnode *n, void *dst, const char *path)
{
    /* `tls: starttls` is shorthand for `tls: {mode: starttls}`. */
    if (n == NULL || n->is_null)
        return;
    if (n->kind == CNODE_MAP) {
        walk_map(w, &listener_tls_schema, n, dst, path);
        return;
    }
    if (n->kind != CNODE_SCALAR) {
        conf__err(w, n->line, path, "expected none, starttls, implicit or a mapping, got %s",
                  kind_name(n));
        return;
    }
    apply_enum(w, &listener_tls_scalar, n, (char *)dst + listener_tls_scalar.off, path);
}

void conf__apply_schema(conf_walk *w, const cnode *root)
{
    walk_map(w, &root_schema, root, w->cfg, "");
}
