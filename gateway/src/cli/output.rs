//! How client commands print: JSON (with `--json`, or when stdout is not
//! a terminal), else readable tables and lines; and listings that follow
//! the API's cursors to the end.
use std::io::IsTerminal;

use http::Method;
use serde_json::{Value, json};

use super::args::ApiArgs;
use super::client::{Client, ClientError};

/// Whether to print JSON rather than a table.
pub(super) fn wants_json(api: &ApiArgs) -> bool {
    api.json || !std::io::stdout().is_terminal()
}

/// Whether to colour lines (stdout is a terminal, and `NO_COLOR` unset).
pub(super) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Pretty JSON on stdout.
pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A value as a table cell: strings bare, null as `-`.
pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// Every item of a paged listing under `key`, following `cursor` to the end.
pub(super) fn list_all(c: &Client, path: &str, key: &str) -> Result<Value, ClientError> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let page_path = match &cursor {
            Some(cur) => format!(
                "{path}{sep}limit=1000&cursor={}",
                super::client::encode_path(cur, false)
            ),
            None => format!("{path}{sep}limit=1000"),
        };
        let page = c.call(Method::GET, &page_path, None)?;
        if let Some(list) = page[key].as_array() {
            items.extend(list.iter().cloned());
        }
        match page["cursor"].as_str() {
            Some(next) if !next.is_empty() => cursor = Some(next.to_string()),
            _ => break,
        }
    }
    Ok(json!({ key: items }))
}

/// Prints a listing: JSON, or a table of `columns` (header, field).
pub(super) fn print_list(api: &ApiArgs, list: &Value, key: &str, columns: &[(&str, &str)]) {
    if wants_json(api) {
        return print_json(list);
    }
    let rows: Vec<Vec<String>> = list[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| columns.iter().map(|(_, f)| cell(&item[*f])).collect())
        .collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    println!("{}", table(&headers, &rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["VERSION", "DIGEST"],
            &[
                vec!["1".into(), "abc".into()],
                vec!["10".into(), "-".into()],
            ],
        );
        assert_eq!(t, "VERSION  DIGEST\n1        abc\n10       -");
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
    }
}
