//! `mirror-agent run` end to end: the real agent and its real kube-rs
//! client against the fake API server (no real one can run here), pods that
//! are network namespaces of the test's own, and the kernel's VXLAN device
//! with tcpdump as the collector. Pods hang off a bridge (host-end hooks),
//! or are wired as macvlan and cilium-like CNIs wire them (pod-end hooks,
//! every pod's `eth0` with the same ifindex).

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use testbed::{
    agent::{self, Agent},
    apiserver::{ApiServer, Options, rbac::Rbac},
    bpffs::BpfFs,
    capture::{self, Frame},
    cni::{CniNode, Shape},
    collector::Collector,
    hooks::attached,
    http,
    netns::{Netns, join},
    numbered::{NumberedStream, sequence_numbers},
    pki::{self, Pki},
    process::Process,
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{BridgedNode, CollectorLink},
    traffic,
};

const NODE: &str = "node-a";
const VNI: u32 = 77;
const MIRROR: &str = "mirror.packets.dev/v1alpha1";
const WAIT: Duration = Duration::from_secs(15);

fn namespace(name: &str, tenant: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"tenant": tenant}}})
}

fn pod(ns: &str, name: &str, app: &str, ip: Option<&str>, host_network: bool) -> Value {
    let mut status = json!({"phase": "Pending"});
    if let Some(ip) = ip {
        status = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                        "labels": {"app": app}},
           "spec": {"nodeName": NODE, "hostNetwork": host_network,
                    "containers": [{"name": "c", "image": "example"}]},
           "status": status})
}

fn policy(ns: &str, name: &str, snaplen: u32) -> Value {
    json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                    "collectorRef": {"name": "lab"},
                    "direction": "Both", "snaplen": snaplen}})
}

/// Edits policy shop/web's snaplen, and waits until its status is for the
/// edit (`generation`).
fn set_snaplen(server: &ApiServer, snaplen: u32, generation: u64) {
    server
        .merge_patch(
            MIRROR,
            "MirrorPolicy",
            Some("shop"),
            "web",
            json!({"spec": {"snaplen": snaplen}}),
        )
        .expect("patch");
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            condition(o, "Ready").is_some_and(|c| c["observedGeneration"] == generation)
        })
        .unwrap_or_else(|p| panic!("snaplen {snaplen} seen: {p:#?}"));
}

fn condition<'a>(obj: Option<&'a Value>, type_: &str) -> Option<&'a Value> {
    obj?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn node_status(obj: Option<&Value>) -> Option<&Value> {
    obj?["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == NODE)
}

/// Writes `entry` as another node's agent would: by server-side apply
/// under that node's field manager, to the status of policy shop/web. From
/// a thread in the node's namespace, where the fake API server listens.
fn apply_other_node(node: &Netns, url: String, entry: Value) {
    let other = entry["node"].as_str().expect("node").to_owned();
    join(node.spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
            let api: kube::Api<mirror_agent::k8s::MirrorPolicy> =
                kube::Api::namespaced(client, "shop");
            let body = json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
                              "status": {"nodes": [entry]}});
            api.patch_status(
                "web",
                &kube::api::PatchParams::apply(&format!("mirror-agent.{other}")),
                &kube::api::Patch::Apply(&body),
            )
            .await?;
            Ok(())
        })
    }))
    .expect("another node's status entry");
}

fn wait_attached(node: &BridgedNode, host_if: &str, want: bool) -> Duration {
    wait_hooked(&node.node, host_if, want)
}

/// Waits until our hooks are on `iface` in `ns` (or gone).
fn wait_hooked(ns: &Netns, iface: &str, want: bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let on = !attached(ns, iface).expect("query").is_empty();
        if on == want {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "hooks on {iface} in {} attached={want} not reached within {WAIT:?}",
        ns.name()
    );
}

/// A node with pods, a collector host, the fake API server inside the
/// node's namespace (where the agent runs, as with hostNetwork), and the
/// agent's private pin filesystem.
struct Bed<N = BridgedNode> {
    node: N,
    link: CollectorLink,
    bpffs: BpfFs,
    dir: tempfile::TempDir,
    netns_dir: std::path::PathBuf,
    server: ApiServer,
    kubeconfig: tempfile::NamedTempFile,
    node_ns: fn(&N) -> &Netns,
}

impl Bed {
    fn new(pods: u8) -> Self {
        Bed::with(pods, Options::default())
    }

    fn with(pods: u8, options: Options) -> Self {
        testbed::require_root();
        let node = BridgedNode::new(pods).expect("node with pods");
        let pods: Vec<(String, String)> = node
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.ns.name().to_owned()))
            .collect();
        Bed::around(node, |n| &n.node, &pods, options)
    }
}

impl Bed<CniNode> {
    /// Pods `web-1` and `web-2` wired as `shape` wires them.
    fn cni(shape: Shape) -> Self {
        testbed::require_root();
        let node = CniNode::new(shape).expect("node with pods");
        let pods: Vec<(String, String)> = node
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("web-{}", i + 1), p.ns.name().to_owned()))
            .collect();
        Bed::around(node, |n| &n.node, &pods, Options::default())
    }
}

impl<N> Bed<N> {
    /// `pods`: each pod's name and its namespace's name under /run/netns.
    /// Unless `options` say who the client is, it is the agent's
    /// ServiceAccount with exactly the grants of deploy/rbac.yaml.
    fn around(
        node: N,
        node_ns: fn(&N) -> &Netns,
        pods: &[(String, String)],
        mut options: Options,
    ) -> Self {
        if options.unbound_user.is_none() && options.rbac.is_none() {
            options.rbac = Some(Rbac::deploy().expect("deploy/rbac.yaml"));
        }
        let link = CollectorLink::new(node_ns(&node)).expect("collector link");
        let bpffs = BpfFs::mount().expect("bpffs");
        let dir = tempfile::tempdir().expect("tempdir");
        // The agent looks for pod namespaces here only, not at other tests'.
        let netns_dir = dir.path().join("netns");
        std::fs::create_dir(&netns_dir).expect("netns dir");
        for (name, ns) in pods {
            std::os::unix::fs::symlink(format!("/run/netns/{ns}"), netns_dir.join(name))
                .expect("symlink");
        }
        // Bound inside the node's namespace, where the agent runs (hostNetwork).
        let server = join(node_ns(&node).spawn(move || ApiServer::start_with(options)))
            .expect("fake API server");
        let kubeconfig = server.kubeconfig_file().expect("kubeconfig");
        Self {
            node,
            link,
            bpffs,
            dir,
            netns_dir,
            server,
            kubeconfig,
            node_ns,
        }
    }

    fn pin_dir(&self) -> std::path::PathBuf {
        self.bpffs.path().join("mirror")
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        Agent::start_command(self.agent_command(extra)).expect("agent starts")
    }

    fn agent_command(&self, extra: &[&str]) -> Command {
        let mut cmd = (self.node_ns)(&self.node).command(&agent::binary().to_string_lossy());
        cmd.env("KUBECONFIG", self.kubeconfig.path())
            .env("RUST_LOG", "info")
            .args(["run", "--node-name", NODE])
            .arg("--pin-dir")
            .arg(self.pin_dir())
            .arg("--netns-path")
            .arg(&self.netns_dir)
            .args(extra)
            .stdout(Stdio::null());
        if !extra.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "off"]);
        }
        if !extra.contains(&"--status-interval") {
            cmd.args(["--status-interval", "2"]);
        }
        cmd
    }
}

