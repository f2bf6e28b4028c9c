"""Scheduled regenerations of a dataset: render a labelmill ``run`` command as a KubeRay job started by a
Kubernetes CronJob, a crontab line, or a systemd service + timer (``labelmill schedule render``).

Nothing here runs anything: every function returns text (or plain dicts) for the operator to install
(``docs/cluster.md``). Kubernetes objects are built from the ``kubernetes`` client's models and serialised
with ``ApiClient.sanitize_for_serialization``; the KubeRay ``RayJob`` is a custom resource without Python
models, so it is a plain dict shaped after the ``ray.io/v1`` CRD (its pod templates are client models).

Overlap: the CronJob has ``concurrencyPolicy: Forbid`` and its pod waits for the RayJob it created to
finish, so a second regeneration cannot start while one runs; the crontab line holds ``flock -n`` on a
lock file; a systemd timer never starts its ``Type=oneshot`` service again while it is still activating.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

import yaml

TARGETS = ("kuberay", "cron", "systemd")

# The Ray version the image's Ray must match (KubeRay's spec.rayClusterSpec.rayVersion); constraints.txt.
DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = "labelmill:latest"
# Any image with `sh` and `kubectl` (the CronJob's pod creates the RayJob and waits for it).
DEFAULT_KUBECTL_IMAGE = "bitnami/kubectl:latest"
SCHEDULE_LABEL = "labelmill.io/schedule"
GPU_RESOURCE = "nvidia.com/gpu"
RAYJOB_MOUNT = "/etc/labelmill"
RAYJOB_FILE = "rayjob.yaml"


class ScheduleError(ValueError):
    """A schedule that cannot be rendered (bad cron expression, name, sizes): a usage error."""


@dataclass(frozen=True)
class Resources:
    """Requests (= limits) of one Ray pod: CPUs, memory (Kubernetes quantity) and GPUs."""

    cpu: str
    memory: str
    gpus: int = 0

    def model(self):
        from kubernetes import client

        amounts = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts[GPU_RESOURCE] = str(self.gpus)
        return client.V1ResourceRequirements(requests=dict(amounts), limits=dict(amounts))


@dataclass(frozen=True)
class Schedule:
    """One scheduled labelmill command.

    ``command`` is the labelmill argv without the program name (``("run", "pose3d", "--input", ...)``).
    ``gpu_workers`` / ``cpu_workers`` size the KubeRay worker groups (GPU: keypoints and fit stages;
    CPU: decode and the rest); ``lock`` / ``log`` are the one-machine targets' files.
    """

    cron: str
    command: tuple[str, ...]
    name: str = "labelmill-pose3d"
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    kubectl_image: str = DEFAULT_KUBECTL_IMAGE
    ray_version: str = DEFAULT_RAY_VERSION
    gpu_workers: int = 1
    cpu_workers: int = 2
    head: Resources = Resources(cpu="2", memory="8Gi")
    cpu_worker: Resources = Resources(cpu="4", memory="16Gi")
    gpu_worker: Resources = Resources(cpu="8", memory="32Gi", gpus=1)
    labelmill: str = "labelmill"
    lock: str | None = None
    log: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", self.name):
            raise ScheduleError(f"--name {self.name!r}: use lower-case letters, digits and '-' (at most 42, "
                                "starting and ending with a letter or digit: it names Kubernetes objects and units)")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise ScheduleError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name")
        for what, n in (("--gpus", self.gpu_workers), ("--cpu-workers", self.cpu_workers)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ScheduleError(f"{what} must be a whole number >= 0, got {n!r}")
        if not self.command or self.command[0] != "run":
            raise ScheduleError("the scheduled command must be a labelmill 'run ...' command, got "
                                f"{shlex.join(self.command) or 'nothing'!r}")
        if not self.image.strip():
            raise ScheduleError("--image must name an image")
        parse_cron(self.cron)  # raises ScheduleError naming the bad field

    @property
    def lock_path(self) -> str:
        return self.lock or f"/tmp/{self.name}.lock"

    @property
    def log_path(self) -> str:
        return self.log or f"/var/tmp/{self.name}.log"

    def argv(self) -> list[str]:
        """The full command line: the labelmill executable, then ``command``."""
        return [self.labelmill, *self.command]

    def all_labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "labelmill", "app.kubernetes.io/component": "schedule",
                SCHEDULE_LABEL: self.name, **self.labels}


# ---------------------------------------------------------------------------------------------- cron


_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
           "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


@dataclass(frozen=True)
class CronField:
    values: tuple[int, ...]  # sorted, unique
    star: bool  # the field starts with '*' (cron's "unrestricted" for the day-of-month/day-of-week rule)
    full: bool  # every value of the range


@dataclass(frozen=True)
class CronExpr:
    minute: CronField
    hour: CronField
    dom: CronField
    month: CronField
    dow: CronField  # 0..6, Sunday 0


def _cron_value(text: str, index: int, lo: int, hi: int, expr: str) -> int:
    names = _MONTHS if index == 3 else _DAYS if index == 4 else ()
    if text.lower() in names:
        return names.index(text.lower()) + (1 if index == 3 else 0)
    if not text.isdigit():
        raise ScheduleError(f"cron {expr!r}: {_FIELDS[index][0]} {text!r} is not a number"
                            + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not lo <= value <= hi:
        raise ScheduleError(f"cron {expr!r}: {_FIELDS[index][0]} {value} is outside {lo}-{hi}")
    return value


def _cron_field(text: str, index: int, expr: str) -> CronField:
    name, lo, hi = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"cron {expr!r}: empty item in the {name} field {text!r}")
        bad = set(part.upper()) & set("LW#?")
        if bad and part.lower() not in _MONTHS + _DAYS:
            raise ScheduleError(f"cron {expr!r}: {name} {part!r} uses {''.join(sorted(bad))!r}, a non-standard cron "
                                "extension that is not supported (standard 5-field cron only)")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"cron {expr!r}: {name} step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        top = 6 if index == 4 else hi  # an open day-of-week range ends on Saturday (7 is Sunday again)
        if base == "*":
            start, end = lo, top
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _cron_value(first, index, lo, hi, expr), _cron_value(last, index, lo, hi, expr)
            if start > end:
                raise ScheduleError(f"cron {expr!r}: {name} range {base!r} runs backwards")
        else:
            start = _cron_value(base, index, lo, hi, expr)
            end = top if slash else start  # "5/15": from 5 on, every 15
        values.update(range(start, end + 1, step))
    if index == 4:  # 7 is Sunday too
        values = {0 if v == 7 else v for v in values}
    full = values == set(range(lo, hi + 1)) or (index == 4 and values == set(range(7)))
    return CronField(values=tuple(sorted(values)), star=text.startswith("*"), full=full)


def parse_cron(expr: str) -> CronExpr:
    """Parse a standard 5-field cron expression (numbers, names, ``*``, ``a-b``, ``a,b``, ``/step``, and the
    ``@daily``-style macros). Raises :class:`ScheduleError` naming the field for anything else."""
    text = expr.strip()
    if text.lower() == "@reboot":
        raise ScheduleError(f"cron {expr!r}: @reboot is not a schedule (use a systemd service WantedBy a target)")
    text = _MACROS.get(text.lower(), text)
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                            f"got {len(parts)}")
    return CronExpr(*(_cron_field(part, i, expr) for i, part in enumerate(parts)))


def normalize_cron(expr: str) -> str:
    """The expression as 5 plain fields: macros expanded, names and restricted fields as number lists
    (day of week 7 as 0: Kubernetes' parser takes 0-6), fields starting with ``*`` kept as written."""
    text = _MACROS.get(expr.strip().lower(), expr.strip())
    parsed = parse_cron(text)
    fields = (parsed.minute, parsed.hour, parsed.dom, parsed.month, parsed.dow)
    return " ".join(part if part.startswith("*") else ",".join(map(str, f.values))
                    for part, f in zip(text.split(), fields))


def _calendar_numbers(f: CronField, width: int = 2) -> str:
    return "*" if f.full else ",".join(f"{v:0{width}d}" for v in f.values)


def cron_to_oncalendar(expr: str) -> list[str]:
    """systemd ``OnCalendar=`` values firing when the cron expression does (a timer fires on any of them).

    Cron runs a job when the day of month *or* the day of week matches if both fields are restricted
    (neither starts with ``*``); ``OnCalendar`` requires both, so that case becomes two entries.
    """
    c = parse_cron(expr)
    time = f"{_calendar_numbers(c.hour)}:{_calendar_numbers(c.minute)}:00"
    month = _calendar_numbers(c.month)
    dow = None if c.dow.full else ",".join(_SYSTEMD_DAYS[v] for v in c.dow.values)

    def entry(days: str | None, dom: str) -> str:
        return f"{days + ' ' if days else ''}*-{month}-{dom} {time}"

    if not c.dom.star and not c.dow.star:  # cron's OR of the two day fields
        return [entry(None, _calendar_numbers(c.dom)), entry(dow, "*")]
    if not c.dom.star:
        return [entry(None, _calendar_numbers(c.dom))]
    return [entry(dow, "*" if c.dom.full else _calendar_numbers(c.dom))]


# ------------------------------------------------------------------------------------------- quoting


_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def systemd_quote(arg: str) -> str:
    """One ``ExecStart=`` word for ``arg``: ``%`` and ``$`` doubled (specifiers, variable expansion), and
    double quotes with C-style escapes around anything but plain characters (``systemd.service(5)``,
    "Command lines")."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if arg and _SYSTEMD_PLAIN.fullmatch(arg) and arg != ";":
        return escaped
    inner = (escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
             .replace("\r", "\\r"))
    return f'"{inner}"'


def systemd_join(argv: list[str]) -> str:
    return " ".join(systemd_quote(a) for a in argv)


def crontab_escape(command: str) -> str:
    """A crontab command field: ``%`` means newline there, so it is escaped."""
    return command.replace("%", "\\%")


# ---------------------------------------------------------------------------------------- renderers


def render_cron(s: Schedule) -> dict[str, str]:
    """``NAME.crontab``: one line running the command under ``flock -n`` (a run still holding the lock
    makes the next one exit at once), stdout and stderr appended to the log."""
    command = f"{shlex.join(['flock', '-n', s.lock_path, *s.argv()])} >> {shlex.quote(s.log_path)} 2>&1"
    line = f"{normalize_cron(s.cron)} {crontab_escape(command)}"
    header = (f"# labelmill schedule {s.name}: install with `crontab -l | cat - {s.name}.crontab | crontab -`\n"
              f"# lock {s.lock_path} (flock -n: an overlapping run exits at once), log {s.log_path}\n")
    return {f"{s.name}.crontab": header + line + "\n"}


def render_systemd(s: Schedule) -> dict[str, str]:
    """``NAME.service`` (``Type=oneshot``) and ``NAME.timer`` (``OnCalendar`` from the cron expression).

    While the oneshot service is still activating the timer does not start it again, so runs never
    overlap; ``Persistent=true`` runs a regeneration missed while the machine was off at the next boot.
    """
    calendars = cron_to_oncalendar(s.cron)
    service = (
        "[Unit]\n"
        f"Description=labelmill scheduled regeneration {s.name}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={systemd_join(s.argv())}\n"
    )
    timer = (
        "[Unit]\n"
        f"Description=labelmill scheduled regeneration {s.name} (cron {s.cron.strip()})\n"
        "\n"
        "[Timer]\n"
        + "".join(f"OnCalendar={c}\n" for c in calendars)
        + "Persistent=true\n"
        f"Unit={s.name}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{s.name}.service": service, f"{s.name}.timer": timer}


def _pod_template(s: Schedule, container_name: str, resources: Resources, *, head: bool):
    from kubernetes import client

    ports = None
    if head:
        ports = [client.V1ContainerPort(container_port=6379, name="gcs-server"),
                 client.V1ContainerPort(container_port=8265, name="dashboard"),
                 client.V1ContainerPort(container_port=10001, name="client")]
    tolerations = None
    if resources.gpus:
        tolerations = [client.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=s.all_labels()),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name=container_name, image=s.image, ports=ports,
                                           resources=resources.model())],
            tolerations=tolerations,
        ),
    )


def _worker_group(s: Schedule, group: str, replicas: int, resources: Resources) -> dict:
    from kubernetes.client import ApiClient

    return {
        "groupName": group,
        "replicas": replicas,
        "minReplicas": replicas,
        "maxReplicas": replicas,
        "rayStartParams": {},
        "template": ApiClient().sanitize_for_serialization(_pod_template(s, "ray-worker", resources, head=False)),
    }


def rayjob(s: Schedule, *, generate_name: bool = True) -> dict:
    """The ``ray.io/v1`` RayJob running the command on a RayCluster of its own: a head (the driver; no
    tasks: ``num-cpus: "0"``), a CPU worker group and a GPU worker group. The cluster is deleted when the
    job finishes; ``generateName`` gives every scheduled run a RayJob of its own."""
    from kubernetes.client import ApiClient

    workers = []
    if s.cpu_workers:
        workers.append(_worker_group(s, "cpu", s.cpu_workers, s.cpu_worker))
    if s.gpu_workers:
        workers.append(_worker_group(s, "gpu", s.gpu_workers, s.gpu_worker))
    metadata = {"namespace": s.namespace, "labels": s.all_labels()}
    metadata["generateName" if generate_name else "name"] = f"{s.name}-" if generate_name else s.name
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata,
        "spec": {
            "entrypoint": shlex.join(s.argv()),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": {
                "rayVersion": s.ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},
                    "template": ApiClient().sanitize_for_serialization(
                        _pod_template(s, "ray-head", s.head, head=True)),
                },
                "workerGroupSpecs": workers,
            },
        },
    }


# The CronJob pod's script: create the RayJob, then wait for it, so that concurrencyPolicy Forbid keeps
# the next run from starting while this one's RayJob is still running. Exit 1 unless the job SUCCEEDED.
SUBMIT_SCRIPT = """set -eu
name=$(kubectl create -f {path} -o jsonpath='{{.metadata.name}}')
echo "created rayjob/$name"
while :; do
  state=$(kubectl get rayjob "$name" -o jsonpath='{{.status.jobDeploymentStatus}}')
  case "$state" in
    Complete)
      status=$(kubectl get rayjob "$name" -o jsonpath='{{.status.jobStatus}}')
      echo "rayjob/$name: $status"
      [ "$status" = SUCCEEDED ] && exit 0 || exit 1 ;;
    Failed|ValidationFailed)
      echo "rayjob/$name: $state"; exit 1 ;;
  esac
  sleep 30
