/* Connection admission: the global cap, per-IP concurrent caps and per-IP
 * connection rates (token bucket). Shared by every worker thread; settings
 * are swapped on SIGHUP without losing the counts. Input: kernel-provided
 * peer addresses. */
#ifndef TERN_LIMITS_H
#define TERN_LIMITS_H

#include <stdint.h>
#include <sys/socket.h>

#include "conf/config.h"

typedef enum {
    TERN_ADMIT_OK = 0,
    TERN_ADMIT_GLOBAL,  /* max_connections reached */
    TERN_ADMIT_PER_IP,  /* max_connections_per_ip reached */
    TERN_ADMIT_RATE,    /* connection_rate_per_ip exceeded */
} tern_admit;

typedef struct tern_limits tern_limits;

tern_limits *tern_limits_new(void);
void tern_limits_free(tern_limits *l);
/* Installs new settings; counts and buckets carry over. */
void tern_limits_configure(tern_limits *l, const tern_limits_conf *conf, uint32_t max_connections);
/* Admits a new connection (counting it) or says why not. */
tern_admit tern_limits_admit(tern_limits *l, const struct sockaddr *peer, uint64_t now_ms);
/* A connection admitted earlier has closed. */
void tern_limits_release(tern_limits *l, const struct sockaddr *peer);
uint32_t tern_limits_active(tern_limits *l);
uint32_t tern_limits_active_ip(tern_limits *l, const struct sockaddr *peer);
const char *tern_admit_name(tern_admit a);

#endif
