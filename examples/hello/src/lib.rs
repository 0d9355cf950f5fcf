use perch_sdk::prelude::*;

perch_sdk::export!(hello);

async fn hello(req: Request) -> Response {
    let name = req.query("name").unwrap_or_else(|| "world".into());
    Response::from_text(format!("Hello, {name}!\n"))
}
