//! The resource as the API server sees it: bad manifests are refused at `kubectl apply` with a
//! message naming the field, the examples are accepted, `kubectl explain` explains the fields and
//! `kubectl get` shows the printer columns. Runs against a real kube-apiserver.

mod support;

use support::{ControlPlane, manifest};

const STACK: &str = "2f1ad2a4-6e7f-4c1b-9a55-0c7b1d3e4f50";
/// A CA public key line.
const CA: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsQ9qk2FZmZyCXW1vY5pD2r9cQ0FJ2eJfQ8w5q0Kx2Z host-ca";

/// Applies `yaml` (server-side, strict field validation) and returns (accepted, stderr).
fn apply(cp: &ControlPlane, yaml: &str) -> (bool, String) {
    let out = cp.kubectl_stdin(
        &["apply", "--server-side", "--validate=strict", "-f", "-"],
        yaml,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn create_namespace(cp: &ControlPlane, prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ns = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    cp.kubectl_ok(&["create", "namespace", &ns]).unwrap();
    ns
}

/// `manifest` with `from` replaced by `to` (one occurrence must exist).
fn edit(yaml: &str, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "fixture lacks {from:?}");
    yaml.replacen(from, to, 1)
}

#[test]
fn invalid_manifests_are_refused_with_a_message_naming_the_field() {
    let cp = ControlPlane::shared();
    let ns = create_namespace(cp, "schema");
    let base = manifest(&ns, "bad", "key");
    let on_prem = edit(
        &edit(
            &base,
            "infrastructureClass: ec2",
            "infrastructureClass: on-premises",
        ),
        "target: i-0123456789abcdef0",
        "target: host-1.example.internal",
    );
    let ssh_tail = "      name: key\n";
    let ssm_ec2 = edit(
        &base,
        &format!("  stackId: {STACK}\n"),
        "  systemsManager:\n    region: us-east-1\n",
    );
    let ssm_on_prem = edit(
        &on_prem,
        &format!("  stackId: {STACK}\n"),
        "  systemsManager:\n    serviceRole: SSMServiceRole\n",
    );
    for good in [&ssm_ec2, &ssm_on_prem] {
        let (accepted, stderr) = apply(cp, good);
        assert!(
            accepted,
            "a valid Systems Manager manifest was refused: {stderr}\n{good}"
        );
        cp.kubectl(&["delete", "-n", &ns, "ir", "bad", "--wait=false"]);
    }
    // (what, manifest, text the error must contain)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad stackId",
            edit(&base, STACK, "not-a-stack"),
            "spec.stackId",
        ),
        (
            "uppercase stackId",
            edit(&base, STACK, &STACK.to_uppercase()),
            "spec.stackId",
        ),
        (
            "unknown class",
            edit(
                &base,
                "infrastructureClass: ec2",
                "infrastructureClass: gcp",
            ),
            "spec.infrastructureClass",
        ),
        (
            "privateIp on ec2",
            edit(&base, "  ssh:\n", "  privateIp: 10.0.0.5\n  ssh:\n"),
            "spec.privateIp",
        ),
        (
            "publicIp on ec2",
            edit(&base, "  ssh:\n", "  publicIp: 198.51.100.7\n  ssh:\n"),
            "spec.publicIp",
        ),
        (
            "useInstanceProfile on on-premises",
            edit(&on_prem, "  ssh:\n", "  useInstanceProfile: true\n  ssh:\n"),
            "spec.useInstanceProfile",
        ),
        (
            "hostname starting with a dash",
            edit(&base, "  ssh:\n", "  hostname: -web\n  ssh:\n"),
            "spec.hostname",
        ),
        (
            "hostname with a dot",
            edit(&base, "  ssh:\n", "  hostname: web.1\n  ssh:\n"),
            "spec.hostname",
        ),
        (
            "hostname of 64 characters",
            edit(
                &base,
                "  ssh:\n",
                &format!("  hostname: {}\n  ssh:\n", "a".repeat(64)),
            ),
            "spec.hostname",
        ),
        (
            "hostname with shell metacharacters",
            edit(&base, "  ssh:\n", "  hostname: \"a$(reboot)\"\n  ssh:\n"),
            "spec.hostname",
        ),
        (
            "on-premises target with a space and a semicolon",
            edit(
                &on_prem,
                "target: host-1.example.internal",
                "target: \"host-1; rm -rf /\"",
            ),
            "spec.target",
        ),
        (
            "on-premises IPv4 target with leading zeros (another spelling of a host)",
            edit(
                &on_prem,
                "target: host-1.example.internal",
                "target: \"127.000.000.001\"",
            ),
            "spec.target",
        ),
        (
            "target with a newline",
            edit(
                &base,
                "target: i-0123456789abcdef0",
                "target: \"i-1\\nrm -rf /\"",
            ),
            "spec.target",
        ),
        (
            "private IP out of range",
            edit(&on_prem, "  ssh:\n", "  privateIp: 999.1.1.1\n  ssh:\n"),
            "spec.privateIp",
        ),
        (
            "missing ssh",
            base[..base.find("  ssh:\n").unwrap()].to_owned(),
            "spec.ssh",
        ),
        (
            "missing ssh.username",
            edit(&base, "    username: ec2-user\n", ""),
            "spec.ssh.username",
        ),
        (
            "missing privateKeySecretRef",
            edit(&base, &format!("    privateKeySecretRef:\n{ssh_tail}"), ""),
            "spec.ssh.privateKeySecretRef",
        ),
        (
            "username with shell metacharacters",
            edit(&base, "username: ec2-user", "username: \"root;id\""),
            "spec.ssh.username",
        ),
        (
            "Secret name that is not a DNS name",
            edit(&base, "      name: key", "      name: Bad_Name"),
            "spec.ssh.privateKeySecretRef.name",
        ),
        (
            "port 0",
            edit(&base, ssh_tail, &format!("{ssh_tail}    port: 0\n")),
            "spec.ssh.port",
        ),
        (
            "ssh address with a space",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    address: \"a b\"\n"),
            ),
            "spec.ssh.address",
        ),
        (
            "Pinned without hostKeys",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    hostKeyPolicy: Pinned\n"),
            ),
            "spec.ssh.hostKeys",
        ),
        (
            "unknown hostKeyPolicy",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    hostKeyPolicy: Whatever\n"),
            ),
            "spec.ssh.hostKeyPolicy",
        ),
        (
            "host key that is not a public key",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    hostKeys: [\"not a key\"]\n"),
            ),
            "spec.ssh.hostKeys[0]",
        ),
        (
            "CertificateAuthority without hostCertificateAuthorities",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    hostKeyPolicy: CertificateAuthority\n"),
            ),
            "spec.ssh.hostCertificateAuthorities",
        ),
        (
            "hostCertificateAuthorities without CertificateAuthority",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    hostCertificateAuthorities: [\"{CA}\"]\n"),
            ),
            "spec.ssh.hostCertificateAuthorities",
        ),
        (
            "CA line with authorized_keys options",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    hostKeyPolicy: CertificateAuthority\n    hostCertificateAuthorities: [\"cert-authority,principals=\\\"x\\\" {CA}\"]\n"
                ),
            ),
            "spec.ssh.hostCertificateAuthorities[0]",
        ),
        (
            "nine CAs",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    hostKeyPolicy: CertificateAuthority\n    hostCertificateAuthorities: [{}]\n",
                    vec![format!("\"{CA}\""); 9].join(", ")
                ),
            ),
            "spec.ssh.hostCertificateAuthorities",
        ),
        (
            "jump host CertificateAuthority without hostCertificateAuthorities",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: bastion, username: jump, hostKeyPolicy: CertificateAuthority}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[0].hostCertificateAuthorities",
        ),
        (
            "certificate key with a slash",
            edit(
                &base,
                "      name: key\n",
                "      name: key\n      certificateKey: a/b\n",
            ),
            "spec.ssh.privateKeySecretRef.certificateKey",
        ),
        (
            "five jump hosts",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n{}",
                    "    - {address: bastion, username: jump}\n".repeat(5)
                ),
            ),
            "spec.ssh.jumpHosts",
        ),
        (
            "jump host address with a shell word",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: \"-oProxyCommand=x\", username: jump}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[0].address",
        ),
        (
            "jump host without a username",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    jumpHosts:\n    - {{address: bastion}}\n"),
            ),
            "spec.ssh.jumpHosts[0].username",
        ),
        (
            "jump host port of zero",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: bastion, username: j, port: 0}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[0].port",
        ),
        (
            "jump host Pinned without hostKeys",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: b, username: j}}\n    - {{address: bastion, username: jump, hostKeyPolicy: Pinned}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[1].hostKeys",
        ),
        (
            "jump host key that is not a public key",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: bastion, username: jump, hostKeys: [\"not a key\"]}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[0].hostKeys[0]",
        ),
        (
            "jump host key Secret with an invalid name",
            edit(
                &base,
                ssh_tail,
                &format!(
                    "{ssh_tail}    jumpHosts:\n    - {{address: bastion, username: jump, privateKeySecretRef: {{name: \"../x\"}}}}\n"
                ),
            ),
            "spec.ssh.jumpHosts[0].privateKeySecretRef.name",
        ),
        (
            "timeout of zero",
            edit(
                &base,
                ssh_tail,
                &format!("{ssh_tail}    timeoutSeconds: 0\n"),
            ),
            "spec.ssh.timeoutSeconds",
        ),
        (
            "layer ID that is not a UUID",
            edit(&base, "  ssh:\n", "  layerIds: [\"web\"]\n  ssh:\n"),
            "spec.layerIds[0]",
        ),
        (
            "unknown deletionPolicy",
            edit(&base, "  ssh:\n", "  deletionPolicy: Keep\n  ssh:\n"),
            "spec.deletionPolicy",
        ),
        (
            "installer checksum that is not SHA-256",
            edit(&base, "  ssh:\n", "  agentInstallerSha256: abc\n  ssh:\n"),
            "spec.agentInstallerSha256",
        ),
        (
            "region that is not a region",
            edit(&base, "  ssh:\n", "  region: \"us east\"\n  ssh:\n"),
            "spec.region",
        ),
        (
            "unknown field",
            edit(&base, "  ssh:\n", "  stackName: EC2Register\n  ssh:\n"),
            "spec.stackName",
        ),
        (
            "neither stackId nor systemsManager",
            edit(&base, &format!("  stackId: {STACK}\n"), ""),
            "spec.stackId",
        ),
        (
            "both stackId and systemsManager",
            edit(&base, "  ssh:\n", "  systemsManager: {}\n  ssh:\n"),
            "spec.stackId",
        ),
        (
            "layerIds with systemsManager",
            edit(
                &ssm_ec2,
                "  ssh:\n",
                &format!("  layerIds: [{STACK}]\n  ssh:\n"),
            ),
            "spec.layerIds",
        ),
        (
            "hostname with systemsManager",
            edit(&ssm_ec2, "  ssh:\n", "  hostname: web-1\n  ssh:\n"),
            "spec.hostname",
        ),
        (
            "OpsWorks region with systemsManager",
            edit(&ssm_ec2, "  ssh:\n", "  region: us-east-1\n  ssh:\n"),
            "spec.region",
        ),
        (
            "useInstanceProfile with systemsManager",
            edit(&ssm_ec2, "  ssh:\n", "  useInstanceProfile: true\n  ssh:\n"),
            "spec.useInstanceProfile",
        ),
        (
            "on-premises host without a service role",
            edit(
                &ssm_on_prem,
                "  systemsManager:\n    serviceRole: SSMServiceRole\n",
                "  systemsManager: {}\n",
            ),
            "spec.systemsManager.serviceRole",
        ),
        (
            "service role for an EC2 instance",
            edit(
                &ssm_ec2,
                "    region: us-east-1\n",
                "    serviceRole: SSMServiceRole\n",
            ),
            "spec.systemsManager.serviceRole",
        ),
        (
            "service role that is not a role name",
            edit(
                &ssm_on_prem,
                "serviceRole: SSMServiceRole",
                "serviceRole: \"a role\"",
            ),
            "spec.systemsManager.serviceRole",
        ),
        (
            "activation lifetime too short",
            edit(
                &ssm_on_prem,
                "    serviceRole: SSMServiceRole\n",
                "    serviceRole: SSMServiceRole\n    activationLifetimeMinutes: 1\n",
            ),
            "spec.systemsManager.activationLifetimeMinutes",
        ),
        (
            "a tag key of the controller's",
            edit(
                &ssm_on_prem,
                "    serviceRole: SSMServiceRole\n",
                "    serviceRole: SSMServiceRole\n    tags: [{key: registrar.dev/owner, value: x}]\n",
            ),
            "spec.systemsManager.tags",
        ),
        (
            "setup tool checksum that is not SHA-256",
            edit(
                &ssm_on_prem,
                "    serviceRole: SSMServiceRole\n",
                "    serviceRole: SSMServiceRole\n    agentSetupSha256: abc\n",
            ),
            "spec.systemsManager.agentSetupSha256",
        ),
    ];
    let mut failures = Vec::new();
    for (what, yaml, field) in &cases {
        let (accepted, stderr) = apply(cp, yaml);
        if accepted {
            failures.push(format!("{what}: accepted"));
            cp.kubectl(&["delete", "-n", &ns, "ir", "bad", "--wait=false"]);
        } else if !stderr.contains(field) {
            failures.push(format!("{what}: refused without naming {field}: {stderr}"));
        }
    }
    println!(
        "{} invalid manifests tried, {} refused naming the field",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn immutable_fields_cannot_change_after_create() {
    let cp = ControlPlane::shared();
    let ns = create_namespace(cp, "immutable");
    let base = manifest(&ns, "fixed", "key");
    assert_eq!(apply(cp, &base), (true, String::new()));
    let other_stack = "0b0b0b0b-1111-2222-3333-444444444444";
    let changes = [
        (
            "stackId",
            edit(&base, STACK, other_stack),
            "stackId is immutable",
        ),
        (
            "target",
            edit(&base, "i-0123456789abcdef0", "i-0fedcba9876543210"),
            "target is immutable",
        ),
        (
            "infrastructureClass",
            edit(
                &edit(
                    &base,
                    "infrastructureClass: ec2",
                    "infrastructureClass: on-premises",
                ),
                "target: i-0123456789abcdef0",
                "target: i-0123456789abcdef0",
            ),
            "infrastructureClass is immutable",
        ),
    ];
    for (field, yaml, message) in changes {
        let (accepted, stderr) = apply(cp, &yaml);
        assert!(!accepted, "change of {field} accepted");
        assert!(
            stderr.contains(&format!("spec.{field}")) && stderr.contains(message),
            "{field}: {stderr}"
        );
    }
    // A mutable field still changes.
    let (accepted, stderr) = apply(cp, &edit(&base, "  ssh:\n", "  hostname: web-2\n  ssh:\n"));
    assert!(accepted, "{stderr}");
}

/// `region` is optional, so its rule must refuse it being added and removed, not only changed:
/// a deletion after any of these would look for the host at the wrong endpoint.
#[test]
fn region_cannot_be_added_changed_or_removed_after_create() {
    let cp = ControlPlane::shared();
    let ns = create_namespace(cp, "immutable-region");
    let without = manifest(&ns, "no-region", "key");
    assert_eq!(apply(cp, &without), (true, String::new()));
    let with_region = |yaml: &str, region: &str| {
        edit(
            yaml,
            "  infrastructureClass:",
            &format!("  region: {region}\n  infrastructureClass:"),
        )
    };
    let regional = with_region(&manifest(&ns, "regional", "key"), "eu-west-1");
    assert_eq!(apply(cp, &regional), (true, String::new()));
    let changes = [
        ("added", with_region(&without, "eu-west-1")),
        (
            "changed",
            edit(&regional, "region: eu-west-1", "region: us-west-2"),
        ),
        ("removed", edit(&regional, "  region: eu-west-1\n", "")),
    ];
    for (what, yaml) in changes {
        let (accepted, stderr) = apply(cp, &yaml);
        assert!(!accepted, "region {what} after create was accepted");
        assert!(
            stderr.contains("spec.region") && stderr.contains("region is immutable"),
            "region {what}: {stderr}"
        );
    }
    // The same region applied again is no change.
    assert_eq!(apply(cp, &regional), (true, String::new()));
}

#[test]
fn the_examples_are_accepted() {
    let cp = ControlPlane::shared();
    let ns = create_namespace(cp, "examples");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // examples/local/ holds the demo's templates (filled in by the demo, checked there).
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5);
    for path in names {
        let out = cp.kubectl(&[
            "apply",
            "-n",
            &ns,
            "--server-side",
            "--validate=strict",
            "-f",
            &path.to_string_lossy(),
        ]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kubectl_explain_explains_the_fields_and_get_shows_the_columns() {
    let cp = ControlPlane::shared();
    let explained = cp
        .kubectl_ok(&["explain", "instanceregistration.spec.ssh"])
        .unwrap();
    for text in [
        "hostKeyPolicy",
        "jumpHosts",
        "privateKeySecretRef",
        "known_hosts form",
        "sudo without a password",
    ] {
        assert!(
            explained.contains(text),
            "explain lacks {text:?}:\n{explained}"
        );
    }
    let jump = cp
        .kubectl_ok(&["explain", "instanceregistration.spec.ssh.jumpHosts"])
        .unwrap();
    for text in [
        "ProxyJump",
        "AllowTcpForwarding",
        "privateKeySecretRef",
        "hostKeyPolicy",
    ] {
        assert!(
            jump.contains(text),
            "explain jumpHosts lacks {text:?}:\n{jump}"
        );
    }
    let spec = cp.kubectl_ok(&["explain", "ir.spec"]).unwrap();
    for field in [
        "stackId",
        "infrastructureClass",
        "target",
        "hostname",
        "deletionPolicy",
        "suspend",
        "layerIds",
    ] {
        assert!(spec.contains(field), "explain ir.spec lacks {field}");
    }

    let ns = create_namespace(cp, "columns");
    assert!(apply(cp, &manifest(&ns, "shown", "key")).0);
    let wide = cp
        .kubectl_ok(&["get", "ir", "-n", &ns, "-o", "wide"])
        .unwrap();
    let header = wide.lines().next().unwrap();
    for column in [
        "NAME",
        "READY",
        "PHASE",
        "REASON",
        "STACK",
        "TARGET",
        "OPSWORKS ID",
        "ADDRESS",
        "AGE",
    ] {
        assert!(
            header.contains(column),
            "-o wide header lacks {column}: {header}"
        );
    }
    assert!(wide.contains("i-0123456789abcdef0"));
    let narrow = cp.kubectl_ok(&["get", "registrar", "-n", &ns]).unwrap();
    let header = narrow.lines().next().unwrap();
    assert!(
        header.contains("READY") && !header.contains("STACK"),
        "{header}"
    );
}

/// The service cannot be swapped, and a Systems Manager object's region and service role cannot
/// be added, changed or removed: the node was registered there, for that role, and deleting the
/// object must find it.
#[test]
fn the_service_and_the_systems_manager_region_and_role_are_fixed_after_create() {
    let cp = ControlPlane::shared();
    let ns = create_namespace(cp, "immutable-ssm");
    let opsworks = manifest(&ns, "svc", "key");
    assert_eq!(apply(cp, &opsworks), (true, String::new()));
    let to_ssm = edit(
        &opsworks,
        &format!("  stackId: {STACK}\n"),
        "  systemsManager:\n    region: us-east-1\n",
    );
    let (accepted, stderr) = apply(cp, &to_ssm);
    assert!(!accepted, "OpsWorks to Systems Manager accepted");
    assert!(stderr.contains("the service is immutable"), "{stderr}");

    let ssm = edit(
        &edit(
            &edit(
                &manifest(&ns, "node", "key"),
                &format!("  stackId: {STACK}\n"),
                "  systemsManager:\n    serviceRole: RoleA\n    region: eu-west-1\n",
            ),
            "infrastructureClass: ec2",
            "infrastructureClass: on-premises",
        ),
        "target: i-0123456789abcdef0",
        "target: host-9.example.internal",
    );
    assert_eq!(apply(cp, &ssm), (true, String::new()));
    let changes = [
        (
            "region changed",
            edit(&ssm, "region: eu-west-1", "region: us-west-2"),
            "systemsManager.region is immutable",
        ),
        (
            "region removed",
            edit(&ssm, "    region: eu-west-1\n", ""),
            "systemsManager.region is immutable",
        ),
        (
            "role changed",
            edit(&ssm, "serviceRole: RoleA", "serviceRole: RoleB"),
            "systemsManager.serviceRole is immutable",
        ),
        (
            "back to OpsWorks",
            edit(
                &ssm,
                "  systemsManager:\n    serviceRole: RoleA\n    region: eu-west-1\n",
                &format!("  stackId: {STACK}\n"),
            ),
            "the service is immutable",
        ),
    ];
    for (what, yaml, message) in changes {
        let (accepted, stderr) = apply(cp, &yaml);
        assert!(!accepted, "{what} accepted");
        assert!(stderr.contains(message), "{what}: {stderr}");
    }
    // Its tags may change.
    let tagged = edit(
        &ssm,
        "    region: eu-west-1\n",
        "    region: eu-west-1\n    tags: [{key: team, value: a}]\n",
    );
    let (accepted, stderr) = apply(cp, &tagged);
    assert!(accepted, "{stderr}");
}
