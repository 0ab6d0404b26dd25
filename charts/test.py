"""Checks of the odds-operator chart and the operator's manifests, without a cluster.

Run through charts/test.sh (it provides the venv). Every check prints PASS or FAIL with the
reason; the last line is 'N passed, N failed' and the exit code is non-zero on any failure.
"""

import base64
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

KUBE_VERSION = "1.32.0"
ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
CHART = ROOT / "charts" / "odds-operator"
RESULTS = {"passed": 0, "failed": 0}


def check(name, fn):
    try:
        detail = fn()
        RESULTS["passed"] += 1
        print(f"PASS {name}" + (f" ({detail})" if detail else ""))
    except Exception as error:  # every failure is reported, none stops the others
        RESULTS["failed"] += 1
        print(f"FAIL {name}: {error}")


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def render(values, chart_dir=CHART, upgrade=False):
    """The chart's manifests as `helm install` (or, with upgrade, `helm upgrade` as revision 2)
    would apply them. Like Helm, this never includes the files of a chart's crds/ directory."""
    chart = helm.Chart.load(str(chart_dir))
    if upgrade:
        manifests = chart.render(values, name="odds-operator", namespace="odds-system", revision=2, is_upgrade=True)
    else:
        manifests = chart.render(values, name="odds-operator", namespace="odds-system", is_install=True)
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml"):
            out.extend(docs(text))
    return out


def validate_builtin(objects):
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
    return f"{len(objects)} objects valid against Kubernetes {KUBE_VERSION} (strict)"


def crd_schema(path):
    crd = docs(path.read_text())[0]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_against(schema, obj):
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
    if errors:
        e = errors[0]
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {list(e.path)}: {e.message}")


def lint():
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}", namespace="odds-system")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or problems:
        raise AssertionError(json.dumps({"errors": report.get("errors"), "messages": problems}))
    return f"{report.get('total_charts_linted')} chart linted"


def default_render():
    objects = render({})
    kinds = sorted(o["kind"] for o in objects)
    expected = sorted(["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                       "RoleBinding", "Deployment", "Service", "ConfigMap"])  # ConfigMap: the Grafana dashboard
    assert kinds == expected, f"kinds {kinds} != {expected}"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WATCH_NAMESPACE" not in env, "empty watchNamespaces must watch all namespaces"
    assert env["LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    return validate_builtin(objects)


def custom_render():
    values = {
        "watchNamespaces": ["odds", "odds-staging"],
        "leaderElection": False,
        "replicaCount": 1,
        "serviceAccount": {"create": False, "name": "existing"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
    }
    objects = render(values)
    assert not any(o["kind"] == "ServiceAccount" for o in objects), "serviceAccount.create=false"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["WATCH_NAMESPACE"] == "odds,odds-staging" and env["LEADER_ELECTION"] == "false", env
    # Namespaced install: the operator's rules only as a Role in each served namespace (the
    # leader-election Role stays in the release namespace), nothing cluster-wide.
    kinds = [o["kind"] for o in objects]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, kinds
    roles = {o["metadata"]["namespace"]: o for o in objects
             if o["kind"] == "Role" and not o["metadata"]["name"].endswith("-leader-election")}
    assert sorted(roles) == ["odds", "odds-staging"], sorted(roles)
    cluster_rules = next(o for o in render({}) if o["kind"] == "ClusterRole")["rules"]
    for namespace, role in roles.items():
        assert role["rules"] == cluster_rules, f"Role in {namespace} differs from the ClusterRole"
        binding = next(o for o in objects if o["kind"] == "RoleBinding"
                       and o["metadata"]["namespace"] == namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}, binding
        assert binding["subjects"][0]["name"] == "existing", binding
    assert pod["serviceAccountName"] == "existing"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    return validate_builtin(objects)


def values_schema():
    chart = helm.Chart.load(str(CHART))
    assert chart.schema is not None, "values.schema.json missing"
    chart.validate_schema({})
    accepted = []
    for bad in ({"replicaCount": 0}, {"image": {"pullPolicy": "Sometimes"}}, {"logFormat": "xml"},
                {"leaderElection": False, "replicaCount": 2}, {"replicas": 2},
                {"monitoring": {"serviceMonitor": {"interval": "soon"}}},
                {"monitoring": {"prometheusRule": {"staleSkipRatio": 2}}},
                {"monitoring": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}}):
        try:
            chart.validate_schema(bad)
            accepted.append(bad)
        except helm.HelmValuesError:
            pass
    assert not accepted, f"bad values accepted: {accepted}"
    return "defaults accepted, 8 bad value sets rejected"


CRD_FILE = pathlib.Path("files") / "oddspipelines.crd.yaml"  # in the chart; loaded by templates/crd.yaml
KEEP = ("helm.sh/resource-policy", "keep")


def rendered_crds(objects):
    return [o for o in objects if o["kind"] == "CustomResourceDefinition"]


def chart_crd_is_current():
    """The chart ships the generated CRD as a template (so `helm upgrade` updates it), kept on
    uninstall, and leaves it out with crds.install=false."""
    generated = (ROOT / "crds" / "oddspipelines.yaml").read_text()
    packaged = (CHART / CRD_FILE).read_text()
    assert generated == packaged, \
        f"charts/odds-operator/{CRD_FILE} is stale: cp crds/oddspipelines.yaml charts/odds-operator/{CRD_FILE}"
    crds = rendered_crds(render({}))
    assert len(crds) == 1, f"the default chart must render exactly one CustomResourceDefinition, not {len(crds)}"
    crd, expected = crds[0], docs(generated)[0]
    annotations = crd["metadata"].get("annotations") or {}
    assert annotations.get(KEEP[0]) == KEEP[1], f"the CRD needs the annotation {KEEP[0]}: {KEEP[1]}: {annotations}"
    assert crd["metadata"]["name"] == expected["metadata"]["name"], crd["metadata"]["name"]
    assert crd["spec"] == expected["spec"], "the rendered CRD's spec differs from crds/oddspipelines.yaml"
    assert not rendered_crds(render({"crds": {"install": False}})), "crds.install=false must render no CRD"
    assert not (CHART / "crds").exists(), "charts/odds-operator/crds/ must not exist (Helm never upgrades it)"
    return "rendered once with the keep annotation, spec == crds/oddspipelines.yaml; none with crds.install=false; " + \
        validate_builtin(crds)


def crd_upgrade():
    """Offline `helm upgrade`: the next release's CRD (a new status field and a new CEL rule) is
    in the manifest an upgrade applies. A chart shipping the same CRD in crds/ would not apply it:
    Helm installs crds/ once and never upgrades it, so no chart here may have that directory."""
    charts = sorted(p.parent for p in (ROOT / "charts").rglob("Chart.yaml"))
    assert charts, "no chart under charts/"
    for chart_dir in charts:
        assert not (chart_dir / "crds").exists(), f"{chart_dir.relative_to(ROOT)}/crds/ exists: Helm never upgrades it"
        assert not helm.Chart.load(str(chart_dir)).crds, f"{chart_dir.relative_to(ROOT)} ships CRDs outside templates/"
    rule = {"rule": "!has(self.status) || !has(self.status.upgradeProbe) || self.status.upgradeProbe.size() <= 16",
            "message": "upgradeProbe: a rule only the next release has"}
    with tempfile.TemporaryDirectory() as tmp:
        previous = pathlib.Path(tmp) / "previous" / "odds-operator"
        following = pathlib.Path(tmp) / "next" / "odds-operator"
        shutil.copytree(CHART, previous)
        shutil.copytree(CHART, following)
        # The next release: a new status property and a new x-kubernetes-validations rule in the
        # CRD file, and a new chart version.
        crd = yaml.safe_load((following / CRD_FILE).read_text())
        schema = next(v for v in crd["spec"]["versions"] if v["storage"])["schema"]["openAPIV3Schema"]
        schema["properties"]["status"]["properties"]["upgradeProbe"] = {"type": "string", "description": "new in the next release"}
        schema["x-kubernetes-validations"].append(rule)
        (following / CRD_FILE).write_text(yaml.safe_dump(crd, sort_keys=False))
        meta = yaml.safe_load((following / "Chart.yaml").read_text())
        old_version = meta["version"]
        major, minor, _ = (int(x) for x in old_version.split("-")[0].split("."))
        meta["version"] = f"{major}.{minor + 1}.0"
        (following / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))

        def probe(objects):
            crds = rendered_crds(objects)
            assert len(crds) == 1, f"{len(crds)} CRDs rendered"
            version = next(v for v in crds[0]["spec"]["versions"] if v["storage"])
            s = version["schema"]["openAPIV3Schema"]
            return ("upgradeProbe" in s["properties"]["status"]["properties"], rule in s["x-kubernetes-validations"],
                    crds[0])

        has_field, has_rule, _ = probe(render({}, previous))
        assert not has_field and not has_rule, "the previous release must not have the probe field or rule"
        has_field, has_rule, upgraded = probe(render({}, following, upgrade=True))
        assert has_field and has_rule, "helm upgrade to the next release would not apply its new CRD field and rule"
        assert upgraded["metadata"]["annotations"][KEEP[0]] == KEEP[1], "the upgraded CRD lost the keep annotation"
        assert upgraded["metadata"]["labels"]["helm.sh/chart"] == f"odds-operator-{meta['version']}"
        validate_builtin([upgraded])
        # The contrast: the same next release with the CRD in crds/ instead of templates/.
        legacy = pathlib.Path(tmp) / "legacy" / "odds-operator"
        shutil.copytree(following, legacy)
        (legacy / "templates" / "crd.yaml").unlink()
        (legacy / "crds").mkdir()
        shutil.copy(following / CRD_FILE, legacy / "crds" / "oddspipelines.yaml")
        assert len(helm.Chart.load(str(legacy)).crds) == 1
        assert not rendered_crds(render({}, legacy, upgrade=True)), "crds/ content must not be in the upgrade manifest"
    return (f"{old_version} -> {meta['version']}: the upgrade manifest carries the new status field and CEL rule "
            f"(crds/ would not); {len(charts)} chart(s) without crds/")


def golden_children():
    return docs((ROOT / "operator" / "tests" / "golden" / "sample-children.yaml").read_text())


def children_valid():
    children = golden_children()
    builtin = [c for c in children if c["apiVersion"] != "kafka.strimzi.io/v1"]
    return validate_builtin(builtin)


def strimzi_schema(file_name):
    """A Strimzi CRD schema from STRIMZI_CRDS (default ../shared/vendor/strimzi-1.2.0)."""
    folder = pathlib.Path(os.environ.get("STRIMZI_CRDS", ROOT.parent / "shared" / "vendor" / "strimzi-1.2.0"))
    path = folder / file_name
    if not path.exists():
        raise AssertionError(f"Strimzi CRD {path} not found: set STRIMZI_CRDS to the folder holding Strimzi 1.2's CRDs")
    return crd_schema(path)


def topics_valid():
    topics = [c for c in golden_children() if c["kind"] == "KafkaTopic"]
    assert len(topics) == 2, "updates topic and DLQ"
    schema = strimzi_schema("043-Crd-kafkatopic.yaml")
    for topic in topics:
        validate_against(schema, topic)
    users = [c for c in golden_children() if c["kind"] == "KafkaUser"]
    assert len(users) == 1, "the sample logs in to Kafka: one KafkaUser"
    for user in users:
        validate_against(strimzi_schema("044-Crd-kafkauser.yaml"), user)
    return f"{len(topics)} KafkaTopics and {len(users)} KafkaUser valid against Strimzi's CRDs"


def keda_schema(file_name):
    """A KEDA CRD schema from KEDA_CRDS (default ../shared/vendor/keda-2.20.2)."""
    folder = pathlib.Path(os.environ.get("KEDA_CRDS", ROOT.parent / "shared" / "vendor" / "keda-2.20.2"))
    path = folder / file_name
    if not path.exists():
        raise AssertionError(f"KEDA CRD {path} not found: set KEDA_CRDS to the folder holding KEDA 2.20.2's CRDs")
    crd = docs(path.read_text())[0]
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]


def scaled_objects_valid():
    """The operator's ScaledObjects (every sample variant and KEDA mode, written by
    `cargo test -p odds-operator keda_schema`) against KEDA 2.20.2's schema."""
    built = docs((ROOT / "operator" / "tests" / "golden" / "keda-scaledobjects.yaml").read_text())
    objects = [o for o in built if o["kind"] == "ScaledObject"]
    assert objects, "no ScaledObjects in the golden file"
    schema = keda_schema("keda.sh_scaledobjects.yaml")
    for obj in objects:
        validate_against(schema, obj)
    # The lag trigger's login on a secured Kafka, and every trigger that refers to one has it.
    logins = [o for o in built if o["kind"] == "TriggerAuthentication"]
    assert logins, "no TriggerAuthentication in the golden file (the sample logs in to Kafka)"
    for obj in logins:
        validate_against(keda_schema("keda.sh_triggerauthentications.yaml"), obj)
    names = {o["metadata"]["name"] for o in logins}
    for obj in objects:
        for trigger in obj["spec"]["triggers"]:
            ref = trigger.get("authenticationRef")
            assert not ref or ref["name"] in names, f"{ref} names no TriggerAuthentication"
    triggers = sorted({o["spec"]["triggers"][0]["type"] for o in objects})
    assert triggers == ["kafka", "prometheus"], triggers
    # The connections query names a metric the odds service really exports.
    exported = exported_metrics()
    for obj in objects:
        trigger = obj["spec"]["triggers"][0]
        if trigger["type"] == "prometheus":
            names = set(re.findall(r"\b(odds_[a-z0-9_]+)\{", trigger["metadata"]["query"]))
            assert names and names <= set(exported), f"{names} not all exported: {trigger['metadata']['query']}"
    return f"{len(objects)} ScaledObjects ({', '.join(triggers)} triggers) and {len(logins)} TriggerAuthentications valid against KEDA 2.20.2's CRDs"


def prometheus_operator_schema(file_name):
    """A prometheus-operator CRD schema (v1) from PROMETHEUS_OPERATOR_CRDS (default
    ../shared/vendor/prometheus-operator-0.93.0)."""
    folder = pathlib.Path(os.environ.get("PROMETHEUS_OPERATOR_CRDS",
                                         ROOT.parent / "shared" / "vendor" / "prometheus-operator-0.93.0"))
    path = folder / file_name
    if not path.exists():
        raise AssertionError(f"prometheus-operator CRD {path} not found: set PROMETHEUS_OPERATOR_CRDS to the folder "
                             "holding prometheus-operator 0.93.0's CRDs (example/prometheus-operator-crd)")
    crd = docs(path.read_text())[0]
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


MONITORING_CRDS = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
                   "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
                   "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml"}


