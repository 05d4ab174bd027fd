//! `mirror-agent webhook` over real HTTPS: the fake API server holds the
//! namespaces, MirrorPolicies and MirrorCollectors; a plain rustls client
//! posts `AdmissionReview`s as kube-apiserver does and reads the answers
//! with kube's admission types. Every patched pod is the patch applied by
//! json-patch and must pass `kubernetes-validate --strict` for Kubernetes
//! 1.34, the version whose types the agent is built with.

use std::{net::IpAddr, path::Path, process::Stdio, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::core::{
    DynamicObject,
    admission::{AdmissionResponse, AdmissionReview},
};
use rustls::ClientConfig;
use serde_json::{Value, json};
use testbed::{
    agent::{self, Agent},
    apiserver::ApiServer,
    capture::{self, Dir, Frame},
    collector::Collector,
    http,
    netns::Netns,
    pki::Pki,
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    webhook::{self, Webhook},
};

const MIRROR: &str = "mirror.packets.dev/v1alpha1";
const SIDECAR: &str = "mirror.packets.dev/sidecar";

/// The cluster the webhook reads: `shop` opted in by its label, `plain`
/// not; collector `lab` admits both, `private` neither; `secure` is TLS.
fn cluster() -> ApiServer {
    let api = ApiServer::start().expect("fake API server");
    let namespace = |name: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}})
    };
    let collector = |name: &str, team: &str| {
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector",
               "metadata": {"name": name},
               "spec": {"protocol": "vxlan", "address": "198.18.0.1", "vni": 42,
                        "allowedNamespaces": {"matchLabels": {"team": team}}}})
    };
    let policy = |ns: &str, name: &str, app: &str, collector: &str| {
        json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
               "metadata": {"name": name, "namespace": ns},
               "spec": {"podSelector": {"matchLabels": {"app": app}},
                        "collectorRef": {"name": collector}, "direction": "Both"}})
    };
    for obj in [
        namespace("shop", json!({"team": "mirrored", SIDECAR: "enabled"})),
        namespace("plain", json!({"team": "mirrored"})),
        namespace("kube-system", json!({SIDECAR: "enabled"})),
        namespace("mirror-system", json!({SIDECAR: "enabled"})),
        collector("lab", "mirrored"),
        collector("private", "someone-else"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector",
               "metadata": {"name": "secure"},
               "spec": {"protocol": "tls", "address": "198.18.0.1", "port": 7443,
                        "tls": {"secretName": "secure-client", "serverName": "collector.test"},
                        "allowedNamespaces": {"matchLabels": {"team": "mirrored"}}}}),
        policy("shop", "web", "web", "lab"),
        policy("shop", "sealed", "sealed", "secure"),
        policy("shop", "vault", "vault", "private"),
        policy("plain", "plain-web", "web", "lab"),
        policy("kube-system", "dns", "web", "lab"),
    ] {
        api.create(obj).expect("object");
    }
    api
}

/// A pod as a user writes it.
fn pod(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"nodeName": "node-a",
                    "containers": [{"name": "app", "image": "registry.test/app:1"}]}})
}

fn annotated(mut pod: Value, annotations: Value) -> Value {
    pod["metadata"]["annotations"] = annotations;
    pod
}

/// The webhook's answer to the creation of `pod`.
struct Answer {
    response: AdmissionResponse,
    /// The pod with the patch applied (the pod itself if none).
    patched: Value,
}

impl Answer {
    fn warnings(&self) -> Vec<String> {
        self.response.warnings.clone().unwrap_or_default()
    }

    fn injected(&self) -> bool {
        self.response.patch.is_some()
    }

    fn sidecar(&self) -> &Value {
        &self.patched["spec"]["initContainers"][0]
    }
}

fn admit(hook: &Webhook, client: &Arc<ClientConfig>, pod: &Value) -> Answer {
    let uid = format!("uid-{}", pod["metadata"]["name"].as_str().expect("name"));
    let review = webhook::review(&uid, pod);
    // What is sent is a review kube's own types read.
    serde_json::from_value::<AdmissionReview<Pod>>(review.clone()).expect("a review of a Pod");
    let body = serde_json::to_vec(&review).expect("json");
    let (status, answer) =
        webhook::request(hook.addr, client.clone(), "POST", "/mutate", &body).expect("HTTPS");
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(status, 200, "{text}");
    let raw: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| panic!("{e}: {text}"));
    let answer: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{e}: {text}"));
    // kube-apiserver refuses an answer without these.
    assert_eq!(answer.types.api_version, "admission.k8s.io/v1", "{text}");
    assert_eq!(answer.types.kind, "AdmissionReview", "{text}");
    let response = answer.response.expect("a response");
    assert_eq!(response.uid, uid, "{text}");
    assert!(response.allowed, "a pod must always be admitted: {text}");
    let mut patched = pod.clone();
    if let Some(patch) = &response.patch {
        assert_eq!(
            raw["response"]["patchType"], "JSONPatch",
            "the patch type: {text}"
        );
        let patch: json_patch::Patch = serde_json::from_slice(patch).expect("a JSON patch");
        json_patch::patch(&mut patched, &patch).expect("the patch applies");
    }
    Answer { response, patched }
}

