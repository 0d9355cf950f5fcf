//! A sticky A/B split: a cookie keeps each visitor on one variant.
use perch_sdk::kv::Kv;
use perch_sdk::prelude::*;

perch_sdk::export!(handle);

const COOKIE: &str = "perch_ab";
const VARIANTS: [&str; 2] = ["a", "b"];

async fn handle(req: Request) -> Result<Response> {
    let kv = Kv::open("default")?;
    if req.uri().path() == "/stats" {
        return stats(&kv);
    }
    let forced = req
        .query("force")
        .filter(|v| VARIANTS.contains(&v.as_str()));
    let sticky = req
        .cookie(COOKIE)
        .filter(|v| VARIANTS.contains(v))
        .map(str::to_string);
    let (variant, assigned) = match (forced, sticky) {
        (Some(v), _) => (v, true),
        (None, Some(v)) => (v, false),
        (None, None) => (draw(b_percent()?), true),
    };
    if assigned {
        kv.increment(&format!("ab/{variant}/assigned"), 1)?;
    }
    kv.increment(&format!("ab/{variant}/views"), 1)?;
    let mut resp = Response::from_html(page(&variant)).with_header("x-variant", variant.as_str());
    if assigned {
        resp = resp.with_header(
            "set-cookie",
            format!("{COOKIE}={variant}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"),
        );
    }
    // Caches must not hand one visitor's variant to another.
    Ok(resp
        .with_header("vary", "cookie")
        .with_header("cache-control", "private"))
}

fn b_percent() -> Result<u64> {
    match perch_sdk::config::var("B_PERCENT") {
        None => Ok(50),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| Error::internal(format!("B_PERCENT must be 0 to 100, not `{v}`"))),
    }
}

fn draw(b_percent: u64) -> String {
    let mut bytes = [0; 8];
    perch_sdk::wstd::rand::get_random_bytes(&mut bytes);
    let roll = u64::from_le_bytes(bytes) % 100;
    VARIANTS[usize::from(roll < b_percent)].to_string()
}

fn page(variant: &str) -> String {
    let (title, button) = match variant {
        "a" => ("Checkout", "Continue to payment"),
        _ => ("Checkout in one click", "Buy now"),
    };
    format!(
        "<!doctype html><title>{title}</title><h1>{title}</h1><button>{button}</button>\n<!-- variant {variant} -->\n"
    )
}

fn stats(kv: &Kv) -> Result<Response> {
    let count = |k: String| -> Result<u64> {
        Ok(kv
            .get(&k)?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0))
    };
    let mut out = serde_json::Map::new();
    for v in VARIANTS {
        out.insert(
            v.into(),
            serde_json::json!({
                "assigned": count(format!("ab/{v}/assigned"))?,
                "views": count(format!("ab/{v}/views"))?,
            }),
        );
    }
    Ok(Response::from_json(&out))
}
