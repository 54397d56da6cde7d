"""Attach gate: the part of a kubelet that waits for volumes before starting containers.

A real kubelet starts a pod's containers only once its attachable volumes are attached to the
node (for CSI: the VolumeAttachment of the PV on that node reports status.attached). kwok does
not wait, so the node kwoks run kubelet/pod-ready.yaml, which holds back a pod that uses a
PersistentVolumeClaim until this gate annotates it. The gate watches pods, claims, volumes,
CSIDrivers and VolumeAttachments and sets the annotation once every CSI volume that needs
attaching is attached to the pod's node.

Standard library only. Usage: attach-gate.py APISERVER_URL CA CERT KEY READY_FILE
"""

import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse

ANNOTATION = "envtest.jellyfin-ha.io/volumes-attached"


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Api:
    def __init__(self, url, ca, cert, key):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)
        self.local = threading.local()

    def connect(self, timeout=None):
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=timeout
        )

    def request(self, method, path, body=None, content_type=None):
        """One request on this thread's kept-alive connection; returns (status, parsed body)."""
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = self.connect(timeout=10)
            headers = {"Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, json.loads(data) if data else None
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


class Informer(threading.Thread):
    """Lists and watches one collection, keeping name -> object; sets `changed` on events."""

    def __init__(self, api, path, changed):
        super().__init__(daemon=True, name=path)
        self.api, self.path, self.changed = api, path, changed
        self.lock = threading.Lock()
        self.items = {}
        self.synced = threading.Event()

    @staticmethod
    def key(obj):
        meta = obj["metadata"]
        return (meta.get("namespace", ""), meta["name"])

    def snapshot(self):
        with self.lock:
            return dict(self.items)

    def run(self):
        while True:
            try:
                self.list_and_watch()
            except Exception as e:  # noqa: BLE001 - any failure: relist
                log(f"{self.path}: {e!r}; relisting")
                time.sleep(0.5)

    def list_and_watch(self):
        status, body = self.api.request("GET", self.path)
        if status != 200:
            raise RuntimeError(f"list: HTTP {status}")
        with self.lock:
            self.items = {self.key(o): o for o in body["items"]}
        version = body["metadata"]["resourceVersion"]
        self.synced.set()
        self.changed.set()
        # The server ends a watch after timeoutSeconds; resume from the last version seen.
        while True:
            conn = self.api.connect(timeout=90)
            query = urllib.parse.urlencode(
                {
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "60",
                }
            )
            conn.request("GET", f"{self.path}?{query}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch: HTTP {resp.status}")
            for line in resp:
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    # 410 Gone: the version is too old; relist.
                    raise RuntimeError(f"watch: {obj.get('message')}")
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                with self.lock:
                    if event["type"] == "DELETED":
                        self.items.pop(self.key(obj), None)
                    else:
                        self.items[self.key(obj)] = obj
                self.changed.set()
            conn.close()


def claim_names(pod):
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"].get("volumes") or []
        if v.get("persistentVolumeClaim")
    ]


def waiting_for(pod, claims, volumes, drivers, attached):
    """What the pod still waits for on its node, or None when every volume is there."""
    namespace, node = pod["metadata"]["namespace"], pod["spec"]["nodeName"]
    for name in claim_names(pod):
        claim = claims.get((namespace, name))
        pv_name = claim and claim["spec"].get("volumeName")
        if not pv_name:
            return f"claim {name} to be bound"
        pv = volumes.get(("", pv_name))
        if pv is None:
            return f"volume {pv_name}"
        csi = pv["spec"].get("csi")
        if not csi:
            continue  # nothing the attach/detach controller attaches through CSI
        driver = drivers.get(("", csi["driver"]))
        # Without a CSIDriver object Kubernetes assumes attach is required.
        if driver is not None and driver["spec"].get("attachRequired") is False:
            continue
        if (pv_name, node) not in attached:
            return f"volume {pv_name} to be attached to {node}"
    return None


class Gate:
    """Annotates pending pods whose volumes are attached to their node."""

    def __init__(self, api, informers):
        self.api, self.informers = api, informers
        # Pod uids annotated, so that one is not patched twice before its event arrives.
        self.opened = set()
        self.reported = {}

    def reconcile(self):
        snap = {name: informer.snapshot() for name, informer in self.informers.items()}
        attached = {
            (va["spec"]["source"].get("persistentVolumeName"), va["spec"]["nodeName"])
            for va in snap["attachments"].values()
            if (va.get("status") or {}).get("attached")
            and not va["metadata"].get("deletionTimestamp")
        }
        for pod in snap["pods"].values():
            meta, spec = pod["metadata"], pod["spec"]
            if (
                not spec.get("nodeName")
                or meta.get("deletionTimestamp")
                or (pod.get("status") or {}).get("phase", "Pending") != "Pending"
                or (meta.get("annotations") or {}).get(ANNOTATION) == "true"
                or meta["uid"] in self.opened
                or not claim_names(pod)
            ):
                continue
            reason = waiting_for(
                pod, snap["claims"], snap["volumes"], snap["drivers"], attached
            )
            what = f"{meta['namespace']}/{meta['name']} on {spec['nodeName']}"
            if reason:
                if self.reported.get(meta["uid"]) != reason:
                    self.reported[meta["uid"]] = reason
                    log(f"{what} waits for {reason}")
                continue
            self.open(pod, what)
        live = {pod["metadata"]["uid"] for pod in snap["pods"].values()}
        self.opened &= live
        self.reported = {u: r for u, r in self.reported.items() if u in live}

    def open(self, pod, what):
        meta = pod["metadata"]
        patch = json.dumps({"metadata": {"annotations": {ANNOTATION: "true"}}})
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        status, body = self.api.request(
            "PATCH", path, patch, "application/merge-patch+json"
        )
        if status == 200:
            self.opened.add(meta["uid"])
            self.reported.pop(meta["uid"], None)
            log(f"{what}: volumes attached")
        elif status != 404:  # 404: the pod is gone
            raise RuntimeError(f"{what}: HTTP {status}: {body}")


def main():
    url, ca, cert, key, ready_file = sys.argv[1:6]
    api = Api(url, ca, cert, key)
    changed = threading.Event()
    informers = {
        name: Informer(api, path, changed)
        for name, path in {
            "pods": "/api/v1/pods",
            "claims": "/api/v1/persistentvolumeclaims",
            "volumes": "/api/v1/persistentvolumes",
            "drivers": "/apis/storage.k8s.io/v1/csidrivers",
            "attachments": "/apis/storage.k8s.io/v1/volumeattachments",
        }.items()
    }
    for informer in informers.values():
        informer.start()
    for informer in informers.values():
        informer.synced.wait()
    with open(ready_file, "w") as f:
        f.write("ok\n")
    log("synced; gating pods with PersistentVolumeClaims")

    gate = Gate(api, informers)
    while True:
        changed.wait()
        changed.clear()
        try:
            gate.reconcile()
        except Exception as e:  # noqa: BLE001 - never exit; retry on the next pass
            log(f"reconcile: {e!r}")
            changed.set()
            time.sleep(0.2)


if __name__ == "__main__":
    main()
