//! The path sandbox answers every spelling of a path outside its roots with exactly
//! `outside sandbox roots: <path>`, whatever exists outside (issue 25: `<outside>/../../<allowed
//! file>` used to answer "Not a directory", "file not found" or a score depending on what the
//! outside path was).

use std::path::{Path, PathBuf};

use cxrlake::core::limits::Limits;
use cxrlake::core::sandbox::Sandbox;

/// A fresh folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "cxrlake-sandbox-paths-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path.canonicalize().unwrap())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `dir/root/inside.png` and `dir/root/sub/`; outside the root a file, a folder with a
/// subfolder, and a symlink to the root's file.
fn layout(name: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new(name);
    let root = dir.0.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(
        root.join("inside.png"),
        b"\x89PNG\r\n\x1a\nnot really a png",
    )
    .unwrap();
    std::fs::write(dir.0.join("outside_file"), b"secret").unwrap();
    std::fs::create_dir_all(dir.0.join("outside_dir/sub")).unwrap();
    (dir, root)
}

fn answer(sandbox: &Sandbox, path: &Path) -> String {
    match sandbox.read(path.to_str().unwrap(), &Limits::default()) {
        Ok(bytes) => format!("read {} bytes", bytes.len()),
        Err(e) => e.0,
    }
}

#[test]
fn every_spelling_of_an_outside_path_gets_the_same_answer() {
    let (dir, root) = layout("spellings");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let outside = &dir.0;
    let spellings = [
        // through an existing outside folder, back into the root (the OS would reach the file)
        outside.join("outside_dir/sub/../../root/inside.png"),
        outside.join("outside_dir/../root/inside.png"),
        // through an outside file (the OS says "Not a directory")
        outside.join("outside_file/../root/inside.png"),
        outside.join("outside_file/../../x/../root/inside.png"),
        // through a missing outside folder (the OS says "No such file")
        outside.join("missing/../root/inside.png"),
        outside.join("missing/deeper/../../root/inside.png"),
        // out of the root and back in
        root.join("../outside_dir/../root/inside.png"),
        // plain outside paths, existing or not
        outside.join("outside_file"),
        outside.join("outside_dir"),
        outside.join("missing"),
        PathBuf::from("/nonexistent-cxrlake/../etc/passwd"),
    ];
    for path in spellings {
        assert_eq!(
            answer(&sandbox, &path),
            format!("outside sandbox roots: {}", path.display()),
            "{}",
            path.display()
        );
    }
}

#[test]
fn spellings_that_stay_inside_the_roots_still_read() {
    let (dir, root) = layout("inside");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    let expected = "read 24 bytes";
    for path in [
        root.join("inside.png"),
        root.join("sub/../inside.png"),
        root.join("./sub/./../inside.png"),
        // `..` out of an ancestor of the root is no probe: the ancestors are the configuration
        dir.0.join("root/../root/inside.png"),
    ] {
        assert_eq!(answer(&sandbox, &path), expected, "{}", path.display());
    }
    // Inside the root, what exists may be told: missing is missing.
    let missing = root.join("sub/missing/../nothing.png");
    assert_eq!(
        answer(&sandbox, &missing),
        format!("file not found: {}", missing.display())
    );
}

#[cfg(unix)]
#[test]
fn symlinks_are_judged_by_their_target() {
    let (dir, root) = layout("links");
    let sandbox = Sandbox::with_roots([&root]).unwrap();
    // a link inside the root to an outside folder, then `..` back in: outside
    std::os::unix::fs::symlink(dir.0.join("outside_dir"), root.join("out")).unwrap();
    let back_in = root.join("out/../root/inside.png");
    assert_eq!(
        answer(&sandbox, &back_in),
        format!("outside sandbox roots: {}", back_in.display())
    );
    // a link inside the root to a file inside it: read
    std::os::unix::fs::symlink(root.join("inside.png"), root.join("sub/alias.png")).unwrap();
    assert_eq!(
        answer(&sandbox, &root.join("sub/alias.png")),
        "read 24 bytes"
    );
}
