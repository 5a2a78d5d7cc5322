#!/usr/bin/env bash
# Installs the real services and tools portwatch's tests run (from Debian's
# packages), only those missing. Nothing is started: tests start every service
# in the foreground on ports they choose and stop it by PID.
set -euo pipefail

# binary -> Debian package
declare -A need=(
  [redis-server]=redis-server
  [dnsmasq]=dnsmasq
  [chronyd]=chrony
  [iptables]=iptables
  [ip]=iproute2
  [openssl]=openssl
  [xz]=xz-utils
  [memcached]=memcached
  [mosquitto]=mosquitto
  [sshd]=openssh-server
  [ssh-keygen]=openssh-client
  [runuser]=util-linux
  [mariadbd]=mariadb-server
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
# PostgreSQL: any initdb on PATH or under /usr/lib/postgresql will do.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need[initdb]=postgresql
fi

missing=()
for bin in "${!need[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/sbin/$bin" ]; then
    missing+=("${need[$bin]}")
  fi
done

# The SMTP server the notification tests send mail to: a Python module, run
# with Debian's own interpreter.
if ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  missing+=(python3-aiosmtpd)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # A temporary policy-rc.d stops maintainer scripts from starting the services
  # (the tests start their own); removed again unless it was already there.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
echo "test dependencies present"
