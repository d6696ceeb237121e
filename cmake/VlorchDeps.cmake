# Every third-party dependency, found through its own CMake config where it ships one.
#
# LibTorch: Debian's libtorch-dev by default; a user's own (e.g. a CUDA build) is picked up
# through CMAKE_PREFIX_PATH, e.g.
#   cmake -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')

find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS C)
# vlorch uses the C API; keep the deprecated C++ bindings out of every translation unit.
add_compile_definitions(OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
find_package(RocksDB REQUIRED CONFIG)
find_package(cppzmq REQUIRED CONFIG)
find_package(Boost 1.74 REQUIRED)                # Asio and Beast are header-only
find_package(yaml-cpp REQUIRED CONFIG)
find_package(nlohmann_json 3.10 REQUIRED CONFIG)
find_package(CLI11 REQUIRED CONFIG)
find_package(fmt REQUIRED CONFIG)
find_package(spdlog REQUIRED CONFIG)
find_package(libjpeg-turbo CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)
pkg_check_modules(ICU_UC REQUIRED IMPORTED_TARGET icu-uc)
find_package(LibArchive REQUIRED)
# libzip: pkg-config, because Debian's CMake config demands the zipcmp/zipmerge tools.
pkg_check_modules(LIBZIP REQUIRED IMPORTED_TARGET libzip)
if(NOT VLORCH_FUZZ)  # the fuzz build has no LibTorch module
  find_package(Torch REQUIRED)
endif()
# Debian's gflags config (pulled in by LibTorch's) defines a `gflags` target whose location
# is set for no configuration; give it one so every build type links.
if(TARGET gflags)
  get_target_property(_vlorch_gflags_loc gflags IMPORTED_LOCATION)
  if(NOT _vlorch_gflags_loc)
    find_library(VLORCH_GFLAGS_LIBRARY gflags)
    if(VLORCH_GFLAGS_LIBRARY)
      set_target_properties(gflags PROPERTIES IMPORTED_LOCATION "${VLORCH_GFLAGS_LIBRARY}")
    endif()
  endif()
endif()

if(NOT TARGET RocksDB::rocksdb-shared)
  message(FATAL_ERROR "RocksDB was found but has no RocksDB::rocksdb-shared target")
endif()

# CUDA toolkit + NCCL: optional. AUTO looks under /usr/local/cuda as well as the usual paths.
set(VLORCH_HAVE_NCCL OFF)
if(NOT VLORCH_WITH_CUDA STREQUAL "OFF")
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{NCCL_HOME}/include)
    find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} $ENV{NCCL_HOME}/lib)
  endif()
  if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(VLORCH_HAVE_NCCL ON)
    add_library(vlorch_nccl INTERFACE)
    target_include_directories(vlorch_nccl INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(vlorch_nccl INTERFACE ${NCCL_LIBRARY} CUDA::cudart)
    message(STATUS "vlorch: NCCL backend ON (CUDA ${CUDAToolkit_VERSION}, ${NCCL_LIBRARY})")
  elseif(VLORCH_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "VLORCH_WITH_CUDA=ON but the CUDA toolkit or NCCL was not found; "
                        "set CUDAToolkit_ROOT / NCCL_HOME or configure with -DVLORCH_WITH_CUDA=OFF")
  else()
    message(STATUS "vlorch: NCCL backend OFF (CUDA toolkit or NCCL not found)")
  endif()
endif()
