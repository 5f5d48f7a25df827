# The torch-free CUDA kernels (csrc/bellman_cuda.cu), for CMakeLists.txt to include() after
# enable_testing(). Whenever a CUDA compiler is found they are compiled for sm_80 and sm_90 with
# warnings as errors (no GPU or CUDA-enabled torch needed), so CI compile-checks them; the native
# test test_bellman_cuda runs where a device is present and reports "skipped" (exit 77) elsewhere.
# Override the architectures with -DCMAKE_CUDA_ARCHITECTURES=...
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
  set(BCODER_CSRC ${CMAKE_CURRENT_LIST_DIR}/../csrc)

  add_library(bcoder_cuda STATIC ${BCODER_CSRC}/bellman_cuda.cu)
  target_include_directories(bcoder_cuda PUBLIC ${BCODER_CSRC})
  target_compile_features(bcoder_cuda PUBLIC cuda_std_17)
  target_compile_options(bcoder_cuda PRIVATE --Werror=all-warnings -Xcompiler=-Wall,-Wextra)

  add_executable(test_bellman_cuda ${BCODER_CSRC}/test_bellman_cuda.cu)
  target_link_libraries(test_bellman_cuda PRIVATE bcoder_cuda)
  add_test(NAME test_bellman_cuda COMMAND test_bellman_cuda)
  set_tests_properties(test_bellman_cuda PROPERTIES SKIP_RETURN_CODE 77)
else()
  message(STATUS "No CUDA compiler found: the CUDA kernels are not compiled")
endif()
