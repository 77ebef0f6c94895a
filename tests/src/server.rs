//! A berth server process owned by one test: finds the binary, starts it on a free
//! loopback port with fresh data directories, waits until it is healthy and ready,
//! restarts it on the same data and port, and kills it when dropped (also when the test
//! panics, in which case the tail of the server's log is printed).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// How long a start or restart may take before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd server may take to exit before it is SIGKILLed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How many log bytes are printed when a test fails.
pub const LOG_TAIL_BYTES: u64 = 16 * 1024;
/// How many fresh ports a first start tries when the chosen port is taken meanwhile.
const START_ATTEMPTS_MAX: usize = 3;

/// How the server is stopped when its handle is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGTERM, then SIGKILL after [`SHUTDOWN_TIMEOUT`].
    #[default]
    Term,
    /// SIGKILL at once.
    Kill,
}

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Number of extra `--disk` directories (fresh temporary directories).
    pub disks: usize,
    /// `--profile K+M`, if any.
    pub profile: Option<String>,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// Extra `berth serve` arguments.
    pub args: Vec<String>,
    /// How the server is stopped on drop.
    pub stop: StopSignal,
}

impl ServerOptions {
    /// Enforced authentication with the bootstrap administrator `admin` whose
    /// password is `admin_password`, plus `extra` serve arguments.
    pub fn enforced(admin_password: &str, extra: &[&str]) -> ServerOptions {
        let mut args = vec!["--auth".to_owned(), "enforced".to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        ServerOptions {
            env: vec![("BERTH_ADMIN_PASSWORD".into(), admin_password.into())],
            args,
            ..ServerOptions::default()
        }
    }
}

/// A running (or killed, awaiting restart) berth process.
pub struct Server {
    bin: PathBuf,
    opts: ServerOptions,
    port: u16,
    data: TempDir,
    disks: Vec<TempDir>,
    logs: TempDir,
    child: Option<Child>,
    starts: usize,
}

impl Server {
    /// Starts berth with `opts` on a free port and waits until it is healthy and ready.
    pub async fn start(opts: ServerOptions) -> Result<Server> {
        let bin = berth_binary()?;
        let data = tempfile::Builder::new().prefix("berth-data-").tempdir()?;
        let disks = (0..opts.disks)
            .map(|_| tempfile::Builder::new().prefix("berth-disk-").tempdir())
            .collect::<std::io::Result<Vec<_>>>()?;
        let logs = tempfile::Builder::new().prefix("berth-log-").tempdir()?;
        let mut server = Server {
            bin,
            opts,
            port: 0,
            data,
            disks,
            logs,
            child: None,
            starts: 0,
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS_MAX {
            server.port = free_port()?;
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill9();
                    let in_use = server.log_tail().contains("in use");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        let err = last_err.unwrap_or_else(|| anyhow::anyhow!("berth did not start"));
        Err(err.context(format!(
            "starting {} failed; log tail:\n{}",
            server.bin.display(),
            server.log_tail()
        )))
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PID of the running process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The `--data` directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The extra `--disk` directories, in the order they were given.
    pub fn disk_dirs(&self) -> Vec<&Path> {
        self.disks.iter().map(TempDir::path).collect()
    }

    /// Path of the combined stdout/stderr log of every start of this server.
    pub fn log_path(&self) -> PathBuf {
        self.logs.path().join("berth.log")
    }

    /// SIGKILLs the server and reaps it. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited; reaping below still happens.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the server and waits for it to exit; SIGKILLs it after
    /// [`SHUTDOWN_TIMEOUT`]. Returns whether it exited by itself in time.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while sent && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether the process has exited on its own (crashed) since it was started.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    /// Stops the server if it runs (SIGKILL) and starts it again on the same data
    /// directories and port, waiting until it is healthy and ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        let started = Instant::now();
        let mut last_err = None;
        // The port was just released; a lingering socket can hold it for a moment.
        while started.elapsed() < STARTUP_TIMEOUT {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill9();
                    let in_use = self.log_tail().contains("in use");
                    last_err = Some(e);
                    if !in_use {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let err = last_err.unwrap_or_else(|| anyhow::anyhow!("restart timed out"));
        Err(err.context(format!(
            "restarting berth on port {} failed; log tail:\n{}",
            self.port,
            self.log_tail()
        )))
    }

    /// The last [`LOG_TAIL_BYTES`] of the server's log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path(), LOG_TAIL_BYTES)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr())
            .arg("--data")
            .arg(self.data.path());
        for disk in &self.disks {
            cmd.arg("--disk").arg(disk.path());
        }
        if let Some(profile) = &self.opts.profile {
            cmd.arg("--profile").arg(profile);
        }
        cmd.args(&self.opts.args);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        self.starts += 1;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the server log")?;
        {
            use std::io::Write;
            let mut header = &log;
            writeln!(
                header,
                "==== berth-tests: start #{} on port {} ====",
                self.starts, self.port
            )?;
        }
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for path in ["/healthz", "/readyz"] {
            let url = format!("{}{}", self.url(), path);
            loop {
                if self.has_exited() {
                    bail!("berth exited before {path} answered 200");
                }
                if let Ok(resp) = http.get(&url).send().await
                    && resp.status().as_u16() == 200
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "berth did not answer 200 on {path} within {:?}",
                        STARTUP_TIMEOUT
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- berth log tail ({}) ----\n{}\n---- end of berth log ----",
                self.log_path().display(),
                self.log_tail()
            );
        }
        match self.opts.stop {
            StopSignal::Kill => self.kill9(),
            StopSignal::Term => {
                if !self.terminate() {
                    eprintln!(
                        "berth-tests: berth on port {} ignored SIGTERM for {:?} and was killed",
                        self.port, SHUTDOWN_TIMEOUT
                    );
                }
            }
        }
    }
}

/// Locates the `berth` binary: `$BERTH_BIN`, else the first ancestor directory of the
/// running test executable (`target/<profile>/deps/…`) that holds an executable `berth`.
pub fn berth_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("BERTH_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join("berth");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "berth binary not found next to {} (looked in its 4 parent directories); \
         build it first with `cargo build -p berth-node --bin berth` using the same \
         CARGO_TARGET_DIR and profile, or set BERTH_BIN",
        exe.display()
    )
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log file)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::from("(log not readable)");
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::from("(log not readable)");
    }
    String::from_utf8_lossy(&buf).into_owned()
}
