//! The Argo CD health check, `charts/instance-registrar/argocd/health.lua`, run for real: under
//! Lua 5.1 (Debian's `lua5.1`, which `tests/setup.sh` installs; Argo CD embeds gopher-lua, a Lua
//! 5.1), with the object as the global `obj` and only the libraries Argo CD opens for a health
//! script (`tests/argocd_health.lua` sets that up), against every test in `health_test.yaml`,
//! Argo CD's own format for a health check's tests, and its objects in `testdata/`.
//!
//! The objects are checked too: each is an `InstanceRegistration` this crate reads, with no field
//! it does not know, so the script is tested against the status the controller writes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use instance_registrar::resource::InstanceRegistration;
use serde::Deserialize;
use serde_yaml::Value;

const LUA: &str = "lua5.1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_dir() -> PathBuf {
    root().join("charts/instance-registrar/argocd")
}

fn harness() -> PathBuf {
    root().join("tests/argocd_health.lua")
}

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Health,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq, Eq)]
struct Health {
    status: String,
    #[serde(default)]
    message: String,
}

fn health_tests() -> Vec<HealthTest> {
    let path = check_dir().join("health_test.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str::<HealthTests>(&text)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .tests
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `value` as a Lua table constructor, converted the way Argo CD hands an object to Lua: maps
/// become tables keyed by string, lists become tables indexed from 1, null is nil.
fn to_lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                let f = n.as_f64().expect("a number");
                assert!(f.is_finite(), "{f} has no JSON form");
                format!("{f:?}")
            }
        }
        Value::String(s) => lua_string(s),
        Value::Sequence(items) => {
            let items: Vec<String> = items.iter().map(to_lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Mapping(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                    };
                    format!("[{}] = {}", lua_string(&key), to_lua(v))
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Tagged(t) => panic!("YAML tags have no JSON form: {t:?}"),
    }
}

/// A Lua 5.1 string literal holding `s`'s bytes.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            // Three digits always, so that a digit after the escape is not read as part of it.
            0..=0x1f | 0x7f.. => out.push_str(&format!("\\{b:03}")),
            _ => out.push(b as char),
        }
    }
    out.push('"');
    out
}

/// Runs `script` under the harness with `object` as `obj`: Ok(health) or Err(what went wrong).
fn run(script: &Path, object: &Value) -> Result<Health, String> {
    let mut child = Command::new(LUA)
        .arg(harness())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {LUA} ({e}): run `bash tests/setup.sh`, which installs it")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(to_lua(object).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Ok(Health {
        status: status.to_owned(),
        message: message.to_owned(),
    })
}

#[test]
fn every_test_object_gets_the_health_health_test_yaml_expects() {
    let tests = health_tests();
    assert!(tests.len() >= 8, "only {} tests", tests.len());
    let script = check_dir().join("health.lua");
    let mut failures = Vec::new();
    for test in &tests {
        let object = read_yaml(&check_dir().join(&test.input_path));
        match run(&script, &object) {
            Ok(health) if health == test.health_status => {}
            Ok(health) => failures.push(format!(
                "{}: expected {:?}, got {health:?}",
                test.input_path, test.health_status
            )),
            Err(e) => failures.push(format!("{}: {e}", test.input_path)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every status the script can give is tested, and no test object is left out.
    let statuses: BTreeSet<&str> = tests
        .iter()
        .map(|t| t.health_status.status.as_str())
        .collect();
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(statuses.contains(status), "no test expects {status}");
    }
    let used: BTreeSet<String> = tests.iter().map(|t| t.input_path.clone()).collect();
    for entry in std::fs::read_dir(check_dir().join("testdata")).unwrap() {
        let name = format!("testdata/{}", entry.unwrap().file_name().to_string_lossy());
        assert!(
            used.contains(&name),
            "{name} is in no test of health_test.yaml"
        );
    }
}

/// Every field of `input` is in `output` with the same value (`output` may add defaults).
fn missing_fields(input: &serde_json::Value, output: &serde_json::Value, at: &str) -> Vec<String> {
    use serde_json::Value as J;
    match (input, output) {
        (J::Object(i), J::Object(o)) => i
            .iter()
            .flat_map(|(k, v)| match o.get(k) {
                Some(ov) => missing_fields(v, ov, &format!("{at}.{k}")),
                None => vec![format!("{at}.{k}")],
            })
            .collect(),
        (J::Array(i), J::Array(o)) if i.len() == o.len() => i
            .iter()
            .zip(o)
            .enumerate()
            .flat_map(|(n, (iv, ov))| missing_fields(iv, ov, &format!("{at}[{n}]")))
            .collect(),
        (i, o) if i == o => Vec::new(),
        (i, o) => vec![format!("{at}: {i} became {o}")],
    }
}

#[test]
fn the_test_objects_are_instance_registrations_as_the_controller_writes_them() {
    for test in health_tests() {
        let object = read_yaml(&check_dir().join(&test.input_path));
        let parsed: InstanceRegistration = serde_yaml::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", test.input_path));
        let input = serde_json::to_value(&object).unwrap();
        let output = serde_json::to_value(&parsed).unwrap();
        let missing = missing_fields(&input, &output, "");
        assert!(
            missing.is_empty(),
            "{}: fields the resource does not know or changes: {missing:?}",
            test.input_path
        );
    }
}

/// The harness holds a script to what Argo CD offers: a script that would fail in Argo CD fails
/// here.
#[test]
fn the_harness_refuses_what_argo_cd_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let object = read_yaml(&check_dir().join("testdata/ready.yaml"));
    let cases = [
        (
            "uses the string library",
            "return { status = string.upper('healthy') }",
        ),
        (
            "calls a string method",
            "return { status = ('Healthy'):lower() }",
        ),
        (
            "reads a file",
            "io.open('/etc/hostname')\nreturn { status = 'Healthy' }",
        ),
        ("returns no table", "return 'Healthy'"),
        ("returns an unknown status", "return { status = 'Fine' }"),
    ];
    for (what, source) in cases {
        let script = dir.path().join("health.lua");
        std::fs::write(&script, source).unwrap();
        assert!(
            run(&script, &object).is_err(),
            "a script that {what} was accepted"
        );
    }
    std::fs::write(
        dir.path().join("health.lua"),
        "local hs = {}\nhs.status = 'Healthy'\nhs.message = obj.metadata.name .. ' ' .. tostring(obj.metadata.generation) .. ' ' .. table.concat({'a', 'b'}, '')\nreturn hs",
    )
    .unwrap();
    assert_eq!(
        run(&dir.path().join("health.lua"), &object),
        Ok(Health {
            status: "Healthy".to_owned(),
            message: "web-1 2 ab".to_owned()
        })
    );
}

/// The argocd-cm key the README shows is the one Argo CD looks up for this kind:
/// `resource.customizations.health.<group>_<kind>`, from the CRD.
#[test]
fn the_readme_names_the_argocd_cm_key_for_the_kind() {
    let crd = read_yaml(&root().join("crds/instanceregistration.yaml"));
    let group = crd["spec"]["group"].as_str().unwrap();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
    let key = format!("resource.customizations.health.{group}_{kind}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains(&key), "README.md does not show {key}");
    assert!(
        readme.contains("charts/instance-registrar/argocd/health.lua"),
        "README.md does not say where the script is"
    );
}
