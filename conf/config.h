/* The configuration as typed structs: one immutable, reference-counted
 * snapshot per load. Everything in it lives in the snapshot's arena. Sessions
 * hold a reference to the snapshot they started with; SIGHUP builds a new one
 * and swaps it in only if it validates. Input: the YAML file (untrusted text,
 * checked completely by tern_config_load before any value is used). */
#ifndef TERN_CONFIG_H
#define TERN_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arena.h"
#include "lib/net.h"

typedef enum {
    TERN_PROTO_SMTP = 0,   /* inbound MX */
    TERN_PROTO_SUBMISSION, /* 587/465: AUTH required before relaying */
    TERN_PROTO_IMAP,       /* later issues */
    TERN_PROTO_POP3,
    TERN_PROTO_HTTP,
} tern_protocol;

typedef enum { TERN_TLS_NONE = 0, TERN_TLS_STARTTLS, TERN_TLS_IMPLICIT } tern_tls_mode;
typedef enum { TERN_CLIENT_CERT_NONE = 0, TERN_CLIENT_CERT_OPTIONAL, TERN_CLIENT_CERT_REQUIRED } tern_client_cert;
typedef enum { TERN_BARE_LF_REJECT = 0, TERN_BARE_LF_NORMALIZE } tern_bare_lf;
typedef enum { TERN_AF_ANY = 0, TERN_AF_IPV4, TERN_AF_IPV6 } tern_addr_family;

typedef struct tern_listener_conf {
    char *name;               /* required, unique */
    tern_protocol protocol;   /* required */
    char *address;            /* default "0.0.0.0"; "::" and IPv6 literals allowed */
    uint16_t port;            /* required, 1..65535 */
    uint64_t timeout_ms;      /* idle timeout; default 5m */
    bool reuse;               /* SO_REUSEPORT: one socket per worker; default false */
    uint32_t workers;         /* 0: all server workers; capped at the core count */
    uint32_t buffer_size;     /* read buffer; default 9000, bounds 512..1MiB */
    tern_tls_mode tls;        /* default none */
    uint64_t max_message_size;/* 0: inherit smtp.max_message_size */
    char *pipeline;           /* mailet processor; default "root" */
    bool auth;                /* offers credentials (SMTP AUTH). default: true for
                                 submission, false for smtp */
    bool allow_plaintext_auth;/* default false: see validation rules */
    char *client_ca;          /* PEM file of CAs for client certificates (mTLS) */
    tern_client_cert client_cert; /* default none; optional/required need client_ca */
    struct {                  /* `auth_static:`: one fixed login on this listener (auth/static) */
        char *username;       /* required when the section exists; NULL: no static login */
        char *password;       /* a credential list: any auth/hash.h format or {PLAIN}text */
    } auth_static;
} tern_listener_conf;

typedef struct tern_cert_conf {
    char *name;         /* the key under tls.certificates */
    char *cert;         /* PEM chain file, readable, parses */
    char *key;          /* PEM key file, readable, matches cert */
    char **subjects;    /* NULL/0: read from the certificate's SANs, CN fallback */
    size_t n_subjects;
    bool is_default;    /* `default: true`; at most one */
} tern_cert_conf;

typedef struct tern_tls_conf {
    tern_cert_conf *certs;
    size_t n_certs;
    int min_version;               /* 12 ("1.2"); "1.3" is refused: mbedTLS 2.28 */
    bool ignore_client_order;      /* default false */
    char **disable_cipher_suites;  /* IANA or mbedTLS names; all disabled is an error */
    size_t n_disable_cipher_suites;
    int *cipher_suites;            /* resolved: mbedTLS ids still enabled, in mbedTLS
                                      preference order, 0-terminated; never empty */
} tern_tls_conf;

