"""A real DICOMweb server for the tests: Orthanc with its DICOMweb plugin (Debian's ``orthanc`` and
``orthanc-dicomweb``, which ``make test`` installs), started from a config the test writes, on free loopback ports,
its storage in a temporary folder, stopped at the end."""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.utils.processes import ends_with_this_process

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """One Orthanc server; ``users`` ({name: password}) turns authentication on."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        for path in (ORTHANC, DICOMWEB_PLUGIN):
            assert path.is_file(), f"{path} is missing: `make test` installs Debian's orthanc and orthanc-dicomweb"
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.port = free_port()
        self.config = self.folder / "orthanc.json"
        storage = str(self.folder / "storage")
        self.config.write_text(json.dumps({
            "Name": "bundle-test", "StorageDirectory": storage, "IndexDirectory": storage,
            "HttpPort": self.port, "DicomPort": free_port(), "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }, indent=2))  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 60) -> Orthanc:
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([str(ORTHANC), str(self.config)], cwd=self.folder, stdout=log, stderr=log,
                                        preexec_fn=ends_with_this_process())  # a killed test run leaves no server  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def _request(self, path: str, data: bytes | None = None, method: str | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            name, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{name}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self._request(path))

    def upload(self, path: Path) -> dict:
        """Store a DICOM file (Orthanc's REST ``POST /instances``)."""
        return json.loads(self._request("/instances", data=Path(path).read_bytes(), method="POST"))

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def dicom(self, orthanc_id: str) -> bytes:
        return self._request(f"/instances/{orthanc_id}/file")

    def find(self, **query: str) -> list[str]:
        """The Orthanc ids of the instances whose main DICOM tags match ``query`` (``Modality="SEG"``...)."""
        body = json.dumps({"Level": "Instance", "Query": query}).encode()
        return json.loads(self._request("/tools/find", data=body, method="POST"))
