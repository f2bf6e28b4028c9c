"""`labelmill schedule render` and the launch files under infra/cluster: parsed and checked against the
kubernetes client's models, the reduced KubeRay ray.io/v1 CRD schema (tests/infra/data) and Ray's own
cluster-config schema."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes.client import ApiClient

from labelmill.infra.cluster.schedule import (
    Schedule,
    ScheduleError,
    cron_to_oncalendar,
    normalize_cron,
    parse_cron,
    render,
    systemd_quote,
)
from labelmill.pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "infra" / "cluster"
SCHEMAS = json.loads((Path(__file__).parent / "data" / "kuberay_v1_reduced.json").read_text())
COMMAND = ["run", "pose3d", "--input", "gs://b/corpus.csv", "--output", "gs://b/ds", "--engine", "ray"]


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def roundtrip(obj: dict, model: str) -> None:
    """``obj`` deserialises into the client's ``model`` and serialises back unchanged: every field is
    known to Kubernetes' structure with a value of the right shape."""
    api = ApiClient()
    assert api.sanitize_for_serialization(api.deserialize(_Response(obj), model)) == obj


def check_ray_resource(obj: dict, kind: str) -> None:
    jsonschema.validate(obj, SCHEMAS[kind])
    roundtrip(obj["metadata"], "V1ObjectMeta")
    cluster = obj["spec"]["rayClusterSpec"] if kind == "RayJob" else obj["spec"]
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        roundtrip(group["template"], "V1PodTemplateSpec")


def render_kuberay(**options) -> list[dict]:
    files = render(Schedule(cron="0 3 * * 0", command=tuple(COMMAND), **options), "kuberay")
    assert list(files) == [f"{options.get('name', 'labelmill-pose3d')}.yaml"]
    return list(yaml.safe_load_all(next(iter(files.values()))))


def test_kuberay_objects_keep_every_field_in_the_client_models():
    docs = render_kuberay(namespace="labels", image="reg.io/labelmill:1.2", gpu_workers=3, cpu_workers=4)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    for doc, model in zip(docs, ["V1ServiceAccount", "V1Role", "V1RoleBinding", "V1ConfigMap", "V1CronJob"]):
        roundtrip(doc, model)
        assert doc["metadata"]["namespace"] == "labels"
    role, binding = docs[1], docs[2]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": docs[0]["metadata"]["name"], "namespace": "labels"}]


def test_cronjob_forbids_overlap_and_submits_the_rayjob_of_its_configmap():
    _, _, _, configmap, cronjob = render_kuberay()
    spec = cronjob["spec"]
    assert spec["schedule"] == "0 3 * * 0"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "labelmill-pose3d-submitter"
    (container,) = pod["containers"]
    assert container["command"][:2] == ["sh", "-c"]
    script = container["command"][2]
    assert "kubectl create -f /etc/labelmill/rayjob.yaml" in script and "jobDeploymentStatus" in script
    assert container["volumeMounts"][0]["mountPath"] == "/etc/labelmill"
    assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    # the script parses as POSIX sh
    sh = shutil.which("sh")
    if sh:
        subprocess.run([sh, "-n", "-c", script], check=True)


def test_rayjob_matches_the_kuberay_crd_with_gpu_and_cpu_groups_and_the_exact_command():
    docs = render_kuberay(image="reg.io/labelmill:1.2", gpu_workers=3, cpu_workers=4)
    rayjob = yaml.safe_load(docs[3]["data"]["rayjob.yaml"])
    check_ray_resource(rayjob, "RayJob")
    assert rayjob["metadata"]["generateName"] == "labelmill-pose3d-"
    spec = rayjob["spec"]
    assert shlex.split(spec["entrypoint"]) == ["labelmill", *COMMAND]
    assert spec["shutdownAfterJobFinishes"] is True
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups["gpu"]["replicas"] == groups["gpu"]["maxReplicas"] == 3
    assert groups["cpu"]["replicas"] == groups["cpu"]["minReplicas"] == 4
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" == gpu["resources"]["requests"]["nvidia.com/gpu"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    images = {c["image"] for g in [head, *groups.values()] for c in g["template"]["spec"]["containers"]}
    assert images == {"reg.io/labelmill:1.2"}


