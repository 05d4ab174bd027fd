//! The fake API server (testbed::apiserver) driven by the real kube-rs
//! client: list/watch semantics, bookmarks, 410 Gone and relist, status by
//! server-side apply, generation, selectors, restarts, optimistic concurrency,
//! and deploy/ applied client-side then server-side.
//! No root needed.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, Config, CustomResource, Discovery, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        events::{Event as Note, EventType, Recorder, Reporter},
        watcher::{self, Event},
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use testbed::apiserver::{ApiServer, Options, RESOURCES, resources};

/// A stand-in for the agent's policy kind: the same group, version, kind
/// and scope, with just enough fields to tell spec from status.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "mirror.packets.dev",
    version = "v1alpha1",
    kind = "MirrorPolicy",
    namespaced,
    status = "PolicyStatus"
)]
pub struct PolicySpec {
    snaplen: u32,
    collector: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeCounters>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct NodeCounters {
    node: String,
    mirrored: u64,
}

/// The cluster-scoped collector kind, as small.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "mirror.packets.dev",
    version = "v1alpha1",
    kind = "MirrorCollector"
)]
pub struct CollectorSpec {
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vni: Option<u32>,
}

const STEP: Duration = Duration::from_secs(4);

fn client(server: &ApiServer) -> Client {
    let config = Config::new(server.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": "198.18.0.10"},
    })
}

fn policy(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "mirror.packets.dev/v1alpha1",
        "kind": "MirrorPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"snaplen": 0, "collector": "c1"},
    })
}

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    items.iter().map(ResourceExt::name_any).collect()
}

/// The next item of a stream, failing the test after [`STEP`].
async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(STEP, stream.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

/// The next raw watch event that is not a bookmark.
async fn next_change<K, S>(stream: &mut S) -> WatchEvent<K>
where
    S: Stream<Item = kube::Result<WatchEvent<K>>> + Unpin,
{
    loop {
        match next(stream).await.unwrap() {
            WatchEvent::Bookmark(_) => continue,
            other => return other,
        }
    }
}

/// Watcher events up to and including the end of the next initial list;
/// returns the names listed and the errors seen on the way.
async fn until_init_done<K, S>(stream: &mut S) -> (Vec<String>, Vec<watcher::Error>)
where
    K: ResourceExt,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let (mut listed, mut errors) = (Vec::new(), Vec::new());
    loop {
        match next(stream).await {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(o)) => listed.push(o.name_any()),
            Ok(Event::InitDone) => return (listed, errors),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
}

fn rv_of<K: ResourceExt>(o: &K) -> u64 {
    o.resource_version().unwrap().parse().unwrap()
}

#[tokio::test]
async fn list_and_watch_see_changes_in_order() {
    let server = ApiServer::start().unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns1");
    let mut a = pod("ns1", "a", "node-a");
    a["metadata"]["uid"] = json!("0b6e1f3c-2d4a-4c5e-8f90-123456789abc");
    let a = server.create(a).unwrap();
    assert_eq!(
        a["metadata"]["uid"], "0b6e1f3c-2d4a-4c5e-8f90-123456789abc",
        "a test may choose the uid"
    );
    assert_eq!(a["status"]["podIP"], "198.18.0.10", "and the status");

    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["a"]);
    let list_rv = list.metadata.resource_version.unwrap();
    assert_eq!(list_rv, server.resource_version().to_string());

    let mut stream = pods
        .watch(&WatchParams::default(), &list_rv)
        .await
        .unwrap()
        .boxed();
    let b: Pod = serde_json::from_value(pod("ns1", "b", "node-a")).unwrap();
    let created = pods.create(&PostParams::default(), &b).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    // Another namespace: not this watch's business.
    server.create(pod("ns2", "x", "node-a")).unwrap();
    server
        .merge_patch(
            "v1",
            "Pod",
            Some("ns1"),
            "b",
            json!({"metadata": {"labels": {"k": "v"}}}),
        )
        .unwrap();
    pods.delete("b", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next_change(&mut stream).await {
            WatchEvent::Added(p) => ("ADDED", rv_of(&p), p),
            WatchEvent::Modified(p) => ("MODIFIED", rv_of(&p), p),
            WatchEvent::Deleted(p) => ("DELETED", rv_of(&p), p),
            other => panic!("unexpected {other:?}"),
        });
    }
    let kinds: Vec<&str> = seen.iter().map(|s| s.0).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert!(seen.iter().all(|s| s.2.name_any() == "b"));
    assert_eq!(seen[1].2.labels().get("k").map(String::as_str), Some("v"));
    let rvs: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert!(
        rvs[0] > list_rv.parse().unwrap() && rvs.is_sorted(),
        "{rvs:?}"
    );
    assert!(server.get("v1", "Pod", Some("ns1"), "b").is_none());
    assert!(server.count(|r| r.verb == "watch" && r.resource.as_deref() == Some("pods")) >= 1);
}

