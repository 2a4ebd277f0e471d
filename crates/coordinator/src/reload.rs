//! Files the coordinator serves from and reads again while serving (the API tokens; the TLS
//! certificate, key and client CA), so that a Secret updated in place, or a certificate renewed
//! by cert-manager, takes effect without a restart.

use std::path::PathBuf;
use std::time::Duration;

/// How often the files are read again. The kubelet takes up to a minute or so to bring a
/// changed Secret into the pod; this adds at most a few seconds.
pub const READ_AGAIN_EVERY: Duration = Duration::from_secs(3);

/// Files and the contents in force (as read at start, then as last read).
#[derive(Clone, Debug)]
pub struct WatchedFiles {
    pub paths: Vec<PathBuf>,
    /// The last reading, good or bad: an unchanged one is neither applied nor reported again.
    last: Result<Vec<Vec<u8>>, String>,
}

impl WatchedFiles {
    /// `paths` with the `contents` read from them at start, in the same order.
    pub fn new(paths: Vec<PathBuf>, contents: Vec<Vec<u8>>) -> Self {
        Self { paths, last: Ok(contents) }
    }

    /// Takes a new reading (the files' contents, or why they could not be read) and returns it
    /// when it differs from the last one.
    pub fn changed(&mut self, reading: Result<Vec<Vec<u8>>, String>) -> Option<Result<Vec<Vec<u8>>, String>> {
        if reading == self.last {
            return None;
        }
        self.last = reading.clone();
        Some(reading)
    }

    async fn read(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut contents = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            contents.push(tokio::fs::read(path).await.map_err(|e| format!("reading {}: {e}", path.display()))?);
        }
        Ok(contents)
    }
}

/// Reads `files` every [`READ_AGAIN_EVERY`] and hands changed contents to `apply`, which puts
/// them in force (saying what it did) or refuses them, in which case what was in force stays: a
/// half-written file or a volume gone never takes the server down. Each change is logged once.
pub async fn follow(what: &'static str, mut files: WatchedFiles, mut apply: impl FnMut(&[Vec<u8>]) -> Result<String, String>) {
    let paths = files.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let mut tick = crate::sweeps::steady_interval(READ_AGAIN_EVERY);
    loop {
        tick.tick().await;
        let reading = files.read().await;
        match files.changed(reading).map(|contents| contents.and_then(|contents| apply(&contents))) {
            None => {}
            Some(Ok(done)) => tracing::info!(what, paths, "{done}"),
            Some(Err(error)) => tracing::warn!(what, paths, %error, "not reloaded; what was read before stays in force"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reading_unlike_the_last_one_is_handed_on_good_or_bad() {
        let mut files = WatchedFiles::new(vec!["/run/tokens".into()], vec![b"a".to_vec()]);
        assert_eq!(files.changed(Ok(vec![b"a".to_vec()])), None, "unchanged since start");
        assert_eq!(files.changed(Ok(vec![b"b".to_vec()])), Some(Ok(vec![b"b".to_vec()])));
        assert_eq!(files.changed(Err("reading /run/tokens: gone".into())), Some(Err("reading /run/tokens: gone".into())));
        assert_eq!(files.changed(Err("reading /run/tokens: gone".into())), None, "a failure is reported once");
        assert_eq!(files.changed(Ok(vec![b"b".to_vec()])), Some(Ok(vec![b"b".to_vec()])), "back after a failure");
    }
}
