// The migrations are embedded by `sqlx::migrate!`: rebuild when one is added
// (what `sqlx migrate build-script` writes).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
