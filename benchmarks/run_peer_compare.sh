#!/usr/bin/env bash
# Builds warren_peer_compare in a Release build directory (configuring one if
# needed) and runs it; the markdown report goes to stdout and to
# <build dir>/peer_compare.md, progress to stderr.
#
#   benchmarks/run_peer_compare.sh [runner flags]   # e.g. --quick, --only=P4
#
# Environment:
#   WARREN_BUILD_DIR  build directory (default: build-release, as the
#                     `release` preset); an existing one must be Release
#   WARREN_JOBS       parallel build jobs (default: 2)
#   WARREN_PEER_QUICK=1  same as --quick (about a minute)
#
# The full run takes several minutes on 2 cores. It starts a private
# RabbitMQ server on 127.0.0.1 when rabbitmq-server is installed (pass
# --no-rabbitmq to skip it); see benchmarks/README.md.

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${WARREN_BUILD_DIR:-build-release}"
case "$build" in
  /*) ;;
  *) build="$root/$build" ;;
esac
jobs="${WARREN_JOBS:-2}"

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  generator=()
  if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
  cmake -S "$root" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DWARREN_BUILD_TESTS=OFF -DWARREN_BUILD_EXAMPLES=OFF \
    -DWARREN_BUILD_BENCHMARKS=ON >&2
fi

build_type="$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt")"
if [[ "$build_type" != "Release" ]]; then
  echo "run_peer_compare.sh: $build is a '$build_type' build; benchmark a" \
       "Release build (set WARREN_BUILD_DIR to another directory)" >&2
  exit 2
fi
if ! grep -q '^WARREN_BUILD_BENCHMARKS:BOOL=ON' "$build/CMakeCache.txt"; then
  cmake -S "$root" -B "$build" -DWARREN_BUILD_BENCHMARKS=ON >&2
fi

cmake --build "$build" --target warren_peer_compare -j "$jobs" >&2
exec "$build/benchmarks/warren_peer_compare" --out="$build/peer_compare.md" "$@"
