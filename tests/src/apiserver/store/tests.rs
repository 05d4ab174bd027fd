use super::*;

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "n"},
           "spec": {"nodeName": "a"}, "status": {"phase": "Running"}})
}

#[test]
fn history_window_and_compaction() {
    let mut s = Store::new(2, Schemas::load().unwrap());
    for i in 0..4 {
        s.create(0, Some("n"), pod(&format!("p{i}")), Target::Raw, "t", None)
            .unwrap();
    }
    // rv 2..=5 were the creates; only the last two are kept.
    assert!(s.since(2).is_err());
    assert_eq!(s.since(3).unwrap().count(), 2);
    s.compact();
    assert_eq!(s.since(5).err().map(|e| e.code), Some(410));
    assert_eq!(s.since(s.resource_version()).unwrap().count(), 0);
}

#[test]
fn generation_status_and_noop() {
    let mut s = Store::new(10, Schemas::load().unwrap());
    let key = Key::new(0, Some("n"), "p");
    let created = s
        .create(0, Some("n"), pod("p"), Target::Main, "t", None)
        .unwrap();
    assert!(
        created.get("status").is_none(),
        "create does not set status"
    );
    let patched = s
        .patch(
            &key,
            Target::Status,
            PatchBody::Merge(json!({"status": {"phase": "Running"}})),
            "k",
        )
        .unwrap()
        .0;
    assert_eq!(patched["metadata"]["generation"], 1);
    let rv = s.resource_version();
    s.patch(
        &key,
        Target::Status,
        PatchBody::Merge(json!({"status": {"phase": "Running"}})),
        "k",
    )
    .unwrap();
    assert_eq!(s.resource_version(), rv, "a no-op write is no write");
    let spec = s
        .patch(
            &key,
            Target::Main,
            PatchBody::Merge(json!({"spec": {"nodeName": "b"}, "status": null})),
            "k",
        )
        .unwrap()
        .0;
    assert_eq!(spec["metadata"]["generation"], 2);
    assert_eq!(
        spec["status"]["phase"], "Running",
        "status kept by a write to the object"
    );
}

#[test]
fn timestamp() {
    let t = now();
    assert_eq!(t.len(), 20, "{t}");
    assert!(t.starts_with("20") && t.ends_with('Z'));
}
