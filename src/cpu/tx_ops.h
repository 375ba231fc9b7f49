/* tx_ops.h - the CPU ops of the transformer layers (models/FORMAT.md,
 * "Transformer encoders"): the reference semantics, as cpu_ops.h is for
 * the others. No allocation: the caller passes every buffer.
 *
 * A token row is T tokens of D features, each followed by its mask value
 * (1 attended, 0 padding): T * (D + 1) floats, shape3 {T, D + 1, 1, tokens
 * = 1}. Every op here carries the mask column from its input to its output
 * unchanged. `in` and `out` must not overlap unless an op says so.
 */
#ifndef ERT_CPU_TX_OPS_H
#define ERT_CPU_TX_OPS_H

#include <stddef.h>

#include "model.h"

/* Layer norm of every D-vector: each token's features (s.tokens) or the
 * row's D values (s = {D, 1, 1}). in == out allowed. */
void op_layer_norm(const norm_params *p, shape3 s, const float *in, int n, float *out);

/* Exact GELU (vmath.h's ert_v_gelu: within 8 ulp of x (1 + erf(x / sqrt
 * 2)) / 2) and tanh, elementwise over len floats; in == out allowed. */
void op_gelu(const float *in, float *out, size_t len);
void op_tanh(const float *in, float *out, size_t len);

/* Token ids to tokens.
 *   in  [n, 2T]: T ids then T mask values (nonzero: attended)
 *   out [n, T, D + 1]
 * An id that is not an integer in [0, vocab) gives its token NaN features. */
void op_token_embed(const embed_params *p, int T, const float *in, int n, float *out);

/* Patches to tokens: the conv, then class token, position, mask 1; the
 * samples split over a team of `threads` (see below).
 *   in      [n, C, H, W] (in_s)
 *   out     [n, T, D + 1] (out_s)
 *   scratch at least threads * patch_scratch_floats(p, in_s) floats */
void op_patch_embed(const patch_params *p, shape3 in_s, shape3 out_s, const float *in, int n,
                    float *out, float *scratch, int threads);
size_t patch_scratch_floats(const patch_params *p, shape3 in_s);

/* Tokens [n, T, D + 1] to vectors [n, D]: token 0, or the mean over the
 * attended tokens (NaN where none is). */
void op_token_pool(token_pool_mode mode, shape3 in_s, const float *in, int n, float *out);

/* Attention and the encoder block run chunks of samples whose live tokens
 * (up to each sample's last attended one) total at most TX_CHUNK_TOKENS
 * (or one sample's T, when more), packed into one matrix: each projection
 * is one matrix product over the chunk, in GEMM calls of exactly `tile`
 * rows, the last one padded, and of column blocks fixed by the layer (the
 * encoder block's projection and feed-forward after attention: all
 * columns in one call per tile), so a row's rounding does not depend on
 * the batch it runs in (cpu_ops.h,
 * "Batch invariance"). tile 0: one call per chunk, for an engine that only
 * ever runs one sample. The engine's tile is TX_TILE_ROWS. Attention is
 * fused (scores, masked softmax and weighted sum per block of keys, with
 * an online softmax): no T x T scores are stored.
 *
 * `threads`: the OpenMP team these ops (and op_patch_embed) split their
 * work over, where the build has OpenMP (it comes with oneDNN); OpenBLAS
 * runs one thread inside the team. The results do not depend on it. */
#define TX_CHUNK_TOKENS 4096
#define TX_TILE_ROWS 256

/* Scratch floats that op_self_attention, op_encoder_block and
 * op_patch_embed need for this layer (0 for the other layers), whatever n
 * and tile (<= TX_TILE_ROWS), for a team of `threads`. Linear in T (one
 * chunk's rows), never T * T. */
size_t tx_scratch_floats(const layer *l, int threads);
/* The largest tx_scratch_floats over a list. */
size_t tx_list_scratch(const layer_list *list, int threads);

/* Multi-head self-attention (no residual): out = attn(in), mask copied.
 *   in, out [n, T, D + 1]; scratch: tx_scratch_floats(l, threads) floats */
void op_self_attention(const attention_params *p, shape3 s, const float *in, int n, float *out,
                       float *scratch, int tile, int threads);

/* One encoder block (pre- or post-LN).
 *   in, out [n, T, D + 1]; scratch: tx_scratch_floats(l, threads) floats */
void op_encoder_block(const encoder_params *p, shape3 s, const float *in, int n, float *out,
                      float *scratch, int tile, int threads);

#endif /* ERT_CPU_TX_OPS_H */
