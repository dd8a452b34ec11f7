/* Mailet JsonExport: each mail as one JSON object, for archiving, search
 * indexing or a webhook. Either appended as a line to a file rotated by
 * size (`file`, `max_size`, `keep`, `fsync`), or POSTed to an HTTP
 * endpoint (`url`, `timeout`). Input: its YAML parameters (checked at
 * init) and the mail, whose bytes are the sender's: every string goes
 * through lib/json_write.h (valid UTF-8, escaped), the MIME structure is
 * read with lib/mime.h's bounded parser.
 *
 * The record: qid, receivedAt (ISO 8601 UTC), remoteAddr, helo, authUser,
 * from {envelope, header}, to {envelope: [...], header}, cc, subject
 * (RFC 2047 decoded), messageId, date, size, headers [{name, value}],
 * body (the text part, transfer-decoded, in UTF-8; HTML reduced to text
 * when there is no plain part; cut at `body_max` bytes with
 * bodyTruncated: true), attachments [{name, type, size}].
 *
 * Threads: what needs the mail (header fields, a copy of the message) is
 * taken on the mail's loop; the MIME work, the JSON and the I/O run on a
 * pool thread through tern_mail_call_async, and the step resumes when the
 * record is written (or failed: then the step's on_error applies).
 *
 * File mode: one write(2) per record on an O_APPEND descriptor, under a
 * per-step lock, so records never interleave. With `fsync: true` (the
 * default) the record is fdatasync'ed before the mail goes on, and a
 * rotation fsyncs the directory: an exported mail survives a crash. With
 * `fsync: false` the kernel flushes when it likes. Rotation happens before
 * a write that would take the file past max_size: file.N-1 -> file.N ...
 * file -> file.1 (keep: 0 deletes instead). A record larger than max_size
 * is still written whole, alone in a fresh file.
 *
 * HTTP mode: plain HTTP/1.1 only (no TLS: point it at a local collector or
 * relay), one connection per mail (Connection: close), Content-Type
 * application/json, the host name resolved on the pool thread, `timeout`
 * bounding the whole exchange. A 2xx status is success; any other status,
 * a refused connection or the timeout is an error. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/arena.h"
#include "lib/buf.h"
#include "lib/json_write.h"
#include "lib/mime.h"
#include "lib/rfc2047.h"
#include "mailets/builtin/builtin.h"
#include "mailets/builtin/json_export.h"

#define JE_MAX_SIZE_DEFAULT (100ull << 20)
#define JE_BODY_MAX_DEFAULT (1ull << 20)
#define JE_KEEP_MAX 100
#define JE_PATH_MAX 1024
#define JE_HOST_MAX 255
#define JE_RESPONSE_MAX 8192

typedef struct {
    /* file mode */
    const char *file;
    uint64_t max_size;
    unsigned keep;
    bool fsync;
    pthread_mutex_t mu;
    /* http mode */
    char host[JE_HOST_MAX + 1];
    char port[8];
    char *path;
    int timeout_ms;
    /* both */
    uint64_t body_max;
} json_export;

struct je_job {
    json_export *je;
    tern_buf rec;      /* the record so far (built on the loop), then whole */
    uint8_t *msg;      /* a copy of the message, for the pool thread */
    size_t msg_len;
    int rc;
    char err[320];
};

/* ---- parameters ----------------------------------------------------------- */

/* "100M", "64k", "4096". */
static int parse_size(const char *s, uint64_t *out)
{
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K')
        shift = 10, end++;
    else if (*end == 'm' || *end == 'M')
        shift = 20, end++;
    else if (*end == 'g' || *end == 'G')
        shift = 30, end++;
    if (*end != '\0' || v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* "10s", "500ms", "10". */
static int parse_ms(const char *s, int *out)
{
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    char *end = NULL;
    unsigned long v = strtoul(s, &end, 10);
    if (v > 3600000)
        return -1;
    if (strcmp(end, "ms") == 0)
        *out = (int)v;
    else if (*end == '\0' || strcmp(end, "s") == 0)
        *out = (int)(v * 1000);
    else
        return -1;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    if (s == NULL)
        return -1;
    if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "on") == 0)
        *out = true;
    else if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0 || strcmp(s, "off") == 0)
        *out = false;
    else
        return -1;
    return 0;
}

