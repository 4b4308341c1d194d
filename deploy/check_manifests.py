"""Cross-checks of the Kubernetes base, the Dockerfile and docker-compose.yml.

Part of deploy/check_deploy.py (run that). Each check names what must agree with what: the
settings in app/config.py, selectors and named ports, the drain grace period, the non-root
user, the restricted security context, and the example Secrets the Deployment reads.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from render_kustomize import RenderError, render_objects

Fail = Callable[[str, str], None]  # (check, message)
Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PY = ROOT / "app" / "config.py"
K8S = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = K8S / "secret-integrations.example.yaml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"

SETTINGS_PREFIX = "AUDIOHOOK_"
# Time the drain needs beyond grace + close wait: flushing the publisher and exiting.
DRAIN_FLUSH_MARGIN_SECONDS = 10
# The alert rules select job="audiohook-gateway": the Service name under the Operator.
JOB_NAME = "audiohook-gateway"
WEBSOCKET_TIMEOUT_SECONDS = 3600


# --- settings ---------------------------------------------------------------------------------


def load_settings(fail: Fail) -> dict[str, object]:
    """AUDIOHOOK_* variable -> literal default (None when not a literal), from app/config.py."""
    tree = ast.parse(CONFIG_PY.read_text(encoding="utf-8"), filename=str(CONFIG_PY))
    fields: dict[str, object] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ClassDef) and node.name == "Settings"):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                value = item.value
                if isinstance(value, ast.Call):  # Field(default, ...) or Field(default=...)
                    keywords = {kw.arg: kw.value for kw in value.keywords}
                    value = keywords.get("default", value.args[0] if value.args else None)
                default = value.value if isinstance(value, ast.Constant) else None
                fields[SETTINGS_PREFIX + item.target.id.upper()] = default
    if not fields:
        fail("settings", "no Settings fields found in app/config.py")
    return fields


def check_setting_names(
    where: str, names: Iterable[str], settings: dict[str, object], fail: Fail
) -> None:
    for name in names:
        if name.startswith(SETTINGS_PREFIX) and name not in settings:
            fail("settings", f"{where}: {name} is not a setting in app/config.py")


# --- Kubernetes -------------------------------------------------------------------------------


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@dataclass
class Base:
    """The rendered base, with the gateway's Deployment, pod, container and Service at hand."""

    objects: list[Obj]
    config: dict[str, str]  # the ConfigMap(s) the container reads
    settings: dict[str, object]

    def of_kind(self, kind: str, fail: Fail) -> list[Obj]:
        found = [obj for obj in self.objects if obj["kind"] == kind]
        if not found:
            fail("kubernetes", f"no {kind} in the base")
        return found

    def setting(self, name: str) -> object:
        """Effective value of a setting: the ConfigMap's, else the default in app/config.py."""
        return self.config.get(name, self.settings.get(name))

    @property
    def deployment(self) -> Obj:
        return next(obj for obj in self.objects if obj["kind"] == "Deployment")

    @property
    def service(self) -> Obj:
        return next(obj for obj in self.objects if obj["kind"] == "Service")

    @property
    def pod(self) -> Obj:
        template: Obj = self.deployment["spec"]["template"]
        return template

    @property
    def container(self) -> Obj:
        container: Obj = self.pod["spec"]["containers"][0]
        return container

    @property
    def port_names(self) -> dict[str, int]:
        return {port["name"]: port["containerPort"] for port in self.container.get("ports", [])}


def load_base(settings: dict[str, object], fail: Fail) -> Base | None:
    try:
        objects = render_objects(K8S)
    except (RenderError, OSError, yaml.YAMLError) as exc:
        fail("kubernetes", f"cannot render the base: {exc}")
        return None
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    if len(names) != len(set(names)):
        fail("kubernetes", "two objects share a kind and name")
    kinds = {obj["kind"] for obj in objects}
    if not {"Deployment", "Service"} <= kinds:
        fail("kubernetes", "the base needs a Deployment and a Service")
        return None
    base = Base(objects, {}, settings)
    configmaps = {
        obj["metadata"]["name"]: obj.get("data", {}) for obj in base.of_kind("ConfigMap", fail)
    }
    for name, data in configmaps.items():
        check_setting_names(f"ConfigMap {name}", data, settings, fail)
    for source in base.container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] not in configmaps:
            fail("kubernetes", f"envFrom ConfigMap {ref['name']} is not in the base")
        elif ref:
            base.config.update(configmaps[ref["name"]])
    return base


