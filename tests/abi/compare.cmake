# compare.cmake - CTest abi_prev: runs tests/abi/abi_host.c built against
# exitrt 0.3's header (PREV, unversioned references) and against this
# exitrt.h (NEW), both on this build's libexitrt.so.0 (LIBDIR), on MODEL;
# each must pass its own checks and print the same outcomes.
#   cmake -DPREV=... -DNEW=... -DLIBDIR=... -DMODEL=... -P compare.cmake
foreach(which PREV NEW)
  execute_process(COMMAND ${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${LIBDIR} ${${which}} ${MODEL}
                  OUTPUT_VARIABLE out_${which} ERROR_VARIABLE err RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${${which}} failed (${rc}):\n${err}")
  endif()
endforeach()
if(NOT out_PREV STREQUAL out_NEW)
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/abi_prev.out "${out_PREV}")
  file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/abi_new.out "${out_NEW}")
  message(FATAL_ERROR "the 0.3 program's outcomes differ from the 0.4 program's "
                      "(abi_prev.out, abi_new.out in ${CMAKE_CURRENT_BINARY_DIR})")
endif()
string(REGEX MATCHALL "\ninfer " lines "\n${out_NEW}")
list(LENGTH lines n)
message(STATUS "abi_prev: the 0.3 and 0.4 programs agree on ${n} samples (ert_infer and a stream)")
