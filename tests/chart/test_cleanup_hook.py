"""The pre-delete hook that keeps `helm uninstall` from leaving objects Terminating.

(That it works, the operator releasing the finalizers while the hook waits, is
shown on a real control plane in tests/e2e/test_cluster.py.)
"""

from __future__ import annotations

from switchboard.cli.main import _parser
from tests.chart.render import docs_of, find, find_all, parse, render


def test_the_hook_runs_cleanup_as_the_operator_before_anything_is_deleted() -> None:
    docs = docs_of("default")
    job = find(docs, "Job", "-operator-cleanup")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    spec = job["spec"]["template"]["spec"]
    operator = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == operator["serviceAccountName"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["securityContext"]["runAsNonRoot"] is True
    # The arguments parse, and the selector matches the release's EdgePool and Channels.
    args = _parser().parse_args(container["args"])
    assert args.command == "cleanup"
    assert args.namespace == job["metadata"]["namespace"]
    for kind in ("EdgePool", "Channel"):
        for obj in find_all(docs, kind):
            labels = obj["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in args.selector.items()), obj
    assert args.timeout + 60 == job["spec"]["activeDeadlineSeconds"]


def test_the_hook_can_be_turned_off_and_goes_with_the_operator() -> None:
    off = parse(render({"operator": {"cleanupOnUninstall": {"enabled": False}}}))
    assert find_all(off, "Job") == []
    assert find_all(docs_of("fixed-replicas"), "Job") == []  # operator disabled
