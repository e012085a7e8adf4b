"""The node agent under a broken parser, recovering on its own; and the helpers the disk
and kill faults share.

The parser faults come from a wrapper around the real `apparmor_parser` (`ParserFault`):
the agent is pointed at it, and a rules file tells it how to misbehave on the next
matching invocations (kill itself after N profiles, block until released, exit 1). The
kernel is the stand-in securityfs, which records what reached it; the ArmorNode is on the
fault plane's real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from tests import helpers
from tests.cluster.test_nodeexec_agent import Host, mine, node_status_when, put, running
from tests.helpers import BAD_TEXT, wait_for
from varmor import api, parser
from varmor.nodeexec.agent import Agent
from varmor.nodeexec.files import ProfileDir
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION

# -- the parser wrapper --------------------------------------------------------------------
_WRAPPER = r'''#!{python} -I
"""apparmor_parser, misbehaving as {state}/rules.json says (the first rule whose action
and `match` fit, while its `times` is not 0; -1: until the rules change)."""
import fcntl, json, os, signal, subprocess, sys, time

REAL, STATE = {real!r}, {state!r}
args = sys.argv[1:]
files = [a for a in args if "/varmor/loads/" in a]
options = [a for a in args if a not in files]
action = ("version" if "--version" in args else "names" if "-N" in args else "remove" if "-R" in args
          else "replace" if "-r" in args else "other")


def log(event):
    with open(os.path.join(STATE, "log"), "a") as out:
        out.write(json.dumps({{"pid": os.getpid(), "action": action, "event": event,
                              "files": [os.path.basename(f) for f in files]}}) + "\n")


def take_rule():
    with open(os.path.join(STATE, "rules.json"), "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        rules = json.load(handle)
        for rule in rules:
            if rule["times"] != 0 and rule["action"] == action and rule.get("match", "") in " ".join(files):
                rule["times"] -= 1 if rule["times"] > 0 else 0
                handle.seek(0)
                handle.truncate()
                json.dump(rules, handle)
                return rule
    return None


def wait_release():
    log("blocked")
    while not os.path.exists(os.path.join(STATE, "release")):
        time.sleep(0.02)
    log("released")


def load_each(paths):
    """The real parser on one file at a time, so what reached the kernel is exact."""
    rc = 0
    for path in paths:
        run = subprocess.run([REAL, *options, path], capture_output=True, text=True)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        sys.stdout.flush()
        rc = rc or run.returncode
    return rc


log("start")
rule = take_rule() if action not in ("version", "other") else None
fault = rule["fault"] if rule else ""
if fault == "exit":
    log("exit")
    sys.stderr.write("apparmor_parser: injected failure\n")
    sys.exit(1)
if fault == "block":
    wait_release()
if fault == "kill_after":
    load_each(files[: rule["n"]])
    log("killed")
    os.kill(os.getpid(), signal.SIGKILL)
if fault == "block_after":
    rc = load_each(files[: rule["n"]])
    wait_release()
    sys.exit(load_each(files[rule["n"]:]) or rc)
if fault == "block_at_exit":
    run = subprocess.run([REAL, *args], capture_output=True, text=True)
    sys.stdout.write(run.stdout)
    sys.stderr.write(run.stderr)
    sys.stdout.flush()
    wait_release()
    sys.exit(run.returncode)
os.execv(REAL, [REAL, *args])
'''


@dataclass
class ParserFault:
    """A wrapper executable around the real parser, and its rules, release file and log."""

    dir: Path

    @classmethod
    def create(cls, directory: Path) -> ParserFault:
        real = shutil.which("apparmor_parser") or parser.DEFAULT_PARSER
        if not Path(real).exists():
            pytest.fail("apparmor_parser not found: install the 'apparmor' package (apt-get install apparmor)")
        directory.mkdir(parents=True, exist_ok=True)
        fault = cls(directory)
        fault.path.write_text(_WRAPPER.format(python=sys.executable, real=real, state=str(directory)))
        fault.path.chmod(0o755)
        fault.inject()
        return fault

    @property
    def path(self) -> Path:
        return self.dir / "apparmor_parser"

    def inject(self, *rules: dict[str, Any]) -> None:
        """Replace the rules; each is {action, fault, times, match?, n?}."""
        (self.dir / "release").unlink(missing_ok=True)
        tmp = self.dir / "rules.tmp"
        tmp.write_text(json.dumps([{"times": 1, **rule} for rule in rules]))
        tmp.replace(self.dir / "rules.json")

    def release(self) -> None:
        (self.dir / "release").touch()

    def events(self, event: str | None = None, match: str = "") -> list[dict[str, Any]]:
        path = self.dir / "log"
        found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [e for e in found if (event is None or e["event"] == event) and match in " ".join(e["files"])]

    def alive(self) -> list[int]:
        """Wrapper processes still running (each logged its pid at start)."""
        pids = {e["pid"] for e in self.events("start")}
        return sorted(pid for pid in pids if _running(pid))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    write_enabled_file(tmp_path / "enabled")
    (tmp_path / "partitions").write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
    with StandInSecurityfs(tmp_path / "securityfs") as kernel:
        yield Host(f"fault-node-{uuid.uuid4().hex[:8]}", tmp_path, kernel)


@pytest.fixture
async def cleanup_node(api_client: Any, host: Host) -> Any:
    yield
    with contextlib.suppress(ApiException):
        await client.CustomObjectsApi(api_client).delete_cluster_custom_object(G, V, "armornodes", host.node)


@pytest.fixture
def fault(tmp_path: Path) -> ParserFault:
    return ParserFault.create(tmp_path / "parser-fault")


# -- profiles whose version the stand-in kernel shows --------------------------------------------
def versioned(name: str, version: int) -> str:
    """A profile with one child named after `version`: the stand-in kernel records children,
    so which version reached it last is visible there."""
    child = f"child_{version:08x}"
    rules = f"  file,\n  /bin/v{version} cx -> {child},\n  profile {child} {{\n    file,\n  }}\n"
    return f"abi <abi/3.0>,\nprofile {name} {{\n{rules}}}\n"


def profile(namespace: str, short: str, version: int = 1, mode: str = "enforce", text: str = "") -> dict[str, Any]:
    name = f"varmor-{namespace}-{short}"
    return helpers.armor_profile(
        name, namespace, text.format(name=name) if text else versioned(name, version), mode=mode
    )


def kernel_version(kernel: StandInSecurityfs, name: str) -> int | None:
    """The version whose child reached the kernel last with `name` (None: never)."""
    children = [op.name for op in kernel.ops if op.action == "replace" and op.name.startswith(f"{name}//child_")]
    return int(children[-1].rsplit("_", 1)[1], 16) if children else None


def replaced(kernel: StandInSecurityfs, namespace: str) -> list[str]:
    prefix = f"varmor-{namespace}-"
    return [
        op.name for op in kernel.ops if op.action == "replace" and op.name.startswith(prefix) and "//" not in op.name
    ]


def loaded_status(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        b["metadata"]["name"]: {
            "namespace": b["metadata"]["namespace"],
            "sha256": b["spec"]["profile"]["sha256"],
            "mode": b["spec"]["profile"]["mode"],
        }
        for b in bodies
    }


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def profile_dir_exact(profile_dir: Path, namespace: str, bodies: list[dict[str, Any]]) -> None:
    """The profile dir holds exactly the desired versions: their files, their load files,
    nothing half-written or left over."""
    files = ProfileDir(profile_dir)
    want = {b["metadata"]["name"]: b["spec"]["profile"] for b in bodies}
    assert mine(dict.fromkeys(files.names()), namespace).keys() == want.keys()
    for name, spec in want.items():
        assert (profile_dir / name).read_text() == spec["appArmor"]
    loads = {p.name for p in (profile_dir / "varmor" / "loads").iterdir() if namespace in p.name}
    assert loads == {f"{name}@{spec['sha256']}" for name, spec in want.items()}
    leftovers = [p for p in profile_dir.rglob(".*") if p.is_file() and files.cache_root not in p.parents]
    assert leftovers == []  # atomic_write's temporaries
    cached = {p.name for p in files.cache_root.glob(f"*/*/varmor-{namespace}-*")}
    assert cached <= loads


# -- a broken parser ----------------------------------------------------------------------------
async def test_a_parser_killed_mid_batch_is_retried_per_profile(
    api_client: Any, namespace: str, host: Host, fault: ParserFault, cleanup_node: None
) -> None:
    bodies = [profile(namespace, f"p{i}") for i in range(3)]
    for body in bodies:
        await put(api_client, body)
    fault.inject({"action": "replace", "fault": "kill_after", "n": 1, "match": namespace})
    runs = sample("varmor_agent_parser_runs_total", action="replace", result="error")
    async with running(Agent(host.config(parser=str(fault.path)), api_client)):
        status = await node_status_when(api_client, host.node, lambda s: s.get("ready"))
        assert mine(status["profiles"], namespace) == loaded_status(bodies)
        assert mine(status["failures"], namespace) == {}
    (killed,) = fault.events("killed", match=namespace)
    assert len([f for f in killed["files"] if namespace in f]) == 3  # the whole batch was in that run
    # The two profiles the killed run never reached ran alone. (The one it loaded may run
    # again too, when its success line was lost with the run: replacing is idempotent.)
    await asyncio.to_thread(host.kernel.settle)
    assert set(replaced(host.kernel, namespace)) == {b["metadata"]["name"] for b in bodies}
    singles = [e for e in fault.events("start", match=namespace) if e["action"] == "replace" and len(e["files"]) == 1]
    # (The run holds every profile that reached this agent, other tests' too: only ours count.)
    unreached = {Path(f).name.split("@")[0] for f in killed["files"][1:] if namespace in f}
    assert unreached <= {Path(f).name.split("@")[0] for e in singles for f in e["files"]}
    assert sample("varmor_agent_parser_runs_total", action="replace", result="error") > runs
    assert fault.alive() == []


async def test_a_hung_parser_times_out_and_is_retried_until_it_answers(
    api_client: Any, namespace: str, host: Host, fault: ParserFault, cleanup_node: None
) -> None:
    """A hang is not the profile's fault: the run is killed at its deadline and the profile
    is retried with backoff (not parked as over budget), and other loads do not wait for it."""
    good, hang, late = (profile(namespace, short) for short in ("good", "hang", "late"))
    hang_name, late_name = hang["metadata"]["name"], late["metadata"]["name"]
    await put(api_client, good)
    retries = sample("varmor_agent_profile_retries_total", reason="timeout")
    config = host.config(parser=str(fault.path), parser_timeout=6.0, retry_base=0.2, retry_seconds=1.0)
    async with running(Agent(config, api_client)):
        await node_status_when(api_client, host.node, lambda s: s.get("ready") and mine(s["profiles"], namespace))
        fault.inject({"action": "replace", "fault": "block", "times": -1, "match": f"{hang_name}@"})
        await put(api_client, hang)
        hung = (await wait_for(lambda: fault.events("blocked", match=hang_name), what="the hung run"))[0]["pid"]
        await put(api_client, late)
        await wait_for(lambda: late_name in host.kernel.loaded, what="a later profile loaded beside the hung run")
        assert hung in fault.alive()  # the hung run was still there: nothing waited for it
        status = await node_status_when(api_client, host.node, lambda s: hang_name in s["failures"], timeout=60)
        message = status["failures"][hang_name]["message"]
        assert message == (
            "ParserTimeout: apparmor_parser did not finish within 6s and was killed; retried by the agent with backoff"
        )
        # It keeps trying by itself, each hung run killed whole at its deadline.
        await wait_for(lambda: len(fault.events("blocked", match=hang_name)) >= 2, what="a retry", timeout=60)
        assert sample("varmor_agent_profile_retries_total", reason="timeout") > retries
        await wait_for(lambda: len(fault.alive()) <= 1, what="hung runs killed at their deadline")
        fault.release()
        status = await node_status_when(api_client, host.node, lambda s: hang_name in s["profiles"], timeout=60)
        assert mine(status["profiles"], namespace) == loaded_status([good, hang, late])
        assert mine(status["failures"], namespace) == {}
    await wait_for(lambda: fault.alive() == [] and not parser.RUNNING, what="no parser left running")


async def test_a_parser_failing_without_naming_a_profile_is_retried_and_a_bad_profile_is_not(
    api_client: Any, namespace: str, host: Host, fault: ParserFault, cleanup_node: None
) -> None:
    """Exit 1 naming no profile, or killed by a signal well within the CPU budget: the
    parser's trouble, retried with backoff. A syntax error: the text's, reported once."""
    bodies = [profile(namespace, "flaky"), profile(namespace, "killed"), profile(namespace, "bad", text=BAD_TEXT)]
    for body in bodies:
        await put(api_client, body)
    flaky, killed, bad = (b["metadata"]["name"] for b in bodies)
    fault.inject(
        {"action": "replace", "fault": "exit", "times": -1, "match": f"{flaky}@"},
        {"action": "replace", "fault": "kill_after", "n": 0, "times": -1, "match": f"{killed}@"},
    )
    retries = sample("varmor_agent_profile_retries_total", reason="parser")
    config = host.config(parser=str(fault.path), retry_base=0.2, retry_seconds=1.0)
    async with running(Agent(config, api_client)):
        status = await node_status_when(
            api_client, host.node, lambda s: s.get("ready") and {flaky, killed} <= set(s["failures"])
        )
        then = "; retried by the agent with backoff"
        assert status["failures"][flaky]["message"] == f"ParserFailed: apparmor_parser: injected failure{then}"
        assert status["failures"][killed]["message"] == f"ParserFailed: apparmor_parser was killed by SIGKILL{then}"
        assert "syntax error" in status["failures"][bad]["message"]  # the text's fault: no backoff loop
        await wait_for(lambda: len(fault.events("exit", match=f"{flaky}@")) >= 3, what="retries of the flaky profile")
        assert sample("varmor_agent_profile_retries_total", reason="parser") >= retries + 2
        fault.inject()  # the parser works again
        status = await node_status_when(api_client, host.node, lambda s: {flaky, killed} <= set(s["profiles"]))
        assert mine(status["profiles"], namespace) == loaded_status(bodies[:2])
        assert set(mine(status["failures"], namespace)) == {bad}
        assert "retried by the agent" not in status["failures"][bad]["message"]
    bad_runs = [e for e in fault.events("start", match=f"{bad}@") if e["action"] == "replace"]
    assert len(bad_runs) <= 2  # in the first batch, then alone for its message: never again for this text