def pruned_fields(schema, value, path=""):
    """Fields of `value` a structural CRD schema does not know: the API server would silently
    drop them (a JSON-schema validator accepts them, CRD schemas do not forbid extra keys)."""
    out = []
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, field in value.items():
            at = f"{path}.{key}"
            if key in props:
                out += pruned_fields(props[key], field, at)
            elif isinstance(schema.get("additionalProperties"), dict):
                out += pruned_fields(schema["additionalProperties"], field, at)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(at)
    elif isinstance(value, list) and schema.get("type") == "array":
        for i, item in enumerate(value):
            out += pruned_fields(schema.get("items") or {}, item, f"{path}[{i}]")
    return out


def validate_monitoring(obj, schemas):
    """`obj` (a monitoring.coreos.com/v1 object) against the released CRD: types, required
    fields, enums and patterns (jsonschema), and no field the API server would prune."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    schema = schemas[obj["kind"]]
    validate_against(schema, obj)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    pruned = pruned_fields(schema, body)
    assert not pruned, f"{obj['kind']}/{obj['metadata']['name']}: not in the schema (would be pruned): {pruned}"


def monitoring_schemas():
    return {kind: prometheus_operator_schema(name) for kind, name in MONITORING_CRDS.items()}


def pod_monitors_valid():
    """The operator's PodMonitors (connections mode; every sample variant, written by
    `cargo test -p odds-operator monitoring_schema`) against prometheus-operator 0.93.0's schema.
    Each scrapes the pipeline's workloads on a port they have and adds every label the
    ScaledObjects' connections query selects (but `namespace`, which the Prometheus Operator
    adds itself)."""
    objects = docs((ROOT / "operator" / "tests" / "golden" / "pod-monitors.yaml").read_text())
    assert objects, "no PodMonitors in the golden file"
    schemas = monitoring_schemas()
    for obj in objects:
        validate_monitoring(obj, schemas)
    deployments = [o for o in golden_children() if o["kind"] == "Deployment"]
    queries = [o["spec"]["triggers"][0]["metadata"]["query"]
               for o in docs((ROOT / "operator" / "tests" / "golden" / "keda-scaledobjects.yaml").read_text())
               if o["kind"] == "ScaledObject" and o["spec"]["triggers"][0]["type"] == "prometheus"]
    assert queries, "no connections query in the ScaledObjects' golden file"
    queried = {label for q in queries for label in re.findall(r'(\w+)="', q)}
    for pm in objects:
        selector = pm["spec"]["selector"]["matchLabels"]
        selected = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) >= 4, f"{pm['metadata']['name']} selects {len(selected)} of the sample's Deployments"
        for d in selected:
            ports = {p.get("name") for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in pm["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, f"{d['metadata']['name']} has no port {endpoint['port']}"
        added = {r["targetLabel"] for e in pm["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])}
        assert queried - {"namespace"} <= added, f"the query selects {sorted(queried)}, the PodMonitor adds {sorted(added)}"
    # The check is not vacuous: a bad interval, an unknown action and a misspelt field are caught.
    caught = []
    for mutate in (lambda e: e.update(interval="every 15 seconds"),
                   lambda e: e["relabelings"][0].update(action="rename"),
                   lambda e: e.update(relabellings=[])):
        broken = json.loads(json.dumps(objects[0]))
        mutate(broken["spec"]["podMetricsEndpoints"][0])
        try:
            validate_monitoring(broken, schemas)
        except AssertionError as error:
            caught.append(str(error))
    assert len(caught) == 3, f"the check missed a broken PodMonitor: caught {caught}"
    return f"{len(objects)} PodMonitors valid against prometheus-operator 0.93.0's CRD, adding {sorted(added)}"


def chart_monitoring_valid():
    """The chart's ServiceMonitor, PodMonitor and PrometheusRule against prometheus-operator
    0.93.0's CRDs."""
    values = {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                             "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}
    objects = [o for o in render(values) if o["apiVersion"].startswith("monitoring.coreos.com/")]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(MONITORING_CRDS), kinds
    schemas = monitoring_schemas()
    for obj in objects:
        validate_monitoring(obj, schemas)
    return f"{', '.join(kinds)} valid against prometheus-operator 0.93.0's CRDs"


def rbac_covers_children():
    objects = render({})
    cluster_rules = next(o for o in objects if o["kind"] == "ClusterRole")["rules"]
    role_rules = next(o for o in objects if o["kind"] == "Role")["rules"]

    def granted(rules, group, resource, verbs):
        for rule in rules:
            if group in rule["apiGroups"] and resource in rule["resources"] and set(verbs) <= set(rule["verbs"]):
                return True
        raise AssertionError(f"no rule grants {verbs} on {group or 'core'}/{resource}")

    plural = {
        "ConfigMap": ("", "configmaps"), "Service": ("", "services"),
        "Deployment": ("apps", "deployments"), "Job": ("batch", "jobs"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
        "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
        "Ingress": ("networking.k8s.io", "ingresses"), "KafkaTopic": ("kafka.strimzi.io", "kafkatopics"),
        "KafkaUser": ("kafka.strimzi.io", "kafkausers"),
        "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    }
    kinds = {c["kind"] for c in golden_children()} | {"Ingress"}
    for kind in sorted(kinds):
        group, resource = plural[kind]
        verbs = ["get", "list", "watch", "create", "patch"]
        if kind != "KafkaTopic":  # pruned when no longer wanted; topics never (their data)
            verbs.append("delete")
        granted(cluster_rules, group, resource, verbs)
    for rule in cluster_rules:
        assert not ("kafkatopics" in rule["resources"] and "delete" in rule["verbs"]), "never delete topics"
    # The controller lists and watches pipelines; it never GETs one (the reconcile gets the
    # object from the watch cache).
    granted(cluster_rules, "odds-pipeline.github.io", "oddspipelines", ["list", "watch"])
    # Lag and connections autoscaling: KEDA ScaledObjects are children like HPAs.
    granted(cluster_rules, "keda.sh", "scaledobjects", ["get", "list", "watch", "create", "patch", "delete"])
    # Connections autoscaling: the pipeline's PodMonitor is a child too.
    granted(cluster_rules, "monitoring.coreos.com", "podmonitors", ["get", "list", "watch", "create", "patch", "delete"])
    granted(cluster_rules, "odds-pipeline.github.io", "oddspipelines/status", ["patch"])
    granted(cluster_rules, "", "secrets", ["get", "list", "watch"])
    granted(cluster_rules, "events.k8s.io", "events", ["create", "patch"])
    granted(role_rules, "coordination.k8s.io", "leases", ["get", "create", "update"])
    return f"{len(kinds)} child kinds, ScaledObjects, PodMonitors, pipelines, status, secrets, events, leases"


def samples_valid():
    samples = ROOT / "operator" / "samples"
    builtin = docs((samples / "secrets.yaml").read_text()) + docs((samples / "datastores.yaml").read_text())
    validate_builtin(builtin)
    schemas = {"Kafka": strimzi_schema("040-Crd-kafka.yaml"), "KafkaNodePool": strimzi_schema("045-Crd-kafkanodepool.yaml")}
    kafka = docs((samples / "kafka.yaml").read_text())
    assert sorted(o["kind"] for o in kafka) == ["Kafka", "KafkaNodePool"]
    for obj in kafka:
        validate_against(schemas[obj["kind"]], obj)
    pipeline = docs((samples / "oddspipeline.yaml").read_text())[0]
    validate_against(crd_schema(ROOT / "crds" / "oddspipelines.yaml"), pipeline)
    return "Secrets, datastores, Kafka, KafkaNodePool and OddsPipeline samples valid (CEL rules: cargo test --test crd)"


# --- restricted Pod Security Standard -----------------------------------------------------

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(pod):
    """What in a pod spec breaks the restricted Pod Security Standard (Kubernetes 1.32)."""
    problems = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag}: true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - ALLOWED_VOLUMES)} not allowed")
    for sysctl in psc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} not allowed")
    if (psc.get("seLinuxOptions") or {}).get("user") or (psc.get("seLinuxOptions") or {}).get("role"):
        problems.append("pod seLinuxOptions user/role set")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile {pod_seccomp}")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        problems.append("pod appArmorProfile not RuntimeDefault/Localhost")
    if psc.get("runAsUser") == 0:
        problems.append("pod runAsUser: 0")
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    containers += [("ephemeralContainer", c) for c in pod.get("ephemeralContainers") or []]
    if not containers:
        problems.append("no containers")
    for kind, c in containers:
        where = f"{kind} {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities.add beyond NET_BIND_SERVICE")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser: 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{where}: appArmorProfile not RuntimeDefault/Localhost")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("user") or (sc.get("seLinuxOptions") or {}).get("role"):
            problems.append(f"{where}: seLinuxOptions user/role set")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: windowsOptions.hostProcess")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
    return problems