def check_pod(base: Base, fail: Fail) -> None:
    """Probes, ports, drain period and security context of the gateway's pod."""
    container, pod_spec, ports = base.container, base.pod["spec"], base.port_names
    if not _matches(
        base.deployment["spec"]["selector"]["matchLabels"], base.pod["metadata"]["labels"]
    ):
        fail("kubernetes", "Deployment selector does not match its pod labels")
    if "replicas" in base.deployment["spec"]:
        fail("kubernetes", "Deployment sets replicas although the HPA owns the count")
    env_names = [env["name"] for env in container.get("env", [])]
    check_setting_names("Deployment env", env_names, base.settings, fail)
    for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") != path or probe.get("port") != "metrics":
            fail("kubernetes", f"{probe_name} must be GET {path} on the `metrics` port")
    for port_name, setting in (("http", "AUDIOHOOK_PORT"), ("metrics", "AUDIOHOOK_METRICS_PORT")):
        if str(ports.get(port_name)) != str(base.setting(setting)):
            fail("kubernetes", f"container port `{port_name}` differs from {setting}")

    # Kubernetes must not SIGKILL before the gateway has finished draining.
    grace = float(str(base.setting("AUDIOHOOK_DRAIN_GRACE_SECONDS")))
    close_wait = float(str(base.setting("AUDIOHOOK_DRAIN_CLOSE_WAIT_SECONDS")))
    termination = pod_spec.get("terminationGracePeriodSeconds", 30)
    # The drain may wait twice: after `reconnect`, then after `disconnect` for clients that
    # ignored it.
    if termination < grace + 2 * close_wait + DRAIN_FLUSH_MARGIN_SECONDS:
        fail(
            "kubernetes",
            f"terminationGracePeriodSeconds {termination} < drain grace {grace:g} + 2 x close "
            f"wait {close_wait:g} + {DRAIN_FLUSH_MARGIN_SECONDS} s",
        )

    pod_security = pod_spec.get("securityContext", {})
    security = container.get("securityContext", {})
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    required = {
        "runAsNonRoot": security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True,
        "readOnlyRootFilesystem": security.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation: false": security.get("allowPrivilegeEscalation") is False,
        "capabilities.drop [ALL]": security.get("capabilities", {}).get("drop") == ["ALL"],
        "seccompProfile RuntimeDefault": seccomp.get("type") == "RuntimeDefault",
    }
    for what, ok in required.items():
        if not ok:
            fail("kubernetes", f"container securityContext lacks {what}")


def check_routing(base: Base, fail: Fail) -> None:
    """Service, Ingress, HPA, PDB, NetworkPolicy and ServiceMonitor point at what exists."""
    service, pod_labels = base.service, base.pod["metadata"]["labels"]
    service_ports = {port["name"]: port for port in service["spec"]["ports"]}
    if service["metadata"]["name"] != JOB_NAME:
        fail("kubernetes", f'the alert rules expect job="{JOB_NAME}", the Service name')
    if not _matches(service["spec"]["selector"], pod_labels):
        fail("kubernetes", "Service selector does not match the pod labels")
    for port in service_ports.values():
        if port["targetPort"] not in base.port_names:
            fail("kubernetes", f"Service port {port['name']} targets unknown {port['targetPort']}")

    ws_path = base.setting("AUDIOHOOK_WS_PATH")
    for ingress in base.of_kind("Ingress", fail):
        annotations = ingress["metadata"].get("annotations", {})
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            value = int(annotations.get(f"nginx.ingress.kubernetes.io/{timeout}", 0))
            if value < WEBSOCKET_TIMEOUT_SECONDS:
                fail("kubernetes", f"Ingress {timeout} must be >= {WEBSOCKET_TIMEOUT_SECONDS}")
        if not ingress["spec"].get("tls"):
            fail("kubernetes", "Ingress has no TLS section")
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if backend["name"] != service["metadata"]["name"] or backend["port"] != {
                    "name": "http"
                }:
                    fail("kubernetes", "Ingress backend is not the gateway Service's http port")
                if path["path"] != ws_path:
                    fail(
                        "kubernetes",
                        f"Ingress path {path['path']} is not the WebSocket path {ws_path}",
                    )

    for hpa in base.of_kind("HorizontalPodAutoscaler", fail):
        if hpa["spec"]["scaleTargetRef"]["name"] != base.deployment["metadata"]["name"]:
            fail("kubernetes", "HPA does not target the Deployment")
    for pdb in base.of_kind("PodDisruptionBudget", fail):
        if not _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            fail("kubernetes", "PodDisruptionBudget selector does not match the pods")
    for policy in base.of_kind("NetworkPolicy", fail):
        if not _matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels):
            fail("kubernetes", "NetworkPolicy podSelector does not match the pods")
        rules = policy["spec"].get("ingress", [])
        opened = sorted(
            sorted(str(port["port"]) for port in rule.get("ports", [])) for rule in rules
        )
        if opened != [["http"], ["metrics"]]:
            fail(
                "kubernetes",
                f"NetworkPolicy must open http and metrics in separate rules: {opened}",
            )
    for monitor in base.of_kind("ServiceMonitor", fail):
        if not _matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            fail("kubernetes", "ServiceMonitor selector does not match the Service labels")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") != "metrics" or endpoint.get("path") != "/metrics":
                fail("kubernetes", "ServiceMonitor must scrape /metrics on the `metrics` port")


