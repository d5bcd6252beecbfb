// `sqlx::migrate!` embeds the migrations at compile time but does not ask Cargo to rebuild
// when only a migration file changes; this makes a new or edited migration trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