def pod_specs(objects):
    """(name, pod spec) of every pod template among the objects."""
    out = []
    for obj in objects:
        spec = obj.get("spec") or {}
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Pod":
            out.append((name, spec))
        elif obj["kind"] == "CronJob":
            out.append((name, spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif "template" in spec and isinstance(spec["template"], dict) and "spec" in spec["template"]:
            if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"):
                out.append((name, spec["template"]["spec"]))
    return out


def kind_manifests():
    """Every object the kind flow's scripts apply with kubectl (read from the scripts)."""
    objects = []
    files = []
    for script in sorted((ROOT / "charts" / "kind").glob("*.sh")):
        for match in re.finditer(r'apply\b[^\n]*?-f "\$SAMPLES/([\w.-]+)"', script.read_text()):
            files.append(ROOT / "operator" / "samples" / match.group(1))
    assert files, "no 'kubectl apply -f' found in charts/kind/*.sh"
    for path in dict.fromkeys(files):
        assert path.exists(), f"{path} applied by the kind flow does not exist"
        objects.extend((path.name, o) for o in docs(path.read_text()))
    return objects


def pss_restricted():
    sources = {
        "chart (default values)": render({}),
        "chart (custom values)": render({"leaderElection": False, "replicaCount": 1}),
        "operator-built children (golden)": golden_children(),
        "kind flow manifests": [o for _, o in kind_manifests()],
    }
    problems, count = [], 0
    for source, objects in sources.items():
        for name, pod in pod_specs(objects):
            count += 1
            problems += [f"{source}: {name}: {p}" for p in restricted_violations(pod)]
    assert not problems, "; ".join(problems)
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
                           "ports": [{"containerPort": 80, "hostPort": 80}]}]}
    flagged = restricted_violations(bad)
    assert len(flagged) >= 7, f"the checker missed violations of a bad pod: {flagged}"
    assert count >= 7, f"only {count} pod templates found"
    return f"{count} pod templates restricted (and a bad pod is caught: {len(flagged)} violations)"


