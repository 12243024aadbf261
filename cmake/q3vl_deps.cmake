# Third-party dependencies, all from Debian packages (scripts/setup.sh installs them).
find_package(absl REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(OpenMP REQUIRED)
find_package(Threads REQUIRED)
# SHA-256 content digests (core/sha256.h); TLS for fetching https media (cluster/server).
find_package(OpenSSL 3 REQUIRED COMPONENTS Crypto SSL)
# OpenMPI: the MPI communicator (parallel/mpi) and mpirun for multirank tests.
find_package(MPI REQUIRED COMPONENTS CXX)
# The control plane between the coordinator and its replicas (cluster/control/control.proto).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(Q3VL_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

# NCCL for the GPU communicator (parallel/nccl), from the CUDA install (/usr/local/cuda).
if(Q3VL_CUDA)
  find_package(CUDAToolkit REQUIRED)
  find_path(Q3VL_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(Q3VL_NCCL_LIB nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(NOT Q3VL_NCCL_INCLUDE OR NOT Q3VL_NCCL_LIB)
    message(FATAL_ERROR "NCCL not found under /usr/local/cuda (needed with -DQ3VL_CUDA=ON)")
  endif()
  add_library(q3vl_nccl INTERFACE)
  target_include_directories(q3vl_nccl INTERFACE ${Q3VL_NCCL_INCLUDE})
  target_link_libraries(q3vl_nccl INTERFACE ${Q3VL_NCCL_LIB})
endif()

# oneDNN: the CPU backend's bf16 GEMMs (core/cpu/bf16_gemm.h), which pick the processor's bf16
# instructions (AVX512_BF16, AMX) at run time. Debian's build uses OpenMP (libgomp), as we do.
find_package(dnnl CONFIG REQUIRED)

# The OpenMP build of OpenBLAS, so BLAS calls and our own parallel loops share one pool.
find_path(Q3VL_CBLAS_INCLUDE cblas.h PATHS /usr/include/x86_64-linux-gnu/openblas-openmp
          /usr/include/openblas-openmp /usr/include/openblas NO_DEFAULT_PATH)
find_library(Q3VL_OPENBLAS_LIB NAMES openblas PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp
             NO_DEFAULT_PATH)
if(NOT Q3VL_CBLAS_INCLUDE OR NOT Q3VL_OPENBLAS_LIB)
  message(FATAL_ERROR "OpenBLAS (OpenMP) not found: run scripts/setup.sh")
endif()
add_library(q3vl_blas INTERFACE)
target_include_directories(q3vl_blas INTERFACE ${Q3VL_CBLAS_INCLUDE})
target_link_libraries(q3vl_blas INTERFACE ${Q3VL_OPENBLAS_LIB} OpenMP::OpenMP_CXX)

# glibc's vector math library (SIMD expf for the CPU softmax); optional, part of libc6 on Debian.
find_library(Q3VL_LIBMVEC mvec)
add_library(q3vl_vector_math INTERFACE)
if(Q3VL_LIBMVEC)
  target_link_libraries(q3vl_vector_math INTERFACE ${Q3VL_LIBMVEC})
  target_compile_definitions(q3vl_vector_math INTERFACE Q3VL_HAVE_LIBMVEC=1)
endif()

if(Q3VL_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

# Input pipeline: PCRE2 (pre-tokenizer regex, JIT), utf8proc (NFC), libjpeg-turbo, libpng,
# FFmpeg's libraries (video). All found through pkg-config as imported targets.
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(LIBPNG REQUIRED IMPORTED_TARGET libpng)
pkg_check_modules(LIBJPEG REQUIRED IMPORTED_TARGET libjpeg)
pkg_check_modules(FFMPEG REQUIRED IMPORTED_TARGET libavformat libavcodec libavutil libswscale)
pkg_check_modules(CAIRO REQUIRED IMPORTED_TARGET cairo)

