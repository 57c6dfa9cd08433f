//! Discovered sets kept on disk under `state_dir`, one file a pool, so a
//! restart while DNS or etcd is unreachable serves the last set seen. A
//! file names the source it came from: a set from another source is not
//! served. Written to a temporary file and renamed, so a crash leaves the
//! old set or the new, never half of one.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use crate::config::Source;
use crate::pool::Found;

#[derive(Serialize, Deserialize)]
struct Saved {
    source: String,
    backends: Vec<SavedBackend>,
}

#[derive(Serialize, Deserialize)]
struct SavedBackend {
    addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    draining: Option<bool>,
}

/// How a source is named in its file: its kind and what it asks.
fn describe(source: &Source) -> String {
    match source {
        Source::Dns { name, port, .. } => format!("dns {name} {port}"),
        Source::DnsSrv { name, .. } => format!("dns_srv {name}"),
        Source::Etcd { prefix, .. } => format!("etcd {prefix}"),
        Source::ZooKeeper(z) => format!("zookeeper {}{} {}", z.chroot, z.path, z.format.as_str()),
    }
}

/// The file of pool `pool` under `dir`.
pub(super) fn path(dir: &Path, pool: &str) -> PathBuf {
    let name: String = utf8_percent_encode(pool, NON_ALPHANUMERIC).to_string();
    dir.join("discovery").join(format!("{name}.json"))
}

/// The set last saved for `pool` from `source`, if any.
pub(super) fn load(dir: &Path, pool: &str, source: &Source) -> Option<Vec<Found>> {
    let file = path(dir, pool);
    let text = std::fs::read(&file).ok()?;
    let saved: Saved = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pool, file = %file.display(), error = %e, "the discovered set kept in state_dir is unreadable; it is not served (the source's next answer replaces it)");
            return None;
        }
    };
    if saved.source != describe(source) {
        return None;
    }
    Some(
        saved
            .backends
            .into_iter()
            .filter_map(|b| {
                Some(Found {
                    addr: b.addr,
                    name: b.name,
                    weight: NonZeroU32::new(b.weight)?,
                    draining: b.draining,
                })
            })
            .collect(),
    )
}

/// Saves `found` as pool `pool`'s last set from `source`.
pub(super) fn save(
    dir: &Path,
    pool: &str,
    source: &Source,
    found: &[Found],
) -> std::io::Result<()> {
    let file = path(dir, pool);
    let parent = file.parent().expect("the path has a directory");
    std::fs::create_dir_all(parent)?;
    let saved = Saved {
        source: describe(source),
        backends: found
            .iter()
            .map(|f| SavedBackend {
                addr: f.addr,
                name: f.name.clone(),
                weight: f.weight.get(),
                draining: f.draining,
            })
            .collect(),
    };
    // A name of this write's own (two processes of an upgrade may save at
    // once), made new: never a file or link that was there before.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = parent.join(format!(
        ".{}.{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("set"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&saved).expect("plain data serialises"))?;
        std::fs::rename(&tmp, &file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd_at(prefix: &str) -> Source {
        Source::Etcd {
            endpoints: vec![],
            prefix: prefix.into(),
            tls: None,
        }
    }

    #[test]
    fn a_set_comes_back_only_for_its_own_source() {
        let dir = tempfile::tempdir().unwrap();
        let etcd = etcd_at("/p/");
        let found = vec![Found {
            addr: "10.0.0.1:80".parse().unwrap(),
            name: Some("web-1".into()),
            weight: NonZeroU32::new(3).unwrap(),
            draining: Some(true),
        }];
        save(dir.path(), "a/b", &etcd, &found).unwrap();
        assert_eq!(load(dir.path(), "a/b", &etcd), Some(found));
        let other = etcd_at("/q/");
        assert_eq!(load(dir.path(), "a/b", &other), None);
        assert!(path(dir.path(), "a/b").ends_with("discovery/a%2Fb.json"));
    }

    #[test]
    fn saving_writes_no_file_but_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let etcd = etcd_at("/p/");
        let found = vec![Found {
            addr: "10.0.0.1:80".parse().unwrap(),
            name: None,
            weight: NonZeroU32::MIN,
            draining: None,
        }];
        // A link planted where a fixed temporary name would be, pointing
        // at a file elsewhere: never written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::create_dir_all(dir.path().join("discovery")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("discovery/web.json.tmp")).unwrap();
        // Saves from many threads at once (two processes of an upgrade):
        // each lands whole.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| save(dir.path(), "web", &etcd, &found).unwrap());
            }
        });
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(load(dir.path(), "web", &etcd), Some(found));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("discovery"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp") && n != "web.json.tmp")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A corrupt file is not served (and is said so in the log).
        std::fs::write(path(dir.path(), "web"), "{\"source\": ").unwrap();
        assert_eq!(load(dir.path(), "web", &etcd), None);
    }
}