# --- the kind flow --------------------------------------------------------------------------

def shellcheck():
    tool = shutil.which("shellcheck")
    if not tool:
        raise AssertionError("shellcheck not installed: apt-get install shellcheck (make deps installs it)")
    scripts = sorted(str(p) for d in ("charts", "scripts") for p in (ROOT / d).rglob("*.sh"))
    scripts += [str(ROOT / ".ci" / "run")]
    scripts = [s for s in scripts if pathlib.Path(s).exists()]
    result = subprocess.run([tool, "-x", *scripts], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-1000:])
    return f"{len(scripts)} scripts clean"


def lib_value(name):
    match = re.search(rf'^{name}="([^"$]*)"', (ROOT / "charts" / "kind" / "lib.sh").read_text(), re.M)
    assert match, f"{name} not set in charts/kind/lib.sh"
    return match.group(1)


def version_key(version):
    core = version.strip().lstrip("v").split("+")[0].split("-")[0]
    parts = [int(x) for x in core.split(".")]
    assert 1 <= len(parts) <= 3, f"not a version: {version}"
    return tuple(parts + [0] * (3 - len(parts)))


def satisfies(version, constraint):
    """Whether a Kubernetes version meets a Chart.yaml kubeVersion such as ">=1.32.0-0" (an AND of
    comparisons; the "-0" only lets pre-releases in)."""
    compare = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               "<": lambda a, b: a < b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b}
    assert "||" not in constraint, f"unsupported constraint {constraint!r}"
    parts = [p for p in re.split(r"[,\s]+", constraint.strip()) if p]
    assert parts, "empty kubeVersion"
    for part in parts:
        m = re.fullmatch(r"(>=|<=|!=|>|<|=)?(v?\d+(?:\.\d+){0,2}(?:-[0-9A-Za-z.-]+)?)", part)
        assert m, f"unsupported constraint {part!r} in {constraint!r}"
        if not compare[m.group(1) or "="](version_key(version), version_key(m.group(2))):
            return False
    return True


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def image_pinned(image):
    """An image reference is pinned by a digest, or by an exact X.Y.Z tag: never `latest`, no tag,
    or a moving tag such as `1-bookworm`, `7.4-alpine` or `nonroot`."""
    if DIGEST.search(image):
        return True
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    return bool(re.match(r"v?\d+\.\d+\.\d+(?:[.+-][\w.-]*)?$", tag))


