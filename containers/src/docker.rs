//! [`ContainerDriver`] over the Docker Engine API (`bollard`), tested on
//! Podman's compatible socket. Podman differences handled here: the API
//! version is negotiated (Podman 4 reports 1.41); an isolated network is
//! created through Podman's own endpoint, since the compatible one ignores
//! `isolate`; an OOM kill shows as exit 137 without `OOMKilled`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, ImportImageOptions, RemoveContainerOptions, RemoveImageOptions,
    StopContainerOptions,
};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use crate::driver::{
    ContainerDriver, ContainerState, DriverError, LABEL_NODE, LABEL_TENANT, Labels, Listed,
    RunRequest, TenantNetwork,
};
use crate::isolation::bridge_name;

/// A Docker Engine API endpoint (Docker or Podman).
pub struct DockerDriver {
    docker: Docker,
    /// The socket, for the one Podman call bollard does not have.
    socket: PathBuf,
    podman: bool,
}

fn engine_error(e: BollardError) -> DriverError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DriverError::Refused {
            status: status_code,
            message,
        },
        BollardError::DockerStreamError { error } => DriverError::Refused {
            status: 500,
            message: error,
        },
        other => DriverError::Unavailable(other.to_string()),
    }
}

/// The longest output line passed on; longer ones are split.
const MAX_LINE: usize = 16 << 10;

/// Docker's option naming a bridge network's interface.
const DOCKER_BRIDGE_NAME: &str = "com.docker.network.bridge.name";

/// `perch-net-<tenant>`: a tenant's network.
pub fn network_name(tenant: &str) -> String {
    format!("perch-net-{tenant}")
}

impl DockerDriver {
    /// Connects to `endpoint` (`unix:///path/to.sock`), negotiating the API
    /// version and finding out whether the engine is Podman.
    pub async fn connect(endpoint: &str) -> Result<DockerDriver, DriverError> {
        let socket = endpoint
            .strip_prefix("unix://")
            .ok_or_else(|| {
                DriverError::Unavailable(format!(
                    "engine `{endpoint}`: only unix:// sockets are supported"
                ))
            })?
            .to_string();
        let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(engine_error)?
            .negotiate_version()
            .await
            .map_err(engine_error)?;
        let version = docker.version().await.map_err(engine_error)?;
        let podman = version
            .components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        Ok(DockerDriver {
            docker,
            socket: PathBuf::from(socket),
            podman,
        })
    }

    /// Whether the engine is Podman.
    pub fn is_podman(&self) -> bool {
        self.podman
    }

