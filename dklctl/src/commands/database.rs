//! `dklctl migrate` and `dklctl check`.

use dkl_shared::db;
use sqlx::PgPool;

/// Applies every migration (apalis-postgres's, then ours).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    db::migrate(pool).await?;
    println!("database migrated");
    Ok(())
}

/// Configuration valid, database reachable and migrated (checked before any command runs).
pub fn check() {
    println!("configuration valid; database reachable and migrated");
}
