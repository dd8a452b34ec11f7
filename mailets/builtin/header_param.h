/* The parameters AddHeader and SetHeader share (name, value), checked at
 * init so that no value can carry a line break and inject fields. Not a
 * module. Input: the step's YAML parameters. */
#ifndef TERN_MAILETS_HEADER_PARAM_H
#define TERN_MAILETS_HEADER_PARAM_H

#include "mailets/builtin/builtin.h"

typedef struct tern_header_param {
    const char *name;
    const char *value;
} tern_header_param;

/* init hook body: fills a malloc'd tern_header_param into *state_r, or
 * returns -1 with the reason in err. */
int tern_header_param_init(const tern_mailet_params *p, void **state_r, char *err, size_t size);

#endif