#[test]
fn run_mirrors_selected_pods_follows_changes_and_refuses_tenants() {
    let bed = Bed::new(3);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let (pod1, pod2, pod3) = (&node.pods[0], &node.pods[1], &node.pods[2]);
    let (ip1, ip2) = (pod1.v4.to_string(), pod2.v4.to_string());

    for obj in [
        namespace("shop", "shop"),
        namespace("other", "other"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "vxlan", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {"matchLabels": {"tenant": "shop"}}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&ip1), false),
        pod("shop", "db-1", "db", None, false),
        pod("shop", "node-exporter", "web", Some("198.18.0.1"), true),
    ] {
        server.create(obj).expect("create");
    }

    let at_collector =
        Tcpdump::start(&link.ns, &vxlan, dir.path().join("vx.pcap"), &[]).expect("tcpdump");
    let pin_dir = bed.pin_dir();
    let agent = bed.agent(&[]);

    // Selected and running: attached, and said so in the status.
    wait_attached(node, &pod1.host_if, true);
    // From here on, tcpdump and the mirror must see the same frames.
    let at_pod1 = Tcpdump::start(&node.node, &pod1.host_if, dir.path().join("p1.pcap"), &[])
        .expect("tcpdump");
    assert!(
        attached(&node.node, &pod2.host_if)
            .expect("query")
            .is_empty(),
        "db-1 is not selected"
    );
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            condition(o, "Ready").is_some_and(|c| c["status"] == "True")
        })
        .expect("web becomes Ready");
    let n = node_status(web.as_ref()).expect("this node's entry");
    assert_eq!(
        (n["matchedPods"].as_u64(), n["attachedPods"].as_u64()),
        (Some(1), Some(1)),
        "{n}"
    );
    assert_eq!(
        n["skippedHostNetworkPods"], 1,
        "the hostNetwork pod is counted, not mirrored: {n}"
    );

    // Another node's agent reports a pod it could not mirror: the top level
    // speaks for every node, whichever agent wrote last.
    apply_other_node(
        &node.node,
        server.url(),
        json!({"node": "node-b", "matchedPods": 2, "attachedPods": 1,
               "problems": ["pod shop/web-7: no network namespace on this node holds 198.18.0.77"]}),
    );
    let summed = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            condition(o, "Ready").is_some_and(|c| c["reason"] == "AttachFailed")
        })
        .expect("not ready while node-b fails");
    let ready = condition(summed.as_ref(), "Ready").expect("Ready");
    assert_eq!(
        ready["message"],
        "2 of 3 selected pods are mirrored; on node node-b: pod shop/web-7: no network namespace on this node holds 198.18.0.77",
    );
    assert_eq!(summed.as_ref().expect("object")["status"]["matchedPods"], 3);
    apply_other_node(
        &node.node,
        server.url(),
        json!({"node": "node-b", "matchedPods": 2, "attachedPods": 2}),
    );
    let summed = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            condition(o, "Ready").is_some_and(|c| c["status"] == "True")
        })
        .expect("ready again once node-b mirrors all");
    assert_eq!(
        condition(summed.as_ref(), "Ready").expect("Ready")["message"],
        "mirroring 3 pods on 2 nodes"
    );

    // Its traffic reaches the collector exactly as tcpdump saw it on the veth.
    traffic::ping(&pod1.ns, IpAddr::V4(pod2.v4), 3).expect("ping");
    traffic::udp(&pod1.ns, &pod2.ns, IpAddr::V4(pod2.v4), 7001, &[100, 1000]).expect("udp");
    // The frames between pods 1 and 2 before the edit below (port 7002
    // comes after it): tcpdump on pod 1's veth, and the collector.
    let before_edit = |f: &Frame| between(f, pod1.v4, pod2.v4) && f.udp_dst_port() != Some(7002);
    let seen: Vec<Frame> = capture::read(&at_pod1.stop().expect("tcpdump"))
        .expect("read")
        .into_iter()
        .filter(before_edit)
        .collect();
    assert!(seen.len() >= 8, "too little traffic: {}", seen.len());

    // A tenant's policy naming a collector that does not admit it: refused.
    server.create(policy("other", "sneaky", 0)).expect("create");
    let sneaky = server
        .wait_for(MIRROR, "MirrorPolicy", Some("other"), "sneaky", WAIT, |o| {
            condition(o, "Accepted").is_some()
        })
        .expect("sneaky gets a status");
    let accepted = condition(sneaky.as_ref(), "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "CollectorNotAllowed", "{accepted}");

    // An edit: the new snaplen applies to what follows.
    set_snaplen(server, 100, 2);
    traffic::udp(&pod1.ns, &pod2.ns, IpAddr::V4(pod2.v4), 7002, &[600; 5]).expect("udp");

    // A pod that starts running with an IP is attached within a second.
    // Made Pending together with a second hostNetwork pod: once the status
    // counts that one, the agent has seen the Pending pod too (one watch,
    // in order), and left it alone.
    server
        .create(pod("shop", "web-2", "web", None, false))
        .expect("create");
    server
        .create(pod(
            "shop",
            "node-exporter-2",
            "web",
            Some("198.18.0.1"),
            true,
        ))
        .expect("create");
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o).is_some_and(|n| n["skippedHostNetworkPods"] == 2)
        })
        .expect("the agent has seen both pods");
    assert!(
        attached(&node.node, &pod2.host_if)
            .expect("query")
            .is_empty(),
        "not running yet"
    );
    server
        .merge_patch(
            "v1",
            "Pod",
            Some("shop"),
            "web-2",
            json!({"status": {"phase": "Running", "podIP": ip2, "podIPs": [{"ip": ip2}]}}),
        )
        .expect("running");
    let took = wait_attached(node, &pod2.host_if, true);
    eprintln!("web-2 attached {took:?} after it ran with an IP (as polled)");
    assert!(
        took < Duration::from_secs(1),
        "attached only after {took:?}"
    );

    // The API server restarts mid-watch; a pod made afterwards is picked up.
    server.restart(Duration::from_millis(500)).expect("restart");
    server
        .create(pod(
            "shop",
            "web-3",
            "web",
            Some(&pod3.v4.to_string()),
            false,
        ))
        .expect("create");
    wait_attached(node, &pod3.host_if, true);

    // A deleted pod is detached.
    server
        .delete("v1", "Pod", Some("shop"), "web-1")
        .expect("delete");
    wait_attached(node, &pod1.host_if, false);

    let events = server.list("events.k8s.io/v1", "Event", Some("other"));
    assert!(
        events.iter().any(|e| e["reason"] == "CollectorNotAllowed"),
        "the refusal is an Event too: {events:?}"
    );
    let writes =
        server.count(|r| r.is_status_write("mirrorpolicies") && r.name.as_deref() == Some("web"));
    assert!(writes >= 2, "status written: {writes}");

    // SIGTERM keeps the pins: web-2's hooks stay for the next agent.
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    for line in exit
        .stderr
        .lines()
        .filter(|l| l.contains("applied") || l.contains(" attached"))
    {
        eprintln!("{line}");
    }
    assert!(
        !attached(&node.node, &pod2.host_if)
            .expect("query")
            .is_empty(),
        "kept on SIGTERM"
    );
    let removed = agent::run(
        &bed.node.node,
        &["uninstall", "--pin-dir", &pin_dir.display().to_string()],
    )
    .expect("uninstall");
    assert!(removed.status.success(), "{}", removed.stderr);
    // The kernel lets go of a link once its last pin is gone, a moment later.
    wait_attached(node, &pod2.host_if, false);
    wait_attached(node, &pod3.host_if, false);

    let collected = capture::read(&at_collector.stop().expect("tcpdump")).expect("read");
    // The collector got exactly the frames tcpdump saw between the pods.
    let before: Vec<Frame> = collected
        .iter()
        .filter(|f| before_edit(f))
        .cloned()
        .collect();
    assert_same_frames(&seen, &before);
    // After it, cut to 100 bytes.
    let cut: Vec<&Frame> = collected
        .iter()
        .filter(|f| f.udp_dst_port() == Some(7002))
        .collect();
    assert_eq!(cut.len(), 5, "the five datagrams after the edit");
    assert!(
        cut.iter().all(|f| f.data.len() == 100),
        "cut to the new snaplen"
    );
}