/* http://host[:port][/path]; IPv6 literals in brackets. */
static int parse_url(json_export *je, const char *url, char *err, size_t size)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return tern_builtin_fail(err, size,
                                 "url: https is not supported (plain http only: send to a local "
                                 "collector or relay)");
    if (strncasecmp(url, "http://", 7) != 0)
        return tern_builtin_fail(err, size, "url: must be http://host[:port]/path");
    const char *h = url + 7;
    const char *hend;
    const char *rest;
    if (*h == '[') {
        hend = strchr(h, ']');
        if (hend == NULL)
            return tern_builtin_fail(err, size, "url: unterminated [IPv6] host");
        h++;
        rest = hend + 1;
    } else {
        hend = h + strcspn(h, ":/?#");
        rest = hend;
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl > JE_HOST_MAX)
        return tern_builtin_fail(err, size, "url: a host is required");
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= ' ' || (unsigned char)h[i] >= 127 || h[i] == '@')
            return tern_builtin_fail(err, size, "url: bad character in the host");
    memcpy(je->host, h, hl);
    je->host[hl] = '\0';
    snprintf(je->port, sizeof(je->port), "80");
    if (*rest == ':') {
        char *end = NULL;
        unsigned long port = strtoul(rest + 1, &end, 10);
        if (end == rest + 1 || port == 0 || port > 65535 || (*end && *end != '/'))
            return tern_builtin_fail(err, size, "url: bad port");
        snprintf(je->port, sizeof(je->port), "%lu", port);
        rest = end;
    }
    if (*rest && *rest != '/')
        return tern_builtin_fail(err, size, "url: must be http://host[:port]/path");
    const char *path = *rest ? rest : "/";
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 127 || *c == '#')
            return tern_builtin_fail(err, size, "url: bad character in the path");
    je->path = strdup(path);
    if (je->path == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    return 0;
}

static void je_deinit(void *state)
{
    json_export *je = state;
    if (je == NULL)
        return;
    pthread_mutex_destroy(&je->mu);
    free(je->path);
    free(je);
}

