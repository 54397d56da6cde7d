//! `jellyfin-ha mutate`: mutate manifests offline exactly as the webhook would mutate them (a
//! workload's pod template gets everything but the scheduling marker, which only pods get).

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use clap::ValueEnum;
use jellyfin_ha_core::{PatchedObject, Policy, mutate_manifest};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The mutated objects as multi-document YAML.
    Yaml,
    /// The mutated object as JSON; several documents become a `v1/List`.
    Json,
    /// One JSON patch (RFC 6902) per document, one per line.
    Patch,
    /// A unified diff of each document's YAML.
    Diff,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {source_name}: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error("document {index}: {message}")]
    Parse { index: usize, message: String },
    #[error("document {index} ({object}): {message}")]
    Mutate {
        index: usize,
        object: String,
        message: String,
    },
    #[error("writing output: {0}")]
    Encode(String),
}

/// One input document, numbered from 1 as a person counts them.
pub struct Document {
    pub index: usize,
    pub object: Value,
}

/// Reads `-` (stdin) or a file.
pub fn read_input(path: &Path) -> Result<String, ManifestError> {
    let mut text = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result.map_err(|error| ManifestError::Read {
        source_name: path.display().to_string(),
        error,
    })?;
    Ok(text)
}

/// Splits multi-document YAML or a stream of JSON objects; empty YAML documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ManifestError> {
    let trimmed = text.trim_start();
    let values: Box<dyn Iterator<Item = Result<Value, String>>> =
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            Box::new(
                serde_json::Deserializer::from_str(text)
                    .into_iter::<Value>()
                    .map(|r| r.map_err(|e| e.to_string())),
            )
        } else {
            Box::new(
                serde_yaml::Deserializer::from_str(text)
                    .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string())),
            )
        };
    let mut documents = Vec::new();
    // Both iterators can repeat a parse error forever, so the first error ends the input.
    for (i, value) in values.enumerate() {
        let index = i + 1;
        let object = value.map_err(|message| ManifestError::Parse { index, message })?;
        match object {
            Value::Null => continue,
            Value::Object(_) => documents.push(Document { index, object }),
            other => {
                let message = format!("expected a Kubernetes object, found {}", type_name(&other));
                return Err(ManifestError::Parse { index, message });
            }
        }
    }
    Ok(documents)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `Kind namespace/name`, for messages.
fn describe(object: &Value) -> String {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let (kind, namespace, name) = (
        text("/kind"),
        text("/metadata/namespace"),
        text("/metadata/name"),
    );
    let kind = if kind.is_empty() { "object" } else { kind };
    let name = if name.is_empty() {
        text("/metadata/generateName")
    } else {
        name
    };
    match (namespace.is_empty(), name.is_empty()) {
        (_, true) => kind.to_string(),
        (true, false) => format!("{kind} {name}"),
        (false, false) => format!("{kind} {namespace}/{name}"),
    }
}

pub struct Mutated {
    pub document: Document,
    pub mutation: PatchedObject,
}

impl Mutated {
    pub fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        let at = format!(
            "document {} ({})",
            self.document.index,
            describe(&self.document.object)
        );
        self.mutation
            .warnings
            .iter()
            .map(move |w| format!("{at}: {w}"))
    }
}

pub fn mutate_documents(
    documents: Vec<Document>,
    policy: &Policy,
) -> Result<Vec<Mutated>, ManifestError> {
    documents
        .into_iter()
        .map(|document| match mutate_manifest(&document.object, policy) {
            Ok(mutation) => Ok(Mutated { document, mutation }),
            Err(e) => Err(ManifestError::Mutate {
                index: document.index,
                object: describe(&document.object),
                message: e.to_string(),
            }),
        })
        .collect()
}

fn to_yaml(value: &Value) -> Result<String, ManifestError> {
    serde_yaml::to_string(value).map_err(|e| ManifestError::Encode(e.to_string()))
}

fn to_json(value: &impl serde::Serialize, pretty: bool) -> Result<String, ManifestError> {
    let encoded = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    encoded.map_err(|e| ManifestError::Encode(e.to_string()))
}

