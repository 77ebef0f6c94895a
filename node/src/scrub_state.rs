//! `<data>/scrub.json`: when this node first scheduled scrubbing, when its last
//! scrub pass completed and how far the pass in progress has come, so the scrubber's
//! schedule and its passes survive restarts (a node restarted more often than the
//! interval, or than a pass takes, would otherwise never complete one).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use berth_api::scrub::{PassRecorder, ProgressRecorder, ScrubConfig};
use berth_types::Digest;
use serde::{Deserialize, Serialize};

const SCRUB_FILE: &str = "scrub.json";
const SCRUB_FILE_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ScrubFile {
    format_version: u32,
    /// Unix seconds when scrubbing was first scheduled on this data folder.
    scheduled_since: u64,
    /// Unix seconds of the last complete pass.
    last_pass: Option<u64>,
    /// The last blob the pass in progress has covered; absent between passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume_after: Option<Digest>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn read(path: &Path) -> anyhow::Result<Option<ScrubFile>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: ScrubFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a scrub record", path.display()))?;
    anyhow::ensure!(
        file.format_version == SCRUB_FILE_FORMAT,
        "{} has format version {}, this build reads {SCRUB_FILE_FORMAT}",
        path.display(),
        file.format_version
    );
    Ok(Some(file))
}

/// Writes through a temporary file and a rename, so a crash leaves the old record or
/// the new one.
fn write(path: &Path, file: &ScrubFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(file)?;
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::io::Write::write_all(&mut &f, &bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The scrubber's configuration: the schedule from `<data>/scrub.json` (created on the
/// first start), and a recorder that writes each completed pass back to it.
pub fn config(data: &Path, interval: Duration, bytes_per_sec: u64) -> anyhow::Result<ScrubConfig> {
    let path: PathBuf = data.join(SCRUB_FILE);
    let known = read(&path).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "scrub record unusable; scheduling scrubbing anew");
        None
    });
    let file = match known {
        Some(file) => file,
        None => {
            let file = ScrubFile {
                format_version: SCRUB_FILE_FORMAT,
                scheduled_since: secs(SystemTime::now()),
                last_pass: None,
                resume_after: None,
            };
            write(&path, &file)?;
            file
        }
    };
    let last_pass = file.last_pass.map(time);
    let resume_after = file.resume_after.clone();
    let since = last_pass.unwrap_or(time(file.scheduled_since));
    let recorded = Arc::new(std::sync::Mutex::new((path, file)));
    let progress = recorded.clone();
    let on_pass: PassRecorder = Arc::new(move |at| {
        let mut guard = recorded.lock().expect("scrub record lock poisoned");
        let (path, file) = &mut *guard;
        file.last_pass = Some(secs(at));
        file.resume_after = None;
        if let Err(e) = write(path, file) {
            tracing::warn!(error = %e, "could not record the scrub pass; the next start scrubs sooner");
        }
    });
    let on_progress: ProgressRecorder = Arc::new(move |last| {
        let mut guard = progress.lock().expect("scrub record lock poisoned");
        let (path, file) = &mut *guard;
        file.resume_after = Some(last.clone());
        if let Err(e) = write(path, file) {
            tracing::warn!(error = %e, "could not record the scrub's progress; a restart scrubs this part again");
        }
    });
    Ok(ScrubConfig {
        interval,
        bytes_per_sec,
        last_pass,
        since,
        on_pass,
        resume_after,
        on_progress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let first = config(dir.path(), hour, 1).unwrap();
        assert_eq!(first.last_pass, None);
        let again = config(dir.path(), hour, 1).unwrap();
        assert_eq!(
            again.since, first.since,
            "a restart must not move the schedule"
        );

        let done = time(secs(SystemTime::now()) + 10);
        (first.on_pass)(done);
        let after = config(dir.path(), hour, 1).unwrap();
        assert_eq!(after.last_pass, Some(done));
        assert_eq!(after.since, done);

        // A damaged record never keeps the node from starting: it starts anew.
        std::fs::write(dir.path().join(SCRUB_FILE), b"junk").unwrap();
        let anew = config(dir.path(), hour, 1).unwrap();
        assert_eq!(anew.last_pass, None);
        assert!(read(&dir.path().join(SCRUB_FILE)).unwrap().is_some());
    }

    #[test]
    fn a_pass_in_progress_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let first = config(dir.path(), hour, 1).unwrap();
        assert_eq!(first.resume_after, None);
        let mark: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        (first.on_progress)(&mark);
        let restarted = config(dir.path(), hour, 1).unwrap();
        assert_eq!(restarted.resume_after, Some(mark));
        assert_eq!(
            restarted.since, first.since,
            "progress must not move the schedule"
        );

        (restarted.on_pass)(SystemTime::now());
        let after = config(dir.path(), hour, 1).unwrap();
        assert_eq!(
            after.resume_after, None,
            "a completed pass leaves nothing to go on with"
        );
        assert!(after.last_pass.is_some());
    }
}
