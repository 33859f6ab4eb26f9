#!/usr/bin/env bash
# Installs what a fresh machine lacks (unixODBC and the PostgreSQL, MariaDB and SQLite
# ODBC drivers; for the tests also Squid, openssl and the Python STOMP client stomp.py),
# starts any local service that has stopped and enables RabbitMQ's STOMP plugin. Safe to run
# repeatedly.
#   scripts/setup.sh            packages + test packages + services (development and CI)
#   scripts/setup.sh --packages packages only (Docker image build: no test packages)
# For Debian and its derivatives (apt, dpkg). Privileged steps run through sudo unless the
# script runs as root (as in CI and the image build, where sudo may not be installed).
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# unixODBC reads odbcinst.ini from $ODBCSYSINI when it is set.
odbcinst_ini="${ODBCSYSINI:-/etc}/odbcinst.ini"

packages=(unixodbc unixodbc-dev odbc-postgresql odbc-mariadb libsqliteodbc)
# Only the tests use these: each firewall test starts a private squid (tests/common/squid.rs),
# and the TLS tests make their certificates and squid's password file with openssl; the STOMP
# test publishes with stomp.py, installed with pip below.
test_packages=(squid openssl python3 python3-pip)
[ "${1:-}" = "--packages" ] || packages+=("${test_packages[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Installing squid starts the system service on port 3128 where an init system runs; the
  # tests never use it, so a squid this script installed does not keep running.
  if [[ " ${missing[*]} " == *" squid "* ]]; then
    if [ -d /run/systemd/system ]; then
      as_root systemctl disable --now squid >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/squid ]; then
      as_root /etc/init.d/squid stop >/dev/null 2>&1 || true
    fi
  fi
fi

# The Debian packages register their drivers, but older images do not: make sure the
# three driver names used in configs and tests resolve.
register_driver() {
  local name=$1 lib=$2
  odbcinst -q -d -n "$name" >/dev/null 2>&1 && return 0
  local path
  path=$(find /usr/lib -name "$lib" 2>/dev/null | head -n 1)
  [ -n "$path" ] || { echo "setup: driver library $lib not found" >&2; return 1; }
  printf '[%s]\nDriver=%s\n' "$name" "$path" | as_root odbcinst -i -d -r >/dev/null
}
register_driver "PostgreSQL Unicode" psqlodbcw.so
register_driver "MariaDB Unicode" libmaodbc.so
register_driver "SQLite3" libsqlite3odbc.so

# Debian's psqlODBC template turns on CommLog, which writes every protocol exchange to a
# file in /tmp: a large slowdown and a disk filler on a busy bridge.
if grep -q '^CommLog=1' "$odbcinst_ini" 2>/dev/null; then
  as_root sed -i 's/^CommLog=1/CommLog=0/' "$odbcinst_ini"
fi

[ "${1:-}" = "--packages" ] && exit 0

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "setup: $name did not open port $port" >&2
  return 1
}

if ! port_open 5432; then
  echo "setup: starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_port 5432 PostgreSQL
fi
if ! port_open 3306; then
  echo "setup: starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port 3306 MariaDB
fi
if ! port_open 5672; then
  echo "setup: starting RabbitMQ"
  as_root rabbitmq-server -detached
  wait_port 5672 RabbitMQ
fi
# The STOMP test publishes through the shared node's STOMP listener (61613). Enabling a
# plugin on a running node starts it at once and is recorded in enabled_plugins, so it
# survives restarts.
if ! port_open 61613; then
  echo "setup: enabling RabbitMQ STOMP"
  as_root rabbitmq-plugins enable rabbitmq_stomp >/dev/null
  wait_port 61613 "RabbitMQ STOMP"
fi
stomp_py=8.2.0
if [ "$(python3 -c 'import stomp; print(stomp.__version__)' 2>/dev/null)" != "$stomp_py" ]; then
  echo "setup: installing stomp.py $stomp_py"
  # Into the Python the tests run (not root's); Debian marks its system Python as
  # externally managed, and this one test-only package does not need a virtualenv.
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    python3 -m pip install --quiet "stomp.py==$stomp_py"
fi
if ! port_open 1883; then
  echo "setup: starting Mosquitto"
  as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port 1883 Mosquitto
fi
echo "setup: ready"