#[tokio::test]
async fn bookmarks_arrive() {
    let server = ApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns1");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    server.create(pod("ns1", "a", "node-a")).unwrap();
    let WatchEvent::Added(a) = next(&mut stream).await.unwrap() else {
        panic!("first event is not ADDED");
    };
    let WatchEvent::Bookmark(bookmark) = next(&mut stream).await.unwrap() else {
        panic!("no bookmark after the change");
    };
    assert_eq!(bookmark.types.kind, "Pod");
    assert_eq!(
        bookmark.metadata.resource_version,
        a.resource_version().unwrap()
    );

    // Without allowWatchBookmarks there are none.
    let quiet = WatchParams::default().disable_bookmarks();
    let mut stream = pods.watch(&quiet, &rv).await.unwrap().boxed();
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        WatchEvent::Added(_)
    ));
    let more = tokio::time::timeout(Duration::from_millis(400), stream.next()).await;
    assert!(
        more.is_err(),
        "an event without bookmarks asked for: {more:?}"
    );
}

#[tokio::test]
async fn lists_page_and_watches_time_out() {
    let server = ApiServer::start().unwrap();
    for name in ["a", "b", "c"] {
        server.create(pod("ns1", name, "node-a")).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns1");
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    server.create(pod("ns1", "d", "node-a")).unwrap();
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&rest.items), ["c", "d"]);
    assert_eq!(
        rest.metadata.resource_version, first.metadata.resource_version,
        "pages share the first page's resourceVersion"
    );
    assert!(rest.metadata.continue_.is_none_or(|c| c.is_empty()));
    // A watcher in pages of one sees them all.
    let config = watcher::Config::default().page_size(1);
    let mut events = watcher::watcher(pods.clone(), config).boxed();
    let (listed, _) = until_init_done(&mut events).await;
    assert_eq!(listed, ["a", "b", "c", "d"]);

    let rv = first.metadata.resource_version.unwrap();
    let started = std::time::Instant::now();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next(&mut stream).await.unwrap(), WatchEvent::Added(d) if d.name_any() == "d")
    );
    let end = tokio::time::timeout(STEP, stream.next()).await.unwrap();
    assert!(end.is_none(), "the watch did not end: {end:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn compaction_gives_410_and_the_watcher_relists() {
    let server = ApiServer::start().unwrap();
    let policies: Api<MirrorPolicy> = Api::namespaced(client(&server), "team-a");
    server.create(policy("team-a", "p1")).unwrap();
    let old_rv = server.resource_version().to_string();

    let mut events = watcher(policies.clone()).boxed();
    let (listed, _) = until_init_done(&mut events).await;
    assert_eq!(listed, ["p1"]);
    // The watch is open once it has carried a change.
    server.create(policy("team-a", "p2")).unwrap();
    until_applied(&mut events, "p2").await;
    let lists_before = server.count(|r| r.verb == "list");

    // The open watch is told 410 and ends; the watcher lists again.
    server.compact();
    server.create(policy("team-a", "p3")).unwrap();
    let (listed, errors) = until_init_done(&mut events).await;
    assert_eq!(listed, ["p1", "p2", "p3"], "the relist has everything");
    let gone = errors.iter().any(
        |e| matches!(e, watcher::Error::WatchError(s) if s.code == 410 && s.reason == "Expired"),
    );
    assert!(gone, "the watcher saw no 410: {errors:?}");
    // One watch in all: the 410 came on the open one, which the relist replaces.
    assert_eq!(server.count(|r| r.verb == "watch"), 1);
    assert_eq!(server.expired_watches(), 1);
    assert!(server.count(|r| r.verb == "list") > lists_before);

    // A new watch from before the compaction is told 410 at once.
    let mut stream = policies
        .watch(&WatchParams::default(), &old_rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

fn watcher<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
}

fn status_apply(conditions: Value, node: &str, mirrored: u64) -> Patch<Value> {
    Patch::Apply(json!({
        "apiVersion": "mirror.packets.dev/v1alpha1",
        "kind": "MirrorPolicy",
        "status": {"conditions": conditions, "nodes": [{"node": node, "mirrored": mirrored}]},
    }))
}

#[tokio::test]
async fn status_by_server_side_apply_and_generation() {
    let server = ApiServer::start().unwrap();
    let api: Api<MirrorPolicy> = Api::namespaced(client(&server), "team-a");
    let mut p = MirrorPolicy::new(
        "p",
        PolicySpec {
            snaplen: 0,
            collector: "c1".into(),
        },
    );
    p.status = Some(PolicyStatus::default());
    let created = api.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let accepted = json!([{"type": "Accepted", "status": "True", "reason": "Valid"}]);
    let a = api
        .patch_status(
            "p",
            &PatchParams::apply("agent-node-a"),
            &status_apply(accepted.clone(), "node-a", 5),
        )
        .await
        .unwrap();
    assert_eq!(
        a.metadata.generation,
        Some(1),
        "a status write is no new generation"
    );
    assert_eq!(a.spec.snaplen, 0);
    let b = api
        .patch_status(
            "p",
            &PatchParams::apply("agent-node-b"),
            &status_apply(accepted.clone(), "node-b", 7),
        )
        .await
        .unwrap();
    let nodes = b.status.as_ref().unwrap().nodes.clone();
    assert_eq!(
        nodes,
        [
            NodeCounters {
                node: "node-a".into(),
                mirrored: 5
            },
            NodeCounters {
                node: "node-b".into(),
                mirrored: 7
            },
        ],
        "each node's manager owns its own item"
    );
    let managers: Vec<(String, Option<String>, Option<String>)> = b
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap(),
                m.operation.clone(),
                m.subresource.clone(),
            )
        })
        .filter(|m| m.0.starts_with("agent-"))
        .collect();
    assert_eq!(
        managers,
        [
            (
                "agent-node-a".into(),
                Some("Apply".into()),
                Some("status".into())
            ),
            (
                "agent-node-b".into(),
                Some("Apply".into()),
                Some("status".into())
            ),
        ]
    );

    // The same apply again changes nothing: no new resourceVersion.
    let again = api
        .patch_status(
            "p",
            &PatchParams::apply("agent-node-b"),
            &status_apply(accepted, "node-b", 7),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), b.resource_version());

    // Node b disagreeing on a condition node a also set: a conflict, unless forced.
    let refused = json!([{"type": "Accepted", "status": "False", "reason": "CollectorNotAllowed"}]);
    let err = api
        .patch_status(
            "p",
            &PatchParams::apply("agent-node-b"),
            &status_apply(refused.clone(), "node-b", 8),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    let forced = api
        .patch_status(
            "p",
            &PatchParams::apply("agent-node-b").force(),
            &status_apply(refused, "node-b", 8),
        )
        .await
        .unwrap();
    assert_eq!(
        forced.status.as_ref().unwrap().conditions[0].status,
        "False"
    );

    // Spec by merge patch: a new generation, status untouched.
    let spec = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"snaplen": 128}})),
        )
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(spec.spec.snaplen, 128);
    assert_eq!(spec.status.as_ref().unwrap().nodes.len(), 2);
    // Status through the object itself is ignored, as with a status subresource.
    let ignored = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodes": []}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status.as_ref().unwrap().nodes.len(), 2);
    assert_eq!(ignored.resource_version(), spec.resource_version());

    let stored = server
        .get(
            "mirror.packets.dev/v1alpha1",
            "MirrorPolicy",
            Some("team-a"),
            "p",
        )
        .unwrap();
    assert_eq!(stored["status"]["nodes"][1]["mirrored"], 8);
    assert_eq!(server.count(|r| r.is_status_write("mirrorpolicies")), 5);
    assert_eq!(
        server.count(|r| r.is_status_write("mirrorpolicies")
            && r.field_manager.as_deref() == Some("agent-node-a")),
        1
    );
}