def test_rayjob_without_gpus_has_no_gpu_group():
    docs = render_kuberay(gpu_workers=0)
    rayjob = yaml.safe_load(docs[3]["data"]["rayjob.yaml"])
    check_ray_resource(rayjob, "RayJob")
    assert [g["groupName"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]] == ["cpu"]


def test_the_reduced_schema_rejects_a_misspelt_or_missing_field():
    docs = render_kuberay()
    rayjob = yaml.safe_load(docs[3]["data"]["rayjob.yaml"])
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["RayJob"])
    bad = json.loads(json.dumps(rayjob))
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMAS["RayJob"])
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(AssertionError):
        roundtrip(bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"], "V1PodTemplateSpec")


def test_cron_line_holds_a_lock_and_logs_and_runs_the_exact_argv():
    files = render(Schedule(cron="*/30 2 * * mon-fri", command=("run", "pose3d", "--input", "/d/my corpus.csv",
                                                                "--output", "/o/50%"),
                            labelmill="/opt/lm/bin/labelmill", lock="/run/lock/lm.lock", log="/var/log/lm.log"),
                   "cron")
    (line,) = [x for x in files["labelmill-pose3d.crontab"].splitlines() if x and not x.startswith("#")]
    fields = line.split(None, 5)
    assert fields[:5] == ["*/30", "2", "*", "*", "1,2,3,4,5"]
    command = fields[5].replace("\\%", "%")  # cron turns \% back into %
    argv = shlex.split(command)
    assert argv[-3:] == [">>", "/var/log/lm.log", "2>&1"]
    assert argv[:-3] == ["flock", "-n", "/run/lock/lm.lock", "/opt/lm/bin/labelmill", "run", "pose3d", "--input",
                         "/d/my corpus.csv", "--output", "/o/50%"]
    assert "%" not in fields[5].replace("\\%", "")  # every % escaped


def test_systemd_service_is_oneshot_and_timer_fires_on_the_converted_calendar():
    files = render(Schedule(cron="0 3 * * 0", command=("run", "pose3d", "--input", 'a "b" $HOME', "--output", "/o"),
                            labelmill="/opt/lm/bin/labelmill"), "systemd")
    service, timer = files["labelmill-pose3d.service"], files["labelmill-pose3d.timer"]
    lines = dict(x.split("=", 1) for x in service.splitlines() if "=" in x)
    assert lines["Type"] == "oneshot"
    exec_start = lines["ExecStart"]
    assert exec_start == '/opt/lm/bin/labelmill run pose3d --input "a \\"b\\" $$HOME" --output /o'
    # systemd's double-quote rules match POSIX shell's for these escapes; $$ is systemd's literal $
    assert [a.replace("$$", "$") for a in shlex.split(exec_start)] == [
        "/opt/lm/bin/labelmill", "run", "pose3d", "--input", 'a "b" $HOME', "--output", "/o"]
    assert "OnCalendar=Sun *-*-* 03:00:00\n" in timer
    assert "Unit=labelmill-pose3d.service\n" in timer and "WantedBy=timers.target" in timer


@pytest.mark.parametrize("expr, calendars", [
    ("0 3 * * 0", ["Sun *-*-* 03:00:00"]),
    ("0 3 * * 7", ["Sun *-*-* 03:00:00"]),
    ("@daily", ["*-*-* 00:00:00"]),
    ("@hourly", ["*-*-* *:00:00"]),
    ("*/15 * * * *", ["*-*-* *:00,15,30,45:00"]),
    ("5 4 1 jan,jul *", ["*-01,07-01 04:05:00"]),
    ("0 22 * * 1-5", ["Mon,Tue,Wed,Thu,Fri *-*-* 22:00:00"]),
    ("30 6 1,15 * 5", ["*-*-01,15 06:30:00", "Fri *-*-* 06:30:00"]),  # cron ORs both day fields
    ("0 0 */10 * *", ["*-*-01,11,21,31 00:00:00"]),
    ("0 12 * * sat/1", ["Sat *-*-* 12:00:00"]),
])
def test_cron_to_oncalendar(expr, calendars):
    assert cron_to_oncalendar(expr) == calendars
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own parser accepts each entry
        for calendar in calendars:
            subprocess.run([analyze, "calendar", calendar], check=True, capture_output=True)


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", "expected 5 fields"),
    ("60 3 * * *", "minute 60 is outside 0-59"),
    ("0 3 L * *", "non-standard"),
    ("0 3 * * 1#2", "non-standard"),
    ("0 3 ? * 1", "non-standard"),
    ("0 5-3 * * *", "runs backwards"),
    ("0 3 * * funday", "is not a number or a name"),
    ("*/0 * * * *", "step"),
    ("@reboot", "@reboot"),
])
def test_bad_cron_is_refused_naming_the_field(expr, message):
    with pytest.raises(ScheduleError, match=message):
        parse_cron(expr)


