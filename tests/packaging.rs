//! What the `Dockerfile` promises, read from the file: a multi-stage build of the release binary
//! with the locked dependencies, a pinned builder at least as new as the crate's rust-version, a
//! runtime stage that holds only the binary and runs as a numeric non-root user, the metrics and
//! probe ports, the OCI labels (licence and version matching Cargo.toml), no remote `ADD`, and
//! every workspace member's manifest copied in before the first build; and that the exposed ports
//! are the ones the controller listens on by default (from `instance-registrar run --help`).
//!
//! This checks the file, not an image: no image is built or run here (that needs a Docker daemon
//! and the base images' registries). It catches the Dockerfile drifting from the project, such as
//! a workspace member added without its manifest being copied, which would break the build.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    let path = root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// One Dockerfile instruction: its keyword (upper case) and its arguments, continuation lines
/// joined and comment lines dropped.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends in a continuation line"
    );
    out
}

/// The instructions of each stage, each stage starting with its FROM; ARGs before the first FROM
/// are left out.
fn stages(all: &[Instruction]) -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for i in all {
        if i.keyword == "FROM" {
            stages.push(vec![i.clone()]);
        } else if let Some(stage) = stages.last_mut() {
            stage.push(i.clone());
        }
    }
    stages
}

/// The default of `ARG name=default` anywhere in the file.
fn arg_default(all: &[Instruction], name: &str) -> Option<String> {
    all.iter()
        .filter(|i| i.keyword == "ARG")
        .find_map(|i| i.args.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_owned())
}

/// `key = "value"` in the `[section]` of a Cargo.toml.
fn toml_value(toml: &str, section: &str, key: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut in_section = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == header;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// The `members` of Cargo.toml's `[workspace]`, other than the root package.
fn workspace_members(toml: &str) -> Vec<String> {
    let start = toml
        .find("[workspace]")
        .expect("Cargo.toml has a [workspace]");
    let rest = &toml[start..];
    let list = rest
        .find("members")
        .map(|m| &rest[m..])
        .expect("workspace members");
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty() && m != ".")
        .collect()
}

fn version(v: &str) -> Vec<u32> {
    v.split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{v} is not a version")))
        .collect()
}

#[test]
fn the_image_is_built_in_stages_from_the_locked_release_build() {
    let all = instructions(&read("Dockerfile"));
    let stages = stages(&all);
    assert!(stages.len() >= 2, "not a multi-stage build");

    // Base images are pinned: a tag or a digest, never latest.
    for stage in &stages {
        let image = stage[0].args.split_whitespace().next().unwrap();
        let image = image.replace("${RUST_VERSION}", "RUST_VERSION");
        let pinned = image.contains('@')
            || image
                .rsplit_once(':')
                .is_some_and(|(_, tag)| !tag.contains('/') && tag != "latest");
        assert!(pinned, "base image {image} is not pinned");
    }

    // The builder's Rust is at least the crate's rust-version.
    let cargo_toml = read("Cargo.toml");
    let rust = arg_default(&all, "RUST_VERSION").expect("ARG RUST_VERSION=<version>");
    let msrv = toml_value(&cargo_toml, "package", "rust-version").expect("rust-version");
    assert!(
        version(&rust) >= version(&msrv),
        "the builder's Rust {rust} is older than rust-version {msrv}"
    );

    // Every cargo build is a locked release build of the controller.
    let builds: Vec<&Instruction> = all
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "no cargo build");
    for build in &builds {
        for flag in ["--release", "--locked", "--bin instance-registrar"] {
            assert!(
                build.args.contains(flag),
                "{flag} missing in: {}",
                build.args
            );
        }
    }

    // The workspace loads only with every member's manifest: each is copied before the first build.
    let first_build = all
        .iter()
        .position(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .unwrap();
    let copied: Vec<&str> = all[..first_build]
        .iter()
        .filter(|i| i.keyword == "COPY")
        .map(|i| i.args.as_str())
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock"] {
        assert!(
            copied
                .iter()
                .any(|c| c.split_whitespace().any(|w| w == needed)),
            "{needed} is not copied before the first build"
        );
    }
    for member in workspace_members(&cargo_toml) {
        let manifest = format!("{member}/Cargo.toml");
        assert!(
            copied.iter().any(|c| c.contains(&manifest)),
            "workspace member {member}: {manifest} is not copied before the first build"
        );
    }

    // Nothing is fetched by ADD from the network (unverified, uncached).
    for i in all.iter().filter(|i| i.keyword == "ADD") {
        assert!(
            !i.args.contains("http://") && !i.args.contains("https://") && !i.args.contains("git@"),
            "remote ADD: {}",
            i.args
        );
    }
}

