# run_consumer.cmake — configures, builds and runs one consumer project of
# warren. Run by ctest (see tests/CMakeLists.txt) as
#
#   cmake -DMODE=<mode> -DWORK_DIR=<scratch dir> -DWARREN_SOURCE_DIR=<src>
#         -DWARREN_BINARY_DIR=<build> -DGENERATOR=<gen> -DMAKE_PROGRAM=<prog>
#         -DCXX_COMPILER=<c++> [-DCXX_COMPILER_LAUNCHER=ccache] [-DCONFIG=<cfg>]
#         -P run_consumer.cmake
#
# Modes:
#   install          `cmake --install` this build into WORK_DIR/prefix, then
#                    find_package(warren CONFIG REQUIRED) from there
#                    (consumer: find_package/).
#   build_tree       find_package(warren) with warren_DIR = the build tree
#                    (the export() of the build; consumer: find_package/).
#   pkg_config       install as above, then compile consumer_main.cc with
#                    the flags of `pkg-config --cflags --libs warren`.
#   add_subdirectory add_subdirectory(<source tree>) (consumer:
#                    add_subdirectory/).
#   fetchcontent     FetchContent from a file:// git URL (consumer:
#                    fetchcontent/): a scratch repository holding one commit
#                    of the source tree as it is, uncommitted files included;
#                    skipped when the source tree is not a git checkout.
#
# Prints WARREN_PACKAGING_SKIPPED when the test cannot run here (ctest then
# reports it as skipped); any failure is a FATAL_ERROR.

cmake_minimum_required(VERSION 3.24)

