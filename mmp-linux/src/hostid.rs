//! The host identifier that names the owner of a device (zfs-multihost.md §1 and §6).
//!
//! A hostid is a `u32`; 0 means "unset", and a host whose hostid is 0 must not enable MMP or
//! acquire a protected device (callers check [`Hostid::is_set`]). It is resolved, in order,
//! from an explicit flag, the `MMP_HOSTID` environment variable, and the first 4 bytes of
//! `/etc/hostid` in native byte order (the file format of glibc, coreutils and OpenZFS).
//! libc `gethostid()` is never called: glibc falls back to an address-derived value that
//! collides between hosts, and musl returns 0.
//!
//! The hostid is read when a device is acquired; changing it while a device is held takes
//! effect only at the next acquire.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::num::NonZeroU32;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default hostid file.
pub const DEFAULT_PATH: &str = "/etc/hostid";

/// The environment variable consulted by [`resolve`] when no flag is given.
pub const ENV_VAR: &str = "MMP_HOSTID";

/// The environment variable naming the hostid file [`resolve`] reads instead of
/// [`DEFAULT_PATH`] (tests, and hosts that keep the hostid elsewhere).
pub const FILE_ENV_VAR: &str = "MMP_HOSTID_FILE";

/// Where a [`Hostid`] came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostidSource {
    /// An explicit command-line flag or configuration value.
    Flag,
    /// The `MMP_HOSTID` environment variable.
    Env,
    /// The first 4 bytes of this file (normally `/etc/hostid`).
    File(PathBuf),
    /// Nowhere: no flag, no variable, and the file is missing or shorter than 4 bytes.
    Unset,
}

impl fmt::Display for HostidSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostidSource::Flag => f.write_str("command line"),
            HostidSource::Env => write!(f, "environment variable {ENV_VAR}"),
            HostidSource::File(p) => write!(f, "{}", p.display()),
            HostidSource::Unset => f.write_str("unset"),
        }
    }
}

/// A resolved hostid and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hostid {
    /// The hostid; 0 means unset.
    pub value: u32,
    /// Where `value` came from.
    pub source: HostidSource,
}

impl Hostid {
    /// Whether the hostid is usable for MMP (non-zero).
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.value != 0
    }
}

/// Errors from hostid parsing, resolution and generation.
#[derive(Debug, thiserror::Error)]
pub enum HostidError {
    /// Text that is not a hostid.
    #[error(
        "invalid hostid {input:?}: expected 1 to 8 hexadecimal digits, optionally prefixed by 0x"
    )]
    Parse {
        /// The rejected text.
        input: String,
    },
    /// [`generate`] or [`write_hostid`] without `force` found an existing file.
    #[error("{} already exists (hostid {}); use force to overwrite it", path.display(), fmt_current(*current))]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
        /// The hostid it holds, if it is at least 4 bytes long and readable.
        current: Option<u32>,
    },
    /// Reading or writing the hostid file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or, for the final directory sync, its directory).
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
}

fn fmt_current(current: Option<u32>) -> String {
    match current {
        Some(v) => format!("{v:08x}"),
        None => "unreadable".to_owned(),
    }
}

/// Parses a hostid: 1 to 8 hexadecimal digits with an optional `0x`/`0X` prefix, nothing
/// else (no sign, spaces or underscores). `"0"` parses to 0, which means unset.
///
/// # Errors
/// [`HostidError::Parse`] for anything else.
pub fn parse_hostid(s: &str) -> Result<u32, HostidError> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HostidError::Parse {
            input: s.to_owned(),
        });
    }
    u32::from_str_radix(digits, 16).map_err(|_| HostidError::Parse {
        input: s.to_owned(),
    })
}

/// Resolves this host's hostid: `flag` if given, else `MMP_HOSTID` if set and non-empty, else
/// the first 4 bytes of `/etc/hostid` (or of the file `MMP_HOSTID_FILE` names), else
/// [`HostidSource::Unset`] with value 0.
///
/// # Errors
/// [`HostidError::Parse`] if the flag or the variable is not a valid hostid (a
/// misconfiguration is reported, never skipped); [`HostidError::Io`] if `/etc/hostid` exists
/// but cannot be read.
pub fn resolve(flag: Option<&str>) -> Result<Hostid, HostidError> {
    let env = std::env::var_os(ENV_VAR);
    let env = match env.as_deref().map(|v| v.to_str().ok_or(v)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(raw)) => {
            return Err(HostidError::Parse {
                input: raw.to_string_lossy().into_owned(),
            });
        }
    };
    resolve_with_path(flag, env, &default_file())
}

/// The hostid file [`resolve`] reads: `MMP_HOSTID_FILE` if set and non-empty, else
/// [`DEFAULT_PATH`].
#[must_use]
pub fn default_file() -> PathBuf {
    std::env::var_os(FILE_ENV_VAR)
        .filter(|f| !f.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from)
}

