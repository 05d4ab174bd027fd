use super::*;

fn w(manager: &str) -> Writer<'_> {
    Writer {
        manager,
        part: Part::Status,
        api_version: "v1",
        now: "t",
    }
}

/// The shape of an OpenAPI schema, written as a CRD's openAPIV3Schema.
fn shape(yaml: &str) -> Shape {
    let schema: Value = serde_norway::from_str(yaml).unwrap();
    Shape::from_openapi(&schema, "test").unwrap()
}

/// `status.nodes` keyed by `node`, as the policies' CRDs have it.
fn nodes() -> Shape {
    shape(
        "properties:
           status:
             properties:
               nodes:
                 type: array
                 x-kubernetes-list-type: map
                 x-kubernetes-list-map-keys: [node]
                 items: {type: object}",
    )
}

fn field_path(fields: &[&str]) -> Path {
    fields.iter().map(|f| Seg::Field(f.to_string())).collect()
}

#[test]
fn apply_owns_conflicts_and_removes() {
    let shape = nodes();
    let mut managers = Vec::new();
    let live = json!({});
    let a1 = json!({"status": {"nodes": [{"node": "n1", "n": 1}], "x": 1, "y": 2}});
    let v1 = apply(&mut managers, &live, &a1, &shape, false, &w("n1")).unwrap();
    assert_eq!(v1, a1);
    // Another node adds its own item: shared list, no conflict.
    let a2 = json!({"status": {"nodes": [{"node": "n2", "n": 5}]}});
    let v2 = apply(&mut managers, &v1, &a2, &shape, false, &w("n2")).unwrap();
    assert_eq!(v2["status"]["nodes"].as_array().unwrap().len(), 2);
    // n2 sets x to another value: conflict unless forced.
    let a3 = json!({"status": {"nodes": [{"node": "n2", "n": 6}], "x": 7}});
    let Err(ApplyError::Conflicts(conflicts)) =
        apply(&mut managers, &v2, &a3, &shape, false, &w("n2"))
    else {
        panic!("no conflict");
    };
    assert_eq!(describe(&conflicts[0].1), ".status.x");
    let v3 = apply(&mut managers, &v2, &a3, &shape, true, &w("n2")).unwrap();
    assert_eq!(v3["status"]["x"], 7);
    // n1 stops applying y and its item: both go; x is n2's now.
    let a4 = json!({});
    let v4 = apply(&mut managers, &v3, &a4, &shape, false, &w("n1")).unwrap();
    assert_eq!(
        v4,
        json!({"status": {"nodes": [{"node": "n2", "n": 6}], "x": 7}})
    );
    let fields = render(&managers);
    assert_eq!(fields.as_array().unwrap().len(), 1, "{fields}");
    assert!(fields[0]["fieldsV1"]["f:status"]["f:nodes"]["k:{\"node\":\"n2\"}"].is_object());
}

#[test]
fn update_takes_ownership() {
    let shape = Shape::default();
    let mut managers = Vec::new();
    let v1 = apply(
        &mut managers,
        &json!({}),
        &json!({"status": {"x": 1}}),
        &shape,
        false,
        &w("a"),
    )
    .unwrap();
    let v2 = json!({"status": {"x": 2}});
    record_update(&mut managers, &v1, &v2, &shape, &w("b"));
    assert_eq!(managers.len(), 1);
    assert_eq!(managers[0].name, "b");
    // a no longer owns x, so applying without it leaves it.
    let v3 = apply(
        &mut managers,
        &v2,
        &json!({"status": {"z": 1}}),
        &shape,
        false,
        &w("a"),
    )
    .unwrap();
    assert_eq!(v3, json!({"status": {"x": 2, "z": 1}}));
}