foreach(var MODE WORK_DIR WARREN_SOURCE_DIR WARREN_BINARY_DIR GENERATOR
            CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

set(CONSUMERS_DIR "${CMAKE_CURRENT_LIST_DIR}")
set(JOBS 2)

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# Runs a command, echoing it; a failure ends the test.
function(run)
  string(REPLACE ";" " " _echo "${ARGN}")
  message(STATUS "\$ ${_echo}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "packaging.${MODE}: command failed (${_rc}): ${_echo}")
  endif()
endfunction()

function(skip why)
  message(STATUS "WARREN_PACKAGING_SKIPPED: ${why}")
  # Reaching the end of the script exits 0; ctest sees the skip marker.
  set(SKIPPED TRUE PARENT_SCOPE)
endfunction()

# Brings libwarren in the build tree up to date with the sources, so that the
# headers a consumer compiles against match the library it links (a no-op
# after a full build).
function(update_warren)
  set(_config_args)
  if(CONFIG)
    set(_config_args --config "${CONFIG}")
  endif()
  run("${CMAKE_COMMAND}" --build "${WARREN_BINARY_DIR}" --target warren
      --parallel ${JOBS} ${_config_args})
endfunction()

function(install_warren prefix)
  update_warren()
  set(_config_args)
  if(CONFIG)
    set(_config_args --config "${CONFIG}")
  endif()
  run("${CMAKE_COMMAND}" --install "${WARREN_BINARY_DIR}" --prefix "${prefix}"
      ${_config_args})
endfunction()

# Configures and builds consumer project <name> in WORK_DIR/build with extra
# cache arguments, then runs its `consumer` executable.
function(build_and_run name)
  set(_build "${WORK_DIR}/build")
  set(_args -S "${CONSUMERS_DIR}/${name}" -B "${_build}" -G "${GENERATOR}"
            "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
  if(MAKE_PROGRAM)
    list(APPEND _args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
  endif()
  if(CXX_COMPILER_LAUNCHER)
    list(APPEND _args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_COMPILER_LAUNCHER}")
  endif()
  run("${CMAKE_COMMAND}" ${_args} ${ARGN})
  set(_config_args)
  if(CONFIG)
    set(_config_args --config "${CONFIG}")
  endif()
  run("${CMAKE_COMMAND}" --build "${_build}" --parallel ${JOBS} ${_config_args})
  set(_exe "${_build}/consumer")
  if(NOT EXISTS "${_exe}" AND CONFIG)
    set(_exe "${_build}/${CONFIG}/consumer")
  endif()
  run("${_exe}")
  set(CONSUMER_BUILD_DIR "${_build}" PARENT_SCOPE)
endfunction()

# Fails unless the consumer's find_package(warren) used a package under <dir>.
function(expect_warren_dir_under dir)
  file(STRINGS "${CONSUMER_BUILD_DIR}/CMakeCache.txt" _line
       REGEX "^warren_DIR:")
  string(REGEX REPLACE "^warren_DIR:[A-Z]+=" "" _found "${_line}")
  file(REAL_PATH "${dir}" _dir)
  file(REAL_PATH "${_found}" _found)
  string(FIND "${_found}/" "${_dir}/" _pos)
  if(NOT _pos EQUAL 0)
    message(FATAL_ERROR
      "packaging.${MODE}: find_package(warren) used '${_found}', not a "
      "package under '${_dir}'")
  endif()
  message(STATUS "warren package used: ${_found}")
endfunction()

if(MODE STREQUAL "install")
  set(_prefix "${WORK_DIR}/prefix")
  install_warren("${_prefix}")
  build_and_run(find_package "-DCMAKE_PREFIX_PATH=${_prefix}")
  expect_warren_dir_under("${_prefix}")

elseif(MODE STREQUAL "build_tree")
  update_warren()
  build_and_run(find_package "-Dwarren_DIR=${WARREN_BINARY_DIR}")
  expect_warren_dir_under("${WARREN_BINARY_DIR}")

elseif(MODE STREQUAL "pkg_config")
  find_program(PKG_CONFIG NAMES pkg-config pkgconf)
  if(NOT PKG_CONFIG)
    skip("pkg-config is not installed")
  else()
    set(_prefix "${WORK_DIR}/prefix")
    install_warren("${_prefix}")
    file(GLOB_RECURSE _pc "${_prefix}/*/warren.pc")
    if(NOT _pc)
      message(FATAL_ERROR "packaging.pkg_config: no warren.pc under ${_prefix}")
    endif()
    list(GET _pc 0 _pc)
    get_filename_component(_pc_dir "${_pc}" DIRECTORY)
    set(ENV{PKG_CONFIG_PATH} "${_pc_dir}")
    execute_process(
      COMMAND "${PKG_CONFIG}" --cflags --libs warren
      OUTPUT_VARIABLE _flags OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "packaging.pkg_config: pkg-config failed (${_rc})")
    endif()
    message(STATUS "pkg-config --cflags --libs warren: ${_flags}")
    separate_arguments(_flags UNIX_COMMAND "${_flags}")
    # A shared libwarren in a private prefix: let the consumer find it.
    execute_process(
      COMMAND "${PKG_CONFIG}" --variable=libdir warren
      OUTPUT_VARIABLE _libdir OUTPUT_STRIP_TRAILING_WHITESPACE)
    run("${CXX_COMPILER}" -std=c++20 "${CONSUMERS_DIR}/consumer_main.cc"
        -o "${WORK_DIR}/consumer" ${_flags} "-Wl,-rpath,${_libdir}")
    run("${WORK_DIR}/consumer")
  endif()

elseif(MODE STREQUAL "add_subdirectory")
  build_and_run(add_subdirectory "-DWARREN_SOURCE_DIR=${WARREN_SOURCE_DIR}")

elseif(MODE STREQUAL "fetchcontent")
  # FetchContent clones committed content only. To test the tree as it is
  # (uncommitted and new files included, as the other modes do), the files
  # git would see — tracked, and untracked but not ignored — are committed
  # to a scratch repository, which the consumer fetches by its file:// URL.
  # The checkout itself is only read.
  find_package(Git QUIET)
  set(_files "")
  if(GIT_FOUND)
    execute_process(
      COMMAND "${GIT_EXECUTABLE}" -c core.quotePath=off
              -C "${WARREN_SOURCE_DIR}" ls-files --cached --others
              --exclude-standard
      OUTPUT_VARIABLE _files OUTPUT_STRIP_TRAILING_WHITESPACE
      RESULT_VARIABLE _rc ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(STATUS "git ls-files: ${_err}")
      set(_files "")
    endif()
  endif()
  if(NOT GIT_FOUND)
    skip("git is not installed")
  elseif(_files STREQUAL "")
    skip("${WARREN_SOURCE_DIR} is not a git checkout")
  else()
    set(_repo "${WORK_DIR}/warren.git")
    string(REPLACE "\n" ";" _files "${_files}")
    # A build tree inside the checkout that .gitignore does not cover is not
    # source.
    file(RELATIVE_PATH _binary_rel "${WARREN_SOURCE_DIR}" "${WARREN_BINARY_DIR}")
    set(_skip_prefix "")
    if(NOT _binary_rel STREQUAL "" AND NOT _binary_rel MATCHES "^\\.\\.")
      set(_skip_prefix "${_binary_rel}/")
    endif()
    set(_count 0)
    foreach(_f IN LISTS _files)
      set(_pos -1)
      if(_skip_prefix)
        string(FIND "${_f}" "${_skip_prefix}" _pos)
      endif()
      # Deleted files are still listed by ls-files --cached.
      if(_pos EQUAL 0 OR NOT EXISTS "${WARREN_SOURCE_DIR}/${_f}"
         OR IS_DIRECTORY "${WARREN_SOURCE_DIR}/${_f}")
        continue()
      endif()
      get_filename_component(_dir "${_repo}/${_f}" DIRECTORY)
      file(MAKE_DIRECTORY "${_dir}")
      file(COPY_FILE "${WARREN_SOURCE_DIR}/${_f}" "${_repo}/${_f}")
      math(EXPR _count "${_count} + 1")
    endforeach()
    message(STATUS "snapshot of ${_count} files of ${WARREN_SOURCE_DIR} in ${_repo}")
    set(_git "${GIT_EXECUTABLE}" -C "${_repo}" -c user.name=warren-packaging
             -c user.email=warren-packaging@localhost -c commit.gpgSign=false)
    run(${_git} init -q)
    run(${_git} add -A)
    run(${_git} commit -q -m "warren working tree snapshot")
    execute_process(COMMAND ${_git} rev-parse HEAD
      OUTPUT_VARIABLE _head OUTPUT_STRIP_TRAILING_WHITESPACE)
    build_and_run(fetchcontent
      "-DWARREN_GIT_REPOSITORY=file://${_repo}"
      "-DWARREN_GIT_TAG=${_head}"
      "-DFETCHCONTENT_BASE_DIR=${WORK_DIR}/deps")
  endif()

else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

if(NOT SKIPPED)
  message(STATUS "packaging.${MODE}: OK")
endif()