fn start(api: &ApiServer, pki: &Pki) -> (Webhook, Arc<ClientConfig>) {
    let id = &pki.main.server;
    let hook = Webhook::start(api, &id.cert, &id.key, &[]).expect("the webhook starts");
    let client = webhook::client(&pki.main.ca).expect("client");
    (hook, client)
}

#[test]
fn webhook_injects_skips_and_warns_over_https_and_every_patched_pod_is_valid() {
    let api = cluster();
    let pki = Pki::new().expect("certificates");
    let (hook, client) = start(&api, &pki);
    let mut valid = Vec::new();

    // Injected: the namespace opted in, the one policy selecting the pod.
    let a = admit(&hook, &client, &pod("shop", "web-1", "web"));
    assert!(a.injected(), "not injected: {:?}", a.warnings());
    assert!(a.warnings().is_empty(), "{:?}", a.warnings());
    assert_eq!(a.sidecar()["name"], "mirror-sidecar");
    assert_eq!(a.sidecar()["restartPolicy"], "Always");
    assert_eq!(a.sidecar()["image"], "registry.test/mirror-agent:test");
    assert_eq!(
        a.patched["metadata"]["annotations"]["mirror.packets.dev/injected"],
        "web"
    );
    assert_eq!(
        a.patched["spec"]["containers"],
        pod("shop", "web-1", "web")["spec"]["containers"]
    );
    valid.push(a.patched.clone());

    // Already injected: the patched pod again is left alone.
    let again = admit(&hook, &client, &a.patched);
    assert!(
        !again.injected() && again.warnings().is_empty(),
        "{:?}",
        again.response
    );

    // Injected first among existing init containers, beside annotations,
    // with the sizes and port the annotations ask.
    let mut with_init = annotated(
        pod("shop", "web-2", "web"),
        json!({"mirror.packets.dev/policy": "web", "mirror.packets.dev/memory": "128Mi",
               "mirror.packets.dev/metrics-port": "20000", "team/owner": "ops"}),
    );
    with_init["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "registry.test/migrate:1"}]);
    let b = admit(&hook, &client, &with_init);
    assert!(b.injected(), "not injected: {:?}", b.warnings());
    let inits = b.patched["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    assert_eq!(inits.len(), 2);
    assert_eq!(inits[0]["name"], "mirror-sidecar");
    assert_eq!(inits[1]["name"], "migrate");
    assert_eq!(b.sidecar()["resources"]["limits"]["memory"], "134217728");
    assert!(
        b.sidecar()["args"]
            .as_array()
            .expect("args")
            .contains(&json!("0.0.0.0:20000")),
        "{}",
        b.sidecar()
    );
    assert_eq!(b.patched["metadata"]["annotations"]["team/owner"], "ops");
    valid.push(b.patched.clone());

    // Opted in by the pod in a namespace that is not.
    let c = admit(
        &hook,
        &client,
        &annotated(pod("plain", "web-3", "web"), json!({SIDECAR: "enabled"})),
    );
    assert!(c.injected(), "not injected: {:?}", c.warnings());
    assert_eq!(
        c.patched["metadata"]["annotations"]["mirror.packets.dev/injected"],
        "plain-web"
    );
    valid.push(c.patched.clone());

    // A TLS collector: its Secret of the pod's namespace, mounted read-only
    // where the sidecar's policy names the files.
    let d = admit(&hook, &client, &pod("shop", "sealed-1", "sealed"));
    assert!(d.injected(), "not injected: {:?}", d.warnings());
    assert_eq!(
        d.sidecar()["volumeMounts"],
        json!([{"name": "mirror-sidecar-tls", "mountPath": "/run/mirror/tls", "readOnly": true}])
    );
    let volumes = d.patched["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0]["secret"]["secretName"], "secure-client");
    assert_eq!(volumes[0]["secret"]["defaultMode"], 0o400);
    let env = d.sidecar()["env"].as_array().expect("env");
    let policy = env
        .iter()
        .find(|e| e["name"] == "MIRROR_POLICY")
        .and_then(|e| e["value"].as_str())
        .expect("MIRROR_POLICY");
    assert!(
        policy.contains("tls://198.18.0.1:7443?ca=/run/mirror/tls/ca.crt&cert=/run/mirror/tls/tls.crt&key=/run/mirror/tls/tls.key&name=collector.test"),
        "{policy}"
    );
    valid.push(d.patched.clone());

    // Not asked, opted out, hostNetwork, and the namespaces never injected:
    // admitted as they are, with no warning.
    let mut host = pod("shop", "web-5", "web");
    host["spec"]["hostNetwork"] = json!(true);
    for untouched in [
        pod("plain", "web-4", "web"),
        annotated(pod("shop", "web-6", "web"), json!({SIDECAR: "disabled"})),
        host,
        pod("kube-system", "dns-1", "web"),
        pod("mirror-system", "agent-1", "web"),
    ] {
        let d = admit(&hook, &client, &untouched);
        assert!(!d.injected(), "{untouched}: injected");
        assert!(d.warnings().is_empty(), "{untouched}: {:?}", d.warnings());
        assert_eq!(d.patched, untouched);
    }

    // Bad annotations, a policy that does not exist, a collector that does
    // not admit the namespace, several policies: admitted without the
    // sidecar, with one warning naming what is wrong.
    let bad = [
        (
            json!({"mirror.packets.dev/memory": "lots"}),
            "mirror.packets.dev/memory",
        ),
        (
            json!({"mirror.packets.dev/memory": "1Mi"}),
            "mirror.packets.dev/memory",
        ),
        (
            json!({"mirror.packets.dev/metrics-port": "80"}),
            "mirror.packets.dev/metrics-port",
        ),
        (
            json!({"mirror.packets.dev/interfaces": "eth*"}),
            "mirror.packets.dev/interfaces",
        ),
        (
            json!({"mirror.packets.dev/cpu": "fast"}),
            "mirror.packets.dev/cpu",
        ),
        (json!({SIDECAR: "yes"}), SIDECAR),
        (
            json!({"mirror.packets.dev/policy": "Not_A_Name"}),
            "mirror.packets.dev/policy",
        ),
        (
            json!({"mirror.packets.dev/policy": "missing"}),
            "no MirrorPolicy \"missing\"",
        ),
        (
            json!({"mirror.packets.dev/policy": "vault"}),
            "MirrorPolicy \"vault\"",
        ),
    ];
    for (annotations, named) in bad {
        let e = admit(
            &hook,
            &client,
            &annotated(pod("shop", "web-7", "web"), annotations.clone()),
        );
        assert!(!e.injected(), "{annotations}: injected");
        let w = e.warnings();
        assert_eq!(w.len(), 1, "{annotations}: {w:?}");
        assert!(w[0].contains(named), "{annotations}: {w:?}");
        assert!(
            w[0].contains("admitted without the mirror sidecar"),
            "{w:?}"
        );
    }
    // The tenant violation, by the pod's labels: the reason is the
    // collector's refusal of the namespace.
    let v = admit(&hook, &client, &pod("shop", "vault-1", "vault"));
    assert!(!v.injected());
    let w = v.warnings();
    assert!(
        w.len() == 1 && w[0].contains("MirrorPolicy \"vault\"") && w[0].contains("shop"),
        "{w:?}"
    );
    eprintln!("tenant violation warning: {}", w[0]);
    // No policy selects the pod.
    let n = admit(&hook, &client, &pod("shop", "db-1", "db"));
    assert!(!n.injected());
    assert!(
        n.warnings()
            .iter()
            .any(|w| w.contains("no MirrorPolicy of namespace shop selects")),
        "{:?}",
        n.warnings()
    );

    // Not a review: refused as a bad request, not a crash.
    let (status, _) =
        webhook::request(hook.addr, client.clone(), "POST", "/mutate", b"{}").expect("HTTPS");
    assert_eq!(status, 400);
    let (status, body) =
        webhook::request(hook.addr, client.clone(), "GET", "/healthz", b"").expect("HTTPS");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));

    // The patched pods are valid Pods for Kubernetes 1.34; and the check
    // refuses a field that is not in the schema, so it is one.
    webhook::validate(&valid).expect("every patched pod is valid");
    let mut broken = valid[0].clone();
    broken["spec"]["initContainers"][0]["securityContext"]["capabilitys"] = json!({});
    assert!(
        webhook::validate(&[broken]).is_err(),
        "kubernetes-validate took a misspelt field"
    );
    eprintln!(
        "{} patched pods valid for Kubernetes {}",
        valid.len(),
        webhook::KUBERNETES
    );
    hook.stop().expect("the webhook stops");
}

/// Whether a handshake with the webhook succeeds for a client trusting `ca`.
fn trusted(hook: &Webhook, ca: &Path) -> bool {
    let client = webhook::client(ca).expect("client");
    webhook::request(hook.addr, client, "GET", "/healthz", b"").is_ok_and(|(s, _)| s == 200)
}

#[test]
fn webhook_serves_a_renewed_certificate_without_a_restart() {
    let api = cluster();
    let pki = Pki::new().expect("certificates");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&pki.main.server.cert, &cert).expect("cert");
    std::fs::copy(&pki.main.server.key, &key).expect("key");
    let hook = Webhook::start(&api, &cert, &key, &[]).expect("the webhook starts");
    let (main, other) = (pki.main.ca.as_path(), pki.other.ca.as_path());
    assert!(trusted(&hook, main) && !trusted(&hook, other));

    // Renewed as the kubelet updates a Secret volume: new files swapped in
    // whole by rename.
    for (from, to) in [
        (&pki.other.server.cert, &cert),
        (&pki.other.server.key, &key),
    ] {
        let tmp = dir.path().join("new");
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, to).expect("rename");
    }
    let start = std::time::Instant::now();
    while !trusted(&hook, other) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the renewed certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!trusted(&hook, main), "the old certificate is still served");

    // A broken renewal keeps the certificate that works.
    std::fs::write(&key, "not a key").expect("write");
    assert!(
        trusted(&hook, other),
        "a broken key replaced the certificate"
    );
    let log = hook.stop().expect("the webhook stops");
    assert!(log.contains("serving certificate reloaded"), "{log}");
    assert!(log.contains("keeping the old one"), "{log}");
}