typedef struct tern_server_conf {
    char *hostname;            /* default: the system's FQDN */
    uint32_t workers;          /* 0: one per core; bounds 0..256 */
    uint64_t shutdown_grace_ms;/* default 30s */
    uint32_t max_connections;  /* default 10000; effective = min(this, RLIMIT_NOFILE soft - reserve) */
    char *user;                /* drop to after binding (only when started as root) */
    char *group;
    char *log_level;           /* "info" or "info,smtp=debug"; TERN_LOG overrides */
    char *state_dir;           /* default "/var/lib/tern"; spool lives in state_dir/spool */
    char *control_socket;      /* Unix socket for ternctl queue; default state_dir/control.sock */
} tern_server_conf;

typedef struct tern_limits_conf {
    uint32_t max_connections_per_ip; /* default 50; 0 = unlimited */
    double connection_rate_per_ip;   /* new connections per second per IP, token bucket; default 10; 0 = unlimited */
    uint32_t connection_burst_per_ip;/* bucket size; default 20 */
} tern_limits_conf;

/* smtp.send_as: an authenticated account may also send as these
 * addresses (submission's sender check, RFC 6409 6.1). */
typedef struct tern_send_as_conf {
    char *account;      /* the login (an account address), lowercased */
    char **addresses;   /* exact addresses, or "@domain" for every address of it */
    size_t n_addresses;
} tern_send_as_conf;

typedef struct tern_smtp_conf {
    uint32_t max_command_line;   /* default 512 (RFC 5321 4.5.3.1.4); bounds 512..64KiB */
    uint32_t max_text_line;      /* default 1000 (RFC 5321 4.5.3.1.6), CRLF included; bounds 1000..1MiB */
    uint32_t max_recipients;     /* default 100; bounds 1..100000 */
    uint32_t max_errors;         /* bad commands before the session is dropped; default 10 */
    uint64_t max_message_size;   /* default 50MiB; advertised in SIZE */
    uint64_t memory_threshold;   /* body spills to a temp file above it; default 1MiB */
    uint32_t max_hops;           /* Received headers; default 50 */
    bool vrfy;                   /* default false: VRFY answers 252 */
    bool verify_recipients;      /* default true: RCPT to an unknown address of a local
                                    domain gets 550 5.1.1 (postmaster is always accepted) */
    tern_bare_lf bare_lf;        /* default reject */
    /* RFC 5321 4.5.3.2 timeouts */
    uint64_t greeting_timeout_ms;   /* default 5m (client waiting for us is not our timer; used for our own inactivity before EHLO) */
    uint64_t command_timeout_ms;    /* default 5m */
    uint64_t data_block_timeout_ms; /* default 3m */
    uint64_t data_done_timeout_ms;  /* default 10m: how long root processing may take before we 451 */
    tern_cidr *relay_networks;      /* clients allowed to relay without AUTH; default none */
    size_t n_relay_networks;
    tern_send_as_conf *send_as;     /* grants beyond the account's own addresses and aliases */
    size_t n_send_as;
} tern_smtp_conf;

/* pop3: what the POP3 session enforces and advertises (RFC 1939, RFC 2449). */
typedef enum {
    TERN_POP3_DELETE_EXPUNGE = 0, /* DELE'd messages are expunged at QUIT */
    TERN_POP3_DELETE_TRASH,       /* moved to the account's Trash mailbox instead */
    TERN_POP3_DELETE_KEEP,        /* flagged \Deleted and \Seen, left for IMAP to expunge;
                                     hidden from later POP3 sessions */
} tern_pop3_delete_policy;

typedef struct tern_pop3_conf {
    uint32_t max_command_line;   /* default 512 (RFC 2449 4 says 255); bounds 255..64KiB */
    uint32_t max_errors;         /* bad commands before the session is dropped; default 10 */
    uint32_t max_messages;       /* a maildrop shows at most this many (oldest first); default 100000 */
    tern_pop3_delete_policy delete_policy; /* default expunge */
    uint64_t login_delay_ms;     /* LOGIN-DELAY (RFC 2449 6.5), seconds on the wire; enforced per
                                    account in this process; default 0 (not advertised) */
    char *expire;                /* EXPIRE (RFC 2449 6.7) advertised: "never" (default) or days */
    uint64_t idle_timeout_ms;    /* RFC 1939 3 autologout; default 10m, at least 10m by the RFC */
    bool apop;                   /* offer APOP (needs {PLAIN} credentials); default false */
} tern_pop3_conf;
typedef struct tern_imap_conf {
    uint32_t max_line;           /* one command line, CRLF included; default 64KiB; bounds 1KiB..1MiB */
    uint64_t max_literal;        /* one literal (APPEND message): APPENDLIMIT; default 50MiB */
    uint32_t max_depth;          /* nested lists / search parentheses; default 32; bounds 4..256 */
    uint32_t max_errors;         /* BAD commands before BYE; default 10 */
    uint64_t idle_timeout_ms;    /* IDLE without a word from the client; default 30m */
    uint32_t fetch_batch;        /* messages asked of the store per FETCH step; default 256 */
} tern_imap_conf;