def sample_images():
    """(file, image) for every `image:` string in operator/samples (the OddsPipeline's `image`, a
    repository/tag mapping, is the project's own image, built and loaded by `make images`)."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append((where, value))
                walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for path in sorted((ROOT / "operator" / "samples").glob("*.yaml")):
        for obj in docs(path.read_text()):
            walk(obj, path.name)
    return found


def dockerfile_images():
    """The base image of every FROM line of workloads/image/Dockerfile, ARG defaults resolved,
    earlier stages skipped."""
    text = (ROOT / "workloads" / "image" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    stages, images = set(), []
    for m in re.finditer(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I):
        image = re.sub(r"\$\{?(\w+)\}?", lambda a: args.get(a.group(1), a.group(0)), m.group(1))
        if image not in stages:
            assert "$" not in image, f"FROM {m.group(1)}: an ARG without a default"
            images.append(image)
        if m.group(2):
            stages.add(m.group(2))
    assert images, "no FROM line in workloads/image/Dockerfile"
    return images


def pinned_images():
    """The kind nodes' image (by digest, a Kubernetes the chart's kubeVersion allows, from the kind
    release lib.sh asks for) and every image the samples and the Dockerfile pull."""
    for floating in ("redis:7.4-alpine", "postgres", "rust:1-bookworm", "gcr.io/distroless/cc-debian12:nonroot",
                     "busybox:latest", "localhost:5000/x"):
        assert not image_pinned(floating), f"image_pinned accepts {floating}"
    text = (ROOT / "kind-config.yaml").read_text()
    cluster = yaml.safe_load(text)
    node_images = [n.get("image") for n in cluster["nodes"]]
    assert len(set(node_images)) == 1 and node_images[0], f"every kind node needs the same pinned image: {node_images}"
    m = re.fullmatch(r"kindest/node:v(\d+\.\d+\.\d+)@sha256:[0-9a-f]{64}", node_images[0])
    assert m, f"kind node image {node_images[0]} is not kindest/node:vX.Y.Z@sha256:<digest>"
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert satisfies(m.group(1), kube_version), f"node Kubernetes {m.group(1)} does not satisfy kubeVersion {kube_version}"
    assert not satisfies("1.31.9", kube_version), "the kubeVersion check lets 1.31 in"
    release = re.search(r"published with kind (v\d+\.\d+\.\d+)", text)
    assert release, "kind-config.yaml must name the kind release whose node image it pins"
    assert release.group(1) == "v" + lib_value("KIND_MIN_VERSION"), \
        f"kind-config.yaml's image is from kind {release.group(1)}, lib.sh asks for v{lib_value('KIND_MIN_VERSION')}"
    pulled = sample_images() + [("Dockerfile", i) for i in dockerfile_images()]
    floating = [f"{where}: {image}" for where, image in pulled if not image_pinned(image)]
    assert not floating, f"images by a floating tag: {floating}"
    return f"kind nodes {m.group(1)} by digest (kind {release.group(1)}), {len(pulled)} images pinned"


def kind_flow_manifests():
    objects = kind_manifests()
    builtin = [o for _, o in objects if not o["apiVersion"].startswith(("kafka.strimzi.io/", "odds-pipeline.github.io/"))]
    validate_builtin(builtin)
    schemas = {"Kafka": strimzi_schema("040-Crd-kafka.yaml"), "KafkaNodePool": strimzi_schema("045-Crd-kafkanodepool.yaml")}
    strimzi = [o for _, o in objects if o["apiVersion"].startswith("kafka.strimzi.io/")]
    for obj in strimzi:
        assert obj["apiVersion"] == "kafka.strimzi.io/v1", f"{obj['kind']} must use kafka.strimzi.io/v1"
        validate_against(schemas[obj["kind"]], obj)
    assert sorted(o["kind"] for o in strimzi) == ["Kafka", "KafkaNodePool"], "one Kafka and one KafkaNodePool"
    kafka = next(o for o in strimzi if o["kind"] == "Kafka")
    pool = next(o for o in strimzi if o["kind"] == "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}, "single-node KRaft: one dual-role pool"

    by_kind_name = {(o["kind"], o["metadata"]["name"]): o for _, o in objects}
    secrets = {name: o for (kind, name), o in by_kind_name.items() if kind == "Secret"}
    services = {name for (kind, name) in by_kind_name if kind == "Service"}
    # The pipeline the flow deploys, and what it references.
    pipeline = docs((ROOT / "operator" / "samples" / "oddspipeline.yaml").read_text())[0]
    validate_against(crd_schema(ROOT / "crds" / "oddspipelines.yaml"), pipeline)
    assert pipeline["metadata"]["name"] == lib_value("PIPELINE"), "PIPELINE in lib.sh != the sample's name"
    assert pipeline["spec"]["kafka"]["clusterRef"] == kafka["metadata"]["name"], "clusterRef != the Kafka"
    # The pipeline logs in on a listener that exists with its authentication, where ACLs are
    # enforced and the user operator makes its KafkaUser.
    auth = pipeline["spec"]["kafka"].get("authentication")
    assert auth, "the kind flow uses the secured listener (kafka.authentication in the sample)"
    listeners = {l["port"]: l for l in kafka["spec"]["kafka"]["listeners"]}
    listener = listeners.get(auth.get("port", 9093))
    assert listener, f"no listener on port {auth.get('port', 9093)}: {sorted(listeners)}"
    assert (listener.get("authentication") or {}).get("type") == auth["type"], (listener, auth)
    assert listener.get("tls", False) == auth.get("tls", True), (listener, auth)
    assert (kafka["spec"]["kafka"].get("authorization") or {}).get("type") == "simple", "ACLs need authorization: simple"
    assert "userOperator" in kafka["spec"].get("entityOperator", {}), "KafkaUsers need the user operator"
    for store in ("redis", "postgres"):
        ref = pipeline["spec"][store]["urlSecretRef"]
        secret = secrets.get(ref["name"])
        assert secret, f"Secret {ref['name']} (spec.{store}) is not applied by the kind flow"
        url = secret["stringData"][ref.get("key", "url")]
        host = re.match(r"\w+://(?:[^@/]*@)?([^:/]+)", url).group(1)
        assert host in services, f"{ref['name']} points at host {host}, no such Service applied"
    # Every secretKeyRef / configMap volume of the datastores resolves.
    for name, pod in pod_specs([o for _, o in objects]):
        for c in pod["containers"]:
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in (secrets.get(ref["name"]) or {}).get("stringData", {}), f"{name}: {ref}"
        for volume in pod.get("volumes") or []:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in by_kind_name, f"{name}: {volume}"
    # Redis is a cache: bounded memory with LRU eviction.
    redis_conf = by_kind_name[("ConfigMap", "redis-config")]["data"]["redis.conf"]
    assert re.search(r"^maxmemory \d+[kmg]b$", redis_conf, re.M) and "maxmemory-policy allkeys-lru" in redis_conf
    # Postgres keeps its data on a PVC; everything has probes and requests.
    postgres = by_kind_name[("StatefulSet", "postgres")]
    assert postgres["spec"]["volumeClaimTemplates"], "Postgres needs a PersistentVolumeClaim"
    for name, pod in pod_specs([o for _, o in objects]):
        for c in pod["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name}: probes"
            assert (c.get("resources") or {}).get("requests"), f"{name}: resource requests"
    # The image the scripts build is the one the chart and the pipeline run.
    repo, tag = lib_value("IMAGE").split(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (values["image"]["repository"], values["image"]["tag"]) == (repo, tag), "chart image != IMAGE"
    assert (pipeline["spec"]["image"]["repository"], pipeline["spec"]["image"]["tag"]) == (repo, tag), "sample image != IMAGE"
    # The cluster and the Strimzi values.
    cluster = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cluster["name"] == "odds" and re.search(r'CLUSTER="\$\{KIND_CLUSTER:-odds\}"', (ROOT / "charts/kind/lib.sh").read_text())
    strimzi_values = yaml.safe_load((ROOT / "charts" / "kind" / "strimzi-values.yaml").read_text())
    assert {"name": "STRIMZI_POD_SECURITY_PROVIDER_CLASS", "value": "restricted"} in strimzi_values["extraEnvs"]
    assert lib_value("STRIMZI_VERSION") == "1.2.0" and lib_value("KEDA_VERSION") == "2.20.2"
    # Every repository file a script names exists.
    for script in sorted((ROOT / "charts" / "kind").glob("*.sh")):
        for rel in re.findall(r'"\$ROOT/([\w./-]+)"', script.read_text()):
            assert (ROOT / rel).exists(), f"{script.name} names $ROOT/{rel}, which does not exist"
    pins = pinned_images()
    return (f"{len(objects)} objects ({len(builtin)} Kubernetes, {len(strimzi)} Strimzi) valid; "
            f"references, image, probes, PVC and Redis policy consistent; {pins}")


def makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target, script in [("kind-up", "kind-up"), ("images", "images"), ("deploy", "deploy"),
                           ("port-forward", "port-forward"), ("e2e-kind", "e2e"), ("kind-down", "kind-down")]:
        match = re.search(rf"^{target}:[^\n]*\n\tbash charts/kind/{script}\.sh$", makefile, re.M)
        assert match, f"make {target} must run charts/kind/{script}.sh"
    assert re.search(r"missing\+=\(shellcheck\)", makefile), "make deps must install shellcheck"
    detail = workflow_runs_make(makefile)
    return f"6 kind-flow targets, deps installs shellcheck; {detail}"


def workflow_runs_make(makefile):
    """.github/workflows/ci.yaml: YAML, runs `make test` (as root in a privileged container of the
    Dockerfile's pinned bookworm build image, so the node test runs) and, in a job
    that needs it, `make kind-up images deploy e2e-kind`; every make target it names exists; its
    tools and actions are pinned."""
    path = ROOT / ".github" / "workflows" / "ci.yaml"
    flow = yaml.safe_load(path.read_text())
    assert isinstance(flow, dict) and isinstance(flow.get("jobs"), dict) and flow["jobs"], f"{path.name}: no jobs"
    targets = set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", makefile, re.M))
    call = re.compile(r"(?:^|[;&|(]\s*)(?:sudo\s+(?:-\S+\s+)*)?make\b([^;&|#\n)]*)", re.M)
    runs, used, uses = {}, [], []
    for job_id, job in flow["jobs"].items():
        runs[job_id] = []
        for step in job.get("steps") or []:
            if "uses" in step:
                uses.append(step["uses"])
            script = step.get("run") or ""
            for m in call.finditer(script):
                words = m.group(1).split()
                assert not any(w in ("-C", "-f", "--directory", "--file") for w in words), f"{job_id}: make {m.group(1)}"
                names = [w for w in words if not w.startswith("-") and "=" not in w]
                used.extend(names)
                runs[job_id].append((m.group(0).strip().lstrip(";&|( "), names))
    assert used, f"{path.name} runs no make target"
    missing = sorted(set(used) - targets)
    assert not missing, f"{path.name} runs make targets the Makefile lacks: {missing}"
    test_job = next((j for j, calls in runs.items() if any(n == ["test"] for _, n in calls)), None)
    assert test_job, f"{path.name}: no job runs `make test`"
    container = flow["jobs"][test_job].get("container") or {}
    dockerfile = (ROOT / "workloads" / "image" / "Dockerfile").read_text()
    rust_image = re.search(r"^ARG RUST_IMAGE=(\S+)", dockerfile, re.M).group(1)
    assert container.get("image") == rust_image, \
        f"job {test_job} must run in the Dockerfile's build image {rust_image} (bookworm, root): {container}"
    assert "--privileged" in str(container.get("options", "")), \
        f"job {test_job} needs a privileged container: the node test makes mount and network namespaces"
    kind_job = next((j for j, calls in runs.items() if any(n == ["kind-up", "images", "deploy", "e2e-kind"] for _, n in calls)),
                    None)
    assert kind_job, f"{path.name}: no job runs `make kind-up images deploy e2e-kind`"
    needs = flow["jobs"][kind_job].get("needs")
    assert test_job in ([needs] if isinstance(needs, str) else needs or []), f"job {kind_job} must need {test_job}"
    env = flow.get("env") or {}
    kind_script = "\n".join(s.get("run") or "" for s in flow["jobs"][kind_job]["steps"])
    for tool in ("KIND", "KUBECTL", "HELM"):
        assert re.fullmatch(r"v\d+\.\d+\.\d+", str(env.get(f"{tool}_VERSION", ""))), f"env {tool}_VERSION must be an exact vX.Y.Z"
        assert re.fullmatch(r"[0-9a-f]{64}", str(env.get(f"{tool}_SHA256", ""))), f"env {tool}_SHA256 must be a SHA-256"
        assert f"${tool}_VERSION" in kind_script and f"${tool}_SHA256" in kind_script, f"job {kind_job} must use {tool}_*"
    assert kind_script.count("sha256sum --check") >= 3, f"job {kind_job} must check the three downloads"
    assert env["KIND_VERSION"] == "v" + lib_value("KIND_MIN_VERSION"), \
        f"KIND_VERSION {env['KIND_VERSION']} != lib.sh's KIND_MIN_VERSION (the kind of kind-config.yaml's node image)"
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert satisfies(env["KUBECTL_VERSION"], kube_version), f"kubectl {env['KUBECTL_VERSION']} vs kubeVersion {kube_version}"
    unpinned = [u for u in uses if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", u)]
    assert not unpinned, f"actions not pinned by commit: {unpinned}"
    return (f"{path.name}: jobs {test_job} and {kind_job} run make {' '.join(sorted(set(used)))}, all defined; "
            f"kind {env['KIND_VERSION']}, kubectl {env['KUBECTL_VERSION']}, helm {env['HELM_VERSION']} pinned with SHA-256")


def ws_check_client():
    """charts/kind/ws_check.py against a WebSocket server stub speaking the /ws/odds protocol."""
    sys.path.insert(0, str(ROOT / "charts" / "kind"))
    import ws_check

    def serve(frames_after_subscribe):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def run():
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                key = re.search(rb"Sec-WebSocket-Key: (\S+)", data).group(1).decode()
                accept = base64.b64encode(hashlib.sha1((key + ws_check.GUID).encode()).digest()).decode()
                conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
                head = conn.recv(2)
                n = head[1] & 0x7F
                body = conn.recv(4 + n)
                mask, payload = body[:4], body[4:]
                text = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)).decode()
                assert json.loads(text) == {"type": "subscribe", "eventId": "*"}, text
                for opcode, frame in frames_after_subscribe:
                    raw = frame.encode() if isinstance(frame, str) else frame
                    length = bytes([len(raw)]) if len(raw) < 126 else bytes([126]) + struct.pack("!H", len(raw))
                    conn.sendall(bytes([0x80 | opcode]) + length + raw)
                conn.settimeout(15)
                try:  # stay open until the client closes
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass
            listener.close()

        threading.Thread(target=run, daemon=True).start()
        return f"ws://127.0.0.1:{listener.getsockname()[1]}/ws/odds"

    def update(kind, version):
        data = {"event_id": "MATCH_001", "home_team": "A", "away_team": "B", "market": "1X2",
                "odds": {"home": 2.0, "draw": 3.0, "away": 4.0}, "updated_at": "2026-11-28T10:00:00Z",
                "source": "stub", "version": version}
        return (1, json.dumps({"type": kind, "data": data}))

    good = [(1, '{"type":"subscribed","eventId":"*"}'), update("snapshot", 3), (9, "hi"),
            update("odds", 4), update("odds", 5), update("odds", 6)]
    counts = ws_check.check(serve(good), min_updates=3, timeout=10, out=lambda _: None)
    assert counts["odds"] == 3 and counts["snapshot"] == 1, counts
    for bad, expected in [([update("odds", 5), update("odds", 5)], "versions must rise"),
                          ([update("odds", 5)], "live odds updates within")]:
        try:
            ws_check.check(serve(bad), min_updates=2, timeout=2, out=lambda _: None)
        except ws_check.WsError as error:
            assert expected in str(error), error
        else:
            raise AssertionError(f"ws_check accepted {bad}")
    return "live updates counted, ping answered, a version regression and a silent feed rejected"


STUB = r'''#!/usr/bin/env bash
# Stand-in for {tool} in the kind-flow dry run: logs the call, answers what the scripts ask.
printf '%s\n' "{tool} $*" >> "$STUB_LOG"
args=" $* "
case "{tool}" in
  kind)
    [[ "$args" == *" get clusters "* ]] && echo odds
    [[ "$args" == " version " ]] && echo "kind $STUB_KIND_VERSION go1.23.6 linux/amd64"
    exit 0 ;;
  kubectl)
    [[ "$args" == *" wait "* ]] && [ -n "${{STUB_FAIL_WAIT:-}}" ] && {{ echo "timed out" >&2; exit 1; }}
    [[ "$args" == *" port-forward "* ]] && exec sleep 30
    [[ "$args" == *"{{.spec.replicas}}"* ]] && {{ printf 3; exit 0; }}
    [[ "$args" == *"{{.status.processor.summary}}"* ]] && {{ printf 3/3; exit 0; }}
    [[ "$args" == *" get -n default oddspipeline/demo "* ]] && exit 1
    # The KafkaTopics and their owners' kinds (e2e.sh's topic_owners): none, or STUB_TOPIC_OWNER.
    # The pipeline ConfigMap's Kafka address and protocol (e2e.sh's secured-listener check).
    [[ "$args" == *"configmap/demo-config"*"KAFKA_BROKERS"* ]] && {{ printf '%s' "${{STUB_KAFKA_BROKERS:-odds-kafka-bootstrap:9093}}"; exit 0; }}
    [[ "$args" == *"configmap/demo-config"*"KAFKA_PROP_SECURITY_PROTOCOL"* ]] && {{ printf 'SASL_SSL'; exit 0; }}
    [[ "$args" == *"ownerReferences"* ]] && {{ printf 'demo-odds-updates=%s\ndemo-odds-updates-dlq=%s\n' "${{STUB_TOPIC_OWNER:-}}" "${{STUB_TOPIC_OWNER:-}}"; exit 0; }}
    [[ "$args" == *" -o name "* ]] && exit 0
    exit 0 ;;
  # Like a real request, answers once the port-forward (started in the background) is up.
  curl) for _ in $(seq 100); do grep -q " port-forward " "$STUB_LOG" && exit 0; sleep 0.1; done; exit 0 ;;
  *) exit 0 ;;
esac
'''


def kind_flow_dry_run():
    """Runs the kind-flow scripts against stand-ins for docker, kind, kubectl, helm, curl and
    python3: the control flow, the order of the steps and the failure report, not a cluster."""
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = pathlib.Path(tmp) / "bin"
        bin_dir.mkdir()
        for tool in ("docker", "kind", "kubectl", "helm", "curl", "python3"):
            (bin_dir / tool).write_text(STUB.format(tool=tool))
            (bin_dir / tool).chmod(0o755)
        log = pathlib.Path(tmp) / "calls.log"

        def run(script, **env):
            log.write_text("")
            environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
                           "STUB_KIND_VERSION": f"v{lib_value('KIND_MIN_VERSION')}", **env}
            result = subprocess.run(["bash", str(ROOT / "charts" / "kind" / script)], capture_output=True,
                                    text=True, env=environment, timeout=120)
            return result, log.read_text().splitlines()

        def expect_in_order(calls, patterns, script):
            i = 0
            for pattern in patterns:
                while i < len(calls) and not re.search(pattern, calls[i]):
                    i += 1
                assert i < len(calls), f"{script}: no call matching {pattern!r} (in order) among {calls}"
                i += 1

        ctx = "--context kind-odds"
        selector = r"app\.kubernetes\.io/instance=demo,app\.kubernetes\.io/managed-by=odds-operator"  # e2e.sh's
        result, calls = run("kind-up.sh")
        assert result.returncode == 0, result.stdout + result.stderr
        expect_in_order(calls, [
            r"^helm --kube-context kind-odds upgrade --install strimzi oci://quay.io/strimzi-helm/strimzi-kafka-operator --version 1\.2\.0 ",
            r"^helm .* upgrade --install keda keda --repo https://kedacore.github.io/charts --version 2\.20\.2 ",
            rf"^kubectl {ctx} apply -n default -f .*/operator/samples/kafka\.yaml",
            rf"^kubectl {ctx} apply -n default -f .*/operator/samples/secrets\.yaml",
            rf"^kubectl {ctx} apply -n default -f .*/operator/samples/datastores\.yaml",
            rf"^kubectl {ctx} wait -n default kafka/odds --for=condition=Ready",
        ], "kind-up")
        assert "next: make images" in result.stdout
        major, minor, _ = version_key(lib_value("KIND_MIN_VERSION"))
        result, calls = run("kind-up.sh", STUB_KIND_VERSION=f"v{major}.{minor - 1}.9")
        assert result.returncode != 0 and f"older than v{lib_value('KIND_MIN_VERSION')}" in result.stderr, \
            result.stderr[-500:]
        assert not any(c.startswith("kind create") for c in calls), "an old kind must be refused before any cluster"
        result, calls = run("images.sh")
        assert result.returncode == 0, result.stdout + result.stderr
        expect_in_order(calls, [r"^docker build -f .*/workloads/image/Dockerfile -t odds-pipeline:dev ",
                                r"^kind load docker-image odds-pipeline:dev --name odds$"], "images")
        result, calls = run("deploy.sh")
        assert result.returncode == 0, result.stdout + result.stderr
        crd = r"crd oddspipelines\.odds-pipeline\.github\.io"
        expect_in_order(calls, [rf"^kubectl {ctx} label --overwrite {crd} app\.kubernetes\.io/managed-by=Helm$",
                                rf"^kubectl {ctx} annotate --overwrite {crd} meta\.helm\.sh/release-name=odds-operator "
                                r"meta\.helm\.sh/release-namespace=odds-system$",
                                r"^helm .* upgrade --install odds-operator .*/charts/odds-operator --namespace odds-system",
                                rf"^kubectl {ctx} apply -n default -f .*/oddspipeline\.yaml",
                                rf"^kubectl {ctx} wait -n default oddspipeline/demo --for=condition=Ready"], "deploy")
        assert not any("jaeger" in c or "observability" in c for c in calls), "no tracing unless asked"
        result, calls = run("deploy.sh", TRACING="1")
        assert result.returncode == 0, result.stdout + result.stderr
        expect_in_order(calls, [rf"^kubectl {ctx} apply -n default -f .*/operator/samples/jaeger\.yaml",
                                rf"^kubectl {ctx} rollout status -n default deployment/jaeger",
                                rf"^kubectl {ctx} apply -n default -f .*/oddspipeline\.yaml",
                                rf"^kubectl {ctx} patch -n default oddspipeline/demo --type merge -p "
                                r'\{"spec":\{"observability":\{"tracing":\{"endpoint":"http://jaeger\.default:4318",'
                                r'"samplingRatio":0\.01\}\}\}\}$',
                                rf"^kubectl {ctx} wait -n default oddspipeline/demo --for=condition=Ready"], "deploy TRACING=1")
        result, calls = run("e2e.sh")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "e2e-kind: every step passed" in result.stdout, result.stdout
        # Under either topicDeletionPolicy: the topics' owners read, the pipeline deleted, and
        # its children checked gone.
        pipeline_deleted = [
            rf"^kubectl {ctx} get -n default kafkatopics -l {selector} -o jsonpath=.*ownerReferences",
            rf"^kubectl {ctx} delete -n default oddspipeline/demo --wait",
            r"get -n default deployments,services,jobs,configmaps,poddisruptionbudgets,horizontalpodautoscalers,ingresses,networkpolicies,kafkausers -l app\.kubernetes\.io/instance=demo",
        ]
        expect_in_order(calls, [
            rf"^kubectl {ctx} apply -n default -f .*/oddspipeline\.yaml",
            rf"^kubectl {ctx} wait -n default kafkauser/demo-kafka-client --for=condition=Ready",
            rf"^kubectl {ctx} wait -n default oddspipeline/demo --for=condition=Ready",
            r"KAFKA_PROP_SECURITY_PROTOCOL",
            r"^curl -fsS -o /dev/null http://127\.0\.0\.1:18080/v1/events",
            r"^python3 .*/ws_check\.py --url ws://127\.0\.0\.1:18080/ws/odds --min-updates 5",
            r'^kubectl .* patch -n default oddspipeline/demo --type merge -p \{"spec":\{"processor":\{"replicas":3\}\}\}',
            r"\{\.status\.processor\.summary\}",
            # topicDeletionPolicy Retain (the default): the topics have no owner, and outlive
            # the pipeline; the script then deletes them itself.
            *pipeline_deleted,
            rf"^kubectl {ctx} get -n default kafkatopics -l {selector} -o jsonpath=.*ownerReferences",
            rf"^kubectl {ctx} wait -n default kafkatopics -l {selector} --for=condition=Ready",
            rf"^kubectl {ctx} delete -n default kafkatopics -l {selector} --wait",
        ], "e2e")
        assert not any("topicDeletionPolicy" in c for c in calls), calls
        assert "KafkaTopics kept, Ready, after the pipeline is gone" in result.stdout, result.stdout
        assert f"kubectl {ctx} port-forward -n default service/demo-odds-service 18080:8080" in calls, calls
        # topicDeletionPolicy Delete: patched in, owned before the pipeline is deleted, then gone
        # with it; the script deletes no topic itself.
        result, calls = run("e2e.sh", E2E_TOPIC_DELETION="Delete", STUB_TOPIC_OWNER="OddsPipeline")
        assert result.returncode == 0, result.stdout + result.stderr
        expect_in_order(calls, [
            rf"^kubectl {ctx} patch -n default oddspipeline/demo --type merge -p "
            r'\{"spec":\{"kafka":\{"topicDeletionPolicy":"Delete"\}\}\}$',
            *pipeline_deleted,
            rf"^kubectl {ctx} get -n default kafkatopics -l {selector} -o name$",
        ], "e2e (Delete)")
        assert not any(" delete -n default kafkatopics" in c for c in calls), calls
        assert "KafkaTopics deleted with the pipeline" in result.stdout, result.stdout
        # Owned topics under the default policy are a failure, named.
        result, _ = run("e2e.sh", STUB_TOPIC_OWNER="OddsPipeline")
        assert result.returncode != 0 and "FAILED at step: KafkaTopics carry no owner reference" in result.stderr, \
            result.stderr[-500:]
        # A pipeline on the plain listener is a failure, named.
        result, _ = run("e2e.sh", STUB_KAFKA_BROKERS="odds-kafka-bootstrap:9092")
        assert result.returncode != 0 and "FAILED at step: ingest and processor log in on the TLS listener" in result.stderr, \
            result.stderr[-500:]
        result, _ = run("e2e.sh", E2E_TOPIC_DELETION="Keep")
        assert result.returncode != 0 and "E2E_TOPIC_DELETION must be 'Retain' or 'Delete'" in result.stderr, \
            result.stderr[-500:]
        result, _ = run("e2e.sh", STUB_FAIL_WAIT="1")
        assert result.returncode != 0 and "FAILED at step: Kafka 'odds' Ready" in result.stderr, result.stderr[-500:]
        result, calls = run("kind-down.sh")
        assert result.returncode == 0 and "kind delete cluster --name odds" in calls, calls
    return ("kind-up (and an old kind refused), images, deploy (adopting a CRD an older chart left), e2e (topics kept by "
            "default, deleted with topicDeletionPolicy Delete; a failing wait named), kind-down call the tools in order")


# --- dashboards and alerts ------------------------------------------------------------------

TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "service", "endpoint", "pipeline", "component"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# The binaries whose served metric families the dashboard and alerts may query.
METRIC_BINARIES = ("supplier-simulator", "odds-ingest", "odds-processor", "odds-service", "odds-operator")


@functools.cache
def exported_metrics():
    """Metric name -> (type, labels) of every family the built binaries serve on /metrics, as
    each prints it with --print-metric-families (ODDS_BIN_DIR: where charts/test.sh built them).
    A histogram's labels include `le`."""
    bin_dir = pathlib.Path(os.environ.get("ODDS_BIN_DIR", ROOT / "target" / "debug"))
    found = {}
    for binary in METRIC_BINARIES:
        path = bin_dir / binary
        assert path.exists(), f"{path} not built: run charts/test.sh, which builds the binaries first"
        printed = subprocess.run([str(path), "--print-metric-families"], capture_output=True, text=True,
                                 env={"PATH": os.environ.get("PATH", "")}, timeout=60)
        assert printed.returncode == 0, f"{binary} --print-metric-families: {printed.stderr}"
        for family in json.loads(printed.stdout):
            labels = set(family["labels"]) | ({"le"} if family["type"] == "histogram" else set())
            assert family["name"] not in found, f"{family['name']} served by two binaries"
            found[family["name"]] = (family["type"], labels)
    assert len(found) >= 30, f"only {len(found)} metric families served by {', '.join(METRIC_BINARIES)}"
    return found


def grafana_to_promql(expr):
    return expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$pipeline", ".*")


def query_metrics(expr, exported, where):
    """The metric names an expression reads, checking labels of the project's metrics."""
    import promql_parser

    try:
        ast = promql_parser.parse(expr)
    except ValueError as error:
        raise AssertionError(f"{where}: PromQL does not parse: {error}: {expr}")
    names, problems = set(), []

    def base(name):
        if name in exported:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and exported.get(name[: -len(suffix)], ("",))[0] == "histogram":
                return name[: -len(suffix)]
        return name

    def subtree(node):
        selectors, created = [], set()

        def visit(n):
            kind = type(n).__name__
            if kind == "VectorSelector":
                selectors.append(n)
            if kind == "Call" and n.func.name == "label_replace":
                created.add(n.args[1].val)

        promql_parser.walk(node, visit)
        return selectors, created

    def visit(node):
        kind = type(node).__name__
        if kind == "VectorSelector":
            name = base(node.name)
            names.add(name)
            if name in exported:
                for matcher in node.matchers.matchers:
                    if matcher.name not in exported[name][1] | TARGET_LABELS:
                        problems.append(f"{name} has no label {matcher.name}")
        if kind == "AggregateExpr" and node.modifier is not None:
            selectors, created = subtree(node.expr)
            known = set(TARGET_LABELS) | created
            project = False
            for s in selectors:
                name = base(s.name)
                if name in exported:
                    project = True
                    known |= exported[name][1]
                else:
                    known = None
                    break
            if known is not None and project:
                missing = set(node.modifier.labels) - known
                if missing:
                    problems.append(f"grouping by {sorted(missing)}, which no metric below has")

    promql_parser.walk(ast, visit)
    if problems:
        raise AssertionError(f"{where}: {'; '.join(problems)}: {expr}")
    return names


def dashboard():
    path = CHART / "dashboards" / "odds-pipeline.json"
    spec = importlib.util.spec_from_file_location("generate", CHART / "dashboards" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert path.read_text(encoding="utf-8") == generate.render(), \
        "dashboards/odds-pipeline.json is stale: python3 charts/odds-operator/dashboards/generate.py"
    board = json.loads(path.read_text())
    assert board["uid"] and board["title"], "uid and title"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "pipeline"} <= variables, variables
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exported = exported_metrics()
    queried, exprs = set(), 0
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"panel {panel['title']}: gridPos {g}"
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']} has no query"
        for target in panel["targets"]:
            exprs += 1
            queried |= query_metrics(grafana_to_promql(target["expr"]), exported, f"panel '{panel['title']}'")
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            m = re.match(r"label_values\((.*),\s*(\w+)\)$", v["query"])
            assert m, v["query"]
            queried |= query_metrics(grafana_to_promql(m.group(1)), exported, f"variable {v['name']}")
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ["updates/s per stage", "dlq rate by reason", "lag per partition", "end-to-end age",
                  "websocket connections", "deliveries/s", "slow consumers", "rest latency", "rest requests by status",
                  "errors by phase", "redis cache", "reconcile"]:
        assert topic in titles, f"no panel for {topic}"
    return queried, f"{len(panels)} panels, {exprs} queries parse"


def dashboard_valid():
    _, detail = dashboard()
    return detail


def rules_rendered():
    objects = render({"monitoring": {"prometheusRule": {"enabled": True}}})
    return next(o for o in objects if o["kind"] == "PrometheusRule")


def prometheus_rule():
    rule = rules_rendered()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] and rule["metadata"]["namespace"] == "odds-system"
    runbook = (CHART / "RUNBOOK.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", runbook, re.M))
    exported = exported_metrics()
    alerts, queried = [], set()
    groups = rule["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups), "named, unique groups"
    for group in groups:
        assert group["rules"], f"group {group['name']} has no rules"
        for r in group["rules"]:
            name = r.get("alert")
            assert name and re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), f"alert name {name!r}"
            assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, sorted(r)
            assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", r["for"]), f"{name}: for {r['for']!r}"
            assert r["labels"]["severity"] in ("critical", "warning", "info"), f"{name}: severity"
            annotations = r["annotations"]
            assert annotations.get("summary") and annotations.get("description"), f"{name}: summary, description"
            url = annotations["runbook_url"]
            assert url.endswith("RUNBOOK.md#" + name.lower()), f"{name}: runbook_url {url}"
            assert name in headings, f"RUNBOOK.md has no section '## {name}'"
            for text in annotations.values():
                assert text.count("{{") == text.count("}}"), f"{name}: unbalanced template {text}"
            queried |= query_metrics(r["expr"], exported, f"alert {name}")
            alerts.append(name)
    assert len(alerts) == len(set(alerts)), "alert names must be unique"
    required = {"OddsConsumerLagGrowing", "OddsDeadLetterRate", "OddsNoUpdates", "OddsUpdateAgeP99High",
                "OddsStaleVersionSkips", "OddsComponentNotReady", "OddsPipelineDegraded"}
    assert required <= set(alerts), f"missing alerts {sorted(required - set(alerts))}"
    assert not (headings - set(alerts)), f"runbook sections without an alert: {sorted(headings - set(alerts))}"
    return queried, f"{len(alerts)} alerts with runbook sections, every expr parses"


