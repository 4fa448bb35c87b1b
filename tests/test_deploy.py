"""The deployment files agree with each other, without building anything: the Kubernetes manifests validate strictly and
offline; the probes ask /health on the port the Dockerfile exposes and its CMD serves on; the Prometheus annotations point
at /metrics on that port; the Dockerfile takes its base image as a build argument and runs `chatgpt-course serve` on the
model directory the Deployment mounts, as the user the Deployment runs as. (scripts/check_deploy.sh builds and runs it.)"""
import json, re, shlex, subprocess
from pathlib import Path

import kubernetes_validate, yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))

def dockerfile(path:Path=ROOT / "Dockerfile") -> list[tuple[str, str]]:
    "(INSTRUCTION, arguments) of each instruction, continuation lines joined and comments dropped."
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")): continue
        buf += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip())); buf = ""
    return out

def exec_form(args:str) -> list[str]:
    "A CMD's or HEALTHCHECK's command: the JSON (exec) form, or the shell form split as a shell would."
    return json.loads(args) if args.startswith("[") else shlex.split(args)

def manifests() -> list[dict]:
    return [d for p in K8S for d in yaml.safe_load_all(p.read_text()) if d]

def one(kind:str) -> dict:
    found = [d for d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s in {[p.name for p in K8S]}"
    return found[0]

def server():
    "The Deployment's pod spec and its server container (the one that exposes the Dockerfile's port)."
    pod = one("Deployment")["spec"]["template"]
    (c,) = [c for c in pod["spec"]["containers"] if c.get("ports")]
    return pod, c

def port_of(container:dict, port) -> int:
    "A probe's or Service's port, by number or by the container port's name."
    if isinstance(port, int): return port
    (p,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return p

def served_port() -> int:
    "The port the Dockerfile's CMD passes to `serve`, checked against its EXPOSE."
    cmd = exec_form(dict(dockerfile())["CMD"])
    port = int(cmd[cmd.index("--port") + 1])
    assert str(port) in dict(dockerfile())["EXPOSE"].split(), "the Dockerfile exposes a port other than the one it serves on"
    return port

def test_manifests_validate_strictly_offline():
    docs = manifests()
    assert {"Deployment", "Service"} <= {d["kind"] for d in docs}
    for version in ("1.30.0", kubernetes_validate.utils.latest_version()):
        for d in docs: kubernetes_validate.validate(d, version, strict=True)  # raises on any unknown or missing field
    bad = json.loads(json.dumps(one("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecs"] = 20
    try: kubernetes_validate.validate(bad, "1.30.0", strict=True)
    except kubernetes_validate.ValidationError: pass
    else: raise AssertionError("strict validation let a misspelt field through")

def test_dockerfile_takes_its_base_as_an_argument_and_serves_the_mounted_model():
    ins = dockerfile()
    first_from = next(i for i, (w, _) in enumerate(ins) if w == "FROM")
    base = [a for w, a in ins[:first_from] if w == "ARG" and a.startswith("BASE")]
    assert base == ["BASE=python:3.12-slim"], base
    assert all(a.split()[0] == "${BASE}" for w, a in ins if w == "FROM"), [a for w, a in ins if w == "FROM"]
    assert ("ARG", "PIP_CERT") in ins
    cmd = exec_form(dict(ins)["CMD"])
    assert cmd[:2] == ["chatgpt-course", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0", cmd
    pod, c = server()
    checkpoint = Path(cmd[cmd.index("--checkpoint") + 1])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert any(checkpoint == Path(m) or Path(m) in checkpoint.parents for m in mounts), (checkpoint, mounts)
    user = dict(ins)["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "the image must run as a numeric non-root user (runAsNonRoot checks it)"
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == int(user)

def test_probes_ask_health_on_the_served_port():
    port = served_port()
    _, c = server()
    assert port_of(c, c["ports"][0]["containerPort"]) == port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe == "startupProbe" and probe not in c: continue
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and port_of(c, get["port"]) == port, (probe, get)
    check = " ".join(exec_form(re.sub(r"^(--\S+\s+)*CMD\s+", "", dict(dockerfile())["HEALTHCHECK"])))
    assert f":{port}/health" in check, check

def test_prometheus_scrapes_metrics_on_the_served_port_and_the_service_reaches_it():
    port = served_port()
    pod, c = server()
    for where in (pod["metadata"], one("Service")["metadata"]):
        a = where.get("annotations", {})
        if where is not pod["metadata"] and not a: continue  # annotations on the Service are optional
        assert a["prometheus.io/scrape"] == "true" and a["prometheus.io/path"] == "/metrics", a
        assert int(a["prometheus.io/port"]) == port, a
    svc = one("Service")["spec"]
    assert svc["selector"].items() <= pod["metadata"]["labels"].items()
    assert all(port_of(c, p["targetPort"]) == port for p in svc["ports"])
    res = c["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and {"cpu", "memory"} <= res["limits"].keys()
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= volumes

def test_build_context_and_check_script():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "the build context is an allow-list"  # so .venv/ and runs/ never travel
    for needed in ("setup.py", "settings.ini", "pyproject.toml", "README.md", "chatgpt_course/", "data/"):
        assert "!" + needed in lines, needed
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "check_deploy.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
