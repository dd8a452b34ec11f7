/* tern/mailet.h: the public, versioned ABI between Tern's mailet engine and
 * the matchers and mailets it runs, builtin or loaded from a shared object.
 * This is the only header a plugin includes; a plugin never links against
 * ternd's symbols: everything it may do goes through the host table it is
 * given at init. Input trusted by the engine: nothing from a plugin's
 * return values is taken on faith (verdicts are range-checked, strings are
 * copied and bounded).
 *
 * A plugin exports one symbol, TERN_MAILET_SYMBOL, a `const
 * tern_mailet_module` whose `abi_version` must equal the engine's major
 * version and whose `struct_size` tells which fields exist: the engine
 * reads no field past it, so a module built against an older minor version
 * keeps working. Fields are only ever added at the end, before `spare`.
 *
 * Model (Apache James style). A mail is an envelope (sender, recipients),
 * the message (header fields and body) and attributes (typed key/values that
 * travel with it from mailet to mailet). Processors are ordered lists of
 * (matcher, mailet) steps. The matcher picks a subset of the recipients;
 * when it picks some but not all, the engine splits the mail: the matched
 * copy goes through the mailet, the rest go on down the list unchanged.
 * The mailet then returns a verdict: continue with the next step, go to
 * another processor, finish (the mail's journey ends; recipients not
 * delivered by the mailet are dropped, on purpose), reject or tempfail (in
 * the SMTP session these become the reply; after it, a reject goes to the
 * `bounces` processor and a tempfail is retried later), or PENDING for an
 * asynchronous mailet that will call host->resume() later.
 *
 * Threads. A mail runs on one event loop thread at a time. Matchers and
 * mailets must not block: use host->call_async() to run blocking work on a
 * pool thread, then resume. Init and deinit run on a configuration thread
 * (not a loop); state set up at init is shared by every loop and must be
 * read-only or internally synchronised afterwards. */
#ifndef TERN_MAILET_H
#define TERN_MAILET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_MAILET_ABI_VERSION 1u
#define TERN_MAILET_SYMBOL "tern_mailet_module_v1"

typedef struct tern_mail tern_mail; /* opaque */

/* What a module is: a matcher, a mailet, or both (then the YAML picks the
 * role by where its name appears). */
#define TERN_MAILET_KIND_MATCHER 0x1u
#define TERN_MAILET_KIND_MAILET 0x2u

typedef enum tern_mailet_verdict {
    TERN_MAILET_CONTINUE = 0, /* next step in this processor */
    TERN_MAILET_GOTO = 1,     /* to result.processor, from its first step */
    TERN_MAILET_FINISH = 2,   /* done: the mail goes nowhere else */
    TERN_MAILET_REJECT = 3,   /* permanent failure: result.code 5xx + text */
    TERN_MAILET_TEMPFAIL = 4, /* temporary failure: result.code 4xx + text */
    TERN_MAILET_ERROR = 5,    /* the mailet failed: the step's on_error decides */
    TERN_MAILET_PENDING = 6,  /* asynchronous: host->resume() will follow */
} tern_mailet_verdict;

typedef struct tern_mailet_result {
    const char *processor; /* GOTO: target processor (copied by the engine) */
    int code;              /* REJECT/TEMPFAIL: SMTP reply code; 0 = 550/451 */
    const char *enhanced;  /* "5.7.1"; NULL = derived from code */
    const char *text;      /* human text, one line; copied by the engine */
} tern_mailet_result;

/* Parameters from the YAML step (every key but match/mailet/on_error).
 * A scalar has `value`; a list has `list`/`n_list` (value NULL). For a
 * matcher, the text after '=' in "Name=condition" is the parameter
 * "condition". */
typedef struct tern_mailet_param {
    const char *key;
    const char *value;
    const char *const *list;
    size_t n_list;
} tern_mailet_param;

typedef struct tern_mailet_params {
    const tern_mailet_param *items;
    size_t n;
} tern_mailet_params;

typedef enum tern_mailet_log_level {
    TERN_MAILET_LOG_ERROR = 0,
    TERN_MAILET_LOG_WARN = 1,
    TERN_MAILET_LOG_INFO = 2,
    TERN_MAILET_LOG_DEBUG = 3,
} tern_mailet_log_level;

typedef void (*tern_mailet_work_fn)(void *arg);          /* on a pool thread */
typedef void (*tern_mailet_done_fn)(tern_mail *m, void *arg); /* back on the mail's loop */

/* What the engine offers. Every function is safe to call from a hook on
 * the mail's loop; none blocks. Strings returned stay valid until the mail
 * is changed or the hook returns, whichever is first: copy what you keep.
 * Functions returning int give 0 or -1 (bad argument, limit reached or out
 * of memory). */
