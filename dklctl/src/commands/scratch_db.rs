//! A database of a benchmark's own, made on the server of `DATABASE_URL`,
//! migrated, and dropped afterwards: a benchmark never touches real data.

use anyhow::Context;
use sqlx::PgPool;

/// A database of the benchmark's own, on the server of `url`.
pub struct ScratchDb {
    admin: PgPool,
    /// A pool on it (8 connections).
    pub pool: PgPool,
    name: String,
}

impl ScratchDb {
    /// Creates and migrates `dkl_bench_<what>_<pid>`.
    pub async fn create(url: &str, what: &str) -> anyhow::Result<Self> {
        let (server, _) = url
            .split('?')
            .next()
            .and_then(|u| u.rsplit_once('/'))
            .context("DATABASE_URL has no database part")?;
        let admin = dkl_shared::db::connect_url(&format!("{server}/postgres"), 2)
            .await
            .context("connect to the server's `postgres` database to create the benchmark's own")?;
        let name = format!("dkl_bench_{what}_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        let pool = dkl_shared::db::connect_url(&format!("{server}/{name}"), 8).await?;
        dkl_shared::db::migrate(&pool).await?;
        Ok(Self { admin, pool, name })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops it (whatever is still connected).
    pub async fn drop(self) {
        self.pool.close().await;
        let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop the benchmark database {}: {e}", self.name);
        }
    }
}
