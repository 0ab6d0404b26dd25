"""Checks of the odds-operator chart and the operator's manifests, without a cluster.

Run through charts/test.sh (it provides the venv). Every check prints PASS or FAIL with the
reason; the last line is 'N passed, N failed' and the exit code is non-zero on any failure.
"""

import json
import os
import pathlib
import sys

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


def render(values):
    chart = helm.Chart.load(str(CHART))
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
    expected = sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"])
    assert kinds == expected, f"kinds {kinds} != {expected}"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WATCH_NAMESPACE" not in env, "empty watchNamespace must watch all namespaces"
    assert env["LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    return validate_builtin(objects)


def custom_render():
    values = {
        "watchNamespace": "odds",
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
    assert env["WATCH_NAMESPACE"] == "odds" and env["LEADER_ELECTION"] == "false", env
    assert pod["serviceAccountName"] == "existing"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    return validate_builtin(objects)


def values_schema():
    chart = helm.Chart.load(str(CHART))
    assert chart.schema is not None, "values.schema.json missing"
    chart.validate_schema({})
    accepted = []
    for bad in ({"replicaCount": 0}, {"image": {"pullPolicy": "Sometimes"}}, {"logFormat": "xml"},
                {"leaderElection": False, "replicaCount": 2}, {"replicas": 2}):
        try:
            chart.validate_schema(bad)
            accepted.append(bad)
        except helm.HelmValuesError:
            pass
    assert not accepted, f"bad values accepted: {accepted}"
    return "defaults accepted, 5 bad value sets rejected"


def chart_crd_is_current():
    generated = (ROOT / "crds" / "oddspipelines.yaml").read_text()
    packaged = (CHART / "crds" / "oddspipelines.yaml").read_text()
    assert generated == packaged, "charts/odds-operator/crds is stale: cp crds/oddspipelines.yaml charts/odds-operator/crds/"
    chart = helm.Chart.load(str(CHART))
    assert len(chart.crds) == 1, "the chart must ship the CRD in crds/"
    return validate_builtin(docs(packaged))


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
    return f"{len(topics)} KafkaTopics valid against Strimzi's CRD"


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
    granted(cluster_rules, "odds-pipeline.github.io", "oddspipelines", ["get", "list", "watch"])
    granted(cluster_rules, "odds-pipeline.github.io", "oddspipelines/status", ["patch"])
    granted(cluster_rules, "", "secrets", ["get", "list", "watch"])
    granted(cluster_rules, "events.k8s.io", "events", ["create", "patch"])
    granted(role_rules, "coordination.k8s.io", "leases", ["get", "create", "update"])
    return f"{len(kinds)} child kinds, pipelines, status, secrets, events, leases"


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


check("helm lint --strict", lint)
check("render with default values", default_render)
check("render with custom values", custom_render)
check("values.schema.json guards the values", values_schema)
check("chart CRD is current and valid", chart_crd_is_current)
check("operator-built children are valid", children_valid)
check("KafkaTopics match Strimzi's schema", topics_valid)
check("RBAC covers what the operator does", rbac_covers_children)
check("samples are valid", samples_valid)

print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
sys.exit(1 if RESULTS["failed"] else 0)
