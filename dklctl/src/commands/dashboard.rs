//! `dklctl dashboard`: what operators need to set the dashboard up.

use std::io::BufRead;

/// Reads one line (the password) from stdin and prints its argon2id hash
/// in PHC form, for `DKL_DASHBOARD_PASSWORD_HASH`.
pub fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        password.chars().count() >= 12,
        "the password must have at least 12 characters (give it on stdin: `dklctl dashboard hash-password < file`)"
    );
    println!("{}", dkl_worker::dashboard::auth::hash_password(password)?);
    Ok(())
}
