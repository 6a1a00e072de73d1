#!/usr/bin/env bash
# Builds the Debian package mailgate_VERSION_ARCH.deb from this repository: the
# binary from a CMake build (the project's usual build/ by default, so nothing is
# compiled twice), then CPack's DEB generator with the install() rules of
# packaging/CMakeLists.txt (binary, unit, example configuration, docs, maintainer
# scripts; library dependencies from dpkg-shlibdeps).
#
#   scripts/package.sh [BUILD_DIR]      (default: build)
#
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${1:-build}
case "$build" in /*) ;; *) build="$root/$build" ;; esac

for tool in cmake cpack dpkg-shlibdeps dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "package: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="$root"
fi
# CMAKE_SKIP_INSTALL_ALL_DEPENDENCY: cpack installs what the package holds without
# building every target first (the unit tests are not in the package).
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON \
    "${launcher[@]}" >&2
else
  cmake -S "$root" -B "$build" -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >&2  # new install() rules, docs
fi
cmake --build "$build" -j"${JOBS:-2}" --target mailgate >&2

rm -f "$build"/mailgate_*.deb
(cd "$build" && cpack -G DEB >&2)
deb=$(ls "$build"/mailgate_*.deb)
dpkg-deb --info "$deb" | sed -n '/Package:/,$p' >&2
echo "$deb"
