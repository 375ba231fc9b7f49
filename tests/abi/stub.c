/* stub.c - a stand-in for exitrt 0.3's libexitrt.so.0 at link time: the
 * names abi_host.c calls, with no symbol versions (0.3 had none), so the
 * program built against tests/abi/exitrt_prev.h holds unversioned
 * references, as a program built against 0.3 does. It never runs: CTest
 * runs the program with this build's libexitrt.so.0 (tests/CMakeLists.txt,
 * abi_prev). */
#define STUB(name)   \
    void name(void); \
    void name(void) {}
STUB(ert_version)
STUB(ert_status_string)
STUB(ert_model_load)
STUB(ert_model_free)
STUB(ert_model_num_exits)
STUB(ert_model_num_classes)
STUB(ert_model_input_size)
STUB(ert_model_macs_full)
STUB(ert_engine_config_default)
STUB(ert_engine_create)
STUB(ert_engine_free)
STUB(ert_engine_backend)
STUB(ert_engine_mode)
STUB(ert_engine_error)
STUB(ert_infer)
STUB(ert_engine_scores)
STUB(ert_engine_set_threshold)
STUB(ert_stream_config_default)
STUB(ert_stream_create)
STUB(ert_stream_free)
STUB(ert_stream_submit)
STUB(ert_stream_flush)
STUB(ert_stream_poll)
STUB(ert_stream_get_stats)
STUB(ert_stream_error)
