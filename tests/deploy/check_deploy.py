#!/usr/bin/env python3
"""Checks the deploy side of ordermesh without a cluster or a helm binary.

Lints and renders deploy/helm/ordermesh (helm-python-sdk, the Helm v4 engine) for several
value sets, validates every rendered manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), validates every Istio resource against the CRD schemas in
../shared/schemas/istio-crds.yaml (strict about unknown fields, and evaluating the CEL rules
it knows), and checks what must agree across the chart, the Istio manifests and the binary's
contract. Also: value sets missing a prerequisite must fail the render with a message naming
what to set; only notification-service gets the mail settings and the SMTP relay's password
(and, under Istio, the relay's ServiceEntry declares its port TCP); only notification-service
gets the webhook settings, and nothing the chart renders sets ORDERMESH_WEBHOOKS_ALLOW_PRIVATE
(an extraEnv setting it must fail the render); deploy/README.md's IAM table must cover every
DynamoDB call in the store code; every ORDERMESH_* variable the chart sets must be read in the
Rust source. And the monitoring: `promtool check rules` and `promtool test rules` on
deploy/prometheus/ (promtool from the distribution's prometheus package,
tests/support/system-tools.sh), every metric and label the rules and the Grafana dashboard
name is in deploy/prometheus/metrics.yaml, every alert has its runbook in deploy/README.md and
its tests, and the chart's ServiceMonitors, PrometheusRule and dashboard ConfigMap carry the
right ports and the same files. One line per check; the last line is "N passed, M failed".

Run through tests/deploy/run.sh, which prepares the virtualenv.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "ordermesh"
ISTIO = REPO / "istio"
SHARED = Path(os.environ.get("ORDERMESH_SHARED_DIR") or REPO.parent / "shared")
CRDS = SHARED / "schemas" / "istio-crds.yaml"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yaml"
METRICS_CONTRACT = PROMETHEUS_DIR / "metrics.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "ordermesh-dashboard.json"
# The chart's copies, which the deploy/ paths above link to (.Files.Get reads only the chart).
CHART_RULES = CHART / "files" / "prometheus-rules.yaml"
CHART_DASHBOARD = CHART / "files" / "ordermesh-dashboard.json"

RELEASE = "ordermesh"
NAMESPACE = "ordermesh"
# role -> workload (= Service = ServiceAccount = mesh identity)
ROLES = {
    "user": "user-service",
    "order": "order-service",
    "payment": "payment-service",
    "audit": "audit-service",
    "notification": "notification-service",
    "gateway": "edge-gateway",
}
SERVICES = [w for r, w in ROLES.items() if r != "gateway"]
GRPC_PORT, HEALTH_PORT, METRICS_PORT, HTTP_PORT = 50051, 50060, 9090, 8080
# edge-gateway's admin listener (/metrics, /healthz, /health/backends): never public.
ADMIN_PORT = 9090
# The project publishes no image: every value set names one (an empty repository must fail).
IMAGE = {"image": {"repository": "registry.example.com/ordermesh"}}
# notification-service refuses to start on DynamoDB without an SMTP relay: every value set on
# DynamoDB names one (none must fail the render).
MAIL = {"mail": {"smtp": {"host": "smtp.example.com"}}}
# Where notification-service finds the relay's password and extra CA (templates/deployment.yaml).
SMTP_PASSWORD_DIR, SMTP_CA_DIR = "/etc/ordermesh/smtp", "/etc/ordermesh/smtp-ca"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the pinned
# kubernetes-validate ships schemas for.
KUBE_MIN = "1.31"
KUBE_LATEST = kubernetes_validate.utils.latest_version()
ISTIO_API_VERSIONS = {"security.istio.io/v1", "networking.istio.io/v1", "telemetry.istio.io/v1"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Value sets the chart is rendered with (each also gets IMAGE).
VARIANTS = {
    "default": {},
    "istio": yaml.safe_load((CHART / "values-istio.yaml").read_text()),
    "embedded+cert-manager": {
        "store": {"backend": "embedded"},
        "mtls": {"certManager": {"enabled": True,
                                 "issuerRef": {"name": "corp-mesh-ca", "kind": "ClusterIssuer"}}},
        "jwt": {"signingKey": {"create": False, "secretName": "jwt-key"}},
        "roles": {
            "gateway": {"autoscaling": {"enabled": False}, "replicas": 3,
                        "service": {"type": "LoadBalancer"}},
            "audit": {"tlsSecretName": "audit-mesh-cert"},
        },
        # No relay: .eml files on the data emptyDir.
        "mail": {"smtp": {"host": ""}, "publicUrl": "https://shop.example"},
    },
    "dynamodb-local+credentials": {
        "store": {"dynamodb": {"endpoint": "http://dynamodb-local:8000",
                               "credentialsSecret": "aws-credentials"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "telemetry": {"otlpEndpoint": "", "resourceAttributes": "deployment.environment=test"},
        "defaults": {"preStopSleepSeconds": 0},
        "gateway": {"deadlineMs": 2500, "bodyLimitBytes": 65536,
                    "corsOrigins": ["https://shop.example", "http://localhost:3000"],
                    "rateLimit": {"perMinute": 1200, "burst": 40},
                    "apiKeyRateLimit": {"perMinute": 6000, "burst": 500},
                    "accountRateLimit": {"perMinute": 20, "burst": 5},
                    "addressRateLimit": {"perMinute": 3000, "burst": 50},
                    "headerTimeoutMs": 15000, "maxConnections": 4096, "maxConnectionsPerAddress": 64,
                    "trustedProxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.10"], "trustedHops": 2},
        "discovery": {"clusterDomain": "k8s.internal", "dnsRefreshSeconds": 10},
        "mail": {"smtp": {"host": "email-smtp.eu-west-1.amazonaws.com", "port": 465, "security": "tls",
                          "username": "AKIAEXAMPLE",
                          "passwordSecret": {"name": "ses-smtp", "key": "smtp-password"},
                          "caConfigMap": {"name": "corp-ca", "key": "root.pem"}},
                 "from": "Shop <no-reply@shop.example>", "publicUrl": "https://shop.example/",
                 "maxAttempts": 4, "retryBaseMs": 500},
        "webhooks": {"maxAttempts": 12, "retryBaseMs": 1000, "disableAfter": 20},
    },
    "monitoring": {
        "metrics": {"scrapeAnnotations": False,
                    "serviceMonitor": {"enabled": True, "interval": "15s",
                                       "labels": {"release": "kube-prometheus-stack"}},
                    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                    "grafanaDashboard": {"enabled": True, "labels": {"team": "shop"},
                                         "annotations": {"grafana_folder": "ordermesh"}}},
    },
    "builtin+own-secrets": {
        "mtls": {"certManager": {"enabled": False}},
        # empty: the binary's default, like 0
        "gateway": {"maxConnections": None},
        "roles": {role: {"tlsSecretName": f"mesh-{role}"} for role in ROLES},
    },
    "istio+smtp-credentials": {
        **yaml.safe_load((CHART / "values-istio.yaml").read_text()),
        "mail": {"smtp": {"host": "smtp.example.com", "security": "none", "port": 25, "username": "ordermesh",
                          "passwordSecret": {"name": "smtp-relay"}}},
    },
}

# Value sets missing a prerequisite: the render must fail, and the message must name what to
# set (each string below).
MISSING = {
    "no image.repository (the chart's defaults)": ({}, ["image.repository"]),
    "builtin mTLS without cert-manager or Secrets": (
        {**IMAGE, **MAIL, "mtls": {"certManager": {"enabled": False}}},
        ["mtls.certManager.enabled=true", "roles.<role>.tlsSecretName", "mtls.mode=istio"]),
    "builtin mTLS without cert-manager, gateway's Secret not named": (
        {**IMAGE, **MAIL, "mtls": {"certManager": {"enabled": False}},
         "roles": {role: {"tlsSecretName": f"mesh-{role}"} for role in ROLES if role != "gateway"}},
        ["roles.<role>.tlsSecretName", "missing for: gateway"]),
    "one TLS Secret for every role": (
        {**IMAGE, **MAIL, "defaults": {"tlsSecretName": "mesh-tls"}},
        ["tlsSecretName", "each role needs its own"]),
    "ServiceMonitors under Istio (STRICT mTLS, the admin port denied)": (
        {**IMAGE, **MAIL, "mtls": {"mode": "istio"}, "metrics": {"serviceMonitor": {"enabled": True}}},
        ["metrics.serviceMonitor.enabled", "mtls.mode=istio", "metrics.scrapeAnnotations=true"]),
    "DynamoDB without an SMTP relay for notification-service": (
        {**IMAGE}, ["mail.smtp.host", "store.backend=embedded"]),
    "SMTP username without its password Secret": (
        {**IMAGE, "mail": {"smtp": {"host": "smtp.example.com", "username": "ordermesh"}}},
        ["mail.smtp.username", "mail.smtp.passwordSecret.name"]),
    "SMTP password Secret without a username": (
        {**IMAGE, "mail": {"smtp": {"host": "smtp.example.com", "passwordSecret": {"name": "smtp-relay"}}}},
        ["mail.smtp.username", "mail.smtp.passwordSecret.name"]),
}

# Value sets the chart must refuse although nothing is missing: the render must fail, and the
# message must name what is wrong (each string below).
ALLOW_PRIVATE = "ORDERMESH_WEBHOOKS_ALLOW_PRIVATE"
REFUSED = {
    f"{ALLOW_PRIVATE} in defaults.extraEnv": (
        {**IMAGE, **MAIL, "defaults": {"extraEnv": [{"name": ALLOW_PRIVATE, "value": "true"}]}},
        ["defaults.extraEnv", ALLOW_PRIVATE]),
    f"{ALLOW_PRIVATE} in roles.notification.extraEnv": (
        {**IMAGE, **MAIL, "roles": {"notification": {"extraEnv": [
            {"name": "RUST_BACKTRACE", "value": "1"}, {"name": ALLOW_PRIVATE, "value": "1"}]}}},
        ["roles.notification.extraEnv", ALLOW_PRIVATE]),
}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            print(f"FAIL  {name}")
            for p in problems[:25]:
                print(f"        - {p}")
            if len(problems) > 25:
                print(f"        ... and {len(problems) - 25} more")
        else:
            self.passed += 1
            print(f"ok    {name}")

    @staticmethod
    def skip(name: str, why: str) -> None:
        print(f"skip  {name}: {why}")


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


VARIANTS = {label: deep_merge(deep_merge(IMAGE, MAIL), values) for label, values in VARIANTS.items()}


# ----------------------------------------------------------------------------- Istio CRDs

GO_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
UNEVALUATED_CEL: set[str] = set()


def go_duration(value: object) -> float | None:
    if not isinstance(value, str) or not value or GO_DURATION_PART.sub("", value):
        return None
    return sum(float(n) * GO_UNITS[u] for n, u in GO_DURATION_PART.findall(value))


def cel(rule: str, inst: object) -> bool | None:
    """The CEL rules of the Istio CRDs this check can evaluate; None for the others."""
    r = " ".join(rule.split())
    if r == "duration(self) >= duration('1ms')":
        d = go_duration(inst)
        return d is not None and d >= 1e-3
    if r == '!self.contains("*")':
        return "*" not in str(inst)
    if r == 'self.all(key, !key.contains("*"))':
        return all("*" not in k for k in inst)
    if r == "self.all(key, key.size() != 0)":
        return all(len(k) for k in inst)
    if r == "self.all(key, 0 < int(key) && int(key) <= 65535)":
        try:
            return all(0 < int(k) <= 65535 for k in inst)
        except ValueError:
            return False
    if r == 'url(self).getScheme() in ["http", "https"]':
        return urllib.parse.urlparse(str(inst)).scheme in ("http", "https")
    if re.fullmatch(r"(\(has\(self\.\w+\) \? 1 : 0\)( \+ )?)+ <= 1", r):
        return sum(f in inst for f in re.findall(r"has\(self\.(\w+)\)", r)) <= 1
    if r.startswith("(has(self.serviceAccounts) || has(self.notServiceAccounts)) ?"):
        return not ({"serviceAccounts", "notServiceAccounts"} & set(inst)) or not (
            {"principals", "notPrincipals", "namespaces", "notNamespaces"} & set(inst))
    if r.startswith("has(self.portLevelMtls) ?"):
        return "portLevelMtls" not in inst or bool((inst.get("selector") or {}).get("matchLabels"))
    # ServiceEntry (the chart's SMTP relay)
    if r == "0 < self && self <= 65535":
        return isinstance(inst, int) and 0 < inst <= 65535
    if r == 'self != "*"':
        return inst != "*"
    if r == "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        numbers = [p.get("number") for p in inst]
        return len(numbers) == len(set(numbers))
    if r == '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        return inst.get("resolution", "NONE") != "NONE" or "endpoints" not in inst
    if r == ('((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
             '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true'):
        return inst.get("resolution", "") != "DNS_ROUND_ROBIN" or len(inst.get("endpoints", [])) <= 1
    if r == ('!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
             '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))'):
        return not (any("/" in a for a in inst.get("addresses", []))
                    and inst.get("resolution", "NONE") not in ("STATIC", "NONE"))
    UNEVALUATED_CEL.add(r)
    return None


def _x_validations(validator, rules, instance, schema):
    for rule in rules:
        if cel(rule["rule"], instance) is False:
            yield jsonschema.ValidationError(rule.get("message") or f"CEL rule failed: {rule['rule']}")


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-validations": _x_validations})


def strict_schema(s: object) -> object:
    """Unknown fields are pruned by the API server (or refused with strict field validation):
    make them an error here, except where the schema preserves unknown fields."""
    if not isinstance(s, dict):
        return s
    s = dict(s)
    if isinstance(s.get("properties"), dict):
        s["properties"] = {k: strict_schema(v) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = strict_schema(s[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(s.get(key), list):
            s[key] = [strict_schema(x) for x in s[key]]
    return s


def load_crds() -> dict[tuple[str, str, str], dict]:
    crds = {}
    for doc in load_yaml_docs(CRDS.read_text()):
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for v in spec["versions"]:
            if v.get("served"):
                schema = v["schema"]["openAPIV3Schema"]
                crds[(spec["group"], v["name"], spec["names"]["kind"])] = strict_schema(schema)
    return crds


def validate_istio(obj: dict, crds: dict) -> list[str]:
    where = ident(obj)
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    schema = crds.get((group, version, obj.get("kind")))
    if schema is None:
        return [f"{where}: no served CRD version for {obj.get('apiVersion')} {obj.get('kind')}"]
    problems = []
    if obj["apiVersion"] not in ISTIO_API_VERSIONS:
        problems.append(f"{where}: use the v1 API ({obj['apiVersion']} is not current)")
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"}
    if extra:
        problems.append(f"{where}: unknown top-level fields {sorted(extra)}")
    name = obj.get("metadata", {}).get("name", "")
    if not DNS1123_SUBDOMAIN.match(name):
        problems.append(f"{where}: metadata.name is not a DNS-1123 subdomain")
    instance = {k: obj[k] for k in ("spec", "status") if k in obj}
    for err in sorted(CrdValidator(schema).iter_errors(instance), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in err.path)
        problems.append(f"{where}: {path}: {err.message}")
    return problems


# --------------------------------------------------------------------- Kubernetes schemas

# Each validate() call re-reads the schema files; they never change during a run.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents)


def validate_kube(obj: dict, crds: dict) -> list[str]:
    api = obj.get("apiVersion", "")
    if api.split("/")[0].endswith("istio.io"):
        return validate_istio(obj, crds)
    if api == "cert-manager.io/v1" and obj.get("kind") == "Certificate":
        return check_certificate(obj)
    if api == "cert-manager.io/v1" and obj.get("kind") == "Issuer":
        return check_issuer(obj)
    if api.split("/")[0] == "monitoring.coreos.com":
        return validate_monitoring(obj)
    problems = []
    for version in (KUBE_MIN, KUBE_LATEST):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{ident(obj)} (k8s {version}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{ident(obj)}: {e.message}")
    return problems


def check_certificate(obj: dict) -> list[str]:
    """No schema ships for cert-manager here: check the fields the mesh depends on."""
    spec, where = obj.get("spec", {}), ident(obj)
    if spec.get("isCA"):
        problems = [f"{where}: missing spec.{k}" for k in ("secretName", "issuerRef", "commonName")
                    if not spec.get(k)]
        if spec.get("privateKey", {}).get("rotationPolicy") != "Never":
            problems.append(f"{where}: a CA must keep its key on renewal (privateKey.rotationPolicy: "
                            "Never), or every certificate it signed stops verifying at once")
        return problems
    problems = [f"{where}: missing spec.{k}" for k in ("secretName", "issuerRef", "uris") if not spec.get(k)]
    usages = {"client auth"} if obj["metadata"]["name"] == "operator" else {"client auth", "server auth"}
    if not set(spec.get("usages", [])) >= usages:
        problems.append(f"{where}: usages must include {sorted(usages)}")
    if "server auth" in usages and not spec.get("dnsNames"):
        problems.append(f"{where}: a server certificate needs the Service's DNS names")
    return problems


def check_issuer(obj: dict) -> list[str]:
    spec, where = obj.get("spec", {}), ident(obj)
    kinds = [k for k in ("selfSigned", "ca", "acme", "vault", "venafi") if k in spec]
    problems = [] if len(kinds) == 1 else [f"{where}: want exactly one issuer type, found {kinds}"]
    if "ca" in spec and not spec["ca"].get("secretName"):
        problems.append(f"{where}: a CA Issuer needs spec.ca.secretName")
    return problems


# ------------------------------------------------------------------------ rendered chart

class Rendered:
    def __init__(self, values: dict, objects: list[dict]) -> None:
        self.values = values
        self.objects = objects

    def all(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> dict | None:
        return next((o for o in self.all(kind) if o["metadata"]["name"] == name), None)

    def deployments(self):
        for role, workload in ROLES.items():
            dep = self.get("Deployment", workload)
            if dep:
                yield role, workload, dep

    @property
    def istio(self) -> bool:
        return self.values["mtls"]["mode"] == "istio"

    @property
    def backend(self) -> str:
        return self.values["store"]["backend"]


def container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


def pod_labels(dep: dict) -> dict:
    return dep["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def effective_env(r: Rendered, dep: dict) -> dict[str, object]:
    """Environment the container sees: envFrom ConfigMaps (by value), then env."""
    env: dict[str, object] = {}
    c = container(dep)
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cm = r.get("ConfigMap", src["configMapRef"]["name"])
            env.update((cm or {}).get("data", {}))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def check_workloads(r: Rendered) -> list[str]:
    problems = []
    for role, workload in ROLES.items():
        single = r.backend == "embedded" and role != "gateway"
        wanted = ["Deployment", "Service", "ServiceAccount"]
        if not single:
            cfg = deep_merge(r.values["defaults"], r.values["roles"].get(role) or {})
            wanted += ["HorizontalPodAutoscaler"] if cfg["autoscaling"]["enabled"] else []
            wanted += ["PodDisruptionBudget"] if cfg["pdb"]["enabled"] else []
        for kind in wanted:
            if not r.get(kind, workload):
                problems.append(f"{workload}: no {kind}")
        dep, svc, hpa, pdb = (r.get(k, workload) for k in
                              ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"))
        if not dep:
            continue
        labels = pod_labels(dep)
        spec = dep["spec"]
        if not selects(spec["selector"]["matchLabels"], labels):
            problems.append(f"{workload}: Deployment selector does not match its pod labels")
        if labels.get("app") != workload:
            problems.append(f"{workload}: pod label app={workload} missing (Istio selectors use it)")
        if spec["template"]["spec"].get("serviceAccountName") != workload:
            problems.append(f"{workload}: pods do not run as ServiceAccount {workload}")
        if svc and not selects(svc["spec"]["selector"], labels):
            problems.append(f"{workload}: Service selector does not match the pods")
        if pdb and not selects(pdb["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"{workload}: PDB selector does not match the pods")
        if hpa:
            ref = hpa["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) != ("Deployment", workload):
                problems.append(f"{workload}: HPA targets {ref['kind']}/{ref['name']}")
            names = {c["name"] for c in spec["template"]["spec"]["containers"]}
            for m in hpa["spec"].get("metrics", []):
                if m["type"] == "ContainerResource" and m["containerResource"]["container"] not in names:
                    problems.append(f"{workload}: HPA metric names a container the pod lacks")
            if "replicas" in spec:
                problems.append(f"{workload}: Deployment sets replicas although an HPA scales it")
        if single and (spec.get("replicas") != 1 or hpa or pdb
                       or spec.get("strategy", {}).get("type") != "Recreate"):
            problems.append(f"{workload}: embedded store needs 1 replica, Recreate, no HPA/PDB")
        args = container(dep).get("args", [])
        if args != ["serve", role]:
            problems.append(f"{workload}: args {args}, want ['serve', '{role}']")
    images = {c["image"] for o in r.objects if o["kind"] in ("Deployment", "Job")
              for c in o["spec"]["template"]["spec"]["containers"]}
    if len(images) != 1:
        problems.append(f"every role must run the one image, found {sorted(images)}")
    return problems


def check_ports_and_probes(r: Rendered) -> list[str]:
    problems = []
    for role, workload, dep in r.deployments():
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        svc = r.get("Service", workload) or {"spec": {"ports": []}}
        svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        if r.values["metrics"]["scrapeAnnotations"] and (
                annotations.get("prometheus.io/port") != str(METRICS_PORT)
                or annotations.get("prometheus.io/path") != "/metrics"):
            problems.append(f"{workload}: prometheus.io/port must be {METRICS_PORT} (path /metrics), "
                            f"found {annotations.get('prometheus.io/port')!r}")
        if role == "gateway":
            want = {"http": HTTP_PORT, "http-admin": ADMIN_PORT}
            if ports != want:
                problems.append(f"{workload}: container ports {ports}, want {want}")
            if set(svc_ports) != {"http"} or svc_ports["http"]["port"] != HTTP_PORT \
                    or svc_ports["http"].get("targetPort") not in ("http", HTTP_PORT):
                problems.append(f"{workload}: Service must expose only http:{HTTP_PORT} (the admin "
                                f"port {ADMIN_PORT} must stay off the public Service)")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                if get.get("path") != path or get.get("port") not in ("http", HTTP_PORT):
                    problems.append(f"{workload}: {probe} must be httpGet {path} on http")
            env = effective_env(r, dep)
            for var, port in (("ORDERMESH_HTTP_ADDR", HTTP_PORT), ("ORDERMESH_ADMIN_ADDR", ADMIN_PORT)):
                if env.get(var) != f"0.0.0.0:{port}":
                    problems.append(f"{workload}: {var}={env.get(var)!r}, want 0.0.0.0:{port}")
            # Any other Service on the gateway's pods may carry the admin port only as a
            # ClusterIP Service: never the public one, never a LoadBalancer or NodePort.
            for s in r.all("Service"):
                if not selects(s["spec"].get("selector", {}), pod_labels(dep)):
                    continue
                admin = [p for p in s["spec"]["ports"]
                         if p.get("targetPort") in ("http-admin", ADMIN_PORT) or p["port"] == ADMIN_PORT]
                if admin and (s["metadata"]["name"] == workload
                              or s["spec"].get("type", "ClusterIP") != "ClusterIP"):
                    problems.append(f"{ident(s)} exposes the admin port {ADMIN_PORT}")
            continue
        want = {"grpc": GRPC_PORT, "grpc-health": HEALTH_PORT, "http-metrics": METRICS_PORT}
        if ports != want:
            problems.append(f"{workload}: container ports {ports}, want {want}")
        grpc = svc_ports.get("grpc")
        if not grpc or grpc["port"] != GRPC_PORT or grpc.get("appProtocol") != "grpc":
            problems.append(f"{workload}: Service needs port grpc:{GRPC_PORT} with appProtocol grpc")
        if grpc and grpc.get("targetPort") not in ("grpc", GRPC_PORT):
            problems.append(f"{workload}: Service grpc port targets {grpc.get('targetPort')}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if c.get(probe, {}).get("grpc", {}).get("port") != HEALTH_PORT:
                problems.append(f"{workload}: {probe} must be a native gRPC probe on {HEALTH_PORT}")
        env = effective_env(r, dep)
        for var, port in (("ORDERMESH_GRPC_ADDR", GRPC_PORT), ("ORDERMESH_HEALTH_ADDR", HEALTH_PORT),
                          ("ORDERMESH_METRICS_ADDR", METRICS_PORT)):
            if env.get(var) != f"0.0.0.0:{port}":
                problems.append(f"{workload}: {var}={env.get(var)!r}, want 0.0.0.0:{port}")
    return problems


def check_security(r: Rendered) -> list[str]:
    problems = []
    pods = [(ident(o), o["spec"]["template"]["spec"]) for o in r.objects
            if o["kind"] in ("Deployment", "Job")]
    for where, pod in pods:
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod needs runAsNonRoot and seccomp RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken should be false")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]):
                problems.append(f"{where}: container needs readOnlyRootFilesystem, no privilege "
                                "escalation, drop ALL")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(kind, {})):
                    problems.append(f"{where}: resources.{kind} needs cpu and memory")
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                problems.append(f"{where}: /tmp must be an emptyDir (read-only root filesystem)")
    return problems


def check_environment(r: Rendered) -> list[str]:
    problems = []
    for role, workload, dep in r.deployments():
        env = effective_env(r, dep)
        ns = env.get("ORDERMESH_NAMESPACE")
        if not (isinstance(ns, dict) and ns.get("fieldRef", {}).get("fieldPath") == "metadata.namespace"):
            problems.append(f"{workload}: ORDERMESH_NAMESPACE must come from metadata.namespace")
        expect = {
            "ORDERMESH_MTLS_MODE": r.values["mtls"]["mode"],
            "ORDERMESH_TRUST_DOMAIN": r.values["mtls"]["trustDomain"],
            "OTEL_SERVICE_NAME": workload,
            "ORDERMESH_STORE": r.backend,
            "ORDERMESH_JWT_ISSUER": r.values["jwt"]["issuer"],
            "ORDERMESH_JWT_AUDIENCE": r.values["jwt"]["audience"],
        }
        if r.backend == "dynamodb":
            expect["AWS_REGION"] = r.values["store"]["dynamodb"]["region"]
            expect["ORDERMESH_DYNAMODB_TABLE_PREFIX"] = r.values["store"]["dynamodb"]["tablePrefix"]
        else:
            expect["ORDERMESH_DATA_DIR"] = r.values["store"]["embedded"]["dataDir"]
        gw = r.values["gateway"]
        edge = {
            "ORDERMESH_GATEWAY_DEADLINE_MS": str(gw["deadlineMs"]),
            "ORDERMESH_BODY_LIMIT_BYTES": str(gw["bodyLimitBytes"]),
            "ORDERMESH_CORS_ORIGINS": ",".join(gw["corsOrigins"]),
            "ORDERMESH_RATE_LIMIT_PER_MINUTE": str(gw["rateLimit"]["perMinute"]),
            "ORDERMESH_RATE_LIMIT_BURST": str(gw["rateLimit"]["burst"]),
            "ORDERMESH_API_KEY_RATE_LIMIT_PER_MINUTE": str(gw["apiKeyRateLimit"]["perMinute"]),
            "ORDERMESH_API_KEY_RATE_LIMIT_BURST": str(gw["apiKeyRateLimit"]["burst"]),
            "ORDERMESH_ACCOUNT_RATE_LIMIT_PER_MINUTE": str(gw["accountRateLimit"]["perMinute"]),
            "ORDERMESH_ACCOUNT_RATE_LIMIT_BURST": str(gw["accountRateLimit"]["burst"]),
            "ORDERMESH_ADDRESS_RATE_LIMIT_PER_MINUTE": str(gw["addressRateLimit"]["perMinute"]),
            "ORDERMESH_ADDRESS_RATE_LIMIT_BURST": str(gw["addressRateLimit"]["burst"]),
            "ORDERMESH_HTTP_HEADER_TIMEOUT_MS": str(gw["headerTimeoutMs"]),
            "ORDERMESH_MAX_CONNECTIONS_PER_ADDRESS": str(gw["maxConnectionsPerAddress"]),
            "ORDERMESH_ADMIN_ADDR": f"0.0.0.0:{ADMIN_PORT}",
            "ORDERMESH_TRUSTED_PROXIES": ",".join(gw["trustedProxies"]),
            "ORDERMESH_TRUSTED_HOPS": str(gw["trustedHops"]),
        }
        # Empty or 0: left to the binary's default (from its open-files limit), so not set.
        max_conns = str(gw["maxConnections"]) if gw.get("maxConnections") else None
        if role == "gateway":
            expect.update(edge)
            if max_conns:
                expect["ORDERMESH_MAX_CONNECTIONS"] = max_conns
            elif "ORDERMESH_MAX_CONNECTIONS" in env:
                problems.append(f"{workload}: ORDERMESH_MAX_CONNECTIONS="
                                f"{env['ORDERMESH_MAX_CONNECTIONS']!r} set, but gateway.maxConnections "
                                f"is {gw.get('maxConnections')!r}: leave it to the binary's default")
        else:
            problems += [f"{workload}: {var} is the gateway's alone"
                         for var in [*edge, "ORDERMESH_MAX_CONNECTIONS"] if var in env]
        for var, want in expect.items():
            if env.get(var) != want:
                problems.append(f"{workload}: {var}={env.get(var)!r}, want {want!r}")
        for other_role in ROLES:
            var = f"ORDERMESH_{other_role.upper()}_ENDPOINT"
            if other_role != "gateway" and not env.get(var):
                problems.append(f"{workload}: {var} is not set")
        defined: set[str] = set()
        for src in container(dep).get("envFrom", []):
            cm = r.get("ConfigMap", src.get("configMapRef", {}).get("name", ""))
            defined |= set((cm or {}).get("data", {}))
        for e in container(dep).get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                if ref not in defined:
                    problems.append(f"{workload}: {e['name']} uses $({ref}) before it is defined")
            defined.add(e["name"])
        creds = r.values["store"]["dynamodb"]["credentialsSecret"]
        from_secrets = [s["secretRef"]["name"] for s in container(dep).get("envFrom", []) if "secretRef" in s]
        if creds and r.backend == "dynamodb" and role != "gateway" and from_secrets != [creds]:
            problems.append(f"{workload}: AWS credentials Secret {creds} not in envFrom")
    return problems


def check_discovery(r: Rendered) -> list[str]:
    """builtin mode: each gRPC role has a headless Service over its ready pods, and every client
    dials it by its FQDN over https (the client resolves every address and balances). istio
    mode: the ordinary ClusterIP Service over plaintext (the sidecar balances), no headless."""
    problems = []
    domain = r.values["discovery"]["clusterDomain"]
    services = {s["metadata"]["name"]: s for s in r.all("Service")}
    pods = {w: pod_labels(d) for _, w, d in r.deployments()}
    headless = {name for name, s in services.items() if s["spec"].get("clusterIP") == "None"}
    for role, workload in ROLES.items():
        if role == "gateway":
            continue
        name = f"{workload}-headless"
        if r.istio:
            if name in services:
                problems.append(f"{name}: rendered in istio mode (the sidecar balances over the "
                                "ClusterIP Service; Envoy would pass a headless name through)")
            continue
        svc = services.get(name)
        if not svc:
            problems.append(f"{workload}: no headless Service {name}")
            continue
        spec = svc["spec"]
        if spec.get("clusterIP") != "None" or spec.get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{name}: must be headless (type ClusterIP, clusterIP: None)")
        if spec.get("publishNotReadyAddresses"):
            problems.append(f"{name}: must publish ready pods only")
        selected = [w for w, labels in pods.items() if selects(spec.get("selector", {}), labels)]
        if selected != [workload]:
            problems.append(f"{name}: selects the pods of {selected}, want only {workload}'s")
        grpc = [p for p in spec.get("ports", []) if p["name"] == "grpc"]
        if len(grpc) != 1 or grpc[0]["port"] != GRPC_PORT or grpc[0].get("targetPort") not in ("grpc", GRPC_PORT) \
                or grpc[0].get("appProtocol") != "grpc":
            problems.append(f"{name}: needs port grpc:{GRPC_PORT} -> grpc, appProtocol grpc")
    for role, workload, dep in r.deployments():
        env = effective_env(r, dep)
        for other_role, other in ROLES.items():
            if other_role == "gateway":
                continue
            var = f"ORDERMESH_{other_role.upper()}_ENDPOINT"
            value = str(env.get(var, ""))
            want = (f"http://{other}:{GRPC_PORT}" if r.istio else
                    f"https://{other}-headless.{NAMESPACE}.svc.{domain}:{GRPC_PORT}")
            if value != want:
                problems.append(f"{workload}: {var}={value!r}, want {want!r}")
                continue
            host = urllib.parse.urlparse(value).hostname or ""
            svc = services.get(host.split(".")[0])
            if not svc or not [p for p in svc["spec"]["ports"] if p["name"] == "grpc" and p["port"] == GRPC_PORT]:
                problems.append(f"{workload}: {var} names no Service with port grpc:{GRPC_PORT}")
            elif r.istio and host in headless:
                problems.append(f"{workload}: {var} must name the ClusterIP Service in istio mode")
        refresh = env.get("ORDERMESH_DNS_REFRESH_SECS")
        want_refresh = None if r.istio else str(r.values["discovery"]["dnsRefreshSeconds"])
        if refresh != want_refresh:
            problems.append(f"{workload}: ORDERMESH_DNS_REFRESH_SECS={refresh!r}, want {want_refresh!r}")
    return problems


def check_mtls(r: Rendered) -> list[str]:
    problems = []
    certs = {c["metadata"]["name"]: c for c in r.all("Certificate")}
    jwt_secret = r.values["jwt"]["signingKey"]["secretName"] or f"{RELEASE}-jwt-signing-key"
    # Secrets that are no mesh certificate: the signing key, the SMTP relay's password.
    other_secrets = {jwt_secret, r.values["mail"]["smtp"]["passwordSecret"]["name"]} - {""}
    for role, workload, dep in r.deployments():
        pod = dep["spec"]["template"]
        env = effective_env(r, dep)
        inject = pod["metadata"]["labels"].get("sidecar.istio.io/inject")
        mounts = {m["name"]: m for m in container(dep).get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        tls_env = {k: v for k, v in env.items() if k.startswith("ORDERMESH_TLS_")}
        tls_secrets = [v["secret"]["secretName"] for v in volumes.values()
                       if "secret" in v and v["secret"]["secretName"] not in other_secrets]
        # A subPath mount is a copy made at start: it never sees a renewed Secret.
        for m in container(dep).get("volumeMounts", []):
            if "secret" in volumes.get(m["name"], {}) and (m.get("subPath") or m.get("subPathExpr")):
                problems.append(f"{workload}: Secret volume {m['name']} mounted with subPath: renewed "
                                "certificates would never reach the process")
        if r.istio:
            if inject != "true":
                problems.append(f"{workload}: istio mode needs pod label sidecar.istio.io/inject=true")
            if tls_env or tls_secrets:
                problems.append(f"{workload}: istio mode must not mount TLS Secrets or set ORDERMESH_TLS_*")
            if "holdApplicationUntilProxyStarts" not in pod["metadata"].get("annotations", {}).get(
                    "proxy.istio.io/config", ""):
                problems.append(f"{workload}: start the app only once its sidecar is ready")
            continue
        if inject != "false":
            problems.append(f"{workload}: builtin mode needs pod label sidecar.istio.io/inject=false")
        cfg = deep_merge(r.values["defaults"], r.values["roles"].get(role) or {})
        want_secret = cfg["tlsSecretName"] or f"{RELEASE}-{workload}-tls"
        if tls_secrets != [want_secret]:
            problems.append(f"{workload}: TLS Secret mounts {tls_secrets}, want [{want_secret}]")
            continue
        vol = next(n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == want_secret)
        if vol not in mounts:
            problems.append(f"{workload}: TLS volume not mounted")
            continue
        base = mounts[vol]["mountPath"].rstrip("/")
        for var, key in (("ORDERMESH_TLS_CA", "ca.crt"), ("ORDERMESH_TLS_CERT", "tls.crt"),
                         ("ORDERMESH_TLS_KEY", "tls.key")):
            if env.get(var) != f"{base}/{key}":
                problems.append(f"{workload}: {var}={env.get(var)!r}, want {base}/{key}")
        for var in ("ORDERMESH_TLS_CA", "ORDERMESH_TLS_CERT", "ORDERMESH_TLS_KEY"):
            if str(env.get(var, "")).rsplit("/", 1)[0] != base:
                problems.append(f"{workload}: {var} must be a file directly in the mounted directory {base}")
        if r.values["mtls"]["certManager"]["enabled"]:
            cert = certs.get(workload, {}).get("spec", {})
            spiffe = f"spiffe://{r.values['mtls']['trustDomain']}/ns/{NAMESPACE}/sa/{workload}"
            if cert.get("secretName") != want_secret or cert.get("uris") != [spiffe] \
                    or workload not in cert.get("dnsNames", []):
                problems.append(f"{workload}: Certificate must write {want_secret} with URI SAN {spiffe}")
            headless = f"{workload}-headless.{NAMESPACE}.svc.{r.values['discovery']['clusterDomain']}"
            if role != "gateway" and headless not in cert.get("dnsNames", []):
                problems.append(f"{workload}: Certificate lacks the headless name {headless} (for tools)")
    if r.istio or not r.values["mtls"]["certManager"]["enabled"]:
        if certs or r.all("Issuer"):
            problems.append("cert-manager objects rendered although cert-manager is off or Istio does mTLS")
    else:
        problems += check_issuer_chain(r, certs)
    return problems


def check_issuer_chain(r: Rendered, certs: dict) -> list[str]:
    """Every mesh certificate names the configured issuer; without one, the chart's bootstrap
    chain (self-signed Issuer -> CA Certificate -> CA Issuer) must be whole and consistent."""
    problems = []
    ref = r.values["mtls"]["certManager"]["issuerRef"]
    issuers = {i["metadata"]["name"]: i["spec"] for i in r.all("Issuer")}
    leaves = {n: c["spec"] for n, c in certs.items() if not c["spec"].get("isCA")}
    cas = {n: c["spec"] for n, c in certs.items() if c["spec"].get("isCA")}
    if ref["name"]:
        want = {"name": ref["name"], "kind": ref.get("kind", "Issuer"), "group": ref.get("group", "cert-manager.io")}
        if issuers or cas:
            problems.append(f"mtls.certManager.issuerRef names {ref['name']}: the chart must not "
                            f"bootstrap a CA too (found {sorted(issuers)}, {sorted(cas)})")
    else:
        ca_issuers = {n: s for n, s in issuers.items() if "ca" in s}
        if len(ca_issuers) != 1 or len(cas) != 1:
            return problems + [f"no issuerRef: want one bootstrapped CA Certificate and one CA Issuer, "
                               f"found {sorted(cas)} and {sorted(ca_issuers)}"]
        (issuer_name, issuer), (ca_name, ca) = next(iter(ca_issuers.items())), next(iter(cas.items()))
        if issuer["ca"]["secretName"] != ca["secretName"]:
            problems.append(f"Issuer/{issuer_name} reads {issuer['ca']['secretName']}, but the CA "
                            f"Certificate/{ca_name} writes {ca['secretName']}")
        root = issuers.get(ca["issuerRef"]["name"])
        if ca["issuerRef"].get("kind", "Issuer") != "Issuer" or not root or "selfSigned" not in root:
            problems.append(f"Certificate/{ca_name} must be signed by a self-signed Issuer of the chart")
        want = {"name": issuer_name, "kind": "Issuer", "group": "cert-manager.io"}
    for name, spec in leaves.items():
        got = {"kind": "Issuer", "group": "cert-manager.io", **spec.get("issuerRef", {})}
        if got != want:
            problems.append(f"Certificate/{name}: issuerRef {spec.get('issuerRef')}, want {want}")
    return problems


def check_jwt(r: Rendered) -> list[str]:
    problems = []
    key = r.values["jwt"]["signingKey"]
    secret_name = key["secretName"] or f"{RELEASE}-jwt-signing-key"
    for role, workload, dep in r.deployments():
        env = effective_env(r, dep)
        volumes = dep["spec"]["template"]["spec"].get("volumes", [])
        mounted = [v for v in volumes if v.get("secret", {}).get("secretName") == secret_name]
        if role != "user":
            if mounted or "ORDERMESH_JWT_SIGNING_KEY_FILE" in env:
                problems.append(f"{workload}: only user-service may see the signing key")
            continue
        mounts = {m["name"]: m["mountPath"] for m in container(dep).get("volumeMounts", [])}
        if len(mounted) != 1 or mounted[0]["name"] not in mounts:
            problems.append(f"user-service: signing key Secret {secret_name} is not mounted")
            continue
        want = f"{mounts[mounted[0]['name']].rstrip('/')}/{key['secretKey']}"
        if env.get("ORDERMESH_JWT_SIGNING_KEY_FILE") != want:
            problems.append(f"user-service: ORDERMESH_JWT_SIGNING_KEY_FILE should be {want}")
    secret = r.get("Secret", secret_name)
    if key["create"]:
        pem = (secret or {}).get("data", {}).get(key["secretKey"], "")
        text = base64.b64decode(pem).decode() if pem else ""
        if not text.startswith("-----BEGIN PRIVATE KEY-----"):
            problems.append(f"Secret {secret_name} must hold a PKCS#8 PEM under {key['secretKey']}")
        elif secret["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
            problems.append(f"Secret {secret_name} must be kept on uninstall (tokens outlive releases)")
    elif secret:
        problems.append(f"Secret {secret_name} rendered although jwt.signingKey.create is false")
    return problems


MAIL_VARS = {"ORDERMESH_SMTP_HOST", "ORDERMESH_SMTP_PORT", "ORDERMESH_SMTP_SECURITY", "ORDERMESH_SMTP_USERNAME",
             "ORDERMESH_SMTP_PASSWORD_FILE", "ORDERMESH_SMTP_CA_FILE", "ORDERMESH_MAIL_DIR", "ORDERMESH_MAIL_FROM",
             "ORDERMESH_PUBLIC_URL", "ORDERMESH_MAIL_MAX_ATTEMPTS", "ORDERMESH_MAIL_RETRY_BASE_MS"}


def check_mail(r: Rendered) -> list[str]:
    """notification-service alone gets the mail settings and the relay's password (a file in a
    Secret mounted as a directory) and CA; without a relay (embedded store only) its emails go to
    the data emptyDir. Under Istio a ServiceEntry declares the relay's port TCP (TLS for tls)."""
    problems = []
    mail = r.values["mail"]
    smtp = mail["smtp"]
    pw, ca = smtp["passwordSecret"], smtp.get("caConfigMap") or {"name": ""}
    for role, workload, dep in r.deployments():
        env = effective_env(r, dep)
        pod = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["name"]: m["mountPath"] for m in container(dep).get("volumeMounts", [])}
        mail_volumes = [n for n, v in volumes.items()
                        if pw["name"] and v.get("secret", {}).get("secretName") == pw["name"]
                        or ca["name"] and v.get("configMap", {}).get("name") == ca["name"]]
        if role != "notification":
            seen = sorted(MAIL_VARS & set(env)) + mail_volumes
            if seen:
                problems.append(f"{workload}: only notification-service may see the mail settings, found {seen}")
            continue
        expect = {"ORDERMESH_MAIL_FROM": mail["from"], "ORDERMESH_PUBLIC_URL": mail.get("publicUrl") or None,
                  "ORDERMESH_MAIL_MAX_ATTEMPTS": str(mail["maxAttempts"]),
                  "ORDERMESH_MAIL_RETRY_BASE_MS": str(mail["retryBaseMs"])}
        if smtp["host"]:
            expect |= {"ORDERMESH_SMTP_HOST": smtp["host"], "ORDERMESH_SMTP_PORT": str(smtp["port"]),
                       "ORDERMESH_SMTP_SECURITY": smtp["security"],
                       "ORDERMESH_SMTP_USERNAME": smtp.get("username") or None,
                       "ORDERMESH_SMTP_PASSWORD_FILE": f"{SMTP_PASSWORD_DIR}/{pw['key']}" if pw["name"] else None,
                       "ORDERMESH_SMTP_CA_FILE": f"{SMTP_CA_DIR}/{ca['key']}" if ca["name"] else None,
                       "ORDERMESH_MAIL_DIR": None}
            for name, kind, ref, directory in (("password", "secret", pw, SMTP_PASSWORD_DIR),
                                               ("CA", "configMap", ca, SMTP_CA_DIR)):
                if not ref["name"]:
                    continue
                field = "secretName" if kind == "secret" else "name"
                vol = [n for n, v in volumes.items() if v.get(kind, {}).get(field) == ref["name"]]
                if len(vol) != 1 or mounts.get(vol[0]) != directory:
                    problems.append(f"{workload}: the relay's {name} ({kind} {ref['name']}) must be mounted "
                                    f"as the directory {directory}")
                elif [i["key"] for i in volumes[vol[0]][kind].get("items", [])] not in ([], [ref["key"]]):
                    problems.append(f"{workload}: the {name} volume must carry the key {ref['key']}")
            if any(m.get("subPath") for m in container(dep).get("volumeMounts", [])
                   if m["name"] in mail_volumes):
                problems.append(f"{workload}: mail volumes mounted with subPath")
        elif r.backend == "embedded":
            data_dir = r.values["store"]["embedded"]["dataDir"].rstrip("/")
            expect |= {v: None for v in MAIL_VARS if v.startswith("ORDERMESH_SMTP_")}
            expect["ORDERMESH_MAIL_DIR"] = f"{data_dir}/mail"
            if data_dir not in mounts.values():
                problems.append(f"{workload}: {data_dir}, where the emails go, is not mounted")
        else:
            problems.append(f"{workload}: DynamoDB without mail.smtp.host rendered (the binary refuses to start)")
        for var, want in expect.items():
            if env.get(var) != want:
                problems.append(f"{workload}: {var}={env.get(var)!r}, want {want!r}")
    entries = r.all("ServiceEntry")
    want_entry = r.istio and bool(smtp["host"]) and smtp.get("istioServiceEntry", True)
    if not want_entry:
        problems += [f"{ident(e)} rendered without Istio, a relay or mail.smtp.istioServiceEntry" for e in entries]
    elif len(entries) != 1:
        problems.append(f"want one ServiceEntry for the SMTP relay, found {len(entries)}")
    else:
        spec, where = entries[0]["spec"], ident(entries[0])
        protocol = "TLS" if smtp["security"] == "tls" else "TCP"
        if spec.get("hosts") != [smtp["host"]] or spec.get("location") != "MESH_EXTERNAL":
            problems.append(f"{where}: want hosts [{smtp['host']}], location MESH_EXTERNAL")
        if spec.get("resolution") != "DNS" or spec.get("exportTo") != ["."]:
            problems.append(f"{where}: want resolution DNS, exportTo [.]")
        if [(p.get("number"), p.get("protocol")) for p in spec.get("ports", [])] != [(smtp["port"], protocol)]:
            problems.append(f"{where}: ports {spec.get('ports')}, want {smtp['port']} as {protocol} "
                            "(SMTP is server-first: the sidecar must not sniff it)")
    return problems


