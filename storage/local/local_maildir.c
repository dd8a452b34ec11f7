/* Maildir++ naming and file I/O for the local backend.
 *
 * Layout under local.path:
 *   .tern.sqlite (+ -wal, -shm)   the metadata (local_schema.c)
 *   .tern.lock                    flock of the process that owns the tree
 *   <domain>/<localpart>/Maildir/ an account; INBOX is the Maildir itself
 *   <domain>/<localpart>/Maildir/.<folder>/   every other mailbox
 * each with cur/ new/ tmp/. A folder name is the mailbox name with '/'
 * written as '.', and '.', '%', control bytes written as %XX (upper-case
 * hex); other UTF-8 bytes are kept, so "Lists/tern.dev" is ".Lists.tern%2Edev".
 * A localpart is written as is except '/', '%', control bytes and a leading
 * '.', as %XX. Neither can then name "cur", "new", "tmp" or escape the tree.
 *
 * Message files: "<sec>.M<usec>P<pid>Q<seq>.<host>,S=<size>:2,<flags>",
 * flags the sorted letters D F R S T (draft, flagged, replied, seen,
 * trashed = \Deleted). The part before ':' is the message's stable base;
 * the flags part follows the row (renamed on flag changes). Bytes are
 * stored as given (CRLF), so S= and the RFC 822 size agree.
 *
 * Input trusted: names given here were checked by store_names.c; file
 * names read back from disk are not trusted (parsed defensively). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "storage/local/local_internal.h"

#define FOLDER_NAME_MAX 250
#define COPY_CHUNK (256u * 1024u)

static const char hexd[] = "0123456789ABCDEF";

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

char *local_folder_encode(tern_arena *a, const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > FOLDER_NAME_MAX)
        return NULL;
    char *out = tern_arena_alloc(a, n * 3 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '/') {
            out[o++] = '.';
        } else if (c == '.' || c == '%' || c < 0x20 || c == 0x7f) {
            out[o++] = '%';
            out[o++] = hexd[c >> 4];
            out[o++] = hexd[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    if (o > FOLDER_NAME_MAX)
        return NULL;
    return out;
}

char *local_folder_decode(tern_arena *a, const char *folder)
{
    size_t n = strlen(folder);
    if (n == 0 || n > FOLDER_NAME_MAX)
        return NULL;
    char *out = tern_arena_alloc(a, n + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = folder[i];
        if (c == '.') {
            if (o == 0 || out[o - 1] == '/' || i + 1 == n)
                return NULL; /* empty component */
            out[o++] = '/';
        } else if (c == '%') {
            if (i + 2 >= n)
                return NULL;
            int h = hexval(folder[i + 1]), l = hexval(folder[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0))
                return NULL;
            out[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return out;
}

char *local_localpart_encode(tern_arena *a, const char *lp)
{
    size_t n = strlen(lp);
    char *out = tern_arena_alloc(a, n * 3 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)lp[i];
        if (c == '/' || c == '%' || c < 0x20 || c == 0x7f || (i == 0 && c == '.')) {
            out[o++] = '%';
            out[o++] = hexd[c >> 4];
            out[o++] = hexd[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return out;
}

void local_flag_letters(unsigned flags, char *buf)
{
    size_t o = 0;
    if (flags & TERN_FLAG_DRAFT)
        buf[o++] = 'D';
    if (flags & TERN_FLAG_FLAGGED)
        buf[o++] = 'F';
    if (flags & TERN_FLAG_ANSWERED)
        buf[o++] = 'R';
    if (flags & TERN_FLAG_SEEN)
        buf[o++] = 'S';
    if (flags & TERN_FLAG_DELETED)
        buf[o++] = 'T';
    buf[o] = '\0';
}

unsigned local_flags_from_name(const char *name)
{
    const char *info = strstr(name, ":2,");
    if (info == NULL)
        return 0;
    unsigned f = 0;
    for (const char *p = info + 3; *p && *p != ','; p++) {
        switch (*p) {
        case 'D': f |= TERN_FLAG_DRAFT; break;
        case 'F': f |= TERN_FLAG_FLAGGED; break;
        case 'R': f |= TERN_FLAG_ANSWERED; break;
        case 'S': f |= TERN_FLAG_SEEN; break;
        case 'T': f |= TERN_FLAG_DELETED; break;
        default: break; /* P (passed) and tool-specific letters */
        }
    }
    return f;
}

size_t local_base_len(const char *name)
{
    const char *c = strchr(name, ':');
    return c ? (size_t)(c - name) : strlen(name);
}

void local_sanitize_hostname(const char *in, char *out, size_t size)
{
    /* Maildir: '/' and ':' are written as octal escapes; ',' too, since
     * ",S=" follows the host. */
    size_t o = 0;
    for (const char *p = in; *p && o + 5 < size; p++) {
        if (*p == '/' || *p == ':' || *p == ',') {
            o += (size_t)snprintf(out + o, size - o, "\\%03o", (unsigned char)*p);
        } else if ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f) {
            out[o++] = *p;
        }
    }
    if (o == 0 && size > 9)
        o = (size_t)snprintf(out, size, "localhost");
    out[o] = '\0';
}

static char *file_base(local_store *L, tern_arena *a)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tern_arena_printf(a, "%lld.M%06ldP%ldQ%" PRIu64 ".%s", (long long)tv.tv_sec,
                             (long)tv.tv_usec, (long)getpid(), ++L->file_seq, L->hostname);
}

char *local_file_name(local_store *L, tern_arena *a, uint64_t size, unsigned flags)
{
    char letters[8];
    local_flag_letters(flags, letters);
    char *base = file_base(L, a);
    return base ? tern_arena_printf(a, "%s,S=%" PRIu64 ":2,%s", base, size, letters) : NULL;
}

char *local_rename_flags(tern_arena *a, const char *filename, unsigned flags)
{
    char letters[8];
    local_flag_letters(flags, letters);
    return tern_arena_printf(a, "%.*s:2,%s", (int)local_base_len(filename), filename, letters);
}

char *local_account_maildir(local_store *L, tern_arena *a, const char *account)
{
    const char *at = strrchr(account, '@');
    if (at == NULL || at == account || at[1] == '\0')
        return NULL;
    char *lp = tern_arena_strndup(a, account, (size_t)(at - account));
    char *enc = lp ? local_localpart_encode(a, lp) : NULL;
    if (enc == NULL || strchr(at + 1, '/') || at[1] == '.')
        return NULL;
    return tern_arena_printf(a, "%s/%s/%s/Maildir", L->root, at + 1, enc);
}

char *local_mailbox_rel(tern_arena *a, const char *name)
{
    if (strcmp(name, "INBOX") == 0)
        return tern_arena_strdup(a, "");
    char *f = local_folder_encode(a, name);
    return f ? tern_arena_printf(a, ".%s/", f) : NULL;
}

char *local_mailbox_dir(tern_arena *a, const char *maildir, const char *name)
{
    if (strcmp(name, "INBOX") == 0)
        return tern_arena_strdup(a, maildir);
    char *f = local_folder_encode(a, name);
    return f ? tern_arena_printf(a, "%s/.%s", maildir, f) : NULL;
}

int local_mkdir_folder(const char *dir)
{
    char p[4096];
    static const char *const subs[] = {"", "/cur", "/new", "/tmp"};
    for (size_t i = 0; i < 4; i++) {
        if ((size_t)snprintf(p, sizeof p, "%s%s", dir, subs[i]) >= sizeof p)
            return -1;
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            return -1;
    }
    return 0;
}

int local_fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    return r;
}