/// A TLS collector: the agent reads the Secret it names from its own
/// namespace, and streams pcapng over mutual TLS to `mirror-agent collect`,
/// which gets exactly what tcpdump saw on the pod's veth.
#[test]
fn run_streams_to_a_tls_collector_with_the_secret_it_names() {
    let bed = Bed::new(2);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    let pki = Pki::new().expect("certificates");
    let a = &pki.main;
    let listen = format!(
        "tls://0.0.0.0:7443?ca={}&cert={}&key={}",
        a.ca.display(),
        a.server.cert.display(),
        a.server.key.display()
    );
    let collector =
        Collector::start(&link.ns, &[&listen], &["--metrics-addr", "off"]).expect("collector");
    let b64 = |path: &std::path::Path| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).expect("pem"))
    };
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "lab-tls", "namespace": "mirror-system"},
               "type": "kubernetes.io/tls",
               "data": {"ca.crt": b64(&a.ca), "tls.crt": b64(&a.client.cert), "tls.key": b64(&a.client.key)}}),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "tls", "address": pki::SERVER_IP, "port": 7443,
                        "tls": {"secretName": "lab-tls", "serverName": pki::SERVER_NAME},
                        "allowedNamespaces": {}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&pod1.v4.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
    let tls_dir = dir.path().join("tls");
    let tls_arg = tls_dir.display().to_string();
    let agent = bed.agent(&[
        "--secrets-namespace",
        "mirror-system",
        "--tls-dir",
        &tls_arg,
        "--cleanup-on-exit=true",
    ]);
    wait_attached(node, &pod1.host_if, true);
    let at_pod1 = Tcpdump::start(&node.node, &pod1.host_if, dir.path().join("p1.pcap"), &[])
        .expect("tcpdump");
    traffic::ping(&pod1.ns, IpAddr::V4(pod2.v4), 3).expect("ping");
    traffic::udp(
        &pod1.ns,
        &pod2.ns,
        IpAddr::V4(pod2.v4),
        7001,
        &[100, 1000, 3000],
    )
    .expect("udp");
    let seen = capture::read(&at_pod1.stop().expect("tcpdump")).expect("read");
    let key = std::fs::metadata(tls_dir.join("lab").join("tls.key")).expect("key written");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600,
        "the client key is the agent's alone"
    );
    // A second pod joins the policy: its interface is added to the running
    // stream, with no reconnect.
    add_web_2(server, node);
    // (Datagrams to a port of their own: left out of the comparison below.)
    // It returns once both datagrams arrived in pod 1: past both pods' hooks,
    // so in the ring, which the agent drains when it stops.
    traffic::udp(&pod2.ns, &pod1.ns, IpAddr::V4(pod1.v4), 7009, &[200, 300]).expect("udp");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector");
    let summary = collected
        .listener("tls://0.0.0.0:7443")
        .expect("listener summary");
    assert_eq!(
        summary["connections"], 1,
        "one connection throughout: {summary:?}"
    );
    let all = collected.frames().expect("collected frames");
    let names: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|f| f.interface.as_deref()).collect();
    // Interfaces are named for their pods, after the agent's address.
    let want: std::collections::BTreeSet<String> = ["shop/web-1", "shop/web-2"]
        .iter()
        .map(|who| format!("{}/{who}", link.node_v4))
        .collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect(),
        "each pod's frames on its own interface"
    );
    // The frames between the pods that tcpdump saw on pod 1's veth, chosen
    // by content on both sides (an ARP or an IGMP report from before tcpdump
    // listened is in the mirror only).
    let web1 = format!("{}/shop/web-1", link.node_v4);
    let ours = |f: &Frame| between(f, pod1.v4, pod2.v4) && f.udp_dst_port() != Some(7009);
    let frames: Vec<Frame> = all
        .into_iter()
        .filter(|f| f.interface.as_deref() == Some(web1.as_str()) && ours(f))
        .collect();
    let seen: Vec<Frame> = seen.into_iter().filter(ours).collect();
    assert!(seen.len() >= 8, "too little traffic: {}", seen.len());
    assert_same_frames(&seen, &frames);
}

/// Pods whose hooks must go inside them: macvlan pods (no host end), pods
/// under a cilium-like datapath (their host ends carry a program that
/// delivers into the other pod with `bpf_redirect_peer`, past its host
/// end), and bridged pods with `--attach-point pod`. Both pods' `eth0` have
/// the same ifindex, as in a real node. A killed agent's successor adopts
/// the hooks; the collector gets exactly what tcpdump sees inside each pod;
/// a deleted pod's hooks go.
fn run_hooks_inside_pods(shape: Shape, flags: &[&str]) {
    let bed = Bed::cni(shape);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    assert_eq!(pod1.ifindex, pod2.ifindex, "the same index in both pods");
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "vxlan", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&pod1.v4.to_string()), false),
        pod("shop", "web-2", "web", Some(&pod2.v4.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
    let at_collector =
        Tcpdump::start(&link.ns, &vxlan, dir.path().join("vx.pcap"), &[]).expect("tcpdump");
    let first = bed.agent(flags);
    for p in [pod1, pod2] {
        wait_hooked(&p.ns, p.ifname, true);
    }
    // Pinned per pod namespace (by its cookie), so one pod's `eth0` is
    // never taken for another's: a killed agent's successor adopts both.
    let links: Vec<String> = std::fs::read_dir(bed.pin_dir().join("links"))
        .expect("links")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(links.len(), 4, "{links:?}");
    assert!(
        links.iter().all(|l| l.matches('-').count() == 2),
        "{links:?}"
    );
    let killed = first.signal(Signal::SIGKILL).expect("kill -9");
    assert!(!killed.status.success());
    let agent = bed.agent(&[flags, &["--cleanup-on-exit=true"]].concat());
    if let Some(host) = &pod1.host {
        assert!(
            attached(&node.node, &host.name)
                .expect("query")
                .iter()
                .all(|n| !n.contains("mirror")),
            "nothing of ours on the host end"
        );
    }
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o).is_some_and(|n| n["attachedPods"] == 2)
        })
        .expect("both pods attached in status");
    assert_eq!(
        condition(web.as_ref(), "Ready").map(|c| c["status"].clone()),
        Some(json!("True"))
    );

    let oracles: Vec<Tcpdump> = [pod1, pod2]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Tcpdump::start(
                &p.ns,
                p.ifname,
                dir.path().join(format!("pod{i}.pcap")),
                &[],
            )
            .expect("tcpdump")
        })
        .collect();
    let (ip1, ip2) = (IpAddr::V4(pod1.v4), IpAddr::V4(pod2.v4));
    traffic::ping(&pod1.ns, ip2, 3).expect("ping");
    traffic::ping(&pod2.ns, ip1, 2).expect("ping");
    traffic::udp(&pod1.ns, &pod2.ns, ip2, 7101, &[100, 1000, 1400]).expect("udp");
    traffic::udp(&pod2.ns, &pod1.ns, ip1, 7102, &[200]).expect("udp");
    // (Sizes that fit the tunnel: larger copies are cut to its MTU.)
    // Each frame between the pods is seen in both, and mirrored in both.
    // Every echo was answered and every datagram arrived, so every frame
    // between the pods has crossed both pods' hooks and taps; stopping
    // waits for each tcpdump's file to stop growing.
    let mut seen = Vec::new();
    for t in oracles {
        seen.extend(capture::read(&t.stop().expect("tcpdump")).expect("read"));
    }
    // Chosen by content: an ARP from before tcpdump listened is in the mirror only.
    seen.retain(|f| between(f, pod1.v4, pod2.v4));
    // 5 echoes and their replies, 4 datagrams, each in both pods; ARP may add some.
    assert!(seen.len() >= 28, "too little traffic: {}", seen.len());

    server
        .delete("v1", "Pod", Some("shop"), "web-2")
        .expect("delete");
    wait_hooked(&pod2.ns, pod2.ifname, false);
    assert!(
        !attached(&pod1.ns, pod1.ifname).expect("query").is_empty(),
        "the other pod, same ifindex, keeps its hooks"
    );

    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let started_line = exit.fields_of("mirroring started").expect("start line");
    assert_eq!(
        started_line["adopted"], 4,
        "both pods' hooks adopted: {started_line:?}"
    );
    wait_hooked(&pod1.ns, pod1.ifname, false);
    let collected: Vec<Frame> = capture::read(&at_collector.stop().expect("tcpdump"))
        .expect("read")
        .into_iter()
        .filter(|f| between(f, pod1.v4, pod2.v4))
        .collect();
    assert_same_frames(&seen, &collected);
    eprintln!(
        "{shape:?}: {} frames mirrored inside two pods with eth0 index {}, as tcpdump there saw them",
        collected.len(),
        pod1.ifindex
    );
}

