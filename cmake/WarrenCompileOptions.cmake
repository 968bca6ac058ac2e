# WarrenCompileOptions.cmake — compile and link options for warren's own
# targets (the library, its tests, examples and benchmarks).
#
#   warren_apply_options(<target> [THREAD_SAFETY])
#
# applies, according to the cache options set in the top-level CMakeLists.txt:
#
#   * warnings (-Wall -Wextra -Wpedantic; with GCC, without
#     -Wmissing-field-initializers) when warren is the top-level project, plus
#     -Werror with WARREN_WERROR;
#   * -fsanitize=<WARREN_SANITIZE> -fno-omit-frame-pointer -g (compile and
#     link), with -fno-sanitize-recover=all so that UBSan findings fail tests;
#   * with THREAD_SAFETY and WARREN_THREAD_SAFETY_ANALYSIS (clang only):
#     -Wthread-safety -Werror=thread-safety.
#
# Everything is PRIVATE: none of it leaks into warren's exported usage
# requirements, so an installed warren imposes no flags on its users.

include_guard(GLOBAL)

set(_warren_sanitize_values "" "address,undefined" "address" "undefined"
    "thread")

function(warren_validate_options)
  if(NOT WARREN_SANITIZE IN_LIST _warren_sanitize_values)
    message(FATAL_ERROR
      "WARREN_SANITIZE='${WARREN_SANITIZE}': expected one of "
      "\"\", \"address,undefined\", \"address\", \"undefined\", \"thread\".")
  endif()
  if(WARREN_SANITIZE AND NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "WARREN_SANITIZE needs GCC or Clang.")
  endif()
  if(WARREN_THREAD_SAFETY_ANALYSIS
     AND NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(WARNING
      "WARREN_THREAD_SAFETY_ANALYSIS needs Clang (compiler is "
      "${CMAKE_CXX_COMPILER_ID}); the analysis is not run. Configure with "
      "-DCMAKE_CXX_COMPILER=clang++ (or the clang-tsa preset).")
  endif()
endfunction()

function(warren_apply_options target)
  cmake_parse_arguments(PARSE_ARGV 1 _opt "THREAD_SAFETY" "" "")
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    return()
  endif()

  if(PROJECT_IS_TOP_LEVEL)
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # GCC 12's -Wextra flags every designated initialiser that leaves a
      # field to its default (`{.prefetch = 10}`), which is how warren's
      # option structs are meant to be used. Clang keeps the warning, which
      # it only gives for positional initialisers.
      target_compile_options(${target} PRIVATE -Wno-missing-field-initializers)
    endif()
    if(WARREN_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()

  if(WARREN_SANITIZE)
    set(_flags -fsanitize=${WARREN_SANITIZE} -fno-omit-frame-pointer)
    if(WARREN_SANITIZE MATCHES "undefined")
      list(APPEND _flags -fno-sanitize-recover=all)
    endif()
    target_compile_options(${target} PRIVATE ${_flags} -g)
    target_link_options(${target} PRIVATE ${_flags})
  endif()

  if(_opt_THREAD_SAFETY AND WARREN_THREAD_SAFETY_ANALYSIS
     AND CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    target_compile_options(${target} PRIVATE
      -Wthread-safety -Werror=thread-safety)
  endif()
endfunction()
