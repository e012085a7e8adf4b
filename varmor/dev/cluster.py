"""A real etcd + kube-apiserver + kube-controller-manager on loopback.

The binaries are built from the Go module proxy by `hack/build-control-plane.sh` (we
cannot download release binaries here). Used by the test suite's session fixture and
by `varmor dev cluster up|down`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from varmor.certs import pki
from varmor.dev.paths import K8S_VERSION, REPO_ROOT, control_plane_bin_dir

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: The address a node VM on qemu's user network dials for this API server (tests/node); the
#: serving certificate names it, so pods there can use it as KUBERNETES_SERVICE_HOST.
NODE_VM_API_ADDRESS = "10.0.2.100"
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",  # the chart's uninstall hook
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
)


class ControlPlaneError(RuntimeError):
    pass


def ensure_binaries(version: str = K8S_VERSION) -> Path:
    """Return the directory holding the three binaries of `version`, building them if missing."""
    bin_dir = control_plane_bin_dir(version)
    if all((bin_dir / b).is_file() for b in BINARIES):
        return bin_dir
    script = REPO_ROOT / "hack" / "build-control-plane.sh"
    env = {**os.environ, "K8S_VERSION": version}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0 or not all((bin_dir / b).is_file() for b in BINARIES):
        raise ControlPlaneError(
            f"could not build the Kubernetes {version} control plane with {script} (needs Go >= 1.26: "
            f"run `make setup`):\n{result.stderr[-4000:]}"
        )
    return bin_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlaneState:
    """What a running control plane needs to be found and stopped again."""

    workdir: str
    api_port: int
    kubeconfig: str
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_cert(self) -> Path:
        return Path(self.workdir) / "pki" / "ca.crt"

    def issue_client(self, common_name: str, organizations: tuple[str, ...] = ()) -> pki.KeyPair:
        """A client certificate of the cluster's CA (a kubelet's: system:node:NAME, system:nodes)."""
        ca = pki.KeyPair(self.ca_cert.read_bytes(), (Path(self.workdir) / "pki" / "ca.key").read_bytes())
        return pki.issue(ca, common_name, dt.timedelta(days=1), organizations=organizations, server=False, client=True)

    @property
    def webhook_client_ca(self) -> Path:
        """The CA of the client certificate the API server presents to every admission
        webhook (a webhook started with `--webhook-client-ca` of this file accepts only it)."""
        return Path(self.workdir) / "pki" / "webhook-client-ca.crt"


class ControlPlane:
    """Starts and stops the three components; logs go to files in `workdir`."""

    def __init__(self, workdir: Path, version: str = K8S_VERSION, apiserver_flags: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.version = version
        self.apiserver_flags = apiserver_flags  # added to (or overriding) the defaults below
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state: ControlPlaneState | None = None
        self._apiserver_args: list[str] = []
        self._pki: dict[str, Path] = {}

    # -- files -----------------------------------------------------------------
    def _write_pki(self) -> dict[str, Path]:
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        year = dt.timedelta(days=365)
        ca = pki.new_ca("varmor-dev-ca", year)
        serving = pki.issue(
            ca,
            "kube-apiserver",
            year,
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "10.0.0.1", NODE_VM_API_ADDRESS),
        )
        admin = pki.issue(ca, "admin", year, organizations=("system:masters",), server=False, client=True)
        # The controller-manager runs every controller under its own identity
        # (--use-service-account-credentials=false), so it needs broad rights.
        kcm = pki.issue(
            ca, "system:kube-controller-manager", year, organizations=("system:masters",), server=False, client=True
        )
        # A separate CA for the API server's webhook client certificate, so a webhook that
        # requires it accepts the API server and nobody else the cluster CA signed.
        webhook_ca = pki.new_ca("varmor-dev-webhook-client-ca", year)
        webhook_client = pki.issue(webhook_ca, "kube-apiserver-webhook-client", year, server=False, client=True)
        sa_key, sa_pub = pki.new_signing_key_pem()
        files = {
            "webhook-client-ca.crt": webhook_ca.cert_pem,
            "webhook-client.crt": webhook_client.cert_pem,
            "webhook-client.key": webhook_client.key_pem,
            "ca.crt": ca.cert_pem,
            "ca.key": ca.key_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "admin.crt": admin.cert_pem,
            "admin.key": admin.key_pem,
            "kcm.crt": kcm.cert_pem,
            "kcm.key": kcm.key_pem,
            "sa.key": sa_key,
            "sa.pub": sa_pub,
        }
        paths = {}
        for name, data in files.items():
            path = pki_dir / name
            path.write_bytes(data)
            path.chmod(0o600)
            paths[name] = path
        return paths

    def _admission_config(self, p: dict[str, Path]) -> Path:
        """Webhook client credentials (AdmissionConfiguration -> kubeConfigFile): the API
        server presents webhook-client.crt to every webhook (user `*`)."""
        credentials = {"client-certificate": str(p["webhook-client.crt"]), "client-key": str(p["webhook-client.key"])}
        users = {"name": "*", "user": credentials}
        kubeconfig = self.workdir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "users": [users]}))
        kubeconfig.chmod(0o600)
        webhook = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "WebhookAdmissionConfiguration",
            "kubeConfigFile": str(kubeconfig),
        }
        plugins = [
            {"name": n, "configuration": webhook} for n in ("ValidatingAdmissionWebhook", "MutatingAdmissionWebhook")
        ]
        path = self.workdir / "admission.yaml"
        config = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration", "plugins": plugins}
        path.write_text(yaml.safe_dump(config))
        return path

    def _kubeconfig(self, name: str, server: str, ca: Path, cert: Path, key: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "varmor-dev", "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "varmor-dev", "context": {"cluster": "varmor-dev", "user": name}}],
            "current-context": "varmor-dev",
        }
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # -- processes -------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], detach: bool) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=detach)
        log.close()

    def start(self, detach: bool = False, timeout: float = 90.0) -> ControlPlaneState:
        bin_dir = ensure_binaries(self.version)
        self.workdir.mkdir(parents=True, exist_ok=True)
        p = self._pki = self._write_pki()
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        etcd_data = self.workdir / "etcd"
        self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            detach,
        )
        self._apiserver_args = [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={p['apiserver.crt']}",
            f"--tls-private-key-file={p['apiserver.key']}",
            f"--client-ca-file={p['ca.crt']}",
            # Node + NodeRestriction: a kubelet (a real one in the node tests) gets what a
            # production cluster gives it, and no more.
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
            "OwnerReferencesPermissionEnforcement",
            f"--admission-control-config-file={self._admission_config(p)}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p['sa.pub']}",
            f"--service-account-signing-key-file={p['sa.key']}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self.apiserver_flags,
        ]
        self._spawn("kube-apiserver", [str(bin_dir / "kube-apiserver"), *self._apiserver_args], detach)
        kcm_config = self._kubeconfig("kube-controller-manager", server, p["ca.crt"], p["kcm.crt"], p["kcm.key"])
        admin_config = self._kubeconfig("admin", server, p["ca.crt"], p["admin.crt"], p["admin.key"])
        self.state = ControlPlaneState(str(self.workdir), api_port, str(admin_config))
        self._wait_ready(p, timeout)
        self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                "--secure-port=0",
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={p['sa.key']}",
                f"--root-ca-file={p['ca.crt']}",
                "--use-service-account-credentials=false",
                "--concurrent-deployment-syncs=2",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
            detach,
        )
        self.state.pids = {name: proc.pid for name, proc in self.procs.items()}
        (self.workdir / "state.json").write_text(json.dumps(asdict(self.state)))
        return self.state

    def start_scheduler(self) -> None:
        """Start kube-scheduler (once): only a run with real nodes needs one, and a scheduler
        would bind the pods of other tests to the Node objects they create."""
        if "kube-scheduler" in self.procs:
            return
        assert self.state is not None
        p = self._pki
        cert = self.state.issue_client("system:kube-scheduler")
        crt, key = self.workdir / "pki" / "scheduler.crt", self.workdir / "pki" / "scheduler.key"
        crt.write_bytes(cert.cert_pem)
        key.write_bytes(cert.key_pem)
        key.chmod(0o600)
        config = self._kubeconfig("kube-scheduler", self.state.server, p["ca.crt"], crt, key)
        bin_dir = ensure_binaries(self.version)
        argv = [str(bin_dir / "kube-scheduler"), f"--kubeconfig={config}", "--leader-elect=false", "--v=1"]
        self._spawn("kube-scheduler", [*argv, "--secure-port=0"], False)

    def upgrade_apiserver(self, version: str, timeout: float = 90.0) -> None:
        """Replace the running kube-apiserver with `version`'s, same flags, same etcd and
        port (the etcd and the controller-manager stay: both tolerate one minor of skew)."""
        self.restart_apiserver(version=version, timeout=timeout)

    def stop_apiserver(self, *, crash: bool = False) -> None:
        """Stop kube-apiserver; `crash` kills it (SIGKILL: no graceful end of watches)."""
        proc = self.procs.pop("kube-apiserver")
        if crash:
            proc.kill()
        else:
            proc.terminate()
        try:  # it waits for open watches to end: give them a moment, not the 30 min they may last
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start_apiserver(self, *, version: str | None = None, timeout: float = 90.0) -> None:
        """Start kube-apiserver again with the same flags, etcd and port."""
        self.version = version or self.version
        bin_dir = ensure_binaries(self.version)
        self._spawn("kube-apiserver", [str(bin_dir / "kube-apiserver"), *self._apiserver_args], False)
        self._wait_ready(self._pki, timeout)

    def restart_apiserver(self, *, version: str | None = None, crash: bool = False, timeout: float = 90.0) -> None:
        self.stop_apiserver(crash=crash)
        self.start_apiserver(version=version, timeout=timeout)

    @property
    def etcd_url(self) -> str:
        """The etcd client URL (plain HTTP on loopback), for tests that compact it."""
        return next(a.split("=", 1)[1] for a in self._apiserver_args if a.startswith("--etcd-servers="))

    def _wait_ready(self, p: dict[str, Path], timeout: float) -> None:
        assert self.state is not None
        ctx = ssl.create_default_context(cafile=str(p["ca.crt"]))
        ctx.load_cert_chain(str(p["admin.crt"]), str(p["admin.key"]))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited early:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.state.server}/readyz", context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout}s ({last}):\n{self.log_tail('kube-apiserver')}"
        )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(f"==== {n} ====\n{self.log_tail(n)}" for n in BINARIES)

    def stop(self) -> None:
        # Reverse order: controller-manager, apiserver, then etcd.
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def stop_detached(workdir: Path) -> bool:
    """Stop a control plane started with `detach=True` in another process."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    for pid in reversed(list(state["pids"].values())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in state["pids"].values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    state_file.unlink()
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