typedef struct tern_spool_conf {
    uint64_t segment_size;       /* spool segment file size before rotation; default 64MiB */
    uint64_t group_commit_delay_us; /* max wait to gather a batch; default 0 (batch what is pending) */
    uint32_t group_commit_max;   /* max messages per fsync; default 256 */
} tern_spool_conf;

typedef enum { TERN_STORAGE_LOCAL = 0, TERN_STORAGE_POSTGRES } tern_storage_backend;

typedef struct tern_storage_conf {
    tern_storage_backend backend;  /* default local */
    uint64_t changes_retention_ms; /* expunge records kept for QRESYNC/JMAP; default 30d */
    uint64_t default_quota_bytes;  /* for new accounts; 0 = unlimited (default) */
    uint32_t default_quota_messages; /* 0 = unlimited (default) */
} tern_storage_conf;

typedef struct tern_local_conf {
    char *path;                    /* default state_dir/mail */
} tern_local_conf;

typedef struct tern_postgres_conf {
    bool present;                  /* the `postgres:` section exists */
    char *conninfo;                /* libpq connection string; required when present */
    uint32_t pool_size;            /* default 8 */
    char *blob_dir;                /* absolute; message bodies as files there; NULL: in the
                                      database (restart-only) */
} tern_postgres_conf;

/* auth: which backends answer for users, in order, and the login limiter. */
typedef struct tern_auth_conf {
    char **backends;           /* "internal", "file"; default [internal]; no duplicates */
    size_t n_backends;
    uint32_t max_failures;     /* failures per IP or per account before a lockout; default 10 */
    uint64_t lockout_ms;       /* how long a locked IP or account is refused; default 15m */
    uint64_t failure_delay_ms; /* delay after the first failure, doubled per failure; default 250ms */
    uint64_t max_delay_ms;     /* cap of that delay; default 5s */
} tern_auth_conf;

typedef struct tern_auth_file_conf {
    bool present;              /* the `auth_file:` section exists */
    char *path;                /* passwd-style file; required when present */
    char *default_domain;      /* appended to users written without '@' (file and login) */
} tern_auth_file_conf;

typedef struct tern_auth_internal_conf {
    bool scram;                /* every account's password was set with SCRAM keys (ternctl
                                  does so): SCRAM-SHA-256 may be offered; default false */
} tern_auth_internal_conf;

typedef enum { TERN_LDAP_MODE_BIND = 0, TERN_LDAP_MODE_SEARCH } tern_ldap_mode;

/* auth_ldap: the `ldap` backend. %u (user@domain), %n (local part), %d
 * (domain) in filter and dn_template, escaped for a filter or a DN. */
typedef struct tern_auth_ldap_conf {
    bool present;              /* the `auth_ldap:` section exists */
    char *uri;                 /* ldap://host[:port] or ldaps://; required when present */
    bool starttls;             /* ldap:// upgraded with StartTLS; default false */
    char *ca_file;             /* CA certificates for the server's; default: system's */
    char *bind_dn;             /* service account for searches; default: anonymous */
    char *bind_password;
    char *base;                /* search base; required in search mode */
    char *filter;              /* default "(mail=%u)" */
    tern_ldap_mode mode;       /* bind (dn_template) or search; default bind */
    char *dn_template;         /* bind mode: e.g. "uid=%n,ou=people,dc=example,dc=test" */
    uint64_t timeout_ms;       /* per operation, connect included; default 5s */
} tern_auth_ldap_conf;