/// The testable core of [`resolve`]: `flag`, else `env` (an empty string counts as absent),
/// else the first 4 bytes of `path` in native byte order, else unset.
///
/// A missing file or one shorter than 4 bytes gives [`HostidSource::Unset`] with value 0 (as
/// the OpenZFS kernel module does). A file holding 4 zero bytes gives value 0 with source
/// [`HostidSource::File`]: still unset, see [`Hostid::is_set`].
///
/// # Errors
/// As for [`resolve`].
pub fn resolve_with_path(
    flag: Option<&str>,
    env: Option<&str>,
    path: &Path,
) -> Result<Hostid, HostidError> {
    if let Some(flag) = flag {
        return Ok(Hostid {
            value: parse_hostid(flag)?,
            source: HostidSource::Flag,
        });
    }
    if let Some(env) = env.filter(|e| !e.is_empty()) {
        return Ok(Hostid {
            value: parse_hostid(env)?,
            source: HostidSource::Env,
        });
    }
    match read_file(path) {
        Ok(Some(value)) => Ok(Hostid {
            value,
            source: HostidSource::File(path.to_owned()),
        }),
        Ok(None) => Ok(Hostid {
            value: 0,
            source: HostidSource::Unset,
        }),
        Err(source) => Err(HostidError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The first 4 bytes of `path` in native byte order; `None` if the file is missing or
/// shorter than 4 bytes.
fn read_file(path: &Path) -> io::Result<Option<u32>> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(u32::from_ne_bytes(buf)))
}

/// Generates a random non-zero hostid from the kernel CSPRNG and writes it to `path` (see
/// [`write_hostid`]). Returns the new value.
///
/// # Errors
/// [`HostidError::AlreadyExists`] if `path` exists and `force` is false (nothing is written);
/// [`HostidError::Io`] if the CSPRNG or the file system fails.
pub fn generate(path: &Path, force: bool) -> Result<u32, HostidError> {
    if !force {
        refuse_existing(path)?;
    }
    let value = loop {
        let mut buf = [0u8; 4];
        if !super::clock::fill_random(&mut buf) {
            return Err(HostidError::Io {
                path: PathBuf::from("getrandom"),
                source: io::Error::other("no kernel random number source"),
            });
        }
        if let Some(v) = NonZeroU32::new(u32::from_ne_bytes(buf)) {
            break v;
        }
    };
    write_hostid(path, value, force)?;
    Ok(value.get())
}

/// Writes `value` to `path` as exactly 4 native-order bytes with mode 0644, atomically: a
/// temporary file in the same directory is written and `fsync`ed, then renamed (or, without
/// `force`, hard-linked so that a file created meanwhile is never replaced) over `path`, and
/// the directory is `fsync`ed.
///
/// # Errors
/// [`HostidError::AlreadyExists`] if `path` exists and `force` is false (nothing is written);
/// [`HostidError::Io`] otherwise.
pub fn write_hostid(path: &Path, value: NonZeroU32, force: bool) -> Result<(), HostidError> {
    if !force {
        refuse_existing(path)?;
    }
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| HostidError::Io { path: p, source }
    };
    let file_name = path.file_name().ok_or_else(|| HostidError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp.{}.{:08x}",
        std::process::id(),
        super::clock::random_seed()
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have removed bits; the file must be 0644.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err(&tmp))?;
        f.write_all(&value.get().to_ne_bytes())
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        if force {
            fs::rename(&tmp, path).map_err(io_err(path))?;
        } else {
            match fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(HostidError::AlreadyExists {
                        path: path.to_owned(),
                        current: read_file(path).ok().flatten(),
                    });
                }
                // File systems without hard links: re-check, then rename.
                Err(_) => {
                    refuse_existing(path)?;
                    fs::rename(&tmp, path).map_err(io_err(path))?;
                }
            }
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    // After a rename the temporary name is gone; after a hard link or a failure it remains.
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        // Make the removal of the temporary name durable too (best effort).
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    result
}

