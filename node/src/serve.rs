//! `berth serve`: the one wiring function. Opens the node identity, the metadata
//! (Raft), the disks and the blob store, builds the HTTP app, serves it, and on
//! SIGTERM or Ctrl-C shuts down in order: stop accepting, finish in-flight requests,
//! stop upkeep (maintenance, repair, scrub, audit), stop Raft.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use std::net::SocketAddr;

use berth_api::auth::{AuthConfig, AuthMode, audit, password};
use berth_api::oci::error::Code;
use berth_api::placement::PlacementConfig;
use berth_api::repair::{self, RepairConfig};
use berth_api::scrub;
use berth_api::{App, AppState, maintenance, proxy, router};
use berth_consensus::tenancy::{TenancyCommand, TenancyOutcome, UserRecord};
use berth_consensus::{CommandV1, Outcome};
use std::collections::HashMap;
use std::sync::Mutex;

use berth_blobstore::{BlobStore, Disk, FsDisk, ShardClient, ShardService, StoreConfig};
use berth_consensus::grpc::tls::ClusterTls;
use berth_consensus::{ClusterInit, ConsensusError, Metadata, RaftTuning};
use berth_types::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{AuthSetting, Config};

/// The bootstrap administrator's name.
const ADMIN_USER: &str = "admin";
/// Where a generated bootstrap password is written, inside the data folder.
pub(crate) const ADMIN_PASSWORD_FILE: &str = "admin-password";

const NODE_FILE_FORMAT: u32 = 1;
/// A start-up step through Raft is retried this often while metadata is unavailable
/// (each attempt waits up to the forwarding deadline).
const RECOVER_ATTEMPTS_MAX: u32 = 12;

/// HTTP/2 receive window of one stream on the cluster listener: four shard chunks.
const CLUSTER_STREAM_WINDOW: u32 = 4 << 20;

/// HTTP/2 receive window of one connection on the cluster listener (all its streams).
const CLUSTER_CONNECTION_WINDOW: u32 = 16 << 20;

/// Largest HTTP/2 frame a node accepts from a peer, on its listener and on its shard
/// clients: a shard chunk of the default size (1 MiB) crosses in one frame instead of
/// 64 (the default 16 KiB), and a raw GetChunks reader takes that frame as the chunk
/// without gathering it (`berth_blobstore::rpc`'s raw module).
const SHARD_FRAME_BYTES: u32 = 1 << 20;

/// The node's persisted identity.
#[derive(Serialize, Deserialize)]
struct NodeFile {
    format: u32,
    node_id: u64,
    /// The cluster this data folder belongs to (32 hex digits), recorded once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

fn read_node_file(path: &Path) -> anyhow::Result<NodeFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: NodeFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        file.format == NODE_FILE_FORMAT,
        "{} has format {}, this berth reads {NODE_FILE_FORMAT}",
        path.display(),
        file.format
    );
    Ok(file)
}

/// Writes `<data>/node.json` durably (temporary file, fsync, rename, fsync the folder).
fn write_node_file(data: &Path, file: &NodeFile) -> anyhow::Result<()> {
    let path = data.join("node.json");
    let tmp = data.join("node.json.tmp");
    let body = serde_json::to_vec_pretty(file)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data)?.sync_all()?;
    Ok(())
}

/// The cluster id recorded in `<data>/node.json`, if any.
fn recorded_cluster_id(data: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_node_file(&data.join("node.json"))?.cluster_id)
}

/// Checks the metadata's cluster id against the one this data folder recorded, and
/// records it on first sight. A mismatch means the folder holds another cluster's
/// state: refuse to serve rather than mix them.
fn record_cluster_id(data: &Path, node: NodeId, id: u128) -> anyhow::Result<()> {
    let id = format!("{id:032x}");
    let mut file = read_node_file(&data.join("node.json"))?;
    match &file.cluster_id {
        Some(known) if *known == id => Ok(()),
        Some(known) => anyhow::bail!(
            "{} belongs to cluster {known}, but the metadata names cluster {id}",
            data.display()
        ),
        None => {
            file.cluster_id = Some(id.clone());
            write_node_file(data, &file)?;
            tracing::info!(%node, cluster = id, "recorded the cluster id");
            Ok(())
        }
    }
}