typedef struct tern_mailet_host {
    uint32_t abi_version; /* TERN_MAILET_ABI_VERSION */
    uint32_t struct_size; /* sizeof(tern_mailet_host) of the engine */

    /* Envelope. */
    const char *(*qid)(const tern_mail *m);
    const char *(*sender)(const tern_mail *m); /* "" is the null sender */
    int (*set_sender)(tern_mail *m, const char *addr);
    size_t (*rcpt_count)(const tern_mail *m);
    const char *(*rcpt)(const tern_mail *m, size_t i);
    int (*rcpt_add)(tern_mail *m, const char *addr);
    int (*rcpt_remove)(tern_mail *m, size_t i); /* later indexes shift down */
    int (*rcpt_replace)(tern_mail *m, size_t i, const char *addr);
    const char *(*remote_addr)(const tern_mail *m); /* client IP text, "" when internal */
    const char *(*helo)(const tern_mail *m);
    const char *(*auth_user)(const tern_mail *m);   /* NULL when not authenticated */
    const char *(*listener)(const tern_mail *m);

    /* Header fields. Names compare case-insensitively; values are
     * unfolded and trimmed (raw bytes, RFC 2047 not decoded). idx counts
     * fields of that name from the top. Added fields go to the top, like
     * trace fields (SetHeader replaces in place, or adds at the top). */
    size_t (*header_count)(const tern_mail *m, const char *name); /* NULL name: all fields */
    const char *(*header_get)(const tern_mail *m, const char *name, size_t idx);
    const char *(*header_name_at)(const tern_mail *m, size_t pos); /* field at position pos */
    const char *(*header_value_at)(const tern_mail *m, size_t pos);
    int (*header_add)(tern_mail *m, const char *name, const char *value);
    int (*header_set)(tern_mail *m, const char *name, const char *value);
    int (*header_remove)(tern_mail *m, const char *name); /* every field of that name */

    /* The message. size = header section + body as stored (CRLF). The
     * body is the bytes after the empty line that ends the header. */
    uint64_t (*size)(const tern_mail *m);
    uint64_t (*body_size)(const tern_mail *m);
    /* Copies up to len body bytes from offset; returns the count (0 at
     * the end). Streams a large body in pieces. */
    size_t (*body_read)(const tern_mail *m, uint64_t offset, void *buf, size_t len);
    int (*body_replace)(tern_mail *m, const void *data, size_t len);

    /* Attributes: typed key/values. Keys are the plugin's to choose;
     * "tern." is the engine's own namespace (read only for plugins). */
    int (*attr_set_str)(tern_mail *m, const char *key, const char *value);
    int (*attr_set_int)(tern_mail *m, const char *key, int64_t value);
    int (*attr_set_bool)(tern_mail *m, const char *key, bool value);
    const char *(*attr_get_str)(const tern_mail *m, const char *key); /* NULL if absent or not str */
    bool (*attr_get_int)(const tern_mail *m, const char *key, int64_t *value_r);
    bool (*attr_get_bool)(const tern_mail *m, const char *key, bool *value_r);
    bool (*attr_has)(const tern_mail *m, const char *key);
    int (*attr_remove)(tern_mail *m, const char *key);

    /* One log line, tagged with the mail's session id, qid and the step. */
    void (*log)(const tern_mail *m, tern_mailet_log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* Asynchrony. call_async runs work(arg) on a pool thread, then done(m,
     * arg) on the mail's loop; the service hook returns PENDING after
     * calling it, and done (or a later callback) must end with resume(). */
    int (*call_async)(tern_mail *m, tern_mailet_work_fn work, tern_mailet_done_fn done, void *arg);
    void (*resume)(tern_mail *m, tern_mailet_verdict verdict, const tern_mailet_result *result);
    void *(*loop)(const tern_mail *m); /* the uv_loop_t the mail runs on */

    void *spare[16];
} tern_mailet_host;

typedef struct tern_mailet_module {
    uint32_t abi_version; /* TERN_MAILET_ABI_VERSION */
    uint32_t struct_size; /* sizeof(tern_mailet_module) when built */
    const char *name;     /* the name used in the YAML: "SubjectTagger" */
    uint32_t kinds;       /* TERN_MAILET_KIND_* */

    /* Called once per YAML step that uses the module (each step has its
     * own state). Return 0, or -1 with a one-line reason in err. */
    int (*init)(const tern_mailet_host *host, const tern_mailet_params *params, void **state_r,
                char *err, size_t err_size);
    void (*deinit)(void *state);

    /* Matcher: set matched[i] for each recipient i (all false on entry).
     * Returns 0, or -1 when it cannot decide (the step's on_error applies). */
    int (*match)(void *state, tern_mail *m, bool *matched);

    /* Mailet: act on the mail; fill *result for GOTO/REJECT/TEMPFAIL. */
    tern_mailet_verdict (*service)(void *state, tern_mail *m, tern_mailet_result *result);

    void *spare[8];
} tern_mailet_module;

#ifdef __cplusplus
}
#endif

#endif