#[tokio::test]
async fn apply_creates_and_removes_what_it_stops_applying() {
    let server = ApiServer::start().unwrap();
    let api: Api<MirrorCollector> = Api::all(client(&server));
    let apply = |spec: Value| {
        Patch::Apply(json!({
            "apiVersion": "mirror.packets.dev/v1alpha1",
            "kind": "MirrorCollector",
            "metadata": {"name": "c1"},
            "spec": spec,
        }))
    };
    let params = PatchParams::apply("admin");
    let created = api
        .patch(
            "c1",
            &params,
            &apply(json!({"address": "198.18.0.1", "vni": 7})),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.vni, Some(7));
    assert!(created.metadata.namespace.is_none());
    let applied = api
        .patch("c1", &params, &apply(json!({"address": "198.18.0.1"})))
        .await
        .unwrap();
    assert_eq!(
        applied.spec.vni, None,
        "a field no longer applied is removed"
    );
    assert_eq!(applied.metadata.generation, Some(2));
    // Without a field manager, an apply is refused.
    let err = api
        .patch(
            "c1",
            &PatchParams::default(),
            &apply(json!({"address": "x"})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400),
        "{err:?}"
    );
    // Strategic merge patch is for built-in kinds only.
    let err = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"vni": 1}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 415),
        "{err:?}"
    );
}

