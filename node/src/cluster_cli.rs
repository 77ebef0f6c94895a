//! `berth cluster ...`: operator commands against running nodes over their HTTP API,
//! with an administrator's Basic credentials when given ([`Credentials`]: flags,
//! `BERTH_USER`/`BERTH_PASSWORD`, or the bootstrap `<data>/admin-password`).
//! `remove` takes a node out of the membership through any member (refused while it
//! holds shards, unless `--force` says it is lost for good); `drain` marks a
//! node draining so repair moves its shards off first. `status` asks each given node
//! for `/api/v1/cluster/status` and prints a table (or the raw JSON): every node's
//! term, role, log, commit and apply indices, the leader's view of each member's
//! replication lag, each member's repair backlog and counters, rebalancing's progress
//! (shards moved, the last complete round), draining nodes with the shards they still
//! hold, and disk state.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, per-node log indices and lag, membership and disks.
    Status {
        /// A node's HTTP URL; repeat to ask several nodes.
        #[arg(long = "url", default_value = "http://127.0.0.1:5000")]
        urls: Vec<String>,
        /// Print JSON (one array of node answers) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        creds: Credentials,
    },
    /// Move every shard off a node (through any member): it takes no new shards and
    /// repair moves what it holds onto the others; `status` shows the shards left.
    /// Remove it once none are left.
    Drain {
        /// A member's HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        url: String,
        /// The node id to drain.
        id: u64,
        /// Take the mark off instead: the node takes shards again.
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        creds: Credentials,
    },
    /// Remove a node from the cluster (through any member). Refused while blob layouts
    /// still place shards on it: drain it first.
    Remove {
        /// A member's HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        url: String,
        /// The node id to remove.
        id: u64,
        /// Remove it although it still holds shards: for a node lost for good, whose
        /// shards repair then rebuilds from the rest of their stripes.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        creds: Credentials,
    },
}

/// The administrator's credentials for an enforcing cluster. Without a password
/// (flag or `BERTH_PASSWORD`), `--data` names a node's data folder whose bootstrap
/// `admin-password` file is read; with neither, requests carry no credentials (an
/// open-mode cluster).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Credentials {
    /// User name to authenticate as.
    #[arg(long, env = "BERTH_USER", default_value = "admin")]
    pub user: String,
    /// Password to authenticate with.
    #[arg(long, env = "BERTH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A node's data folder: its `admin-password` file is the bootstrap
    /// administrator's password.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl Credentials {
    /// The user and password to send, if any.
    pub fn resolve(&self) -> anyhow::Result<Option<(String, String)>> {
        if let Some(p) = self.password.as_ref().filter(|p| !p.is_empty()) {
            return Ok(Some((self.user.clone(), p.clone())));
        }
        let Some(data) = &self.data else {
            return Ok(None);
        };
        let file = data.join(crate::serve::ADMIN_PASSWORD_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading {} (set BERTH_PASSWORD when the password came from BERTH_ADMIN_PASSWORD)",
                file.display()
            )
        })?;
        Ok(Some((self.user.clone(), text.trim().to_owned())))
    }

    fn apply(
        creds: &Option<(String, String)>,
        req: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        match creds {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { urls, json, creds } => {
            status(&urls, json, &creds.resolve()?).await
        }
        ClusterCommand::Remove {
            url,
            id,
            force,
            creds,
        } => remove(&url, id, force, &creds.resolve()?).await,
        ClusterCommand::Drain {
            url,
            id,
            cancel,
            creds,
        } => drain(&url, id, cancel, &creds.resolve()?).await,
    }
}

async fn drain(
    url: &str,
    id: u64,
    cancel: bool,
    creds: &Option<(String, String)>,
) -> anyhow::Result<()> {
    let endpoint = format!(
        "{}/api/v1/cluster/members/{id}/drain",
        url.trim_end_matches('/')
    );
    let client = reqwest::Client::new();
    let req = if cancel {
        client.delete(&endpoint)
    } else {
        client.post(&endpoint)
    };
    send(req, &endpoint, creds).await?;
    if cancel {
        println!("node {id} no longer draining");
    } else {
        println!(
            "node {id} draining: `berth cluster status` shows the shards it still holds; remove it once none are left"
        );
    }
    Ok(())
}

/// Sends a management request with the given credentials; an answer other than 2xx
/// becomes an error of one line with the server's message.
async fn send(
    req: reqwest::RequestBuilder,
    endpoint: &str,
    creds: &Option<(String, String)>,
) -> anyhow::Result<()> {
    let resp = Credentials::apply(creds, req)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("asking {endpoint}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "{endpoint}: {status}: {}",
        crate::admin_cli::server_error(&body)
    );
    Ok(())
}

