//! Test guest for perch-runtime: the path picks the behaviour.
//!
//! - `/log`: writes two lines to stdout and one to stderr, answers 201.
//! - `/flood?kib=N`: writes N KiB to stdout in 64-byte lines, answers 200.
//! - `/stream?chunks=N&ms=M`: streams N chunks, each after a pause of M ms,
//!   writing a stdout line per chunk.
//! - `/trap`: writes a line to stderr, then panics before responding.
//! - `/hang`: sleeps for an hour before responding.
//! - `/spin`: loops forever on the CPU.
//! - `/alloc?mib=N`: allocates N MiB, answers 200.
//! - `/fetch?n=N&url=URL`: fetches URL N times in sequence and answers one
//!   line per attempt: `STATUS BODY`, or `error: ERROR`.
//! - anything else: 200 `ok`.
use futures_lite::stream::unfold;
use std::convert::Infallible;
use wstd::http::body::Bytes;
use wstd::http::{Body, Error, Request, Response};

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[wstd::http_server]
async fn main(req: Request<Body>) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let number = |name: &str, default: usize| {
        param(&query, name)
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    match path.as_str() {
        "/log" => {
            println!("first stdout line");
            eprintln!("the stderr line");
            println!("second stdout line");
            Ok(Response::builder().status(201).body("logged".into())?)
        }
        "/flood" => {
            let line = "x".repeat(63);
            for _ in 0..number("kib", 1) * 16 {
                println!("{line}");
            }
            Ok(Response::new("flooded".into()))
        }
        "/stream" => {
            let chunks = number("chunks", 3);
            let pause = number("ms", 0) as u64;
            let body = unfold(0usize, move |i| async move {
                if i == chunks {
                    return None;
                }
                if pause > 0 {
                    wstd::task::sleep(wstd::time::Duration::from_millis(pause)).await;
                }
                println!("chunk {i}");
                Some((Ok::<_, Infallible>(Bytes::from(format!("{i};"))), i + 1))
            });
            Ok(Response::new(Body::from_try_stream(body)))
        }
        "/trap" => {
            eprintln!("about to trap");
            panic!("deliberate trap");
        }
        "/hang" => {
            wstd::task::sleep(wstd::time::Duration::from_secs(3600)).await;
            Ok(Response::new("woke".into()))
        }
        "/spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "/alloc" => {
            let held = vec![1u8; number("mib", 1) << 20];
            Ok(Response::new(format!("{}", std::hint::black_box(held).len()).into()))
        }
        "/fetch" => {
            let url = param(&query, "url").unwrap_or("").to_string();
            let mut out = String::new();
            for _ in 0..number("n", 1) {
                let request = Request::get(url.as_str()).body(Body::empty())?;
                match wstd::http::Client::new().send(request).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let text = resp.into_body().str_contents().await.map(|s| s.to_string());
                        out.push_str(&format!("{status} {}\n", text.unwrap_or_default()));
                    }
                    Err(e) => out.push_str(&format!("error: {e:?}\n")),
                }
            }
            Ok(Response::new(out.into()))
        }
        _ => Ok(Response::new("ok".into())),
    }
}
