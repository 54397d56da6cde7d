//! Every reference to the jellyfin-ha image in `manifests/` names the workspace version, so a
//! version bump cannot leave a manifest running an older binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

const REPOSITORY: &str = "ghcr.io/jellyfin-ha/jellyfin-ha";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            found.push(path);
        }
    }
}

/// The version each reference names: the tag of `REPOSITORY:TAG`, or for a bare
/// `REPOSITORY` (a kustomize `images:` entry) its sibling `newTag`. `None` when it names none.
fn versions(value: &Value, sibling_tag: Option<&Value>, out: &mut Vec<Option<String>>) {
    match value {
        Value::String(text) => {
            if let Some(rest) = text.strip_prefix(REPOSITORY) {
                out.push(match rest.strip_prefix(':') {
                    Some(tag) => Some(tag.to_string()),
                    None if rest.is_empty() => sibling_tag.and_then(|t| match t {
                        Value::String(tag) => Some(tag.clone()),
                        Value::Number(tag) => Some(tag.to_string()),
                        _ => None,
                    }),
                    // A digest pins no version.
                    None if rest.starts_with('@') => None,
                    // Another repository whose name merely starts alike.
                    None => return,
                });
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| versions(item, None, out)),
        Value::Mapping(map) => {
            let tag = map.get("newTag");
            map.values().for_each(|v| versions(v, tag, out));
        }
        Value::Tagged(tagged) => versions(&tagged.value, None, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn references_in(text: &str, file: &Path) -> Vec<Option<String>> {
    let mut found = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
        versions(&value, None, &mut found);
    }
    found
}

#[test]
fn every_manifest_image_names_the_workspace_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for version in references_in(&text, file) {
            assert_eq!(
                version.as_deref(),
                Some(VERSION),
                "{} runs {REPOSITORY} at {version:?}, not the workspace version {VERSION}",
                file.display()
            );
            checked += 1;
        }
    }
    // The webhook, the extender and the fencer each run the image.
    assert!(
        checked >= 3,
        "only {checked} image references found under {}",
        root.display()
    );
}

#[test]
fn a_stale_tag_a_bare_name_and_a_digest_are_caught() {
    let file = Path::new("example.yaml");
    let refs = |text: &str| references_in(text, file);
    assert_eq!(
        refs("spec:\n  containers:\n  - image: ghcr.io/jellyfin-ha/jellyfin-ha:0.0.9\n"),
        [Some("0.0.9".to_string())]
    );
    assert_eq!(
        refs(
            "images:\n- name: ghcr.io/jellyfin-ha/jellyfin-ha\n  newTag: 1.2.3\n---\nimage: ghcr.io/jellyfin-ha/jellyfin-ha\n"
        ),
        [Some("1.2.3".to_string()), None]
    );
    assert_eq!(
        refs(
            "image: ghcr.io/jellyfin-ha/jellyfin-ha@sha256:00\nother: ghcr.io/jellyfin-ha/jellyfin-ha-tools:1\n"
        ),
        [None]
    );
}
