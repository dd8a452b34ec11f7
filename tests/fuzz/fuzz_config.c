/* libFuzzer target for the config loader: arbitrary bytes as a YAML
 * document through the whole load (tree, schema, cross rules, TLS checks).
 * Input: fully untrusted. A success must be freeable; a failure must leave
 * only errors, which are freed too. File names in the input may make the
 * loader stat and parse files on the fuzzing host; it only ever reads. */
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tern_config_errors errs;
    tern_config_errors_init(&errs);
    tern_config *c = tern_config_load_string((const char *)data, size, "fuzz", &errs);
    if (c != NULL) {
        /* exercise the helpers on whatever came out */
        (void)tern_config_is_local_domain(c, "example.test", 12);
        (void)tern_config_workers(c);
        for (size_t i = 0; i < c->n_listeners; i++)
            (void)tern_protocol_name(c->listeners[i].protocol);
        tern_config_unref(tern_config_ref(c));
        tern_config_unref(c);
    }
    tern_config_errors_free(&errs);
    return 0;
}
