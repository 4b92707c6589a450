// `sqlx::migrate!` embeds migrations/ at build time; without this, adding a
// migration file would not rebuild the crate and binaries would lack it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
