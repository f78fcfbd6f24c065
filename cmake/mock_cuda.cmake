# CPU mock of the CUDA device layer (tests/mock_cuda/): the library's C
# sources compiled with AP_HAVE_CUDA=1 but linked against plain-C stand-ins
# for everything the .cu files provide, so the host logic of the CUDA paths
# (capture/model_cuda.c and its callers: buffers, paging, micro-batching,
# observers, policies) runs and is tested on a machine without a GPU. It
# checks host logic only, never the kernels' device code.
#
#   cmake -S . -B build-mock -DATTNPRED_CUDA=OFF -DATTNPRED_MOCK_CUDA=ON
#   cmake --build build-mock --target attnpred_mock_tests
#   ctest --test-dir build-mock -R mockcuda --output-on-failure
#
# Included from CMakeLists.txt after attnpred_core and the tests are defined.
# Neither cudart nor cuBLAS is linked; cuDNN stays off (AP_HAVE_CUDNN is
# never defined here, so train/ builds its CPU-only path, as without cuDNN).

set(AP_MOCK_LIB_SOURCES ${AP_LIB_SOURCES})
list(FILTER AP_MOCK_LIB_SOURCES EXCLUDE REGEX "\\.cu$")
file(GLOB AP_MOCK_CUDA_SOURCES CONFIGURE_DEPENDS tests/mock_cuda/*.c)

# attnpred_core's dependencies, less the CUDA ones.
get_target_property(AP_MOCK_DEPS attnpred_core INTERFACE_LINK_LIBRARIES)
list(FILTER AP_MOCK_DEPS EXCLUDE REGEX "^CUDA::|cudnn|cudart|cublas")

add_library(attnpred_mockcuda STATIC ${AP_MOCK_LIB_SOURCES} ${AP_MOCK_CUDA_SOURCES})
target_include_directories(attnpred_mockcuda PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(attnpred_mockcuda PRIVATE ${AP_WARN})
target_compile_definitions(attnpred_mockcuda PUBLIC _GNU_SOURCE AP_HAVE_CUDA=1)
target_link_libraries(attnpred_mockcuda PUBLIC ${AP_MOCK_DEPS})
# The mock's products are plain loops: optimise them even in Debug builds
# (the real-model parity test multiplies a 135M-parameter model).
set_source_files_properties(${AP_MOCK_CUDA_SOURCES} PROPERTIES COMPILE_OPTIONS "-O2")
if(ATTNPRED_NATIVE)
  target_compile_options(attnpred_mockcuda PRIVATE -march=native)
endif()
# ATTNPRED_SANITIZE reaches these targets through add_compile_options and
# add_link_options (they are defined after those calls).

# The tests whose GPU cases the mock runs: every tests/test_*cuda*.c (the
# CUDA engine, GPU capture and policies, the kernels' entry points) and the
# sparse attention test (device lists: unsorted, repeated, out of range;
# pinned pages). tests/test_block_pool.c is not among them: its GPU case
# calls the CUDA runtime (cudaMalloc, cudaMemcpy) directly, which this mock
# does not provide.
file(GLOB AP_MOCK_TEST_SOURCES CONFIGURE_DEPENDS tests/test_*cuda*.c)
list(APPEND AP_MOCK_TEST_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tests/test_sparse_attn.c)
set(AP_MOCK_TESTS)
foreach(src ${AP_MOCK_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  list(APPEND AP_MOCK_TESTS ${name})
endforeach()
add_custom_target(attnpred_mock_tests)
if(CRITERION_FOUND)
  file(GLOB AP_MOCK_TEST_HELPERS CONFIGURE_DEPENDS tests/helpers/*.c)
  add_library(attnpred_mockcuda_testhelp STATIC ${AP_MOCK_TEST_HELPERS})
  target_link_libraries(attnpred_mockcuda_testhelp PUBLIC attnpred_mockcuda PkgConfig::CRITERION)
  target_include_directories(attnpred_mockcuda_testhelp PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/tests)
  target_compile_definitions(attnpred_mockcuda_testhelp PUBLIC
    AP_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}"
    AP_BINARY_DIR="${CMAKE_CURRENT_BINARY_DIR}")
  foreach(name ${AP_MOCK_TESTS})
    add_executable(${name}_mockcuda tests/${name}.c)
    target_link_libraries(${name}_mockcuda PRIVATE attnpred_mockcuda_testhelp)
    target_compile_options(${name}_mockcuda PRIVATE ${AP_WARN})
    add_dependencies(attnpred_mock_tests ${name}_mockcuda)
    add_test(NAME ${name}_mockcuda COMMAND ${name}_mockcuda --verbose=0 -j2)
    set_tests_properties(${name}_mockcuda PROPERTIES
      ENVIRONMENT "OPENBLAS_NUM_THREADS=1"
      SKIP_RETURN_CODE 77
      LABELS mockcuda)
  endforeach()
else()
  message(WARNING "Criterion not found: the CUDA-mock tests are not built")
endif()

# The offload benchmark on the mock: its times mean nothing (the "device" is
# this CPU, synchronously), but what it moves does not depend on the
# hardware: pool sizes, KV copied per token, prefetch hits on a real model
# and predictor (docs/gpu.md).
add_executable(bench-engine-gpu-mockcuda bench/bench_engine_gpu.c)
target_link_libraries(bench-engine-gpu-mockcuda PRIVATE attnpred_mockcuda)
target_compile_definitions(bench-engine-gpu-mockcuda PRIVATE
  AP_DATA_DIR="${CMAKE_CURRENT_SOURCE_DIR}/data" AP_SOURCE_DIR="${CMAKE_CURRENT_SOURCE_DIR}")
