#!/usr/bin/env python3
"""The Helm chart (deploy/helm/flowd), rendered and checked offline.

  python3 deploy/render.py render [--set KEY=VALUE ...]   # the manifests, to stdout
  python3 deploy/render.py write                         # deploy/kubernetes/flowd.yaml anew
  python3 deploy/render.py check                         # lint, validate, no drift
  python3 deploy/render.py pod NAME [--namespace NS] [--set KEY=VALUE ...]
      # JSON: the flowd container's args as Kubernetes expands them for pod NAME,
      # with its volume mounts and the dataflow (tests/it/kubernetes.rs runs them)

Rendering is Helm's own (helm-python-sdk carries Helm's library; no helm binary, no
cluster); validation is kubernetes-validate's (Kubernetes' own schemas, offline).
pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml
"""
import argparse
import json
import math
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "helm", "flowd")
MANIFESTS = os.path.join(HERE, "kubernetes", "flowd.yaml")
# What deploy/kubernetes/flowd.yaml is rendered with: release "flowd", credentials
# from the Secret "flowd-credentials".
PLAIN = {"credentials": {"secret": "flowd-credentials"}}
KUBERNETES = "1.37.0"
VARIANTS = [
    ["tls.secret=flowd-tls", "ports.kafka=9092", "replicas=5", "storage.storageClassName=fast"],
    ["tls.secret=flowd-tls", "peerTls.secret=flowd-peer-tls"],
    ["credentials.secret=", "insecure=true", "serviceMonitor.enabled=false", "networkPolicy.enabled=false"],
    ["serviceMonitor.bearerTokenSecret.name=flowd-metrics", "replicas=1"],
]


def merged(base, sets):
    values = json.loads(json.dumps(base))
    for item in sets or []:
        key, _, raw = item.partition("=")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def render(values, name="flowd", namespace="default"):
    import helm_python

    chart = helm_python.Chart.load(CHART)
    manifests = chart.render(values=values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(manifests):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                docs.append(doc)
    return docs


def dump(docs):
    header = (
        "# flowd on Kubernetes: rendered from deploy/helm/flowd by `python3 deploy/render.py write`\n"
        "# (release flowd; credentials from the Secret flowd-credentials). Edit the chart, not this.\n"
    )
    return header + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def validate(docs):
    import kubernetes_validate

    errors = []
    for doc in docs:
        kind = doc["kind"]
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            errors += check_service_monitor(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{kind} {doc['metadata']['name']}: {e.message} at {'.'.join(map(str, e.path))}")
    return errors


def check_service_monitor(doc):
    """The Prometheus operator's CRD is not in Kubernetes' schemas: its few fields here."""
    spec = doc.get("spec", {})
    errors = []
    if not spec.get("selector", {}).get("matchLabels"):
        errors.append("ServiceMonitor: spec.selector.matchLabels is empty")
    for endpoint in spec.get("endpoints", []):
        unknown = set(endpoint) - {"port", "path", "interval", "scheme", "bearerTokenSecret"}
        if unknown or not endpoint.get("port"):
            errors.append(f"ServiceMonitor endpoint {endpoint}: unknown {sorted(unknown)} or no port")
    return errors


def pod(docs, name, namespace):
    """The container's args with $(VAR) expanded as the kubelet does it."""
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    env = {}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            env[var["name"]] = {"metadata.name": name, "metadata.namespace": namespace}[field]
        elif "resourceFieldRef" in source:
            # The kubelet rounds a CPU quantity up to the divisor (1): "1500m" and "1.5" are 2.
            cpu = str(limits["cpu"])
            cores = math.ceil(int(cpu[:-1]) / 1000) if cpu.endswith("m") else math.ceil(float(cpu))
            env[var["name"]] = str(cores)
        else:
            env[var["name"]] = var["value"]
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    return {
        "args": args,
        "mounts": [m["mountPath"] for m in container["volumeMounts"]],
        "dataflow": config["data"]["dataflow.toml"],
        "grace_seconds": sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        "probes": {
            "liveness": container["livenessProbe"]["httpGet"]["path"],
            "readiness": container["readinessProbe"]["httpGet"]["path"],
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["render", "write", "check", "pod"])
    parser.add_argument("pod", nargs="?")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--set", action="append", dest="sets")
    parser.add_argument("--json", action="store_true", help="render: a JSON list of the objects")
    args = parser.parse_args()
    if args.command == "render":
        docs = render(merged(PLAIN, args.sets), namespace=args.namespace)
        sys.stdout.write(json.dumps(docs) if args.json else dump(docs))
    elif args.command == "write":
        with open(MANIFESTS, "w") as f:
            f.write(dump(render(PLAIN)))
    elif args.command == "pod":
        print(json.dumps(pod(render(merged(PLAIN, args.sets), namespace=args.namespace), args.pod, args.namespace)))
    else:
        import helm_python

        problems = []
        lint = helm_python.lint(CHART, PLAIN, strict=True, kube_version="v" + KUBERNETES)
        problems += [f"helm lint: {m['path']}: {m['error']}" for m in lint.get("messages", []) if m["severity"] >= 2]
        problems += [f"helm lint: {e}" for e in lint.get("errors") or []]
        docs = render(PLAIN)
        problems += validate(docs)
        # The other branches of the templates: TLS on the doors (HTTPS probes), the
        # Kafka door, no credentials (insecure), no ServiceMonitor or NetworkPolicy.
        for variant in VARIANTS:
            problems += [f"with {variant}: {p}" for p in validate(render(merged(PLAIN, variant)))]
        with open(MANIFESTS) as f:
            committed = f.read()
        if committed != dump(docs):
            problems.append(f"{MANIFESTS} differs from the chart's rendering: python3 deploy/render.py write")
        with open(MANIFESTS) as f:
            problems += validate([d for d in yaml.safe_load_all(f) if d])
        for problem in problems:
            print(problem)
        if problems:
            sys.exit(1)
        kinds = sorted({d["kind"] for d in docs})
        print(f"ok: {len(docs)} objects ({', '.join(kinds)}) lint clean, valid against Kubernetes {KUBERNETES}")


if __name__ == "__main__":
    main()
