//! The local environment's SSM side, as the controller's tests get it: `AwsEnv`'s SSM client,
//! its helpers for the SSM service role and instance profiles, and the environment it gives a
//! controller.

use registrar_local_env::aws::{AwsEnv, SSM_SETUP_URL_ENV};

use crate::common::{heartbeat, unique};

#[tokio::test]
async fn aws_env_serves_ssm_and_the_setup_tool() {
    let env = AwsEnv::shared();
    let vars = env.controller_env();
    let var = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(var("AWS_ENDPOINT_URL_SSM"), env.opsworks.url());
    let template = var(SSM_SETUP_URL_ENV);
    assert_eq!(template, env.opsworks.ssm_setup_url_template());
    assert!(template.contains("{platform}_{arch}"), "{template}");
    // The stand-in is served there.
    assert!(env.opsworks.ssm_setup_bytes("linux", "amd64").is_some());

    let role = unique("EnvSSMRole");
    let arn = env.create_ssm_service_role(&role).await;
    assert_eq!(arn, format!("arn:aws:iam::123456789012:role/{role}"));
    let ssm = env.ssm();
    let created = ssm
        .create_activation()
        .iam_role(&role)
        .send()
        .await
        .expect("CreateActivation with the helper's role");
    assert!(created.activation_code().is_some());

    // An EC2 instance with an instance profile (holding the role), one without.
    let profile = unique("EnvSSMProfile");
    let profile_arn = env.create_instance_profile(&profile, Some(&role)).await;
    assert!(profile_arn.ends_with(&format!(":instance-profile/{profile}")));
    let (with, _, _) = env
        .try_run_instance("ssm-env-with", None, Some(&profile))
        .await
        .unwrap();
    let (without, _, _) = env.run_instance("ssm-env-without", None).await;
    heartbeat(env.opsworks.url(), &with).expect("with a profile");
    let node = env.opsworks.ssm_node(&with).unwrap();
    assert_eq!(node.iam_role.as_deref(), Some(role.as_str()));
    let e = heartbeat(env.opsworks.url(), &without).unwrap_err();
    assert_eq!(e.code, "AccessDeniedException");
    assert!(env.opsworks.ssm_node(&without).is_none());
}
