/* IP address helpers: CIDR networks for relay_networks and per-IP limits.
 * Input is config text (networks) and kernel-provided sockaddrs. */
#ifndef TERN_NET_H
#define TERN_NET_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct tern_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
} tern_cidr;

/* "10.0.0.0/8", "::1", "2001:db8::/32". A bare address is a host route. */
int tern_cidr_parse(const char *s, tern_cidr *out);
/* IPv4-mapped IPv6 addresses match IPv4 networks. */
bool tern_cidr_match(const tern_cidr *net, const struct sockaddr *sa);
/* Canonical text of the address (IPv4-mapped shown as IPv4), and the port. */
void tern_sockaddr_str(const struct sockaddr *sa, char *buf, size_t size, int *port_r);
/* A key for per-IP tables: the 16-byte address (IPv4 mapped into IPv6). */
void tern_sockaddr_key(const struct sockaddr *sa, uint8_t key[16]);

#endif
