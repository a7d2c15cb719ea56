//! Path sandbox: the only place that opens image files named by callers.
//!
//! Paths are resolved (`..` and symlinks) before the check, so neither can escape the roots, and
//! every spelling of a path outside the roots gets the same answer, `outside sandbox roots:
//! <path>`, whatever exists out there. Non-regular files (FIFOs, devices, directories) are refused
//! from their metadata, files are opened non-blocking so a FIFO swapped in after the check cannot
//! hang a worker, and the opened descriptor is checked to be the file that was judged.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::limits::Limits;

/// Environment variable listing the allowed roots, separated like `PATH` (`:` on Unix).
pub const ROOTS_ENV: &str = "CXRLAKE_ALLOWED_ROOTS";

/// The directories image paths may be read from. No roots = every path is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    roots: Vec<PathBuf>,
}

impl Sandbox {
    /// A sandbox that allows every path (still refusing non-regular files).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// A sandbox restricted to `roots`; each root must exist and is resolved to its canonical path.
    ///
    /// An empty list or an empty root is an error, never "allow every path": a misconfigured
    /// root (an unset shell variable, a stray separator) must fail closed.
    pub fn with_roots<I, P>(roots: I) -> Result<Self, CoreError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut resolved = Vec::new();
        for root in roots {
            let root = root.as_ref();
            if root.as_os_str().is_empty() {
                return Err(CoreError::Sandbox(
                    "sandbox root is an empty path: name a folder (an empty root never means \
                     every path)"
                        .into(),
                ));
            }
            let canonical = root.canonicalize().map_err(|e| {
                CoreError::Sandbox(format!("sandbox root {} is unusable: {e}", root.display()))
            })?;
            resolved.push(canonical);
        }
        if resolved.is_empty() {
            return Err(CoreError::Sandbox(
                "no sandbox roots given: name at least one folder (or pass no roots argument to \
                 use CXRLAKE_ALLOWED_ROOTS)"
                    .into(),
            ));
        }
        Ok(Self { roots: resolved })
    }

    /// Roots given explicitly, else from env `CXRLAKE_ALLOWED_ROOTS`, else no restriction.
    ///
    /// The variable set but empty, or holding an empty entry (`:`, `a::b`), is an error.
    pub fn resolve(roots: Option<&[String]>) -> Result<Self, CoreError> {
        match roots {
            Some(roots) => Self::with_roots(roots),
            None => match std::env::var_os(ROOTS_ENV) {
                Some(value) => Self::with_roots(std::env::split_paths(&value)).map_err(|e| {
                    CoreError::Sandbox(format!("{ROOTS_ENV}={:?}: {e}", value.to_string_lossy()))
                }),
                None => Ok(Self::allow_all()),
            },
        }
    }

    /// The canonical roots (empty when every path is allowed).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether the resolved path `canonical` lies under a root (component-wise).
    fn allows(&self, canonical: &Path) -> bool {
        self.roots.is_empty() || self.roots.iter().any(|root| canonical.starts_with(root))
    }

    /// Reads the whole file at `path` after the sandbox, file-type and size checks.
    ///
    /// Errors name the path: `file not found: …`, `outside sandbox roots: …`,
    /// `not a regular file: …`, `file exceeds 64 MiB limit: …`, `empty image data: …` (the words the decoder uses for empty bytes).
    pub fn read(&self, path: &str, limits: &Limits) -> RowResult<Vec<u8>> {
        // Messages show the path escaped and shortened; the file system sees the raw path.
        self.read_unescaped(path, limits).map_err(|error| {
            if path.is_empty() || shown_path(path) == path {
                error
            } else {
                RowError::new(error.0.replace(path, &shown_path(path)))
            }
        })
    }

    fn read_unescaped(&self, path: &str, limits: &Limits) -> RowResult<Vec<u8>> {
        if path.is_empty() {
            return Err(RowError::new("empty path"));
        }
        // Outside the roots every path gets the same answer, whether it exists, is a directory,
        // a dangling symlink or unreadable: otherwise errors would tell what exists out there.
        // So the check runs on where the path points (symlinks followed even when dangling,
        // missing components applied lexically) before anything else is looked at.
        if !self.roots.is_empty() && !self.allows(&self.resolve_for_check(Path::new(path))) {
            return Err(outside_roots(path));
        }
        let canonical = Path::new(path)
            .canonicalize()
            .map_err(|e| io_row_error(&e, path))?;
        if !self.allows(&canonical) {
            return Err(outside_roots(path));
        }
        let metadata = std::fs::metadata(&canonical).map_err(|e| io_row_error(&e, path))?;
        if !metadata.is_file() {
            return Err(RowError::new(format!("not a regular file: {path}")));
        }
        let mut file = open_no_follow(&canonical).map_err(|e| io_row_error(&e, path))?;
        // Check again on the opened descriptor: the path may have been swapped since `metadata`.
        let opened = file.metadata().map_err(|e| io_row_error(&e, path))?;
        if !opened.is_file() {
            return Err(RowError::new(format!("not a regular file: {path}")));
        }
        // ... and it must be the file that was judged: a directory on the way swapped for a
        // symlink since `canonicalize` would have led the open elsewhere.
        if !self.roots.is_empty() && !self.opened_what_was_checked(&file, &canonical, &metadata) {
            return Err(outside_roots(path));
        }
        let metadata = opened;
        let size = metadata.len();
        limits
            .check_encoded_size(size, "file")
            .map_err(|e| RowError::new(format!("{e}: {path}")))?;
        if size == 0 {
            return Err(RowError::new(format!("empty image data: {path}")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // `take` guards against a file that grows between the size check and the read.
        (&mut file)
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_row_error(&e, path))?;
        limits
            .check_encoded_size(bytes.len() as u64, "file")
            .map_err(|e| RowError::new(format!("{e}: {path}")))?;
        if bytes.is_empty() {
            return Err(RowError::new(format!("empty image data: {path}")));
        }
        Ok(bytes)
    }
}

impl Sandbox {
    /// Whether the open descriptor `file` lies under a root: on Linux by where `/proc/self/fd`
    /// says the open file is, elsewhere (or without `/proc`) by comparing its device and inode
    /// with `checked`, the metadata of `canonical` before the open.
    fn opened_what_was_checked(
        &self,
        file: &File,
        canonical: &Path,
        checked: &std::fs::Metadata,
    ) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
                return self.allows(&real);
            }
        }
        same_file(file, checked) && self.allows(canonical)
    }

    /// Where `path` points, for the sandbox check: components walked one by one from the
    /// working directory, every symlink followed (dangling ones too), components that do not
    /// exist applied lexically. `..` is only followed out of a place the caller cannot choose
    /// to probe: a root or a folder inside one, an ancestor of a root, or the working directory
    /// and its ancestors. From anywhere else (`<outside>/x/../../<root>/file`) the answer would
    /// depend on what exists out there (a file, a folder, nothing), so the path resolves to
    /// nowhere. Never fails: a loop or an unreadable link resolves to the empty path, which lies
    /// under no root.
    fn resolve_for_check(&self, path: &Path) -> PathBuf {
        let cwd = std::env::current_dir().ok();
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            match &cwd {
                Some(cwd) => cwd.join(path),
                None => return PathBuf::new(),
            }
        };
        let mut pending: std::collections::VecDeque<Step> = steps(&absolute).into();
        let mut resolved = PathBuf::from("/");
        let mut links = 0;
        while let Some(step) = pending.pop_front() {
            match step {
                Step::Root => resolved = PathBuf::from("/"),
                Step::Parent => {
                    let known = self.allows(&resolved)
                        || self.roots.iter().any(|root| root.starts_with(&resolved))
                        || cwd.as_ref().is_some_and(|cwd| cwd.starts_with(&resolved));
                    if !known {
                        return PathBuf::new();
                    }
                    resolved.pop();
                }
                Step::Name(name) => {
                    let candidate = resolved.join(&name);
                    let is_link = std::fs::symlink_metadata(&candidate)
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false);
                    if !is_link {
                        resolved = candidate;
                        continue;
                    }
                    links += 1;
                    let Ok(target) = std::fs::read_link(&candidate) else {
                        return PathBuf::new();
                    };
                    if links > MAX_SYMLINKS {
                        return PathBuf::new();
                    }
                    for step in steps(&target).into_iter().rev() {
                        pending.push_front(step);
                    }
                }
            }
        }
        resolved
    }
}

