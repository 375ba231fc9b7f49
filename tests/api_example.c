/* The README's C host program: classify a batch with early exits. */
#include <exitrt.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    ert_error err;
    ert_model *model;
    ert_engine *engine;
    if (argc < 2 || ert_model_load(argv[1], &model, &err) != ERT_OK)
        return fprintf(stderr, "%s\n", argc < 2 ? "usage: example MODEL" : err.msg), 1;
    ert_engine_config cfg = ert_engine_config_default(); /* auto device, compacted */
    cfg.max_batch = 64;
    if (ert_engine_create(model, &cfg, &engine, &err) != ERT_OK)
        return fprintf(stderr, "%s\n", err.msg), 1;
    float *x = calloc(ert_model_input_size(model) * 64, sizeof *x); /* your inputs */
    ert_sample samples[64];
    ert_result res = ERT_RESULT_INIT; /* sets struct_size: exitrt.h */
    res.samples = samples;
    if (ert_infer(engine, x, 64, &res) != ERT_OK)
        return fprintf(stderr, "%s\n", ert_engine_error(engine)), 1;
    for (int i = 0; i < ert_model_num_exits(model); i++)
        printf("%s: %d samples\n", ert_model_exit_name(model, i), res.exit_counts[i]);
    printf("MACs %llu of %llu\n", (unsigned long long)res.macs_executed,
           (unsigned long long)res.macs_full);
    free(x);
    ert_engine_free(engine);
    ert_model_free(model);
    return 0;
}
