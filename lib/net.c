/* IP address helpers, see net.h. */
#include "lib/net.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tern_cidr_parse(const char *s, tern_cidr *out)
{
    char tmp[64];
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, n + 1);
    char *slash = strchr(tmp, '/');
    long prefix = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        if (slash[1] == '\0')
            return -1;
        prefix = strtol(slash + 1, &end, 10);
        if (*end != '\0' || prefix < 0)
            return -1;
    }
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, tmp, out->addr) == 1) {
        out->family = AF_INET;
        if (prefix > 32)
            return -1;
        out->prefix = prefix < 0 ? 32 : (unsigned)prefix;
    } else if (inet_pton(AF_INET6, tmp, out->addr) == 1) {
        out->family = AF_INET6;
        if (prefix > 128)
            return -1;
        out->prefix = prefix < 0 ? 128 : (unsigned)prefix;
    } else {
        return -1;
    }
    return 0;
}

static bool net__prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rem = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (rem == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rem));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool tern_cidr_match(const tern_cidr *net, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        if (net->family != AF_INET)
            return false;
        return net__prefix_eq(net->addr, (const uint8_t *)&in->sin_addr, net->prefix);
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *a = in6->sin6_addr.s6_addr;
        if (net->family == AF_INET6)
            return net__prefix_eq(net->addr, a, net->prefix);
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return net__prefix_eq(net->addr, a + 12, net->prefix);
    }
    return false;
}

void tern_sockaddr_str(const struct sockaddr *sa, char *buf, size_t size, int *port_r)
{
    int port = 0;
    buf[0] = '\0';
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, buf, (socklen_t)size);
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            inet_ntop(AF_INET, in6->sin6_addr.s6_addr + 12, buf, (socklen_t)size);
        else
            inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)size);
        port = ntohs(in6->sin6_port);
    }
    if (port_r)
        *port_r = port;
}

void tern_sockaddr_key(const struct sockaddr *sa, uint8_t key[16])
{
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(key, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, 16);
    }
}