#[test]
fn run_hooks_macvlan_pods_inside_them() {
    run_hooks_inside_pods(Shape::Macvlan, &[]);
}

#[test]
fn run_hooks_pods_under_a_redirect_peer_datapath_inside_them() {
    run_hooks_inside_pods(Shape::RedirectPeer, &[]);
}

#[test]
fn run_hooks_bridged_pods_inside_them_when_asked() {
    run_hooks_inside_pods(Shape::Bridge, &["--attach-point", "pod"]);
}

/// Pod web-2 (the node's second pod) joins policy shop/web: once hooked.
fn add_web_2(server: &ApiServer, node: &BridgedNode) {
    let ip = node.pods[1].v4.to_string();
    server
        .create(pod("shop", "web-2", "web", Some(&ip), false))
        .expect("create");
    wait_attached(node, &node.pods[1].host_if, true);
}

/// Namespace shop, a VXLAN collector `lab` open to all, policy shop/web, and
/// its running pod web-1 at `ip`.
fn one_mirrored_pod(server: &ApiServer, link: &CollectorLink, ip: std::net::Ipv4Addr) {
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "vxlan", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&ip.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
}

/// A long API server outage (its restart, whose new watch cache answers a
/// resumed watch with 410): the agent keeps mirroring what it knew, says so
/// once per watch, and attaches a pod made after the server is back within
/// a few seconds, whatever the outage's length.
#[test]
fn run_recovers_within_seconds_of_a_long_api_server_outage() {
    const OUTAGE: Duration = Duration::from_secs(20);
    let bed = Bed::new(2);
    let (node, link, server) = (&bed.node, &bed.link, &bed.server);
    let pod1 = &node.pods[0];
    one_mirrored_pod(server, link, pod1.v4);
    let agent = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);
    let expired_before = server.expired_watches();

    server.restart(OUTAGE).expect("restart");
    assert!(
        !attached(&node.node, &pod1.host_if)
            .expect("query")
            .is_empty(),
        "mirroring went on during the outage"
    );
    let back = Instant::now();
    add_web_2(server, node);
    let took = back.elapsed();
    eprintln!("web-2 attached {took:?} after a {OUTAGE:?} outage ended");
    assert!(
        took < Duration::from_secs(5),
        "attached only {took:?} after the API server came back"
    );
    assert!(
        server.expired_watches() > expired_before,
        "the resumed watches were told 410, as a restarted server's are"
    );

    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let failed: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| {
            l.contains("watch failed")
                || l.contains("watches failed")
                || l.contains("watches still failing")
        })
        .collect();
    // Six watches failing within one minute share one budget of 6 lines
    // (controller/retry.rs): single lines, then one gathered line.
    assert!(
        (1..=6).contains(&failed.len()),
        "{} lines of watch failures over {OUTAGE:?}:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// An agent whose ServiceAccount is bound to no role (each of its six
/// watches gets 403): it names the permission it lacks, stays not ready,
/// and logs under 10 lines a minute, the first seconds' burst included.
#[test]
fn run_refused_by_the_api_server_is_quiet_names_the_permission_and_stays_unready() {
    // Shorter than a minute, so every line of the run falls in one minute.
    const WINDOW: Duration = Duration::from_secs(30);
    const METRICS: &str = "127.0.0.1:9464";
    let user = "system:serviceaccount:mirror-system:mirror-agent";
    let bed = Bed::with(
        1,
        Options {
            unbound_user: Some(user.into()),
            ..Options::default()
        },
    );
    let start = Instant::now();
    // Not `bed.agent`: a refused agent never says "mirroring started".
    let mut agent = Process::spawn(
        "mirror-agent",
        bed.agent_command(&["--metrics-addr", METRICS]),
    )
    .expect("agent starts");
    agent
        .wait_for_line("lacks the permission", WAIT)
        .expect("the agent names the permission it lacks");
    let readyz = || {
        let out = bed
            .node
            .node
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
            ])
            .arg(format!("http://{METRICS}/readyz"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut answers = 0;
    while start.elapsed() < WINDOW {
        match readyz().as_str() {
            // Not listening yet: the agent is starting.
            "000" => {}
            code => {
                assert_eq!(code, "503", "/readyz of a refused agent");
                answers += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        answers > WINDOW.as_secs() / 2,
        "/readyz answered {answers} times"
    );
    assert!(
        bed.server.count(|r| r.resource.as_deref() == Some("pods")) > 3,
        "the agent kept retrying"
    );
    let (_, stderr) = agent.stop(Signal::SIGTERM, WAIT).expect("stops");
    let lines: Vec<&str> = stderr.lines().collect();
    let elapsed = start.elapsed();
    eprintln!("{} lines in {elapsed:?}:\n{}", lines.len(), stderr);
    // The whole run, start-up and stop included, fits in one minute: under
    // 10 lines a minute means under 10 lines in all.
    assert!(elapsed < Duration::from_secs(60));
    assert!(
        lines.len() < 10,
        "{} lines in {elapsed:?}:\n{}",
        lines.len(),
        stderr
    );
    for what in mirror_agent::controller::watch::WATCHED {
        let named = format!("lacks the permission to list and watch {what} ");
        assert!(
            stderr.contains(&named),
            "no line says the agent lacks list and watch on {what}:\n{}",
            stderr
        );
    }
    assert!(stderr.contains("nothing is known of it yet"), "{}", stderr);
}

/// Whether a frame is IPv4 between `a` and `b`, either way (by its content,
/// not by when anyone captured it).
fn between(f: &Frame, a: std::net::Ipv4Addr, b: std::net::Ipv4Addr) -> bool {
    let Ok(packet) = etherparse::SlicedPacket::from_ethernet(&f.data) else {
        return false;
    };
    let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
        return false;
    };
    let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
    (src, dst) == (a, b) || (src, dst) == (b, a)
}

/// Polls a running tcpdump's file (written packet by packet) until `done`
/// holds for its frames, for at most [`WAIT`]; returns the last frames read.
fn wait_frames(path: &std::path::Path, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
    let start = Instant::now();
    loop {
        // A record half written is read again on the next round.
        let frames = capture::read(path).unwrap_or_default();
        if done(&frames) || start.elapsed() >= WAIT {
            return frames;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kubectl delete pod`: the pod is Terminating for its grace period while
/// its containers still talk, and the agent mirrors it all (as tcpdump on
/// its veth sees it) until its network is torn down; its status says it is
/// terminating meanwhile.
#[test]
fn run_mirrors_a_terminating_pod_until_its_namespace_is_gone() {
    let bed = Bed::new(2);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    one_mirrored_pod(server, link, pod1.v4);
    let collector_pcap = dir.path().join("vx.pcap");
    let at_collector =
        Tcpdump::start(&link.ns, &vxlan, collector_pcap.clone(), &[]).expect("tcpdump");
    let agent = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);

    server
        .delete_gracefully("shop", "web-1", Duration::from_secs(60))
        .expect("delete");
    // The agent has seen the deletion once its status says so.
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o).is_some_and(|n| n["terminatingPods"] == 1)
        })
        .expect("the status says the pod is terminating");
    let n = node_status(web.as_ref()).expect("entry");
    assert_eq!(n["attachedPods"], 1, "still mirrored: {n}");

    let at_pod1 = Tcpdump::start(&node.node, &pod1.host_if, dir.path().join("p1.pcap"), &[])
        .expect("tcpdump");
    let (ip1, ip2) = (pod1.v4, pod2.v4);
    traffic::ping(&pod1.ns, IpAddr::V4(ip2), 3).expect("ping");
    traffic::udp(&pod1.ns, &pod2.ns, IpAddr::V4(ip2), 7003, &[100, 1000]).expect("udp");
    let seen: Vec<Frame> = capture::read(&at_pod1.stop().expect("tcpdump"))
        .expect("read")
        .into_iter()
        .filter(|f| between(f, ip1, ip2))
        .collect();
    assert!(seen.len() >= 8, "too little traffic: {}", seen.len());
    wait_frames(&collector_pcap, |frames| {
        frames.iter().filter(|f| between(f, ip1, ip2)).count() >= seen.len()
    });
    assert!(
        !attached(&node.node, &pod1.host_if)
            .expect("query")
            .is_empty(),
        "still hooked while Terminating"
    );

    // The CNI tears the pod's network down: the veth goes, hooks with it.
    node.node
        .ip(&["link", "del", &pod1.host_if])
        .expect("the pod's veth removed");
    pod1.ns
        .ip(&["link", "show"])
        .expect("the pod's namespace is still there");
    let gone = Command::new("ip")
        .args(["netns", "del", pod1.ns.name()])
        .status()
        .expect("ip netns del");
    assert!(gone.success(), "the pod's namespace removed");
    // Then the kubelet removes the pod.
    server
        .delete("v1", "Pod", Some("shop"), "web-1")
        .expect("removed");
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o)
                .is_some_and(|n| n["matchedPods"] == 0 && n.get("terminatingPods").is_none())
        })
        .expect("the status no longer counts it");

    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let mirrored: Vec<Frame> = capture::read(&at_collector.stop().expect("tcpdump"))
        .expect("read")
        .into_iter()
        .filter(|f| between(f, ip1, ip2))
        .collect();
    assert_same_frames(&seen, &mirrored);
}

/// A CNI re-plumbs a running pod, telling the API server nothing: the
/// pod's veth is deleted, and a new one made in the same pod namespace,
/// under a new host-end name and index. The agent finds the new host end by
/// itself (the kernel announces the link) and mirrors on. The oracle is
/// tcpdump on the node's bridge, which outlives both veths: every datagram
/// the pod sent from the first one mirrored on reaches the collector, and
/// those sent before the new veth was hooked are counted.
#[test]
fn run_finds_a_pods_remade_veth_with_no_change_in_the_cluster() {
    const PORT: u16 = 7014;
    let bed = Bed::new(1);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let pod1 = &node.pods[0];
    one_mirrored_pod(server, link, pod1.v4);
    let at_collector =
        Tcpdump::start(&link.ns, &vxlan, dir.path().join("vx.pcap"), &[]).expect("tcpdump");
    let at_bridge = Tcpdump::start(&node.node, &node.bridge, dir.path().join("br.pcap"), &[])
        .expect("tcpdump on the bridge");
    // Statuses written once: the agent's own writes wake it through its
    // watch, and here nothing but the kernel may.
    let agent = bed.agent(&["--status-interval", "600"]);
    wait_attached(node, &pod1.host_if, true);
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o).is_some_and(|n| n["attachedPods"] == 1)
        })
        .expect("the first status written");
    let pod_before = server.get("v1", "Pod", Some("shop"), "web-1");
    // Writes but the agent's own reports (statuses and Events).
    let writes = |server: &ApiServer| {
        server.count(|r| {
            matches!(r.verb, "create" | "update" | "patch" | "delete")
                && r.subresource.as_deref() != Some("status")
                && !matches!(r.resource.as_deref(), Some("events"))
        })
    };
    let writes_before = writes(server);

    // As a CNI does it: the old pair goes, a new one comes, on the bridge,
    // with the pod's address and route; the pod talks as soon as it can.
    node.node
        .ip(&["link", "del", &pod1.host_if])
        .expect("the pod's veth removed");
    let host_if = testbed::unique_name("mth");
    testbed::topology::veth(&node.node, &host_if, &pod1.ns, "eth0").expect("a new veth");
    let made = Instant::now();
    node.node
        .ip(&["link", "set", &host_if, "master", &node.bridge])
        .expect("on the bridge");
    let ip = format!("{}/24", pod1.v4);
    pod1.ns
        .ip(&["addr", "add", &ip, "dev", "eth0"])
        .expect("the pod's IP");
    pod1.ns
        .ip(&["route", "add", "default", "via", "198.18.0.1"])
        .expect("route");
    let to = std::net::SocketAddr::from(([198, 18, 0, 1], PORT));
    let stream = NumberedStream::start(&pod1.ns, &node.node, to).expect("stream");
    wait_hooked(&node.node, &host_if, true);
    let took = made.elapsed();
    let hooked_by = stream.sent();
    stream.wait_for(300);
    let sent = stream.finish().expect("sender");
    at_bridge.settle().expect("tcpdump settled");

    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let read = |t: Tcpdump| capture::read(&t.stop().expect("tcpdump")).expect("read");
    let sent_seen = sequence_numbers(&read(at_bridge), PORT);
    let mirrored = sequence_numbers(&read(at_collector), PORT);
    assert_eq!(
        sent_seen.len(),
        sent as usize,
        "tcpdump on the bridge saw every datagram sent"
    );
    let missed: Vec<u32> = (0..sent).filter(|n| !mirrored.contains_key(n)).collect();
    eprintln!(
        "the new veth was hooked {took:?} after it was made; {} of {sent} datagrams \
         missed (sent before the hooks were on: at most {hooked_by}): {:?}",
        missed.len(),
        &missed[..missed.len().min(20)]
    );
    // Once one datagram is mirrored, every later one is, each once.
    let first = mirrored
        .keys()
        .next()
        .copied()
        .expect("some datagram mirrored");
    assert!(
        missed.iter().all(|n| *n < first) && first <= hooked_by,
        "datagrams missed after the new veth was hooked (first mirrored {first}, hooked by \
         {hooked_by}): {missed:?}"
    );
    assert!(
        mirrored.values().all(|c| *c == 1),
        "duplicates: {mirrored:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the new veth was hooked only {took:?} after it was made"
    );
    // Nothing in the cluster changed: the pod is as it was, and nothing
    // was written but the agent's own reports.
    assert_eq!(server.get("v1", "Pod", Some("shop"), "web-1"), pod_before);
    assert_eq!(writes(server), writes_before, "writes other than reports");
}

fn entry<'a>(obj: Option<&'a Value>, node: &str) -> Option<&'a Value> {
    obj?["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
}

/// Two agents (node-a with the pod, node-b with none) write their entries;
/// node-b's is renewed while it runs, past the stale time; once node-b is
/// killed, node-a ages its entry out (after the stale time, not before it
/// could have) and the totals speak for node-a alone. `mirror-agent status`
/// names the hooked pod and policy from node-a's pins.
#[test]
fn run_ages_out_the_entry_of_a_node_whose_agent_is_gone() {
    const STALE: Duration = Duration::from_secs(6);
    let stale = STALE.as_secs().to_string();
    let bed = Bed::new(1);
    let (node, link, server) = (&bed.node, &bed.link, &bed.server);
    one_mirrored_pod(server, link, node.pods[0].v4);
    let a = bed.agent(&["--status-stale-after", &stale]);
    wait_attached(node, &node.pods[0].host_if, true);
    let b_pins = bed.bpffs.path().join("node-b");
    let mut cmd = node.node.command(&agent::binary().to_string_lossy());
    cmd.env("KUBECONFIG", bed.kubeconfig.path())
        .args(["run", "--node-name", "node-b", "--status-interval", "1"])
        .args(["--status-stale-after", &stale, "--metrics-addr", "off"])
        .arg("--pin-dir")
        .arg(&b_pins)
        .arg("--netns-path")
        .arg(&bed.netns_dir)
        .stdout(Stdio::null());
    let b = Agent::start_command(cmd).expect("node-b's agent starts");
    let get = |obj: Option<&Value>| obj.cloned();
    let both = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |p| {
            entry(p, NODE).is_some() && entry(p, "node-b").is_some()
        })
        .unwrap_or_else(|p| panic!("both entries: {p:#?}"));
    let first = entry(both.as_ref(), "node-b").expect("node-b")["lastUpdateTime"].clone();
    // Alive past the stale time: renewed, so never removed.
    std::thread::sleep(STALE + Duration::from_secs(3));
    let now = get(server
        .get(MIRROR, "MirrorPolicy", Some("shop"), "web")
        .as_ref());
    let renewed = entry(now.as_ref(), "node-b").expect("node-b's entry stays while it runs");
    assert_ne!(renewed["lastUpdateTime"], first, "renewed: {renewed}");

    let killed_at = Instant::now();
    let _ = b.signal(Signal::SIGKILL).expect("kill -9 node-b");
    let after = server
        .wait_for(
            MIRROR,
            "MirrorPolicy",
            Some("shop"),
            "web",
            STALE + Duration::from_secs(15),
            |p| entry(p, "node-b").is_none(),
        )
        .unwrap_or_else(|p| panic!("node-b's entry not aged out: {p:#?}"));
    let took = killed_at.elapsed();
    eprintln!("node-b's entry removed {took:?} after its agent was killed");
    // Renewed every 2 s: at the kill its entry was at most about 2 s old.
    assert!(
        took >= STALE - Duration::from_secs(3),
        "removed after {took:?}, before it could be stale"
    );
    assert!(entry(after.as_ref(), NODE).is_some(), "{after:#?}");
    let summed = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |p| {
            condition(p, "Ready").is_some_and(|c| c["message"] == "mirroring 1 pods on 1 nodes")
        })
        .unwrap_or_else(|p| panic!("Ready for node-a alone: {p:#?}"));
    assert_eq!(summed.as_ref().expect("policy")["status"]["matchedPods"], 1);

    let status = agent::status(&node.node, &bed.pin_dir().display().to_string()).expect("status");
    let hooked = status["interfaces"].as_array().expect("interfaces");
    assert_eq!(hooked.len(), 1, "{status:#}");
    assert_eq!(hooked[0]["pod"], "shop/web-1", "{status:#}");
    assert_eq!(
        hooked[0]["name"],
        node.pods[0].host_if.as_str(),
        "{status:#}"
    );
    assert_eq!(hooked[0]["policy"], "shop/web", "{status:#}");
    assert_eq!(hooked[0]["hooks"].as_array().map(Vec::len), Some(2));
    let exit = a.stop().expect("node-a stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("removed the status entries of nodes"),
        "{}",
        exit.stderr
    );
}

/// One mirrored pod, and an agent's ServiceAccount with deploy/rbac.yaml
/// less `verb` on `resource` of `group`.
fn partial_grant(group: &str, resource: &str, verb: &str) -> Bed {
    let rbac = Rbac::deploy()
        .expect("deploy/rbac.yaml")
        .without(group, resource, verb);
    let bed = Bed::with(
        1,
        Options {
            rbac: Some(rbac),
            ..Options::default()
        },
    );
    one_mirrored_pod(&bed.server, &bed.link, bed.node.pods[0].v4);
    bed
}

/// A partial grant: deploy/rbac.yaml less `create` on events.k8s.io
/// events. The agent names the permission it lacks when it would publish
/// an Event, and everything else goes on: the pod is hooked, both
/// policies' status is written.
#[test]
fn run_without_permission_to_create_events_names_it_and_mirrors_on() {
    let bed = partial_grant("events.k8s.io", "events", "create");
    let (node, server) = (&bed.node, &bed.server);
    // Refused (no such collector): an Event the agent may not create.
    let mut lost = policy("shop", "lost", 0);
    lost["spec"]["podSelector"] = json!({"matchLabels": {"app": "none"}});
    lost["spec"]["collectorRef"]["name"] = json!("nowhere");
    server.create(lost).expect("create");
    let agent = bed.agent(&[]);
    wait_attached(node, &node.pods[0].host_if, true);
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "lost", WAIT, |p| {
            condition(p, "Accepted").is_some_and(|c| c["reason"] == "CollectorNotFound")
        })
        .unwrap_or_else(|p| panic!("refused in its status: {p:#?}"));
    server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |p| {
            condition(p, "Ready").is_some_and(|c| c["status"] == "True")
        })
        .unwrap_or_else(|p| panic!("web Ready: {p:#?}"));
    let deadline = Instant::now() + WAIT;
    let refused =
        || server.count(|r| r.resource.as_deref() == Some("events") && r.verb == "create");
    while refused() == 0 {
        assert!(Instant::now() < deadline, "no Event was attempted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        exit.stderr
            .contains("lacks the permission to create events.k8s.io events"),
        "{}",
        exit.stderr
    );
}

/// `mirror_delivered_packets_total` and `mirror_output_sent_packets_total`
/// of the agent at `metrics`, once the stream has ended and the agent has
/// sent all it read (two scrapes alike, nothing left in the ring).
fn settled_counts(ns: &Netns, metrics: &str) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        let body = http::get(ns, metrics, "/metrics").expect("scrape").body;
        let count = |name| http::sample(&body, name, &[]).expect("sample");
        let now = (
            count("mirror_delivered_packets_total"),
            count("mirror_output_sent_packets_total"),
            count("mirror_ring_buffer_pending_bytes"),
        );
        if now.2 == 0 && last == Some(now) {
            return (now.0, now.1);
        }
        assert!(Instant::now() < deadline, "never settled: {now:?}");
        last = Some(now);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// An agent killed while its pod streams: the pinned hooks go on copying
/// into the ring, and its successor adopts them and sends that backlog.
/// The successor counts the backlog in `mirror_delivered_packets_total` and
/// in its summary's `written`, as in `mirror_output_sent_packets_total`,
/// through a plan change (a second pod) too: each equals what the
/// collector's kernel VXLAN device received from it. Its hooks, kept on
/// SIGTERM as a DaemonSet restart needs, are what a node whose agent is gone
/// for good keeps: `uninstall` removes them and the pins.
#[test]
fn run_counts_an_adopted_backlog_as_delivered_and_uninstall_removes_the_hooks_it_kept() {
    const PORT: u16 = 7301;
    const METRICS: &str = "127.0.0.1:9464";
    let bed = Bed::new(2);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    one_mirrored_pod(server, link, pod1.v4);
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let first = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);
    let to = std::net::SocketAddr::from(([198, 18, 0, 1], PORT));
    let stream = NumberedStream::start(&pod1.ns, &node.node, to).expect("stream");
    stream.wait_for(200);
    let _ = first.signal(Signal::SIGKILL).expect("kill -9");
    // Everything the collector gets from now on is the successor's.
    let at_collector = Tcpdump::start(&link.ns, &vxlan, dir.path().join("vx.pcap"), &["-Q", "in"])
        .expect("tcpdump");
    let gap = stream.sent();
    stream.wait_for(300);
    let second = bed.agent(&["--metrics-addr", METRICS]);
    let backlog = gap..stream.sent();
    stream.wait_for(200);
    // A new plan: the outputs go on, and so must the counters.
    add_web_2(server, node);
    stream.wait_for(200);
    let sent = stream.finish().expect("sender");
    let (delivered, output_sent) = settled_counts(&node.node, METRICS);

    let exit = second.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let frames = capture::read(&at_collector.stop().expect("tcpdump")).expect("read");
    let started = exit.fields_of("mirroring started").expect("start line");
    assert_eq!(started["adopted"], 2, "{started:?}");
    let seen = sequence_numbers(&frames, PORT);
    let missing: Vec<u32> = (gap..sent).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} datagrams of {gap}..{sent} missing ({backlog:?} copied while no agent ran): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let written = exit.summary().expect("summary")["written"];
    eprintln!(
        "backlog of {} datagrams; collector received {} frames; delivered {delivered}, \
         output sent {output_sent}, written {written}",
        backlog.len(),
        frames.len()
    );
    assert_eq!(
        delivered, output_sent,
        "delivered and sent, backlog and all"
    );
    assert_eq!(
        written,
        frames.len() as u64,
        "written is what the collector got"
    );
    assert_eq!(delivered, written, "nothing came after the counts settled");

    // Kept on SIGTERM; `uninstall` is what a node whose agent is gone needs.
    for p in [pod1, pod2] {
        assert_eq!(
            attached(&node.node, &p.host_if).expect("query").len(),
            2,
            "hooks kept on {}",
            p.host_if
        );
    }
    let pin_dir = bed.pin_dir().display().to_string();
    let exit = agent::run(&node.node, &["uninstall", "--pin-dir", &pin_dir]).expect("uninstall");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert_eq!(exit.fields_of("uninstalled").expect("log")["hooks"], 4);
    for p in [pod1, pod2] {
        wait_attached(node, &p.host_if, false);
    }
    assert!(!bed.pin_dir().exists(), "pins left after uninstall");
}

/// IPv4 frames shorter than their header says: cut on the way.
fn cut_frames(frames: &[Frame]) -> u64 {
    let cut = |d: &[u8]| {
        d.len() >= 34
            && d[12..14] == [0x08, 0x00]
            && 14 + usize::from(u16::from_be_bytes([d[16], d[17]])) > d.len()
    };
    frames.iter().filter(|f| cut(&f.data)).count() as u64
}

/// A policy's status keeps the copies cut to its snaplen (`truncated`)
/// apart from those its tunnel cut to fit the collector's MTU
/// (`mtuTruncated`), as the metrics do. Each equals the frames that reached
/// the kernel VXLAN device shorter than their IPv4 header says: first with
/// no snaplen and an MTU of 576, then with a snaplen of 128.
#[test]
fn run_status_keeps_snaplen_cuts_apart_from_mtu_cuts() {
    let bed = Bed::new(2);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    one_mirrored_pod(server, link, pod1.v4);
    server
        .merge_patch(
            MIRROR,
            "MirrorCollector",
            None,
            "lab",
            json!({"spec": {"mtu": 576}}),
        )
        .expect("mtu");
    let vxlan = link.kernel_vxlan(VNI).expect("kernel vxlan");
    let agent = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);
    let counts = |n: &Value| {
        let get = |k: &str| n[k].as_u64().unwrap_or(0);
        (get("truncated"), get("mtuTruncated"))
    };
    let wait_counts = |done: &dyn Fn((u64, u64)) -> bool| {
        server
            .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |p| {
                node_status(p).is_some_and(|n| done(counts(n)))
            })
            .unwrap_or_else(|p| panic!("status: {:#}", p.unwrap_or_default()))
    };
    // The collector's receipts of one round of datagrams from pod 1 to pod 2.
    let round = |name: &str, port: u16, sizes: &[usize], seen: &dyn Fn((u64, u64)) -> bool| {
        let path = dir.path().join(name);
        let tcpdump = Tcpdump::start(&link.ns, &vxlan, path, &["-Q", "in"]).expect("tcpdump");
        traffic::udp(&pod1.ns, &pod2.ns, IpAddr::V4(pod2.v4), port, sizes).expect("udp");
        wait_counts(seen);
        cut_frames(&capture::read(&tcpdump.stop().expect("tcpdump")).expect("read"))
    };

    // No snaplen: the two large datagrams do not fit 576 bytes.
    let mtu_cuts = round("mtu.pcap", 7401, &[100, 1000, 1400], &|(_, m)| m >= 2);
    assert!(mtu_cuts >= 2, "{mtu_cuts} frames cut to the MTU");
    wait_counts(&|c| c == (0, mtu_cuts));

    set_snaplen(server, 128, 2);
    // Cut to 128 bytes, which fit the tunnel.
    let snap_cuts = round("snaplen.pcap", 7402, &[1000, 1400], &|(t, _)| t >= 2);
    assert!(snap_cuts >= 2, "{snap_cuts} frames cut to the snaplen");
    let last = wait_counts(&|c| c == (snap_cuts, mtu_cuts));
    eprintln!(
        "status: {:#}",
        node_status(last.as_ref()).expect("our entry")
    );
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// A partial grant: deploy/rbac.yaml less `patch` on mirrorpolicies/status.
/// The agent names that permission when it would write the status, writes
/// none, and mirrors on: the pod is hooked and the agent is ready.
#[test]
fn run_without_permission_to_patch_status_names_it_and_mirrors_on() {
    let bed = partial_grant("mirror.packets.dev", "mirrorpolicies/status", "patch");
    let (node, server) = (&bed.node, &bed.server);
    let mut agent = bed.agent(&[]);
    wait_attached(node, &node.pods[0].host_if, true);
    agent
        .process()
        .wait_for_line("lacks the permission to patch mirrorpolicies/status", WAIT)
        .expect("the agent names the permission it lacks");
    let refused = server.count(|r| r.is_status_write("mirrorpolicies"));
    assert!(refused > 0, "a status write was attempted");
    let web = server.get(MIRROR, "MirrorPolicy", Some("shop"), "web");
    assert!(node_status(web.as_ref()).is_none(), "{web:#?}");
    assert!(agent.alive(), "the agent mirrors on");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// A partial grant: deploy/rbac.yaml less `list` on namespaces. The agent
/// names that one permission (and no other), hooks nothing, and stays not
/// ready: it cannot know which policies select which pods.
#[test]
fn run_without_permission_to_list_namespaces_names_it_and_stays_unready() {
    const METRICS: &str = "127.0.0.1:9464";
    let bed = partial_grant("", "namespaces", "list");
    let node = &bed.node;
    // Not `bed.agent`: an agent that is not ready never says "mirroring started".
    let mut agent = Process::spawn(
        "mirror-agent",
        bed.agent_command(&["--metrics-addr", METRICS]),
    )
    .expect("agent starts");
    agent
        .wait_for_line("lacks the permission to list and watch namespaces", WAIT)
        .expect("the agent names the permission it lacks");
    // Each watch retries a few times meanwhile; the agent stays unready.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answers = 0;
    while Instant::now() < deadline {
        if let Ok(answer) = http::get(&node.node, METRICS, "/readyz") {
            assert_eq!(
                answer.status, 503,
                "/readyz of an agent that cannot list namespaces"
            );
            answers += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(answers >= 5, "/readyz answered {answers} times");
    assert!(
        attached(&node.node, &node.pods[0].host_if)
            .expect("query")
            .is_empty(),
        "nothing hooked before the first full list"
    );
    let (_, stderr) = agent.stop(Signal::SIGTERM, WAIT).expect("stops");
    let named: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lacks the permission"))
        .collect();
    assert!(
        !named.is_empty()
            && named
                .iter()
                .all(|l| l.contains("lacks the permission to list and watch namespaces ")),
        "only namespaces named:\n{stderr}"
    );
    assert!(!stderr.contains("mirroring started"), "{stderr}");
}

/// The node agent and a pod's own sidecar side by side: the agent leaves
/// the pod that carries the sidecar alone (no hook on its veth), says so in
/// the policy's status, and mirrors the pod beside it; the pod's traffic
/// reaches the collector once, from its sidecar, exactly as tcpdump in the
/// pod saw it.
#[test]
fn run_leaves_a_pod_with_its_own_sidecar_to_it_and_the_pod_is_mirrored_once() {
    let bed = Bed::new(2);
    let (node, link, server, dir) = (&bed.node, &bed.link, &bed.server, &bed.dir);
    let (pod1, pod2) = (&node.pods[0], &node.pods[1]);
    let sensor = format!("geneve://{}", link.collector_v4);
    let mut with_sidecar = pod("shop", "web-1", "web", Some(&pod1.v4.to_string()), false);
    with_sidecar["spec"]["initContainers"] = json!([{"name": "mirror-sidecar",
        "image": "mirror-agent", "restartPolicy": "Always", "args": ["sidecar"]}]);
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "geneve", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {"matchLabels": {"tenant": "shop"}}}}),
        policy("shop", "web", 0),
        with_sidecar,
        pod("shop", "web-2", "web", Some(&pod2.v4.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
    // The sidecar's copies leave the pod through the node.
    node.node
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("the node forwards");
    let collector = Collector::start(&link.ns, &[&sensor], &[]).expect("collector");
    let agent = bed.agent(&[]);
    wait_attached(node, &pod2.host_if, true);
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            node_status(o).is_some_and(|n| n["sidecarPods"] == 1 && n["attachedPods"] == 1)
        })
        .expect("the status counts the sidecar's pod");
    let n = node_status(web.as_ref()).expect("this node's entry");
    assert_eq!(n["matchedPods"], 1, "{n}");
    let ready = condition(web.as_ref(), "Ready").expect("Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(
        ready["message"],
        "mirroring 1 pods on 1 nodes (1 more selected pods are mirrored by their own sidecars)"
    );
    // The plan is applied (web-2 is hooked): web-1's veth has no hook.
    assert!(
        attached(&node.node, &pod1.host_if)
            .expect("query")
            .is_empty(),
        "the node agent hooked the pod that has a sidecar"
    );

    let policy = format!(
        "policies:\n  - name: web-1\n    interfaces: ['*']\n    collectors: ['{sensor}?vni={VNI}']\n"
    );
    let mut cmd = pod1.ns.command(&agent::binary().to_string_lossy());
    cmd.args(["sidecar", "--metrics-addr", "off"])
        .env("MIRROR_POLICY", policy)
        .stdout(Stdio::null());
    let sidecar = Agent::start_command(cmd).expect("the sidecar starts");
    let at_pod = Tcpdump::start(
        &pod1.ns,
        "eth0",
        dir.path().join("pod1.pcap"),
        &["not", "host", &link.collector_v4.to_string()],
    )
    .expect("tcpdump in the pod");
    // Small frames: copies leave through the pod's 1500-byte link whole.
    let node_ip = IpAddr::from([198, 18, 0, 1]);
    traffic::ping(&pod1.ns, node_ip, 3).expect("ping");
    traffic::udp(&pod1.ns, &node.node, node_ip, 7001, &[100, 1000]).expect("udp");
    traffic::udp(&node.node, &pod1.ns, IpAddr::V4(pod1.v4), 7002, &[200]).expect("udp in");
    let exit = sidecar.stop().expect("the sidecar stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let seen = capture::read(&at_pod.stop().expect("tcpdump")).expect("read");
    let agent_exit = agent.stop().expect("the agent stops");
    assert!(agent_exit.status.success(), "{}", agent_exit.stderr);
    let collected = collector.stop().expect("collector");
    collected.ensure_success().expect("collector");
    let pod1_v4 = pod1.v4;
    let node_v4 = std::net::Ipv4Addr::new(198, 18, 0, 1);
    let of_pod1: Vec<Frame> = collected
        .frames()
        .expect("frames")
        .into_iter()
        .filter(|f| between(f, pod1_v4, node_v4))
        .collect();
    let seen: Vec<Frame> = seen
        .into_iter()
        .filter(|f| between(f, pod1_v4, node_v4))
        .collect();
    // 3 echo requests and replies, 3 datagrams.
    assert!(seen.len() >= 9, "too little traffic: {}", seen.len());
    // Equal as multisets: each frame once, none twice.
    assert_same_frames(&seen, &of_pod1);
    let names: std::collections::BTreeSet<Option<String>> =
        of_pod1.iter().map(|f| f.interface.clone()).collect();
    assert_eq!(names.len(), 1, "copies from more than one hook: {names:?}");
    eprintln!(
        "pod with a sidecar: {} frames mirrored once, by {names:?}; the node agent's status: {n}",
        of_pod1.len()
    );
}

/// A tenant's policy with no rate limit, on a collector whose
/// `maxRateLimit` is 100 packets a second, is accepted with the ceiling
/// (`Accepted=True`, reason `RateLimitCapped`, naming it), and the hook
/// holds the pod's flood to it: the node's entry counts the rest as
/// `rateLimited`. (The bound to the packet is `tests/tests/budgets.rs`'s.)
#[test]
fn run_caps_a_tenant_policy_at_its_collectors_ceiling() {
    let bed = Bed::new(1);
    let (node, link, server) = (&bed.node, &bed.link, &bed.server);
    link.kernel_vxlan(VNI).expect("kernel vxlan");
    let pod1 = &node.pods[0];
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "vxlan", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {"matchLabels": {"tenant": "shop"}},
                        "maxRateLimit": {"packetsPerSecond": 100}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&pod1.v4.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
    let agent = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            condition(o, "Accepted").is_some_and(|c| c["reason"] == "RateLimitCapped")
        })
        .expect("web accepted under the ceiling");
    let accepted = condition(web.as_ref(), "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(
        accepted["message"],
        "the collector admits this policy, but spec.rateLimit (no limit) is above \
         MirrorCollector \"lab\"'s maxRateLimit: this policy gets packetsPerSecond 100 \
         (packetsBurst 100)"
    );

    const FLOOD: u64 = 3000;
    let start = Instant::now();
    traffic::udp_flood(
        &pod1.ns,
        std::net::SocketAddr::new(IpAddr::from([198, 18, 0, 1]), 9),
        FLOOD as usize,
        64,
    )
    .expect("flood");
    // A bound from the test's own clock: longer than the flood, so looser.
    let most = 100 + (100.0 * start.elapsed().as_secs_f64()).ceil() as u64;
    let limited =
        |o: Option<&Value>| node_status(o).and_then(|n| n["dropped"]["rateLimited"].as_u64());
    let web = server
        .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
            limited(o).is_some_and(|n| n >= FLOOD - most)
        })
        .unwrap_or_else(|p| panic!("the flood's excess counted as rateLimited: {p:#?}"));
    let n = node_status(web.as_ref()).expect("this node's entry");
    // The flood's copies and the few others (ARP, ICMP errors back to the pod).
    let mirrored = n["mirrored"].as_u64().expect("mirrored");
    assert!(
        mirrored <= most + 10,
        "{mirrored} mirrored under a ceiling of 100/s (at most {most} of the flood): {n}"
    );
    agent.stop().expect("agent stops");
}

/// A policy's node entry shows what mirroring it costs (`usage`): copies
/// and bytes per second over the last status interval, and the agent CPU
/// time spent on it. The pod sends 1,000 datagrams a second for 8 s (a
/// rate the test's sender keeps, against its own clock); with
/// `--status-interval 2`, a window inside the flood reads 1,000 a second
/// within 20% (a loaded machine stalls the sender, which then catches up
/// in a burst), each copy's bytes those of a 64-byte datagram in VXLAN.
#[test]
fn run_reports_each_policys_usage_in_its_node_entry() {
    let bed = Bed::new(1);
    let (node, link, server) = (&bed.node, &bed.link, &bed.server);
    link.kernel_vxlan(VNI).expect("kernel vxlan");
    let pod1 = &node.pods[0];
    for obj in [
        namespace("shop", "shop"),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": "lab"},
               "spec": {"protocol": "vxlan", "address": link.collector_v4.to_string(), "vni": VNI,
                        "allowedNamespaces": {"matchLabels": {"tenant": "shop"}}}}),
        policy("shop", "web", 0),
        pod("shop", "web-1", "web", Some(&pod1.v4.to_string()), false),
    ] {
        server.create(obj).expect("create");
    }
    let agent = bed.agent(&[]);
    wait_attached(node, &pod1.host_if, true);
    const RATE: u32 = 1000;
    let dst = std::net::SocketAddr::new(IpAddr::from([198, 18, 0, 1]), 9);
    let pod_ns = &pod1.ns;
    let usage = |o: Option<&Value>| node_status(o).map(|n| n["usage"].clone());
    std::thread::scope(|s| {
        let flood = s.spawn(|| traffic::udp_paced(pod_ns, dst, 8 * RATE as usize, &[64], RATE));
        let web = server
            .wait_for(MIRROR, "MirrorPolicy", Some("shop"), "web", WAIT, |o| {
                usage(o)
                    .and_then(|u| u["packetsPerSecond"].as_u64())
                    .is_some_and(|r| {
                        (f64::from(RATE) * 0.8..=f64::from(RATE) * 1.2).contains(&(r as f64))
                    })
            })
            .unwrap_or_else(|p| panic!("usage near {RATE} copies a second: {p:#?}"));
        let u = usage(web.as_ref()).expect("usage");
        eprintln!("usage: {u}");
        let (packets, bytes) = (
            u["packetsPerSecond"].as_u64().expect("packets"),
            u["bytesPerSecond"].as_u64().expect("bytes"),
        );
        // 14 + 20 + 8 + 64 bytes of frame, VXLAN's 8 before it: 114; the
        // odd ICMP error (larger) or ARP (smaller) moves the mean little.
        let per_copy = bytes as f64 / packets as f64;
        assert!(
            (110.0..=120.0).contains(&per_copy),
            "{per_copy} bytes a copy: {u}"
        );
        assert!(u["intervalSeconds"].as_u64().is_some_and(|s| s >= 2), "{u}");
        assert!(u["cpuSeconds"].as_f64().is_some_and(|s| s > 0.0), "{u}");
        assert!(u["cpuMillicores"].as_u64().is_some_and(|m| m > 0), "{u}");
        flood.join().expect("flood thread").expect("flood");
    });
    agent.stop().expect("agent stops");
}
