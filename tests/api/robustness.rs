//! Deadlines and load shedding.
use std::time::Duration;

use cra::contract::pb::{ScoreBatchRequest, ScoreRequest};
use tonic::{Code, Request};

use crate::helpers::{config, example, spawn_app, spawn_app_with};

#[tokio::test]
async fn an_exceeded_deadline_is_deadline_exceeded() {
    // The server's own cap (--request-timeout) shorter than any scoring: always exceeded.
    let mut cfg = config();
    cfg.request_timeout = Duration::from_nanos(1);
    let mut app = spawn_app_with(cfg, |b| b).await;
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(example()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    app.handle.shutdown().await.unwrap();

    // A client deadline of 1 ns: the call ends in an error, never a score. Which side notices
    // first is a race: the server answers DEADLINE_EXCEEDED, tonic's client reports CANCELLED.
    let mut app = spawn_app().await;
    let mut req = Request::new(ScoreRequest {
        application: Some(example()),
    });
    req.set_timeout(Duration::from_nanos(1));
    let status = app.client.score(req).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    // A generous deadline is met.
    let mut req = Request::new(ScoreRequest {
        application: Some(example()),
    });
    req.set_timeout(Duration::from_secs(5));
    app.client.score(req).await.expect("met deadline");
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let mut app = spawn_app().await;
    // The client opens the stream but sends nothing for longer than its 200 ms deadline.
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_millis(200));
    let mut inbound = app.client.score_batch(req).await.unwrap().into_inner();
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("answered within 10 s")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_beyond_the_limit_are_shed_with_resource_exhausted() {
    let mut cfg = config();
    cfg.max_concurrent_requests = 1;
    let mut app = spawn_app_with(cfg, |b| b).await;
    app.wait_ready().await;

    // An open stream holds the only slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreBatchRequest>(1);
    let held = app
        .client
        .score_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the stream takes the slot");
    let status = app
        .client
        .score(ScoreRequest {
            application: Some(example()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Once the stream ends the slot is free again.
    drop(tx);
    let mut inbound = held.into_inner();
    while inbound.message().await.unwrap().is_some() {}
    let mut ok = false;
    for _ in 0..100 {
        let r = app
            .client
            .score(ScoreRequest {
                application: Some(example()),
            })
            .await;
        if r.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the slot was released");
    app.handle.shutdown().await.unwrap();
}
