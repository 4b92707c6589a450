#!/usr/bin/env bash
# Runs every test of dkl-mail-worker against real servers.
# Usage: scripts/test.sh [extra cargo test args]
source "$(dirname "$0")/lib.sh"
require_rust
ensure_postgres
# #[sqlx::test] makes a fresh database per test on this server and drops it after.
export DATABASE_URL="$PG_SERVER_URL/postgres"
cd "$REPO_ROOT"
log "cargo test --workspace (PostgreSQL at ${PG_SERVER_URL##*@})"
cargo test --workspace --locked "$@"
