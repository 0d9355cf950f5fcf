//! Test guest: a WASI command (exports `wasi:cli/run`, not an HTTP handler).
fn main() {
    println!("I am a command, not a function");
}