def test_normalize_cron_for_kubernetes():
    assert normalize_cron("0 3 * * 7") == "0 3 * * 0"
    assert normalize_cron("@weekly") == "0 0 * * 0"
    assert normalize_cron("*/5 1-3 * jan sun") == "*/5 1,2,3 * 1 0"


def test_systemd_quote():
    assert systemd_quote("plain/path.csv") == "plain/path.csv"
    assert systemd_quote("") == '""'
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote("100%") == "100%%"
    assert systemd_quote("back\\slash") == '"back\\\\slash"'
    assert systemd_quote(";") == '";"'


def test_cli_writes_the_files_of_each_target(tmp_path, capsys):
    for target, names in [("kuberay", ["nightly.yaml"]), ("cron", ["nightly.crontab"]),
                          ("systemd", ["nightly.service", "nightly.timer"])]:
        out = tmp_path / target
        rc = main(["schedule", "render", "--cron", "0 3 * * 0", "--target", target, "--name", "nightly",
                   "--out", str(out), "--", *COMMAND])
        assert rc == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(names)
    capsys.readouterr()
    assert main(["schedule", "render", "--cron", "0 3 * * 0", "--target", "kuberay", "--image", "x/y:1", "--gpus",
                 "2", "--", *COMMAND]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs[-1]["kind"] == "CronJob"
    rayjob = yaml.safe_load(docs[3]["data"]["rayjob.yaml"])
    assert {g["groupName"]: g["replicas"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]} == {
        "cpu": 2, "gpu": 2}


@pytest.mark.parametrize("argv, message", [
    (["--cron", "0 3 * *", "--target", "cron", "--", *COMMAND], "expected 5 fields"),
    (["--cron", "0 3 * * 0", "--target", "cron", "--", "versions", "/o"], "'run ...' command"),
    (["--cron", "0 3 * * 0", "--target", "cron"], "'run ...' command"),
    (["--cron", "0 3 * * 0", "--target", "cron", "--", "run", "pose3d", "--input", "x"], "does not parse"),
    (["--cron", "0 3 * * 0", "--target", "cron", "--", "run", "pose3d", "--bogus"], "does not parse"),
    (["--cron", "0 3 * * 0", "--target", "kuberay", "--", "run", "pose3d", "--input", "i", "--output", "o"],
     "--engine ray"),
    (["--cron", "0 3 * * 0", "--target", "kuberay", "--gpus", "-1", "--", *COMMAND], "--gpus"),
    (["--cron", "0 3 * * 0", "--target", "kuberay", "--name", "Bad_Name", "--", *COMMAND], "--name"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(["schedule", "render", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_target_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["schedule", "render", "--cron", "0 3 * * 0", "--target", "slurm", "--", *COMMAND])
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------- launch files


def test_kuberay_launch_files_match_the_crd():
    cluster = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    check_ray_resource(cluster, "RayCluster")
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    check_ray_resource(job, "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:3] == ["labelmill", "run", "pose3d"]
    from labelmill.pipelines.commands.schedule import check_command
    check_command(entry[1:], "kuberay")  # parses with labelmill's parser and runs on Ray


def test_ray_up_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's ray-schema.json, after `ray up`'s own defaults
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and {"cpu_worker", "gpu_worker"} <= set(types)
    assert any("pip install" in c and "-e" in c for c in config["setup_commands"])