WEBHOOK_VARS = {"ORDERMESH_WEBHOOK_MAX_ATTEMPTS": "maxAttempts", "ORDERMESH_WEBHOOK_RETRY_BASE_MS": "retryBaseMs",
                "ORDERMESH_WEBHOOK_DISABLE_AFTER": "disableAfter"}


def check_webhooks(r: Rendered) -> list[str]:
    """notification-service alone gets the webhooks values; nothing rendered ever carries
    ORDERMESH_WEBHOOKS_ALLOW_PRIVATE (local runs only: http and private targets), in an env,
    a ConfigMap or anywhere else."""
    problems = []
    hooks = r.values["webhooks"]
    for role, workload, dep in r.deployments():
        env = effective_env(r, dep)
        if role != "notification":
            seen = sorted(set(WEBHOOK_VARS) & set(env))
            if seen:
                problems.append(f"{workload}: only notification-service may see the webhook settings, found {seen}")
            continue
        for var, key in WEBHOOK_VARS.items():
            if env.get(var) != str(hooks[key]):
                problems.append(f"{workload}: {var}={env.get(var)!r}, want {str(hooks[key])!r} (webhooks.{key})")
    for o in r.objects:
        if ALLOW_PRIVATE in json.dumps(o):
            problems.append(f"{ident(o)}: carries {ALLOW_PRIVATE}, which the chart must never set")
    return problems