typedef struct tern_auth_sql_conf {
    bool present;              /* the `auth_sql:` section exists */
    char *conninfo;            /* libpq connection string; default postgres.conninfo */
    char *password_query;      /* $1 user, $2 local part, $3 domain -> password[, account] */
    char *user_query;          /* USER_EXISTS; default: password_query finds a row */
    uint32_t pool_size;        /* connections per loop; default 2 */
    uint64_t timeout_ms;       /* connect or query deadline; default 10s */
    bool scram;                /* every row holds {SCRAM-SHA-256} keys; default false */
} tern_auth_sql_conf;

/* auth_oauth2: JWT access tokens checked locally (OAUTHBEARER, XOAUTH2). */
typedef struct tern_auth_oauth2_conf {
    bool present;              /* the `auth_oauth2:` section exists */
    char *jwks_file;           /* RFC 7517 key set, read at start and on SIGHUP; required */
    char *issuer;              /* "iss" must equal it; required */
    char *audience;            /* "aud" must hold it; required */
    char *account_claim;       /* claim naming the account; default "email" */
    uint64_t leeway_ms;        /* clock skew allowed on exp, nbf, iat; default 60s */
    char **algorithms;         /* of RS256, ES256, EdDSA; default all three */
    size_t n_algorithms;
    /* auth_oauth2.introspection: RFC 7662, for tokens not checked locally. */
    struct tern_auth_introspection_conf {
        bool present;              /* the `introspection:` mapping exists */
        char *url;                 /* the endpoint; https unless the host is loopback */
        char *client_id;           /* HTTP Basic client authentication (RFC 7662 2.1) */
        char *client_secret;       /* given, or read from client_secret_file by validate.c */
        char *client_secret_file;
        char *ca_file;             /* CAs for https; NULL: the system bundle */
        uint64_t timeout_ms;       /* one request, lookup to last byte; default 10s */
        uint64_t cache_ttl_ms;     /* positive answers, capped by the token's exp; default 5m */
        uint64_t negative_cache_ttl_ms; /* inactive answers; default 30s */
        char *account_claim;       /* member naming the account; default "username" */
        bool always;               /* introspect JWTs too; default false */
    } introspection;
} tern_auth_oauth2_conf;

/* ---- mailets: processors and plugins (conf/processors.c) ---------------- */

/* A step parameter: a scalar (value) or a list of scalars (list). */
typedef struct tern_param_conf {
    char *key;
    char *value;
    char **list;
    size_t n_list;
    unsigned line;
} tern_param_conf;

typedef enum { TERN_MATCH_NAME = 0, TERN_MATCH_AND, TERN_MATCH_OR, TERN_MATCH_NOT } tern_match_op;

/* `match: Name` or `match: "Name=condition"`, or the compositions
 * `{and: [...]}`, `{or: [...]}`, `{not: M}`. */
typedef struct tern_match_conf {
    tern_match_op op;
    char *name;       /* NAME */
    char *condition;  /* NAME: text after '=', or NULL */
    struct tern_match_conf *children;
    size_t n_children;
    unsigned line;
} tern_match_conf;

typedef struct tern_step_conf {
    tern_match_conf match;
    char *mailet;
    char *on_error;   /* NULL: `error` processor; "ignore", "retry" or a processor name */
    tern_param_conf *params;
    size_t n_params;
    unsigned line;
} tern_step_conf;

typedef struct tern_processor_conf {
    char *name;
    tern_step_conf *steps;
    size_t n_steps;
    unsigned line;
} tern_processor_conf;

typedef struct tern_plugin_conf {
    char *name;       /* the module name it must export */
    char *path;       /* shared object, absolute or next to the config */
    tern_param_conf *params;
    size_t n_params;
    unsigned line;
} tern_plugin_conf;

