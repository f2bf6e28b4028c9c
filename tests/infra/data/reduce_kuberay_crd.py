"""Write kuberay_v1_reduced.json: the ray.io/v1 RayJob and RayCluster structure the schedule tests check.

Source: KubeRay's CRDs, ray-operator/config/crd/bases/ray.io_rayjobs.yaml and ray.io_rayclusters.yaml of
github.com/ray-project/kuberay (the snapshot used: commit feeaf72f, v1.7.0-rc.0-5). Kept: on the paths
labelmill writes, every property name with its type, `required`, `enum` and `format`, and
additionalProperties: false (a misspelt field fails instead of being pruned by the API server); other
fields keep their type only; pod templates are checked with the kubernetes client's V1PodTemplateSpec.
Descriptions are dropped. Run: python reduce_kuberay_crd.py rayjobs.yaml rayclusters.yaml
"""

import json
import sys
from pathlib import Path

import yaml

USED = {
    "spec": {
        "entrypoint": {}, "submissionMode": {}, "shutdownAfterJobFinishes": {}, "ttlSecondsAfterFinished": {},
        "rayClusterSpec": {
            "rayVersion": {}, "enableInTreeAutoscaling": {},
            "headGroupSpec": {"rayStartParams": {}, "serviceType": {}, "template": "pod"},
            "workerGroupSpecs": {"groupName": {}, "replicas": {}, "minReplicas": {}, "maxReplicas": {},
                                 "rayStartParams": {}, "template": "pod"},
        },
    },
}
KEEP = ("type", "required", "enum", "format", "default")


def leaf(node: dict) -> dict:
    out = {k: node[k] for k in ("type", "format", "enum") if k in node}
    if "anyOf" in node:
        out["anyOf"] = [leaf(n) for n in node["anyOf"]]
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = leaf(node["additionalProperties"])
    return out


def reduce(node: dict, used) -> dict:
    if used == "pod":
        return {"type": "object", "x-labelmill-model": "V1PodTemplateSpec"}
    if node.get("type") == "array":
        return {"type": "array", "items": reduce(node["items"], used)}
    out = {k: node[k] for k in KEEP if k in node}
    if "properties" not in node:
        return leaf(node)
    out["properties"] = {name: reduce(child, used[name]) if name in used else leaf(child)
                         for name, child in node["properties"].items()}
    out["additionalProperties"] = False
    return out


def top(crd_file: str, kind: str, spec_used: dict) -> dict:
    crd = yaml.safe_load(Path(crd_file).read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "x-labelmill-model": "V1ObjectMeta"},
            "spec": reduce(schema["properties"]["spec"], spec_used),
            "status": {"type": "object"},
        },
        "additionalProperties": False,
    }


if __name__ == "__main__":
    rayjobs, rayclusters = sys.argv[1:3]
    out = {
        "source": "github.com/ray-project/kuberay ray-operator/config/crd/bases (commit feeaf72f, v1.7.0-rc.0-5), "
                  "ray.io/v1, reduced by tests/infra/data/reduce_kuberay_crd.py",
        "RayJob": top(rayjobs, "RayJob", USED["spec"]),
        "RayCluster": top(rayclusters, "RayCluster", USED["spec"]["rayClusterSpec"]),
    }
    Path(__file__).with_name("kuberay_v1_reduced.json").write_text(json.dumps(out, indent=1) + "\n")