/// The sidecar container of a patched pod started as the kubelet starts it:
/// the image's entrypoint (`mirror-agent`) with the container's `args`, its
/// `env` only (`fieldRef`s resolved from the pod), inside the pod's network
/// namespace.
fn kubelet_start(pod: &Netns, patched: &Value) -> Agent {
    let sidecar = &patched["spec"]["initContainers"][0];
    assert!(
        sidecar["command"].is_null(),
        "the entrypoint is the image's"
    );
    let mut cmd = pod.command(&agent::binary().to_string_lossy());
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdout(Stdio::null());
    for arg in sidecar["args"].as_array().expect("args") {
        cmd.arg(arg.as_str().expect("a string argument"));
    }
    for var in sidecar["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name");
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(path)) => {
                let pointer = format!("/{}", path.replace('.', "/"));
                patched
                    .pointer(&pointer)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{name}: {path} is not in the pod"))
                    .to_owned()
            }
            _ => panic!("env {name}: neither a value nor a fieldRef: {var}"),
        };
        cmd.env(name, value);
    }
    Agent::start_command(cmd).expect("the sidecar starts")
}

/// The kubelet's probe: the container's own `httpGet` on the pod's IP.
fn probe(pod: &PodPair, patched: &Value, which: &str) -> u16 {
    let get = &patched["spec"]["initContainers"][0][which]["httpGet"];
    let addr = format!("{}:{}", pod.pod_v4, get["port"]);
    http::get(&pod.pod, &addr, get["path"].as_str().expect("path"))
        .expect("probe")
        .status
}

