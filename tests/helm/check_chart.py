"""Lints and renders helm/vidfarm with Helm's own library (no helm binary), validates every
rendered manifest against the Kubernetes schemas, and checks what the chart promises: the
config it mounts uses only keys vidfarm knows, workers get time to drain, secrets stay out
of the ConfigMap, the Grafana dashboard is valid JSON labelled for the sidecar, and bad values
are refused naming the key."""

import json
import pathlib
import sys
import tomllib

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vidfarm"
KUBE = "1.30.0"


def render(values):
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name="farm", namespace="render", is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [(path, d) for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind, suffix=""):
    found = [d for _, d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"one {kind} *{suffix}, found {len(found)}"
    return found[0]


def container_env(deployment):
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def main():
    report = helm_python.lint(CHART, strict=True, kube_version=f"v{KUBE}")
    # Severity 1 is information (e.g. "icon is recommended"); 2 and 3 are warnings and errors.
    messages = [m for m in report["messages"] if m["severity"] >= 2]
    assert not messages and not report.get("errors"), f"helm lint: {report}"

    known = tomllib.loads((ROOT / "config" / "vidfarm.toml").read_text())
    variants = {
        "defaults": {},
        "secrets and a model volume": {
            "redis": {"existingSecret": "farm-redis", "url": "rediss://redis:6380", "tls": {"secret": "farm-redis-tls", "clientCertificate": True}},
            "store": {"s3": {"credentialsSecret": "farm-s3", "endpoint": "http://minio:9000", "allowHttp": True}},
            "model": {"path": "/models/wan", "volume": {"persistentVolumeClaim": {"claimName": "models"}}},
            "metrics": {"port": 0},
            "traces": {"otlpEndpoint": "http://otel-collector.observability:4317"},
            "dashboard": {"enabled": False},
            "api": {"tls": {"secret": "farm-tls", "clientCaSecret": "farm-ca"}, "tokensSecret": "farm-tokens"},
            "coordinator": {"retentionHours": 168, "replicas": 1},
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/farm"}},
            "extraEnv": [{"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": {"name": "otel-auth", "key": "headers"}}}],
        },
    }
    for label, values in variants.items():
        docs = render(values)
        for path, doc in docs:
            kubernetes_validate.validate(doc, KUBE, strict=True)
        config = tomllib.loads(by_kind(docs, "ConfigMap", "-vidfarm")["data"]["vidfarm.toml"])
        for section, keys in config.items():
            unknown = set(keys) - set(known.get(section, {}))
            assert not unknown, f"{label}: keys vidfarm does not read in [{section}]: {unknown}"
        assert "access_key_id" not in config["s3"] and "secret" not in str(config["redis"]), f"{label}: secrets in the ConfigMap"

        coordinator = by_kind(docs, "Deployment", "-coordinator")
        worker = by_kind(docs, "Deployment", "-worker")
        service = by_kind(docs, "Service")
        assert coordinator["spec"]["template"]["spec"]["containers"][0]["args"] == ["coordinator"]
        assert worker["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]
        api = values.get("api", {})
        probe_kind = "tcpSocket" if api else "grpc"
        probe = coordinator["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][probe_kind]["port"]
        mounts = {m["mountPath"]: m["name"] for m in coordinator["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        secrets = {v["name"]: v["secret"]["secretName"] for v in coordinator["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        for deployment in (coordinator, worker):
            pod = deployment["spec"]["template"]["spec"]
            pod_mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            pod_secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
            for key in ["tls_ca", "tls_cert", "tls_key"]:
                if key in config["redis"]:
                    folder = config["redis"][key].rsplit("/", 1)[0]
                    assert pod_secrets[pod_mounts[folder]] == "farm-redis-tls", f"redis.{key}: {pod_mounts} {pod_secrets}"
        assert ("tls_cert" in config["redis"]) == bool(values), f"{label}: Redis client certificate"
        if api:
            # Every file the config names is in a mounted Secret.
            for key, secret in [("tls_cert", "farm-tls"), ("tls_key", "farm-tls"), ("tls_client_ca", "farm-ca"), ("auth_tokens_file", "farm-tokens")]:
                folder = config["server"][key].rsplit("/", 1)[0]
                assert secrets[mounts[folder]] == secret, f"{key}: {config['server'][key]} {mounts} {secrets}"
        else:
            assert not secrets and not {"tls_cert", "auth_tokens_file"} & set(config["server"]), f"{label}: plaintext, no tokens"
        assert probe == service["spec"]["ports"][0]["port"] == int(config["server"]["listen"].rsplit(":", 1)[1])
        assert service["spec"]["selector"] == coordinator["spec"]["selector"]["matchLabels"]
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60, "workers need time to drain"
        # The coordinator may wait out the S3 check's retries (2 minutes) and Redis before it serves.
        startup = coordinator["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 180, f"{label}: {startup}"
        budgets = [d for _, d in docs if d["kind"] == "PodDisruptionBudget"]
        assert len(budgets) == (0 if values else 1), f"{label}: a budget only with more than one coordinator"
        account = by_kind(docs, "ServiceAccount")
        assert account["metadata"].get("annotations", {}) == values.get("serviceAccount", {}).get("annotations", {}), f"{label}: {account}"
        assert worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        metrics_port = (values.get("metrics") or {}).get("port", 9464)
        for deployment in (coordinator, worker):
            template = deployment["spec"]["template"]
            ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0].get("ports", [])}
            annotations = template["metadata"]["annotations"]
            if metrics_port:
                assert ports["metrics"] == metrics_port == int(annotations["prometheus.io/port"]), f"{label}: {ports} {annotations}"
                assert config["metrics"]["listen"] == f"0.0.0.0:{metrics_port}"
            else:
                assert "metrics" not in ports and "prometheus.io/scrape" not in annotations and config["metrics"]["listen"] == ""
        dashboards = [doc for _, doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")]
        if values:
            assert not dashboards, f"{label}: the dashboard was turned off"
        else:
            dashboard = by_kind(docs, "ConfigMap", "-dashboard")
            assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
            panels = json.loads(dashboard["data"]["vidfarm.json"])["panels"]
            assert all(t["expr"].count("vidfarm_") for p in panels for t in p["targets"]), panels
        env = container_env(worker)
        assert env["VIDFARM_CONFIG"]["value"] == "/etc/vidfarm/vidfarm.toml"
        for extra in values.get("extraEnv", []):
            assert container_env(coordinator)[extra["name"]] == env[extra["name"]] == extra, f"{label}: extraEnv"
        if values:
            assert env["VIDFARM_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "farm-redis", "key": "url"}
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "farm-s3"
            assert config["server"]["model"] == "/models/wan"
            assert config["traces"]["otlp_endpoint"] == "http://otel-collector.observability:4317"
        else:
            assert config["traces"]["otlp_endpoint"] == "", "no traces unless a collector is named"
        assert config["server"]["retention_hours"] == (168 if values else 0), f"{label}: retention"
        print(f"chart renders and validates ({label}): {len(docs)} manifests")

    for bad, key in [
        ({"worker": {"leaseSeconds": 60}}, "leaseSeconds"),
        ({"store": {"url": "ftp://x"}}, "url"),
        ({"store": {"url": "file:///data"}}, "url"),
        ({"traces": {"otlpEndpoint": "otel-collector:4317"}}, "otlpEndpoint"),
        ({"coordinator": {"retentionHours": -1}}, "retentionHours"),
    ]:
        try:
            render(bad)
        except helm_python.HelmValuesError as e:
            assert key in str(e), f"the error names {key}: {e}"
        else:
            raise AssertionError(f"{bad} was accepted")
    print("bad values refused, naming the key")


if __name__ == "__main__":
    sys.exit(main())