static int je_init(const tern_mailet_host *h, const tern_mailet_params *p, void **state_r,
                   char *err, size_t size)
{
    static const char *const known[] = {"file",    "max_size", "keep",     "fsync",
                                        "url",     "timeout",  "body_max", NULL};
    if (tern_param_check(p, known, err, size) != 0)
        return -1;
    static const char *const scalars[] = {"file",    "max_size", "keep",     "fsync",
                                          "url",     "timeout",  "body_max", NULL};
    for (size_t i = 0; scalars[i]; i++)
        if (tern_param_get(p, scalars[i]) && !tern_param_str(p, scalars[i]))
            return tern_builtin_fail(err, size, "%s: must be a single value", scalars[i]);
    const char *file = tern_param_str(p, "file");
    const char *url = tern_param_str(p, "url");
    if ((file == NULL) == (url == NULL))
        return tern_builtin_fail(err, size, "exactly one of file (a path) or url "
                                            "(http://host:port/path) is required");
    if (file && (file[0] != '/' || strlen(file) > JE_PATH_MAX - 8))
        return tern_builtin_fail(err, size, "file: an absolute path is required");
    if (file) {
        if (tern_param_get(p, "timeout"))
            return tern_builtin_fail(err, size, "timeout: only with url");
    } else {
        static const char *const file_only[] = {"max_size", "keep", "fsync", NULL};
        for (size_t i = 0; file_only[i]; i++)
            if (tern_param_get(p, file_only[i]))
                return tern_builtin_fail(err, size, "%s: only with file", file_only[i]);
    }
    json_export *je = calloc(1, sizeof(*je));
    if (je == NULL)
        return tern_builtin_fail(err, size, "out of memory");
    pthread_mutex_init(&je->mu, NULL);
    je->file = file;
    je->max_size = JE_MAX_SIZE_DEFAULT;
    je->keep = 5;
    je->fsync = true;
    je->timeout_ms = 10000;
    je->body_max = JE_BODY_MAX_DEFAULT;
    const char *v;
    int rc = 0;
    if ((v = tern_param_str(p, "max_size")) &&
        (parse_size(v, &je->max_size) != 0 || je->max_size < 4096))
        rc = tern_builtin_fail(err, size, "max_size: bytes with k, M or G, at least 4k");
    if (rc == 0 && (v = tern_param_str(p, "keep"))) {
        char *end = NULL;
        unsigned long k = strtoul(v, &end, 10);
        if (v[0] < '0' || v[0] > '9' || *end || k > JE_KEEP_MAX)
            rc = tern_builtin_fail(err, size, "keep: rotated files kept, 0 to %d", JE_KEEP_MAX);
        else
            je->keep = (unsigned)k;
    }
    if (rc == 0 && (v = tern_param_str(p, "fsync")) && parse_bool(v, &je->fsync) != 0)
        rc = tern_builtin_fail(err, size, "fsync: true or false");
    if (rc == 0 && (v = tern_param_str(p, "timeout")) &&
        (parse_ms(v, &je->timeout_ms) != 0 || je->timeout_ms < 100 || je->timeout_ms > 300000))
        rc = tern_builtin_fail(err, size, "timeout: a duration from 100ms to 300s (\"10s\")");
    if (rc == 0 && (v = tern_param_str(p, "body_max")) &&
        (parse_size(v, &je->body_max) != 0 || je->body_max > (64ull << 20)))
        rc = tern_builtin_fail(err, size, "body_max: bytes with k or M, at most 64M");
    if (rc == 0 && url)
        rc = parse_url(je, url, err, size);
    if (rc != 0) {
        je_deinit(je);
        return -1;
    }
    *state_r = je;
    return 0;
}

/* ---- the record ------------------------------------------------------------- */

static int put_decoded(tern_buf *b, const char *key, const char *raw)
{
    int rc = tern_json_write_key(b, key);
    if (rc != 0 || raw == NULL)
        return rc ? rc : tern_buf_append_str(b, "null");
    tern_buf d;
    tern_buf_init(&d, 0);
    rc = tern_rfc2047_decode(&d, raw, strlen(raw));
    if (rc == 0)
        rc = tern_json_write_string(b, d.data ? (const char *)d.data : "", d.len);
    tern_buf_free(&d);
    return rc;
}

static int put_str(tern_buf *b, const char *key, const char *v)
{
    int rc = tern_json_write_key(b, key);
    return rc ? rc : tern_json_write_cstr(b, v);
}

