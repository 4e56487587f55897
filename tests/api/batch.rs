//! The ScoreBatch stream: order, positions, inline errors, chunked messages, flow control.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use approx::assert_abs_diff_eq;
use cra::{
    bench::random_applications,
    grpc::{
        convert::validate,
        pb::{self, batch_result::Result as Item, ScoreBatchRequest},
    },
};
use tonic::Code;

use crate::helpers::{spawn_app, TestApp};

/// Streams `messages` and collects every response message.
async fn run_stream(
    app: &mut TestApp,
    messages: Vec<ScoreBatchRequest>,
) -> Vec<pb::ScoreBatchResponse> {
    let resp = app
        .client
        .score_batch(tokio_stream::iter(messages))
        .await
        .expect("stream accepted");
    let mut inbound = resp.into_inner();
    let mut out = Vec::new();
    while let Some(m) = inbound.message().await.expect("no stream error") {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn ten_thousand_items_with_a_few_bad_are_answered_in_order() {
    let mut app = spawn_app().await;
    let mut apps = random_applications(10_000, 3);
    let bad: Vec<usize> = vec![0, 17, 4_999, 5_000, 9_999];
    for (k, &i) in bad.iter().enumerate() {
        match k % 3 {
            0 => apps[i].age = 5,
            1 => apps[i].income = f64::NAN,
            _ => apps[i].loan_purpose = 77,
        }
    }
    // Messages of 1 to 37 applications, plus an empty one.
    let mut messages = Vec::new();
    let mut rest = apps.as_slice();
    let mut size = 1;
    while !rest.is_empty() {
        let take = size.min(rest.len());
        messages.push(ScoreBatchRequest {
            applications: rest[..take].to_vec(),
            explain: false,
        });
        rest = &rest[take..];
        size = size % 37 + 1;
        if messages.len() == 10 {
            messages.push(ScoreBatchRequest::default());
        }
    }
    let sizes: Vec<usize> = messages.iter().map(|m| m.applications.len()).collect();
    let responses = run_stream(&mut app, messages).await;

    assert_eq!(
        responses.len(),
        sizes.len(),
        "one response message per request message"
    );
    for (i, (r, n)) in responses.iter().zip(&sizes).enumerate() {
        assert_eq!(
            r.results.len(),
            *n,
            "response {i} holds its request's results"
        );
    }
    let results: Vec<&pb::BatchResult> = responses.iter().flat_map(|r| &r.results).collect();
    assert_eq!(results.len(), apps.len());
    for (i, (r, input)) in results.iter().zip(&apps).enumerate() {
        assert_eq!(r.position, i as u64);
        assert_eq!(r.application_id, input.application_id);
        match r.result.as_ref().expect("a result") {
            Item::Error(e) => {
                assert!(bad.contains(&i), "item {i} is valid but got {e:?}");
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert_eq!(e.field_violations.len(), 1);
                let field = &e.field_violations[0].field;
                assert!(
                    ["age", "income", "loan_purpose"].contains(&field.as_str()),
                    "{field}"
                );
            }
            Item::Score(s) => {
                assert!(!bad.contains(&i), "item {i} is invalid but was scored");
                let expected = app.bundle.score(&validate(input).unwrap());
                assert_abs_diff_eq!(
                    s.probability_default,
                    expected.probability_default,
                    epsilon = 1e-9
                );
                assert_eq!(s.application_id, input.application_id);
            }
        }
    }
    app.handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_empty_stream_ends_cleanly() {
    let mut app = spawn_app().await;
    assert!(run_stream(&mut app, Vec::new()).await.is_empty());
    let only_empty = run_stream(&mut app, vec![ScoreBatchRequest::default()]).await;
    assert_eq!(only_empty.len(), 1);
    assert!(only_empty[0].results.is_empty());
    app.handle.shutdown().await.unwrap();
}

/// A client that writes but never reads: the server must stop reading once its bounded
/// buffers and the HTTP/2 windows are full, so the client's writer stalls.
#[tokio::test]
async fn a_reader_that_does_not_read_stalls_the_writer() {
    let mut app = spawn_app().await;
    let chunk = random_applications(1_000, 5);
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    // Up to 100,000 messages (100 million applications) if nothing pushed back.
    let outbound = futures::stream::iter(0..100_000u64).map(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        ScoreBatchRequest {
            applications: chunk.clone(),
            explain: false,
        }
    });
    let resp = app
        .client
        .score_batch(outbound)
        .await
        .expect("stream accepted");
    // Wait until the writer has stood still for a full second (at most 30 s).
    let mut last = u64::MAX;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pulled.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let taken = pulled.load(Ordering::Relaxed);
    assert_eq!(taken, last, "writer must be stalled, not merely slow");
    assert!(
        taken < 1_000,
        "writer was never pushed back: {taken} messages taken"
    );
    drop(resp);
    app.handle.shutdown().await.unwrap();
}

use futures::StreamExt as _;

/// 1,000,000 applications in one stream get 1,000,000 answers. Slow in a debug build, so run
/// it with `cargo test --release --test api -- --ignored`.
#[tokio::test]
#[ignore = "slow in debug builds; run with --release -- --ignored"]
async fn one_million_items_get_one_million_answers() {
    let mut app = spawn_app().await;
    let chunk = random_applications(1_000, 9);
    let outbound = futures::stream::iter(0..1_000).map(move |_| ScoreBatchRequest {
        applications: chunk.clone(),
        explain: false,
    });
    let mut inbound = app.client.score_batch(outbound).await.unwrap().into_inner();
    let mut next = 0u64;
    while let Some(m) = inbound.message().await.unwrap() {
        for r in m.results {
            assert_eq!(r.position, next);
            assert!(matches!(r.result, Some(Item::Score(_))));
            next += 1;
        }
    }
    assert_eq!(next, 1_000_000);
    app.handle.shutdown().await.unwrap();
}