/// End to end without a kubelet: the pod the webhook patched, its sidecar
/// run from the patch in the pod's namespace, real traffic both ways, and
/// the collector (GENEVE: it carries each copy's direction) holds exactly
/// what tcpdump in the pod saw, direction by direction. SIGTERM loses
/// nothing captured. The copies leave through the pod's own interface;
/// the path to the collector is given a 9000-byte MTU (the pod's own
/// traffic keeps 1500 by its route) so that no copy is cut to fit.
#[test]
fn webhook_patched_sidecar_run_as_the_kubelet_would_mirrors_what_tcpdump_in_the_pod_sees() {
    testbed::require_root();
    let api = cluster();
    api.create(json!({"apiVersion": MIRROR, "kind": "MirrorCollector",
                      "metadata": {"name": "sensor"},
                      "spec": {"protocol": "geneve", "address": "198.18.1.2", "vni": 42,
                               "allowedNamespaces": {"matchLabels": {"team": "mirrored"}}}}))
        .expect("collector");
    api.create(json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
                      "metadata": {"name": "tapped", "namespace": "shop"},
                      "spec": {"podSelector": {"matchLabels": {"app": "tapped"}},
                               "collectorRef": {"name": "sensor"}, "direction": "Both"}}))
        .expect("policy");
    let pki = Pki::new().expect("certificates");
    let (hook, client) = start(&api, &pki);
    let a = admit(&hook, &client, &pod("shop", "tapped-1", "tapped"));
    assert!(a.injected(), "not injected: {:?}", a.warnings());
    webhook::validate(std::slice::from_ref(&a.patched)).expect("a valid pod");

    let (pair, link) = CollectorLink::jumbo_with_pod();
    for (ns, dev) in [(&pair.pod, &pair.pod_if), (&pair.node, &pair.host_if)] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
    }
    let subnet = ["198.18.0.0/24", "dev", &pair.pod_if, "src", "198.18.0.2"];
    pair.pod
        .ip(&[&["route", "replace"], &subnet[..], &["mtu", "1500"]].concat())
        .expect("the pod's route keeps 1500");
    pair.pod
        .ip(&["route", "add", "198.18.1.0/24", "via", "198.18.0.1"])
        .expect("route to the collector");
    // Wire-size frames from the pod's stack, so tcpdump sees what the
    // sidecar sends on (it cuts super-packets to wire size for tunnels).
    pair.pod
        .exec(&["ethtool", "-K", &pair.pod_if, "tso", "off", "gso", "off"])
        .expect("ethtool (`cargo xtask setup` installs it)");
    pair.node
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("the node forwards");
    let collector = Collector::start(&link.ns, &["geneve://198.18.1.2"], &[]).expect("collector");
    let dir = tempfile::tempdir().expect("tempdir");
    // The pod's traffic, not the sidecar's copies on their way out.
    let tcpdump = |q: &str| {
        let path = dir.path().join(format!("{q}.pcap"));
        let args = ["-Q", q, "not", "host", "198.18.1.2"];
        Tcpdump::start(&pair.pod, &pair.pod_if, path, &args).expect("tcpdump in the pod")
    };
    let (at_in, at_out) = (tcpdump("in"), tcpdump("out"));

    let sidecar = kubelet_start(&pair.pod, &a.patched);
    assert_eq!(probe(&pair, &a.patched, "startupProbe"), 200);
    assert_eq!(probe(&pair, &a.patched, "livenessProbe"), 200);
    let (pod_ip, node_ip) = (IpAddr::V4(pair.pod_v4), IpAddr::V4(pair.node_v4));
    pair.flush_neighbours().expect("flush");
    traffic::udp(&pair.pod, &pair.node, node_ip, 7001, &[64, 700, 1400, 3000]).expect("egress");
    traffic::udp(&pair.node, &pair.pod, pod_ip, 7002, &[80, 1200, 2500]).expect("ingress");
    traffic::ping(&pair.node, pod_ip, 3).expect("ping into the pod");
    traffic::tcp_bulk(&pair.pod, &pair.node, node_ip, 7003, 256 << 10).expect("tcp");
    // Every exchange waited for its answer, so every packet has passed the
    // hooks: SIGTERM now, and what the ring and queue hold must still go out.
    let exit = sidecar.stop().expect("the sidecar stops");
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    let ins = capture::read(&at_in.stop().expect("tcpdump")).expect("read");
    let outs = capture::read(&at_out.stop().expect("tcpdump")).expect("read");
    let collected = collector.stop().expect("the collector stops");
    collected.ensure_success().expect("collector");
    let frames = collected.frames().expect("the collector's files");

    assert!(
        ins.len() > 10 && outs.len() > 10,
        "{} in, {} out",
        ins.len(),
        outs.len()
    );
    let with = |d: Dir| -> Vec<Frame> {
        frames
            .iter()
            .filter(|f| f.dir == Some(d))
            .cloned()
            .collect()
    };
    assert_same_frames(&ins, &with(Dir::In));
    assert_same_frames(&outs, &with(Dir::Out));
    assert_eq!(
        frames.len(),
        ins.len() + outs.len(),
        "frames without a direction"
    );
    let total = exit.summary().expect("summary");
    // Counted in packets as the hook saw them (super-packets, which the
    // copies cut to wire size): every one seen was mirrored.
    assert_eq!(total.get("mirrored"), total.get("seen"), "{total:?}");
    assert_eq!(total.get("lost"), Some(&0), "{total:?}");
    // Named as the node agent names them: this node, the pod's interface.
    let names: std::collections::BTreeSet<_> = frames.iter().map(|f| f.interface.clone()).collect();
    eprintln!(
        "sidecar from the patch: {} in and {} out equal tcpdump's in the pod; interfaces {names:?}",
        ins.len(),
        outs.len()
    );
    hook.stop().expect("the webhook stops");
}