#[test]
fn the_runtime_stage_holds_only_the_binary_and_runs_as_non_root() {
    let all = instructions(&read("Dockerfile"));
    let stages = stages(&all);
    let runtime = stages.last().unwrap();
    let builder_names: Vec<&str> = stages[..stages.len() - 1]
        .iter()
        .filter_map(|s| {
            s[0].args
                .split_once(" AS ")
                .or(s[0].args.split_once(" as "))
        })
        .map(|(_, name)| name.trim())
        .collect();
    let base = runtime[0].args.split_whitespace().next().unwrap();
    assert!(
        !base.contains("rust"),
        "the runtime stage is built on the toolchain image {base}"
    );
    assert!(
        !builder_names.contains(&base),
        "the runtime stage is a builder stage"
    );

    let of = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };
    assert!(
        of("RUN").is_empty(),
        "the runtime stage runs commands: {:?}",
        of("RUN")
    );
    assert_eq!(
        of("ADD"),
        Vec::<&str>::new(),
        "the runtime stage adds files"
    );
    let copies = of("COPY");
    assert_eq!(
        copies.len(),
        1,
        "the runtime stage copies more than the binary: {copies:?}"
    );
    assert!(
        copies[0].starts_with("--from=") && copies[0].ends_with(" /instance-registrar"),
        "the runtime stage copies {:?}, not the binary from the builder",
        copies[0]
    );

    // A numeric, non-root user and group: Kubernetes can verify runAsNonRoot only against a
    // numeric user in the image.
    let users = of("USER");
    let user = *users.last().expect("the runtime stage sets no USER");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    for id in [uid, gid] {
        let n: u32 = id
            .parse()
            .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
        assert_ne!(n, 0, "USER {user} is root");
    }

    let ports: Vec<&str> = of("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    for port in ["8080", "8081"] {
        assert!(
            ports.iter().any(|p| p.trim_end_matches("/tcp") == port),
            "port {port} (metrics 8080, probes 8081) is not exposed: {ports:?}"
        );
    }

    assert_eq!(of("ENTRYPOINT"), vec![r#"["/instance-registrar"]"#]);
    assert_eq!(of("CMD"), vec![r#"["run"]"#]);
}

#[test]
fn the_image_labels_match_cargo_toml() {
    let all = instructions(&read("Dockerfile"));
    let runtime = stages(&all).pop().unwrap();
    let labels: String = runtime
        .iter()
        .filter(|i| i.keyword == "LABEL")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let label = |key: &str| -> String {
        let at = labels
            .find(&format!("org.opencontainers.image.{key}="))
            .unwrap_or_else(|| panic!("no org.opencontainers.image.{key} label"));
        let value = &labels[at..].split_once('=').unwrap().1;
        match value.strip_prefix('"') {
            Some(quoted) => quoted[..quoted.find('"').unwrap()].to_owned(),
            None => value.split_whitespace().next().unwrap_or("").to_owned(),
        }
    };
    let cargo_toml = read("Cargo.toml");
    let package = |key: &str| toml_value(&cargo_toml, "package", key).unwrap();

    assert_eq!(label("title"), package("name"));
    assert!(!label("description").is_empty());
    assert_eq!(label("licenses"), package("license"));
    assert_eq!(label("source"), "${SOURCE}");
    assert_eq!(label("version"), "${VERSION}");
    assert_eq!(
        arg_default(&all, "VERSION").as_deref(),
        Some(package("version").as_str()),
        "the image's default version is not Cargo.toml's"
    );
}

#[test]
fn the_build_context_leaves_out_build_output_and_history() {
    let ignore = read(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            entries
                .iter()
                .any(|e| e.trim_start_matches('/').trim_end_matches('/') == needed),
            ".dockerignore does not leave out {needed}: {entries:?}"
        );
    }
    // Nothing the build needs is left out.
    for needed in ["src", "Cargo.toml", "Cargo.lock", "tests"] {
        assert!(
            !entries
                .iter()
                .any(|e| e.trim_start_matches('/').trim_end_matches('/') == needed),
            ".dockerignore leaves out {needed}, which the build needs"
        );
    }
}

/// The ports the image exposes are the ones the controller listens on by default, on every
/// interface (a default of 127.0.0.1 would be unreachable from outside the container).
#[test]
fn the_exposed_ports_are_the_binarys_default_listen_addresses() {
    let all = instructions(&read("Dockerfile"));
    let runtime = stages(&all).pop().unwrap();
    let ports: Vec<String> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").to_owned())
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instance-registrar"))
        .args(["run", "--help"])
        .env_remove("METRICS_ADDRESS")
        .env_remove("PROBE_ADDRESS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`instance-registrar run --help` failed"
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for port in &ports {
        assert!(
            help.contains(&format!("[default: 0.0.0.0:{port}]"))
                || help.contains(&format!("[default: [::]:{port}]")),
            "the image exposes {port}, but no address of `run` listens there on every interface by \
             default:\n{help}"
        );
    }
}
