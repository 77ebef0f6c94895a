//! Real third-party clients against a real registry: skopeo (OCI layout to registry and
//! back), oras-py (artifacts with artifactType, subject and the referrers API), podman
//! (push, remove, pull) and the oci-client crate. Every round trip compares digests and
//! layer bytes. A missing tool fails the test with a clear message (CI installs them).
//! Uses a fresh berth, or `BERTH_TEST_REGISTRY` when set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::oci::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, header, manifest_bytes};
use berth_tests::{Target, random_bytes, sha256_digest, unique_repo};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Seconds any one external command may run.
const COMMAND_TIMEOUT_SECS: u32 = 300;

/// The path of `tool` on PATH; panics with an install hint when it is missing.
fn require_tool(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "required tool `{tool}` is not on PATH; install it with `{install}` (./scripts/test.sh does this)"
    );
}

/// Runs `program args` under `timeout`, with proxies disabled for loopback; fails with
/// its output unless it exits 0.
fn run(program: &Path, args: &[&str], what: &str) -> Result<Output> {
    let output = Command::new("timeout")
        .arg(COMMAND_TIMEOUT_SECS.to_string())
        .arg(program)
        .args(args)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {} {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest)
}

/// One layer of a test image: the gzip bytes and the digest of the tar inside.
struct Layer {
    gz: Vec<u8>,
    diff_id: String,
}

/// Builds a real tar+gzip layer holding `files` random files of `file_size` bytes.
fn make_layer(work: &Path, name: &str, files: usize, file_size: usize) -> Result<Layer> {
    let root = work.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("data"))?;
    for i in 0..files {
        std::fs::write(
            root.join("data").join(format!("{name}-{i}.bin")),
            random_bytes(file_size),
        )?;
    }
    let tar = work.join(format!("{name}.tar"));
    let tool = require_tool("tar", "apt-get install -y tar");
    let tar_arg = tar.to_string_lossy().into_owned();
    let root_arg = root.to_string_lossy().into_owned();
    run(
        &tool,
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "-cf",
            &tar_arg,
            "-C",
            &root_arg,
            ".",
        ],
        "tar",
    )?;
    let gzip = require_tool("gzip", "apt-get install -y gzip");
    let gz = run(&gzip, &["-n", "-c", &tar_arg], "gzip")?.stdout;
    let diff_id = sha256_digest(&std::fs::read(&tar)?);
    Ok(Layer { gz, diff_id })
}

/// An OCI image layout on disk with one image tagged `v1`.
struct Layout {
    dir: PathBuf,
    manifest: Vec<u8>,
    digest: String,
    config: Vec<u8>,
    layers: Vec<Layer>,
}

impl Layout {
    /// Builds `dir` with a config and three real tar+gzip layers (~300 KiB, ~1 MiB,
    /// ~2.5 MiB of random file content).
    fn build(work: &Path, dir: &Path) -> Result<Layout> {
        let layers = vec![
            make_layer(work, "l0", 3, 100 * 1024)?,
            make_layer(work, "l1", 4, 256 * 1024)?,
            make_layer(work, "l2", 5, 512 * 1024)?,
        ];
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"], "Labels": { "berth.test": unique_repo("x") } },
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
            "history": layers.iter().map(|_| json!({ "created_by": "berth-tests" })).collect::<Vec<_>>(),
        }))?;
        let manifest = manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len() },
            "layers": layers.iter().map(|l| json!({ "mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(&l.gz), "size": l.gz.len() })).collect::<Vec<_>>(),
        }));
        let digest = sha256_digest(&manifest);
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs)?;
        for data in [&config, &manifest]
            .into_iter()
            .chain(layers.iter().map(|l| &l.gz))
        {
            std::fs::write(blobs.join(hex_of(&sha256_digest(data))), data)?;
        }
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": "v1" },
            }],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            manifest,
            digest,
            config,
            layers,
        })
    }
}

/// Reads the manifest tagged `tag` in the OCI layout `dir` and every blob it names.
/// A manifest read from a layout: its bytes, its digest, and its blobs by digest.
type LayoutImage = (Vec<u8>, String, BTreeMap<String, Vec<u8>>);