/// The keys are the schema's, whatever the fields are called: here two of
/// them, `port` and `protocol`, which no guess from field names would pick.
#[test]
fn list_map_keys_come_from_the_schema() {
    let shape = shape(
        "properties:
           status:
             properties:
               listeners:
                 type: array
                 x-kubernetes-list-type: map
                 x-kubernetes-list-map-keys: [port, protocol]
                 items: {type: object}",
    );
    let listeners = |items: Value| json!({"status": {"listeners": items}});
    let udp = json!({"port": 53, "protocol": "UDP", "by": "a"});
    let tcp = json!({"port": 53, "protocol": "TCP", "by": "b"});
    let mut managers = Vec::new();
    let v1 = apply(
        &mut managers,
        &json!({}),
        &listeners(json!([udp])),
        &shape,
        false,
        &w("a"),
    )
    .unwrap();
    // Same port, other protocol: another item, merged in beside a's.
    let v2 = apply(
        &mut managers,
        &v1,
        &listeners(json!([tcp])),
        &shape,
        false,
        &w("b"),
    )
    .unwrap();
    assert_eq!(v2, listeners(json!([udp, tcp])));
    // Both keys equal to a's item: a conflict on that item alone.
    let c = listeners(json!([{"port": 53, "protocol": "UDP", "by": "c"}]));
    let Err(ApplyError::Conflicts(conflicts)) =
        apply(&mut managers, &v2, &c, &shape, false, &w("c"))
    else {
        panic!("no conflict");
    };
    let described: Vec<(String, String)> = conflicts
        .iter()
        .map(|(m, p)| (m.clone(), describe(p)))
        .collect();
    assert_eq!(
        described,
        [(
            "a".to_string(),
            ".status.listeners[port=53,protocol=\"UDP\"]".to_string()
        )]
    );
    let fields = render(&managers);
    assert!(
        fields[0]["fieldsV1"]["f:status"]["f:listeners"]["k:{\"port\":53,\"protocol\":\"UDP\"}"]
            .is_object(),
        "{fields}"
    );
    // a stops applying: its item goes, b's stays.
    let v3 = apply(&mut managers, &v2, &json!({}), &shape, false, &w("a")).unwrap();
    assert_eq!(v3, listeners(json!([tcp])));
}

/// Without the marker a list is atomic, as on the real server, even when
/// its items have names: one field, so two managers conflict on it, and
/// the forced one replaces it whole.
#[test]
fn an_unmarked_list_is_atomic() {
    let shape = shape(
        "properties:
           spec:
             properties:
               rules:
                 type: array
                 items: {type: object, properties: {name: {type: string}}}",
    );
    let rules = |name: &str| json!({"spec": {"rules": [{"name": name, "action": "Accept"}]}});
    let mut managers = Vec::new();
    let v1 = apply(
        &mut managers,
        &json!({}),
        &rules("a"),
        &shape,
        false,
        &w("a"),
    )
    .unwrap();
    let conflict = apply(&mut managers, &v1, &rules("b"), &shape, false, &w("b"));
    assert_eq!(
        conflict,
        Err(ApplyError::Conflicts(vec![(
            "a".into(),
            field_path(&["spec", "rules"])
        )]))
    );
    let v2 = apply(&mut managers, &v1, &rules("b"), &shape, true, &w("b")).unwrap();
    assert_eq!(v2, rules("b"), "replaced, not merged by name");
    assert_eq!(managers.len(), 1, "a owns nothing any more");
    let fields = render(&managers);
    assert_eq!(fields[0]["fieldsV1"]["f:spec"]["f:rules"], json!({}));
}

#[test]
fn list_map_items_need_their_keys_once() {
    let shape = nodes();
    let mut managers = Vec::new();
    for items in [
        json!([{"n": 1}]),
        json!([{"node": {"not": "a scalar"}}]),
        json!([{"node": "a"}, {"node": "a"}]),
    ] {
        let applied = json!({"status": {"nodes": items}});
        let result = apply(&mut managers, &json!({}), &applied, &shape, false, &w("a"));
        assert!(
            matches!(result, Err(ApplyError::Invalid(_))),
            "{items}: {result:?}"
        );
    }
    assert!(managers.is_empty());
}
