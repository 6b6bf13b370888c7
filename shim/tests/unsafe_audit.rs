//! The shim denies `unsafe_code` (shim/Cargo.toml) with one audited exception, the allocator's FFI
//! call in `src/allocator.rs`. A `deny` lint can be allowed anywhere, so this test keeps the
//! exception the only one: no other source file of the shim may allow it.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the shim's sources are readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_allocator_may_use_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found the sources: {files:?}");
    let needle = ["allow(", "unsafe_code)"].concat();
    let allowing: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).expect("a readable source").contains(&needle))
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    assert_eq!(allowing, vec!["src/allocator.rs".to_string()], "files allowing unsafe code");
}
