// The README's program (tests/api_example.c) in C++, for the C++-only
// CMake project of tests/packaging/test_install.sh: the same output.
#include <exitrt.h>

#include <cstdio>
#include <vector>

int main(int argc, char **argv)
{
    ert_error err;
    ert_model *model;
    ert_engine *engine;
    if (argc < 2 || ert_model_load(argv[1], &model, &err) != ERT_OK)
        return std::fprintf(stderr, "%s\n", argc < 2 ? "usage: example MODEL" : err.msg), 1;
    ert_engine_config cfg = ert_engine_config_default();
    cfg.max_batch = 64;
    if (ert_engine_create(model, &cfg, &engine, &err) != ERT_OK)
        return std::fprintf(stderr, "%s\n", err.msg), 1;
    std::vector<float> x(ert_model_input_size(model) * 64);
    std::vector<ert_sample> samples(64);
    ert_result res = ERT_RESULT_INIT;
    res.samples = samples.data();
    if (ert_infer(engine, x.data(), 64, &res) != ERT_OK)
        return std::fprintf(stderr, "%s\n", ert_engine_error(engine)), 1;
    for (int i = 0; i < ert_model_num_exits(model); i++)
        std::printf("%s: %d samples\n", ert_model_exit_name(model, i), res.exit_counts[i]);
    std::printf("MACs %llu of %llu\n", (unsigned long long)res.macs_executed,
                (unsigned long long)res.macs_full);
    ert_engine_free(engine);
    ert_model_free(model);
    return 0;
}