/// [`HostidError::AlreadyExists`] if something exists at `path` (a dangling symlink counts).
fn refuse_existing(path: &Path) -> Result<(), HostidError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(HostidError::AlreadyExists {
            path: path.to_owned(),
            current: read_file(path).ok().flatten(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(HostidError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A fresh temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("mmp-hostid-test-{}-{n}", std::process::id()));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parse_accepts() {
        assert_eq!(parse_hostid("0").unwrap(), 0);
        assert_eq!(parse_hostid("1").unwrap(), 1);
        assert_eq!(parse_hostid("deadbeef").unwrap(), 0xdead_beef);
        assert_eq!(parse_hostid("DEADBEEF").unwrap(), 0xdead_beef);
        assert_eq!(parse_hostid("0xdeadbeef").unwrap(), 0xdead_beef);
        assert_eq!(parse_hostid("0X00c0ffee").unwrap(), 0x00c0_ffee);
        assert_eq!(parse_hostid("ffffffff").unwrap(), u32::MAX);
        assert_eq!(parse_hostid("0x7f0101").unwrap(), 0x007f_0101);
    }

    #[test]
    fn parse_rejects() {
        for bad in [
            "",
            "0x",
            "0X",
            "123456789",
            "0x123456789",
            "xyz",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1\n",
            "0x+1",
            "12_34",
            "0xx1",
            "0o17",
            "１",
        ] {
            let err = parse_hostid(bad).unwrap_err();
            assert!(
                matches!(&err, HostidError::Parse { input } if input == bad),
                "{bad:?}"
            );
            assert!(err.to_string().contains("hexadecimal"), "{err}");
        }
    }

    #[test]
    fn resolve_precedence() {
        let dir = TempDir::new();
        let file = dir.0.join("hostid");
        fs::write(&file, 0x1234_5678u32.to_ne_bytes()).unwrap();

        let h = resolve_with_path(Some("aa"), Some("bb"), &file).unwrap();
        assert_eq!(
            h,
            Hostid {
                value: 0xaa,
                source: HostidSource::Flag
            }
        );
        let h = resolve_with_path(None, Some("bb"), &file).unwrap();
        assert_eq!(
            h,
            Hostid {
                value: 0xbb,
                source: HostidSource::Env
            }
        );
        let h = resolve_with_path(None, Some(""), &file).unwrap();
        assert_eq!(
            h,
            Hostid {
                value: 0x1234_5678,
                source: HostidSource::File(file.clone())
            }
        );
        let h = resolve_with_path(None, None, &file).unwrap();
        assert_eq!(h.value, 0x1234_5678);
        assert!(h.is_set());

        // Invalid overrides are errors, not skipped.
        assert!(matches!(
            resolve_with_path(Some("nope"), None, &file),
            Err(HostidError::Parse { .. })
        ));
        assert!(matches!(
            resolve_with_path(None, Some("nope"), &file),
            Err(HostidError::Parse { .. })
        ));

        // Bytes after the fourth are ignored.
        fs::write(&file, [0xef, 0xbe, 0xad, 0xde, 1, 2, 3]).unwrap();
        let h = resolve_with_path(None, None, &file).unwrap();
        assert_eq!(h.value, u32::from_ne_bytes([0xef, 0xbe, 0xad, 0xde]));

        // Short file and missing file: unset.
        fs::write(&file, [1, 2, 3]).unwrap();
        let h = resolve_with_path(None, None, &file).unwrap();
        assert_eq!(
            h,
            Hostid {
                value: 0,
                source: HostidSource::Unset
            }
        );
        assert!(!h.is_set());
        let h = resolve_with_path(None, None, &dir.0.join("missing")).unwrap();
        assert_eq!(
            h,
            Hostid {
                value: 0,
                source: HostidSource::Unset
            }
        );

        // A directory where the file should be is an I/O error.
        assert!(matches!(
            resolve_with_path(None, None, &dir.0),
            Err(HostidError::Io { .. })
        ));
    }

    #[test]
    fn generate_writes_four_bytes_mode_0644() {
        let dir = TempDir::new();
        let file = dir.0.join("hostid");
        let v = generate(&file, false).unwrap();
        assert_ne!(v, 0);
        let bytes = fs::read(&file).unwrap();
        assert_eq!(bytes, v.to_ne_bytes());
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert!(meta.is_file());
        let h = resolve_with_path(None, None, &file).unwrap();
        assert_eq!(h.value, v);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn generate_refuses_overwrite() {
        let dir = TempDir::new();
        let file = dir.0.join("hostid");
        fs::write(&file, 0xdead_beefu32.to_ne_bytes()).unwrap();
        let err = generate(&file, false).unwrap_err();
        assert!(
            matches!(&err, HostidError::AlreadyExists { path, current: Some(0xdead_beef) } if *path == file),
            "{err}"
        );
        assert!(err.to_string().contains("deadbeef"), "{err}");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&file).unwrap(), 0xdead_beefu32.to_ne_bytes());
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);

        // A short file is reported with no current value.
        fs::write(&file, [1]).unwrap();
        let err = write_hostid(&file, NonZeroU32::new(5).unwrap(), false).unwrap_err();
        assert!(
            matches!(err, HostidError::AlreadyExists { current: None, .. }),
            "{err}"
        );
        assert_eq!(fs::read(&file).unwrap(), [1]);

        // With force it is replaced.
        let v = generate(&file, true).unwrap();
        assert_eq!(fs::read(&file).unwrap(), v.to_ne_bytes());
        write_hostid(&file, NonZeroU32::new(0x0102_0304).unwrap(), true).unwrap();
        assert_eq!(fs::read(&file).unwrap(), 0x0102_0304u32.to_ne_bytes());
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn generate_into_missing_directory_fails_cleanly() {
        let dir = TempDir::new();
        let file = dir.0.join("no/such/dir/hostid");
        assert!(matches!(
            generate(&file, false),
            Err(HostidError::Io { .. })
        ));
        assert!(matches!(
            generate(Path::new("/"), true),
            Err(HostidError::Io { .. })
        ));
    }
}
