#!/bin/bash
# Puts Debian's redis-server (and the two libraries it needs beyond glibc/libssl/libsystemd) into
# the git-ignored .gpu/redis/, for the GPU machine, which reaches no package registry.
# Run from the project root on the dev machine:   bash bench/fetch_redis.sh
# Then carry ".gpu/redis" in a device call and set REDIS_SERVER=.gpu/redis/redis-server.
set -euo pipefail
git check-ignore -q .gpu/x 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu/redis && mkdir -p .gpu/redis/debs .gpu/redis/root
(cd .gpu/redis/debs && apt-get download -q redis-server redis-tools libjemalloc2 liblzf1)
for deb in .gpu/redis/debs/*.deb; do dpkg -x "$deb" .gpu/redis/root; done
# Plain files only (Debian's redis-server is a symlink to redis-check-rdb; carried trees may
# drop links), and the libraries beside the binary for LD_LIBRARY_PATH.
cp -L .gpu/redis/root/usr/bin/redis-server .gpu/redis/redis-server
cp -L .gpu/redis/root/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .gpu/redis/
cp -L .gpu/redis/root/usr/lib/x86_64-linux-gnu/liblzf.so.1 .gpu/redis/
rm -rf .gpu/redis/debs .gpu/redis/root
chmod +x .gpu/redis/redis-server
ls -la .gpu/redis
