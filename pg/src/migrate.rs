//! Numbered schema migrations.
use postgres::Client;

/// Applies the `migrations` that the database lacks, in one transaction,
/// recording how many ran in the one-row table `version_table`; refuses a
/// schema newer than `migrations` knows (another node runs a newer Perch).
/// Nodes starting together take turns (a transaction-scoped advisory lock);
/// its statements may take up to five minutes each.
pub fn migrate(
    client: &mut Client,
    version_table: &str,
    migrations: &[&str],
) -> Result<(), String> {
    let e = |e: postgres::Error| crate::describe(&e);
    let mut txn = client.transaction().map_err(e)?;
    // Not the connection's statement timeout (5 s by default): a schema
    // change may wait for another node's, or for a disk that is busy
    // flushing a checkpoint, far longer than a query may.
    txn.batch_execute("SET LOCAL statement_timeout = '5min'")
        .map_err(e)?;
    txn.execute("SELECT pg_advisory_xact_lock(7263)", &[])
        .map_err(e)?;
    txn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {version_table} (version integer NOT NULL)"
    ))
    .map_err(e)?;
    let current: i32 = match txn
        .query_opt(&format!("SELECT version FROM {version_table}"), &[])
        .map_err(e)?
    {
        Some(row) => row.get(0),
        None => {
            txn.execute(
                &format!("INSERT INTO {version_table} (version) VALUES (0)"),
                &[],
            )
            .map_err(e)?;
            0
        }
    };
    let known = migrations.len() as i32;
    if current > known {
        return Err(format!(
            "the database's schema ({version_table}) is version {current}; this perch knows up to {known}: upgrade perch"
        ));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        txn.batch_execute(sql).map_err(|x| {
            format!(
                "{version_table} migration {}: {}",
                i + 1,
                crate::describe(&x)
            )
        })?;
    }
    txn.execute(
        &format!("UPDATE {version_table} SET version = $1"),
        &[&known],
    )
    .map_err(e)?;
    txn.commit().map_err(e)
}