#[tokio::test]
async fn field_selector_on_node_name() {
    let server = ApiServer::start().unwrap();
    for (ns, name, node) in [
        ("ns1", "a", "node-a"),
        ("ns2", "b", "node-a"),
        ("ns1", "c", "node-b"),
    ] {
        server.create(pod(ns, name, node)).unwrap();
    }
    let mut unscheduled = pod("ns1", "d", "");
    unscheduled["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeName");
    server.create(unscheduled).unwrap();
    let all: Api<Pod> = Api::all(client(&server));

    let on_a = all
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(names(&on_a.items), ["a", "b"]);
    let in_ns2 = ListParams::default().fields("spec.nodeName=node-a,metadata.namespace=ns2");
    assert_eq!(names(&all.list(&in_ns2).await.unwrap().items), ["b"]);
    let none = ListParams::default().fields("spec.nodeName=");
    assert_eq!(names(&all.list(&none).await.unwrap().items), ["d"]);
    let labelled = ListParams::default()
        .labels("app=web,app notin (db)")
        .fields("metadata.name!=a");
    // Sorted by namespace, then name.
    assert_eq!(
        names(&all.list(&labelled).await.unwrap().items),
        ["c", "d", "b"]
    );

    let config = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watcher::watcher(all.clone(), config).boxed();
    let (listed, _) = until_init_done(&mut events).await;
    assert_eq!(listed, ["a", "b"]);
    server.create(pod("ns1", "e", "node-b")).unwrap();
    server.create(pod("ns1", "f", "node-a")).unwrap();
    match next(&mut events).await.unwrap() {
        Event::Apply(p) => assert_eq!(p.name_any(), "f"),
        other => panic!("expected f, got {other:?}"),
    }
    // Leaving the selector reads as a deletion.
    server
        .merge_patch(
            "v1",
            "Pod",
            Some("ns1"),
            "f",
            json!({"spec": {"nodeName": "node-b"}}),
        )
        .unwrap();
    match next(&mut events).await.unwrap() {
        Event::Delete(p) => assert_eq!(p.name_any(), "f"),
        other => panic!("expected f deleted, got {other:?}"),
    }
}

/// Polls a stream on its own task, so it runs while the test waits on
/// something else (a watcher left alone does not notice a cut).
fn drive<T: Send + 'static>(
    mut stream: impl Stream<Item = T> + Send + Unpin + 'static,
) -> impl Stream<Item = T> + Unpin {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// Waits for the watcher to show `name`, collecting the errors on the way.
async fn until_applied<K, S>(stream: &mut S, name: &str) -> Vec<watcher::Error>
where
    K: ResourceExt,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    let mut errors = Vec::new();
    loop {
        match next(stream).await {
            Ok(Event::Apply(o) | Event::InitApply(o)) if o.name_any() == name => return errors,
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
}

#[tokio::test]
async fn restart_mid_watch_and_the_watcher_recovers() {
    let server = ApiServer::start().unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns1");
    server.create(pod("ns1", "before", "node-a")).unwrap();
    let mut events = drive(watcher(pods.clone()).default_backoff().boxed());
    let (listed, _) = until_init_done(&mut events).await;
    assert_eq!(listed, ["before"]);
    // The watch is open once it has carried a change.
    server.create(pod("ns1", "during", "node-a")).unwrap();
    until_applied(&mut events, "during").await;
    let watches = || server.count(|r| r.verb == "watch");
    assert_eq!(watches(), 1);

    let addr = server.addr();
    let refused = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::net::TcpStream::connect(addr).await.is_err()
    };
    let (restarted, refused) =
        tokio::join!(server.restart_async(Duration::from_millis(300)), refused);
    restarted.unwrap();
    assert!(refused, "connections are refused while the server is down");
    assert_eq!(server.addr(), addr);

    server.create(pod("ns1", "after", "node-a")).unwrap();
    let errors = until_applied(&mut events, "after").await;
    assert!(!errors.is_empty(), "the watcher did not notice the restart");
    assert!(watches() >= 2, "the watcher did not watch again");
    // Same state after the restart.
    let listed = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&listed.items), ["after", "before", "during"]);
}