/// Reads the node id from `<data>/node.json`, creating it on first start (with the
/// configured id, or a random one for a single node). A data folder never changes
/// hands: a configured id that differs from the stored one is refused.
fn node_identity(data: &Path, configured: Option<u64>) -> anyhow::Result<NodeId> {
    let path = data.join("node.json");
    if path.exists() {
        let file = read_node_file(&path)?;
        if let Some(c) = configured {
            anyhow::ensure!(
                c == file.node_id,
                "{} belongs to node {}, not node {c}",
                data.display(),
                file.node_id
            );
        }
        return Ok(NodeId(file.node_id));
    }
    // Ids stay below 2^53 so they survive JSON tooling that reads numbers as doubles.
    let id = configured.unwrap_or_else(|| rand::random::<u64>() % (1 << 53) + 1);
    write_node_file(
        data,
        &NodeFile {
            format: NODE_FILE_FORMAT,
            node_id: id,
            cluster_id: None,
        },
    )?;
    Ok(NodeId(id))
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating data folder {}", cfg.data.display()))?;
    let cluster = cfg.cluster()?;
    let node = node_identity(&cfg.data, cfg.node_id)?;
    let mut disks: Vec<Arc<dyn Disk>> = Vec::new();
    for (index, path) in cfg.disk_paths().into_iter().enumerate() {
        // A new disk gets its index as id; an existing one keeps the id in its label.
        let id = berth_types::DiskId(u32::try_from(index)?);
        let disk =
            FsDisk::open(&path, id).with_context(|| format!("opening disk {}", path.display()))?;
        disks.push(Arc::new(disk));
    }
    let profile = cfg.ec_profile()?;
    let store = BlobStore::open(
        node,
        disks,
        StoreConfig {
            profile,
            shard_bytes: cfg.shard_bytes,
            read_hedge: cfg.read_hedge(),
        },
    )
    .context("opening blob store")?;
    let setting = cfg.auth_setting()?;
    let auth = AuthConfig {
        mode: match setting {
            AuthSetting::Open => AuthMode::Open,
            AuthSetting::Enforced => AuthMode::Enforced,
        },
        token_ttl: Duration::from_secs(cfg.token_ttl_secs),
        rate_limit_rps: cfg.rate_limit()?,
        concurrent_requests_max: cfg.concurrency_limit()?,
        failed_logins_per_minute: cfg.failed_logins_per_minute,
        audit_retention: Duration::from_secs(cfg.audit_retention_days.saturating_mul(86_400)),
        oidc: cfg.oidc()?,
        ldap: cfg.ldap()?,
        key_rotation: cfg.signing_key_rotation(),
        ..AuthConfig::open()
    };
    let placement = PlacementConfig {
        profile: cfg.cluster_ec_profile()?,
        zone: cfg.zone.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (meta, app, grpc) = match &cluster {
        None => {
            let meta = Metadata::open_single_with_cache(
                &cfg.data.join("meta"),
                node,
                cfg.meta_cache_bytes(),
            )
            .await
            .context("opening metadata")?;
            (
                meta.clone(),
                App::new(node, meta, store, auth, placement.clone()),
                None,
            )
        }
        Some(c) => {
            // Before anything dials a peer: every peer channel picks TLS up when made.
            let server_tls = match &c.tls {
                Some(files) => {
                    let read = |p: &Path| {
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
                    };
                    let tls = ClusterTls {
                        ca_pem: read(&files.ca)?,
                        cert_pem: read(&files.cert)?,
                        key_pem: read(&files.key)?,
                    };
                    tracing::info!("mutual TLS between nodes");
                    Some(tls.install().context("setting up cluster TLS")?)
                }
                None => None,
            };
            let (meta, raft) = Metadata::open_cluster(
                &cfg.data.join("meta"),
                node,
                c.advertise.to_string(),
                if c.members.is_empty() {
                    ClusterInit::Join
                } else {
                    ClusterInit::Bootstrap(
                        c.members
                            .iter()
                            .map(|(id, a)| (NodeId(*id), a.clone()))
                            .collect(),
                    )
                },
                &RaftTuning {
                    cache_bytes: cfg.meta_cache_bytes(),
                    ..RaftTuning::default()
                },
            )
            .await
            .context("opening clustered metadata")?;
            let store = store.with_peers(peer_resolver(meta.clone()));
            let app = App::new(node, meta.clone(), store.clone(), auth, placement.clone());
            let listener = tokio::net::TcpListener::bind(c.grpc_listen)
                .await
                .with_context(|| format!("binding gRPC {}", c.grpc_listen))?;
            let mut stop = stop_rx.clone();
            // One HTTP/2 listener for the cluster: Raft, shards (gRPC and raw
            // GetChunks), and upload-session requests other nodes pass on to this one.
            let shards = ShardService::new(&store);
            let routes = tonic::service::Routes::from(proxy::internal_router(app.clone()))
                .add_service(raft.into_server())
                .add_service(shards.raw_chunks())
                .add_service(shards.into_server());
            // Shard chunks are 1 MiB messages: windows that hold several let a stream
            // run without waiting for a window update per chunk.
            let mut builder = tonic::transport::Server::builder()
                .initial_stream_window_size(CLUSTER_STREAM_WINDOW)
                .initial_connection_window_size(CLUSTER_CONNECTION_WINDOW)
                .max_frame_size(SHARD_FRAME_BYTES);
            if let Some(server_tls) = server_tls {
                builder = builder
                    .tls_config(server_tls)
                    .context("setting up the cluster listener's TLS")?;
            }
            let server = builder.add_routes(routes).serve_with_incoming_shutdown(
                // Without TCP_NODELAY the small frames this side sends (window updates,
                // Raft answers) wait for Nagle's algorithm: a single upload striped to
                // peers ran at 60 MB/s instead of hundreds.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            );
            tracing::info!(grpc = %c.grpc_listen, "internal gRPC listening");
            let task = tokio::spawn(server);
            if let Some(url) = &c.join {
                let known = recorded_cluster_id(&cfg.data)?;
                ask_to_join(url, node, &c.advertise.to_string(), known).await?;
            }
            meta.wait_for_leader(Duration::from_secs(60))
                .await
                .context("waiting for a metadata leader")?;
            (meta, app, Some(task))
        }
    };
    let cluster_id = at_start("reading the cluster id", transient, || meta.cluster_id()).await?;
    record_cluster_id(&cfg.data, node, cluster_id)?;
    at_start(
        "recovering uploads",
        |e: &berth_api::oci::error::OciError| e.code == Code::Unavailable,
        || maintenance::recover(&app),
    )
    .await?;
    at_start("storing the token signing key", transient, || {
        app.auth.init_keys(&app.meta)
    })
    .await?;
    match setting {
        AuthSetting::Open => tracing::warn!(
            "authentication is OFF (open mode): anyone who reaches {} may pull, push and delete; \
             start with --auth enforced to require logins",
            cfg.listen
        ),
        AuthSetting::Enforced => {
            bootstrap_admin(&cfg.data, &app).await?;
            tracing::info!("authentication enforced");
            at_start("seeding the identity provider settings", transient, || {
                app.auth.seed_providers(&app.meta)
            })
            .await?;
            let providers = app.auth.providers(&app.meta).await;
            if let Some(oidc) = &providers.oidc {
                tracing::info!(issuer = %oidc.config.issuer, audience = %oidc.config.audience, "OIDC ID tokens accepted");
            }
            if let Some(ldap) = &providers.ldap {
                tracing::info!(url = %ldap.config.url, "LDAP logins accepted for users without a local account");
            }
        }
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let data = std::fs::canonicalize(&cfg.data).unwrap_or(cfg.data.clone());
    tracing::info!(%addr, data = %data.display(), node = %node, %profile, "berth listening on http://{addr}");
    println!(
        "berth listening on http://{addr} (node {node}, data in {}, profile {profile})",
        data.display()
    );

    let upkeep = tokio::spawn(maintenance::run(
        app.clone(),
        Duration::from_secs(cfg.upload_ttl_secs),
        stop_rx.clone(),
    ));
    let repair = tokio::spawn(repair::run(
        app.clone(),
        RepairConfig {
            interval: Duration::from_secs(cfg.repair_interval_secs),
            grace: Duration::from_secs(cfg.repair_grace_secs),
            restripe: cfg.restripe(),
            rebalance_bytes_per_sec: cfg.rebalance_bytes_per_sec(),
        },
        stop_rx.clone(),
    ));
    let scrub_cfg =
        crate::scrub_state::config(&cfg.data, cfg.scrub_interval(), cfg.scrub_bytes_per_sec())?;
    let scrub = tokio::spawn(scrub::run(app.clone(), scrub_cfg, stop_rx.clone()));
    let key_rotation = tokio::spawn(berth_api::access::rotate_keys_periodically(
        app.clone(),
        stop_rx.clone(),
    ));
    let trimmer = tokio::spawn(crate::memory::trim_periodically(stop_rx.clone()));
    let audit = tokio::spawn(audit::run(app.clone(), stop_rx));
    // Answers go out as soon as they are written, not after Nagle's algorithm holds
    // a small last segment back for the client's acknowledgement.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a client connection");
        }
    });
    let served = axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await;
    tracing::info!("HTTP server stopped; shutting down");
    let _ = stop_tx.send(true);
    let _ = upkeep.await;
    let _ = audit.await;
    let _ = key_rotation.await;
    let _ = repair.await;
    let _ = scrub.await;
    let _ = trimmer.await;
    if let Some(grpc) = grpc {
        match grpc.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "internal gRPC server"),
            Err(e) => tracing::warn!(error = %e, "internal gRPC task"),
            Ok(Ok(())) => {}
        }
    }
    meta.shutdown().await.context("stopping metadata")?;
    tracing::info!("shutdown complete");
    served.context("serving HTTP")
}

