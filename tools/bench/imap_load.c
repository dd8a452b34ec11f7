/* tools/bench/imap_load.c: the load client of tools/bench/imap, in C so
 * that the client's own CPU (the Python client took more than half of the
 * two cores) does not decide what is measured. One process holds one
 * session: LOGIN, SELECT INBOX, then for S seconds the mix of the Python
 * worker in tools/bench/imap (SELECT 10%, FETCH of 20 headers 25%, FETCH
 * of a body 20%, STORE 15%, SEARCH 15%, APPEND 5%, NOOP 10%), and prints
 * the number of commands completed. Talks to 127.0.0.1 only; trusts
 * nothing the server sends beyond its framing (lines, {n} literals) and
 * stops on any reply that is not OK.
 *
 *   imap_load PORT SECONDS MESSAGES SEED USER PASSWORD
 *
 * Built by tools/bench/imap with the system cc (no project code needed). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int fd = -1;
static char rbuf[1 << 16];
static size_t rlen, rpos;
static unsigned tagn;

static void die(const char *what)
{
    fprintf(stderr, "imap_load: %s\n", what);
    exit(1);
}

static void send_all(const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w <= 0)
            die("write failed");
        c += w;
        n -= (size_t)w;
    }
}

static int fill(void)
{
    if (rpos > 0) {
        memmove(rbuf, rbuf + rpos, rlen - rpos);
        rlen -= rpos;
        rpos = 0;
    }
    if (rlen == sizeof rbuf)
        die("line too long");
    ssize_t n = read(fd, rbuf + rlen, sizeof rbuf - rlen);
    if (n <= 0)
        die("connection closed");
    rlen += (size_t)n;
    return 0;
}

/* The next line (CRLF included) as a pointer into rbuf, valid until the next read. */
static char *read_line(size_t *len_r)
{
    for (;;) {
        char *nl = memchr(rbuf + rpos, '\n', rlen - rpos);
        if (nl) {
            char *line = rbuf + rpos;
            *len_r = (size_t)(nl - line) + 1;
            rpos += *len_r;
            return line;
        }
        fill();
    }
}

static void skip_bytes(size_t n)
{
    while (n) {
        if (rpos == rlen) {
            rpos = rlen = 0;
            fill();
        }
        size_t k = rlen - rpos < n ? rlen - rpos : n;
        rpos += k;
        n -= k;
    }
}

/* Sends "tag text[ {n+}\r\nliteral]\r\n" and reads up to the tagged reply. */
static void cmd(const char *text, const char *lit, size_t lit_len)
{
    char head[512];
    char tag[16];
    int tl = snprintf(tag, sizeof tag, "t%u ", ++tagn);
    int n = lit ? snprintf(head, sizeof head, "%s%s {%zu+}\r\n", tag, text, lit_len)
                : snprintf(head, sizeof head, "%s%s\r\n", tag, text);
    send_all(head, (size_t)n);
    if (lit) {
        send_all(lit, lit_len);
        send_all("\r\n", 2);
    }
    for (;;) {
        size_t len;
        char *ln = read_line(&len);
        if (len >= 3 && ln[len - 3] == '}' ) {
            char *open = NULL;
            for (char *p = ln + len - 3; p > ln; p--)
                if (*p == '{') {
                    open = p;
                    break;
                }
            if (open) {
                skip_bytes(strtoull(open + 1, NULL, 10));
                continue;
            }
        }
        if (len > (size_t)tl && memcmp(ln, tag, (size_t)tl) == 0) {
            if (len < (size_t)tl + 2 || memcmp(ln + tl, "OK", 2) != 0) {
                fprintf(stderr, "imap_load: %.*s", (int)len, ln);
                exit(1);
            }
            return;
        }
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rnd(void)
{
    return (double)random() / ((double)RAND_MAX + 1.0);
}

int main(int argc, char **argv)
{
    if (argc != 7)
        die("usage: imap_load PORT SECONDS MESSAGES SEED USER PASSWORD");
    int port = atoi(argv[1]);
    double seconds = atof(argv[2]);
    long messages = atol(argv[3]);
    srandom((unsigned)atol(argv[4]));
    fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("cannot connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    size_t len;
    read_line(&len); /* greeting */
    char buf[600];
    snprintf(buf, sizeof buf, "LOGIN %s %s", argv[5], argv[6]);
    cmd(buf, NULL, 0);
    cmd("SELECT INBOX", NULL, 0);
    /* The APPENDed message: about 3000 octets, like the Python worker's. */
    static char extra[4096];
    size_t el = (size_t)snprintf(extra, sizeof extra,
                                 "From: Sender 1 <s1@example.test>\r\nTo: %s\r\n"
                                 "Subject: bench message extra\r\n"
                                 "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
                                 "Message-ID: <x%ld.%ld@example.test>\r\n\r\n",
                                 argv[5], (long)getpid(), random());
    while (el < 3000) {
        for (int i = 0; i < 70; i++)
            extra[el++] = "abcdefghij klmnop"[random() % 17];
        extra[el++] = '\r';
        extra[el++] = '\n';
    }
    static const char *const searches[] = {"SEARCH UNSEEN", "SEARCH FROM s3",
                                           "SEARCH SUBJECT \"message 1\""};
    long ops = 0;
    double end = now() + seconds;
    while (now() < end) {
        double r = rnd();
        long m = 1 + random() % messages;
        if (r < 0.10) {
            cmd("SELECT INBOX", NULL, 0);
        } else if (r < 0.35) {
            long a = 1 + random() % (messages > 20 ? messages - 20 : 1);
            snprintf(buf, sizeof buf,
                     "FETCH %ld:%ld (UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])", a,
                     a + 19);
            cmd(buf, NULL, 0);
        } else if (r < 0.55) {
            snprintf(buf, sizeof buf, "FETCH %ld (BODY.PEEK[])", m);
            cmd(buf, NULL, 0);
        } else if (r < 0.70) {
            snprintf(buf, sizeof buf, "STORE %ld %sFLAGS (\\Seen)", m, random() % 2 ? "+" : "-");
            cmd(buf, NULL, 0);
        } else if (r < 0.85) {
            cmd(searches[random() % 3], NULL, 0);
        } else if (r < 0.90) {
            cmd("APPEND INBOX", extra, el);
        } else {
            cmd("NOOP", NULL, 0);
        }
        ops++;
    }
    printf("%ld\n", ops);
    close(fd);
    return 0;
}
