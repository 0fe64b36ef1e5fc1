//! The aws-sdk-ssm client drives the public Systems Manager operations, and gets the model's
//! typed errors.

use std::time::SystemTime;

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::primitives::DateTime;
use aws_sdk_ssm::types::{
    DescribeActivationsFilter, DescribeActivationsFilterKeys, InstanceInformationFilter,
    InstanceInformationFilterKey, InstanceInformationStringFilter, PingStatus, ResourceType,
    ResourceTypeForTagging, Tag,
};

use crate::common::*;

fn secs(t: &DateTime) -> i64 {
    t.secs()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn activations_through_the_sdk() {
    let ep = endpoint();
    let client = ssm(ep.url());
    let role = ssm_role().await;

    // Defaults: one registration, 24 hours.
    let created = client
        .create_activation()
        .iam_role(&role)
        .description("web servers")
        .default_instance_name("web")
        .tags(Tag::builder().key("team").value("infra").build().unwrap())
        .send()
        .await
        .expect("CreateActivation");
    let id = created.activation_id().unwrap().to_owned();
    let code = created.activation_code().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(code.len(), 20, "{code}");
    let described = client
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::ActivationIds)
                .filter_values(&id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeActivations");
    assert!(
        !format!("{described:?}").contains(&code),
        "the code was described"
    );
    let list = described.activation_list();
    assert_eq!(list.len(), 1);
    let a = &list[0];
    assert_eq!(a.activation_id(), Some(id.as_str()));
    assert_eq!(a.iam_role(), Some(role.as_str()));
    assert_eq!(a.description(), Some("web servers"));
    assert_eq!(a.default_instance_name(), Some("web"));
    assert_eq!(a.registration_limit(), Some(1));
    assert_eq!(a.registrations_count(), Some(0));
    assert!(!a.expired());
    let expires = secs(a.expiration_date().unwrap());
    assert!((expires - (now() + 86_400)).abs() < 60, "{expires}");
    assert!((secs(a.created_date().unwrap()) - now()).abs() < 60);
    assert_eq!(a.tags()[0].key(), "team");
    // The handle tells the code, for tests that look for leaks of it.
    let views = ep.ssm_activations();
    assert_eq!(views.len(), 1);
    assert_eq!(
        (
            views[0].activation_id.as_str(),
            views[0].activation_code.as_str()
        ),
        (id.as_str(), code.as_str())
    );

    // Expiration dates: in the future, at most 30 days.
    for (days, ok) in [(-1, false), (31, false), (29, true)] {
        let r = client
            .create_activation()
            .iam_role(&role)
            .expiration_date(DateTime::from_secs(now() + days * 86_400))
            .send()
            .await;
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                let e = e.into_service_error();
                assert!(e.is_invalid_parameters(), "{days} days: {e:?}");
            }
            (r, _) => panic!("{days} days: {r:?}"),
        }
    }
    // A missing role, and one SSM may not assume.
    let e = client
        .create_activation()
        .iam_role("no-such-role")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_parameters(), "{e:?}");
    assert!(
        e.message()
            .unwrap()
            .contains("arn:aws:iam::123456789012:role/no-such-role"),
        "{e:?}"
    );
    let ec2_role = unique("EC2Role");
    iam()
        .create_role()
        .role_name(&ec2_role)
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let e = client
        .create_activation()
        .iam_role(&ec2_role)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_parameters(), "{e:?}");

    // A role with a path, named with it or without.
    let with_path = unique("SSMRoleWithPath");
    iam()
        .create_role()
        .role_name(&with_path)
        .path("/service-role/")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ssm.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .unwrap();
    for (name, ok) in [
        (format!("service-role/{with_path}"), true),
        (with_path.clone(), true),
        (format!("other-path/{with_path}"), false),
    ] {
        let r = client.create_activation().iam_role(&name).send().await;
        assert_eq!(r.is_ok(), ok, "{name}: {r:?}");
    }

    // Paging, with a filter.
    let role2 = ssm_role().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_activation(&client, &role2, 3).await.0);
    }
    let first = client
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::IamRole)
                .filter_values(&role2)
                .build(),
        )
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.activation_list().len(), 2);
    assert!(first.next_token().is_some());
    let paged: Vec<String> = client
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::IamRole)
                .filter_values(&role2)
                .build(),
        )
        .max_results(2)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.activation_id().unwrap().to_owned())
        .collect();
    assert_eq!(paged, ids);
    let by_name = client
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::DefaultInstanceName)
                .filter_values("web")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.activation_list().len(), 1);
    let e = client
        .describe_activations()
        .max_results(51)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));

    // Deleting.
    client
        .delete_activation()
        .activation_id(&id)
        .send()
        .await
        .expect("DeleteActivation");
    assert!(ep.ssm_activations().iter().all(|a| a.activation_id != id));
    let e = client
        .delete_activation()
        .activation_id(&id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_activation_id(), "{e:?}");
    // Every call was recorded as an SSM call.
    let summary = opsworks_endpoint::CallSummary::of_endpoint(&ep.calls());
    assert_eq!(summary.service("opsworks").calls, 0);
    assert_eq!(summary.get("ssm", "DeleteActivation").calls, 2);
    assert_eq!(summary.get("ssm", "DeleteActivation").errors, 1);
}

