/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
 *
 * The input is a whole weights file, parsed in memory (st_open_memory runs
 * the same checks as st_open). On success every tensor's bytes are read, so
 * AddressSanitizer sees any range that lies outside the input; st_find and
 * st_metadata are exercised on every name.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file f;
    ert_error err = {{0}};
    if (st_open_memory("fuzz.safetensors", data, size, &f, &err) != ERT_OK) {
        if (!err.msg[0])
            __builtin_trap(); /* every failure must say why */
        return 0;
    }
    volatile unsigned sum = 0;
    for (int i = 0; i < f.num_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        if (st_find(&f, t->name) != t)
            __builtin_trap(); /* names are unique: find gives the same tensor */
        const unsigned char *b = t->data;
        for (size_t k = 0; k < t->nbytes; k++)
            sum += b[k];
        (void)sum;
        if (t->dtype == ST_F32 && t->nbytes != t->count * 4)
            __builtin_trap();
    }
    for (int i = 0; i < f.num_meta; i++)
        if (st_metadata(&f, f.meta_keys[i]) == NULL)
            __builtin_trap();
    (void)st_find(&f, "");
    st_close(&f);
    return 0;
}