done
"""


def kubernetes_objects(s: Schedule) -> list:
    """ServiceAccount, Role (create/get rayjobs), RoleBinding, the ConfigMap holding the RayJob and the
    CronJob, as ``kubernetes.client`` models."""
    from kubernetes import client

    labels = s.all_labels()

    def meta(name: str):
        return client.V1ObjectMeta(name=name, namespace=s.namespace, labels=dict(labels))

    account = f"{s.name}-submitter"
    rayjob_text = dump_yaml([rayjob(s)])
    container = client.V1Container(
        name="submit",
        image=s.kubectl_image,
        command=["sh", "-c", SUBMIT_SCRIPT.format(path=f"{RAYJOB_MOUNT}/{RAYJOB_FILE}")],
        volume_mounts=[client.V1VolumeMount(name="rayjob", mount_path=RAYJOB_MOUNT, read_only=True)],
        resources=client.V1ResourceRequirements(requests={"cpu": "50m", "memory": "64Mi"},
                                                limits={"cpu": "200m", "memory": "128Mi"}),
    )
    cronjob = client.V1CronJob(
        api_version="batch/v1",
        kind="CronJob",
        metadata=meta(s.name),
        spec=client.V1CronJobSpec(
            schedule=normalize_cron(s.cron),
            concurrency_policy="Forbid",
            starting_deadline_seconds=3600,
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=client.V1JobTemplateSpec(
                metadata=client.V1ObjectMeta(labels=dict(labels)),
                spec=client.V1JobSpec(
                    backoff_limit=0,  # a retry would create a second RayJob
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels=dict(labels)),
                        spec=client.V1PodSpec(
                            service_account_name=account,
                            restart_policy="Never",
                            containers=[container],
                            volumes=[client.V1Volume(name="rayjob",
                                                     config_map=client.V1ConfigMapVolumeSource(name=f"{s.name}-rayjob"))],
                        ),
                    ),
                ),
            ),
        ),
    )
    return [
        client.V1ServiceAccount(api_version="v1", kind="ServiceAccount", metadata=meta(account)),
        client.V1Role(api_version="rbac.authorization.k8s.io/v1", kind="Role", metadata=meta(account),
                      rules=[client.V1PolicyRule(api_groups=["ray.io"], resources=["rayjobs"],
                                                 verbs=["create", "get"])]),
        client.V1RoleBinding(api_version="rbac.authorization.k8s.io/v1", kind="RoleBinding", metadata=meta(account),
                             role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=account),
                             subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account,
                                                            namespace=s.namespace)]),
        client.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=meta(f"{s.name}-rayjob"),
                           data={RAYJOB_FILE: rayjob_text}),
        cronjob,
    ]


def render_kuberay(s: Schedule) -> dict[str, str]:
    """``NAME.yaml``: the objects of :func:`kubernetes_objects` as one multi-document YAML for
    ``kubectl apply -f``."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    docs = [api.sanitize_for_serialization(obj) for obj in kubernetes_objects(s)]
    return {f"{s.name}.yaml": dump_yaml(docs)}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the RayJob in its ConfigMap, the submitter script) as ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_yaml(docs: list) -> str:
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, width=120)


RENDERERS = {"kuberay": render_kuberay, "cron": render_cron, "systemd": render_systemd}


def render(s: Schedule, target: str) -> dict[str, str]:
    """File name -> text of the ``target``'s files for schedule ``s``."""
    if target not in RENDERERS:
        raise ScheduleError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    return RENDERERS[target](s)
