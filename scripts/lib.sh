# Shared by scripts/demo.sh and scripts/test.sh: make sure the tools and a
# PostgreSQL server are there, on a fresh Debian machine too.
# Sourced, not run. Sets and exports PG_SERVER_URL (no database part).

set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="$REPO_ROOT/.data"
mkdir -p "$DATA_DIR"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing with apt: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

require_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed: install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
    exit 1
  fi
}

pg_answers() { psql "$1/postgres" -Atqc 'select 1' >/dev/null 2>&1; }

# Uses the server of $DATABASE_URL (default 127.0.0.1:5432, user postgres) if it
# answers; else starts the machine's cluster; else a private trust-auth cluster
# in .data/pg on port 55432 (PostgreSQL refuses to run as root, so it runs as
# the postgres OS user).
ensure_postgres() {
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  local url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/dkl}"
  PG_SERVER_URL="${url%/*}"
  if pg_answers "$PG_SERVER_URL"; then export PG_SERVER_URL; return 0; fi

  if [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ] && command -v pg_ctlcluster >/dev/null; then
    log "starting the machine's PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start 2>/dev/null || true
    for _ in $(seq 1 20); do pg_answers "$PG_SERVER_URL" && { export PG_SERVER_URL; return 0; }; sleep 0.5; done
  fi

  apt_install postgresql
  local bin; bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  # Outside the checkout: the postgres OS user may not reach a repo under /root.
  local base=/var/tmp/dkl-pg
  local pgdata="$base/data" sock="$base/sock" pglog="$base/postgres.log"
  PG_SERVER_URL="postgres://postgres@127.0.0.1:55432"
  if pg_answers "$PG_SERVER_URL"; then export PG_SERVER_URL; return 0; fi
  mkdir -p "$pgdata" "$sock"
  touch "$pglog"
  chown -R postgres:postgres "$base"
  chmod 700 "$pgdata"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in $pgdata"
    runuser -u postgres -- "$bin/initdb" -A trust -U postgres --no-sync -D "$pgdata" >/dev/null
  fi
  log "starting the private PostgreSQL on 127.0.0.1:55432 (log: $pglog)"
  runuser -u postgres -- "$bin/pg_ctl" -D "$pgdata" -l "$pglog" -w \
    -o "-p 55432 -k $sock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { cat "$pglog" >&2; exit 1; }
  pg_answers "$PG_SERVER_URL" || { echo "PostgreSQL did not come up; see $pglog" >&2; exit 1; }
  export PG_SERVER_URL
}

ensure_database() {
  local name="$1"
  if [ "$(psql "$PG_SERVER_URL/postgres" -Atqc "select 1 from pg_database where datname = '$name'")" != "1" ]; then
    psql "$PG_SERVER_URL/postgres" -qc "create database \"$name\"" >/dev/null
  fi
}

# A local mail catcher with a web page for the demo: MailDev 2 from npm,
# SMTP on $1, web page on $2. Returns 1 (with a warning) if it cannot start.
start_maildev() {
  local smtp_port="$1" web_port="$2" dir="$DATA_DIR/maildev"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm || { log "no Node.js: the demo runs without a mail catcher"; return 1; }
  fi
  if [ ! -x "$dir/node_modules/maildev/bin/maildev" ]; then
    log "installing MailDev 2 (npm) into .data/maildev"
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --silent maildev@2 >/dev/null 2>&1 \
      || { log "npm could not install MailDev: the demo runs without a mail catcher"; return 1; }
  fi
  node "$dir/node_modules/maildev/bin/maildev" --ip 127.0.0.1 --smtp "$smtp_port" \
    --web-ip 127.0.0.1 --web "$web_port" >"$DATA_DIR/logs/maildev.log" 2>&1 &
  MAILDEV=$!
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && return 0
    sleep 0.2
  done
  log "MailDev did not start (see .data/logs/maildev.log): the demo runs without a mail catcher"
  return 1
}
