"""`varmor dev ...`: the local control plane, the one-command demo, and the image build."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from varmor.dev import image
from varmor.dev.cluster import ControlPlane, ControlPlaneError, stop_detached
from varmor.dev.paths import dev_cluster_dir


def cluster_up(_args: argparse.Namespace) -> int:
    workdir = dev_cluster_dir()
    if (workdir / "state.json").exists():
        print(f"a dev cluster is already running; export KUBECONFIG={workdir / 'admin.kubeconfig'}")
        return 0
    try:
        state = ControlPlane(workdir).start(detach=True)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"control plane up at {state.server} (logs in {workdir})", file=sys.stderr)
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def cluster_down(_args: argparse.Namespace) -> int:
    stopped = stop_detached(dev_cluster_dir())
    print("dev cluster stopped" if stopped else "no dev cluster running")
    return 0


def demo_up(args: argparse.Namespace) -> int:
    from varmor.dev import demo

    return demo.up(timeout=args.timeout)


def demo_schedule(args: argparse.Namespace) -> int:
    from varmor.dev import demo

    return demo.schedule(args.namespace)


def demo_down(_args: argparse.Namespace) -> int:
    from varmor.dev import demo

    return demo.down()


def securityfs_standin(args: argparse.Namespace) -> int:
    """Serve a stand-in securityfs until terminated (hosts whose kernel has no AppArmor)."""
    import signal
    import threading
    from pathlib import Path

    from varmor.nodeexec.standin import StandInSecurityfs

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with StandInSecurityfs(Path(args.dir)):
        stop.wait()
    return 0


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="local development: control plane and demo")
    dev_sub = dev.add_subparsers(dest="dev_command", metavar="COMMAND", required=True)
    up = dev_sub.add_parser("up", help="run the whole product on the local control plane and show it working")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the policy to turn Ready")
    up.set_defaults(func=demo_up)
    dev_sub.add_parser("down", help="remove everything `dev up` started").set_defaults(func=demo_down)
    sched = dev_sub.add_parser("schedule", help="bind a namespace's unscheduled pods to the dev node (no scheduler)")
    sched.add_argument("-n", "--namespace", default="default")
    sched.set_defaults(func=demo_schedule)
    img = dev_sub.add_parser("image", help="build varmor's OCI image archive, no container engine (`make image`)")
    image.add_arguments(img)
    img.set_defaults(func=image.run)
    standin = dev_sub.add_parser("securityfs-standin", help="serve a stand-in securityfs in DIR (no AppArmor kernel)")
    standin.add_argument("dir")
    standin.set_defaults(func=securityfs_standin)
    cluster = dev_sub.add_parser("cluster", help="the local kube-apiserver + etcd + controller-manager")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    cluster_sub.add_parser("up", help="start it in the background and print KUBECONFIG").set_defaults(func=cluster_up)
    cluster_sub.add_parser("down", help="stop it").set_defaults(func=cluster_down)
