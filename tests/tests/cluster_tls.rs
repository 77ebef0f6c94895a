//! Mutual TLS between the nodes of a real three-node cluster: with certificates from
//! one CA the cluster forms and serves as one registry (Raft, shard reads from another
//! node and upload requests passed on to their owner all cross the TLS listener), and
//! the cluster listener refuses a plain-text client and a client whose certificate
//! another CA signed, while a client with a certificate of the cluster's CA gets in.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use berth_tests::cluster::Cluster;
use berth_tests::{Oci, random_bytes, sha256_digest};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const NODES: u16 = 3;

/// A CA: its certificate (PEM) and the issuer that signs node certificates.
fn new_ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A certificate for 127.0.0.1 signed by `ca`: (certificate PEM, key PEM).
fn node_cert(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_tls_dir(dir: &Path, ca: &CertifiedIssuer<'static, KeyPair>) -> Result<()> {
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for i in 1..=NODES {
        let (cert, key) = node_cert(ca, &format!("berth node {i}"))?;
        std::fs::write(dir.join(format!("node-{i}.pem")), cert)?;
        std::fs::write(dir.join(format!("node-{i}.key")), key)?;
    }
    Ok(())
}

/// An HTTP/2 client of the cluster listener, trusting `ca` and presenting `identity`.
fn tls_client(ca_pem: &str, identity: Option<(String, String)>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .timeout(std::time::Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(
            format!("{cert}{key}").as_bytes(),
        )?);
    }
    Ok(builder.build()?)
}

// Proves that a cluster with mutual TLS works end to end and that its listener admits
// only clients holding a certificate of the cluster's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_mutual_tls_and_refuse_strangers() {
    let _heavy = berth_tests::heavy().await;
    let tls = tempfile::tempdir().unwrap();
    let ca = new_ca("berth test cluster CA").unwrap();
    write_tls_dir(tls.path(), &ca).unwrap();
    let env = vec![(
        "BERTH_CLUSTER_TLS_DIR".to_owned(),
        tls.path().display().to_string(),
    )];
    let cluster = Cluster::up_with_env(NODES, env).unwrap_or_else(|e| panic!("{e:#}"));
    let result: Result<()> = async {
        let repo = "secure/app";
        let nodes: Vec<Oci> = (1..=NODES).map(|i| Oci::new(&cluster.url(i))).collect();
        // Striped on node 1's disks; nodes 2 and 3 read its shards over TLS.
        let big = random_bytes(2 * 1024 * 1024 + 5);
        let digest = nodes[0].push_blob(repo, &big).await?;
        for oci in &nodes[1..] {
            ensure!(
                oci.fetch_blob(repo, &digest).await? == big,
                "blob differs via {}",
                oci.base()
            );
        }
        // A chunked upload owned by node 2, sent through node 3 (passed on over TLS).
        let location = nodes[1].start_upload(repo).await?;
        let path = &location[location.find("/v2/").context("location path")?..];
        let data = random_bytes(300_000);
        let chunk_digest = sha256_digest(&data);
        let resp = nodes[2]
            .http()
            .put(berth_tests::oci::with_query(
                &format!("{}{path}", cluster.url(3)),
                "digest",
                &chunk_digest,
            ))
            .body(data.clone())
            .send()
            .await?;
        berth_tests::oci::expect_created(resp, "PUT via node 3 of node 2's upload").await?;
        ensure!(nodes[0].fetch_blob(repo, &chunk_digest).await? == data);

        let grpc = format!("https://{}/v2/", cluster.grpc_addr(1));
        let ca_pem = ca.pem();
        // A client with a certificate of the cluster's CA is let in (the internal
        // listener answers, with an OCI error for a non-upload path).
        let (cert, key) = node_cert(&ca, "berth operator")?;
        let member = tls_client(&ca_pem, Some((cert, key)))?;
        let answer = member.get(&grpc).send().await?;
        ensure!(
            answer.status().is_client_error(),
            "a trusted client got {}",
            answer.status()
        );
        // Without a client certificate: refused during the handshake.
        let anonymous = tls_client(&ca_pem, None)?;
        ensure!(
            anonymous.get(&grpc).send().await.is_err(),
            "a client without a certificate got an answer"
        );
        // With a certificate of another CA: refused.
        let other = new_ca("another CA")?;
        let stranger = tls_client(&ca_pem, Some(node_cert(&other, "stranger")?))?;
        ensure!(
            stranger.get(&grpc).send().await.is_err(),
            "a client with a foreign certificate got an answer"
        );
        // Plain text: no answer either.
        let plain = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        ensure!(
            plain
                .get(format!("http://{}/v2/", cluster.grpc_addr(1)))
                .send()
                .await
                .is_err(),
            "a plain-text client got an answer"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", cluster.logs());
    }
}