pub fn render(mutated: &[Mutated], format: OutputFormat) -> Result<String, ManifestError> {
    let mut out = String::new();
    match format {
        OutputFormat::Yaml => {
            let docs = mutated
                .iter()
                .map(|m| to_yaml(&m.mutation.object))
                .collect::<Result<Vec<_>, _>>()?;
            out = docs.join("---\n");
        }
        OutputFormat::Json => {
            let value = match mutated {
                [single] => single.mutation.object.clone(),
                many => json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": many.iter().map(|m| m.mutation.object.clone()).collect::<Vec<_>>(),
                }),
            };
            out = to_json(&value, true)? + "\n";
        }
        OutputFormat::Patch => {
            for m in mutated {
                out += &to_json(&m.mutation.patch, false)?;
                out.push('\n');
            }
        }
        OutputFormat::Diff => {
            for m in mutated {
                let (before, after) = (to_yaml(&m.document.object)?, to_yaml(&m.mutation.object)?);
                let label = format!(
                    "document {} ({})",
                    m.document.index,
                    describe(&m.document.object)
                );
                let diff = similar::TextDiff::from_lines(&before, &after);
                let _ = write!(
                    out,
                    "{}",
                    diff.unified_diff()
                        .context_radius(3)
                        .header(&format!("{label} (input)"), &format!("{label} (mutated)"))
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: jf\n  annotations:\n    jellyfin-ha.io/inject: \"true\"\nspec:\n  containers:\n  - name: jellyfin\n    image: jellyfin/jellyfin\n";
    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: jf\nspec:\n  ports:\n  - port: 8096\n";

    fn run(text: &str, format: OutputFormat) -> Result<String, ManifestError> {
        let mutated = mutate_documents(parse_documents(text)?, &Policy::default())?;
        render(&mutated, format)
    }

    #[test]
    fn documents_keep_their_order_and_other_kinds_pass() {
        let out = run(&format!("{SERVICE}---\n{POD}---\n"), OutputFormat::Yaml).unwrap();
        let docs = parse_documents(&out).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0].object,
            serde_yaml::from_str::<Value>(SERVICE).unwrap()
        );
        assert_eq!(
            docs[1].object["spec"]["tolerations"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn json_list_input_is_mutated_item_by_item() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [serde_yaml::from_str::<Value>(POD).unwrap()]});
        let out = run(&list.to_string(), OutputFormat::Json).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["kind"], "List");
        assert_eq!(
            value["items"][0]["spec"]["terminationGracePeriodSeconds"],
            600
        );
    }

    #[test]
    fn patch_output_is_one_applicable_patch_per_document() {
        let text = format!("{SERVICE}---\n{POD}");
        let out = run(&text, OutputFormat::Patch).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "[]");
        let patch: json_patch::Patch = serde_json::from_str(lines[1]).unwrap();
        let mut pod: Value = serde_yaml::from_str(POD).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            mutate_manifest(&serde_yaml::from_str(POD).unwrap(), &Policy::default())
                .unwrap()
                .object
        );
    }

    #[test]
    fn diff_output_shows_added_lines() {
        let out = run(POD, OutputFormat::Diff).unwrap();
        assert!(
            out.contains("+  terminationGracePeriodSeconds: 600"),
            "{out}"
        );
        assert!(out.contains("document 1 (Pod jf)"), "{out}");
    }

    #[rstest]
    #[case::bad_yaml("kind: Pod\n  bad: [indent\n", "document 1")]
    #[case::scalar_document("---\njust a string\n", "document 1: expected a Kubernetes object")]
    #[case::second_document_broken(&format!("{POD}---\n- a\n- list\n"), "document 2")]
    #[case::bad_json("{\"kind\": ", "document 1")]
    #[case::bad_override(&POD.replace("metadata:\n", "metadata:\n  namespace: media\n").replace("annotations:\n", "annotations:\n    jellyfin-ha.io/gpu: quicksync\n"), "document 1 (Pod media/jf): annotation jellyfin-ha.io/gpu")]
    fn malformed_input_names_the_document(#[case] text: &str, #[case] expected: &str) {
        let err = run(text, OutputFormat::Yaml).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn empty_documents_are_skipped() {
        let out = run(&format!("---\n---\n{SERVICE}"), OutputFormat::Patch).unwrap();
        assert_eq!(out, "[]\n");
    }
}
