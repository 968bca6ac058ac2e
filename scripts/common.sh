# Shared by scripts/test, scripts/demo and .ci/run; sourced, not run.
#
# Environment:
#   WARREN_JOBS   parallel build jobs (default: the number of CPUs)
#   WARREN_CCACHE 0 to build without ccache even when it is installed

warren_jobs() {
  echo "${WARREN_JOBS:-$(nproc 2>/dev/null || echo 2)}"
}

# warren_configure <build dir> <cmake args...>
#
# Configures with Ninja for a new build directory (an existing one keeps its
# generator) and with ccache as the compiler launcher when it is installed.
warren_configure() {
  local dir=$1
  shift
  local args=()
  if [[ ! -f "$dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
    args+=(-G Ninja)
  fi
  if [[ "${WARREN_CCACHE:-1}" != 0 ]] && command -v ccache >/dev/null 2>&1; then
    args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  fi
  echo "+ cmake -S . -B $dir ${args[*]} $*"
  cmake -S . -B "$dir" "${args[@]}" "$@"
}
