//! A to-do list API over KV: routing, JSON, validation, compare-and-swap.
use perch_sdk::kv::Kv;
use perch_sdk::prelude::*;
use perch_sdk::router::Router;
use serde::{Deserialize, Serialize};

perch_sdk::export!(handle);

const PREFIX: &str = "todo/";
const MAX_TITLE: usize = 200;

#[derive(Serialize, Deserialize)]
struct Todo {
    id: u64,
    title: String,
    done: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTodo {
    title: String,
    #[serde(default)]
    done: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TodoPatch {
    title: Option<String>,
    done: Option<bool>,
}

async fn handle(req: Request) -> Response {
    Router::new()
        .get("/todos", list)
        .post("/todos", create)
        .get("/todos/:id", read)
        .patch("/todos/:id", update)
        .delete("/todos/:id", remove)
        .handle(req)
        .await
}

/// Keys sort by id: ids are zero-padded.
fn key(id: u64) -> String {
    format!("{PREFIX}{id:020}")
}

fn id_of(req: &Request) -> Result<u64> {
    let raw = req.param("id").unwrap_or_default();
    raw.parse().map_err(|_| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("`{raw}` is not a to-do id"),
        )
    })
}

fn valid_title(title: &str) -> Result<String> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            format!("title must be 1 to {MAX_TITLE} characters"),
        ));
    }
    Ok(title.to_string())
}

fn load(kv: &Kv, id: u64) -> Result<(Todo, Vec<u8>)> {
    let raw = kv
        .get(&key(id))?
        .ok_or_else(|| Error::not_found(format!("no to-do {id}")))?;
    let todo = serde_json::from_slice(&raw)
        .map_err(|e| Error::internal(format!("stored to-do {id}: {e}")))?;
    Ok((todo, raw))
}

async fn create(mut req: Request) -> Result<Response> {
    let new: NewTodo = req.json().await?;
    let title = valid_title(&new.title)?;
    let kv = Kv::open("default")?;
    let id = kv.increment("todo-seq", 1)?;
    let todo = Todo {
        id,
        title,
        done: new.done,
    };
    kv.put(
        &key(id),
        serde_json::to_vec(&todo).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    perch_sdk::info!("created to-do {id}");
    Ok(Response::from_json(&todo)
        .with_status(StatusCode::CREATED)
        .with_header("location", format!("/todos/{id}")))
}

async fn list(req: Request) -> Result<Response> {
    let limit = match req.query("limit") {
        None => 20,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                Error::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    "limit must be 1 to 100",
                )
            })?,
    };
    let kv = Kv::open("default")?;
    let cursor = req.query("cursor").filter(|c| !c.is_empty());
    let page = kv.list(PREFIX, cursor.as_deref(), limit)?;
    let names: Vec<String> = page.keys.into_iter().map(|k| k.name).collect();
    let todos: Vec<Todo> = kv
        .get_many(&names)?
        .into_iter()
        .flatten()
        .filter_map(|raw| serde_json::from_slice(&raw).ok())
        .collect();
    Ok(Response::from_json(
        &serde_json::json!({ "todos": todos, "cursor": page.cursor }),
    ))
}

async fn read(req: Request) -> Result<Json<Todo>> {
    let id = id_of(&req)?;
    Ok(Json(load(&Kv::open("default")?, id)?.0))
}

async fn update(mut req: Request) -> Result<Json<Todo>> {
    let id = id_of(&req)?;
    let patch: TodoPatch = req.json().await?;
    let title = patch.title.as_deref().map(valid_title).transpose()?;
    let kv = Kv::open("default")?;
    // Optimistic concurrency: apply the patch to what we read, and write it
    // only if nobody changed the to-do in between.
    for _ in 0..5 {
        let (mut todo, before) = load(&kv, id)?;
        if let Some(title) = &title {
            todo.title = title.clone();
        }
        if let Some(done) = patch.done {
            todo.done = done;
        }
        let after = serde_json::to_vec(&todo).map_err(|e| Error::internal(e.to_string()))?;
        if kv.compare_and_swap(&key(id), Some(&before), Some(&after))? {
            return Ok(Json(todo));
        }
    }
    Err(Error::new(
        StatusCode::CONFLICT,
        "conflict",
        "the to-do kept changing; try again",
    ))
}

async fn remove(req: Request) -> Result<StatusCode> {
    let id = id_of(&req)?;
    let kv = Kv::open("default")?;
    if !kv.exists(&key(id))? {
        return Err(Error::not_found(format!("no to-do {id}")));
    }
    kv.delete(&key(id))?;
    Ok(StatusCode::NO_CONTENT)
}