/// Whether the open `file` has the device and inode of `checked`.
#[cfg(unix)]
fn same_file(file: &File, checked: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata()
        .map(|m| m.dev() == checked.dev() && m.ino() == checked.ino())
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn same_file(_file: &File, _checked: &std::fs::Metadata) -> bool {
    true
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn outside_roots(path: &str) -> RowError {
    RowError::new(format!("outside sandbox roots: {path}"))
}

/// Longest path shown in a row error, in characters.
const MAX_SHOWN_PATH_CHARS: usize = 512;

/// `path` as shown in row errors: control characters escaped (a path holding a newline or a
/// terminal escape sequence must not forge extra lines in the `error` column, logs or CSV
/// output) and shortened in the middle beyond [`MAX_SHOWN_PATH_CHARS`].
fn shown_path(path: &str) -> String {
    let escaped: String = path
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    let count = escaped.chars().count();
    if count <= MAX_SHOWN_PATH_CHARS {
        return escaped;
    }
    let keep = MAX_SHOWN_PATH_CHARS / 2;
    let head: String = escaped.chars().take(keep).collect();
    let tail: String = escaped.chars().skip(count - keep).collect();
    format!("{head}...{tail}")
}

/// Most symlinks followed while resolving one path (Linux's own limit is 40).
const MAX_SYMLINKS: usize = 40;

/// One step of a path being resolved by `Sandbox::resolve_for_check`.
enum Step {
    Root,
    Parent,
    Name(std::ffi::OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|component| match component {
            Component::RootDir | Component::Prefix(_) => Some(Step::Root),
            Component::ParentDir => Some(Step::Parent),
            Component::Normal(name) => Some(Step::Name(name.to_os_string())),
            Component::CurDir => None,
        })
        .collect()
}

fn io_row_error(error: &std::io::Error, path: &str) -> RowError {
    match error.kind() {
        ErrorKind::NotFound => RowError::new(format!("file not found: {path}")),
        ErrorKind::PermissionDenied => RowError::new(format!("permission denied: {path}")),
        _ => RowError::new(format!("cannot read {path}: {error}")),
    }
}