def check_secrets(base: Base, fail: Fail) -> None:
    """The example Secrets are the ones the Deployment mounts and reads."""
    documents = yaml.safe_load_all(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    secrets = {doc["metadata"]["name"]: doc.get("stringData", {}) for doc in documents if doc}
    container, volumes = base.container, base.pod["spec"].get("volumes", [])
    mounted = {v["name"]: v["secret"]["secretName"] for v in volumes if "secret" in v}
    from_env = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    for name in {*mounted.values(), *from_env}:
        if name not in secrets:
            fail(
                "kubernetes",
                f"Secret {name} used by the Deployment is not in {SECRET_EXAMPLE.name}",
            )
    for name in from_env & set(secrets):
        check_setting_names(f"Secret {name}", secrets[name], base.settings, fail)

    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    integrations_file = env.get("AUDIOHOOK_INTEGRATIONS_FILE")
    if not integrations_file:
        fail("kubernetes", "the Deployment does not set AUDIOHOOK_INTEGRATIONS_FILE")
        return
    directory, _, key = integrations_file.rpartition("/")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    secret = mounted.get(mounts.get(directory, ""))
    if secret is None:
        fail("kubernetes", "AUDIOHOOK_INTEGRATIONS_FILE is not inside a mounted Secret")
    elif key not in secrets.get(secret, {}):
        fail("kubernetes", f"the example of Secret {secret} has no key {key}")
    else:
        try:
            entries = json.loads(secrets[secret][key])
        except ValueError as exc:
            fail("kubernetes", f"{SECRET_EXAMPLE.name} {key} is not JSON: {exc}")
            return
        if not isinstance(entries, list) or not all({"name", "api_key"} <= set(e) for e in entries):
            fail(
                "kubernetes",
                f"{SECRET_EXAMPLE.name} {key}: expected integrations with name, api_key",
            )


# --- Dockerfile and compose -------------------------------------------------------------------


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def check_dockerfile(base: Base | None, settings: dict[str, object], fail: Fail) -> None:
    final = dockerfile_final_stage()
    users = [rest for keyword, rest in final if keyword == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        fail("Dockerfile", "the final stage must switch to a non-root USER")
    if not any(keyword == "HEALTHCHECK" for keyword, _ in final):
        fail("Dockerfile", "no HEALTHCHECK in the final stage")
    env_names = set()
    for keyword, rest in final:
        if keyword == "ENV":
            env_names.update(re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", rest))
    check_setting_names("Dockerfile ENV", env_names, settings, fail)
    if base is None:
        return
    run_as = base.pod["spec"].get("securityContext", {}).get("runAsUser")
    if users and run_as is not None and users[-1].split(":")[0] != str(run_as):
        fail("Dockerfile", f"USER {users[-1]} differs from the pod's runAsUser {run_as}")
    exposed = {int(p.split("/")[0]) for k, rest in final if k == "EXPOSE" for p in rest.split()}
    if exposed != set(base.port_names.values()):
        fail("Dockerfile", f"EXPOSE {sorted(exposed)} differs from the container ports")


def check_compose(settings: dict[str, object], fail: Fail) -> None:
    services = yaml.safe_load(COMPOSE.read_text(encoding="utf-8")).get("services", {})
    for name, service in services.items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = [entry.split("=")[0] for entry in environment]
        check_setting_names(f"docker-compose {name}", environment, settings, fail)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(".") and not (ROOT / source).exists():
                fail("compose", f"{name}: mounted path {source} does not exist")
        for dependency, condition in (service.get("depends_on") or {}).items():
            if dependency not in services:
                fail("compose", f"{name} depends on unknown service {dependency}")
            elif condition.get("condition") == "service_healthy" and (
                "healthcheck" not in services[dependency]
            ):
                fail("compose", f"{name} waits for {dependency} to be healthy: no healthcheck")
    scrape_configs = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["scrape_configs"]
    for job in scrape_configs:
        for discovery in job.get("dns_sd_configs", []):
            for target in discovery.get("names", []):
                if target not in services:
                    fail("compose", f"prometheus.yml discovers {target!r}: not a compose service")


def check_manifests(fail: Fail) -> list[str]:
    """Run every check here; returns a line describing the rendered base."""
    settings = load_settings(fail)
    base = load_base(settings, fail)
    if base is not None:
        check_pod(base, fail)
        check_routing(base, fail)
        check_secrets(base, fail)
    check_dockerfile(base, settings, fail)
    check_compose(settings, fail)
    if base is None:
        return []
    return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in base.objects]
