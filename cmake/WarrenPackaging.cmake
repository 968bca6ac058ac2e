# WarrenPackaging.cmake — install rules, the CMake package (warrenConfig.cmake,
# warrenConfigVersion.cmake, warrenTargets.cmake), the build-tree export and
# the pkg-config file. Included from the top-level CMakeLists.txt when
# WARREN_INSTALL is on.
#
# Users:
#   find_package(warren CONFIG REQUIRED)        # installed, or warren_DIR=<build>
#   target_link_libraries(app PRIVATE warren::warren)
# or
#   pkg-config --cflags --libs warren

include_guard(GLOBAL)
include(CMakePackageConfigHelpers)

set(WARREN_CMAKE_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/warren"
  CACHE STRING "Where to install warren's CMake package files")
set(WARREN_PKGCONFIG_INSTALL_DIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig"
  CACHE STRING "Where to install warren.pc")

install(TARGETS warren
  EXPORT warrenTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/warren"
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
install(EXPORT warrenTargets
  NAMESPACE warren::
  FILE warrenTargets.cmake
  DESTINATION ${WARREN_CMAKE_INSTALL_DIR})

# The build tree is a package too: find_package(warren) with
# warren_DIR=<this build directory>.
export(EXPORT warrenTargets
  NAMESPACE warren::
  FILE "${PROJECT_BINARY_DIR}/warrenTargets.cmake")

# fmt is a PRIVATE dependency. A shared libwarren carries it in its own
# DT_NEEDED, but the exported static library lists it as $<LINK_ONLY:fmt::fmt>:
# then users link it too, so warrenConfig.cmake must find it.
get_target_property(_warren_type warren TYPE)
if(_warren_type STREQUAL "STATIC_LIBRARY")
  set(WARREN_CONFIG_NEEDS_PRIVATE_DEPS ON)
else()
  set(WARREN_CONFIG_NEEDS_PRIVATE_DEPS OFF)
endif()

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/warrenConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/warrenConfig.cmake"
  INSTALL_DESTINATION ${WARREN_CMAKE_INSTALL_DIR})
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/warrenConfigVersion.cmake"
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMajorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/warrenConfig.cmake"
  "${PROJECT_BINARY_DIR}/warrenConfigVersion.cmake"
  DESTINATION ${WARREN_CMAKE_INSTALL_DIR})

# pkg-config. The prefix is computed from the .pc file's own location
# (${pcfiledir}), so `cmake --install --prefix <anywhere>` gives a working
# file. Absolute install directories are written as they are.
set(_warren_pc_requires "absl_status absl_statusor absl_time absl_any_invocable")
set(_warren_pc_private "absl_flat_hash_map absl_flat_hash_set absl_btree absl_strings fmt")
if(WARREN_CONFIG_NEEDS_PRIVATE_DEPS)
  # A static libwarren needs its private dependencies on every link line,
  # not only with `pkg-config --static`.
  set(WARREN_PC_REQUIRES "${_warren_pc_requires} ${_warren_pc_private}")
  set(WARREN_PC_REQUIRES_PRIVATE "")
  set(WARREN_PC_LIBS "-lwarren -pthread")
  set(WARREN_PC_LIBS_PRIVATE "")
else()
  set(WARREN_PC_REQUIRES "${_warren_pc_requires}")
  set(WARREN_PC_REQUIRES_PRIVATE "${_warren_pc_private}")
  set(WARREN_PC_LIBS "-lwarren")
  set(WARREN_PC_LIBS_PRIVATE "-pthread")
endif()
if(IS_ABSOLUTE "${WARREN_PKGCONFIG_INSTALL_DIR}")
  set(WARREN_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _warren_pc_up
    "/prefix/${WARREN_PKGCONFIG_INSTALL_DIR}" "/prefix")
  string(REGEX REPLACE "/$" "" _warren_pc_up "${_warren_pc_up}")
  set(WARREN_PC_PREFIX "\${pcfiledir}/${_warren_pc_up}")
endif()
foreach(_dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(WARREN_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(WARREN_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
configure_file("${PROJECT_SOURCE_DIR}/cmake/warren.pc.in"
  "${PROJECT_BINARY_DIR}/warren.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/warren.pc"
  DESTINATION ${WARREN_PKGCONFIG_INSTALL_DIR})