def prometheus_rule_valid():
    _, detail = prometheus_rule()
    return detail


def queried_metrics_listed():
    exported = exported_metrics()
    queried = dashboard()[0] | prometheus_rule()[0]
    listed = [l.strip() for l in (CHART / "dashboards" / "queried-metrics.txt").read_text().splitlines()]
    listed = {l for l in listed if l and not l.startswith("#")}
    external = {l.split()[0] for l in (CHART / "dashboards" / "external-metrics.txt").read_text().splitlines()
                if l.strip() and not l.startswith("#")}
    ours = {m for m in queried if m in exported}
    others = queried - ours
    assert not (others - external), f"queried but neither exported by a binary nor listed external: {sorted(others - external)}"
    assert ours == listed, (f"dashboards/queried-metrics.txt is stale: add {sorted(ours - listed)}, "
                            f"remove {sorted(listed - ours)}")
    unused = set(exported) - ours
    return f"{len(ours)} project metrics queried, all served by the binaries ({len(unused)} not charted: {sorted(unused)})"


def monitoring_render():
    values = {"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                             "podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                             "grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}}
    objects = render(values)
    kinds = sorted(o["kind"] for o in objects)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert kind in kinds, f"{kind} not rendered: {kinds}"
    builtin = [o for o in objects if not o["apiVersion"].startswith("monitoring.coreos.com/")]
    validate_builtin(builtin)
    service = next(o for o in objects if o["kind"] == "Service")
    sm = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), "ServiceMonitor selects the metrics Service"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in port_names, f"ServiceMonitor port {endpoint['port']} not in {port_names}"
        assert endpoint["path"] == "/metrics" and re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
    pm = next(o for o in objects if o["kind"] == "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["spec"]["namespaceSelector"] == {"any": True}
    selected = 0
    for obj in golden_children():
        if obj["kind"] != "Deployment":
            continue
        template = obj["spec"]["template"]
        if pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items():
            selected += 1
            ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in pm["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, f"{obj['metadata']['name']} has no port {endpoint['port']}"
    assert selected >= 4, f"the PodMonitor selects {selected} of the pipeline's Deployments"
    relabeled = {r["targetLabel"] for e in pm["spec"]["podMetricsEndpoints"] for r in e.get("relabelings", [])}
    assert {"pipeline", "component"} <= relabeled, relabeled
    dashboard_cm = next(o for o in objects if o["kind"] == "ConfigMap")
    assert dashboard_cm["metadata"]["namespace"] == "monitoring"
    assert dashboard_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "odds-pipeline.json").read_text()
    assert json.loads(dashboard_cm["data"]["odds-pipeline.json"]) == json.loads(shipped), "ConfigMap != dashboard file"
    default = render({})
    assert not any(o["apiVersion"].startswith("monitoring.coreos.com/") for o in default), "monitoring CRs must be opt-in"
    notes = helm.Chart.load(str(CHART)).render({}, name="odds-operator", namespace="odds-system", is_install=True)
    note = next(text for path, text in notes.items() if path.endswith("NOTES.txt"))
    assert "kubectl apply -f operator/samples/oddspipeline.yaml" in note and "make port-forward" in note, note
    return f"ServiceMonitor, PodMonitor ({selected} Deployments), PrometheusRule, dashboard ConfigMap; NOTES.txt names the next command"


def ports_agree():
    """The chart's operator port is the one the binary listens on by default (its --help)."""
    binary = pathlib.Path(os.environ.get("ODDS_BIN_DIR", ROOT / "target" / "debug")) / "odds-operator"
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True,
                           env={"PATH": os.environ.get("PATH", "")}).stdout
    m = re.search(r"--http-addr <HTTP_ADDR>.*?\[default: [0-9.]+:(\d+)\]", usage, re.S)
    assert m, f"odds-operator --help names no default --http-addr:\n{usage}"
    port = int(m.group(1))
    objects = render({})
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["HTTP_ADDR"] == f"0.0.0.0:{port}", env["HTTP_ADDR"]
    assert [p["containerPort"] for p in container["ports"]] == [port], container["ports"]
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics"))
    assert [p["port"] for p in service["spec"]["ports"]] == [port], service["spec"]["ports"]
    return f"operator ops port {port} in its Deployment, probes and metrics Service"