typedef struct tern_mailets_conf {
    uint64_t root_deadline_ms;  /* in-session entry processor budget; default 30s */
    uint64_t retry_min_ms;      /* first retry of a tempfailed mail; default 1m */
    uint64_t retry_max_ms;      /* longest wait between retries; default 1h */
    uint64_t max_lifetime_ms;   /* a mail still tempfailing after this is bounced; 5d */
    uint32_t max_steps;         /* steps one mail may run (loop guard); default 1000 */
    uint32_t max_active;        /* mails in memory per worker loop; more wait; default 256 */
    char *repository_dir;       /* ToRepository's files; default STATE_DIR/repositories */
    bool default_processors;    /* set when `processors:` was absent (shipped chain) */
} tern_mailets_conf;

/* dns: the resolver (lib/dns.h), one per worker loop, each with its own
 * cache. Used by remote delivery (MX, DANE), SPF/DKIM/DMARC and FCrDNS. */
typedef struct tern_dns_conf {
    char **resolvers;          /* "IP" or "IP@PORT" forwarders; NULL/0 ("system"):
                                  the servers in /etc/resolv.conf */
    size_t n_resolvers;
    bool dnssec;               /* validate; default true */
    char *trust_anchor_file;   /* DS/DNSKEY records (zone-file form); default none:
                                  nothing comes back secure, so DANE cannot apply */
    uint64_t timeout_ms;       /* per query; default 10s, bounds 100ms..5m */
    uint64_t cache_size;       /* bytes per worker; default 8MiB, bounds 64KiB..1GiB */
    uint64_t cache_max_ttl_ms; /* default 1d, bounds 1s..7d */
    char **unblock_zones;      /* zones libunbound would answer itself (RFC 6761
                                  test., RFC 6303 private reverse zones) that the
                                  resolvers serve instead; default none */
    size_t n_unblock_zones;
} tern_dns_conf;

typedef enum {
    TERN_SMARTHOST_TLS_OPPORTUNISTIC = 0,
    TERN_SMARTHOST_TLS_REQUIRED, /* encrypted, certificate not checked */
    TERN_SMARTHOST_TLS_VERIFY,   /* encrypted, certificate verified for the smarthost's name */
} tern_smarthost_tls;

/* queue.source_addresses: a local address outbound connections come from,
 * and the HELO name that goes with it. */
typedef struct tern_source_address_conf {
    char *address;             /* IPv4 or IPv6 literal; required */
    char *helo;                /* NULL: server.hostname */
} tern_source_address_conf;

/* queue: the remote queue manager (server/queue.c). */
typedef struct tern_queue_conf {
    bool hold;                  /* deliver nothing: mail stays queued (maintenance, tests) */
    uint16_t port;              /* destination port; default 25 (tests point it elsewhere) */
    char *smarthost;            /* "host" or "host:port": all remote mail goes there; NULL: MX */
    uint32_t max_concurrency;   /* deliveries in flight; default 100 */
    uint32_t per_destination;   /* deliveries in flight per domain; default 10 */
    uint64_t retry_min_ms;      /* first retry; default 5m (doubles) */
    uint64_t retry_max_ms;      /* longest wait; default 1h */
    uint64_t max_lifetime_ms;   /* then bounced; default 5d */
    uint64_t connect_timeout_ms;/* default 30s */
    uint64_t command_timeout_ms;/* each reply; default 5m */
    uint64_t data_timeout_ms;   /* the reply to the message's end; default 10m */
    /* The SMTP client's connection pool and extensions (smtp_pool.c). */
    uint32_t connection_reuse_limit;   /* messages per connection; 1: no reuse; default 100 */
    uint64_t connection_idle_timeout_ms; /* an idle kept connection QUITs; default 5s */
    uint32_t max_idle_connections;     /* kept idle at once; default 50 */
    bool use_chunking;                 /* BDAT when offered; default true */
    /* AUTH to the smarthost (smtp_client.c); username NULL: none. The
     * password comes from `password` or is read from `password_file` at
     * load (validate.c); it is never logged. */
    struct {
        char *username;
        char *password;
        char *password_file;
        bool allow_plaintext;          /* without TLS (tests on loopback only) */
    } smarthost_auth;
    tern_smarthost_tls smarthost_tls;  /* default opportunistic */
    tern_source_address_conf *source_addresses; /* round robin per family; none: the kernel picks */
    size_t n_source_addresses;
    bool mta_sts;               /* MTA-STS (RFC 8461) on MX delivery; default on */
    char *mta_sts_ca_file;      /* CAs for policy fetch and enforced MX; NULL: system bundle */
    uint16_t mta_sts_port;      /* of mta-sts.<domain>; default 443 (tests point it elsewhere) */
    char *smarthost_ca_file;    /* smarthost_tls verify: the CAs; NULL: the system bundle */
    char *smarthost_tls_name;   /* the name its certificate must carry; NULL: the smarthost host */
    /* Circuit breaker per destination address (server/queue.c). */
    uint32_t host_down_threshold;  /* consecutive connection failures; default 5 */
    uint64_t host_down_cooldown_ms;/* skipped that long, then one probe; default 30s */
    uint32_t connect_retries;      /* more connects to one address before the next; default 0 */
    uint32_t backend_connect_retries; /* the name for connect_retries (validate copies it) */
    uint64_t delay_warning_ms;     /* NOTIFY=DELAY recipients still deferred then: one "delayed"
                                      DSN; default 4h */
    tern_addr_family address_family; /* which MX addresses to use; default any (AAAA and A,
                                        interleaved, IPv6 first) */
    bool dane;                  /* DANE (RFC 7672) for hosts with secure TLSA; default on */
} tern_queue_conf;

