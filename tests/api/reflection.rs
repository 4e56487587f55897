//! Server reflection in both protocol versions lists the scoring and health services.
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::spawn_app;

const EXPECTED: [&str; 2] = ["creditrisk.v1.CreditRiskService", "grpc.health.v1.Health"];

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    let app = spawn_app().await;

    let mut c1 = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = c1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = answers.message().await.unwrap().expect("an answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        msg.message_response
    else {
        panic!("unexpected v1 answer: {msg:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in EXPECTED {
        assert!(names.iter().any(|n| n == s), "v1 lists {s}: {names:?}");
    }

    let mut c2 =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "creditrisk.v1.CreditRiskService".into(),
            ),
        ),
    };
    let mut answers = c2
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let msg = answers.message().await.unwrap().expect("an answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(fd)) =
        msg.message_response
    else {
        panic!("unexpected v1alpha answer: {msg:?}");
    };
    assert!(!fd.file_descriptor_proto.is_empty());
    app.handle.shutdown().await.unwrap();
}
