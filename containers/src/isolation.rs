//! Tenant network isolation that Perch enforces itself, beside the engine's.
//!
//! Every tenant network is a bridge named `pc-<hash>` ([`bridge_name`]).
//! The node keeps one nftables table, `inet perch_<hash of the node>`,
//! whose forward chain drops what a tenant bridge sends to any other
//! Perch bridge. Engines isolate networks too, but not always reliably:
//! netavark's iptables driver (Podman 4 on Debian 12) removes the one
//! shared `FORWARD -j NETAVARK_ISOLATION_1` jump when the last container
//! of any isolated network stops, which leaves every other network open
//! until a container starts. This table is Perch's own: no engine touches
//! it, and a drop in it is final whatever other tables accept.
//!
//! The table is rewritten whole, in one `nft -f` transaction, whenever a
//! bridge joins; it stays while the node's containers run (a restart
//! adopts them) and is deleted when the node shuts down and has stopped
//! them.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::driver::DriverError;

/// The prefix of every Perch tenant bridge.
pub const BRIDGE_PREFIX: &str = "pc-";

/// The bridge interface of network `network`: `pc-` and 12 hex digits of
/// its SHA-256 (15 characters, Linux's limit).
pub fn bridge_name(network: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", &hex(network)[..12])
}

fn hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` is an interface name that may go into a rule as it is.
fn plain_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The node's isolation table.
pub struct Firewall {
    node: String,
    table: String,
    nft: PathBuf,
    /// Bridges of the node's tenant networks; the lock is held while the
    /// table is written, so writes apply in order.
    bridges: tokio::sync::Mutex<BTreeSet<String>>,
}

impl Firewall {
    /// The table of node `node`, written with the `nft` found on `PATH`.
    pub fn new(node: &str) -> Firewall {
        Firewall {
            node: node.to_string(),
            table: table_name(node),
            nft: PathBuf::from("nft"),
            bridges: tokio::sync::Mutex::default(),
        }
    }

    /// The table's name (`perch_` and 16 hex digits of the node's name).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Writes the table with `bridges` added: at start, with the bridges
    /// of the containers the node adopts; it fails when nftables cannot
    /// be written (no `nft`, no CAP_NET_ADMIN).
    pub async fn install(&self, bridges: &[String]) -> Result<(), DriverError> {
        let mut set = self.bridges.lock().await;
        let mut next = set.clone();
        for b in bridges {
            check_bridge(b)?;
            next.insert(b.clone());
        }
        self.write(&ruleset(&self.table, &self.node, &next)).await?;
        *set = next;
        Ok(())
    }

    /// Adds `bridge` before a container starts on it; the table is
    /// rewritten only when the bridge is new.
    pub async fn admit(&self, bridge: &str) -> Result<(), DriverError> {
        if self.bridges.lock().await.contains(bridge) {
            return Ok(());
        }
        self.install(&[bridge.to_string()]).await
    }

    /// Deletes the table (the node has stopped its containers).
    pub async fn remove(&self) -> Result<(), DriverError> {
        let _set = self.bridges.lock().await;
        let table = &self.table;
        self.write(&format!("table inet {table}\ndelete table inet {table}\n"))
            .await
    }

    async fn write(&self, script: &str) -> Result<(), DriverError> {
        let failed = |e: String| DriverError::Unavailable(format!("nftables: {e}"));
        let mut child = tokio::process::Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot run `{}`: {e}", self.nft.display())))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }
}

fn check_bridge(bridge: &str) -> Result<(), DriverError> {
    if plain_interface(bridge) {
        Ok(())
    } else {
        Err(DriverError::Unavailable(format!(
            "nftables: `{bridge}` is not a bridge name Perch writes rules for"
        )))
    }
}

/// `perch_` and 16 hex digits of the node's name.
pub fn table_name(node: &str) -> String {
    format!("perch_{}", &hex(node)[..16])
}

/// The whole table as one `nft -f` transaction: declared (so the delete
/// finds it), deleted, and written again. Each bridge may reach itself
/// and anything that is not a Perch bridge (the host, the internet), and
/// no other Perch bridge; bridges outside the `pc-` naming (networks made
/// before it) are named in the set of destinations.
fn ruleset(table: &str, node: &str, bridges: &BTreeSet<String>) -> String {
    let mut dests = vec![format!("\"{BRIDGE_PREFIX}*\"")];
    dests.extend(
        bridges
            .iter()
            .filter(|b| !b.starts_with(BRIDGE_PREFIX))
            .map(|b| format!("\"{b}\"")),
    );
    let dests = dests.join(", ");
    let comment: String = node
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\')
        .take(200)
        .collect();
    let mut s = format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n\
         \tcomment \"perch node {comment}\"\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 1; policy accept;\n"
    );
    for b in bridges {
        s.push_str(&format!(
            "\t\tiifname \"{b}\" oifname != \"{b}\" oifname {{ {dests} }} counter drop\n"
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_an_interface_name() {
        let b = bridge_name("perch-net-acme");
        assert_eq!(b.len(), 15);
        assert!(b.starts_with("pc-") && plain_interface(&b));
        assert_ne!(b, bridge_name("perch-net-acme2"));
        assert_eq!(b, bridge_name("perch-net-acme"));
    }

    #[test]
    fn the_ruleset_drops_between_bridges_and_is_one_transaction() {
        let bridges: BTreeSet<String> = ["pc-aaaaaaaaaaaa", "podman3"].map(String::from).into();
        let s = ruleset("perch_0123", "node \"one\"", &bridges);
        assert!(s.starts_with(
            "table inet perch_0123\ndelete table inet perch_0123\ntable inet perch_0123 {"
        ));
        assert!(s.contains("comment \"perch node node one\""), "{s}");
        assert!(s.contains(
            "iifname \"pc-aaaaaaaaaaaa\" oifname != \"pc-aaaaaaaaaaaa\" oifname { \"pc-*\", \"podman3\" } counter drop"
        ));
        assert!(s.contains(
            "iifname \"podman3\" oifname != \"podman3\" oifname { \"pc-*\", \"podman3\" } counter drop"
        ));
    }

    #[test]
    fn names_that_are_not_plain_are_refused() {
        for bad in ["", "a\"b", "x; flush ruleset", "sixteen-chars-xx"] {
            assert!(check_bridge(bad).is_err(), "{bad}");
        }
        assert!(check_bridge("podman0").is_ok());
    }
}