#[tokio::test]
async fn stale_replace_is_a_conflict() {
    let server = ApiServer::start().unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server), "ns1");
    server.create(pod("ns1", "a", "node-a")).unwrap();
    let mut stale = pods.get("a").await.unwrap();
    server
        .merge_patch(
            "v1",
            "Pod",
            Some("ns1"),
            "a",
            json!({"metadata": {"labels": {"k": "1"}}}),
        )
        .unwrap();
    stale.labels_mut().insert("k".into(), "2".into());
    let err = pods
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    let mut fresh = pods.get("a").await.unwrap();
    fresh.labels_mut().insert("k".into(), "2".into());
    let replaced = pods
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.labels()["k"], "2");
    assert_ne!(replaced.resource_version(), fresh.resource_version());
    assert_eq!(
        replaced.metadata.generation,
        Some(1),
        "labels are no new generation"
    );

    // Creating it again is a conflict of another kind.
    let err = pods
        .create(&PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );
    let err = pods.get("nope").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );
}

#[tokio::test]
async fn kubeconfig_discovery_and_events() {
    let server = ApiServer::start().unwrap();
    let file = server.kubeconfig_file().unwrap();
    let kubeconfig = Kubeconfig::read_from(file.path()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();

    server
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        names(&namespaces.list(&ListParams::default()).await.unwrap().items),
        ["team-a"]
    );

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let group = discovery
        .get("mirror.packets.dev")
        .expect("our group is discovered");
    let mut kinds: Vec<String> = group
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["ClusterMirrorPolicy", "MirrorCollector", "MirrorPolicy"]
    );
    assert!(
        discovery
            .get("")
            .is_some_and(|core| core.recommended_kind("Pod").is_some())
    );

    // Events, as the agent reports errors: created, then patched as a series.
    let p = server.create(policy("team-a", "p")).unwrap();
    let p: MirrorPolicy = serde_json::from_value(p).unwrap();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "mirror-agent".into(),
            instance: Some("node-a".into()),
        },
    );
    let note = Note {
        type_: EventType::Warning,
        reason: "CollectorNotAllowed".into(),
        note: Some("collector c1 does not admit namespace team-a".into()),
        action: "Accept".into(),
        secondary: None,
    };
    recorder.publish(&note, &p.object_ref(&())).await.unwrap();
    recorder.publish(&note, &p.object_ref(&())).await.unwrap();
    let events = server.list("events.k8s.io/v1", "Event", Some("team-a"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "CollectorNotAllowed");
    assert_eq!(events[0]["series"]["count"], 2);
}

/// The documents `kubectl apply -k deploy/` applies: those of every file its
/// kustomization lists, in order.
fn deploy_documents() -> Vec<Value> {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let read = |file: &str| std::fs::read_to_string(format!("{deploy}/{file}")).unwrap();
    let kustomization: Value = serde_norway::from_str(&read("kustomization.yaml")).unwrap();
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().expect("resources") {
        let text = read(file.as_str().expect("a file name"));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap();
            if !doc.is_null() {
                docs.push(doc);
            }
        }
    }
    docs
}

fn kind_and_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap(),
        doc["metadata"]["name"].as_str().unwrap()
    )
}