def check_tables_job(r: Rendered) -> list[str]:
    jobs = r.all("Job")
    if r.backend != "dynamodb":
        return [f"{ident(j)} rendered for the embedded store" for j in jobs]
    if len(jobs) != 1:
        return [f"want one tables Job, found {len(jobs)}"]
    job, problems = jobs[0], []
    hooks = job["metadata"].get("annotations", {})
    if set(hooks.get("helm.sh/hook", "").split(",")) != {"pre-install", "pre-upgrade"}:
        problems.append("Job must be a pre-install,pre-upgrade hook")
    pod = job["spec"]["template"]
    c = pod["spec"]["containers"][0]
    if c.get("args") != ["tables", "create"]:
        problems.append(f"Job args {c.get('args')}, want ['tables', 'create']")
    if pod["metadata"].get("labels", {}).get("sidecar.istio.io/inject") != "false":
        problems.append("Job pod must opt out of sidecar injection (a sidecar never exits)")
    if any("configMapRef" in s for s in c.get("envFrom", [])):
        problems.append("Job must not read the ConfigMap: hooks run before it exists")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("ORDERMESH_STORE") != "dynamodb" or not env.get("AWS_REGION"):
        problems.append("Job needs ORDERMESH_STORE=dynamodb and AWS_REGION")
    endpoint = r.values["store"]["dynamodb"]["endpoint"]
    if endpoint and env.get("AWS_ENDPOINT_URL_DYNAMODB") != endpoint:
        problems.append("Job ignores store.dynamodb.endpoint")
    sa_name = pod["spec"].get("serviceAccountName", "")
    if not r.get("ServiceAccount", sa_name):
        problems.append("Job's ServiceAccount is not rendered")
    # What the Job's pod needs at admission (its ServiceAccount, and any Role/RoleBinding for
    # it) must be hooks of the same events, created first (lower weight), and still there when
    # the Job runs: no hook-succeeded, which some hook runners apply as soon as the object is
    # ready (Argo CD), before the Job's pod is admitted.
    job_events = set(hooks.get("helm.sh/hook", "").split(","))
    job_weight = int(hooks.get("helm.sh/hook-weight", 0))
    for o in r.objects:
        if not (o["kind"] == "ServiceAccount" and o["metadata"]["name"] == sa_name
                or o["kind"] in ("Role", "RoleBinding") and "helm.sh/hook" in o["metadata"].get("annotations", {})):
            continue
        a = o["metadata"].get("annotations", {})
        if set(a.get("helm.sh/hook", "").split(",")) != job_events:
            problems.append(f"{ident(o)}: must be a {','.join(sorted(job_events))} hook like the Job")
        if int(a.get("helm.sh/hook-weight", 0)) >= job_weight:
            problems.append(f"{ident(o)}: hook-weight {a.get('helm.sh/hook-weight', '0')} must be below "
                            f"the Job's {job_weight}")
        if "hook-succeeded" in a.get("helm.sh/hook-delete-policy", ""):
            problems.append(f"{ident(o)}: hook-delete-policy hook-succeeded may delete it before the Job runs")
    return problems


