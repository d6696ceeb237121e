# Compiler settings shared by every target: warnings, ccache, and the helper that declares a
# module library with its include root at the repository top (includes read
# "worker/comm/communicator.h", never "../").

find_program(VLORCH_CCACHE ccache)
if(VLORCH_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  # pch_defines/time_macros let ccache hit on translation units that use precompiled headers.
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      ${VLORCH_CCACHE})
  set(CMAKE_C_COMPILER_LAUNCHER ${CMAKE_CXX_COMPILER_LAUNCHER})
  message(STATUS "vlorch: ccache enabled (${VLORCH_CCACHE})")
endif()

add_compile_options(-Wall -Wextra -Wno-unused-parameter)

# vlorch_library(NAME SOURCES ... [DEPS ...])
# Declares library vlorch_NAME with PUBLIC include root at the repository top.
function(vlorch_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(vlorch_${name} ${ARG_SOURCES})
  target_include_directories(vlorch_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(vlorch_${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  add_library(vlorch::${name} ALIAS vlorch_${name})
endfunction()