typedef struct tern_config {
    atomic_int refs;
    tern_arena arena;
    char *path;        /* file it was loaded from */
    uint64_t generation; /* increments per successful load in this process */

    tern_server_conf server;
    tern_listener_conf *listeners;
    size_t n_listeners;
    tern_tls_conf tls;
    tern_smtp_conf smtp;
    tern_pop3_conf pop3;
    tern_limits_conf limits;
    tern_spool_conf spool;
    char **domains;     /* local domains: mail for them is accepted; lowercase */
    size_t n_domains;
    tern_storage_conf storage;
    tern_local_conf local;
    tern_postgres_conf postgres;
    tern_auth_conf auth;
    tern_auth_file_conf auth_file;
    tern_auth_oauth2_conf auth_oauth2;
    tern_auth_internal_conf auth_internal;
    tern_imap_conf imap;
    tern_auth_ldap_conf auth_ldap;
    tern_auth_sql_conf auth_sql;
    tern_mailets_conf mailets;
    tern_processor_conf *processors; /* never empty after load: the shipped chain by default */
    size_t n_processors;
    tern_plugin_conf *plugins;
    size_t n_plugins;
    tern_dns_conf dns;
    tern_queue_conf queue;
} tern_config;

/* Collected validation errors: each "path: message". */
typedef struct tern_config_errors {
    char **items;
    size_t n;
    size_t cap;
} tern_config_errors;

void tern_config_errors_init(tern_config_errors *e);
void tern_config_errors_add(tern_config_errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void tern_config_errors_free(tern_config_errors *e);

/* Loads and validates completely. On any error returns NULL with every
 * error in `errs` (all of them, not only the first). The returned snapshot
 * has one reference. `ncpu` caps listener workers (pass 0 to query). */
tern_config *tern_config_load(const char *path, tern_config_errors *errs);
/* Same, from a string (tests, fuzzing); `name` is used in messages. File
 * checks (certificates) still read the files the text names. */
tern_config *tern_config_load_string(const char *text, size_t len, const char *name,
                                     tern_config_errors *errs);

tern_config *tern_config_ref(tern_config *c);
void tern_config_unref(tern_config *c);

/* Helpers used across modules. */
const char *tern_protocol_name(tern_protocol p);
bool tern_config_is_local_domain(const tern_config *c, const char *domain, size_t len);
/* The processor named `name`, or NULL. */
const tern_processor_conf *tern_config_processor(const tern_config *c, const char *name);
/* Effective worker count for the server (resolves 0 to the core count). */
uint32_t tern_config_workers(const tern_config *c);

#endif