def render(chart, values: dict) -> list[dict]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path in sorted(out):
        if path.endswith(".yaml"):
            objects += load_yaml_docs(out[path])
    return objects


# ------------------------------------------------------------------------ Istio manifests

def check_istio(report: Report, crds: dict, istio_render: Rendered) -> None:
    files = sorted(p for p in ISTIO.glob("*.yaml") if p.name != "kustomization.yaml")
    docs: dict[str, list[dict]] = {}
    for path in files:
        try:
            docs[path.name] = load_yaml_docs(path.read_text())
        except yaml.YAMLError as e:
            report.check(f"istio/{path.name}: parses", [str(e)])
            continue
        problems = []
        for obj in docs[path.name]:
            problems += validate_istio(obj, crds)
            if obj.get("metadata", {}).get("namespace") != NAMESPACE:
                problems.append(f"{ident(obj)}: namespace must be {NAMESPACE}")
        report.check(f"istio/{path.name}: {len(docs[path.name])} resources valid against the Istio CRDs",
                     problems)

    kust = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())
    listed = kust.get("resources", [])
    problems = [f"{p.name} not listed" for p in files if p.name not in listed]
    problems += [f"{n} listed but missing" for n in listed
                 if not (ISTIO / n).exists() and n != "authorization-policies.yaml"]
    if kust.get("namespace") != NAMESPACE:
        problems.append(f"namespace must be {NAMESPACE}")
    report.check("istio/kustomization.yaml lists every manifest", problems)

    objs = [o for d in docs.values() for o in d]

    def of(kind):
        return [o for o in objs if o.get("kind") == kind]

    labels = {w: pod_labels(d) for _, w, d in istio_render.deployments()}
    fqdn = {w: f"{w}.{NAMESPACE}.svc.cluster.local" for w in ROLES.values()}
    svc_ports = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
                 for s in istio_render.all("Service")}

    # PeerAuthentication: STRICT namespace-wide; the only exception is edge-gateway's JWKS port.
    pas, problems = of("PeerAuthentication"), []
    wide = [p for p in pas if not p["spec"].get("selector")]
    if len(wide) != 1 or wide[0]["spec"].get("mtls", {}).get("mode") != "STRICT":
        problems.append("want exactly one namespace-wide PeerAuthentication with mtls.mode STRICT")
    for p in pas:
        if p in wide:
            continue
        sel = p["spec"]["selector"].get("matchLabels", {})
        if p["spec"].get("mtls", {}).get("mode") not in (None, "STRICT", "UNSET"):
            problems.append(f"{ident(p)}: workload-wide mode must stay STRICT")
        loose = {int(port) for port, m in p["spec"].get("portLevelMtls", {}).items() if m.get("mode") != "STRICT"}
        if loose and not (selects(sel, labels["edge-gateway"]) and loose == {HTTP_PORT}):
            problems.append(f"{ident(p)}: only edge-gateway:{HTTP_PORT} (JWKS for istiod) may be PERMISSIVE")
    report.check("PeerAuthentication: STRICT mTLS namespace-wide", problems)

    # DestinationRules: one per workload, mesh mTLS, pools and outlier detection.
    drs = {d["spec"]["host"]: d for d in of("DestinationRule")}
    problems = []
    for workload, host in fqdn.items():
        tp = drs.get(host, {}).get("spec", {}).get("trafficPolicy")
        if tp is None:
            problems.append(f"no DestinationRule for {host}")
            continue
        if tp.get("tls", {}).get("mode") != "ISTIO_MUTUAL":
            problems.append(f"{host}: tls.mode must be ISTIO_MUTUAL")
        for key in ("connectionPool", "outlierDetection"):
            if not tp.get(key):
                problems.append(f"{host}: {key} missing")
    problems += [f"DestinationRule for unknown host {h}" for h in drs if h not in fqdn.values()]
    report.check(f"DestinationRules: one per workload ({len(fqdn)}), ISTIO_MUTUAL, pools, outlier detection",
                 problems)

    # The gateway closes a connection that sends no request head within headerTimeoutMs, idle
    # keep-alives included. Istio applies edge-gateway's pool to its sidecar's connections to
    # the process too: they must go idle-closed first, or a request may be sent on one the
    # process is closing (Envoy's default idle timeout is 1h).
    head_ms = istio_render.values["gateway"]["headerTimeoutMs"]
    http_pool = (drs.get(fqdn["edge-gateway"], {}).get("spec", {}).get("trafficPolicy", {})
                 .get("connectionPool", {}).get("http", {}))
    idle = go_duration(http_pool.get("idleTimeout"))
    problems = []
    if idle is None or idle <= 0:
        problems.append(f"{fqdn['edge-gateway']}: set connectionPool.http.idleTimeout "
                        f"(Envoy's default 1h outlives the gateway's {head_ms}ms head deadline)")
    elif idle * 1000 >= head_ms:
        problems.append(f"{fqdn['edge-gateway']}: connectionPool.http.idleTimeout "
                        f"{http_pool['idleTimeout']} must be below gateway.headerTimeoutMs ({head_ms}ms)")
    report.check("DestinationRule edge-gateway: idle connections close before the gateway's head deadline",
                 problems)

    # RequestAuthentication: the gateway's JWTs, as the chart configures them.
    ras, problems = of("RequestAuthentication"), []
    chart_jwt = istio_render.values["jwt"]
    if len(ras) != 1:
        problems.append(f"want one RequestAuthentication, found {len(ras)}")
    for ra in ras:
        if not selects(ra["spec"].get("selector", {}).get("matchLabels", {}), labels["edge-gateway"]):
            problems.append(f"{ident(ra)}: selector must pick the edge-gateway pods")
        for rule in ra["spec"].get("jwtRules", []):
            if rule.get("issuer") != chart_jwt["issuer"]:
                problems.append(f"issuer {rule.get('issuer')!r} != chart jwt.issuer {chart_jwt['issuer']!r}")
            if chart_jwt["audience"] not in rule.get("audiences", []):
                problems.append(f"audiences {rule.get('audiences')} lack chart jwt.audience")
            u = urllib.parse.urlparse(rule.get("jwksUri", ""))
            if (u.hostname, u.port, u.path) != (fqdn["edge-gateway"], HTTP_PORT, "/.well-known/jwks.json") \
                    or HTTP_PORT not in svc_ports.get("edge-gateway", set()):
                problems.append(f"jwksUri {rule.get('jwksUri')!r} must be the gateway's "
                                f"http://{fqdn['edge-gateway']}:{HTTP_PORT}/.well-known/jwks.json")
            if rule.get("forwardOriginalToken") is not True:
                problems.append("forwardOriginalToken must be true: the gateway reads the token too")
    report.check("RequestAuthentication: issuer, audience and jwksUri agree with the chart", problems)

    # Gateway + VirtualService: to edge-gateway:8080, timeouts, retries on safe methods only.
    problems = []
    gateways = {g["metadata"]["name"] for g in of("Gateway")}
    vss = of("VirtualService")
    if not vss or not gateways:
        problems.append("want a Gateway and a VirtualService")
    for vs in vss:
        for gw in vs["spec"].get("gateways", []):
            if gw.split("/")[-1] not in gateways:
                problems.append(f"{ident(vs)}: unknown gateway {gw}")
        for route in vs["spec"].get("http", []):
            name = route.get("name", "?")
            for dest in route.get("route", []):
                d = dest["destination"]
                if d["host"] != fqdn["edge-gateway"] or d.get("port", {}).get("number") != HTTP_PORT:
                    problems.append(f"route {name}: must go to {fqdn['edge-gateway']}:{HTTP_PORT}")
            if go_duration(route.get("timeout")) is None:
                problems.append(f"route {name}: no timeout")
            methods = set()
            for m in route.get("match") or [{}]:
                spec = m.get("method", {})
                if "exact" in spec:
                    methods.add(spec["exact"])
                elif "regex" in spec and re.fullmatch(r"[A-Z]+(\|[A-Z]+)*", spec["regex"]):
                    methods |= set(spec["regex"].split("|"))
                else:
                    methods.add("*")
            attempts = route.get("retries", {}).get("attempts")
            if methods <= SAFE_METHODS:
                if not attempts:
                    problems.append(f"route {name}: safe methods should be retried")
            elif attempts != 0:
                problems.append(f"route {name}: matches non-idempotent methods, so retries.attempts "
                                "must be 0 (Istio retries by default)")
    report.check("Gateway + VirtualService: edge-gateway:8080, timeouts, retries only for safe methods",
                 problems)

    # The admin port (metrics, detailed backend health) is never reachable from the world.
    problems = []
    services = {s["metadata"]["name"]: s for s in istio_render.all("Service")}
    for g in of("Gateway"):
        for server in g["spec"].get("servers", []):
            if server.get("port", {}).get("number") == ADMIN_PORT:
                problems.append(f"{ident(g)}: listens on the admin port {ADMIN_PORT}")
    for vs in vss:
        for kind in ("http", "tcp", "tls"):
            for route in vs["spec"].get(kind, []):
                for dest in route.get("route", []):
                    d = dest["destination"]
                    svc = services.get(d["host"].split(".")[0], {"spec": {"ports": []}})
                    admin = [p for p in svc["spec"]["ports"]
                             if p["port"] == ADMIN_PORT or p.get("targetPort") in ("http-admin", ADMIN_PORT)]
                    if d.get("port", {}).get("number") == ADMIN_PORT or (
                            selects(svc["spec"].get("selector", {}), labels["edge-gateway"]) and admin):
                        problems.append(f"{ident(vs)}: routes to the gateway's admin port via {d['host']}")
    denied = False
    for ap in of("AuthorizationPolicy"):
        spec = ap["spec"]
        if spec.get("action") != "DENY" or not selects(spec.get("selector", {}).get("matchLabels", {}),
                                                       labels["edge-gateway"]):
            continue
        for rule in spec.get("rules", []):
            ports = {str(p) for to in rule.get("to", []) for p in to.get("operation", {}).get("ports", [])}
            if str(ADMIN_PORT) in ports and not rule.get("from") and not rule.get("when"):
                denied = True
    if not denied:
        problems.append(f"want a DENY AuthorizationPolicy on edge-gateway port {ADMIN_PORT} from any "
                        "source, so no route or Service added later exposes it")
    gw_svc = services.get("edge-gateway", {"spec": {"ports": []}})
    if any(p["port"] == ADMIN_PORT for p in gw_svc["spec"]["ports"]):
        problems.append(f"edge-gateway Service exposes {ADMIN_PORT}")
    report.check(f"Istio: the gateway's admin port {ADMIN_PORT} is on no public Service, route or Gateway",
                 problems)

    problems = []
    for t in of("Telemetry") or [{}]:
        tracing = t.get("spec", {}).get("tracing", [])
        if not tracing:
            problems.append("no tracing configured")
        for tr in tracing:
            if not [p for p in tr.get("providers", []) if p.get("name") == "otel-tracing"]:
                problems.append("tracing must use the otel-tracing provider")
            if not 0 < float(tr.get("randomSamplingPercentage", -1)) <= 100:
                problems.append("randomSamplingPercentage must be in (0, 100]")
    report.check("Telemetry: traces to otel-tracing with a sampling percentage", problems)

    if "authorization-policies.yaml" not in docs:
        Report.skip("AuthorizationPolicies agree with the workloads",
                    "istio/authorization-policies.yaml not generated yet "
                    "(cargo run -p ordermesh -- istio policies > istio/authorization-policies.yaml)")
    else:
        report.check("AuthorizationPolicies agree with the workloads and identities",
                     check_authz(docs["authorization-policies.yaml"], labels, istio_render))