check("helm lint --strict", lint)
check("render with default values", default_render)
check("render with custom values", custom_render)
check("values.schema.json guards the values", values_schema)
check("chart CRD is current and valid", chart_crd_is_current)
check("helm upgrade applies a changed CRD", crd_upgrade)
check("operator-built children are valid", children_valid)
check("KafkaTopics match Strimzi's schema", topics_valid)
check("ScaledObjects match KEDA's schema", scaled_objects_valid)
check("PodMonitors match the Prometheus Operator's schema", pod_monitors_valid)
check("chart monitoring objects match the Prometheus Operator's schemas", chart_monitoring_valid)
check("RBAC covers what the operator does", rbac_covers_children)
check("samples are valid", samples_valid)
check("restricted Pod Security Standard for every pod template", pss_restricted)
check("kind flow scripts pass shellcheck", shellcheck)
check("kind flow manifests render and validate", kind_flow_manifests)
check("Makefile runs the kind flow", makefile_targets)
check("kind flow dry run against stand-in tools", kind_flow_dry_run)
check("WebSocket check client (ws_check.py)", ws_check_client)
check("Grafana dashboard parses", dashboard_valid)
check("PrometheusRule is well-formed", prometheus_rule_valid)
check("queried metrics are exported and listed", queried_metrics_listed)
check("monitoring objects render", monitoring_render)
check("the chart's ports are the binaries'", ports_agree)

print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
sys.exit(1 if RESULTS["failed"] else 0)