/// The API of the document's kind (as the fake serves it), in its namespace.
fn api_for(client: &Client, doc: &Value) -> Api<DynamicObject> {
    let (api_version, kind) = (
        doc["apiVersion"].as_str().unwrap(),
        doc["kind"].as_str().unwrap(),
    );
    let at = resources::by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("the fake serves no {api_version} {kind}"));
    let res = &RESOURCES[at];
    let gvk = GroupVersionKind::gvk(res.group, res.version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, res.plural);
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// `kubectl apply` of `docs` on an empty cluster (a create by
/// `kubectl-client-side-apply`, with the last-applied annotation), then
/// `kubectl apply --server-side` (an apply by `kubectl`, not forced). The
/// server-side applies refused, by kind/name.
async fn apply_client_side_then_server_side(
    server: &ApiServer,
    docs: &[Value],
) -> Vec<(String, kube::Error)> {
    let client = client(server);
    for doc in docs {
        let mut obj = doc.clone();
        obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!(doc.to_string());
        let obj: DynamicObject = serde_json::from_value(obj).unwrap();
        let pp = PostParams {
            field_manager: Some("kubectl-client-side-apply".into()),
            ..PostParams::default()
        };
        if let Err(e) = api_for(&client, doc).create(&pp, &obj).await {
            panic!("client-side apply of {}: {e}", kind_and_name(doc));
        }
    }
    let mut refused = Vec::new();
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let applied = api_for(&client, doc)
            .patch(name, &PatchParams::apply("kubectl"), &Patch::Apply(doc))
            .await;
        if let Err(e) = applied {
            refused.push((kind_and_name(doc), e));
        }
    }
    refused
}

/// Removes `apiVersion` from every `fieldRef` below `value`; how many.
fn unstate_field_ref_versions(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => map
            .iter_mut()
            .map(|(key, child)| {
                let here = usize::from(
                    key == "fieldRef"
                        && child
                            .as_object_mut()
                            .is_some_and(|f| f.remove("apiVersion").is_some()),
                );
                here + unstate_field_ref_versions(child)
            })
            .sum(),
        Value::Array(items) => items.iter_mut().map(unstate_field_ref_versions).sum(),
        _ => 0,
    }
}

/// `kubectl apply -k deploy/` then `kubectl apply --server-side -k
/// deploy/` conflicts on nothing, as deploy/ states what the server
/// defaults. The check bites: with each `fieldRef.apiVersion` left out (as
/// deploy/ once had them), the server defaults them at the client-side
/// apply, so the server-side apply of the workloads holding them changes a
/// field kubectl-client-side-apply owns, and conflicts, as on a real
/// server.
#[tokio::test]
async fn deploy_applies_server_side_after_client_side() {
    let docs = deploy_documents();
    assert!(docs.len() > 10, "{} documents in deploy/", docs.len());
    let server = ApiServer::start().unwrap();
    let refused = apply_client_side_then_server_side(&server, &docs).await;
    assert!(refused.is_empty(), "{refused:#?}");

    let mut unstated = docs.clone();
    let mut holding: Vec<String> = unstated
        .iter_mut()
        .filter_map(|d| (unstate_field_ref_versions(d) > 0).then(|| kind_and_name(d)))
        .collect();
    assert!(
        holding.iter().any(|h| h == "DaemonSet/mirror-agent"),
        "{holding:?}"
    );
    let server = ApiServer::start().unwrap();
    let refused = apply_client_side_then_server_side(&server, &unstated).await;
    for (what, e) in &refused {
        assert!(
            matches!(e, kube::Error::Api(s) if s.code == 409
                && s.message.contains("conflict with \"kubectl-client-side-apply\"")),
            "{what}: {e}"
        );
    }
    let mut conflicted: Vec<String> = refused.into_iter().map(|(what, _)| what).collect();
    conflicted.sort();
    holding.sort();
    assert_eq!(conflicted, holding);
    let daemonset = server
        .get(
            "apps/v1",
            "DaemonSet",
            Some("mirror-system"),
            "mirror-agent",
        )
        .expect("created");
    let env = &daemonset["spec"]["template"]["spec"]["containers"][0]["env"];
    let defaulted = env
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.pointer("/valueFrom/fieldRef/apiVersion"))
        .collect::<Vec<_>>();
    assert!(
        !defaulted.is_empty() && defaulted.iter().all(|v| *v == "v1"),
        "the server defaulted fieldRef.apiVersion: {env:#}"
    );
}