def allows_jwks_fetch(spec: dict) -> bool:
    """istiod fetches the JWKS from edge-gateway in plaintext, so without a peer identity."""
    for rule in spec.get("rules", []):
        if rule.get("from"):
            continue
        ops = [to.get("operation", {}) for to in rule.get("to", [])] or [{}]
        for op in ops:
            paths = op.get("paths") or ["*"]
            methods = op.get("methods") or ["GET"]
            if "GET" in methods and any(p in ("*", "/.well-known/jwks.json", "/.well-known/*") for p in paths):
                return True
    return False


# Identities the policies name that the chart renders only when asked (value in parentheses).
OPT_IN_ACCOUNTS = {"operator-admin": "operatorServiceAccount.createAdmin"}


def check_authz(policies: list[dict], labels: dict, r: Rendered) -> list[str]:
    problems = []
    td = r.values["mtls"]["trustDomain"]
    accounts = {sa["metadata"]["name"] for sa in r.all("ServiceAccount")}
    principal = re.compile(rf"^{re.escape(td)}/ns/[a-z0-9-]+/sa/[a-z0-9-]+$|^\*$")
    selected: set[str] = set()
    if not policies:
        problems.append("file has no policies")
    for p in policies:
        where = ident(p)
        if p.get("kind") != "AuthorizationPolicy":
            problems.append(f"{where}: not an AuthorizationPolicy")
            continue
        spec = p.get("spec", {})
        sel = spec.get("selector", {}).get("matchLabels", {})
        targets = [w for w, lbl in labels.items() if selects(sel, lbl)]
        if sel and not targets:
            problems.append(f"{where}: selector {sel} matches no workload (pods carry app=<workload>)")
        selected |= set(targets)
        for i, rule in enumerate(spec.get("rules", [])):
            for src in rule.get("from", []):
                for ns in src.get("source", {}).get("namespaces", []):
                    if ns != NAMESPACE:
                        problems.append(f"{where}: rule {i}: namespace {ns} is not {NAMESPACE}")
                for key in ("principals", "notPrincipals"):
                    for pr in src.get("source", {}).get(key, []):
                        if pr.startswith("spiffe://"):
                            problems.append(f"{where}: rule {i}: principal {pr} must not carry spiffe:// "
                                            "(Istio principals are <trust-domain>/ns/<ns>/sa/<sa>)")
                        elif not principal.match(pr):
                            problems.append(f"{where}: rule {i}: malformed principal {pr}")
                        elif (f"/ns/{NAMESPACE}/sa/" in pr and pr.rsplit("/", 1)[1] not in accounts
                              and pr.rsplit("/", 1)[1] not in OPT_IN_ACCOUNTS):
                            problems.append(f"{where}: rule {i}: {pr} is no ServiceAccount of the chart")
            for to in rule.get("to", []):
                op = to.get("operation", {})
                for port in op.get("ports", []):
                    if int(port) not in (GRPC_PORT, HEALTH_PORT, METRICS_PORT, HTTP_PORT):
                        problems.append(f"{where}: rule {i}: port {port} is not served")
                grpc_target = any(t != "edge-gateway" for t in targets)
                for path in op.get("paths", []) if grpc_target else []:
                    if not re.fullmatch(r"/[a-z0-9_.]+\.[A-Za-z0-9_]+/([A-Za-z0-9_]+|\*)", path):
                        problems.append(f"{where}: rule {i}: {path} is not /<package>.<Service>/<Method>")
        if spec.get("action", "ALLOW") == "ALLOW" and "edge-gateway" in targets \
                and not allows_jwks_fetch(spec):
            problems.append(f"{where}: must also allow GET /.well-known/jwks.json from any source: "
                            "istiod fetches the JWKS for request-authentication.yaml in plaintext, "
                            "without a principal, and would get 403")
    missing = [w for w in SERVICES if w not in selected]
    if missing:
        problems.append(f"no policy selects {missing}")
    return problems


# ----------------------------------------------------------------------- other artefacts

def undocumented_values(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    problems = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z0-9_.-]+):", line)
        if not m or "#" in line.split(":", 1)[1]:
            continue
        if i == 0 or not lines[i - 1].strip().startswith("#"):
            problems.append(f"{path.name}:{i + 1}: {m.group(1)} has no comment above it")
    return problems


def check_dockerfile() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    problems = []
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if not stages or not stages[0].startswith("rust:1-bookworm"):
        problems.append("builder stage must be rust:1-bookworm")
    if len(stages) < 2 or not re.match(r"(gcr\.io/distroless/cc-debian12:nonroot|debian:bookworm-slim)", stages[-1]):
        problems.append("runtime stage must be distroless cc-debian12:nonroot or debian slim")
    if "cargo build --release -p ordermesh --locked" not in text:
        problems.append("must run cargo build --release -p ordermesh --locked")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] != "65532":
        problems.append("final USER must be 65532")
    if not re.search(r'^ENTRYPOINT \["/usr/local/bin/ordermesh"\]', text, re.M):
        problems.append("ENTRYPOINT must be /usr/local/bin/ordermesh")
    ignore = (REPO / ".dockerignore").read_text().split()
    problems += [f".dockerignore must exclude {p}" for p in ("target", ".git") if p not in ignore]
    if not (REPO / "Cargo.lock").exists():
        problems.append("Cargo.lock missing (the build is --locked)")
    launcher = REPO / "launcher" / "Cargo.toml"
    if launcher.exists() and not re.search(r'^name\s*=\s*"ordermesh"', launcher.read_text(), re.M):
        problems.append("launcher/Cargo.toml must define package ordermesh")
    return problems