/* Everything that needs the mail, on its loop: the record up to "body". */
static int render_head(const json_export *je, tern_mail *m, tern_buf *b)
{
    const tern_envelope *env = tern_mail_envelope(m);
    time_t at = env && env->received_at ? (time_t)env->received_at : time(NULL);
    struct tm tm;
    gmtime_r(&at, &tm);
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    int rc = tern_buf_append_str(b, "{");
    rc = rc ? rc : put_str(b, "qid", tern_mail_qid(m));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "receivedAt", when);
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "remoteAddr", tern_mail_remote_addr(m));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "helo", tern_mail_helo(m));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "authUser", tern_mail_auth_user(m));
    rc = rc ? rc : tern_buf_append_str(b, ",\"from\":{");
    rc = rc ? rc : put_str(b, "envelope", tern_mail_sender(m));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_decoded(b, "header", tern_mail_header_get(m, "From", 0));
    rc = rc ? rc : tern_buf_append_str(b, "},\"to\":{\"envelope\":[");
    for (size_t i = 0; rc == 0 && i < tern_mail_rcpt_count(m); i++) {
        if (i)
            rc = tern_buf_append_str(b, ",");
        rc = rc ? rc : tern_json_write_cstr(b, tern_mail_rcpt(m, i));
    }
    rc = rc ? rc : tern_buf_append_str(b, "],");
    rc = rc ? rc : put_decoded(b, "header", tern_mail_header_get(m, "To", 0));
    rc = rc ? rc : tern_buf_append_str(b, "},");
    rc = rc ? rc : put_decoded(b, "cc", tern_mail_header_get(m, "Cc", 0));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_decoded(b, "subject", tern_mail_header_get(m, "Subject", 0));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "messageId", tern_mail_header_get(m, "Message-ID", 0));
    rc = rc ? rc : tern_buf_append_str(b, ",");
    rc = rc ? rc : put_str(b, "date", tern_mail_header_get(m, "Date", 0));
    rc = rc ? rc : tern_buf_printf(b, ",\"size\":%llu,\"headers\":[",
                                  (unsigned long long)tern_mail_size(m));
    size_t n = tern_mail_header_count(m, NULL);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = tern_buf_append_str(b, i ? ",{" : "{");
        rc = rc ? rc : put_str(b, "name", tern_mail_header_name_at(m, i));
        rc = rc ? rc : tern_buf_append_str(b, ",");
        rc = rc ? rc : put_str(b, "value", tern_mail_header_value_at(m, i));
        rc = rc ? rc : tern_buf_append_str(b, "}");
    }
    rc = rc ? rc : tern_buf_append_str(b, "]");
    (void)je;
    return rc;
}

