//! One end-to-end test per example in `examples/` (the build fails when an
//! example has none).
use perch_tests::{Perch, guests};

#[test]
fn example_hello() {
    let perch = Perch::start();
    perch.deploy("acme", "hello", guests::HELLO, "hello.acme.test");
    let resp = perch.get("hello.acme.test", "/");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "Hello, world!\n");
    let resp = perch.get("hello.acme.test", "/?name=Perch");
    assert_eq!(resp.text().unwrap(), "Hello, Perch!\n");
}
