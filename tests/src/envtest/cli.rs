//! The `node-*` verbs of `hack/envtest.sh`, with its flags and messages: run by the
//! `envtest-node` binary the script execs, and in process by [`crate::envtest()`].

use anyhow::{Context, bail};

use super::Envtest;
use super::node::{Node, NodeShape};

const ADD_USAGE: &str =
    "usage: hack/envtest.sh node-add NAME [--gpu-count N | --no-gpu] [--cpu N] [--memory Q]";

/// `node-add`'s flags after the name.
pub fn parse_shape(flags: &[&str]) -> anyhow::Result<NodeShape> {
    let mut shape = NodeShape::default();
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let mut value = |what: &str| {
            flags
                .next()
                .map(|v| v.to_string())
                .with_context(|| format!("{what} needs a value"))
        };
        match *flag {
            "--gpu-count" => shape.gpus = gpu_count(&value("--gpu-count")?)?,
            "--no-gpu" => shape.gpus = 0,
            "--cpu" => shape.cpu = value("--cpu")?,
            "--memory" => shape.memory = value("--memory")?,
            other => match other.strip_prefix("--gpu-count=") {
                Some(count) => shape.gpus = gpu_count(count)?,
                None => bail!("node-add: unknown flag {other}"),
            },
        }
    }
    Ok(shape)
}

fn gpu_count(text: &str) -> anyhow::Result<u32> {
    text.parse().ok().context("--gpu-count must be a number")
}

/// Runs `verb NAME [flags]` on the control plane of `envtest`; returns what goes to standard
/// output (only `node-bmc` prints there; progress goes to standard error).
pub async fn run(envtest: &Envtest, args: &[&str]) -> anyhow::Result<String> {
    let (verb, name, rest) = match args {
        [verb, name, rest @ ..] if !name.is_empty() && !name.starts_with('-') => {
            (*verb, *name, rest)
        }
        [verb, ..] if *verb == "node-add" => bail!(ADD_USAGE),
        [verb, ..] => bail!("usage: hack/envtest.sh {verb} NAME"),
        [] => bail!("usage: hack/envtest.sh node-VERB NAME"),
    };
    if verb != "node-add" && !rest.is_empty() {
        bail!("usage: hack/envtest.sh {verb} NAME");
    }
    if verb == "node-bmc" {
        return Ok(envtest.bmc(name)?.to_lines());
    }
    let shape = if verb == "node-add" {
        Some(parse_shape(rest)?)
    } else {
        None
    };
    let node = Node::new(envtest, name).await?;
    match (verb, shape) {
        ("node-add", Some(shape)) => node.add(&shape).await?,
        ("node-power-off", _) => node.power_off().await?,
        ("node-power-on", _) => node.power_on().await?,
        ("node-partition", _) => node.partition().await?,
        ("node-reconnect", _) => node.reconnect().await?,
        ("node-delete", _) => node.delete().await?,
        _ => bail!("unknown verb {verb}"),
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_add_flags() {
        assert_eq!(parse_shape(&[]).unwrap(), NodeShape::default());
        let shape = parse_shape(&["--gpu-count", "2", "--cpu", "4", "--memory", "8Gi"]).unwrap();
        assert_eq!(
            shape,
            NodeShape {
                gpus: 2,
                cpu: "4".into(),
                memory: "8Gi".into()
            }
        );
        assert_eq!(parse_shape(&["--gpu-count=3"]).unwrap().gpus, 3);
        assert_eq!(parse_shape(&["--no-gpu"]).unwrap().gpus, 0);
    }

    #[test]
    fn bad_node_add_flags_are_refused_with_the_reason() {
        let message = |flags: &[&str]| parse_shape(flags).unwrap_err().to_string();
        assert_eq!(
            message(&["--gpu-count", "two"]),
            "--gpu-count must be a number"
        );
        assert_eq!(message(&["--gpu-count=-1"]), "--gpu-count must be a number");
        assert_eq!(message(&["--gpu-count"]), "--gpu-count needs a value");
        assert_eq!(message(&["--fast"]), "node-add: unknown flag --fast");
    }
}