/* Cuts UTF-8 text at most max bytes, on a character boundary. */
static size_t utf8_cut(const uint8_t *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && (s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

/* On the pool thread: body and attachments from the message copy. */
static int render_tail(const json_export *je, const uint8_t *msg, size_t len, tern_buf *b)
{
    tern_arena a;
    tern_arena_init(&a, 8192);
    tern_mime_part *root = tern_mime_parse(&a, msg, len, NULL);
    int rc = root ? 0 : TERN_BUF_ENOMEM;
    tern_buf text;
    tern_buf_init(&text, 0);
    if (rc == 0) {
        int t = tern_mime_text_body(root, msg, len, &text, NULL);
        rc = t < 0 ? t : 0;
    }
    bool cut = text.len > je->body_max;
    size_t tl = utf8_cut(text.data, text.len, (size_t)je->body_max);
    rc = rc ? rc : tern_buf_append_str(b, ",\"body\":");
    rc = rc ? rc : tern_json_write_string(b, text.data ? (const char *)text.data : "", tl);
    rc = rc ? rc : tern_buf_printf(b, ",\"bodyTruncated\":%s,\"attachments\":[",
                                  cut ? "true" : "false");
    tern_buf_free(&text);
    size_t na = 0;
    tern_mime_attachment *att = rc == 0 ? tern_mime_attachments(&a, root, &na) : NULL;
    for (tern_mime_attachment *at = att; rc == 0 && at; at = at->next) {
        rc = tern_buf_append_str(b, at == att ? "{" : ",{");
        rc = rc ? rc : put_str(b, "name", at->filename);
        rc = rc ? rc : tern_buf_append_str(b, ",");
        rc = rc ? rc : put_str(b, "type", at->type);
        rc = rc ? rc : tern_buf_printf(b, ",\"size\":%llu}", (unsigned long long)at->size);
    }
    rc = rc ? rc : tern_buf_append_str(b, "]}");
    tern_arena_free(&a);
    return rc;
}

/* ---- file output ------------------------------------------------------------ */

static void set_err(je_job *j, const char *what, int e)
{
    j->rc = -1;
    snprintf(j->err, sizeof(j->err), "%.150s: %.80s", what, strerror(e));
}

static void fsync_dir(const char *file)
{
    char dir[JE_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int rotate(json_export *je, je_job *j)
{
    char from[JE_PATH_MAX + 8], to[JE_PATH_MAX + 8];
    if (je->keep == 0) {
        if (unlink(je->file) != 0 && errno != ENOENT) {
            set_err(j, "rotate: unlink", errno);
            return -1;
        }
    } else {
        for (unsigned i = je->keep; i > 1; i--) {
            snprintf(from, sizeof(from), "%s.%u", je->file, i - 1);
            snprintf(to, sizeof(to), "%s.%u", je->file, i);
            if (rename(from, to) != 0 && errno != ENOENT) {
                set_err(j, "rotate: rename", errno);
                return -1;
            }
        }
        snprintf(to, sizeof(to), "%s.1", je->file);
        if (rename(je->file, to) != 0 && errno != ENOENT) {
            set_err(j, "rotate: rename", errno);
            return -1;
        }
    }
    if (je->fsync)
        fsync_dir(je->file);
    return 0;
}

static int open_log(const json_export *je)
{
    return open(je->file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static void write_file(json_export *je, je_job *j)
{
    pthread_mutex_lock(&je->mu);
    int fd = open_log(je);
    struct stat st;
    if (fd < 0) {
        set_err(j, je->file, errno);
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        set_err(j, "fstat", errno);
        goto out;
    }
    if (st.st_size > 0 && (uint64_t)st.st_size + j->rec.len > je->max_size) {
        close(fd);
        fd = -1;
        if (rotate(je, j) != 0)
            goto out;
        fd = open_log(je);
        if (fd < 0) {
            set_err(j, je->file, errno);
            goto out;
        }
    }
    size_t off = 0;
    while (off < j->rec.len) {
        ssize_t w = write(fd, j->rec.data + off, j->rec.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            set_err(j, "write", w < 0 ? errno : EIO);
            goto out;
        }
        off += (size_t)w;
    }
    if (je->fsync && fdatasync(fd) != 0)
        set_err(j, "fdatasync", errno);
out:
    if (fd >= 0)
        close(fd);
    pthread_mutex_unlock(&je->mu);
}

/* ---- HTTP output ------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for `events` until the deadline: 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 0;
        return 1;
    }
}

static int connect_to(const json_export *je, int64_t deadline, je_job *j)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(je->host, je->port, &hints, &res);
    if (g != 0) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "resolving %.200s: %.40s", je->host, gai_strerror(g));
        return -1;
    }
    int fd = -1;
    int last = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            last = w == 0 ? ETIMEDOUT : (soerr ? soerr : errno);
        } else
            last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "connecting to %.200s:%s: %.40s", je->host, je->port,
                 strerror(last));
    }
    return fd;
}

static int send_all(int fd, const uint8_t *d, size_t n, int64_t deadline)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, d + off, n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r == 1)
                continue;
            errno = r == 0 ? ETIMEDOUT : errno;
        }
        return -1;
    }
    return 0;
}

static void post_http(json_export *je, je_job *j)
{
    int64_t deadline = now_ms() + je->timeout_ms;
    int fd = connect_to(je, deadline, j);
    if (fd < 0)
        return;
    char head[1024];
    bool v6 = strchr(je->host, ':') != NULL;
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\n"
                      "Host: %s%s%s%s%s\r\n"
                      "User-Agent: tern-jsonexport\r\n"
                      "Content-Type: application/json\r\n"
                      "Content-Length: %zu\r\n"
                      "Connection: close\r\n"
                      "\r\n",
                      je->path, v6 ? "[" : "", je->host, v6 ? "]" : "",
                      strcmp(je->port, "80") ? ":" : "", strcmp(je->port, "80") ? je->port : "",
                      j->rec.len);
    if (hn < 0 || (size_t)hn >= sizeof(head)) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "request head too long");
        close(fd);
        return;
    }
    if (send_all(fd, (const uint8_t *)head, (size_t)hn, deadline) != 0 ||
        send_all(fd, j->rec.data, j->rec.len, deadline) != 0) {
        set_err(j, "sending the request", errno);
        close(fd);
        return;
    }
    /* The status line is all we need; the body is not read. */
    char resp[JE_RESPONSE_MAX];
    size_t got = 0;
    while (got < sizeof(resp) - 1 && memchr(resp, '\n', got) == NULL) {
        ssize_t r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w == 1)
                continue;
            if (w == 0) {
                j->rc = -1;
                snprintf(j->err, sizeof(j->err), "no answer from %.200s:%s within %d ms", je->host,
                         je->port, je->timeout_ms);
                close(fd);
                return;
            }
        }
        set_err(j, "reading the answer", errno);
        close(fd);
        return;
    }
    close(fd);
    resp[got] = '\0';
    int status = 0;
    if (strncmp(resp, "HTTP/1.", 7) != 0 || got < 12 || sscanf(resp + 8, " %3d", &status) != 1) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "not an HTTP answer from %.200s:%s", je->host, je->port);
        return;
    }
    if (status < 200 || status > 299) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "%.200s:%s answered HTTP %d", je->host, je->port, status);
    }
}

