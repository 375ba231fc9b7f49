/* abi.h - the sized structs of exitrt.h ("Structs that grow"): a caller's
 * struct_size checked against the layouts this library knows, and the
 * copies between the caller's layout and the library's own.
 *
 * Every public call that takes one of these structs works on a full copy
 * of the library's own layout: a config's fields the caller's size does not
 * cover keep their defaults, and a result is copied back only as far as
 * the caller's size goes. */
#ifndef ERT_ABI_H
#define ERT_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

/* One sized struct: its name (for messages), every layout it has had as
 * that layout's size, oldest first (the last is sizeof the struct). */
typedef struct abi_struct {
    const char *name;
    const size_t *sizes;
    int count;
} abi_struct;

extern const abi_struct abi_engine_config, abi_result, abi_device_result, abi_stream_config,
    abi_stream_stats;

/* ERT_OK when `size` (the caller's struct_size) is a layout of t this
 * library knows; otherwise the status and, into msg, why (who: the call's
 * and argument's name, "ert_infer: result"): ERT_INVALID_ARGUMENT for 0 or
 * an unknown size, ERT_UNSUPPORTED for one larger than the library's. */
ert_status abi_check(const abi_struct *t, uint32_t size, const char *who, char *msg, size_t cap);

/* A checked caller struct `src` of `size` bytes over `dst` (the library's
 * layout, holding the defaults): the covered fields replace the defaults,
 * and dst's struct_size becomes the library's. */
void abi_read(void *dst, size_t full, const void *src, uint32_t size);

#endif /* ERT_ABI_H */