fn read_layout(dir: &Path, tag: &str) -> Result<LayoutImage> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .with_context(|| format!("no manifest tagged {tag} in {index}"))?;
    let digest = entry["digest"]
        .as_str()
        .context("index entry without digest")?
        .to_string();
    let blob = |d: &str| {
        std::fs::read(dir.join("blobs").join("sha256").join(hex_of(d)))
            .with_context(|| format!("blob {d} missing in {}", dir.display()))
    };
    let manifest = blob(&digest)?;
    let parsed: Value = serde_json::from_slice(&manifest)?;
    let mut blobs = BTreeMap::new();
    let config = parsed["config"]["digest"]
        .as_str()
        .context("manifest without config")?;
    blobs.insert(config.to_string(), blob(config)?);
    for layer in parsed["layers"]
        .as_array()
        .context("manifest without layers")?
    {
        let d = layer["digest"].as_str().context("layer without digest")?;
        blobs.insert(d.to_string(), blob(d)?);
    }
    Ok((manifest, digest, blobs))
}

/// Checks the registry serves `layout`'s manifest under `repo:tag` byte for byte, and
/// every blob.
async fn registry_has_layout(t: &Target, repo: &str, tag: &str, layout: &Layout) -> Result<()> {
    let resp = t.oci.get_manifest(repo, tag).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "GET {repo}:{tag}: {}",
        resp.status()
    );
    ensure!(
        header(resp.headers(), "docker-content-digest") == layout.digest,
        "{repo}:{tag}: digest differs"
    );
    ensure!(
        resp.bytes().await?.as_ref() == layout.manifest.as_slice(),
        "{repo}:{tag}: manifest bytes differ"
    );
    ensure!(
        t.oci
            .fetch_blob(repo, &sha256_digest(&layout.config))
            .await?
            == layout.config,
        "config bytes differ"
    );
    for layer in &layout.layers {
        ensure!(
            t.oci.fetch_blob(repo, &sha256_digest(&layer.gz)).await? == layer.gz,
            "layer bytes differ"
        );
    }
    Ok(())
}