async fn remove(
    url: &str,
    id: u64,
    force: bool,
    creds: &Option<(String, String)>,
) -> anyhow::Result<()> {
    let endpoint = format!(
        "{}/api/v1/cluster/members/{id}{}",
        url.trim_end_matches('/'),
        if force { "?force=true" } else { "" }
    );
    let req = reqwest::Client::new().delete(&endpoint);
    send(req, &endpoint, creds).await?;
    println!("node {id} removed");
    Ok(())
}

async fn status(
    urls: &[String],
    json: bool,
    creds: &Option<(String, String)>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut answers = Vec::new();
    for url in urls {
        let endpoint = format!("{}/api/v1/cluster/status", url.trim_end_matches('/'));
        let answer = match Credentials::apply(creds, client.get(&endpoint))
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => resp
                .json::<Value>()
                .await
                .with_context(|| format!("reading {endpoint}"))?,
            Ok(resp) => {
                serde_json::json!({ "url": url, "error": format!("HTTP {}", resp.status()) })
            }
            Err(e) => serde_json::json!({ "url": url, "error": e.to_string() }),
        };
        answers.push((url.clone(), answer));
    }
    if json {
        let all: Vec<Value> = answers
            .into_iter()
            .map(|(url, mut v)| {
                v["url"] = Value::from(url);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    print!("{}", table(&answers));
    Ok(())
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// Renders the node answers as text tables.
fn table(answers: &[(String, Value)]) -> String {
    let mut out = format!(
        "{:<28} {:>6} {:<9} {:>6} {:>9} {:>10} {:>8} {:>7}\n",
        "URL", "NODE", "ROLE", "TERM", "LAST_LOG", "COMMITTED", "APPLIED", "LEADER"
    );
    let mut leader_view = None;
    for (url, v) in answers {
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            out += &format!("{url:<28} unreachable: {err}\n");
            continue;
        }
        let role = if v["is_leader"].as_bool() == Some(true) {
            leader_view = Some(v);
            "leader"
        } else {
            "follower"
        };
        out += &format!(
            "{:<28} {:>6} {:<9} {:>6} {:>9} {:>10} {:>8} {:>7}\n",
            url,
            num(&v["node"]),
            role,
            num(&v["term"]),
            num(&v["last_log_index"]),
            num(&v["committed"]),
            num(&v["last_applied"]),
            num(&v["leader"]),
        );
    }
    let membership = leader_view.or_else(|| {
        answers
            .iter()
            .map(|(_, v)| v)
            .find(|v| v.get("members").is_some())
    });
    if let Some(id) = membership.and_then(|v| v["cluster_id"].as_str()) {
        out += &format!("\ncluster {id}\n");
    }
    if let Some(v) = membership {
        out += &format!(
            "\nmembership (as node {} sees it{}):\n{:>6} {:<24} {:<8} {:>8} {:>6} {:>8} {:<14}\n",
            num(&v["node"]),
            if v["joint"].as_bool() == Some(true) {
                ", joint change in progress"
            } else {
                ""
            },
            "NODE",
            "RAFT ADDRESS",
            "ROLE",
            "MATCHED",
            "LAG",
            "APPLIED",
            "STATE DIGEST"
        );
        for m in v["members"].as_array().into_iter().flatten() {
            let report = &m["report"];
            out += &format!(
                "{:>6} {:<24} {:<8} {:>8} {:>6} {:>8} {:<14}\n",
                num(&m["id"]),
                m["addr"].as_str().unwrap_or("-"),
                if m["voter"].as_bool() == Some(true) {
                    "voter"
                } else {
                    "learner"
                },
                num(&m["matched"]),
                num(&m["lag"]),
                num(&report["state"]["applied"]),
                report["state"]["digest"]
                    .as_str()
                    .map_or("-", |d| &d[..d.len().min(12)]),
            );
        }
        out += &repair_lines(v);
        // Every member's disks, as each member reported them.
        for m in v["members"].as_array().into_iter().flatten() {
            if let Some(why) = m["unreachable"].as_str() {
                out += &format!("node {} unreachable: {why}\n", num(&m["id"]));
            }
            for d in m["report"]["disks"].as_array().into_iter().flatten() {
                out += &format!(
                    "disk {} of node {}: {} {} of {} bytes free ({})\n",
                    num(&d["id"]),
                    num(&m["id"]),
                    d["state"].as_str().unwrap_or("-"),
                    num(&d["free_bytes"]),
                    num(&d["total_bytes"]),
                    d["path"].as_str().unwrap_or("-"),
                );
            }
        }
        return out;
    }
    for (url, v) in answers {
        for d in v["disks"].as_array().into_iter().flatten() {
            out += &format!(
                "disk {} of {url}: {} {} of {} bytes free\n",
                num(&d["id"]),
                d["state"].as_str().unwrap_or("-"),
                num(&d["free_bytes"]),
                num(&d["total_bytes"]),
            );
        }
    }
    out
}

/// Each member's repair counters and backlog and its rebalancing, and the draining
/// nodes with the shards they still hold as the leader's repair scan last counted them.
fn repair_lines(v: &Value) -> String {
    let mut out = String::new();
    let members = v["members"].as_array();
    for m in members.into_iter().flatten() {
        let r = &m["report"]["repair"];
        if r.is_object() {
            out += &format!(
                "repair on node {}: backlog {} shards, rebuilt {} shards ({} bytes), {} failures\n",
                num(&m["id"]),
                num(&r["backlog_shards"]),
                num(&r["rebuilt_shards"]),
                num(&r["rebuilt_bytes"]),
                num(&r["failures"]),
            );
        }
        let s = &r["restripe"];
        if s.is_object() {
            let left = if m["id"] == v["leader"] {
                s["blobs_left"].as_u64().map_or_else(
                    || ", blobs left on another profile: not counted yet".to_owned(),
                    |n| format!(", {n} blobs left on another profile"),
                )
            } else {
                String::new()
            };
            out += &format!(
                "restripe on node {}: restriped {} blobs ({} bytes), {} failures{left}\n",
                num(&m["id"]),
                num(&s["restriped_blobs"]),
                num(&s["restriped_bytes"]),
                num(&s["failures"]),
            );
        }
        out += &rebalance_line(num(&m["id"]), &r["rebalance"]);
    }
    let leader_left = members
        .into_iter()
        .flatten()
        .find(|m| m["id"] == v["leader"])
        .map(|m| &m["report"]["repair"]["drain_shards_left"]);
    for node in v["draining"].as_array().into_iter().flatten() {
        let left = leader_left.and_then(|l| l[num(node)].as_u64()).map_or_else(
            || "not counted yet".to_owned(),
            |n| format!("{n} shards left"),
        );
        out += &format!("node {} draining: {left}\n", num(node));
    }
    out
}

/// What a member's rebalancing did (moved shards, its last complete round), when it
/// did anything: only a leader rebalances.
fn rebalance_line(node: String, r: &Value) -> String {
    let round = &r["last_round"];
    if r["moved_shards"].as_u64().unwrap_or(0) == 0 && !round.is_object() {
        return String::new();
    }
    let last = if round.is_object() {
        let nodes: Vec<String> = round["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(num)
            .collect();
        format!(
            "last round over nodes {}: {} shards misplaced, {} left",
            nodes.join(","),
            num(&round["misplaced_shards"]),
            num(&round["left_shards"]),
        )
    } else {
        "no complete round yet".to_owned()
    };
    format!(
        "rebalance on node {node}: moved {} shards ({} bytes); {last}\n",
        num(&r["moved_shards"]),
        num(&r["moved_bytes"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_shows_roles_lag_and_unreachable_nodes() {
        let disk =
            json!({"id": 0, "path": "/d", "total_bytes": 100, "free_bytes": 40, "state": "active"});
        let leader = json!({
            "node": 1, "leader": 1, "is_leader": true, "term": 3, "last_log_index": 20,
            "committed": 20, "last_applied": 20, "joint": false,
            "members": [
                {"id": 1, "addr": "127.0.0.1:6001", "voter": true, "matched": 20, "lag": 0,
                 "report": {"node": 1, "state": {"applied": 20, "digest": "abcdef0123456789"}, "disks": [disk]}},
                {"id": 2, "addr": "127.0.0.1:6002", "voter": true, "matched": 17, "lag": 3,
                 "report": null, "unreachable": "no answer within 2s"}
            ],
            "disks": [disk]
        });
        let out = table(&[
            ("http://a".into(), leader),
            ("http://b".into(), json!({"error": "connection refused"})),
        ]);
        assert!(out.contains("leader"), "{out}");
        assert!(
            out.contains("127.0.0.1:6002") && out.contains("      17      3"),
            "{out}"
        );
        assert!(out.contains("      20 abcdef012345"), "{out}");
        assert!(
            out.contains("http://b                     unreachable: connection refused"),
            "{out}"
        );
        assert!(
            out.contains("disk 0 of node 1: active 40 of 100 bytes free (/d)"),
            "{out}"
        );
        assert!(
            out.contains("node 2 unreachable: no answer within 2s"),
            "{out}"
        );
    }

    #[test]
    fn table_shows_repair_backlog_and_drain_progress() {
        let repair = |left: Value| {
            json!({"rebuilt_shards": 5, "rebuilt_bytes": 5000, "failures": 1,
                   "backlog_shards": 2, "drain_shards_left": left})
        };
        let status = json!({
            "node": 1, "leader": 1, "is_leader": true, "draining": [4, 3],
            "members": [
                {"id": 1, "report": {"disks": [], "repair": repair(json!({"4": 7}))}},
                {"id": 4, "report": {"disks": [], "repair": repair(json!({}))}}
            ]
        });
        let out = table(&[("http://a".into(), status)]);
        assert!(
            out.contains(
                "repair on node 1: backlog 2 shards, rebuilt 5 shards (5000 bytes), 1 failures"
            ),
            "{out}"
        );
        assert!(out.contains("node 4 draining: 7 shards left"), "{out}");
        assert!(!out.contains("rebalance"), "{out}");
        assert!(out.contains("node 3 draining: not counted yet"), "{out}");
    }

    #[test]
    fn table_shows_restripe_progress_and_the_leaders_count_of_blobs_left() {
        let repair = |left: Value| {
            json!({"rebuilt_shards": 0, "rebuilt_bytes": 0, "failures": 0, "backlog_shards": 0,
                   "restripe": {"restriped_blobs": 9, "restriped_bytes": 4096, "failures": 2,
                                "blobs_left": left, "old_layouts_waiting": 0}})
        };
        let status = |leader: u64| {
            json!({
                "node": 1, "leader": leader, "is_leader": leader == 1, "draining": [],
                "members": [
                    {"id": 1, "report": {"disks": [], "repair": repair(json!(3))}},
                    {"id": 2, "report": {"disks": [], "repair": repair(Value::Null)}}
                ]
            })
        };
        let out = table(&[("http://a".into(), status(1))]);
        assert!(
            out.contains(
                "restripe on node 1: restriped 9 blobs (4096 bytes), 2 failures, 3 blobs left on another profile\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("restripe on node 2: restriped 9 blobs (4096 bytes), 2 failures\n"),
            "{out}"
        );
        let out = table(&[("http://a".into(), status(2))]);
        assert!(
            out.contains("restripe on node 2: restriped 9 blobs (4096 bytes), 2 failures, blobs left on another profile: not counted yet"),
            "{out}"
        );
    }

    #[test]
    fn without_a_membership_view_disks_are_listed_per_url() {
        let out = table(&[(
            "http://a".into(),
            json!({"node": 1, "disks": [{"id": 0, "path": "/d", "total_bytes": 100, "free_bytes": 40, "state": "active"}]}),
        )]);
        assert!(
            out.contains("disk 0 of http://a: active 40 of 100 bytes free"),
            "{out}"
        );
    }

    #[test]
    fn table_shows_rebalancing_progress() {
        let status = json!({
            "node": 1, "leader": 1, "is_leader": true, "draining": [],
            "members": [
                {"id": 1, "report": {"disks": [], "repair": {"rebalance": {
                    "moved_shards": 21, "moved_bytes": 9000, "rounds": 3,
                    "last_round": {"nodes": [1, 2, 3, 4], "misplaced_shards": 2, "left_shards": 1}}}}},
                {"id": 2, "report": {"disks": [], "repair": {"rebalance": {
                    "moved_shards": 4, "moved_bytes": 100, "rounds": 0, "last_round": null}}}},
                {"id": 3, "report": {"disks": [], "repair": {"rebalance": {
                    "moved_shards": 0, "moved_bytes": 0, "rounds": 0, "last_round": null}}}}
            ]
        });
        let out = table(&[("http://a".into(), status)]);
        assert!(
            out.contains(
                "rebalance on node 1: moved 21 shards (9000 bytes); last round over nodes 1,2,3,4: 2 shards misplaced, 1 left"
            ),
            "{out}"
        );
        assert!(
            out.contains("rebalance on node 2: moved 4 shards (100 bytes); no complete round yet"),
            "{out}"
        );
        assert!(!out.contains("rebalance on node 3"), "{out}");
    }
}
