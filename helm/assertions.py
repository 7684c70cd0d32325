#!/usr/bin/env python3
"""Check what a rendered values scenario must hold beyond schema validity.

    assertions.py SCENARIO RENDERED.yaml
    assertions.py --args RENDERED.yaml agent|collector   (print that container's args)
    assertions.py --caps RENDERED.yaml   (the agent's added capabilities this machine can grant)

SCENARIO is default, tls, certmanager, monitoring, custom, tokens or jetstream (the values files
under helm/mapsentry/ci/).
Checks the agent's privileges (exact capabilities, host mounts, hostPID, NODE_NAME), the
collector's non-root context, least-privilege RBAC (exact rules), that references resolve
(ServiceAccounts, ConfigMaps, Secrets, Service ports, selectors), and each scenario's own
settings. Prints every failed check; exits 1 on any.
"""

import sys

import yaml

AGENT_RULES = {
    ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
    ("", "namespaces", "get"), ("", "namespaces", "list"), ("", "namespaces", "watch"),
    ("apps", "replicasets", "get"),
    ("batch", "jobs", "get"),
}
COLLECTOR_RULES = {
    *{("mapsentry.dev", r, v) for r in ("mmappolicies", "clustermmappolicies") for v in ("get", "list", "watch")},
    *{("mapsentry.dev", r, v) for r in ("mmappolicies/status", "clustermmappolicies/status") for v in ("update", "patch")},
    *{(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")},
}
# With jetstream.url: the collector replicas' Lease, in the release namespace: create (which cannot
# be limited to a name), get and update of that one Lease.
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["mapsentry-collector"],
     "verbs": ["get", "update"]},
]
AGENT_MOUNTS = {  # mountPath -> read-only
    "/sys/fs/cgroup": True,
    "/sys/kernel/btf": True,
    "/sys/kernel/tracing": True,
    "/var/lib/mapsentry": False,
    "/tmp": False,
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace", "PriorityClass"}
ARCH = {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}


class Checker:
    def __init__(self, scenario, docs):
        self.scenario = scenario
        self.docs = docs
        self.failures = []
        self.count = 0

    def check(self, ok, what):
        self.count += 1
        if not ok:
            self.failures.append(what)
        return ok

    def find(self, kind, name_suffix=None):
        return [d for d in self.docs if d["kind"] == kind
                and (name_suffix is None or d["metadata"]["name"].endswith(name_suffix))]

    def one(self, kind, name_suffix=None):
        found = self.find(kind, name_suffix)
        self.check(len(found) == 1, f"exactly one {kind} *{name_suffix or ''}, found {len(found)}")
        return found[0] if found else None


def rules_of(role):
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def arg_value(args, flag):
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def common(c):
    names = {(d["kind"], d["metadata"]["name"]) for d in c.docs}
    for d in c.docs:
        if d["kind"] not in CLUSTER_SCOPED:
            c.check(d["metadata"].get("namespace"), f"{d['kind']} {d['metadata']['name']} has a namespace")
        c.check(d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "mapsentry"
                or d["kind"] == "CustomResourceDefinition", f"{d['kind']} {d['metadata']['name']} is labelled")

    ds = c.one("DaemonSet", "-agent")
    dep = c.one("Deployment", "-collector")
    svc = c.one("Service", "-collector")
    if not (ds and dep and svc):
        return None, None, None
    for workload in (ds, dep):
        spec = workload["spec"]
        c.check(selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]),
                f"{workload['kind']} selector matches its pod labels")
        pod = spec["template"]["spec"]
        c.check(("ServiceAccount", pod["serviceAccountName"]) in names,
                f"{workload['kind']} ServiceAccount {pod['serviceAccountName']} is rendered")
        container = pod["containers"][0]
        for source in container.get("envFrom", []):
            c.check(("ConfigMap", source["configMapRef"]["name"]) in names,
                    f"{workload['kind']} envFrom ConfigMap {source['configMapRef']['name']} is rendered")
        c.check("checksum/config" in spec["template"]["metadata"].get("annotations", {}),
                f"{workload['kind']} pods carry checksum/config")
        res = container.get("resources", {})
        c.check(res.get("requests") and res.get("limits", {}).get("memory"),
                f"{workload['kind']} has requests and a memory limit")
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        c.check(mounts <= volumes, f"{workload['kind']} mounts only declared volumes: {mounts - volumes}")

    # The agent: host PID namespace, exact capabilities, host mounts, node name, no privileged mode.
    pod = ds["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    sc = agent["securityContext"]
    c.check(pod.get("hostPID") is True, "agent has hostPID")
    c.check(not pod.get("hostNetwork"), "agent does not need hostNetwork")
    c.check(sc.get("privileged") is False, "agent is not privileged")
    c.check(sc.get("readOnlyRootFilesystem") is True, "agent root filesystem is read-only")
    c.check(sc["capabilities"]["drop"] == ["ALL"], "agent drops all capabilities first")
    caps = set(sc["capabilities"]["add"])
    want = {"BPF", "PERFMON"} | ({"SYS_ADMIN", "SYS_RESOURCE"} if c.scenario == "custom" else set())
    c.check(caps == want, f"agent capabilities are exactly {sorted(want)}: {sorted(caps)}")
    if "SYS_ADMIN" in caps:
        c.check("allowPrivilegeEscalation" not in sc,
                "agent with SYS_ADMIN leaves allowPrivilegeEscalation unset (the API server refuses false)")
    else:
        c.check(sc.get("allowPrivilegeEscalation") is False, "agent disallows privilege escalation")
    env = {e["name"]: e for e in agent.get("env", [])}
    c.check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
            "agent NODE_NAME comes from the downward API spec.nodeName")
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in agent["volumeMounts"]}
    for path, ro in AGENT_MOUNTS.items():
        c.check(mounts.get(path) == ro, f"agent mounts {path} {'read-only' if ro else 'read-write'}: {mounts.get(path)}")
    # Nothing else writable, nothing else from the host: no bpffs, no host /proc (hostPID gives it).
    extra = {path for path, ro in mounts.items() if path not in AGENT_MOUNTS
             and not (ro and path in ("/sys/kernel/debug", "/etc/mapsentry/tls", "/etc/mapsentry/token"))}
    c.check(not extra, f"agent mounts nothing else: {sorted(extra)}")
    hostpaths = [v for v in pod["volumes"] if "hostPath" in v]
    c.check(all(v["hostPath"].get("type") in ("Directory", "DirectoryOrCreate") for v in hostpaths),
            "agent host paths are typed directories")
    # The state directory: where --state-dir points, writable, and on the node (a hostPath that
    # outlives the pod), so a pushed Enforce set is persisted and re-applied after a restart.
    state_dir = arg_value(agent["args"], "--state-dir")
    state_mount = next((m for m in agent["volumeMounts"] if m["mountPath"] == state_dir), None)
    state_volume = next((v for v in pod["volumes"] if state_mount and v["name"] == state_mount["name"]), None)
    c.check(state_mount is not None and not state_mount.get("readOnly", False),
            f"agent --state-dir {state_dir} is a writable mount: {state_mount}")
    want_state = "/var/lib/mapsentry-custom" if c.scenario == "custom" else "/var/lib/mapsentry"
    c.check(state_volume is not None and state_volume.get("hostPath", {}).get("type") == "DirectoryOrCreate"
            and state_volume["hostPath"].get("path") == want_state,
            f"agent state directory is the node's {want_state} (hostPath, DirectoryOrCreate): {state_volume}")
    c.check(pod.get("tolerations"), "agent has tolerations")
    # Its priority class: its own (installs in any namespace) unless one is named.
    priority = pod.get("priorityClassName")
    classes = {d["metadata"]["name"]: d for d in c.find("PriorityClass")}
    if c.scenario == "custom":
        c.check(priority == "mapsentry-critical" and not classes, "agent priority class as given, none created")
    else:
        c.check(priority in classes and classes[priority]["value"] == 1000000000
                and not classes[priority].get("globalDefault"),
                f"agent priority class {priority} is the chart's own (value 1000000000, not the default)")
    # Scheduled only where the image runs: each required node selector term holds the arch.
    for workload in (ds, dep):
        terms = (workload["spec"]["template"]["spec"].get("affinity", {}).get("nodeAffinity", {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
        c.check(terms and all(ARCH in (t.get("matchExpressions") or []) for t in terms),
                f"{workload['kind']} pods require kubernetes.io/arch in [amd64] in every term: {terms}")
    # Startup probes: liveness waits for the first success (loading BPF, reading the retention log back).
    c.check(agent.get("startupProbe", {}).get("httpGet") == {"path": "/healthz", "port": "metrics"}
            and agent["startupProbe"]["periodSeconds"] * agent["startupProbe"]["failureThreshold"] >= 120,
            "agent startup probe: /healthz, at least 120 s to start")
    c.check(not any(p.get("hostPort") for p in agent.get("ports", [])), "agent opens no host port")
    aport = next((p["containerPort"] for p in agent.get("ports", []) if p["name"] == "metrics"), None)
    c.check(arg_value(agent["args"], "--metrics-listen") == f"0.0.0.0:{aport}",
            f"agent serves /metrics, /healthz, /readyz on its metrics port {aport}")
    c.check(agent.get("livenessProbe", {}).get("httpGet") == {"path": "/healthz", "port": "metrics"}
            and agent.get("readinessProbe", {}).get("httpGet") == {"path": "/readyz", "port": "metrics"},
            "agent probes: /healthz (liveness) and /readyz (readiness) on the metrics port")

    # The collector: non-root, nothing added.
    cpod = dep["spec"]["template"]["spec"]
    collector = cpod["containers"][0]
    csc = collector["securityContext"]
    c.check(cpod["securityContext"].get("runAsNonRoot") is True and cpod["securityContext"].get("runAsUser", 0) != 0,
            "collector runs as a non-root user")
    c.check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False,
            "collector: read-only root, no privilege escalation")
    c.check(csc["capabilities"] == {"drop": ["ALL"]}, "collector drops all capabilities and adds none")
    c.check(not cpod.get("hostPID") and not cpod.get("hostNetwork"), "collector shares no host namespace")
    c.check(not any("hostPath" in v for v in cpod.get("volumes", [])), "collector mounts no host path")
    live = {k: v for k, v in collector["livenessProbe"].items() if k in ("grpc", "tcpSocket")}
    c.check(live and {k: v for k, v in collector.get("startupProbe", {}).items() if k in ("grpc", "tcpSocket")} == live,
            "collector startup probe: the liveness check")

    # The CRDs: part of the release (upgraded with it), kept when it is uninstalled.
    crds = c.find("CustomResourceDefinition")
    c.check(sorted(d["metadata"]["name"] for d in crds) == ["clustermmappolicies.mapsentry.dev", "mmappolicies.mapsentry.dev"],
            "both CRDs rendered as templates")
    keep = "keep" if c.scenario != "custom" else None  # custom: crds.keep false
    c.check(all(d["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == keep
                and d["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "Helm" for d in crds),
            f"CRDs carry helm.sh/resource-policy: {keep} and the release's labels")

    # The agents' metrics: a headless Service over every agent pod's metrics port.
    amsvc = c.one("Service", "-agent-metrics")
    if amsvc:
        c.check(amsvc["spec"].get("clusterIP") == "None"
                and selects(amsvc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
                and [p["targetPort"] for p in amsvc["spec"]["ports"]] == ["metrics"],
                "agent metrics Service: headless, selects the agents, targets their metrics port")

    # The Service: selects the collector's pods, and is where the agents dial.
    c.check(selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]),
            "collector Service selects the collector pods")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    cports = {p["name"]: p["containerPort"] for p in collector["ports"]}
    for name, port in ports.items():
        c.check(port["targetPort"] in cports, f"Service port {name} targets a named container port")
    url = arg_value(agent["args"], "--collector")
    ns = svc["metadata"]["namespace"]
    grpc_port = ports.get("grpc", {}).get("port")
    c.check(url and url.split("://", 1)[1] == f"{svc['metadata']['name']}.{ns}.svc:{grpc_port}",
            f"agent --collector {url} is the collector Service")
    c.check(arg_value(collector["args"], "--listen") == f"0.0.0.0:{cports.get('grpc')}",
            "collector --listen is its grpc container port")

    # RBAC: exactly the rules each component needs, bound to its ServiceAccount.
    for suffix, want_rules, sa in (("-agent", AGENT_RULES, pod["serviceAccountName"]),
                                   ("-collector", COLLECTOR_RULES, cpod["serviceAccountName"])):
        role = c.one("ClusterRole", suffix)
        binding = c.one("ClusterRoleBinding", suffix)
        if role and binding:
            got = rules_of(role)
            c.check(got == want_rules, f"ClusterRole{suffix} rules: extra {sorted(got - want_rules)}, "
                                       f"missing {sorted(want_rules - got)}")
            c.check(not any("*" in x for rule in got for x in rule), f"ClusterRole{suffix} has no wildcard")
            c.check(binding["roleRef"]["name"] == role["metadata"]["name"], f"ClusterRoleBinding{suffix} binds its role")
            c.check(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
                    f"ClusterRoleBinding{suffix} binds the component's ServiceAccount only")
    return ds, dep, svc


def scenario_checks(c, ds, dep, svc):
    agent = ds["spec"]["template"]["spec"]["containers"][0]
    cpod = dep["spec"]["template"]["spec"]
    collector = cpod["containers"][0]
    kinds = {d["kind"] for d in c.docs}
    tls_flags = {"--tls-cert", "--tls-key", "--client-ca", "--ca", "--cert", "--key", "--tokens", "--token-file"}
    used = {a.split("=", 1)[0] for a in agent["args"] + collector["args"]}
    serves_tls = arg_value(collector["args"], "--tls-cert") is not None
    c.check(("--plaintext" in collector["args"]) != serves_tls,
            f"{c.scenario}: the collector serves TLS, or says --plaintext explicitly (not both)")
    if c.scenario in ("default", "custom"):
        c.check(not kinds & {"ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"},
                f"{c.scenario}: no ServiceMonitor, NetworkPolicy or PDB")
        c.check(not used & tls_flags, f"{c.scenario}: no TLS flags: {used & tls_flags}")
        c.check(arg_value(agent["args"], "--collector").startswith("http://"), "plaintext URL without TLS")
        c.check("--plaintext" in collector["args"], f"{c.scenario}: the collector is told --plaintext")
        c.check(collector["livenessProbe"].get("grpc") == {"port": 50051},
                "collector liveness: gRPC health of the server")
        c.check(collector["readinessProbe"].get("grpc") == {"port": 50051, "service": "mapsentry.v1.AgentService"},
                "collector readiness: gRPC health of the agent service (NOT_SERVING while draining)")
    data = next((v for v in cpod["volumes"] if v["name"] == "data"), None)
    leases = c.find("Role", "-lease")
    if c.scenario == "jetstream":
        jetstream_checks(c, dep, collector, cpod, data, leases)
        return
    c.check(not leases and not c.find("RoleBinding"), f"{c.scenario}: no Lease Role without JetStream")
    c.check(dep["spec"]["replicas"] == 1, f"{c.scenario}: one collector without JetStream")
    c.check(not any(a.startswith("--jetstream") for a in collector["args"]), f"{c.scenario}: no --jetstream")
    c.check(any(m["mountPath"] == "/var/lib/mapsentry" and m["name"] == "data" and not m.get("readOnly")
                for m in collector["volumeMounts"]) and data is not None,
            "collector retention log volume mounted read-write at /var/lib/mapsentry")
    c.check(arg_value(collector["args"], "--data-dir") == "/var/lib/mapsentry", "collector --data-dir is that volume")
    if c.scenario == "custom":
        c.check(data and data.get("persistentVolumeClaim") == {"claimName": "mapsentry-retention"},
                "retention log on the given claim")
        c.check(arg_value(collector["args"], "--data-max-bytes") == "4294967296", "--data-max-bytes as given")
        c.check(arg_value(collector["args"], "--data-sync") == "always", "--data-sync as given")
    else:
        c.check(data and data.get("emptyDir") == {"sizeLimit": "2Gi"}, "retention log on a 2Gi emptyDir")
        c.check(arg_value(collector["args"], "--data-max-bytes") == "1073741824", "--data-max-bytes 1 GiB")
        c.check(arg_value(collector["args"], "--data-sync") == "interval", "--data-sync interval by default")
    if c.scenario == "default":
        c.check(agent["image"] == collector["image"] and agent["image"].startswith("mapsentry:"),
                "one mapsentry image, tagged with the appVersion")
    if c.scenario == "tls":
        c.check(arg_value(agent["args"], "--collector").startswith("https://"), "agent dials https://")
        secrets = {v["name"]: v["secret"]["secretName"] for v in cpod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in collector["volumeMounts"]}
        for flag, secret, key in (("--tls-cert", "mapsentry-collector-tls", "tls.crt"),
                                  ("--tls-key", "mapsentry-collector-tls", "tls.key"),
                                  ("--client-ca", "mapsentry-client-ca", "ca.crt")):
            path = arg_value(collector["args"], flag) or ""
            directory, _, file = path.rpartition("/")
            c.check(file == key and secrets.get(mounts.get(directory)) == secret,
                    f"collector {flag}={path} is {key} of Secret {secret}")
        apod = ds["spec"]["template"]["spec"]
        asecrets = {v["name"]: v["secret"]["secretName"] for v in apod["volumes"] if "secret" in v}
        amounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        for flag, key in (("--ca", "ca.crt"), ("--cert", "tls.crt"), ("--key", "tls.key")):
            path = arg_value(agent["args"], flag) or ""
            directory, _, file = path.rpartition("/")
            c.check(file == key and asecrets.get(amounts.get(directory)) == "mapsentry-agent-tls",
                    f"agent {flag}={path} is {key} of Secret mapsentry-agent-tls")
        c.check("tcpSocket" in collector["livenessProbe"] and "tcpSocket" in collector["readinessProbe"],
                "with TLS the collector probes are TCP checks (kubelet gRPC probes speak no TLS)")
    if c.scenario == "certmanager":
        certs = {d["metadata"]["name"]: d for d in c.find("Certificate")}
        issuers = {d["metadata"]["name"]: d for d in c.find("Issuer")}
        server = certs.get(f"{svc['metadata']['name']}")
        ns = svc["metadata"]["namespace"]
        c.check(server and f"{svc['metadata']['name']}.{ns}.svc" in server["spec"]["dnsNames"]
                and "server auth" in server["spec"]["usages"], "server Certificate for the collector Service's names")
        agent_cert = next((d for d in certs.values() if "client auth" in d["spec"].get("usages", [])), None)
        c.check(agent_cert is not None, "a client Certificate for the agents")
        secrets = {v["name"]: v["secret"]["secretName"] for v in cpod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in collector["volumeMounts"]}
        for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--client-ca", "ca.crt")):
            path = arg_value(collector["args"], flag) or ""
            directory, _, file = path.rpartition("/")
            c.check(server and file == key and secrets.get(mounts.get(directory)) == server["spec"]["secretName"],
                    f"collector {flag}={path} is {key} of the server Certificate's Secret")
        apod = ds["spec"]["template"]["spec"]
        asecrets = {v["name"]: v["secret"]["secretName"] for v in apod["volumes"] if "secret" in v}
        amounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        for flag, key in (("--ca", "ca.crt"), ("--cert", "tls.crt"), ("--key", "tls.key")):
            path = arg_value(agent["args"], flag) or ""
            directory, _, file = path.rpartition("/")
            c.check(agent_cert and file == key and asecrets.get(amounts.get(directory)) == agent_cert["spec"]["secretName"],
                    f"agent {flag}={path} is {key} of the agent Certificate's Secret")
        # Both issued by the chart's CA Issuer, whose CA comes from the self-signed Issuer.
        ca = certs.get(f"{svc['metadata']['name'].removesuffix('-collector')}-ca")
        for cert in (server, agent_cert):
            ref = (cert or {}).get("spec", {}).get("issuerRef", {})
            c.check(ref.get("kind") == "Issuer" and ref.get("name") in issuers
                    and issuers[ref["name"]]["spec"].get("ca", {}).get("secretName") == (ca or {}).get("spec", {}).get("secretName"),
                    f"{(cert or {}).get('metadata', {}).get('name')} issued by the chart's CA Issuer")
        c.check(ca and ca["spec"].get("isCA") is True
                and issuers.get(ca["spec"]["issuerRef"]["name"], {}).get("spec", {}).get("selfSigned") == {},
                "the chart's CA is issued by its self-signed Issuer")
    if c.scenario == "tokens":
        c.check(arg_value(agent["args"], "--collector").startswith("https://"), "agent dials https://")
        c.check(not used & {"--client-ca", "--cert", "--key"}, "tokens without mutual TLS")
        for pod, container, flag, secret, key in (
                (cpod, collector, "--tokens", "mapsentry-tokens", "tokens.jsonl"),
                (ds["spec"]["template"]["spec"], agent, "--token-file", "mapsentry-agent-token", "token")):
            secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m.get("readOnly")}
            path = arg_value(container["args"], flag) or ""
            directory, _, file = path.rpartition("/")
            c.check(file == key and secrets.get(mounts.get(directory)) == secret,
                    f"{flag}={path} is {key} of Secret {secret}, mounted read-only")
    if c.scenario == "monitoring":
        amsvc = c.one("Service", "-agent-metrics")
        for sm, target in ((c.one("ServiceMonitor", "-collector"), svc), (c.one("ServiceMonitor", "-agent"), amsvc)):
            if not (sm and target):
                continue
            ports = {p["name"] for p in target["spec"]["ports"]}
            what = f"ServiceMonitor {sm['metadata']['name']}"
            c.check(all(e["port"] in ports for e in sm["spec"]["endpoints"]), f"{what} scrapes a port of {target['metadata']['name']}")
            c.check(selects(sm["spec"]["selector"]["matchLabels"], target["metadata"]["labels"])
                    and not any(selects(sm["spec"]["selector"]["matchLabels"], o["metadata"]["labels"])
                                for o in c.find("Service") if o is not target),
                    f"{what} selects {target['metadata']['name']} and no other Service")
            c.check(all(e.get("honorLabels") is True for e in sm["spec"]["endpoints"]),
                    f"{what} keeps the series' own namespace/pod labels (honorLabels)")
            c.check(sm["metadata"]["labels"].get("release") == "prometheus", f"{what} carries its extra labels")
        c.check(arg_value(collector["args"], "--metrics-listen") == "0.0.0.0:9090", "collector serves metrics on 9090")
        c.check(arg_value(collector["args"], "--metrics-workload-labels") == "namespace",
                "violation series labelled by namespace only, as given")
        cports = {p["name"] for p in collector["ports"]}
        npa = c.one("NetworkPolicy", "-agent")
        npc = c.one("NetworkPolicy", "-collector")
        if npa:
            aports = {p["name"] for p in agent.get("ports", [])}
            c.check(npa["spec"]["policyTypes"] == ["Ingress"]
                    and [p["port"] for r in npa["spec"]["ingress"] for p in r["ports"]] == ["metrics"]
                    and "metrics" in aports,
                    "agents accept connections only to their metrics port")
            c.check(all(r.get("from") == [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "monitoring"}}}] for r in npa["spec"]["ingress"]),
                    "from the configured scrapers only")
            c.check(selects(npa["spec"]["podSelector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"]),
                    "agent NetworkPolicy selects the agents")
        if npc:
            c.check(selects(npc["spec"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]),
                    "collector NetworkPolicy selects the collector")
            rules = npc["spec"]["ingress"]
            c.check(all(p["port"] in cports for r in rules for p in r["ports"]), "NetworkPolicy ports are container ports")
            grpc_from = next(r["from"] for r in rules if r["ports"][0]["port"] == "grpc")
            c.check(any(selects(f.get("podSelector", {}).get("matchLabels", {"-": "-"}),
                                ds["spec"]["template"]["metadata"]["labels"]) for f in grpc_from),
                    "collector NetworkPolicy admits the agents to gRPC")
            c.check(len(grpc_from) == 2, "and the configured subscribers, no one else")
        pdb = c.one("PodDisruptionBudget")
        if pdb:
            c.check(pdb["spec"].get("minAvailable") == 1 and "maxUnavailable" not in pdb["spec"], "PDB minAvailable 1")
            c.check(selects(pdb["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]),
                    "PDB selects the collector")
    if c.scenario == "custom":
        apod = ds["spec"]["template"]["spec"]
        c.check(agent["image"] == "registry.example.com/security/mapsentry@sha256:"
                + "0123456789abcdef" * 4, "image by digest")
        c.check({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in apod["tolerations"]
                and len(apod["tolerations"]) == 1, "agent tolerations as given")
        c.check(apod["priorityClassName"] == "mapsentry-critical", "agent priority class as given")
        c.check(agent["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}, "agent requests as given")
        c.check(collector["resources"]["limits"] == {"memory": "4Gi"}, "collector limits as given")
        for container, flag, value in ((agent, "--ring-buffer-bytes", "16777216"), (agent, "--buffer-bytes", "134217728"),
                                       (agent, "--attach", "tracepoint"), (agent, "--btf", "/sys/kernel/btf/vmlinux"),
                                       (collector, "--retention-events", "2000000"),
                                       (collector, "--subscriber-queue", "8192"),
                                       (collector, "--max-message-bytes", "33554432")):
            c.check(arg_value(container["args"], flag) == value, f"{flag}={value} (integers printed whole)")
        cg = next(v for v in apod["volumes"] if v["name"] == "cgroup")
        c.check(cg["hostPath"]["path"] == "/sys/fs/cgroup/unified", "host cgroup path as given")
        c.check(any(m["mountPath"] == "/sys/kernel/debug" and m["readOnly"] for m in agent["volumeMounts"]),
                "debugfs mounted read-only")
        c.check(dep["spec"]["strategy"] == {"type": "Recreate"}, "collector strategy as given")
        c.check(svc["spec"]["type"] == "LoadBalancer", "Service type as given")
        c.check(all(d["metadata"]["labels"].get("team") == "security" for d in c.docs
                    if d["kind"] != "CustomResourceDefinition"), "commonLabels on every resource")
        c.check(all(d["metadata"]["name"].startswith("sentry") for d in c.docs
                    if d["kind"] != "CustomResourceDefinition"), "fullnameOverride names every resource")


def jetstream_checks(c, dep, collector, cpod, data, leases):
    """Replicas on JetStream: stateless, the values as flags, credentials and TLS from Secrets,
    the Lease's exact Role bound to the collector's ServiceAccount."""
    args = collector["args"]
    c.check(dep["spec"]["replicas"] == 3, "three collector replicas")
    c.check(data is None and arg_value(args, "--data-dir") is None, "replicas keep no retention log")
    for flag, value in (("--jetstream", "nats://nats.nats.svc:4222"), ("--jetstream-replicas", "3"),
                        ("--jetstream-max-bytes", "53687091200"), ("--jetstream-max-age", "172800"),
                        ("--jetstream-alerts-max-bytes", "1073741824"), ("--jetstream-alerts-max-age", "604800"),
                        ("--jetstream-duplicate-window", "120"), ("--jetstream-partitions", "16"),
                        ("--lease-seconds", "15"), ("--lease-name", "mapsentry-collector"),
                        ("--jetstream-creds", "/etc/mapsentry/nats/collector.creds"),
                        ("--jetstream-ca", "/etc/mapsentry/nats-tls/ca.crt")):
        c.check(arg_value(args, flag) == value, f"{flag}={value}")
    secrets = {v["name"]: v["secret"]["secretName"] for v in cpod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m["name"] for m in collector["volumeMounts"] if m.get("readOnly")}
    c.check(secrets.get(mounts.get("/etc/mapsentry/nats")) == "mapsentry-nats", "NATS creds from their Secret, read-only")
    c.check(secrets.get(mounts.get("/etc/mapsentry/nats-tls")) == "mapsentry-nats-tls", "NATS CA from its Secret, read-only")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in collector.get("env", [])}
    c.check(env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace",
            "the replica knows its pod name (its lease identity) and namespace (its Lease's)")
    role = leases[0] if len(leases) == 1 else None
    c.check(role is not None, "one Lease Role")
    if role:
        c.check(role["metadata"]["namespace"] == dep["metadata"]["namespace"], "the Lease Role is in the release namespace")
        c.check(role["rules"] == LEASE_RULES, f"Lease Role rules are exactly {LEASE_RULES}: {role['rules']}")
        binding = c.one("RoleBinding", "-lease")
        if binding:
            c.check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                           "name": role["metadata"]["name"]}, "RoleBinding binds the Lease Role")
            c.check(binding["subjects"] == [{"kind": "ServiceAccount", "name": cpod["serviceAccountName"],
                                             "namespace": dep["metadata"]["namespace"]}],
                    "RoleBinding binds the collector's ServiceAccount only")
    pdb = c.one("PodDisruptionBudget")
    if pdb:
        c.check(pdb["spec"].get("minAvailable") == 2, "PDB keeps two of three replicas")


def print_args(path, component):
    """The container args of one component, one per line (for helm/test.sh)."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kind = {"agent": "DaemonSet", "collector": "Deployment"}[component]
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].endswith("-" + component):
            print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))
            return 0
    print(f"no {kind} *-{component} in {path}", file=sys.stderr)
    return 1


# Capability numbers (linux/capability.h) of the ones the chart may grant the agent.
CAP_NUMBERS = {"SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


def print_caps(path):
    """The agent's added capabilities that this process may pass on (in its bounding set), as
    setpriv names them (`bpf,perfmon`); the others go to stderr."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    caps = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    with open("/proc/self/status", encoding="utf-8") as f:
        bounding = int(next(l.split()[1] for l in f if l.startswith("CapBnd:")), 16)
    usable = [c for c in caps if bounding >> CAP_NUMBERS[c] & 1]
    for c in caps:
        if c not in usable:
            print(f"CAP_{c} is not in this machine's bounding set: checked without it", file=sys.stderr)
    print(",".join(c.lower() for c in usable))
    return 0


def main():
    if sys.argv[1] == "--args":
        return print_args(sys.argv[2], sys.argv[3])
    if sys.argv[1] == "--caps":
        return print_caps(sys.argv[2])
    scenario, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    c = Checker(scenario, docs)
    ds, dep, svc = common(c)
    if ds and dep and svc:
        scenario_checks(c, ds, dep, svc)
    for failure in c.failures:
        print(f"FAIL {scenario}: {failure}")
    print(f"assertions.py {scenario}: {c.count - len(c.failures)} of {c.count} checks hold")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