int local_rmtree(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
    struct dirent *e;
    char p[4096];
    int r = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", path, e->d_name) >= sizeof p) {
            r = -1;
            continue;
        }
        if (e->d_type == DT_DIR) {
            if (local_rmtree(p) != 0)
                r = -1;
        } else if (unlink(p) != 0 && errno != ENOENT) {
            if (errno == EISDIR && local_rmtree(p) == 0)
                continue;
            r = -1;
        }
    }
    closedir(d);
    if (rmdir(path) != 0 && errno != ENOENT)
        r = -1;
    return r;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int local_read_head(const char *path, uint8_t **head_r, size_t *len_r)
{
    *head_r = NULL;
    *len_r = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    uint8_t *buf = malloc(LOCAL_HEADER_MAX);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < LOCAL_HEADER_MAX) {
        ssize_t r = read(fd, buf + got, LOCAL_HEADER_MAX - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            close(fd);
            return -err;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *head_r = buf;
    *len_r = got;
    return 0;
}

int local_write_message(local_store *L, tern_arena *a, const char *dir, const uint8_t *prefix,
                        size_t prefix_len, const uint8_t *data,
                        size_t len, const char *src_path, unsigned flags, int64_t mtime,
                        char **name_r, uint64_t *size_r, uint8_t **head_r, size_t *head_len_r,
                        int *fd_r, char **tmp_r)
{
    *head_r = NULL;
    *head_len_r = 0;
    char *base = file_base(L, a);
    char *tmp = base ? tern_arena_printf(a, "%s/tmp/%s", dir, base) : NULL;
    if (tmp == NULL)
        return -ENOMEM;
    int src = -1;
    uint8_t *head = NULL;
    size_t head_len = 0;
    if (src_path) {
        src = open(src_path, O_RDONLY | O_CLOEXEC);
        if (src < 0)
            return -errno;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int err = errno;
        if (src >= 0)
            close(src);
        return -err;
    }
    uint64_t size = 0;
    int err = 0;
    if (prefix_len > 0) {
        /* The index is built from the head of the whole message, prefix
         * first. */
        head = malloc(LOCAL_HEADER_MAX);
        if (head == NULL)
            err = ENOMEM;
        else if (write_all(fd, prefix, prefix_len) != 0)
            err = errno;
        if (err == 0) {
            head_len = prefix_len < LOCAL_HEADER_MAX ? prefix_len : LOCAL_HEADER_MAX;
            memcpy(head, prefix, head_len);
            size = prefix_len;
        }
    }
    if (err != 0) {
        if (src >= 0)
            close(src);
    } else if (src < 0) {
        if (write_all(fd, data, len) != 0)
            err = errno;
        size += len;
        if (head != NULL && head_len < LOCAL_HEADER_MAX) {
            size_t take = len < LOCAL_HEADER_MAX - head_len ? len : LOCAL_HEADER_MAX - head_len;
            if (take)
                memcpy(head + head_len, data, take);
            head_len += take;
        }
    } else {
        uint8_t *buf = malloc(COPY_CHUNK);
        if (head == NULL)
            head = malloc(LOCAL_HEADER_MAX);
        if (buf == NULL || head == NULL)
            err = ENOMEM;
        while (err == 0) {
            ssize_t r = read(src, buf, COPY_CHUNK);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                err = errno;
                break;
            }
            if (r == 0)
                break;
            if (head_len < LOCAL_HEADER_MAX) {
                size_t take = (size_t)r < LOCAL_HEADER_MAX - head_len
                                  ? (size_t)r : LOCAL_HEADER_MAX - head_len;
                memcpy(head + head_len, buf, take);
                head_len += take;
            }
            if (write_all(fd, buf, (size_t)r) != 0)
                err = errno;
            size += (uint64_t)r;
        }
        free(buf);
        close(src);
    }
    if (err == 0 && mtime > 0) {
        struct timespec ts[2] = {{.tv_sec = mtime, .tv_nsec = 0}, {.tv_sec = mtime, .tv_nsec = 0}};
        futimens(fd, ts); /* best effort: the row holds the internal date */
    }
    char letters[8];
    local_flag_letters(flags, letters);
    char *name = tern_arena_printf(a, "%s,S=%" PRIu64 ":2,%s", base, size, letters);
    if (err == 0 && name == NULL)
        err = ENOMEM;
    if (err != 0) {
        close(fd);
        unlink(tmp);
        free(head);
        return -err;
    }
    *fd_r = fd;
    *tmp_r = tmp;
    *name_r = name;
    *size_r = size;
    *head_r = head;
    *head_len_r = head_len;
    return 0;
}