# The DynamoDB API operations, as the Rust SDK's client methods name them (one per operation).
DYNAMODB_OPERATIONS = set("""
batch_execute_statement batch_get_item batch_write_item create_backup create_global_table
create_table delete_backup delete_item delete_resource_policy delete_table describe_backup
describe_continuous_backups describe_contributor_insights describe_endpoints describe_export
describe_global_table describe_global_table_settings describe_import
describe_kinesis_streaming_destination describe_limits describe_table
describe_table_replica_auto_scaling describe_time_to_live disable_kinesis_streaming_destination
enable_kinesis_streaming_destination execute_statement execute_transaction
export_table_to_point_in_time get_item get_resource_policy import_table list_backups
list_contributor_insights list_exports list_global_tables list_imports list_tables
list_tags_of_resource put_item put_resource_policy query restore_table_from_backup
restore_table_to_point_in_time scan tag_resource transact_get_items transact_write_items
untag_resource update_continuous_backups update_contributor_insights update_global_table
update_global_table_settings update_item update_kinesis_streaming_destination update_table
update_table_replica_auto_scaling update_time_to_live
""".split())
# SDK waiters poll an operation.
DYNAMODB_WAITERS = {"wait_until_table_exists": "describe_table", "wait_until_table_not_exists": "describe_table"}
# Table management: the tables Job's role, not the services'.
DYNAMODB_CONTROL_PLANE = {op for op in DYNAMODB_OPERATIONS
                          if op.endswith(("_table", "_time_to_live", "_tables", "_backup", "_backups"))}
# What `tables create` needs (issue 19: it waits for ACTIVE and converges TTL on re-run), whether
# or not the code calling it has landed yet.
TABLES_JOB_ACTIONS = {"CreateTable", "DescribeTable", "DescribeTimeToLive", "UpdateTimeToLive"}
# Where the store's SDK calls live.
STORE_SOURCES = [REPO / "platform" / "src" / "store", REPO / "launcher"]
# Where the binary reads its environment (tests and benchmarks excluded).
BINARY_SOURCES = [REPO / d for d in ("src", "platform", "launcher", "edge-gateway", "services")]


def rust_files(dirs: list[Path]):
    for d in dirs:
        for path in sorted(d.rglob("*.rs")) if d.exists() else []:
            if "target" not in path.relative_to(REPO).parts:
                yield path


def pascal(op: str) -> str:
    return "".join(w.capitalize() for w in op.split("_"))


def dynamodb_calls() -> dict[str, set[str]]:
    """Operation (PascalCase) -> the IAM actions it needs, from the SDK calls in the store code.
    A transaction is authorized item by item: TransactWriteItems needs the action of each kind
    of item the code puts in one (there is no dynamodb:TransactWriteItems action)."""
    calls: dict[str, set[str]] = {}
    for path in rust_files(STORE_SOURCES):
        text = path.read_text()
        if "dynamodb" not in text.lower():
            continue
        code = re.sub(r"(?m)(^|\s)//.*$", "", text)
        for name in re.findall(r"\.\s*([a-z_]+)\(\s*\)", code):
            op = DYNAMODB_WAITERS.get(name, name)
            if op not in DYNAMODB_OPERATIONS:
                continue
            if op == "transact_write_items":
                kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                         "ConditionCheck": "ConditionCheckItem"}
                actions = {a for k, a in kinds.items() if re.search(rf"\b{k}::builder\(", code)}
                calls[pascal(op)] = actions or set(kinds.values())
            elif op == "transact_get_items":
                calls[pascal(op)] = {"GetItem"}
            else:
                calls[pascal(op)] = {pascal(op)}
    return calls


def check_iam_doc() -> list[str]:
    """deploy/README.md lists every DynamoDB operation the code calls, the IAM actions each
    needs, and gives the two policies (services, tables Job) holding them."""
    text = (REPO / "deploy" / "README.md").read_text()
    m = re.search(r"^## DynamoDB IAM.*?(?=^## |\Z)", text, re.M | re.S)
    if not m:
        return ["deploy/README.md has no '## DynamoDB IAM' section"]
    section = m.group(0)
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 and re.fullmatch(r"`[A-Za-z]+`", cells[0]):
            rows[cells[0].strip("`")] = set(re.findall(r"dynamodb:([A-Za-z]+)", cells[1]))
    policies = {}
    for block in re.findall(r"```json\n(.*?)```", section, re.S):
        try:
            doc = json.loads(block)
        except ValueError as e:
            return [f"IAM policy block is not JSON: {e}"]
        for st in doc.get("Statement", []):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            resources = st.get("Resource", [])
            resources = [resources] if isinstance(resources, str) else resources
            policies[st.get("Sid")] = ({a.split(":", 1)[1] for a in actions if a.startswith("dynamodb:")},
                                       resources)
    problems = []
    services, job = policies.get("OrdermeshServices"), policies.get("OrdermeshTablesJob")
    if not services or not job:
        return [f"want JSON policies with Sid OrdermeshServices and OrdermeshTablesJob, found {sorted(policies)}"]
    calls = dynamodb_calls()
    if not calls:
        problems.append(f"no DynamoDB SDK call found under {[str(d.relative_to(REPO)) for d in STORE_SOURCES]}")
    announced = {a: {a} for a in TABLES_JOB_ACTIONS}
    for op, actions in sorted({**announced, **calls}.items()):
        if op not in rows:
            problems.append(f"operation {op} (called by the code) has no row in the IAM table")
        elif not actions <= rows[op]:
            problems.append(f"row {op} must name {sorted('dynamodb:' + a for a in actions - rows[op])}")
        control = op in TABLES_JOB_ACTIONS or re.sub(r"(?<!^)([A-Z])", r"_\1", op).lower() in DYNAMODB_CONTROL_PLANE
        policy, who = (job, "OrdermeshTablesJob") if control else (services, "OrdermeshServices")
        if not actions <= policy[0]:
            problems.append(f"policy {who} lacks {sorted('dynamodb:' + a for a in actions - policy[0])} ({op})")
    for op in sorted(set(rows) - set(calls) - set(announced)):
        problems.append(f"row {op}: the code no longer calls it; drop it (least privilege)")
    if "Query" in calls and not any("/index/" in res for res in services[1]):
        problems.append("policy OrdermeshServices: Query on the gsi1 index needs the table/<prefix>*/index/* resource")
    return problems


def check_env_names_in_rust(rendered: dict) -> list[str]:
    """Every ORDERMESH_* variable the chart sets is read by the binary (a string literal in its
    source), so a renamed or dropped variable cannot be silently ignored."""
    names: dict[str, set[str]] = {}
    for label, r in rendered.items():
        for o in r.objects:
            found = list((o.get("data") or {}) if o["kind"] == "ConfigMap" else [])
            if o["kind"] in ("Deployment", "Job"):
                found += [e["name"] for c in o["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
            for n in found:
                if n.startswith("ORDERMESH_"):
                    names.setdefault(n, set()).add(label)
    source = "\n".join(p.read_text() for p in rust_files(BINARY_SOURCES))
    return [f"{n} (set in {', '.join(sorted(labels))}) is read nowhere in the Rust source"
            for n, labels in sorted(names.items()) if f'"{n}"' not in source]


def check_readme(values: dict) -> list[str]:
    text = (REPO / "deploy" / "README.md").read_text()
    problems = [f"top-level value {k} not described" for k in values if f"`{k}" not in text]
    if "cargo run -p ordermesh -- istio policies > istio/authorization-policies.yaml" not in text:
        problems.append("how to generate istio/authorization-policies.yaml is not described")
    return problems


# ------------------------------------------------------------------------------ monitoring

# Labels Prometheus adds to every series of a target (the ServiceMonitors' defaults).
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}
GRPC_CODES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED"}
SEVERITIES = {"critical", "warning"}
PROMQL_AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                      "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
PROMQL_FUNCTIONS = set("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg
delta deriv exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join
label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan
tanh time timestamp vector year
""".split())
PROMQL_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__from", "__to", "__dashboard", "__name"}
PROMQL_TOKEN = re.compile(r"""
    (?P<ws>\s+) | (?P<comment>\#[^\n]*)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<range>\[[^\]]*\])
  | (?P<num>(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)(?:ms|s|m|h|d|w|y)*)
  | (?P<id>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=(),{}@])
""", re.X)


def promql_tokens(expr: str) -> tuple[list[tuple[str, str]], list[str]]:
    tokens, problems, pos = [], [], 0
    while pos < len(expr):
        m = PROMQL_TOKEN.match(expr, pos)
        if not m:
            problems.append(f"cannot read the PromQL at {expr[pos:pos + 20]!r}")
            break
        if m.lastgroup not in ("ws", "comment"):
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    return tokens, problems


def unquote(s: str) -> str:
    return s[1:-1].encode().decode("unicode_escape") if s[:1] in "\"'" else s[1:-1]


def promql_refs(expr: str) -> tuple[list[tuple[str | None, list[tuple[str, str, str]]]], set[str], list[str]]:
    """The selectors of a PromQL expression (metric name, its matchers as (label, op, value)),
    the functions and aggregations it calls, and what could not be read. A lexer, not a
    parser: enough to tell which metrics and labels an expression names."""
    tokens, problems = promql_tokens(expr)
    selectors: list[tuple[str | None, list[tuple[str, str, str]]]] = []
    functions: set[str] = set()

    def matchers(i: int) -> tuple[list[tuple[str, str, str]], int]:
        out, i = [], i + 1  # past "{"
        while i < len(tokens) and tokens[i] != ("op", "}"):
            if tokens[i] == ("op", ","):
                i += 1
                continue
            if i + 2 < len(tokens) and tokens[i][0] in ("id", "str") and tokens[i + 2][0] == "str":
                label = tokens[i][1] if tokens[i][0] == "id" else unquote(tokens[i][1])
                out.append((label, tokens[i + 1][1], unquote(tokens[i + 2][1])))
                i += 3
            else:
                problems.append(f"cannot read the label matchers at {tokens[i][1]!r}")
                return out, len(tokens)
        return out, i + 1

    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "id":
            if value in PROMQL_GROUPING:
                if following == ("op", "("):
                    while i < len(tokens) and tokens[i] != ("op", ")"):
                        i += 1
                i += 1
            elif value.lower() in PROMQL_KEYWORDS:
                i += 1
            elif value in PROMQL_AGGREGATORS or following == ("op", "("):
                functions.add(value)
                i += 1
            elif following == ("op", "{"):
                found, i = matchers(i + 1)
                selectors.append((value, found))
            else:
                selectors.append((value, []))
                i += 1
        elif (kind, value) == ("op", "{"):
            found, i = matchers(i)
            names = [v for label, op, v in found if label == "__name__" and op == "="]
            selectors.append((names[0] if names else None, [m for m in found if m[0] != "__name__"]))
        else:
            i += 1
    return selectors, functions, problems


def load_metrics_contract() -> dict[str, set[str]]:
    """Sample name -> its labels, from deploy/prometheus/metrics.yaml; plus up."""
    out: dict[str, set[str]] = {"up": set()}
    for m in yaml.safe_load(METRICS_CONTRACT.read_text())["metrics"]:
        name, kind, labels = m["name"], m["type"], set(m.get("labels") or [])
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "gauge":
            out[name] = labels
        elif kind == "histogram":
            out.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            raise ValueError(f"{METRICS_CONTRACT.name}: {name}: unknown type {kind}")
    return out


def check_expr(where: str, expr: str, contract: dict[str, set[str]], records: set[str]) -> list[str]:
    """Every metric an expression names is exposed by the binaries (or recorded by a rule), and
    every label it matches on is one that metric has."""
    selectors, functions, problems = promql_refs(expr)
    problems = [f"{where}: {p}" for p in problems]
    if not selectors:
        problems.append(f"{where}: names no metric")
    for name, found in selectors:
        if name is None:
            problems.append(f"{where}: a selector without a metric name")
        elif name in records:
            continue
        elif name not in contract:
            problems.append(f"{where}: {name} is neither a metric in {METRICS_CONTRACT.relative_to(REPO)} "
                            "nor a recording rule")
        else:
            for label, op, value in found:
                if label not in contract[name] | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {label}")
                elif label == "grpc_code" and not re.search(r"[$.*+?\[]", value):
                    bad = set(value.split("|")) - GRPC_CODES - {""}
                    if bad:
                        problems.append(f"{where}: grpc_code {sorted(bad)} is no gRPC code name")
    for f in sorted(functions - PROMQL_FUNCTIONS - PROMQL_AGGREGATORS):
        problems.append(f"{where}: unknown PromQL function {f}")
    return problems


def github_anchor(heading: str) -> str:
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", heading.strip().lower()))


def readme_alert_sections() -> dict[str, str]:
    """Heading anchor -> text of each ### section under deploy/README.md's '## Alerts'."""
    text = (REPO / "deploy" / "README.md").read_text()
    m = re.search(r"^## Alerts\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        return {}
    parts = re.split(r"^### (.+)$", m.group(1), flags=re.M)
    return {github_anchor(h): body for h, body in zip(parts[1::2], parts[2::2])}


def up_jobs(expr: str) -> set[str] | None:
    """The jobs an up{job=~"a|b"} selector in expr names, or None."""
    for name, found in promql_refs(expr)[0]:
        if name == "up":
            for label, op, value in found:
                if label == "job" and op in ("=", "=~"):
                    return set(value.split("|"))
    return None


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def rule_names(rules: dict) -> tuple[set[str], dict[str, dict]]:
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    return records, alerts


def check_rules(rules: dict, contract: dict[str, set[str]]) -> list[str]:
    """The rules name only exposed metrics and labels (or their own recordings); each alert has a
    severity, a summary, a description and a runbook_url to its section of deploy/README.md."""
    problems = []
    records, alerts = rule_names(rules)
    for g in rules["groups"]:
        for rule in g["rules"]:
            where = f"{g['name']}/{rule.get('record') or rule.get('alert')}"
            problems += check_expr(where, str(rule["expr"]), contract, records)
    sections = readme_alert_sections()
    if not sections:
        problems.append("deploy/README.md has no '## Alerts' section with a '### <alert>' per alert")
    for name, rule in sorted(alerts.items()):
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: label severity must be one of {sorted(SEVERITIES)}")
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                problems.append(f"{name}: no {key} annotation")
        want = f"deploy/README.md#{github_anchor(name)}"
        if ann.get("runbook_url") != want:
            problems.append(f"{name}: runbook_url {ann.get('runbook_url')!r}, want {want!r}")
        if github_anchor(name) not in sections:
            problems.append(f"{name}: deploy/README.md's Alerts section has no '### {name}'")
    for anchor in sorted(set(sections) - {github_anchor(a) for a in alerts}):
        problems.append(f"deploy/README.md's Alerts section describes #{anchor}, which is no alert in rules.yaml")
    down = next((str(r["expr"]) for r in alerts.values() if up_jobs(str(r["expr"])) is not None), None)
    if down is None:
        problems.append("no alert on up{job=~...} for the chart's scrape jobs")
    elif up_jobs(down) != set(ROLES.values()):
        problems.append(f"the up alert names the jobs {sorted(up_jobs(down))}, but the chart's ServiceMonitors "
                        f"make one job per workload: {sorted(ROLES.values())}")
    return problems


def check_rules_tests(rules: dict, contract: dict[str, set[str]]) -> list[str]:
    """rules_test.yaml tests each alert firing and not firing, evaluates each recording rule, and
    feeds series the binaries really expose."""
    problems = []
    tests = yaml.safe_load(RULES_TEST.read_text())
    records, alerts = rule_names(rules)
    if tests.get("rule_files") != [RULES.name]:
        problems.append(f"rule_files must be [{RULES.name}]")
    firing, quiet, evaluated = set(), set(), set()
    for t in tests.get("tests", []):
        for series in t.get("input_series", []):
            problems += check_expr(f"test {t.get('name')!r}: input series", series["series"], contract, set())
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else quiet).add(a["alertname"])
        for e in t.get("promql_expr_test", []):
            evaluated |= {name for name, _ in promql_refs(e["expr"])[0]}
    problems += [f"{a}: no test where it fires" for a in sorted(set(alerts) - firing)]
    problems += [f"{a}: no test where it stays quiet" for a in sorted(set(alerts) - quiet)]
    problems += [f"recording rule {r} is evaluated by no promql_expr_test" for r in sorted(records - evaluated)]
    problems += [f"alert_rule_test for {a}, which rules.yaml does not define"
                 for a in sorted((firing | quiet) - set(alerts))]
    return problems


def promtool_version() -> str | None:
    exe = shutil.which("promtool")
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].replace("promtool, ", "") if first else "promtool"


def run_promtool(*args: str) -> list[str]:
    exe = shutil.which("promtool")
    if not exe:
        return ["promtool not found: bash tests/support/system-tools.sh installs it "
                "(Debian's prometheus package)"]
    p = subprocess.run([exe, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        return []
    return [line for line in (p.stdout + p.stderr).splitlines() if line.strip()] or [f"exit {p.returncode}"]


def check_shared_files() -> list[str]:
    """deploy/prometheus/rules.yaml and deploy/grafana/ordermesh-dashboard.json are the chart's
    files (symlinks), so the PrometheusRule and ConfigMap carry exactly what is tested here."""
    problems = []
    for path, chart_file in ((RULES, CHART_RULES), (DASHBOARD, CHART_DASHBOARD)):
        rel, chart_rel = path.relative_to(REPO), chart_file.relative_to(REPO)
        if not chart_file.is_file():
            problems.append(f"{chart_rel} missing")
        elif not path.exists():
            problems.append(f"{rel} missing (a symlink to {chart_rel})")
        elif path.resolve() != chart_file.resolve() and path.read_bytes() != chart_file.read_bytes():
            problems.append(f"{rel} differs from {chart_rel}: it must be a symlink to it "
                            "(the chart's templates read only files inside the chart)")
    return problems


def grafana_query(q: object) -> str:
    return (q.get("query") or q.get("expr") or "") if isinstance(q, dict) else str(q or "")


def check_dashboard(contract: dict[str, set[str]], records: set[str]) -> tuple[list[str], int]:
    """Valid JSON; a Prometheus datasource variable every panel and query uses; a route
    variable; panels with unique ids on a 24-column grid, without overlaps; every expression names
    only exposed metrics and labels (or recording rules) and only defined variables."""
    try:
        d = json.loads(DASHBOARD.read_text())
    except ValueError as e:
        return [f"not valid JSON: {e}"], 0
    problems = []
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        problems.append(f"schemaVersion {d.get('schemaVersion')!r}, want 36 or later")
    for key in ("uid", "title"):
        if not d.get(key):
            problems.append(f"no {key}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("want a variable 'datasource' of type datasource, query prometheus")
    if variables.get("route", {}).get("type") != "query":
        problems.append("want a query variable 'route'")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    defined = set(variables) | GRAFANA_BUILTINS

    def check_vars(where: str, expr: str) -> None:
        for v in re.findall(r"\$\{?(\w+)", expr):
            if v not in defined:
                problems.append(f"{where}: ${v} is no variable of the dashboard")

    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        where = f"variable {name}"
        if v.get("datasource") != want_ds:
            problems.append(f"{where}: datasource must be {want_ds}")
        q = grafana_query(v.get("query")).strip()
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\s*\)", q, re.S) or re.fullmatch(r"query_result\((.*)\)", q, re.S)
        if not m:
            problems.append(f"{where}: want label_values(<selector>, <label>) or query_result(<expr>), found {q!r}")
            continue
        problems += check_expr(where, m.group(1), contract, records)
        if m.re.pattern.startswith("label_values"):
            sel = promql_refs(m.group(1))[0]
            if sel and sel[0][0] in contract and m.group(2) not in contract[sel[0][0]] | TARGET_LABELS:
                problems.append(f"{where}: {sel[0][0]} has no label {m.group(2)}")
        if name == "job" and up_jobs(m.group(1)) not in (None, set(ROLES.values())):
            problems.append(f"{where}: lists the jobs {sorted(up_jobs(m.group(1)))}, want {sorted(ROLES.values())}")

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    panels = list(walk(d.get("panels", [])))
    ids = [p.get("id") for p in panels]
    problems += [f"panel id {i} used {ids.count(i)} times" for i in sorted(set(ids), key=str) if ids.count(i) > 1]
    cells: dict[tuple[int, int], str] = {}
    queries = 0
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos {g} is not on the 24-column grid")
        else:
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    if (x, y) in cells:
                        problems.append(f"{where}: overlaps {cells[(x, y)]}")
                        break
                    cells[(x, y)] = where
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if p.get("datasource") != want_ds:
            problems.append(f"{where}: datasource must be {want_ds}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            problems.append(f"{where}: refIds {refs} not unique")
        for t in targets:
            if t.get("datasource", want_ds) != want_ds:
                problems.append(f"{where}: query {t.get('refId')} datasource must be {want_ds}")
            expr = t.get("expr") or ""
            queries += 1
            problems += check_expr(where, expr, contract, records)
            check_vars(where, expr)
    if not any("$route" in (t.get("expr") or "") for p in panels for t in p.get("targets") or []):
        problems.append("no panel uses $route")
    return problems, queries


# No Prometheus Operator CRD schemas ship here: the fields of monitoring.coreos.com/v1 the chart
# may set, strictly (a misspelt field would be pruned by the API server without a word).
PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                              r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
MONITORING_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": PROM_DURATION, "scrapeTimeout": PROM_DURATION,
                    "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                    "params": {"type": "object"}, "tlsConfig": {"type": "object"},
                    "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}},
        },
    },
    "PrometheusRule": {
        "type": "object", "additionalProperties": False, "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1}, "interval": PROM_DURATION,
                "limit": {"type": "integer"}, "labels": STRING_MAP,
                "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["expr"],
                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                    "properties": {
                        "record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": ["string", "integer"]}, "for": PROM_DURATION,
                        "keep_firing_for": PROM_DURATION, "labels": STRING_MAP,
                        "annotations": STRING_MAP}}}}}}},
    },
}