    /// One request to the engine's socket outside bollard (Podman's own
    /// API, plain-JSON reads, the event stream); the answer's head, its
    /// body still to read.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<http::Response<hyper::body::Incoming>, DriverError> {
        let unavailable = |e: &dyn std::fmt::Display| DriverError::Unavailable(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(&e))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "d")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unavailable(&e))?;
        sender.send_request(req).await.map_err(|e| unavailable(&e))
    }

    /// Network `name` and its bridge interface, if the engine has it
    /// (Podman's own endpoint gives the bridge as `network_interface`,
    /// Docker's as an option).
    async fn inspect_network(&self, name: &str) -> Result<Option<TenantNetwork>, DriverError> {
        if self.podman {
            let (status, body) = self
                .raw(
                    "GET",
                    &format!("/v4.0.0/libpod/networks/{name}/json"),
                    Vec::new(),
                )
                .await?;
            return match status {
                200 => {
                    let v: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| DriverError::Unavailable(format!("network inspect: {e}")))?;
                    Ok(Some(TenantNetwork {
                        name: name.to_string(),
                        bridge: v["network_interface"].as_str().map(str::to_string),
                    }))
                }
                404 => Ok(None),
                s => Err(DriverError::Refused {
                    status: s,
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            };
        }
        match self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(engine_error)
        {
            Ok(n) => Ok(Some(TenantNetwork {
                name: name.to_string(),
                bridge: n.options.and_then(|o| o.get(DOCKER_BRIDGE_NAME).cloned()),
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`DockerDriver::send`], with the whole body read: status and body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), DriverError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| DriverError::Unavailable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

#[async_trait::async_trait]
impl ContainerDriver for DockerDriver {
    async fn load_image(&self, archive: &Path) -> Result<(), DriverError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| DriverError::Unavailable(format!("image archive: {e}")))?;
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 << 10];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let mut progress = self.docker.import_image(
            ImportImageOptions::default(),
            bollard::body_try_stream(chunks),
            None,
        );
        while let Some(step) = progress.next().await {
            step.map_err(engine_error)?;
        }
        Ok(())
    }

    async fn has_image(&self, id: &str) -> Result<bool, DriverError> {
        match self.docker.inspect_image(id).await.map_err(engine_error) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn remove_image(&self, id: &str) -> Result<(), DriverError> {
        let opts = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_image(id, Some(opts), None)
            .await
            .map_err(engine_error)
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn tenant_network(&self, node: &str, tenant: &str) -> Result<TenantNetwork, DriverError> {
        let name = network_name(tenant);
        if let Some(found) = self.inspect_network(&name).await? {
            return Ok(found);
        }
        let bridge = bridge_name(&name);
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), node.to_string()),
            (LABEL_TENANT.to_string(), tenant.to_string()),
        ]);
        let created = if self.podman {
            let body = serde_json::json!({
                "name": name,
                "driver": "bridge",
                "network_interface": bridge,
                "labels": labels,
                "options": {"isolate": "true"},
            });
            let (status, text) = self
                .raw(
                    "POST",
                    "/v4.0.0/libpod/networks/create",
                    body.to_string().into_bytes(),
                )
                .await?;
            match status {
                200 | 201 => Ok(()),
                s => Err(DriverError::Refused {
                    status: s,
                    message: String::from_utf8_lossy(&text).into_owned(),
                }),
            }
        } else {
            let req = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                options: Some(HashMap::from([
                    (
                        "com.docker.network.bridge.enable_icc".to_string(),
                        "true".to_string(),
                    ),
                    (DOCKER_BRIDGE_NAME.to_string(), bridge.clone()),
                ])),
                ..Default::default()
            };
            self.docker
                .create_network(req)
                .await
                .map(|_| ())
                .map_err(engine_error)
        };
        match created {
            Ok(()) => Ok(TenantNetwork {
                name,
                bridge: Some(bridge),
            }),
            // Another start created it first.
            Err(DriverError::Refused { status: 409, .. }) => self
                .inspect_network(&name)
                .await?
                .ok_or_else(|| DriverError::Unavailable(format!("network {name} vanished"))),
            Err(e) => Err(e),
        }
    }

    async fn run(&self, req: &RunRequest) -> Result<String, DriverError> {
        let port = format!("{}/tcp", req.port);
        let host = HostConfig {
            init: Some(true),
            memory: Some(req.memory_bytes as i64),
            memory_swap: Some(req.memory_bytes as i64),
            nano_cpus: Some(req.nano_cpus),
            pids_limit: Some(req.pids),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(
                ["CHOWN", "SETUID", "SETGID", "NET_BIND_SERVICE"]
                    .map(String::from)
                    .to_vec(),
            ),
            security_opt: Some(vec!["no-new-privileges".into()]),
            network_mode: Some(req.network.clone()),
            port_bindings: Some(HashMap::from([(
                port.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(req.host_port.to_string()),
                }]),
            )])),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            cmd: req.command.clone(),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            exposed_ports: Some(vec![port]),
            labels: Some(req.labels.to_map(req.host_port)),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(req.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(engine_error)?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.stop(&created.id, Duration::ZERO).await;
            return Err(engine_error(e));
        }
        Ok(created.id)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), DriverError> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            ..Default::default()
        };
        match self
            .docker
            .stop_container(id, Some(opts))
            .await
            .map_err(engine_error)
        {
            // 304: already stopped.
            Ok(()) | Err(DriverError::Refused { status: 304, .. }) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(id, Some(opts))
            .await
            .map_err(engine_error)
        {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn state(&self, id: &str) -> Result<ContainerState, DriverError> {
        // Read as plain JSON: Podman reports states (`stopped`) that the
        // API's enumeration does not list.
        let (status, body) = self
            .raw("GET", &format!("/containers/{id}/json"), Vec::new())
            .await?;
        match status {
            200 => {}
            404 => return Ok(ContainerState::Gone),
            s => {
                return Err(DriverError::Refused {
                    status: s,
                    message: String::from_utf8_lossy(&body).into_owned(),
                });
            }
        }
        let info: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| DriverError::Unavailable(format!("inspect: {e}")))?;
        let state = &info["State"];
        if state["Running"] == true {
            return Ok(ContainerState::Running);
        }
        let code = state["ExitCode"].as_i64().unwrap_or(-1);
        let limited = info["HostConfig"]["Memory"].as_i64().is_some_and(|m| m > 0);
        Ok(ContainerState::Exited {
            code,
            oom: state["OOMKilled"] == true || (code == 137 && limited),
        })
    }

    async fn follow_output(
        &self,
        id: &str,
        since: i64,
        out: tokio::sync::mpsc::Sender<(bool, String)>,
    ) -> Result<(), DriverError> {
        use bollard::container::LogOutput;
        let opts = bollard::query_parameters::LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since: since as i32,
            ..Default::default()
        };
        let mut frames = self.docker.logs(id, Some(opts));
        // Partial lines of stdout and stderr.
        let mut partial = [Vec::new(), Vec::new()];
        while let Some(frame) = frames.next().await {
            let (stderr, bytes) = match frame.map_err(engine_error)? {
                LogOutput::StdErr { message } => (true, message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => (false, message),
                LogOutput::StdIn { .. } => continue,
            };
            let buf = &mut partial[usize::from(stderr)];
            buf.extend_from_slice(&bytes);
            while let Some(end) = buf
                .iter()
                .position(|&b| b == b'\n')
                .or((buf.len() >= MAX_LINE).then_some(MAX_LINE))
            {
                let line: Vec<u8> = buf.drain(..end.min(buf.len())).collect();
                if buf.first() == Some(&b'\n') {
                    buf.remove(0);
                }
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if out.send((stderr, text)).await.is_err() {
                    return Ok(());
                }
            }
        }
        for (stderr, rest) in partial.into_iter().enumerate() {
            if !rest.is_empty() {
                let text = String::from_utf8_lossy(&rest).into_owned();
                let _ = out.send((stderr == 1, text)).await;
            }
        }
        Ok(())
    }

    async fn watch_exits(
        &self,
        node: &str,
        exits: tokio::sync::mpsc::Sender<String>,
    ) -> Result<(), DriverError> {
        // Every container event of the node: engines name an exit `die`
        // (Docker) or `died` (Podman).
        let filters = serde_json::json!({
            "label": [format!("{LABEL_NODE}={node}")],
            "type": ["container"],
        });
        let path = format!("/events?filters={}", url_encode(&filters.to_string()));
        let unavailable = |e: &dyn std::fmt::Display| DriverError::Unavailable(e.to_string());
        let resp = self.send("GET", &path, Vec::new()).await?;
        if !resp.status().is_success() {
            return Err(DriverError::Refused {
                status: resp.status().as_u16(),
                message: "events".into(),
            });
        }
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unavailable(&e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                let action = event["Action"].as_str().or(event["status"].as_str());
                let died = matches!(action, Some("die" | "died"));
                let id = event["Actor"]["ID"].as_str().or(event["id"].as_str());
                if let (true, Some(id)) = (died, id)
                    && exits.send(id.to_string()).await.is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn list(&self, node: &str) -> Result<Vec<Listed>, DriverError> {
        let filters = serde_json::json!({ "label": [format!("{LABEL_NODE}={node}")] });
        let query: String = url_encode(&filters.to_string());
        let (status, body) = self
            .raw(
                "GET",
                &format!("/containers/json?all=true&filters={query}"),
                Vec::new(),
            )
            .await?;
        if status != 200 {
            return Err(DriverError::Refused {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let found: Vec<serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|e| DriverError::Unavailable(format!("list: {e}")))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let labels: HashMap<String, String> =
                    serde_json::from_value(c["Labels"].clone()).ok()?;
                let (labels, host_port) = Labels::from_map(&labels)?;
                Some(Listed {
                    id: c["Id"].as_str()?.to_string(),
                    labels,
                    host_port,
                    running: c["State"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("running")),
                })
            })
            .collect())
    }
}

/// Percent-encodes a query value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
