//! The API token secret: configured, read from a file, or created once and kept in the data
//! directory (mode 0600) so `sandboxd token` and the daemon agree.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};

use crate::config::Settings;

pub fn jwt_secret(settings: &Settings) -> anyhow::Result<Vec<u8>> {
    if !settings.auth.jwt_secret.is_empty() {
        return Ok(settings.auth.jwt_secret.clone().into_bytes());
    }
    if !settings.auth.jwt_secret_file.is_empty() {
        let text = std::fs::read_to_string(&settings.auth.jwt_secret_file).with_context(|| {
            format!(
                "auth.jwt_secret_file: reading {}",
                settings.auth.jwt_secret_file
            )
        })?;
        let secret = text.trim();
        if secret.len() < 16 {
            bail!("auth.jwt_secret_file: the secret must be at least 16 characters");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    kept_secret(&settings.store.data_dir)
}

fn kept_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("jwt-secret");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = text.trim();
        if !secret.is_empty() {
            return Ok(secret.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("store.data_dir: creating {}", data_dir.display()))?;
    let secret: String = (0..48)
        .map(|_| {
            let index = rand::random::<u8>() % 62;
            (match index {
                0..=9 => b'0' + index,
                10..=35 => b'a' + index - 10,
                _ => b'A' + index - 36,
            }) as char
        })
        .collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(error) => Err(error).with_context(|| format!("creating {}", path.display())),
    }
}