/* ---- the job ------------------------------------------------------------------ */

je_job *tern_json_export_job_new(void *state, tern_mail *m)
{
    json_export *je = state;
    je_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->je = je;
    tern_buf_init(&j->rec, 0);
    j->msg = tern_mail_serialize(m, &j->msg_len);
    if (j->msg == NULL || render_head(je, m, &j->rec) != 0) {
        tern_json_export_job_free(j);
        return NULL;
    }
    return j;
}

void tern_json_export_job_run(je_job *j)
{
    json_export *je = j->je;
    if (render_tail(je, j->msg, j->msg_len, &j->rec) != 0) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "out of memory building the record");
        return;
    }
    free(j->msg);
    j->msg = NULL;
    if (je->file) {
        if (tern_buf_append(&j->rec, "\n", 1) != 0) {
            j->rc = -1;
            snprintf(j->err, sizeof(j->err), "out of memory");
            return;
        }
        write_file(je, j);
    } else
        post_http(je, j);
}

const char *tern_json_export_job_error(const je_job *j)
{
    return j->rc ? j->err : NULL;
}

const uint8_t *tern_json_export_job_record(const je_job *j, size_t *len_r)
{
    *len_r = j->rec.len;
    return j->rec.data;
}

void tern_json_export_job_free(je_job *j)
{
    if (j == NULL)
        return;
    tern_buf_free(&j->rec);
    free(j->msg);
    free(j);
}

static void job_work(void *arg)
{
    tern_json_export_job_run(arg);
}

static void job_done(tern_mail *m, void *arg)
{
    je_job *j = arg;
    if (j->rc) {
        tern_mail_log(m, TERN_MAILET_LOG_WARN, "export failed: %s", j->err);
        tern_mailet_result res = {.text = j->err};
        tern_mail_resume(m, TERN_MAILET_ERROR, &res);
    } else
        tern_mail_resume(m, TERN_MAILET_CONTINUE, NULL);
    tern_json_export_job_free(j);
}

static tern_mailet_verdict je_service(void *state, tern_mail *m, tern_mailet_result *res)
{
    je_job *j = tern_json_export_job_new(state, m);
    if (j == NULL) {
        res->text = "out of memory building the record";
        return TERN_MAILET_ERROR;
    }
    if (tern_mail_call_async(m, job_work, job_done, j) != 0) {
        tern_json_export_job_free(j);
        res->text = "could not queue the export";
        return TERN_MAILET_ERROR;
    }
    return TERN_MAILET_PENDING;
}

static const tern_mailet_module tern_mb_json_export = {
    .abi_version = TERN_MAILET_ABI_VERSION,
    .struct_size = sizeof(tern_mailet_module),
    .name = "JsonExport",
    .kinds = TERN_MAILET_KIND_MAILET,
    .init = je_init,
    .deinit = je_deinit,
    .service = je_service,
};
TERN_BUILTIN(tern_mb_json_export)