#[tokio::test]
async fn nodes_through_the_sdk() {
    let ep = endpoint();
    let client = ssm(ep.url());
    let role = ssm_role().await;
    let tagged = client
        .create_activation()
        .iam_role(&role)
        .registration_limit(3)
        .default_instance_name("db")
        .tags(Tag::builder().key("tier").value("data").build().unwrap())
        .send()
        .await
        .unwrap();
    let (a1, c1) = (
        tagged.activation_id().unwrap().to_owned(),
        tagged.activation_code().unwrap().to_owned(),
    );
    let (a2, c2) = create_activation(&client, &role, 3).await;
    let mut nodes = Vec::new();
    for (a, c) in [(&a1, &c1), (&a2, &c2)] {
        for _ in 0..3 {
            let id = register_node(ep.url(), a, c);
            heartbeat(ep.url(), &id).unwrap();
            nodes.push(id);
        }
    }

    // Paging: at least 5 a page.
    let e = client
        .describe_instance_information()
        .max_results(4)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let first = client
        .describe_instance_information()
        .max_results(5)
        .send()
        .await
        .unwrap();
    assert_eq!(first.instance_information_list().len(), 5);
    let all: Vec<String> = client
        .describe_instance_information()
        .max_results(5)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.instance_id().unwrap().to_owned())
        .collect();
    assert_eq!(all, nodes);

    // Both filter lists.
    let of_a1 = client
        .describe_instance_information()
        .instance_information_filter_list(
            InstanceInformationFilter::builder()
                .key(InstanceInformationFilterKey::ActivationIds)
                .value_set(&a1)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let list = of_a1.instance_information_list();
    assert_eq!(list.len(), 3);
    let info = &list[0];
    assert_eq!(info.instance_id(), Some(nodes[0].as_str()));
    assert_eq!(info.ping_status(), Some(&PingStatus::Online));
    assert_eq!(info.resource_type(), Some(&ResourceType::ManagedInstance));
    assert_eq!(info.activation_id(), Some(a1.as_str()));
    assert_eq!(info.iam_role(), Some(role.as_str()));
    assert_eq!(info.name(), Some("db"));
    assert_eq!(info.agent_version(), Some("3.3.0.0"));
    assert_eq!(info.ip_address(), Some("10.1.2.3"));
    assert_eq!(info.computer_name(), Some("node-1"));
    assert!(info.last_ping_date_time().is_some() && info.registration_date().is_some());
    let by_string_filter = client
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .values(&nodes[4])
                .values(&nodes[5])
                .build()
                .unwrap(),
        )
        .filters(
            InstanceInformationStringFilter::builder()
                .key("PingStatus")
                .values("Online")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_string_filter.instance_information_list().len(), 2);
    let lost = client
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("PingStatus")
                .values("ConnectionLost")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(lost.instance_information_list().is_empty());
    let ec2 = client
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("ResourceType")
                .values("EC2Instance")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(ec2.instance_information_list().is_empty());
    let e = client
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("Colour")
                .values("blue")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_filter_key(), "{e:?}");

    // Tags: the activation's, then added ones.
    let tags = client
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(&nodes[0])
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tag_list().len(), 1);
    assert_eq!(
        (tags.tag_list()[0].key(), tags.tag_list()[0].value()),
        ("tier", "data")
    );
    client
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(&nodes[0])
        .tags(Tag::builder().key("tier").value("cache").build().unwrap())
        .tags(Tag::builder().key("owner").value("me").build().unwrap())
        .send()
        .await
        .unwrap();
    let tags = client
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(&nodes[0])
        .send()
        .await
        .unwrap();
    let pairs: Vec<(&str, &str)> = tags
        .tag_list()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(pairs, [("tier", "cache"), ("owner", "me")]);
    let by_tag = client
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("tag:owner")
                .values("me")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_tag.instance_information_list().len(), 1);
    // The model has no Activation resource type for tagging.
    let e = client
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::from("Activation"))
        .resource_id(&a1)
        .tags(Tag::builder().key("k").value("v").build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id("mi-00000000000000000")
        .tags(Tag::builder().key("k").value("v").build().unwrap())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_resource_id(), "{e:?}");

    // Deregistering: gone, and its heartbeats refused.
    client
        .deregister_managed_instance()
        .instance_id(&nodes[0])
        .send()
        .await
        .expect("DeregisterManagedInstance");
    let left = client
        .describe_instance_information()
        .instance_information_filter_list(
            InstanceInformationFilter::builder()
                .key(InstanceInformationFilterKey::InstanceIds)
                .value_set(&nodes[0])
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(left.instance_information_list().is_empty());
    assert!(ep.ssm_node(&nodes[0]).is_none());
    assert_eq!(ep.ssm_nodes().len(), 5);
    let refused = heartbeat(ep.url(), &nodes[0]).unwrap_err();
    assert_eq!(refused.code, "InvalidInstanceId", "{refused}");
    assert!(ep.ssm_node(&nodes[0]).is_none());
    for bad in [nodes[0].as_str(), "i-0123456789abcdef0", "mi-123"] {
        let e = client
            .deregister_managed_instance()
            .instance_id(bad)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(e.is_invalid_instance_id(), "{bad}: {e:?}");
    }
    // Deleting an activation leaves its nodes registered, as on AWS.
    client
        .delete_activation()
        .activation_id(&a2)
        .send()
        .await
        .unwrap();
    assert_eq!(ep.ssm_nodes().len(), 5);
}
