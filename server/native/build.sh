#!/bin/sh
# Compile danet-serve's block cache (danet_blockcache.c beside this script) into the shared library that
# server/allocator.py preloads: `build.sh OUT` with $CC (default cc). The Makefile and the Dockerfile's
# native stage both call it, so the library is built one way everywhere.
set -eu
"${CC:-cc}" -O2 -Wall -shared -fPIC -o "$1" "$(dirname "$0")/danet_blockcache.c" -lpthread -ldl