def validate_monitoring(obj: dict) -> list[str]:
    where, kind = ident(obj), obj.get("kind")
    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or kind not in MONITORING_SCHEMAS:
        return [f"{where}: unexpected {obj.get('apiVersion')} {kind}"]
    problems = []
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    if extra:
        problems.append(f"{where}: unknown top-level fields {sorted(extra)}")
    meta = obj.get("metadata", {})
    if not DNS1123_SUBDOMAIN.match(meta.get("name", "")):
        problems.append(f"{where}: metadata.name is not a DNS-1123 subdomain")
    for key in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in (meta.get(key) or {}).values()):
            problems.append(f"{where}: metadata.{key} values must be strings")
    for err in jsonschema.Draft7Validator(MONITORING_SCHEMAS[kind]).iter_errors(obj.get("spec", {})):
        problems.append(f"{where}: spec.{'.'.join(str(p) for p in err.path)}: {err.message}")
    return problems


def check_monitoring(r: Rendered) -> list[str]:
    """metrics.serviceMonitor: a ServiceMonitor per role whose one endpoint resolves, through
    exactly one selected Service, to the role's container port 9090 (the gateway's admin
    listener through a headless Service of its own), with job = the workload name, as the rules
    expect. metrics.prometheusRule: one PrometheusRule carrying rules.yaml. grafanaDashboard:
    one ConfigMap labelled grafana_dashboard=1 carrying the dashboard. Off: none of them."""
    m, problems = r.values["metrics"], []
    sms = {o["metadata"]["name"]: o for o in r.all("ServiceMonitor")}
    admin_svc = r.get("Service", "edge-gateway-metrics")
    cfg = m["serviceMonitor"]
    if not cfg["enabled"]:
        if sms or admin_svc:
            problems.append(f"metrics.serviceMonitor.enabled is false, yet rendered "
                            f"{sorted(sms) + (['Service/edge-gateway-metrics'] if admin_svc else [])}")
    else:
        if set(sms) != set(ROLES.values()):
            problems.append(f"ServiceMonitors {sorted(sms)}, want one per workload {sorted(ROLES.values())}")
        for role, workload, dep in r.deployments():
            sm = sms.get(workload)
            if not sm:
                continue
            where, spec = ident(sm), sm["spec"]
            labels = sm["metadata"].get("labels", {})
            if any(labels.get(k) != v for k, v in (cfg.get("labels") or {}).items()):
                problems.append(f"{where}: lacks metrics.serviceMonitor.labels {cfg['labels']}")
            if spec.get("namespaceSelector", {}).get("matchNames") != [NAMESPACE]:
                problems.append(f"{where}: namespaceSelector must be the release's namespace only")
            eps = spec.get("endpoints", [])
            if len(eps) != 1:
                problems.append(f"{where}: want one endpoint, found {len(eps)}")
                continue
            ep = eps[0]
            want_port = "http-admin" if role == "gateway" else "http-metrics"
            if (ep.get("port"), ep.get("path"), ep.get("scheme", "http")) != (want_port, "/metrics", "http"):
                problems.append(f"{where}: endpoint {ep}, want port {want_port}, path /metrics, http")
            if ep.get("interval") != cfg["interval"]:
                problems.append(f"{where}: interval {ep.get('interval')!r}, want metrics.serviceMonitor.interval")
            sel = spec.get("selector", {}).get("matchLabels", {})
            hits = [(s, p) for s in r.all("Service") if selects(sel, s["metadata"].get("labels", {}))
                    for p in s["spec"]["ports"] if p["name"] == ep.get("port")]
            if len(hits) != 1:
                problems.append(f"{where}: selects {len(hits)} Services with a port {ep.get('port')}, want 1")
                continue
            svc, port = hits[0]
            pods = [w for _, w, d in r.deployments() if selects(svc["spec"].get("selector", {}), pod_labels(d))]
            if pods != [workload]:
                problems.append(f"{where}: {ident(svc)} selects the pods of {pods}, want {workload}'s")
            target = port.get("targetPort", port["port"])
            cports = {p["name"]: p["containerPort"] for p in container(dep).get("ports", [])}
            if (cports.get(target) if isinstance(target, str) else target) != METRICS_PORT:
                problems.append(f"{where}: {ident(svc)} port {port['name']} targets {target}, "
                                f"want the container's metrics port {METRICS_PORT}")
            job_label = spec.get("jobLabel")
            job = svc["metadata"].get("labels", {}).get(job_label) if job_label else svc["metadata"]["name"]
            if job != workload:
                problems.append(f"{where}: Prometheus's job would be {job!r}; rules.yaml expects {workload!r}")
            if role == "gateway":
                if svc["metadata"]["name"] == workload or svc["spec"].get("clusterIP") != "None":
                    problems.append(f"{where}: the admin port must come from a headless Service of its "
                                    f"own, never {ident(svc)}")
                if [p["name"] for p in svc["spec"]["ports"]] != ["http-admin"]:
                    problems.append(f"{ident(svc)}: must carry the admin port only")
        if r.istio:
            problems.append("ServiceMonitors rendered in istio mode: Prometheus cannot scrape port 9090 there")
    prs = r.all("PrometheusRule")
    if not m["prometheusRule"]["enabled"]:
        problems += [f"{ident(p)} rendered although metrics.prometheusRule.enabled is false" for p in prs]
    elif len(prs) != 1:
        problems.append(f"want one PrometheusRule, found {len(prs)}")
    else:
        if prs[0]["spec"] != yaml.safe_load(CHART_RULES.read_text()):
            problems.append(f"{ident(prs[0])}: spec differs from {CHART_RULES.relative_to(REPO)}")
        labels = prs[0]["metadata"].get("labels", {})
        if any(labels.get(k) != v for k, v in (m["prometheusRule"].get("labels") or {}).items()):
            problems.append(f"{ident(prs[0])}: lacks metrics.prometheusRule.labels")
    cms = [c for c in r.all("ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    gd = m["grafanaDashboard"]
    if not gd["enabled"]:
        problems += [f"{ident(c)} rendered although metrics.grafanaDashboard.enabled is false" for c in cms]
    elif len(cms) != 1:
        problems.append(f"want one ConfigMap labelled grafana_dashboard, found {len(cms)}")
    else:
        cm, want = cms[0], json.loads(CHART_DASHBOARD.read_text())
        meta = cm["metadata"]
        if {**{"grafana_dashboard": "1"}, **(gd.get("labels") or {})}.items() - meta.get("labels", {}).items():
            problems.append(f"{ident(cm)}: labels {meta.get('labels')}, want grafana_dashboard: \"1\" "
                            "and metrics.grafanaDashboard.labels")
        if (gd.get("annotations") or {}).items() - (meta.get("annotations") or {}).items():
            problems.append(f"{ident(cm)}: lacks metrics.grafanaDashboard.annotations")
        data = cm.get("data", {})
        if len(data) != 1 or not next(iter(data)).endswith(".json"):
            problems.append(f"{ident(cm)}: want one *.json key, found {sorted(data)}")
        elif json.loads(next(iter(data.values()))) != want:
            problems.append(f"{ident(cm)}: differs from {CHART_DASHBOARD.relative_to(REPO)}")
    return problems


METRICS_PREFIX = "ordermesh_"
# Families registered outside the prefixed registry (platform/src/process_metrics.rs).
UNPREFIXED_FAMILIES = re.compile(r"^process_")


def check_metrics_in_source() -> list[str]:
    """The binaries register every family of metrics.yaml: the process registry prefixes the
    names with ordermesh_ (Registry::with_prefix), so a family ordermesh_<x> is registered as
    "<x>", and process_* under its own name. A text search of the Rust source, like the
    ORDERMESH_* check: it catches a renamed or dropped family, not a wrong label."""
    source = "\n".join(p.read_text() for p in rust_files(BINARY_SOURCES))
    problems = []
    if f'Registry::with_prefix("{METRICS_PREFIX.rstrip("_")}")' not in source:
        problems.append(f"the Rust source no longer registers with Registry::with_prefix("
                        f"\"{METRICS_PREFIX.rstrip('_')}\"): the exposed names in "
                        f"{METRICS_CONTRACT.relative_to(REPO)} need revisiting")
    for m in yaml.safe_load(METRICS_CONTRACT.read_text())["metrics"]:
        name = m["name"]
        if UNPREFIXED_FAMILIES.match(name):
            registered = name
        elif name.startswith(METRICS_PREFIX):
            registered = name[len(METRICS_PREFIX):]
        else:
            problems.append(f"{name}: exposed names carry the {METRICS_PREFIX} prefix (only process_* do not)")
            continue
        if f'"{registered}"' not in source:
            problems.append(f"{name}: no Rust source registers \"{registered}\"")
    return problems


# ----------------------------------------------------------------------------------- main

def main() -> int:
    report = Report()
    print(f"chart {CHART.relative_to(REPO)}, Istio CRDs {CRDS}, Kubernetes {KUBE_MIN} and {KUBE_LATEST}")
    if not CRDS.exists():
        print(f"FAIL  Istio CRD schemas not found at {CRDS} (set ORDERMESH_SHARED_DIR)")
        print("0 passed, 1 failed")
        return 1
    crds = load_crds()

    helm.disable_logging()
    for label, values in (("default values + image.repository", VARIANTS["default"]),
                          ("values-istio.yaml + image.repository", VARIANTS["istio"])):
        lint = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_MIN}.0")
        problems = list(lint.get("errors") or [])
        problems += [f"{m['path']}: {m['error']}" for m in lint.get("messages", []) if m["severity"] >= 2]
        report.check(f"helm lint --strict ({label})", problems)

    report.check("values.yaml and values-istio.yaml: every value documented",
                 undocumented_values(CHART / "values.yaml") + undocumented_values(CHART / "values-istio.yaml"))

    with helm.Chart.load(CHART) as chart:
        typos = {
            "roles.user.replica": {"roles": {"user": {"replica": 3}}},
            "roles.shipping": {"roles": {"shipping": {}}},
            "mtls.mode=isito": {"mtls": {"mode": "isito"}},
            "store.backend=dynamo": {"store": {"backend": "dynamo"}},
            "defaults.autoscaling.enable": {"defaults": {"autoscaling": {"enable": False}}},
            "imagee": {"imagee": {"tag": "1"}},
            "jwt.issuerr": {"jwt": {"issuerr": "x"}},
            "gateway.rateLimit.perMinute=0": {"gateway": {"rateLimit": {"perMinute": 0, "burst": 1}}},
            "gateway.corsOrigins=[shop.example]": {"gateway": {"corsOrigins": ["shop.example"]}},
            "gateway.trustedProxies=[ingress.internal]": {"gateway": {"trustedProxies": ["ingress.internal"]}},
            "gateway.trustedHops=-1": {"gateway": {"trustedHops": -1}},
            "gateway.addressRateLimit.burst=0": {"gateway": {"addressRateLimit": {"perMinute": 1, "burst": 0}}},
            "gateway.addressRateLimit.perMinut": {"gateway": {"addressRateLimit": {"perMinut": 1}}},
            "gateway.headerTimeoutMs=0": {"gateway": {"headerTimeoutMs": 0}},
            "gateway.headerTimeoutMs=10s": {"gateway": {"headerTimeoutMs": "10s"}},
            "gateway.maxConnections=-1": {"gateway": {"maxConnections": -1}},
            "gateway.maxConnectionsPerAddress=0": {"gateway": {"maxConnectionsPerAddress": 0}},
            "gateway.maxConnectionPerAddress": {"gateway": {"maxConnectionPerAddress": 64}},
            "discovery.dnsRefreshSeconds=0": {"discovery": {"dnsRefreshSeconds": 0}},
            "mtls.certManager.bootstrapCA.lifetime": {"mtls": {"certManager": {"bootstrapCA": {"lifetime": "1h"}}}},
            "image.repository=ordermesh:1.0": {"image": {"repository": "ordermesh:1.0"}},
            "metrics.serviceMonitor.enable": {"metrics": {"serviceMonitor": {"enable": True}}},
            "metrics.serviceMonitor.interval=30": {"metrics": {"serviceMonitor": {"interval": "30"}}},
            "metrics.serviceMonitor.interval=1m30": {"metrics": {"serviceMonitor": {"interval": "1m30"}}},
            "metrics.prometheusRule.label": {"metrics": {"prometheusRule": {"label": {"a": "b"}}}},
            "metrics.grafanaDashboard.labels.grafana_dashboard=1 (a number)":
                {"metrics": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}}},
            "roles.notifications": {"roles": {"notifications": {}}},
            "mail.smtp.hostname": {"mail": {"smtp": {"hostname": "smtp.example.com"}}},
            "mail.smtp.host=smtp.example.com:587": {"mail": {"smtp": {"host": "smtp.example.com:587"}}},
            "mail.smtp.host=smtps://smtp.example.com": {"mail": {"smtp": {"host": "smtps://smtp.example.com"}}},
            "mail.smtp.security=ssl": {"mail": {"smtp": {"security": "ssl"}}},
            "mail.smtp.port=0": {"mail": {"smtp": {"port": 0}}},
            "mail.smtp.password": {"mail": {"smtp": {"password": "hunter2"}}},
            "mail.from=no-reply": {"mail": {"from": "no-reply"}},
            "mail.publicUrl=shop.example": {"mail": {"publicUrl": "shop.example"}},
            "mail.maxAttempts=0": {"mail": {"maxAttempts": 0}},
            "mail.retryBaseMs=2s": {"mail": {"retryBaseMs": "2s"}},
            "gateway.apiKeyRateLimit.burst=0": {"gateway": {"apiKeyRateLimit": {"perMinute": 1, "burst": 0}}},
            "gateway.apiKeyRateLimit.perMinut": {"gateway": {"apiKeyRateLimit": {"perMinut": 1}}},
            "gateway.apiKeysRateLimit": {"gateway": {"apiKeysRateLimit": {"perMinute": 1, "burst": 1}}},
            "webhooks.allowPrivate": {"webhooks": {"allowPrivate": True}},
            "webhooks.maxAttempts=0": {"webhooks": {"maxAttempts": 0}},
            "webhooks.retryBaseMs=5s": {"webhooks": {"retryBaseMs": "5s"}},
            "webhooks.disableAfter=0": {"webhooks": {"disableAfter": 0}},
            "webhook.maxAttempts": {"webhook": {"maxAttempts": 3}},
        }
        problems = []
        for label, bad in typos.items():
            try:
                chart.validate_schema(chart.merge_values(bad))
                problems.append(f"{label} accepted")
            except helm.HelmValuesError:
                pass
        for label, good in VARIANTS.items():
            try:
                chart.validate_schema(chart.merge_values(good))
            except helm.HelmValuesError as e:
                problems.append(f"{label} values rejected: {e}")
        report.check(f"values.schema.json accepts the value sets and rejects {len(typos)} typos", problems)

        rendered: dict[str, Rendered] = {}
        for label, values in VARIANTS.items():
            try:
                objects = render(chart, values)
            except helm.HelmError as e:
                report.check(f"[{label}] renders", [str(e)])
                continue
            r = rendered[label] = Rendered(chart.merge_values(values), objects)
            kinds = sorted({o["kind"] for o in objects})
            report.check(f"[{label}] renders {len(objects)} objects ({', '.join(kinds)})",
                         [] if objects else ["nothing rendered"])
            problems = [p for o in objects for p in validate_kube(o, crds)]
            report.check(f"[{label}] every manifest valid (kubernetes-validate --strict {KUBE_MIN}, "
                         f"{KUBE_LATEST}; Istio CRDs)", problems)
            report.check(f"[{label}] each role has Deployment, Service, ServiceAccount, HPA, PDB that agree",
                         check_workloads(r))
            report.check(f"[{label}] ports (gRPC named, appProtocol grpc) and native probes",
                         check_ports_and_probes(r))
            report.check(f"[{label}] non-root, read-only root fs, no capabilities, resources",
                         check_security(r))
            report.check(f"[{label}] environment follows the binary's contract", check_environment(r))
            report.check(f"[{label}] clients find every replica: "
                         + ("ClusterIP Services, the sidecar balances" if r.istio else
                            "headless Services over ready pods, https endpoints by FQDN"),
                         check_discovery(r))
            mode = r.values["mtls"]["mode"]
            report.check(f"[{label}] {mode} mTLS: sidecar label, endpoints, TLS mounts", check_mtls(r))
            report.check(f"[{label}] JWT signing key only in user-service", check_jwt(r))
            report.check(f"[{label}] mail settings, SMTP password and CA only in notification-service"
                         + (", the relay's ServiceEntry" if r.istio else ""), check_mail(r))
            report.check(f"[{label}] webhook settings only in notification-service, never {ALLOW_PRIVATE}",
                         check_webhooks(r))
            report.check(f"[{label}] DynamoDB tables hook Job", check_tables_job(r))
            on = [k for k in ("serviceMonitor", "prometheusRule", "grafanaDashboard")
                  if r.values["metrics"][k]["enabled"]]
            report.check(f"[{label}] monitoring objects: "
                         + (", ".join(on) + " with the metrics ports and the same files" if on else "none"),
                         check_monitoring(r))

        for label, (values, wanted) in MISSING.items():
            problems = []
            try:
                chart.validate_schema(chart.merge_values(values))
                render(chart, values)
                problems.append("rendered, want a fail naming what to set")
            except helm.HelmValuesError as e:
                problems.append(f"refused by the schema, not by a fail that says what to set: {e}")
            except helm.HelmError as e:
                problems += [f"message lacks {w!r}: {e}" for w in wanted if w not in str(e)]
            report.check(f"missing prerequisite fails the render, naming {', '.join(wanted)}: {label}",
                         problems)

        for label, (values, wanted) in REFUSED.items():
            problems = []
            try:
                chart.validate_schema(chart.merge_values(values))
                render(chart, values)
                problems.append("rendered, want a fail naming what is wrong")
            except helm.HelmValuesError as e:
                problems.append(f"refused by the schema, not by a fail that says why: {e}")
            except helm.HelmError as e:
                problems += [f"message lacks {w!r}: {e}" for w in wanted if w not in str(e)]
            report.check(f"refused value set fails the render, naming {', '.join(wanted)}: {label}", problems)

    if "istio" in rendered:
        check_istio(report, crds, rendered["istio"])
    if UNEVALUATED_CEL:
        print(f"note  {len(UNEVALUATED_CEL)} CEL rule(s) met but not evaluated: "
              + "; ".join(sorted(UNEVALUATED_CEL)))

    version = promtool_version()
    report.check(f"promtool check rules {RULES.relative_to(REPO)} ({version or 'promtool missing'})",
                 run_promtool("check", "rules", RULES.name))
    report.check(f"promtool test rules {RULES_TEST.relative_to(REPO)}",
                 run_promtool("test", "rules", RULES_TEST.name))
    report.check(f"{RULES.relative_to(REPO)} and {DASHBOARD.relative_to(REPO)} are the chart's files "
                 "(symlinks into deploy/helm/ordermesh/files/)", check_shared_files())
    contract = load_metrics_contract()
    rules = load_rules()
    records, alerts = rule_names(rules)
    report.check(f"rules.yaml: {len(records)} recording rules and {len(alerts)} alerts name only metrics and "
                 f"labels of {METRICS_CONTRACT.relative_to(REPO)}; each alert has severity, summary, "
                 "description and its runbook in deploy/README.md", check_rules(rules, contract))
    report.check("rules_test.yaml: each alert tested firing and quiet, each recording rule evaluated, "
                 "input series as exposed", check_rules_tests(rules, contract))
    problems, queries = check_dashboard(contract, records)
    report.check(f"{DASHBOARD.relative_to(REPO)}: valid, datasource and route variables, {queries} queries "
                 "naming only exposed metrics and labels or recording rules", problems)
    report.check(f"every metric family of {METRICS_CONTRACT.relative_to(REPO)} is registered by the binary",
                 check_metrics_in_source())

    report.check("Dockerfile and .dockerignore", check_dockerfile())
    report.check("deploy/README.md lists every DynamoDB operation the store code calls, with its IAM "
                 "actions in the services' or the tables Job's policy", check_iam_doc())
    report.check("every ORDERMESH_* variable the chart sets is read by the binary",
                 check_env_names_in_rust(rendered))
    report.check("deploy/README.md covers every top-level value and policy generation",
                 check_readme(yaml.safe_load((CHART / "values.yaml").read_text())))

    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
