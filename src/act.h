/* act.h - the activations an op applies to its output (program.h's
 * prog_op.act and the CUDA kernels' act arguments). */
#ifndef ERT_ACT_H
#define ERT_ACT_H

enum {
    ERT_ACT_NONE = 0,
    ERT_ACT_RELU = 1,
    ERT_ACT_SIGMOID = 2,
    ERT_ACT_GELU = 3, /* exact: x * (1 + erf(x / sqrt 2)) / 2 */
    ERT_ACT_TANH = 4
};

#endif /* ERT_ACT_H */