/// Creates the first administrator while there is no user at all. Its password is
/// `BERTH_ADMIN_PASSWORD`, else generated and written once to `<data>/admin-password`
/// (mode 0600) before it is proposed, so a crash in between loses nothing.
async fn bootstrap_admin(data: &Path, app: &AppState) -> anyhow::Result<()> {
    let has_users = app
        .meta
        .read(|v| Ok(!v.users()?.is_empty()))
        .await
        .context("reading users")?;
    if has_users {
        return Ok(());
    }
    let file = data.join(ADMIN_PASSWORD_FILE);
    let (secret, from_file) = match std::env::var("BERTH_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ if file.exists() => (
            std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?
                .trim()
                .to_owned(),
            true,
        ),
        _ => {
            let p = hex::encode(rand::random::<[u8; 16]>());
            write_secret_file(&file, &p)?;
            (p, true)
        }
    };
    let hash = password::hash(&secret)
        .await
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    let outcome = app
        .meta
        .propose(CommandV1::Tenancy(TenancyCommand::BootstrapAdmin(
            UserRecord {
                name: ADMIN_USER.into(),
                password_hash: hash,
                admin: true,
                created_at_ms: berth_api::uploads::now_ms(),
            },
        )))
        .await
        .context("creating the bootstrap administrator")?;
    match outcome {
        Outcome::Tenancy(TenancyOutcome::Done) if from_file => {
            tracing::warn!(
                user = ADMIN_USER,
                file = %file.display(),
                "bootstrap administrator created; its generated password is in the file (readable by its owner only)"
            );
            println!(
                "bootstrap administrator {ADMIN_USER:?} created; password in {}",
                file.display()
            );
        }
        Outcome::Tenancy(TenancyOutcome::Done) => tracing::info!(
            user = ADMIN_USER,
            "bootstrap administrator created from BERTH_ADMIN_PASSWORD"
        ),
        // Another node created the first administrator meanwhile.
        _ => {
            if from_file {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
    Ok(())
}

/// Writes `secret` to a new file readable and writable by its owner only.
fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// Whether a metadata error may clear up by itself (no leader yet, an election under
/// way, a commit whose outcome is unknown).
fn transient(e: &ConsensusError) -> bool {
    matches!(
        e,
        ConsensusError::Unavailable { .. }
            | ConsensusError::NotLeader { .. }
            | ConsensusError::CommitUnknown { .. }
    )
}

/// Runs a start-up step that reads or writes through Raft. Right after a restart the
/// node may not reach a working leader yet (its last known leader was deposed, an
/// election is under way), so a `retry`-able failure is retried, bounded, instead of
/// ending the process.
async fn at_start<T, E, F, Fut>(
    what: &str,
    retry: impl Fn(&E) -> bool,
    mut step: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if retry(&e) && attempt < RECOVER_ATTEMPTS_MAX => {
                attempt += 1;
                tracing::warn!(attempt, error = %e, "{what}: metadata unavailable, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

/// Asks the member at `url` to admit this node. Retries while the member is not
/// reachable yet, for at most `JOIN_WAIT`.
async fn ask_to_join(
    url: &str,
    node: NodeId,
    grpc_addr: &str,
    cluster_id: Option<String>,
) -> anyhow::Result<()> {
    const JOIN_WAIT: Duration = Duration::from_secs(60);
    let endpoint = format!("{}/api/v1/cluster/members", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(berth_consensus::CATCH_UP_MAX + Duration::from_secs(10))
        .build()?;
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    loop {
        let mut request = client.post(&endpoint).json(
            &serde_json::json!({ "id": node.0, "addr": grpc_addr, "cluster_id": cluster_id }),
        );
        // An enforcing cluster admits nodes for its administrator only.
        if let Ok(p) = std::env::var("BERTH_ADMIN_PASSWORD")
            && !p.is_empty()
        {
            request = request.basic_auth(ADMIN_USER, Some(p));
        }
        let sent = request.send().await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(%node, via = url, "joined the cluster");
                return Ok(());
            }
            Ok(resp) if resp.status().is_client_error() || resp.status() == 409 => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                anyhow::bail!("{endpoint} refused to admit node {node}: {status} {body}");
            }
            Ok(resp) => tracing::warn!(status = %resp.status(), "join not accepted yet"),
            Err(e) => tracing::warn!(error = %e, "join request failed"),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "could not join through {url} within {} s",
            JOIN_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Shard clients for the other members, by the gRPC address the Raft membership
/// records for them (the shard service shares the Raft listener). One channel per
/// peer, replaced when the peer's address changes.
fn peer_resolver(meta: Metadata) -> impl Fn(NodeId) -> Option<ShardClient> + Send + Sync + 'static {
    let clients: Mutex<HashMap<NodeId, (String, ShardClient)>> = Mutex::new(HashMap::new());
    move |peer| {
        let addr = meta.membership().nodes.get(&peer)?.clone();
        let mut clients = clients.lock().expect("resolver lock poisoned");
        if let Some((known, client)) = clients.get(&peer)
            && *known == addr
        {
            return Some(client.clone());
        }
        let endpoint = berth_consensus::grpc::peer_endpoint(&addr)
            .inspect_err(|e| tracing::warn!(%peer, addr, error = %e, "shard client"))
            .ok()?
            .max_frame_size(SHARD_FRAME_BYTES)
            .initial_stream_window_size(CLUSTER_STREAM_WINDOW)
            .initial_connection_window_size(CLUSTER_CONNECTION_WINDOW);
        let client = ShardClient::from_endpoint(peer, endpoint);
        clients.insert(peer, (addr, client.clone()));
        Some(client)
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "listening for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "listening for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