fn policy_file(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("policy.json");
    std::fs::write(&path, br#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    Ok(path)
}

#[tokio::test]
async fn skopeo_copies_an_oci_layout_to_the_registry_and_back() {
    // Proves: skopeo pushes a 3-layer OCI image layout to the registry with digests
    // preserved, `skopeo inspect` reports the same digest and layers, and copying it back
    // to a new layout gives the same manifest digest and identical layer bytes.
    let skopeo = require_tool("skopeo", "apt-get install -y skopeo");
    Target::conformance()
        .await
        .run(async |t| {
            let work = tempfile::tempdir()?;
            let src = work.path().join("src");
            let layout = Layout::build(work.path(), &src)?;
            let policy = policy_file(work.path())?;
            let policy = policy.to_string_lossy().into_owned();
            let repo = unique_repo("clients/skopeo");
            let remote = format!("docker://{}/{repo}:v1", t.addr());
            let src_ref = format!("oci:{}:v1", layout.dir.display());
            run(
                &skopeo,
                &[
                    "--policy",
                    &policy,
                    "copy",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    &src_ref,
                    &remote,
                ],
                "skopeo copy oci: -> registry",
            )?;
            registry_has_layout(t, &repo, "v1", &layout).await?;

            let inspect = run(
                &skopeo,
                &["inspect", "--tls-verify=false", &remote],
                "skopeo inspect",
            )?;
            let inspected: Value = serde_json::from_slice(&inspect.stdout)
                .context("skopeo inspect output is not JSON")?;
            ensure!(
                inspected["Digest"] == layout.digest.as_str(),
                "skopeo inspect Digest {}, expected {}",
                inspected["Digest"],
                layout.digest
            );
            let layer_digests: Vec<String> =
                layout.layers.iter().map(|l| sha256_digest(&l.gz)).collect();
            ensure!(
                inspected["Layers"] == json!(layer_digests),
                "skopeo inspect Layers {}",
                inspected["Layers"]
            );
            let raw = run(
                &skopeo,
                &["inspect", "--raw", "--tls-verify=false", &remote],
                "skopeo inspect --raw",
            )?;
            ensure!(
                raw.stdout == layout.manifest,
                "skopeo inspect --raw differs from the pushed manifest"
            );

            let dst = work.path().join("dst");
            let dst_ref = format!("oci:{}:v1", dst.display());
            run(
                &skopeo,
                &[
                    "--policy",
                    &policy,
                    "copy",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    &remote,
                    &dst_ref,
                ],
                "skopeo copy registry -> oci:",
            )?;
            let (manifest, digest, blobs) = read_layout(&dst, "v1")?;
            ensure!(
                digest == layout.digest,
                "copied-back manifest digest {digest}, expected {}",
                layout.digest
            );
            ensure!(
                manifest == layout.manifest,
                "copied-back manifest bytes differ"
            );
            ensure!(
                blobs.get(&sha256_digest(&layout.config)) == Some(&layout.config),
                "copied-back config differs"
            );
            for layer in &layout.layers {
                ensure!(
                    blobs.get(&sha256_digest(&layer.gz)) == Some(&layer.gz),
                    "copied-back layer differs"
                );
            }
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn oras_pushes_artifacts_with_subject_and_lists_referrers() {
    // Proves: oras-py pushes an artifact with artifactType and a second one whose subject
    // is the first; the registry answers OCI-Subject, lists the second as a referrer of
    // the first, and both pull back byte-identical (tests/scripts/oras_roundtrip.py).
    let python = require_tool("python3", "apt-get install -y python3");
    let probe = Command::new(&python)
        .args(["-c", "import oras.provider"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "python3 cannot import oras; install it with `python3 -m pip install oras` (./scripts/test.sh does this)"
    );
    Target::conformance()
        .await
        .run(async |t| {
            let work = tempfile::tempdir()?;
            let repo = unique_repo("clients/oras");
            let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join("oras_roundtrip.py");
            let script = script.to_string_lossy().into_owned();
            let workdir = work.path().to_string_lossy().into_owned();
            let out = run(
                &python,
                &[&script, t.addr(), &repo, &workdir],
                "oras_roundtrip.py",
            )?;
            let result: Value = serde_json::from_slice(&out.stdout)
                .context("oras_roundtrip.py output is not JSON")?;
            let a1 = result["a1"]["digest"].as_str().context("no a1 digest")?;
            let a2 = result["a2"]["digest"].as_str().context("no a2 digest")?;
            // Cross-check with our own client: both by tag and digest, A2's subject is A1.
            for (tag, digest) in [("a1", a1), ("a2", a2)] {
                let resp = t.oci.get_manifest(&repo, tag).await?;
                ensure!(
                    header(resp.headers(), "docker-content-digest") == digest,
                    "{tag}: Docker-Content-Digest differs"
                );
                let body = resp.bytes().await?;
                ensure!(sha256_digest(&body) == digest, "{tag}: body digest differs");
                if tag == "a2" {
                    let parsed: Value = serde_json::from_slice(&body)?;
                    ensure!(
                        parsed["subject"]["digest"] == a1,
                        "a2 subject {}",
                        parsed["subject"]
                    );
                }
            }
            Ok(())
        })
        .await;
}

/// A podman invocation isolated in a temporary root (vfs storage: plain directories,
/// no mounts, removed with the directory; no daemon, no systemd).
struct Podman {
    bin: PathBuf,
    root: String,
    runroot: String,
    tmp: String,
}

impl Podman {
    fn new(dir: &Path) -> Result<Podman> {
        let bin = require_tool("podman", "apt-get install -y podman");
        for sub in ["storage", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Podman {
            bin,
            root: dir.join("storage").to_string_lossy().into_owned(),
            runroot: dir.join("run").to_string_lossy().into_owned(),
            tmp: dir.join("tmp").to_string_lossy().into_owned(),
        })
    }

    fn run(&self, args: &[&str], what: &str) -> Result<Output> {
        let mut all = vec![
            "--root",
            &self.root,
            "--runroot",
            &self.runroot,
            "--tmpdir",
            &self.tmp,
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ];
        all.extend_from_slice(args);
        run(&self.bin, &all, what)
    }

    fn inspect(&self, image: &str, format: &str) -> Result<String> {
        let out = self.run(
            &["image", "inspect", "--format", format, image],
            "podman image inspect",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[tokio::test]
async fn podman_pushes_removes_and_pulls_back_the_same_image() {
    // Proves: podman pushes an image to the registry, and after removing it locally pulls
    // it back with the same image id (config digest) and manifest digest; every layer in
    // the registry decompresses to the tar the config's diff_ids name.
    let gzip = require_tool("gzip", "apt-get install -y gzip");
    let podman_dir = tempfile::tempdir().expect("tempdir");
    let podman = Podman::new(podman_dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
    Target::conformance()
        .await
        .run(async |t| {
            // podman names an image pulled from oci:DIR after DIR, so the path must be a
            // valid (lowercase) repository name.
            let work = tempfile::Builder::new()
                .prefix(&format!(
                    "berth-podman-{}",
                    berth_tests::data::random_suffix(12)
                ))
                .rand_bytes(0)
                .tempdir()?;
            ensure!(
                !work
                    .path()
                    .to_string_lossy()
                    .chars()
                    .any(|c| c.is_ascii_uppercase()),
                "temporary directory {} has uppercase letters, which podman rejects",
                work.path().display()
            );
            let layout = Layout::build(work.path(), &work.path().join("src"))?;
            let config_digest = sha256_digest(&layout.config);
            let src_ref = format!("oci:{}:v1", layout.dir.display());
            podman.run(&["pull", &src_ref], "podman pull oci:")?;
            let id = podman.inspect(hex_of(&config_digest), "{{.Id}}")?;
            ensure!(
                id == hex_of(&config_digest),
                "podman image id {id}, expected {config_digest}"
            );

            let repo = unique_repo("clients/podman");
            let remote = format!("{}/{repo}:v1", t.addr());
            let digest_file = work.path().join("digest");
            let digest_arg = digest_file.to_string_lossy().into_owned();
            podman.run(
                &[
                    "push",
                    "--tls-verify=false",
                    "--digestfile",
                    &digest_arg,
                    &id,
                    &format!("docker://{remote}"),
                ],
                "podman push",
            )?;
            let pushed = std::fs::read_to_string(&digest_file)?.trim().to_string();
            let resp = t.oci.get_manifest(&repo, "v1").await?;
            ensure!(
                resp.status() == StatusCode::OK,
                "GET {remote} after podman push: {}",
                resp.status()
            );
            ensure!(
                header(resp.headers(), "docker-content-digest") == pushed,
                "registry digest differs from podman's {pushed}"
            );
            let manifest_body = resp.bytes().await?;
            ensure!(
                sha256_digest(&manifest_body) == pushed,
                "manifest body digest differs from {pushed}"
            );
            let manifest: Value = serde_json::from_slice(&manifest_body)?;
            ensure!(
                manifest["config"]["digest"] == config_digest.as_str(),
                "pushed config {}, expected {config_digest}",
                manifest["config"]["digest"]
            );
            ensure!(
                t.oci.fetch_blob(&repo, &config_digest).await? == layout.config,
                "config bytes differ"
            );
            let layers = manifest["layers"].as_array().context("no layers")?;
            ensure!(
                layers.len() == layout.layers.len(),
                "{} layers pushed, expected {}",
                layers.len(),
                layout.layers.len()
            );
            for (pushed_layer, original) in layers.iter().zip(&layout.layers) {
                let digest = pushed_layer["digest"]
                    .as_str()
                    .context("layer without digest")?;
                let gz = t.oci.fetch_blob(&repo, digest).await?;
                ensure!(
                    sha256_digest(&gz) == digest,
                    "layer {digest}: bytes do not match their digest"
                );
                let path = work.path().join("pulled-layer.gz");
                std::fs::write(&path, &gz)?;
                let tar = run(
                    &gzip,
                    &["-d", "-c", &path.to_string_lossy()],
                    "gunzip pushed layer",
                )?
                .stdout;
                ensure!(
                    sha256_digest(&tar) == original.diff_id,
                    "layer {digest} does not decompress to {}",
                    original.diff_id
                );
            }

            podman.run(&["rmi", "--force", &id], "podman rmi")?;
            let gone = podman.run(&["image", "exists", &id], "podman image exists");
            ensure!(gone.is_err(), "image {id} still present after podman rmi");
            podman.run(
                &["pull", "--tls-verify=false", &remote],
                "podman pull from the registry",
            )?;
            let id_back = podman.inspect(&remote, "{{.Id}}")?;
            ensure!(id_back == id, "pulled image id {id_back}, expected {id}");
            let digest_back = podman.inspect(&remote, "{{.Digest}}")?;
            ensure!(
                digest_back == pushed,
                "pulled image digest {digest_back}, expected {pushed}"
            );
            Ok(())
        })
        .await;
}

#[tokio::test]
async fn oci_client_crate_pushes_and_pulls_an_image() {
    // Proves: the oci-client crate (chunked and monolithic push) pushes an image and
    // pulls it back with the same manifest digest, config and layer bytes.
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    Target::conformance()
        .await
        .run(async |t| {
            for monolithic in [false, true] {
                let client = Client::new(ClientConfig {
                    protocol: ClientProtocol::Http,
                    use_monolithic_push: monolithic,
                    ..Default::default()
                });
                let repo = unique_repo("clients/oci-client");
                let reference: Reference = format!("{}/{repo}:v1", t.addr()).parse()?;
                let layers = vec![
                    ImageLayer::new(random_bytes(300 * 1024), OCI_LAYER_GZIP.to_string(), None),
                    ImageLayer::new(random_bytes(3 * 1024 * 1024 + 17), OCI_LAYER_GZIP.to_string(), None),
                ];
                let config_data = serde_json::to_vec(&json!({
                    "architecture": "amd64", "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| sha256_digest(&l.data)).collect::<Vec<_>>() },
                }))?;
                let config = Config::new(config_data.clone(), OCI_CONFIG.to_string(), None);
                let mode = if monolithic { "monolithic" } else { "chunked" };
                client
                    .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
                    .await
                    .with_context(|| format!("oci-client {mode} push"))?;
                let resp = t.oci.get_manifest(&repo, "v1").await?;
                let registry_digest = header(resp.headers(), "docker-content-digest");
                ensure!(sha256_digest(&resp.bytes().await?) == registry_digest, "{mode}: manifest body digest differs");

                let pulled = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
                    .pull(&reference, &RegistryAuth::Anonymous, vec![OCI_LAYER_GZIP])
                    .await
                    .with_context(|| format!("oci-client pull after {mode} push"))?;
                ensure!(pulled.digest.as_deref() == Some(registry_digest.as_str()), "{mode}: pulled digest {:?}, registry says {registry_digest}", pulled.digest);
                ensure!(pulled.config.data.as_ref() == config_data.as_slice(), "{mode}: config bytes differ");
                // oci-client returns layers in download-completion order.
                let mut got: Vec<&[u8]> = pulled.layers.iter().map(|l| l.data.as_ref()).collect();
                let mut sent: Vec<&[u8]> = layers.iter().map(|l| l.data.as_ref()).collect();
                got.sort();
                sent.sort();
                ensure!(got == sent, "{mode}: pulled layers differ from the pushed ones");
                let manifest = pulled.manifest.context("oci-client returned no manifest")?;
                let order: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
                let expected: Vec<String> = layers.iter().map(|l| sha256_digest(&l.data)).collect();
                ensure!(order == expected, "{mode}: manifest layer order {order:?}, expected {expected:?}");
            }
            Ok(())
        })
        .await;
}
